"""The inbound checks in processes of their own ([inbound] check_processes).

Authenticating a message (dkimpy's parsing and canonicalization, pyspf) and its DNS
blocklist lookups are interpreter work. Run in a DNS worker thread of the appliance's
process they held its one interpreter lock against the SMTP sessions: with checks on,
the process ran at about 0.85 of a core, 1.47 ms of CPU per message against 0.72 ms
with checks off (bench/inbound.py, 2 cores), and the trip to a worker thread and back
cost the reactor thread about 0.4 ms per message on top of the checks' own 0.27 ms.
Here a child process (`python -m atollon_mail.inbound.checkprocess`) does that work;
the appliance keeps a cheap hand-off: one write and one read on a pipe per message
(pickling the request, about 0.3 us for the benchmark's message, and unpickling the
answer, about 13 us).

The protocol, over the child's stdin and stdout: frames of a 12-byte head (the
payload's length and a request id, big-endian) and a pickled payload. Pickle is safe
here: both ends are this module, the child is started by the appliance itself, and
only the two of them hold the pipes. The first frame (id 0) carries the child's
settings: the nameservers to ask, our authserv-id, its thread count. Each later frame
asks for one message (data, client address, HELO, sender, forwarder, blocklist zones)
and is answered by a frame with the same id: ("found", inbound.checks.Found) or
("error", why). Many are in flight at once; answers come back in any order. The
appliance unpickles only the classes of a finding (_Findings): a child that went wrong
cannot have it build anything else.

The child runs each request in a thread of its own pool (DNS lookups block; a slow
answer for one message holds up only its own thread), with its own resolver (the same
kind as the appliance's: inbound.resolver) and its own recent SPF results. It needs no
reactor. It ends when its stdin closes (the appliance stopped, or died). Its file
descriptor 1 is moved to stderr
before anything runs, so nothing but frames can reach the appliance's end; it ignores
SIGTERM and SIGINT (a service manager signalling the whole group, a terminal's ^C): it
ends with the appliance, not before it.

The appliance's side (CheckProcesses, a service): a message goes to the child with the
fewest requests in flight. When the child dies, the requests it had and the ones that
come before it is back run in the appliance's DNS pool instead (the way without check
processes: the same result, only slower); the child is restarted after a delay that
doubles from RESTART_DELAY up to RESTART_MOST while it keeps dying early. The child's
own error on one message, or an answer that cannot be read, fails that message's check
as an error escaping the checks in-thread does: 451, the sender tries again (the checks'
own errors inside authenticate are caught there, as in-thread: accepted, unchecked). A
message left unanswered for REQUEST_MOST while the child answers others fails with 451.
A child that has work and sends nothing for SILENT_SECONDS is stuck: it is killed (and
restarted as one that died early) and its messages fail with 451, not checked in the
DNS pool (what made it stuck could hold the appliance's own threads). Once the service
stops, what is left unanswered, and what is asked after, fails with 451: the store and
the DNS pool stop with it.
Writes to the pipe never block the reactor (Twisted's process transport buffers them).
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import queue
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure

from atollon_mail import affinity
from atollon_mail.inbound.authentication import SpfResults
from atollon_mail.inbound.checks import Found, find
from atollon_mail.inbound.resolver import checks_resolver
from atollon_mail.workers import DNS_THREADS

__all__ = ["CheckProcesses", "main", "serve"]

log = Logger()

# A frame's head: the payload's length and the request id (0: the settings).
HEAD = struct.Struct(">IQ")
# An answer longer than this is no answer of ours (one is well under 10 KiB): the
# stream is out of step, the child is killed and restarted.
MOST_ANSWER = 1 << 20
# The restart delay: the first, and the most it doubles to while the child keeps dying
# within STEADY_SECONDS of its start.
RESTART_DELAY = 0.5
RESTART_MOST = 60.0
STEADY_SECONDS = 60.0
# How long a stopping child has to end by itself (its stdin closed) before it is killed.
STOP_GRACE = 5.0
# A child that has requests in flight and sends no answer at all for this long is stuck:
# it is killed, and its messages are checked in the appliance's DNS pool instead. One
# message's checks can be slow (SPF of two identities within pyspf's 20 s each, each DNS
# question within 5 s, a few DKIM keys), but the child answers the others meanwhile from
# its other threads; only all of them stuck this long means no answer will come.
SILENT_SECONDS = 120.0
# The most one message may wait for its answer while the child answers others (a thread
# of the child stuck on it): past this it fails with 451, the child goes on.
REQUEST_MOST = 600.0
# What of the child's stderr is kept while waiting for the end of a line, and of its
# error text per message.
MOST_LOG_LINE = 4096
MOST_ERROR_TEXT = 1000


def _frame(request_id: int, payload: bytes) -> bytes:
    return HEAD.pack(len(payload), request_id) + payload


class CheckUnavailable(Exception):
    """The check of a message could not be made (the check process failed on it, or the
    checks are stopping): the sender is told 451 and tries again."""


# The classes a finding is made of, by exact module and name (a dotted name would reach
# whatever those modules import): nothing else is unpickled from a child. Pickled with
# protocol 2 or later, these attrs records need no other name (NEWOBJ and BUILD).
_FINDING_CLASSES = frozenset(
    {
        ("atollon_mail.inbound.checks", "Found"),
        ("atollon_mail.inbound.authentication", "Authentication"),
        ("atollon_mail.inbound.authentication", "SpfCheck"),
        ("atollon_mail.inbound.authentication", "DkimCheck"),
        ("atollon_mail.inbound.authentication", "ArcCheck"),
        ("atollon_mail.inbound.authentication", "DmarcCheck"),
        ("atollon_mail.inbound.authentication", "Forwarder"),
        ("atollon_mail.inbound.dnsbl", "Listing"),
    }
)


class _Findings(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _FINDING_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a finding")


def _finding(payload: bytes):
    return _Findings(io.BytesIO(payload)).load()


# --- the appliance's side ---------------------------------------------------------------


class _Child(ProcessProtocol):
    """One check process, as the appliance sees it: the requests it has in flight."""

    def __init__(self, pool: CheckProcesses, slot: int, settings: bytes, started: float):
        self.pool = pool
        self.slot = slot
        self.started = started
        self._settings = settings
        # request id -> (the Deferred to fire, the in-thread way if the child dies, when
        # it was asked), the oldest first
        self.pending: dict[int, tuple[Deferred, Any, float]] = {}
        self._watch = None  # the look for silence while there is work (SILENT_SECONDS)
        self._heard = started  # when it last sent a frame, or was given work while idle
        self.killed = False  # killed by us: restarted as one that died early
        self.stuck = False  # killed as stuck: its messages are told 451
        self.ready = False
        self.pid: int | None = None
        self.ended: Deferred = Deferred()
        self._buffer = bytearray()
        self._errors = b""
        self._broken = False  # out of step: what else it sends is not read

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # kept: the transport forgets it at the end
        self.transport.write(_frame(0, self._settings))
        self.ready = True

    def ask(self, request_id: int, arguments: tuple, fallback) -> Deferred:
        waiting: Deferred = Deferred()
        clock = self.pool.clock
        now = clock.seconds()
        if not self.pending:
            self._heard = now  # its silence counts from its first work
        self.pending[request_id] = (waiting, fallback, now)
        payload = pickle.dumps(arguments, pickle.HIGHEST_PROTOCOL)
        # Head and payload apart: the message's bytes are not copied once more here.
        self.transport.writeSequence((HEAD.pack(len(payload), request_id), payload))
        if self._watch is None:
            first = min(self.pool.silent_seconds, self.pool.request_most)
            self._watch = clock.callLater(first, self._look)
        return waiting

    def _look(self) -> None:
        """One timer per child, not per message: silence while it has work, and the
        oldest message's wait (REQUEST_MOST)."""
        self._watch = None
        if not self.pending or not self.ready:
            return
        now = self.pool.clock.seconds()
        expired = []
        while self.pending:
            request_id, (waiting, _, asked) = next(iter(self.pending.items()))
            if now - asked < self.pool.request_most:
                break
            del self.pending[request_id]
            expired.append((waiting, now - asked))
        try:
            self._look_at_silence(now)
        finally:
            # Last: their callbacks may ask again (and set the next look themselves).
            for waiting, waited in expired:
                log.error(
                    "check process {pid} left a message unanswered for {seconds:g} s: 451",
                    pid=self.pid,
                    seconds=waited,
                )
                waiting.errback(CheckUnavailable("the check process did not answer in time"))

    def _look_at_silence(self, now: float) -> None:
        if not self.pending:
            return
        silent = now - self._heard
        if silent < self.pool.silent_seconds:
            oldest = next(iter(self.pending.values()))[2]
            remaining = min(
                self.pool.silent_seconds - silent, oldest + self.pool.request_most - now
            )
            self._watch = self.pool.clock.callLater(remaining, self._look)
            return
        log.error(
            "check process {pid} has had work and sent nothing for {seconds:g} s: killing "
            "it (its {count} messages are told 451)",
            pid=self.pid,
            seconds=silent,
            count=len(self.pending),
        )
        self.stuck = True
        self.out_of_step()

    def out_of_step(self) -> None:
        """Stuck, or its answers no longer make sense: killed (and restarted later as one
        that died early); its messages go the other way when it has ended, or, when it
        was stuck, are told 451."""
        self.ready, self._broken, self.killed = False, True, True
        self._buffer.clear()
        _kill(self)

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803 - Twisted's
        if childFD == 1:
            self._answers(data)
        elif childFD == 2:
            self._logged(data)

    def _answers(self, data: bytes) -> None:
        if self._broken:
            return
        buffer = self._buffer
        buffer += data
        position = 0
        while len(buffer) - position >= HEAD.size:
            length, request_id = HEAD.unpack_from(buffer, position)
            if length > MOST_ANSWER or request_id >= self.pool.next_id:
                log.error(
                    "check process {pid} sent a frame of {length} bytes for request {id}, "
                    "not one it has: restarting it",
                    pid=self.pid,
                    length=length,
                    id=request_id,
                )
                self.out_of_step()
                return
            end = position + HEAD.size + length
            if len(buffer) < end:
                break
            self._heard = self.pool.clock.seconds()
            if request_id in self.pending:  # else: failed meanwhile (REQUEST_MOST)
                self._answer(request_id, bytes(buffer[position + HEAD.size : end]))
            position = end
        del buffer[:position]

    def _answer(self, request_id: int, payload: bytes) -> None:
        waiting = self.pending.pop(request_id)[0]
        try:
            kind, value = _finding(payload)
        except Exception as problem:
            why = f"its answer could not be read ({type(problem).__name__}: {problem})"
        else:
            if kind == "found" and isinstance(value, Found):
                waiting.callback(value)
                return
            why = str(value) if kind == "error" else f"an answer of kind {kind!r}"
        log.error("the check process failed on a message: {why}", why=why[:MOST_ERROR_TEXT])
        waiting.errback(CheckUnavailable(f"the check process failed on it: {why}"))

    def _logged(self, data: bytes) -> None:
        # What the child logs (its failures) comes on its stderr, a line at a time.
        lines = (self._errors + data).split(b"\n")
        self._errors = lines.pop()[-MOST_LOG_LINE:]
        for line in lines:
            line = line[:MOST_LOG_LINE]
            if line.strip():
                log.warn(
                    "check process {pid}: {line}",
                    pid=self.pid,
                    line=line.decode("utf-8", "replace"),
                )

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 - Twisted's
        self.ready = False
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        pending, self.pending = self.pending, {}
        self.pool._ended(self, reason)
        for waiting, fallback, _ in pending.values():
            if self.pool.stopping:
                waiting.errback(CheckUnavailable("the inbound checks are stopping"))
            elif self.stuck:
                # What made it stuck could make the appliance's own threads stuck too.
                waiting.errback(CheckUnavailable("the check process was stuck"))
            else:
                defer.maybeDeferred(fallback).chainDeferred(waiting)
        self.ended.callback(None)


