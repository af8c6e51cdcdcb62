"""Shared fixtures: the appliance's pieces, built with what their builders give them; the
records tests start from (domains, users, mailboxes, contacts, groups, campaigns); and the
appliance under twistd with its first domain, user and mailbox."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping

import attrs
from twisted.internet import defer, reactor, threads

from atollon_mail.auth import build_authenticator
from atollon_mail.crm.records import ContactRecord, GroupRecord, OrganizationRecord
from atollon_mail.delivery.intake import Intake
from atollon_mail.events import Events
from atollon_mail.store import (
    accounts,
    aliases,
    campaigns,
    contacts,
    domains,
    groups,
    mailboxes,
    sendlists,
)
from atollon_mail.store.campaign_records import CampaignRecord
from atollon_mail.store.records import (
    AliasRecord,
    DomainRecord,
    MailboxRecord,
    UserRecord,
)
from atollon_mail.web import build_web_root
from atollon_mail.workers import Workers
from tests.e2e.appliance import RunningAppliance


def started_workers(test, reactor=reactor) -> Workers:
    """The worker pools, started for one test and stopped after it."""
    workers = Workers(reactor)
    workers.startService()
    test.addCleanup(workers.stopService)
    return workers


def web_root(
    test,
    store,
    config,
    reactor,
    clock=None,
    recipient_tokens=None,
    authenticator=None,
    intake=None,
    learner=None,
    mail_events=None,
    metrics=None,
    challenge_answers=None,
):
    """The web root as the web builder makes it: a real intake on `store` (with events
    nobody listens to), started workers, and argon2 in their CPU pool unless the test
    brings its own `authenticator`; `learner` is the spam filter's (None: none);
    `mail_events` serves the mailbox pages' event streams (None: none); `metrics` are
    served at /metrics (None: not served);
    `challenge_answers` the ACME CA's challenges (None: none)."""
    workers = started_workers(test, reactor)
    if intake is None:
        intake = Intake(store, Events())
    if authenticator is None:
        authenticator = build_authenticator(store, reactor, workers.cpu, clock)
    return build_web_root(
        store,
        config,
        reactor,
        intake,
        workers,
        authenticator,
        recipient_tokens=recipient_tokens,
        clock=clock,
        learner=learner,
        mail_events=mail_events,
        metrics=metrics,
        challenge_answers=challenge_answers,
    )


# --- records in a store ---------------------------------------------------------------
#
# Each builder takes a store (or a `run_sync`-like callable: anything that runs a store
# operation and returns its result) and keyword overrides, and returns the records the
# tests use. They go through the store's own operations, as the appliance would.


def runner(store):
    """The callable that runs a store operation: `store.run_sync`, or `store` itself."""
    return getattr(store, "run_sync", store)


def domain(store, name: str = "acme.test", **overrides) -> DomainRecord:
    return runner(store)(domains.add_domain, name, **overrides)


def user(store, login: str = "jane", password_hash: str = "hash", **overrides) -> UserRecord:
    return runner(store)(accounts.add_user, login, password_hash, **overrides)


def mailbox(
    store, address: str = "jane@acme.test", owner: str = "jane", **overrides
) -> MailboxRecord:
    return runner(store)(mailboxes.add_mailbox, address, owner, **overrides)


def alias(store, address: str, mailbox_address: str) -> AliasRecord:
    return runner(store)(aliases.add_alias, address, mailbox_address)


@attrs.frozen
class Hosted:
    """A domain, a user and the user's mailbox at that domain."""

    domain: DomainRecord
    user: UserRecord
    mailbox: MailboxRecord


def hosted_mailbox(
    store,
    address: str = "jane@acme.test",
    owner: str = "jane",
    password_hash: str = "hash",
    name: str = "",
    is_admin: bool = False,
    **overrides,
) -> Hosted:
    """The usual start: the address's domain, its owner (a new user) and the mailbox; by
    default acme.test, jane and jane@acme.test. `overrides` go to the mailbox."""
    return Hosted(
        domain=domain(store, address.rpartition("@")[2]),
        user=user(store, owner, password_hash, name=name, is_admin=is_admin),
        mailbox=mailbox(store, address, owner, **overrides),
    )


def hosted_mailboxes(store, addresses: Iterable[str], owner: str, password_hash: str = "hash"):
    """Several mailboxes of one owner: their domains (each once, in order), the owner (a
    new user), then the mailboxes; their records."""
    addresses = list(addresses)
    for name in dict.fromkeys(address.rpartition("@")[2] for address in addresses):
        domain(store, name)
    user(store, owner, password_hash)
    return [mailbox(store, address, owner) for address in addresses]


# --- CRM --------------------------------------------------------------------------------


def organization(store, name: str = "Acme", **overrides) -> OrganizationRecord:
    return runner(store)(contacts.add_organization, name, **overrides)


def person(store, organization: int | str = "Acme", **fields) -> ContactRecord:
    """A person of the organization's CRM; fields as contacts.add_contact takes them."""
    return runner(store)(contacts.add_contact, organization, "person", **fields)


def company(store, name: str, organization: int | str = "Acme", **fields) -> ContactRecord:
    return runner(store)(contacts.add_contact, organization, "company", name=name, **fields)


