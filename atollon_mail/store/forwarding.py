"""Store operations for forwarding: a mailbox's settings and targets, and where a message
for forwarding mailboxes goes.

Forwarding is off until it is turned on: adding the first address does not turn it on
(the admin chooses the moment), and turning it on with no address yet changes nothing
(mail stays in the mailbox until there is somewhere to send it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from atollon_mail.store.common import chunks, create, locked, normalize_identity, read_only
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.filing import resolve_recipient
from atollon_mail.store.mailboxes import get_mailbox_row
from atollon_mail.store.models import ForwardTarget, Mailbox, database_proxy, utc_now
from atollon_mail.store.records import ForwardingPlan, ForwardingRecord, Recipient, Rejection

# How many mailboxes one message may reach through forwarding: a bound on the work one
# message can cause, whatever the admins set up.
MAX_FORWARDING_MAILBOXES = 100


def _record(mailbox: Mailbox) -> ForwardingRecord:
    targets = (
        ForwardTarget.select(ForwardTarget.address)
        .where(ForwardTarget.mailbox == mailbox.id)
        .order_by(ForwardTarget.id)
        .tuples()
    )
    return ForwardingRecord(
        mailbox_address=f"{mailbox.local_part}@{mailbox.domain.name}",
        enabled=mailbox.forward_enabled,
        keep_copy=mailbox.forward_keep_copy,
        targets=tuple(address for (address,) in targets),
    )


def _locked_mailbox(address: str) -> Mailbox:
    # Locked: two admins changing one mailbox's forwarding at once see each other's change.
    mailbox = get_mailbox_row(address)
    locked(Mailbox.select(Mailbox.id).where(Mailbox.id == mailbox.id)).execute()
    return mailbox


@read_only
def get_forwarding(mailbox_address: str) -> ForwardingRecord:
    return _record(get_mailbox_row(mailbox_address))


def set_forwarding(
    mailbox_address: str, enabled: bool | None = None, keep_copy: bool | None = None
) -> ForwardingRecord:
    """Forwarding on or off, a copy kept or not; None leaves a setting as it is."""
    mailbox = _locked_mailbox(mailbox_address)
    changes = {}
    if enabled is not None:
        changes[Mailbox.forward_enabled] = mailbox.forward_enabled = enabled
    if keep_copy is not None:
        changes[Mailbox.forward_keep_copy] = mailbox.forward_keep_copy = keep_copy
    if changes:
        Mailbox.update(changes).where(Mailbox.id == mailbox.id).execute()
    return _record(mailbox)


def _target_key(address: str) -> str:
    return address.lower()


def _existing_targets(mailbox: Mailbox) -> dict[str, ForwardTarget]:
    query = ForwardTarget.select().where(ForwardTarget.mailbox == mailbox.id)
    return {_target_key(target.address): target for target in query}


def add_forward_target(mailbox_address: str, target_address: str) -> ForwardingRecord:
    """Another address the mailbox's mail goes to: here or elsewhere, not itself."""
    mailbox = _locked_mailbox(mailbox_address)
    own = f"{mailbox.local_part}@{mailbox.domain.name}"
    try:
        target = normalize_identity(target_address)
    except Invalid:
        raise Invalid(
            f"{target_address!r} is not an address to forward to; give one such as name@example.org"
        ) from None
    local, _, domain = target.rpartition("@")
    found = resolve_recipient(local, domain)
    if isinstance(found, Recipient) and found.mailbox_id == mailbox.id:
        raise Invalid(f"{target} is {own} itself; forward to another address")
    if isinstance(found, Rejection) and found.reason == "unknown-address":
        raise Invalid(f"{target} is not an address here; add the mailbox first: mailbox add")
    existing = _existing_targets(mailbox).get(_target_key(target))
    if existing is not None:
        raise Conflict(f"{own} forwards to {existing.address} already")
    create(
        ForwardTarget,
        f"{own} forwards to {target} already",
        mailbox=mailbox.id,
        address=target,
        created_at=utc_now(),
    )
    return _record(mailbox)


