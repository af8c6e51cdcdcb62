"""The database's part of a backup and a restore: a consistent copy of a SQLite file, the
pg_dump and pg_restore command lines for a PostgreSQL URL, whether an instance is empty
or in use, and putting a restored SQLite file in place.

The archive around it (the data directory's keys, the manifest, encryption) is
atollon_mail.backup's; nothing there touches the database.
"""

from __future__ import annotations

import os
import re
import sqlite3
from urllib.parse import parse_qsl, unquote, urlsplit

import peewee

from atollon_mail.store import migrations
from atollon_mail.store.database import sqlite_path

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

# Pages copied per step of the SQLite backup (4 KiB pages: 4 MiB a step). The steps run
# inside one read transaction of the copying connection: in WAL mode a reader never
# blocks a writer, and the snapshot it holds does not change between steps, so SQLite
# never restarts the copy (steps from a connection without that transaction restart at
# every commit of another connection, which under a steady inbound load is always).
SQLITE_STEP_PAGES = 1024

# The tables whose rows make an instance not empty: the first admin and the schema
# exist in every started appliance, mail and its addresses do not.
CONTENT_TABLES = ("domain", "mailbox", "message")


# How long pg_dump waits for a table's lock before failing.
PG_DUMP_LOCK_WAIT = "5min"


class BackupError(Exception):
    """A backup or restore step failed; str() is the one line to show."""


def database_kind(url: str) -> str:
    if url.startswith("sqlite:///"):
        return SQLITE
    if url.startswith("postgresql://"):
        return POSTGRESQL
    raise BackupError("unsupported database URL: use sqlite:/// or postgresql://")


def sqlite_file(url: str) -> str:
    """The database file of a sqlite:/// URL, absolute."""
    return os.path.abspath(sqlite_path(url))


def copy_sqlite(
    source: str, target: str, step_pages: int = SQLITE_STEP_PAGES, progress=None
) -> int:
    """Copy the SQLite database at `source` into a new file `target` with SQLite's online
    backup API while others write to it; return the schema version of the copy.
    `progress(status, remaining, total)` is called after each step (sqlite3's backup).

    Blocking: run it in a thread of its own, never on the reactor thread."""
    if not os.path.exists(source):
        raise BackupError(f"no SQLite database at {source}")
    reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None, timeout=10)
    try:
        reader.execute("PRAGMA busy_timeout = 10000")
        # One snapshot for every step (see SQLITE_STEP_PAGES).
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchone()
        copy = sqlite3.connect(target, isolation_level=None)
        try:
            reader.backup(copy, pages=step_pages, progress=progress)
            reader.execute("COMMIT")
            # The copy is a standalone file: no WAL beside it, written to disk.
            copy.execute("PRAGMA journal_mode = DELETE")
            return _sqlite_schema_version(copy)
        finally:
            copy.close()
    except sqlite3.Error as problem:
        raise BackupError(f"cannot copy the SQLite database {source}: {problem}") from None
    finally:
        reader.close()


def _sqlite_schema_version(connection: sqlite3.Connection) -> int:
    found = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migration'"
    ).fetchone()
    if not found:
        return 0
    return connection.execute("SELECT coalesce(max(version), 0) FROM schema_migration").fetchone()[
        0
    ]


