"""Store operations behind the web admin's dashboard and mailbox list: read-only summaries
for one user."""

from __future__ import annotations

import datetime

import attrs
import peewee

from atollon_mail.store import queue, traffic
from atollon_mail.store.common import read_only, timestamp
from atollon_mail.store.domains import last_dns_check
from atollon_mail.store.models import (
    Alias,
    Context,
    Domain,
    Mailbox,
    MailboxAccess,
    QueueRecipient,
    User,
    utc_now,
)
from atollon_mail.store.records import ContextRecord, MailboxRecord, QueueEntry
from atollon_mail.store.traffic import Traffic

# The states shown as "recent deliveries and failures" on the dashboard.
RECENT_STATES = ("delivered", "bounced", "deferred")


@attrs.frozen
class DomainStatus:
    """A domain with the outcome of its last DNS check (checked_at None: not checked yet)."""

    name: str
    mode: str
    active: bool
    checked_at: object  # datetime.datetime | None
    passed: int
    warnings: int
    failures: int


@attrs.frozen
class VisibleMailbox:
    mailbox: MailboxRecord
    can_edit: bool


DASHBOARD_MAILBOXES = 20
# Destination domains listed with their delivery problems, most deferred recipients first.
PROBLEM_DOMAINS = 10
# A recipient in one of these has not reached its destination yet.
UNDELIVERED_STATES = ("queued", "in-flight", "deferred")
# The deferred recipients read for the problems per domain, the longest-waiting first.
PROBLEM_SCAN = 5000


@attrs.frozen
class OldestWaiting:
    """The queue's oldest recipient still to be delivered."""

    queue_message_id: int
    address: str
    state: str
    created_at: datetime.datetime
    attempts: int
    last_reply: str | None


@attrs.frozen
class DomainProblem:
    """A destination domain with recipients deferred: how many, since when (the oldest
    was queued), and the last attempt's reply."""

    domain: str
    deferred: int
    since: datetime.datetime
    last_attempt_at: datetime.datetime | None
    last_reply: str | None


@attrs.frozen
class DeliveryProblems:
    domains: tuple[DomainProblem, ...]  # the first PROBLEM_DOMAINS of them
    domain_total: int  # among those read
    # False: more deferred recipients wait than the `scanned` longest-waiting ones read.
    complete: bool = True
    scanned: int = 0


@attrs.frozen
class Dashboard:
    """What the dashboard shows to one user; the admin-only parts are None for others."""

    mailboxes: tuple[VisibleMailbox, ...]  # the first DASHBOARD_MAILBOXES of them
    mailbox_total: int
    domains: tuple[DomainStatus, ...] | None
    queue_counts: dict | None
    recent: tuple[QueueEntry, ...] | None
    # Admins only, like the queue: the traffic of all mail, whoever's it is.
    traffic: Traffic | None = None
    oldest: OldestWaiting | None = None
    problems: DeliveryProblems | None = None


def _domain_status(domain) -> DomainStatus:
    check = last_dns_check(domain.name)
    statuses = [] if check is None else [result.status for result in check.results]
    return DomainStatus(
        name=domain.name,
        mode=domain.mode,
        active=domain.active,
        checked_at=None if check is None else check.checked_at,
        passed=statuses.count("pass"),
        warnings=statuses.count("warn"),
        failures=statuses.count("fail"),
    )


@attrs.frozen
class MailboxPage:
    """One page of the mailboxes a user may see, and what the filters can offer."""

    rows: tuple[VisibleMailbox, ...]
    total: int
    domains: tuple[str, ...]
    owners: tuple[str, ...]


