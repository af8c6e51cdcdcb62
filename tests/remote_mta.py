"""A scriptable remote SMTP server for tests of outbound delivery.

Listen on a loopback port with the real reactor, or connect its protocol to a
StringTransport (with a Clock for delays):

    mta = RemoteMTA(
        pipelining=False,
        rcpt={"nobody@remote.test": "550 5.1.1 <nobody@remote.test>: no such user"},
        dot=[250, "451 4.3.0 try again", DROP],
    )
    port = reactor.listenTCP(0, mta, interface="127.0.0.1")
    ...  # deliver to ("127.0.0.1", port.getHost().port)
    mta.envelopes   # every message received, with the reply it got
    mta.sessions    # every connection: commands seen, EHLO name, TLS, AUTH user
    yield mta.when_idle()  # before the test ends: all connections closed

Replies are scripted per step: "greeting", "ehlo", "helo", "starttls", "mail", "rcpt",
"data" (the reply to DATA), "dot" (the reply at end of data), "rset", "quit". A reply
spec is one of
    250                        a code; the text is a plausible default
    "550 5.1.1 no such user"   the whole reply line ("\\n" separates lines of a
                               multi-line reply, each written as given)
    DROP                       close the connection instead of replying
    Delayed(30, spec)          answer after 30 seconds of `clock` (input waits meanwhile)
    [spec, spec, ...]          one per use, in order, over all connections; the last repeats
`rcpt` may also be a dict of address -> spec (other addresses get `rcpt_default`).
A 421 reply closes the connection after it is written, as a real server does.

Extensions offered in the EHLO reply: PIPELINING, SIZE <size> (and SIZE is enforced),
8BITMIME, SMTPUTF8, STARTTLS (when tls_options are given or break_tls is set, and TLS is
not active yet) and AUTH PLAIN (when `auth` credentials are given; only under TLS unless
auth_without_tls). break_tls answers 220 to STARTTLS and then sends bytes that are not TLS,
so the client's handshake fails for real.
"""

from __future__ import annotations

import base64
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

__all__ = [
    "DROP",
    "Delayed",
    "ReceivedEnvelope",
    "RemoteMTA",
    "SessionRecord",
    "self_signed_tls_options",
]

HOSTNAME = "mx.remote.test"


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()


@attrs.frozen
class Delayed:
    seconds: float
    reply: Any


@attrs.define
class SessionRecord:
    """One connection as the server saw it."""

    commands: list[str] = attrs.Factory(list)  # every command line, decoded
    helo: str | None = None  # the last EHLO/HELO name
    tls: bool = False
    auth_user: str | None = None
    server_name: str | None = None  # what the client sent as TLS SNI
    closed: bool = False


@attrs.frozen
class ReceivedEnvelope:
    """A message whose data was received in full."""

    sender: str
    recipients: tuple[str, ...]  # the accepted ones
    data: bytes  # dot-unstuffed, up to and including the CRLF before the final "."
    mail_parameters: tuple[str, ...]  # e.g. ("SIZE=2048", "BODY=8BITMIME")
    tls: bool
    helo: str | None
    auth_user: str | None
    reply_code: int  # what the server answered at end of data; 0 if it dropped instead

    @property
    def accepted(self) -> bool:
        return 200 <= self.reply_code < 300


_DEFAULT_TEXT = {
    "greeting": f"{HOSTNAME} ESMTP remote_mta",
    "ehlo": HOSTNAME,
    "helo": HOSTNAME,
    "starttls": "2.0.0 Ready to start TLS",
    "mail": "2.1.0 Ok",
    "rcpt": "2.1.5 Ok",
    "data": "End data with <CR><LF>.<CR><LF>",
    "dot": "2.0.0 Ok: queued",
    "rset": "2.0.0 Ok",
    "quit": "2.0.0 Bye",
}


def _reply_lines(step: str, value: int | str) -> tuple[int, list[str]]:
    if isinstance(value, int):
        if value < 400:
            text = _DEFAULT_TEXT.get(step, "Ok")
        else:
            text = f"{value // 100}.0.0 remote_mta answers {value} to {step}"
        return value, [f"{value} {text}"]
    lines = value.split("\n")
    return int(lines[-1][:3]), lines


