"""The builders wire the subsystems through the events object: what one produces, the
others hear, with nothing patched in after construction."""

from __future__ import annotations

import os
import threading

from twisted.internet import defer
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.delivery import build as delivery_build
from atollon_mail.events import Events
from atollon_mail.massmail import build as massmail_build
from atollon_mail.store import accounts, autorespond, domains, mailboxes, queue
from atollon_mail.store.records import Origin, OutgoingMessage
from tests.builders import started_workers
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.test_tap import SpyReactor

RAW = (
    b"From: Ann <ann@remote.test>\r\nTo: Jane <jane@acme.test>\r\n"
    b"Subject: Lunch\r\nMessage-ID: <m1@remote.test>\r\n\r\nFriday?\r\n"
)


class EventsTests(unittest.TestCase):
    def test_every_subscriber_hears_in_order_and_a_failing_one_is_logged(self):
        events = Events()
        heard = []

        def broken(*args):
            raise RuntimeError("subscriber trouble")

        events.filed.subscribe(lambda *args: heard.append(("first", args)))
        events.filed.subscribe(broken)
        events.filed.subscribe(lambda *args: heard.append(("last", args)))
        events.filed.fire("ann@remote.test", (), b"raw")
        self.assertEqual(
            heard,
            [("first", ("ann@remote.test", (), b"raw")), ("last", ("ann@remote.test", (), b"raw"))],
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        events.queued.fire()  # nobody subscribed: nothing happens
        self.assertFalse(events.queued.subscribed)


class WorkersTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_cpu_and_dns_work_runs_off_the_reactor_thread(self):
        workers = started_workers(self)
        cpu = yield workers.in_cpu(threading.current_thread)
        dns = yield workers.in_dns(threading.current_thread)
        self.assertNotIn(threading.main_thread(), (cpu, dns))
        self.assertTrue(workers.cpu.started and workers.dns.started)


class BuilderWiringTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.store.run_sync(domains.add_domain, "acme.test")
        self.store.run_sync(accounts.add_user, "jane", "hash", name="Jane")
        self.store.run_sync(mailboxes.add_mailbox, "jane@acme.test", "jane")
        directory = os.path.abspath(self.mktemp())
        config = parse_config(f"[appliance]\nhostname = mx.acme.test\ndata_dir = {directory}\n")
        self.reactor = SpyReactor()
        self.reactor.advance(1_900_000_000)
        events = Events()
        workers = started_workers(self, self.reactor)
        self.massmail = massmail_build.build(config, self.store, events, workers, self.reactor)
        self.delivery = delivery_build.build(
            config, self.store, events, workers, self.reactor, self.massmail.returns
        )

    def runner_wake_ups(self) -> list:
        runner = self.delivery.runner
        return [call for call in self.reactor.getDelayedCalls() if call.func == runner.wake]

    @defer.inlineCallbacks
    def test_mail_queued_through_the_intake_wakes_the_runner(self):
        self.assertEqual(self.runner_wake_ups(), [])
        submitted = yield self.delivery.intake.submit(
            OutgoingMessage(
                envelope_sender="jane@acme.test",
                raw=RAW,
                remote_recipients=("bob@remote.test",),
            ),
            Origin("submission"),
        )
        self.assertEqual(submitted.queued_recipients, 1)
        self.assertEqual(len(self.runner_wake_ups()), 1)

    @defer.inlineCallbacks
    def test_filed_mail_reaches_the_auto_responder(self):
        self.store.run_sync(autorespond.set_autoresponder, "jane@acme.test", True, body="Away.")
        jane = yield self.delivery.intake.route("jane@acme.test")
        yield self.delivery.intake.accept("ann@remote.test", [jane], RAW)
        yield self.delivery.autoresponder.when_idle()
        [entry] = self.store.run_sync(queue.queue_list)
        self.assertEqual((entry.envelope_sender, entry.address), ("", "ann@remote.test"))
        self.assertEqual(len(self.runner_wake_ups()), 1, "the reply wakes the runner")


class SqliteBuilderWiringTests(SqliteStoreMixin, BuilderWiringTests, unittest.TestCase):
    pass


class PostgresBuilderWiringTests(PostgresStoreMixin, BuilderWiringTests, unittest.TestCase):
    pass
