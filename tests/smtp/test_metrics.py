"""What the SMTP protocol counts (atollon_mail.metrics): sessions, messages at the end of
DATA and RCPT answers, by listener and outcome, with the enhanced status code as reason;
over the protocol test harness (StringTransport, Clock)."""

from __future__ import annotations

from twisted.trial import unittest

from .fakes import Session, StorageFailed


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
