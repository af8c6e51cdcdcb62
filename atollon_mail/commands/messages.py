"""Admin commands: the messages in a mailbox (`messages list`, `messages show`)."""

from __future__ import annotations

import sys

from atollon_mail.commands.common import whole_number
from atollon_mail.commands.output import Refused, out, table
from atollon_mail.store import filing as filing_ops


def _messages_list(store, args) -> None:
    filings = store.run_sync(
        filing_ops.list_filings, args.address, limit=args.limit, offset=args.offset
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
                message.subject or "",
            )
        )
    headers = ("UID", "ID", "RECEIVED (UTC)", "SIZE", "FROM", "SUBJECT")
    out(table(headers, rows, right=(0, 1, 3)))


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
