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

from atollon_mail.store.errors import Invalid
from atollon_mail.store.models import DkimKey, DnsCheck, Domain, Mailbox, User
from atollon_mail.store.queries import _create, _domain_record, _get_domain, _locked, read_only
from atollon_mail.store.records import (
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
    keys = (
        DkimKey.select(DkimKey, Domain.name)
        .join(Domain)
        .where((DkimKey.active == True) & Domain.name.in_(names))  # noqa: E712
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
            PublishedKey(key.domain.name, key.selector, key.algorithm, key.public_key)
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
    row = _locked(DnsCheck.select().where(DnsCheck.domain == domain.id)).first()
    previous = None if row is None else _check_record(row, domain.name)
    known = {} if previous is None else {result.check: result for result in previous.results}
    kept = [known.get(result.check, result) if result.temporary else result for result in results]
    if row is None:
        _create(
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
