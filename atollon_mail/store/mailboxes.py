"""Store operations for a mailbox's behaviours: its options (default box, identity,
signature, where mail is filed, active), aliases removed, redirecting an address to
another mailbox, access rights, and the message types of the message configuration.

Like those in `queries`, each runs inside the one transaction `Store.run` opens and
returns frozen records.
"""

from __future__ import annotations

import re

import peewee

from atollon_mail.store import identities
from atollon_mail.store.common import (
    create,
    limited,
    locked,
    normalize_address,
    normalize_identity,
    read_only,
)
from atollon_mail.store.errors import Conflict, IdentityRefused, Invalid, NotFound
from atollon_mail.store.models import (
    Alias,
    Campaign,
    Context,
    Domain,
    Mailbox,
    MailboxAccess,
    Message,
    MessageType,
    User,
    database_proxy,
    utc_now,
)
from atollon_mail.store.queries import (
    _context_record,
    _get_context,
    _get_mailbox,
    _get_user,
    _mailbox_record,
    _store_target,
    _store_targets,
)
from atollon_mail.store.records import (
    AliasRecord,
    ContextRecord,
    MailboxAccessRecord,
    MailboxDetail,
    MailboxRecord,
    MailboxRights,
    MessageTypeDeletion,
    MessageTypeRecord,
    RedirectResult,
)

SIGNATURE_LIMIT = 10_000
TODO = "todo"

# Any control character but newline and tab: PostgreSQL refuses NUL in text, and the
# others would reach every recipient's screen.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _address(mailbox: Mailbox) -> str:
    return f"{mailbox.local_part}@{mailbox.domain.name}"


def _lock_mailbox(mailbox: Mailbox) -> Mailbox:
    """The mailbox row locked (PostgreSQL) and read again: what a concurrent writer
    committed meanwhile is what the checks that follow see."""
    locked(Mailbox.select(Mailbox.id).where(Mailbox.id == mailbox.id)).execute()
    return Mailbox.select(Mailbox, Domain).join(Domain).where(Mailbox.id == mailbox.id).get()


# --- mailbox options ------------------------------------------------------------------


def set_default_mailbox(address: str) -> MailboxRecord:
    """Make the mailbox its owner's default box (the one used first when sending); the
    owner's previous default stops being it in the same transaction."""
    mailbox = _get_mailbox(address)
    # Every mailbox of the owner locked, in id order (as storing mail locks them): two
    # concurrent switches run one after the other and leave exactly one default.
    locked(
        Mailbox.select(Mailbox.id).where(Mailbox.owner == mailbox.owner_id).order_by(Mailbox.id)
    ).execute()
    mailbox = _lock_mailbox(mailbox)
    if not mailbox.active:
        raise Conflict(
            f"{_address(mailbox)} is inactive and cannot send; "
            f"activate it first: mailbox set {_address(mailbox)} --active yes"
        )
    Mailbox.update(is_default=False).where(
        (Mailbox.owner == mailbox.owner_id) & (Mailbox.id != mailbox.id)
    ).execute()
    Mailbox.update(is_default=True).where(Mailbox.id == mailbox.id).execute()
    return _mailbox_record(_lock_mailbox(mailbox))


def normalize_signature(signature: str) -> str:
    text = signature.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    if _CONTROL.search(text):
        raise Invalid("the signature holds control characters; give plain text")
    if len(text) > SIGNATURE_LIMIT:
        raise Invalid(
            f"the signature is {len(text)} characters long; at most {SIGNATURE_LIMIT} fit"
        )
    return text


def _store_to_id(mailbox: Mailbox, store_to: int | str) -> int | None:
    """The context mail is filed into: None is the owner's To Do."""
    if isinstance(store_to, str):
        if store_to.strip().lower() == TODO:
            return None
        if store_to.strip().isdigit():
            store_to = int(store_to.strip())
    if isinstance(store_to, bool) or not isinstance(store_to, int):
        raise Invalid(
            f"store-to is {TODO} (the owner's To Do) or the id of a folder or project, "
            f"got {store_to!r}; see: context list"
        )
    context = _get_context(store_to)
    if context.kind == TODO:
        if context.owner_id == mailbox.owner_id:
            return None
        raise Invalid(
            f"context {context.id} is another user's To Do; give {TODO} (the owner's "
            "To Do) or a folder or project id"
        )
    return _store_target(mailbox.owner_id, context.id).id  # a folder or project here


