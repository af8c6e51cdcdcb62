"""News of mail filed and mailboxes changed, told to the other nodes on one PostgreSQL.

The operations that file mail or change a mailbox note it here (per store thread); once
the operation's transaction committed, the store hands what was noted to the Notifier,
which sends it, merged over MERGE_SECONDS, with `pg_notify` on the channel CHANNEL from
a connection of its own. Each node listens on a connection of its own (`Listener`, a
thread of its own waiting on the connection's socket) and hands the news of the OTHER
nodes to a callback on the reactor thread: its IMAP sessions and live web pages then
look, as they do for mail filed through this node. Only ids and addresses travel, in
payloads kept under PostgreSQL's limit of 8000 bytes. On SQLite (one box) nothing is sent.
"""

from __future__ import annotations

import hashlib
import json
import select
import threading
import time
from collections.abc import Callable

import attrs
from twisted.logger import Logger

from atollon_mail.store.leases import DEFAULT_SCHEMA, current_schema, dedicated_params

log = Logger()

CHANNEL = "atollon_mail"


def channel_of(schema: str) -> str:
    """The channel of the appliance whose tables are in `schema`: NOTIFY is the
    database's, so appliances in two schemas of one database must not hear each other."""
    if schema == DEFAULT_SCHEMA:
        return CHANNEL
    return f"{CHANNEL}_{hashlib.sha256(schema.encode('utf-8')).hexdigest()[:16]}"


# PostgreSQL refuses a payload of 8000 bytes or more; a few hundred ids fit in one.
MAX_PAYLOAD = 7000
# How long the listener waits on its socket before it looks whether it must stop, and
# how long it waits before connecting again after the connection failed.
WAIT_SECONDS = 0.5
RECONNECT_SECONDS = 2.0
# News noted by commits this close together goes in one NOTIFY (Notifier).
MERGE_SECONDS = 0.05
# A listener idle this long sends a query: a connection that died quietly fails it (and
# is made again) instead of waiting for news that cannot come.
PING_SECONDS = 30.0

_noted = threading.local()


@attrs.frozen
class News:
    """What another node committed: mailboxes mail was filed into (those of them it went
    to the Junk folder of in `junk`), mailboxes an IMAP client changed (flags, expunges,
    copies, appends: `touched`), and addresses of mailboxes changed otherwise (the web
    client's operations marked `changes_mailbox`). `missed`: not a node's news but this
    node's own listener saying that news may have been lost: its LISTEN was down for a
    while (the connection failed and was made again), so whoever shows mail looks again
    at everything it shows."""

    node: str
    filed: frozenset[int] = frozenset()
    junk: frozenset[int] = frozenset()
    changed: frozenset[str] = frozenset()
    touched: frozenset[int] = frozenset()
    missed: bool = False


def begin() -> None:
    """Start noting, in this thread, for the operation about to run (only the store's
    threads of a node that tells others do; elsewhere notes are not kept)."""
    _noted.pending = {"filed": set(), "junk": set(), "changed": set(), "touched": set()}


def note_filed(mailbox_id: int, junk: bool) -> None:
    pending = getattr(_noted, "pending", None)
    if pending is not None:
        pending["filed"].add(mailbox_id)
        if junk:
            pending["junk"].add(mailbox_id)


def note_touched(mailbox_id: int) -> None:
    pending = getattr(_noted, "pending", None)
    if pending is not None:
        pending["touched"].add(mailbox_id)


def note_changed(mailbox_address: str) -> None:
    pending = getattr(_noted, "pending", None)
    if pending is not None:
        pending["changed"].add(mailbox_address)


def take() -> dict | None:
    """What this thread noted since `begin` (None: nothing); noting stops."""
    pending = getattr(_noted, "pending", None)
    _noted.pending = None
    if not pending or not any(pending.values()):
        return None
    return pending


def payloads(node: str, pending: dict) -> list[str]:
    """The JSON payloads telling `pending`, each under MAX_PAYLOAD bytes."""
    items = [("f", value) for value in sorted(pending["filed"])]
    items += [("j", value) for value in sorted(pending["junk"])]
    items += [("c", value) for value in sorted(pending["changed"])]
    items += [("t", value) for value in sorted(pending.get("touched", ()))]
    result: list[str] = []
    current: dict[str, list] = {"n": node}
    size = len(json.dumps(current))
    for key, value in items:
        grows = len(json.dumps(value)) + len(key) + 6
        if size + grows > MAX_PAYLOAD and len(current) > 1:
            result.append(json.dumps(current))
            current = {"n": node}
            size = len(json.dumps(current))
        current.setdefault(key, []).append(value)
        size += grows
    if len(current) > 1:
        result.append(json.dumps(current))
    return result


def parse(payload: str) -> News | None:
    """The news in a payload (None: not ours or malformed)."""
    try:
        data = json.loads(payload)
        return News(
            node=str(data["n"]),
            filed=frozenset(int(v) for v in data.get("f", ())),
            junk=frozenset(int(v) for v in data.get("j", ())),
            changed=frozenset(str(v) for v in data.get("c", ())),
            touched=frozenset(int(v) for v in data.get("t", ())),
        )
    except (ValueError, KeyError, TypeError):
        return None


