"""End to end: the appliance started by twistd, real clients over loopback sockets."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess

from twisted.internet import defer, threads
from twisted.trial import unittest

from atollon_mail.store import filing
from tests.builders import commands_succeed, mailbox_commands, started_appliance

MESSAGE = (
    b"From: Someone <someone@example.org>\r\n"
    b"To: jane@acme.test, sales@acme.test\r\n"
    b"Subject: end to end\r\n"
    b"Message-ID: <e2e-1@example.org>\r\n"
    b"\r\n"
    b"Hello over a real socket.\r\n"
    b".leading dot survives\r\n"
)


class ApplianceTestCase(unittest.TestCase):
    tls = False
    extra = ""

    @defer.inlineCallbacks
    def setUp(self):
        self.appliance = yield started_appliance(self, tls=self.tls, extra=self.extra)
        commands = (
            *mailbox_commands("jane@acme.test", "jane"),
            ("user", "add", "joe", "--password-stdin"),
            ("mailbox", "add", "joe@acme.test", "--owner", "joe"),
            ("alias", "add", "sales@acme.test", "--mailbox", "joe@acme.test"),
            ("mailbox", "add", "gone@acme.test", "--owner", "joe", "--inactive"),
        )
        yield threads.deferToThread(
            commands_succeed, self, self.appliance, commands, stdin="a-password\n"
        )

    def filings(self, address: str):
        return self.appliance.run_sync(filing.list_filings, address)

    def raw(self, message_id: int) -> bytes:
        return self.appliance.run_sync(filing.message_raw, message_id)


class ReceivingTests(ApplianceTestCase):
    def test_first_start_printed_and_stored_the_admin_password(self):
        with open(os.path.join(self.appliance.directory, "data", "initial-admin-password")) as f:
            password = f.read().strip()
        self.assertIn(password, self.appliance.log())

    def test_smtplib_delivers_once_and_files_for_each_recipient(self):
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=10) as client:
            code, features = client.ehlo("client.example.org")
            self.assertEqual(code, 250)
            for keyword in (
                b"PIPELINING",
                b"SIZE",
                b"8BITMIME",
                b"SMTPUTF8",
                b"ENHANCEDSTATUSCODES",
            ):
                self.assertIn(keyword, features)
            refused = client.sendmail(
                "someone@example.org", ["Jane@ACME.test", "sales+offers@acme.test"], MESSAGE
            )
        self.assertEqual(refused, {})
        jane, joe = self.filings("jane@acme.test"), self.filings("joe@acme.test")
        self.assertEqual((len(jane), len(joe)), (1, 1))
        self.assertEqual(jane[0].message.id, joe[0].message.id, "stored once, filed twice")
        self.assertEqual(jane[0].context.kind, "todo")
        raw = self.raw(jane[0].message.id)
        # The final delivery's Return-Path on top (RFC 5321 4.4), then what the inbound
        # checks found (Authentication-Results, X-Spam-Status), then our trace field.
        self.assertTrue(
            raw.startswith(b"Return-Path: <someone@example.org>\r\nAuthentication-Results: "),
            raw[:120],
        )
        trace = raw.index(b"\r\nReceived: from client.example.org ([127.0.0.1])")
        self.assertLess(raw.index(b"\r\nX-Spam-Status: "), trace)
        self.assertTrue(raw.endswith(MESSAGE), "dot-stuffing by the client is undone exactly")

    def test_refusals_at_rcpt(self):
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=10) as client:
            client.ehlo("client.example.org")
            client.mail("someone@example.org")
            self.assertEqual(client.rcpt("nobody@acme.test")[0], 550)
            self.assertEqual(client.rcpt("gone@acme.test")[0], 550)
            code, text = client.rcpt("victim@elsewhere.example")
            self.assertEqual(code, 554)
            self.assertIn(b"5.7.1", text)
            self.assertEqual(client.rcpt("jane%elsewhere.example@acme.test")[0], 554)

    def test_smuggled_message_is_refused_whole_over_a_socket(self):
        smuggle = (
            b"EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\n"
            b"RCPT TO:<jane@acme.test>\r\nDATA\r\n"
            b"Subject: one\r\n\r\nfirst\n.\nMAIL FROM:<b@example.org>\r\n"
            b"RCPT TO:<jane@acme.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\nQUIT\r\n"
        )
        with socket.create_connection(("127.0.0.1", self.appliance.smtp_port), timeout=10) as s:
            s.sendall(smuggle)
            received = b""
            while not received.endswith(b"221 2.0.0 Bye\r\n") and b"\r\n221 " not in received:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += chunk
        replies = [line[:3] for line in received.split(b"\r\n") if line[:1].isdigit()]
        self.assertIn(b"550", replies)
        self.assertNotIn(b"250 2.0.0", received)
        self.assertEqual(self.filings("jane@acme.test"), [])

    def test_message_acknowledged_before_kill_9_survives_restart(self):
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=10) as client:
            client.sendmail("someone@example.org", ["jane@acme.test"], MESSAGE)
            self.appliance.stop(signal.SIGKILL)
        self.appliance.start()
        self.assertEqual(len(self.filings("jane@acme.test")), 1)

    def test_swaks_with_pipelining(self):
        swaks = shutil.which("swaks")
        if swaks is None:
            raise unittest.SkipTest("swaks is not installed (make test installs it as root)")
        result = subprocess.run(
            [
                swaks,
                "--server",
                f"127.0.0.1:{self.appliance.smtp_port}",
                "--pipeline",
                "--from",
                "someone@example.org",
                "--to",
                "joe@acme.test",
                "--header",
                "Subject: from swaks",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(self.filings("joe@acme.test")[0].message.subject, "from swaks")

    def test_redirected_address_and_its_aliases_land_in_the_new_mailbox(self):
        # joe@acme.test (alias sales@) leaves; his mail should reach jane from now on.
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=10) as client:
            client.sendmail("someone@example.org", ["joe@acme.test"], MESSAGE)
        result = self.appliance.cli(
            "mailbox", "redirect", "joe@acme.test", "--to", "jane@acme.test"
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("sales@acme.test", result.stdout)
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=10) as client:
            refused = client.sendmail(
                "someone@example.org", ["joe@acme.test", "Sales+x@acme.test"], MESSAGE
            )
        self.assertEqual(refused, {})
        [to_jane] = self.filings("jane@acme.test")  # stored once for both addresses
        self.assertEqual(to_jane.message.subject, "end to end")
        self.assertEqual(len(self.filings("joe@acme.test")), 1, "joe's old mail stays readable")
        shown = self.appliance.cli("mailbox", "show", "joe@acme.test").stdout
        self.assertIn("redirected to jane@acme.test", shown)

    def test_health(self):
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{self.appliance.web_port}/health", timeout=10) as reply:
            self.assertEqual(reply.status, 200)
            self.assertIn(b'"status": "ok"', reply.read())


class TlsTests(ApplianceTestCase):
    tls = True

    def test_starttls_with_smtplib(self):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=10) as client:
            client.ehlo("client.example.org")
            self.assertTrue(client.has_extn("starttls"))
            client.starttls(context=context)
            client.ehlo("client.example.org")
            self.assertFalse(client.has_extn("starttls"))
            client.sendmail("someone@example.org", ["jane@acme.test"], MESSAGE)
        raw = self.raw(self.filings("jane@acme.test")[0].message.id)
        self.assertIn(b"with ESMTPS", raw.split(b"\r\n\r\n")[0])

    def test_swaks_starttls(self):
        swaks = shutil.which("swaks")
        if swaks is None:
            raise unittest.SkipTest("swaks is not installed (make test installs it as root)")
        result = subprocess.run(
            [
                swaks,
                "--server",
                f"127.0.0.1:{self.appliance.smtp_port}",
                "--tls",
                "--from",
                "someone@example.org",
                "--to",
                "jane@acme.test",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(len(self.filings("jane@acme.test")), 1)
