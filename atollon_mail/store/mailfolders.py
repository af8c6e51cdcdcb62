"""Store operations for the folders of one mailbox as its mail client shows them: the list
of folders with their unread counts, the filings of one folder, and what a user does to
several filings at once (flags, moves, Trash, deleting for good).

The folders are views of the filings of the mailbox: the Inbox (folder inbox, except its
Sent folder's filings), Sent (the mailbox's Sent context), Drafts, Junk and Trash (the
filing's folder), and each CRM folder or project other than the mailbox's "store messages
to" and Sent that holds mail of the mailbox (its filings in folder inbox).

Flags are IMAP's, as the filings keep them: \\Seen (read), \\Flagged, \\Answered. A
message deleted goes to Trash; only emptying Trash (or deleting there) removes filings.

Bulk operations take uids (per mailbox, as IMAP does): a message filed twice in one
mailbox (mail to oneself, with its Sent copy) is two filings, changed one at a time.
"""

from __future__ import annotations

from collections.abc import Iterable

import peewee

from atollon_mail.store.common import changes_mailbox, chunks, placeholders, read_only
from atollon_mail.store.contexts import context_record, mailbox_store_to
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.filing import (
    FILED_COPY_FLAG,
    SEEN_FLAG,
    client_flag,
    filings_page,
    has_flag,
    lock_mailboxes,
    next_modseq,
    remove_unused_messages,
)
from atollon_mail.store.mailboxes import get_mailbox_row
from atollon_mail.store.models import Context, Filing, Mailbox, Message, User, database_proxy
from atollon_mail.store.records import BulkMove, FilingRecord, FolderCount
from atollon_mail.store.values import DRAFTS, FOLDERS, INBOX, JUNK, TRASH, utc_now

FLAGGED_FLAG = "\\Flagged"
SENT = "sent"
# The fixed folders of every mailbox, in the order the client lists them.
FIXED_FOLDERS = (INBOX, SENT, DRAFTS, JUNK, TRASH)
FOLDER_NAMES = {INBOX: "Inbox", SENT: "Sent", DRAFTS: "Drafts", JUNK: "Junk", TRASH: "Trash"}
# How much of a message's start is read for its threading headers.
HEADER_BYTES = 16 * 1024

# Counted per folder, context and set of flags, from one index (migration 12); which of
# them lack \Seen is decided here, over the few distinct sets of flags.
_COUNTS_SQL = """
    SELECT folder, context_id, flags, COUNT(*) FROM filing
    WHERE mailbox_id = {p} GROUP BY folder, context_id, flags"""


def _address(mailbox: Mailbox) -> str:
    return f"{mailbox.local_part}@{mailbox.domain.name}"


@read_only
def folder_counts(mailbox_address: str) -> list[FolderCount]:
    """The mailbox's folders with their totals and unread counts: the fixed ones first
    (FIXED_FOLDERS), then the CRM folders and projects holding its mail, by name."""
    mailbox = get_mailbox_row(mailbox_address)
    store_to = mailbox_store_to(mailbox).id
    sent = mailbox.sent_context_id
    totals = {folder: [0, 0] for folder in FIXED_FOLDERS}
    crm: dict[int, list[int]] = {}
    rows = database_proxy.execute_sql(
        _COUNTS_SQL.format(p=database_proxy.param), (mailbox.id,)
    ).fetchall()
    for folder, context_id, flags, total in rows:
        names = flags.split()
        unread = 0 if SEEN_FLAG in names else total
        if FILED_COPY_FLAG in names:
            key = None  # shown in its CRM folder only
        elif folder == INBOX and context_id == sent:
            key = SENT
        else:
            key = folder
        if key in totals:
            totals[key][0] += total
            totals[key][1] += unread
        if folder == INBOX and context_id not in (sent, store_to):
            counts = crm.setdefault(context_id, [0, 0])
            counts[0] += total
            counts[1] += unread
    found = [
        FolderCount(folder=key, context=None, name=FOLDER_NAMES[key], total=total, unread=unread)
        for key, (total, unread) in totals.items()
    ]
    if crm:
        contexts = (
            Context.select(Context, User)
            .join(User, peewee.JOIN.LEFT_OUTER)
            .where(Context.id.in_(sorted(crm)))
        )
        named = sorted((context_record(context) for context in contexts), key=_by_name)
        found += [
            FolderCount(
                folder=None,
                context=context,
                name=context.name,
                total=crm[context.id][0],
                unread=crm[context.id][1],
            )
            for context in named
        ]
    return found


def _by_name(context) -> tuple:
    return (context.name.casefold(), context.id)


