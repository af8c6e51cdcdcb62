"""Store operations for receiving and filing mail: which mailbox an address reaches, storing
and filing incoming messages (the hot path, with its prepared statements), the copy a sent
message leaves in its Sent folder, and reading filed messages back (the command line, the
mail client of the web admin).

Each runs inside one transaction opened by `Store.run` (or `run_sync`) and returns frozen
records; none knows about SMTP or HTTP.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Callable, Iterable, Sequence

import attrs
import peewee

from atollon_mail.store import (
    mailboxes,
    message_addresses,
    notices,
    returnpath,
    searchindex,
    searchtext,
    traffic,
)
from atollon_mail.store.common import (
    RECIPIENT_DELIMITER,
    changes_mailbox,
    chunks,
    locked,
    placeholders,
    read_only,
    strip_root_dot,
)
from atollon_mail.store.contexts import context_record
from atollon_mail.store.database import is_sqlite
from atollon_mail.store.errors import Invalid, NotFound, StoreError
from atollon_mail.store.mailboxes import get_mailbox_row, list_mailboxes
from atollon_mail.store.models import (
    FOLDERS,
    Context,
    Filing,
    Mailbox,
    Message,
    User,
    database_proxy,
    utc_now,
)
from atollon_mail.store.records import (
    FiledMessage,
    FilingRecord,
    FolderMove,
    InboundVerdict,
    IncomingMessage,
    MailboxRecord,
    MessageSummary,
    OutgoingMessage,
    Recipient,
    Rejection,
    StoredMessage,
)
from atollon_mail.store.values import FILED_COPY_FLAG, INBOX, JUNK

SEEN_FLAG = "\\Seen"
_CONTEXT_NAME_LIMIT = 200


# --- the verdict of the inbound checks, as stored ---------------------------------------

_VERDICT_FIELDS = tuple(field.name for field in attrs.fields(InboundVerdict))


def verdict_json(verdict: InboundVerdict | None) -> str | None:
    """The verdict as the message row keeps it (JSON), None for none."""
    if verdict is None:
        return None
    values = {name: getattr(verdict, name) for name in _VERDICT_FIELDS}
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


def verdict_from_json(text: str | None) -> InboundVerdict | None:
    """The stored verdict read back; None for none (or one that no longer reads: the
    message is shown without it rather than not at all). Fields it lacks take their
    defaults, fields this program does not know are left out."""
    if not text:
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    if not isinstance(found, dict):
        return None
    values = {}
    for name in _VERDICT_FIELDS:
        if name in found:
            value = found[name]
            values[name] = tuple(value) if isinstance(value, list) else value
    return InboundVerdict(**values)


def _message_summary(message: Message) -> MessageSummary:
    return MessageSummary(
        id=message.id,
        size=message.size,
        message_id=message.message_id,
        subject=message.subject,
        from_header=message.from_header,
        date_header=message.date_header,
        envelope_sender=message.envelope_sender,
        received_at=message.received_at,
        verdict=verdict_from_json(message.verdict),
        has_attachment=message.has_attachment,
    )


# --- receiving: the hot path ------------------------------------------------------------
# Every RCPT and every stored message passes here, on the store's single SQLite thread.
# Building these statements with peewee's query builder cost more than running them, so
# they are written out once per dialect and executed with parameters.

_HOT_SQL = {
    # An inactive domain that only anchors secondary domains (the company's own domain,
    # whose mail is hosted elsewhere) is not ours to receive for: its users are remote.
    "domain": """
        SELECT id, active FROM domain d WHERE name = {p}
        AND (active OR NOT EXISTS (SELECT 1 FROM domain s WHERE s.primary_domain_id = d.id))""",
    # The mailbox (or alias) for up to two candidate names, with the context its mail is
    # filed into: its "store messages to", else its owner's To Do.
    # The last columns say whether the row came through an alias, the mailbox's
    # forwarding (on, keep a copy) and its spam handling.
    "names": """
        SELECT m.local_part, m.id, m.local_part, m.active, COALESCE(m.store_to_id, c.id),
               0, m.forward_enabled, m.forward_keep_copy, m.spam_handling
        FROM mailbox m LEFT JOIN context c ON c.owner_id = m.owner_id AND c.kind = 'todo'
        WHERE m.domain_id = {p} AND m.local_part IN ({p}, {p})
        UNION ALL
        SELECT a.name, m.id, m.local_part, m.active, COALESCE(m.store_to_id, c.id),
               1, m.forward_enabled, m.forward_keep_copy, m.spam_handling
        FROM alias a JOIN mailbox m ON m.id = a.mailbox_id
        LEFT JOIN context c ON c.owner_id = m.owner_id AND c.kind = 'todo'
        WHERE a.domain_id = {p} AND a.name IN ({p}, {p})""",
    "default_types": """
        SELECT id, default_incoming, default_outgoing FROM message_type
        WHERE default_incoming OR default_outgoing""",
    "store_to": """
        SELECT COALESCE(m.store_to_id, c.id) FROM mailbox m
        LEFT JOIN context c ON c.owner_id = m.owner_id AND c.kind = 'todo'
        WHERE m.id = {p}""",
    "insert_message": """
        INSERT INTO message (raw, size, message_id, subject, from_header, date_header,
                             envelope_sender, received_at, type_id, verdict, has_attachment)
        VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) RETURNING id""",
    # The counter is bumped in the statement that reads it: no two writers share a uid.
    "next_uid": "UPDATE mailbox SET next_uid = next_uid + 1 WHERE id = {p} RETURNING next_uid",
    "insert_filing": """
        INSERT INTO filing (message_id, mailbox_id, context_id, uid, flags, filed_at, folder)
        VALUES ({p}, {p}, {p}, {p}, '', {p}, {p})""",
    # Sending: the Sent copy, the queue rows (every submitted message passes here too).
    "next_uid_sent": """
        UPDATE mailbox SET next_uid = next_uid + 1 WHERE id = {p}
        RETURNING next_uid, sent_context_id""",
    "mailbox_owner_address": """
        SELECT m.owner_id, m.local_part, d.name
        FROM mailbox m JOIN domain d ON d.id = m.domain_id WHERE m.id = {p}""",
    "insert_folder": """
        INSERT INTO context (kind, name, owner_id, created_at)
        VALUES ('folder', {p}, {p}, {p}) RETURNING id""",
    "set_sent_context": "UPDATE mailbox SET sent_context_id = {p} WHERE id = {p}",
    "insert_flagged_filing": """
        INSERT INTO filing (message_id, mailbox_id, context_id, uid, flags, filed_at)
        VALUES ({p}, {p}, {p}, {p}, {p}, {p})""",
    # The message names its origin, so the hooks of the origin's kind hear of outcomes.
    "insert_queue_message": """
        INSERT INTO queue_message (message_id, envelope_sender, is_bounce, origin_mailbox_id,
                                   created_at, origin_kind, origin_id)
        VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}) RETURNING id""",
    "insert_queue_recipient": """
        INSERT INTO queue_recipient (queue_message_id, address, domain, state, attempts,
                                     next_attempt_at, delay_warned, created_at, updated_at)
        VALUES ({p}, {p}, {p}, 'queued', 0, {p}, {p}, {p}, {p}) RETURNING id""",
    # The queue runner: one query per waiting state, each walking the (state,
    # next_attempt_at) index in order, so a claim reads about `limit` rows however long
    # the queue (a single "state IN (...)" would have to sort every due row).
    "due": """
        SELECT r.id, r.queue_message_id, q.message_id, q.envelope_sender, r.address, r.domain,
               r.attempts, q.created_at, q.is_bounce, r.delay_warned, r.next_attempt_at,
               q.origin_kind, q.origin_id, q.origin_mailbox_id
        FROM queue_recipient r JOIN queue_message q ON q.id = r.queue_message_id
        WHERE r.state = {p} AND r.next_attempt_at <= {p}
        ORDER BY r.next_attempt_at, r.id LIMIT {p}""",
    # When the runner looks again: per waiting state, on the same index.
    "next_due": "SELECT MIN(next_attempt_at) FROM queue_recipient WHERE state = {p}",
    "record_result": """
        UPDATE queue_recipient
        SET attempts = attempts + 1, last_attempt_at = {p}, last_reply = {p}, state = {p},
            next_attempt_at = COALESCE({p}, next_attempt_at), updated_at = {p},
            dot_sent_at = NULL, uncertain = (uncertain OR {p})
        WHERE id = {p}""",
    "insert_event": """
        INSERT INTO queue_event (queue_recipient_id, at, server, reply, outcome, next_attempt_at)
        VALUES ({p}, {p}, {p}, {p}, {p}, {p})""",
}
_hot_sql_by_param: dict[str, dict[str, str]] = {}


def prepared_sql(name: str) -> str:
    param = database_proxy.param
    statements = _hot_sql_by_param.get(param)
    if statements is None:
        statements = {key: sql.format(p=param) for key, sql in _HOT_SQL.items()}
        _hot_sql_by_param[param] = statements
    return statements[name]


def execute_prepared(name: str, params: tuple):
    return database_proxy.execute_sql(prepared_sql(name), params)


@read_only
def resolve_recipient(local_part: str, domain_name: str) -> Recipient | Rejection:
    """Which mailbox receives local_part@domain_name, or why nothing does.

    Local parts match case-insensitively and `user+tag` reaches `user`.
    """
    domain_name = strip_root_dot(domain_name.lower())
    domain = execute_prepared("domain", (domain_name,)).fetchone()
    if domain is None:
        return Rejection("unknown-domain", f"{domain_name} is not a domain of this server")
    domain_id, domain_active = domain
    if not domain_active:
        return Rejection("inactive-domain", f"{domain_name} does not accept mail at present")
    local = local_part.lower()
    base, _, _tag = local.partition(RECIPIENT_DELIMITER)
    names = [local] if base == local or not base else [local, base]
    found: dict[str, tuple] = {}
    for row in execute_prepared("names", (domain_id, names[0], names[-1]) * 2).fetchall():
        # One name can be an inactive (redirected) mailbox and an alias of the mailbox it
        # was redirected to: an active mailbox wins, then an active alias, then the rest.
        rank = (not row[3], bool(row[5]))
        if row[0] not in found or rank < found[row[0]][0]:
            found[row[0]] = (rank, row[1:])
    for name in names:  # the whole name first, then the name without its +tag
        if name not in found:
            continue
        mailbox_id, mailbox_local_part, active, context_id, _, forwards, keep_copy, spam = found[
            name
        ][1]
        if not active:
            return Rejection("inactive-mailbox", f"{local}@{domain_name} does not receive mail")
        return Recipient(
            address=f"{local}@{domain_name}",
            mailbox_id=mailbox_id,
            mailbox_address=f"{mailbox_local_part}@{domain_name}",
            context_id=context_id,
            forwards=bool(forwards),
            keep_copy=bool(keep_copy),
            spam_handling=spam,
        )
    return Rejection("unknown-address", f"{local}@{domain_name} is not an address here")


def default_type_ids() -> tuple[int | None, int | None]:
    """(incoming, outgoing): the message types new mail gets unless it names one."""
    incoming = outgoing = None
    for type_id, is_incoming, is_outgoing in execute_prepared("default_types", ()).fetchall():
        if is_incoming and incoming is None:
            incoming = type_id
        if is_outgoing and outgoing is None:
            outgoing = type_id
    return incoming, outgoing


def insert_message(
    message: IncomingMessage | OutgoingMessage,
    stamp,
    type_id,
    delivered: bool = True,
    indexed: bool = True,
    addressed: bool = True,
) -> int:
    """The Message row: the raw bytes once, with the summary headers of the record.

    `delivered`: it is filed for a local recipient (a final delivery), so it is stored
    with its Return-Path on top (the envelope sender); a Return-Path it arrived with is
    dropped either way. Its size is that of the bytes stored.

    `indexed`: it will be filed somewhere, so its text goes into the search index in the
    same transaction (store.searchindex), taken from the message (store.searchtext.extract)
    unless the record carries it already. Mail that is only queued is never searched.

    `addressed`: its senders' and recipients' addresses are recorded (message_addresses),
    so a contact's mail finds it once it is filed somewhere."""
    text = None
    if indexed:
        text = message.search_text or searchtext.extract(message.raw)
    if delivered:
        sender = getattr(message, "return_path", None)
        raw = returnpath.delivered(
            message.raw, message.envelope_sender if sender is None else sender
        )
    else:
        raw = returnpath.without_return_path(message.raw)
    (message_id,) = execute_prepared(
        "insert_message",
        (
            Message.raw.db_value(raw),
            len(raw),
            message.message_id,
            message.subject,
            message.from_header,
            message.date_header,
            message.envelope_sender,
            stamp,
            message.type_id if message.type_id is not None else type_id,
            verdict_json(message.verdict),
            text is not None and text.has_attachment,
        ),
    ).fetchone()
    if addressed:
        message_addresses.record_addresses(
            message_id, raw, None if text is None else text.addresses
        )
    if text is not None:
        searchindex.index_message(message_id, text)
    return message_id


