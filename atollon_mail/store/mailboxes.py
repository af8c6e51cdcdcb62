"""Store operations for mailboxes: adding and listing them, their options (default box,
identity, signature, where mail is filed, active), redirecting an address to another
mailbox, access rights, and the addresses a user may send as.

Each runs inside the one transaction `Store.run` opens and returns frozen records.
"""

from __future__ import annotations

import re

import peewee

from atollon_mail.store import identities
from atollon_mail.store.accounts import get_user_row
from atollon_mail.store.common import (
    create,
    locked,
    normalize_address,
    normalize_identity,
    read_only,
)
from atollon_mail.store.contexts import (
    context_record,
    get_context_row,
    mailbox_store_to,
    store_target,
    store_targets_for,
)
from atollon_mail.store.domains import get_domain_row
from atollon_mail.store.errors import Conflict, IdentityRefused, Invalid, NotFound
from atollon_mail.store.models import (
    SPAM_HANDLINGS,
    Alias,
    Context,
    Domain,
    Mailbox,
    MailboxAccess,
    User,
    utc_now,
)
from atollon_mail.store.records import (
    ContextRecord,
    MailboxAccessRecord,
    MailboxDetail,
    MailboxRecord,
    MailboxRights,
    RedirectResult,
    SendingIdentity,
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


# --- mailboxes ------------------------------------------------------------------------


def _mailbox_record(mailbox: Mailbox) -> MailboxRecord:
    domain = mailbox.domain.name
    aliases = tuple(
        f"{alias.name}@{domain}"
        for alias in Alias.select(Alias.name)
        .where(Alias.mailbox == mailbox.id)
        .order_by(Alias.name)
    )
    return MailboxRecord(
        id=mailbox.id,
        address=f"{mailbox.local_part}@{domain}",
        local_part=mailbox.local_part,
        domain=domain,
        owner_login=mailbox.owner.login,
        identity=mailbox.identity,
        store_to=context_record(mailbox_store_to(mailbox)),
        active=mailbox.active,
        is_default=mailbox.is_default,
        signature=mailbox.signature,
        aliases=aliases,
        spam_handling=mailbox.spam_handling,
    )


def name_taken(domain: Domain, name: str) -> str | None:
    """What already answers to name@domain (a mailbox or an alias), if anything."""
    if Mailbox.select().where((Mailbox.domain == domain) & (Mailbox.local_part == name)).exists():
        return "a mailbox"
    if Alias.select().where((Alias.domain == domain) & (Alias.name == name)).exists():
        return "an alias"
    return None


def get_mailbox_row(address: str) -> Mailbox:
    local, domain_name = normalize_address(address)
    query = (
        Mailbox.select(Mailbox, Domain)
        .join(Domain)
        .where((Domain.name == domain_name) & (Mailbox.local_part == local))
    )
    mailbox = query.first()
    if mailbox is None:
        raise NotFound(f"no mailbox {local}@{domain_name}; see: mailbox list")
    return mailbox


def add_mailbox(
    address: str,
    owner_login: str,
    identity: str | None = None,
    active: bool = True,
    store_to_context_id: int | None = None,
    actor: str | None = None,
    spam_handling: str = "junk",
) -> MailboxRecord:
    """A new mailbox. Its identity is by default its own address, in secondary mode the
    same name at the primary domain; another one is checked by `identities.approve` as set
    by `actor` (a login; None is the appliance's administrator at the command line).
    `spam_handling`: see update_mailbox."""
    local, domain_name = normalize_address(address)
    spam_handling = normalize_spam_handling(spam_handling)
    domain = get_domain_row(domain_name)
    owner = get_user_row(owner_login)
    # Locked: a concurrent mailbox or alias of this name, or another first mailbox of this
    # owner, waits for this one and then sees it.
    locked(Domain.select(Domain.id).where(Domain.id == domain.id)).execute()
    locked(User.select(User.id).where(User.id == owner.id)).execute()
    taken = name_taken(domain, local)
    if taken:
        raise Conflict(f"{local}@{domain_name} is {taken} already")
    if identity is None:
        # Secondary mode: mail is forwarded here from name@acme.com, and sent as it.
        primary = domain.primary_domain if domain.mode == "secondary" else None
        identity = f"{local}@{primary.name if primary is not None else domain_name}"
    else:
        identity = normalize_identity(identity)
    store_to = None
    if store_to_context_id is not None:
        store_to = store_target(owner.id, store_to_context_id)
    # The owner's first mailbox is their default box (the one used first when sending).
    has_default = (
        Mailbox.select().where((Mailbox.owner == owner) & (Mailbox.is_default == True)).exists()  # noqa: E712
    )
    mailbox = create(
        Mailbox,
        f"{local}@{domain_name} is a mailbox already",
        local_part=local,
        domain=domain,
        owner=owner,
        identity=identity,
        store_to=store_to,
        active=active,
        is_default=not has_default,
        signature="",
        next_uid=1,
        created_at=utc_now(),
        spam_handling=spam_handling,
    )
    # Checked on the new row (its own addresses are known then); a refusal rolls it back.
    approved = identities.approve(mailbox, identity, identities.is_admin(actor))
    if approved:
        Mailbox.update(identity_approved=True).where(Mailbox.id == mailbox.id).execute()
    return _mailbox_record(mailbox)


@read_only
def get_mailbox(address: str) -> MailboxRecord:
    return _mailbox_record(get_mailbox_row(address))


@read_only
def list_mailboxes() -> list[MailboxRecord]:
    query = (
        Mailbox.select(Mailbox, Domain, User)
        .join(Domain)
        .switch(Mailbox)
        .join(User)
        .order_by(Domain.name, Mailbox.local_part)
    )
    return [_mailbox_record(mailbox) for mailbox in query]


def set_mailbox_store_to(address: str, context_id: int | None) -> MailboxRecord:
    mailbox = get_mailbox_row(address)
    mailbox.store_to = get_context_row(context_id) if context_id is not None else None
    # Only this column: save() would write back every column, next_uid included, over
    # a concurrent delivery's increment.
    Mailbox.update(store_to=mailbox.store_to).where(Mailbox.id == mailbox.id).execute()
    return _mailbox_record(mailbox)


def set_mailbox_active(address: str, active: bool) -> MailboxRecord:
    mailbox = get_mailbox_row(address)
    mailbox.active = active
    Mailbox.update(active=active).where(Mailbox.id == mailbox.id).execute()  # see above
    return _mailbox_record(mailbox)


# --- mailbox options ------------------------------------------------------------------


def set_default_mailbox(address: str) -> MailboxRecord:
    """Make the mailbox its owner's default box (the one used first when sending); the
    owner's previous default stops being it in the same transaction."""
    mailbox = get_mailbox_row(address)
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


def normalize_spam_handling(value: str) -> str:
    """A spam handling (values.SPAM_HANDLINGS), any case; Invalid names the choices."""
    handling = value.strip().lower() if isinstance(value, str) else value
    if handling not in SPAM_HANDLINGS:
        raise Invalid(
            f"spam handling is junk (file junk into the Junk folder), tag (into the inbox, "
            f"marked) or off; got {value!r}"
        )
    return handling


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
    context = get_context_row(store_to)
    if context.kind == TODO:
        if context.owner_id == mailbox.owner_id:
            return None
        raise Invalid(
            f"context {context.id} is another user's To Do; give {TODO} (the owner's "
            "To Do) or a folder or project id"
        )
    return store_target(mailbox.owner_id, context.id).id  # a folder or project here


@read_only
def store_targets(address: str) -> list[ContextRecord]:
    """What a mailbox's store-to may be besides its owner's To Do (`store_targets_for`); the
    same for whoever asks, an administrator too."""
    query = store_targets_for(get_mailbox_row(address).owner_id).order_by(Context.id)
    return [context_record(context) for context in query]


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
    spam_handling: str | None = None,
) -> MailboxRecord:
    """Change a mailbox's options; None leaves an option as it is.

    store_to: "todo" (the owner's To Do) or a folder/project context id. active=False
    keeps the stored mail; the address is then refused (550 5.1.1). spam_handling: what
    received mail the inbound checks call junk does (values.SPAM_HANDLINGS; mail filed
    before keeps its folder). actor: the login of
    the user asking (their rights on the mailbox checked before), None the appliance's
    administrator at the command line; an identity other than the mailbox's own ones
    only an administrator sets (see `identities`).
    """
    mailbox = get_mailbox_row(address)
    changes: dict = {}
    if identity is not None:
        normalize_identity(identity)  # a malformed address is refused before any lock
    if signature is not None:
        changes["signature"] = normalize_signature(signature)
    if active is not None:
        changes["active"] = bool(active)
    if spam_handling is not None:
        changes["spam_handling"] = normalize_spam_handling(spam_handling)
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
    mailbox = get_mailbox_row(address)
    redirect = _alias_of_name(mailbox)
    return MailboxDetail(
        mailbox=_mailbox_record(mailbox),
        access=tuple(_access_records(mailbox)),
        redirected_to=_address(redirect.mailbox) if redirect is not None else None,
        own_identities=identities.own_identities(mailbox),
        identity_approved=mailbox.identity_approved,
        identity_refusal=identities.refusal(mailbox, mailbox.identity, mailbox.identity_approved),
    )


