"""Admin commands: the mailboxes (`mailbox add`, `list`, `show`), their options, redirects
and access rights. Auto-respond and forwarding are in their own modules."""

from __future__ import annotations

import argparse

from atollon_mail.commands.autorespond import autoresponder_fields
from atollon_mail.commands.common import read_text_file, yes_or_no
from atollon_mail.commands.output import Refused, clean, context_label, counted, out, table, yes_no
from atollon_mail.store import folders, mailboxes
from atollon_mail.store.autorespond import get_autoresponder
from atollon_mail.store.forwarding import get_forwarding
from atollon_mail.store.values import SPAM_HANDLINGS

_RIGHTS = ("view", "edit")

# What each spam handling does, for `mailbox show` and the option's help.
SPAM_HANDLING_LABELS = {
    "junk": "junk mail goes to its Junk folder",
    "tag": "junk mail stays in the inbox, marked",
    "off": "junk mail is filed like any other",
}


def _store_to(value: str) -> int | str:
    """todo, a folder's or project's id, or its name (looked up when the command runs)."""
    text = value.strip()
    if text.lower() == mailboxes.TODO:
        return mailboxes.TODO
    if text.isdigit() and int(text) > 0:
        return int(text)
    if text and not text.isdigit():
        return text
    raise argparse.ArgumentTypeError(
        f"give todo (the owner's To Do), or a folder's or project's id or name (see: context "
        f"list), got {value!r}"
    )


def _store_to_target(store, store_to: int | str | None) -> int | str | None:
    """The id of the folder or project a name names (todo, ids and None as they are)."""
    if store_to is None or isinstance(store_to, int) or store_to == mailboxes.TODO:
        return store_to
    return store.run_sync(folders.get_folder, store_to).id


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


def _configure(address, identity, signature, store_to, active, default, spam=None):
    """All of `mailbox set` in one transaction: applied entirely or not at all."""
    mailboxes.update_mailbox(
        address,
        identity=identity,
        signature=signature,
        store_to=store_to,
        active=active,
        spam_handling=spam,
    )
    if default:
        mailboxes.set_default_mailbox(address)
    return mailboxes.get_mailbox(address)


def _mailbox_set(store, args) -> None:
    options = (args.identity, args.signature_file, args.store_to, args.active, args.spam)
    if options == (None,) * 5 and not args.default:
        raise Refused(
            "nothing to change; give --identity, --signature-file, --store-to, --active, "
            "--spam or --default"
        )
    signature = (
        read_text_file(args.signature_file, "the signature") if args.signature_file else None
    )
    store_to = _store_to_target(store, args.store_to)
    box = store.run_sync(
        _configure,
        args.address,
        args.identity,
        signature,
        store_to,
        args.active,
        args.default,
        args.spam,
    )
    changed = []
    if args.identity is not None:
        changed.append(f"identity {box.identity}")
    if signature is not None:
        lines = len(box.signature.splitlines())
        changed.append(f"signature {counted(lines, 'line')}" if lines else "signature removed")
    if args.store_to is not None:
        changed.append(f"stores to {context_label(box.store_to)}")
    if args.active is not None:
        changed.append(
            "active" if box.active else "inactive (mail to it is refused; its mail is kept)"
        )
    if args.spam is not None:
        changed.append(f"spam {box.spam_handling} ({SPAM_HANDLING_LABELS[box.spam_handling]})")
    if args.default:
        changed.append("default box")
    out(f"updated mailbox {box.address}: {', '.join(changed)}")


def _mailbox_redirect(store, args) -> None:
    operation = mailboxes.preview_redirect if args.dry_run else mailboxes.redirect_mailbox
    result = store.run_sync(operation, args.old, args.to)
    old, new = result.old_address, result.new_address
    if args.dry_run:
        out(f"dry run, nothing changed: redirecting {old} to {new} would")
        out(f"  add aliases to {new}: {', '.join(result.aliases_added)}")
        if result.old_was_active:
            out(f"  make {old} inactive (its stored mail is kept)")
        else:
            out(f"  leave {old} inactive, as it is (its stored mail is kept)")
        return
    out(f"redirected {old} to {new}")
    out(f"aliases added to {new}: {', '.join(result.aliases_added)}")
    if result.old_was_active:
        out(f"{old} is now inactive (its stored mail is kept)")
    else:
        out(f"{old} stays inactive (its stored mail is kept)")


def _mailbox_grant(store, args) -> None:
    view, edit = args.rights
    access = store.run_sync(mailboxes.grant_mailbox_access, args.address, args.user, view, edit)
    rights = _rights_label(access.view, access.edit)
    out(f"{access.login} has {rights} rights on {access.mailbox_address}")


def _mailbox_revoke(store, args) -> None:
    access = store.run_sync(mailboxes.revoke_mailbox_access, args.address, args.user)
    rights = _rights_label(access.view, access.edit)
    out(f"revoked {access.login}'s {rights} rights on {access.mailbox_address}")


