"""Admin commands: a mailbox's options, redirects and access rights; removing aliases;
message types (the message configuration)."""

from __future__ import annotations

import argparse

from atollon_mail.cli import (
    Refused,
    _context_label,
    _counted,
    _out,
    _table,
    _yes_no,
    read_text_file,
)
from atollon_mail.store import mailboxes, queries
from atollon_mail.store.records import MessageTypeRecord

_YES_NO = {"yes": True, "no": False}
_RIGHTS = ("view", "edit")


def _yes_or_no(value: str) -> bool:
    found = _YES_NO.get(value.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"give yes or no, got {value!r}")
    return found


def _store_to(value: str) -> int | str:
    text = value.strip().lower()
    if text == mailboxes.TODO:
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(
        f"give todo (the owner's To Do) or a folder or project id (see: context list), "
        f"got {value!r}"
    )


def _rights(value: str) -> tuple[bool, bool]:
    """ "view", "edit" or "view,edit" as (view, edit); edit implies view."""
    given = {part.strip().lower() for part in value.split(",") if part.strip()}
    unknown = given - set(_RIGHTS)
    if not given or unknown:
        raise argparse.ArgumentTypeError(f"rights are view, edit or view,edit; got {value!r}")
    edit = "edit" in given
    return True, edit


def _rights_label(view: bool, edit: bool) -> str:
    return "view+edit" if edit else "view" if view else "none"


# --- mailbox --------------------------------------------------------------------------


def _configure(address, identity, signature, store_to, active, default):
    """All of `mailbox set` in one transaction: applied entirely or not at all."""
    mailboxes.update_mailbox(
        address, identity=identity, signature=signature, store_to=store_to, active=active
    )
    if default:
        mailboxes.set_default_mailbox(address)
    return queries.get_mailbox(address)


def _mailbox_set(store, args) -> None:
    if (args.identity, args.signature_file, args.store_to, args.active) == (None,) * 4 and (
        not args.default
    ):
        raise Refused(
            "nothing to change; give --identity, --signature-file, --store-to, --active "
            "or --default"
        )
    signature = (
        read_text_file(args.signature_file, "the signature") if args.signature_file else None
    )
    box = store.run_sync(
        _configure, args.address, args.identity, signature, args.store_to, args.active, args.default
    )
    changed = []
    if args.identity is not None:
        changed.append(f"identity {box.identity}")
    if signature is not None:
        lines = len(box.signature.splitlines())
        changed.append(f"signature {_counted(lines, 'line')}" if lines else "signature removed")
    if args.store_to is not None:
        changed.append(f"stores to {_context_label(box.store_to)}")
    if args.active is not None:
        changed.append(
            "active" if box.active else "inactive (mail to it is refused; its mail is kept)"
        )
    if args.default:
        changed.append("default box")
    _out(f"updated mailbox {box.address}: {', '.join(changed)}")


def _mailbox_redirect(store, args) -> None:
    operation = mailboxes.preview_redirect if args.dry_run else mailboxes.redirect_mailbox
    result = store.run_sync(operation, args.old, args.to)
    old, new = result.old_address, result.new_address
    if args.dry_run:
        _out(f"dry run, nothing changed: redirecting {old} to {new} would")
        _out(f"  add aliases to {new}: {', '.join(result.aliases_added)}")
        if result.old_was_active:
            _out(f"  make {old} inactive (its stored mail is kept)")
        else:
            _out(f"  leave {old} inactive, as it is (its stored mail is kept)")
        return
    _out(f"redirected {old} to {new}")
    _out(f"aliases added to {new}: {', '.join(result.aliases_added)}")
    if result.old_was_active:
        _out(f"{old} is now inactive (its stored mail is kept)")
    else:
        _out(f"{old} stays inactive (its stored mail is kept)")


def _mailbox_grant(store, args) -> None:
    view, edit = args.rights
    access = store.run_sync(mailboxes.grant_mailbox_access, args.address, args.user, view, edit)
    rights = _rights_label(access.view, access.edit)
    _out(f"{access.login} has {rights} rights on {access.mailbox_address}")


def _mailbox_revoke(store, args) -> None:
    access = store.run_sync(mailboxes.revoke_mailbox_access, args.address, args.user)
    rights = _rights_label(access.view, access.edit)
    _out(f"revoked {access.login}'s {rights} rights on {access.mailbox_address}")


# --- alias ----------------------------------------------------------------------------


def _alias_remove(store, args) -> None:
    alias = store.run_sync(mailboxes.remove_alias, args.address)
    _out(f"removed alias {alias.address} (of {alias.mailbox_address})")


# --- message-type ---------------------------------------------------------------------


def _defaults_label(kind: MessageTypeRecord) -> str:
    flags = (("incoming", kind.default_incoming), ("outgoing", kind.default_outgoing))
    return ", ".join(label for label, flag in flags if flag) or "-"


def _type_add(store, args) -> None:
    kind = store.run_sync(
        mailboxes.add_message_type,
        args.name,
        args.code,
        description=args.description or "",
        active=not args.inactive,
    )
    _out(f"added message type {kind.code} ({kind.name}{'' if kind.active else ', inactive'})")


