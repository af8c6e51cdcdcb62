"""Admin commands: the message types of the message configuration (`message-type`)."""

from __future__ import annotations

from atollon_mail.commands.common import yes_or_no
from atollon_mail.commands.output import Refused, counted, out, table, yes_no
from atollon_mail.store import message_types
from atollon_mail.store.records import MessageTypeRecord


def _defaults_label(kind: MessageTypeRecord) -> str:
    flags = (("incoming", kind.default_incoming), ("outgoing", kind.default_outgoing))
    return ", ".join(label for label, flag in flags if flag) or "-"


def _type_add(store, args) -> None:
    kind = store.run_sync(
        message_types.add_message_type,
        args.name,
        args.code,
        description=args.description or "",
        active=not args.inactive,
    )
    out(f"added message type {kind.code} ({kind.name}{'' if kind.active else ', inactive'})")


def _type_list(store, args) -> None:
    usages = store.run_sync(message_types.message_type_usage)
    rows = [
        (
            usage.type.code,
            usage.type.name,
            yes_no(usage.type.active),
            _defaults_label(usage.type),
            usage.messages,
            usage.campaigns,
            usage.type.description,
        )
        for usage in usages
    ]
    headers = ("CODE", "NAME", "ACTIVE", "DEFAULT FOR", "MESSAGES", "CAMPAIGNS", "DESCRIPTION")
    out(table(headers, rows, right=(4, 5)))


def _type_set(store, args) -> None:
    given = (args.name, args.description, args.active)
    if given == (None, None, None) and not (args.default_incoming or args.default_outgoing):
        raise Refused(
            "nothing to change; give --name, --description, --active, --default-incoming "
            "or --default-outgoing"
        )
    kind = store.run_sync(
        message_types.update_message_type,
        args.code,
        name=args.name,
        description=args.description,
        active=args.active,
        default_incoming=True if args.default_incoming else None,
        default_outgoing=True if args.default_outgoing else None,
    )
    details = [kind.name, "active" if kind.active else "inactive"]
    if kind.default_incoming or kind.default_outgoing:
        details.append(f"default for {_defaults_label(kind)} mail")
    out(f"updated message type {kind.code} ({', '.join(details)})")


def _type_delete(store, args) -> None:
    deleted = store.run_sync(message_types.delete_message_type, args.code, args.reassign_to)
    moved = ""
    if deleted.reassigned_to is not None:
        moved = f" ({counted(deleted.reassigned, 'message')} moved to {deleted.reassigned_to})"
    out(f"deleted message type {deleted.code}{moved}")


def register(commands) -> None:
    types = commands("message-type", "the message types of the message configuration")
    add = types.add_parser("add", help="add a message type")
    add.add_argument("code", metavar="CODE", help="lowercase letters, digits and -")
    add.add_argument("--name", required=True)
    add.add_argument("--description")
    add.add_argument("--inactive", action="store_true", help="not offered for now")
    add.set_defaults(handler=_type_add)
    types.add_parser(
        "list", help="list the message types with how many messages and campaigns have each"
    ).set_defaults(handler=_type_list)
    change = types.add_parser("set", help="change a message type")
    change.add_argument("code", metavar="CODE")
    change.add_argument("--name")
    change.add_argument("--description")
    change.add_argument("--active", metavar="yes|no", type=yes_or_no)
    change.add_argument(
        "--default-incoming", action="store_true", help="the type received mail gets"
    )
    change.add_argument("--default-outgoing", action="store_true", help="the type sent mail gets")
    change.set_defaults(handler=_type_set)
    delete = types.add_parser(
        "delete",
        help="delete a message type",
        description=(
            "Delete a message type. While archived messages or campaigns have it, the "
            "deletion is refused with their count unless --reassign-to names the type "
            "they get instead."
        ),
    )
    delete.add_argument("code", metavar="CODE")
    delete.add_argument(
        "--reassign-to", metavar="CODE", help="move the messages of that type to this one first"
    )
    delete.set_defaults(handler=_type_delete)
