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
from atollon_mail.store import aliases, autorespond, queue
from atollon_mail.store.models import CampaignRecipient
from atollon_mail.store.records import Origin, OutgoingMessage
from tests import builders
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
        builders.hosted_mailbox(self.store, name="Jane")
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


class RecordBuildersTests(StoreFixtureMixin):
    """The record builders make what the tests start from through the store's operations,
    and give back its records."""

    def setUp(self):
        self.store = self.make_store()

    def test_hosted_mailbox_and_an_alias(self):
        hosted = builders.hosted_mailbox(self.store, name="Jane")
        self.assertEqual(
            (hosted.domain.name, hosted.user.login, hosted.user.name, hosted.mailbox.address),
            ("acme.test", "jane", "Jane", "jane@acme.test"),
        )
        builders.alias(self.store, "sales@acme.test", "jane@acme.test")
        self.assertEqual(
            [alias.address for alias in self.store.run_sync(aliases.list_aliases)],
            ["sales@acme.test"],
        )

    def test_a_campaign_to_a_group_of_contacts_started_or_not(self):
        builders.hosted_mailbox(self.store, "news@acme.test")
        builders.organization(self.store)
        firm = builders.company(self.store, "Firm")
        ann = builders.person(self.store, name="Ann", email="ann@x.test", language="cs")
        builders.employment(self.store, ann, firm)
        bob = builders.person(self.store, name="Bob", email="bob@x.test")
        group = builders.group(self.store, "Readers", "Acme", members=[ann.id, bob.id])
        variants = {"en": ("Hi {{ first_name }}", "News."), "cs": ("Ahoj", "Novinky.")}
        draft = builders.campaign(self.store, group.id, variants=variants)
        self.assertEqual((draft.name, draft.status), ("Spring news", "draft"))
        started = builders.campaign(
            self.store, "Readers", name="Autumn news", variants=variants, started=True
        )
        self.assertEqual(started.status, "running")
        rows = self.store.run_sync(
            builders.table_rows,
            CampaignRecipient.address,
            CampaignRecipient.language,
            where=CampaignRecipient.campaign == started.id,
            order_by=CampaignRecipient.address,
        )
        self.assertEqual(rows, [("ann@x.test", "cs"), ("bob@x.test", "en")])
        self.assertEqual(self.store.run_sync(builders.row_count, CampaignRecipient), 2)


class SqliteRecordBuildersTests(SqliteStoreMixin, RecordBuildersTests, unittest.TestCase):
    pass


class PostgresRecordBuildersTests(PostgresStoreMixin, RecordBuildersTests, unittest.TestCase):
    pass