def employment(store, person: ContactRecord, company: ContactRecord, **overrides):
    return runner(store)(contacts.add_employment, person.id, company.id, **overrides)


def group(
    store,
    name: str = "Customers",
    organization: int | str | None = None,
    members: Iterable[int] = (),
    **overrides,
) -> GroupRecord:
    """A group (static unless `kind="dynamic"` and a `filter` are given) with these
    contact ids as its members."""
    run = runner(store)
    record = run(groups.add_group, name, organization, **overrides)
    members = list(members)
    if members:
        run(groups.change_members, record.id, add=members)
    return record


# --- campaigns ------------------------------------------------------------------------


def build_campaign(
    name: str,
    group: int | str,
    mailbox_address: str,
    fallback_language: str,
    variants: Mapping[str, tuple[str, str]],
    started: bool,
    now: datetime.datetime | None,
    **overrides,
) -> CampaignRecord:
    """Store operation: a draft with its variants, started when asked (one transaction)."""
    record = campaigns.create_campaign(
        name, group, mailbox_address, fallback_language, now=now, **overrides
    )
    for language, (subject, body) in variants.items():
        campaigns.set_variant(record.id, language, subject, body, now=now)
    if started:
        sendlists.start_campaign(record.id, now)
    return campaigns.get_campaign(record.id)


def campaign(
    store,
    group: int | str,
    mailbox_address: str = "news@acme.test",
    *,
    name: str = "Spring news",
    fallback_language: str = "en",
    variants: Mapping[str, tuple[str, str]] | None = None,
    started: bool = False,
    now: datetime.datetime | None = None,
    **overrides,
) -> CampaignRecord:
    """A campaign to `group` sent from `mailbox_address`, with variants given as
    {language: (subject, body)} in the order they are set, started (its send list made)
    when `started`. `now` is when each step happens (the store's clock when None);
    `overrides` go to campaigns.create_campaign (type_code, organization)."""
    return runner(store)(
        build_campaign,
        name,
        group,
        mailbox_address,
        fallback_language,
        dict(variants or {}),
        started,
        now,
        **overrides,
    )


# --- reading rows for assertions --------------------------------------------------------


def table_rows(*fields, where=None, order_by=None) -> list[tuple]:
    """Store operation: these columns (of one model) of each row matching `where`, in id
    order unless `order_by` says otherwise."""
    model = fields[0].model
    query = model.select(*fields)
    if where is not None:
        query = query.where(where)
    return list(query.order_by(model.id if order_by is None else order_by).tuples())


def row_count(model, where=None) -> int:
    """Store operation: how many rows of `model` match `where` (all when None)."""
    query = model.select()
    if where is not None:
        query = query.where(where)
    return query.count()


def filed_in_old_schema(database, mailbox_id: int, context_id: int, raw: bytes) -> int:
    """Store operation for tests of migrations: a message stored and filed into a mailbox's
    inbox with the columns migrations 1 to 9 made, in SQL of that time (the store's own
    operations write the columns of the latest schema); its id."""
    p = database.param
    (message_id,) = database.execute_sql(
        "INSERT INTO message (raw, size, subject, envelope_sender, received_at)"
        f" VALUES ({p}, {p}, {p}, {p}, {p}) RETURNING id",
        (raw, len(raw), "old", "someone@elsewhere.example", datetime.datetime(2026, 1, 2)),
    ).fetchone()
    (next_uid,) = database.execute_sql(
        f"UPDATE mailbox SET next_uid = next_uid + 1 WHERE id = {p} RETURNING next_uid",
        (mailbox_id,),
    ).fetchone()
    database.execute_sql(
        "INSERT INTO filing (message_id, mailbox_id, context_id, uid, flags, filed_at)"
        f" VALUES ({p}, {p}, {p}, {p}, '', {p})",
        (message_id, mailbox_id, context_id, next_uid - 1, datetime.datetime(2026, 1, 2)),
    )
    return message_id


# --- the appliance under twistd -----------------------------------------------------------


def new_appliance(test, appliance_class=RunningAppliance, **options):
    """An appliance in a fresh directory of the test's, not started; its options as the
    class takes them."""
    directory = os.path.abspath(test.mktemp())
    os.makedirs(directory)
    return appliance_class(directory, **options)


@defer.inlineCallbacks
def started_appliance(test, appliance_class=RunningAppliance, **options):
    """`new_appliance`, started (in a thread: it waits for its port) and stopped after
    the test."""
    appliance = new_appliance(test, appliance_class, **options)
    yield threads.deferToThread(appliance.start)
    test.addCleanup(appliance.stop)
    return appliance


def mailbox_commands(address: str = "jane@acme.test", owner: str = "jane") -> tuple:
    """The commands making the address's domain, its owner (password from stdin) and the
    mailbox: `hosted_mailbox` through the command line."""
    return (
        ("domain", "add", address.rpartition("@")[2]),
        ("user", "add", owner, "--password-stdin"),
        ("mailbox", "add", address, "--owner", owner),
    )


def commands_succeed(test, appliance, commands, stdin: str | None = None) -> None:
    """Each command run by the appliance's command line (blocking), each asserted to
    succeed; `stdin` is given to every one."""
    for command in commands:
        result = appliance.cli(*command, stdin=stdin)
        test.assertEqual(result.returncode, 0, result.stderr)
