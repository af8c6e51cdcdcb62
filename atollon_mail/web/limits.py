"""Deadlines and connection caps for the web listener.

twisted.web's own idle timeout (HTTPChannel.timeOut) starts again with every byte, so a
client trickling one byte a minute keeps a connection forever. Here a request's line and
headers must all arrive within `header_timeout` of the connection (or of the previous
response), and its body within `body_timeout`, moved on by 1/MIN_BODY_RATE s per byte
received (never further than body_timeout from now). A request that misses its deadline
gets 408 and the connection is closed; an idle keep-alive connection is just closed.

The connection caps are atollon_mail.connections.LimitedFactory; a refused connection
gets a 503 (see `connection_refusal`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.logger import Logger
from twisted.web.http import HTTPChannel, combinedLogFormatter
from twisted.web.server import Site

from atollon_mail.connections import CLIENT

__all__ = ["DeadlineChannel", "DeadlineSite", "connection_refusal", "plain_response"]

log = Logger()

MIN_BODY_RATE = 500  # bytes a second, on average, while a request body arrives


def plain_response(status: bytes, text: bytes, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer with a plain-text body, after which the connection closes:
    for what is answered below the web app (408, 413, 503)."""
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"X-Content-Type-Options: nosniff\r\n"
        b"Content-Length: " + str(len(text)).encode() + b"\r\n" + extra + b"Connection: close\r\n"
        b"\r\n" + text
    )


REQUEST_TIMEOUT = plain_response(
    b"408 Request Timeout", b"The request took too long to arrive; send it again.\n"
)


def connection_refusal(reason: str) -> bytes:
    """The 503 a connection over the web listener's cap gets before it is closed."""
    if reason == CLIENT:
        text = b"Too many connections from your address; try again in a few seconds.\n"
    else:
        text = b"The server has too many connections; try again in a few seconds.\n"
    return plain_response(b"503 Service Unavailable", text, b"Retry-After: 5\r\n")


class DeadlineChannel(HTTPChannel):
    """An HTTPChannel whose requests must arrive by a deadline, however they trickle."""

    header_timeout = 30.0
    body_timeout = 60.0

    _deadline_call: Any = None
    _deadline = 0.0
    _phase = "head"  # "head": waiting for a request's line and headers; "body"; "busy"
    _started = False  # bytes of the current request's head arrived

    def connectionMade(self) -> None:
        super().connectionMade()
        self._expect_head()

    def dataReceived(self, data: bytes) -> None:
        if self._phase == "head":
            self._started = True
        elif self._phase == "body":
            limit = self._now() + self.body_timeout
            self._deadline = min(limit, self._deadline + len(data) / MIN_BODY_RATE)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        # The body, if any, has its own deadline; allContentReceived follows at once
        # when there is none.
        self._phase = "body"
        self._arm(self.body_timeout)

    def allContentReceived(self) -> None:
        # The request is ours to answer now: no deadline for the client until it is done.
        self._phase = "busy"
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        if self.persistent:
            # Armed before the buffered next request (if any) is parsed by requestDone.
            self._expect_head()
        super().requestDone(request)

    def connectionLost(self, reason: Any) -> None:
        self._disarm()
        super().connectionLost(reason)

    # --- deadline ---

    def _now(self) -> float:
        return self.factory.reactor.seconds()

    def _expect_head(self) -> None:
        self._phase = "head"
        self._started = False
        self._arm(self.header_timeout)

    def _arm(self, timeout: float) -> None:
        self._disarm()
        if timeout and timeout > 0:
            self._deadline = self._now() + timeout
            self._deadline_call = self.callLater(timeout, self._check_deadline)

    def _disarm(self) -> None:
        call, self._deadline_call = self._deadline_call, None
        if call is not None and call.active():
            call.cancel()

    def _check_deadline(self) -> None:
        self._deadline_call = None
        remaining = self._deadline - self._now()
        if remaining > 0:
            self._deadline_call = self.callLater(remaining, self._check_deadline)
            return
        if self._phase == "body" or self._started:
            log.info(
                "Request from {peer} did not arrive in time; closing",
                peer=str(self.transport.getPeer()),
            )
            self.transport.write(REQUEST_TIMEOUT)
        # loseConnection, and abort after abortTimeout if the client will not read.
        self.timeoutConnection()


class _AsSeenBehindProxy:
    """A request whose client address is the one the site's root resource names (behind
    a trusted reverse proxy, the client's, not the proxy's)."""

    def __init__(self, request: Any, host: str):
        self._request = request
        self._address = IPv4Address("TCP", host, 0)

    def getClientAddress(self) -> Any:
        return self._address

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def _access_line(timestamp: str, request: Any) -> str:
    """The access log's combined-format line, with the client as client_address names it."""
    resolve = getattr(getattr(request.channel, "site", None), "resource", None)
    resolve = getattr(resolve, "client_address", None)
    if resolve is not None:
        request = _AsSeenBehindProxy(request, resolve(request))
    return combinedLogFormatter(timestamp, request)


class DeadlineSite(Site):
    """A Site of DeadlineChannels; twisted.web's byte-resettable idle timeout is off."""

    protocol = DeadlineChannel

    def __init__(
        self,
        resource: Any,
        reactor: Any,
        header_timeout: float = DeadlineChannel.header_timeout,
        body_timeout: float = DeadlineChannel.body_timeout,
        requestFactory: Any = None,
    ):
        super().__init__(
            resource, requestFactory, timeout=None, reactor=reactor, logFormatter=_access_line
        )
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.header_timeout = self.header_timeout
        channel.body_timeout = self.body_timeout
        return channel
