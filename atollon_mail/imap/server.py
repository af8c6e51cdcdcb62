"""The IMAP4rev1 server of the appliance (RFC 3501 with LITERAL+, SASL-IR, ID, ENABLE,
IDLE, NAMESPACE, UIDPLUS, MOVE, UNSELECT, SPECIAL-USE, CHILDREN and CONDSTORE).

Our own protocol rather than twisted.mail.imap4.IMAP4Server, which keeps whole messages in
memory and lacks most of those extensions (see the design guide). It follows the SMTP
server's hardened patterns (atollon_mail.smtp.server): one input buffer split only at
CRLF, commands run strictly one at a time (a pending store operation holds back whatever
the client pipelined, and reading pauses when too much is held), and bounds on everything
a client can make us hold:

- a command's lines together at most MAX_LINE octets; a literal is refused BEFORE it is
  read when it is larger than its limit (APPEND's message: [smtp] max_message_size; any
  other literal: MAX_LITERAL): a synchronizing one gets a tagged NO [TOOBIG] (APPEND) or
  BAD and no continuation, a non-synchronizing one (LITERAL+) gets BAD and the session
  is closed, since its octets are already on their way;
- time, on the injected clock: before login, [imap] login_timeout for the whole session
  and at most MAX_UNAUTHENTICATED_COMMANDS commands; after it, [imap] idle_timeout of
  silence (the autologout, 30 minutes); and a command, once begun, must arrive whole
  within COMMAND_TIMEOUT (a literal may take longer at MIN_LITERAL_RATE octets a second):
  a client trickling bytes gains nothing;
- LOGIN and AUTHENTICATE only over TLS (LOGINDISABLED and no AUTH= before), through the
  appliance's one authenticator and its throttle.

The folders are the store's (atollon_mail.store.imapfolders): every operation names the
user's login and the folder's name, so no other user's mailbox is reachable by any name.
The selected folder is an array of uids (imap.session.Selected). Messages are read from
the store in batches and written with backpressure: the session is the transport's
producer and waits for its buffer to drain before it reads the next batch, so a folder's
bytes are never all in memory; a large message's body is streamed in slices.

News for the selected folder (EXISTS, EXPUNGE, FETCH FLAGS) is found by comparing the
folder's uids and mod-sequences with the session's. It is looked for on NOOP, CHECK and
IDLE, and after any command once something told the session its folder may have changed:
a message filed by SMTP (the events' `filed` channel, subscribed once by the Watchers),
a change made in the web client (the `changed` channel, told by the store) and changes
made by another IMAP session wake the sessions of that mailbox at once; an idling session
also looks every IDLE_RECHECK seconds, for changes made outside this process (the admin
command).
Sessions in IDLE are counted apart from the active ones (connections.LimitedFactory), so
idling clients never keep an active one out.
"""

from __future__ import annotations

import array
import base64
import binascii
import datetime
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from atollon_mail.addresses import client_ip
from atollon_mail.auth import Throttled
from atollon_mail.config import ImapConfig
from atollon_mail.imap import fetch as fetching
from atollon_mail.imap import search as searching
from atollon_mail.imap.message import envelope
from atollon_mail.imap.parser import (
    Atom,
    Command,
    FetchAtt,
    ParseError,
    literal_marker,
    parse_command,
)
from atollon_mail.imap.session import (
    DELIMITER,
    SHARED_PREFIX,
    SYSTEM_FLAGS,
    BadName,
    Pattern,
    Selected,
    batches,
    decode_name,
    encode_name,
    flag_list,
    sequence_text,
)
from atollon_mail.interfaces import ICountedConnection
from atollon_mail.metrics import Metrics, counting
from atollon_mail.store import imapfolders
from atollon_mail.store.errors import NotFound, ReadOnly, StoreError

__all__ = ["IMAPServerFactory", "IMAPServerProtocol", "Watchers", "connection_refusal"]

log = Logger()

MAX_LINE = 64 * 1024  # octets of a command's lines together (literals apart)
MAX_LITERAL = 64 * 1024  # a literal of any command but APPEND's message
MAX_LITERALS = 32  # literals in one command
PAUSE_BUFFER = 64 * 1024  # pipelined input held while a command runs: pause beyond
HARD_BUFFER = 1024 * 1024  # ... and drop the session beyond (the transport ignored pause)
MAX_UNAUTHENTICATED_COMMANDS = 20
MAX_ERRORS = 20  # BAD answers before the session is closed
COMMAND_TIMEOUT = 60.0  # seconds from a command's first octet to its last
MIN_LITERAL_RATE = 1000  # octets a second a large literal must keep up on average
STORE_TIMEOUT = 300.0  # seconds one batch of our own work may take before we give up
# Seconds the transport may hold output it cannot send (the client reads nothing) before
# the session is closed; meanwhile no command is taken.
OUTPUT_STALL = 300.0
# Octets a second a command's answer must be read at on average (beyond STORE_TIMEOUT),
# so that a client reading a little now and then cannot keep a FETCH running for ever.
MIN_OUTPUT_RATE = 1000
IDLE_RECHECK = 5.0  # seconds between an idling session's looks for changes made elsewhere
FETCH_BATCH = 200  # messages per store read
ITEM_BATCH = 1000  # messages per store read when no whole message is read
BATCH_BYTES = 2 * 1024 * 1024  # raw message octets per store read
LARGE_MESSAGE = 1024 * 1024  # a whole body larger than this is streamed in slices
SLICE = 256 * 1024
SOFTWARE = "atollon-mail"
SEEN = "\\Seen"
DELETED = "\\Deleted"

NOT_AUTHENTICATED = "not authenticated"
AUTHENTICATED = "authenticated"
SELECTED = "selected"
LOGOUT = "logout"

BASE_CAPABILITIES = (
    "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT "
    "SPECIAL-USE CHILDREN CONDSTORE"
)

# Commands and the states they are allowed in.
_ANY = frozenset({NOT_AUTHENTICATED, AUTHENTICATED, SELECTED})
_AUTH = frozenset({AUTHENTICATED, SELECTED})
_SELECTED = frozenset({SELECTED})
STATES = {
    "CAPABILITY": _ANY,
    "NOOP": _ANY,
    "LOGOUT": _ANY,
    "ID": _ANY,
    "STARTTLS": frozenset({NOT_AUTHENTICATED}),
    "LOGIN": frozenset({NOT_AUTHENTICATED}),
    "AUTHENTICATE": frozenset({NOT_AUTHENTICATED}),
    "ENABLE": _AUTH,
    "NAMESPACE": _AUTH,
    "LIST": _AUTH,
    "LSUB": _AUTH,
    "STATUS": _AUTH,
    "SELECT": _AUTH,
    "EXAMINE": _AUTH,
    "CREATE": _AUTH,
    "DELETE": _AUTH,
    "RENAME": _AUTH,
    "SUBSCRIBE": _AUTH,
    "UNSUBSCRIBE": _AUTH,
    "APPEND": _AUTH,
    "IDLE": _AUTH,
    "CHECK": _SELECTED,
    "CLOSE": _SELECTED,
    "UNSELECT": _SELECTED,
    "EXPUNGE": _SELECTED,
    "SEARCH": _SELECTED,
    "FETCH": _SELECTED,
    "STORE": _SELECTED,
    "COPY": _SELECTED,
    "MOVE": _SELECTED,
}
# Commands after which no EXPUNGE may be sent unasked (RFC 3501 7.4.1): the client may
# still be using the sequence numbers it gave. Their UID forms may have them.
_NO_EXPUNGE_AFTER = frozenset({"FETCH", "STORE", "SEARCH"})


def _streamed_body(request: Any) -> tuple[Any, Any] | None:
    """(the whole-message item, a request of the others) when a large message can be
    streamed: the request has one BODY[] or BODY.PEEK[] (partial or not) and nothing
    else that reads the message; else None."""
    whole = [
        item
        for item in request.items
        if isinstance(item, FetchAtt) and item.name.startswith("BODY") and not item.section
    ]
    if len(whole) != 1:
        return None
    rest = fetching.FetchRequest(tuple(item for item in request.items if item is not whole[0]))
    if rest.needs != "none":
        return None
    return whole[0], rest


