"""Store operations for IMAP: the folders a user sees (the mail client's folders of every
mailbox they own or that is shared with them), each folder's uids, flags and
mod-sequences, the messages' bytes read in pieces, and what a client changes (flags,
expunge, copy and move, append).

An IMAP folder is a view of the filings of one mailbox, the same the web client shows
(store.mailfolders): INBOX (folder inbox except the Sent context's filings and the copies
"File to..." made), Sent (folder inbox, the mailbox's Sent context), Drafts, Junk, Trash,
and CRM/<name> for each CRM folder or project (folder inbox, that context). Its uids are
the mailbox's: unique and ascending. UIDVALIDITY is the mailbox's id for the fixed
folders, and for a CRM folder a stable non-zero 32-bit value of (mailbox, context).
UIDNEXT is the mailbox's next uid: it grows when mail comes into another folder of the
mailbox too (and when flags change: mod-sequences come from the same counter).

Names (personal namespace "", shared namespace "Shared/", delimiter "/"):
- the user's default mailbox (owned and default, else the first owned by id): INBOX,
  Sent, Drafts, Junk, Trash, CRM/<name>; "CRM" itself cannot be selected;
- every other mailbox the user owns: "<address>/INBOX", "<address>/Sent", ...
- mailboxes shared with the user (a view or edit right granted, not owned):
  "Shared/<address>/INBOX", ... read-only with view, read-write with edit.
  (Administrators see here only what was shared with them, not every mailbox.)
A "/" in a CRM folder's name is shown as "-"; a name shown twice in one mailbox gets
" (<id>)" after the first (the lowest id keeps the plain name).

CRM folders of a mailbox: those "File to..." offers (every organization's folders and
projects) when the user may write to the mailbox, and every context holding its mail in
folder inbox besides its "store messages to" and Sent contexts.

Mod-sequences (CONDSTORE): a filing's is COALESCE(modseq, uid); every change of its flags
takes a fresh value of the mailbox's uid counter (filing.next_modseq). The keyword $Filed
(a "File to..." copy) is the store's own: IMAP never shows it and cannot set or clear it.
HIGHESTMODSEQ is the largest mod-sequence of a folder's messages (1 when empty): it
falls when the message holding it is expunged, and rises past any earlier value with
the next change (the counter only grows).

Where this differs from the plan the server was written against: ImapFolder.folder is
"sent" for Sent; StoreResult also has `unchanged` (matched, flags so already);
message_bytes leaves out messages larger than `limit` (read them with raw_slice);
message_bytes, message_headers and raw_slice read a message by (login, mailbox id, uid)
through its filing, never by the Message id (a deleted message's id may be reused);
append takes the record append_message makes outside the store (or raw bytes); a change
of a folder shared to view only raises errors.ReadOnly; there is no search_text_uids
(the full-text index matches whole words, IMAP's SEARCH TEXT any substring).

Added for speed (migration 15, table imap_summary): what IMAP computes of a message's
header is kept once computed, by the server, never by the inbound path: its ENVELOPE
(MessageItem.envelope, None until kept) and the decoded, case-folded values of the
header fields SEARCH asks for most (SUMMARY_FIELDS). save_summaries(records) keeps them;
search_summaries(login, name, terms) answers header keys over them in SQL and lists the
uids with nothing kept yet (the server matches those itself, and keeps them).
"""

from __future__ import annotations

import datetime
import email.header
import email.parser
import email.policy
import zlib
from collections.abc import Iterable, Sequence

import attrs
import peewee

from atollon_mail.store import notices, searchtext
from atollon_mail.store.common import chunks, flushed_lazily, placeholders, read_only
from atollon_mail.store.database import is_sqlite
from atollon_mail.store.errors import Invalid, NotFound, ReadOnly
from atollon_mail.store.filing import (
    FILED_COPY_FLAG,
    SEEN_FLAG,
    client_flag,
    default_type_ids,
    has_flag,
    insert_message,
    lock_mailboxes,
    make_sent_context,
    next_modseq,
    remove_unused_messages,
)
from atollon_mail.store.mailfolders import SENT, folder_filings
from atollon_mail.store.models import (
    Context,
    Domain,
    Filing,
    ImapSummary,
    Mailbox,
    MailboxAccess,
    Message,
    User,
    database_proxy,
    utc_now,
)
from atollon_mail.store.records import OutgoingMessage
from atollon_mail.store.values import DRAFTS, INBOX, JUNK, TRASH

DELIMITER = "/"
SHARED_PREFIX = "Shared"
CRM_PREFIX = "CRM"
INBOX_NAME = "INBOX"
DELETED_FLAG = "\\Deleted"
RECENT_FLAG = "\\Recent"
# The fixed folders of every mailbox: (folder, name, SPECIAL-USE attribute).
FIXED = (
    (INBOX, INBOX_NAME, None),
    (SENT, "Sent", "\\Sent"),
    (DRAFTS, "Drafts", "\\Drafts"),
    (JUNK, "Junk", "\\Junk"),
    (TRASH, "Trash", "\\Trash"),
)
ARCHIVE_USE = "\\Archive"
# How much of a message's start is read for its header block before reading it whole.
HEADER_READ = 64 * 1024
# message_bytes: the largest message returned whole by default (larger: raw_slice).
WHOLE_LIMIT = 64 * 1024


# --- records ----------------------------------------------------------------------------


@attrs.frozen
class ImapFolder:
    """One IMAP folder of a user. `folder`: "inbox", "sent", "drafts", "junk" or "trash"
    for a fixed folder, None for a CRM folder (then `context_id` is its context) and for
    a parent that cannot be selected (`selectable` False: "CRM", "<address>", "Shared",
    "Shared/<address>"). Sent's `context_id` is the mailbox's Sent context (None before
    its first sent message)."""

    name: str
    mailbox_id: int
    mailbox_address: str
    folder: str | None
    context_id: int | None
    special_use: str | None
    writable: bool
    uidvalidity: int
    selectable: bool = True


