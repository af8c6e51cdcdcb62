"""What the SMTP protocol counts (atollon_mail.metrics): sessions, messages at the end of
DATA and RCPT answers, by listener and outcome, with the enhanced status code as reason;
over the protocol test harness (StringTransport, Clock)."""

from __future__ import annotations

import smtplib

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from atollon_mail.delivery.intake import Intake
from atollon_mail.events import Events
from atollon_mail.smtp.policies import MXPolicy
from atollon_mail.smtp.server import SMTPServerFactory
from atollon_mail.smtp.session import Reply
from atollon_mail.store import filing
from tests import builders
from tests.support import (
    BrokenCounting,
    PostgresStoreMixin,
    SqliteStoreMixin,
    StoreFixtureMixin,
    broken_metrics,
)

from .fakes import HOSTNAME, FakeIntake, Session, StorageFailed, make_settings

TOO_MANY = Reply(421, "4.7.0", "Too many errors, closing")


class RefusingPolicy(MXPolicy):
    """Port 25's policy, refusing given recipients with given decisions as a policy may:
    several replies at once, or a 421 that ends the session."""

    def __init__(self, intake, refusals):
        super().__init__(intake, HOSTNAME, ())
        self.refusals = refusals

    def check_rcpt(self, session, envelope, path):
        refusal = self.refusals.get(path.address)
        if refusal is not None:
            return refusal
        return super().check_rcpt(session, envelope, path)


class SmtpMetricsTests(unittest.TestCase):
    def setUp(self):
        self.session = Session()
        self.registry = self.session.factory.metrics.registry

    def value(self, name: str, **labels) -> float | None:
        return self.registry.get_sample_value(name, {"listener": "smtp", **labels})

    def message(self, outcome: str, reason: str) -> float | None:
        return self.value("atollon_mail_smtp_messages_total", outcome=outcome, reason=reason)

    def test_a_session_is_counted_open_until_it_ends(self):
        self.assertEqual(self.value("atollon_mail_smtp_sessions_open"), 1)
        self.assertEqual(self.value("atollon_mail_smtp_sessions_total", outcome="accepted"), 1)
        self.session.command("QUIT")
        self.session.protocol.connectionLost(None)
        self.assertEqual(self.value("atollon_mail_smtp_sessions_open"), 0)

    def test_messages_accepted_rejected_and_tempfailed_by_status(self):
        session = self.session
        session.start()
        session.command("DATA")
        self.assertTrue(session.send(b"Subject: one\r\n\r\nHi.\r\n.\r\n")[0].startswith("250"))
        session.start()
        session.command("DATA")
        reply = session.send(b"Subject: two\r\n\r\n" + (b"x" * 70 + b"\r\n") * 1000 + b".\r\n")
        self.assertTrue(reply[0].startswith("552 5.3.4"), reply)
        session.intake.fail_accepts = True
        session.start()
        session.command("DATA")
        self.assertTrue(session.send(b"Subject: three\r\n\r\nHi.\r\n.\r\n")[0].startswith("451"))
        self.flushLoggedErrors(StorageFailed)
        self.assertEqual(self.message("accepted", "2.0.0"), 1)
        self.assertEqual(self.message("rejected", "5.3.4"), 1)
        self.assertEqual(self.message("tempfailed", "4.3.0"), 1)

    def test_a_message_is_counted_once_its_answer_is_there(self):
        session = self.session
        session.intake.hold_accepts = True
        session.start()
        session.command("DATA")
        self.assertEqual(session.send(b"Subject: held\r\n\r\nHi.\r\n.\r\n"), [])
        self.assertIsNone(self.message("accepted", "2.0.0"))
        session.intake.pending_accepts[0].fire()
        self.assertTrue(session.replies()[0].startswith("250"))
        self.assertEqual(self.message("accepted", "2.0.0"), 1)

    def test_recipients_by_outcome(self):
        session = self.session
        session.ehlo()
        session.command("MAIL FROM:<ann@far.test>")
        self.assertTrue(session.command("RCPT TO:<nobody@example.com>")[0].startswith("550"))
        self.assertTrue(session.command("RCPT TO:<someone@far.test>")[0].startswith("554"))
        self.assertTrue(session.command("RCPT TO:<alice@example.com>")[0].startswith("250"))
        recipients = "atollon_mail_smtp_recipients_total"
        self.assertEqual(self.value(recipients, outcome="rejected", reason="5.1.1"), 1)
        self.assertEqual(self.value(recipients, outcome="rejected", reason="5.7.1"), 1)
        self.assertEqual(self.value(recipients, outcome="accepted", reason="2.1.5"), 1)

    def test_a_decision_of_several_replies_is_counted_by_its_first(self):
        policy = RefusingPolicy(
            FakeIntake(),
            {"bad@example.com": (Reply(550, "5.7.1", "Refused by policy"), TOO_MANY)},
        )
        session = Session(policy=policy)
        self.registry = session.factory.metrics.registry
        session.ehlo()
        session.command("MAIL FROM:<ann@far.test>")
        replies = session.command("RCPT TO:<bad@example.com>")
        self.assertEqual([line[:9] for line in replies], ["550 5.7.1", "421 4.7.0"])
        recipients = "atollon_mail_smtp_recipients_total"
        self.assertEqual(self.value(recipients, outcome="rejected", reason="5.7.1"), 1)
        self.assertIsNone(self.value(recipients, outcome="tempfailed", reason="4.0.0"))

    def test_a_policys_421_is_counted_with_its_own_status(self):
        session = Session(policy=RefusingPolicy(FakeIntake(), {"bad@example.com": TOO_MANY}))
        self.registry = session.factory.metrics.registry
        session.ehlo()
        session.command("MAIL FROM:<ann@far.test>")
        self.assertTrue(session.command("RCPT TO:<bad@example.com>")[0].startswith("421 4.7.0"))
        recipients = "atollon_mail_smtp_recipients_total"
        self.assertEqual(self.value(recipients, outcome="tempfailed", reason="4.7.0"), 1)
        self.assertIsNone(self.value(recipients, outcome="tempfailed", reason="4.0.0"))


