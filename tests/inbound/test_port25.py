"""Port 25 with its inbound checks, over real SMTP sessions (smtplib against the server
listening on loopback), into a real store on both backends: what is refused at the end
of DATA is not stored, what is accepted is stored with our Authentication-Results and
its verdict."""

from __future__ import annotations

import smtplib

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest
from zope.interface import implementer

from atollon_mail.config import parse_config
from atollon_mail.delivery.intake import Intake
from atollon_mail.events import Events
from atollon_mail.inbound import build as inbound_build
from atollon_mail.interfaces import IStore
from atollon_mail.metrics import Metrics
from atollon_mail.smtp.policies import MXPolicy
from atollon_mail.smtp.server import SMTPServerFactory
from atollon_mail.store import filing
from tests import builders
from tests.inbound import fixtures
from tests.inbound.fixtures import HOSTNAME
from tests.smtp.fakes import make_settings
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin


@implementer(IStore)
class RecordingStore:
    """The real store; the messages handed to filing.store_messages are kept."""

    def __init__(self, store):
        self._store = store
        self.database = store.database
        self.incoming: list = []

    def run(self, operation, *args, **kwargs):
        if operation is filing.store_messages:
            self.incoming.extend(args[0])
        return self._store.run(operation, *args, **kwargs)

    def run_sync(self, operation, *args, **kwargs):
        return self._store.run_sync(operation, *args, **kwargs)