def _mailbox_add(store, args) -> None:
    mailbox = store.run_sync(
        mailboxes.add_mailbox,
        args.address,
        args.owner,
        identity=args.identity,
        active=not args.inactive,
        # todo: the owner's To Do, where a mailbox's mail goes unless it says.
        store_to_context_id=None
        if args.store_to == mailboxes.TODO
        else _store_to_target(store, args.store_to),
        spam_handling=args.spam or "junk",
    )
    details = [f"owner {mailbox.owner_login}", f"identity {mailbox.identity}"]
    if args.store_to is not None:
        details.append(f"stores to {context_label(mailbox.store_to)}")
    if args.spam is not None:
        details.append(f"spam {mailbox.spam_handling}")
    if not mailbox.active:
        details.append("inactive")
    out(f"added mailbox {mailbox.address} ({', '.join(details)})")


def _mailbox_list(store, args) -> None:
    boxes = store.run_sync(mailboxes.list_mailboxes)
    rows = [
        (
            box.address,
            box.owner_login,
            box.identity,
            context_label(box.store_to),
            yes_no(box.active),
            yes_no(box.is_default),
            box.spam_handling,
            ", ".join(box.aliases) or "-",
        )
        for box in boxes
    ]
    headers = ("ADDRESS", "OWNER", "IDENTITY", "STORE TO", "ACTIVE", "DEFAULT", "SPAM", "ALIASES")
    out(table(headers, rows))


def _mailbox_show(store, args) -> None:
    detail = store.run_sync(mailboxes.mailbox_detail, args.address)
    box = detail.mailbox
    signature = box.signature.splitlines() or ["(none)"]
    active = yes_no(box.active)
    if detail.redirected_to is not None:
        active += f" (redirected to {detail.redirected_to})"
    identity = box.identity
    if detail.identity_refusal is not None:
        identity += f" (refused when sending: {detail.identity_refusal})"
    elif detail.identity_approved:
        identity += " (set by an administrator)"
    fields = [
        ("address", box.address),
        ("owner", box.owner_login),
        ("identity", identity),
        ("store to", context_label(box.store_to)),
        ("active", active),
        ("default box", yes_no(box.is_default)),
        ("spam", f"{box.spam_handling} ({SPAM_HANDLING_LABELS[box.spam_handling]})"),
        ("aliases", ", ".join(box.aliases) or "(none)"),
    ]
    if detail.access:  # the owner always has both; only grants to others are listed
        rights = [
            f"{access.login} {'view+edit' if access.edit else 'view'}" for access in detail.access
        ]
        fields.append(("rights", ", ".join(rights)))
    fields.append(("forwarding", _forwarding_summary(store, box.address)))
    fields.append(("auto-respond", _autorespond_summary(store, box.address)))
    fields.append(("signature", signature[0]))
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        out(f"{label + ':':<{width}}{clean(value)}".rstrip())
    for line in signature[1:]:
        out(f"{'':<{width}}{clean(line)}".rstrip())


def _forwarding_summary(store, address: str) -> str:
    forwarding = store.run_sync(get_forwarding, address)
    if not forwarding.enabled:
        return "off" + (
            f" (targets kept: {', '.join(forwarding.targets)})" if forwarding.targets else ""
        )
    copy = "keeping a copy" if forwarding.keep_copy else "forward only"
    return f"on, {copy}, to {', '.join(forwarding.targets) or '(no targets yet)'}"


def _autorespond_summary(store, address: str) -> str:
    responder = store.run_sync(get_autoresponder, address)
    state = autoresponder_fields(responder)[0][1]
    return state if responder is None else f"{state}: {responder.subject!r}"


# --- parser ---------------------------------------------------------------------------


def _spam_option(parser) -> None:
    parser.add_argument(
        "--spam",
        metavar="|".join(SPAM_HANDLINGS),
        type=str.lower,
        choices=SPAM_HANDLINGS,
        help="what happens to received mail the inbound checks call junk: "
        + "; ".join(f"{name}: {label}" for name, label in SPAM_HANDLING_LABELS.items())
        + " (default junk)",
    )


def register(commands) -> None:
    mailbox = commands("mailbox", "the mailboxes mail is delivered to")
    add = mailbox.add_parser("add", help="add a mailbox")
    add.add_argument("address", metavar="ADDR")
    add.add_argument("--owner", metavar="LOGIN", required=True)
    add.add_argument(
        "--identity",
        metavar="ADDR",
        help="the From address (default: ADDR, in secondary mode name@ the primary domain); "
        "never another mailbox's address, alias or identity",
    )
    add.add_argument("--inactive", action="store_true", help="refuse mail for it for now")
    add.add_argument(
        "--store-to",
        metavar="FOLDER",
        type=_store_to,
        help="file its mail into this folder or project: its id or name (see: context list)",
    )
    _spam_option(add)
    add.set_defaults(handler=_mailbox_add)
    mailbox.add_parser("list", help="list the mailboxes").set_defaults(handler=_mailbox_list)
    show = mailbox.add_parser("show", help="show one mailbox")
    show.add_argument("address", metavar="ADDR")
    show.set_defaults(handler=_mailbox_show)

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
        metavar="todo|FOLDER",
        type=_store_to,
        help="file its mail into the owner's To Do or a folder or project: its id or name "
        "(see: context list)",
    )
    change.add_argument(
        "--active",
        metavar="yes|no",
        type=yes_or_no,
        help="no: refuse new mail for it (its stored mail is kept)",
    )
    _spam_option(change)
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