def merge(into: dict, pending: dict) -> None:
    for key, values in pending.items():
        into.setdefault(key, set()).update(values)


class Notifier:
    """Sends what the store's threads noted, after their commits, merged over
    MERGE_SECONDS, from a connection and a thread of its own. A pg_notify in each filing
    or IMAP write transaction halved PostgreSQL's commit rate (notify_bench: 2695 to 1380
    commits/s with 8 writers): NOTIFY serialises committing transactions on a global
    lock. The receivers re-read the store, so news merged or a moment late costs
    nothing; news lost with a crash between commit and send is made good by IMAP IDLE's
    own re-check (every 5 s) and the next news of that mailbox."""

    def __init__(self, database, node: str, merge_seconds: float = MERGE_SECONDS):
        self._database = database
        self._node = node
        self._merge_seconds = merge_seconds
        self._lock = threading.Lock()
        self._pending: dict | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection = None
        self._channel = CHANNEL

    def add(self, pending: dict) -> None:
        """News committed (any thread)."""
        with self._lock:
            if self._pending is None:
                self._pending = {}
            merge(self._pending, pending)
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._run, name="atollon-mail-notifier", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """What waits is sent now; the connection closed."""
        if self._thread is not None:
            self._stopping.set()
            self._wake.set()
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            # Merged: what the next MERGE_SECONDS of commits note goes in the same NOTIFY.
            self._stopping.wait(self._merge_seconds)
            self._flush()
        self._flush()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if not pending:
            return
        for attempt in (1, 2):
            try:
                if self._connection is None or self._connection.closed:
                    import psycopg2

                    params = dedicated_params(self._database)
                    self._connection = psycopg2.connect(dbname=self._database.database, **params)
                    self._connection.autocommit = True
                    with self._connection.cursor() as cursor:
                        self._channel = channel_of(current_schema(cursor))
                with self._connection.cursor() as cursor:
                    for payload in payloads(self._node, pending):
                        cursor.execute("SELECT pg_notify(%s, %s)", (self._channel, payload))
                return
            except Exception as problem:
                if self._connection is not None:
                    try:
                        self._connection.close()
                    except Exception:
                        pass
                    self._connection = None
                if attempt == 2:
                    log.warn(
                        "telling the other nodes of news failed: {problem}",
                        problem=str(problem).strip().splitlines()[0] if str(problem) else problem,
                    )


class Listener:
    """LISTENs on a connection of its own, in a thread of its own, and calls
    `heard(News)` on the reactor thread for each notification of another node, and
    `heard(News(node, missed=True))` once it listens again after its connection failed
    (what the others sent meanwhile was not heard)."""

    def __init__(self, database, reactor, node: str, heard: Callable[[News], None]):
        self._database = database
        self._reactor = reactor
        self._node = node
        self._heard = heard
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._listening = threading.Event()
        self._backend_pid: int | None = None

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend of the LISTEN (None: not connected)."""
        return self._backend_pid if self.listening else None

    @property
    def listening(self) -> bool:
        """Whether the LISTEN is in place (for tests and start-up: news sent before it
        is not heard)."""
        return self._listening.is_set()

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._run, name="atollon-mail-notices", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout=5)
            self._thread = None
            self._listening.clear()

    def _connect(self):
        import psycopg2

        params = dedicated_params(self._database)
        connection = psycopg2.connect(dbname=self._database.database, **params)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {channel_of(current_schema(cursor))}")
        return connection

    def _run(self) -> None:
        connection = None
        failed = False  # the connection failed since the LISTEN was last in place
        quiet_since = time.monotonic()
        while not self._stopping.is_set():
            try:
                if connection is None:
                    connection = self._connect()
                    self._backend_pid = connection.get_backend_pid()
                    self._listening.set()
                    quiet_since = time.monotonic()
                    if failed:
                        failed = False
                        missed = News(self._node, missed=True)
                        self._reactor.callFromThread(self._tell, [missed])
                ready, _, _ = select.select([connection], [], [], WAIT_SECONDS)
                if not ready:
                    if time.monotonic() - quiet_since > PING_SECONDS:
                        with connection.cursor() as cursor:
                            cursor.execute("SELECT 1")
                        quiet_since = time.monotonic()
                    continue
                quiet_since = time.monotonic()
                connection.poll()
                # Taken whole: popping from the front is quadratic in a burst.
                notifies, connection.notifies[:] = list(connection.notifies), []
                found = []
                for notify in notifies:
                    news = parse(notify.payload)
                    if news is not None and news.node != self._node:
                        found.append(news)
                if found:
                    self._reactor.callFromThread(self._tell, found)
            except Exception as problem:
                self._listening.clear()
                failed = True
                if connection is not None:
                    try:
                        connection.close()
                    except Exception:
                        pass
                    connection = None
                log.warn(
                    "listening for the other nodes' news failed ({problem}); trying again",
                    problem=str(problem).strip().splitlines()[0] if str(problem) else problem,
                )
                self._stopping.wait(RECONNECT_SECONDS)
        if connection is not None:
            connection.close()

    def _tell(self, found: list[News]) -> None:
        for news in found:
            try:
                self._heard(news)
            except Exception:
                log.failure("telling of another node's news failed")
