"""Mail traffic counted per hour for the dashboard's charts: received, sent, bounced, junk.

The counts live in their own small table (traffic_hour, migration 16), not in the mail
rows: the Junk purge and the queue's clean-ups remove those, and a month of picture must
outlive them. The hot paths add to it once per committed batch (the intake's group
commit, the runner's outcomes of one connection), in the batch's own transaction, so a
count is there exactly when the mail it counts is.

What is counted:
- received: messages filed into a mailbox here (inbox or Junk; Sent copies are not),
  once per message however many mailboxes it reached;
- junk: those of them filed into the Junk of at least one mailbox;
- sent: queue recipients another server accepted;
- bounced: queue recipients that failed for good (bounced by the queue).
None of them counts the notifications the server writes itself (records.NOTIFICATION_KINDS:
DSNs, delay warnings, auto-replies, notices): a failure is counted once, as "bounced".
"""

from __future__ import annotations

import datetime
import secrets
import threading
from collections.abc import Iterable

import attrs

from atollon_mail.store.common import read_only, timestamp
from atollon_mail.store.database import is_sqlite
from atollon_mail.store.models import CampaignRecipient, TrafficHour, database_proxy, utc_now
from atollon_mail.store.records import NOTIFICATION_KINDS
from atollon_mail.store.values import FILED_COPY_FLAG

KINDS = ("received", "sent", "bounced", "junk")

# Shards per hour: each store thread adds to its own row (see _shard), so transactions on
# PostgreSQL's several store threads never queue behind one row's lock until the other's
# commit. At least the store's threads (store.pool checks it). Each process starts at a
# random shard (_FIRST_SHARD), so the threads of several nodes on one database mostly
# miss each other too (started at the same shard, node 1's first thread and node 2's
# waited on one row for each other's commit); a collision only waits, it counts right
# either way.
SHARDS = 64
_FIRST_SHARD = secrets.randbelow(SHARDS)
_thread_shard = threading.local()
_shards_lock = threading.Lock()
# shard -> the thread holding it; a shard whose thread ended is free again.
_shard_holders: dict[int, threading.Thread] = {}

HOURS_SHOWN = 24
DAYS_SHOWN = 30

_UPSERT = """
    INSERT INTO traffic_hour (hour, shard, received, sent, bounced, junk)
    VALUES ({p}, {p}, {p}, {p}, {p}, {p})
    ON CONFLICT (hour, shard) DO UPDATE SET
        received = traffic_hour.received + excluded.received,
        sent = traffic_hour.sent + excluded.sent,
        bounced = traffic_hour.bounced + excluded.bounced,
        junk = traffic_hour.junk + excluded.junk"""


def _shard() -> int:
    """This thread's shard: the first from _FIRST_SHARD on that no live thread holds, kept
    while the thread lives (a store stopped and started again gets new threads, which take
    the shards back). With more live threads than SHARDS, the others share by thread id:
    slower, still right."""
    shard = getattr(_thread_shard, "value", None)
    if shard is None:
        me = threading.current_thread()
        with _shards_lock:
            free = [
                number
                for number in ((_FIRST_SHARD + step) % SHARDS for step in range(SHARDS))
                if number not in _shard_holders or not _shard_holders[number].is_alive()
            ]
            shard = free[0] if free else threading.get_ident() % SHARDS
            if free:
                _shard_holders[shard] = me
        _thread_shard.value = shard
    return shard


def hour_of(moment: datetime.datetime) -> datetime.datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def add(
    moment: datetime.datetime, received: int = 0, sent: int = 0, bounced: int = 0, junk: int = 0
) -> None:
    """Add to the counts of the hour of `moment` (UTC), in the caller's transaction: one
    statement, whatever the counts. Nothing to add writes nothing."""
    if not (received or sent or bounced or junk):
        return
    database_proxy.execute_sql(
        _UPSERT.format(p=database_proxy.param),
        (TrafficHour.hour.db_value(hour_of(moment)), _shard(), received, sent, bounced, junk),
    )


