"""Web pages: the folders of a mailbox in the mail client: the folder list with unread
counts, a folder's messages (one by one or as conversations), what a user does to several
messages at once (read, unread, flag, move, Trash, delete for good), the flag buttons of a
message and its original as received.

Changing anything needs the mailbox's edit right; a user who may only view it sees no
buttons, and the forms answer 404 to them as to anyone without rights on the mailbox.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from urllib.parse import quote

from atollon_mail.store import filing, mailboxes, mailfolders
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.values import INBOX, JUNK, TRASH
from atollon_mail.web.app import HttpError, Page, PageRequest, Redirect, WebApp, not_found
from atollon_mail.web.numbers import MAX_PAGE, page_number, parse_count, parse_id
from atollon_mail.web.pages_mail import FOLDER_NAMES, PER_PAGE, box_url, learn, write_body

SEEN = filing.SEEN_FLAG
FLAGGED = mailfolders.FLAGGED_FLAG

# What the selection form of a folder does: flags added or taken away, or a move.
FLAG_ACTIONS = {
    "read": ((SEEN,), ()),
    "unread": ((), (SEEN,)),
    "flag": ((FLAGGED,), ()),
    "unflag": ((), (FLAGGED,)),
}
MOVE_ACTIONS = {"inbox": INBOX, "junk": JUNK, "trash": TRASH}
DELETE_ACTION = "delete"  # in Trash: delete for good
# What the confirmation after an action says, by action.
DONE = {
    "read": "marked read",
    "unread": "marked unread",
    "flag": "flagged",
    "unflag": "unflagged",
    "inbox": "moved to the Inbox",
    "junk": "moved to Junk",
    "trash": "moved to Trash",
    "delete": "deleted for good",
    "empty": "deleted for good (Trash emptied)",
}
# The flag buttons of a message's page.
MESSAGE_ACTIONS = ("unread", "flag", "unflag", "trash")
# How many messages one form may name: two pages' worth is plenty.
MAX_SELECTED = 2 * PER_PAGE

_MESSAGE_ID = re.compile(rb"<[^<>\s]+>")


async def _mailbox(page: PageRequest, address: str, edit: bool = False):
    """The mailbox and the user's rights on it; 404 without the view right (and with
    `edit`, without the edit right)."""
    rights = await page.require_view(address)
    if edit and not rights.edit:
        raise not_found()
    try:
        mailbox = await page.store.run(mailboxes.get_mailbox, address)
    except (NotFound, Invalid):
        raise not_found() from None
    return mailbox, rights


def _where(folder: str, context_id: int | None, number: int = 1, threads: bool = False):
    """The query parameters of a folder's page (for links and redirects)."""
    params: dict = {"context": context_id} if context_id is not None else {"folder": folder}
    if number > 1:
        params["page"] = number
    if threads:
        params["threads"] = 1
    return params


def _folder_args(values) -> tuple[str | None, int | None]:
    """(folder, context id) named by a link or form; a folder or context that is none is
    not found."""
    context = values("context")
    if context:
        context_id = parse_id(context)
        if context_id is None:
            raise not_found()
        return None, context_id
    folder = values("folder") or INBOX
    if folder not in mailfolders.FIXED_FOLDERS:
        raise not_found()
    return folder, None


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} kB"
    return f"{size / (1024 * 1024):.1f} MB"


def _row(record, thread: int = 0, in_thread: bool = False) -> dict:
    return {
        "filing": record,
        "unread": SEEN not in record.flags,
        "flagged": FLAGGED in record.flags,
        "size": _size(record.message.size),
        "thread": thread,
        "in_thread": in_thread,
    }


def thread_ids(head: bytes) -> tuple[str, ...]:
    """The message ids a message's headers name: its own Message-ID, In-Reply-To and
    References; only the headers are parsed."""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    found: list[str] = []
    for name in ("Message-ID", "In-Reply-To", "References"):
        for value in parsed.get_all(name) or []:
            raw = str(value).encode("utf-8", "replace")  # undecodable bytes: "?"
            found += [item.decode("utf-8").lower() for item in _MESSAGE_ID.findall(raw)]
    return tuple(dict.fromkeys(found))


