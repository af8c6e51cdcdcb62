"""Admin commands: forwarding (`mailbox forward`)."""

from __future__ import annotations

import argparse

from atollon_mail.commands.output import PROGRAM, out
from atollon_mail.store import forwarding
from atollon_mail.store.records import ForwardingRecord


def _yes_no(value: str) -> bool:
    answer = value.strip().lower()
    if answer not in ("yes", "no"):
        raise argparse.ArgumentTypeError(f"give yes or no, not {value!r}")
    return answer == "yes"


def _show(record: ForwardingRecord) -> None:
    address = record.mailbox_address
    state = "on" if record.enabled else "off"
    kept = "a copy stays in the mailbox" if record.keep_copy else "no copy stays in the mailbox"
    out(f"{address}: forwarding {state}, {kept}")
    if record.targets:
        out("forwards to:")
        for target in record.targets:
            out(f"  {target}")
    else:
        out("forwards to: (no address)")
    if record.enabled and not record.targets:
        out(
            "mail stays in the mailbox until there is an address: "
            f"{PROGRAM} mailbox forward {address} --add ADDRESS"
        )
    elif not record.enabled and record.targets:
        out(f"nothing is forwarded until it is on: {PROGRAM} mailbox forward {address} --on")


def _mailbox_forward(store, args) -> None:
    record = store.run_sync(
        forwarding.change_forwarding,
        args.address,
        add=args.add or (),
        remove=args.remove or (),
        enabled=args.enabled,
        keep_copy=args.keep_copy,
    )
    _show(record)


def register(commands) -> None:
    mailbox = commands("mailbox", "the mailboxes mail is delivered to")
    forward = mailbox.add_parser(
        "forward",
        help="show or change where a mailbox's mail is forwarded",
        description=(
            "Show a mailbox's forwarding, or change it: addresses are added and removed, "
            "then it is turned on or off, all at once. Adding an address does not turn "
            "forwarding on."
        ),
    )
    forward.add_argument("address", metavar="ADDR")
    forward.add_argument(
        "--add",
        metavar="TARGET",
        action="append",
        help="forward to this address too (here or elsewhere; repeatable)",
    )
    forward.add_argument(
        "--remove", metavar="TARGET", action="append", help="stop forwarding to this address"
    )
    forward.add_argument(
        "--keep-copy",
        metavar="yes|no",
        type=_yes_no,
        help="whether forwarded mail is also kept in the mailbox (default for a new one: yes)",
    )
    switch = forward.add_mutually_exclusive_group()
    switch.add_argument(
        "--on", dest="enabled", action="store_const", const=True, help="turn forwarding on"
    )
    switch.add_argument(
        "--off", dest="enabled", action="store_const", const=False, help="turn forwarding off"
    )
    forward.set_defaults(handler=_mailbox_forward, enabled=None)
