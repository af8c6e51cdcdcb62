"""The mailbox pages' event stream (GET /mail/events): over a real listening port with a
real store and intake, and over StringTransport behind the web listener's deadlines."""

from __future__ import annotations

import json
import time

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from atollon_mail.config import parse_config
from atollon_mail.delivery.intake import Intake
from atollon_mail.events import Events
from atollon_mail.store import accounts, domains, filing, mailboxes
from atollon_mail.store.mailboxes import grant_mailbox_access
from atollon_mail.store.records import IncomingMessage
from atollon_mail.web.bodylimit import BodyLimitedRequest
from atollon_mail.web.limits import DeadlineSite
from atollon_mail.web.mailevents import HEARTBEAT, HEARTBEAT_TEXT, MailEventStreams
from atollon_mail.web.sessions import SESSION_COOKIE, SessionStore
from tests.builders import web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin, _read_body
from tests.web.test_mail import SPAM, TEXT_MAIL
from tests.web.test_security import _hash


@defer.inlineCallbacks
def eventually(predicate, what: str, seconds: float = 10):
    """Wait (the reactor running) until predicate() is true."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds} s for {what}")
        yield task.deferLater(reactor, 0.01, lambda: None)


class StreamReader(Protocol):
    """What an open event stream has sent so far."""

    def __init__(self):
        self.text = ""
        self.ended = False

    def dataReceived(self, data: bytes) -> None:
        self.text += data.decode()

    def connectionLost(self, reason=None) -> None:
        self.ended = True

    def events(self, name: str) -> list[dict]:
        found = []
        for block in self.text.split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if lines.get("event") == name:
                found.append(json.loads(lines["data"]))
        return found

    def close(self) -> None:
        self.transport.stopProducing()


class LiveContract(ServedWebMixin, StoreFixtureMixin):
    default_login = ("bob", "bob-secret")

    def setUp(self):
        self.store = self.make_store()
        sync = self.store.run_sync
        for login in ("bob", "carol", "dave"):
            sync(accounts.add_user, login, _hash(f"{login}-secret"), name=login.title())
        sync(domains.add_domain, "example.com")
        self.bob_box = sync(mailboxes.add_mailbox, "bob@example.com", "bob")
        self.carol_box = sync(mailboxes.add_mailbox, "carol@example.com", "carol")
        sync(mailboxes.add_mailbox, "shared@example.com", "carol")
        sync(grant_mailbox_access, "shared@example.com", "bob", view=True, edit=False)
        self.events = Events()
        self.intake = Intake(self.store, self.events)
        self.clock = Clock()  # the heartbeat's
        self.streams = MailEventStreams(
            self.store, self.events, self.clock, max_streams=3, max_per_user=2
        )
        self.addCleanup(self.streams.stop)
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        root = web_root(
            self, self.store, config, reactor, intake=self.intake, mail_events=self.streams
        )
        self.serve(root)

    @defer.inlineCallbacks
    def deliver(self, local_part: str, verdict=None):
        recipient = yield self.store.run(filing.resolve_recipient, local_part, "example.com")
        yield self.intake.accept("someone@remote.example", [recipient], TEXT_MAIL, verdict)

    @defer.inlineCallbacks
    def open_stream(self, browser, address: str = "bob@example.com"):
        """(response, reader) of GET /mail/events; the reader gets the body as it comes."""
        headers = Headers()
        if browser.cookies:
            cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
            headers.addRawHeader("cookie", cookie)
        url = f"{browser.base}/mail/events?address={address}".encode()
        response = yield browser.agent.request(b"GET", url, headers)
        if response.code != 200:
            response.body = yield _read_body(response)
            return response, None
        reader = StreamReader()
        response.deliverBody(reader)
        self.addCleanup(lambda: None if reader.ended else reader.close())
        return response, reader

    @defer.inlineCallbacks
    def test_stream_tells_of_mail_filed_into_its_mailbox_only(self):
        yield self.deliver("bob")
        bob = yield self.logged_in()
        response, stream = yield self.open_stream(bob)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["text/event-stream; charset=utf-8"]
        )
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
        yield eventually(lambda: stream.events("unread"), "the unread count on opening")
        self.assertTrue(stream.text.startswith("retry: 5000\n\n"))
        self.assertEqual(stream.events("unread"), [{"unread": 1}])
        yield self.deliver("carol")
        yield self.deliver("bob")
        yield eventually(lambda: len(stream.events("unread")) == 2, "the new count")
        self.assertEqual(stream.events("filed"), [{"folder": "inbox"}], "carol's is not told")
        self.assertEqual(stream.events("unread")[-1], {"unread": 2})
        # Into Junk: told, with the folder; the inbox's count is as it was.
        yield self.deliver("bob", SPAM)
        yield eventually(lambda: len(stream.events("unread")) == 3, "the junk")
        self.assertEqual(stream.events("filed")[-1], {"folder": "junk"})
        self.assertEqual(stream.events("unread")[-1], {"unread": 2})
        self.assertEqual(self.streams.counting, 0)

    @defer.inlineCallbacks
    def test_news_that_may_have_been_lost_makes_every_open_page_look_again(self):
        bob = yield self.logged_in()
        _, stream = yield self.open_stream(bob)
        yield eventually(lambda: stream.events("unread"), "the first count")
        # Filed by another node whose news was lost: nothing told, until the listener
        # says news may have been lost.
        recipient = yield self.store.run(filing.resolve_recipient, "bob", "example.com")
        incoming = IncomingMessage(
            envelope_sender="ann@remote.example", recipients=(recipient,), raw=b"Subject: x\r\n\r\n"
        )
        yield self.store.run(filing.store_messages, [incoming])
        self.events.missed_elsewhere.fire()
        yield eventually(lambda: len(stream.events("unread")) == 2, "the new count")
        self.assertEqual(stream.events("missed"), [{}])
        self.assertEqual(stream.events("filed"), [])
        self.assertEqual(stream.events("unread")[-1], {"unread": 1})

    @defer.inlineCallbacks
    def test_a_burst_of_mail_is_counted_once_more_not_once_each(self):
        bob = yield self.logged_in()
        _, stream = yield self.open_stream(bob)
        yield eventually(lambda: stream.events("unread"), "the first count")
        recipient = yield self.store.run(filing.resolve_recipient, "bob", "example.com")
        for _ in range(5):  # each tells the stream at once; the counts coalesce
            self.events.filed.fire("someone@remote.example", (recipient,), b"", frozenset())
        yield eventually(lambda: self.streams.counting == 0, "the counts")
        # What was written reaches the client over loopback a moment later.
        yield eventually(lambda: len(stream.events("filed")) >= 5, "the filed events")
        self.assertEqual(len(stream.events("filed")), 5)
        self.assertEqual(len(stream.events("unread")), 3, stream.text)

    @defer.inlineCallbacks
    def test_a_viewer_of_a_shared_mailbox_may_listen(self):
        bob = yield self.logged_in()
        response, stream = yield self.open_stream(bob, "shared@example.com")
        self.assertEqual(response.code, 200)
        yield eventually(lambda: stream.events("unread") == [{"unread": 0}], "the count")

    @defer.inlineCallbacks
    def test_a_right_taken_away_ends_the_stream_before_the_next_news(self):
        bob = yield self.logged_in()
        carol = yield self.logged_in("carol", "carol-secret")
        _, bobs = yield self.open_stream(bob, "shared@example.com")
        _, carols = yield self.open_stream(carol, "shared@example.com")
        yield eventually(lambda: bobs.events("unread") and carols.events("unread"), "counts")
        yield self.store.run(mailboxes.revoke_mailbox_access, "shared@example.com", "bob")
        yield self.deliver("shared")
        yield eventually(lambda: bobs.ended, "the end of bob's stream")
        yield eventually(lambda: carols.events("filed"), "carol told")
        self.assertEqual(bobs.events("filed"), [])
        self.assertEqual(carols.events("unread")[-1], {"unread": 1})
        self.assertEqual(self.streams.streams_of("bob"), 0)
        response, _ = yield self.open_stream(bob, "shared@example.com")
        self.assertEqual(response.code, 404, "the reconnection")

    @defer.inlineCallbacks
    def test_logging_out_ends_the_stream_at_the_next_heartbeat(self):
        bob = yield self.logged_in()
        _, stream = yield self.open_stream(bob)
        yield eventually(lambda: stream.events("unread"), "the stream")
        page = yield bob.get("/mail/box?address=bob@example.com")
        response = yield bob.post("/logout", {"csrf_token": page.csrf()})
        self.assertEqual(response.status, 303)
        self.assertFalse(stream.ended)
        self.clock.advance(HEARTBEAT)
        yield eventually(lambda: stream.ended, "the end of the stream")
        self.assertNotIn(HEARTBEAT_TEXT.decode(), stream.text)
        self.assertEqual(len(self.streams), 0)

    @defer.inlineCallbacks
    def test_a_logout_through_another_node_ends_the_stream_at_the_next_heartbeat(self):
        bob = yield self.logged_in()
        _, stream = yield self.open_stream(bob)
        _, other = yield self.open_stream(bob, "shared@example.com")
        yield eventually(lambda: stream.events("unread") and other.events("unread"), "streams")
        # Another node's sessions on the same store: this node's memory still knows bob.
        elsewhere = SessionStore(self.store, self.clock)
        yield elsewhere.drop(bob.cookies[SESSION_COOKIE])
        self.clock.advance(HEARTBEAT)
        yield eventually(lambda: stream.ended and other.ended, "the end of both streams")
        self.assertEqual(len(self.streams), 0)
        response, _ = yield self.open_stream(bob)
        self.assertNotEqual(response.code, 200, "the reconnection")

    @defer.inlineCallbacks
    def test_head_opens_no_stream(self):
        bob = yield self.logged_in()
        response = yield bob.request("HEAD", "/mail/events?address=bob@example.com")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("content-type"), "text/event-stream; charset=utf-8")
        self.assertEqual(len(self.streams), 0)

    @defer.inlineCallbacks
    def test_without_login_or_view_right_it_is_not_found(self):
        bob = yield self.logged_in()
        for browser, address in (
            (bob, "carol@example.com"),
            (bob, "nobody@example.com"),
            (bob, "not%20an%20address"),
            (bob, ""),
            (self.browser(), "bob@example.com"),  # not logged in: no login page either
        ):
            response, stream = yield self.open_stream(browser, address)
            self.assertEqual(response.code, 404, address)
            self.assertIsNone(stream)
        self.assertEqual(len(self.streams), 0)

    @defer.inlineCallbacks
    def test_streams_are_capped_per_user_and_in_total(self):
        bob = yield self.logged_in()
        carol = yield self.logged_in("carol", "carol-secret")
        dave = yield self.logged_in("dave", "dave-secret")
        _, first = yield self.open_stream(bob)
        yield self.open_stream(bob, "shared@example.com")
        response, _ = yield self.open_stream(bob)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["30"])
        self.assertIn(b"too many mailbox pages open", response.body)
        response, _ = yield self.open_stream(carol, "carol@example.com")
        self.assertEqual(response.code, 200, "carol has her own share")
        response, _ = yield self.open_stream(dave, "shared@example.com")
        self.assertEqual(response.code, 404, "rights first")
        yield self.store.run(grant_mailbox_access, "shared@example.com", "dave", view=True)
        response, _ = yield self.open_stream(dave, "shared@example.com")
        self.assertEqual(response.code, 503, "three in all")
        self.assertIn(b"too many open mailbox pages", response.body)
        # A page closed makes room.
        first.close()
        yield eventually(lambda: len(self.streams) == 2, "the closed stream forgotten")
        self.assertEqual(self.streams.streams_of("bob"), 1)
        response, _ = yield self.open_stream(bob)
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_heartbeat_every_25_seconds_while_a_stream_is_open(self):
        bob = yield self.logged_in()
        _, stream = yield self.open_stream(bob)
        yield eventually(lambda: stream.events("unread"), "the stream")
        self.assertEqual(HEARTBEAT, 25)
        self.clock.advance(HEARTBEAT - 0.1)
        self.assertNotIn(HEARTBEAT_TEXT.decode(), stream.text)
        self.clock.advance(0.1)
        yield eventually(lambda: HEARTBEAT_TEXT.decode() in stream.text, "a heartbeat")
        self.clock.advance(HEARTBEAT)
        yield eventually(lambda: stream.text.count(HEARTBEAT_TEXT.decode()) == 2, "another")
        stream.close()
        yield eventually(lambda: len(self.streams) == 0, "the stream forgotten")
        self.assertFalse(self.streams.beating)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_stopping_finishes_the_streams_and_opens_no_more(self):
        bob = yield self.logged_in()
        _, stream = yield self.open_stream(bob)
        yield eventually(lambda: stream.events("unread"), "the stream")
        self.streams.stop()
        yield eventually(lambda: stream.ended, "the end of the stream")
        self.assertEqual(len(self.streams), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        response, _ = yield self.open_stream(bob)
        self.assertEqual(response.code, 503)


class SqliteLiveTests(LiveContract, SqliteStoreMixin, unittest.TestCase):
    pass


class PostgresLiveTests(LiveContract, PostgresStoreMixin, unittest.TestCase):
    pass


PEER = IPv4Address("TCP", "198.51.100.7", 40000)
GONE = Failure(ConnectionDone("the client went away"))


class DeadlineTests(StoreFixtureMixin, SqliteStoreMixin, unittest.TestCase):
    """Behind the web listener's deadlines (limits.py), over StringTransport: an event
    stream is not cut however long it stays open; a slow client still is."""

    @defer.inlineCallbacks
    def setUp(self):
        self.store = self.make_store()
        sync = self.store.run_sync
        sync(accounts.add_user, "bob", "hash", name="Bob")
        sync(domains.add_domain, "example.com")
        sync(mailboxes.add_mailbox, "bob@example.com", "bob")
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.streams = MailEventStreams(self.store, Events(), self.clock)
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        root = web_root(
            self, self.store, config, reactor, clock=self.clock, mail_events=self.streams
        )
        session = yield root.app.sessions.create(sync(accounts.get_user, "bob"))
        self.cookie = f"{SESSION_COOKIE}={session.id}".encode()
        self.site = DeadlineSite(
            root, self.clock, header_timeout=30, body_timeout=60, requestFactory=BodyLimitedRequest
        )

    def connect(self):
        channel = self.site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        channel.makeConnection(transport)
        return channel, transport

    @defer.inlineCallbacks
    def open(self):
        channel, transport = self.connect()
        channel.dataReceived(
            b"GET /mail/events?address=bob@example.com HTTP/1.1\r\nHost: x\r\n"
            b"Cookie: " + self.cookie + b"\r\n\r\n"
        )
        yield eventually(lambda: b"event: unread" in transport.value(), "the stream")
        return channel, transport

    @defer.inlineCallbacks
    def test_an_open_stream_outlives_every_deadline_and_a_slow_client_does_not(self):
        channel, transport = yield self.open()
        self.assertIn(b"200 OK", transport.value())
        self.assertIn(b"Transfer-Encoding: chunked", transport.value())
        for _ in range(40):  # ten minutes and more, well past both deadlines
            self.clock.advance(HEARTBEAT)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value().count(HEARTBEAT_TEXT), 40)
        # Beside it, a client trickling its request head is cut at the header deadline.
        slow, slow_transport = self.connect()
        for byte in b"GET /mail/events?address=bob@example.com HTTP/1.1\r\nX-Slow: aaaaa":
            self.clock.advance(1)
            slow.dataReceived(bytes([byte]))
            if slow_transport.disconnecting:
                break
        self.assertTrue(slow_transport.disconnecting)
        self.assertTrue(slow_transport.value().startswith(b"HTTP/1.1 408 Request Timeout"))
        self.assertFalse(transport.disconnecting)
        slow.connectionLost(GONE)
        channel.connectionLost(GONE)

    @defer.inlineCallbacks
    def test_an_open_stream_does_not_keep_its_session_alive(self):
        channel, transport = yield self.open()
        idle_timeout = self.site.resource.app.sessions.idle_timeout
        self.assertEqual(idle_timeout, 1800)
        for _ in range(80):  # 2000 s
            self.clock.advance(HEARTBEAT)
        # Heartbeats until the session's idle time ran out, then the end of the stream.
        self.assertEqual(transport.value().count(HEARTBEAT_TEXT), idle_timeout // HEARTBEAT)
        self.assertTrue(transport.value().endswith(b"0\r\n\r\n"))
        self.assertEqual(len(self.streams), 0)
        channel.connectionLost(GONE)

    @defer.inlineCallbacks
    def test_a_client_going_away_leaves_no_stream_and_no_timer(self):
        channel, transport = yield self.open()
        self.assertEqual(len(self.streams), 1)
        self.assertTrue(self.clock.getDelayedCalls(), "the heartbeat")
        channel.connectionLost(GONE)
        self.assertEqual(len(self.streams), 0)
        self.assertFalse(self.streams.beating)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        yield eventually(lambda: self.streams.counting == 0, "the count done")
