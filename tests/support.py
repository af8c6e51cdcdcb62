"""Shared test fixtures: stores on SQLite and PostgreSQL.

A store test is written once as a mixin and run on both backends by subclassing it with
`SqliteStoreMixin` and `PostgresStoreMixin`. The PostgreSQL run uses the server named by
ATOLLON_MAIL_TEST_DATABASE_URL, each test in a schema of its own, and is skipped with
the reason shown when the variable is unset or the server does not answer.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from urllib.parse import quote, urlsplit, urlunsplit

from twisted.internet import reactor

from atollon_mail.store.pool import Store

POSTGRES_URL_VARIABLE = "ATOLLON_MAIL_TEST_DATABASE_URL"
POSTGRES_URL = os.environ.get(POSTGRES_URL_VARIABLE, "")


def _postgres_unavailable_reason() -> str | None:
    if not POSTGRES_URL:
        return f"{POSTGRES_URL_VARIABLE} is not set: the PostgreSQL run is skipped"
    try:
        import psycopg2

        psycopg2.connect(POSTGRES_URL, connect_timeout=3).close()
    except Exception as problem:  # any failure to reach the server means: skip, visibly
        first_line = str(problem).strip().splitlines()[0] if str(problem).strip() else problem
        return f"PostgreSQL at {POSTGRES_URL} is not reachable: {first_line}"
    return None


POSTGRES_SKIP_REASON = _postgres_unavailable_reason()

# Backing up and restoring PostgreSQL runs its client programs (Makefile SYSTEM_PACKAGES).
PG_DUMP_SKIP_REASON = POSTGRES_SKIP_REASON or (
    None
    if shutil.which("pg_dump") and shutil.which("pg_restore")
    else "pg_dump or pg_restore is not installed (Debian: postgresql-client)"
)


def create_postgres_schema() -> tuple[str, str]:
    """A fresh schema for one test: (database URL whose search_path is it, schema name)."""
    import psycopg2

    schema = f"atollon_test_{uuid.uuid4().hex[:12]}"
    connection = psycopg2.connect(POSTGRES_URL)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA "{schema}"')
    connection.close()
    separator = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}')}"
    return url, schema


def drop_postgres_schema(schema: str) -> None:
    import psycopg2

    connection = psycopg2.connect(POSTGRES_URL)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    connection.close()


class SqliteStoreMixin:
    """Mixed into a trial TestCase: `self.database_url` names a fresh SQLite file."""

    backend = "sqlite"

    def make_database_url(self) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        return f"sqlite:///{os.path.abspath(directory)}/store.sqlite"


class PostgresStoreMixin:
    """Mixed into a trial TestCase: `self.database_url` names a fresh PostgreSQL schema."""

    backend = "postgresql"
    if POSTGRES_SKIP_REASON:
        skip = POSTGRES_SKIP_REASON

    def make_database_url(self) -> str:
        url, schema = create_postgres_schema()
        self.addCleanup(drop_postgres_schema, schema)
        self.postgres_schema = schema  # its node locks' keys are its own (leases.lock_key)
        return url


class StoreFixtureMixin:
    """Gives a migrated, started Store in `self.store` (use with one of the mixins above)."""

    def make_store(self, operation_seconds=None) -> Store:
        """`operation_seconds`: the latency histogram of atollon_mail.metrics to time
        each operation on (None: not timed)."""
        self.database_url = self.make_database_url()
        store = Store.from_url(self.database_url, reactor, operation_seconds=operation_seconds)
        store.migrate()
        store.start()
        self.addCleanup(store.stop)
        return store


def create_postgres_database(url: str) -> tuple[str, str]:
    """A new, empty database on the server of the PostgreSQL URL `url`: (url naming it,
    with url's other parameters such as its search_path, database name); drop it with
    drop_postgres_database."""
    import psycopg2

    name = f"atollon_test_{uuid.uuid4().hex[:12]}"
    connection = psycopg2.connect(POSTGRES_URL)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}")), name


def drop_postgres_database(name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(POSTGRES_URL)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    connection.close()


class BrokenCounting(Exception):
    """What BrokenMetrics's counters raise."""


class _BrokenMetric:
    """A counter, gauge or histogram whose every count raises; labels() gives itself."""

    def labels(self, *values, **labels):
        return self

    def inc(self, *args, **kwargs):
        raise BrokenCounting("counting failed")

    dec = set = observe = inc


def broken_metrics(**kwargs):
    """An atollon_mail.metrics.Metrics whose counters, gauges and histograms all raise
    when they count: the mail paths must go on without them."""
    from prometheus_client.metrics import MetricWrapperBase

    from atollon_mail.metrics import Metrics

    class BrokenMetrics(Metrics):
        def __init__(self):
            super().__init__(**kwargs)
            for name, value in list(vars(self).items()):
                if isinstance(value, MetricWrapperBase):
                    setattr(self, name, _BrokenMetric())

    return BrokenMetrics()


# Ports for the servers the tests start, each test process from a range of its own below
# the kernel's ephemeral range (32768-60999 by default): a port picked by binding to port
# 0 and closing could be picked again by the other worker process of a parallel run (or
# taken by an outgoing connection) before the server bound it, and an appliance that
# cannot listen on one of its ports exits (seen: its IMAP port taken between the pick and
# twistd's bind).
_PORTS_PER_WORKER = 2000
_ports: list[int] = []  # [the range's first port, the next offset in it]


def free_port(*hosts: str) -> int:
    """A port no other test process is handed, free now on every one of `hosts`
    (127.0.0.1 when none are given)."""
    hosts = hosts or ("127.0.0.1",)
    if not _ports:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
        number = int(worker) if worker.isdigit() else 0
        _ports.extend((20000 + (number % 6) * _PORTS_PER_WORKER, 0))
    for _ in range(_PORTS_PER_WORKER):
        port = _ports[0] + _ports[1]
        _ports[1] = (_ports[1] + 1) % _PORTS_PER_WORKER
        try:
            for host in hosts:
                with socket.socket() as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no port free on all of {hosts}")
