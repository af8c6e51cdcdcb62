"""Making a backup and restoring one, for the admin command (synchronously) and the
scheduled service (its blocking parts in a thread, pg_dump as a child process).

What goes into an archive (archive.py): the database, copied while mail flows (SQLite's
online backup API from a connection of its own; PostgreSQL's pg_dump, one repeatable-read
snapshot), and every regular file below `[appliance] data_dir` except the SQLite
database with its WAL and shared-memory files, the dot journal (marks of deliveries in
flight, meaningless to another instance), the backup directory and temporary files. The
data directory holds the self-signed certificate and key, the SRS and mass-mail secrets
and the first admin's password; DKIM keys are rows of the database.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import shutil
import subprocess
import tempfile

import attrs

from atollon_mail import affinity
from atollon_mail.backup import archive
from atollon_mail.backup.archive import ArchiveError, Manifest
from atollon_mail.config import Config
from atollon_mail.delivery.dotjournal import JOURNAL_DIRECTORY
from atollon_mail.store import backup as store_backup
from atollon_mail.store import migrations
from atollon_mail.store.backup import POSTGRESQL, SQLITE, BackupError

PASSPHRASE_VARIABLE = "ATOLLON_MAIL_BACKUP_PASSPHRASE"
PG_DUMP_SECONDS = 6 * 3600  # a dump that runs longer than this has hung

__all__ = ["ArchiveError", "BackupError", "RestoreRefused"]


class RestoreRefused(Exception):
    """The instance is not one to restore into (not empty, in use, another kind)."""


def appliance_version() -> str:
    try:
        return importlib.metadata.version("atollon-mail")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout never installed
        return "unknown"


def read_passphrase(path: str) -> bytes:
    """The passphrase in the file at path (its first line)."""
    try:
        with open(path, "rb") as passphrase_file:
            text = passphrase_file.read()
    except OSError as problem:
        raise BackupError(f"cannot read the passphrase file {path}: {problem.strerror}") from None
    return _passphrase(text.split(b"\n", 1)[0].rstrip(b"\r"), path)


def passphrase_from_environment() -> bytes | None:
    value = os.environ.get(PASSPHRASE_VARIABLE)
    if value is None:
        return None
    return _passphrase(value.encode("utf-8"), PASSPHRASE_VARIABLE)


def _passphrase(value: bytes, where: str) -> bytes:
    if not value.strip():
        raise BackupError(f"the passphrase in {where} is empty")
    return value


def compact_time(moment: datetime.datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def excluded_paths(config: Config, target: str | None = None) -> list[str]:
    """What below the data directory is not copied as a data file (see the module)."""
    excluded = [
        os.path.join(config.appliance.data_dir, JOURNAL_DIRECTORY),
        config.backup.directory,
    ]
    if store_backup.database_kind(config.database.url) == SQLITE:
        database = store_backup.sqlite_file(config.database.url)
        excluded += [database + suffix for suffix in ("", "-wal", "-shm", "-journal")]
    if target is not None:
        excluded.append(target)
    return excluded


def _header(config: Config, schema_version: int, created: datetime.datetime) -> dict:
    kind = store_backup.database_kind(config.database.url)
    return {
        "appliance_version": appliance_version(),
        "database": kind,
        "schema_version": schema_version,
        "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "postgresql_schema": (
            store_backup.postgres_schema(config.database.url) if kind == POSTGRESQL else None
        ),
    }


def staging_directory(near: str) -> tempfile.TemporaryDirectory:
    """A private directory for the database copy, beside `near` (a file to be written):
    on the same file system, not in a /tmp that may be small or in memory."""
    directory = os.path.dirname(os.path.abspath(near))
    os.makedirs(directory, mode=0o750, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=STAGING_PREFIX, dir=directory)


STAGING_PREFIX = ".atollon-mail-backup-"


def remove_stale(directory: str, now: float, age: float = PG_DUMP_SECONDS + 3600) -> list[str]:
    """Remove what a backup killed on its way left in directory (its staging folders and
    unfinished archives) older than `age` seconds (a run under way is younger); the
    paths removed."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        unfinished = name.startswith(".") and name.endswith(".tmp")  # archive.write_archive's
        if not (name.startswith(STAGING_PREFIX) or unfinished):
            continue
        path = os.path.join(directory, name)
        try:
            status = os.lstat(path)
        except FileNotFoundError:
            continue
        if now - status.st_mtime < age:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
        removed.append(path)
    return removed