def remove_forward_target(mailbox_address: str, target_address: str) -> ForwardingRecord:
    mailbox = _locked_mailbox(mailbox_address)
    own = f"{mailbox.local_part}@{mailbox.domain.name}"
    existing = _existing_targets(mailbox).get(_target_key(target_address.strip()))
    if existing is None:
        # The domain may have been given in another case than stored: try it normalized.
        try:
            normalized = normalize_identity(target_address)
        except Invalid:
            normalized = None
        if normalized is not None:
            existing = _existing_targets(mailbox).get(_target_key(normalized))
    if existing is None:
        raise NotFound(f"{own} does not forward to {target_address.strip()}; see: mailbox forward")
    ForwardTarget.delete().where(ForwardTarget.id == existing.id).execute()
    return _record(mailbox)


def change_forwarding(
    mailbox_address: str,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    enabled: bool | None = None,
    keep_copy: bool | None = None,
) -> ForwardingRecord:
    """Several changes in one transaction (the admin command): all or none."""
    for target in remove:
        remove_forward_target(mailbox_address, target)
    for target in add:
        add_forward_target(mailbox_address, target)
    return set_forwarding(mailbox_address, enabled=enabled, keep_copy=keep_copy)


@read_only
def forward_targets(mailbox_ids: Iterable[int]) -> dict[int, tuple[str, ...]]:
    """The forward addresses of each mailbox that has any, in the order they were added."""
    found: dict[int, list[str]] = {}
    param = database_proxy.param
    for chunk in chunks(sorted(set(mailbox_ids))):
        sql = (
            "SELECT mailbox_id, address FROM forward_target"
            f" WHERE mailbox_id IN ({', '.join([param] * len(chunk))}) ORDER BY id"
        )
        for mailbox_id, address in database_proxy.execute_sql(sql, tuple(chunk)).fetchall():
            found.setdefault(mailbox_id, []).append(address)
    return {mailbox_id: tuple(addresses) for mailbox_id, addresses in found.items()}


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


@read_only
def expand_forwarding(recipients: Sequence[Recipient]) -> ForwardingPlan:
    """Follow the forwarding of local recipients, level by level in one transaction.

    A forwarding mailbox with targets is filed only if it keeps a copy; a local target is
    resolved and followed in turn, a remote one collected. Each mailbox is reached once,
    so a loop (A -> B -> A) ends. If nothing at all would receive the message (every
    target gone, no copy kept), it is filed into the recipients as given: mail is never
    dropped for a configuration that leads nowhere.
    """
    visited = {recipient.mailbox_id for recipient in recipients}
    level = list(recipients)
    filed: list[Recipient] = []
    remote: dict[str, str] = {}
    forwarders: list[str] = []
    skipped: list[str] = []
    srs_domain = None
    while level:
        targets = forward_targets(r.mailbox_id for r in level if r.forwards)
        next_level: list[Recipient] = []
        for recipient in level:
            addresses = targets.get(recipient.mailbox_id, ()) if recipient.forwards else ()
            if not addresses:
                filed.append(recipient)
                continue
            forwarders.append(recipient.mailbox_address)
            if recipient.keep_copy:
                filed.append(recipient)
            for address in addresses:
                local, _, domain = address.rpartition("@")
                found = resolve_recipient(local, domain)
                if isinstance(found, Rejection):
                    if found.reason == "unknown-domain":
                        remote.setdefault(address.lower(), address)
                        if srs_domain is None:
                            srs_domain = _domain_of(recipient.mailbox_address)
                    else:
                        skipped.append(address)
                elif found.mailbox_id not in visited:
                    if len(visited) >= MAX_FORWARDING_MAILBOXES:
                        skipped.append(address)
                        continue
                    visited.add(found.mailbox_id)
                    next_level.append(found)
        level = next_level
    if not filed and not remote:
        filed = list(recipients)
    return ForwardingPlan(
        filed=tuple(filed),
        remote=tuple(remote.values()),
        forwarders=tuple(forwarders),
        srs_domain=srs_domain,
        skipped=tuple(skipped),
    )
