"""Several nodes on one database: two Stores (two pools, two sets of connections) on the
same database, as two appliances on one PostgreSQL have. Written once, run on SQLite
(where one box is all there is, and the same rules must hold for two processes on one
file) and on PostgreSQL."""

from __future__ import annotations

import datetime

import psycopg2
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from atollon_mail.massmail.compose import build_message
from atollon_mail.massmail.tokens import RecipientTokens
from atollon_mail.store import (
    accounts,
    autorespond,
    filing,
    imapfolders,
    queue,
    sendlists,
    websessions,
)
from atollon_mail.store.leases import lock_key, node_lock_name
from atollon_mail.store.models import CampaignRecipient, QueueRecipient, WebSession
from atollon_mail.store.notices import MAX_PAYLOAD, Notifier, parse, payloads
from atollon_mail.store.pool import Store
from atollon_mail.store.records import DeliveryResult, IncomingMessage, Origin, OutgoingMessage
from tests import builders
from tests.support import (
    POSTGRES_URL,
    PostgresStoreMixin,
    SqliteStoreMixin,
    StoreFixtureMixin,
    create_postgres_schema,
    drop_postgres_schema,
)

T0 = datetime.datetime(2030, 7, 1, 12, 0, 0)
SUBMISSION = Origin("submission")


def lock_holder(lock_name: str, schema: str) -> int | None:
    """The PostgreSQL backend holding this advisory lock of the appliance in `schema`
    (None: nobody)."""
    key = lock_key(lock_name, schema) & (2**64 - 1)
    connection = psycopg2.connect(POSTGRES_URL)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = %s AND objid = %s AND objsubid = 1",
                (key >> 32, key & 0xFFFFFFFF),
            )
            row = cursor.fetchone()
            return None if row is None else row[0]
    finally:
        connection.close()


def terminate_backend(pid: int) -> None:
    connection = psycopg2.connect(POSTGRES_URL)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        connection.close()


def _file_then_fail(incoming: IncomingMessage):
    filing.store_messages([incoming])
    raise RuntimeError("the operation failed after filing: its transaction rolls back")


def _handoff_candidates(campaign_id: int, limit: int):
    return sendlists.handoff_batch(campaign_id, limit, 10_000, T0.date())


class ClusterContractTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.heard_a: list = []
        self.heard_b: list = []
        self.node_a = self.node("a", self.heard_a)
        self.node_b = self.node("b", self.heard_b)

    def node(self, name: str, heard: list) -> Store:
        """Another Store on the same database, as a node named `name` has."""
        store = Store.from_url(self.database_url, reactor, node=name, news=heard.append)
        store.start()
        self.addCleanup(store.stop)
        return store

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def queue_remote(self, count: int) -> list[int]:
        builders.hosted_mailbox(self.store, "bob@example.com", "bob")
        messages = [
            (
                OutgoingMessage(
                    envelope_sender="bob@example.com",
                    raw=b"Subject: hi\r\n\r\nbody\r\n",
                    local_recipients=(),
                    remote_recipients=(f"r{n}@remote.example",),
                ),
                SUBMISSION,
            )
            for n in range(count)
        ]
        submitted = self.sync(queue.submit_messages, messages, T0)
        return [s.queue_recipient_ids[0] for s in submitted]

    # -- the queue ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_interleaved_claims_of_two_nodes_never_take_a_recipient_twice(self):
        ids = self.queue_remote(60)
        claims = []
        for _ in range(12):
            claims.append(self.node_a.run(queue.claim_due_deliveries, T0, 4, "a"))
            claims.append(self.node_b.run(queue.claim_due_deliveries, T0, 4, "b"))
        results = yield defer.gatherResults(claims)
        claimed = [d.recipient_id for batch in results for d in batch]
        self.assertEqual(len(claimed), len(set(claimed)), "a recipient was claimed twice")
        self.assertEqual(sorted(claimed), sorted(ids))
        by_node = dict(self.sync(builders.table_rows, QueueRecipient.id, QueueRecipient.claimed_by))
        self.assertEqual(set(by_node), set(ids))
        for batch, node in zip(results, ["a", "b"] * 12, strict=True):
            for delivery in batch:
                self.assertEqual(by_node[delivery.recipient_id], node)

    def test_a_start_requeues_only_its_own_claims_and_those_of_no_node(self):
        ids = self.queue_remote(3)
        self.sync(queue.claim_due_deliveries, T0, 1, "a")
        self.sync(queue.claim_due_deliveries, T0, 1, "b")
        self.sync(queue.claim_due_deliveries, T0, 1)  # before claims were named
        requeued = self.node_b.run_sync(queue.requeue_in_flight, T0, "b")
        states = dict(self.sync(builders.table_rows, QueueRecipient.id, QueueRecipient.state))
        if self.store.is_sqlite:
            # One box: every claim is its own, whatever name it was made under.
            self.assertEqual(requeued.quiet, 3)
            self.assertEqual(set(states.values()), {"queued"})
        else:
            self.assertEqual(requeued.quiet, 2)
            self.assertEqual(
                [states[i] for i in ids], ["in-flight", "queued", "queued"], "a's claim is a's"
            )

    # -- campaigns ------------------------------------------------------------------------

    def make_campaign(self, count: int) -> int:
        builders.hosted_mailbox(self.store, "news@acme.test", "jane")
        builders.organization(self.store, "Acme")
        people = [
            builders.person(self.store, "Acme", last_name=f"P{n}", email=f"p{n}@remote.example")
            for n in range(count)
        ]
        builders.group(self.store, "Everyone", "Acme", members=[p.id for p in people])
        record = builders.campaign(
            self.store,
            "Everyone",
            "news@acme.test",
            variants={"en": ("News", "Hello {{ name }}.\n{{ unsubscribe_url }}\n")},
            started=True,
            now=T0,
        )
        return record.id

    @defer.inlineCallbacks
    def test_two_nodes_handing_over_the_same_rows_hand_each_over_once(self):
        campaign_id = self.make_campaign(30)
        tokens = RecipientTokens(b"shared secret")
        built = []
        for store in (self.node_a, self.node_b):
            # Both read the same candidates, as two senders polling together do.
            sending, candidates = store.run_sync(_handoff_candidates, campaign_id, 100)
            self.assertEqual(len(candidates), 30)
            built.append(
                [
                    build_message(sending, c, tokens, "https://m.acme.test", "m.acme.test", T0)
                    for c in candidates
                ]
            )
        handed = yield defer.gatherResults(
            [
                self.node_a.run(sendlists.commit_handoff, campaign_id, built[0][:20], T0),
                self.node_b.run(sendlists.commit_handoff, campaign_id, built[1][10:], T0),
                self.node_a.run(sendlists.commit_handoff, campaign_id, built[0][20:], T0),
                self.node_b.run(sendlists.commit_handoff, campaign_id, built[1][:10], T0),
            ]
        )
        self.assertEqual(sum(handed), 30)
        self.assertEqual(self.sync(builders.row_count, QueueRecipient), 30)
        addresses = [row[0] for row in self.sync(builders.table_rows, QueueRecipient.address)]
        self.assertEqual(len(addresses), len(set(addresses)))
        states = {
            row[0]
            for row in self.sync(
                builders.table_rows,
                CampaignRecipient.state,
                where=CampaignRecipient.campaign == campaign_id,
            )
        }
        self.assertEqual(states, {"sending"})

    # -- auto-replies -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_two_nodes_racing_for_one_sender_send_one_auto_reply(self):
        hosted = builders.hosted_mailbox(self.store, "bob@example.com", "bob")
        self.sync(autorespond.set_autoresponder, "bob@example.com", True, body="Away.")
        claims = []
        for n in range(8):
            for store in (self.node_a, self.node_b):
                sender = "ann@remote.test" if n % 2 else "ANN@remote.test"
                claims.append(store.run(autorespond.claim_autoreply, hosted.mailbox.id, sender, T0))
        results = yield defer.gatherResults(claims)
        self.assertEqual(len([plan for plan in results if plan is not None]), 1, results)

    # -- web sessions -----------------------------------------------------------------------

    def test_a_session_made_on_one_node_is_found_on_the_other_and_dropped_everywhere(self):
        builders.user(self.store, "bob")
        made = self.node_a.run_sync(websessions.create_session, "h" * 64, "bob", "csrf", T0, T0, 10)
        self.assertTrue(made)
        found = self.node_b.run_sync(websessions.find_session, "h" * 64)
        self.assertEqual((found.user.login, found.csrf_token), ("bob", "csrf"))
        self.node_b.run_sync(websessions.drop_session, "h" * 64)
        self.assertIsNone(self.node_a.run_sync(websessions.find_session, "h" * 64))

    def test_a_new_password_ends_the_user_s_sessions_only(self):
        builders.user(self.store, "bob")
        builders.user(self.store, "ann")
        for token, login in (("b" * 64, "bob"), ("c" * 64, "bob"), ("a" * 64, "ann")):
            self.node_a.run_sync(websessions.create_session, token, login, "c", T0, T0, 10)
        self.node_b.run_sync(accounts.set_password, "bob", "new-hash")
        self.assertIsNone(self.node_a.run_sync(websessions.find_session, "b" * 64))
        self.assertIsNone(self.node_a.run_sync(websessions.find_session, "c" * 64))
        self.assertIsNotNone(self.node_a.run_sync(websessions.find_session, "a" * 64))

    def test_sessions_are_bounded_and_idle_ones_go(self):
        builders.user(self.store, "bob")
        minute = datetime.timedelta(minutes=1)
        for n in range(5):
            self.sync(websessions.create_session, f"{n:064}", "bob", "c", T0 + n * minute, T0, 3)
        kept = [row[0] for row in self.sync(builders.table_rows, WebSession.token_hash)]
        self.assertEqual(kept, [f"{n:064}" for n in (2, 3, 4)])
        later = T0 + 10 * minute
        self.sync(websessions.create_session, "x" * 64, "bob", "c", later, T0 + 4 * minute, 3)
        kept = [row[0] for row in self.sync(builders.table_rows, WebSession.token_hash)]
        self.assertEqual(kept, [f"{4:064}", "x" * 64])
        self.assertFalse(self.sync(websessions.create_session, "y" * 64, "nobody", "c", T0, T0, 3))

    # -- notices --------------------------------------------------------------------------

    def test_payloads_stay_under_the_limit_and_carry_everything(self):
        pending = {
            "filed": set(range(3000)),
            "junk": {5, 7},
            "changed": {f"user{n}@example.com" for n in range(300)},
        }
        sent = payloads("a", pending)
        self.assertGreater(len(sent), 1)
        self.assertTrue(all(len(p.encode()) < MAX_PAYLOAD + 100 for p in sent))
        news = [parse(p) for p in sent]
        self.assertEqual({n.node for n in news}, {"a"})
        self.assertEqual(set().union(*(n.filed for n in news)), pending["filed"])
        self.assertEqual(set().union(*(n.junk for n in news)), pending["junk"])
        self.assertEqual(set().union(*(n.changed for n in news)), pending["changed"])
        self.assertIsNone(parse("not json"))


