"""The MX policy's use of its IInboundChecks, over a StringTransport: a refusal is the
reply to the end of DATA, a failure of the checks a 451, an accepted message goes to the
intake with the headers on top and the verdict; relay hosts are not checked."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from atollon_mail.inbound.checks import InboundDecision, Refusal
from atollon_mail.interfaces import IInboundChecks
from atollon_mail.smtp.policies import MXPolicy
from atollon_mail.store.records import InboundVerdict
from tests.smtp.fakes import HOSTNAME, FakeIntake, Session

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


@implementer(IInboundChecks)
class FakeChecks:
    """Answers every message with `decision` (or fails); keeps what it was asked."""

    def __init__(self, decision: InboundDecision | None = None, fails: bool = False):
        self.decision = decision or InboundDecision(verdict=InboundVerdict())
        self.fails = fails
        self.calls: list = []

    def check(self, session, envelope, data):
        self.calls.append((session.peer, envelope.sender.address, data))
        if self.fails:
            return defer.fail(RuntimeError("checks broke"))
        return defer.succeed(self.decision)


class MXPolicyChecksTests(unittest.TestCase):
    def session(self, checks, relay_networks=(), peer="198.51.100.7") -> Session:
        intake = FakeIntake()
        policy = MXPolicy(intake, HOSTNAME, relay_networks, checks)
        session = Session(intake=intake, policy=policy, peer=peer)
        session.start("<sender@example.org>", "<alice@example.com>")
        return session

    def deliver(self, session) -> list[str]:
        self.assertEqual(session.command("DATA")[0][:3], "354")
        return session.send(MESSAGE + b".\r\n")

    def test_the_fake_provides_the_interface(self):
        verifyObject(IInboundChecks, FakeChecks())

    def test_an_accepted_message_is_stored_with_the_headers_and_the_verdict(self):
        verdict = InboundVerdict(junk=True, authentication="mx; dkim=none")
        checks = FakeChecks(
            InboundDecision(verdict=verdict, headers=b"Authentication-Results: mx; dkim=none\r\n")
        )
        session = self.session(checks)
        self.assertEqual(self.deliver(session)[0][:3], "250")
        (call,) = session.intake.accept_calls
        self.assertIs(call.verdict, verdict)
        self.assertTrue(call.raw.startswith(b"Authentication-Results: mx; dkim=none\r\nReceived: "))
        self.assertTrue(checks.calls[0][2].startswith(b"Received: "))

    def test_what_the_checks_removed_stays_out(self):
        decision = InboundDecision(
            verdict=InboundVerdict(), headers=b"X-Ours: 1\r\n", message=b"Received: x\r\n\r\nb\r\n"
        )
        session = self.session(FakeChecks(decision))
        self.deliver(session)
        self.assertEqual(
            session.intake.accept_calls[0].raw, b"X-Ours: 1\r\nReceived: x\r\n\r\nb\r\n"
        )

    def test_a_refusal_is_the_reply_and_nothing_is_stored(self):
        refusal = Refusal(550, "5.7.1", "Message rejected: no")
        session = self.session(FakeChecks(InboundDecision(refusal=refusal)))
        self.assertEqual(self.deliver(session), ["550 5.7.1 Message rejected: no"])
        self.assertEqual(session.intake.accept_calls, [])

    def test_checks_that_fail_are_a_temporary_failure(self):
        session = self.session(FakeChecks(fails=True))
        reply = self.deliver(session)
        self.assertEqual(reply[0][:10], "451 4.3.0 ")
        self.assertEqual(session.intake.accept_calls, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_relay_hosts_are_not_checked(self):
        checks = FakeChecks(InboundDecision(refusal=Refusal(550, "5.7.1", "no")))
        session = self.session(checks, relay_networks=("198.51.100.0/24",))
        self.assertEqual(self.deliver(session)[0][:3], "250")
        self.assertEqual(checks.calls, [])
        self.assertIsNone(session.intake.accept_calls[0].verdict)