@attrs.frozen
class FolderSnapshot:
    """A folder as SELECT shows it: its uids ascending, how many lack \\Seen and the first
    of them, the keywords its messages carry."""

    folder: ImapFolder
    uidnext: int
    highestmodseq: int
    uids: tuple[int, ...]
    unseen: int
    first_unseen_uid: int | None
    keywords: tuple[str, ...]


@attrs.frozen
class FolderStatus:
    messages: int
    unseen: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int


@attrs.frozen
class MessageItem:
    """One message of a folder: its uid there, mod-sequence, flags (never \\Recent or the
    store's $Filed), size in octets, when it was received (aware, UTC), and the id of its
    Message row (never to read its bytes by: message_bytes etc. read by uid)."""

    uid: int
    modseq: int
    flags: tuple[str, ...]
    size: int
    internaldate: datetime.datetime
    message_id: int
    # Its ENVELOPE as kept by save_summaries (None: not kept yet, or by another version).
    envelope: bytes | None = None


# --- which folders a user sees ----------------------------------------------------------


@attrs.frozen
class _Box:
    id: int
    address: str
    sent_context_id: int | None
    store_to_id: int
    next_uid: int
    writable: bool
    prefix: str  # "" for the default mailbox, "<address>/" or "Shared/<address>/"


def _user(login: str) -> User | None:
    return User.get_or_none(User.login == login.strip().lower())


def _boxes(user: User) -> list[_Box]:
    """Every mailbox the user sees over IMAP: owned (the default one first, unprefixed,
    then the others by address), then those shared with them, by address. Four queries
    however many mailboxes."""
    owned = list(
        Mailbox.select(Mailbox, Domain)
        .join(Domain)
        .where(Mailbox.owner == user.id)
        .order_by(Mailbox.id)
    )
    seen: list[tuple[Mailbox, bool, str]] = []
    if owned:
        default = next((mailbox for mailbox in owned if mailbox.is_default), owned[0])
        seen.append((default, True, ""))
        others = sorted(
            (mailbox for mailbox in owned if mailbox.id != default.id),
            key=lambda mailbox: (mailbox.domain.name, mailbox.local_part),
        )
        for mailbox in others:
            seen.append((mailbox, True, f"{mailbox.local_part}@{mailbox.domain.name}/"))
    shared = (
        Mailbox.select(Mailbox, Domain, MailboxAccess)
        .join(Domain)
        .switch(Mailbox)
        .join(MailboxAccess, on=(MailboxAccess.mailbox == Mailbox.id), attr="access")
        .where(
            (MailboxAccess.user == user.id)
            & (Mailbox.owner != user.id)
            & (MailboxAccess.can_view | MailboxAccess.can_edit)
        )
        .order_by(Domain.name, Mailbox.local_part)
    )
    for mailbox in shared:
        address = f"{mailbox.local_part}@{mailbox.domain.name}"
        seen.append((mailbox, bool(mailbox.access.can_edit), f"{SHARED_PREFIX}/{address}/"))
    # A mailbox without "store messages to" files into its owner's To Do.
    owners = sorted({mailbox.owner_id for mailbox, _, _ in seen if mailbox.store_to_id is None})
    todo = dict(
        Context.select(Context.owner, Context.id)
        .where(Context.owner.in_(owners) & (Context.kind == "todo"))
        .tuples()
        if owners
        else ()
    )
    return [
        _Box(
            id=mailbox.id,
            address=f"{mailbox.local_part}@{mailbox.domain.name}",
            sent_context_id=mailbox.sent_context_id,
            store_to_id=(
                mailbox.store_to_id if mailbox.store_to_id is not None else todo[mailbox.owner_id]
            ),
            next_uid=mailbox.next_uid,
            writable=writable,
            prefix=prefix,
        )
        for mailbox, writable, prefix in seen
    ]


def crm_uidvalidity(mailbox_id: int, context_id: int) -> int:
    """The UIDVALIDITY of a CRM folder: stable, non-zero, 32 bits, with the high bit set
    (a fixed folder's is its mailbox's id, far below)."""
    return zlib.crc32(f"{mailbox_id}:{context_id}".encode()) | 0x80000000


def _shown(name: str) -> str:
    # A "/" would make a level of its own; control characters have no place in a name.
    return "".join("-" if c == DELIMITER or ord(c) < 32 or c == "\x7f" else c for c in name)


def _organization_contexts() -> list[tuple[int, str]]:
    """(id, name) of every organization's folder and project: what "File to..." offers."""
    return list(
        Context.select(Context.id, Context.name)
        .where(Context.organization.is_null(False) & Context.kind.in_(("folder", "project")))
        .order_by(Context.id)
        .tuples()
    )


def _holding_contexts(mailbox_ids: Sequence[int]) -> dict[int, set[int]]:
    """The contexts holding each mailbox's mail in folder inbox (read from the index on
    mailbox, folder, context and flags)."""
    found: dict[int, set[int]] = {}
    for chunk in chunks(sorted(set(mailbox_ids))):
        rows = (
            Filing.select(Filing.mailbox, Filing.context)
            .where(Filing.mailbox.in_(chunk) & (Filing.folder == INBOX))
            .distinct()
            .tuples()
        )
        for mailbox_id, context_id in rows:
            found.setdefault(mailbox_id, set()).add(context_id)
    return found


def _crm_folders(
    box: _Box, holding: set[int], organization: list[tuple[int, str]], names: dict[int, str]
) -> list[ImapFolder]:
    """The CRM folders of one mailbox, by name (see the module's description)."""
    offered = {context_id for context_id, _ in organization}
    wanted = set(holding) | offered if box.writable else set(holding)
    wanted -= {box.store_to_id, box.sent_context_id}
    # Names are told apart among every context the mailbox could show, whether or not
    # it does now: a folder keeps its name when another one starts holding mail.
    taken: set[str] = set()
    folders = []
    for context_id in sorted(offered | set(holding)):
        shown = _shown(names[context_id])
        if shown in taken:
            shown = f"{shown} ({context_id})"
        taken.add(shown)
        if context_id not in wanted:
            continue
        folders.append(
            ImapFolder(
                name=f"{box.prefix}{CRM_PREFIX}/{shown}",
                mailbox_id=box.id,
                mailbox_address=box.address,
                folder=None,
                context_id=context_id,
                special_use=ARCHIVE_USE,
                writable=box.writable,
                uidvalidity=crm_uidvalidity(box.id, context_id),
            )
        )
    return sorted(folders, key=lambda folder: (folder.name.casefold(), folder.name))