def _type_list(store, args) -> None:
    kinds = store.run_sync(mailboxes.list_message_types)
    rows = [
        (kind.code, kind.name, _yes_no(kind.active), _defaults_label(kind), kind.description)
        for kind in kinds
    ]
    _out(_table(("CODE", "NAME", "ACTIVE", "DEFAULT FOR", "DESCRIPTION"), rows))


def _type_set(store, args) -> None:
    given = (args.name, args.description, args.active)
    if given == (None, None, None) and not (args.default_incoming or args.default_outgoing):
        raise Refused(
            "nothing to change; give --name, --description, --active, --default-incoming "
            "or --default-outgoing"
        )
    kind = store.run_sync(
        mailboxes.update_message_type,
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
    _out(f"updated message type {kind.code} ({', '.join(details)})")


def _type_delete(store, args) -> None:
    deleted = store.run_sync(mailboxes.delete_message_type, args.code, args.reassign_to)
    moved = ""
    if deleted.reassigned_to is not None:
        moved = f" ({_counted(deleted.reassigned, 'message')} moved to {deleted.reassigned_to})"
    _out(f"deleted message type {deleted.code}{moved}")


# --- parser ---------------------------------------------------------------------------


def _bare_alias_names(alias) -> None:
    """`alias add` takes a bare name too (the mailbox's domain is used)."""
    add = alias.choices["add"]
    for action in add._actions:
        if action.dest == "address":
            action.metavar = "NAME[@DOMAIN]"
            action.help = "the alias; @DOMAIN, if given, must be the mailbox's domain"
    add.description = "add an alias: another name the mailbox receives mail at"


def register(commands) -> None:
    mailbox = commands("mailbox", "the mailboxes mail is delivered to")
    change = mailbox.add_parser("set", help="change a mailbox's options")
    change.add_argument("address", metavar="ADDR")
    change.add_argument(
        "--identity",
        metavar="ADDR",
        help="the From address it sends as; never another mailbox's address, alias or identity",
    )
    change.add_argument(
        "--signature-file",
        metavar="FILE",
        help="the owner's signature, from a UTF-8 text file (- reads standard input; "
        "an empty file removes it)",
    )
    change.add_argument(
        "--store-to",
        metavar="todo|CONTEXT_ID",
        type=_store_to,
        help="file its mail into the owner's To Do or a folder or project (see: context list)",
    )
    change.add_argument(
        "--active",
        metavar="yes|no",
        type=_yes_or_no,
        help="no: refuse new mail for it (its stored mail is kept)",
    )
    change.add_argument(
        "--default", action="store_true", help="make it the owner's default box for sending"
    )
    change.set_defaults(handler=_mailbox_set)

    redirect = mailbox.add_parser(
        "redirect",
        help="send an address's mail to another mailbox: OLD becomes inactive, its name "
        "and aliases become aliases of NEW",
    )
    redirect.add_argument("old", metavar="OLD")
    redirect.add_argument("--to", metavar="NEW", required=True, help="the mailbox to receive it")
    redirect.add_argument(
        "--dry-run", action="store_true", help="show what would move, change nothing"
    )
    redirect.set_defaults(handler=_mailbox_redirect)

    grant = mailbox.add_parser("grant", help="give a user rights on a mailbox they do not own")
    grant.add_argument("address", metavar="ADDR")
    grant.add_argument("user", metavar="USER")
    grant.add_argument(
        "--rights",
        metavar="view,edit",
        type=_rights,
        required=True,
        help="view: read its mail; edit: also change its settings and send from it",
    )
    grant.set_defaults(handler=_mailbox_grant)

    revoke = mailbox.add_parser("revoke", help="take a user's rights on a mailbox away")
    revoke.add_argument("address", metavar="ADDR")
    revoke.add_argument("user", metavar="USER")
    revoke.set_defaults(handler=_mailbox_revoke)

    alias = commands("alias", "other names of a mailbox, in its domain")
    _bare_alias_names(alias)
    remove = alias.add_parser("remove", help="remove an alias")
    remove.add_argument("address", metavar="NAME@DOMAIN")
    remove.set_defaults(handler=_alias_remove)

    types = commands("message-type", "the message types of the message configuration")
    add = types.add_parser("add", help="add a message type")
    add.add_argument("code", metavar="CODE", help="lowercase letters, digits and -")
    add.add_argument("--name", required=True)
    add.add_argument("--description")
    add.add_argument("--inactive", action="store_true", help="not offered for now")
    add.set_defaults(handler=_type_add)
    types.add_parser("list", help="list the message types").set_defaults(handler=_type_list)
    change = types.add_parser("set", help="change a message type")
    change.add_argument("code", metavar="CODE")
    change.add_argument("--name")
    change.add_argument("--description")
    change.add_argument("--active", metavar="yes|no", type=_yes_or_no)
    change.add_argument(
        "--default-incoming", action="store_true", help="the type received mail gets"
    )
    change.add_argument("--default-outgoing", action="store_true", help="the type sent mail gets")
    change.set_defaults(handler=_type_set)
    delete = types.add_parser("delete", help="delete a message type")
    delete.add_argument("code", metavar="CODE")
    delete.add_argument(
        "--reassign-to", metavar="CODE", help="move the messages of that type to this one first"
    )
    delete.set_defaults(handler=_type_delete)
