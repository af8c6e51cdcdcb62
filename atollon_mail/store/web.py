"""Store operations behind the web admin's pages: read-only summaries for one user."""

from __future__ import annotations

import attrs

from atollon_mail.store import queries
from atollon_mail.store.domains import last_dns_check
from atollon_mail.store.models import Domain, Mailbox, MailboxAccess, User
from atollon_mail.store.queries import read_only
from atollon_mail.store.records import MailboxRecord, QueueEntry, UserRecord

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


@attrs.frozen
class Dashboard:
    """What the dashboard shows to one user; the admin-only parts are None for others."""

    mailboxes: tuple[VisibleMailbox, ...]
    domains: tuple[DomainStatus, ...] | None
    queue_counts: dict | None
    recent: tuple[QueueEntry, ...] | None


@read_only
def session_user(login: str) -> UserRecord | None:
    """The user a session belongs to, as they are now (None once removed)."""
    user = User.get_or_none(User.login == login)
    return None if user is None else queries._user_record(user)


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


@read_only
def visible_mailboxes(login: str) -> list[VisibleMailbox]:
    """The mailboxes a user may see: all for an admin, else owned or granted view/edit."""
    user = User.get_or_none(User.login == login)
    if user is None:
        return []
    query = Mailbox.select().order_by(Mailbox.local_part, Mailbox.id)
    if user.is_admin:
        return [VisibleMailbox(queries._mailbox_record(box), True) for box in query]
    granted = {
        access.mailbox_id: access.can_edit
        for access in MailboxAccess.select().where(
            (MailboxAccess.user == user.id) & (MailboxAccess.can_view | MailboxAccess.can_edit)
        )
    }
    query = query.where((Mailbox.owner == user.id) | Mailbox.id.in_(list(granted) or [0]))
    return [
        VisibleMailbox(
            queries._mailbox_record(box), box.owner_id == user.id or granted.get(box.id, False)
        )
        for box in query
    ]


@read_only
def dashboard(login: str, recent_limit: int = 10) -> Dashboard:
    user = User.get_or_none(User.login == login)
    mailboxes = tuple(visible_mailboxes(login))
    if user is None or not user.is_admin:
        return Dashboard(mailboxes=mailboxes, domains=None, queue_counts=None, recent=None)
    domains = tuple(_domain_status(domain) for domain in Domain.select().order_by(Domain.name))
    recent = [entry for state in RECENT_STATES for entry in queries.queue_list(state, recent_limit)]
    recent.sort(key=lambda entry: (entry.created_at, entry.recipient_id), reverse=True)
    return Dashboard(
        mailboxes=mailboxes,
        domains=domains,
        queue_counts=queries.queue_counts(),
        recent=tuple(recent[:recent_limit]),
    )
