"""Admin commands: the messages in a mailbox (`messages list`, `messages show`), where a
message is filed and its type (`messages info`, `messages set-type`)."""

from __future__ import annotations

import sys

from atollon_mail.commands.common import whole_number
from atollon_mail.commands.output import Refused, out, table, when
from atollon_mail.store import filing as filing_ops
from atollon_mail.store import folders, message_types


def _messages_list(store, args) -> None:
    filings = store.run_sync(
        filing_ops.list_filings, args.address, limit=args.limit, offset=args.offset
    )
    types = store.run_sync(
        message_types.message_type_codes, [filing.message.id for filing in filings]
    )
    rows = []
    for filing in filings:
        message = filing.message
        received = message.received_at
        if hasattr(received, "strftime"):
            received = received.strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            (
                filing.uid,
                message.id,
                received,
                message.size,
                message.from_header or message.envelope_sender or "<>",
                types.get(message.id) or "-",
                message.subject or "",
            )
        )
    headers = ("UID", "ID", "RECEIVED (UTC)", "SIZE", "FROM", "TYPE", "SUBJECT")
    out(table(headers, rows, right=(0, 1, 3)))


def _messages_info(store, args) -> None:
    found = store.run_sync(folders.message_filings, args.id)
    message = found.message
    fields = [
        ("id", message.id),
        ("received", f"{when(message.received_at)} UTC"),
        ("date", message.date_header or "-"),
        ("from", message.from_header or "-"),
        ("envelope sender", message.envelope_sender or "<>"),
        ("subject", message.subject or ""),
        ("size", message.size),
        ("type", message.type_code or "(none)"),
    ]
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        out(f"{label + ':':<{width}}{value}".rstrip())
    out("filed in:" if found.filings else "filed in: (nowhere)")
    for mailbox, kind, context_id, name in found.filings:
        out(f"  {mailbox}: {kind} #{context_id} {name}")


def _messages_set_type(store, args) -> None:
    change = store.run_sync(message_types.set_message_type, args.id, args.type)
    if change.previous == change.code:
        out(f"message {change.message_id} has type {change.code} already")
        return
    out(f"message {change.message_id}: type {change.previous or '(none)'} -> {change.code}")


def _messages_show(store, args) -> None:
    raw = store.run_sync(filing_ops.message_raw, args.id)
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        raise Refused("standard output takes no bytes; cannot write the message")
    sys.stdout.flush()
    buffer.write(raw)
    buffer.flush()


def register(commands) -> None:
    messages = commands("messages", "the messages in a mailbox")
    listing = messages.add_parser("list", help="list a mailbox's messages, newest first")
    listing.add_argument("address", metavar="ADDR")
    listing.add_argument("--limit", type=whole_number(1), default=100)
    listing.add_argument("--offset", type=whole_number(0), default=0)
    listing.set_defaults(handler=_messages_list)
    show = messages.add_parser("show", help="write a message's raw bytes to standard output")
    show.add_argument("id", metavar="ID", type=whole_number(1))
    show.set_defaults(handler=_messages_show)
    info = messages.add_parser(
        "info", help="a message's summary, type, and the mailboxes and folders it is filed in"
    )
    info.add_argument("id", metavar="ID", type=whole_number(1), help="see: messages list ADDR")
    info.set_defaults(handler=_messages_info)
    set_type = messages.add_parser("set-type", help="give a message another message type")
    set_type.add_argument("id", metavar="ID", type=whole_number(1), help="see: messages list ADDR")
    set_type.add_argument("type", metavar="TYPE", help="its code; see: message-type list")
    set_type.set_defaults(handler=_messages_set_type)