class CheckProcesses(service.Service):
    """`count` check processes (see the module's description), started and stopped with
    this service. `settings`: {"nameservers": [delivery] nameservers, "hostname": our
    authserv-id}; `reactor` spawns them and times their restarts; `argv` is the command
    that starts one (this module, with the running Python, unless a test says else);
    `silent_seconds`: how long a child with work may send nothing before it is killed
    as stuck (SILENT_SECONDS); `request_most`: how long one message may wait for its
    answer (REQUEST_MOST)."""

    name = "inbound-checks"

    def __init__(
        self,
        settings: dict,
        count: int,
        reactor,
        threads: int = DNS_THREADS,
        restart_delay: float = RESTART_DELAY,
        restart_most: float = RESTART_MOST,
        stop_grace: float = STOP_GRACE,
        argv: tuple[str, ...] | None = None,
        silent_seconds: float = SILENT_SECONDS,
        request_most: float = REQUEST_MOST,
    ):
        self._settings = pickle.dumps(dict(settings, threads=threads), pickle.HIGHEST_PROTOCOL)
        self._reactor = reactor
        # The children's silence is timed on the same clock (SILENT_SECONDS).
        self.clock = reactor
        self.silent_seconds = silent_seconds
        self.request_most = request_most
        # Stopping (or stopped): nothing goes the in-thread way, the DNS pool stops too.
        self.stopping = False
        self._argv = argv or (sys.executable, "-m", __name__)
        self._first_delay = restart_delay
        self._most_delay = restart_most
        self._stop_grace = stop_grace
        self.children: list[_Child | None] = [None] * count
        self._delays = [restart_delay] * count
        self._restarts: dict[int, Any] = {}
        self.next_id = 1  # request ids: 1, 2, ... (0: the settings)

    # --- asking ---

    def find(self, arguments: tuple, fallback) -> Deferred:
        """Deferred Found for arguments (data, client_ip, helo, sender, forwarder,
        zones), from the least busy check process; `fallback()` (the in-thread way,
        answering a Deferred Found) when none is running or the one asked dies. Fails
        with CheckUnavailable once the service stops."""
        if self.stopping:
            return defer.fail(CheckUnavailable("the inbound checks are stopping"))
        running = [child for child in self.children if child is not None and child.ready]
        if not running:
            return fallback()
        child = min(running, key=lambda one: len(one.pending))
        request_id, self.next_id = self.next_id, self.next_id + 1
        return child.ask(request_id, arguments, fallback)

    # --- the children's lives ---

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        for slot in range(len(self.children)):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        self._restarts.pop(slot, None)
        child = _Child(self, slot, self._settings, self._reactor.seconds())
        try:
            # env=None: the appliance's own environment (its Python path among it).
            # Unpinned: the child checks on whichever CPU is free, not on the one the
            # appliance's threads are held to.
            with affinity.unpinned():
                self._reactor.spawnProcess(child, self._argv[0], list(self._argv), env=None)
        except Exception:
            log.failure("starting a check process failed")
            self._restart_later(slot)
            return
        self.children[slot] = child

    def _ended(self, child: _Child, reason: Failure) -> None:
        if self.children[child.slot] is not child:
            return  # one from before a stop: its slot has a new one
        self.children[child.slot] = None
        if not self.running:
            return
        if not child.killed and self._reactor.seconds() - child.started >= STEADY_SECONDS:
            self._delays[child.slot] = self._first_delay
        delay = self._restart_later(child.slot)
        log.warn(
            "check process {pid} ended ({why}); its messages are checked here meanwhile, "
            "it restarts in {delay:g} s",
            pid=child.pid,
            why=reason.getErrorMessage(),
            delay=delay,
        )

    def _restart_later(self, slot: int) -> float:
        delay = self._delays[slot]
        self._delays[slot] = min(delay * 2, self._most_delay)
        self._restarts[slot] = self._reactor.callLater(delay, self._spawn, slot)
        return delay

    def stopService(self) -> Deferred:
        super().stopService()
        self.stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        ending = []
        for child in self.children:
            if child is None or child.transport is None:  # none, or never started
                continue
            child.ready = False
            # The child ends at the end of its input; what it leaves unanswered fails
            # with 451 (processEnded): the store stops too, nothing could be kept.
            child.transport.closeStdin()
            kill = self._reactor.callLater(self._stop_grace, self._kill, child)
            child.ended.addCallback(lambda _, kill=kill: kill.cancel() if kill.active() else None)
            ending.append(child.ended)
        return defer.gatherResults(ending).addCallback(lambda _: None)

    def _kill(self, child: _Child) -> None:
        log.warn("check process {pid} did not stop: killing it", pid=child.pid)
        _kill(child)