def files_to_junk(recipient: Recipient, verdict: InboundVerdict | None) -> bool:
    """Whether mail with this verdict is filed into the recipient mailbox's Junk: the
    checks call it junk and the mailbox's spam handling is "junk" (with "tag" or "off"
    it goes to the inbox). Mail nothing checked goes to the inbox."""
    return verdict is not None and verdict.junk and recipient.spam_handling == JUNK


def file_for_recipients(
    message_id: int,
    recipients: Sequence[Recipient],
    stamp,
    verdict: InboundVerdict | None = None,
) -> int:
    """File the message once per mailbox reached, into its inbox or (by `verdict` and the
    mailbox's spam handling, see files_to_junk) its Junk; how many filings that made."""
    targets: dict[int, tuple[int | None, str]] = {}
    for recipient in recipients:  # a mailbox reached twice gets one copy
        if recipient.mailbox_id not in targets:
            folder = JUNK if files_to_junk(recipient, verdict) else INBOX
            targets[recipient.mailbox_id] = (recipient.context_id, folder)
    for mailbox_id, (context_id, folder) in targets.items():
        row = execute_prepared("next_uid", (mailbox_id,)).fetchone()
        if row is None:
            raise NotFound(f"mailbox {mailbox_id} was removed")
        if context_id is None:
            (context_id,) = execute_prepared("store_to", (mailbox_id,)).fetchone()
        execute_prepared(
            "insert_filing", (message_id, mailbox_id, context_id, row[0] - 1, stamp, folder)
        )
        notices.note_filed(mailbox_id, folder == JUNK)
    return len(targets)


