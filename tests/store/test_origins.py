"""Origins of queued mail: the hooks registered per origin kind hear of their mail's
outcomes in the transaction recording them, and migration 8 carries campaign mail's
send-list rows over to the queued messages' origin. Run on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime

from twisted.internet import reactor
from twisted.trial import unittest

from atollon_mail.store import accounts, domains, mailboxes, migrations, origins, queue
from atollon_mail.store.models import QueueEvent, QueueMessage, QueueRecipient, database_proxy
from atollon_mail.store.pool import Store
from atollon_mail.store.records import Delivery, DeliveryResult, Origin, OutgoingMessage
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

T0 = datetime.datetime(2030, 1, 1, 12, 0, 0)
LATER = T0 + datetime.timedelta(hours=1)
KIND = "notice"  # a kind with no hooks of its own: the tests put theirs in place


class _Refused(Exception):
    pass


def _state(recipient_id: int) -> tuple:
    recipient = QueueRecipient.get_by_id(recipient_id)
    events = QueueEvent.select().where(QueueEvent.queue_recipient == recipient_id).count()
    return recipient.state, recipient.attempts, events


class OriginHooksTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash-bob")
        self.bob = self.sync(mailboxes.add_mailbox, "bob@example.com", "bob")
        self.heard: list[tuple] = []
        self.assertIs(origins.hooks_of(KIND), origins.NO_HOOKS)
        self.addCleanup(origins.unregister, KIND)

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def register(self, **hooks) -> None:
        origins.register(KIND, **hooks)

    def submit(self, origin: Origin, *addresses: str):
        message = OutgoingMessage(
            envelope_sender="bob@example.com",
            raw=b"Subject: hi\r\n\r\nbody\r\n",
            remote_recipients=addresses or ("far@remote.example",),
            sent_mailbox_id=self.bob.id,
        )
        [submitted] = self.sync(queue.submit_messages, [(message, origin)], T0)
        return submitted

    def claim(self) -> list[Delivery]:
        return self.sync(queue.claim_due_deliveries, T0, 100)

    def result(self, delivery: Delivery, outcome: str, **kw) -> DeliveryResult:
        return DeliveryResult(
            delivery.recipient_id,
            outcome,
            f"reply for {outcome}",
            "mx.remote.example [192.0.2.1]:25",
            T0,
            LATER if outcome == "deferred" else None,
            origin=delivery.origin,
            **kw,
        )

    # -- the registry ---------------------------------------------------------------------

    def test_campaigns_register_their_hooks_with_the_store(self):
        hooks = origins.hooks_of("campaign")
        self.assertIsNotNone(hooks.on_outcomes)
        self.assertIsNotNone(hooks.on_uncertain)
        self.assertIsNotNone(hooks.on_removed)
        self.assertFalse(hooks.notify_sender)
        self.assertTrue(origins.notifies_sender("submission"))
        self.assertTrue(origins.notifies_sender(None))

    def test_a_kind_registers_once_and_only_a_known_kind(self):
        self.register()
        with self.assertRaises(ValueError):
            self.register()
        with self.assertRaises(ValueError):
            origins.register("newsletter")
        with self.assertRaises(ValueError):
            Origin("newsletter")

    def test_the_origin_is_stored_and_claimed_with_the_delivery(self):
        self.register(notify_sender=False)
        self.submit(Origin(KIND, 42))
        self.submit(Origin("submission"), "other@remote.example")
        first, second = self.claim()
        # Charged to the sending mailbox when the origin names none.
        self.assertEqual(first.origin, Origin(KIND, 42, self.bob.id))
        self.assertFalse(first.notify_sender)
        self.assertEqual(second.origin, Origin("submission", None, self.bob.id))
        self.assertTrue(second.notify_sender)
        [queued] = self.sync(
            lambda: list(QueueMessage.select().where(QueueMessage.origin_id == 42))
        )
        self.assertEqual((queued.origin_kind, queued.origin_id), (KIND, 42))

    # -- hooks and transactions ------------------------------------------------------------

    def test_an_outcome_reaches_the_hook_of_its_kind_in_the_same_transaction(self):
        def on_outcomes(results):
            # The queue's own record is written already, in this very transaction.
            self.heard.append(
                (
                    database_proxy.in_transaction(),
                    [(r.origin.id, r.outcome, _state(r.recipient_id)) for r in results],
                )
            )

        self.register(on_outcomes=on_outcomes)
        self.submit(Origin(KIND, 7))
        self.submit(Origin("submission"), "other@remote.example")
        mine, other = self.claim()
        self.sync(
            queue.record_delivery_results,
            [self.result(mine, "delivered"), self.result(other, "bounced")],
        )
        self.assertEqual(self.heard, [(True, [(7, "delivered", ("delivered", 1, 1))])])

    def test_a_hook_that_raises_rolls_the_outcome_back(self):
        def on_outcomes(results):
            raise _Refused("the origin could not record it")

        self.register(on_outcomes=on_outcomes)
        self.submit(Origin(KIND, 7))
        [mine] = self.claim()
        with self.assertRaises(_Refused):
            self.sync(queue.record_delivery_results, [self.result(mine, "delivered")])
        self.assertEqual(self.sync(_state, mine.recipient_id), ("in-flight", 0, 0))

    def test_uncertain_outcomes_and_requeued_recipients_reach_on_uncertain(self):
        self.register(on_uncertain=lambda ids: self.heard.append(("uncertain", sorted(ids))))
        self.submit(Origin(KIND, 7))
        self.submit(Origin(KIND, 8), "second@remote.example")
        self.submit(Origin(KIND, 9), "third@remote.example")
        first, second, third = self.claim()
        self.sync(
            queue.record_delivery_results,
            [self.result(first, "deferred", uncertain=True), self.result(second, "deferred")],
        )
        self.assertEqual(self.heard, [("uncertain", [7])])
        # A kill after the third's dot went out: it is queued again, maybe a second copy.
        self.sync(queue.mark_dots_sent, [third.recipient_id], T0)
        requeued = self.sync(queue.requeue_in_flight, T0)
        self.assertEqual(requeued.uncertain, (third.recipient_id,))
        self.assertEqual(self.heard, [("uncertain", [7]), ("uncertain", [9])])

    def test_a_hook_that_raises_on_requeue_rolls_the_requeue_back(self):
        def on_uncertain(ids):
            raise _Refused("no")

        self.register(on_uncertain=on_uncertain)
        self.submit(Origin(KIND, 7))
        [mine] = self.claim()
        self.sync(queue.mark_dots_sent, [mine.recipient_id], T0)
        with self.assertRaises(_Refused):
            self.sync(queue.requeue_in_flight, T0)
        self.assertEqual(self.sync(_state, mine.recipient_id), ("in-flight", 0, 0))

    def test_mail_removed_from_the_queue_reaches_on_removed(self):
        self.register(on_removed=lambda ids: self.heard.append(("removed", sorted(ids))))
        mine = self.submit(Origin(KIND, 7), "a@remote.example", "b@remote.example")
        other = self.submit(Origin("submission"), "c@remote.example")
        self.assertEqual(self.sync(queue.queue_delete, other.queue_message_id), 1)
        self.assertEqual(self.heard, [])
        self.assertEqual(self.sync(queue.queue_delete, mine.queue_message_id), 2)
        self.assertEqual(self.heard, [("removed", list(mine.queue_recipient_ids))])


class SqliteOriginHooksTests(SqliteStoreMixin, OriginHooksTests, unittest.TestCase):
    pass


class PostgresOriginHooksTests(PostgresStoreMixin, OriginHooksTests, unittest.TestCase):
    pass


# --- migration 8 ----------------------------------------------------------------------


class OriginMigrationTests:
    def test_campaign_rows_links_are_carried_over_to_the_queued_message(self):
        store = Store.from_url(self.make_database_url(), reactor)
        self.addCleanup(store.stop)
        database = store.database
        with database.connection_context():
            migrations.migrate(database, up_to=7)
            self.assertEqual(migrations.applied_versions(database), [1, 2, 3, 4, 5, 6, 7])
            p = database.param
            now = T0.isoformat(" ")
            message_ids = []
            for _ in range(3):
                cursor = database.execute_sql(
                    "INSERT INTO message (raw, size, envelope_sender, received_at)"
                    f" VALUES ({p}, 1, 'news@example.com', {p}) RETURNING id",
                    (b"x", now),
                )
                message_ids.append(cursor.fetchone()[0])
            queued = {}
            # Two campaign messages (send-list rows 501 and 502), one other message with
            # two recipients.
            for message_id, rows in zip(message_ids, ([501], [502], [None, None]), strict=True):
                cursor = database.execute_sql(
                    "INSERT INTO queue_message (message_id, envelope_sender, is_bounce,"
                    f" created_at) VALUES ({p}, 'news@example.com', FALSE, {p}) RETURNING id",
                    (message_id, now),
                )
                queue_message_id = cursor.fetchone()[0]
                queued[message_id] = queue_message_id
                for n, row in enumerate(rows):
                    database.execute_sql(
                        "INSERT INTO queue_recipient (queue_message_id, address, domain, state,"
                        " attempts, next_attempt_at, delay_warned, created_at, updated_at,"
                        f" campaign_recipient_id) VALUES ({p}, {p}, 'x.test', 'queued', 0,"
                        f" {p}, FALSE, {p}, {p}, {p})",
                        (queue_message_id, f"r{n}@x.test", now, now, now, row),
                    )
            applied = migrations.migrate(database, up_to=8)
            self.assertEqual([m.number for m in applied], [8])
            found = database.execute_sql(
                "SELECT id, origin_kind, origin_id FROM queue_message ORDER BY id"
            ).fetchall()
            self.assertEqual(
                [tuple(row) for row in found],
                [
                    (queued[message_ids[0]], "campaign", 501),
                    (queued[message_ids[1]], "campaign", 502),
                    (queued[message_ids[2]], None, None),
                ],
            )
            schema = None
            if self.backend == "postgresql":
                schema = database.execute_sql("SELECT current_schema()").fetchone()[0]
            columns = {c.name for c in database.get_columns("queue_recipient", schema=schema)}
            self.assertNotIn("campaign_recipient_id", columns)
            self.assertEqual(
                database.execute_sql("SELECT COUNT(*) FROM queue_recipient").fetchone()[0], 4
            )


class SqliteOriginMigrationTests(SqliteStoreMixin, OriginMigrationTests, unittest.TestCase):
    pass


class PostgresOriginMigrationTests(PostgresStoreMixin, OriginMigrationTests, unittest.TestCase):
    pass
