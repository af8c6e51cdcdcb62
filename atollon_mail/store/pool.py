"""The store's thread pool: the one way database work is done."""

from __future__ import annotations

import functools
from collections.abc import Callable
from time import perf_counter

import peewee
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from atollon_mail.interfaces import IStore
from atollon_mail.metrics import counting
from atollon_mail.store import migrations, notices, traffic
from atollon_mail.store.database import SQLITE_PRAGMAS, is_sqlite, open_database
from atollon_mail.store.leases import Leases
from atollon_mail.store.models import database_proxy

log = Logger()

POSTGRES_THREADS = 4
SQLITE_SYNCHRONOUS = dict(SQLITE_PRAGMAS)["synchronous"]

# The database's own failures (it cannot be opened or reached, a statement failed), as
# against the store's refusals (store.errors): the admin commands report these as such.
DATABASE_ERRORS = (peewee.DatabaseError, peewee.InterfaceError)

# Operations whose latency timer is kept at hand (Store._timer); more are still timed.
MAX_TIMED_OPERATIONS = 1000


def operation_name(operation) -> str:
    """The latency label of an operation: its module within the store and its name, such
    as queue.claim_due_deliveries."""
    while isinstance(operation, functools.partial):
        operation = operation.func
    name = getattr(operation, "__qualname__", None) or type(operation).__name__
    module = getattr(operation, "__module__", None) or ""
    return f"{module.rpartition('.')[2]}.{name}" if module else name