class RemoteMTAProtocol(Protocol):
    def __init__(self, factory: RemoteMTA):
        self.factory = factory
        self.record = SessionRecord()
        self._buffer = b""
        self._in_data = False
        self._scan = 0
        self._waiting = False
        self._closed = False
        self._delayed: Any = None
        self._auth_continuation = False
        self._reset()

    def _reset(self) -> None:
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.mail_parameters: tuple[str, ...] = ()

    # --- connection ---

    def connectionMade(self) -> None:
        self.factory.sessions.append(self.record)
        self.factory._open += 1
        self._respond("greeting", self.factory.pick("greeting", self.factory.greeting))

    def connectionLost(self, reason: Any = None) -> None:
        self._closed = True
        self.record.closed = True
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self.factory._connection_closed()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.transport.loseConnection()

    # --- replies ---

    def _respond(self, step: str, spec: Any, after: Any = None) -> None:
        """Answer (or drop, or wait first); then `after(code)`, then read on."""
        if isinstance(spec, Delayed):
            self._waiting = True
            self._delayed = self.factory.clock.callLater(
                spec.seconds, self._delayed_respond, step, spec.reply, after
            )
            return
        if spec is DROP:
            self._close()
            return
        code, lines = _reply_lines(step, spec)
        self.transport.write("".join(line + "\r\n" for line in lines).encode("utf-8"))
        if after is not None:
            after(code)
        if code == 421:
            self._close()

    def _delayed_respond(self, step: str, spec: Any, after: Any) -> None:
        self._delayed = None
        self._waiting = False
        self._respond(step, spec, after)
        self._process()

    # --- input ---

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._buffer += data
        self._process()

    def _process(self) -> None:
        while not self._waiting and not self._closed:
            if self._in_data:
                if self._buffer.startswith(b".\r\n"):
                    end = 0
                else:
                    found = self._buffer.find(b"\r\n.\r\n", self._scan)
                    if found < 0:
                        self._scan = max(len(self._buffer) - 4, 0)
                        return
                    end = found + 2
                body, self._buffer = self._buffer[:end], self._buffer[end + 3 :]
                self._in_data = False
                self._scan = 0
                self._end_of_data(body)
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            self._line(line)

    def _line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self.record.commands.append(text)
        if self._auth_continuation:
            self._auth_continuation = False
            self._check_credentials(line)
            return
        verb, _, argument = text.partition(" ")
        handler = getattr(self, "smtp_" + verb.upper(), None) if verb.isalpha() else None
        if handler is None:
            self._respond("unknown", "500 5.5.2 Error: command not recognized")
        else:
            handler(argument)

    # --- commands ---

    def smtp_EHLO(self, argument: str) -> None:
        spec = self.factory.pick("ehlo", self.factory.ehlo)
        if spec == 250:
            spec = self._ehlo_reply()
        elif isinstance(spec, Delayed) and spec.reply == 250:
            spec = Delayed(spec.seconds, self._ehlo_reply())
        self._respond("ehlo", spec, lambda code: self._greeted(code, argument))

    def _ehlo_reply(self) -> str:
        lines = [HOSTNAME, *self.factory.keywords(self.record.tls)]
        last = len(lines) - 1
        return "\n".join(
            f"250{' ' if index == last else '-'}{line}" for index, line in enumerate(lines)
        )

    def smtp_HELO(self, argument: str) -> None:
        spec = self.factory.pick("helo", self.factory.helo)
        self._respond("helo", spec, lambda code: self._greeted(code, argument))

    def _greeted(self, code: int, argument: str) -> None:
        if 200 <= code < 300:
            self.record.helo = argument.strip()
            self._reset()

    def smtp_STARTTLS(self, argument: str) -> None:
        factory = self.factory
        if self.record.tls or not (factory.tls_options is not None or factory.break_tls):
            self._respond("starttls", "502 5.5.1 Error: STARTTLS not available")
            return
        self._respond("starttls", factory.pick("starttls", factory.starttls), self._start_tls)

    def _start_tls(self, code: int) -> None:
        if code != 220:
            return
        self._buffer = b""  # what came with the STARTTLS line was sent in clear
        if self.factory.break_tls:
            self.transport.write(b"this is not a TLS server hello\r\n")
            self._close()
            return
        self.transport.startTLS(self.factory.tls_options)
        self.record.tls = True
        self.record.helo = None
        self._reset()

    def smtp_AUTH(self, argument: str) -> None:
        mechanism, _, initial = argument.partition(" ")
        if not self.factory.auth_offered(self.record.tls):
            self._respond("auth", "503 5.5.1 Error: authentication not enabled")
        elif mechanism.upper() != "PLAIN":
            self._respond("auth", "504 5.5.4 Error: unsupported mechanism")
        elif not initial:
            self._auth_continuation = True
            self._respond("auth", "334 ")
        else:
            self._check_credentials(initial.encode("ascii", "replace"))

    def _check_credentials(self, token: bytes) -> None:
        try:
            _, user, password = base64.b64decode(token, validate=True).split(b"\0")
        except ValueError:
            self._respond("auth", "501 5.5.2 Error: cannot decode the response")
            return
        expected_user, expected_password = self.factory.auth  # type: ignore[misc]
        if (user.decode(), password.decode()) == (expected_user, expected_password):
            self.record.auth_user = user.decode()
            self._respond("auth", "235 2.7.0 Authentication successful")
        else:
            self._respond("auth", "535 5.7.8 Error: authentication failed")

    def smtp_MAIL(self, argument: str) -> None:
        if self.record.helo is None:
            self._respond("mail", "503 5.5.1 Error: send HELO/EHLO first")
            return
        if self.sender is not None:
            self._respond("mail", "503 5.5.1 Error: nested MAIL command")
            return
        parsed = _parse_path(argument, "FROM:")
        if parsed is None:
            self._respond("mail", "501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        sender, parameters = parsed
        size = self.factory.size
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.upper() == "SIZE" and size and value.isdigit() and int(value) > size:
                self._respond("mail", "552 5.3.4 Error: message too big")
                return

        def accepted(code: int) -> None:
            if 200 <= code < 300:
                self.sender = sender
                self.mail_parameters = parameters

        self._respond("mail", self.factory.pick("mail", self.factory.mail), accepted)

    def smtp_RCPT(self, argument: str) -> None:
        if self.sender is None:
            self._respond("rcpt", "503 5.5.1 Error: need MAIL command")
            return
        parsed = _parse_path(argument, "TO:")
        if parsed is None:
            self._respond("rcpt", "501 5.5.4 Syntax: RCPT TO:<address>")
            return
        address = parsed[0]
        spec = self.factory.rcpt
        if isinstance(spec, dict):
            key = address if address in spec else address.lower()
            spec = self.factory.pick(("rcpt", key), spec.get(key, self.factory.rcpt_default))
        else:
            spec = self.factory.pick("rcpt", spec)

        def accepted(code: int) -> None:
            if 200 <= code < 300:
                self.recipients.append(address)

        self._respond("rcpt", spec, accepted)

    def smtp_DATA(self, argument: str) -> None:
        if self.sender is None:
            self._respond("data", "503 5.5.1 Error: need MAIL command")
            return
        if not self.recipients:
            self._respond("data", "554 5.5.1 Error: no valid recipients")
            return

        def start(code: int) -> None:
            if code == 354:
                self._in_data = True
                self._scan = 0

        self._respond("data", self.factory.pick("data", self.factory.data), start)

    def _end_of_data(self, body: bytes) -> None:
        data = b"\r\n".join(
            line[1:] if line.startswith(b".") else line for line in body.split(b"\r\n")
        )
        spec = self.factory.pick("dot", self.factory.dot)
        envelope = {
            "sender": self.sender or "",
            "recipients": tuple(self.recipients),
            "data": data,
            "mail_parameters": self.mail_parameters,
            "tls": self.record.tls,
            "helo": self.record.helo,
            "auth_user": self.record.auth_user,
        }
        self._reset()
        final = spec.reply if isinstance(spec, Delayed) else spec
        if final is DROP:
            self.factory.envelopes.append(ReceivedEnvelope(reply_code=0, **envelope))
        self._respond(
            "dot",
            spec,
            lambda code: self.factory.envelopes.append(
                ReceivedEnvelope(reply_code=code, **envelope)
            ),
        )

    def smtp_RSET(self, argument: str) -> None:
        self._reset()
        self._respond("rset", self.factory.pick("rset", self.factory.rset))

    def smtp_NOOP(self, argument: str) -> None:
        self._respond("noop", "250 2.0.0 Ok")

    def smtp_QUIT(self, argument: str) -> None:
        self._respond("quit", self.factory.pick("quit", self.factory.quit), lambda _: self._close())


def _parse_path(argument: str, prefix: str) -> tuple[str, tuple[str, ...]] | None:
    if argument[: len(prefix)].upper() != prefix:
        return None
    rest = argument[len(prefix) :].lstrip(" ")
    if not rest.startswith("<") or ">" not in rest:
        return None
    address, _, parameters = rest[1:].partition(">")
    return address, tuple(parameters.split())


class RemoteMTA(Factory):
    """The server: options are attributes, changeable between connections."""

    protocol = RemoteMTAProtocol
    noisy = False

    def __init__(
        self,
        *,
        clock: Any = None,
        greeting: Any = 220,
        ehlo: Any = 250,
        helo: Any = 250,
        pipelining: bool = True,
        size: int | None = None,
        eightbitmime: bool = True,
        smtputf8: bool = False,
        tls_options: Any = None,
        break_tls: bool = False,
        starttls: Any = 220,
        auth: tuple[str, str] | None = None,
        auth_without_tls: bool = False,
        mail: Any = 250,
        rcpt: Any = 250,
        rcpt_default: Any = 250,
        data: Any = 354,
        dot: Any = 250,
        rset: Any = 250,
        quit: Any = 221,
    ):
        self._clock = clock
        self.greeting = greeting
        self.ehlo = ehlo
        self.helo = helo
        self.pipelining = pipelining
        self.size = size
        self.eightbitmime = eightbitmime
        self.smtputf8 = smtputf8
        self.tls_options = tls_options
        self.break_tls = break_tls
        self.starttls = starttls
        self.auth = auth
        self.auth_without_tls = auth_without_tls
        self.mail = mail
        self.rcpt = rcpt
        self.rcpt_default = rcpt_default
        self.data = data
        self.dot = dot
        self.rset = rset
        self.quit = quit
        self.sessions: list[SessionRecord] = []
        self.envelopes: list[ReceivedEnvelope] = []
        self._uses: dict[Any, int] = {}
        self._open = 0
        self._idle_waiters: list[Deferred] = []

    @property
    def clock(self) -> Any:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock

    def buildProtocol(self, addr: Any) -> RemoteMTAProtocol:
        return self.protocol(self)

    def pick(self, key: Any, spec: Any) -> Any:
        """The spec for this use of a step (a list gives one element per use)."""
        if isinstance(spec, list):
            used = self._uses.get(key, 0)
            self._uses[key] = used + 1
            return spec[min(used, len(spec) - 1)]
        return spec

    def auth_offered(self, tls: bool) -> bool:
        return self.auth is not None and (tls or self.auth_without_tls)

    def keywords(self, tls: bool) -> list[str]:
        keywords = []
        if self.pipelining:
            keywords.append("PIPELINING")
        if self.size is not None:
            keywords.append(f"SIZE {self.size}")
        if self.eightbitmime:
            keywords.append("8BITMIME")
        if self.smtputf8:
            keywords.append("SMTPUTF8")
        if not tls and (self.tls_options is not None or self.break_tls):
            keywords.append("STARTTLS")
        if self.auth_offered(tls):
            keywords.append("AUTH PLAIN")
        return keywords

    @property
    def delivered(self) -> list[ReceivedEnvelope]:
        """The envelopes answered with 2xx at end of data."""
        return [envelope for envelope in self.envelopes if envelope.accepted]

    def when_idle(self) -> Deferred:
        """Fires once no connection is open (wait for it before a loopback test ends)."""
        if self._open == 0:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _connection_closed(self) -> None:
        self._open -= 1
        if self._open == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)


@implementer(IOpenSSLContextFactory)
class _ServerContext:
    def __init__(self, certificate: str, key: str):
        self._context = SSL.Context(SSL.TLS_METHOD)
        self._context.use_certificate_chain_file(certificate)
        self._context.use_privatekey_file(key)
        self._context.set_tlsext_servername_callback(self._server_name)

    @staticmethod
    def _server_name(connection: SSL.Connection) -> None:
        protocol = connection.get_app_data().wrappedProtocol
        name = connection.get_servername()
        protocol.record.server_name = name.decode("ascii") if name else None

    def getContext(self) -> SSL.Context:
        return self._context


def self_signed_tls_options(directory: str, hostname: str = HOSTNAME) -> Any:
    """Server TLS options with a throwaway self-signed certificate written to directory."""
    from tests.e2e.certs import write_self_signed

    return _ServerContext(*write_self_signed(directory, hostname))