class SqliteClusterTests(SqliteStoreMixin, ClusterContractTests, unittest.TestCase):
    def test_every_lock_holds_on_one_box(self):
        self.assertTrue(self.node_a.leases.take_now("dns-watcher"))
        self.assertTrue(self.node_b.leases.take_now("dns-watcher"))
        self.assertEqual(self.node_a.run_sync(queue.release_dead_claims, T0, "a"), {})
        self.assertEqual(self.node_a.run_sync(queue.dead_claimers, "a"), [])

    def test_a_renamed_box_keeps_its_dot_marks(self):
        ids = self.queue_remote(2)
        claimed = self.node_a.run_sync(queue.claim_due_deliveries, T0, 2, "old-name")
        self.assertEqual(sorted(d.recipient_id for d in claimed), sorted(ids))
        # Restarted under another name: the journal's marks still apply (one box).
        self.assertEqual(self.node_a.run_sync(queue.mark_dots_sent, ids, T0, "new-name"), 2)
        self.assertEqual(
            self.node_a.run_sync(queue.mark_dots_sent, ids, T0, "new-name", or_unclaimed=False),
            2,
        )
        requeued = self.node_a.run_sync(queue.requeue_in_flight, T0, "new-name")
        self.assertEqual(sorted(requeued.uncertain), sorted(ids))


