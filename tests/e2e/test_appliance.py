"""End to end: the appliance started by twistd, real clients over loopback sockets."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time

from twisted.trial import unittest

from atollon_mail.store import filing
from atollon_mail.store.pool import Store
from tests.e2e.certs import write_self_signed

BIN = os.path.dirname(sys.executable)
MESSAGE = (
    b"From: Someone <someone@example.org>\r\n"
    b"To: jane@acme.test, sales@acme.test\r\n"
    b"Subject: end to end\r\n"
    b"Message-ID: <e2e-1@example.org>\r\n"
    b"\r\n"
    b"Hello over a real socket.\r\n"
    b".leading dot survives\r\n"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunningAppliance:
    """`twistd atollon-mail` in a subprocess with its own configuration and store."""

    def __init__(
        self,
        directory: str,
        tls: bool = False,
        extra: str = "",
        delivery_config: str = "",
        implicit_tls: bool = False,
        preexec_fn=None,
    ):
        self.preexec_fn = preexec_fn  # run in the child before twistd (resource limits)
        self.delivery_config = delivery_config
        self.implicit_tls_port = free_port() if implicit_tls else None
        self.directory = directory
        self.smtp_port = free_port()
        self.web_port = free_port()
        self.submission_port = free_port()
        tls_lines = ""
        if tls:
            certificate, key = write_self_signed(directory, "mx.acme.test")
            tls_lines = f"tls_certificate = {certificate}\ntls_key = {key}\n"
        self.config = os.path.join(directory, "atollon-mail.ini")
        with open(self.config, "w") as config_file:
            config_file.write(
                f"[appliance]\nhostname = mx.acme.test\ndata_dir = {directory}/data\n"
                f"[database]\nurl = sqlite:///{directory}/data/store.sqlite\n"
                f"[smtp]\nlisten = tcp:{self.smtp_port}:interface=127.0.0.1\n{tls_lines}{extra}"
                f"[web]\nlisten = tcp:{self.web_port}:interface=127.0.0.1\n"
                f"[submission]\nlisten = tcp:{self.submission_port}:interface=127.0.0.1\n"
                + (
                    f"tls_listen = tcp:{self.implicit_tls_port}:interface=127.0.0.1\n"
                    if implicit_tls
                    else ""
                )
                + self.delivery_config
            )
        self.process = None

    def start(self) -> None:
        self.log_path = os.path.join(self.directory, "twistd.log")
        self.process = subprocess.Popen(
            [
                os.path.join(BIN, "twistd"),
                "--nodaemon",
                "--pidfile=",
                "--logfile",
                self.log_path,
                "atollon-mail",
                "--config",
                self.config,
            ],
            cwd=self.directory,
            preexec_fn=self.preexec_fn,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the appliance did not listen: {self.log()}")

    def log(self) -> str:
        with open(self.log_path) as log_file:
            return log_file.read()

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [os.path.join(BIN, "atollon-mail"), "--config", self.config, *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.directory,
        )

    def store(self) -> Store:
        store = Store.from_url(f"sqlite:///{self.directory}/data/store.sqlite", None)
        return store


class ApplianceTestCase(unittest.TestCase):
    tls = False
    extra = ""

    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.appliance = RunningAppliance(directory, tls=self.tls, extra=self.extra)
        self.appliance.start()
        self.addCleanup(self.appliance.stop)
        for command in (
            ("domain", "add", "acme.test"),
            ("user", "add", "jane", "--password-stdin"),
            ("user", "add", "joe", "--password-stdin"),
            ("mailbox", "add", "jane@acme.test", "--owner", "jane"),
            ("mailbox", "add", "joe@acme.test", "--owner", "joe"),
            ("alias", "add", "sales@acme.test", "--mailbox", "joe@acme.test"),
            ("mailbox", "add", "gone@acme.test", "--owner", "joe", "--inactive"),
        ):
            result = self.appliance.cli(*command, stdin="a-password\n")
            self.assertEqual(result.returncode, 0, result.stderr)

    def filings(self, address: str):
        store = self.appliance.store()
        try:
            return store.run_sync(filing.list_filings, address)
        finally:
            store.stop()

    def raw(self, message_id: int) -> bytes:
        store = self.appliance.store()
        try:
            return store.run_sync(filing.message_raw, message_id)
        finally:
            store.stop()


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
        # The final delivery's Return-Path on top (RFC 5321 4.4), then our trace field.
        self.assertTrue(
            raw.startswith(
                b"Return-Path: <someone@example.org>\r\n"
                b"Received: from client.example.org ([127.0.0.1])"
            ),
            raw[:120],
        )
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
