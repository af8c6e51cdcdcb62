"""Connection caps per listener: at most N connections in all and M from one client.

One small wrapper for every listener (inbound SMTP, submission on 587 and 465, the web):
it counts in buildProtocol and when a connection is lost, so a flood of slow clients can
take at most the listener's own share of file descriptors and never starve the others,
the database, delivery or DNS. A connection over a cap never reaches the wrapped
protocol: it gets the listener's refusal (SMTP `421 4.7.0`, HTTP 503) and is closed.

Clients are counted by address (IPv6 by /64: one host usually holds a whole /64; see
atollon_mail.addresses). Hosts
in `exempt` networks (the trusted networks: the local relay, a reverse proxy, monitoring)
are not held to the per-client cap, and may go `reserve` connections past a full listener,
so that their mail and health checks get through a flood that fills it.

A full listener is under stress for a while (STRESS_HOLD): its sessions are told, so that
slow clients are cut soon and the listener frees up for others.

Connections that wait for news and do nothing else (IMAP IDLE: a mail client keeps one
per watched folder, for hours) are counted apart: a protocol with `set_counter` is given
the factory, and calls `idle_started()` and `idle_ended()` on it. Idle connections do not
count against `max_connections`, only against `max_connections + max_idle`, so a crowd of
idling clients never keeps an active one out (nor takes more than that many descriptors).
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from atollon_mail.addresses import client_key, in_networks
from atollon_mail.interfaces import ICountedConnection

__all__ = ["CLIENT", "TOTAL", "LimitedFactory", "descriptor_shortfall"]

log = Logger()

CLIENT = "client"  # refused: too many connections from this client
TOTAL = "total"  # refused: the listener is full
TRUSTED_RESERVE = 10  # connections past a full listener for trusted hosts
REFUSAL_GRACE = 5.0  # seconds a refused connection may take to go away before it is cut
HEAD_WAIT = 2.0  # seconds an HTTP refusal waits for the request head (so it is read)
# Refused connections still being answered (an HTTP one waits for the request head, a TLS
# one for the handshake) hold a descriptor for a moment; past this many at once, a further
# refused connection is closed at once without an answer.
MAX_PENDING_REFUSALS = 50
# A listener that refused a connection for being full is "under stress" for this long:
# its sessions, and those it admits meanwhile, are told so (under_stress(), if they have
# it; SMTP sessions then get a short idle timeout, as Postfix's do under stress).
STRESS_HOLD = 60.0
LOG_INTERVAL = 60.0  # refusals are logged at most once a minute per listener
# Descriptors besides the listeners' connections: listening sockets, the database, DNS
# queries, log files, the spam filter, refused connections on their way out.
OTHER_DESCRIPTORS = 128
MAX_REMEMBERED_CLIENTS = 4096  # client addresses whose key is remembered (then forgotten)


def descriptor_shortfall(caps: Iterable[int], outbound: int, soft_limit: int) -> str | None:
    """A one-line warning when the open-file limit is below what the caps allow, or None.

    `caps` are the listeners' max_connections, `outbound` the delivery concurrency.
    """
    caps = tuple(caps)
    needed = sum(caps) + TRUSTED_RESERVE * len(caps) + outbound + OTHER_DESCRIPTORS
    if soft_limit < 0 or soft_limit >= needed:  # negative: unlimited
        return None
    return (
        f"the open-file limit is {soft_limit} but the connection caps and delivery "
        f"concurrency may need {needed} descriptors; raise LimitNOFILE (ulimit -n) or "
        f"lower the max_connections settings"
    )


def _tell_stress(protocol: Any) -> None:
    under_stress = getattr(protocol, "under_stress", None)
    if under_stress is not None:
        under_stress()


class _Counted(ProtocolWrapper):
    """An admitted connection: counted until it is lost."""

    client = ""

    def connectionLost(self, reason: Any) -> None:
        self.factory.release(self.client)
        super().connectionLost(reason)


class _Refusal(Protocol):
    """Writes the refusal, closes, and cuts the connection if it lingers."""

    def __init__(self, factory: LimitedFactory, answer: bytes, clock: Any, wait_for_head: bool):
        self.factory = factory
        self.answer = answer
        self.clock = clock
        self.wait_for_head = wait_for_head
        self._seen = b""
        self._calls: list[Any] = []
        self._answered = False

    def connectionMade(self) -> None:
        self.factory.pending_refusals += 1
        self._calls.append(self.clock.callLater(REFUSAL_GRACE, self._abort))
        if self.wait_for_head:
            # An HTTP client that is still sending its request when we close would get a
            # reset instead of our answer: read its head first, for a moment at most.
            self._calls.append(self.clock.callLater(HEAD_WAIT, self._respond))
        else:
            self._respond()

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        self._seen = (self._seen + data)[-4:]
        if b"\r\n\r\n" in self._seen or b"\n\n" in self._seen:
            self._respond()

    def _respond(self) -> None:
        if self._answered:
            return
        self._answered = True
        self.transport.write(self.answer)
        self.transport.loseConnection()

    def _abort(self) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.pending_refusals -= 1
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []


class LimitedFactory(WrappingFactory):
    """Wraps a listener's factory with a total and a per-client connection cap.

    `refusal(reason)` gives the bytes to answer a refused connection with (reason is
    CLIENT or TOTAL); with `wait_for_head` (HTTP) they are sent once the request head
    arrived, or after a short wait. `count_refusal(reason)`, when given, is told of each
    refused connection (it must not raise: atollon_mail.metrics.counting).
    """

    protocol = _Counted
    noisy = False

    def __init__(
        self,
        wrapped: Any,
        max_connections: int,
        max_per_client: int,
        refusal: Callable[[str], bytes],
        clock: Any,
        exempt: Iterable[str] = (),
        name: str = "listener",
        wait_for_head: bool = False,
        max_idle: int = 0,
        count_refusal: Callable[[str], None] | None = None,
    ):
        super().__init__(wrapped)
        self.count_refusal = count_refusal
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.idle = 0  # admitted connections that said they are idle (idle_started)
        self.max_per_client = max_per_client
        self.refusal = refusal
        self.clock = clock
        self.exempt = tuple(ipaddress.ip_network(network, strict=False) for network in exempt)
        self.name = name
        self.wait_for_head = wait_for_head
        self.total = 0
        self.per_client: collections.Counter[str] = collections.Counter()
        self.refused = {CLIENT: 0, TOTAL: 0}
        self.pending_refusals = 0
        self.stressed_at: float | None = None  # when a connection was last refused as full
        self._told_at: float | None = None
        self._last_logged: float | None = None
        self._unlogged = 0
        self._clients: dict[Any, tuple[str, bool]] = {}
        # Admitted connections whose protocol tells when it is lost (ICountedConnection);
        # the others are wrapped and in self.protocols.
        self.counted: set[Any] = set()

    def logPrefix(self) -> str:
        return self.wrappedFactory.logPrefix()

    def is_exempt(self, host: Any) -> bool:
        return self._client(host)[1]

    def _client(self, host: Any) -> tuple[str, bool]:
        """(the key `host` is counted by, whether it is exempt), remembered for the
        hosts seen lately: parsing the address took three ipaddress parses per
        connection, about a tenth of the listener's own work per relayed message."""
        known = self._clients.get(host)
        if known is None:
            if len(self._clients) >= MAX_REMEMBERED_CLIENTS:
                self._clients.clear()
            known = self._clients[host] = (client_key(host), in_networks(host, self.exempt))
        return known

    def verdict(self, host: Any) -> str | None:
        """Why a new connection from `host` would be refused now, or None."""
        key, exempt = self._client(host)
        active = self.total - self.idle
        if self.total >= self.max_connections + self.max_idle + (TRUSTED_RESERVE if exempt else 0):
            return TOTAL
        if exempt:
            return TOTAL if active >= self.max_connections + TRUSTED_RESERVE else None
        if active >= self.max_connections:
            return TOTAL
        if self.per_client[key] >= self.max_per_client:
            return CLIENT
        return None

    def buildProtocol(self, addr: Any) -> Protocol | None:
        host = getattr(addr, "host", None)
        reason = self.verdict(host)
        if reason is not None:
            self._note_refusal(reason, host)
            if reason == TOTAL:
                self._full()
            if self.pending_refusals >= MAX_PENDING_REFUSALS:
                return None  # closed by the port at once
            return _Refusal(self, self.refusal(reason), self.clock, self.wait_for_head)
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        client = self._client(host)[0]
        if self.under_stress:
            _tell_stress(wrapped)
        self.total += 1
        self.per_client[client] += 1
        if ICountedConnection.providedBy(wrapped):
            # Counted without a wrapper in between: a ProtocolWrapper cost every relayed
            # message 13 more calls on its way in and out and a zope declaration per
            # connection (about 60 us under cProfile, bench/relay.py).
            self.counted.add(wrapped)
            wrapped.when_lost(lambda: self._unwrapped_lost(wrapped, client))
            set_counter = getattr(wrapped, "set_counter", None)
            if set_counter is not None:
                set_counter(self)
            return wrapped
        connection = self.protocol(self, wrapped)
        connection.client = client
        return connection

    def _unwrapped_lost(self, protocol: Any, client: str) -> None:
        self.counted.discard(protocol)
        self.release(client)

    @property
    def under_stress(self) -> bool:
        return (
            self.stressed_at is not None and self.clock.seconds() - self.stressed_at < STRESS_HOLD
        )

    def _full(self) -> None:
        now = self.clock.seconds()
        self.stressed_at = now
        if self._told_at is not None and now - self._told_at < 1.0:
            return  # the open sessions were told a moment ago
        self._told_at = now
        for connection in list(self.protocols):
            if connection.wrappedProtocol is not None:
                _tell_stress(connection.wrappedProtocol)
        for protocol in list(self.counted):
            _tell_stress(protocol)

    def idle_started(self) -> None:
        """An admitted connection waits for news (it calls idle_ended() when it stops
        waiting, before it is lost)."""
        self.idle += 1

    def idle_ended(self) -> None:
        self.idle -= 1

    def release(self, client: str) -> None:
        self.total -= 1
        left = self.per_client[client] - 1
        if left > 0:
            self.per_client[client] = left
        else:
            del self.per_client[client]

    def _note_refusal(self, reason: str, host: Any) -> None:
        self.refused[reason] += 1
        if self.count_refusal is not None:
            self.count_refusal(reason)
        now = self.clock.seconds()
        if self._last_logged is not None and now - self._last_logged < LOG_INTERVAL:
            self._unlogged += 1
            return
        log.warn(
            "{name}: refused a connection from {host} ({why}); {more} more refused since "
            "the last note; {total} connections open",
            name=self.name,
            host=host,
            why="too many from that client" if reason == CLIENT else "the listener is full",
            more=self._unlogged,
            total=self.total,
        )
        self._last_logged = now
        self._unlogged = 0