class _Refused(Exception):
    """A command refused: its tagged answer (status and text)."""

    def __init__(self, status: str, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


def _no(text: str) -> _Refused:
    return _Refused("NO", text)


def _bad(text: str) -> _Refused:
    return _Refused("BAD", text)


def _string(token: Any, what: str = "argument") -> bytes:
    """An astring argument's octets (an atom, a quoted string or a literal)."""
    if isinstance(token, bytes):
        return token
    if isinstance(token, str):
        return token.encode("ascii")
    raise _bad(f"Expected a string as {what}")


def _atom(token: Any, what: str = "argument") -> str:
    if isinstance(token, Atom):
        return str(token)
    raise _bad(f"Expected an atom as {what}")


# RFC 3501 2.3.2: a flag with a backslash is one of these (any other is refused, BAD).
_SYSTEM_NAMES = frozenset(flag.lower() for flag in (*SYSTEM_FLAGS, "\\Recent"))


def _flags(tokens: list) -> tuple[str, ...]:
    """A STORE's or APPEND's flags, without \\Recent (never set by a client)."""
    flags = []
    for token in tokens:
        flag = _atom(token, "flag")
        if flag.startswith("\\"):
            if flag.lower() not in _SYSTEM_NAMES:
                raise _bad(f"{flag} is not a system flag")
            if flag.lower() == "\\recent":
                continue
        flags.append(flag)
    return tuple(flags)


def _name(token: Any) -> str:
    try:
        return decode_name(_string(token, "mailbox name"))
    except BadName as problem:
        raise _bad(str(problem)) from None


def _number(token: Any, what: str) -> int:
    text = _atom(token, what)
    if not text.isdigit() or len(text) > 20:
        raise _bad(f"Expected a number as {what}")
    return int(text)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _parse_date_time(text: bytes) -> datetime.datetime:
    """APPEND's date-time: "17-Jul-1996 02:44:25 -0700" (month names in English whatever
    the locale, so not strptime's %b)."""
    try:
        value = text.decode("ascii").strip()
        date, clock, zone = value.split(" ")
        day, month, year = date.split("-")
        hour, minute, second = (int(part) for part in clock.split(":"))
        if len(zone) != 5 or zone[0] not in "+-" or not zone[1:].isdigit():
            raise ValueError(zone)
        offset = datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:]))
        moment = datetime.datetime(
            int(year),
            _MONTHS.index(month.capitalize()) + 1,
            int(day),
            hour,
            minute,
            second,
            tzinfo=datetime.timezone(offset if zone[0] == "+" else -offset),
        )
    except (ValueError, UnicodeDecodeError):
        raise _bad("Bad date-time; e.g. 17-Jul-1996 02:44:25 -0700") from None
    return moment.astimezone(datetime.UTC)


def connection_refusal(reason: str) -> bytes:
    """What a connection over a listener's cap is told before it is closed."""
    if reason == "client":
        return b"* BYE [UNAVAILABLE] Too many connections from your address, try again later\r\n"
    return b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"