@read_only
def store_targets(address: str) -> list[ContextRecord]:
    """What a mailbox's store-to may be besides its owner's To Do (`_store_targets`); the
    same for whoever asks, an administrator too."""
    query = _store_targets(_get_mailbox(address).owner_id).order_by(Context.id)
    return [_context_record(context) for context in query]


def _alias_of_name(mailbox: Mailbox) -> Alias | None:
    """The alias carrying this mailbox's name (it was redirected), if any."""
    return (
        Alias.select(Alias, Mailbox)
        .join(Mailbox)
        .where((Alias.domain == mailbox.domain_id) & (Alias.name == mailbox.local_part))
        .first()
    )


def _identity_changes(mailbox: Mailbox, identity: str, actor: str | None) -> dict:
    """The columns that setting `identity` changes, checked by `identities.approve`."""
    identity = normalize_identity(identity)
    if identity.lower() == mailbox.identity.lower():
        # The same address (a form sends it back with every other change): whoever set
        # it, and whether an administrator approved it, stays as it is.
        return {"identity": identity}
    admin = identities.is_admin(actor)
    own = [address.lower() for address in identities.own_identities(mailbox)]
    if mailbox.identity_approved and not admin and identity.lower() not in own:
        # Back to one of its own identities the owner may always go (the approval goes).
        raise IdentityRefused(
            f"an administrator set {mailbox.identity} as the identity of {_address(mailbox)}; "
            "ask an administrator to change it"
        )
    approved = identities.approve(mailbox, identity, admin)
    return {"identity": identity, "identity_approved": approved}


def update_mailbox(
    address: str,
    identity: str | None = None,
    signature: str | None = None,
    store_to: int | str | None = None,
    active: bool | None = None,
    actor: str | None = None,
) -> MailboxRecord:
    """Change a mailbox's options; None leaves an option as it is.

    store_to: "todo" (the owner's To Do) or a folder/project context id. active=False
    keeps the stored mail; the address is then refused (550 5.1.1). actor: the login of
    the user asking (their rights on the mailbox checked before), None the appliance's
    administrator at the command line; an identity other than the mailbox's own ones
    only an administrator sets (see `identities`).
    """
    mailbox = _get_mailbox(address)
    changes: dict = {}
    if identity is not None:
        normalize_identity(identity)  # a malformed address is refused before any lock
    if signature is not None:
        changes["signature"] = normalize_signature(signature)
    if active is not None:
        changes["active"] = bool(active)
    mailbox = _lock_mailbox(mailbox)
    if identity is not None:
        changes.update(_identity_changes(mailbox, identity, actor))
    if store_to is not None:
        changes["store_to"] = _store_to_id(mailbox, store_to)
    if active and not mailbox.active:
        redirect = _alias_of_name(mailbox)
        if redirect is not None:
            # Active again, it would silently take its mail back from the alias.
            raise Conflict(
                f"{_address(mailbox)} is redirected to {_address(redirect.mailbox)} (an alias "
                f"of that name); remove it first: alias remove {_address(mailbox)}"
            )
    if changes:
        # Only the changed columns: the mail counter (next_uid) is not this operation's.
        Mailbox.update(**changes).where(Mailbox.id == mailbox.id).execute()
    return _mailbox_record(_lock_mailbox(mailbox))


@read_only
def mailbox_detail(address: str) -> MailboxDetail:
    mailbox = _get_mailbox(address)
    redirect = _alias_of_name(mailbox)
    return MailboxDetail(
        mailbox=_mailbox_record(mailbox),
        access=tuple(_access_records(mailbox)),
        redirected_to=_address(redirect.mailbox) if redirect is not None else None,
        own_identities=identities.own_identities(mailbox),
        identity_approved=mailbox.identity_approved,
        identity_refusal=identities.refusal(mailbox, mailbox.identity, mailbox.identity_approved),
    )


# --- aliases --------------------------------------------------------------------------


def remove_alias(address: str) -> AliasRecord:
    local, domain_name = normalize_address(address)
    alias = (
        Alias.select(Alias, Domain, Mailbox)
        .join(Domain)
        .switch(Alias)
        .join(Mailbox)
        .where((Domain.name == domain_name) & (Alias.name == local))
        .first()
    )
    if alias is None:
        raise NotFound(f"no alias {local}@{domain_name}; see: alias list")
    Alias.delete().where(Alias.id == alias.id).execute()
    return AliasRecord(
        id=alias.id,
        address=f"{local}@{domain_name}",
        mailbox_address=f"{alias.mailbox.local_part}@{domain_name}",
    )


