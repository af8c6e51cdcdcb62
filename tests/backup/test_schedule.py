"""The scheduled backup: when it runs, N newest kept on a task.Clock, failures logged
without stopping the schedule, its place in the appliance, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
import os

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from atollon_mail import tap
from atollon_mail.backup import archive, operations
from atollon_mail.backup import build as backup_build
from atollon_mail.backup.schedule import DAY, BackupSchedule, next_run
from atollon_mail.config import ConfigError, load_config, parse_config
from atollon_mail.events import Events
from atollon_mail.store import domains
from tests.support import (
    PG_DUMP_SKIP_REASON,
    PostgresStoreMixin,
    SqliteStoreMixin,
    StoreFixtureMixin,
)
from tests.test_tap import MINIMAL, SpyReactor, write_config

MIDNIGHT = datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC).timestamp()
HOUR = 3600.0


class NextRunTests(unittest.TestCase):
    def test_the_next_time_of_day_strictly_after_now(self):
        self.assertEqual(next_run(MIDNIGHT, 3, 30), MIDNIGHT + 3.5 * HOUR)
        self.assertEqual(next_run(MIDNIGHT + 3.5 * HOUR, 3, 30), MIDNIGHT + DAY + 3.5 * HOUR)
        self.assertEqual(next_run(MIDNIGHT + 23 * HOUR, 0, 0), MIDNIGHT + DAY)

    def test_the_schedule_key(self):
        config = parse_config("[backup]\nschedule = 3:05\nkeep = 2\n")
        self.assertEqual((config.backup.schedule, config.backup.keep), ((3, 5), 2))
        self.assertIsNone(parse_config("[backup]\nschedule = OFF\n").backup.schedule)
        problem = self.assertRaises(
            ConfigError, parse_config, "[backup]\nschedule = daily\n", "a.ini"
        )
        self.assertEqual(
            str(problem),
            "a.ini: [backup] schedule: must be off or a time of day HH:MM in UTC "
            "(e.g. 03:30), got 'daily'",
        )


class ScheduleContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.store.run_sync(domains.add_domain, "example.com")
        self.base = os.path.abspath(self.mktemp())
        self.data_dir = os.path.join(self.base, "data")
        os.makedirs(self.data_dir)
        with open(os.path.join(self.data_dir, "srs-secret"), "w") as secret:
            secret.write("s3cret\n")
        self.directory = os.path.join(self.base, "backups")
        self.clock = task.Clock()
        self.clock.advance(MIDNIGHT)

    def schedule(self, directory=None, passphrase=None, keep=2) -> BackupSchedule:
        config = parse_config(
            f"[appliance]\nhostname = mx.example.com\ndata_dir = {self.data_dir}\n"
            f"[database]\nurl = {self.database_url}\n"
            f"[backup]\nschedule = 03:30\nkeep = {keep}\n"
            f"directory = {directory or self.directory}\n"
        )
        service = BackupSchedule(config, self.store, reactor, self.clock, passphrase)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    @defer.inlineCallbacks
    def test_runs_daily_at_the_time_and_keeps_the_newest(self):
        service = self.schedule(passphrase=b"pw")
        self.clock.advance(3.5 * HOUR - 1)
        self.assertIsNone(service.last, "not before 03:30")
        written = []
        for day in range(4):
            self.clock.advance(1 if day == 0 else DAY)
            path = yield service.last
            self.assertIsNotNone(path)
            written.append(os.path.basename(path))
            self.store.run_sync(domains.add_domain, f"day{day}.example")
        self.assertEqual(
            written,
            [f"atollon-mail-202612{day:02d}T033000Z.backup" for day in (7, 8, 9, 10)],
        )
        self.assertEqual(sorted(os.listdir(self.directory)), written[2:])
        staging = self.mktemp()
        os.makedirs(staging)
        newest = os.path.join(self.directory, written[-1])
        manifest = archive.read_archive(newest, staging, b"pw")
        self.assertEqual(manifest.database, self.backend)
        self.assertEqual([entry["name"] for entry in manifest.data_files], ["data/srs-secret"])
        self.assertEqual(manifest.created, "2026-12-10T03:30:00Z")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "the next day is scheduled")

    @defer.inlineCallbacks
    def test_a_failure_is_logged_and_the_next_day_still_runs(self):
        blocked = os.path.join(self.base, "a-file")
        with open(blocked, "w") as out:
            out.write("not a directory\n")
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        service = self.schedule(directory=blocked)
        self.clock.advance(3.5 * HOUR)
        result = yield service.last
        self.assertIsNone(result)
        [failure] = [event for event in logged if "failed" in event.get("log_format", "")]
        self.assertEqual(failure["log_level"].name, "error")
        self.assertIn("a-file", failure["target"])
        self.assertEqual(
            [call.getTime() for call in self.clock.getDelayedCalls()],
            [MIDNIGHT + DAY + 3.5 * HOUR],
        )

    @defer.inlineCallbacks
    def test_stopping_waits_for_the_run_under_way(self):
        service = self.schedule()
        self.clock.advance(3.5 * HOUR)
        running = service.last
        yield service.stopService()
        self.assertTrue(running.called)
        self.assertEqual(len(os.listdir(self.directory)), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_a_stopped_and_restarted_schedule_still_backs_up(self):
        # The cluster's OneNodeAtATime stops the job when the node loses its lock and
        # starts it again when it regains it.
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        service = self.schedule()
        yield service.stopService()
        service.startService()
        yield service.stopService()
        service.startService()
        self.clock.advance(3.5 * HOUR)
        path = yield service.last
        self.assertEqual([e for e in logged if "failed" in e.get("log_format", "")], [])
        self.assertEqual(os.path.basename(path), "atollon-mail-20261207T033000Z.backup")

    @defer.inlineCallbacks
    def test_a_restart_during_a_run_keeps_the_new_pool(self):
        service = self.schedule()
        self.clock.advance(3.5 * HOUR)
        first = service.last
        stopped = service.stopService()
        service.startService()
        yield stopped
        self.assertIsNotNone((yield first))
        self.clock.advance(DAY)
        path = yield service.last
        self.assertEqual(os.path.basename(path), "atollon-mail-20261208T033000Z.backup")

    @defer.inlineCallbacks
    def test_a_run_removes_what_an_interrupted_one_left(self):
        os.makedirs(self.directory)
        old = os.path.join(self.directory, ".atollon-mail-backup-abc123")
        unfinished = os.path.join(self.directory, ".atollon-mail-20261201T033000Z.backup.1a2b.tmp")
        recent = os.path.join(self.directory, ".atollon-mail-backup-def456")
        kept = os.path.join(self.directory, "notes.txt")
        os.makedirs(os.path.join(old, "inner"))
        os.makedirs(recent)
        for path in (unfinished, kept):
            with open(path, "w") as out:
                out.write("x\n")
        for path in (old, unfinished, kept):
            os.utime(path, (MIDNIGHT - DAY, MIDNIGHT - DAY))
        os.utime(recent, (MIDNIGHT + 3 * HOUR, MIDNIGHT + 3 * HOUR))
        service = self.schedule()
        self.clock.advance(3.5 * HOUR)
        path = yield service.last
        self.assertEqual(
            sorted(os.listdir(self.directory)),
            sorted([".atollon-mail-backup-def456", "notes.txt", os.path.basename(path)]),
        )


class ScheduleOnSqliteTests(SqliteStoreMixin, ScheduleContract, unittest.TestCase):
    pass


class ScheduleOnPostgresTests(PostgresStoreMixin, ScheduleContract, unittest.TestCase):
    if PG_DUMP_SKIP_REASON:
        skip = PG_DUMP_SKIP_REASON

    def hanging_pg_dump(self) -> None:
        """A pg_dump first on PATH that never ends (as one behind a lock or a dead
        server does)."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        program = os.path.join(directory, "pg_dump")
        with open(program, "w") as out:
            out.write("#!/bin/sh\nexec sleep 600\n")
        os.chmod(program, 0o755)
        original = os.environ["PATH"]
        os.environ["PATH"] = directory + os.pathsep + original
        self.addCleanup(os.environ.__setitem__, "PATH", original)

    @defer.inlineCallbacks
    def started_dump(self, service):
        self.clock.advance(3.5 * HOUR)
        for _ in range(500):
            if service._child is not None:
                return
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.fail("pg_dump was not started")

    def failures(self):
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        return logged

    @defer.inlineCallbacks
    def test_a_hanging_pg_dump_is_stopped_after_the_bound(self):
        self.hanging_pg_dump()
        logged = self.failures()
        service = self.schedule()
        yield self.started_dump(service)
        self.clock.advance(operations.PG_DUMP_SECONDS)
        self.assertIsNone((yield service.last))
        [failure] = [e for e in logged if "failed" in e.get("log_format", "")]
        self.assertIn("pg_dump ran longer than 21600 s and was stopped", failure["problem"])
        self.assertEqual([n for n in os.listdir(self.directory) if n.startswith(".")], [])

    @defer.inlineCallbacks
    def test_stopping_stops_a_pg_dump_under_way(self):
        self.hanging_pg_dump()
        logged = self.failures()
        service = self.schedule()
        yield self.started_dump(service)
        yield service.stopService()
        self.assertIsNone((yield service.last))
        [failure] = [e for e in logged if "failed" in e.get("log_format", "")]
        self.assertIn("pg_dump was stopped", failure["problem"])


