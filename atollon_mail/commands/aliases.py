"""Admin commands: other names of a mailbox, in its domain (`alias add`, `list`, `remove`)."""

from __future__ import annotations

from atollon_mail.commands.output import out, table
from atollon_mail.store import aliases as alias_ops


def _alias_add(store, args) -> None:
    alias = store.run_sync(alias_ops.add_alias, args.address, args.mailbox)
    out(f"added alias {alias.address} -> {alias.mailbox_address}")


def _alias_list(store, args) -> None:
    aliases = store.run_sync(alias_ops.list_aliases)
    rows = [(alias.address, alias.mailbox_address) for alias in aliases]
    out(table(("ALIAS", "MAILBOX"), rows))


def _alias_remove(store, args) -> None:
    alias = store.run_sync(alias_ops.remove_alias, args.address)
    out(f"removed alias {alias.address} (of {alias.mailbox_address})")


def register(commands) -> None:
    alias = commands("alias", "other names of a mailbox, in its domain")
    add = alias.add_parser(
        "add",
        help="add an alias",
        description="add an alias: another name the mailbox receives mail at",
    )
    # A bare name takes the mailbox's domain.
    add.add_argument(
        "address",
        metavar="NAME[@DOMAIN]",
        help="the alias; @DOMAIN, if given, must be the mailbox's domain",
    )
    add.add_argument("--mailbox", metavar="ADDR", required=True)
    add.set_defaults(handler=_alias_add)
    alias.add_parser("list", help="list the aliases").set_defaults(handler=_alias_list)
    remove = alias.add_parser("remove", help="remove an alias")
    remove.add_argument("address", metavar="NAME@DOMAIN")
    remove.set_defaults(handler=_alias_remove)