def _kill(child: _Child) -> None:
    try:
        child.transport.signalProcess("KILL")
    except ProcessExitedAlready:
        pass


# --- the check process ------------------------------------------------------------------


def _read_frame(stream) -> tuple[int, bytes] | None:
    """The next (request id, payload) of stream; None at its end."""
    head = stream.read(HEAD.size)
    if len(head) < HEAD.size:
        return None
    length, request_id = HEAD.unpack(head)
    payload = stream.read(length)
    if len(payload) < length:
        return None
    return request_id, payload


def serve(instream, outstream, handle, threads: int) -> None:
    """Answer each request frame of instream on outstream until instream ends: its
    payload unpickled as handle's arguments, run in one of `threads` threads, and
    ("found", what handle answered) or ("error", why) sent back under the same id."""
    work: queue.SimpleQueue = queue.SimpleQueue()
    writing = threading.Lock()

    def answer(request_id: int, payload: bytes) -> None:
        try:
            found = handle(*pickle.loads(payload))
            data = pickle.dumps(("found", found), pickle.HIGHEST_PROTOCOL)
        except BaseException as error:  # the thread must answer, whatever went wrong
            try:
                traceback.print_exc(file=sys.stderr)
            except BaseException:
                pass
            text = f"{type(error).__name__}: {error}"[:MOST_ERROR_TEXT]
            data = pickle.dumps(("error", text), pickle.HIGHEST_PROTOCOL)
        try:
            with writing:
                outstream.write(HEAD.pack(len(data), request_id))
                outstream.write(data)
                outstream.flush()
        except OSError:
            # The appliance's end is gone: nobody is left to answer.
            os._exit(1)

    def worker() -> None:
        while True:
            answer(*work.get())

    for number in range(threads):
        threading.Thread(target=worker, name=f"checks-{number}", daemon=True).start()
    while True:
        frame = _read_frame(instream)
        if frame is None:
            return
        work.put(frame)