# --- redirecting an address -------------------------------------------------------------


def _plan_redirect(old_address: str, new_address: str, lock: bool):
    old, new = get_mailbox_row(old_address), get_mailbox_row(new_address)
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
    mailbox = get_mailbox_row(address)
    user = get_user_row(login)
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
    mailbox = get_mailbox_row(address)
    user = get_user_row(login)
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
    return _access_records(get_mailbox_row(address))


@read_only
def user_rights(login: str, mailbox_address: str) -> MailboxRights:
    """What a user may do with a mailbox: its owner and admins everything, others what
    they were granted. (Sending needs edit: see `sending_identities`.)"""
    user = get_user_row(login)
    mailbox = get_mailbox_row(mailbox_address)
    if user.is_admin or mailbox.owner_id == user.id:
        return MailboxRights(view=True, edit=True)
    access = MailboxAccess.get_or_none(
        (MailboxAccess.mailbox == mailbox.id) & (MailboxAccess.user == user.id)
    )
    if access is None:
        return MailboxRights(view=False, edit=False)
    return MailboxRights(view=access.can_view or access.can_edit, edit=access.can_edit)


def viewers(mailbox_id: int, logins: tuple[str, ...]) -> frozenset[str]:
    """Which of `logins` may view the mailbox, by the rule of `user_rights` (its owner,
    admins, and those granted view or edit); none when the mailbox is gone."""
    logins = sorted(set(logins))
    mailbox = Mailbox.get_or_none(Mailbox.id == mailbox_id)
    if mailbox is None or not logins:
        return frozenset()
    granted = (
        (MailboxAccess.mailbox == mailbox.id)
        & (MailboxAccess.user == User.id)
        & (MailboxAccess.can_view | MailboxAccess.can_edit)
    )
    found = (
        User.select(User.login)
        .join(MailboxAccess, peewee.JOIN.LEFT_OUTER, on=granted)
        .where(
            User.login.in_(logins)
            & (User.is_admin | (User.id == mailbox.owner_id) | MailboxAccess.id.is_null(False))
        )
        .tuples()
    )
    return frozenset(login for (login,) in found)