def add_outcomes(outcomes: Iterable[tuple[datetime.datetime, str]]) -> None:
    """Count delivery outcomes (when, "delivered" | "bounced" | other, ignored): one
    statement per hour they fall in (one, unless a batch straddles the hour)."""
    by_hour: dict[datetime.datetime, list[int]] = {}
    for moment, outcome in outcomes:
        if outcome in ("delivered", "bounced"):
            counts = by_hour.setdefault(hour_of(moment), [0, 0])
            counts[outcome == "bounced"] += 1
    # In the order of the hours: two transactions on one shard then lock its rows in the
    # same order, so they wait for each other instead of deadlocking on PostgreSQL.
    for hour, (sent, bounced) in sorted(by_hour.items()):
        add(hour, sent=sent, bounced=bounced)


@attrs.frozen
class Bucket:
    """The mail of one hour or one day from `start` (UTC)."""

    start: datetime.datetime
    received: int
    sent: int
    bounced: int
    junk: int

    @property
    def total(self) -> int:
        return self.received + self.sent + self.bounced


@attrs.frozen
class Traffic:
    """The last HOURS_SHOWN hours (per hour) and DAYS_SHOWN days (per day) to `now`,
    oldest first, the current hour and day last (so far)."""

    now: datetime.datetime
    hours: tuple[Bucket, ...]
    days: tuple[Bucket, ...]

    @property
    def empty(self) -> bool:
        return not any(bucket.total or bucket.junk for bucket in self.days)


def _buckets(starts, sums: dict, width: datetime.timedelta) -> tuple[Bucket, ...]:
    buckets = []
    for start in starts:
        totals = [0, 0, 0, 0]
        hour = start
        while hour < start + width:
            for index, value in enumerate(sums.get(hour, ())):
                totals[index] += value
            hour += datetime.timedelta(hours=1)
        buckets.append(Bucket(start, *totals))
    return tuple(buckets)


@read_only
def traffic(now: datetime.datetime) -> Traffic:
    """The counts of the last day per hour and of the last DAYS_SHOWN days per day.

    One query over the (hour, shard) index, bounded to the window: at most
    DAYS_SHOWN * 24 * SHARDS rows, summed per hour by the database."""
    this_hour = hour_of(now)
    today = this_hour.replace(hour=0)
    first_day = today - datetime.timedelta(days=DAYS_SHOWN - 1)
    first_hour = this_hour - datetime.timedelta(hours=HOURS_SHOWN - 1)
    since = min(first_day, first_hour)
    until = this_hour + datetime.timedelta(hours=1)
    param = database_proxy.param
    rows = database_proxy.execute_sql(
        "SELECT hour, SUM(received), SUM(sent), SUM(bounced), SUM(junk) FROM traffic_hour"
        f" WHERE hour >= {param} AND hour < {param} GROUP BY hour",
        (TrafficHour.hour.db_value(since), TrafficHour.hour.db_value(until)),
    ).fetchall()
    sums = {timestamp(row[0]): tuple(int(value) for value in row[1:]) for row in rows}
    hours = [first_hour + datetime.timedelta(hours=n) for n in range(HOURS_SHOWN)]
    days = [first_day + datetime.timedelta(days=n) for n in range(DAYS_SHOWN)]
    return Traffic(
        now=now,
        hours=_buckets(hours, sums, datetime.timedelta(hours=1)),
        days=_buckets(days, sums, datetime.timedelta(days=1)),
    )


# --- migration 16: the counts of the mail already stored --------------------------------

BACKFILL_DAYS = DAYS_SHOWN + 1


def _hour_expression(dialect: str, column: str) -> str:
    if dialect == "postgresql":
        return f"date_trunc('hour', {column})"
    # SQLite keeps timestamps as text, "YYYY-MM-DD HH:MM:SS[.ffffff]".
    return f"substr({column}, 1, 13) || ':00:00'"