def _page_records(boxes: list[Mailbox]) -> list[MailboxRecord]:
    """Records for one page of mailboxes selected with their domain and owner, in a fixed
    number of queries (aliases, To Do contexts and store-to contexts each in one), not a
    few per mailbox: the list must stay fast with tens of thousands of mailboxes."""
    ids = [box.id for box in boxes]
    aliases: dict[int, list[str]] = {box_id: [] for box_id in ids}
    for alias in (
        Alias.select(Alias.mailbox, Alias.name).where(Alias.mailbox.in_(ids)).order_by(Alias.name)
    ):
        aliases[alias.mailbox_id].append(alias.name)
    todo = {
        context.owner_id: context
        for context in Context.select().where(
            (Context.kind == "todo") & Context.owner.in_({box.owner_id for box in boxes})
        )
    }
    chosen_ids = {box.store_to_id for box in boxes if box.store_to_id is not None}
    chosen = {
        context.id: context
        for context in Context.select(Context, User)
        .join(User, peewee.JOIN.LEFT_OUTER, on=(Context.owner == User.id))
        .where(Context.id.in_(chosen_ids))
    }
    owners = {box.owner_id: box.owner.login for box in boxes}
    records = []
    for box in boxes:
        domain = box.domain.name
        context = chosen.get(box.store_to_id) or todo[box.owner_id]
        records.append(
            MailboxRecord(
                id=box.id,
                address=f"{box.local_part}@{domain}",
                local_part=box.local_part,
                domain=domain,
                owner_login=box.owner.login,
                identity=box.identity,
                store_to=ContextRecord(
                    id=context.id,
                    kind=context.kind,
                    name=context.name,
                    owner_login=(
                        owners[context.owner_id]
                        if context.owner_id in owners
                        else (context.owner.login if context.owner_id else None)
                    ),
                ),
                active=box.active,
                is_default=box.is_default,
                signature=box.signature,
                aliases=tuple(f"{name}@{domain}" for name in aliases[box.id]),
                spam_handling=box.spam_handling,
            )
        )
    return records


@read_only
def mailbox_page(
    login: str, domain: str = "", owner: str = "", limit: int = 50, offset: int = 0
) -> MailboxPage:
    """The mailboxes a user may see (all for an admin, else owned or granted view/edit),
    filtered, ordered by domain and name, one page of them: paged in SQL."""
    user = User.get_or_none(User.login == login)
    if user is None:
        return MailboxPage((), 0, (), ())
    Owner = User.alias()
    base = Mailbox.select().join(Domain).switch(Mailbox).join(Owner, on=(Mailbox.owner == Owner.id))
    granted: dict[int, bool] = {}
    if not user.is_admin:
        granted = {
            access.mailbox_id: access.can_edit
            for access in MailboxAccess.select().where(
                (MailboxAccess.user == user.id) & (MailboxAccess.can_view | MailboxAccess.can_edit)
            )
        }
        base = base.where((Mailbox.owner == user.id) | Mailbox.id.in_(list(granted) or [0]))
    domains = tuple(
        name for (name,) in base.select(Domain.name).distinct().order_by(Domain.name).tuples()
    )
    owners = tuple(
        name for (name,) in base.select(Owner.login).distinct().order_by(Owner.login).tuples()
    )
    filtered = base
    if domain:
        filtered = filtered.where(Domain.name == domain)
    if owner:
        filtered = filtered.where(Owner.login == owner)
    total = filtered.count()
    boxes = list(
        filtered.select(Mailbox, Domain, Owner)
        .order_by(Domain.name, Mailbox.local_part)
        .limit(limit)
        .offset(offset)
    )
    rows = tuple(
        VisibleMailbox(
            record, user.is_admin or box.owner_id == user.id or granted.get(box.id, False)
        )
        for box, record in zip(boxes, _page_records(boxes), strict=True)
    )
    return MailboxPage(rows, total, domains, owners)


def oldest_query(state: str) -> peewee.Query:
    """A state's recipients, the one queued first first: read along the (state,
    created_at, id) index, no sort."""
    return (
        QueueRecipient.select()
        .where(QueueRecipient.state == state)
        .order_by(QueueRecipient.created_at, QueueRecipient.id)
    )


def problems_query(rows: int) -> peewee.Query:
    """The first `rows` deferred recipients in the order they were queued (the same
    index), with what the problems per domain take of them."""
    return (
        QueueRecipient.select(
            QueueRecipient.domain,
            QueueRecipient.created_at,
            QueueRecipient.last_attempt_at,
            QueueRecipient.last_reply,
            QueueRecipient.id,
        )
        .where(QueueRecipient.state == "deferred")
        .order_by(QueueRecipient.created_at, QueueRecipient.id)
        .limit(rows)
    )


def oldest_waiting() -> OldestWaiting | None:
    """The recipient queued longest ago that is not delivered yet (None: none waits).

    One `ORDER BY created_at, id LIMIT 1` per undelivered state, each the first entry of
    the (state, created_at, id) index (migration 18): a few rows read, however many wait.
    (Sorting every waiting row took seconds at a million deferred recipients.)"""
    found = []
    for state in UNDELIVERED_STATES:
        first = oldest_query(state).first()
        if first is not None:
            found.append(first)
    if not found:
        return None
    oldest = min(found, key=lambda row: (row.created_at, row.id))
    return OldestWaiting(
        queue_message_id=oldest.queue_message_id,
        address=oldest.address,
        state=oldest.state,
        created_at=oldest.created_at,
        attempts=oldest.attempts,
        last_reply=oldest.last_reply,
    )


