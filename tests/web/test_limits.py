"""Web request deadlines, over StringTransport with a Clock."""

from __future__ import annotations

import io
import ipaddress

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from atollon_mail.addresses import forwarded_client
from atollon_mail.connections import CLIENT, TOTAL
from atollon_mail.web.limits import MIN_BODY_RATE, DeadlineSite, connection_refusal

PEER = IPv4Address("TCP", "198.51.100.7", 40000)
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class Echo(Resource):
    """Answers GET with "ok" and POST with the body's length; /slow answers when told."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.pending = []

    def render_GET(self, request):
        if request.path == b"/slow":
            self.pending.append(request)
            return NOT_DONE_YET
        return b"ok"

    def render_POST(self, request):
        return str(len(request.content.read())).encode()


class Connection:
    def __init__(self, site_class=DeadlineSite, **options):
        self.clock = Clock()
        self.resource = Echo()
        if site_class is Site:
            self.site = Site(self.resource, reactor=self.clock)
        else:
            self.site = site_class(self.resource, self.clock, **options)
        self.channel = self.site.buildProtocol(PEER)
        self.transport = StringTransport(peerAddress=PEER)
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def trickle(self, data: bytes, every: float) -> None:
        for byte in data:
            if self.closed:
                return
            self.clock.advance(every)
            self.send(bytes([byte]))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def output(self) -> bytes:
        return self.transport.value()


class HeaderDeadlineTests(unittest.TestCase):
    def test_stock_site_keeps_a_trickling_client(self):
        # The hole: twisted.web restarts its idle timeout with every byte received.
        connection = Connection(Site)
        connection.trickle(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100, every=50)
        self.assertFalse(connection.closed)

    def test_trickled_request_head_is_cut_at_the_deadline(self):
        connection = Connection(header_timeout=30)
        connection.trickle(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100, every=1)
        self.assertTrue(connection.closed)
        self.assertTrue(connection.output().startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertLessEqual(connection.clock.seconds(), 30)

    def test_prompt_request_is_answered_and_an_idle_keep_alive_closed_quietly(self):
        connection = Connection(header_timeout=30)
        connection.clock.advance(29)
        connection.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", connection.output())
        self.assertTrue(connection.output().endswith(b"ok"))
        connection.transport.clear()
        connection.clock.advance(29.9)
        self.assertFalse(connection.closed)
        connection.clock.advance(0.1)
        self.assertTrue(connection.closed)
        self.assertEqual(connection.output(), b"")

    def test_second_request_gets_a_fresh_deadline(self):
        connection = Connection(header_timeout=30)
        connection.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        connection.clock.advance(20)
        connection.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        connection.clock.advance(20)
        self.assertFalse(connection.closed)
        self.assertEqual(connection.output().count(b"200 OK"), 2)

    def test_a_slow_answer_of_ours_is_not_cut(self):
        connection = Connection(header_timeout=30, body_timeout=60)
        connection.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        connection.clock.advance(600)
        self.assertFalse(connection.closed)
        request = connection.resource.pending.pop()
        request.write(b"late")
        request.finish()
        self.assertIn(b"late", connection.output())
        self.assertEqual(connection.clock.getDelayedCalls()[0].getTime(), 630)

    def test_connection_lost_cancels_the_deadline(self):
        connection = Connection(header_timeout=30)
        connection.send(b"GET / HTT")
        connection.channel.connectionLost(None)
        self.assertEqual(connection.clock.getDelayedCalls(), [])


class BodyDeadlineTests(unittest.TestCase):
    HEAD = b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"

    def test_trickled_body_is_cut(self):
        connection = Connection(header_timeout=30, body_timeout=60)
        connection.send(self.HEAD % 1000)
        connection.trickle(b"b" * 1000, every=1)
        self.assertTrue(connection.closed)
        self.assertTrue(connection.output().startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        # 60 s, plus the fraction of a second the trickled bytes bought
        self.assertLessEqual(connection.clock.seconds(), 61)

    def test_stock_site_keeps_a_trickled_body(self):
        connection = Connection(Site)
        connection.send(self.HEAD % 1000)
        connection.trickle(b"b" * 100, every=50)
        self.assertFalse(connection.closed)

    def test_body_at_the_minimum_rate_arrives_in_full(self):
        size = MIN_BODY_RATE * 300  # five minutes' worth, well past body_timeout
        connection = Connection(header_timeout=30, body_timeout=60)
        connection.send(self.HEAD % size)
        for _ in range(300):
            connection.clock.advance(1)
            connection.send(b"b" * MIN_BODY_RATE)
        self.assertFalse(connection.closed)
        self.assertTrue(connection.output().endswith(str(size).encode()))


class RefusalTests(unittest.TestCase):
    def test_refusals_are_complete_503_responses(self):
        for reason, words in ((CLIENT, b"from your address"), (TOTAL, b"too many connections")):
            answer = connection_refusal(reason)
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
            self.assertIn(b"Connection: close", head)
            self.assertIn(f"Content-Length: {len(body)}".encode(), head)
            self.assertIn(words, body)


class BehindProxy(Echo):
    """A root that names the client as the web app does behind a trusted local proxy."""

    def client_address(self, request) -> str:
        forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for", [])
        peer = request.getClientAddress().host
        return forwarded_client(peer, [value.decode() for value in forwarded], LOOPBACK)


class AccessLogTests(unittest.TestCase):
    def test_the_access_log_names_the_client_behind_a_trusted_proxy(self):
        site = DeadlineSite(BehindProxy(), Clock())
        site._logFile = lines = io.StringIO()
        for peer, forwarded in (
            ("127.0.0.1", b"10.0.0.1, 203.0.113.9"),
            ("198.51.100.7", b"1.2.3.4"),
        ):
            channel = site.buildProtocol(IPv4Address("TCP", peer, 40000))
            channel.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", peer, 40000)))
            channel.dataReceived(
                b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: " + forwarded + b"\r\n\r\n"
            )
        first, second = lines.getvalue().splitlines()
        # The proxy's client; another peer's header is ignored.
        self.assertEqual(first.split(" ")[:2], ['"203.0.113.9"', "-"], first)
        self.assertEqual(second.split(" ")[:2], ['"198.51.100.7"', "-"], second)
