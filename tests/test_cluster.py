"""The services that share work between nodes on one database (atollon_mail.cluster):
periodic jobs on one node at a time, taken over when their node's session ends, and the
deliveries a dead node claimed queued again by another."""

from __future__ import annotations

import datetime
import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from atollon_mail import tap
from atollon_mail.cluster import LEASE_SECONDS, RELEASE_SECONDS, ClaimKeeper, OneNodeAtATime
from atollon_mail.config import ClusterConfig, ConfigError, load_config, parse_config
from atollon_mail.delivery.junkpurge import JunkPurger
from atollon_mail.store import queue
from atollon_mail.store.leases import node_lock_name
from atollon_mail.store.models import QueueRecipient
from atollon_mail.store.pool import Store
from atollon_mail.store.records import Origin, OutgoingMessage
from tests import builders
from tests.store.test_cluster import lock_holder, terminate_backend
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

T0 = datetime.datetime(2030, 7, 1, 12, 0, 0)


class NodesMixin(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()

    def node(self, name: str) -> Store:
        store = Store.from_url(self.database_url, reactor, node=name)
        store.start()
        self.addCleanup(store.stop)
        return store

    def purge_job(self, store: Store, clock) -> OneNodeAtATime:
        job = OneNodeAtATime("junk-purger", JunkPurger(store, 30, clock), store.leases, clock)
        job.startService()
        self.addCleanup(job.stopService)
        return job

    @defer.inlineCallbacks
    def look(self, keeper: ClaimKeeper, clock, seconds=RELEASE_SECONDS):
        """The keeper's next look, `seconds` later on its clock; what it released."""
        clock.advance(seconds)
        yield self.wait_for(lambda: keeper.round.called)
        released = yield keeper.round
        return released

    @defer.inlineCallbacks
    def wait_for(self, predicate, seconds=10.0):
        for _ in range(int(seconds / 0.02)):
            if predicate():
                return
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.fail("it did not happen in time")


class SqliteClusterServiceTests(NodesMixin, SqliteStoreMixin, unittest.TestCase):
    def test_on_one_box_the_job_starts_at_once(self):
        clock = task.Clock()
        job = self.purge_job(self.node("a"), clock)
        self.assertTrue(job.holding)
        self.assertTrue(job.job.running)
        self.assertEqual(job.name, "junk-purger")

    def test_the_claim_keeper_has_nothing_to_do_on_one_box(self):
        keeper = ClaimKeeper(self.node("a"), "a", task.Clock())
        keeper.startService()
        self.addCleanup(keeper.stopService)
        self.assertIsNone(keeper.round)


class PostgresClusterServiceTests(NodesMixin, PostgresStoreMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_one_node_runs_the_job_and_the_other_takes_over_when_its_session_ends(self):
        clock_a, clock_b = task.Clock(), task.Clock()
        a = self.purge_job(self.node("a"), clock_a)
        yield self.wait_for(lambda: a.holding)
        self.assertTrue(a.job.running)
        b = self.purge_job(self.node("b"), clock_b)
        yield self.wait_for(lambda: b._asking is None)
        self.assertFalse(b.holding)
        self.assertFalse(b.job.running)
        # a's connection dies (as when its process is killed): its lock goes with it.
        terminate_backend(lock_holder("junk-purger", self.postgres_schema))
        yield self.wait_for(lambda: lock_holder("junk-purger", self.postgres_schema) is None)
        clock_a.advance(LEASE_SECONDS)
        yield self.wait_for(lambda: not a.holding)
        self.assertFalse(a.job.running)
        clock_b.advance(LEASE_SECONDS)
        yield self.wait_for(lambda: b.holding)
        self.assertTrue(b.job.running)
        # a asks again on its next round, and is refused while b holds it.
        clock_a.advance(LEASE_SECONDS)
        yield self.wait_for(lambda: a._asking is None)
        self.assertFalse(a.holding)
        # b stops: the lock is released and a takes over on its next round.
        yield b.stopService()
        self.assertFalse(b.job.running)
        clock_a.advance(LEASE_SECONDS)
        yield self.wait_for(lambda: a.holding)
        self.assertTrue(a.job.running)

    def two_nodes_with_mail_queued(self):
        """A message for two remote recipients queued at T0, and the stores and clocks of
        nodes a and b (b's at T0)."""
        builders.hosted_mailbox(self.store, "bob@example.com", "bob")
        outgoing = OutgoingMessage(
            envelope_sender="bob@example.com",
            raw=b"Subject: hi\r\n\r\nbody\r\n",
            local_recipients=(),
            remote_recipients=("ann@remote.example", "zed@remote.example"),
        )
        self.store.run_sync(queue.submit_messages, [(outgoing, Origin("submission"))], T0)
        store_a, store_b = self.node("a"), self.node("b")
        clock_a, clock_b = task.Clock(), task.Clock()
        clock_b.advance((T0 - datetime.datetime(1970, 1, 1)).total_seconds())
        return store_a, store_b, clock_a, clock_b

    @defer.inlineCallbacks
    def test_a_surviving_node_queues_again_what_a_dead_node_had_in_flight(self):
        store_a, store_b, clock_a, clock_b = self.two_nodes_with_mail_queued()
        woken = []
        keeper_a = ClaimKeeper(store_a, "a", clock_a)
        keeper_b = ClaimKeeper(store_b, "b", clock_b, released=lambda: woken.append(True))
        for keeper in (keeper_a, keeper_b):
            keeper.startService()
            self.addCleanup(keeper.stopService)
        yield self.wait_for(lambda: keeper_a.round.called and keeper_b.round.called)
        self.assertTrue(keeper_a.holding and keeper_b.holding)
        claimed = yield store_a.run(queue.claim_due_deliveries, T0, 10, "a")
        self.assertEqual(len(claimed), 2)
        self.assertEqual((yield self.look(keeper_b, clock_b)), {})
        self.assertEqual(woken, [], "a is alive")
        # a dies (its keeper looks no more): its lock is free from now on.
        terminate_backend(lock_holder(node_lock_name("a"), self.postgres_schema))
        yield self.wait_for(lambda: lock_holder(node_lock_name("a"), self.postgres_schema) is None)
        # Seen free on looks spanning more than 2 x check_interval before anything goes.
        for _ in range(3):
            self.assertEqual((yield self.look(keeper_b, clock_b)), {})
        released = yield self.look(keeper_b, clock_b)
        self.assertEqual(released["a"].quiet, 2)
        self.assertEqual(woken, [True])
        states = self.store.run_sync(builders.table_rows, QueueRecipient.state)
        self.assertEqual(states, [("queued",), ("queued",)])

    @defer.inlineCallbacks
    def test_a_live_node_s_claims_stay_when_every_lock_session_ends_at_once(self):
        # As a PostgreSQL restart does: both nodes' lock connections end; b looks first.
        store_a, store_b, clock_a, clock_b = self.two_nodes_with_mail_queued()
        keeper_a = ClaimKeeper(store_a, "a", clock_a)
        keeper_b = ClaimKeeper(store_b, "b", clock_b)
        for keeper in (keeper_a, keeper_b):
            keeper.startService()
            self.addCleanup(keeper.stopService)
        yield self.wait_for(lambda: keeper_a.round.called and keeper_b.round.called)
        self.assertTrue(keeper_a.confirmed())
        claimed = yield store_a.run(queue.claim_due_deliveries, T0, 10, "a")
        self.assertEqual(len(claimed), 2)
        terminate_backend(lock_holder(node_lock_name("a"), self.postgres_schema))
        terminate_backend(lock_holder(node_lock_name("b"), self.postgres_schema))
        yield self.wait_for(
            lambda: (
                lock_holder(node_lock_name("a"), self.postgres_schema) is None
                and lock_holder(node_lock_name("b"), self.postgres_schema) is None
            )
        )
        # b learns it lost its own lock: nothing is released on that look.
        self.assertEqual((yield self.look(keeper_b, clock_b)), {})
        self.assertFalse(keeper_b.holding)
        # b takes its lock again and sees a's free: not yet a reason to release.
        self.assertEqual((yield self.look(keeper_b, clock_b)), {})
        self.assertTrue(keeper_b.holding)
        # a's fence: no confirmation for longer than check_interval, no final dot.
        clock_a.advance(RELEASE_SECONDS + 1)
        self.assertFalse(keeper_a.confirmed())
        yield self.wait_for(lambda: keeper_a.round.called)
        self.assertFalse(keeper_a.holding, "a learnt it lost its lock")
        # a's next look, a third of check_interval later, takes it again.
        yield self.look(keeper_a, clock_a, RELEASE_SECONDS / 3)
        self.assertTrue(keeper_a.holding and keeper_a.confirmed())
        for _ in range(4):
            self.assertEqual((yield self.look(keeper_b, clock_b)), {})
        states = self.store.run_sync(builders.table_rows, QueueRecipient.state)
        self.assertEqual(states, [("in-flight",), ("in-flight",)])

    @defer.inlineCallbacks
    def test_the_node_lock_is_kept_past_the_keeper_s_stop_until_the_store_closes(self):
        store_a = self.node("a")
        self.assertTrue(store_a.leases.take_now(node_lock_name("a")))
        keeper = ClaimKeeper(store_a, "a", task.Clock())
        keeper.startService()
        self.assertTrue(keeper.holding and keeper.confirmed())
        yield self.wait_for(lambda: keeper.round.called)
        yield keeper.stopService()
        # The runner may still be finishing: the others must not take its claims yet.
        self.assertIsNotNone(lock_holder(node_lock_name("a"), self.postgres_schema))
        store_a.stop()
        yield self.wait_for(lambda: lock_holder(node_lock_name("a"), self.postgres_schema) is None)

    def appliance_config(self, node_line: str = ""):
        data = os.path.abspath(self.mktemp())
        return parse_config(
            f"[appliance]\nhostname = mx.acme.test\ndata_dir = {data}\n"
            f"[database]\nurl = {self.database_url}\n[cluster]\n{node_line}\n"
        )

    def test_an_unnamed_node_is_one_box_a_named_one_keeps_its_claims(self):
        single = tap.build_appliance(self.appliance_config(), task.Clock())
        store = single.getServiceNamed("store").store
        self.addCleanup(store.stop)
        self.assertIsNone(store.node)
        self.assertNotIn("claim-keeper", [child.name for child in single])
        named = tap.build_appliance(self.appliance_config("node_name = mx1"), task.Clock())
        store = named.getServiceNamed("store").store
        self.addCleanup(store.stop)
        self.assertEqual(store.node, "mx1")
        self.assertEqual(named.getServiceNamed("claim-keeper").node, "mx1")

    def test_a_second_node_of_the_same_name_refuses_to_start(self):
        running = self.node("mx1")
        self.assertTrue(running.leases.take_now(node_lock_name("mx1")))
        config = self.appliance_config("node_name = mx1")
        second = tap.StoreService(Store.from_url(self.database_url, reactor, node="mx1"), config)
        self.addCleanup(second.store.stop)
        with self.assertRaises(SystemExit) as refused:
            second.startService()
        self.assertEqual(
            str(refused.exception),
            "atollon-mail: another running node is named 'mx1': give each node its own "
            "[cluster] node_name",
        )


class ClusterConfigTests(unittest.TestCase):
    def test_no_node_name_by_default_one_box_as_the_commented_file_has_it(self):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        default = load_config(os.path.join(root, "etc", "atollon-mail.ini")).cluster
        self.assertEqual(default, ClusterConfig())
        self.assertEqual(default.node_name, "")
        self.assertEqual(default.check_interval, LEASE_SECONDS)

    def test_a_node_s_settings_and_errors_naming_the_key(self):
        cluster = parse_config("[cluster]\nnode_name = mx1\ncheck_interval = 2s\n").cluster
        self.assertEqual((cluster.node_name, cluster.check_interval), ("mx1", 2.0))
        with self.assertRaises(ConfigError) as raised:
            parse_config("[cluster]\ncheck_interval = soon\n", "a.ini")
        self.assertTrue(str(raised.exception).startswith("a.ini: [cluster] check_interval: "))
        with self.assertRaises(ConfigError) as raised:
            parse_config("[cluster]\nnode_name = " + "x" * 201 + "\n", "a.ini")
        self.assertIn("[cluster] node_name", str(raised.exception))