class _Monotonic:
    """The clock of the child's SPF results: seconds() of a monotonic clock."""

    def seconds(self) -> float:
        return time.monotonic()


def _checked(resolver, hostname: str, spf_results, data, client_ip, helo, sender, forwarder, zones):
    return find(
        resolver, hostname, spf_results, data, None, client_ip, helo, sender, forwarder, zones
    )


def _frames_only():
    """The stream of the frames: a copy of fd 1, which itself becomes stderr, so nothing
    a library writes (a print, C code writing to fd 1) reaches the appliance's end."""
    outstream = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout.flush()  # what was printed before goes to stderr now
    sys.stdout = sys.stderr
    return outstream


def main() -> None:
    """The check process: settings from the first frame, then serve() until the end."""
    instream, outstream = sys.stdin.buffer, _frames_only()
    # A terminal's ^C and a service manager's SIGTERM reach the appliance's whole
    # process group: the child ends when the appliance closes its stdin instead, after
    # the messages it has, not half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    first = _read_frame(instream)
    if first is None:
        return
    settings = pickle.loads(first[1])
    handle = functools.partial(
        _checked,
        checks_resolver(settings["nameservers"]),
        settings["hostname"],
        SpfResults(_Monotonic()),
    )
    serve(instream, outstream, handle, settings["threads"])


if __name__ == "__main__":
    main()
    sys.stderr.flush()
    os._exit(0)  # the threads may be waiting on DNS: no joining them