def send_one(port: int) -> tuple[int, bytes]:
    """One message to jane@acme.test over SMTP (blocking: run it in a thread)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as client:
        client.ehlo("client.test")
        client.mail("ann@far.test")
        client.rcpt("jane@acme.test")
        return client.data(b"Subject: hi\r\n\r\nHello.\r\n")


class BrokenCountingContract(StoreFixtureMixin):
    """Metrics whose every count raises (the store's timing included) cost no mail."""

    def setUp(self):
        self.metrics = broken_metrics()
        self.store = self.make_store(self.metrics.store_operation_seconds)
        builders.hosted_mailbox(self.store)  # jane@acme.test

    @defer.inlineCallbacks
    def test_a_message_is_still_accepted_and_stored_once(self):
        intake = Intake(self.store, Events(), metrics=self.metrics)
        factory = SMTPServerFactory(
            MXPolicy(intake, HOSTNAME, ()),
            HOSTNAME,
            make_settings(greet_pause=0.0, relay_networks=()),
            reactor,
            metrics=self.metrics,
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        code, reply = yield threads.deferToThread(send_one, port.getHost().port)
        self.assertEqual((code, reply[:5]), (250, b"2.0.0"))
        filings = yield self.store.run(filing.list_filings, "jane@acme.test", 100)
        self.assertEqual(len(filings), 1)
        # Each failed count was logged, not raised.
        self.assertGreater(len(self.flushLoggedErrors(BrokenCounting)), 3)


class SqliteBrokenCountingTests(BrokenCountingContract, SqliteStoreMixin, unittest.TestCase):
    pass


class PostgresBrokenCountingTests(BrokenCountingContract, PostgresStoreMixin, unittest.TestCase):
    pass