def _store_one(incoming: IncomingMessage, now, type_id: int | None = None) -> StoredMessage:
    if not incoming.recipients:
        raise Invalid("a message needs at least one recipient; nothing was stored")
    stamp = Message.received_at.db_value(now)
    message_id = insert_message(incoming, stamp, type_id)
    filings = file_for_recipients(message_id, incoming.recipients, stamp, incoming.verdict)
    return StoredMessage(id=message_id, filings=filings)


def lock_mailboxes(mailbox_ids: Iterable[int]) -> None:
    """Every mailbox a batch files into, locked up front in id order: concurrent batches
    filing into the same mailboxes in other orders would otherwise deadlock (PostgreSQL)."""
    ordered = sorted(set(mailbox_ids))
    if ordered and database_proxy.for_update:
        locked(
            Mailbox.select(Mailbox.id).where(Mailbox.id.in_(ordered)).order_by(Mailbox.id)
        ).execute()


# What one item of a batch may raise without the others failing with it: the database's
# refusals, the store's own, and a value the driver will not send (psycopg2 raises
# ValueError for a NUL character in text).
_ITEM_ERRORS = (peewee.DatabaseError, StoreError, ValueError)


def group_commit(store_one: Callable, items: Sequence, now) -> list:
    """store_one(item, now) for each item in the caller's one transaction.

    An item that fails is reported as its exception and leaves nothing behind; the others
    are kept. The batch is first tried under one savepoint; only if something in it fails
    is it redone with a savepoint per item (savepoints cost statements).
    """
    try:
        with database_proxy.atomic():
            return [store_one(item, now) for item in items]
    except _ITEM_ERRORS:
        pass
    results: list = []
    for item in items:
        try:
            with database_proxy.atomic():
                results.append(store_one(item, now))
        except _ITEM_ERRORS as problem:
            results.append(problem)
    return results


