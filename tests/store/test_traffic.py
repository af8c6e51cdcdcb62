"""Mail traffic counted per hour (store.traffic), the dashboard's picture of the queue
(oldest waiting recipient, deferred recipients per destination domain) and a campaign's
send rate: written once, run on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime

from twisted.internet import defer, reactor
from twisted.trial import unittest

from atollon_mail.delivery.intake import Intake
from atollon_mail.delivery.runner import send_notification
from atollon_mail.store import dashboard, imapfolders, migrations, queue, traffic
from atollon_mail.store import filing as filing_ops
from atollon_mail.store.migrations import dialect_of
from atollon_mail.store.models import TrafficHour, database_proxy, utc_now
from atollon_mail.store.pool import Store
from atollon_mail.store.records import (
    DeliveryResult,
    InboundVerdict,
    IncomingMessage,
    Origin,
    OutgoingMessage,
    Recipient,
)
from tests import builders
from tests.massmail.test_campaigns import set_rows, set_status
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

# A Wednesday afternoon; the charts end at NOW.
NOW = datetime.datetime(2030, 1, 16, 14, 20, 0)
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
SPAM = InboundVerdict(junk=True, spam_score=9.0, spam_threshold=6.0)


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def counts(bucket: traffic.Bucket) -> tuple[int, int, int, int]:
    return (bucket.received, bucket.sent, bucket.bounced, bucket.junk)


def _traffic_rows() -> list[tuple]:
    return builders.table_rows(
        TrafficHour.hour,
        TrafficHour.received,
        TrafficHour.sent,
        TrafficHour.bounced,
        TrafficHour.junk,
        order_by=TrafficHour.hour,
    )


def _summed_by_hour() -> dict:
    summed: dict = {}
    for hour, *values in _traffic_rows():
        old = summed.get(hour, (0, 0, 0, 0))
        summed[hour] = tuple(a + b for a, b in zip(old, values, strict=True))
    return summed


def _clear_traffic() -> None:
    TrafficHour.delete().execute()


def _explain(sql: str, params: tuple) -> str:
    database = database_proxy.obj
    if dialect_of(database) == "sqlite":
        rows = database.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        return "\n".join(str(row[-1]) for row in rows)
    # The test tables are tiny, so the planner would rather read them whole: take that
    # choice away to see whether the index can serve the query at all.
    database.execute_sql("SET LOCAL enable_seqscan = off")
    rows = database.execute_sql("EXPLAIN " + sql, params).fetchall()
    return "\n".join(row[0] for row in rows)


class TrafficContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(self.store, "joe@acme.test", "joe")
        builders.mailbox(self.store, "tagged@acme.test", "joe", spam_handling="tag")
        builders.mailbox(self.store, "ann@acme.test", "joe")

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def recipient(self, address: str) -> Recipient:
        found = self.sync(filing_ops.resolve_recipient, *address.split("@"))
        self.assertIsInstance(found, Recipient)
        return found

    def receive(self, when: datetime.datetime, *addresses: str, verdict=None, count: int = 1):
        """`count` messages to `addresses` stored in one batch at `when`."""
        recipients = tuple(self.recipient(address) for address in addresses)
        message = IncomingMessage(
            envelope_sender="someone@elsewhere.example",
            recipients=recipients,
            raw=b"Subject: hi\r\n\r\nbody\r\n",
            subject="hi",
            verdict=verdict,
        )
        return self.sync(filing_ops.store_messages, [message] * count, now=when)

    def send(self, when: datetime.datetime, *remote: str, local: tuple[str, ...] = ()):
        outgoing = OutgoingMessage(
            envelope_sender="joe@acme.test",
            raw=b"Subject: out\r\n\r\nbody\r\n",
            remote_recipients=remote,
            local_recipients=tuple(self.recipient(address) for address in local),
            subject="out",
        )
        [submitted] = self.sync(queue.submit_messages, [(outgoing, Origin("submission"))], when)
        return submitted

    def deliver(self, when: datetime.datetime, outcomes: dict[str, str], next_attempt=None):
        """Claim everything due at `when` and record the outcome given per address
        (one batch, as the runner records one connection's)."""
        claimed = self.sync(queue.claim_due_deliveries, when, 100)
        self.assertEqual({delivery.address for delivery in claimed}, set(outcomes))
        results = [
            DeliveryResult(
                delivery.recipient_id,
                outcomes[delivery.address],
                f"reply for {delivery.address}",
                "mx.remote.example",
                when,
                next_attempt if outcomes[delivery.address] == "deferred" else None,
                origin=delivery.origin,  # as the runner gives it
            )
            for delivery in claimed
        ]
        self.sync(queue.record_delivery_results, results)

    def picture(self, now: datetime.datetime = NOW) -> traffic.Traffic:
        return self.sync(traffic.traffic, now)

    # -- counting on the hot paths -----------------------------------------------------

    def test_received_counts_messages_once_and_junk_where_a_copy_went_to_junk(self):
        self.receive(at("2030-01-16 13:05:00"), "joe@acme.test", "ann@acme.test", count=3)
        # Junk for joe; "tag" files it into the inbox: one received message, one junk.
        self.receive(at("2030-01-16 13:59:59"), "joe@acme.test", "tagged@acme.test", verdict=SPAM)
        self.receive(at("2030-01-16 13:30:00"), "tagged@acme.test", verdict=SPAM)  # inbox
        self.assertEqual(_summed_by_hour_of(self), {at("2030-01-16 13:00:00"): (5, 0, 0, 1)})
        self.receive(at("2030-01-16 14:00:00"), "joe@acme.test")
        self.assertEqual(
            _summed_by_hour_of(self),
            {at("2030-01-16 13:00:00"): (5, 0, 0, 1), at("2030-01-16 14:00:00"): (1, 0, 0, 0)},
        )

    def test_one_statement_a_batch_whatever_its_size(self):
        self.receive(at("2030-01-16 13:05:00"), "joe@acme.test", count=20)
        # One row for the batch (one shard of one hour), holding all twenty.
        self.assertEqual(self.sync(_traffic_rows), [(at("2030-01-16 13:00:00"), 20, 0, 0, 0)])

    def test_a_failed_message_of_a_batch_is_not_counted(self):
        good = self.recipient("joe@acme.test")
        messages = [
            IncomingMessage(envelope_sender="a@elsewhere.example", recipients=(good,), raw=b"\r\n"),
            IncomingMessage(envelope_sender="b@elsewhere.example", recipients=(), raw=b"\r\n"),
        ]
        results = self.sync(filing_ops.store_messages, messages, now=NOW)
        self.assertIsInstance(results[1], Exception)
        self.assertEqual(_summed_by_hour_of(self), {at("2030-01-16 14:00:00"): (1, 0, 0, 0)})

    def test_sent_and_bounced_count_recipients_by_the_hour_of_their_outcome(self):
        self.send(
            at("2030-01-16 12:58:00"), "a@remote.example", "b@remote.example", "c@remote.example"
        )
        self.deliver(
            at("2030-01-16 12:59:00"),
            {
                "a@remote.example": "delivered",
                "b@remote.example": "bounced",
                "c@remote.example": "deferred",
            },
            next_attempt=at("2030-01-16 13:10:00"),
        )
        self.send(at("2030-01-16 12:59:59"), "d@other.example", local=("ann@acme.test",))
        self.deliver(at("2030-01-16 13:00:00"), {"d@other.example": "delivered"})
        self.deliver(at("2030-01-16 13:10:00"), {"c@remote.example": "delivered"})
        self.assertEqual(
            _summed_by_hour_of(self),
            {at("2030-01-16 12:00:00"): (1, 1, 1, 0), at("2030-01-16 13:00:00"): (0, 2, 0, 0)},
        )

    def test_a_batch_of_outcomes_across_the_hour_counts_in_each_hour(self):
        self.send(at("2030-01-16 12:50:00"), "a@remote.example", "b@remote.example")
        claimed = self.sync(queue.claim_due_deliveries, at("2030-01-16 12:55:00"), 10)
        first, second = sorted(claimed, key=lambda delivery: delivery.address)
        results = [
            DeliveryResult(first.recipient_id, "delivered", "250", None, at("2030-01-16 12:59:59")),
            DeliveryResult(second.recipient_id, "bounced", "550", None, at("2030-01-16 13:00:01")),
        ]
        self.sync(queue.record_delivery_results, results)
        self.assertEqual(
            _summed_by_hour_of(self),
            {at("2030-01-16 12:00:00"): (0, 1, 0, 0), at("2030-01-16 13:00:00"): (0, 0, 1, 0)},
        )

    def test_a_sent_copy_is_not_received_mail(self):
        outgoing = OutgoingMessage(
            envelope_sender="joe@acme.test",
            raw=b"Subject: out\r\n\r\nbody\r\n",
            remote_recipients=("far@remote.example",),
            sent_mailbox_id=self.recipient("joe@acme.test").mailbox_id,
        )
        self.sync(queue.submit_messages, [(outgoing, Origin("submission"))], NOW)
        self.assertEqual(self.sync(_traffic_rows), [])

    @defer.inlineCallbacks
    def test_concurrent_batches_add_up(self):
        recipient = self.recipient("joe@acme.test")
        message = IncomingMessage(
            envelope_sender="a@elsewhere.example", recipients=(recipient,), raw=b"\r\n"
        )
        yield defer.gatherResults(
            [self.store.run(filing_ops.store_messages, [message] * 3, NOW) for _ in range(8)]
        )
        self.assertEqual(_summed_by_hour_of(self), {at("2030-01-16 14:00:00"): (24, 0, 0, 0)})

    @defer.inlineCallbacks
    def test_threads_sharing_one_shard_still_add_up(self):
        recipient = self.recipient("joe@acme.test")
        message = IncomingMessage(
            envelope_sender="a@elsewhere.example", recipients=(recipient,), raw=b"\r\n"
        )
        yield defer.gatherResults(
            [self.store.run(_on_shard, 0, [message] * 3, NOW) for _ in range(8)]
        )
        self.assertEqual(self.sync(_rows_by_shard), [(at("2030-01-16 14:00:00"), 0, 24)])

    def test_outcomes_are_added_in_the_order_of_their_hours(self):
        def add():
            traffic.add_outcomes(
                [
                    (at("2030-01-16 12:10:00"), "delivered"),
                    (at("2030-01-16 10:10:00"), "bounced"),
                    (at("2030-01-16 11:10:00"), "delivered"),
                ]
            )

        self.sync(add)
        # Rows made in the order of the statements: the earliest hour first.
        self.assertEqual(
            [hour for hour, _, _ in self.sync(_rows_by_id)],
            [at("2030-01-16 10:00:00"), at("2030-01-16 11:00:00"), at("2030-01-16 12:00:00")],
        )

    def test_a_store_has_no_more_threads_than_shards(self):
        if self.store.is_sqlite:
            raise unittest.SkipTest("SQLite's store has one thread, whatever is asked")
        with self.assertRaises(ValueError) as refused:
            Store.from_url(self.database_url, reactor, threads=traffic.SHARDS + 1)
        self.assertIn(f"at most {traffic.SHARDS} store threads", str(refused.exception))

    # -- what the server writes itself --------------------------------------------------

    @defer.inlineCallbacks
    def test_notifications_the_server_writes_are_neither_received_nor_sent(self):
        intake = Intake(self.store)
        dsn = b"Subject: Undelivered Mail\r\n\r\nIt failed.\r\n"
        # To a local sender: filed, not received mail.
        yield send_notification(intake, "joe@acme.test", dsn, Origin("bounce"))
        yield send_notification(intake, "ann@acme.test", dsn, Origin("autoreply"))
        # To a remote one: queued, and its delivery is not sent mail.
        yield send_notification(intake, "far@remote.example", dsn, Origin("bounce"))
        self.assertEqual(self.sync(_traffic_rows), [])
        self.deliver(NOW, {"far@remote.example": "delivered"})
        self.assertEqual(self.sync(_traffic_rows), [])
        # Mail that came in from elsewhere with the null sender (a bounce from another
        # server) is received mail as any other.
        yield intake.accept("", [self.recipient("joe@acme.test")], dsn)
        self.assertEqual([sum(row[1:]) for row in self.sync(_traffic_rows)], [1])

    def test_a_bounce_counts_once_as_the_failed_recipient(self):
        self.send(at("2030-01-16 10:00:00"), "gone@remote.example")
        self.deliver(at("2030-01-16 10:05:00"), {"gone@remote.example": "bounced"})
        # The DSN to the (remote) sender, and its delivery, add nothing to that.
        dsn = OutgoingMessage(
            envelope_sender="",
            raw=b"Subject: dsn\r\n\r\nx\r\n",
            remote_recipients=("sender@remote.example",),
            is_bounce=True,
        )
        self.sync(queue.submit_messages, [(dsn, Origin("bounce"))], at("2030-01-16 10:05:01"))
        self.deliver(at("2030-01-16 10:06:00"), {"sender@remote.example": "bounced"})
        self.assertEqual(self.sync(_summed_by_hour), {at("2030-01-16 10:00:00"): (0, 0, 1, 0)})

    # -- the buckets -------------------------------------------------------------------

    def test_no_mail_gives_zero_buckets_over_the_whole_window(self):
        picture = self.picture()
        self.assertTrue(picture.empty)
        self.assertEqual(len(picture.hours), 24)
        self.assertEqual(len(picture.days), 30)
        self.assertEqual(picture.hours[0].start, at("2030-01-15 15:00:00"))
        self.assertEqual(picture.hours[-1].start, at("2030-01-16 14:00:00"))
        self.assertEqual(picture.days[0].start, at("2029-12-18 00:00:00"))
        self.assertEqual(picture.days[-1].start, at("2030-01-16 00:00:00"))
        self.assertEqual({counts(bucket) for bucket in picture.hours + picture.days}, {(0,) * 4})

    def test_hour_buckets_and_their_boundaries(self):
        self.receive(at("2030-01-15 14:59:59"), "joe@acme.test")  # 24 h ago: not in the hours
        self.receive(at("2030-01-15 15:00:00"), "joe@acme.test", count=2)  # the first hour
        self.receive(at("2030-01-16 09:59:59"), "joe@acme.test", verdict=SPAM)
        self.receive(at("2030-01-16 10:00:00"), "joe@acme.test", count=4)
        self.receive(at("2030-01-16 14:19:59"), "joe@acme.test", count=5)  # so far this hour
        self.receive(at("2030-01-16 15:00:00"), "joe@acme.test", count=7)  # after now's hour
        hours = {bucket.start: counts(bucket) for bucket in self.picture().hours}
        self.assertEqual(hours.pop(at("2030-01-15 15:00:00")), (2, 0, 0, 0))
        self.assertEqual(hours.pop(at("2030-01-16 09:00:00")), (1, 0, 0, 1))
        self.assertEqual(hours.pop(at("2030-01-16 10:00:00")), (4, 0, 0, 0))
        self.assertEqual(hours.pop(at("2030-01-16 14:00:00")), (5, 0, 0, 0))
        self.assertEqual(set(hours.values()), {(0, 0, 0, 0)})

    def test_day_buckets_cover_thirty_days_in_utc(self):
        self.receive(at("2029-12-17 23:59:59"), "joe@acme.test", count=9)  # 31st day back
        self.receive(at("2029-12-18 00:00:00"), "joe@acme.test")  # the first day shown
        self.receive(at("2030-01-15 23:59:59"), "joe@acme.test", count=2)
        self.receive(at("2030-01-16 00:00:00"), "joe@acme.test", count=3)
        self.receive(at("2030-01-16 14:00:00"), "joe@acme.test", verdict=SPAM)
        self.send(at("2030-01-10 08:00:00"), "a@remote.example", "b@remote.example")
        self.deliver(
            at("2030-01-10 08:01:00"),
            {"a@remote.example": "delivered", "b@remote.example": "bounced"},
        )
        picture = self.picture()
        self.assertFalse(picture.empty)
        days = {bucket.start.date(): counts(bucket) for bucket in picture.days}
        self.assertNotIn(datetime.date(2029, 12, 17), days)
        self.assertEqual(days.pop(datetime.date(2029, 12, 18)), (1, 0, 0, 0))
        self.assertEqual(days.pop(datetime.date(2030, 1, 10)), (0, 1, 1, 0))
        self.assertEqual(days.pop(datetime.date(2030, 1, 15)), (2, 0, 0, 0))
        self.assertEqual(days.pop(datetime.date(2030, 1, 16)), (4, 0, 0, 1))
        self.assertEqual(set(days.values()), {(0, 0, 0, 0)})

    def test_the_bucket_query_reads_the_hour_index(self):
        def plan():
            param = database_proxy.param
            return _explain(
                "SELECT hour, SUM(received), SUM(sent), SUM(bounced), SUM(junk) FROM"
                f" traffic_hour WHERE hour >= {param} AND hour < {param} GROUP BY hour",
                (TrafficHour.hour.db_value(NOW - 30 * DAY), TrafficHour.hour.db_value(NOW)),
            )

        self.receive(NOW, "joe@acme.test")
        self.assertIn("traffic_hour_hour_shard", self.sync(plan))

    # -- back-filled by migration 16 ---------------------------------------------------

    def test_the_migration_counts_the_mail_already_stored(self):
        self.receive(at("2030-01-16 09:10:00"), "joe@acme.test", "ann@acme.test", count=2)
        self.receive(at("2030-01-16 09:20:00"), "joe@acme.test", verdict=SPAM)
        self.receive(at("2030-01-14 23:00:00"), "tagged@acme.test", verdict=SPAM)
        self.receive(at("2029-12-01 10:00:00"), "joe@acme.test")  # before the window
        self.send(at("2030-01-16 10:00:00"), "a@remote.example", "b@remote.example")
        self.deliver(
            at("2030-01-16 11:30:00"),
            {"a@remote.example": "delivered", "b@remote.example": "bounced"},
        )
        # What its readers did since changes nothing: a message moved to Trash, one
        # a client APPENDed with an INTERNALDATE in the window (not received mail).
        [moved] = self.receive(at("2030-01-16 08:10:00"), "ann@acme.test")
        self.sync(filing_ops.move_message, "ann@acme.test", moved.id, "trash")
        self.sync(
            imapfolders.append,
            "joe",
            "INBOX",
            b"Subject: kept\r\n\r\nx\r\n",
            internaldate=at("2030-01-16 07:00:00"),
        )
        counted = self.sync(_summed_by_hour)
        self.assertNotIn(at("2030-01-16 07:00:00"), counted)
        self.sync(_clear_traffic)

        def backfill():
            traffic.backfill(database_proxy.obj, dialect_of(database_proxy.obj), NOW)

        self.sync(backfill)
        del counted[at("2029-12-01 10:00:00")]
        self.assertEqual(self.sync(_summed_by_hour), counted)

    # -- the queue on the dashboard ----------------------------------------------------

    def test_oldest_waiting_recipient_and_problems_per_domain(self):
        self.assertIsNone(self.sync(dashboard.oldest_waiting))
        self.assertEqual(self.sync(dashboard.delivery_problems).domains, ())
        later = at("2030-01-16 12:00:00")
        self.send(at("2030-01-16 08:00:00"), "done@fine.example")
        self.deliver(at("2030-01-16 08:30:00"), {"done@fine.example": "delivered"})
        self.send(at("2030-01-16 09:00:00"), "a@slow.example", "b@slow.example")
        self.deliver(
            at("2030-01-16 09:30:00"),
            {"a@slow.example": "deferred", "b@slow.example": "deferred"},
            next_attempt=later,
        )
        self.send(at("2030-01-16 10:00:00"), "c@slow.example", "x@grey.example")
        self.deliver(
            at("2030-01-16 10:30:00"),
            {"c@slow.example": "deferred", "x@grey.example": "deferred"},
            next_attempt=later,
        )
        self.send(at("2030-01-16 11:00:00"), "new@fine.example")  # queued, not tried yet
        oldest = self.sync(dashboard.oldest_waiting)
        self.assertEqual(
            (oldest.address, oldest.state, oldest.created_at, oldest.attempts),
            ("a@slow.example", "deferred", at("2030-01-16 09:00:00"), 1),
        )
        problems = self.sync(dashboard.delivery_problems)
        self.assertEqual(problems.domain_total, 2)
        self.assertEqual(
            [
                (p.domain, p.deferred, p.since, p.last_attempt_at, p.last_reply)
                for p in problems.domains
            ],
            [
                (
                    "slow.example",
                    3,
                    at("2030-01-16 09:00:00"),
                    at("2030-01-16 10:30:00"),
                    "reply for c@slow.example",
                ),
                (
                    "grey.example",
                    1,
                    at("2030-01-16 10:00:00"),
                    at("2030-01-16 10:30:00"),
                    "reply for x@grey.example",
                ),
            ],
        )
        self.assertEqual(
            [p.domain for p in self.sync(dashboard.delivery_problems, 1).domains],
            ["slow.example"],
        )

    def test_the_queue_reads_walk_the_state_created_index_without_sorting(self):
        self.send(at("2030-01-16 09:00:00"), "a@slow.example", "b@slow.example")
        self.deliver(
            at("2030-01-16 09:30:00"),
            {"a@slow.example": "deferred", "b@slow.example": "deferred"},
            next_attempt=NOW,
        )

        def plans():
            found = []
            for query in [dashboard.oldest_query(state).limit(1) for state in ("queued",)] + [
                dashboard.problems_query(dashboard.PROBLEM_SCAN + 1)
            ]:
                found.append(_explain(*query.sql()))
            return found

        for plan in self.sync(plans):
            self.assertIn("queue_recipient_state_created", plan)
            # Neither sorts what it found: the index gives the order, so the LIMIT bounds
            # the rows read (a sort would read every row of the state first).
            self.assertNotIn("TEMP B-TREE", plan)
            self.assertNotIn("Sort", plan)

    def test_problems_are_counted_among_the_longest_waiting_deferred_recipients(self):
        self.send(at("2030-01-16 09:00:00"), "a@slow.example", "b@slow.example")
        self.send(at("2030-01-16 10:00:00"), "x@grey.example", "c@slow.example")
        self.deliver(
            at("2030-01-16 10:30:00"),
            {
                address: "deferred"
                for address in (
                    "a@slow.example",
                    "b@slow.example",
                    "x@grey.example",
                    "c@slow.example",
                )
            },
            next_attempt=NOW,
        )
        everything = self.sync(dashboard.delivery_problems)
        self.assertEqual((everything.complete, everything.scanned), (True, 4))
        read = self.sync(dashboard.delivery_problems, scan=3)
        self.assertEqual((read.complete, read.scanned, read.domain_total), (False, 3, 2))
        self.assertEqual(
            [(p.domain, p.deferred) for p in read.domains],
            [("slow.example", 2), ("grey.example", 1)],
        )

    def test_the_oldest_waiting_recipient_is_the_oldest_of_every_waiting_state(self):
        self.send(at("2030-01-16 08:00:00"), "late@slow.example")
        self.deliver(at("2030-01-16 08:30:00"), {"late@slow.example": "deferred"}, NOW)
        self.send(at("2030-01-16 07:00:00"), "first@fine.example")  # queued earlier
        oldest = self.sync(dashboard.oldest_waiting)
        self.assertEqual((oldest.address, oldest.state), ("first@fine.example", "queued"))

    def test_admins_get_the_traffic_and_the_queue_others_do_not(self):
        builders.user(self.store, "root", is_admin=True)
        self.receive(at("2030-01-16 13:00:00"), "joe@acme.test")
        seen = self.sync(dashboard.dashboard, "root", now=NOW)
        self.assertEqual(counts(seen.traffic.hours[-2]), (1, 0, 0, 0))
        self.assertIsNone(seen.oldest)
        self.assertEqual(seen.problems.domains, ())
        other = self.sync(dashboard.dashboard, "joe", now=NOW)
        self.assertEqual((other.traffic, other.oldest, other.problems), (None, None, None))


def _on_shard(shard: int, messages, now):
    """Store operation: store_messages with this store thread's counts on `shard`."""
    traffic._thread_shard.value = shard
    return filing_ops.store_messages(messages, now)


def _rows_by_shard() -> list[tuple]:
    return [
        (row.hour, row.shard, row.received)
        for row in TrafficHour.select().order_by(TrafficHour.hour, TrafficHour.shard)
    ]


def _rows_by_id() -> list[tuple]:
    return [
        (row.hour, row.sent, row.bounced) for row in TrafficHour.select().order_by(TrafficHour.id)
    ]


def _summed_by_hour_of(test) -> dict:
    return test.sync(_summed_by_hour)


class SendRateContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(self.store, "news@acme.test", "joe")
        builders.organization(self.store, "Acme")
        people = [
            builders.person(self.store, "Acme", last_name=f"P{n}", email=f"p{n:02}@x.test").id
            for n in range(40)
        ]
        builders.group(self.store, "customers", "Acme", members=people)
        self.started_at = at("2030-01-16 10:00:30")
        self.campaign_id = builders.campaign(
            self.store,
            "customers",
            "news@acme.test",
            variants={"en": ("Hi", "Body")},
            started=True,
            now=self.started_at,
        ).id

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def sent(self, numbers, when: datetime.datetime, state: str = "sent") -> None:
        addresses = [f"p{n:02}@x.test" for n in numbers]
        self.sync(set_rows, self.campaign_id, addresses, state=state, sent_at=when, updated_at=when)

    def rate(self, now: datetime.datetime) -> traffic.SendRate:
        return self.sync(traffic.campaign_send_rate, self.campaign_id, now)

    def test_nothing_sent_yet(self):
        rate = self.rate(self.started_at + HOUR)
        self.assertEqual((rate.buckets, rate.total, rate.peak), ((), 0, 0))

    def test_per_minute_while_the_span_is_short(self):
        self.sent(range(0, 5), at("2030-01-16 10:00:31"))
        self.sent(range(5, 8), at("2030-01-16 10:00:59.999"))
        self.sent(range(8, 10), at("2030-01-16 10:02:00"))
        self.sent(range(10, 12), at("2030-01-16 10:03:10"), state="bounced")  # not sent
        rate = self.rate(at("2030-01-16 10:04:30"))  # still running: up to now's minute
        self.assertEqual(rate.unit, "minute")
        self.assertEqual(
            [(bucket.start, bucket.sent) for bucket in rate.buckets],
            [
                (at("2030-01-16 10:00:00"), 8),
                (at("2030-01-16 10:01:00"), 0),
                (at("2030-01-16 10:02:00"), 2),
                (at("2030-01-16 10:03:00"), 0),
                (at("2030-01-16 10:04:00"), 0),
            ],
        )
        self.assertEqual((rate.total, rate.peak), (10, 8))

    def test_per_hour_over_a_longer_span(self):
        self.sent(range(0, 10), at("2030-01-16 10:00:31"))
        self.sent(range(10, 13), at("2030-01-16 13:59:59"))
        self.sent(range(13, 14), at("2030-01-16 14:00:00"))
        self.sync(set_status, self.campaign_id, "finished")
        rate = self.rate(at("2030-01-17 09:00:00"))  # finished: ends at its last send
        self.assertEqual(rate.unit, "hour")
        self.assertEqual(
            [(bucket.start.hour, bucket.sent) for bucket in rate.buckets],
            [(10, 10), (11, 0), (12, 0), (13, 3), (14, 1)],
        )

    def test_per_day_beyond_a_week(self):
        self.sent(range(0, 2), at("2030-01-16 10:00:31"))
        self.sent(range(2, 5), at("2030-01-26 23:59:59"))
        self.sync(set_status, self.campaign_id, "finished")
        rate = self.rate(at("2030-02-01 00:00:00"))
        self.assertEqual(rate.unit, "day")
        self.assertEqual(len(rate.buckets), 11)
        self.assertEqual((rate.buckets[0].sent, rate.buckets[-1].sent), (2, 3))
        self.assertEqual(rate.buckets[-1].start, at("2030-01-26 00:00:00"))

    def test_the_rate_query_reads_the_campaign_index(self):
        self.sent(range(0, 5), at("2030-01-16 10:00:31"))
        campaign_id = self.campaign_id

        def plan():
            param = database_proxy.param
            return _explain(
                "SELECT COUNT(*) FROM campaign_recipient WHERE campaign_id = "
                f"{param} AND state = 'sent' AND sent_at IS NOT NULL",
                (campaign_id,),
            )

        self.assertIn("campaign_recipient_campaign_state", self.sync(plan))


DELIVERED = b"Return-Path: <someone@elsewhere.example>\r\nSubject: old\r\n\r\nx\r\n"


def _old_mail(
    database,
    mailbox_id: int,
    context_id: int,
    when,
    folder: str,
    raw: bytes = DELIVERED,
    filed_at=None,
    flags: str = "",
    envelope_sender: str = "someone@elsewhere.example",
    verdict: str | None = None,
    origin_kind: str | None = None,
    queued: bool = True,
) -> int:
    """Store operation: a message received at `when`, filed (at `filed_at`, `when` if
    None) into a folder of the mailbox, and (`queued`) a queued copy to two remote
    recipients, one delivered and one bounced an hour later, in the SQL of schema 15
    (the store's operations would count them as they go). The message's id."""
    p = database.param
    (message_id,) = database.execute_sql(
        "INSERT INTO message (raw, size, subject, envelope_sender, received_at, verdict)"
        f" VALUES ({p}, {p}, {p}, {p}, {p}, {p}) RETURNING id",
        (raw, len(raw), "old", envelope_sender, when, verdict),
    ).fetchone()
    _old_filing(database, message_id, mailbox_id, context_id, filed_at or when, folder, flags)
    if not queued:
        return message_id
    (queued_id,) = database.execute_sql(
        "INSERT INTO queue_message (message_id, envelope_sender, is_bounce, created_at,"
        f" origin_kind) VALUES ({p}, {p}, {p}, {p}, {p}) RETURNING id",
        (message_id, "joe@acme.test", False, when, origin_kind),
    ).fetchone()
    for address, outcome in (("a@remote.example", "delivered"), ("b@remote.example", "bounced")):
        (recipient_id,) = database.execute_sql(
            "INSERT INTO queue_recipient (queue_message_id, address, domain, state, attempts,"
            " next_attempt_at, delay_warned, created_at, updated_at)"
            f" VALUES ({p}, {p}, 'remote.example', {p}, 1, {p}, {p}, {p}, {p}) RETURNING id",
            (queued_id, address, outcome, when, False, when, when),
        ).fetchone()
        database.execute_sql(
            f"INSERT INTO queue_event (queue_recipient_id, at, outcome) VALUES ({p}, {p}, {p})",
            (recipient_id, when + HOUR, outcome),
        )
    return message_id


def _new_context(database, name: str) -> int:
    """Store operation: a CRM folder context (as a contact's default folder is), in the
    SQL of schema 15."""
    p = database.param
    (context_id,) = database.execute_sql(
        f"INSERT INTO context (kind, name, created_at) VALUES ('folder', {p}, {p}) RETURNING id",
        (name, utc_now()),
    ).fetchone()
    return context_id


def _old_filing(database, message_id, mailbox_id, context_id, filed_at, folder, flags=""):
    p = database.param
    (next_uid,) = database.execute_sql(
        f"UPDATE mailbox SET next_uid = next_uid + 1 WHERE id = {p} RETURNING next_uid",
        (mailbox_id,),
    ).fetchone()
    database.execute_sql(
        "INSERT INTO filing (message_id, mailbox_id, context_id, uid, flags, filed_at, folder)"
        f" VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})",
        (message_id, mailbox_id, context_id, next_uid - 1, flags, filed_at, folder),
    )


class TrafficMigrationContract(StoreFixtureMixin):
    def test_migration_16_counts_the_mail_stored_before_it(self):
        store = Store.from_url(self.make_database_url(), reactor)
        self.addCleanup(store.stop)
        database = store.database
        with database.connection_context():
            migrations.migrate(database, up_to=15)
        store.start()
        builders.hosted_mailbox(store, "joe@acme.test", "joe")
        joe = store.run_sync(filing_ops.resolve_recipient, "joe", "acme.test")
        # The migration counts the last 31 days before it runs (now).
        recent = traffic.hour_of(utc_now()) - 3 * HOUR
        for when, folder in (
            (recent + datetime.timedelta(minutes=5), "inbox"),
            (recent + datetime.timedelta(minutes=50), "junk"),
            (recent - 2 * DAY, "trash"),
            (recent - 40 * DAY, "inbox"),
        ):
            store.run_sync(_old_mail, database, joe.mailbox_id, joe.context_id, when, folder)
        with database.connection_context():
            applied = migrations.migrate(database)
        self.assertEqual([migration.number for migration in applied][:1], [16])
        self.assertEqual(
            store.run_sync(_summed_by_hour),
            {
                recent: (2, 0, 0, 1),
                recent + HOUR: (0, 2, 2, 0),
                recent - 2 * DAY: (1, 0, 0, 0),
                recent - 2 * DAY + HOUR: (0, 1, 1, 0),
            },
        )

    def test_migration_16_counts_mail_received_by_its_arrival_only(self):
        store = Store.from_url(self.make_database_url(), reactor)
        self.addCleanup(store.stop)
        database = store.database
        with database.connection_context():
            migrations.migrate(database, up_to=15)
        store.start()
        builders.hosted_mailbox(store, "joe@acme.test", "joe")
        joe = store.run_sync(filing_ops.resolve_recipient, "joe", "acme.test")
        box, inbox = joe.mailbox_id, joe.context_id
        crm = store.run_sync(_new_context, database, "Acme Ltd")
        arrived = traffic.hour_of(utc_now()) - 5 * HOUR
        later = arrived + 2 * HOUR + datetime.timedelta(minutes=7)

        def old(*args, **kwargs):
            return store.run_sync(_old_mail, database, box, *args, **kwargs)

        # Received, then moved to Trash two hours later: counted when it arrived.
        old(inbox, arrived, "trash", filed_at=later, queued=False)
        # Received, then filed to a CRM folder ("File to...": a $Filed copy) later.
        filed = old(inbox, arrived, "inbox", queued=False)
        store.run_sync(_old_filing, database, filed, box, crm, later, "inbox", "$Filed \\Seen")
        # Junk at arrival, moved to the inbox by its reader: junk still.
        old(
            inbox,
            arrived,
            "inbox",
            filed_at=later,
            verdict='{"junk":true,"spam_score":9.0}',
            queued=False,
        )
        # A campaign's message, queued (no Return-Path) and archived into the CRM once
        # delivered: sent mail, not received.
        old(
            crm,
            arrived,
            "inbox",
            raw=b"Subject: news\r\n\r\nx\r\n",
            filed_at=later,
            flags="\\Seen",
            origin_kind="campaign",
        )
        # A message a client APPENDed (no Return-Path), with an old INTERNALDATE.
        old(
            inbox, arrived, "inbox", raw=b"Subject: kept\r\n\r\nx\r\n", filed_at=later, queued=False
        )
        # A DSN the server filed for a local sender, and one it queued for a remote one.
        old(inbox, arrived, "inbox", envelope_sender="", queued=False)
        old(
            inbox,
            arrived,
            "inbox",
            raw=b"Subject: dsn\r\n\r\nx\r\n",
            filed_at=later,
            envelope_sender="",
            origin_kind="bounce",
        )
        # A bounce from elsewhere that the inbound checks saw: received mail.
        old(inbox, arrived, "inbox", envelope_sender="", verdict='{"junk":false}', queued=False)
        with database.connection_context():
            migrations.migrate(database)
        self.assertEqual(
            store.run_sync(_summed_by_hour),
            {arrived: (4, 0, 0, 1), arrived + HOUR: (0, 1, 1, 0)},
        )


class SqliteTrafficMigrationTests(SqliteStoreMixin, TrafficMigrationContract, unittest.TestCase):
    pass


class PostgresTrafficMigrationTests(
    PostgresStoreMixin, TrafficMigrationContract, unittest.TestCase
):
    pass


class SqliteTrafficTests(SqliteStoreMixin, TrafficContract, unittest.TestCase):
    pass


class PostgresTrafficTests(PostgresStoreMixin, TrafficContract, unittest.TestCase):
    pass


class SqliteSendRateTests(SqliteStoreMixin, SendRateContract, unittest.TestCase):
    pass


class PostgresSendRateTests(PostgresStoreMixin, SendRateContract, unittest.TestCase):
    pass
