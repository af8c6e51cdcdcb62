"""Store operations for aliases: other names a mailbox receives mail at (aliases only
receive, never send), always in the mailbox's domain.

Each runs inside the one transaction `Store.run` opens and returns frozen records.
"""

from __future__ import annotations

from atollon_mail.store.common import (
    create,
    locked,
    normalize_address,
    normalize_mailbox_name,
    read_only,
)
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.mailboxes import get_mailbox_row, name_taken
from atollon_mail.store.models import Alias, Domain, Mailbox, utc_now
from atollon_mail.store.records import AliasRecord


def _alias_name(name: str, mailbox: Mailbox) -> str:
    """The alias's name in the mailbox's domain: a bare name, or name@ that domain."""
    if "@" not in name:
        return normalize_mailbox_name(name)
    local, domain_name = normalize_address(name)
    if domain_name != mailbox.domain.name:
        raise Invalid(
            f"{local}@{domain_name}: aliases are always in the mailbox's domain; "
            f"give just the name: {local} (to use {local}@{mailbox.domain.name})"
        )
    return local


def add_alias(name: str, mailbox_address: str) -> AliasRecord:
    """Another name mailbox_address receives mail at (aliases only receive, never send)."""
    mailbox = get_mailbox_row(mailbox_address)
    local = _alias_name(name, mailbox)
    domain_name = mailbox.domain.name
    locked(Domain.select(Domain.id).where(Domain.id == mailbox.domain_id)).execute()
    taken = name_taken(mailbox.domain, local)
    if taken:
        raise Conflict(f"{local}@{domain_name} is {taken} already")
    alias = create(
        Alias,
        f"{local}@{domain_name} is an alias already",
        name=local,
        domain=mailbox.domain,
        mailbox=mailbox,
        created_at=utc_now(),
    )
    return AliasRecord(
        id=alias.id,
        address=f"{local}@{domain_name}",
        mailbox_address=f"{mailbox.local_part}@{domain_name}",
    )


@read_only
def list_aliases() -> list[AliasRecord]:
    query = (
        Alias.select(Alias, Domain, Mailbox)
        .join(Domain)
        .switch(Alias)
        .join(Mailbox)
        .order_by(Domain.name, Alias.name)
    )
    return [
        AliasRecord(
            id=alias.id,
            address=f"{alias.name}@{alias.domain.name}",
            mailbox_address=f"{alias.mailbox.local_part}@{alias.domain.name}",
        )
        for alias in query
    ]


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
