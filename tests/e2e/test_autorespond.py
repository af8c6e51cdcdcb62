"""End to end: two appliances, both out of office, exchange at most one auto-reply each.

one.test listens on 127.0.0.2 and two.test on 127.0.0.3, on the same port, which is the
`mx_port` both deliver to; a twisted.names server in this test process answers their MX
and A queries. alice@one.test writes to bob@two.test through submission (STARTTLS and
AUTH); bob's auto-reply comes back from <> with Auto-Submitted, and alice's responder
must leave it unanswered.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
import time

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from tests.builders import commands_succeed, mailbox_commands, started_appliance
from tests.dnsserver import start_dns_server
from tests.e2e.appliance import LoopbackAppliance, free_port_on


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _auto_replies(mail: list[tuple[str, bytes]]) -> list[email.message.EmailMessage]:
    found = []
    for sender, raw in mail:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        if message["Auto-Submitted"] is not None:
            found.append((sender, message))
    return found


def _message(number: int) -> bytes:
    return (
        "From: Alice <alice@one.test>\r\n"
        "To: Bob <bob@two.test>\r\n"
        f"Subject: question {number}\r\n"
        f"Message-ID: <question-{number}@one.test>\r\n"
        "\r\n"
        "Are you there?\r\n"
    ).encode()


class TwoAppliancesTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.dns = start_dns_server(
            reactor,
            {
                "one.test": {"@": [("MX", 10, "mx.one.test")], "mx": [("A", "127.0.0.2")]},
                "two.test": {"@": [("MX", 10, "mx.two.test")], "mx": [("A", "127.0.0.3")]},
            },
        )
        self.addCleanup(self.dns.stop)
        mx_port = free_port_on("127.0.0.2", "127.0.0.3")
        self.one = yield self.started("one.test", "127.0.0.2", mx_port)
        self.two = yield self.started("two.test", "127.0.0.3", mx_port)
        for appliance, user in ((self.one, "alice"), (self.two, "bob")):
            address = f"{user}@{appliance.domain}"
            yield threads.deferToThread(
                commands_succeed,
                self,
                appliance,
                mailbox_commands(address, user),
                stdin=f"{user}-password\n",
            )
            yield threads.deferToThread(
                commands_succeed,
                self,
                appliance,
                [("mailbox", "autorespond", address, "--on", "--body-file", "-")],
                stdin=f"{user.title()} is away this week.\n",
            )

    def started(self, domain: str, interface: str, mx_port: int):
        return started_appliance(
            self,
            LoopbackAppliance,
            domain=domain,
            interface=interface,
            mx_port=mx_port,
            dns_port=self.dns.port,
        )

    def submit(self, message: bytes):
        """alice sends to bob through one.test's submission port (blocking)."""
        with smtplib.SMTP("127.0.0.1", self.one.submission_port, timeout=30) as client:
            client.ehlo("laptop.one.test")
            client.starttls(context=_unverified_context())
            client.ehlo("laptop.one.test")
            client.login("alice", "alice-password")
            return client.sendmail("alice@one.test", ["bob@two.test"], message)

    @defer.inlineCallbacks
    def wait_for(self, predicate, what: str, seconds: float = 45):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = yield threads.deferToThread(predicate)
            if result:
                return result
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.fail(
            f"timed out waiting for {what}\none.test:\n{self.one.log()}\n"
            f"two.test:\n{self.two.log()}"
        )

    def quiet(self) -> bool:
        """Nothing waits in either queue."""
        return all(
            entry.state in ("delivered", "bounced")
            for appliance in (self.one, self.two)
            for entry in appliance.queue()
        )

    @defer.inlineCallbacks
    def settle(self):
        """Both queues empty, and long enough after for a wrong reply to show."""
        yield self.wait_for(self.quiet, "both queues to empty")
        yield task.deferLater(reactor, 1.5, lambda: None)
        yield self.wait_for(self.quiet, "both queues to empty")

    @defer.inlineCallbacks
    def test_one_auto_reply_each_way_at_most(self):
        refused = yield threads.deferToThread(self.submit, _message(1))
        self.assertEqual(refused, {})
        [(sender, reply)] = yield self.wait_for(
            lambda: _auto_replies(self.one.mail("alice@one.test")), "bob's auto-reply"
        )
        self.assertEqual(sender, "")
        self.assertEqual(reply["From"], "bob@two.test")
        self.assertEqual(reply["To"], "alice@one.test")
        self.assertEqual(reply["Auto-Submitted"], "auto-replied")
        self.assertEqual(reply["In-Reply-To"], "<question-1@one.test>")
        self.assertIn("Bob is away this week.", reply.get_content())
        yield self.settle()

        # Bob has the question and nothing else: alice's responder left the reply alone.
        bob = yield threads.deferToThread(self.two.mail, "bob@two.test")
        self.assertEqual([sender for sender, _ in bob], ["alice@one.test"])
        self.assertEqual(_auto_replies(bob), [])
        one_queue = yield threads.deferToThread(self.one.queue)
        two_queue = yield threads.deferToThread(self.two.queue)
        self.assertEqual(
            [(e.envelope_sender, e.address, e.state) for e in one_queue],
            [("alice@one.test", "bob@two.test", "delivered")],
        )
        self.assertEqual(
            [(e.envelope_sender, e.address, e.state) for e in two_queue],
            [("", "alice@one.test", "delivered")],
        )

        # A second question within the interval: delivered, and not answered again.
        yield threads.deferToThread(self.submit, _message(2))
        yield self.wait_for(lambda: len(self.two.mail("bob@two.test")) == 2, "the second question")
        yield self.settle()
        alice = yield threads.deferToThread(self.one.mail, "alice@one.test")
        self.assertEqual(len(_auto_replies(alice)), 1)
        two_queue = yield threads.deferToThread(self.two.queue)
        self.assertEqual(len(two_queue), 1)
        bob = yield threads.deferToThread(self.two.mail, "bob@two.test")
        self.assertEqual(_auto_replies(bob), [])
