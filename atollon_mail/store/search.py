"""Full-text search of filed mail with the databases' own engines (the index:
store.searchindex; its text: store.searchtext).

`search` answers with the filings a user may view, newest first (by message id, which
ascends as mail arrives), a page at a time. Words are matched whole (no stemming, in
any case, accents folded); a "quoted phrase" is its words in order; an address is the
phrase of its words.
"""

from __future__ import annotations

import datetime
import re

import peewee

from atollon_mail.store import mailboxes, searchtext
from atollon_mail.store.accounts import get_user_row
from atollon_mail.store.common import placeholders, read_only
from atollon_mail.store.contexts import context_record
from atollon_mail.store.database import is_sqlite
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.filing import verdict_from_json
from atollon_mail.store.models import (
    FOLDERS,
    Context,
    Domain,
    Filing,
    Mailbox,
    MailboxAccess,
    Message,
    User,
    database_proxy,
)
from atollon_mail.store.records import (
    FilingRecord,
    MessageSummary,
    SearchQuery,
    SearchResults,
)

# Fields of a query, as the index calls them (SQLite's columns, PostgreSQL's weights).
_SQLITE_COLUMNS = {"sender": "sender", "recipient": "recipients"}
_POSTGRES_WEIGHTS = {"sender": "B", "recipient": "C"}
MAX_QUERY_WORDS = 32  # a longer query is refused: each word is a lookup in the index
MAX_PAGE = 200

# --- searching ---------------------------------------------------------------------------

_PHRASE = re.compile(r'"([^"]*)"?|(\S+)')


def phrases(text: str) -> list[list[str]]:
    """The phrases of a query: each "quoted part" one, each other term one too (an
    address or a hyphenated word is a phrase of its words); empty ones left out."""
    found = []
    for quoted, bare in _PHRASE.findall(text):
        found_words = searchtext.words(quoted or bare)
        if found_words:
            found.append(found_words)
    return found


def _sqlite_match(groups: list[tuple[str | None, list[list[str]]]]) -> str:
    terms = []
    for field, field_phrases in groups:
        prefix = f"{_SQLITE_COLUMNS[field]} : " if field else ""
        # The words hold letters and digits only: nothing to escape inside the quotes.
        terms.extend(f'{prefix}"{" ".join(words)}"' for words in field_phrases)
    return " AND ".join(terms)


def _postgres_query(groups: list[tuple[str | None, list[list[str]]]]) -> str:
    terms = []
    for field, field_phrases in groups:
        weight = f":{_POSTGRES_WEIGHTS[field]}" if field else ""
        terms.extend(
            "(" + " <-> ".join(f"'{word}'{weight}" for word in words) + ")"
            for words in field_phrases
        )
    return " & ".join(terms)


# PostgreSQL: a phrase, or a word asked of one field (a weight), is checked against the
# stored tsvector of each message the GIN index offers (a recheck), while single words are
# answered by the index alone. The planner estimates a phrase as often as its words
# together, so for a rare phrase of common words it walks the messages newest first
# checking each, all 100 000 (300 ms). When at most this many messages hold all the words
# (counted by the index), only those are checked.
RECHECKED_CANDIDATES = 5000


def _rechecked(groups: list[tuple[str | None, list[list[str]]]]) -> bool:
    return any(field or len(words) > 1 for field, found in groups for words in found)


def _loose_query(groups: list[tuple[str | None, list[list[str]]]]) -> str:
    """Every word of the query, anywhere: what the GIN index answers without a recheck."""
    found = {word for _, phrases_ in groups for words in phrases_ for word in words}
    return " & ".join(f"'{word}'" for word in sorted(found))


def _candidates(loose: str) -> int:
    p = database_proxy.param
    return database_proxy.execute_sql(
        "SELECT COUNT(*) FROM (SELECT 1 FROM message_search WHERE document @@"
        f" to_tsquery('simple', {p}) LIMIT {p}) c",
        (loose, RECHECKED_CANDIDATES + 1),
    ).fetchone()[0]


def _viewable_mailbox_ids(login: str, addresses: tuple[str, ...]) -> dict[int, str]:
    """{id: address} of the mailboxes searched: those named (NotFound for one the user
    may not view, as for one that does not exist), else every one the user may view (by
    the rule of mailboxes.user_rights)."""
    user = get_user_row(login)
    query = Mailbox.select(Mailbox.id, Mailbox.local_part, Domain.name).join(Domain)
    if not user.is_admin:
        granted = (MailboxAccess.mailbox == Mailbox.id) & (MailboxAccess.user == user.id)
        query = (
            query.switch(Mailbox)
            .join(MailboxAccess, peewee.JOIN.LEFT_OUTER, on=granted)
            .where(
                (Mailbox.owner == user.id)
                | (MailboxAccess.can_view == True)  # noqa: E712
                | (MailboxAccess.can_edit == True)  # noqa: E712
            )
        )
    viewable = {mailbox_id: f"{local}@{domain}" for mailbox_id, local, domain in query.tuples()}
    if not addresses:
        return viewable
    found: dict[int, str] = {}
    for address in addresses:
        try:
            mailbox_id = mailboxes.get_mailbox_row(address).id
        except (NotFound, Invalid):
            mailbox_id = None
        if mailbox_id not in viewable:
            raise NotFound(f"no mailbox {address} that {login} may view")
        found[mailbox_id] = viewable[mailbox_id]
    return found


def _summary(row, timestamp) -> MessageSummary:
    (message_id, size, header_id, subject, from_header, date_header, sender, received) = row[:8]
    return MessageSummary(
        id=message_id,
        size=size,
        message_id=header_id,
        subject=subject,
        from_header=from_header,
        date_header=date_header,
        envelope_sender=sender,
        received_at=timestamp(received),
        verdict=verdict_from_json(row[8]),
        has_attachment=bool(row[9]),
    )