def _parent(name: str, box: _Box) -> ImapFolder:
    return ImapFolder(
        name=name,
        mailbox_id=box.id,
        mailbox_address=box.address,
        folder=None,
        context_id=None,
        special_use=None,
        writable=False,
        uidvalidity=box.id,
        selectable=False,
    )


def _box_folders(
    box: _Box, holding: set[int], organization: list[tuple[int, str]], names: dict[int, str]
) -> list[ImapFolder]:
    folders = []
    if box.prefix:
        folders.append(_parent(box.prefix.rstrip(DELIMITER), box))
    for folder, name, use in FIXED:
        folders.append(
            ImapFolder(
                name=f"{box.prefix}{name}",
                mailbox_id=box.id,
                mailbox_address=box.address,
                folder=folder,
                context_id=box.sent_context_id if folder == SENT else None,
                special_use=use,
                writable=box.writable,
                uidvalidity=box.id,
            )
        )
    crm = _crm_folders(box, holding, organization, names)
    if crm:
        folders.append(_parent(f"{box.prefix}{CRM_PREFIX}", box))
        folders.extend(crm)
    return folders


def _context_names(context_ids: Iterable[int], organization: list[tuple[int, str]]):
    names = dict(organization)
    missing = sorted(set(context_ids) - set(names))
    for chunk in chunks(missing):
        names.update(Context.select(Context.id, Context.name).where(Context.id.in_(chunk)).tuples())
    return names


def _folders_of(boxes: list[_Box]) -> list[ImapFolder]:
    holding = _holding_contexts([box.id for box in boxes])
    organization = _organization_contexts()
    names = _context_names(
        {context_id for contexts in holding.values() for context_id in contexts}, organization
    )
    folders: list[ImapFolder] = []
    shared_parent = False
    for box in boxes:
        if box.prefix.startswith(f"{SHARED_PREFIX}/") and not shared_parent:
            folders.append(_parent(SHARED_PREFIX, box))
            shared_parent = True
        folders.extend(_box_folders(box, holding.get(box.id, set()), organization, names))
    return folders


@read_only
def list_folders(login: str) -> tuple[ImapFolder, ...]:
    """Every folder the user sees, parents that cannot be selected included: the default
    mailbox's first, then the other owned mailboxes', then the shared ones'. An unknown
    login sees none."""
    user = _user(login)
    if user is None:
        return ()
    return tuple(_folders_of(_boxes(user)))


def _not_found(name: str) -> NotFound:
    # The same words whether the folder does not exist or belongs to someone else.
    return NotFound(f"there is no folder {name!r}; see LIST for the folders there are")


def _box_of_name(boxes: list[_Box], name: str) -> tuple[_Box, str] | None:
    """The mailbox a name lies in and the rest of the name within it."""
    for box in boxes:
        if box.prefix and name.startswith(box.prefix):
            return box, name[len(box.prefix) :]
    for box in boxes:
        if not box.prefix:
            return box, name
    return None


def resolve(login: str, name: str) -> tuple[ImapFolder, _Box]:
    """The selectable folder a name names for the user, and its mailbox; NotFound for a
    name the user cannot see (never saying whether it is someone else's)."""
    user = _user(login)
    if user is None:
        raise _not_found(name)
    boxes = _boxes(user)
    found = _box_of_name(boxes, name)
    if found is None:
        raise _not_found(name)
    box, rest = found
    if rest.upper() == INBOX_NAME:  # INBOX is named in any case
        name = f"{box.prefix}{INBOX_NAME}"
    if rest.startswith(f"{CRM_PREFIX}/"):
        candidates = _folders_of([box])
    else:
        candidates = _box_folders(box, set(), [], {})
    for folder in candidates:
        if folder.name == name and folder.selectable:
            return folder, box
    raise _not_found(name)


# --- the filings of one folder ----------------------------------------------------------


def _where(folder: ImapFolder, box: _Box):
    """The filings of the folder: exactly those of the web's folder of that name
    (mailfolders.folder_filings)."""
    crm = folder.context_id if folder.folder is None else None
    return folder_filings(box.id, box.sent_context_id, folder.folder, crm)


_MODSEQ = peewee.fn.COALESCE(Filing.modseq, Filing.uid)


def shown_flags(flags: str) -> tuple[str, ...]:
    """A filing's flags as IMAP shows them (the store's $Filed left out)."""
    return tuple(flag for flag in flags.split() if flag != FILED_COPY_FLAG)


@read_only
def folder_snapshot(login: str, name: str) -> FolderSnapshot:
    """The folder as SELECT shows it (FolderSnapshot). HIGHESTMODSEQ is the largest
    mod-sequence of its messages (1 when it is empty)."""
    folder, box = resolve(login, name)
    rows = (
        Filing.select(Filing.uid, Filing.flags, _MODSEQ)
        .where(_where(folder, box))
        .order_by(Filing.uid)
        .tuples()
    )
    uids = []
    unseen = 0
    first_unseen = None
    keywords: dict[str, None] = {}
    highest = 1
    for uid, flags, modseq in rows:
        uids.append(uid)
        names = shown_flags(flags)
        if SEEN_FLAG not in names:
            unseen += 1
            if first_unseen is None:
                first_unseen = uid
        for flag in names:
            if not flag.startswith("\\"):
                keywords.setdefault(flag)
        highest = max(highest, modseq)
    return FolderSnapshot(
        folder=folder,
        uidnext=box.next_uid,
        highestmodseq=highest,
        uids=tuple(uids),
        unseen=unseen,
        first_unseen_uid=first_unseen,
        keywords=tuple(sorted(keywords)),
    )


