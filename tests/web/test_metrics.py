"""GET /metrics: who may read it (loopback, the bearer token; not another address, not
through a proxy), what it serves after real SMTP sessions into a real store (counters,
the store's latency histogram, the queue gauges), and that promtool accepts it; on
SQLite and on PostgreSQL."""

from __future__ import annotations

import shutil
import smtplib
import subprocess

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.server import Site

from atollon_mail.config import parse_config
from atollon_mail.delivery.intake import Intake
from atollon_mail.events import Events
from atollon_mail.metrics import Metrics
from atollon_mail.smtp.policies import MXPolicy
from atollon_mail.smtp.server import SMTPServerFactory
from atollon_mail.web.bodylimit import BodyLimitedRequest
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

    @defer.inlineCallbacks
    def scrape_from(self, host: str, *headers: str) -> bytes:
        """The whole answer to GET /metrics from a TCP peer at `host`."""
        peer = IPv4Address("TCP", host, 40000)
        site = Site(self.root, requestFactory=BodyLimitedRequest)
        channel = site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        head = "".join(f"{header}\r\n" for header in headers)
        channel.dataReceived(
            f"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}\r\n".encode()
        )
        yield eventually(lambda: transport.disconnecting, "the answer")
        channel.connectionLost(None)
        return transport.value()

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
