"""Store operation behind the /metrics page's gauges: what is waiting in the delivery
queue, how old its oldest message is, and where the rows of live campaigns stand. Read
at every scrape, so each count runs on an index and over live rows only: delivered and
bounced recipients (the queue's history) and finished campaigns are not counted here (the
delivery outcome counters tell of those)."""

from __future__ import annotations

import datetime

import attrs
from peewee import fn

from atollon_mail.store.common import read_only
from atollon_mail.store.models import Campaign, CampaignRecipient, QueueMessage, QueueRecipient
from atollon_mail.store.values import RECIPIENT_STATES

# Queue states of recipients still to be delivered (the others are history).
WAITING_QUEUE_STATES = ("queued", "in-flight", "deferred")
# Campaigns whose rows are counted: those that send, or were paused and may again.
LIVE_CAMPAIGN_STATUSES = ("running", "paused")


@attrs.frozen
class StoreGauges:
    queue: tuple[tuple[str, int], ...]  # (state, recipients) of each waiting state
    oldest_waiting_seconds: float | None  # None: nothing waits
    campaign_recipients: tuple[tuple[str, int], ...]  # (state, rows) of live campaigns


@read_only
def gauges(now: datetime.datetime) -> StoreGauges:
    """The gauges at `now` (naive UTC, as stored)."""
    queue = []
    for state in WAITING_QUEUE_STATES:
        # One index range each on (state, next_attempt_at).
        count = QueueRecipient.select().where(QueueRecipient.state == state).count()
        queue.append((state, count))
    oldest = (
        QueueMessage.select(fn.MIN(QueueMessage.created_at))
        .join(QueueRecipient)
        .where(QueueRecipient.state.in_(WAITING_QUEUE_STATES))
        .scalar()
    )
    counts = dict.fromkeys(RECIPIENT_STATES, 0)
    rows = (
        CampaignRecipient.select(CampaignRecipient.state, fn.COUNT(CampaignRecipient.id))
        .join(Campaign)
        .where(Campaign.status.in_(LIVE_CAMPAIGN_STATUSES))
        .group_by(CampaignRecipient.state)
        .tuples()
    )
    for state, count in rows:
        counts[state] = count
    return StoreGauges(
        queue=tuple(queue),
        oldest_waiting_seconds=(
            None if oldest is None else max(0.0, (now - _naive(oldest)).total_seconds())
        ),
        campaign_recipients=tuple(counts.items()),
    )


def _naive(value) -> datetime.datetime:
    # SQLite hands back text for an aggregate over a DateTimeField.
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    return value.replace(tzinfo=None)