@read_only
def folder_status(login: str, name: str) -> FolderStatus:
    """STATUS of a folder: its messages and unseen counted from the index by sets of
    flags, UIDNEXT, UIDVALIDITY and HIGHESTMODSEQ (as folder_snapshot)."""
    folder, box = resolve(login, name)
    where = _where(folder, box)
    messages = unseen = 0
    for flags, total in (
        Filing.select(Filing.flags, peewee.fn.COUNT(Filing.id))
        .where(where)
        .group_by(Filing.flags)
        .tuples()
    ):
        messages += total
        if SEEN_FLAG not in flags.split():
            unseen += total
    highest = Filing.select(peewee.fn.MAX(_MODSEQ)).where(where).scalar()
    return FolderStatus(
        messages=messages,
        unseen=unseen,
        uidnext=box.next_uid,
        uidvalidity=folder.uidvalidity,
        highestmodseq=highest or 1,
    )


def _aware(value) -> datetime.datetime:
    if isinstance(value, str):  # SQLite's text, naive UTC as the store writes it
        try:
            value = datetime.datetime.fromisoformat(value)  # a tenth of peewee's cost
        except ValueError:
            value = Message.received_at.python_value(value)
    return value.replace(tzinfo=datetime.UTC)


def _items(where) -> list[MessageItem]:
    query = (
        Filing.select(
            Filing.uid,
            _MODSEQ,
            Filing.flags,
            Message.size,
            Message.received_at,
            Message.id,
            ImapSummary.envelope,
        )
        .join(Message, on=(Filing.message == Message.id))
        .join(
            ImapSummary,
            peewee.JOIN.LEFT_OUTER,
            on=((ImapSummary.message == Message.id) & (ImapSummary.version == SUMMARY_VERSION)),
        )
        .where(where)
        .order_by(Filing.uid)
    )
    # The cursor's rows as they are (the columns need no conversion but the two done
    # here): a folder is listed 1000 messages a call, and peewee's rows cost twice this.
    sql, params = query.sql()
    rows = database_proxy.execute_sql(sql, params).fetchall()
    return [
        MessageItem(
            uid=uid,
            modseq=modseq,
            flags=shown_flags(flags),
            size=size,
            internaldate=_aware(received_at),
            message_id=message_id,
            envelope=None if envelope is None else bytes(envelope),
        )
        for uid, modseq, flags, size, received_at, message_id, envelope in rows
    ]


@read_only
def message_items(login: str, name: str, uids: Sequence[int]) -> tuple[MessageItem, ...]:
    """The messages of the folder with these uids, by uid; uids it has not are left out."""
    folder, box = resolve(login, name)
    where = _where(folder, box)
    found: list[MessageItem] = []
    for chunk in chunks(sorted(set(uids))):
        low, high = chunk[0], chunk[-1]
        if high - low < 2 * len(chunk):
            # Dense (1:* and most sets are): a range of the index, no list of values to
            # build and parse; at most twice the rows asked for, those not asked dropped.
            wanted = set(chunk)
            rows = _items(where & (Filing.uid >= low) & (Filing.uid <= high))
            found.extend(item for item in rows if item.uid in wanted)
        else:
            found.extend(_items(where & Filing.uid.in_(chunk)))
    return tuple(found)


@read_only
def changed_since(login: str, name: str, modseq: int) -> tuple[MessageItem, ...]:
    """The messages of the folder whose mod-sequence is above `modseq`, by uid (new mail
    counts: a new filing's mod-sequence is its uid)."""
    folder, box = resolve(login, name)
    return tuple(_items(_where(folder, box) & (_MODSEQ > modseq)))


# --- what IMAP keeps of each message's header (migration 15) ------------------------------

# The version of what imap.summary computes: rows of another are read as absent (bump
# it when the ENVELOPE's rendering or the header fields' decoding changes).
SUMMARY_VERSION = 1
# The header fields kept (lower-case names), in the order of ImapSummaryRecord.fields.
SUMMARY_FIELDS = ("subject", "from", "to", "cc", "bcc")
_SUMMARY_COLUMNS = ("subject", "from_field", "to_field", "cc_field", "bcc_field")


@attrs.frozen
class ImapSummaryRecord:
    """What IMAP keeps of one message's header: its ENVELOPE, and for each of
    SUMMARY_FIELDS the decoded, case-folded values of every such field joined by "\n"
    (None when the message has no such field)."""

    message_id: int
    envelope: bytes
    fields: tuple[str | None, ...]


@attrs.frozen
class SummarySearch:
    """search_summaries' answer: `found` the uids whose kept fields match, `missing` the
    uids of the folder with nothing kept yet (the caller matches those itself)."""

    found: tuple[int, ...]
    missing: tuple[int, ...]


@flushed_lazily
def save_summaries(summaries: Sequence[ImapSummaryRecord]) -> int:
    """Keep these summaries (replacing any kept before); those of messages removed
    meanwhile are left out. How many were written. Lost in a crash, they are computed
    again: hence written lazily."""
    param = database_proxy.param
    columns = ", ".join(_SUMMARY_COLUMNS)
    values = ", ".join([param] * (3 + len(_SUMMARY_COLUMNS)))
    updates = ", ".join(
        f"{column} = excluded.{column}" for column in ("version", "envelope", *_SUMMARY_COLUMNS)
    )
    statement = (
        f"INSERT INTO imap_summary (message_id, version, envelope, {columns})"
        f" SELECT {values} WHERE EXISTS (SELECT 1 FROM message WHERE id = {param})"
        f" ON CONFLICT (message_id) DO UPDATE SET {updates}"
    )
    written = 0
    with database_proxy.atomic():
        for summary in summaries:
            if len(summary.fields) != len(SUMMARY_FIELDS):
                raise ValueError("a summary has one value for each of SUMMARY_FIELDS")
            cursor = database_proxy.execute_sql(
                statement,
                (
                    summary.message_id,
                    SUMMARY_VERSION,
                    bytes(summary.envelope),
                    *summary.fields,
                    summary.message_id,
                ),
            )
            written += max(cursor.rowcount, 0)
    return written