class ApplianceTests(unittest.TestCase):
    def test_off_by_default(self):
        config = load_config(write_config(self, MINIMAL))
        self.assertEqual(backup_build.build(config, None, Events(), None, reactor), ())

    def test_a_missing_passphrase_file_stops_start_up_naming_the_key(self):
        config = load_config(
            write_config(self, MINIMAL + "[backup]\nschedule = 03:30\npassphrase_file = {dir}/no\n")
        )
        problem = self.assertRaises(
            ConfigError, backup_build.build, config, None, Events(), None, reactor
        )
        self.assertIn("[backup] passphrase_file: cannot read the passphrase file", str(problem))

    @defer.inlineCallbacks
    def test_the_appliance_runs_the_scheduled_backup(self):
        config = load_config(
            write_config(self, MINIMAL + "[backup]\nschedule = 00:10\ndirectory = {dir}/b\n")
        )
        spy = SpyReactor()
        appliance = tap.build_appliance(config, spy)
        appliance.startService()
        self.addCleanup(appliance.stopService)
        # Run on one node at a time (cluster.OneNodeAtATime); on SQLite always here.
        service = appliance.getServiceNamed("backup-schedule").job
        self.assertIsInstance(service, BackupSchedule)
        spy.advance(600)
        path = yield service.last
        self.assertEqual(os.path.basename(path), "atollon-mail-19700101T001000Z.backup")
        staging = self.mktemp()
        os.makedirs(staging)
        manifest = archive.read_archive(path, staging)
        # What the appliance made in its data directory at start is in the archive.
        self.assertIn("data/tls-selfsigned.key", [entry["name"] for entry in manifest.files])