def _delivered_here(dialect: str) -> str:
    """SQL true for a message stored as a final delivery here (filing.insert_message
    with delivered: filed for a local recipient), which alone carries the Return-Path
    on top: not mail a client APPENDed, a draft, a Sent copy or mail only queued (a
    campaign's message, filed into the CRM archive once delivered)."""
    if dialect == "postgresql":
        return "substring(m.raw from 1 for 12) = 'Return-Path:'::bytea"
    return "CAST(substr(m.raw, 1, 12) AS TEXT) = 'Return-Path:'"


def backfill(database, dialect: str, now: datetime.datetime | None = None) -> None:
    """Counts for the mail of the last BACKFILL_DAYS days still in the store, written in
    plain SQL. Mail purged before this ran is not counted: nothing is left of it. Older
    mail is not shown, so it is not read.

    received: messages stored as a final delivery here (see _delivered_here), by the
    hour of their received_at (a filing's filed_at is reset by moves, and copies get
    their own), that lie in some mailbox outside its Sent and other than as a "File
    to..." copy ($Filed). Messages from the null sender that no inbound check saw are
    the notifications this server wrote (DSNs, auto-replies): not counted, as the hot
    paths do not count them.
    junk: those of them filed into Junk at arrival, as far as the rows tell: a Junk
    filing not moved since (its filed_at is the message's received_at), or a junk
    verdict with a copy in a mailbox whose spam handling files junk into Junk (its
    reader may have moved it out since).
    sent and bounced: the queue's timelines of the recipients not removed, but for the
    notifications the server wrote (their queue entry's origin)."""
    if now is None:
        now = utc_now()
    cutoff = TrafficHour.hour.db_value(hour_of(now) - datetime.timedelta(days=BACKFILL_DAYS))
    param = database.param
    counts: dict[datetime.datetime, list[int]] = {}
    received = database.execute_sql(
        f"""SELECT {_hour_expression(dialect, "received_at")}, COUNT(*), SUM(junk) FROM (
                SELECT m.id, m.received_at,
                       MAX(CASE WHEN f.folder = 'junk' AND f.filed_at = m.received_at THEN 1
                                WHEN m.verdict LIKE {param}
                                     AND b.spam_handling = 'junk' THEN 1
                                ELSE 0 END) AS junk
                FROM message m
                JOIN filing f ON f.message_id = m.id
                JOIN mailbox b ON b.id = f.mailbox_id
                WHERE m.received_at >= {param} AND {_delivered_here(dialect)}
                  AND NOT (m.envelope_sender = '' AND m.verdict IS NULL)
                  AND (b.sent_context_id IS NULL OR f.context_id <> b.sent_context_id)
                  AND f.flags NOT LIKE {param}
                GROUP BY m.id, m.received_at) AS arrived
            GROUP BY 1""",
        # The verdict as filing.verdict_json writes it (no spaces).
        ('%"junk":true%', cutoff, f"%{FILED_COPY_FLAG}%"),
    ).fetchall()
    for hour, count, junk in received:
        row = counts.setdefault(timestamp(hour), [0, 0, 0, 0])
        row[0] += int(count)
        row[3] += int(junk or 0)
    notifications = ", ".join(f"'{kind}'" for kind in NOTIFICATION_KINDS)
    outcomes = database.execute_sql(
        f"""SELECT {_hour_expression(dialect, "e.at")},
                   SUM(CASE WHEN e.outcome = 'delivered' THEN 1 ELSE 0 END),
                   SUM(CASE WHEN e.outcome = 'bounced' THEN 1 ELSE 0 END)
            FROM queue_event e
            JOIN queue_recipient r ON r.id = e.queue_recipient_id
            JOIN queue_message q ON q.id = r.queue_message_id
            WHERE e.at >= {param} AND e.outcome IN ('delivered', 'bounced')
              AND (q.origin_kind IS NULL OR q.origin_kind NOT IN ({notifications}))
            GROUP BY 1""",
        (cutoff,),
    ).fetchall()
    for hour, sent, bounced in outcomes:
        row = counts.setdefault(timestamp(hour), [0, 0, 0, 0])
        row[1] += int(sent or 0)
        row[2] += int(bounced or 0)
    for hour, (received_count, sent, bounced, junk) in sorted(counts.items()):
        database.execute_sql(
            "INSERT INTO traffic_hour (hour, shard, received, sent, bounced, junk)"
            f" VALUES ({', '.join([param] * 6)})",
            (TrafficHour.hour.db_value(hour), 0, received_count, sent, bounced, junk),
        )


