"""End to end: submission with STARTTLS and AUTH, MX delivery with DKIM, and bounces.

The appliance runs under twistd; DNS comes from a twisted.names server on loopback and
the remote MTA is a scripted SMTP server on loopback, both in this test process.
"""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import ssl
import time

import dkim as dkimpy
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from atollon_mail.delivery import dkim
from atollon_mail.delivery.mx import dns_resolver
from atollon_mail.store import domains, filing
from tests.builders import commands_succeed, mailbox_commands, started_appliance
from tests.dnsserver import start_dns_server
from tests.remote_mta import RemoteMTA, self_signed_tls_options

MESSAGE = (
    "From: Jane Doe <jane@acme.test>\r\n"
    "To: Bob <bob@remote.test>\r\n"
    "Subject: sent through the appliance\r\n"
    "Message-ID: <sending-1@acme.test>\r\n"
    "\r\n"
    "Hello Bob.\r\n"
)


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class SendingTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        certificates = os.path.abspath(self.mktemp())
        os.makedirs(certificates)
        self.remote = RemoteMTA(
            tls_options=self_signed_tls_options(certificates, "mx.remote.test"),
            rcpt={"nobody@remote.test": "550 5.1.1 <nobody@remote.test>: no such user here"},
        )
        self.remote_port = reactor.listenTCP(0, self.remote, interface="127.0.0.1")
        self.addCleanup(self.remote_port.stopListening)
        self.dns = start_dns_server(
            reactor,
            {
                "remote.test": {
                    "@": [("MX", 10, "mx.remote.test")],
                    "mx": [("A", "127.0.0.1")],
                },
                "acme.test": {"@": [("MX", 10, "mx.acme.test")], "mx": [("A", "127.0.0.1")]},
            },
        )
        self.addCleanup(self.dns.stop)
        self.appliance = yield started_appliance(
            self,
            tls=True,
            implicit_tls=True,
            delivery_config=(
                f"[delivery]\nnameservers = 127.0.0.1:{self.dns.port}\n"
                f"mx_port = {self.remote_port.getHost().port}\n"
            ),
        )
        commands = (
            *mailbox_commands("jane@acme.test", "jane"),
            ("dkim", "generate", "acme.test"),
            # Secondary mode, as on the vendor's pages: the company's own server forwards
            # sales@company.test to company.atollon.test; the mailbox sends as the real
            # address (its default identity).
            (
                "domain",
                "add",
                "company.atollon.test",
                "--mode",
                "secondary",
                "--primary-domain",
                "company.test",
            ),
            ("mailbox", "add", "sales@company.atollon.test", "--owner", "jane"),
        )
        yield threads.deferToThread(
            commands_succeed, self, self.appliance, commands, stdin="jane-password\n"
        )
        [key] = self.appliance.run_sync(domains.dkim_keys, "acme.test")
        self.dns.set_records(
            f"{key.selector}._domainkey.acme.test",
            [("TXT", dkim.txt_value(key.algorithm, key.public_key))],
        )

    def submit(self, recipients, sender="jane@acme.test", message=MESSAGE):
        """smtplib on the submission port: STARTTLS, AUTH, send (blocking: run in a thread)."""
        with smtplib.SMTP("127.0.0.1", self.appliance.submission_port, timeout=30) as client:
            client.ehlo("laptop.example.org")
            self.assertFalse(client.has_extn("auth"), "no AUTH before TLS")
            client.starttls(context=_unverified_context())
            client.ehlo("laptop.example.org")
            client.login("jane", "jane-password")
            return client.sendmail(sender, recipients, message.encode())

    @defer.inlineCallbacks
    def wait_for(self, predicate, what: str, seconds: float = 30):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = yield predicate()
            if result:
                return result
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.fail(f"timed out waiting for {what}")

    def jane_filings(self):
        def read():
            store = self.appliance.store()
            try:
                filings = store.run_sync(filing.list_filings, "jane@acme.test", 100)
                return [(f, store.run_sync(filing.message_raw, f.message.id)) for f in filings]
            finally:
                store.stop()

        return threads.deferToThread(read)

    @defer.inlineCallbacks
    def test_submitted_mail_arrives_dkim_signed_and_a_copy_is_in_sent(self):
        refused = yield threads.deferToThread(self.submit, ["bob@remote.test"])
        self.assertEqual(refused, {})
        yield self.wait_for(lambda: defer.succeed(self.remote.delivered), "the remote delivery")
        [envelope] = self.remote.delivered
        self.assertEqual(envelope.sender, "jane@acme.test")
        self.assertEqual(envelope.recipients, ("bob@remote.test",))
        self.assertTrue(envelope.tls, "opportunistic STARTTLS was used")
        self.assertTrue(envelope.data.startswith(b"DKIM-Signature:"))
        resolver = dns_resolver((self.dns.nameserver,), 5)
        verified = yield threads.deferToThread(dkim.verify, envelope.data, resolver)
        self.assertTrue(verified, "the DKIM signature verifies against the published key")
        filings = yield self.jane_filings()
        self.assertEqual([f.context.name for f, _ in filings], ["Sent (jane@acme.test)"])

    @defer.inlineCallbacks
    def test_remote_5xx_produces_a_dsn_in_the_senders_mailbox(self):
        yield threads.deferToThread(self.submit, ["nobody@remote.test"])

        @defer.inlineCallbacks
        def dsn_arrived():
            filings = yield self.jane_filings()
            return [raw for _, raw in filings if b"multipart/report" in raw]

        [dsn] = yield self.wait_for(dsn_arrived, "the bounce")
        report = email.message_from_bytes(dsn, policy=email.policy.default)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        status = list(report.iter_parts())[1].get_payload()
        self.assertEqual(status[1]["Final-Recipient"], "rfc822; nobody@remote.test")
        self.assertEqual(status[1]["Status"], "5.1.1")
        self.assertIn("no such user here", status[1]["Diagnostic-Code"])
        result = yield threads.deferToThread(self.appliance.cli, "queue", "list")
        self.assertIn("bounced", result.stdout)

    @defer.inlineCallbacks
    def test_secondary_mode_mailbox_sends_as_the_primary_domain_address(self):
        message = MESSAGE.replace("Jane Doe <jane@acme.test>", "Sales <sales@company.test>")
        yield threads.deferToThread(self.submit, ["bob@remote.test"], "sales@company.test", message)
        yield self.wait_for(lambda: defer.succeed(self.remote.delivered), "the remote delivery")
        [envelope] = self.remote.delivered
        self.assertEqual(envelope.sender, "sales@company.test")
        self.assertIn(b"From: Sales <sales@company.test>", envelope.data)

        def as_the_crm_address():
            with self.assertRaises(smtplib.SMTPSenderRefused) as refused:
                self.submit(["bob@remote.test"], "sales@company.atollon.test", message)
            return refused.exception.smtp_code

        code = yield threads.deferToThread(as_the_crm_address)
        self.assertEqual(code, 553)

    @defer.inlineCallbacks
    def test_identities_are_checked_again_for_every_message(self):
        def cli(*command, stdin=None):
            result = self.appliance.cli(*command, stdin=stdin)
            self.assertEqual(result.returncode, 0, result.stderr)

        def session():
            with smtplib.SMTP("127.0.0.1", self.appliance.submission_port, timeout=30) as client:
                client.starttls(context=_unverified_context())
                client.login("jane", "jane-password")
                forged = MESSAGE.replace("Subject:", "Sender: ceo@bank.example\r\nSubject:")
                with self.assertRaises(smtplib.SMTPDataError) as data:
                    client.sendmail("jane@acme.test", ["bob@remote.test"], forged.encode())
                # An administrator gives her mailbox a shared address: usable at once.
                cli("mailbox", "set", "jane@acme.test", "--identity", "desk@acme.test")
                desk = MESSAGE.replace("Jane Doe <jane@acme.test>", "Desk <desk@acme.test>")
                client.sendmail("desk@acme.test", ["bob@remote.test"], desk.encode())
                # Another mailbox's address since: refused in the same session.
                cli("user", "add", "ann", "--password-stdin", stdin="ann-password\n")
                cli("mailbox", "add", "desk@acme.test", "--owner", "ann")
                with self.assertRaises(smtplib.SMTPSenderRefused) as sender:
                    client.sendmail("desk@acme.test", ["bob@remote.test"], desk.encode())
                return data.exception, sender.exception

        data, sender = yield threads.deferToThread(session)
        self.assertEqual(
            (data.smtp_code, data.smtp_error),
            (553, b"5.7.1 Sender: header address <ceo@bank.example> not owned by user jane"),
        )
        self.assertEqual(
            (sender.smtp_code, sender.smtp_error),
            (553, b"5.7.1 <desk@acme.test>: Sender address rejected: not owned by user jane"),
        )
        yield self.wait_for(lambda: defer.succeed(self.remote.delivered), "the remote delivery")
        self.assertEqual([e.sender for e in self.remote.delivered], ["desk@acme.test"])

    @defer.inlineCallbacks
    def test_implicit_tls_port_offers_auth_at_once(self):
        def send():
            with smtplib.SMTP_SSL(
                "127.0.0.1",
                self.appliance.implicit_tls_port,
                timeout=30,
                context=_unverified_context(),
            ) as client:
                client.ehlo("laptop.example.org")
                self.assertFalse(client.has_extn("starttls"))
                client.login("jane", "jane-password")
                return client.sendmail("jane@acme.test", ["bob@remote.test"], MESSAGE.encode())

        self.assertEqual((yield threads.deferToThread(send)), {})
        yield self.wait_for(lambda: defer.succeed(self.remote.delivered), "the remote delivery")

    def test_wrong_password_is_refused(self):
        def login():
            with smtplib.SMTP("127.0.0.1", self.appliance.submission_port, timeout=30) as client:
                client.starttls(context=_unverified_context())
                with self.assertRaises(smtplib.SMTPAuthenticationError) as refused:
                    client.login("jane", "not-her-password")
                return refused.exception.smtp_code

        return threads.deferToThread(login).addCallback(self.assertEqual, 535)

    @defer.inlineCallbacks
    def test_a_long_line_leaves_quoted_printable_signed_with_rsa_and_ed25519(self):
        result = yield threads.deferToThread(
            self.appliance.cli,
            "dkim",
            "generate",
            "acme.test",
            "--selector",
            "ed",
            "--algorithm",
            "ed25519",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        keys = {
            key.algorithm: key for key in self.appliance.run_sync(domains.dkim_keys, "acme.test")
        }
        self.dns.set_records(
            "ed._domainkey.acme.test",
            [("TXT", dkim.txt_value("ed25519", keys["ed25519"].public_key))],
        )
        long_line = "word " * 300  # 1 500 octets on one line
        message = MESSAGE.replace(
            "\r\n\r\n",
            "\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: 7bit\r\n\r\n",
            1,
        ).replace("Hello Bob.\r\n", f"Hello Bob.\r\n{long_line}\r\nBye.\r\n")
        refused = yield threads.deferToThread(self.submit, ["bob@remote.test"], message=message)
        self.assertEqual(refused, {})
        yield self.wait_for(lambda: defer.succeed(self.remote.delivered), "the remote delivery")
        [envelope] = self.remote.delivered
        self.assertLessEqual(max(len(line) for line in envelope.data.split(b"\r\n")), 998)
        received = email.message_from_bytes(envelope.data, policy=email.policy.default)
        self.assertEqual(received["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(
            received.get_content().replace("\r\n", "\n"), f"Hello Bob.\n{long_line}\nBye.\n"
        )
        signatures = received.get_all("DKIM-Signature")
        self.assertEqual(len(signatures), 2)
        self.assertIn("a=rsa-sha256", "".join(signatures[0].split()))
        self.assertIn("a=ed25519-sha256", "".join(signatures[1].split()))
        resolver = dns_resolver((self.dns.nameserver,), 5)
        lookup = dkim._txt_lookup(resolver)

        def verify_each():
            checker = dkimpy.DKIM(envelope.data)
            return [bool(checker.verify(idx=index, dnsfunc=lookup)) for index in (0, 1)]

        self.assertEqual((yield threads.deferToThread(verify_each)), [True, True])
        # The Sent copy is what was sent, but for the signatures added on the way out.
        filings = yield self.jane_filings()
        [(sent, raw)] = filings
        self.assertTrue(envelope.data.endswith(raw))

    @defer.inlineCallbacks
    def test_a_long_line_that_cannot_be_re_encoded_is_refused_with_5_6_3(self):
        message = (
            "From: Jane Doe <jane@acme.test>\r\nTo: Bob <bob@remote.test>\r\n"
            "Subject: signed\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; "
            'protocol="application/pgp-signature"; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\n" + "word " * 300 + "\r\n"
            "--b\r\nContent-Type: application/pgp-signature\r\n\r\nsignature\r\n--b--\r\n"
        )

        def send():
            with self.assertRaises(smtplib.SMTPDataError) as refused:
                self.submit(["bob@remote.test"], message=message)
            return refused.exception

        problem = yield threads.deferToThread(send)
        self.assertEqual(problem.smtp_code, 554)
        self.assertTrue(problem.smtp_error.startswith(b"5.6.3 "), problem.smtp_error)
        self.assertIn(b"multipart/signed", problem.smtp_error)
        self.assertEqual((yield self.jane_filings()), [])