class Watchers:
    """The open sessions by mailbox, shared by the IMAP listeners: what changes a mailbox
    (mail filed by SMTP, another session's STORE, EXPUNGE, COPY, MOVE, APPEND) wakes the
    sessions that have a folder of it selected. Subscribed to `events.filed` once."""

    def __init__(self, events: Any = None):
        self._by_mailbox: dict[int, set[IMAPServerProtocol]] = {}
        if events is not None:
            events.filed.subscribe(self._filed)
            events.changed.subscribe(self._changed_elsewhere)
            events.filed_elsewhere.subscribe(self._filed_elsewhere)
            events.touched_elsewhere.subscribe(self.changed)
            events.missed_elsewhere.subscribe(self._missed_elsewhere)

    def watch(self, mailbox_id: int, session: IMAPServerProtocol) -> None:
        self._by_mailbox.setdefault(mailbox_id, set()).add(session)

    def unwatch(self, mailbox_id: int, session: IMAPServerProtocol) -> None:
        sessions = self._by_mailbox.get(mailbox_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._by_mailbox[mailbox_id]

    def watching(self, mailbox_id: int) -> int:
        return len(self._by_mailbox.get(mailbox_id, ()))

    def changed(self, mailbox_ids, by: IMAPServerProtocol | None = None) -> None:
        """Something changed in these mailboxes (by `by`, which knows already)."""
        for mailbox_id in set(mailbox_ids):
            for session in tuple(self._by_mailbox.get(mailbox_id, ())):
                if session is not by:
                    session.wake()

    def _filed(self, envelope_sender, recipients, raw, junk) -> None:
        self.changed({recipient.mailbox_id for recipient in recipients})

    def _filed_elsewhere(self, mailbox_ids, junk) -> None:
        """Another node filed mail into these mailboxes."""
        self.changed(mailbox_ids)

    def _missed_elsewhere(self) -> None:
        """The other nodes' news may have been lost: every session with a folder
        selected looks."""
        self.changed(tuple(self._by_mailbox))

    def _changed_elsewhere(self, mailbox_address: str) -> None:
        """The web client (or another user of the store) changed that mailbox: the
        sessions with one of its folders selected look. Told by address: a few sessions
        at most are open, and each knows its folder's mailbox."""
        for sessions in tuple(self._by_mailbox.values()):
            for session in tuple(sessions):
                selected = session.selected
                if selected is not None and selected.mailbox_address == mailbox_address:
                    session.wake()


@implementer(ICountedConnection, IPushProducer)
class IMAPServerProtocol(Protocol):
    """One IMAP session. Command handlers are methods `imap_<NAME>(command)`, plain or
    async, returning the tagged answer's text after OK, or raising _Refused; a handler
    that answers by itself returns None."""

    def __init__(self, factory: IMAPServerFactory):
        self.factory = factory
        self.settings: ImapConfig = factory.settings
        self.clock = factory.clock
        self.store = factory.store
        self.state = NOT_AUTHENTICATED
        self.user: Any = None
        self.login = ""
        self.peer: str | None = None
        self.tls = False
        self.condstore = False
        self.selected: Selected | None = None
        self.counter: Any = None  # the LimitedFactory counting this connection
        self._buffer = bytearray()
        self._pos = 0
        self._scan = 0
        self._pieces: list[bytes] = []
        self._line_total = 0
        self._literal: bytearray | None = None
        self._literal_left = 0
        self._literals = 0
        self._literal_bytes = 0
        self._message_taken = False
        self._processing = False
        self._waiting = False
        self._paused = False
        self._closing = False
        self._errors = 0
        self._commands = 0
        self._auth_step: Callable[[bytes], Any] | None = None
        self._auth_tag = ""
        self._idle_tag: str | None = None
        self._idle_counted = False
        self._recheck: Any = None
        self._dirty = False  # the selected folder may have changed
        # A message a command meant to read was expunged (by another session) meanwhile.
        self._vanished = False
        self._timer: Any = None
        self._deadline = 0.0
        self._login_deadline = 0.0
        self._wait_deadline = 0.0
        self._command_started: float | None = None
        self._writable: list[defer.Deferred] = []
        self._output_paused = False
        self._paused_at = 0.0
        self._written = 0  # octets written since the command began
        self._registered = False
        self._when_lost: list[Callable[[], Any]] = []
        self._mailbox_ids: dict[str, int] = {}  # folder name -> mailbox id, from LIST
        self._counted_open = False

    # --- life cycle -------------------------------------------------------------------

    def set_counter(self, counter: Any) -> None:
        self.counter = counter

    def when_lost(self, callback: Callable[[], Any]) -> None:
        self._when_lost.append(callback)

    @property
    def timeout(self) -> float:
        if self.state == NOT_AUTHENTICATED:
            return self.settings.login_timeout
        return self.settings.idle_timeout

    def connectionMade(self) -> None:
        counting(self.factory.sessions.inc)
        counting(self.factory.open_sessions.inc)
        self._counted_open = True
        self.peer = client_ip(getattr(self.transport.getPeer(), "host", None))
        self.tls = self.factory.implicit_tls or ISSLTransport.providedBy(self.transport)
        now = self.clock.seconds()
        self._login_deadline = now + self.settings.login_timeout
        self._deadline = self._login_deadline
        self._timer = self.clock.callLater(self.settings.login_timeout, self._check_time)
        self._produce(True)
        self.send(
            f"* OK [CAPABILITY {self.capabilities()}] {self.factory.hostname} "
            f"IMAP4rev1 {SOFTWARE} ready"
        )

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        if self._counted_open:
            self._counted_open = False
            counting(self.factory.open_sessions.dec)
        self._leave_idle()
        self._unselect()
        for call in (self._timer, self._recheck):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._recheck = None
        self._drop_input()
        waiting, self._writable = self._writable, []
        for waiter in waiting:
            waiter.callback(None)
        callbacks, self._when_lost = self._when_lost, []
        for callback in callbacks:
            callback()

    def close(self, text: str | None = None) -> None:
        """Say BYE (when text is given), stop reading and close once written."""
        if self._closing:
            return
        if text is not None:
            self.send(f"* BYE {text}")
        self._closing = True
        self._leave_idle()
        self._drop_input()
        # TLS closes only once no producer is registered (TLSMemoryBIOProtocol): a client
        # waiting for the end of the connection after LOGOUT (mbsync) would wait forever.
        self._produce(False)
        self.transport.loseConnection()

    def _drop_input(self) -> None:
        self._buffer = bytearray()
        self._pos = self._scan = 0
        self._pieces = []
        self._literal = None
        self._literal_left = 0

    # --- time ---------------------------------------------------------------------------

    def _check_time(self) -> None:
        self._timer = None
        if self._closing:
            return
        now = self.clock.seconds()
        if self._output_paused:
            if now >= self._paused_at + OUTPUT_STALL:
                self.close("Autologout; the client reads nothing")
                return
        if self._waiting:
            deadline = self._wait_deadline
        else:
            deadline = self._deadline
            if self._command_started is not None:
                deadline = min(deadline, self._command_deadline)
            if self.state == NOT_AUTHENTICATED:
                deadline = min(deadline, self._login_deadline)
        if self._output_paused:
            deadline = min(deadline, self._paused_at + OUTPUT_STALL)
        if deadline > now:
            self._timer = self.clock.callLater(deadline - now, self._check_time)
            return
        if self._writable:
            self.close("Autologout; the client reads nothing")
        elif self._waiting:
            log.warn("IMAP session gave up waiting for the store")
            self.close("Server busy, try again later")
        elif self.state == NOT_AUTHENTICATED:
            self.close("Login timeout")
        else:
            self.close("Autologout; idle for too long")

    def _restart_timer(self) -> None:
        """The client's silence starts now (a command was answered)."""
        self._deadline = self.clock.seconds() + self.timeout
        self._command_started = None
        self._arm(self._deadline)

    def _arm(self, deadline: float) -> None:
        call = self._timer
        if call is not None and call.active():
            if call.getTime() <= deadline:
                return  # fires earlier and re-arms itself for the rest
            call.cancel()
        self._timer = self.clock.callLater(
            max(deadline - self.clock.seconds(), 0), self._check_time
        )

    def _begin_command(self) -> None:
        if self._command_started is None:
            self._command_started = self.clock.seconds()
            self._command_deadline = self._command_started + COMMAND_TIMEOUT
            self._written = 0
            self._arm(self._command_deadline)

    # --- output -------------------------------------------------------------------------

    def send(self, line: str | bytes) -> None:
        if self._closing:
            return
        if isinstance(line, str):
            line = line.encode("utf-8")
        self._written += len(line) + 2
        self.transport.write(line + b"\r\n")

    def write(self, data: bytes) -> None:
        if not self._closing:
            self._written += len(data)
            self.transport.write(data)

    def tagged(self, tag: str, status: str, text: str) -> None:
        self.send(f"{tag} {status} {text}")
        if status == "BAD":
            self._errors += 1
            if self._errors > MAX_ERRORS:
                self.close("Too many errors")

    def _produce(self, registered: bool) -> None:
        """Be (or stop being) the transport's producer: it tells us when its buffer is
        full and drained again, so that FETCH waits before reading more."""
        if registered == self._registered:
            return
        self._registered = registered
        if registered:
            self.transport.registerProducer(self, True)
        else:
            self.transport.unregisterProducer()

    # IPushProducer: the transport tells us when its buffer is full and drained again.
    # While output is paused no command is taken (input is held, and the transport's
    # reading paused beyond PAUSE_BUFFER), so a client that sends without reading cannot
    # make us keep answers for it; output paused for OUTPUT_STALL closes the session.
    def pauseProducing(self) -> None:
        if self._output_paused:
            return
        self._output_paused = True
        self._paused_at = self.clock.seconds()
        if not self._closing:
            self._arm(self._paused_at + OUTPUT_STALL)

    def resumeProducing(self) -> None:
        self._release_writers()
        if not (self._waiting or self._processing or self._closing):
            self._process()  # the commands held while output was paused

    def stopProducing(self) -> None:
        self._release_writers()

    def _release_writers(self) -> None:
        self._output_paused = False
        waiting, self._writable = self._writable, []
        if waiting:  # our own work goes on: its time again
            self._wait_deadline = self.clock.seconds() + STORE_TIMEOUT
        for waiter in waiting:
            waiter.callback(None)

    def drained(self) -> defer.Deferred:
        """Fires when the transport can take more (at once when it can now). The wait may
        last STORE_TIMEOUT, and the whole command no longer than STORE_TIMEOUT plus what
        it wrote at MIN_OUTPUT_RATE."""
        self._wait_deadline = self.clock.seconds() + STORE_TIMEOUT
        if not self._output_paused or self._closing:
            return defer.succeed(None)
        if self._command_started is not None:
            self._wait_deadline = min(
                self._wait_deadline,
                self._command_started + STORE_TIMEOUT + self._written / MIN_OUTPUT_RATE,
            )
            self._arm(self._wait_deadline)
        waiter: defer.Deferred = defer.Deferred()
        self._writable.append(waiter)
        return waiter

    # --- input --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        if self._waiting or self._processing:
            self._check_buffer()
            return
        self._process()

    def _process(self) -> None:
        self._processing = True
        try:
            while not (self._waiting or self._closing or self._output_paused):
                available = len(self._buffer) - self._pos
                if available <= 0:
                    break
                if self._literal_left:
                    self._begin_command()
                    take = min(self._literal_left, available)
                    assert self._literal is not None
                    self._literal += self._buffer[self._pos : self._pos + take]
                    self._pos += take
                    self._literal_left -= take
                    # A large literal may take longer than COMMAND_TIMEOUT, at a rate
                    # (but never more than the session's timeout from now).
                    self._command_deadline = min(
                        self._command_deadline + take / MIN_LITERAL_RATE,
                        self.clock.seconds() + self.timeout,
                    )
                    if not self._literal_left:
                        self._pieces.append(bytes(self._literal))
                        self._literal = None
                    continue
                if self._idle_tag is None and self._auth_step is None:
                    self._begin_command()
                end = self._buffer.find(b"\r\n", max(self._pos, self._scan))
                if end < 0:
                    self._scan = max(len(self._buffer) - 1, self._pos)
                    break
                line = bytes(self._buffer[self._pos : end])
                self._pos = end + 2
                self._scan = self._pos
                self._line_received(line)
        finally:
            self._processing = False
        if self._closing:
            return
        if self._pos:
            del self._buffer[: self._pos]
            self._scan = max(self._scan - self._pos, 0)
            self._pos = 0
        self._check_buffer()

    def _check_buffer(self) -> None:
        held = len(self._buffer) - self._pos
        if self._waiting or self._processing or self._output_paused:
            if held > HARD_BUFFER:
                self.close("Too much input while a command runs")
            elif held > PAUSE_BUFFER and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return
        if not self._literal_left and held > MAX_LINE:
            self.close("Command line too long")
            return
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def _line_received(self, line: bytes) -> None:
        if self._auth_step is not None:
            step, self._auth_step = self._auth_step, None
            self._run(self._auth_tag, step, line)
            return
        if self._idle_tag is not None:
            self._idle_line(line)
            return
        self._line_total += len(line)
        tag = self._pieces[0].split(b" ", 1)[0] if self._pieces else line.split(b" ", 1)[0]
        tag_text = tag.decode("ascii", "replace") if tag and tag.isascii() else "*"
        if self._line_total > MAX_LINE:
            self._reset_command()
            self.tagged(tag_text, "BAD", "Command line too long")
            return
        self._pieces.append(line)
        marker = literal_marker(line)
        if marker is None:
            pieces = self._pieces
            self._reset_command()
            self._command(pieces, tag_text)
            return
        size, synchronizing = marker
        self._literals += 1
        message = self._is_message(size)
        limit = self.factory.max_message_size if message else MAX_LITERAL - self._literal_bytes
        if self._literals > MAX_LITERALS or size > limit:
            self._reset_command()
            if not synchronizing:
                # Its octets are on their way: nothing after them can be trusted.
                self.tagged(tag_text, "BAD", "Literal too large")
                self.close("Literal too large")
            elif message:
                self.tagged(tag_text, "NO", "[TOOBIG] Message too large")
            else:
                self.tagged(tag_text, "BAD", "Literal too large")
            return
        if message:
            self._message_taken = True
        else:
            self._literal_bytes += size
        if synchronizing:
            self.send("+ Ready for literal data")
        self._literal = bytearray()
        self._literal_left = size
        if size == 0:
            self._pieces.append(b"")
            self._literal = None

    def _is_message(self, size: int) -> bool:
        """Whether the literal announced is APPEND's message, which may be as large as
        the largest message ([smtp] max_message_size); every other literal of a command
        (a mailbox name, a password, a search string) counts against MAX_LITERAL,
        together. APPEND's message is its last argument, so after a logged-in APPEND
        line the one literal larger than MAX_LITERAL is taken for it (its grammar is
        checked once the command is whole); no second one is."""
        if size <= MAX_LITERAL or self._message_taken or self.state == NOT_AUTHENTICATED:
            return False
        words = self._pieces[0].split(b" ", 2)
        return len(words) >= 2 and words[1].upper() == b"APPEND"

    def _reset_command(self) -> None:
        self._pieces = []
        self._line_total = 0
        self._literals = 0
        self._literal_bytes = 0
        self._message_taken = False

    # --- commands -----------------------------------------------------------------------

    def _command(self, pieces: list[bytes], tag_text: str) -> None:
        try:
            command = parse_command(pieces)
        except ParseError as problem:
            self.tagged(problem.tag or "*", "BAD", str(problem))
            self._restart_timer()
            return
        if self.state == NOT_AUTHENTICATED:
            self._commands += 1
            if self._commands > MAX_UNAUTHENTICATED_COMMANDS:
                self.close("Too many commands before login")
                return
        allowed = STATES.get(command.name)
        handler = getattr(self, "imap_" + command.name, None)
        if allowed is None or handler is None:
            self.tagged(command.tag, "BAD", "Unknown command")
            self._restart_timer()
            return
        if self.state not in allowed:
            if self.state == NOT_AUTHENTICATED:
                text = "Log in first"
            elif self.state == SELECTED or AUTHENTICATED not in allowed:
                text = "Select a mailbox first" if SELECTED in allowed else "Not allowed now"
            else:
                text = "Not allowed now"
            self.tagged(command.tag, "BAD", text)
            self._restart_timer()
            return
        self._run(command.tag, self._execute, handler, command)

    def _run(self, tag: str, function: Callable, *args: Any) -> None:
        """Run a handler (or SASL step); answer with its result when it is there."""
        result = defer.ensureDeferred(self._answer(tag, function, *args))
        settled: list[Any] = []
        result.addBoth(settled.append)
        if settled:
            self._done(settled[0])
            return
        self._waiting = True
        self._wait_deadline = self.clock.seconds() + STORE_TIMEOUT
        self._arm(self._wait_deadline)
        result.addCallback(self._done)

    async def _answer(self, tag: str, function: Callable, *args: Any) -> None:
        try:
            text = function(*args)
            if hasattr(text, "__await__") or isinstance(text, defer.Deferred):
                text = await text
        except _Refused as refused:
            self.tagged(tag, refused.status, refused.text)
            return
        except ParseError as problem:
            self.tagged(tag, "BAD", str(problem))
            return
        except NotFound:
            self.tagged(tag, "NO", "[NONEXISTENT] No such mailbox")
            return
        except ReadOnly:
            self.tagged(tag, "NO", "[READ-ONLY] The mailbox is read-only")
            return
        except StoreError as problem:
            self.tagged(tag, "NO", str(problem).splitlines()[0] if str(problem) else "Refused")
            return
        except Exception:
            log.failure("IMAP command failed")
            self.tagged(tag, "NO", "[SERVERBUG] Internal error, try again later")
            return
        if text is not None:
            self.tagged(tag, "OK", text)

    def _done(self, result: Any) -> None:
        if isinstance(result, Failure):
            log.failure("IMAP session error", result)
        if self._closing:
            return
        self._waiting = False
        if self._idle_tag is None:
            self._restart_timer()
        if self._idle_tag is not None and self._dirty:
            self._run("*", self._idle_sync)  # news came while we were busy
            return
        if not self._processing:
            self._process()

    async def _execute(self, handler: Callable, command: Command) -> str | None:
        text = handler(command)
        if hasattr(text, "__await__"):
            text = await text
        if text is not None and self.selected is not None and self._dirty:
            expunge = command.uid or command.name not in _NO_EXPUNGE_AFTER
            await self.report_changes(expunge)
        return text

    # --- state --------------------------------------------------------------------------

    def capabilities(self) -> str:
        words = [BASE_CAPABILITIES, f"APPENDLIMIT={self.factory.max_message_size}"]
        if self.state == NOT_AUTHENTICATED:
            if self.tls:
                words.append("AUTH=PLAIN")
            else:
                if self.factory.tls_options is not None:
                    words.append("STARTTLS")
                words.append("LOGINDISABLED")
        return " ".join(words)

    def wake(self) -> None:
        """The selected folder's mailbox changed: tell an idling client now, any other
        after its next command."""
        self._dirty = True
        if self._idle_tag is not None and not self._waiting and not self._closing:
            self._run("*", self._idle_sync)

    def _select(self, selected: Selected) -> None:
        self._unselect()
        self.selected = selected
        self.state = SELECTED
        self.factory.watchers.watch(selected.mailbox_id, self)

    def _unselect(self) -> None:
        if self.selected is not None:
            self.factory.watchers.unwatch(self.selected.mailbox_id, self)
            self.selected = None
        if self.state == SELECTED:
            self.state = AUTHENTICATED
        self._dirty = False

    def _changed(self, *mailbox_ids: int) -> None:
        """Our own change: wake the other sessions of these mailboxes."""
        self.factory.watchers.changed(mailbox_ids, by=self)

    def _require_writable(self) -> Selected:
        selected = self.selected
        assert selected is not None
        if not selected.writable:
            raise _no("[READ-ONLY] The mailbox is read-only")
        return selected

    async def report_changes(self, expunge: bool = True) -> None:
        """Tell the client what changed in the selected folder since it was last told:
        EXPUNGE (only where allowed), EXISTS, and FETCH FLAGS of changed messages."""
        selected = self.selected
        if selected is None:
            return
        self._dirty = False
        status = await self.store.run(imapfolders.folder_status, self.login, selected.name)
        if self.selected is not selected:
            return
        same_messages = status.messages == len(selected) and status.uidnext == selected.uidnext
        known = selected.largest_uid  # messages above are new: EXISTS tells of them
        if not same_messages:
            snapshot = await self.store.run(imapfolders.folder_snapshot, self.login, selected.name)
            if self.selected is not selected:
                return
            now = set(snapshot.uids)
            gone = [uid for uid in selected.uids if uid not in now]
            if gone and expunge:
                for seq in selected.remove(gone):
                    self.send(f"* {seq} EXPUNGE")
            elif gone:
                self._dirty = True  # told later, where EXPUNGE is allowed
            before = len(selected)
            if selected.add(snapshot.uids) or len(selected) != before:
                self.send(f"* {len(selected)} EXISTS")
            if not gone or expunge:
                selected.uidnext = snapshot.uidnext
        if status.highestmodseq > selected.highestmodseq:
            await self._report_flags(selected, known)

    async def _report_flags(self, selected: Selected, known: int) -> None:
        changed = await self.store.run(
            imapfolders.changed_since, self.login, selected.name, selected.highestmodseq
        )
        if self.selected is not selected:
            return
        highest = selected.highestmodseq
        for item in changed:
            highest = max(highest, item.modseq)
            if (item.uid, item.modseq) in selected.own_changes or item.uid > known:
                continue
            seq = selected.seq_of(item.uid)
            if seq is not None:
                self.send(self._flags_line(seq, item, uid=True))
        selected.highestmodseq = highest
        selected.own_changes.clear()

    def _flags_line(self, seq: int, item: Any, uid: bool) -> str:
        parts = []
        if uid:
            parts.append(f"UID {item.uid}")
        parts.append("FLAGS " + flag_list(item.flags).decode("ascii"))
        if self.condstore:
            parts.append(f"MODSEQ ({item.modseq})")
        return f"* {seq} FETCH ({' '.join(parts)})"

    # --- any state ----------------------------------------------------------------------

    def imap_CAPABILITY(self, command: Command) -> str:
        self.send(f"* CAPABILITY {self.capabilities()}")
        return "CAPABILITY completed"

    async def imap_NOOP(self, command: Command) -> str:
        if self.selected is not None:
            await self.report_changes()
        return "NOOP completed"

    def imap_LOGOUT(self, command: Command) -> None:
        self.send(f"* BYE {self.factory.hostname} logging out")
        self.tagged(command.tag, "OK", "LOGOUT completed")
        self.state = LOGOUT
        self.close()

    def imap_ID(self, command: Command) -> str:
        self.send(f'* ID ("name" "{SOFTWARE}")')
        return "ID completed"

    # --- not authenticated --------------------------------------------------------------

    def imap_STARTTLS(self, command: Command) -> None:
        if self.tls or self.factory.tls_options is None:
            raise _bad("TLS is active already" if self.tls else "STARTTLS is not offered")
        start_tls = getattr(self.transport, "startTLS", None)
        if start_tls is None:
            raise _no("TLS not available")
        self.tagged(command.tag, "OK", "Begin TLS negotiation now")
        # Whatever came after the STARTTLS line was sent in clear: never execute it.
        self._drop_input()
        self._produce(False)
        try:
            start_tls(self.factory.tls_options)
        except Exception:
            log.failure("Starting TLS failed")
            self.close()
            return None
        self._produce(True)
        self.tls = True
        return None

    def _may_login(self) -> None:
        if not self.tls:
            raise _no("[PRIVACYREQUIRED] Log in after STARTTLS (LOGINDISABLED)")

    async def imap_LOGIN(self, command: Command) -> str:
        self._may_login()
        try:
            login = _string(command.args[0], "user name").decode("utf-8")
            password = _string(command.args[1], "password").decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("User name and password must be UTF-8") from None
        return await self._authenticate(login, password)

    async def _authenticate(self, login: str, password: str) -> str:
        try:
            user = await self.factory.authenticator.authenticate(self.peer, login, password)
        except Throttled:
            self._count_login("throttled")
            raise _no("[UNAVAILABLE] Too many failed logins, try again later") from None
        except Exception:
            self._count_login("error")
            log.failure("IMAP login check failed")
            raise _no("[UNAVAILABLE] Temporary authentication failure, try again later") from None
        if user is None:
            self._count_login("failure")
            raise _no("[AUTHENTICATIONFAILED] Authentication failed")
        self._count_login("success")
        self.user = user
        self.login = user.login
        self.state = AUTHENTICATED
        return f"[CAPABILITY {self.capabilities()}] Logged in"

    def _count_login(self, outcome: str) -> None:
        counting(lambda: self.factory.metrics.imap_logins.labels(outcome).inc())

    def imap_AUTHENTICATE(self, command: Command) -> Any:
        self._may_login()
        mechanism = _atom(command.args[0], "mechanism").upper()
        if mechanism != "PLAIN":
            raise _no("[CANNOT] Unsupported authentication mechanism; use PLAIN")
        if len(command.args) == 2:
            return self._plain(_string(command.args[1], "initial response"))
        self._auth_tag = command.tag
        self._auth_step = self._plain_continued
        self.send("+ ")
        return None

    async def _plain_continued(self, response: bytes) -> str:
        if response == b"*":
            raise _bad("Authentication cancelled")
        return await self._plain(response)

    async def _plain(self, response: bytes) -> str:
        try:
            decoded = b"" if response == b"=" else base64.b64decode(response, validate=True)
            authzid, login, password = (part.decode("utf-8") for part in decoded.split(b"\0"))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise _bad("Cannot decode the authentication response") from None
        if authzid and authzid != login:
            self._count_login("failure")
            raise _no("[AUTHENTICATIONFAILED] Authentication failed")
        return await self._authenticate(login, password)

    # --- authenticated ------------------------------------------------------------------

    def imap_ENABLE(self, command: Command) -> str:
        enabled = []
        for token in command.args:
            if _atom(token, "capability").upper() == "CONDSTORE":
                self.condstore = True
                enabled.append("CONDSTORE")
        self.send(" ".join(["* ENABLED", *enabled]))
        return "ENABLE completed"

    def imap_NAMESPACE(self, command: Command) -> str:
        self.send(f'* NAMESPACE (("" "{DELIMITER}")) NIL (("{SHARED_PREFIX}" "{DELIMITER}"))')
        return "NAMESPACE completed"

    async def imap_LIST(self, command: Command) -> str:
        args = list(command.args)
        selection: list[str] = []
        if isinstance(args[0], list):
            selection = [_atom(token, "selection option").upper() for token in args.pop(0)]
        returns: list[str] = []
        if len(args) >= 4 and isinstance(args[-2], Atom) and args[-2].upper() == "RETURN":
            if not isinstance(args[-1], list):
                raise _bad("RETURN needs a list")
            returns = [_atom(token, "return option").upper() for token in args[-1]]
            args = args[:-2]
        if len(args) != 2:
            raise _bad("LIST needs a reference and a pattern")
        reference = _name(args[0]) if _string(args[0]) else ""
        patterns = args[1] if isinstance(args[1], list) else [args[1]]
        await self._list(
            "LIST", reference, [_name(pattern) for pattern in patterns], selection, returns
        )
        return "LIST completed"

    async def imap_LSUB(self, command: Command) -> str:
        reference = _name(command.args[0]) if _string(command.args[0]) else ""
        await self._list("LSUB", reference, [_name(command.args[1])], [], [])
        return "LSUB completed"

    async def _list(
        self,
        kind: str,
        reference: str,
        patterns: list[str],
        selection: list[str],
        returns: list[str],
    ) -> None:
        if patterns == [""]:
            self.send(f'* {kind} (\\Noselect) "{DELIMITER}" ""')
            return
        folders = await self.store.run(imapfolders.list_folders, self.login)
        self._mailbox_ids = {folder.name: folder.mailbox_id for folder in folders}
        # A folder has children when some name lies directly under it.
        parents = {name.rpartition(DELIMITER)[0] for name in self._mailbox_ids}
        matchers = [Pattern(reference, pattern) for pattern in patterns]
        special_only = "SPECIAL-USE" in selection
        for folder in folders:
            if not any(matcher.match(folder.name) for matcher in matchers):
                continue
            if special_only and not folder.special_use:
                continue
            attributes = []
            if not folder.selectable:
                attributes.append("\\Noselect")
            has_children = folder.name in parents
            attributes.append("\\HasChildren" if has_children else "\\HasNoChildren")
            if "SUBSCRIBED" in selection or "SUBSCRIBED" in returns:
                attributes.append("\\Subscribed")
            if folder.special_use and kind == "LIST":
                attributes.append(folder.special_use)
            line = f'* {kind} ({" ".join(attributes)}) "{DELIMITER}" '.encode("ascii")
            self.write(line + encode_name(folder.name) + b"\r\n")

    async def imap_STATUS(self, command: Command) -> str:
        name = _name(command.args[0])
        if not isinstance(command.args[1], list):
            raise _bad("STATUS needs a list of items")
        items = [_atom(token, "status item").upper() for token in command.args[1]]
        status = await self.store.run(imapfolders.folder_status, self.login, name)
        values = {
            "MESSAGES": status.messages,
            "UNSEEN": status.unseen,
            "UIDNEXT": status.uidnext,
            "UIDVALIDITY": status.uidvalidity,
            "HIGHESTMODSEQ": status.highestmodseq,
            "RECENT": 0,
        }
        parts = []
        for item in items:
            if item not in values:
                raise _bad(f"Unknown status item {item}")
            parts.append(f"{item} {values[item]}")
        self.write(b"* STATUS " + encode_name(name) + f" ({' '.join(parts)})\r\n".encode())
        return "STATUS completed"

    def imap_SELECT(self, command: Command) -> Any:
        return self._open(command, read_only=False)

    def imap_EXAMINE(self, command: Command) -> Any:
        return self._open(command, read_only=True)

    async def _open(self, command: Command, read_only: bool) -> str:
        name = _name(command.args[0])
        if len(command.args) == 2:
            options = command.args[1]
            if not isinstance(options, list):
                raise _bad("Expected a list of select parameters")
            for option in options:
                if _atom(option, "select parameter").upper() != "CONDSTORE":
                    raise _bad(f"Unknown select parameter {option}")
                self.condstore = True
        if self.selected is not None:
            self._unselect()
            if self.condstore:
                self.send("* OK [CLOSED] Previous mailbox closed")
        try:
            snapshot = await self.store.run(imapfolders.folder_snapshot, self.login, name)
        except NotFound:
            raise _no("[NONEXISTENT] No such mailbox") from None
        folder = snapshot.folder
        if not folder.selectable:
            raise _no("[CANNOT] This name holds other mailboxes only")
        selected = Selected(
            name=folder.name,
            mailbox_id=folder.mailbox_id,
            writable=folder.writable and not read_only,
            uidvalidity=folder.uidvalidity,
            uids=array.array("q", snapshot.uids),
            uidnext=snapshot.uidnext,
            highestmodseq=snapshot.highestmodseq,
            mailbox_address=folder.mailbox_address,
        )
        flags = SYSTEM_FLAGS + tuple(k for k in snapshot.keywords if k not in SYSTEM_FLAGS)
        self.send("* FLAGS " + flag_list(flags).decode("ascii"))
        if selected.writable:
            permanent = flag_list((*flags, "\\*")).decode("ascii")
        else:
            permanent = "()"
        self.send(f"* OK [PERMANENTFLAGS {permanent}] Flags permitted")
        self.send(f"* {len(selected)} EXISTS")
        self.send("* 0 RECENT")
        if snapshot.first_unseen_uid is not None:
            seq = selected.seq_of(snapshot.first_unseen_uid)
            if seq is not None:
                self.send(f"* OK [UNSEEN {seq}] First unseen")
        self.send(f"* OK [UIDVALIDITY {selected.uidvalidity}] UIDs valid")
        self.send(f"* OK [UIDNEXT {selected.uidnext}] Predicted next UID")
        self.send(f"* OK [HIGHESTMODSEQ {selected.highestmodseq}] Highest")
        self._select(selected)
        mode = "READ-WRITE" if selected.writable else "READ-ONLY"
        return f"[{mode}] {command.name} completed"

    def _cannot(self, command: Command) -> str:
        raise _no(
            "[CANNOT] Folders are the mailbox's own and its CRM folders; manage them "
            "in the web client"
        )

    imap_CREATE = imap_DELETE = imap_RENAME = _cannot

    def imap_SUBSCRIBE(self, command: Command) -> str:
        _name(command.args[0])
        return "SUBSCRIBE completed"  # every folder counts as subscribed

    def imap_UNSUBSCRIBE(self, command: Command) -> str:
        _name(command.args[0])
        return "UNSUBSCRIBE completed"

    async def imap_APPEND(self, command: Command) -> str:
        args = list(command.args)
        name = _name(args.pop(0))
        raw = args.pop()
        if not isinstance(raw, bytes):
            raise _bad("APPEND needs the message as a literal")
        flags: tuple[str, ...] = ()
        internaldate = None
        for token in args:
            if isinstance(token, list):
                flags = _flags(token)
            elif isinstance(token, bytes):
                internaldate = _parse_date_time(token)
            else:
                raise _bad("APPEND takes flags, a date-time and the message")
        if not raw:
            raise _no("The message is empty")
        if len(raw) > self.factory.max_message_size:
            raise _no("[TOOBIG] Message too large")
        mailbox_id = await self._mailbox_id_of(name)
        # The summary headers and the search text are CPU work: the workers' pool.
        prepared = await self.factory.in_cpu(imapfolders.append_message, raw)
        result = await self.store.run(
            imapfolders.append, self.login, name, prepared, flags, internaldate
        )
        self._changed(mailbox_id)
        if self.selected is not None and self.selected.name == name:
            self._dirty = True
        return f"[APPENDUID {result.uidvalidity} {result.uid}] APPEND completed"

    async def _mailbox_id_of(self, name: str) -> int:
        """The mailbox a folder name lies in (NotFound, answered [TRYCREATE], if none)."""
        if name not in self._mailbox_ids:
            folders = await self.store.run(imapfolders.list_folders, self.login)
            self._mailbox_ids = {folder.name: folder.mailbox_id for folder in folders}
        if name not in self._mailbox_ids:
            raise _no("[TRYCREATE] No such mailbox")
        return self._mailbox_ids[name]

    async def imap_IDLE(self, command: Command) -> None:
        self._idle_tag = command.tag
        self._enter_idle()
        self.send("+ idling")
        if self.selected is not None:
            await self.report_changes()
        self._schedule_recheck()
        return None

    def _enter_idle(self) -> None:
        if not self._idle_counted and self.counter is not None:
            self.counter.idle_started()
            self._idle_counted = True
        # Idling, the client is silent until DONE: the autologout applies, not the
        # command's own time (RFC 2177: clients end IDLE within 29 minutes).
        self._command_started = None
        self._deadline = self.clock.seconds() + self.settings.idle_timeout
        self._arm(self._deadline)

    def _leave_idle(self) -> None:
        if self._idle_counted and self.counter is not None:
            self.counter.idle_ended()
        self._idle_counted = False
        if self._recheck is not None and self._recheck.active():
            self._recheck.cancel()
        self._recheck = None

    def _schedule_recheck(self) -> None:
        if self._idle_tag is None or self.selected is None or self._closing:
            return
        if self._recheck is None or not self._recheck.active():
            self._recheck = self.clock.callLater(IDLE_RECHECK, self._rechecked)

    def _rechecked(self) -> None:
        self._recheck = None
        if self._idle_tag is None or self._closing:
            return
        if not self._waiting:
            self._run("*", self._idle_sync)
        else:
            self._dirty = True

    async def _idle_sync(self) -> None:
        if self.selected is not None and self._idle_tag is not None:
            await self.report_changes()
        self._schedule_recheck()
        return None

    def _idle_line(self, line: bytes) -> None:
        tag, self._idle_tag = self._idle_tag, None
        self._leave_idle()
        assert tag is not None
        if line.upper() != b"DONE":
            self.tagged(tag, "BAD", "Expected DONE")
            return

        async def finish() -> str:
            if self.selected is not None:
                await self.report_changes()
            return "IDLE terminated"

        self._run(tag, finish)

    # --- selected -----------------------------------------------------------------------

    async def imap_CHECK(self, command: Command) -> str:
        await self.report_changes()
        return "CHECK completed"

    async def imap_CLOSE(self, command: Command) -> str:
        selected = self.selected
        assert selected is not None
        if selected.writable:
            gone = await self.store.run(imapfolders.expunge, self.login, selected.name, None)
            if gone:
                self._changed(selected.mailbox_id)
        self._unselect()
        return "CLOSE completed"

    def imap_UNSELECT(self, command: Command) -> str:
        self._unselect()
        return "UNSELECT completed"

    async def imap_EXPUNGE(self, command: Command) -> str:
        selected = self._require_writable()
        uids = None
        if command.uid:
            uids = tuple(selected.resolve(_atom(command.args[0], "sequence set"), True))
        gone = await self.store.run(imapfolders.expunge, self.login, selected.name, uids)
        if self.selected is selected:
            for seq in selected.remove(gone):
                self.send(f"* {seq} EXPUNGE")
        if gone:
            self._changed(selected.mailbox_id)
        return "EXPUNGE completed"

    async def imap_SEARCH(self, command: Command) -> str:
        """SEARCH and UID SEARCH: the keys (imap.search) matched against every message of
        the folder, read in batches as the keys need (none, headers, whole)."""
        selected = self.selected
        assert selected is not None
        try:
            program = searching.parse_search(
                command.args, last_seq=len(selected), last_uid=selected.largest_uid
            )
        except searching.BadCharset:
            raise _no("[BADCHARSET (US-ASCII UTF-8)] Unknown charset") from None
        found: list[int] = []
        highest = 0
        uids: list[int] | array.array = selected.uids
        kept: tuple[int, ...] = ()
        if program.header_terms is not None:
            # Header keys only: the store matches the fields it keeps of each message,
            # and the messages it keeps nothing of yet are matched here (and kept).
            answer = await self.store.run(
                imapfolders.search_summaries, self.login, selected.name, program.header_terms
            )
            kept, uids = answer.found, answer.missing
        matched: list[int] = []
        async for item, raw in self._messages(list(uids), program.needs):
            seq = selected.seq_of(item.uid)
            if seq is None:
                continue
            if raw is None and program.needs == "full":
                raw = await self._whole(item)
                if raw is None:
                    continue  # expunged meanwhile: it matches nothing
            if program.matches(item, seq, raw):
                matched.append(item.uid)
                highest = max(highest, item.modseq)
        if kept:
            matched = sorted(set(matched).union(kept))
        for uid in matched:
            seq = selected.seq_of(uid)
            if seq is not None:
                found.append(uid if command.uid else seq)
        line = "* SEARCH" + "".join(f" {number}" for number in found)
        if found and program.uses_modseq:
            line += f" (MODSEQ {highest})"
        self.send(line)
        return "SEARCH completed"

    async def _messages(
        self, uids: list[int], needs: str, prepare=None, envelope_only: bool = False
    ):
        """(MessageItem, octets) of the uids: None when `needs` is "none", the header
        block for "headers", the whole message for "full" except a message larger than
        LARGE_MESSAGE (None: read it with raw_slice). Read in batches, each once the
        transport took what the caller wrote of the one before (backpressure);
        `prepare(items)` may replace a batch's items first (FETCH sets \\Seen there).
        envelope_only: the header block is wanted for the ENVELOPE alone, so a message
        whose ENVELOPE the store kept comes with None. What is read of a header the store
        keeps nothing of yet is summarized and kept (save_summaries)."""
        selected = self.selected
        assert selected is not None
        for batch in batches(uids, FETCH_BATCH if needs == "full" else ITEM_BATCH):
            await self.drained()
            if self._closing or self.selected is not selected:
                return
            items = await self.store.run(
                imapfolders.message_items, self.login, selected.name, tuple(batch)
            )
            if prepare is not None:
                items = await prepare(items)
            if needs == "none":
                for item in items:
                    yield item, None
                continue
            if needs == "headers":
                wanted = tuple(
                    item.uid for item in items if not (envelope_only and item.envelope is not None)
                )
                headers = {}
                if wanted:
                    headers = await self.store.run(
                        imapfolders.message_headers, self.login, selected.mailbox_id, wanted
                    )
                    await self._keep_summaries(items, headers)
                for item in items:
                    if envelope_only and item.envelope is not None:
                        yield item, None
                    elif item.uid in headers:
                        yield item, headers[item.uid]
                    else:  # expunged meanwhile (by another session)
                        self._vanished = True
                continue
            group: list[Any] = []
            size = 0
            for item in items:
                if item.size > LARGE_MESSAGE:
                    if group:
                        async for pair in self._with_bytes(group):
                            yield pair
                        group, size = [], 0
                    yield item, None
                    await self.drained()
                    continue
                if group and size + item.size > BATCH_BYTES:
                    async for pair in self._with_bytes(group):
                        yield pair
                    group, size = [], 0
                group.append(item)
                size += item.size
            if group:
                async for pair in self._with_bytes(group):
                    yield pair

    async def _keep_summaries(self, items: Any, headers: dict[int, bytes]) -> None:
        """Keep the ENVELOPE and searched header fields of the messages read here that
        the store keeps nothing of yet, so that a later FETCH ENVELOPE or header SEARCH
        reads no header of them. A cache: failing to write it changes no answer."""
        summaries = [
            imapfolders.ImapSummaryRecord(
                message_id=item.message_id,
                envelope=envelope(headers[item.uid]),
                fields=searching.kept_fields(headers[item.uid]),
            )
            for item in items
            if item.envelope is None and item.uid in headers
        ]
        if not summaries:
            return
        try:
            await self.store.run(imapfolders.save_summaries, summaries)
        except Exception:
            log.failure("IMAP: keeping message summaries failed")

    async def _with_bytes(self, items: list[Any]):
        await self.drained()
        if self._closing:
            return
        selected = self.selected
        assert selected is not None
        raws = await self.store.run(
            imapfolders.message_bytes,
            self.login,
            selected.mailbox_id,
            tuple(item.uid for item in items),
            LARGE_MESSAGE,
        )
        for item in items:
            raw = raws.get(item.uid)
            if raw is not None:
                yield item, raw
            else:  # expunged meanwhile (by another session)
                self._vanished = True

    async def _slice(self, item: Any, offset: int, length: int) -> bytes | None:
        """Octets of the message the selected folder files as item.uid; None once that
        filing is gone (expunged by another session meanwhile)."""
        selected = self.selected
        assert selected is not None
        try:
            return await self.store.run(
                imapfolders.raw_slice, self.login, selected.mailbox_id, item.uid, offset, length
            )
        except NotFound:
            self._vanished = True
            return None

    async def _whole(self, item: Any) -> bytes | None:
        """A large message read in slices (one such message in memory at a time); None
        when it was expunged meanwhile."""
        parts = []
        for offset in range(0, item.size, SLICE):
            part = await self._slice(item, offset, SLICE)
            if part is None:
                return None
            parts.append(part)
        return b"".join(parts)

    async def _stream(self, head: bytes, item: Any, offset: int, count: int) -> None:
        """Write `head`, then `count` octets of the message from `offset` as a literal,
        slice by slice, each once the transport took the one before."""
        count = max(min(count, item.size - offset), 0)
        self.write(head + b"{%d}\r\n" % count)
        sent = 0
        while sent < count:
            await self.drained()
            if self._closing:
                return
            length = min(SLICE, count - sent)
            data = await self._slice(item, offset + sent, length)
            if data is None or len(data) != length:
                # Expunged meanwhile, or changed size: the literal cannot be completed.
                log.warn("IMAP: message {id} shorter than its size", id=item.message_id)
                self.close("Internal error")
                return
            self.write(data)
            sent += length

    async def _write_chunks(self, chunks: list[bytes | memoryview]) -> None:
        """Write one message's answer: small pieces together, a large one (a section, or
        a view of one) in SLICE octets at a time, each once the transport took the one
        before, so that neither the transport's buffer nor copies grow with it."""
        small: list[bytes | memoryview] = []
        for chunk in chunks:
            if len(chunk) <= SLICE:
                small.append(chunk)
                continue
            if small:
                self.write(b"".join(small))
                small = []
            view = memoryview(chunk)
            for start in range(0, len(view), SLICE):
                await self.drained()
                if self._closing:
                    return
                self.write(bytes(view[start : start + SLICE]))
        if small:
            self.write(b"".join(small))

    async def imap_FETCH(self, command: Command) -> str:
        selected = self.selected
        assert selected is not None
        uids = selected.resolve(_atom(command.args[0], "sequence set"), command.uid)
        changedsince = None
        if len(command.args) == 3:
            modifiers = command.args[2]
            if (
                not isinstance(modifiers, list)
                or len(modifiers) != 2
                or _atom(modifiers[0], "modifier").upper() != "CHANGEDSINCE"
            ):
                raise _bad("Unknown FETCH modifier")
            changedsince = _number(modifiers[1], "mod-sequence")
            self.condstore = True
        request = fetching.parse_fetch(
            command.args[1], uid=command.uid, modseq=self.condstore or changedsince is not None
        )
        streamed = _streamed_body(request)
        seen: set[int] = set()

        async def mark_seen(items):
            if changedsince is not None:
                items = tuple(item for item in items if item.modseq > changedsince)
            unseen = tuple(item.uid for item in items if SEEN not in item.flags)
            if not unseen or not request.sets_seen or not selected.writable:
                return items
            result = await self.store.run(
                imapfolders.store_flags, self.login, selected.name, unseen, "+", (SEEN,), None
            )
            changed = {item.uid: item for item in result.changed}
            for item in result.changed:
                selected.own_changes.add((item.uid, item.modseq))
                seen.add(item.uid)
            if changed:
                self._changed(selected.mailbox_id)
            return tuple(changed.get(item.uid, item) for item in items)

        self._vanished = False
        async for item, raw in self._messages(
            uids, request.needs, mark_seen, envelope_only=request.envelope_only
        ):
            seq = selected.seq_of(item.uid)
            if seq is None:
                continue
            flags = item.uid in seen
            if raw is None and request.needs == "full":
                if streamed is not None:
                    att, rest = streamed
                    head = fetching.render(rest, item, seq, None, flags=flags)
                    head = head[: -len(b")\r\n")] + (b" " if head[-4:-3] != b"(" else b"")
                    origin, count = att.partial if att.partial is not None else (0, item.size)
                    await self._stream(head + fetching.att_name(att) + b" ", item, origin, count)
                    self.write(b")\r\n")
                    continue
                raw = await self._whole(item)
                if raw is None:
                    continue
            try:
                # In pieces: a large body section is written as it is, never copied.
                chunks = fetching.render_chunks(request, item, seq, raw, flags=flags)
            except fetching.UnknownEncoding:
                raise _no(
                    "[UNKNOWN-CTE] A part has a transfer encoding BINARY cannot undo"
                ) from None
            await self._write_chunks(chunks)
        if self._vanished:
            # A message expunged by another session after this one read its uid is left
            # out (its bytes are gone), as RFC 2180 4.1.2 and RFC 5530 allow.
            raise _no("[EXPUNGEISSUED] Some of the requested messages no longer exist")
        return "FETCH completed"

    async def imap_STORE(self, command: Command) -> str:
        selected = self._require_writable()
        args = list(command.args)
        uids = selected.resolve(_atom(args.pop(0), "sequence set"), command.uid)
        unchangedsince = None
        if isinstance(args[0], list):
            modifiers = args.pop(0)
            if len(modifiers) != 2 or _atom(modifiers[0], "modifier").upper() != "UNCHANGEDSINCE":
                raise _bad("Unknown STORE modifier")
            unchangedsince = _number(modifiers[1], "mod-sequence")
            self.condstore = True
        if len(args) != 2:
            raise _bad("STORE needs an item and flags")
        item = _atom(args[0], "store item").upper()
        silent = item.endswith(".SILENT")
        base = item.removesuffix(".SILENT")
        modes = {"FLAGS": "=", "+FLAGS": "+", "-FLAGS": "-"}
        if base not in modes:
            raise _bad(f"Unknown store item {item}")
        value = args[1] if isinstance(args[1], list) else [args[1]]
        flags = _flags(value)
        result = await self.store.run(
            imapfolders.store_flags,
            self.login,
            selected.name,
            tuple(uids),
            modes[base],
            flags,
            unchangedsince,
        )
        if self.selected is selected:
            for changed in result.changed:
                selected.own_changes.add((changed.uid, changed.modseq))
            # RFC 7162 3.1.3: with UNCHANGEDSINCE, .SILENT still tells the new MODSEQ.
            told = () if silent and unchangedsince is None else result.changed
            if not silent:
                told = sorted(result.changed + result.unchanged, key=lambda item: item.uid)
            for changed in told:
                seq = selected.seq_of(changed.uid)
                if seq is not None:
                    self.send(self._flags_line(seq, changed, uid=command.uid))
        if result.changed:
            self._changed(selected.mailbox_id)
        if result.modified:
            numbers = result.modified
            if not command.uid:
                numbers = [selected.seq_of(uid) for uid in numbers]
                numbers = [n for n in numbers if n is not None]
            return f"[MODIFIED {sequence_text(sorted(numbers))}] Conditional STORE failed"
        return "STORE completed"

    async def imap_COPY(self, command: Command) -> Any:
        return await self._copy(command, move=False)

    async def imap_MOVE(self, command: Command) -> Any:
        self._require_writable()
        return await self._copy(command, move=True)

    async def _copy(self, command: Command, move: bool) -> str:
        selected = self.selected
        assert selected is not None
        uids = selected.resolve(_atom(command.args[0], "sequence set"), command.uid)
        target = _name(command.args[1])
        target_mailbox = await self._mailbox_id_of(target)
        if not uids:
            return f"{command.name} completed (no messages)"
        result = await self.store.run(
            imapfolders.copy, self.login, selected.name, tuple(uids), target, move
        )
        pairs = sorted(result.pairs)
        code = ""
        if pairs:
            source = sequence_text(uid for uid, _ in pairs)
            # The target uids in the order of the source ones (RFC 4315 allows any set
            # order as long as the two correspond).
            targets = ",".join(str(uid) for _, uid in pairs)
            code = f"[COPYUID {result.uidvalidity} {source} {targets}] "
        self._changed(selected.mailbox_id, target_mailbox)
        self._learn(target_mailbox, result.learned_spam, True)
        self._learn(target_mailbox, result.learned_ham, False)
        if move:
            if code:
                self.send(f"* OK {code.strip()}")
            if self.selected is selected:
                for seq in selected.remove(uid for uid, _ in pairs):
                    self.send(f"* {seq} EXPUNGE")
            return "MOVE completed"
        if self.selected is not None and self.selected.name == target:
            self._dirty = True
        return f"{code}COPY completed"

    def _learn(self, mailbox_id: int, uids, spam: bool) -> None:
        """The spam filter (if any) learns from messages moved into Junk (spam) or out
        of it, as the web's Junk and Not junk buttons teach it; the move stands whatever
        it says. Done after the answer, one message at a time, each read by its uid in
        the target mailbox (one expunged meanwhile is passed over)."""
        learner = self.factory.learner
        if learner is None or not uids:
            return
        login = self.login

        async def teach() -> None:
            for uid in uids:
                try:
                    raws = await self.store.run(
                        # Stored mail may be a little larger than the limit (headers we add).
                        imapfolders.message_bytes,
                        login,
                        mailbox_id,
                        (uid,),
                        2 * self.factory.max_message_size,
                    )
                    raw = raws.get(uid)
                    if raw is not None:
                        await defer.maybeDeferred(learner.learn, raw, spam)
                except Exception:
                    log.failure("the spam filter could not learn from uid {uid}", uid=uid)

        defer.ensureDeferred(teach())


class IMAPServerFactory(Factory):
    """Builds one IMAPServerProtocol per connection.

    `watchers` (shared by the listeners of one appliance) wakes the sessions of a mailbox
    that changed; `authenticator` is the appliance's one (SMTP AUTH and the web use it);
    `in_cpu(function, *args)` runs CPU work off the reactor (the workers' CPU pool);
    `learner` (an ISpamLearner or None) is taught by moves into and out of Junk."""

    protocol = IMAPServerProtocol
    noisy = False

    def __init__(
        self,
        store: Any,
        authenticator: Any,
        hostname: str,
        settings: ImapConfig,
        clock: Any,
        max_message_size: int,
        watchers: Watchers,
        in_cpu: Callable[..., defer.Deferred],
        tls_options: Any = None,
        implicit_tls: bool = False,
        learner: Any = None,
        metrics: Metrics | None = None,
    ):
        self.store = store
        self.authenticator = authenticator
        self.hostname = hostname
        self.settings = settings
        self.clock = clock
        self.max_message_size = max_message_size
        self.watchers = watchers
        self.in_cpu = in_cpu
        self.tls_options = tls_options
        self.implicit_tls = implicit_tls
        self.learner = learner
        # Sessions and logins are counted on the appliance's metrics (None: on a
        # registry of this factory's own).
        self.metrics = metrics if metrics is not None else Metrics()
        listener = "imap-tls" if implicit_tls else "imap"
        self.sessions = self.metrics.imap_sessions.labels(listener)
        self.open_sessions = self.metrics.imap_sessions_open.labels(listener)

    def buildProtocol(self, addr: Any) -> IMAPServerProtocol:
        return self.protocol(self)