# --- redirecting an address -------------------------------------------------------------


def _plan_redirect(old_address: str, new_address: str, lock: bool):
    old, new = _get_mailbox(old_address), _get_mailbox(new_address)
    if old.id == new.id:
        raise Invalid(f"{_address(old)} cannot be redirected to itself; give another mailbox")
    if old.domain_id != new.domain_id:
        raise Invalid(
            f"{_address(old)} can only be redirected to a mailbox in {old.domain.name}: "
            "its name becomes an alias, and aliases are always in the mailbox's domain"
        )
    if lock:
        # The domain as adding a mailbox or an alias locks it, then both mailboxes in id
        # order: concurrent redirects (even of OLD to NEW and NEW to OLD) run one by one.
        locked(Domain.select(Domain.id).where(Domain.id == old.domain_id)).execute()
        rows = {m.id: _lock_mailbox(m) for m in sorted((old, new), key=lambda m: m.id)}
        old, new = rows[old.id], rows[new.id]
    if not new.active:
        raise Conflict(
            f"{_address(new)} is inactive and receives nothing; redirect to an active mailbox"
        )
    taken = _alias_of_name(old)
    if taken is not None:
        raise Conflict(
            f"{_address(old)} is an alias of {_address(taken.mailbox)} already; "
            f"to redirect it elsewhere remove that first: alias remove {_address(old)}"
        )
    moved = [
        alias.name
        for alias in Alias.select(Alias.name).where(Alias.mailbox == old.id).order_by(Alias.name)
    ]
    domain = old.domain.name
    result = RedirectResult(
        old_address=_address(old),
        new_address=_address(new),
        aliases_added=tuple(f"{name}@{domain}" for name in [old.local_part, *moved]),
        old_was_active=old.active,
    )
    return old, new, result


@read_only
def preview_redirect(old_address: str, new_address: str) -> RedirectResult:
    """What redirect_mailbox would do, changing nothing (refused the same way)."""
    return _plan_redirect(old_address, new_address, lock=False)[2]


def redirect_mailbox(old_address: str, new_address: str) -> RedirectResult:
    """Send OLD's mail to NEW from now on, in one transaction: OLD becomes inactive (its
    stored mail stays), OLD's name and every alias of OLD become aliases of NEW.

    Refused, changing nothing, when NEW is inactive, in another domain, or OLD's name is
    an alias already.
    """
    old, new, result = _plan_redirect(old_address, new_address, lock=True)
    Alias.update(mailbox=new.id).where(Alias.mailbox == old.id).execute()
    create(
        Alias,
        f"{result.old_address} is an alias already",
        name=old.local_part,
        domain=old.domain_id,
        mailbox=new.id,
        created_at=utc_now(),
    )
    Mailbox.update(active=False).where(Mailbox.id == old.id).execute()
    return result


# --- access rights --------------------------------------------------------------------


def _access_records(mailbox: Mailbox) -> list[MailboxAccessRecord]:
    query = (
        MailboxAccess.select(MailboxAccess, User)
        .join(User)
        .where(MailboxAccess.mailbox == mailbox.id)
        .order_by(User.login)
    )
    return [
        MailboxAccessRecord(
            mailbox_address=_address(mailbox),
            login=access.user.login,
            view=access.can_view,
            edit=access.can_edit,
        )
        for access in query
    ]


def _not_the_owner(mailbox: Mailbox, user: User, what: str) -> None:
    if mailbox.owner_id == user.id:
        raise Invalid(
            f"{user.login} owns {_address(mailbox)} and always has view and edit rights; {what}"
        )