class PostgresClusterTests(PostgresStoreMixin, ClusterContractTests, unittest.TestCase):
    @defer.inlineCallbacks
    def wait_for(self, predicate, seconds=10.0):
        for _ in range(int(seconds / 0.05)):
            if predicate():
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail("it did not happen in time")

    @defer.inlineCallbacks
    def test_appliances_in_two_schemas_of_one_database_share_no_lock_and_no_news(self):
        url, schema = create_postgres_schema()
        self.addCleanup(drop_postgres_schema, schema)
        heard: list = []
        other = Store.from_url(url, reactor, node="c", news=heard.append)
        other.migrate()
        other.start()
        self.addCleanup(other.stop)
        self.assertTrue(self.node_a.leases.take_now("dns-watcher"))
        self.assertTrue(other.leases.take_now("dns-watcher"), "its own lock, not a's")
        self.assertTrue(self.node_a.leases.take_now(node_lock_name("a")))
        self.assertIsNone(lock_holder(node_lock_name("a"), schema))
        yield self.wait_for(lambda: other.listening and self.node_b.listening)
        notifier = Notifier(self.node_a.database, "a")
        notifier.start()
        self.addCleanup(notifier.stop)
        notifier.add({"filed": {1}, "junk": set(), "changed": set(), "touched": set()})
        yield self.wait_for(lambda: self.heard_b)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(heard, [], "news of another schema's appliance")

    @defer.inlineCallbacks
    def test_a_listener_cut_off_says_news_may_be_lost_once_it_listens_again(self):
        yield self.wait_for(lambda: self.node_b.listening)
        listener = self.node_b._listener
        first = listener.backend_pid
        terminate_backend(first)
        yield self.wait_for(lambda: self.heard_b)
        [news] = self.heard_b
        self.assertEqual((news.node, news.missed, news.filed), ("b", True, set()))
        self.assertTrue(self.node_b.listening)
        self.assertNotEqual(listener.backend_pid, first)
        self.assertEqual(self.heard_a, [], "node a's listener was never cut off")
        self.flushLoggedErrors()

    # -- leases ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_only_one_node_gets_a_lock_and_the_other_takes_it_when_its_backend_ends(self):
        self.assertTrue((yield self.node_a.leases.take("dns-watcher")))
        self.assertFalse((yield self.node_b.leases.take("dns-watcher")))
        self.assertTrue((yield self.node_a.leases.take("dns-watcher")), "held already")
        terminate_backend(lock_holder("dns-watcher", self.postgres_schema))
        yield self.wait_for(lambda: lock_holder("dns-watcher", self.postgres_schema) is None)
        self.assertFalse((yield self.node_a.leases.held("dns-watcher")))
        self.assertTrue((yield self.node_b.leases.take("dns-watcher")))
        self.assertFalse((yield self.node_a.leases.take("dns-watcher")), "b holds it now")

    @defer.inlineCallbacks
    def test_a_lock_goes_with_its_nodes_connection(self):
        self.assertTrue((yield self.node_a.leases.take("junk-purger")))
        self.assertFalse((yield self.node_b.leases.take("junk-purger")))
        self.node_a.leases.close()  # as the process's end closes it
        # The server ends the session a moment after the connection closed.
        yield self.wait_for(lambda: lock_holder("junk-purger", self.postgres_schema) is None)
        self.assertTrue((yield self.node_b.leases.take("junk-purger")))
        yield self.node_b.leases.release("junk-purger")
        self.assertTrue((yield self.node_a.leases.take("junk-purger")))

    # -- claims of a node that died -----------------------------------------------------------

    @defer.inlineCallbacks
    def test_the_claims_of_a_node_that_died_are_released_by_another(self):
        ids = self.queue_remote(4)
        self.assertTrue(self.node_a.leases.take_now(node_lock_name("a")))
        self.assertTrue(self.node_b.leases.take_now(node_lock_name("b")))
        claimed = yield self.node_a.run(queue.claim_due_deliveries, T0, 3, "a")
        self.assertEqual(len(claimed), 3)
        # The dot of one went out before the node died: that one may have been delivered.
        self.node_a.run_sync(queue.mark_dots_sent, [claimed[0].recipient_id], T0, "a")
        released = yield self.node_b.run(queue.release_dead_claims, T0, "b")
        self.assertEqual(released, {}, "a is alive: its claims stay")
        # As a kill -9 of node a does:
        terminate_backend(lock_holder(node_lock_name("a"), self.postgres_schema))
        yield self.wait_for(lambda: lock_holder(node_lock_name("a"), self.postgres_schema) is None)
        released = yield self.node_b.run(queue.release_dead_claims, T0, "b")
        self.assertEqual(list(released), ["a"])
        self.assertEqual(released["a"].quiet, 2)
        self.assertEqual(released["a"].uncertain, (claimed[0].recipient_id,))
        again = yield self.node_b.run(queue.claim_due_deliveries, T0, 10, "b")
        self.assertEqual(sorted(d.recipient_id for d in again), sorted(ids))
        released = yield self.node_b.run(queue.release_dead_claims, T0, "b")
        self.assertEqual(released, {}, "b's own claims are not released")

    @defer.inlineCallbacks
    def test_late_outcomes_and_marks_of_a_released_claim_change_nothing(self):
        [first, second] = self.queue_remote(2)
        claimed = yield self.node_a.run(queue.claim_due_deliveries, T0, 2, "a")
        self.assertEqual(len(claimed), 2)
        # a's lock is free (its connection ended while a ran on): b releases, claims again.
        self.assertEqual((yield self.node_b.run(queue.dead_claimers, "b")), ["a"])
        released = yield self.node_b.run(queue.release_dead_claims, T0, "b", ["a"])
        self.assertEqual(released["a"].quiet, 2)
        again = yield self.node_b.run(queue.claim_due_deliveries, T0, 1, "b")
        self.assertEqual([d.recipient_id for d in again], [first])
        # a's late writes: a mark and an outcome on each.
        marked = yield self.node_a.run(queue.mark_dots_sent, [first, second], T0, "a", False)
        self.assertEqual(marked, 0)
        late = [
            DeliveryResult(recipient_id, "delivered", "250 ok", "mx [192.0.2.1]:25", T0)
            for recipient_id in (first, second)
        ]
        yield self.node_a.run(queue.record_delivery_results, late, "a")
        rows = self.sync(
            builders.table_rows,
            QueueRecipient.state,
            QueueRecipient.claimed_by,
            QueueRecipient.attempts,
            QueueRecipient.dot_sent_at,
        )
        self.assertEqual(
            sorted(rows, key=lambda row: row[0]),
            [("in-flight", "b", 0, None), ("queued", "a", 0, None)],
        )
        # b's own outcome is written.
        mine = [DeliveryResult(first, "delivered", "250 ok", "mx [192.0.2.1]:25", T0)]
        yield self.node_b.run(queue.record_delivery_results, mine, "b")
        states = self.sync(builders.table_rows, QueueRecipient.state)
        self.assertEqual(sorted(states), [("delivered",), ("queued",)])

    def test_dedicated_connections_notice_a_dead_peer_within_seconds(self):
        self.assertTrue(self.node_a.leases.take_now("dns-watcher"))
        params = self.node_a.leases._connection.get_dsn_parameters()
        self.assertEqual(
            [params[key] for key in ("keepalives", "keepalives_idle", "tcp_user_timeout")],
            ["1", "10", "25000"],
        )

    @defer.inlineCallbacks
    def test_news_of_commits_close_together_goes_in_one_notification(self):
        yield self.wait_for(lambda: self.node_b.listening)
        notifier = Notifier(self.node_a.database, "a")
        notifier.start()
        self.addCleanup(notifier.stop)
        notifier.add({"filed": {1}, "junk": set(), "changed": set(), "touched": set()})
        notifier.add({"filed": {2}, "junk": {2}, "changed": {"x@example.com"}, "touched": {3}})
        yield self.wait_for(lambda: self.heard_b)
        yield task.deferLater(reactor, 0.2, lambda: None)
        [news] = self.heard_b
        self.assertEqual(
            (news.node, news.filed, news.junk, news.changed, news.touched),
            ("a", {1, 2}, {2}, {"x@example.com"}, {3}),
        )

    @defer.inlineCallbacks
    def test_the_node_lock_goes_only_when_the_store_stops(self):
        self.assertTrue(self.node_a.leases.take_now(node_lock_name("a")))
        self.assertTrue(self.node_a.leases.holding(node_lock_name("a")))
        self.assertIsNotNone(lock_holder(node_lock_name("a"), self.postgres_schema))
        self.node_a.stop()
        yield self.wait_for(lambda: lock_holder(node_lock_name("a"), self.postgres_schema) is None)

    # -- news between nodes -------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_mail_filed_through_one_node_is_heard_by_the_other_only(self):
        hosted = builders.hosted_mailbox(self.store, "bob@example.com", "bob")
        yield self.wait_for(lambda: self.node_a.listening and self.node_b.listening)
        recipient = self.sync(filing.resolve_recipient, "bob", "example.com")
        incoming = IncomingMessage(
            envelope_sender="ann@remote.test", recipients=(recipient,), raw=b"Subject: x\r\n\r\n"
        )
        yield self.node_a.run(filing.store_messages, [incoming])
        yield self.wait_for(lambda: self.heard_b)
        [news] = self.heard_b
        self.assertEqual((news.node, news.filed, news.junk), ("a", {hosted.mailbox.id}, set()))
        # A node does not hear itself; a store with no node tells nobody.
        self.sync(filing.store_messages, [incoming])
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(self.heard_a, [])
        self.assertEqual(len(self.heard_b), 1)

    @defer.inlineCallbacks
    def test_a_change_is_heard_after_its_commit_and_a_rolled_back_one_never(self):
        hosted = builders.hosted_mailbox(self.store, "bob@example.com", "bob")
        yield self.wait_for(lambda: self.node_a.listening and self.node_b.listening)
        recipient = self.sync(filing.resolve_recipient, "bob", "example.com")
        incoming = IncomingMessage(
            envelope_sender="ann@remote.test", recipients=(recipient,), raw=b"Subject: x\r\n\r\n"
        )
        [stored] = self.sync(filing.store_messages, [incoming])
        with self.assertRaises(RuntimeError):
            yield self.node_b.run(_file_then_fail, incoming)
        yield self.node_b.run(filing.add_flag, "bob@example.com", stored.id, "\\Seen")
        yield self.wait_for(lambda: self.heard_a)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(
            [(news.filed, news.changed) for news in self.heard_a], [(set(), {"bob@example.com"})]
        )
        # An IMAP client's change, by mailbox.
        yield self.node_b.run(
            imapfolders.store_flags, "bob", "INBOX", (1,), "+", ("\\Flagged",), None
        )
        yield self.wait_for(lambda: len(self.heard_a) == 2)
        self.assertEqual(self.heard_a[1].touched, {hosted.mailbox.id})
        # The same flag again changes no row: nothing is told.
        yield self.node_b.run(
            imapfolders.store_flags, "bob", "INBOX", (1,), "+", ("\\Flagged",), None
        )
        yield self.node_b.run(imapfolders.expunge, "bob", "INBOX")
        yield self.node_b.run(filing.add_flag, "bob@example.com", stored.id, "\\Seen")
        yield self.wait_for(lambda: len(self.heard_a) == 3)
        self.assertEqual(self.heard_a[2].changed, {"bob@example.com"})
        self.assertEqual(self.heard_a[2].touched, set())