@read_only
def search_summaries(login: str, name: str, terms: Sequence[tuple[str, str]]) -> SummarySearch:
    """The uids of the folder whose kept header fields hold every (field, text) of
    `terms` (field one of SUMMARY_FIELDS, text case-folded by the caller: matched as an
    exact substring of the case-folded values, so any case folding of Unicode matches as
    it does in Python), and the uids with nothing kept yet."""
    folder, box = resolve(login, name)
    where = _where(folder, box)
    kept = (ImapSummary.message == Filing.message) & (ImapSummary.version == SUMMARY_VERSION)
    find = peewee.fn.instr if is_sqlite(database_proxy.obj) else peewee.fn.strpos
    matching = where
    for field, text in terms:
        if field not in SUMMARY_FIELDS or not text:
            raise ValueError(f"cannot search the kept field {field!r} for {text!r}")
        column = getattr(ImapSummary, _SUMMARY_COLUMNS[SUMMARY_FIELDS.index(field)])
        matching &= find(column, text) > 0
    found = (
        Filing.select(Filing.uid)
        .join(ImapSummary, on=kept)
        .where(matching)
        .order_by(Filing.uid)
        .tuples()
    )
    missing = (
        Filing.select(Filing.uid)
        .join(ImapSummary, peewee.JOIN.LEFT_OUTER, on=kept)
        .where(where & ImapSummary.message.is_null())
        .order_by(Filing.uid)
        .tuples()
    )
    return SummarySearch(
        found=tuple(uid for (uid,) in found), missing=tuple(uid for (uid,) in missing)
    )


# --- the bytes of messages --------------------------------------------------------------


def _substr(start: int, length: int) -> str:
    # substr counts from 1 on both backends, in octets for BLOB and BYTEA.
    return f"substr(raw, {int(start)}, {int(length)})"


def _viewable(login: str, mailbox_id: int) -> bool:
    """Whether the user may still read the mailbox (owns it, or may view or edit it): one
    query, for reading the bytes of a folder the session selected earlier."""
    user = _user(login)
    if user is None:
        return False
    shared = MailboxAccess.select(MailboxAccess.mailbox).where(
        (MailboxAccess.user == user.id) & (MailboxAccess.can_view | MailboxAccess.can_edit)
    )
    return (
        Mailbox.select(Mailbox.id)
        .where((Mailbox.id == mailbox_id) & ((Mailbox.owner == user.id) | Mailbox.id.in_(shared)))
        .exists()
    )


def _filed_rows(login: str, mailbox_id: int, uids: Sequence[int], columns: str, extra: str = ""):
    """Rows (uid, <columns of message>) of the mailbox's filings with these uids, joined
    to their message: a message is always read through its filing (a uid is never reused
    within a mailbox, whereas a deleted message's id may be given to a new one), and
    only for a user who may read the mailbox. Filings gone meanwhile give no row."""
    if not _viewable(login, mailbox_id):
        return
    param = database_proxy.param
    for chunk in chunks(sorted(set(uids))):
        yield from database_proxy.execute_sql(
            f"SELECT filing.uid, {columns} FROM filing"
            " JOIN message ON message.id = filing.message_id"
            f" WHERE filing.mailbox_id = {param} AND filing.uid IN ({placeholders(len(chunk))})"
            f"{extra}",
            (mailbox_id, *chunk),
        ).fetchall()


@read_only
def message_bytes(
    login: str, mailbox_id: int, uids: Sequence[int], limit: int = WHOLE_LIMIT
) -> dict[int, bytes]:
    """uid -> the whole raw bytes of the messages filed with these uids in the mailbox
    (read as `login`), those no larger than `limit` octets; larger ones (read them with
    raw_slice), filings gone and a mailbox the user may not read are left out."""
    rows = _filed_rows(login, mailbox_id, uids, "message.raw", f" AND message.size <= {int(limit)}")
    return {uid: bytes(raw) for uid, raw in rows}


@read_only
def raw_slice(login: str, mailbox_id: int, uid: int, offset: int, length: int) -> bytes:
    """`length` octets of the raw bytes of the message filed with `uid` in the mailbox
    from `offset` (0 is the first; fewer at its end, none past it), read by the database
    without loading the whole message; NotFound when that filing is gone (or the user
    may not read the mailbox)."""
    if offset < 0 or length < 0:
        raise ValueError("offset and length are never negative")
    rows = list(_filed_rows(login, mailbox_id, (uid,), _substr(offset + 1, length)))
    if not rows:
        raise NotFound(f"no message with uid {uid}")
    return bytes(rows[0][1] or b"")


def _header_end(data: bytes) -> int | None:
    """Where the header block ends (after its blank line), or None if not in `data`."""
    if data.startswith(b"\r\n"):
        return 2  # no header fields at all
    if data.startswith(b"\n"):
        return 1
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    ends = [end + 4 for end in (crlf,) if end >= 0] + [end + 2 for end in (lf,) if end >= 0]
    return min(ends) if ends else None


@read_only
def message_headers(login: str, mailbox_id: int, uids: Sequence[int]) -> dict[int, bytes]:
    """uid -> the header block of the message filed with that uid in the mailbox (up to
    and with the blank line ending it; the whole message when it has none), reading only
    the start of those whose headers fit in HEADER_READ octets; filings gone and a
    mailbox the user may not read are left out."""
    found: dict[int, bytes] = {}
    longer: list[int] = []
    rows = _filed_rows(login, mailbox_id, uids, f"message.size, {_substr(1, HEADER_READ)}")
    for uid, size, head in rows:
        head = bytes(head)
        end = _header_end(head)
        if end is not None:
            found[uid] = head[:end]
        elif size <= len(head):
            found[uid] = head
        else:
            longer.append(uid)
    for uid in longer:
        for _, raw in _filed_rows(login, mailbox_id, (uid,), "message.raw"):
            raw = bytes(raw)
            end = _header_end(raw)
            found[uid] = raw if end is None else raw[:end]
    return found