@read_only
def search(login: str, query: SearchQuery, limit: int = 50, offset: int = 0) -> SearchResults:
    """The filings matching `query` in mailboxes `login` may view, newest first: up to
    `limit` from `offset`. Invalid for a query that is too long or a folder that is none;
    NotFound for a named mailbox the user may not view."""
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise Invalid(f"a page holds 1 to {MAX_PAGE} results")
    if query.folder is not None and query.folder not in FOLDERS:
        raise Invalid(f"there is no folder {query.folder!r}; give one of {', '.join(FOLDERS)}")
    groups = [
        (None, phrases(query.text)),
        ("sender", phrases(query.sender)),
        ("recipient", phrases(query.recipient)),
    ]
    groups = [(field, found) for field, found in groups if found]
    if sum(len(words) for _, found in groups for words in found) > MAX_QUERY_WORDS:
        raise Invalid(f"a search takes at most {MAX_QUERY_WORDS} words; leave some out")
    boxes = _viewable_mailbox_ids(login, query.mailboxes)
    if not boxes:
        return SearchResults(hits=(), more=False)
    p = database_proxy.param
    sqlite = is_sqlite(database_proxy.obj)
    where = [f"f.mailbox_id IN ({placeholders(len(boxes))})"]
    params: list = list(boxes)
    source = "filing f JOIN message m ON m.id = f.message_id"
    source_params: list = []
    order = "m.id DESC, f.id DESC"
    if groups:
        if sqlite:
            source = (
                "message_search s JOIN filing f ON f.message_id = s.rowid"
                " JOIN message m ON m.id = s.rowid"
            )
            where.insert(0, f"message_search MATCH {p}")
            params.insert(0, _sqlite_match(groups))
            # By rowid alone: FTS5 then hands the matches over newest first and the
            # LIMIT stops it early (a second key would sort every match: 0.5 ms against
            # 90 ms for a word in most of 20 000 messages). The filings of one message
            # (a message to oneself and its Sent copy) come in no set order.
            order = "s.rowid DESC"
        else:
            # The planner counts reading a message's tsvector as nearly free, so for a few
            # thousand matches it would rather read every one (a sequential scan, 100 ms
            # a 40 000 messages) than ask the GIN index: it is told not to.
            database_proxy.execute_sql("SET LOCAL enable_seqscan = off")
            matching = "message_search s"
            if _rechecked(groups) and _candidates(_loose_query(groups)) <= RECHECKED_CANDIDATES:
                # The messages holding every word, from the GIN index (exact for words),
                # and only those read for the phrase or the field; see _rechecked.
                matching = (
                    "(SELECT message_id, document FROM message_search"
                    f" WHERE document @@ to_tsquery('simple', {p}) OFFSET 0) s"
                )
                source_params.append(_loose_query(groups))
            source = (
                f"{matching} JOIN filing f ON f.message_id = s.message_id"
                " JOIN message m ON m.id = s.message_id"
            )
            where.insert(0, f"s.document @@ to_tsquery('simple', {p})")
            params.insert(0, _postgres_query(groups))
            order = "s.message_id DESC, f.id DESC"
    if query.folder is not None:
        where.append(f"f.folder = {p}")
        params.append(query.folder)
    if query.since is not None:
        where.append(f"m.received_at >= {p}")
        params.append(Message.received_at.db_value(_midnight(query.since)))
    # The last day there is (9999-12-31) has no day after it: no bound at all.
    if query.until is not None and query.until < datetime.date.max:
        where.append(f"m.received_at < {p}")
        params.append(
            Message.received_at.db_value(_midnight(query.until + datetime.timedelta(days=1)))
        )
    if query.has_attachment:
        where.append("m.has_attachment")
    if query.unread:
        # The flags are words in one column; "|" escapes nothing here but stops
        # PostgreSQL reading the backslash of \Seen as an escape.
        where.append(f"(' ' || f.flags || ' ') NOT LIKE {p} ESCAPE '|'")
        params.append("% \\Seen %")
    sql = (
        "SELECT m.id, m.size, m.message_id, m.subject, m.from_header, m.date_header,"
        " m.envelope_sender, m.received_at, m.verdict, m.has_attachment,"
        " f.uid, f.flags, f.folder, f.mailbox_id, f.context_id"
        f" FROM {source} WHERE {' AND '.join(where)}"
        f" ORDER BY {order} LIMIT {p} OFFSET {p}"
    )
    rows = database_proxy.execute_sql(sql, (*source_params, *params, limit + 1, offset)).fetchall()
    if groups and not sqlite:
        database_proxy.execute_sql("SET LOCAL enable_seqscan = on")
    more = len(rows) > limit
    rows = rows[:limit]
    contexts = {
        context.id: context_record(context)
        for context in Context.select(Context, User)
        .join(User, peewee.JOIN.LEFT_OUTER, on=(Context.owner == User.id))
        .where(Context.id.in_({row[14] for row in rows} or {0}))
    }
    timestamp = Filing.filed_at.python_value
    hits = tuple(
        FilingRecord(
            uid=row[10],
            mailbox_address=boxes[row[13]],
            context=contexts[row[14]],
            flags=tuple(row[11].split()),
            message=_summary(row, timestamp),
            folder=row[12],
        )
        for row in rows
    )
    return SearchResults(hits=hits, more=more)


def _midnight(day: datetime.date) -> datetime.datetime:
    return datetime.datetime(day.year, day.month, day.day)