def viewable_mailbox_ids(login: str) -> peewee.Select | None:
    """The ids of the mailboxes a user may view, by the rule of `user_rights`, as a
    subquery; None for an administrator (every mailbox). No user: no mailbox."""
    user = User.get_or_none(User.login == login.strip().lower())
    if user is None:
        return Mailbox.select(Mailbox.id).where(Mailbox.id.is_null())
    if user.is_admin:
        return None
    granted = MailboxAccess.select(MailboxAccess.mailbox).where(
        (MailboxAccess.user == user.id)
        & ((MailboxAccess.can_view == True) | (MailboxAccess.can_edit == True))  # noqa: E712
    )
    return Mailbox.select(Mailbox.id).where((Mailbox.owner == user.id) | Mailbox.id.in_(granted))


# --- submission: who may send as whom ----------------------------------------------------


def _sendable_mailboxes(user_id: int):
    """The mailboxes a user may send from: the active ones they own or hold an edit right on.

    Only mailboxes: an alias receives, it is never an identity to send as.
    """
    may_send = (Mailbox.owner == user_id) | (MailboxAccess.can_edit == True)  # noqa: E712
    granted = (MailboxAccess.mailbox == Mailbox.id) & (MailboxAccess.user == user_id)
    return (
        Mailbox.select(Mailbox, Domain)
        .join(Domain)
        .switch(Mailbox)
        .join(MailboxAccess, peewee.JOIN.LEFT_OUTER, on=granted)
        .where(may_send & (Mailbox.active == True))  # noqa: E712 (peewee expression)
    )


@read_only
def sending_identities(login: str) -> tuple[SendingIdentity, ...]:
    """The addresses the user may send as, their own default mailbox first.

    A mailbox whose stored identity the rule of `identities` refuses now (another
    mailbox's address, alias or identity; not its own and not set by an administrator)
    offers none: old or since-overtaken data is no way to send as someone else.
    """
    user = User.get_or_none(User.login == login.strip().lower())
    if user is None:
        return ()
    # Another owner's default box is not this user's default.
    own_default = (Mailbox.owner == user.id) & (Mailbox.is_default == True)  # noqa: E712
    query = _sendable_mailboxes(user.id).order_by(
        peewee.Case(None, [(own_default, 0)], 1), Domain.name, Mailbox.local_part
    )
    return tuple(
        SendingIdentity(
            mailbox_id=mailbox.id,
            mailbox_address=f"{mailbox.local_part}@{mailbox.domain.name}",
            identity=mailbox.identity,
        )
        for mailbox in query
        if identities.refusal(mailbox, mailbox.identity, mailbox.identity_approved) is None
    )


@read_only
def identity_refusal(mailbox_address: str) -> str | None:
    """Why the mailbox may not send as its stored identity now (one line), or None."""
    mailbox = get_mailbox_row(mailbox_address)
    return identities.refusal(mailbox, mailbox.identity, mailbox.identity_approved)