# --- what a client changes --------------------------------------------------------------


@attrs.frozen
class StoreResult:
    """What STORE did: `changed` the messages whose flags it changed (with their new
    flags and mod-sequence), `unchanged` those it matched whose flags were so already,
    `modified` the uids UNCHANGEDSINCE kept it from changing (mod-sequence above it)."""

    changed: tuple[MessageItem, ...]
    modified: tuple[int, ...]
    unchanged: tuple[MessageItem, ...] = ()


@attrs.frozen
class CopyResult:
    """What COPY or MOVE did: the target's UIDVALIDITY, (source uid, target uid) of each
    message copied, by source uid; the target uids of the messages that went into Junk
    (`learned_spam`) and out of Junk into another folder but Trash (`learned_ham`), for
    the spam filter to learn from as the web's Junk and Not junk buttons teach it (read
    their bytes by those uids: message_bytes)."""

    uidvalidity: int
    pairs: tuple[tuple[int, int], ...]
    learned_spam: tuple[int, ...] = ()
    learned_ham: tuple[int, ...] = ()


@attrs.frozen
class AppendResult:
    """What APPEND did: the folder's UIDVALIDITY and the message's uid there; `merged`:
    the message was filed in that Sent already (the submission filed it), nothing new
    was stored."""

    uidvalidity: int
    uid: int
    merged: bool


def _writable(login: str, name: str) -> tuple[ImapFolder, _Box]:
    folder, box = resolve(login, name)
    if not folder.writable:
        raise ReadOnly(f"{name} is read-only: {box.address} is shared with you to view only")
    return folder, box


def _client_flags(flags: Iterable[str]) -> list[str]:
    """Flags a client asked for, each once, system flags in their usual spelling, without
    \\Recent (never stored); Invalid for one that is none or $Filed in any case (the
    store's own): filing.client_flag."""
    found: dict[str, None] = {}
    for flag in flags:
        flag = client_flag(flag)
        if flag != RECENT_FLAG:
            found.setdefault(flag)
    return list(found)


def _rows(folder: ImapFolder, box: _Box, uids: Iterable[int] | None, where=None) -> list[tuple]:
    """(id, uid, message id, folder, context id, flags, mod-sequence) of the folder's
    filings with these uids (every one when None), by uid."""
    condition = _where(folder, box)
    if where is not None:
        condition &= where
    columns = (
        Filing.id,
        Filing.uid,
        Filing.message,
        Filing.folder,
        Filing.context,
        Filing.flags,
        _MODSEQ,
    )
    if uids is None:
        return list(Filing.select(*columns).where(condition).order_by(Filing.uid).tuples())
    rows: list[tuple] = []
    for chunk in chunks(sorted(set(uids))):
        query = Filing.select(*columns).where(condition & Filing.uid.in_(chunk))
        rows.extend(query.tuples())
    return sorted(rows, key=lambda row: row[1])


def _items_of(filing_ids: Sequence[int]) -> list[MessageItem]:
    found: list[MessageItem] = []
    for chunk in chunks(sorted(set(filing_ids))):
        found.extend(_items(Filing.id.in_(chunk)))
    return sorted(found, key=lambda item: item.uid)


def store_flags(
    login: str,
    name: str,
    uids: Sequence[int],
    mode: str,
    flags: Sequence[str],
    unchangedsince: int | None = None,
) -> StoreResult:
    """STORE: add ("+"), take away ("-") or set ("=") flags on the folder's messages with
    these uids (uids it has not are passed over). The messages changed take one fresh
    mod-sequence; with `unchangedsince`, a message whose mod-sequence is above it is not
    changed and its uid comes back in `modified`."""
    if mode not in ("+", "-", "="):
        raise Invalid(f"{mode!r} is no way to store flags; give +, - or =")
    asked = _client_flags(flags)
    folder, box = _writable(login, name)
    lock_mailboxes([box.id])
    changed: list[int] = []
    unchanged: list[int] = []
    modified: list[int] = []
    by_text: dict[str, list[int]] = {}  # new flags -> the filings that take them
    for filing_id, uid, message_id, _folder, _context, present_text, current in _rows(
        folder, box, uids
    ):
        if unchangedsince is not None and current > unchangedsince:
            modified.append(uid)
            continue
        present = present_text.split()
        if mode == "+":
            updated = present + [flag for flag in asked if flag not in present]
        elif mode == "-":
            updated = [flag for flag in present if flag not in asked]
        else:  # the store's own $Filed stays
            updated = [flag for flag in present if flag == FILED_COPY_FLAG] + asked
        if sorted(updated) == sorted(present):
            unchanged.append(filing_id)
            continue
        text = " ".join(updated)
        if len(text) > Filing.flags.max_length:
            raise Invalid(f"message {message_id} would have too many flags; store fewer")
        by_text.setdefault(text, []).append(filing_id)
        changed.append(filing_id)
    if changed:
        _set_flags(by_text, next_modseq(box.id))
        # Only when rows changed: the IMAP sessions of other nodes look (store.notices).
        notices.note_touched(box.id)
    return StoreResult(
        changed=tuple(_items_of(changed)),
        modified=tuple(modified),
        unchanged=tuple(_items_of(unchanged)),
    )


def _set_flags(by_text: dict[str, list[int]], modseq: int, **also) -> None:
    """Give filings their new flags (and one mod-sequence): one UPDATE for each text of
    flags (a STORE on many messages gives most of them the same), not one per filing."""
    for text, filing_ids in by_text.items():
        for chunk in chunks(filing_ids):
            Filing.update(flags=text, modseq=modseq, **also).where(Filing.id.in_(chunk)).execute()


def _without(flags: str, *names: str) -> str:
    return " ".join(flag for flag in flags.split() if flag not in names)


