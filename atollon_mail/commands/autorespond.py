"""Admin commands: auto-respond (out of office) of a mailbox.

mailbox autorespond ADDR --on|--off [--subject S] [--body-file FILE]
                         [--from DATETIME] [--until DATETIME] [--interval-days N]
"""

from __future__ import annotations

import argparse
import datetime

from atollon_mail.commands.common import read_text_file, whole_number
from atollon_mail.commands.output import clean, out
from atollon_mail.store import autorespond
from atollon_mail.store.records import AutoresponderRecord
from atollon_mail.store.values import utc_now

_NO_BOUND = "none"


def _moment(value: str):
    """An ISO 8601 date and time, taken as UTC unless it gives its own offset."""
    if value.strip().lower() == _NO_BOUND:
        return autorespond.CLEAR
    try:
        moment = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date and time: {value!r}; give one such as 2030-07-01 or 2030-07-01T08:00"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
    return moment


def _bound(moment: datetime.datetime | None, none: str) -> str:
    return none if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def autoresponder_fields(
    record: AutoresponderRecord | None, now: datetime.datetime | None = None
) -> list[tuple[str, str]]:
    """(label, value) pairs describing a mailbox's auto-responder, its state first (for
    `mailbox show` too); the body comes last and may hold several lines."""
    if record is None:
        return [("auto-respond", "off (never set up)")]
    now = now or utc_now()
    state = "on" if record.enabled else "off"
    if record.enabled and record.ends_at is not None and record.ends_at <= now:
        state = "on, but its end has passed: it replies no more"
    elif record.enabled and record.starts_at is not None and now < record.starts_at:
        state = "on, replying from its start"
    days = record.interval_days
    return [
        ("auto-respond", state),
        ("subject", record.subject),
        ("from", _bound(record.starts_at, "(no start)")),
        ("until", _bound(record.ends_at, "(no end)")),
        ("interval", f"{days} day{'s' if days != 1 else ''} (per sender)"),
        ("body", record.body.rstrip("\n") or "(none)"),
    ]


def _print_fields(fields: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        lines = value.split("\n")
        out(f"{label + ':':<{width}}{clean(lines[0])}".rstrip())
        for line in lines[1:]:
            out(f"{'':<{width}}{clean(line)}".rstrip())


def _autorespond(store, args) -> None:
    body = (
        read_text_file(args.body_file, "the reply's text") if args.body_file is not None else None
    )
    record = store.run_sync(
        autorespond.set_autoresponder,
        args.address,
        args.on,
        subject=args.subject,
        body=body,
        starts_at=args.starts_at,
        ends_at=args.ends_at,
        interval_days=args.interval_days,
    )
    state, *details = autoresponder_fields(record)
    out(f"auto-respond for {record.mailbox_address}: {state[1]}")
    _print_fields(details)


def register(commands) -> None:
    mailbox = commands("mailbox", "the mailboxes mail is delivered to")
    action = mailbox.add_parser(
        "autorespond",
        help="turn a mailbox's automatic reply (out of office) on or off",
        description=(
            "Turn a mailbox's automatic reply (out of office) on or off and set it up. "
            "Options left out keep their value. It answers each sender at most once per "
            "interval, and never mailing lists, bulk mail, bounces or other automatic mail. "
            "Times are ISO 8601 (2030-07-01 or 2030-07-01T08:00) and taken as UTC unless "
            "they carry an offset (2030-07-01T08:00+02:00)."
        ),
    )
    action.add_argument("address", metavar="ADDR")
    switch = action.add_mutually_exclusive_group(required=True)
    switch.add_argument(
        "--on",
        dest="on",
        action="store_true",
        help="turn it on (it replies between --from and --until)",
    )
    switch.add_argument("--off", dest="on", action="store_false", help="stop replying")
    action.add_argument("--subject", metavar="S", help="the reply's subject")
    action.add_argument(
        "--body-file",
        metavar="FILE",
        help="the reply's text, UTF-8 (- reads standard input); needed the first time",
    )
    action.add_argument(
        "--from",
        dest="starts_at",
        metavar="DATETIME",
        type=_moment,
        help="reply only from this time, UTC (none: from now)",
    )
    action.add_argument(
        "--until",
        dest="ends_at",
        metavar="DATETIME",
        type=_moment,
        help="reply only before this time, UTC (none: no end)",
    )
    action.add_argument(
        "--interval-days",
        metavar="N",
        type=whole_number(1),
        help=(
            "days before one sender is answered again "
            f"(at first {autorespond.DEFAULT_INTERVAL_DAYS})"
        ),
    )
    action.set_defaults(handler=_autorespond)