def conversations(records: list, heads: dict[int, bytes]) -> list[dict]:
    """The page's filings grouped into conversations: messages that name one another's
    ids (or a common one) in Message-ID, In-Reply-To or References are one thread. The
    threads keep the page's order (by their newest message); within one, oldest first.

    Written here rather than with a JWZ threading library: only the page's messages are
    grouped (no thread is built across pages), which a union of shared ids does."""
    parent = list(range(len(records)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    owner: dict[str, int] = {}
    for index, record in enumerate(records):
        ids = thread_ids(heads.get(record.message.id, b""))
        for message_id in ids:
            if message_id in owner:
                parent[root(index)] = root(owner[message_id])
            else:
                owner[message_id] = index
    threads: dict[int, list[int]] = {}
    for index in range(len(records)):
        threads.setdefault(root(index), []).append(index)
    rows: list[dict] = []
    for members in sorted(threads.values(), key=min):
        ordered = sorted(members, key=lambda index: records[index].uid)
        for position, index in enumerate(ordered):
            size = len(ordered) if position == 0 else 0
            rows.append(_row(records[index], thread=size, in_thread=position > 0))
    return rows


def _uids(page: PageRequest) -> list[int]:
    """The uids checked in a selection form (every value of its `uid` field)."""
    values = page.request.args.get(b"uid") or []
    if len(values) > MAX_SELECTED:
        raise HttpError(400, f"Select at most {MAX_SELECTED} messages at once.")
    uids = [parse_id(value.decode("ascii", "replace")) for value in values]
    if any(uid is None for uid in uids):
        raise HttpError(400, "A selected message is not one of this list; reload the page.")
    if not uids:
        raise HttpError(400, "Select one or more messages first, then choose what to do.")
    return uids


def register(app: WebApp) -> None:
    @app.route("/mail/box")
    async def box(page: PageRequest):
        mailbox, rights = await _mailbox(page, page.arg("address"))
        folder, context_id = _folder_args(page.arg)
        number = page_number(page.arg("page"))
        threads = page.arg("threads") == "1"
        counts = await page.store.run(mailfolders.folder_counts, mailbox.address)
        if context_id is not None:
            # Only the CRM folders and projects holding this mailbox's mail are its folders.
            named = [c for c in counts if c.context is not None and c.context.id == context_id]
            if not named:
                raise not_found()
            current = named[0]
        else:
            current = next(c for c in counts if c.folder == folder)
        try:
            records = await page.store.run(
                mailfolders.list_folder,
                mailbox.address,
                folder,
                context_id,
                PER_PAGE + 1,
                (number - 1) * PER_PAGE,
            )
        except NotFound:
            raise not_found() from None
        shown = records[:PER_PAGE]
        if threads:
            heads = await page.store.run(
                mailfolders.message_heads, [record.message.id for record in shown]
            )
            rows = conversations(shown, heads)
        else:
            rows = [_row(record) for record in shown]
        moved = page.arg("moved")
        done_count = parse_count(page.arg("count"))  # the confirmation of an action
        done = DONE.get(page.arg("done")) if done_count is not None else None
        here = _where(folder, context_id)
        context = {
            "mailbox": mailbox,
            "folder": folder or INBOX,
            "context_id": context_id,
            "folder_name": current.name,
            "counts": counts,
            "here": here,
            "threads": threads,
            "threads_url": box_url(mailbox.address, **_where(folder, context_id, 1, not threads)),
            "may_send": rights.edit,
            "may_move": rights.edit,
            "rows": rows,
            "number": number,
            "previous_url": (
                box_url(mailbox.address, **_where(folder, context_id, number - 1, threads))
                if number > 1
                else None
            ),
            "next_url": (
                box_url(mailbox.address, **_where(folder, context_id, number + 1, threads))
                if len(records) > PER_PAGE
                else None
            ),
            "sent": page.arg("sent") == "1",
            "moved": FOLDER_NAMES.get(moved),
            "not_learned": page.arg("learned") == "0",
            "done": done,
            "done_count": done_count,
        }
        return Page("mail_box.html", context)

    @app.route("/mail/selection", methods=("POST",))
    async def selection(page: PageRequest):
        """The selection form of a folder: one action on the messages checked."""
        mailbox, _ = await _mailbox(page, page.form.get("address", ""), edit=True)
        folder, context_id = _folder_args(page.form.get)
        number = min(parse_id(page.form.get("page")) or 1, MAX_PAGE)
        action = page.form.get("action", "")
        if action not in FLAG_ACTIONS and action not in MOVE_ACTIONS and action != DELETE_ACTION:
            raise HttpError(400, "Choose what to do with the selected messages with a button.")
        uids = _uids(page)
        learned = True
        if action in FLAG_ACTIONS:
            add, remove = FLAG_ACTIONS[action]
            count = await page.store.run(
                mailfolders.change_flags, mailbox.address, uids, add, remove
            )
        elif action == DELETE_ACTION:
            count = await page.store.run(mailfolders.delete_from_trash, mailbox.address, uids)
        else:
            moved = await page.store.run(
                mailfolders.move_filings, mailbox.address, uids, MOVE_ACTIONS[action]
            )
            count = moved.moved
            for spam, taught in ((True, moved.spam), (False, moved.ham)):
                for message_id, raw in taught:
                    learned = await learn(page, raw, spam, message_id) and learned
        params = {**_where(folder, context_id, number, page.form.get("threads") == "1")}
        params.update(done=action, count=count)
        if not learned:
            params["learned"] = 0
        return Redirect(box_url(mailbox.address, **params))

    @app.route("/mail/empty-trash", methods=("POST",))
    async def empty_trash(page: PageRequest):
        mailbox, _ = await _mailbox(page, page.form.get("address", ""), edit=True)
        count = await page.store.run(mailfolders.empty_trash, mailbox.address)
        return Redirect(box_url(mailbox.address, folder=TRASH, done="empty", count=count))

    @app.route("/mail/message/flags", methods=("POST",))
    async def message_flags(page: PageRequest):
        """The buttons of a message's page: mark unread, flag, unflag, move to Trash."""
        mailbox, _ = await _mailbox(page, page.form.get("address", ""), edit=True)
        message_id = parse_id(page.form.get("id"))
        action = page.form.get("action", "")
        if message_id is None:
            raise not_found()
        if action not in MESSAGE_ACTIONS:
            raise HttpError(400, "Choose what to do with the message with a button.")
        try:
            filed = await page.store.run(filing.filed_message, mailbox.address, message_id)
            if action == "trash":
                await page.store.run(filing.move_message, mailbox.address, message_id, TRASH)
            elif action == "flag":
                await page.store.run(filing.add_flag, mailbox.address, message_id, FLAGGED)
            else:
                flag = SEEN if action == "unread" else FLAGGED
                await page.store.run(filing.remove_flag, mailbox.address, message_id, flag)
        except NotFound:
            raise not_found() from None
        if action == "flag" or action == "unflag":
            return Redirect(
                f"/mail/message?address={quote(mailbox.address, safe='')}&id={message_id}"
            )
        # Back to the folder it lay in: the page of an unread message would mark it read.
        return Redirect(box_url(mailbox.address, folder=filed.folder, done=action, count=1))

    @app.route("/mail/original")
    async def original(page: PageRequest):
        """The message as stored, shown as plain text (never rendered, never sniffed)."""
        mailbox, _ = await _mailbox(page, page.arg("address"))
        message_id = parse_id(page.arg("id"))
        if message_id is None:
            raise not_found()
        try:
            filed = await page.store.run(filing.filed_message, mailbox.address, message_id)
        except NotFound:
            raise not_found() from None
        return write_body(page, filed.raw, "text/plain; charset=utf-8", "inline")