def dump_sqlite(config: Config, staging: str) -> tuple[str, int]:
    """Copy the SQLite database into staging (blocking): (path, schema version)."""
    path = os.path.join(staging, archive.DATABASE_NAMES[SQLITE])
    version = store_backup.copy_sqlite(store_backup.sqlite_file(config.database.url), path)
    return path, version


def pg_dump_path(staging: str) -> str:
    return os.path.join(staging, archive.DATABASE_NAMES[POSTGRESQL])


def pg_dump_failure(code: int | None, errors: bytes) -> BackupError:
    lines = [line for line in errors.decode("utf-8", "replace").splitlines() if line.strip()]
    why = lines[-1].strip() if lines else f"exit status {code}"
    return BackupError(f"pg_dump failed: {why}")


def dump_postgresql(config: Config, staging: str) -> str:
    """Run pg_dump into staging, waiting for it (the admin command's way): its path."""
    path = pg_dump_path(staging)
    argv, environment = store_backup.pg_dump_command(config.database.url, path)
    try:
        with affinity.unpinned():
            done = subprocess.run(
                argv, env=environment, capture_output=True, timeout=PG_DUMP_SECONDS, check=False
            )
    except FileNotFoundError:
        raise BackupError(
            "pg_dump is not installed: install PostgreSQL's client programs "
            "(Debian: postgresql-client) in the version of the server or newer"
        ) from None
    if done.returncode != 0:
        raise pg_dump_failure(done.returncode, done.stderr)
    return path


def finish_backup(
    config: Config,
    target: str,
    database_file: str,
    schema_version: int,
    created: datetime.datetime,
    passphrase: bytes | None,
) -> Manifest:
    """Write the archive at target from the database copy and the data directory."""
    return archive.write_archive(
        target,
        _header(config, schema_version, created),
        database_file,
        archive.data_files(config.appliance.data_dir, excluded_paths(config, target)),
        passphrase,
    )


