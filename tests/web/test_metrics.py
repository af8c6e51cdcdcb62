"""GET /metrics: who may read it (loopback, the bearer token; not another address, not
through a proxy), what it serves after real SMTP sessions into a real store (counters,
the store's latency histogram, the queue gauges), and that promtool accepts it; on
SQLite and on PostgreSQL."""

from __future__ import annotations

import shutil
import smtplib
import subprocess

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, task, threads
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial import unittest
from twisted.web.server import Site

from atollon_mail.config import parse_config
from atollon_mail.delivery.intake import Intake
from atollon_mail.events import Events
from atollon_mail.metrics import Metrics
from atollon_mail.smtp.policies import MXPolicy
from atollon_mail.smtp.server import SMTPServerFactory
from atollon_mail.web.bodylimit import BodyLimitedRequest
from atollon_mail.web.metrics import GAUGES_INTERVAL, MetricsResource
from tests import builders
from tests.smtp.fakes import make_settings
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_live import eventually

HOSTNAME = "mx.acme.test"
TOKEN = "s3cret-scrape-token"
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
PROMTOOL = shutil.which("promtool")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def send_two(port: int) -> tuple[tuple[int, bytes], tuple[int, bytes], tuple[int, bytes]]:
    """One SMTP session (blocking: run it in a thread): a recipient refused, a message
    accepted, a message refused at the end of DATA (a NUL byte); the three replies."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as client:
        client.ehlo("client.test")
        client.mail("ann@far.test")
        unknown = client.rcpt("nobody@acme.test")
        client.rcpt("jane@acme.test")
        accepted = client.data(b"Subject: hi\r\n\r\nHello.\r\n")
        client.mail("ann@far.test")
        client.rcpt("jane@acme.test")
        refused = client.data(b"Subject: bad\r\n\r\nHello\x00.\r\n")
        return unknown, accepted, refused


class MetricsPageContract(StoreFixtureMixin, ServedWebMixin):
    def setUp(self):
        self.metrics = Metrics()
        self.store = self.make_store(self.metrics.store_operation_seconds)
        builders.hosted_mailbox(self.store)  # jane@acme.test
        self.config = parse_config(
            f"[appliance]\nhostname = {HOSTNAME}\n[web]\nmetrics_token = {TOKEN}\n"
        )
        self.root = builders.web_root(self, self.store, self.config, reactor, metrics=self.metrics)
        self.serve(self.root)

    def listen_smtp(self) -> int:
        """Port 25's protocol and policy on loopback, into the real intake and store,
        counting on the same metrics."""
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
        return port.getHost().port

    # --- over a real loopback connection ----------------------------------------------

    @defer.inlineCallbacks
    def test_loopback_reads_the_text_format_with_counters_moved_by_real_sessions(self):
        unknown, accepted, refused = yield threads.deferToThread(send_two, self.listen_smtp())
        self.assertEqual(unknown[0], 550)
        self.assertEqual(accepted[0], 250)
        self.assertEqual((refused[0], refused[1][:5]), (550, b"5.6.0"))
        response = yield self.browser().get("/metrics")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("content-type"), TEXT_FORMAT)
        self.assertEqual(response.header("cache-control"), "no-store")
        found = samples(response.text)

        def value(name, **labels):
            return found.get((name, tuple(sorted(labels.items()))))

        smtp = {"listener": "smtp"}
        self.assertEqual(value("atollon_mail_smtp_sessions_total", outcome="accepted", **smtp), 1)
        self.assertEqual(value("atollon_mail_smtp_sessions_open", **smtp), 0)
        messages = "atollon_mail_smtp_messages_total"
        self.assertEqual(value(messages, outcome="accepted", reason="2.0.0", **smtp), 1)
        self.assertEqual(value(messages, outcome="rejected", reason="5.6.0", **smtp), 1)
        recipients = "atollon_mail_smtp_recipients_total"
        self.assertEqual(value(recipients, outcome="rejected", reason="5.1.1", **smtp), 1)
        self.assertEqual(value(recipients, outcome="accepted", reason="2.1.5", **smtp), 2)
        # The accepted message's filing went through the intake's group commit...
        self.assertEqual(
            value("atollon_mail_group_commit_batch_size_count", writer="store_messages"), 1
        )
        # ... and every store operation on the way was timed, this scrape's own too.
        timed = "atollon_mail_store_operation_seconds_count"
        self.assertEqual(value(timed, operation="filing.store_messages"), 1)
        self.assertEqual(value(timed, operation="monitoring.gauges"), 1)
        self.assertGreater(value(timed, operation="filing.resolve_recipient"), 0)
        self.assertEqual(value("atollon_mail_queue_recipients", state="queued"), 0)
        self.assertEqual(value("atollon_mail_queue_oldest_age_seconds"), 0)
        self.assertIsNotNone(value("process_resident_memory_bytes"))

    @defer.inlineCallbacks
    def test_promtool_accepts_the_output(self):
        if PROMTOOL is None:
            raise unittest.SkipTest(
                "promtool is not installed (Debian package prometheus, `make system-packages`)"
            )
        yield threads.deferToThread(send_two, self.listen_smtp())
        response = yield self.browser().get("/metrics")
        self.assertEqual(response.status, 200)
        checked = yield threads.deferToThread(
            subprocess.run,
            [PROMTOOL, "check", "metrics"],
            input=response.body,
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(
            (checked.returncode, checked.stdout + checked.stderr), (0, b""), "promtool"
        )

    @defer.inlineCallbacks
    def test_openmetrics_when_the_scraper_asks_for_it(self):
        browser = self.browser({"Accept": "application/openmetrics-text; version=1.0.0"})
        response = yield browser.get("/metrics")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.header("content-type").startswith("application/openmetrics-text"))
        self.assertTrue(response.text.endswith("# EOF\n"))

    @defer.inlineCallbacks
    def test_through_a_proxy_on_loopback_only_the_token_opens_it(self):
        forwarded = self.browser({"X-Forwarded-For": "203.0.113.9"})
        response = yield forwarded.get("/metrics")
        self.assertEqual(response.status, 403)
        self.assertIn("[web] metrics_networks", response.text)
        with_token = self.browser(
            {"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {TOKEN}"}
        )
        self.assertEqual((yield with_token.get("/metrics")).status, 200)

    @defer.inlineCallbacks
    def test_other_methods_are_refused(self):
        response = yield self.browser().request("POST", "/metrics", body=b"", content_type="x")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.header("allow"), "GET, HEAD")

    # --- over StringTransport, from another address -----------------------------------

    def start_scrape(self, host: str, *headers: str):
        """GET /metrics sent from a TCP peer at `host`: (its channel, its transport)."""
        peer = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
        site = Site(self.root, requestFactory=BodyLimitedRequest)
        channel = site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        head = "".join(f"{header}\r\n" for header in headers)
        channel.dataReceived(
            f"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}\r\n".encode()
        )
        return channel, transport

    @defer.inlineCallbacks
    def scrape_from(self, host: str, *headers: str) -> bytes:
        """The whole answer to GET /metrics from a TCP peer at `host`."""
        channel, transport = self.start_scrape(host, *headers)
        yield eventually(lambda: transport.disconnecting, "the answer")
        channel.connectionLost(None)
        return transport.value()

    @defer.inlineCallbacks
    def assert_status(self, status: int, host: str, *headers: str):
        answer = yield self.scrape_from(host, *headers)
        self.assertTrue(answer.startswith(f"HTTP/1.1 {status} ".encode()), (headers, answer[:40]))

    @defer.inlineCallbacks
    def test_a_request_with_any_proxy_header_is_not_taken_as_local(self):
        # A proxy on loopback that says who its client is in any of these ways.
        for header in (
            "X-Real-IP: 203.0.113.9",
            "Via: 1.1 proxy.acme.test",
            "Forwarded: for=203.0.113.9",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: mail.acme.test",
            "X-Client-IP: 203.0.113.9",
        ):
            yield self.assert_status(403, "127.0.0.1", header)
        # With the token it is served all the same.
        yield self.assert_status(
            200, "127.0.0.1", "Via: 1.1 proxy", f"Authorization: Bearer {TOKEN}"
        )
        yield self.assert_status(200, "127.0.0.1")

    @defer.inlineCallbacks
    def test_the_bearer_scheme_in_any_case(self):
        yield self.assert_status(200, "198.51.100.7", f"Authorization: bearer {TOKEN}")
        yield self.assert_status(200, "198.51.100.7", f"Authorization: BEARER {TOKEN}")
        yield self.assert_status(403, "198.51.100.7", f"Authorization: Basic {TOKEN}")
        yield self.assert_status(403, "198.51.100.7", f"Authorization: {TOKEN}")

    @defer.inlineCallbacks
    def test_ipv4_mapped_peers_are_taken_as_their_ipv4_address(self):
        yield self.assert_status(403, "::ffff:8.8.8.8")
        yield self.assert_status(200, "::ffff:127.0.0.1")
        yield self.assert_status(200, "::1")

    def test_a_warning_when_metrics_networks_overlap_the_trusted_proxies(self):
        def warnings(text: str) -> list[str]:
            config = parse_config(f"[appliance]\nhostname = {HOSTNAME}\n[web]\n{text}")
            with capturedLogs() as events:
                MetricsResource(self.metrics, self.store, config.web, reactor, None)
            return [
                event["log_format"]
                for event in events
                if "metrics_networks" in event.get("log_format", "")
            ]

        # Both loopback by default: a local proxy must set X-Forwarded-For (README).
        self.assertEqual(len(warnings("")), 0)
        self.assertEqual(len(warnings("trusted_proxies = 10.0.0.0/8\n")), 0)
        self.assertEqual(
            len(warnings("trusted_proxies = 10.0.0.0/8\nmetrics_networks = 10.1.0.0/16\n")), 1
        )
        self.assertEqual(
            len(warnings("trusted_proxies = 127.0.0.1/32\nmetrics_networks = ::1/128\n")), 0
        )

    def timed_gauges(self) -> float:
        """How many times the store was asked for the gauges."""
        value = self.metrics.registry.get_sample_value(
            "atollon_mail_store_operation_seconds_count", {"operation": "monitoring.gauges"}
        )
        return value or 0

    @defer.inlineCallbacks
    def test_the_store_gauges_are_read_once_per_interval_and_shared(self):
        clock = task.Clock()
        clock.advance(1_900_000_000)
        self.root = builders.web_root(
            self, self.store, self.config, reactor, clock=clock, metrics=self.metrics
        )
        first = yield self.scrape_from("127.0.0.1")
        self.assertTrue(first.startswith(b"HTTP/1.1 200 "), first[:40])
        self.assertEqual(self.timed_gauges(), 1)
        clock.advance(GAUGES_INTERVAL - 1)
        second = yield self.scrape_from("127.0.0.1")
        self.assertTrue(second.startswith(b"HTTP/1.1 200 "), second[:40])
        self.assertEqual(self.timed_gauges(), 1)
        self.assertIn(b'\natollon_mail_queue_recipients{state="queued"} 0.0\n', second)
        clock.advance(1)
        yield self.scrape_from("127.0.0.1")
        self.assertEqual(self.timed_gauges(), 2)
        # Scrapes at once, before the store answered: one question for all of them.
        clock.advance(GAUGES_INTERVAL)
        started = [self.start_scrape("127.0.0.1") for _ in range(3)]
        for channel, transport in started:
            yield eventually(lambda transport=transport: transport.disconnecting, "an answer")
            channel.connectionLost(None)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertEqual(self.timed_gauges(), 3)

    @defer.inlineCallbacks
    def test_another_address_gets_403_unless_it_sends_the_token(self):
        answer = yield self.scrape_from("198.51.100.7")
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer[:40])
        self.assertNotIn(b"atollon_mail_", answer)
        answer = yield self.scrape_from("198.51.100.7", "Authorization: Bearer wrong")
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer[:40])
        answer = yield self.scrape_from("198.51.100.7", f"Authorization: Bearer {TOKEN}")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:40])
        body = answer.split(b"\r\n\r\n", 1)[1]
        self.assertIn(b"\natollon_mail_store_operation_seconds_bucket{", body)

    @defer.inlineCallbacks
    def test_without_a_token_configured_no_token_opens_it(self):
        config = parse_config(f"[appliance]\nhostname = {HOSTNAME}\n")
        self.root = builders.web_root(self, self.store, config, reactor, metrics=self.metrics)
        answer = yield self.scrape_from("198.51.100.7", "Authorization: Bearer ")
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer[:40])
        answer = yield self.scrape_from("127.0.0.1")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:40])


class SqliteMetricsPageTests(MetricsPageContract, SqliteStoreMixin, unittest.TestCase):
    pass


class PostgresMetricsPageTests(MetricsPageContract, PostgresStoreMixin, unittest.TestCase):
    pass