def folder_filings(
    mailbox_id: int, sent_context_id: int | None, folder: str | None, context_id: int | None
):
    """The filings of one folder of a mailbox, as a condition: the one rule of which
    filings make which folder, for the web's folders and IMAP's (store.imapfolders).
    With `context_id` (folder None) a CRM folder or project: its context's filings in
    the inbox; else a fixed folder (FIXED_FOLDERS, not checked here): never a "File
    to..." copy ($Filed), Sent the inbox's filings of the mailbox's Sent context (none
    without one), Inbox the others."""
    where = Filing.mailbox == mailbox_id
    if context_id is not None:
        return where & (Filing.folder == INBOX) & (Filing.context == context_id)
    # A filing "File to..." added is shown in its CRM folder only.
    where &= ~has_flag(FILED_COPY_FLAG)
    if folder == SENT:
        if sent_context_id is None:
            return where & Filing.id.is_null()  # no Sent context: an empty folder
        return where & (Filing.folder == INBOX) & (Filing.context == sent_context_id)
    where &= Filing.folder == folder
    if folder == INBOX and sent_context_id is not None:
        where &= Filing.context != sent_context_id
    return where


def _folder_where(mailbox: Mailbox, folder: str | None, context_id: int | None):
    """The filings of one folder of the mailbox (see the module's description)."""
    if context_id is not None:
        if folder is not None:
            raise Invalid("give a folder or a context, not both")
        if not Context.select().where(Context.id == context_id).exists():
            raise NotFound(f"no folder or project {context_id}")
    elif folder != SENT and folder not in FOLDERS:
        raise Invalid(f"there is no folder {folder!r}; give one of {', '.join(FIXED_FOLDERS)}")
    return folder_filings(mailbox.id, mailbox.sent_context_id, folder, context_id)


