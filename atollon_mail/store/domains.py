"""Store operations for DNS advice and watching: what a domain's DNS must publish, the last
check of each domain, and whom to tell when something changes.

Like the operations in `queries`, each runs inside one transaction opened by `Store.run`
(or `run_sync`) and returns frozen records.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence

import attrs

from atollon_mail.store.common import create, locked, read_only
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.models import DkimKey, DnsCheck, Domain, Mailbox, User, utc_now
from atollon_mail.store.queries import _dkim_key_record, _domain_record, _get_domain, dkim_key_state
from atollon_mail.store.records import (
    DkimActivation,
    DkimKeyRecord,
    DnsCheckRecord,
    DnsCheckResult,
    DnsSubject,
    PublishedKey,
)

CHECK_STATUSES = ("pass", "warn", "fail")


def _secondaries(domain: Domain) -> tuple[str, ...]:
    query = (
        Domain.select(Domain.name)
        .where(Domain.primary_domain == domain.id)
        .order_by(Domain.name)
        .tuples()
    )
    return tuple(name for (name,) in query)


def _subject(domain: Domain) -> DnsSubject:
    record = _domain_record(domain)
    secondaries = _secondaries(domain)
    sending = (record.primary_domain or record.name,)
    names = sorted({record.name, *sending})
    # Every key: a pending one must be published before it is activated, a retired one
    # stays published while mail signed with it may still be verified.
    keys = (
        DkimKey.select(DkimKey, Domain.name)
        .join(Domain)
        .where(Domain.name.in_(names))
        .order_by(Domain.name, DkimKey.created_at.desc(), DkimKey.id.desc())
    )
    forwards: tuple[tuple[str, str], ...] = ()
    if record.mode == "secondary":
        mailboxes = (
            Mailbox.select(Mailbox.local_part, Mailbox.identity)
            .where((Mailbox.domain == domain.id) & (Mailbox.active == True))  # noqa: E712
            .order_by(Mailbox.local_part)
            .tuples()
        )
        forwards = tuple(
            (identity, f"{local}@{record.name}")
            for local, identity in mailboxes
            if identity.lower() != f"{local}@{record.name}"
        )
    return DnsSubject(
        domain=record,
        # An inactive domain with secondaries below it is the company's own domain, kept
        # for them; an inactive domain without is one of ours, paused.
        hosted=record.active or not secondaries,
        sending_domains=sending,
        dkim_keys=tuple(
            PublishedKey(
                key.domain.name, key.selector, key.algorithm, key.public_key, dkim_key_state(key)
            )
            for key in keys
        ),
        forwards=forwards,
        secondaries=secondaries,
    )


@read_only
def dns_subject(name: str) -> DnsSubject:
    """What the DNS of one domain (ours, or the primary domain of one of ours) must say."""
    return _subject(_get_domain(name))


@read_only
def dns_subjects() -> list[DnsSubject]:
    """Every active domain, the ones the watcher checks."""
    query = Domain.select().where(Domain.active == True).order_by(Domain.name)  # noqa: E712
    return [_subject(domain) for domain in query]


# --- DKIM key rotation -------------------------------------------------------------------

_STATE_ORDER = {"active": 0, "pending": 1, "retired": 2}


def _keys_query():
    return (
        DkimKey.select(DkimKey, Domain.name)
        .join(Domain)
        .order_by(Domain.name, DkimKey.created_at.desc(), DkimKey.id.desc())
    )


@read_only
def all_dkim_keys(name: str | None = None) -> list[DkimKeyRecord]:
    """Every DKIM key (active, pending, retired), of one domain or all: by domain, then
    signing keys first, then pending, then retired, each newest first."""
    query = _keys_query()
    if name is not None:
        query = query.where(DkimKey.domain == _get_domain(name).id)
    records = [_dkim_key_record(key, key.domain.name) for key in query]
    return sorted(records, key=lambda record: (record.domain, _STATE_ORDER[record.state]))


def _get_key(domain: Domain, selector: str) -> DkimKey:
    selector = selector.strip().lower()
    key = locked(
        DkimKey.select().where((DkimKey.domain == domain.id) & (DkimKey.selector == selector))
    ).first()
    if key is None:
        raise NotFound(f"{domain.name} has no DKIM key with selector {selector}")
    return key


@read_only
def dkim_key(name: str, selector: str) -> DkimKeyRecord:
    domain = _get_domain(name)
    return _dkim_key_record(_get_key(domain, selector), domain.name)


def activate_dkim_key(
    name: str, selector: str, now: datetime.datetime | None = None
) -> DkimActivation:
    """Make a pending (or retired) key the one its domain signs with for its algorithm;
    the key that signed until now is retired at now (default: the current time; it is
    published on for the retention, then removed by remove_retired_dkim_keys)."""
    now = utc_now() if now is None else now
    domain = _get_domain(name)
    key = _get_key(domain, selector)
    if key.active:
        raise Conflict(f"the DKIM key {key.selector} of {domain.name} signs already")
    replaced = list(
        locked(
            DkimKey.select().where(
                (DkimKey.domain == domain.id)
                & (DkimKey.algorithm == key.algorithm)
                & (DkimKey.active == True)  # noqa: E712 (peewee expression)
            )
        )
    )
    for old in replaced:
        old.active = False
        old.retired_at = now
        old.save()
    key.active = True
    key.retired_at = None
    key.save()
    return DkimActivation(
        activated=_dkim_key_record(key, domain.name),
        retired=tuple(_dkim_key_record(old, domain.name) for old in replaced),
    )


def remove_retired_dkim_keys(retired_before: datetime.datetime) -> list[DkimKeyRecord]:
    """Delete the keys retired before the given time; returns them."""
    query = (
        DkimKey.select(DkimKey, Domain.name)
        .join(Domain)
        .where(
            (DkimKey.active == False)  # noqa: E712 (peewee expression)
            & DkimKey.retired_at.is_null(False)
            & (DkimKey.retired_at < retired_before)
        )
    )
    rows = list(query)
    if rows:
        DkimKey.delete().where(DkimKey.id.in_([key.id for key in rows])).execute()
    return [_dkim_key_record(key, key.domain.name) for key in rows]


# --- the last check of each domain ------------------------------------------------------


def _results_json(results: Sequence[DnsCheckResult]) -> str:
    return json.dumps([attrs.asdict(result) for result in results], ensure_ascii=False)


def _results(text: str) -> tuple[DnsCheckResult, ...]:
    return tuple(DnsCheckResult(**item) for item in json.loads(text))


def _check_record(row: DnsCheck, domain: str) -> DnsCheckRecord:
    return DnsCheckRecord(domain=domain, checked_at=row.checked_at, results=_results(row.results))


@read_only
def last_dns_check(name: str) -> DnsCheckRecord | None:
    domain = _get_domain(name)
    row = DnsCheck.get_or_none(DnsCheck.domain == domain.id)
    return None if row is None else _check_record(row, domain.name)


def record_dns_check(
    name: str, results: Sequence[DnsCheckResult], checked_at: datetime.datetime
) -> DnsCheckRecord | None:
    """Keep a domain's latest check; returns the one it replaces (None: the first).

    A result whose lookup failed (temporary) does not replace a known outcome of the same
    check: a resolver's bad minute is neither a breakage nor, later, a fix.
    """
    for result in results:
        if result.status not in CHECK_STATUSES:
            raise Invalid(f"a check's status is pass, warn or fail, got {result.status!r}")
    domain = _get_domain(name)
    row = locked(DnsCheck.select().where(DnsCheck.domain == domain.id)).first()
    previous = None if row is None else _check_record(row, domain.name)
    known = {} if previous is None else {result.check: result for result in previous.results}
    kept = [known.get(result.check, result) if result.temporary else result for result in results]
    if row is None:
        create(
            DnsCheck,
            f"{domain.name} was checked at the same time by another watcher",
            domain=domain.id,
            checked_at=checked_at,
            results=_results_json(kept),
        )
    else:
        row.checked_at = checked_at
        row.results = _results_json(kept)
        row.save()
    return previous


# --- whom to tell ------------------------------------------------------------------------


@read_only
def admin_addresses() -> list[str]:
    """The default mailbox of each admin user (admins without an active one are skipped)."""
    query = (
        Mailbox.select(Mailbox.local_part, Domain.name)
        .join(Domain)
        .switch(Mailbox)
        .join(User)
        .where(User.is_admin == True)  # noqa: E712 (peewee expressions)
        .where(Mailbox.is_default == True)  # noqa: E712
        .where(Mailbox.active == True)  # noqa: E712
        .order_by(User.login)
    )
    return [f"{local}@{domain}" for local, domain in query.tuples()]