def sqlite_schema_version(path: str) -> int:
    """The schema version of a SQLite file (0: none), read only."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _sqlite_schema_version(connection)
    except sqlite3.Error as problem:
        raise BackupError(f"{os.path.basename(path)} is no SQLite database: {problem}") from None
    finally:
        connection.close()


def sqlite_in_use(path: str) -> bool:
    """Whether another connection has the SQLite database at path open (the appliance or
    an admin command). Leaving WAL mode needs every other connection closed: SQLite
    refuses it at once while one is open, even idle. The file is about to be replaced,
    so its journal mode does not matter any more."""
    if not os.path.exists(path):
        return False
    connection = sqlite3.connect(path, isolation_level=None, timeout=0.5)
    try:
        connection.execute("PRAGMA journal_mode = DELETE").fetchall()
    except sqlite3.OperationalError as problem:
        if "locked" in str(problem) or "busy" in str(problem):
            return True
        raise BackupError(f"cannot open the SQLite database {path}: {problem}") from None
    finally:
        connection.close()
    return False


def install_sqlite(copy: str, path: str) -> None:
    """Put the restored SQLite file `copy` at `path`: written beside it, fsynced and
    renamed over it, with the old WAL and shared-memory files removed first (a WAL left
    beside the new file would be replayed into it)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o750, exist_ok=True)
    temporary = f"{path}.restoring"
    try:
        os.unlink(temporary)  # left by a restore that was interrupted
    except FileNotFoundError:
        pass
    if os.stat(copy).st_dev == os.stat(directory).st_dev:
        # Same file system: the unpacked copy (private, 0600) is moved, not copied.
        with open(copy, "rb") as source:
            os.fsync(source.fileno())
        os.rename(copy, temporary)
    else:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        descriptor = os.open(temporary, flags, 0o600)
        with open(copy, "rb") as source, os.fdopen(descriptor, "wb") as target:
            while chunk := source.read(1024 * 1024):
                target.write(chunk)
            target.flush()
            os.fsync(target.fileno())
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
    os.replace(temporary, path)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- PostgreSQL -------------------------------------------------------------------------


def _libpq_quote(value: str) -> str:
    """A value of a libpq keyword connection string: quoted, \\ and ' escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _libpq_options(value: str) -> list[str]:
    """The words of libpq's `options` parameter: split at whitespace, a backslash keeping
    the next character (whitespace or backslash) in the word, as libpq does."""
    words, word, escaped, started = [], [], False, False
    for character in value:
        if escaped:
            word.append(character)
            escaped, started = False, True
        elif character == "\\":
            escaped, started = True, True
        elif character.isspace():
            if started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(character)
            started = True
    if started:
        words.append("".join(word))
    return words


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_QUOTED = re.compile(r'^"([^",]+)"$')


def _search_path_schema(options: str) -> str | None:
    """The one schema the search_path setting in libpq's `options` names (None: none
    set). A form not read here (several schemas, $user, an empty one) is refused: the
    dump would then cover the whole database and a restore drop the other schemas."""
    words = _libpq_options(options)
    settings = []
    for index, word in enumerate(words):
        if word == "-c" and index + 1 < len(words):
            settings.append(words[index + 1])
        elif word.startswith("-c") and word != "-c":
            settings.append(word[2:])
        elif word.startswith("--"):
            settings.append(word[2:])
    schema = None
    for setting in settings:
        name, _, value = setting.partition("=")
        if name.strip().lower().replace("-", "_") != "search_path":
            continue
        value = value.strip()
        quoted = _QUOTED.match(value)
        if quoted:
            schema = quoted.group(1)
        elif _IDENTIFIER.match(value) and not value.startswith("$"):
            schema = value.lower()  # PostgreSQL folds an unquoted name to lower case
        else:
            raise BackupError(
                f"the [database] url's search_path {value!r} is not one schema name: "
                "a backup needs a search_path of exactly one schema (or none)"
            )
    return schema


def _postgres_parts(url: str) -> tuple[dict[str, str], str, str | None]:
    """(environment with the password, libpq keyword connection string, schema named by
    a search_path option or None). The connection string carries what the appliance's
    connection gets (database, user, host, port and every query parameter: sslmode,
    sslrootcert, host=socket directory, hostaddr, options...) but never the password,
    which would be visible on the command line to every user of the machine."""
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise BackupError("the postgresql URL names no database")
    keywords = {"dbname": database}
    if parts.username:
        keywords["user"] = unquote(parts.username)
    if parts.hostname:
        keywords["host"] = parts.hostname
    if parts.port:
        keywords["port"] = str(parts.port)
    environment = {}
    if parts.password:
        environment["PGPASSWORD"] = unquote(parts.password)
    schema = None
    for key, value in parse_qsl(parts.query):
        if key == "password":
            environment["PGPASSWORD"] = value
            continue
        keywords[key] = value
        if key == "options":
            schema = _search_path_schema(value)
    conninfo = " ".join(f"{key}={_libpq_quote(value)}" for key, value in keywords.items())
    return environment, conninfo, schema


def postgres_schema(url: str) -> str | None:
    """The one schema the URL's search_path names (None: the database's default)."""
    return _postgres_parts(url)[2]


def _with_path(environment: dict[str, str]) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environment}


def pg_dump_command(url: str, target: str) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of pg_dump writing the database of url to target: custom
    format, one repeatable-read snapshot (pg_dump's way), only the URL's schema when its
    search_path names one."""
    environment, conninfo, schema = _postgres_parts(url)
    argv = [
        "pg_dump",
        "--format=custom",
        "--no-owner",
        "--no-privileges",
        f"--file={target}",
        # A table locked by a long transaction makes pg_dump fail instead of wait behind it.
        f"--lock-wait-timeout={PG_DUMP_LOCK_WAIT}",
        f"--dbname={conninfo}",
    ]
    if schema:
        # Quoted: pg_dump reads --schema as a pattern, folding case and expanding * and ?.
        argv.append(f'--schema="{schema}"')
    return argv, _with_path(environment)


