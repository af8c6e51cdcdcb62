"""Store operation behind the /metrics page's gauges: what is waiting in the delivery
queue, how old its oldest message is, and where the rows of live campaigns stand. Read
for a scrape (at most once per web.metrics.GAUGES_INTERVAL), so each count runs on an
index and over live rows only: delivered and
bounced recipients (the queue's history) and finished campaigns are not counted here (the
delivery outcome counters tell of those)."""

from __future__ import annotations

import datetime

import attrs
from peewee import SQL, fn

from atollon_mail.store.common import read_only
from atollon_mail.store.models import Campaign, CampaignRecipient, QueueRecipient
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
    """The gauges at `now` (naive UTC, as stored). Each query is an index range over
    live rows, read in the index's order (EXPLAIN on SQLite and PostgreSQL): no join,
    no sort, no temporary table, however long the queue's history or a campaign's
    list of sent rows."""
    queue = []
    oldest = None
    for state in WAITING_QUEUE_STATES:
        # The (state, next_attempt_at) index: the count reads it alone, the oldest the
        # waiting rows it leads to (a recipient's created_at is its message's).
        count = (
            QueueRecipient.select(fn.COUNT(SQL("*"))).where(QueueRecipient.state == state).scalar()
        )
        queue.append((state, count))
        first = (
            QueueRecipient.select(fn.MIN(QueueRecipient.created_at))
            .where(QueueRecipient.state == state)
            .scalar()
        )
        if first is not None:
            first = _naive(first)
            oldest = first if oldest is None else min(oldest, first)
    counts = dict.fromkeys(RECIPIENT_STATES, 0)
    live = [
        campaign_id
        for (campaign_id,) in Campaign.select(Campaign.id)
        .where(Campaign.status.in_(LIVE_CAMPAIGN_STATUSES))
        .tuples()
    ]
    if live:
        # Grouped in the (campaign, state, id) index's own order: a walk of that covering
        # index over the live campaigns' ranges. Grouping by state alone, through a join,
        # grouped in a temporary B-tree on SQLite and scanned the whole table on
        # PostgreSQL: with a million rows, 200,000 of them in running campaigns, 0.157 s
        # on SQLite for that query alone, 0.053 s for all the gauges now.
        rows = (
            CampaignRecipient.select(CampaignRecipient.state, fn.COUNT(SQL("*")))
            .where(CampaignRecipient.campaign.in_(live))
            .group_by(CampaignRecipient.campaign, CampaignRecipient.state)
            .tuples()
        )
        for state, count in rows:
            counts[state] = counts.get(state, 0) + count
    return StoreGauges(
        queue=tuple(queue),
        oldest_waiting_seconds=(
            None if oldest is None else max(0.0, (now - oldest).total_seconds())
        ),
        campaign_recipients=tuple(counts.items()),
    )


def _naive(value) -> datetime.datetime:
    # SQLite hands back text for an aggregate over a DateTimeField.
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    return value.replace(tzinfo=None)