def store_messages(
    messages: Sequence[IncomingMessage], now: datetime.datetime | None = None
) -> list[StoredMessage | Exception]:
    """Store and file several messages in the caller's one transaction (group commit),
    and count them in the hour's traffic (one statement for the batch).

    A message that fails is reported as its exception and leaves nothing behind; the
    others are kept.
    """
    lock_mailboxes(
        recipient.mailbox_id for incoming in messages for recipient in incoming.recipients
    )
    incoming_type, _ = default_type_ids()
    now = utc_now() if now is None else now
    results = group_commit(functools.partial(_store_one, type_id=incoming_type), messages, now)
    count_received(
        now,
        (
            (incoming.recipients, incoming.verdict)
            for incoming, result in zip(messages, results, strict=True)
            if not isinstance(result, Exception) and not incoming.notification
        ),
    )
    return results


def count_received(now, filed: Iterable[tuple[Sequence[Recipient], InboundVerdict | None]]):
    """Count messages filed for local recipients (each given as its recipients and its
    verdict) as received, and as junk where some recipient's copy went to Junk."""
    received = junk = 0
    for recipients, verdict in filed:
        if recipients:
            received += 1
            junk += any(files_to_junk(recipient, verdict) for recipient in recipients)
    traffic.add(now, received=received, junk=junk)