def delivery_problems(limit: int = PROBLEM_DOMAINS, scan: int | None = None) -> DeliveryProblems:
    """Destination domains with deferred recipients, most first (then by name), counted
    among the `scan` (PROBLEM_SCAN) deferred recipients waiting longest: one query that
    reads at most that many rows in the order of the (state, created_at, id) index.

    Grouping every deferred row (and counting its distinct domains) took about 2.6 s at a
    million deferred recipients, holding SQLite's one store thread meanwhile; `complete`
    says whether every deferred recipient was among those read."""
    scan = PROBLEM_SCAN if scan is None else scan
    rows = list(problems_query(scan + 1).tuples())
    complete = len(rows) <= scan
    by_domain: dict[str, list] = {}
    for domain, created_at, last_attempt_at, last_reply, row_id in rows[:scan]:
        # [count, since, latest attempt's (when, id), its reply]
        seen = by_domain.get(domain)
        attempt = (last_attempt_at or datetime.datetime.min, row_id)
        if seen is None:
            by_domain[domain] = [1, created_at, attempt, last_reply]
            continue
        seen[0] += 1
        if attempt > seen[2]:
            seen[2], seen[3] = attempt, last_reply
    ranked = sorted(by_domain.items(), key=lambda item: (-item[1][0], item[0]))
    return DeliveryProblems(
        domains=tuple(
            DomainProblem(
                domain=domain,
                deferred=count,
                since=timestamp(since),
                last_attempt_at=(
                    None if attempt[0] == datetime.datetime.min else timestamp(attempt[0])
                ),
                last_reply=reply,
            )
            for domain, (count, since, attempt, reply) in ranked[:limit]
        ),
        domain_total=len(by_domain),
        complete=complete,
        scanned=min(len(rows), scan),
    )


@attrs.frozen
class QueueFacts:
    """The admin's part of the dashboard: the same for every admin, read in one store
    operation and kept a little while by the web (web.pages.QUEUE_FACTS_SECONDS)."""

    queue_counts: dict
    recent: tuple[QueueEntry, ...]
    traffic: Traffic
    oldest: OldestWaiting | None
    problems: DeliveryProblems


@read_only
def queue_facts(now: datetime.datetime, recent_limit: int = 10) -> QueueFacts:
    """The queue's counts, latest deliveries and failures, oldest waiting recipient and
    problems per domain, and the traffic to `now` (UTC)."""
    recent = [entry for state in RECENT_STATES for entry in queue.queue_list(state, recent_limit)]
    recent.sort(key=lambda entry: (entry.created_at, entry.recipient_id), reverse=True)
    return QueueFacts(
        queue_counts=queue.queue_counts(),
        recent=tuple(recent[:recent_limit]),
        traffic=traffic.traffic(now),
        oldest=oldest_waiting(),
        problems=delivery_problems(),
    )


@read_only
def dashboard(
    login: str,
    recent_limit: int = 10,
    now: datetime.datetime | None = None,
    with_queue: bool = True,
) -> Dashboard:
    """What `login` sees on the dashboard at `now` (UTC; the traffic charts end there).
    `with_queue` False: an admin's queue facts are left out (None), for the caller to
    take from queue_facts, as the web does to share them between views."""
    user = User.get_or_none(User.login == login)
    page = mailbox_page(login, limit=DASHBOARD_MAILBOXES)
    mailboxes, total = page.rows, page.total
    if user is None or not user.is_admin:
        return Dashboard(
            mailboxes=mailboxes, mailbox_total=total, domains=None, queue_counts=None, recent=None
        )
    domains = tuple(_domain_status(domain) for domain in Domain.select().order_by(Domain.name))
    seen = Dashboard(
        mailboxes=mailboxes,
        mailbox_total=total,
        domains=domains,
        queue_counts=None,
        recent=None,
    )
    if not with_queue:
        return seen
    return with_facts(seen, queue_facts(utc_now() if now is None else now, recent_limit))


def with_facts(seen: Dashboard, facts: QueueFacts) -> Dashboard:
    """An admin's dashboard with the queue facts in it."""
    return attrs.evolve(
        seen,
        queue_counts=facts.queue_counts,
        recent=facts.recent,
        traffic=facts.traffic,
        oldest=facts.oldest,
        problems=facts.problems,
    )
