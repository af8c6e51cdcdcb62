"""End to end: 1 100 slow connections against the appliance at an open-file limit of 1024.

The appliance runs under twistd with RLIMIT_NOFILE 1024 (systemd's default). The test
opens 1 100 connections to inbound SMTP, submission and the web from several 127.0.0.x
addresses and keeps the admitted ones trickling a byte at a time. Mail from the trusted
address is still accepted and stored, /health still answers, the connections over a cap
got `421 4.7.0` (SMTP) or 503 (web). Port 25 was full, so its trickling sessions are cut
at the stress idle timeout (10 s, the default), and then an untrusted sender gets in too.
"""

from __future__ import annotations

import http.client
import json
import resource
import selectors
import smtplib
import socket
import ssl
import time

from twisted.internet import defer, threads
from twisted.trial import unittest

from atollon_mail.store import filing
from tests.builders import commands_succeed, mailbox_commands, new_appliance, started_appliance
from tests.e2e.test_appliance import MESSAGE

DESCRIPTOR_LIMIT = 1024
STRESS_IDLE_TIMEOUT = 10  # [smtp] stress_idle_timeout, the default
CAP, PER_CLIENT = 100, 50  # the defaults of every listener
BATCH = 25


def limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTOR_LIMIT, DESCRIPTOR_LIMIT))


class Flood:
    """Many client sockets, connected in batches, read and written with one selector."""

    def __init__(self):
        self.sockets: list[tuple[socket.socket, str, str]] = []  # (socket, listener, source)
        self.received: dict[socket.socket, bytes] = {}
        self.closed: set[socket.socket] = set()

    def open(self, listener: str, port: int, sources: list[str], count_each: int) -> None:
        """Connect in small batches, paced to the server so that its accept queue (50)
        never overflows into SYN retries: SMTP batches until each got its first reply."""
        for source in sources:
            for start in range(0, count_each, BATCH):
                batch = []
                for _ in range(min(BATCH, count_each - start)):
                    client = socket.socket()
                    client.setblocking(False)
                    client.bind((source, 0))
                    client.connect_ex(("127.0.0.1", port))
                    batch.append(client)
                    self.sockets.append((client, listener, source))
                    self.received[client] = b""
                self._wait_connected(batch)
                if listener == "web":
                    time.sleep(0.05)  # admitted web clients get no answer to wait for
                else:
                    self.read(10, until=lambda batch=batch: self.answered(batch))

    def answered(self, batch: list[socket.socket]) -> bool:
        return all(self.received[client] or client in self.closed for client in batch)

    def _wait_connected(self, batch: list[socket.socket]) -> None:
        with selectors.DefaultSelector() as selector:
            for client in batch:
                selector.register(client, selectors.EVENT_WRITE)
            waiting, deadline = len(batch), time.monotonic() + 20
            while waiting and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=1):
                    selector.unregister(key.fileobj)
                    waiting -= 1
        if waiting:
            raise AssertionError(f"{waiting} connections were not established")

    def read(self, seconds: float, until=None) -> None:
        """Collect what the server sends, for `seconds` or until until() is true."""
        deadline = time.monotonic() + seconds
        with selectors.DefaultSelector() as selector:
            for client, _, _ in self.sockets:
                if client not in self.closed:
                    selector.register(client, selectors.EVENT_READ)
            while time.monotonic() < deadline and (until is None or not until()):
                for key, _ in selector.select(timeout=0.2):
                    client = key.fileobj
                    try:
                        data = client.recv(4096)
                    except (ConnectionResetError, BlockingIOError):
                        data = b""
                    if data:
                        self.received[client] += data
                    else:
                        self.closed.add(client)
                        selector.unregister(client)

    def trickle(self, listener: str, byte: bytes) -> None:
        for client, name, _ in self.sockets:
            if name == listener and client not in self.closed and self.admitted(client):
                try:
                    client.send(byte)
                except OSError:
                    self.closed.add(client)

    def admitted(self, client: socket.socket) -> bool:
        received = self.received[client]
        return not (received.startswith(b"421 ") or received.startswith(b"HTTP/1.1 503"))

    def first_lines(self, listener: str) -> list[bytes]:
        return [
            self.received[client].split(b"\r\n", 1)[0]
            for client, name, _ in self.sockets
            if name == listener
        ]

    def close(self) -> None:
        for client, _, _ in self.sockets:
            client.close()
        self.sockets = []


class SlowConnectionFloodTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 2048:
            raise unittest.SkipTest(f"this test needs 2048 open files; the hard limit is {hard}")
        if soft != resource.RLIM_INFINITY and soft < 2048:
            resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        # Only 127.0.0.1 is trusted: the flood comes from 127.0.0.2 and up.
        self.appliance = yield started_appliance(
            self,
            extra="greet_pause = 0\ntrusted_networks = 127.0.0.1/32\n",
            preexec_fn=limit_descriptors,
        )
        yield threads.deferToThread(
            commands_succeed, self, self.appliance, mailbox_commands(), stdin="a-password\n"
        )
        self.flood = Flood()
        self.addCleanup(self.flood.close)

    def health(self) -> tuple[int, dict]:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.appliance.web_port, timeout=10, source_address=("127.0.0.1", 0)
        )
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def test_mail_and_health_survive_1100_slow_connections_at_1024_descriptors(self):
        appliance, flood = self.appliance, self.flood
        with open(f"/proc/{appliance.process.pid}/limits") as limits:
            self.assertIn("Max open files            1024                 1024", limits.read())
        started = time.monotonic()
        sources = [f"127.0.0.{n}" for n in range(2, 14)]
        # 400 to the web from 4 addresses, each stalled inside its request head.
        flood.open("web", appliance.web_port, sources[0:4], 100)
        flood.trickle("web", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        # 100 to submission from one address, 600 to port 25 from six.
        flood.open("submission", appliance.submission_port, sources[4:5], 100)
        flood.open("smtp", appliance.smtp_port, sources[5:11], 100)
        self.assertEqual(len(flood.sockets), 1100)
        # Refused web clients are answered after a short wait for their request head.
        flood.read(4)
        flood.trickle("smtp", b"E")
        flood.trickle("web", b"a")

        # Mail from the trusted address is accepted and stored,
        with smtplib.SMTP(
            "127.0.0.1", appliance.smtp_port, timeout=10, source_address=("127.0.0.1", 0)
        ) as client:
            self.assertEqual(
                client.sendmail("someone@example.org", ["jane@acme.test"], MESSAGE), {}
            )
        filings = appliance.run_sync(filing.list_filings, "jane@acme.test")
        self.assertEqual(len(filings), 1)
        # and /health answers, while port 25 is full: an untrusted newcomer is refused.
        status, body = self.health()
        self.assertEqual((status, body["status"], body["messages_stored"]), (200, "ok", 1))
        with socket.create_connection(
            ("127.0.0.1", appliance.smtp_port), timeout=10, source_address=(sources[11], 0)
        ) as probe:
            self.assertTrue(probe.recv(512).startswith(b"421 4.7.0 "))
        smtp, submission, web = (flood.first_lines(name) for name in ("smtp", "submission", "web"))
        greeting = b"220 mx.acme.test ESMTP atollon-mail"
        from_client = (
            b"421 4.7.0 mx.acme.test Error: too many connections from your address, try again later"
        )
        full = b"421 4.7.0 mx.acme.test Error: too many connections, try again later"
        self.assertEqual(smtp.count(greeting), CAP)
        self.assertGreaterEqual(smtp.count(from_client), PER_CLIENT)  # the first address's
        self.assertEqual(smtp.count(from_client) + smtp.count(full), 600 - CAP)
        for source in sources[5:11]:
            greeted = [
                client
                for client, name, address in flood.sockets
                if address == source and flood.received[client].startswith(greeting)
            ]
            self.assertLessEqual(len(greeted), PER_CLIENT, source)
        self.assertEqual(submission.count(greeting), PER_CLIENT)
        self.assertEqual(submission.count(from_client), 100 - PER_CLIENT)
        open_web = [
            client
            for client, name, _ in flood.sockets
            if name == "web" and client not in flood.closed
        ]
        self.assertEqual(len(open_web), CAP)  # admitted, still waiting for their heads
        # The rest got a 503, or were closed without one once 50 refusals were waiting
        # for their request heads at once (each holds a descriptor for a moment).
        answered = web.count(b"HTTP/1.1 503 Service Unavailable")
        self.assertGreaterEqual(answered, 50)
        self.assertEqual(answered + web.count(b""), 400)

        # The trickling SMTP sessions gain nothing: port 25 was full, so they are cut at
        # the stress idle timeout (10 s) instead of 300 s.
        full_at = time.monotonic()

        def all_smtp_cut() -> bool:
            return all(
                b"421 4.4.2" in flood.received[client]
                for client, name, _ in flood.sockets
                if name == "smtp" and flood.received[client].startswith(greeting)
            )

        while not all_smtp_cut() and time.monotonic() - started < 45:
            flood.trickle("smtp", b"H")
            flood.read(0.5, until=all_smtp_cut)
        self.assertTrue(all_smtp_cut(), "every trickling session got 421 4.4.2")
        self.assertLess(time.monotonic() - full_at, STRESS_IDLE_TIMEOUT + 5)
        # Port 25 has room again: mail from an untrusted address goes through as well.
        with smtplib.SMTP(
            "127.0.0.1", appliance.smtp_port, timeout=10, source_address=(sources[11], 0)
        ) as client:
            self.assertEqual(client.sendmail("other@example.org", ["jane@acme.test"], MESSAGE), {})
        status, body = self.health()
        self.assertEqual((status, body["messages_stored"]), (200, 2))
        self.assertIsNone(appliance.process.poll(), "the appliance still runs")
        self.assertNotIn("Too many open files", appliance.log())
        self.assertNotIn("Out of file descriptors", appliance.log())
        self.assertLess(time.monotonic() - started, 50)


class ImplicitTlsCapTests(unittest.TestCase):
    def test_a_refused_client_on_port_465_reads_its_421_inside_tls(self):
        appliance = new_appliance(
            self,
            tls=True,
            implicit_tls=True,
            extra="trusted_networks = 127.0.0.1/32\n",
            delivery_config="max_connections_per_client = 1\n",  # into [submission]
        )
        appliance.start()
        self.addCleanup(appliance.stop)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def connect() -> ssl.SSLSocket:
            plain = socket.create_connection(
                ("127.0.0.1", appliance.implicit_tls_port),
                timeout=10,
                source_address=("127.0.0.2", 0),
            )
            client = context.wrap_socket(plain)
            self.addCleanup(client.close)
            return client

        first = connect()
        self.assertTrue(first.recv(512).startswith(b"220 mx.acme.test ESMTP"))
        second = connect()
        self.assertEqual(
            second.recv(512),
            b"421 4.7.0 mx.acme.test Error: too many connections from your address, "
            b"try again later\r\n",
        )
        first.sendall(b"QUIT\r\n")
        self.assertTrue(first.recv(512).startswith(b"221 2.0.0"))
