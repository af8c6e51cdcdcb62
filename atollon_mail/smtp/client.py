"""The outbound SMTP client: delivers envelopes to one remote server over one connection.

Written on a plain Protocol rather than twisted.mail.smtp's client so that we control
pipelining (RFC 2920), opportunistic STARTTLS, per-recipient results and timeouts. The
reactor is injected; nothing here imports the global one.

`deliver()` connects, greets, negotiates TLS and AUTH, then runs one transaction per
envelope, in order, and fires with an EnvelopeOutcome for each. It fails with
SessionFailure only when the session broke down before the first transaction started
(connect, greeting, EHLO/HELO, STARTTLS, AUTH); after that every problem is reported per
recipient, code 0 meaning "no reply" (connection lost or timed out: always temporary).

With `progress`, the caller hears of each envelope as soon as its reply is in, and is
asked before each message's final dot goes out; the dot waits for the Deferred it
returns (the caller writes down that the dot is being sent, so that after a crash it
knows which messages may have been delivered without their reply being recorded).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "DotPending",
    "Envelope",
    "EnvelopeOutcome",
    "Extensions",
    "RecipientOutcome",
    "SessionFailure",
    "deliver",
    "dot_stuff",
    "normalize_line_endings",
    "parse_ehlo",
]

log = Logger()
_TimeoutError = net_error.TimeoutError  # not the builtin of the same name

TLS_MODES = ("opportunistic", "required", "none")
QUIT_GRACE = 5.0  # seconds we wait for 221 (and for the close) before aborting
MAX_REPLY_LINE = 64 * 1024  # bytes without a line end before we call the server broken
MAX_REPLY_LINES = 1000  # lines in one multi-line reply

# Characters that could end or extend an SMTP command if they got into an address.
_UNSAFE_ADDRESS = re.compile(r"[\x00-\x1f\x7f<>]")


@attrs.frozen
class Envelope:
    sender: str  # "" means the null reverse-path <>
    recipients: tuple[str, ...] = attrs.field(converter=tuple)
    raw: bytes  # the message; bare LF/CR line ends are sent as CRLF
    key: object = None  # opaque, handed back in the outcome


@attrs.frozen
class RecipientOutcome:
    recipient: str
    code: int  # the reply code that decided this recipient; 0 when there was no reply
    reply: str  # one line, e.g. "550 5.1.1 <x@y>: no such user"
    # No reply came after the message's final dot was sent (code 0): the server may have
    # taken the message, so a retry may deliver it twice (RFC 1047).
    uncertain: bool = False

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300


@attrs.frozen
class EnvelopeOutcome:
    envelope: Envelope
    recipients: tuple[RecipientOutcome, ...]


@attrs.frozen
class DotPending:
    """An envelope whose message data is about to be sent: the final dot goes out (and
    the server may deliver it) once the `progress` callback's Deferred fires."""

    envelope: Envelope
    recipients: tuple[int, ...]  # indexes into envelope.recipients: those accepted at RCPT


# progress(finished, dot) -> Deferred | None: `finished` are the envelopes decided since
# the last call, in order; `dot`, when not None, waits for the returned Deferred (None:
# go on at once; a failure: the dot is not sent and the connection is dropped).
Progress = Callable[[list[EnvelopeOutcome], DotPending | None], Any]


class SessionFailure(Exception):
    """The session failed before any transaction could be decided."""

    def __init__(self, code: int, reply: str, permanent: bool | None = None):
        super().__init__(reply)
        self.code = code
        self.reply = reply
        self.permanent = 500 <= code < 600 if permanent is None else permanent

    def __repr__(self) -> str:
        return f"SessionFailure({self.code!r}, {self.reply!r}, permanent={self.permanent!r})"


@attrs.frozen
class Extensions:
    """What the server's EHLO reply offered (all off after HELO)."""

    pipelining: bool = False
    size: int | None = None  # None: SIZE not offered; 0: offered without a limit
    eightbitmime: bool = False
    smtputf8: bool = False
    starttls: bool = False
    auth: frozenset[str] = frozenset()