def grant_mailbox_access(
    address: str, login: str, view: bool = True, edit: bool = False
) -> MailboxAccessRecord:
    """Give (or change) a user's rights on a mailbox; edit implies view."""
    mailbox = _get_mailbox(address)
    user = _get_user(login)
    _not_the_owner(mailbox, user, "nothing to grant")
    view = bool(view or edit)
    if not view:
        raise Invalid(f"give view or edit rights; to take {user.login}'s rights away, revoke them")
    # Locked: two grants for the same user wait for each other instead of both inserting.
    mailbox = _lock_mailbox(mailbox)
    updated = (
        MailboxAccess.update(can_view=view, can_edit=bool(edit))
        .where((MailboxAccess.mailbox == mailbox.id) & (MailboxAccess.user == user.id))
        .execute()
    )
    if not updated:
        create(
            MailboxAccess,
            f"{user.login}'s rights on {_address(mailbox)} changed meanwhile; try again",
            mailbox=mailbox.id,
            user=user.id,
            can_view=view,
            can_edit=bool(edit),
            created_at=utc_now(),
        )
    return MailboxAccessRecord(
        mailbox_address=_address(mailbox), login=user.login, view=view, edit=bool(edit)
    )


def revoke_mailbox_access(address: str, login: str) -> MailboxAccessRecord:
    """Take a user's rights on a mailbox away; what they were is returned."""
    mailbox = _get_mailbox(address)
    user = _get_user(login)
    _not_the_owner(mailbox, user, "an owner's rights cannot be revoked")
    access = MailboxAccess.get_or_none(
        (MailboxAccess.mailbox == mailbox.id) & (MailboxAccess.user == user.id)
    )
    if access is None:
        raise NotFound(f"{user.login} has no rights on {_address(mailbox)}; see: mailbox show")
    MailboxAccess.delete().where(MailboxAccess.id == access.id).execute()
    return MailboxAccessRecord(
        mailbox_address=_address(mailbox),
        login=user.login,
        view=access.can_view,
        edit=access.can_edit,
    )


@read_only
def mailbox_access(address: str) -> list[MailboxAccessRecord]:
    """The rights granted on a mailbox besides its owner's, by login."""
    return _access_records(_get_mailbox(address))


@read_only
def user_rights(login: str, mailbox_address: str) -> MailboxRights:
    """What a user may do with a mailbox: its owner and admins everything, others what
    they were granted. (Sending needs edit: see `queries.sending_identities`.)"""
    user = _get_user(login)
    mailbox = _get_mailbox(mailbox_address)
    if user.is_admin or mailbox.owner_id == user.id:
        return MailboxRights(view=True, edit=True)
    access = MailboxAccess.get_or_none(
        (MailboxAccess.mailbox == mailbox.id) & (MailboxAccess.user == user.id)
    )
    if access is None:
        return MailboxRights(view=False, edit=False)
    return MailboxRights(view=access.can_view or access.can_edit, edit=access.can_edit)


# --- message types (message configuration) ----------------------------------------------

_TYPE_CODE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
_TYPE_NAME_LIMIT = 100
_TYPE_DESCRIPTION_LIMIT = 2000
_KINDS = {"default_incoming": "incoming", "default_outgoing": "outgoing"}


def normalize_type_code(code: str) -> str:
    found = code.strip().lower()
    if not _TYPE_CODE.match(found):
        raise Invalid(
            f"{code!r} is not a message type code; use lowercase letters, digits and - "
            "(not at the start or end), at most 32 characters"
        )
    return found


def _type_name(name: str) -> str:
    found = limited(name, _TYPE_NAME_LIMIT, "name")
    if not found:
        raise Invalid("a message type needs a name")
    return found


def _type_record(kind: MessageType) -> MessageTypeRecord:
    return MessageTypeRecord(
        id=kind.id,
        code=kind.code,
        name=kind.name,
        description=kind.description,
        active=kind.active,
        default_incoming=kind.default_incoming,
        default_outgoing=kind.default_outgoing,
    )


def _lock_types() -> None:
    """Every message type locked (a short table): changes to the defaults run one at a
    time, so two concurrent switches cannot leave two defaults of one kind."""
    locked(MessageType.select(MessageType.id).order_by(MessageType.id)).execute()


def _get_type(code: str) -> MessageType:
    found = MessageType.get_or_none(MessageType.code == normalize_type_code(code))
    if found is None:
        raise NotFound(f"no message type {code.strip().lower()}; see: message-type list")
    return found


def _default_of(kind: str) -> MessageType | None:
    return MessageType.get_or_none(getattr(MessageType, kind) == True)  # noqa: E712


