"""Store operations for domains: adding and listing the domains this server receives
for, their DKIM keys and key rotation, what a domain's DNS must publish, the last check of
each domain, and whom to tell when something changes.

Each runs inside one transaction opened by `Store.run` (or `run_sync`) and returns frozen
records.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Sequence

import attrs

from atollon_mail.store.common import (
    create,
    locked,
    normalize_domain_name,
    read_only,
    strip_root_dot,
)
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.models import (
    DKIM_ALGORITHMS,
    DOMAIN_MODES,
    DkimKey,
    DnsCheck,
    Domain,
    Mailbox,
    User,
    database_proxy,
    utc_now,
)
from atollon_mail.store.records import (
    DkimActivation,
    DkimKeyRecord,
    DnsCheckRecord,
    DnsCheckResult,
    DnsSubject,
    DomainRecord,
    PublishedKey,
)

# --- domains --------------------------------------------------------------------------

# An inactive domain that only anchors secondary domains (the company's own domain, whose
# mail is hosted elsewhere) is not ours to receive for: its users are remote.
_DOMAIN_NAMES_SQL = """
    SELECT name FROM domain d
    WHERE active OR NOT EXISTS (SELECT 1 FROM domain s WHERE s.primary_domain_id = d.id)"""


def domain_record(domain: Domain) -> DomainRecord:
    primary = domain.primary_domain.name if domain.primary_domain_id is not None else None
    return DomainRecord(
        id=domain.id,
        name=domain.name,
        mode=domain.mode,
        active=domain.active,
        primary_domain=primary,
    )


def get_domain_row(name: str) -> Domain:
    domain_name = normalize_domain_name(name)
    try:
        return Domain.get(Domain.name == domain_name)
    except Domain.DoesNotExist:
        raise NotFound(f"no domain {domain_name}; add it with: domain add {domain_name}") from None


def _hosted_primary(domain: Domain) -> bool:
    """A primary domain whose mail this server receives (active, or paused), not one kept
    only as the anchor of secondary domains (inactive, with secondaries below it)."""
    if domain.mode != "primary":
        return False
    if domain.active:
        return True
    return not Domain.select().where(Domain.primary_domain == domain.id).exists()


def add_domain(name: str, mode: str = "primary", primary_domain: str | None = None) -> DomainRecord:
    """A domain this server receives for.

    A secondary domain (company.atollon.com, crm.acme.com: below the primary or not) gets
    the mail the company's own server forwards for chosen mailboxes of its own domain
    (company.com), whose MX stays with that other provider; its mailboxes send as
    name@company.com. That primary domain is recorded as a row of its own, inactive (mail
    for it is not received here), so its DKIM keys have a home. A domain hosted here
    already needs no secondary: its mailboxes are made in it.
    """
    domain_name = normalize_domain_name(name)
    if mode not in DOMAIN_MODES:
        raise Invalid(f"mode must be one of {', '.join(DOMAIN_MODES)}, got {mode!r}")
    if Domain.select().where(Domain.name == domain_name).exists():
        raise Conflict(f"domain {domain_name} exists already")
    primary = None
    if mode == "secondary":
        if primary_domain is None:
            raise Invalid(
                "a secondary domain needs the company's own domain, whose mail provider "
                "forwards to it: give --primary-domain (such as company.com)"
            )
        primary_name = normalize_domain_name(primary_domain)
        if primary_name == domain_name:
            raise Invalid(
                f"{domain_name} cannot be its own primary domain: give the company's own "
                "domain, whose mail stays with its other provider"
            )
        primary = Domain.get_or_none(Domain.name == primary_name)
        if primary is not None and primary.mode == "secondary":
            raise Invalid(
                f"{primary_name} is a secondary domain itself; name the company's own "
                "domain as the primary domain"
            )
        if primary is not None and _hosted_primary(primary):
            raise Invalid(
                f"{primary_name} is hosted here as a primary domain already, so it needs no "
                f"secondary domain: add its mailboxes to {primary_name} itself"
            )
        if primary is None:
            primary = create(
                Domain,
                f"domain {primary_name} exists already",
                name=primary_name,
                mode="primary",
                active=False,
                created_at=utc_now(),
            )
    elif primary_domain is not None:
        raise Invalid(
            f"only a secondary domain has a primary domain: add {domain_name} with "
            "--mode secondary, or without --primary-domain"
        )
    domain = create(
        Domain,
        f"domain {domain_name} exists already",
        name=domain_name,
        mode=mode,
        active=True,
        created_at=utc_now(),
        primary_domain=primary,
    )
    return domain_record(domain)


@read_only
def domain_names() -> frozenset[str]:
    """Every domain this server receives for or refuses as its own (active or not); not
    a primary domain kept only as the anchor of secondary ones."""
    return frozenset(
        name for (name,) in database_proxy.execute_sql(_DOMAIN_NAMES_SQL, ()).fetchall()
    )


@read_only
def hosted_domain(name: str) -> str | None:
    """The name of the domain as stored when its mailboxes are hosted here (an active
    domain, primary or secondary mode); None for any other name: unknown, inactive (the
    company's own domain kept for its secondary domains, or one paused), or no domain name
    at all. What mail clients are told to set themselves up with (Thunderbird autoconfig)."""
    try:
        domain_name = normalize_domain_name(name)
    except Invalid:
        return None
    query = Domain.select(Domain.name).where(
        (Domain.name == domain_name) & (Domain.active == True)  # noqa: E712 (peewee expression)
    )
    found = query.tuples().first()
    return None if found is None else found[0]


@read_only
def list_domains() -> list[DomainRecord]:
    return [domain_record(domain) for domain in Domain.select().order_by(Domain.name)]


# --- DKIM keys --------------------------------------------------------------------------

_SELECTOR = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def dkim_key_state(key: DkimKey) -> str:
    if key.active:
        return "active"
    return "pending" if key.retired_at is None else "retired"


def dkim_key_record(key: DkimKey, domain: str) -> DkimKeyRecord:
    return DkimKeyRecord(
        domain=domain,
        selector=key.selector,
        algorithm=key.algorithm,
        private_key=key.private_key,
        public_key=key.public_key,
        active=key.active,
        state=dkim_key_state(key),
        retired_at=key.retired_at,
    )


def add_dkim_key(
    domain: str, selector: str, algorithm: str, private_key: str, public_key: str
) -> DkimKeyRecord:
    """A new key: it signs at once when the domain has no signing key of its algorithm,
    else it is pending until `activate_dkim_key` (key rotation)."""
    found = get_domain_row(domain)
    selector = selector.strip().lower()
    if not _SELECTOR.match(selector):
        raise Invalid(
            f"{selector!r} is not a DKIM selector; use one DNS label of letters, digits and -"
        )
    if algorithm not in DKIM_ALGORITHMS:
        raise Invalid(f"algorithm must be one of {', '.join(DKIM_ALGORITHMS)}, got {algorithm!r}")
    if not private_key or not public_key:
        raise Invalid("a DKIM key needs both its private and its public part")
    conflict = (
        f"{found.name} has a DKIM key with selector {selector} already; choose another selector"
    )
    exists = DkimKey.select().where((DkimKey.domain == found.id) & (DkimKey.selector == selector))
    if exists.exists():
        raise Conflict(conflict)
    signing = DkimKey.select().where(
        (DkimKey.domain == found.id) & (DkimKey.algorithm == algorithm),
        DkimKey.active == True,  # noqa: E712 (peewee expression)
    )
    key = create(
        DkimKey,
        conflict,
        domain=found.id,
        selector=selector,
        algorithm=algorithm,
        private_key=private_key,
        public_key=public_key,
        active=not signing.exists(),
        created_at=utc_now(),
    )
    return dkim_key_record(key, found.name)


@read_only
def dkim_keys(domain: str | None = None) -> list[DkimKeyRecord]:
    """The signing (active) DKIM keys, newest first: of one domain (none if it is not
    ours), or all. all_dkim_keys lists the pending and retired ones too."""
    query = (
        DkimKey.select(DkimKey, Domain.name)
        .join(Domain)
        .where(DkimKey.active == True)  # noqa: E712 (peewee expression)
        .order_by(DkimKey.created_at.desc(), DkimKey.id.desc())
    )
    if domain is not None:
        query = query.where(Domain.name == strip_root_dot(domain.strip().lower()))
    return [dkim_key_record(key, key.domain.name) for key in query]


# --- what a domain's DNS must publish ---------------------------------------------------

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
    record = domain_record(domain)
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
    return _subject(get_domain_row(name))


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
        query = query.where(DkimKey.domain == get_domain_row(name).id)
    records = [dkim_key_record(key, key.domain.name) for key in query]
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
    domain = get_domain_row(name)
    return dkim_key_record(_get_key(domain, selector), domain.name)


def activate_dkim_key(
    name: str, selector: str, now: datetime.datetime | None = None
) -> DkimActivation:
    """Make a pending (or retired) key the one its domain signs with for its algorithm;
    the key that signed until now is retired at now (default: the current time; it is
    published on for the retention, then removed by remove_retired_dkim_keys)."""
    now = utc_now() if now is None else now
    domain = get_domain_row(name)
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
        activated=dkim_key_record(key, domain.name),
        retired=tuple(dkim_key_record(old, domain.name) for old in replaced),
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
    return [dkim_key_record(key, key.domain.name) for key in rows]


# --- the last check of each domain ------------------------------------------------------


def _results_json(results: Sequence[DnsCheckResult]) -> str:
    return json.dumps([attrs.asdict(result) for result in results], ensure_ascii=False)


def _results(text: str) -> tuple[DnsCheckResult, ...]:
    return tuple(DnsCheckResult(**item) for item in json.loads(text))


def _check_record(row: DnsCheck, domain: str) -> DnsCheckRecord:
    return DnsCheckRecord(domain=domain, checked_at=row.checked_at, results=_results(row.results))


@read_only
def last_dns_check(name: str) -> DnsCheckRecord | None:
    domain = get_domain_row(name)
    row = DnsCheck.get_or_none(DnsCheck.domain == domain.id)
    return None if row is None else _check_record(row, domain.name)


@read_only
def domains_overview() -> list[tuple[DomainRecord, DnsCheckRecord | None]]:
    """Every domain with its last DNS check (None: not checked yet)."""
    return [(domain, last_dns_check(domain.name)) for domain in list_domains()]


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
    domain = get_domain_row(name)
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
