"""Named locks one node holds at a time, for several nodes on one PostgreSQL database.

A lock is a PostgreSQL session advisory lock (`pg_try_advisory_lock`) taken on a
connection of its own, outside the store's pool: it lasts as long as that connection,
so when the node dies (its process killed, its host gone) the server ends the session
and the lock is free for another node. Each call runs on a thread of its own, so a
check never waits behind the store's work. On SQLite (one box) every lock always holds.
"""

from __future__ import annotations

import hashlib

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from atollon_mail.store.database import is_sqlite

log = Logger()

# TCP keepalives and a user timeout on the dedicated connections (leases, listener): a
# connection dropped without a word (a NAT's table, a host gone) is noticed within about
# 25 s rather than the kernel's two hours, so a lost lock is learnt while it matters.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 25_000,  # milliseconds
}


def dedicated_params(database) -> dict:
    """Connection parameters of a dedicated connection (leases, listener)."""
    params = dict(database.connect_params)
    params.setdefault("connect_timeout", 10)
    for key, value in KEEPALIVES.items():
        params.setdefault(key, value)
    return params


# The node's own lock: held as long as the node runs, so others can tell it is alive
# (queue.release_dead_claims takes it for a moment to learn that it is not).
NODE_LOCK_PREFIX = "node "


# The schema whose appliance keeps the lock keys (and news channel) of before schemas
# were told apart.
DEFAULT_SCHEMA = "public"


def lock_key(name: str, schema: str = DEFAULT_SCHEMA) -> int:
    """The advisory lock key (a signed 64-bit integer) of a lock name. Advisory locks are
    the database's, not a schema's: the appliance whose tables are in `schema` (its
    search_path's first) takes keys of its own, so appliances in two schemas of one
    database never hold each other's locks."""
    scope = b"" if schema == DEFAULT_SCHEMA else schema.encode("utf-8") + b"\0"
    digest = hashlib.sha256(b"atollon-mail lock " + scope + name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def current_schema(cursor) -> str:
    """The schema a connection's unqualified tables are in (PostgreSQL)."""
    cursor.execute("SELECT current_schema()")
    return cursor.fetchone()[0] or DEFAULT_SCHEMA


def node_lock_name(node_name: str) -> str:
    return NODE_LOCK_PREFIX + node_name


class Leases:
    """This node's advisory locks, on a dedicated connection.

    `take(name)` fires True when this node holds the lock (now or already), False when
    another node does; `held(name)` whether it still holds it (False once the connection
    was lost: the server released every lock with it); `release(name)`; `close()`.
    A connection that fails is dropped and a new one made at the next call, with no lock.
    """

    def __init__(self, database, reactor):
        self._database = database
        self._reactor = reactor
        self._always = is_sqlite(database)
        self._pool = self._new_pool()
        self._started = False
        self._connection = None
        self._schema = DEFAULT_SCHEMA  # of the connection (lock_key)
        self._held: set[str] = set()

    @staticmethod
    def _new_pool() -> ThreadPool:
        return ThreadPool(minthreads=1, maxthreads=1, name="atollon-mail-leases")

    @property
    def always_held(self) -> bool:
        """SQLite: one box, no other node to share with."""
        return self._always

    def _run(self, function, *args) -> defer.Deferred:
        if not self._started:
            self._pool.start()
            self._started = True
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    def take(self, name: str) -> defer.Deferred:
        if self._always:
            return defer.succeed(True)
        return self._run(self._take, name)

    def take_now(self, name: str) -> bool:
        """`take` in the calling thread: at start-up, before the reactor runs."""
        return True if self._always else self._take(name)

    def held(self, name: str) -> defer.Deferred:
        if self._always:
            return defer.succeed(True)
        return self._run(self._still_held, name)

    def holding(self, name: str) -> bool:
        """Whether this node took the lock and has not seen it lost (no round trip)."""
        return self._always or name in self._held

    def release(self, name: str) -> defer.Deferred:
        if self._always:
            return defer.succeed(None)
        return self._run(self._release, name)

    def close(self) -> None:
        """Every lock let go (the connection closed); blocks until the thread is done."""
        if self._started:
            self._pool.callInThread(self._disconnect)
            self._pool.stop()
            self._pool = self._new_pool()  # a stopped pool cannot start again
            self._started = False
        else:
            self._disconnect()  # a lock taken at start-up (take_now), before any thread

    # -- in the leases' thread ------------------------------------------------------------

    def _connect(self):
        if self._connection is None or self._connection.closed:
            import psycopg2

            self._held.clear()
            params = dedicated_params(self._database)
            self._connection = psycopg2.connect(dbname=self._database.database, **params)
            self._connection.autocommit = True
            with self._connection.cursor() as cursor:
                self._schema = current_schema(cursor)
        return self._connection

    def _query(self, sql: str, params: tuple = ()):
        import psycopg2

        try:
            with self._connect().cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchone()[0]
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            # The session is gone, and with it every lock it held.
            self._disconnect()
            raise

    def _take(self, name: str) -> bool:
        if name in self._held:
            return self._still_held(name)
        self._connect()
        if self._query("SELECT pg_try_advisory_lock(%s)", (lock_key(name, self._schema),)):
            self._held.add(name)
            return True
        return False

    def _still_held(self, name: str) -> bool:
        if name not in self._held:
            return False
        try:
            self._query("SELECT 1")
        except Exception:
            return False
        return name in self._held

    def _release(self, name: str) -> None:
        if name in self._held:
            self._held.discard(name)
            self._query("SELECT pg_advisory_unlock(%s)", (lock_key(name, self._schema),))

    def _disconnect(self) -> None:
        self._held.clear()
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            try:
                connection.close()
            except Exception:
                log.failure("closing the leases' connection failed")
