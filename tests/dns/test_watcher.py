"""The DNS watcher: rounds on a Clock, results kept in the store, admins mailed changes."""

from __future__ import annotations

import email
import email.policy
import functools
import threading

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from atollon_mail.delivery import dkim
from atollon_mail.delivery.intake import Intake
from atollon_mail.delivery.runner import send_notification
from atollon_mail.dns import watcher as watcher_module
from atollon_mail.dns.watcher import Change, DnsWatcher, changes_between, notification
from atollon_mail.store import accounts, domains, mailboxes, queue
from atollon_mail.store import filing as filing_ops
from atollon_mail.store.records import DnsCheckRecord, DnsCheckResult, Origin
from atollon_mail.workers import Workers
from tests.dns.fixtures import (
    HOSTNAME,
    appliance_zones,
    make_config,
    primary_zone,
    secondary_zone,
)
from tests.dnsserver import start_dns_server
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

INTERVAL = 3600


class WatcherContractTests(StoreFixtureMixin):
    @defer.inlineCallbacks
    def setUp(self):
        self.store = self.make_store()
        keys = {}
        for domain in ("good.test", "acme.test"):
            keys[domain] = dkim.generate_key("ed25519")
        self.sync(domains.add_domain, "good.test")
        self.sync(domains.add_domain, "crm.acme.test", "secondary", primary_domain="acme.test")
        for domain, (private, public) in keys.items():
            self.sync(domains.add_dkim_key, domain, "atollon", "ed25519", private, public)
        for login, admin in (("admin", True), ("root", True), ("jane", False)):
            self.sync(accounts.add_user, login, "hash", is_admin=admin)
            self.sync(mailboxes.add_mailbox, f"{login}@good.test", login)
        zones = appliance_zones()
        zones["good.test"] = primary_zone(dkim.txt_value("ed25519", keys["good.test"][1]))
        zones["acme.test"] = secondary_zone(dkim.txt_value("ed25519", keys["acme.test"][1]))
        self.dns = start_dns_server(reactor, zones)
        self.addCleanup(self.dns.stop)
        self.config = make_config(self.dns.nameserver, check_interval=str(INTERVAL))
        self.clock = task.Clock()
        self.clock.advance(1_900_000_000)
        self.sent: list[tuple[str, bytes]] = []
        self.check_threads: list[threading.Thread] = []
        self.workers = Workers(reactor)
        self.workers.startService()
        self.addCleanup(self.workers.stopService)
        self.watcher = DnsWatcher(
            self.store, self.config, reactor, self.send, self.workers.dns, clock=self.clock
        )
        original = self.watcher._check

        def recording(subject):
            self.check_threads.append(threading.current_thread())
            return original(subject)

        self.watcher._check = recording
        yield None

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def send(self, address: str, raw: bytes):
        self.sent.append((address, raw))
        return defer.succeed(None)

    def start(self):
        self.watcher.startService()
        self.addCleanup(self.watcher.stopService)
        return self.watcher.round

    def next_round(self):
        before = self.watcher.round
        self.clock.advance(INTERVAL - 1)
        self.assertIs(self.watcher.round, before, "a round started before the interval")
        self.clock.advance(1)
        self.assertIsNot(self.watcher.round, before, "no round at the interval")
        return self.watcher.round

    def messages(self):
        found = [
            (address, email.message_from_bytes(raw, policy=email.policy.default))
            for address, raw in self.sent
        ]
        self.sent.clear()
        return found

    def body(self, message) -> str:
        return message.get_content().replace("\r\n", "\n")

    def test_first_round_can_wait_after_start_and_stopping_before_it_checks_nothing(self):
        delayed = DnsWatcher(
            self.store,
            self.config,
            reactor,
            self.send,
            self.workers.dns,
            clock=self.clock,
            first_check_delay=60,
        )
        delayed.startService()
        self.assertIsNone(delayed.round, "no round at start")
        self.clock.advance(59)
        self.assertIsNone(delayed.round)
        stopped = delayed.stopService()
        self.clock.advance(3600)
        self.assertIsNone(delayed.round, "a stopped watcher never starts its first round")
        return stopped

    @defer.inlineCallbacks
    def test_first_round_stores_results_and_mails_nothing_when_all_pass(self):
        yield self.start()
        self.assertEqual(self.sent, [])
        good = self.sync(domains.last_dns_check, "good.test")
        crm = self.sync(domains.last_dns_check, "crm.acme.test")
        self.assertEqual({r.status for r in good.results + crm.results}, {"pass"})
        self.assertIn("mx crm.acme.test", [r.check for r in crm.results])
        self.assertIn("spf acme.test", [r.check for r in crm.results])
        # acme.test itself receives elsewhere: it is checked through crm.acme.test only.
        self.assertIsNone(self.sync(domains.last_dns_check, "acme.test"))
        self.assertEqual(good.checked_at.year, 2030)
        self.assertTrue(self.check_threads)
        for thread in self.check_threads:
            self.assertIsNot(thread, threading.main_thread(), "a check ran on the reactor")

    @defer.inlineCallbacks
    def test_first_round_mails_only_failures(self):
        self.dns.set_records("_dmarc.acme.test", [])
        yield self.start()
        messages = self.messages()
        self.assertEqual(
            [address for address, _ in messages], ["admin@good.test", "root@good.test"]
        )
        address, message = messages[0]
        self.assertEqual(message["From"], f"postmaster@{HOSTNAME}")
        self.assertEqual(message["To"], "admin@good.test")
        self.assertEqual(message["Auto-Submitted"], "auto-generated")
        self.assertEqual(message["Subject"], "DNS check: 1 problem (crm.acme.test)")
        body = self.body(message)
        self.assertIn("Failing (first check of the domain):", body)
        self.assertIn("crm.acme.test: dmarc acme.test", body)
        self.assertIn("fail: acme.test publishes no DMARC record", body)
        self.assertNotIn("pass", body)

    @defer.inlineCallbacks
    def test_notices_to_admin_mailboxes_here_are_filed_at_once(self):
        """Through the intake, as the appliance sends them: the admins' mailboxes are
        here, so the notices are filed (from <>) and nothing is queued."""
        intake = Intake(self.store)
        self.watcher._send = functools.partial(send_notification, intake, origin=Origin("notice"))
        self.dns.set_records("_dmarc.acme.test", [])
        yield self.start()
        self.assertEqual(self.sync(queue.queue_list), [])
        for address in ("admin@good.test", "root@good.test"):
            [filing] = self.sync(filing_ops.list_filings, address)
            self.assertEqual(filing.message.envelope_sender, "")
            raw = self.sync(filing_ops.message_raw, filing.message.id)
            self.assertTrue(raw.startswith(b"Return-Path: <>\r\n"), raw[:80])
            self.assertEqual(raw.count(b"Return-Path:"), 1)
            self.assertEqual(filing.message.subject, "DNS check: 1 problem (crm.acme.test)")
        self.assertEqual(self.sync(filing_ops.list_filings, "jane@good.test"), [])

    @defer.inlineCallbacks
    def test_unchanged_round_mails_nothing(self):
        self.dns.set_records("_dmarc.acme.test", [])
        yield self.start()
        self.messages()
        yield self.next_round()
        self.assertEqual(self.sent, [])
        yield self.next_round()
        self.assertEqual(self.sent, [])

    @defer.inlineCallbacks
    def test_broken_then_fixed(self):
        yield self.start()
        self.assertEqual(self.sent, [])
        self.dns.set_records("good.test", [("MX", 10, HOSTNAME)])  # the SPF record is gone
        yield self.next_round()
        [(_, broken), _] = self.messages()
        self.assertEqual(broken["Subject"], "DNS check: 1 problem (good.test)")
        body = self.body(broken)
        self.assertIn("Broken since the last check:\n  good.test: spf good.test\n", body)
        self.assertIn("publishes no SPF record", body)
        stored = self.sync(domains.last_dns_check, "good.test")
        self.assertEqual({r.check: r.status for r in stored.results}["spf good.test"], "fail")
        yield self.next_round()
        self.assertEqual(self.sent, [], "still broken: nothing new to say")
        self.dns.set_records(
            "good.test", [("MX", 10, HOSTNAME), ("TXT", "v=spf1 mx include:spf.atollon.test -all")]
        )
        yield self.next_round()
        [(_, fixed), _] = self.messages()
        self.assertEqual(fixed["Subject"], "DNS check: 1 fixed (good.test)")
        body = self.body(fixed)
        self.assertIn("Fixed since the last check:\n  good.test: spf good.test\n", body)
        self.assertIn("pass: the SPF record of good.test lets", body)

    @defer.inlineCallbacks
    def test_unanswered_lookups_are_neither_broken_nor_fixed(self):
        yield self.start()
        self.dns.fail("good.test", "SERVFAIL")
        yield self.next_round()
        self.assertEqual(self.sent, [])
        stored = self.sync(domains.last_dns_check, "good.test")
        self.assertEqual({r.status for r in stored.results}, {"pass"})
        self.dns.fail("good.test", None)
        yield self.next_round()
        self.assertEqual(self.sent, [])

    @defer.inlineCallbacks
    def test_no_admin_mailbox_sends_nothing(self):
        self.sync(mailboxes.set_mailbox_active, "admin@good.test", False)
        self.sync(mailboxes.set_mailbox_active, "root@good.test", False)
        self.dns.set_records("_dmarc.good.test", [])
        yield self.start()
        self.assertEqual(self.sent, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_a_failing_send_does_not_stop_the_others(self):
        self.dns.set_records("_dmarc.good.test", [])
        calls = []

        def send(address, raw):
            calls.append(address)
            if address == "admin@good.test":
                return defer.fail(RuntimeError("queue full"))
            return defer.succeed(None)

        self.watcher._send = send
        yield self.start()
        self.assertEqual(calls, ["admin@good.test", "root@good.test"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_stop_during_a_round_waits_for_it(self):
        self.watcher.startService()
        running = self.watcher.round
        self.assertFalse(running.called)
        yield self.watcher.stopService()
        self.assertTrue(running.called)
        # It stopped between domains: the rest waits for the next start.
        self.assertLessEqual(len(self.check_threads), 1)

    @defer.inlineCallbacks
    def test_stop_ends_the_rounds(self):
        yield self.start()
        yield self.watcher.stopService()
        before = self.watcher.round
        self.clock.advance(INTERVAL * 3)
        self.assertIs(self.watcher.round, before)


class WatcherOnSqliteTests(SqliteStoreMixin, WatcherContractTests, unittest.TestCase):
    pass


class WatcherOnPostgresTests(PostgresStoreMixin, WatcherContractTests, unittest.TestCase):
    pass


class ChangesTests(unittest.TestCase):
    def record(self, *results):
        return DnsCheckRecord("good.test", None, tuple(results))

    def test_first_check_reports_definite_failures(self):
        results = [
            DnsCheckResult("a", "pass", "ok"),
            DnsCheckResult("b", "fail", "bad"),
            DnsCheckResult("c", "warn", "meh"),
            DnsCheckResult("d", "fail", "timeout", temporary=True),
        ]
        self.assertEqual(
            changes_between("good.test", None, results),
            [Change("good.test", "failing", results[1])],
        )

    def test_transitions(self):
        previous = self.record(
            DnsCheckResult("a", "pass", "ok"),
            DnsCheckResult("b", "fail", "bad"),
            DnsCheckResult("c", "warn", "meh"),
            DnsCheckResult("d", "fail", "bad"),
            DnsCheckResult("e", "fail", "timeout", temporary=True),
        )
        results = [
            DnsCheckResult("a", "fail", "now bad"),  # broken
            DnsCheckResult("b", "warn", "better"),  # fixed (no longer failing)
            DnsCheckResult("c", "pass", "good"),  # not a failure either way
            DnsCheckResult("d", "fail", "still"),  # unchanged
            DnsCheckResult("e", "pass", "ok"),  # was unknown: not a fix
            DnsCheckResult("f", "fail", "new check"),  # broken
        ]
        self.assertEqual(
            [(c.kind, c.result.check) for c in changes_between("good.test", previous, results)],
            [("broken", "a"), ("fixed", "b"), ("broken", "f")],
        )

    def test_notification_is_a_plain_message(self):
        import datetime

        raw = notification(
            "mx.example.test",
            "admin@example.test",
            [Change("example.test", "broken", DnsCheckResult("mx example.test", "fail", "gone"))],
            datetime.datetime(2030, 1, 1, 12, 0, 0),
        )
        self.assertIn(b"\r\n\r\n", raw)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(message["Date"], "Tue, 01 Jan 2030 12:00:00 +0000")
        self.assertTrue(message["Message-ID"].endswith("@mx.example.test>"))
        self.assertEqual(message.get_content_type(), "text/plain")
        self.assertIs(watcher_module.Change, Change)