def expunge(login: str, name: str, uids: Sequence[int] | None = None) -> tuple[int, ...]:
    """EXPUNGE: the folder's messages flagged \\Deleted (those with these uids only, when
    given) leave it; their uids, ascending. In a fixed folder their filings go (and each
    message left needed by nothing: filing.remove_unused_messages). In a CRM folder a
    copy "File to..." made goes, the message staying where its first filing is; a
    message filed there first (its context is the CRM folder's) leaves the folder and
    stays in the mailbox's INBOX, \\Deleted taken off it."""
    folder, box = _writable(login, name)
    lock_mailboxes([box.id])
    rows = [
        row
        for row in _rows(folder, box, uids, has_flag(DELETED_FLAG))
        if DELETED_FLAG in row[5].split()
    ]
    crm = folder.folder is None
    gone = [row for row in rows if not crm or FILED_COPY_FLAG in row[5].split()]
    kept = [row for row in rows if crm and FILED_COPY_FLAG not in row[5].split()]
    if kept:
        by_text: dict[str, list[int]] = {}
        for filing_id, *_rest, flags, _modseq in kept:
            by_text.setdefault(_without(flags, DELETED_FLAG), []).append(filing_id)
        _set_flags(by_text, next_modseq(box.id), context=box.store_to_id)
    for chunk in chunks([row[0] for row in gone]):
        Filing.delete().where(Filing.id.in_(chunk)).execute()
    remove_unused_messages({row[2] for row in gone})
    if rows:
        notices.note_touched(box.id)
    return tuple(sorted(row[1] for row in rows))


def _sent_context_id(box: _Box, stamp) -> int:
    """The mailbox's Sent context, made as the first sent message makes it (filing)."""
    context_id = Mailbox.select(Mailbox.sent_context).where(Mailbox.id == box.id).scalar()
    return context_id if context_id is not None else make_sent_context(box.id, stamp)


def _placement(target: ImapFolder, box: _Box, stamp) -> tuple[str, int | None]:
    """(folder, context id) a filing lies in to be in `target`; context None: the one it
    has (a fixed folder but INBOX and Sent keeps it)."""
    if target.folder is None:
        return INBOX, target.context_id
    if target.folder == SENT:
        return INBOX, _sent_context_id(box, stamp)
    return target.folder, None


def _next_uid(mailbox_id: int) -> int:
    return next_modseq(mailbox_id)  # the same counter: a fresh uid