def dump_schema_version(dump: str) -> int:
    """The schema version recorded in a pg_dump (its schema_migration rows, read with
    pg_restore from the dump itself): the version of the dump's snapshot, whatever ran
    on the database before or since. Blocking."""
    done = _run_client(
        ["pg_restore", "--data-only", "--table=schema_migration", "--file=-", dump],
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    if done.returncode != 0:
        raise _client_failure("pg_restore", done)
    versions = [0]
    column = None
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        if column is None:
            if line.startswith("COPY ") and line.endswith("FROM stdin;"):
                names = line[line.index("(") + 1 : line.rindex(")")].split(",")
                column = [name.strip().strip('"') for name in names].index("version")
            continue
        if line == "\\.":
            column = None
            continue
        versions.append(int(line.split("\t")[column]))
    return max(versions)


def make_backup(
    config: Config,
    target: str,
    passphrase: bytes | None,
    created: datetime.datetime,
) -> Manifest:
    """The whole backup, blocking (the admin command; the service's SQLite runs)."""
    kind = store_backup.database_kind(config.database.url)
    with staging_directory(target) as staging:
        if kind == SQLITE:
            database_file, version = dump_sqlite(config, staging)
        else:
            database_file = dump_postgresql(config, staging)
            version = dump_schema_version(database_file)
        return finish_backup(config, target, database_file, version, created, passphrase)


# --- restoring -----------------------------------------------------------------------


@attrs.frozen
class Restored:
    manifest: Manifest
    data_files: tuple[str, ...]
    migrations: tuple[int, ...]  # applied after the restore (the backup was older)
    replaced: bool  # the instance was not empty (--force)


def restore(config: Config, store, path: str, passphrase: bytes | None, force: bool) -> Restored:
    """Restore the archive at path into the configured instance (blocking; the admin
    command). The appliance must be stopped; the instance must be empty (no domains,
    mailboxes or messages) unless `force`. The archive is checked whole before anything
    is changed."""
    kind = store_backup.database_kind(config.database.url)
    data_dir = config.appliance.data_dir
    os.makedirs(data_dir, mode=0o750, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=data_dir) as staging:
        manifest = archive.read_archive(path, staging, passphrase)
        _check_fits(config, manifest, kind)
        _check_data_files(config, manifest)
        counts = store.run_sync(store_backup.content_counts, store.database)
        replaced = any(counts.values())
        if replaced and not force:
            held = ", ".join(
                f"{count} {table}{'' if count == 1 else 's'}"
                for table, count in counts.items()
                if count
            )
            raise RestoreRefused(
                f"the instance is not empty ({held}): restore into an empty one, or give "
                "--force to replace everything in it"
            )
        database_file = os.path.join(staging, manifest.database_file)
        if kind == SQLITE:
            store.stop()  # our own connection would count as a user of the file
            file = store_backup.sqlite_file(config.database.url)
            if store_backup.sqlite_in_use(file):
                raise RestoreRefused(
                    f"the database {file} is open in another process: stop the appliance "
                    "(and any admin command) first"
                )
            store_backup.install_sqlite(database_file, file)
        else:
            others = store.run_sync(store_backup.other_connections, store.database)
            if others:
                raise RestoreRefused(
                    f"{others} other sessions are connected to the database: stop the "
                    "appliance (every node) and any admin command first"
                )
            names = store.run_sync(store_backup.table_names, store.database)
            _pg_restore(config, database_file, names, staging)
        _empty_journal(data_dir)
        names = archive.install_data_files(manifest, staging, data_dir)
    applied = store.migrate()
    return Restored(manifest, tuple(names), tuple(m.number for m in applied), replaced)


def _check_data_files(config: Config, manifest: Manifest) -> None:
    """Refuse data files that would land on what a backup leaves out (the database just
    restored, the dot journal, the backups): an archive made here never holds them."""
    excluded = [os.path.realpath(path) for path in excluded_paths(config)]
    root = config.appliance.data_dir
    for entry in manifest.data_files:
        relative = entry["name"][len(archive.DATA_PREFIX) :]
        target = os.path.realpath(os.path.join(root, *relative.split("/")))
        for path in excluded:
            if target == path or target.startswith(path + os.sep):
                raise ArchiveError(
                    f"the archive's {entry['name']} would be written over {path}, which a "
                    "backup leaves out: not a backup of this kind of instance"
                )


def _empty_journal(data_dir: str) -> None:
    """Remove the dot journal's files: marks of deliveries in flight of the instance
    replaced, which name recipient ids of its database, not the restored one's."""
    journal = os.path.join(data_dir, JOURNAL_DIRECTORY)
    if not os.path.isdir(journal):
        return
    for name in os.listdir(journal):
        path = os.path.join(journal, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _check_fits(config: Config, manifest: Manifest, kind: str) -> None:
    if manifest.database != kind:
        raise RestoreRefused(
            f"the backup holds a {manifest.database} database and this instance is "
            f"configured for {kind} ([database] url): restore it on the same kind"
        )
    if manifest.schema_version > migrations.LATEST_VERSION:
        raise RestoreRefused(
            f"the backup is at schema version {manifest.schema_version}, newer than this "
            f"program knows ({migrations.LATEST_VERSION}); restore it with atollon-mail "
            f"{manifest.appliance_version} or newer"
        )
    if kind == POSTGRESQL:
        wanted = store_backup.postgres_schema(config.database.url)
        if manifest.postgresql_schema != wanted:
            raise RestoreRefused(
                f"the backup holds schema {manifest.postgresql_schema or 'public'} and the "
                f"[database] url uses {wanted or 'public'}: set its search_path to the "
                "backup's schema"
            )


def _run_client(argv, environment=None) -> subprocess.CompletedProcess:
    try:
        with affinity.unpinned():
            return subprocess.run(argv, env=environment, capture_output=True, check=False)
    except FileNotFoundError:
        raise BackupError(
            f"{argv[0]} is not installed: install PostgreSQL's client programs "
            "(Debian: postgresql-client)"
        ) from None


def _client_failure(name: str, done: subprocess.CompletedProcess) -> BackupError:
    lines = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line]
    return BackupError(f"{name} failed: {lines[-1] if lines else done.returncode}")


def _pg_restore(config: Config, dump: str, tables: list[str], staging: str) -> None:
    """Replace the tables by the dump's in one transaction: the dump is read (and turned
    into SQL) before the database is touched, then psql runs the drops and the restore
    together, so a failure at any point leaves the old data as it was."""
    for program in ("pg_restore", "psql"):  # known before anything is changed
        if shutil.which(program) is None:
            raise BackupError(
                f"{program} is not installed: install PostgreSQL's client programs "
                "(Debian: postgresql-client)"
            )
    done = _run_client(store_backup.pg_restore_list_command(dump))
    if done.returncode != 0:
        raise _client_failure("pg_restore", done)
    script = os.path.join(staging, "restore.sql")
    done = _run_client(store_backup.pg_restore_sql_command(dump, script))
    if done.returncode != 0:
        raise _client_failure("pg_restore", done)
    drops = os.path.join(staging, "drop.sql")
    with open(drops, "w", encoding="utf-8") as out:
        out.write(store_backup.drop_tables_sql(tables))
    argv, environment = store_backup.psql_restore_command(config.database.url, [drops, script])
    done = _run_client(argv, environment)
    if done.returncode != 0:
        raise _client_failure("the restore", done)