@read_only
def list_folder(
    mailbox_address: str,
    folder: str | None = INBOX,
    context_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[FilingRecord]:
    """The filings of one folder of the mailbox, newest first: a fixed folder
    (FIXED_FOLDERS), or with `context_id` (and folder None) a CRM folder or project."""
    mailbox = get_mailbox_row(mailbox_address)
    where = _folder_where(mailbox, folder, context_id)
    return filings_page(where, _address(mailbox), limit, offset)


@read_only
def message_heads(message_ids: Iterable[int]) -> dict[int, bytes]:
    """The first HEADER_BYTES of several messages (enough for their headers), read by the
    database without loading whole messages; ids not found are left out."""
    found: dict[int, bytes] = {}
    for chunk in chunks(sorted(set(message_ids))):
        rows = database_proxy.execute_sql(
            f"SELECT id, substr(raw, 1, {HEADER_BYTES}) FROM message"
            f" WHERE id IN ({placeholders(len(chunk))})",
            tuple(chunk),
        ).fetchall()
        found.update((message_id, bytes(head)) for message_id, head in rows)
    return found


def _filings(mailbox: Mailbox, uids: Iterable[int]) -> list[tuple]:
    """(id, uid, message id, folder, flags) of the mailbox's filings with these uids, by
    uid; uids it has not are left out (a page shown before they moved)."""
    rows: list[tuple] = []
    for chunk in chunks(sorted(set(uids))):
        query = Filing.select(
            Filing.id, Filing.uid, Filing.message, Filing.folder, Filing.flags
        ).where((Filing.mailbox == mailbox.id) & Filing.uid.in_(chunk))
        rows.extend(query.tuples())
    return sorted(rows, key=lambda row: row[1])


@changes_mailbox
def change_flags(
    mailbox_address: str,
    uids: Iterable[int],
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
) -> int:
    """Add and take away flags on several filings of the mailbox at once; how many
    filings changed. Uids the mailbox has not are passed over."""
    add = [client_flag(flag) for flag in add]
    remove = [client_flag(flag) for flag in remove]
    mailbox = get_mailbox_row(mailbox_address)
    # Locked first (PostgreSQL): two changes of one filing do not lose either.
    lock_mailboxes([mailbox.id])
    changed = 0
    modseq = None  # one fresh mod-sequence for the whole change (IMAP's CONDSTORE)
    for filing_id, _uid, message_id, _folder, flags in _filings(mailbox, uids):
        present = flags.split()
        updated = [flag for flag in present if flag not in remove]
        updated += [flag for flag in add if flag not in updated]
        if updated == present:
            continue
        text = " ".join(updated)
        if len(text) > Filing.flags.max_length:
            raise Invalid(f"message {message_id} has too many flags to add {' '.join(add)}")
        if modseq is None:
            modseq = next_modseq(mailbox.id)
        Filing.update(flags=text, modseq=modseq).where(Filing.id == filing_id).execute()
        changed += 1
    return changed


@changes_mailbox
def move_filings(mailbox_address: str, uids: Iterable[int], folder: str) -> BulkMove:
    """Move several filings of the mailbox into `folder` (values.FOLDERS). Those moved get
    new uids above every other of the mailbox, in the order of their old ones, so the uids
    of each folder ascend in the order mail came into it; they come into the folder now.
    Filings there already, and uids the mailbox has not, are passed over. The bytes of
    what went into Junk, and of what came out of Junk into the inbox, come back for the
    spam filter to learn from."""
    if folder not in FOLDERS:
        raise Invalid(f"there is no folder {folder!r}; give one of {', '.join(FOLDERS)}")
    mailbox = get_mailbox_row(mailbox_address)
    lock_mailboxes([mailbox.id])
    rows = [row for row in _filings(mailbox, uids) if row[3] != folder]
    # A filing "File to..." added leaves its CRM folder instead: the message stays where
    # its first filing is (and is removed if that one was deleted for good).
    copies = [row for row in rows if FILED_COPY_FLAG in row[4].split()]
    if copies:
        Filing.delete().where(Filing.id.in_([row[0] for row in copies])).execute()
        remove_unused_messages({row[2] for row in copies})
    moving = [row for row in rows if FILED_COPY_FLAG not in row[4].split()]
    if not moving:
        return BulkMove(folder=folder, moved=len(copies))
    stamp = Filing.filed_at.db_value(utc_now())
    # One statement reserves the block of uids (the mailbox row stays locked).
    (after,) = database_proxy.execute_sql(
        f"UPDATE mailbox SET next_uid = next_uid + {database_proxy.param}"
        f" WHERE id = {database_proxy.param} RETURNING next_uid",
        (len(moving), mailbox.id),
    ).fetchone()
    first = after - len(moving)
    for offset, (filing_id, *_rest) in enumerate(moving):
        # A new uid is a new mod-sequence too (modseq None: the uid stands for it).
        Filing.update(folder=folder, uid=first + offset, filed_at=stamp, modseq=None).where(
            Filing.id == filing_id
        ).execute()
    spam = sorted({row[2] for row in moving}) if folder == JUNK else []
    ham = sorted({row[2] for row in moving if row[3] == JUNK}) if folder == INBOX else []
    raws = _raws(spam + ham)
    return BulkMove(
        folder=folder,
        moved=len(moving) + len(copies),
        spam=tuple((message_id, raws[message_id]) for message_id in spam),
        ham=tuple((message_id, raws[message_id]) for message_id in ham),
    )


def _raws(message_ids: list[int]) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    for chunk in chunks(message_ids):
        query = Message.select(Message.id, Message.raw).where(Message.id.in_(chunk)).tuples()
        found.update((message_id, bytes(raw)) for message_id, raw in query)
    return found


@changes_mailbox
def delete_from_trash(mailbox_address: str, uids: Iterable[int]) -> int:
    """Remove for good those of these filings that lie in the mailbox's Trash, and each
    message left needed by nothing (see remove_unused_messages); how many filings went."""
    mailbox = get_mailbox_row(mailbox_address)
    lock_mailboxes([mailbox.id])
    rows = [row for row in _filings(mailbox, uids) if row[3] == TRASH]
    return _remove(rows)


@changes_mailbox
def empty_trash(mailbox_address: str) -> int:
    """Remove every filing in the mailbox's Trash, and each message left needed by
    nothing (see remove_unused_messages); how many filings went."""
    mailbox = get_mailbox_row(mailbox_address)
    lock_mailboxes([mailbox.id])
    rows = list(
        Filing.select(Filing.id, Filing.uid, Filing.message)
        .where((Filing.mailbox == mailbox.id) & (Filing.folder == TRASH))
        .tuples()
    )
    return _remove(rows)


def _remove(rows: list[tuple]) -> int:
    for chunk in chunks([row[0] for row in rows]):
        Filing.delete().where(Filing.id.in_(chunk)).execute()
    remove_unused_messages(row[2] for row in rows)
    return len(rows)


@changes_mailbox
def mark_read(mailbox_address: str, message_id: int) -> int:
    """The message was opened: its filings in the mailbox get \\Seen; how many changed.
    NotFound when it is not filed here."""
    mailbox = get_mailbox_row(mailbox_address)
    filings = list(
        Filing.select(Filing.uid, Filing.flags)
        .where((Filing.mailbox == mailbox.id) & (Filing.message == message_id))
        .tuples()
    )
    if not filings:
        raise NotFound(f"no message {message_id} in {_address(mailbox)}")
    unseen = [uid for uid, flags in filings if SEEN_FLAG not in flags.split()]
    if not unseen:
        return 0
    return change_flags(mailbox_address, unseen, add=[SEEN_FLAG])


@read_only
def message_flags(mailbox_address: str, message_id: int) -> tuple[str, ...]:
    """The flags of the message in this mailbox (of all its filings here, each once, in
    the order first met); NotFound when it is not filed here."""
    mailbox = get_mailbox_row(mailbox_address)
    rows = list(
        Filing.select(Filing.flags)
        .where((Filing.mailbox == mailbox.id) & (Filing.message == message_id))
        .order_by(Filing.id)
        .tuples()
    )
    if not rows:
        raise NotFound(f"no message {message_id} in {_address(mailbox)}")
    return tuple(dict.fromkeys(flag for (flags,) in rows for flag in flags.split()))