def _reserve_uids(mailbox_id: int, count: int) -> int:
    """The first of `count` fresh uids of the mailbox, taken in one statement (they are
    that one and the count - 1 after it)."""
    param = database_proxy.param
    row = database_proxy.execute_sql(
        f"UPDATE mailbox SET next_uid = next_uid + {param} WHERE id = {param} RETURNING next_uid",
        (count, mailbox_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"mailbox {mailbox_id} was removed")
    return row[0] - count


def _existing_in_context(
    mailbox_id: int, message_ids: Sequence[int], context_id: int
) -> dict[int, int]:
    """message id -> the uid of its first filing in the mailbox with that context, for
    those of the messages filed there."""
    found: dict[int, int] = {}
    for chunk in chunks(sorted(set(message_ids))):
        query = (
            Filing.select(Filing.message, Filing.uid)
            .where(
                (Filing.mailbox == mailbox_id)
                & Filing.message.in_(chunk)
                & (Filing.context == context_id)
                & (Filing.folder == INBOX)
            )
            .order_by(Filing.id.desc())
            .tuples()
        )
        found.update(query)  # the first filing's last: it is the one kept
    return found


def copy(login: str, source: str, uids: Sequence[int], target: str, move: bool = False):
    """COPY or MOVE (`move`) the source folder's messages with these uids into `target`
    (uids it has not are passed over); CopyResult. Each message gets the target
    mailbox's next uid, the flags it had (\\Recent never), in source uid order.

    Within one mailbox, into a fixed folder: a move is the mail client's (the filing
    takes the new folder and uid; into INBOX out of Sent it takes the mailbox's "store
    messages to"), a copy a new filing there. Into a CRM folder: the copy "File to..."
    makes ($Filed; a message filed there already is not filed again, its uid there
    comes back), and a move then takes the message out of its source folder (a "File
    to..." copy goes; a first filing becomes that folder's copy, so the message is seen
    in the CRM folder only). Across mailboxes: a new filing in the target mailbox (a
    CRM folder's as "File to..." makes it), the bytes stored once still; a move then
    removes the source's filing. The target needs the edit right, the source the view
    right (edit for a move)."""
    source_folder, source_box = _writable(login, source) if move else resolve(login, source)
    target_folder, target_box = _writable(login, target)
    if target_folder.folder is None and target_folder.context_id is None:
        raise _not_found(target)
    lock_mailboxes([source_box.id, target_box.id])
    now = utc_now()
    stamp = Filing.filed_at.db_value(now)
    folder_to, context_to = _placement(target_folder, target_box, stamp)
    to_crm = target_folder.folder is None
    same = source_box.id == target_box.id
    pairs: list[tuple[int, int]] = []
    spam: list[int] = []
    ham: list[int] = []
    removed: list[int] = []
    rows = _rows(source_folder, source_box, uids)
    existing: dict[int, int] = {}
    if to_crm:
        existing = _existing_in_context(target_box.id, [row[2] for row in rows], context_to)
    # First what each message needs (a new uid, or the uid it has there already), so
    # that the new uids are taken at once; a message met twice is filed there once.
    needs: list[tuple[tuple, int | None]] = []  # (row, the index of its new uid or None)
    filed: dict[int, int] = {}  # CRM: message id -> the index of the new uid it takes
    count = 0
    for row in rows:
        filing_id, uid, message_id = row[0], row[1], row[2]
        if to_crm:
            there = existing.get(message_id)
            if there is not None and not (move and same and there == uid):
                pairs.append((uid, there))
                if move and not (same and there == uid):
                    removed.append(filing_id)
                continue
            if message_id in filed:
                needs.append((row, None))
                continue
            filed[message_id] = count
        needs.append((row, count))
        count += 1
    first = _reserve_uids(target_box.id, count) if count else 0
    inserts: list[tuple] = []
    for row, index in needs:
        filing_id, uid, message_id, folder, context_id, flags, _modseq = row
        if index is None:  # met before: filed there now, by this command
            pairs.append((uid, first + filed[message_id]))
            if move:
                removed.append(filing_id)
            continue
        new_uid = first + index
        is_copy = FILED_COPY_FLAG in flags.split()
        shown = _without(flags, FILED_COPY_FLAG)
        if not to_crm and folder_to == JUNK and folder != JUNK:
            spam.append(new_uid)
        if folder == JUNK and folder_to not in (JUNK, TRASH):
            ham.append(new_uid)
        pairs.append((uid, new_uid))
        new_flags = f"{shown} {FILED_COPY_FLAG}".strip() if to_crm else shown
        if len(new_flags) > Filing.flags.max_length:
            raise Invalid(f"message {message_id} has too many flags to copy")
        if move and same:
            # The filing itself goes over, with its new uid (and mod-sequence).
            if context_to is not None:
                new_context = context_to
            elif folder_to == INBOX and (is_copy or context_id == source_box.sent_context_id):
                new_context = source_box.store_to_id
            else:
                new_context = context_id
            Filing.update(
                folder=folder_to,
                context=new_context,
                uid=new_uid,
                flags=new_flags,
                modseq=None,
                filed_at=stamp,
            ).where(Filing.id == filing_id).execute()
            continue
        inserts.append(
            (
                message_id,
                target_box.id,
                context_to if context_to is not None else target_box.store_to_id,
                new_uid,
                new_flags,
                now,
                folder_to,
            )
        )
        if move:
            removed.append(filing_id)
    fields = [
        Filing.message,
        Filing.mailbox,
        Filing.context,
        Filing.uid,
        Filing.flags,
        Filing.filed_at,
        Filing.folder,
    ]
    for chunk in chunks(inserts, 100):
        Filing.insert_many(chunk, fields=fields).execute()
    for chunk in chunks(removed):
        Filing.delete().where(Filing.id.in_(chunk)).execute()
    if needs:
        notices.note_touched(target_box.id)
    if removed or (move and needs):
        notices.note_touched(source_box.id)
    return CopyResult(
        uidvalidity=target_folder.uidvalidity,
        pairs=tuple(pairs),
        learned_spam=tuple(sorted(set(spam))),
        learned_ham=tuple(sorted(set(ham))),
    )


# --- APPEND -----------------------------------------------------------------------------

_SUMMARY = {"message-id": 998, "subject": None, "from": None, "date": 200}


def _header_text(value) -> str | None:
    text = str(value)
    if "=?" in text:  # RFC 2047 encoded words, decoded as the summary of received mail is
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except (ValueError, LookupError, UnicodeError):
            pass  # the undecoded text rather than nothing
    text = " ".join(text.replace("\x00", " ").split())
    return text or None


def append_message(raw: bytes) -> OutgoingMessage:
    """The message a client APPENDs, ready for `append`: its summary headers and its
    search text taken out of the bytes. CPU work: call it outside the store (the CPU
    pool), as drafts do."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    values = {}
    for field, limit in _SUMMARY.items():
        value = headers.get(field)
        text = None if value is None else _header_text(value)
        values[field] = text[:limit] if text is not None and limit else text
    return OutgoingMessage(
        envelope_sender="",
        raw=raw,
        message_id=values["message-id"],
        subject=values["subject"],
        from_header=values["from"],
        date_header=values["date"],
        search_text=searchtext.extract(raw),
    )


def _naive_utc(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
    return moment


def _merged_sent(box: _Box, message_id_header: str | None) -> int | None:
    """The uid of the filing in the mailbox's Sent of a message with this Message-ID."""
    if not message_id_header or box.sent_context_id is None:
        return None
    return (
        Filing.select(Filing.uid)
        .join(Message, on=(Filing.message == Message.id))
        .where(
            (Filing.mailbox == box.id)
            & (Filing.folder == INBOX)
            & (Filing.context == box.sent_context_id)
            & (Message.message_id == message_id_header)
        )
        .order_by(Filing.uid)
        .scalar()
    )


def append(
    login: str,
    name: str,
    message: OutgoingMessage | bytes,
    flags: Sequence[str] = (),
    internaldate: datetime.datetime | None = None,
) -> AppendResult:
    """APPEND: store `message` (made by append_message outside the store; bytes are
    taken too, at the cost of that work here) and file it into the folder with these
    flags, received at `internaldate` (now when None), as drafts are stored (the
    search index and the message's addresses written alike). Into Sent, a message whose
    Message-ID one already filed in that Sent has (the submission filed it) is not
    stored again: that one's uid comes back, `merged`."""
    if isinstance(message, bytes):
        message = append_message(message)
    asked = _client_flags(flags)
    folder, box = _writable(login, name)
    lock_mailboxes([box.id])
    if folder.folder == SENT:
        merged = _merged_sent(box, message.message_id)
        if merged is not None:
            return AppendResult(uidvalidity=folder.uidvalidity, uid=merged, merged=True)
    now = utc_now()
    received = _naive_utc(internaldate) if internaldate is not None else now
    _, outgoing_type = default_type_ids()
    message_id = insert_message(
        message, Message.received_at.db_value(received), outgoing_type, delivered=False
    )
    stamp = Filing.filed_at.db_value(now)
    folder_to, context_to = _placement(folder, box, stamp)
    if folder.folder is None:
        asked.append(FILED_COPY_FLAG)  # seen in its CRM folder only, as "File to..." files
    text = " ".join(asked)
    if len(text) > Filing.flags.max_length:
        raise Invalid("too many flags for one message; give fewer")
    uid = _next_uid(box.id)
    Filing.insert(
        message=message_id,
        mailbox=box.id,
        context=context_to if context_to is not None else box.store_to_id,
        uid=uid,
        flags=text,
        filed_at=now,
        folder=folder_to,
    ).execute()
    notices.note_touched(box.id)
    return AppendResult(uidvalidity=folder.uidvalidity, uid=uid, merged=False)
