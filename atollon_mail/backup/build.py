"""The backup subsystem's services: the scheduled backup, when `[backup] schedule` is set."""

from __future__ import annotations

from twisted.application.service import IService

from atollon_mail.backup import operations
from atollon_mail.backup.schedule import BackupSchedule
from atollon_mail.cluster import OneNodeAtATime
from atollon_mail.config import Config, ConfigError
from atollon_mail.events import Events
from atollon_mail.store.backup import BackupError
from atollon_mail.workers import Workers


def build(
    config: Config, store, events: Events, workers: Workers, reactor, clock=None
) -> tuple[IService, ...]:
    """No service when the schedule is off. The passphrase file is read here, so a
    missing or empty one stops start-up with one line instead of failing at night.
    Several nodes on one PostgreSQL database back it up once: the schedule runs on the
    node holding its lock (cluster.OneNodeAtATime; on SQLite, always here)."""
    if config.backup.schedule is None:
        return ()
    passphrase = None
    if config.backup.passphrase_file:
        try:
            passphrase = operations.read_passphrase(config.backup.passphrase_file)
        except BackupError as problem:
            raise ConfigError(config.path, "backup", "passphrase_file", str(problem)) from None
    schedule = BackupSchedule(config, store, reactor, clock, passphrase)
    return (
        OneNodeAtATime(
            "backup-schedule",
            schedule,
            store.leases,
            clock or reactor,
            config.cluster.check_interval,
        ),
    )
