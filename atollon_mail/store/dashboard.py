"""Store operations behind the web admin's dashboard and mailbox list: read-only summaries
for one user."""

from __future__ import annotations

import datetime

import attrs
import peewee

from atollon_mail.store import queue, traffic
from atollon_mail.store.common import placeholders, read_only, timestamp
from atollon_mail.store.domains import last_dns_check
from atollon_mail.store.models import (
    Alias,
    Context,
    Domain,
    Mailbox,
    MailboxAccess,
    QueueRecipient,
    User,
    database_proxy,
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
    domain_total: int


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


def oldest_waiting() -> OldestWaiting | None:
    """The recipient queued longest ago that is not delivered yet (None: none waits).

    Walks the (state, next_attempt_at) index for the undelivered states only: the rows
    read are those waiting, as queue_counts reads them, never the delivered history."""
    found = (
        QueueRecipient.select()
        .where(QueueRecipient.state.in_(UNDELIVERED_STATES))
        .order_by(QueueRecipient.created_at, QueueRecipient.id)
        .first()
    )
    if found is None:
        return None
    return OldestWaiting(
        queue_message_id=found.queue_message_id,
        address=found.address,
        state=found.state,
        created_at=found.created_at,
        attempts=found.attempts,
        last_reply=found.last_reply,
    )


def delivery_problems(limit: int = PROBLEM_DOMAINS) -> DeliveryProblems:
    """Destination domains with deferred recipients, most first (then by name): two
    queries over the deferred rows (found through the state index), whatever the count."""
    param = database_proxy.param
    rows = database_proxy.execute_sql(
        "SELECT domain, COUNT(*), MIN(created_at), MAX(last_attempt_at) FROM queue_recipient"
        f" WHERE state = 'deferred' GROUP BY domain ORDER BY COUNT(*) DESC, domain LIMIT {param}",
        (limit,),
    ).fetchall()
    (domain_total,) = database_proxy.execute_sql(
        "SELECT COUNT(DISTINCT domain) FROM queue_recipient WHERE state = 'deferred'"
    ).fetchone()
    names = [row[0] for row in rows]
    replies: dict[str, str | None] = {}
    if names:
        # The reply of each domain's latest attempt (ties: the later recipient).
        for domain, reply in database_proxy.execute_sql(
            "SELECT domain, last_reply FROM (SELECT domain, last_reply, ROW_NUMBER() OVER"
            " (PARTITION BY domain ORDER BY last_attempt_at DESC, id DESC) AS n"
            " FROM queue_recipient WHERE state = 'deferred'"
            f" AND domain IN ({placeholders(len(names))})) AS latest WHERE n = 1",
            names,
        ).fetchall():
            replies[domain] = reply
    return DeliveryProblems(
        domains=tuple(
            DomainProblem(
                domain=domain,
                deferred=int(count),
                since=timestamp(since),
                last_attempt_at=timestamp(last_attempt),
                last_reply=replies.get(domain),
            )
            for domain, count, since, last_attempt in rows
        ),
        domain_total=int(domain_total),
    )


@read_only
def dashboard(
    login: str, recent_limit: int = 10, now: datetime.datetime | None = None
) -> Dashboard:
    """What `login` sees on the dashboard at `now` (UTC; the traffic charts end there)."""
    user = User.get_or_none(User.login == login)
    page = mailbox_page(login, limit=DASHBOARD_MAILBOXES)
    mailboxes, total = page.rows, page.total
    if user is None or not user.is_admin:
        return Dashboard(
            mailboxes=mailboxes, mailbox_total=total, domains=None, queue_counts=None, recent=None
        )
    domains = tuple(_domain_status(domain) for domain in Domain.select().order_by(Domain.name))
    recent = [entry for state in RECENT_STATES for entry in queue.queue_list(state, recent_limit)]
    recent.sort(key=lambda entry: (entry.created_at, entry.recipient_id), reverse=True)
    return Dashboard(
        mailboxes=mailboxes,
        mailbox_total=total,
        domains=domains,
        queue_counts=queue.queue_counts(),
        recent=tuple(recent[:recent_limit]),
        traffic=traffic.traffic(utc_now() if now is None else now),
        oldest=oldest_waiting(),
        problems=delivery_problems(),
    )
