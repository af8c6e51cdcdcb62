"""Admin commands: the outbound queue, messages waiting to be delivered elsewhere (`queue
list`, `show`, `retry`, `delete`)."""

from __future__ import annotations

from atollon_mail.commands.common import whole_number
from atollon_mail.commands.output import clean, counted, out, shortened, table, when
from atollon_mail.store import queue as queue_ops
from atollon_mail.store.records import QueueEntry
from atollon_mail.store.values import QUEUE_STATES, utc_now

_WAITING = ("queued", "deferred")
_REPLY_WIDTH = 40


def _next_attempt(entry: QueueEntry) -> str:
    # Only a waiting recipient has a next attempt; the others' stored time is history.
    return when(entry.next_attempt_at) if entry.state in _WAITING else "-"


def _state(entry: QueueEntry) -> str:
    return f"{entry.state}, uncertain" if entry.uncertain else entry.state


def _queue_list(store, args) -> None:
    entries = store.run_sync(
        queue_ops.queue_list,
        args.state,
        limit=args.limit,
        offset=args.offset,
        uncertain=args.uncertain,
    )
    rows = [
        (
            entry.queue_message_id,
            entry.address,
            _state(entry),
            entry.attempts,
            _next_attempt(entry),
            shortened(entry.last_reply, _REPLY_WIDTH) if entry.last_reply else "-",
            entry.subject or "",
        )
        for entry in entries
    ]
    headers = (
        "ID",
        "RECIPIENT",
        "STATE",
        "ATTEMPTS",
        "NEXT ATTEMPT (UTC)",
        "LAST REPLY",
        "SUBJECT",
    )
    out(table(headers, rows, right=(0, 3)))


def _queue_show(store, args) -> None:
    detail = store.run_sync(queue_ops.queue_show, args.id)
    sender = detail.envelope_sender or "<>"
    fields = [
        ("sender", f"{sender} (a bounce)" if detail.is_bounce else sender),
        ("subject", detail.subject or "(none)"),
        ("message-id", detail.message_id_header or "(none)"),
        ("queued", f"{when(detail.created_at)} UTC"),
    ]
    out(f"queued message {detail.id} (message {detail.message_id})")
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        out(f"{label + ':':<{width}}{clean(value)}")
    for recipient in detail.recipients:
        entry = recipient.entry
        status = [entry.state, counted(entry.attempts, "attempt")]
        if entry.state in _WAITING:
            status.append(f"next attempt {when(entry.next_attempt_at)} UTC")
        if entry.uncertain:
            status.append("uncertain: may have got two copies")
        out()
        out(f"{entry.address}: {', '.join(status)}")
        for event in recipient.events:
            parts = [when(event.at), event.outcome, event.server or "-", event.reply or "-"]
            if event.next_attempt_at is not None:
                parts.append(f"next attempt {when(event.next_attempt_at)}")
            out("  " + "  ".join(clean(part) for part in parts))
        if not recipient.events:
            out("  (no attempt yet)")


def _queue_retry(store, args) -> None:
    count = store.run_sync(queue_ops.queue_retry, args.id, utc_now())
    if count:
        out(
            f"queued message {args.id}: {counted(count, 'recipient')} due now "
            "(tried at the server's next queue run)"
        )
    else:
        out(f"queued message {args.id}: nothing to retry (no recipient is waiting)")


def _queue_delete(store, args) -> None:
    count = store.run_sync(queue_ops.queue_delete, args.id)
    out(f"deleted queued message {args.id} ({counted(count, 'recipient')})")


def register(commands) -> None:
    queue = commands("queue", "the outbound queue: messages waiting to be delivered elsewhere")
    listing = queue.add_parser("list", help="list the queue's recipients, newest message first")
    listing.add_argument("--state", choices=QUEUE_STATES)
    listing.add_argument("--limit", type=whole_number(1), default=100)
    listing.add_argument("--offset", type=whole_number(0), default=0)
    listing.add_argument(
        "--uncertain",
        action="store_true",
        help="only recipients that may have got two copies: their message was sent and "
        "the reply was lost (the appliance stopped, or the connection broke, in between)",
    )
    listing.set_defaults(handler=_queue_list)
    for name, help_text, handler in (
        ("show", "show a queued message's recipients and delivery attempts", _queue_show),
        ("retry", "try a queued message's waiting recipients now", _queue_retry),
        ("delete", "remove a message from the queue (its filed copies stay)", _queue_delete),
    ):
        action = queue.add_parser(name, help=help_text)
        action.add_argument("id", metavar="ID", type=whole_number(1), help="see: queue list")
        action.set_defaults(handler=handler)