def pg_restore_list_command(source: str) -> list[str]:
    """argv of pg_restore reading the table of contents of the dump at source (no
    connection): a dump it cannot read is known before anything is dropped."""
    return ["pg_restore", "--list", source]


def pg_restore_sql_command(source: str, target: str) -> list[str]:
    """argv of pg_restore turning the dump at source into an SQL script at target (no
    connection). The script drops what the dump holds before making it (the schema of a
    schema-limited dump too), so it can be made again."""
    return [
        "pg_restore",
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--clean",
        "--if-exists",
        f"--file={target}",
        source,
    ]


def psql_restore_command(url: str, scripts: list[str]) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of psql running the scripts in url's database as one
    transaction, stopping at the first error: the dropping of the old tables and the
    restore commit together or not at all."""
    environment, conninfo, _ = _postgres_parts(url)
    argv = [
        "psql",
        "--no-psqlrc",
        "--quiet",
        "--single-transaction",
        "--set=ON_ERROR_STOP=1",
        f"--dbname={conninfo}",
    ]
    argv += [f"--file={script}" for script in scripts]
    return argv, _with_path(environment)


def drop_tables_sql(names: list[str]) -> str:
    """The statements that drop the tables `names` of the current schema (with the
    sequences of their id columns)."""
    return "".join(f'DROP TABLE IF EXISTS "{name}" CASCADE;\n' for name in names)


# --- store operations (run with Store.run_sync / Store.run, the database passed) -------


def schema_version(database: peewee.Database) -> int:
    return max(migrations.schema_versions(database), default=0)


schema_version.read_only = True


def content_counts(database: peewee.Database) -> dict[str, int]:
    """Rows in each of CONTENT_TABLES (a table not there counts 0)."""
    counts = {}
    for table in CONTENT_TABLES:
        if database.table_exists(table):
            counts[table] = database.execute_sql(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        else:
            counts[table] = 0
    return counts


content_counts.read_only = True


def other_connections(database: peewee.Database) -> int:
    """PostgreSQL: the other sessions connected to this database (an appliance running
    on it, another node, an admin command)."""
    return database.execute_sql(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    ).fetchone()[0]


other_connections.read_only = True


def table_names(database: peewee.Database) -> list[str]:
    """PostgreSQL: the tables of the current schema, to be dropped before a restore."""
    schema = _current_schema(database)
    if schema is None:  # the search_path names a schema not made yet: nothing to drop
        return []
    return database.get_tables(schema=schema)


table_names.read_only = True


def _current_schema(database: peewee.Database) -> str | None:
    return database.execute_sql("SELECT current_schema()").fetchone()[0]
