"""Opening the database named by a `[database] url`."""

from __future__ import annotations

import os
import sqlite3
import time
from urllib.parse import parse_qsl, unquote, urlsplit

import peewee
from playhouse.pool import PooledPostgresqlDatabase

# WAL lets readers (the admin command, the web pages) work while the server writes;
# synchronous=FULL fsyncs the WAL at every commit, which is what "250 after commit" needs.
SQLITE_PRAGMAS = (
    ("journal_mode", "wal"),
    ("synchronous", "full"),
    ("foreign_keys", 1),
    ("busy_timeout", 10000),
)


# How long a connection retries switching a new database file to WAL while another
# connection does the same: SQLite answers "database is locked" at once there, without
# waiting for the busy timeout (two connections opening a fresh file together failed 49
# times in 300 trials), so two processes starting on a new file (the service and the
# admin command) could not both start. The wait is in the thread that connects: the
# store's own thread, or start-up and the admin command before any reactor runs; never
# the reactor thread of a running appliance.
WAL_SWITCH_SECONDS = 10.0


class SqliteDatabase(peewee.SqliteDatabase):
    """peewee's SQLite database, whose pragmas wait for a concurrent switch to WAL."""

    def _set_pragmas(self, conn):
        deadline = time.monotonic() + WAL_SWITCH_SECONDS
        while True:
            try:
                return super()._set_pragmas(conn)
            except sqlite3.OperationalError as problem:
                if "locked" not in str(problem) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def unicode_lower(value):
    """SQLite's `unicode_lower(text)`: lower case as PostgreSQL's lower() makes it under a
    UTF-8 ctype (SQLite's own lower() knows ASCII letters only)."""
    return value.lower() if isinstance(value, str) else value


def sqlite_path(url: str) -> str:
    """`sqlite:///var/x.sqlite` is relative to the working directory, `sqlite:////abs` absolute."""
    return unquote(url[len("sqlite:///") :])


def open_database(url: str, **postgres_options) -> peewee.Database:
    """A peewee database for the URL, not yet connected.

    SQLite: the parent directory is created. PostgreSQL: `postgresql://user:pw@host:port/db`
    with optional query parameters passed to libpq (for example `options=-csearch_path=x`).
    """
    if url.startswith("sqlite:///"):
        path = sqlite_path(url)
        if not path:
            raise ValueError("the sqlite URL names no file: use sqlite:///PATH")
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o750, exist_ok=True)
        # check_same_thread=False: the connection is opened in one pool thread and only
        # ever used there, but peewee may close it from the thread that stops the pool.
        database = SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, check_same_thread=False, timeout=10)
        database.register_function(unicode_lower, "unicode_lower", 1, deterministic=True)
        return database
    if url.startswith("postgresql://"):
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query))
        options.update(postgres_options)
        # Pooled: each operation checks a connection out and back in, so the few store
        # threads share them and stopping the store can close every one.
        return PooledPostgresqlDatabase(
            unquote(parts.path.lstrip("/")),
            max_connections=None,
            stale_timeout=300,
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            host=parts.hostname or None,
            port=parts.port or None,
            **options,
        )
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


def is_sqlite(database: peewee.Database) -> bool:
    return isinstance(database, peewee.SqliteDatabase)