def _folder(folder: str) -> str:
    if folder not in FOLDERS:
        raise Invalid(f"there is no folder {folder!r}; give one of {', '.join(FOLDERS)}")
    return folder


def _filed_before():
    """The filings of the same message in the same mailbox and folder made before this
    one: in a folder's listing a message filed into several contexts ("File to...") is
    listed once, as first filed (moves keep its filings in one folder). The listing of
    every filing (folder None) shows each, with its context."""
    earlier = Filing.alias("earlier")
    return earlier.select(earlier.id).where(
        (earlier.mailbox == Filing.mailbox)
        & (earlier.message == Filing.message)
        & (earlier.folder == Filing.folder)
        & (earlier.id < Filing.id)
    )


@read_only
def list_filings(
    mailbox_address: str, limit: int = 100, offset: int = 0, folder: str | None = None
) -> list[FilingRecord]:
    """A mailbox's filings, newest first: those in `folder` (values.FOLDERS), each
    message once, or every filing in any folder when None."""
    mailbox = get_mailbox_row(mailbox_address)
    where = Filing.mailbox == mailbox.id
    if folder is not None:
        where &= (Filing.folder == _folder(folder)) & ~peewee.fn.EXISTS(_filed_before())
    return filings_page(where, f"{mailbox.local_part}@{mailbox.domain.name}", limit, offset)


def filings_page(where, mailbox_address: str, limit: int, offset: int) -> list[FilingRecord]:
    """The filings `where` selects (of one mailbox), newest first, one page of them."""
    # The context's owner is joined too: a lazy load per filing doubled the queries.
    query = (
        Filing.select(Filing, Message, Context, User)
        .join(Message)
        .switch(Filing)
        .join(Context)
        .join(User, peewee.JOIN.LEFT_OUTER, on=(Context.owner == User.id))
        .where(where)
        .order_by(Filing.uid.desc())
        .limit(limit)
        .offset(offset)
    )
    return [filing_record(filing, mailbox_address) for filing in query]


def filing_record(filing: Filing, mailbox_address: str) -> FilingRecord:
    """The record of a filing read with its message, context and the context's owner."""
    return FilingRecord(
        uid=filing.uid,
        mailbox_address=mailbox_address,
        context=context_record(filing.context),
        flags=tuple(filing.flags.split()),
        message=_message_summary(filing.message),
        folder=filing.folder,
    )


@read_only
def list_junk(mailbox_address: str, limit: int = 100, offset: int = 0) -> list[FilingRecord]:
    """What lies in a mailbox's Junk, newest first."""
    return list_filings(mailbox_address, limit, offset, folder=JUNK)


