"""End to end: forwarding under twistd, with SRS, bounces and loops.

DNS comes from a twisted.names server on loopback; one scripted remote MTA plays the
mail servers of remote.test (where mail is forwarded to) and of elsewhere.test (where
the original sender lives, and where bounces for it go).
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import time

import dkim as dkimpy
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from atollon_mail.delivery import dkim
from atollon_mail.delivery.mx import dns_resolver
from atollon_mail.store import domains
from tests.builders import commands_succeed, mailbox_commands, started_appliance
from tests.dnsserver import start_dns_server
from tests.remote_mta import RemoteMTA

MESSAGE = (
    b"From: Someone <someone@elsewhere.test>\r\n"
    b"To: Joe <joe@acme.test>\r\n"
    b"Subject: for joe, read at bob's\r\n"
    b"Message-ID: <forwarding-1@elsewhere.test>\r\n"
    b"\r\n"
    b"Hello Joe.\r\n"
)
NO_SRS = (
    "the forwarded copy kept its original sender: the appliance has no SRS (tap.py must "
    "hand Intake an SRS built with delivery.srs.load_or_create_srs_secret)"
)


class ForwardingTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.remote = RemoteMTA(
            # The first forwarded message is taken, the next refused for good.
            rcpt={"bob@remote.test": [250, "550 5.1.1 <bob@remote.test>: mailbox is full"]},
        )
        self.remote_port = reactor.listenTCP(0, self.remote, interface="127.0.0.1")
        self.addCleanup(self.remote_port.stopListening)
        mx = [("MX", 10, "mx.remote.test")]
        self.dns = start_dns_server(
            reactor,
            {
                "remote.test": {"@": mx, "mx": [("A", "127.0.0.1")]},
                "elsewhere.test": {"@": mx},
                "acme.test": {"@": [("MX", 10, "mx.acme.test")], "mx": [("A", "127.0.0.1")]},
            },
        )
        self.addCleanup(self.dns.stop)
        self.appliance = yield started_appliance(
            self,
            delivery_config=(
                f"[delivery]\nnameservers = 127.0.0.1:{self.dns.port}\n"
                f"mx_port = {self.remote_port.getHost().port}\n"
            ),
        )
        commands = (
            *mailbox_commands("joe@acme.test", "joe"),
            ("mailbox", "forward", "joe@acme.test", "--add", "bob@remote.test", "--on"),
        )
        yield threads.deferToThread(commands_succeed, self, self.appliance, commands, stdin="pw\n")

    @defer.inlineCallbacks
    def wait_for(self, predicate, what: str, seconds: float = 30):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.fail(f"timed out waiting for {what}\n{self.appliance.log()[-3000:]}")

    def send(self, sender: str, recipients, message: bytes = MESSAGE):
        """smtplib on the inbound port, from a host without relay rights (in a thread)."""
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=30) as client:
            client.ehlo("mx.elsewhere.test")
            return client.sendmail(sender, recipients, message)

    def delivered_to(self, address: str):
        return [e for e in self.remote.envelopes if e.accepted and address in e.recipients]

    @defer.inlineCallbacks
    def test_forwarded_with_srs_and_the_bounce_goes_back_to_the_sender(self):
        yield threads.deferToThread(self.send, "someone@elsewhere.test", ["joe@acme.test"])
        [forwarded] = yield self.wait_for(lambda: self.delivered_to("bob@remote.test"), "bob")
        self.assertRegex(forwarded.sender, r"^SRS0=[A-Z2-7]{4}=[A-Z2-7]{2}=", NO_SRS)
        self.assertTrue(
            forwarded.sender.endswith("=elsewhere.test=someone@acme.test"), forwarded.sender
        )
        # What the inbound checks found on arrival travels on above our Received: header.
        self.assertTrue(
            forwarded.data.startswith(
                b"Delivered-To: joe@acme.test\r\nAuthentication-Results: mx.acme.test;"
            ),
            forwarded.data[:200],
        )
        self.assertIn(b"\r\nReceived: from mx.elsewhere.test", forwarded.data)
        self.assertTrue(forwarded.data.endswith(MESSAGE))

        # The second forwarded message is refused: our runner bounces it to the SRS
        # address, which is ours, decodes it and sends the DSN on to the real sender.
        yield threads.deferToThread(self.send, "someone@elsewhere.test", ["joe@acme.test"])
        [dsn] = yield self.wait_for(
            lambda: self.delivered_to("someone@elsewhere.test"), "the bounce at elsewhere.test"
        )
        self.assertEqual(dsn.sender, "", "a bounce stays from the null sender")
        report = email.message_from_bytes(dsn.data, policy=email.policy.default)
        self.assertEqual(report.get_content_type(), "multipart/report")
        status = list(report.iter_parts())[1].get_payload()
        self.assertEqual(status[1]["Final-Recipient"], "rfc822; bob@remote.test")
        self.assertIn("mailbox is full", status[1]["Diagnostic-Code"])

        # A bounce from another server arrives on the inbound port for the SRS address:
        # accepted without relay rights and queued on to the original sender.
        bounce = b"From: MAILER-DAEMON@remote.test\r\nSubject: late bounce\r\n\r\nsorry\r\n"
        refused = yield threads.deferToThread(self.send, "", [forwarded.sender], bounce)
        self.assertEqual(refused, {})
        yield self.wait_for(
            lambda: len(self.delivered_to("someone@elsewhere.test")) == 2, "the relayed bounce"
        )
        relayed = self.delivered_to("someone@elsewhere.test")[1]
        self.assertEqual(relayed.sender, "")
        self.assertTrue(relayed.data.endswith(bounce))

    @defer.inlineCallbacks
    def test_forwarded_mail_carries_an_arc_seal_the_next_hop_verifies(self):
        yield threads.deferToThread(
            commands_succeed, self, self.appliance, [("dkim", "generate", "acme.test")]
        )
        (key,) = self.appliance.run_sync(domains.dkim_keys, "acme.test")
        self.dns.set_records(
            f"{key.selector}._domainkey.acme.test",
            [("TXT", dkim.txt_value(key.algorithm, key.public_key))],
        )
        yield threads.deferToThread(self.send, "someone@elsewhere.test", ["joe@acme.test"])
        [forwarded] = yield self.wait_for(lambda: self.delivered_to("bob@remote.test"), "bob")
        self.assertTrue(forwarded.data.startswith(b"ARC-Seal: i=1; cv=none;"), forwarded.data[:80])
        resolver = dns_resolver((self.dns.nameserver,), timeout=5)
        validation, sets, reason = yield threads.deferToThread(
            dkimpy.arc_verify, forwarded.data, dnsfunc=dkim._txt_lookup(resolver)
        )
        self.assertEqual((validation, reason), (b"pass", "success"))
        self.assertEqual(sets[0]["as-domain"], b"acme.test")
        self.assertIn(b"mx.acme.test;", sets[0]["aar-value"])

    @defer.inlineCallbacks
    def test_forged_srs_address_is_refused_at_rcpt(self):
        yield threads.deferToThread(self.send, "someone@elsewhere.test", ["joe@acme.test"])
        [forwarded] = yield self.wait_for(lambda: self.delivered_to("bob@remote.test"), "bob")
        self.assertTrue(forwarded.sender.startswith("SRS0="), NO_SRS)
        forged = forwarded.sender.replace("=someone@", "=victim@")

        def rcpt():
            with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=30) as client:
                client.ehlo("mx.remote.test")
                client.mail("")
                return client.rcpt(forged)

        code, text = yield threads.deferToThread(rcpt)
        self.assertEqual(code, 550)
        self.assertIn(b"5.1.1", text)
        self.assertIn(b"SRS signature", text)

    @defer.inlineCallbacks
    def test_a_message_back_at_the_forwarding_mailbox_is_refused_as_a_loop(self):
        looped = b"Delivered-To: joe@acme.test\r\n" + MESSAGE

        def send_looped():
            with self.assertRaises(smtplib.SMTPDataError) as raised:
                self.send("someone@elsewhere.test", ["joe@acme.test"], looped)
            return raised.exception

        refused = yield threads.deferToThread(send_looped)
        self.assertEqual(refused.smtp_code, 554)
        self.assertTrue(refused.smtp_error.startswith(b"5.4.6 forwarding loop detected"))
        self.assertEqual(self.remote.envelopes, [])