# --- a campaign's send rate -------------------------------------------------------------

# The widest bucket that keeps a span within this many: minutes up to three hours,
# hours up to a week, days beyond (the latest RATE_BUCKETS of them).
RATE_BUCKETS = 180
_UNITS = (
    ("minute", datetime.timedelta(minutes=1), 16),
    ("hour", datetime.timedelta(hours=1), 13),
    ("day", datetime.timedelta(days=1), 10),
)


@attrs.frozen
class RateBucket:
    start: datetime.datetime
    sent: int


@attrs.frozen
class SendRate:
    """A campaign's recipients sent per `unit` ("minute", "hour" or "day", UTC), from
    the bucket of its first sent recipient to that of its last (of now, while it runs)."""

    unit: str
    buckets: tuple[RateBucket, ...]
    total: int  # sent recipients, those before the first bucket shown included

    @property
    def peak(self) -> int:
        return max((bucket.sent for bucket in self.buckets), default=0)


def _floor(moment: datetime.datetime, unit: str) -> datetime.datetime:
    moment = moment.replace(second=0, microsecond=0)
    if unit in ("hour", "day"):
        moment = moment.replace(minute=0)
    if unit == "day":
        moment = moment.replace(hour=0)
    return moment


def _bucket_expression(dialect: str, unit: str, length: int) -> str:
    if dialect == "postgresql":
        return f"date_trunc('{unit}', sent_at)"
    # SQLite's text timestamps: the leading characters of the unit, the rest zeroed.
    return f"substr(sent_at, 1, {length}) || substr('0000-00-00 00:00:00', {length + 1})"


@read_only
def campaign_send_rate(campaign_id: int, now: datetime.datetime) -> SendRate:
    """How many of the campaign's recipients were sent per minute, hour or day (the
    widest that keeps within RATE_BUCKETS). Two queries over the campaign's sent rows,
    found through the (campaign, state, ...) index; empty when none was sent yet."""
    param = database_proxy.param
    sent_where = f"campaign_id = {param} AND state = 'sent' AND sent_at IS NOT NULL"
    first, last, total = database_proxy.execute_sql(
        f"SELECT MIN(sent_at), MAX(sent_at), COUNT(*) FROM campaign_recipient WHERE {sent_where}",
        (campaign_id,),
    ).fetchone()
    if not total:
        return SendRate(unit="minute", buckets=(), total=0)
    first, last = timestamp(first), timestamp(last)
    status = database_proxy.execute_sql(
        f"SELECT status FROM campaign WHERE id = {param}", (campaign_id,)
    ).fetchone()
    end = max(last, now) if status is not None and status[0] == "running" else last
    unit, width, length = next(
        (
            choice
            for choice in _UNITS
            if (_floor(end, choice[0]) - _floor(first, choice[0])) / choice[1] < RATE_BUCKETS
        ),
        _UNITS[-1],
    )
    start = max(_floor(first, unit), _floor(end, unit) - (RATE_BUCKETS - 1) * width)
    dialect = "sqlite" if is_sqlite(database_proxy.obj) else "postgresql"
    expression = _bucket_expression(dialect, unit, length)
    rows = database_proxy.execute_sql(
        f"SELECT {expression}, COUNT(*) FROM campaign_recipient WHERE {sent_where}"
        f" AND sent_at >= {param} GROUP BY 1",
        (campaign_id, CampaignRecipient.sent_at.db_value(start)),
    ).fetchall()
    counts = {timestamp(bucket): int(count) for bucket, count in rows}
    buckets = []
    moment = start
    while moment <= _floor(end, unit):
        buckets.append(RateBucket(moment, counts.get(moment, 0)))
        moment += width
    return SendRate(unit=unit, buckets=tuple(buckets), total=int(total))