@read_only
def message_raw(message_id: int) -> bytes:
    message = Message.get_or_none(Message.id == message_id)
    if message is None:
        raise NotFound(f"no message with id {message_id}; see: messages list ADDRESS")
    return bytes(message.raw)


@read_only
def count_messages() -> int:
    return Message.select().count()


@read_only
def messages_raw(message_ids: Iterable[int]) -> dict[int, bytes]:
    """The raw bytes of several messages at once; ids not found are left out."""
    found: dict[int, bytes] = {}
    for chunk in chunks(sorted(set(message_ids))):
        query = Message.select(Message.id, Message.raw).where(Message.id.in_(chunk)).tuples()
        found.update((message_id, bytes(raw)) for message_id, raw in query)
    return found


# --- the Sent copy ----------------------------------------------------------------------


def file_sent_copy(message_id: int, mailbox_id: int, stamp) -> None:
    """A copy in the mailbox's Sent folder (made on first use), already seen."""
    row = execute_prepared("next_uid_sent", (mailbox_id,)).fetchone()
    if row is None:
        raise NotFound(f"mailbox {mailbox_id} was removed; nothing was sent")
    uid, context_id = row[0] - 1, row[1]
    if context_id is None:
        # The mailbox row is locked (next_uid above): no second Sent folder can appear.
        context_id = make_sent_context(mailbox_id, stamp)
    execute_prepared(
        "insert_flagged_filing", (message_id, mailbox_id, context_id, uid, SEEN_FLAG, stamp)
    )


def make_sent_context(mailbox_id: int, stamp) -> int:
    """The mailbox's Sent folder made, as on its first sent message (the caller holds the
    mailbox row locked and found it had none); its context's id."""
    owner_id, local_part, domain = execute_prepared(
        "mailbox_owner_address", (mailbox_id,)
    ).fetchone()
    name = f"Sent ({local_part}@{domain})"[:_CONTEXT_NAME_LIMIT]
    (context_id,) = execute_prepared("insert_folder", (name, owner_id, stamp)).fetchone()
    execute_prepared("set_sent_context", (context_id, mailbox_id))
    return context_id


# --- the mail client of the web admin ---------------------------------------------------


@read_only
def viewable_mailboxes(login: str) -> list[MailboxRecord]:
    """The mailboxes the user may view, by the same rule as every other page."""
    return [
        mailbox
        for mailbox in list_mailboxes()
        if mailboxes.user_rights(login, mailbox.address).view
    ]


@read_only
def filed_message(mailbox_address: str, message_id: int) -> FiledMessage:
    """A message filed in this mailbox, with the folder it lies in there and its verdict;
    NotFound when it is not filed here (an id alone shows nothing of another mailbox's
    mail). A message filed twice in one mailbox (mail to oneself and its Sent copy) is
    shown where its first filing lies."""
    mailbox = get_mailbox_row(mailbox_address)
    address = f"{mailbox.local_part}@{mailbox.domain.name}"
    found = (
        Filing.select(Filing.folder, Message.raw, Message.verdict)
        .join(Message)
        .where((Filing.mailbox == mailbox.id) & (Filing.message == message_id))
        .order_by(Filing.id)
        .limit(1)
        .tuples()
        .first()
    )
    if found is None:
        raise NotFound(f"no message {message_id} in {address}")
    folder, raw, verdict = found
    return FiledMessage(
        message_id=message_id,
        mailbox_address=address,
        folder=folder,
        raw=bytes(raw),
        verdict=verdict_from_json(verdict),
    )


