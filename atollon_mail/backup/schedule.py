"""The scheduled backup: once a day at `[backup] schedule` (UTC), an archive written into
`[backup] directory` and all but the newest `[backup] keep` removed.

Nothing blocks the reactor thread: the SQLite copy, the data files, the archive and the
rotation run in a thread of the service's own (one: a backup at a time), pg_dump as a
child process. A failure is logged and the next day's run is still scheduled.

A plain Service named "backup-schedule", so that a multi-node setup can wrap it to run
on one node at a time.
"""

from __future__ import annotations

import datetime
import os

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from atollon_mail import affinity
from atollon_mail.backup import archive, operations
from atollon_mail.config import Config
from atollon_mail.store import backup as store_backup
from atollon_mail.store.backup import SQLITE, BackupError

log = Logger()

DAY = 86400.0


def next_run(now: float, hour: int, minute: int) -> float:
    """Seconds since the epoch of the first hour:minute UTC strictly after now."""
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    due = moment.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if due.timestamp() <= now:
        due += datetime.timedelta(days=1)
    return due.timestamp()


class _Collect(protocol.ProcessProtocol):
    """Keeps a child's standard error; fires `done` with its exit code."""

    def __init__(self):
        self.errors = bytearray()
        self.done = defer.Deferred()

    def errReceived(self, data: bytes) -> None:
        if len(self.errors) < 65536:
            self.errors += data

    def processEnded(self, reason) -> None:
        code = reason.value.exitCode if isinstance(reason.value, error.ProcessTerminated) else 0
        self.done.callback(code)


class BackupSchedule(service.Service):
    """Runs `run_once` daily at the configured time on `clock` (default: the reactor).
    `reactor` brings the thread's results back and spawns pg_dump. `last` is the Deferred
    of the run last started."""

    name = "backup-schedule"

    def __init__(self, config: Config, store, reactor, clock=None, passphrase: bytes | None = None):
        self._config = config
        self._store = store
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self._passphrase = passphrase
        # A Twisted ThreadPool cannot start again once stopped, and the cluster's
        # OneNodeAtATime stops and restarts this service: one pool per start.
        self._pool: ThreadPool | None = None
        self._call = None
        self._child = None  # pg_dump's process transport while it runs
        self.last: defer.Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name="atollon-mail-backup")
        self._pool.start()
        self._schedule()

    def stopService(self):
        if not self.running:
            return defer.succeed(None)
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._child is not None:  # the run fails at once instead of waiting for the dump
            self._signal(self._child)
        running = self.last if self.last is not None and not self.last.called else None
        # This start's pool, not whichever a later start made.
        pool, self._pool = self._pool, None

        def stop_pool(result=None):
            if pool is not None:
                pool.stop()
            return result

        if running is None:
            stop_pool()
            return defer.succeed(None)
        # A run under way finishes first (its temporary file would be left otherwise).
        finished = defer.Deferred()
        running.addBoth(lambda result: (stop_pool(), finished.callback(None), result)[-1])
        return finished

    def _schedule(self) -> None:
        hour, minute = self._config.backup.schedule
        now = self._clock.seconds()
        self._call = self._clock.callLater(next_run(now, hour, minute) - now, self._due)

    def _due(self) -> None:
        self._call = None
        self.run_once().addBoth(self._after_run)

    def _after_run(self, result):
        if self.running:
            self._schedule()
        return result  # `last` keeps the archive's path

    def run_once(self) -> defer.Deferred:
        """One backup and rotation; fires with the archive's path, or None after logging
        why it failed (it never fails)."""
        self.last = self._run()
        return self.last

    @defer.inlineCallbacks
    def _run(self):
        config = self._config
        created = datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)
        directory = config.backup.directory
        target = os.path.join(directory, archive.scheduled_name(operations.compact_time(created)))
        try:
            in_thread = self._threads()
            # A run killed on its way (the process stopped hard) leaves its staging folder.
            stale = yield in_thread(operations.remove_stale, directory, self._clock.seconds())
            for path in stale:
                log.info("removed {path}, left by an interrupted backup", path=path)
            if store_backup.database_kind(config.database.url) == SQLITE:
                manifest = yield in_thread(
                    operations.make_backup, config, target, self._passphrase, created
                )
            else:
                manifest = yield self._postgresql(in_thread, target, created)
            removed = yield in_thread(archive.rotate, directory, config.backup.keep, target)
        except Exception as problem:  # every failure is logged, none stops the schedule
            log.error("backup to {target} failed: {problem}", target=target, problem=repr(problem))
            return None
        size = os.stat(target).st_size if os.path.exists(target) else 0
        log.info(
            "backup written to {target} ({size} bytes, {files} files, schema version "
            "{version}); {removed} older removed",
            target=target,
            size=size,
            files=len(manifest.files),
            version=manifest.schema_version,
            removed=len(removed),
        )
        return target

    @staticmethod
    def _signal(transport) -> None:
        try:
            transport.signalProcess("TERM")
        except error.ProcessExitedAlready:
            pass

    def _threads(self):
        """A run's way into the pool of the start it began in: a stop waits for the run
        and then stops that pool, whatever a later start made."""
        pool = self._pool
        if pool is None:
            raise BackupError("the backup schedule is not running")

        def in_thread(function, *args):
            return deferToThreadPool(self._reactor, pool, function, *args)

        return in_thread

    @defer.inlineCallbacks
    def _postgresql(self, in_thread, target: str, created: datetime.datetime):
        config = self._config
        staging = yield in_thread(operations.staging_directory, target)
        try:
            dump = operations.pg_dump_path(staging.name)
            argv, environment = store_backup.pg_dump_command(config.database.url, dump)
            child = _Collect()
            try:
                with affinity.unpinned():
                    transport = self._reactor.spawnProcess(child, argv[0], argv, env=environment)
            except OSError as problem:
                raise BackupError(f"cannot run pg_dump: {problem}") from None
            self._child = transport
            timed_out = []

            def hung():
                timed_out.append(True)
                self._signal(transport)

            kill = self._clock.callLater(operations.PG_DUMP_SECONDS, hung)
            try:
                code = yield child.done
            finally:
                self._child = None
                if kill.active():
                    kill.cancel()
            if timed_out:
                raise BackupError(
                    f"pg_dump ran longer than {operations.PG_DUMP_SECONDS} s and was stopped"
                )
            if code != 0 and not self.running:
                raise BackupError("pg_dump was stopped: the backup schedule stopped")
            if code != 0:
                raise operations.pg_dump_failure(code, bytes(child.errors))
            version = yield in_thread(operations.dump_schema_version, dump)
            manifest = yield in_thread(
                operations.finish_backup, config, target, dump, version, created, self._passphrase
            )
        finally:
            yield in_thread(staging.cleanup)
        return manifest
