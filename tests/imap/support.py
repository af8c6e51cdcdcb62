"""The IMAP server under test: its protocol over a StringTransport with a task.Clock for
its timers, a real store (SQLite or PostgreSQL, through the mixins), the real
authenticator (argon2 in started workers) and the events object."""

from __future__ import annotations

import time

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from zope.interface import alsoProvides

from atollon_mail.auth import build_authenticator
from atollon_mail.config import ImapConfig
from atollon_mail.delivery.intake import Intake
from atollon_mail.events import Events
from atollon_mail.imap.server import IMAPServerFactory, Watchers
from atollon_mail.passwords import hash_password
from atollon_mail.store import filing
from atollon_mail.store.records import IncomingMessage
from tests import builders
from tests.smtp.fakes import TLSRecordingTransport
from tests.support import StoreFixtureMixin

TLS_OPTIONS = object()  # the protocol only hands it to transport.startTLS
PEER = "192.0.2.7"
PASSWORD = "correct horse"
MAX_MESSAGE_SIZE = 1024 * 1024
_HASHES: dict[str, str] = {}


def password_hash(password: str = PASSWORD) -> str:
    """argon2 once per test run, not per test."""
    if password not in _HASHES:
        _HASHES[password] = hash_password(password)
    return _HASHES[password]


def mail(subject: str = "Hello", body: str = "Hi there.", sender: str = "ann@remote.example"):
    return (
        f"From: {sender}\r\nTo: jane@acme.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}.{time.monotonic_ns()}@remote.example>\r\n"
        f"Date: Mon, 07 Dec 2026 10:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()


class Client:
    """One session: lines sent, answers read (`command` waits for the tagged one)."""

    def __init__(self, factory: IMAPServerFactory, peer: str = PEER, transport=None, tls=True):
        address = IPv4Address("TCP", peer, 40000)
        self.factory = factory
        self.protocol = factory.buildProtocol(address)
        self.transport = transport if transport is not None else StringTransport(address)
        if tls and not factory.implicit_tls:
            alsoProvides(self.transport, ISSLTransport)
        self.protocol.makeConnection(self.transport)
        self._read = 0
        self._mark = 0
        self._tags = 0
        self.greeting = self.lines()

    def output(self) -> bytes:
        value = self.transport.value()
        new, self._read = value[self._read :], len(value)
        return new

    def lines(self) -> list[str]:
        return self.output().decode("utf-8").splitlines()

    def send(self, data: bytes | str) -> list[str]:
        """Raw bytes in; the lines they caused at once (until_tagged sees them too)."""
        self._mark = len(self.transport.value())
        self.protocol.dataReceived(data.encode() if isinstance(data, str) else data)
        return self.lines()

    def next_tag(self) -> str:
        self._tags += 1
        return f"a{self._tags}"

    @defer.inlineCallbacks
    def command(self, text: str | bytes, seconds: float = 10):
        """Send `tag text`, wait for the tagged answer; all lines since (the tagged last)."""
        tag = self.next_tag()
        data = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + data + b"\r\n")
        lines = yield self.until_tagged(tag, seconds)
        return lines

    @defer.inlineCallbacks
    def until_tagged(self, tag: str, seconds: float = 10):
        """All lines since the last send, once the tagged answer is among them."""
        deadline = time.monotonic() + seconds
        while True:
            received = self.transport.value()[self._mark :]
            self._read = len(self.transport.value())
            lines = received.decode("utf-8", "replace").split("\r\n")
            if any(line.startswith(tag + " ") for line in lines):
                return [line for line in lines if line]
            if self.closed and not self.protocol._waiting:
                return [line for line in lines if line]
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer to {tag}: {lines}")
            yield task.deferLater(reactor, 0.005, lambda: None)

    @defer.inlineCallbacks
    def until(self, predicate, what: str, seconds: float = 10):
        """Wait for lines (accumulated) for which predicate holds; return them."""
        received: list[str] = []
        deadline = time.monotonic() + seconds
        while True:
            received += self.lines()
            if predicate(received):
                return received
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {seconds} s for {what}: {received}")
            yield task.deferLater(reactor, 0.005, lambda: None)

    @defer.inlineCallbacks
    def settle(self):
        """Wait until the session runs nothing (store work done)."""
        deadline = time.monotonic() + 10
        while self.protocol._waiting:
            if time.monotonic() > deadline:
                raise AssertionError("the session stays busy")
            yield task.deferLater(reactor, 0.005, lambda: None)

    @defer.inlineCallbacks
    def login(self, login: str = "jane", password: str = PASSWORD):
        lines = yield self.command(f'LOGIN {login} "{password}"')
        assert lines[-1].split(" ", 2)[1] == "OK", lines
        return lines

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


class ImapServerMixin(StoreFixtureMixin):
    """setUp: a store with jane@acme.test (owner jane, password PASSWORD), started
    workers, the authenticator, events and a factory whose sessions are over TLS
    (implicit); `self.client()` connects one."""

    settings = ImapConfig()

    def setUp(self):
        self.store = self.make_store()
        self.hosted = builders.hosted_mailbox(self.store, password_hash=password_hash())
        self.clock = task.Clock()
        self.workers = builders.started_workers(self)
        self.authenticator = build_authenticator(self.store, reactor, self.workers.cpu, self.clock)
        self.events = Events()
        self.intake = Intake(self.store, self.events, workers=self.workers)
        self.watchers = Watchers(self.events)
        self.learned: list[tuple[bytes, bool]] = []
        self.factory = self.make_factory(implicit_tls=True)

    def make_factory(self, implicit_tls=True, tls_options=TLS_OPTIONS, learner=None, metrics=None):
        return IMAPServerFactory(
            self.store,
            self.authenticator,
            "mx.acme.test",
            self.settings,
            self.clock,
            MAX_MESSAGE_SIZE,
            self.watchers,
            self.workers.in_cpu,
            tls_options=tls_options,
            implicit_tls=implicit_tls,
            learner=learner,
            metrics=metrics,
        )

    def client(self, factory=None, **kwargs) -> Client:
        return Client(factory or self.factory, **kwargs)

    def starttls_client(self, **kwargs) -> Client:
        factory = self.make_factory(implicit_tls=False)
        return Client(factory, transport=TLSRecordingTransport(), tls=False, **kwargs)

    @defer.inlineCallbacks
    def logged_in(self, select: str | None = None, login: str = "jane", **kwargs):
        client = self.client(**kwargs)
        yield client.login(login)
        if select is not None:
            lines = yield client.command(f"SELECT {select}")
            assert " OK " in lines[-1], lines
        return client

    def receive(self, subject: str = "Hello", body: str = "Hi there.", address="jane@acme.test"):
        """A message filed into the mailbox's inbox (blocking, no event)."""
        raw = mail(subject, body)
        recipient = self.store.run_sync(filing.resolve_recipient, *address.split("@"))
        incoming = IncomingMessage(
            envelope_sender="ann@remote.example", recipients=(recipient,), raw=raw, subject=subject
        )
        [stored] = self.store.run_sync(filing.store_messages, [incoming])
        return stored.id

    @defer.inlineCallbacks
    def deliver(self, subject: str = "Hello", address: str = "jane@acme.test"):
        """A message filed as SMTP files it: through the intake, the `filed` event fired."""
        recipient = yield self.intake.resolve_recipient(*address.split("@"))
        yield self.intake.accept("ann@remote.example", [recipient], mail(subject))