@changes_mailbox
def move_message(mailbox_address: str, message_id: int, folder: str) -> FolderMove:
    """Move a message filed in this mailbox into `folder` (values.FOLDERS): its Junk, or
    back to the inbox. Each filing moved gets the mailbox's next uid and comes into the
    folder now (Junk's age counts from then). NotFound when it is not filed here; a
    message that lies there already is left as it is (`moved` 0). Its bytes come back for
    teaching the spam filter."""
    folder = _folder(folder)
    mailbox = get_mailbox_row(mailbox_address)
    address = f"{mailbox.local_part}@{mailbox.domain.name}"
    # Locked first (PostgreSQL): two moves of one message run one after the other, and
    # the second finds it moved already.
    lock_mailboxes([mailbox.id])
    filings = list(
        Filing.select(Filing.id, Filing.folder)
        .where((Filing.mailbox == mailbox.id) & (Filing.message == message_id))
        .order_by(Filing.id)
        .tuples()
    )
    if not filings:
        raise NotFound(f"no message {message_id} in {address}")
    stamp = Filing.filed_at.db_value(utc_now())
    moving = [filing_id for filing_id, found in filings if found != folder]
    for filing_id in moving:
        (next_uid,) = execute_prepared("next_uid", (mailbox.id,)).fetchone()
        # A new uid is a new mod-sequence too (modseq None: the uid stands for it).
        Filing.update(folder=folder, uid=next_uid - 1, filed_at=stamp, modseq=None).where(
            Filing.id == filing_id
        ).execute()
    raw = Message.select(Message.raw).where(Message.id == message_id).scalar()
    return FolderMove(
        message_id=message_id,
        mailbox_address=address,
        folder=folder,
        moved=len(moving),
        raw=bytes(raw),
    )


# IMAP's flags and keywords: a backslash and a name, or a plain atom such as $Forwarded.
_FLAG_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$_-")
_FLAGS_LIMIT = 200  # the flags column


# IMAP's system flags (RFC 3501 2.3.2), by their names in lower case: a flag with a
# backslash is one of these, kept in this spelling whatever case it was given in.
SYSTEM_FLAGS = {
    flag.lower(): flag
    for flag in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent")
}


def valid_flag(flag: str) -> str:
    """The flag, a system flag in its usual spelling (\\SEEN is \\Seen), or Invalid when
    it is none (an unknown \\Name is no system flag; keywords are plain atoms)."""
    if flag.startswith("\\"):
        if flag.lower() not in SYSTEM_FLAGS:
            raise Invalid(f"{flag!r} is not a system flag; give one such as \\Answered")
        return SYSTEM_FLAGS[flag.lower()]
    if not flag or not set(flag) <= _FLAG_CHARACTERS:
        raise Invalid(f"{flag!r} is not a flag; give one such as \\Answered or $Forwarded")
    return flag


def client_flag(flag: str) -> str:
    """valid_flag for a flag a person or mail client sets: $Filed, in any case, is the
    store's own ("File to..." copies) and refused."""
    flag = valid_flag(flag)
    if flag.lower() == FILED_COPY_FLAG.lower():
        raise Invalid(f"{flag} is kept for messages filed to a folder; choose another keyword")
    return flag


def has_flag(flag: str) -> peewee.ColumnBase:
    """A condition: the filing's flags hold exactly this flag (a whole word, in this
    case), not just text containing it (LIKE would match $filed and X$FiledY). Answered
    from the filing_mailbox_folder_context_flags index, which holds the flags."""
    find = peewee.fn.instr if is_sqlite(database_proxy.obj) else peewee.fn.strpos
    return find(peewee.Value(" ").concat(Filing.flags).concat(" "), f" {flag} ") > 0


def next_modseq(mailbox_id: int) -> int:
    """A fresh mod-sequence for the filings of the mailbox whose flags change now (IMAP's
    CONDSTORE): a value of the mailbox's uid counter, so mod-sequences ascend per mailbox
    with its uids and no two changes share one. The mailbox row stays locked until
    commit. Every writer of Filing.flags sets Filing.modseq to one of these."""
    row = execute_prepared("next_uid", (mailbox_id,)).fetchone()
    if row is None:
        raise NotFound(f"mailbox {mailbox_id} was removed")
    return row[0] - 1


def _flags_of_message(mailbox_address: str, message_id: int) -> list[tuple[int, int, str]]:
    """(filing id, mailbox id, flags) of every filing of the message in this mailbox, the
    mailbox locked first (PostgreSQL: two flag changes of one message do not lose either);
    NotFound when the message is not filed here."""
    mailbox = get_mailbox_row(mailbox_address)
    lock_mailboxes([mailbox.id])
    filings = list(
        Filing.select(Filing.id, Filing.mailbox, Filing.flags)
        .where((Filing.mailbox == mailbox.id) & (Filing.message == message_id))
        .tuples()
    )
    if not filings:
        raise NotFound(f"no message {message_id} in {mailbox.local_part}@{mailbox.domain.name}")
    return filings