def send(port: int, raw: bytes, sender: str, helo: str) -> tuple[int, str]:
    """One SMTP session: the reply to the end of DATA (blocking: call it in a thread)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=30) as client:
        client.ehlo(helo)
        code, _ = client.mail(sender)
        assert code == 250, code
        code, _ = client.rcpt("jane@acme.test")
        assert code == 250, code
        code, reply = client.data(raw)
        return code, reply.decode()


class Port25Tests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(self.store)  # jane@acme.test
        self.recording = RecordingStore(self.store)
        self.dns = fixtures.start_zones(self, reactor)
        self.workers = builders.started_workers(self)

    def listen(self, inbound: str = "", smtp: str = "", metrics=None) -> int:
        config = parse_config(
            f"[appliance]\nhostname = {HOSTNAME}\n"
            f"[smtp]\n{smtp}"
            f"[delivery]\nnameservers = 127.0.0.1:{self.dns.port}\n"
            f"[inbound]\n{inbound}"
        )
        checks = inbound_build.build(config, self.recording, self.workers, reactor, metrics=metrics)
        intake = Intake(self.recording, Events())
        policy = MXPolicy(intake, HOSTNAME, config.smtp.relay_networks, checks)
        factory = SMTPServerFactory(
            policy,
            HOSTNAME,
            make_settings(greet_pause=0.0, relay_networks=()),
            reactor,
            metrics=metrics,
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def send(self, port, raw, sender="bounces@sender.test", helo="mx.client.test"):
        return threads.deferToThread(send, port, raw, sender, helo)

    def stored(self) -> list[bytes]:
        filings = self.store.run_sync(filing.list_filings, "jane@acme.test")
        return [self.store.run_sync(filing.message_raw, f.message.id) for f in filings]

    @defer.inlineCallbacks
    def test_a_signed_message_is_stored_with_dkim_and_dmarc_passing(self):
        port = self.listen()
        code, _ = yield self.send(port, fixtures.signed(fixtures.message()))
        self.assertEqual(code, 250)
        (raw,) = self.stored()
        head = raw.split(b"\r\n\r\n", 1)[0].decode()
        self.assertIn(f"\r\nAuthentication-Results: {HOSTNAME};\r\n\t", head)
        self.assertIn("dkim=pass header.d=sender.test", head)
        self.assertIn("dmarc=pass header.from=sender.test", head)
        self.assertIn("spf=pass smtp.mailfrom=bounces@sender.test", head)
        # Our header sits on our Received: header (below the store's Return-Path), the
        # message below as it came.
        self.assertLess(head.index("Authentication-Results:"), head.index("Received: from"))
        (incoming,) = self.recording.incoming
        self.assertIn("dkim=pass", incoming.verdict.authentication)
        self.assertIn("signed by sender.test", incoming.verdict.notes)

    @defer.inlineCallbacks
    def test_verdicts_and_messages_are_counted(self):
        metrics = Metrics()
        port = self.listen(metrics=metrics)
        code, _ = yield self.send(port, fixtures.signed(fixtures.message()))
        self.assertEqual(code, 250)
        code, _ = yield self.send(
            port, fixtures.message("Service <service@bank.test>"), sender="x@client.test"
        )
        self.assertEqual(code, 550)
        value = metrics.registry.get_sample_value
        results = "atollon_mail_inbound_auth_results_total"
        self.assertEqual(value(results, {"method": "dkim", "result": "pass"}), 1)
        self.assertEqual(value(results, {"method": "dmarc", "result": "pass"}), 1)
        self.assertEqual(value(results, {"method": "dmarc", "result": "fail"}), 1)
        self.assertEqual(value(results, {"method": "spf", "result": "pass"}), 1)
        self.assertEqual(value(results, {"method": "dkim", "result": "none"}), 1)
        decisions = "atollon_mail_inbound_decisions_total"
        self.assertEqual(value(decisions, {"decision": "accepted"}), 1)
        # The DMARC p=reject refusal: a decision of the checks, not a spam verdict.
        self.assertEqual(value(decisions, {"decision": "rejected"}), 1)
        messages = "atollon_mail_smtp_messages_total"
        self.assertEqual(
            value(messages, {"listener": "smtp", "outcome": "accepted", "reason": "2.0.0"}), 1
        )
        self.assertEqual(
            value(messages, {"listener": "smtp", "outcome": "rejected", "reason": "5.7.1"}), 1
        )

    @defer.inlineCallbacks
    def test_a_forged_reject_domain_gets_550_at_data_and_nothing_is_stored(self):
        port = self.listen()
        code, reply = yield self.send(
            port, fixtures.message("Service <service@bank.test>"), sender="x@client.test"
        )
        self.assertEqual(code, 550)
        self.assertIn("5.7.1 Message rejected: bank.test publishes DMARC p=reject", reply)
        self.assertEqual(self.stored(), [])
        self.assertEqual(self.recording.incoming, [])

    @defer.inlineCallbacks
    def test_a_trusted_forwarder_with_a_broken_spf_is_accepted_and_says_why(self):
        # bank.test sends from nowhere (SPF -all); the forwarder at 127.0.0.1 checked the
        # message when it came to it, and says so under its ARC seal.
        port = self.listen("trusted_forwarders = 127.0.0.1\n")
        raw = fixtures.arc_sealed(
            fixtures.message("Service <service@bank.test>"),
            "spf=pass smtp.mailfrom=bounces@bank.test; dmarc=pass header.from=bank.test",
        )
        code, _ = yield self.send(port, raw, sender="bounces@bank.test", helo="mx.partner.test")
        self.assertEqual(code, 250)
        (stored,) = self.stored()
        head = stored.split(b"\r\n\r\n", 1)[0].decode()
        ours = head.split("Received:", 1)[0]
        self.assertIn("spf=fail (not counted: forwarded by mx.partner.test, trusted)", ours)
        self.assertIn(
            "dmarc=pass (forwarded by mx.partner.test, trusted: its ARC seal says dmarc=pass)",
            ours,
        )
        self.assertIn("arc=pass", ours)
        (incoming,) = self.recording.incoming
        self.assertFalse(incoming.verdict.junk)
        self.assertIn("forwarded by mx.partner.test, trusted", incoming.verdict.notes)

    @defer.inlineCallbacks
    def test_results_claiming_our_name_do_not_reach_the_store(self):
        port = self.listen()
        raw = (
            b"Authentication-Results: mx.acme.test; dkim=pass header.d=bank.test;\r\n"
            b"\tdmarc=pass header.from=bank.test\r\n" + fixtures.signed(fixtures.message())
        )
        code, _ = yield self.send(port, raw)
        self.assertEqual(code, 250)
        (stored,) = self.stored()
        self.assertNotIn(b"bank.test", stored)
        self.assertEqual(stored.count(b"Authentication-Results:"), 1)

    @defer.inlineCallbacks
    def test_a_listed_client_is_stored_with_a_junk_verdict(self):
        self.dns.set_records("1.0.0.127.bl.test", [("A", "127.0.0.2")])
        port = self.listen("dnsbl_zones = bl.test\n")
        code, _ = yield self.send(port, fixtures.signed(fixtures.message()))
        self.assertEqual(code, 250)
        (incoming,) = self.recording.incoming
        self.assertTrue(incoming.verdict.junk)
        self.assertEqual(incoming.verdict.spam_symbols, ("DNSBL:bl.test(5)",))
        (stored,) = self.stored()
        self.assertIn(b"X-Spam-Status: Yes, score=5.0 required=5.0 tests=DNSBL:bl.test", stored)

    @defer.inlineCallbacks
    def test_relay_hosts_are_not_checked(self):
        port = self.listen(smtp="relay_networks = 127.0.0.0/8\n")
        code, _ = yield self.send(port, fixtures.message("Service <service@bank.test>"))
        self.assertEqual(code, 250)
        (stored,) = self.stored()
        self.assertNotIn(b"Authentication-Results", stored)
        self.assertIsNone(self.recording.incoming[0].verdict)

    @defer.inlineCallbacks
    def test_checks_off(self):
        port = self.listen("checks = off\n")
        code, _ = yield self.send(port, fixtures.message("Service <service@bank.test>"))
        self.assertEqual(code, 250)
        (stored,) = self.stored()
        self.assertNotIn(b"Authentication-Results", stored)
        self.assertEqual(self.dns.queries, [])


class SqlitePort25Tests(Port25Tests, SqliteStoreMixin, unittest.TestCase):
    pass


class PostgresPort25Tests(Port25Tests, PostgresStoreMixin, unittest.TestCase):
    pass
