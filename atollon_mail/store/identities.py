"""Which addresses a mailbox may send as: the one rule that setting an identity (command
line, web pages) and sending (submission, the web mail client) both go through.

A mailbox may send as its own address and, in secondary mode, as the same name at the
company's primary domain (sales@crm.acme.com as sales@acme.com): its *own identities*.
Anything else is set only by an administrator, and the mailbox remembers that
(`identity_approved`), so an owner's later edit of other fields neither loses it nor lets
the owner replace it. Never, whoever asks, an address that is another mailbox's address,
alias or identity; that is checked again at every send, so an identity that became one
since, or was stored before this rule, is refused then.

These helpers run inside the store's transactions; callers outside `store/` reach them
through the operations of `mailboxes`.
"""

from __future__ import annotations

import peewee

from atollon_mail.store.errors import IdentityRefused
from atollon_mail.store.models import Alias, Domain, Mailbox, User

# Everything after the first "+" of a local part is a tag: bob+news@ reaches bob@.
_TAG_DELIMITER = "+"


def _address(mailbox: Mailbox) -> str:
    return f"{mailbox.local_part}@{mailbox.domain.name}"


def own_identities(mailbox: Mailbox) -> tuple[str, ...]:
    """What the mailbox sends as without an administrator: its own address, then in
    secondary mode the same name at the company's primary domain."""
    domain = mailbox.domain
    if domain.mode == "secondary" and domain.primary_domain_id is not None:
        primary = Domain.get_by_id(domain.primary_domain_id)
        return (_address(mailbox), f"{mailbox.local_part}@{primary.name}")
    return (_address(mailbox),)


def is_admin(actor: str | None) -> bool:
    """Whether the one asking may approve other identities: an administrator user, or
    None, the appliance's own administrator at the command line."""
    if actor is None:
        return True
    user = User.get_or_none(User.login == actor.strip().lower())
    return bool(user is not None and user.is_admin)


def holder(mailbox: Mailbox, identity: str) -> str | None:
    """What makes `identity` another mailbox's address: one line for a person, or None."""
    local, _, domain_name = identity.lower().rpartition("@")
    names = {local, local.split(_TAG_DELIMITER, 1)[0]}
    domain = Domain.get_or_none(Domain.name == domain_name)
    if domain is not None:
        other = (
            Mailbox.select(Mailbox.local_part)
            .where(
                (Mailbox.domain == domain.id)
                & Mailbox.local_part.in_(names)
                & (Mailbox.id != mailbox.id)
            )
            .first()
        )
        if other is not None:
            return f"another mailbox, {other.local_part}@{domain_name}, receives at {identity}"
        alias = (
            Alias.select(Alias.name, Mailbox.local_part)
            .join(Mailbox)
            .where(
                (Alias.domain == domain.id) & Alias.name.in_(names) & (Alias.mailbox != mailbox.id)
            )
            .first()
        )
        if alias is not None:
            owner = f"{alias.mailbox.local_part}@{domain_name}"
            return f"another mailbox, {owner}, receives at {identity} (an alias)"
    other = (
        Mailbox.select(Mailbox.local_part, Domain.name)
        .join(Domain)
        .where((peewee.fn.LOWER(Mailbox.identity) == identity.lower()) & (Mailbox.id != mailbox.id))
        .first()
    )
    if other is not None:
        return f"another mailbox, {_address(other)}, sends as {identity} already"
    return None


def refusal(mailbox: Mailbox, identity: str, approved: bool) -> str | None:
    """Why the mailbox may not send as `identity` now, or None when it may.

    `approved`: an administrator set this identity (the mailbox's `identity_approved`).
    """
    own = [address.lower() for address in own_identities(mailbox)]
    if identity.lower() == own[0]:
        return None  # its own address is always its own
    if identity.lower() not in own and not approved:
        return (
            f"mailbox {_address(mailbox)} may send as {' or '.join(own_identities(mailbox))}; "
            f"only an administrator can set another identity such as {identity}"
        )
    return holder(mailbox, identity)


def sendable(mailbox: Mailbox) -> str:
    """What the mailbox sends as on its own (auto-replies): its stored identity when the
    rule allows it now, else its own address, which it always may."""
    if refusal(mailbox, mailbox.identity, mailbox.identity_approved) is None:
        return mailbox.identity
    return _address(mailbox)


def approve(mailbox: Mailbox, identity: str, admin: bool) -> bool:
    """Check `identity` as the mailbox's new identity, set by an administrator or not.

    Returns the `identity_approved` to store with it (True: outside its own identities);
    raises IdentityRefused, one line saying why and what to do.
    """
    other = identity.lower() not in [address.lower() for address in own_identities(mailbox)]
    if other and not admin:
        raise IdentityRefused(refusal(mailbox, identity, approved=False))
    problem = refusal(mailbox, identity, approved=True)
    if problem is not None:
        raise IdentityRefused(f"{problem}; choose another identity")
    return other