def _change_flag(mailbox_address: str, message_id: int, flag: str, add: bool) -> int:
    """Add or take `flag` on every filing of the message in this mailbox that lacks or
    has it, the changed ones under one fresh mod-sequence; how many changed."""
    flag = valid_flag(flag)
    changed = 0
    modseq = None
    for filing_id, mailbox_id, flags in _flags_of_message(mailbox_address, message_id):
        present = flags.split()
        if (flag in present) == add:
            continue
        if add:
            updated = " ".join([*present, flag])
            if len(updated) > _FLAGS_LIMIT:
                raise Invalid(f"message {message_id} has too many flags to add {flag}")
        else:
            updated = " ".join(name for name in present if name != flag)
        if modseq is None:
            modseq = next_modseq(mailbox_id)
        Filing.update(flags=updated, modseq=modseq).where(Filing.id == filing_id).execute()
        changed += 1
    return changed


@changes_mailbox
def add_flag(mailbox_address: str, message_id: int, flag: str) -> int:
    """Add `flag` (e.g. \\Answered) to every filing of the message in this mailbox that
    lacks it; how many changed. NotFound when the message is not filed here."""
    return _change_flag(mailbox_address, message_id, flag, add=True)


@changes_mailbox
def remove_flag(mailbox_address: str, message_id: int, flag: str) -> int:
    """Take `flag` (e.g. \\Seen) from every filing of the message in this mailbox that
    has it; how many changed. NotFound when the message is not filed here."""
    return _change_flag(mailbox_address, message_id, flag, add=False)


@changes_mailbox
def move_to_junk(mailbox_address: str, message_id: int) -> FolderMove:
    """The user says it is junk: into the mailbox's Junk (see move_message)."""
    return move_message(mailbox_address, message_id, JUNK)


@changes_mailbox
def move_to_inbox(mailbox_address: str, message_id: int) -> FolderMove:
    """The user says it is not junk: back to the inbox (see move_message)."""
    return move_message(mailbox_address, message_id, INBOX)


# How many Junk filings one purge_junk call removes: one transaction stays short, so the
# filing of new mail (on SQLite, the same single thread) waits little for it.
PURGE_BATCH = 500


def remove_unused_messages(message_ids: Iterable[int]) -> None:
    """Delete those of these messages that nothing needs any more: no filing (in any
    mailbox), no queue entry and no campaign recipient's record names them."""
    for chunk in chunks(sorted(set(message_ids))):
        marks = placeholders(len(chunk))
        # campaign_recipient.message_id is a plain number without an index: one scan
        # per chunk (the uncorrelated IN), not one per message.
        database_proxy.execute_sql(
            f"DELETE FROM message WHERE id IN ({marks})"
            " AND NOT EXISTS (SELECT 1 FROM filing f WHERE f.message_id = message.id)"
            " AND NOT EXISTS (SELECT 1 FROM queue_message q WHERE q.message_id = message.id)"
            " AND id NOT IN (SELECT c.message_id FROM campaign_recipient c"
            f" WHERE c.message_id IN ({marks}))",
            (*chunk, *chunk),
        )


def purge_junk(before: datetime.datetime, limit: int = PURGE_BATCH) -> int:
    """Remove up to `limit` filings that came into a Junk before `before` (naive UTC),
    oldest first, and the messages left filed nowhere and queued for nobody; how many
    filings went. Called again until it removes fewer than `limit`."""
    rows = list(
        Filing.select(Filing.id, Filing.message)
        .where((Filing.folder == JUNK) & (Filing.filed_at < before))
        .order_by(Filing.filed_at, Filing.id)
        .limit(limit)
        .tuples()
    )
    if not rows:
        return 0
    for chunk in chunks([filing_id for filing_id, _ in rows]):
        Filing.delete().where(Filing.id.in_(chunk)).execute()
    remove_unused_messages({message_id for _, message_id in rows})
    return len(rows)