@implementer(IStore)
class Store:
    """Runs operations in transactions on a private thread pool.

    SQLite gets one thread (one writer is all SQLite allows; its connection stays open),
    PostgreSQL a few, each borrowing a pooled connection per operation. (A second SQLite
    thread for reads was measured and gained nothing: the reactor thread is the limit.)
    """

    def __init__(
        self,
        database: peewee.Database,
        reactor,
        threads: int | None = None,
        changed: Callable[[str], None] | None = None,
        operation_seconds=None,
        node: str | None = None,
        news: Callable[[notices.News], None] | None = None,
    ):
        self.database = database
        self._reactor = reactor
        # Told, on the reactor thread, the address of a mailbox an operation marked
        # `changes_mailbox` changed, after its commit.
        self._changed = changed
        # A Histogram labelled by operation (atollon_mail.metrics): how long each run()
        # took from the call to the commit. None: not timed.
        self._operation_seconds = operation_seconds
        self._timers: dict = {}
        size = 1 if is_sqlite(database) else (threads or POSTGRES_THREADS)
        if size > traffic.SHARDS:
            # Each thread adds its traffic counts to a row of its own (store.traffic).
            raise ValueError(f"at most {traffic.SHARDS} store threads, not {size}")
        self._pool = ThreadPool(minthreads=size, maxthreads=size, name="atollon-mail-store")
        self._started = False
        database_proxy.initialize(database)
        # Several nodes on one PostgreSQL database: this node's name, the news of filings
        # and changes sent to the others at each commit (store.notices), and `news` told
        # of theirs. None: nothing sent nor heard (one box, the admin command).
        self.node = node
        self._notifying = node is not None and not is_sqlite(database)
        self._notifier = notices.Notifier(database, node) if self._notifying else None
        self._listener = (
            notices.Listener(database, reactor, node, news)
            if self._notifying and news is not None
            else None
        )
        # The advisory locks of jobs run on one node at a time (store.leases).
        self.leases = Leases(database, reactor)

    @classmethod
    def from_url(
        cls,
        url: str,
        reactor,
        threads: int | None = None,
        changed: Callable[[str], None] | None = None,
        operation_seconds=None,
        node: str | None = None,
        news: Callable[[notices.News], None] | None = None,
    ) -> Store:
        return cls(open_database(url), reactor, threads, changed, operation_seconds, node, news)

    @property
    def is_sqlite(self) -> bool:
        """SQLite: one writer at a time (PostgreSQL lets several write at once)."""
        return is_sqlite(self.database)

    # -- lifecycle ----------------------------------------------------------------------

    def migrate(self) -> list[migrations.Migration]:
        """Apply pending migrations in the calling thread (start-up, admin command)."""
        with self.database.connection_context():
            return migrations.migrate(self.database)

    def schema_versions(self) -> list[int]:
        """The numbers of the migrations applied (none: an empty database), read only."""
        return self.run_sync(migrations.schema_versions, self.database)

    def start(self) -> None:
        if not self._started:
            self._pool.start()
            self._started = True
            if self._notifier is not None:
                self._notifier.start()
            if self._listener is not None:
                self._listener.start()

    @property
    def listening(self) -> bool:
        """Whether the other nodes' news is heard (a LISTEN is in place)."""
        return self._listener is not None and self._listener.listening

    def stop(self) -> None:
        """Finish queued operations, then close every connection."""
        if self._listener is not None:
            self._listener.stop()
        if self._started:
            if is_sqlite(self.database):
                self._pool.callInThread(self._close_connection)
            self._pool.stop()
            self._started = False
        if self._notifier is not None:
            self._notifier.stop()  # the news of the last commits
        # Last: the node lock tells the other nodes this node's claims are live, so it
        # goes only once the progress of its runner is committed (cluster.ClaimKeeper).
        self.leases.close()
        if hasattr(self.database, "close_all"):
            self.database.close_all()
        elif not self.database.is_closed():
            self.database.close()

    def _close_connection(self) -> None:
        if not self.database.is_closed():
            self.database.close()

    # -- running operations -------------------------------------------------------------

    def _transaction(self, operation):
        if is_sqlite(self.database) and not getattr(operation, "read_only", False):
            # IMMEDIATE takes the write lock at BEGIN, so a writer in another process (the
            # admin command) makes us wait on busy_timeout instead of failing mid-transaction.
            return self.database.atomic("IMMEDIATE")
        return self.database.atomic()

    def run_sync(self, operation, *args, **kwargs):
        lazily = getattr(operation, "flushed_lazily", False)  # see common.flushed_lazily
        with database_proxy.bound_to(self.database):
            if is_sqlite(self.database):
                if self.database.is_closed():
                    self.database.connect()
                if not lazily:
                    with self._transaction(operation):
                        return operation(*args, **kwargs)
                self.database.execute_sql("PRAGMA synchronous = NORMAL")
                try:
                    with self._transaction(operation):
                        return operation(*args, **kwargs)
                finally:
                    self.database.execute_sql(f"PRAGMA synchronous = {SQLITE_SYNCHRONOUS}")
            with self.database.connection_context(), self._transaction(operation):
                if lazily:
                    self.database.execute_sql("SET LOCAL synchronous_commit = off")
                if not self._notifying:
                    return operation(*args, **kwargs)
                notices.begin()
                try:
                    result = operation(*args, **kwargs)
                except BaseException:
                    notices.take()
                    raise
                if getattr(operation, "changes_mailbox", False):
                    notices.note_changed(args[0])
                pending = notices.take()
            # Committed: the others hear of it (never of a transaction rolled back).
            if pending is not None:
                self._notifier.add(pending)
            return result

    def run(self, operation, *args, **kwargs):
        if self._operation_seconds is None:
            done = deferToThreadPool(
                self._reactor, self._pool, self.run_sync, operation, *args, **kwargs
            )
        else:
            done = deferToThreadPool(
                self._reactor,
                self._pool,
                self._run_timed,
                self._timer(operation),
                perf_counter(),
                operation,
                args,
                kwargs,
            )
        if self._changed is not None and getattr(operation, "changes_mailbox", False):
            done.addCallback(self._tell_changed, args[0])
        return done

    def _timer(self, operation):
        timer = self._timers.get(operation)
        if timer is None:
            try:
                timer = self._operation_seconds.labels(operation_name(operation))
            except Exception:
                # A metric that fails must not fail the operation it times.
                log.failure("metrics: no timer for a store operation")
                return None
            if len(self._timers) < MAX_TIMED_OPERATIONS:
                self._timers[operation] = timer
        return timer

    def _run_timed(self, timer, started: float, operation, args, kwargs):
        # Observed in the store's thread, once the transaction is over: the reactor
        # thread pays only the clock reading and a dictionary look-up. Measured with
        # timeit (CPython 3.11, prometheus_client 0.26): 0.2 us per run() on the reactor
        # thread and 1.6 us for observe() here, where a transaction takes tens of
        # microseconds at the least.
        try:
            return self.run_sync(operation, *args, **kwargs)
        finally:
            # Guarded: a failing observe() would turn a committed operation into a
            # failed one (a message stored, and its sender told to send it again).
            if timer is not None:
                counting(timer.observe, perf_counter() - started)

    def _tell_changed(self, result, mailbox_address: str):
        try:
            self._changed(mailbox_address)
        except Exception:
            log.failure("telling of a change to {address} failed", address=mailbox_address)
        return result
