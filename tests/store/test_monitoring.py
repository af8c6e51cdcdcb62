"""The /metrics page's store gauges (store.monitoring), on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime

from twisted.trial import unittest

from atollon_mail.store import monitoring, queue
from atollon_mail.store.records import DeliveryResult, Origin, OutgoingMessage
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

T0 = datetime.datetime(2030, 1, 1, 12, 0, 0)


def outgoing(*recipients: str) -> OutgoingMessage:
    return OutgoingMessage(
        envelope_sender="jane@acme.test",
        raw=b"Subject: x\r\n\r\nbody\r\n",
        remote_recipients=recipients,
        subject="x",
    )


class MonitoringContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.sync = self.store.run_sync
        builders.hosted_mailbox(self.store)

    def test_an_empty_store_has_nothing_waiting(self):
        gauges = self.sync(monitoring.gauges, T0)
        self.assertEqual(gauges.queue, (("queued", 0), ("in-flight", 0), ("deferred", 0)))
        self.assertIsNone(gauges.oldest_waiting_seconds)
        self.assertEqual(sum(count for _, count in gauges.campaign_recipients), 0)

    def test_the_queue_by_waiting_state_and_the_oldest_waiting_message(self):
        submit = self.sync
        submit(queue.submit_messages, [(outgoing("a@far.test", "b@far.test"), Origin("relay"))], T0)
        later = T0 + datetime.timedelta(minutes=10)
        submit(queue.submit_messages, [(outgoing("c@far.test"), Origin("relay"))], later)
        claimed = submit(queue.claim_due_deliveries, later, 10)
        self.assertEqual(len(claimed), 3)
        by_address = {delivery.address: delivery.recipient_id for delivery in claimed}
        results = [
            DeliveryResult(by_address["a@far.test"], "delivered", "250 ok", None, later),
            DeliveryResult(
                by_address["b@far.test"],
                "deferred",
                "451 later",
                None,
                later,
                later + datetime.timedelta(hours=1),
            ),
        ]
        submit(queue.record_delivery_results, results)
        now = T0 + datetime.timedelta(minutes=30)
        gauges = self.sync(monitoring.gauges, now)
        # The delivered recipient is history, not counted; c is still in flight.
        self.assertEqual(gauges.queue, (("queued", 0), ("in-flight", 1), ("deferred", 1)))
        # b waits, and its message came at T0.
        self.assertEqual(gauges.oldest_waiting_seconds, 1800.0)
        # Once b is bounced only c's message (ten minutes younger) waits.
        submit(
            queue.record_delivery_results,
            [DeliveryResult(by_address["b@far.test"], "bounced", "550 no", None, now)],
        )
        self.assertEqual(self.sync(monitoring.gauges, now).oldest_waiting_seconds, 1200.0)

    def test_rows_of_running_campaigns_by_state(self):
        builders.mailbox(self.store, "news@acme.test", "jane")
        builders.organization(self.store)
        members = [
            builders.person(self.store, name=f"P{n}", email=f"p{n}@firm.test").id for n in range(3)
        ]
        group = builders.group(self.store, "Customers", "Acme", members=members)
        builders.campaign(self.store, group.id, variants={"en": ("Spring", "Hello")}, started=True)
        draft = builders.campaign(
            self.store, group.id, name="Draft", variants={"en": ("Later", "Hello")}
        )
        self.assertEqual(draft.status, "draft")
        counts = dict(self.sync(monitoring.gauges, T0).campaign_recipients)
        self.assertEqual(counts["queued"], 3)
        self.assertEqual(sum(counts.values()), 3)

    def test_rows_of_several_running_campaigns_are_summed_by_state(self):
        builders.mailbox(self.store, "news@acme.test", "jane")
        builders.organization(self.store)
        members = [
            builders.person(self.store, name=f"P{n}", email=f"p{n}@firm.test").id for n in range(2)
        ]
        group = builders.group(self.store, "Customers", "Acme", members=members)
        for name in ("Spring", "Summer"):
            builders.campaign(
                self.store, group.id, name=name, variants={"en": (name, "Hello")}, started=True
            )
        counts = dict(self.sync(monitoring.gauges, T0).campaign_recipients)
        self.assertEqual(counts["queued"], 4)
        self.assertEqual(sum(counts.values()), 4)


class SqliteMonitoringTests(MonitoringContract, SqliteStoreMixin, unittest.TestCase):
    pass


class PostgresMonitoringTests(MonitoringContract, PostgresStoreMixin, unittest.TestCase):
    pass
