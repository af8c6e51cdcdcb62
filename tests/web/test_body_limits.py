"""Request bodies over a route's limit are refused before they are read, over a real socket:
the server answers 413 while the client has not sent (or not finished) the body."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.store import accounts
from atollon_mail.web.app import MAX_FORM_BYTES
from atollon_mail.web.pages import LOGIN_FORM_BYTES
from tests.builders import web_root
from tests.support import SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin, _hash

FORM = b"Content-Type: application/x-www-form-urlencoded\r\n"


class RawClient(Protocol):
    """Writes what the test gives; keeps all it receives until the server closes."""

    def __init__(self):
        self.received = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(self.received)


class BodyLimitTests(ServedWebMixin, SqliteStoreMixin, StoreFixtureMixin, unittest.TestCase):
    def setUp(self):
        self.store = self.make_store()
        self.store.run_sync(accounts.add_user, "admin", _hash("admin-secret"), is_admin=True)
        self.clock = Clock()
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        self.serve(web_root(self, self.store, config, reactor, clock=self.clock))

    @defer.inlineCallbacks
    def connect(self):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        client = yield connectProtocol(endpoint, RawClient())
        self.addCleanup(client.transport.loseConnection)
        return client

    @defer.inlineCallbacks
    def answer(self, head: bytes, body: bytes = b""):
        """What the server says (until it closes) to a request whose body is not finished."""
        client = yield self.connect()
        client.transport.write(head + body)
        # The server must answer without the rest of the body: waiting for it would hang.
        received = yield client.closed.addTimeout(10, reactor)
        return received

    def assert_refused(self, received: bytes, limit: int):
        status, _, rest = received.partition(b"\r\n")
        self.assertEqual(status, b"HTTP/1.1 413 Content Too Large")
        self.assertIn(b"\r\nX-Content-Type-Options: nosniff\r\n", rest)
        self.assertTrue(rest.endswith(f"accepts ({limit} bytes); send less.\n".encode()), rest)

    @defer.inlineCallbacks
    def test_a_huge_content_length_is_refused_before_the_body_is_sent(self):
        received = yield self.answer(
            b"POST /login HTTP/1.1\r\nHost: x\r\n" + FORM + b"Content-Length: 536870912\r\n\r\n"
        )
        self.assert_refused(received, LOGIN_FORM_BYTES)

    @defer.inlineCallbacks
    def test_no_100_continue_for_a_refused_body(self):
        received = yield self.answer(
            b"POST /login HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            + FORM
            + b"Content-Length: 536870912\r\n\r\n"
        )
        self.assert_refused(received, LOGIN_FORM_BYTES)
        self.assertNotIn(b"100 Continue", received)

    @defer.inlineCallbacks
    def test_each_route_has_its_own_limit(self):
        length = LOGIN_FORM_BYTES + 1
        head = b"Host: x\r\n" + FORM + f"Content-Length: {length}\r\n\r\n".encode()
        login = yield self.answer(b"POST /login HTTP/1.1\r\n" + head)
        self.assert_refused(login, LOGIN_FORM_BYTES)
        # Other paths (any page, a path that is none) have the forms' limit...
        for path in (b"/logout", b"/no-such-page", b"/health"):
            over = f"Content-Length: {MAX_FORM_BYTES + 1}\r\n\r\n".encode()
            refused = yield self.answer(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + over)
            self.assert_refused(refused, MAX_FORM_BYTES)
        # ...and the compose form may send more: the body is read (and the request
        # answered: not logged in) instead of refused.
        client = yield self.connect()
        client.transport.write(b"POST /mail/compose HTTP/1.1\r\nConnection: close\r\n" + head)
        client.transport.write(b"x" * length)
        received = yield client.closed.addTimeout(10, reactor)
        self.assertTrue(received.startswith(b"HTTP/1.1 303 "), received[:100])

    @defer.inlineCallbacks
    def test_compose_refuses_a_large_body_without_a_session_before_reading_it(self):
        # Compose takes as much as SMTP accepts (25 MB), but only from a logged-in user:
        # anyone else gets the forms' limit (the logged-in limit: tests/web/test_compose.py).
        received = yield self.answer(
            b"POST /mail/compose HTTP/1.1\r\nHost: x\r\nCookie: atollon_session=forged\r\n"
            + FORM
            + f"Content-Length: {2 * 1024 * 1024}\r\n\r\n".encode()
        )
        self.assert_refused(received, MAX_FORM_BYTES)

    @defer.inlineCallbacks
    def test_a_chunked_body_is_cut_off_at_the_limit(self):
        chunk = b"x" * (LOGIN_FORM_BYTES + 1)
        received = yield self.answer(
            b"POST /login HTTP/1.1\r\nHost: x\r\n" + FORM + b"Transfer-Encoding: chunked\r\n\r\n",
            b"%x\r\n%s\r\n" % (len(chunk), chunk),  # and no last chunk: the body goes on
        )
        self.assert_refused(received, LOGIN_FORM_BYTES)

    @defer.inlineCallbacks
    def test_a_chunked_body_within_the_limit_is_read(self):
        body = b"login=admin&password=x"
        client = yield self.connect()
        client.transport.write(
            b"POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + FORM
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
        received = yield client.closed.addTimeout(10, reactor)
        # Read and judged by the page: no CSRF token, so 403, not 413.
        self.assertTrue(received.startswith(b"HTTP/1.1 403 "), received[:100])