def add_message_type(
    name: str, code: str, description: str = "", active: bool = True
) -> MessageTypeRecord:
    code = normalize_type_code(code)
    name = _type_name(name)
    description = limited(description, _TYPE_DESCRIPTION_LIMIT, "description")
    conflict = f"a message type with code {code} exists already"
    if MessageType.select().where(MessageType.code == code).exists():
        raise Conflict(conflict)
    kind = create(
        MessageType,
        conflict,
        name=name,
        code=code,
        description=description,
        active=bool(active),
        default_incoming=False,
        default_outgoing=False,
        created_at=utc_now(),
    )
    return _type_record(kind)


def update_message_type(
    code: str,
    name: str | None = None,
    description: str | None = None,
    active: bool | None = None,
    default_incoming: bool | None = None,
    default_outgoing: bool | None = None,
) -> MessageTypeRecord:
    """Change a message type; None leaves a field as it is. Making it the default for
    incoming (outgoing) mail takes that from the previous default in one transaction."""
    _lock_types()
    kind = _get_type(code)
    changes: dict = {}
    if name is not None:
        changes["name"] = _type_name(name)
    if description is not None:
        changes["description"] = limited(description, _TYPE_DESCRIPTION_LIMIT, "description")
    if active is not None:
        changes["active"] = bool(active)
    will_be_active = changes.get("active", kind.active)
    for field, wanted in (
        ("default_incoming", default_incoming),
        ("default_outgoing", default_outgoing),
    ):
        is_default = getattr(kind, field)
        if wanted and not will_be_active:
            raise Conflict(
                f"{kind.code} is inactive; an inactive type cannot be the default for "
                f"{_KINDS[field]} mail (activate it too: --active yes)"
            )
        if wanted is False and is_default:
            raise Conflict(
                f"{kind.code} is the default for {_KINDS[field]} mail; make another type "
                f"the default instead: message-type set CODE --default-{_KINDS[field]}"
            )
        if not will_be_active and is_default:
            raise Conflict(
                f"{kind.code} is the default for {_KINDS[field]} mail and must stay active; "
                f"make another type the default first: message-type set CODE "
                f"--default-{_KINDS[field]}"
            )
        if wanted and not is_default:
            MessageType.update({field: False}).where(
                (getattr(MessageType, field) == True) & (MessageType.id != kind.id)  # noqa: E712
            ).execute()
            changes[field] = True
    if changes:
        MessageType.update(**changes).where(MessageType.id == kind.id).execute()
    return _type_record(MessageType.get_by_id(kind.id))


@read_only
def list_message_types() -> list[MessageTypeRecord]:
    return [_type_record(kind) for kind in MessageType.select().order_by(MessageType.code)]


def delete_message_type(code: str, reassign_to: str | None = None) -> MessageTypeDeletion:
    """Delete a message type. Messages of that type are moved to `reassign_to` first;
    without it, a type still in use is refused. A default type is never deleted."""
    _lock_types()
    kind = _get_type(code)
    for field, what in _KINDS.items():
        if getattr(kind, field):
            raise Conflict(
                f"{kind.code} is the default type for {what} mail; make another type the "
                f"default first: message-type set CODE --default-{what}"
            )
    target = None
    if reassign_to is not None:
        target = _get_type(reassign_to)
        if target.id == kind.id:
            raise Invalid(f"{kind.code}'s messages cannot move to {kind.code} itself")
    campaigns_using = Campaign.select().where(Campaign.type == kind.id).count()
    if campaigns_using and target is None:
        noun = "campaign uses" if campaigns_using == 1 else "campaigns use"
        raise Conflict(f"{campaigns_using} {noun} type {kind.code}; pass --reassign-to CODE")
    in_use = Message.select().where(Message.type == kind.id).count()
    if in_use and target is None:
        noun = "message has" if in_use == 1 else "messages have"
        raise Conflict(f"{in_use} {noun} type {kind.code}; pass --reassign-to CODE")
    moved = 0
    if target is not None:
        moved = Message.update(type=target.id).where(Message.type == kind.id).execute()
        Campaign.update(type=target.id).where(Campaign.type == kind.id).execute()
    try:
        with database_proxy.atomic():  # a savepoint keeps the transaction usable
            MessageType.delete().where(MessageType.id == kind.id).execute()
    except peewee.IntegrityError:
        raise Conflict(
            f"messages of type {kind.code} arrived meanwhile; try again"
            + ("" if target is not None else " with --reassign-to CODE")
        ) from None
    return MessageTypeDeletion(
        code=kind.code, reassigned=moved, reassigned_to=target.code if target else None
    )