def parse_ehlo(lines: Sequence[str]) -> Extensions:
    """The keywords of an EHLO reply; `lines` are the reply texts after the greeting line."""
    values: dict[str, Any] = {}
    mechanisms: set[str] = set()
    for line in lines:
        words = line.upper().split()
        if not words:
            continue
        keyword = words[0]
        if keyword == "PIPELINING":
            values["pipelining"] = True
        elif keyword == "SIZE":
            limit = words[1] if len(words) > 1 else "0"
            values["size"] = int(limit) if limit.isdigit() else 0
        elif keyword == "8BITMIME":
            values["eightbitmime"] = True
        elif keyword == "SMTPUTF8":
            values["smtputf8"] = True
        elif keyword == "STARTTLS":
            values["starttls"] = True
        elif keyword == "AUTH" or keyword.startswith("AUTH="):
            # "AUTH=PLAIN LOGIN" is the pre-RFC form some servers still send
            first = keyword[5:]
            mechanisms.update(([first] if first else []) + words[1:])
    return Extensions(auth=frozenset(mechanisms), **values)


def normalize_line_endings(raw: bytes) -> bytes:
    """The message with every line ending as CRLF (only copies when it has to)."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") == crlf and raw.count(b"\r") == crlf:
        return raw
    # A bare CR or LF is never sent as is: servers disagree on it (SMTP smuggling).
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def dot_stuff(message: bytes) -> bytes:
    """Message data ready to send after 354: dot-stuffed, CRLF-terminated, with the final dot."""
    if message.startswith(b"."):
        message = b"." + message
    message = message.replace(b"\r\n.", b"\r\n..")
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_client_options: CertificateOptions | None = None


@implementer(IOpenSSLClientConnectionCreator)
class _OpportunisticTLS:
    """Client TLS that does not check the certificate (like Postfix's `may` level).

    An unverified TLS session still beats plain text against a passive listener, and MX
    certificates are too often self-signed or for another name to insist on them.
    """

    def __init__(self, server_name: str | None):
        global _client_options
        if _client_options is None:
            _client_options = CertificateOptions(verify=False)  # its context is reused
        self._options = _client_options
        self._sni = None
        if server_name and server_name.isascii() and not _is_ip_address(server_name):
            self._sni = server_name.rstrip(".").encode("ascii")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._options.getContext(), None)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        return connection


class _Transaction:
    """One envelope's progress: outcomes[i] stays None until recipient i is decided."""

    __slots__ = (
        "envelope",
        "outcomes",
        "to_send",
        "accepted",
        "mail_ok",
        "pipelined",
        "cursor",
        "followed",
        "dot_sent",
    )

    def __init__(self, envelope: Envelope):
        self.envelope = envelope
        self.outcomes: list[RecipientOutcome | None] = [None] * len(envelope.recipients)
        self.to_send: list[int] = []  # recipient indexes that get a RCPT TO
        self.accepted: list[int] = []
        self.mail_ok = False
        self.pipelined = False
        self.cursor = 0
        # The next transaction's commands went out behind this one's message data.
        self.followed = False
        self.dot_sent = False  # the final "." was written

    def decide(self, index: int, code: int, reply: str, uncertain: bool = False) -> None:
        if self.outcomes[index] is None:
            self.outcomes[index] = RecipientOutcome(
                self.envelope.recipients[index], code, reply, uncertain
            )

    def decide_all(self, code: int, reply: str) -> None:
        # No reply after the dot: the accepted recipients may have the message.
        uncertain = code == 0 and self.dot_sent
        for index in range(len(self.outcomes)):
            self.decide(index, code, reply, uncertain and index in self.accepted)

    def decided(self) -> bool:
        return all(outcome is not None for outcome in self.outcomes)

    def result(self) -> EnvelopeOutcome:
        return EnvelopeOutcome(self.envelope, tuple(self.outcomes))  # type: ignore[arg-type]


Handler = Callable[[int, str, Any], None]


class SMTPClientProtocol(Protocol):
    """One outbound session; reports to `done(kind, value)` once the connection is gone.

    kind is "outcomes" (a list of EnvelopeOutcome), "failure" (a SessionFailure) or
    "tls-failed" (a SessionFailure: the TLS handshake broke, a plain retry may work).
    """

    def __init__(
        self,
        clock: Any,
        envelopes: Sequence[Envelope],
        done: Callable[[str, Any], None],
        *,
        helo_name: str,
        peer_name: str,
        server_name: str | None,
        tls: str,
        auth: tuple[str, str] | None,
        timeout: float,
        progress: Progress | None = None,
    ):
        self.clock = clock
        self.progress = progress
        self.done = done
        self.helo_name = helo_name
        self.peer_name = peer_name
        self.server_name = server_name
        self.tls_mode = tls
        self.auth = auth
        self.timeout = timeout
        self.extensions = Extensions()
        self.tls_active = False
        self._transactions = [_Transaction(envelope) for envelope in envelopes]
        self._index = -1
        self._started = False  # the first transaction began: report outcomes from now on
        self._rset_needed = False
        self._starttls_declined = False
        self._tls_pending = False  # STARTTLS done, no reply through TLS yet
        self._failure: SessionFailure | None = None
        self._lost_reason: str | None = None
        self._expect: deque[tuple[Handler, Any, str]] = deque()
        self._buffer = b""
        self._reply_lines: list[bytes] = []
        self._reply_texts: list[str] = []  # the lines of the reply being handled
        self._discard_input = False
        self._closing = False
        self._reported = False
        self._last_activity = 0.0
        self._timer: Any = None
        self._abort_call: Any = None
        self._next_report = 0  # transactions before this index were given to `progress`
        self._dot_waiting: tuple[_Transaction, bytes] | None = None  # 354 in, dot not sent
        self._gate: Deferred | None = None  # progress's answer the waiting dot waits for

    # --- connection life cycle ---

    def connectionMade(self) -> None:
        self._expect.append((self._on_greeting, None, "the greeting"))
        self._touch()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        for call in (self._timer, self._abort_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._abort_call = None
        if self._reported:
            return
        self._reported = True
        what = self._lost_reason
        if what is None:
            waiting = self._expect[0][2] if self._expect else None
            detail = f" ({reason.getErrorMessage()})" if reason is not None else ""
            if waiting is None:
                what = f"connection to {self.peer_name} lost{detail}"
            else:
                what = f"connection to {self.peer_name} lost before the reply to {waiting}{detail}"
        self._expect.clear()
        if self._tls_pending and not self._started:
            self.done("tls-failed", SessionFailure(0, f"TLS handshake failed: {what}", False))
        elif not self._started:
            self.done("failure", self._failure or SessionFailure(0, what, False))
        else:
            # Also when the final "." went out and its reply did not come: the message may
            # have been accepted, so a retry may deliver it twice (RFC 1047); we still retry.
            self._decide_remaining(0, what)
            self.done("outcomes", [transaction.result() for transaction in self._transactions])

    def _close(self, abort: bool = False) -> None:
        """Close now (abort) or after our writes are flushed, with a bounded wait."""
        if self.transport is None:
            return
        self._closing = True
        self._expect.clear()
        if abort:
            self.transport.abortConnection()
            return
        self.transport.loseConnection()
        if self._abort_call is None:
            self._abort_call = self.clock.callLater(QUIT_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        self.transport.abortConnection()

    def _fail(self, failure: SessionFailure, quit: bool = True) -> None:
        """The session cannot go on before any transaction started."""
        self._failure = failure
        if quit and not self._closing:
            self.transport.write(b"QUIT\r\n")
        self._close()

    def _decide_remaining(self, code: int, reply: str) -> None:
        for transaction in self._transactions:
            transaction.decide_all(code, reply)

    # --- timeout ---

    def _touch(self) -> None:
        self._last_activity = self.clock.seconds()
        if self._timer is None and not self._closing:
            self._timer = self.clock.callLater(self.timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        # One timer re-arms itself for the remainder: activity only stamps a time.
        self._timer = None
        if self._closing or not self._expect:
            return
        remaining = self.timeout - (self.clock.seconds() - self._last_activity)
        if remaining > 0:
            self._timer = self.clock.callLater(remaining, self._check_timeout)
            return
        waiting = self._expect[0][2]
        self._lost_reason = (
            f"timed out after {self.timeout:g}s waiting for {self.peer_name} to reply to {waiting}"
        )
        self._close(abort=True)

    # --- replies ---

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        # Bytes after STARTTLS reach us only through a completed handshake.
        self._tls_pending = False
        self._touch()
        if self._buffer:
            data = self._buffer + data
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            self._line_received(line[:-1] if line.endswith(b"\r") else line)
            if self._closing:
                return
            if self._discard_input:
                # Bytes after the 220 to STARTTLS came in clear: never trust them.
                self._discard_input = False
                self._buffer = b""
                return
        if len(self._buffer) > MAX_REPLY_LINE:
            self._protocol_error("a reply line that never ends")
            return
        if self.progress is not None:
            # Once per chunk of replies: what one read decided goes out in one report.
            self._report()

    # --- progress: envelopes decided, dots waiting ---

    def _report(self) -> None:
        finished = []
        transactions = self._transactions
        while self._next_report < len(transactions) and transactions[self._next_report].decided():
            finished.append(transactions[self._next_report].result())
            self._next_report += 1
        dot = None
        if self._dot_waiting is not None and self._gate is None:
            transaction = self._dot_waiting[0]
            dot = DotPending(transaction.envelope, tuple(transaction.accepted))
        if not finished and dot is None:
            return
        try:
            answer = self.progress(finished, dot)  # type: ignore[misc]
        except Exception:
            if dot is None:
                log.failure("reporting delivery outcomes failed")
                return
            answer = fail()
        if dot is None:
            return
        if not isinstance(answer, Deferred):
            self._send_dot()
            return
        self._gate = answer
        answer.addCallbacks(self._gate_opened, self._gate_failed)

    def _gate_opened(self, _: Any) -> None:
        self._gate = None
        if not self._closing and self._dot_waiting is not None:
            self._send_dot()

    def _gate_failed(self, failure: Failure) -> None:
        self._gate = None
        if self._closing:
            return
        # Never send a dot that was not written down: drop the connection instead (the
        # server discards the unfinished message), and the envelope is tried again.
        log.failure("recording a final dot before sending it failed", failure)
        self._lost_reason = (
            f"the message for {self.peer_name} was not finished: "
            f"recording it failed ({failure.getErrorMessage()})"
        )
        self._close(abort=True)

    def _protocol_error(self, what: str) -> None:
        self._lost_reason = f"{self.peer_name} sent {what}"
        self._close(abort=True)

    def _line_received(self, line: bytes) -> None:
        code = line[:3]
        separator = line[3:4]
        if not code.isdigit() or separator not in (b" ", b"-", b""):
            self._protocol_error(f"a malformed reply: {line[:100]!r}")
            return
        self._reply_lines.append(line[4:])
        if separator == b"-":
            if len(self._reply_lines) > MAX_REPLY_LINES:
                self._protocol_error("a reply with too many lines")
            return
        texts = [text.decode("utf-8", "replace") for text in self._reply_lines]
        self._reply_lines = []
        reply = f"{code.decode()} {' '.join(texts)}".rstrip()
        self._reply_received(int(code), reply, texts)

    def _reply_received(self, code: int, reply: str, texts: list[str]) -> None:
        if not self._expect:
            if code == 421:  # the server is going away between our commands
                self._session_ended(code, reply)
            return
        handler, argument, _ = self._expect.popleft()
        if code == 421 and handler != self._on_quit:
            self._session_ended(code, reply)
            return
        self._reply_texts = texts
        handler(code, reply, argument)

    def _session_ended(self, code: int, reply: str) -> None:
        """421: the server closes the session; whatever is undecided gets that reply."""
        if self._started:
            self._decide_remaining(code, reply)
        else:
            self._failure = SessionFailure(code, reply, False)
        self._close()

    # --- commands ---

    def _send(self, command: str, handler: Handler, argument: Any = None) -> None:
        self.transport.write(command.encode("utf-8") + b"\r\n")
        label = command.split(":", 1)[0] if ":" in command else command.split(" ", 1)[0]
        self._expect.append((handler, argument, label))
        self._touch()

    # --- session set-up ---

    def _said(self, reply: str, when: str) -> str:
        # The server's words first, so the text still reads as an SMTP reply (DSNs, logs).
        return f"{reply} ({self.peer_name}, {when})"

    def _on_greeting(self, code: int, reply: str, _: Any) -> None:
        if code != 220:
            self._fail(SessionFailure(code, self._said(reply, "greeting")))
            return
        self._send(f"EHLO {self.helo_name}", self._on_ehlo)

    def _on_ehlo(self, code: int, reply: str, _: Any) -> None:
        if 200 <= code < 300:
            self.extensions = parse_ehlo(self._reply_texts[1:])
            self._after_hello()
        elif 500 <= code < 600 and not self.tls_active:
            self._send(f"HELO {self.helo_name}", self._on_helo)
        else:
            self._fail(SessionFailure(code, self._said(reply, "in reply to EHLO")))

    def _on_helo(self, code: int, reply: str, _: Any) -> None:
        if not 200 <= code < 300:
            self._fail(SessionFailure(code, self._said(reply, "in reply to HELO")))
            return
        self.extensions = Extensions()
        self._after_hello()

    def _after_hello(self) -> None:
        if not self.tls_active and self.tls_mode != "none":
            if self.extensions.starttls and not self._starttls_declined:
                self._send("STARTTLS", self._on_starttls)
                return
            if self.tls_mode == "required":
                self._fail(
                    SessionFailure(
                        0,
                        f"TLS is required but {self.peer_name} does not offer STARTTLS",
                        False,
                    )
                )
                return
        if self.auth is not None:
            self._authenticate()
            return
        self._start_transactions()

    def _on_starttls(self, code: int, reply: str, _: Any) -> None:
        if code != 220:
            if self.tls_mode == "required":
                message = f"TLS is required but {self.peer_name} refused STARTTLS: {reply}"
                self._fail(SessionFailure(code, message, False))
                return
            self._starttls_declined = True  # opportunistic: go on in plain text
            self._after_hello()
            return
        self._discard_input = True
        start_tls = getattr(self.transport, "startTLS", None)
        try:
            if start_tls is None:
                raise RuntimeError("the transport cannot start TLS")
            start_tls(_OpportunisticTLS(self.server_name))
        except Exception as problem:
            self._tls_pending = True
            self._lost_reason = f"cannot start TLS with {self.peer_name}: {problem}"
            self._close(abort=True)
            return
        self.tls_active = True
        self._tls_pending = True
        self.extensions = Extensions()
        self._send(f"EHLO {self.helo_name}", self._on_ehlo)

    def _authenticate(self) -> None:
        if not self.tls_active:
            self._fail(
                SessionFailure(
                    0,
                    f"not sending credentials to {self.peer_name} without TLS "
                    "(STARTTLS not offered or refused)",
                    False,
                )
            )
            return
        if "PLAIN" not in self.extensions.auth:
            offered = " ".join(sorted(self.extensions.auth)) or "none"
            self._fail(
                SessionFailure(
                    0,
                    f"{self.peer_name} does not offer AUTH PLAIN (offers: {offered})",
                    False,
                )
            )
            return
        user, password = self.auth  # type: ignore[misc]
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
        self.transport.write(f"AUTH PLAIN {token}\r\n".encode("ascii"))
        self._expect.append((self._on_auth, None, "AUTH"))
        self._touch()

    def _on_auth(self, code: int, reply: str, _: Any) -> None:
        if code != 235:
            self._fail(SessionFailure(code, self._said(reply, "in reply to AUTH PLAIN")))
            return
        self._start_transactions()

    # --- transactions ---

    def _start_transactions(self) -> None:
        self._started = True
        self._next_transaction()

    def _next_transaction(self, after_data: bool = False) -> bool:
        """Begin the next envelope that has something to send, or QUIT when none is left;
        whether one was begun. after_data: the reply to a message's end of data is still
        to come, so there is no QUIT yet (its reply calls this again)."""
        while not self._closing:
            if self._index + 1 >= len(self._transactions):
                if not after_data:
                    self._send("QUIT", self._on_quit)
                    # Everything is decided: the 221 is a courtesy we wait for only briefly.
                    self._abort_call = self.clock.callLater(QUIT_GRACE, self._abort)
                return False
            self._index += 1
            if self._begin(self._transactions[self._index]):
                return True
        return False

    def _address_problem(self, address: str) -> tuple[int, str] | None:
        if _UNSAFE_ADDRESS.search(address):
            return 553, f"553 5.1.3 {address!r}: bad address syntax, not sent"
        if not address.isascii() and not self.extensions.smtputf8:
            return 553, (
                f"553 5.6.7 <{address}>: the address needs SMTPUTF8, "
                f"which {self.peer_name} does not offer"
            )
        return None

    def _begin(self, transaction: _Transaction) -> bool:
        """Send MAIL/RCPT(/DATA); False when nothing was sent for this envelope."""
        envelope = transaction.envelope
        problem = self._address_problem(envelope.sender)
        if problem is not None:
            transaction.decide_all(*problem)
            return False
        utf8 = not envelope.sender.isascii()
        for index, recipient in enumerate(envelope.recipients):
            problem = self._address_problem(recipient)
            if problem is not None:
                transaction.decide(index, *problem)
            else:
                transaction.to_send.append(index)
                utf8 = utf8 or not recipient.isascii()
        if not transaction.to_send:
            return False

        message = normalize_line_endings(envelope.raw)
        extensions = self.extensions
        parameters = ""
        if extensions.size is not None:
            parameters += f" SIZE={len(message)}"
        if extensions.eightbitmime and not message.isascii():
            parameters += " BODY=8BITMIME"
        if utf8:
            parameters += " SMTPUTF8"
        mail = f"MAIL FROM:<{envelope.sender}>{parameters}"
        recipients = envelope.recipients

        transaction.pipelined = extensions.pipelining
        if not transaction.pipelined:
            if self._rset_needed:
                self._rset_needed = False
                self._send("RSET", self._on_rset_then_mail, (transaction, mail))
            else:
                self._send(mail, self._on_mail, transaction)
            return True

        # One write for the whole group (RFC 2920); the replies come back in this order.
        commands = ["RSET"] if self._rset_needed else []
        self._rset_needed = False
        commands.append(mail)
        commands.extend(f"RCPT TO:<{recipients[index]}>" for index in transaction.to_send)
        commands.append("DATA")
        self.transport.write(("\r\n".join(commands) + "\r\n").encode("utf-8"))
        expect = self._expect
        if commands[0] == "RSET":
            expect.append((self._on_rset, None, "RSET"))
        expect.append((self._on_mail, transaction, "MAIL FROM"))
        for index in transaction.to_send:
            expect.append((self._on_rcpt, (transaction, index), "RCPT TO"))
        expect.append((self._on_data, (transaction, message), "DATA"))
        self._touch()
        return True

    def _on_rset(self, code: int, reply: str, _: Any) -> None:
        pass  # the MAIL after it tells whether the server is still with us

    def _on_rset_then_mail(self, code: int, reply: str, argument: Any) -> None:
        transaction, mail = argument
        self._send(mail, self._on_mail, transaction)

    def _on_mail(self, code: int, reply: str, transaction: _Transaction) -> None:
        if 200 <= code < 300:
            transaction.mail_ok = True
            if not transaction.pipelined:
                self._send_rcpt(transaction)
            return
        transaction.decide_all(code, reply)
        self._rset_needed = True
        if not transaction.pipelined:
            self._next_transaction()
        # pipelined: the RCPT and DATA replies (503) are still to come and are ignored

    def _send_rcpt(self, transaction: _Transaction) -> None:
        index = transaction.to_send[transaction.cursor]
        recipient = transaction.envelope.recipients[index]
        self._send(f"RCPT TO:<{recipient}>", self._on_rcpt, (transaction, index))

    def _on_rcpt(self, code: int, reply: str, argument: tuple[_Transaction, int]) -> None:
        transaction, index = argument
        if transaction.mail_ok:
            if 200 <= code < 300:
                transaction.accepted.append(index)
            else:
                transaction.decide(index, code, reply)
        if transaction.pipelined:
            return
        transaction.cursor += 1
        if transaction.cursor < len(transaction.to_send):
            self._send_rcpt(transaction)
        elif transaction.accepted:
            message = normalize_line_endings(transaction.envelope.raw)
            self._send("DATA", self._on_data, (transaction, message))
        else:
            self._rset_needed = True
            self._next_transaction()

    def _on_data(self, code: int, reply: str, argument: tuple[_Transaction, bytes]) -> None:
        transaction, message = argument
        if code == 354:
            if not (transaction.accepted and transaction.mail_ok):
                # 354 with no recipient (a pipelining server that should have said 554):
                # send an empty message so the dialogue stays in step, and drop it.
                self.transport.write(b".\r\n")
                self._expect.append((self._on_discarded_data, None, "the end of data"))
                self._touch()
                return
            self._dot_waiting = (transaction, message)
            if self.progress is None:
                self._send_dot()
            # else: sent once `progress` has answered (see _report)
            return
        for index in transaction.accepted:
            transaction.decide(index, code, reply)
        self._rset_needed = True
        self._next_transaction()

    def _send_dot(self) -> None:
        transaction, message = self._dot_waiting  # type: ignore[misc]
        self._dot_waiting = None
        transaction.dot_sent = True
        self.transport.write(dot_stuff(message))
        self._expect.append((self._on_end_of_data, transaction, "the end of data"))
        if transaction.pipelined:
            # Message data may begin a group (RFC 2920 3.1): the next envelope's commands
            # follow the final dot without waiting for its reply, so a message costs one
            # round trip, not two. Each transaction ends with the reply to its dot,
            # whatever it says, so the next one is unharmed.
            transaction.followed = self._next_transaction(after_data=True)
        self._touch()

    def _on_end_of_data(self, code: int, reply: str, transaction: _Transaction) -> None:
        for index in transaction.accepted:
            transaction.decide(index, code, reply)
        if not transaction.followed:
            self._next_transaction()

    def _on_discarded_data(self, code: int, reply: str, _: Any) -> None:
        self._rset_needed = True
        self._next_transaction()

    def _on_quit(self, code: int, reply: str, _: Any) -> None:
        self._close()


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, build: Callable[[], SMTPClientProtocol]):
        self._build = build

    def buildProtocol(self, addr: Any) -> SMTPClientProtocol:
        return self._build()


class _Delivery:
    """One call of deliver(): a connection, and one plain retry if TLS breaks."""

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        envelopes: tuple[Envelope, ...],
        options: dict[str, Any],
        connect_timeout: float,
    ):
        self.reactor = reactor
        self.host = host
        self.port = port
        self.envelopes = envelopes
        self.options = options
        self.connect_timeout = connect_timeout
        server_name = options["server_name"]
        if server_name and server_name != host:
            self.peer_name = f"{server_name} [{host}]:{port}"
        else:
            self.peer_name = f"[{host}]:{port}" if _is_ip_address(host) else f"{host}:{port}"
        self.result: Deferred = Deferred()
        self._retried = False

    def start(self, tls: str) -> None:
        self.tls = tls
        factory = _ClientFactory(self._build_protocol)
        connecting = self._endpoint().connect(factory)
        timer = self.reactor.callLater(self.connect_timeout, connecting.cancel)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        connecting.addBoth(stop_timer)
        connecting.addErrback(self._connect_failed)

    def _endpoint(self) -> Any:
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return HostnameEndpoint(
                self.reactor, self.host, self.port, timeout=self.connect_timeout
            )
        endpoint_class = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
        return endpoint_class(self.reactor, self.host, self.port, timeout=self.connect_timeout)

    def _build_protocol(self) -> SMTPClientProtocol:
        return SMTPClientProtocol(
            self.reactor,
            self.envelopes,
            self._session_done,
            peer_name=self.peer_name,
            tls=self.tls,
            **self.options,
        )

    def _connect_failed(self, failure: Failure) -> None:
        if failure.check(
            CancelledError, net_error.ConnectingCancelledError, net_error.TimeoutError
        ):
            reply = f"timed out after {self.connect_timeout:g}s connecting to {self.peer_name}"
        else:
            reply = f"cannot connect to {self.peer_name}: {failure.getErrorMessage()}"
        self.result.errback(SessionFailure(0, reply, False))

    def _session_done(self, kind: str, value: Any) -> None:
        if kind == "outcomes":
            self.result.callback(value)
        elif kind == "tls-failed" and self.tls == "opportunistic" and not self._retried:
            self._retried = True
            log.info(
                "STARTTLS with {peer} failed ({reason}); retrying in plain text",
                peer=self.peer_name,
                reason=value.reply,
            )
            self.start("none")
        else:
            self.result.errback(value)


def deliver(
    reactor: Any,
    host: str,
    port: int,
    envelopes: Sequence[Envelope],
    *,
    helo_name: str,
    server_name: str | None = None,
    tls: str = "opportunistic",
    auth: tuple[str, str] | None = None,
    timeout: float = 300,
    connect_timeout: float = 30,
    progress: Progress | None = None,
) -> Deferred:
    """Deliver `envelopes` in order over one SMTP connection to host:port.

    Fires with one EnvelopeOutcome per envelope, in order, once the connection is closed;
    fails with SessionFailure when the session broke before the first transaction.

    tls: "opportunistic" uses STARTTLS when offered, without checking the certificate, and
    retries once in plain text if the handshake fails; "required" fails the session
    (temporarily) without TLS; "none" never starts TLS. auth: (user, password) for AUTH
    PLAIN, only ever sent over TLS. timeout bounds each wait for a reply. progress: see
    the module's docstring and `Progress`.
    """
    if tls not in TLS_MODES:
        raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {tls!r}")
    envelopes = tuple(envelopes)
    if not envelopes:
        return succeed([])
    options = {
        "helo_name": helo_name,
        "server_name": server_name,
        "auth": auth,
        "timeout": timeout,
        "progress": progress,
    }
    delivery = _Delivery(reactor, host, port, envelopes, options, connect_timeout)
    delivery.start(tls)
    return delivery.result
