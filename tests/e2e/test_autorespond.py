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
import os
import smtplib
import socket
import ssl
import subprocess
import sys
import time

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from atollon_mail.store import filing as filing_ops
from atollon_mail.store import queue as queue_ops
from atollon_mail.store.pool import Store
from tests.dnsserver import start_dns_server
from tests.e2e.certs import write_self_signed

BIN = os.path.dirname(sys.executable)

# The appliance's own service tree, with the auto-responder listening on its intake if the
# tree does not attach one itself.


def free_port_on(*hosts: str) -> int:
    """A port number free on every one of the loopback addresses."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no port free on all of {hosts}")


def free_port() -> int:
    return free_port_on("127.0.0.1")


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class LoopbackAppliance:
    """`twistd` running one appliance whose MX side listens on its own loopback address."""

    def __init__(self, directory: str, domain: str, interface: str, mx_port: int, dns_port: int):
        self.directory = directory
        self.domain = domain
        self.interface = interface
        self.mx_port = mx_port
        self.submission_port = free_port()
        certificate, key = write_self_signed(directory, f"mx.{domain}")
        self.config = os.path.join(directory, "atollon-mail.ini")
        self.database_url = f"sqlite:///{directory}/data/store.sqlite"
        with open(self.config, "w") as config_file:
            config_file.write(
                f"[appliance]\nhostname = mx.{domain}\ndata_dir = {directory}/data\n"
                f"[database]\nurl = {self.database_url}\n"
                f"[smtp]\nlisten = tcp:{mx_port}:interface={interface}\n"
                f"tls_certificate = {certificate}\ntls_key = {key}\ngreet_pause = 0\n"
                f"[web]\nlisten = tcp:{free_port()}:interface=127.0.0.1\n"
                f"[submission]\nlisten = tcp:{self.submission_port}:interface=127.0.0.1\n"
                f"[delivery]\nnameservers = 127.0.0.1:{dns_port}\nmx_port = {mx_port}\n"
                # Should the other appliance be slow to answer, the retry comes soon.
                "retry_first = 1\nretry_max = 2\n"
            )
        self.log_path = os.path.join(directory, "twistd.log")
        self.process = None

    def environment(self) -> dict[str, str]:
        return {**os.environ, "ATOLLON_MAIL_CONFIG": self.config}

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                os.path.join(BIN, "twistd"),
                "--nodaemon",
                "--no_save",
                "--pidfile=",
                "--logfile",
                self.log_path,
                "atollon-mail",
                "--config",
                self.config,
            ],
            cwd=self.directory,
            env=self.environment(),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited: {self.log()}")
            try:
                socket.create_connection((self.interface, self.mx_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the appliance did not listen: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def log(self) -> str:
        with open(self.log_path) as log_file:
            return log_file.read()

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [os.path.join(BIN, "atollon-mail"), "--config", self.config, *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.directory,
            env=self.environment(),
        )

    def read(self, operation, *args):
        store = Store.from_url(self.database_url, None)
        try:
            return store.run_sync(operation, *args)
        finally:
            store.stop()

    def mail(self, address: str) -> list[tuple[str, bytes]]:
        """(envelope sender, raw) of every message in the mailbox, oldest first."""
        filings = self.read(filing_ops.list_filings, address, 1000)
        return [
            (filing.message.envelope_sender, self.read(filing_ops.message_raw, filing.message.id))
            for filing in reversed(filings)
        ]

    def queue(self):
        return self.read(queue_ops.queue_list)


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
        self.one = self.make_appliance("one.test", "127.0.0.2", mx_port)
        self.two = self.make_appliance("two.test", "127.0.0.3", mx_port)
        for appliance, user in ((self.one, "alice"), (self.two, "bob")):
            yield threads.deferToThread(appliance.start)
            self.addCleanup(appliance.stop)
            address = f"{user}@{appliance.domain}"
            for command, stdin in (
                (("domain", "add", appliance.domain), None),
                (("user", "add", user, "--password-stdin"), f"{user}-password\n"),
                (("mailbox", "add", address, "--owner", user), None),
                (
                    ("mailbox", "autorespond", address, "--on", "--body-file", "-"),
                    f"{user.title()} is away this week.\n",
                ),
            ):
                result = yield threads.deferToThread(appliance.cli, *command, stdin=stdin)
                self.assertEqual(result.returncode, 0, result.stderr)

    def make_appliance(self, domain: str, interface: str, mx_port: int) -> LoopbackAppliance:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return LoopbackAppliance(directory, domain, interface, mx_port, self.dns.port)

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
