"""The store's contract, written once and run on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
import threading

import peewee
from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from atollon_mail.interfaces import IStore
from atollon_mail.store import accounts, common, domains, migrations
from atollon_mail.store import aliases as alias_ops
from atollon_mail.store import contexts as context_ops
from atollon_mail.store import filing as filing_ops
from atollon_mail.store import mailboxes as mailbox_ops
from atollon_mail.store.database import open_database
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.models import MODELS, SEARCH_INDEX_TABLE, Domain, Mailbox
from atollon_mail.store.pool import Store
from atollon_mail.store.records import (
    IncomingMessage,
    Recipient,
    Rejection,
    StoredMessage,
)
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

# --- helpers --------------------------------------------------------------------------


def _current_schema(database: peewee.Database) -> str | None:
    if isinstance(database, peewee.PostgresqlDatabase):
        return database.execute_sql("SELECT current_schema()").fetchone()[0]
    return None


_FIELD_FAMILIES = {
    "AUTO": "integer",
    "BIGAUTO": "integer",
    "INT": "integer",
    "BIGINT": "integer",
    "VARCHAR": "string",
    "TEXT": "text",
    "BOOL": "boolean",
    "DATETIME": "timestamp",
    "DATE": "date",
    "BLOB": "binary",
}


def _field_family(field: peewee.Field) -> str:
    if isinstance(field, peewee.ForeignKeyField):
        field = field.rel_field
    return _FIELD_FAMILIES[field.field_type]


def _column_family(data_type: str) -> str:
    kind = data_type.lower()
    if kind in ("integer", "bigint"):
        return "integer"
    if kind.startswith("varchar") or kind == "character varying":
        return "string"
    if kind.startswith("timestamp"):
        return "timestamp"
    return {
        "text": "text",
        "boolean": "boolean",
        "blob": "binary",
        "bytea": "binary",
        "date": "date",
    }[kind]


def _column_length(column) -> int | None:
    found = re.search(r"\((\d+)\)", column.full_type or column.data_type or "")
    return int(found.group(1)) if found else None


def _schema_description(database: peewee.Database) -> dict:
    """What the migrated database holds, in the terms the models use."""
    schema = _current_schema(database)
    tables = {}
    for table in database.get_tables(schema=schema):
        if table.startswith(SEARCH_INDEX_TABLE):
            continue  # the engines' own full-text index (and FTS5's tables for it)
        columns = {
            column.name: (
                column.null,
                _column_family(column.data_type),
                _column_length(column),
            )
            for column in database.get_columns(table, schema=schema)
        }
        primary_key = database.get_primary_keys(table, schema=schema)
        indexes = {
            (tuple(index.columns), bool(index.unique))
            for index in database.get_indexes(table, schema=schema)
            if list(index.columns) != primary_key
        }
        foreign_keys = {
            (fk.column, fk.dest_table, fk.dest_column, (fk.on_delete or "").upper())
            for fk in database.get_foreign_keys(table, schema=schema)
        }
        tables[table] = {
            "columns": columns,
            "primary_key": primary_key,
            "indexes": indexes,
            "foreign_keys": foreign_keys,
        }
    return tables


def _model_description(model) -> dict:
    meta = model._meta
    columns = {}
    indexes = set()
    foreign_keys = set()
    for field in meta.sorted_fields:
        length = getattr(field, "max_length", None) if field.field_type == "VARCHAR" else None
        columns[field.column_name] = (field.null, _field_family(field), length)
        if isinstance(field, peewee.ForeignKeyField):  # a primary key may be one too
            foreign_keys.add(
                (
                    field.column_name,
                    field.rel_model._meta.table_name,
                    field.rel_field.column_name,
                    (field.on_delete or "").upper(),
                )
            )
        if field.primary_key:
            continue
        if field.unique:
            indexes.add(((field.column_name,), True))
        elif field.index:
            indexes.add(((field.column_name,), False))
    for index in meta.indexes:
        if isinstance(index, peewee.ModelIndex):  # added with add_index (a partial index)
            names = tuple(field.column_name for field in index._expressions)
            indexes.add((names, bool(index._unique)))
            continue
        names, unique = index
        indexes.add((tuple(meta.fields[name].column_name for name in names), unique))
    return {
        "columns": columns,
        "primary_key": [meta.primary_key.column_name],
        "indexes": indexes,
        "foreign_keys": foreign_keys,
    }


def _deactivate_domain(name: str) -> None:
    Domain.update(active=False).where(Domain.name == name).execute()


def _delete_mailbox(address: str) -> None:
    local, domain = address.split("@")
    mailbox = (
        Mailbox.select().join(Domain).where((Mailbox.local_part == local) & (Domain.name == domain))
    )
    Mailbox.delete().where(Mailbox.id.in_(mailbox.select(Mailbox.id))).execute()


def _message(*recipients: Recipient, raw: bytes = b"Subject: hi\r\n\r\nbody\r\n", **headers):
    return IncomingMessage(
        envelope_sender="sender@elsewhere.example", recipients=recipients, raw=raw, **headers
    )


def _filed(raw: bytes) -> bytes:
    """raw as the store files it: the final delivery's Return-Path on top."""
    return b"Return-Path: <sender@elsewhere.example>\r\n" + raw


class _Boom(Exception):
    pass


# --- the contract ---------------------------------------------------------------------


class StoreContractTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def fresh_store(self, url: str | None = None, migrate: bool = True) -> Store:
        store = Store.from_url(url or self.make_database_url(), reactor)
        if migrate:
            store.migrate()
        store.start()
        self.addCleanup(store.stop)
        return store

    def populate(self) -> None:
        """example.com with bob (mailbox bob, alias sales) and carol (mailbox carol)."""
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash-bob")
        self.sync(accounts.add_user, "carol", "hash-carol")
        self.sync(mailbox_ops.add_mailbox, "bob@example.com", "bob")
        self.sync(mailbox_ops.add_mailbox, "carol@example.com", "carol")
        self.sync(alias_ops.add_alias, "sales@example.com", "bob@example.com")

    def recipient(self, local: str, domain: str = "example.com") -> Recipient:
        found = self.sync(filing_ops.resolve_recipient, local, domain)
        self.assertIsInstance(found, Recipient)
        return found

    def uids(self, address: str) -> list[int]:
        return sorted(filing.uid for filing in self.sync(filing_ops.list_filings, address, 10_000))

    # -- the interface --------------------------------------------------------------------

    def test_provides_istore(self):
        self.assertTrue(verifyObject(IStore, self.store))

    def test_thread_count(self):
        # One writer thread for SQLite; several for PostgreSQL (the concurrency tests
        # below rely on it).
        expected = 1 if self.backend == "sqlite" else 4
        self.assertEqual((self.store._pool.min, self.store._pool.max), (expected, expected))

    def test_an_operation_flushed_lazily_skips_only_its_own_disk_flush(self):
        database = self.store.database
        if self.backend == "sqlite":
            setting = "PRAGMA synchronous"
            lazy, full = 1, 2  # NORMAL, FULL
        else:
            setting = "SHOW synchronous_commit"
            lazy, full = "off", "on"

        def read_setting():
            return database.execute_sql(setting).fetchone()[0]

        lazily = common.flushed_lazily(lambda: (read_setting(), Domain.select().count()))
        self.assertEqual(self.sync(lazily), (lazy, 0))
        # Every other operation, and the next one on the same connection, flushes.
        self.assertEqual(self.sync(read_setting), full)
        self.sync(domains.add_domain, "example.com")

        def fails():
            raise Invalid("no")

        self.assertRaises(Invalid, self.sync, common.flushed_lazily(fails))
        self.assertEqual(self.sync(read_setting), full)
        self.assertEqual(self.sync(lazily), (lazy, 1))

    # -- migrations -----------------------------------------------------------------------

    def test_fresh_database_migrates_to_latest(self):
        store = self.fresh_store(migrate=False)
        applied = store.migrate()
        self.assertEqual([m.number for m in applied], [m.number for m in migrations.MIGRATIONS])
        self.assertEqual(applied[-1].number, migrations.LATEST_VERSION)
        rows = store.run_sync(
            lambda: store.database.execute_sql(
                "SELECT version, name, applied_at FROM schema_migration ORDER BY version"
            ).fetchall()
        )
        self.assertEqual(
            [(version, name) for version, name, _ in rows],
            [(m.number, m.name) for m in migrations.MIGRATIONS],
        )
        self.assertTrue(all(applied_at is not None for _, _, applied_at in rows))
        self.assertEqual(store.migrate(), [])
        self.assertEqual(
            store.run_sync(migrations.applied_versions, store.database),
            [m.number for m in migrations.MIGRATIONS],
        )

    def test_models_agree_with_migrated_schema(self):
        described = self.sync(_schema_description, self.store.database)
        self.assertEqual(
            set(described), {model._meta.table_name for model in MODELS} | {"schema_migration"}
        )
        for model in MODELS:
            with self.subTest(model=model.__name__):
                self.assertEqual(_model_description(model), described[model._meta.table_name])

    def test_refuses_database_newer_than_program(self):
        newer = migrations.LATEST_VERSION + 1
        placeholders = ", ".join([self.store.database.param] * 3)
        self.sync(
            self.store.database.execute_sql,
            f"INSERT INTO schema_migration (version, name, applied_at) VALUES ({placeholders})",
            (newer, "from the future", "2000-01-01 00:00:00"),
        )
        with self.assertRaises(RuntimeError) as raised:
            self.store.migrate()
        self.assertIn(f"schema version {newer}", str(raised.exception))

    def test_concurrent_migrators_apply_each_migration_once(self):
        url = self.make_database_url()
        start = threading.Barrier(2)
        results, errors = [], []

        def migrator():
            database = open_database(url)
            try:
                with database.connection_context():
                    start.wait(timeout=10)
                    results.append(migrations.migrate(database))
            except Exception as problem:
                errors.append(problem)
            finally:
                if hasattr(database, "close_all"):
                    database.close_all()

        threads = [threading.Thread(target=migrator) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        self.assertEqual(errors, [])
        # Between them the two migrators applied each migration exactly once.
        applied = sorted(m.number for batch in results for m in batch)
        self.assertEqual(applied, [m.number for m in migrations.MIGRATIONS])
        store = self.fresh_store(url, migrate=False)
        self.assertEqual(store.migrate(), [])
        self.assertEqual(
            store.run_sync(migrations.applied_versions, store.database),
            [m.number for m in migrations.MIGRATIONS],
        )

    # -- domains --------------------------------------------------------------------------

    def test_add_domain_normalizes(self):
        domain = self.sync(domains.add_domain, " Example.COM. ")
        self.assertEqual(
            (domain.name, domain.mode, domain.active), ("example.com", "primary", True)
        )
        secondary = self.sync(
            domains.add_domain, "backup.example.org", "secondary", primary_domain="example.org"
        )
        self.assertEqual(secondary.mode, "secondary")

    def test_duplicate_domain_conflicts(self):
        self.sync(domains.add_domain, "example.com")
        self.assertRaises(Conflict, self.sync, domains.add_domain, "EXAMPLE.com.")
        self.assertEqual([d.name for d in self.sync(domains.list_domains)], ["example.com"])

    def test_bad_domain_names_invalid(self):
        for name in (
            "",
            "localhost",
            "exa mple.com",
            "-bad.example",
            "bad-.example",
            "a..example",
            "example.com..",
            "x" * 64 + ".example",
            "under_score.example",
            "bücher.example",
        ):
            with self.subTest(name=name):
                self.assertRaises(Invalid, self.sync, domains.add_domain, name)
        self.assertEqual(self.sync(domains.list_domains), [])

    def test_bad_domain_mode_invalid(self):
        self.assertRaises(Invalid, self.sync, domains.add_domain, "example.com", "tertiary")
        self.assertEqual(self.sync(domains.list_domains), [])

    def test_list_domains_ordered_by_name(self):
        for name in ("zeta.example", "alpha.example", "mid.example"):
            self.sync(domains.add_domain, name)
        self.assertEqual(
            [d.name for d in self.sync(domains.list_domains)],
            ["alpha.example", "mid.example", "zeta.example"],
        )

    # -- users and contexts ---------------------------------------------------------------

    def test_add_user_creates_todo_context(self):
        user = self.sync(accounts.add_user, "Bob", "hash", "Bob Builder")
        self.assertEqual((user.login, user.name, user.is_admin), ("bob", "Bob Builder", False))
        contexts = self.sync(context_ops.list_contexts)
        self.assertEqual([(c.kind, c.owner_login) for c in contexts], [("todo", "bob")])
        self.assertEqual(self.sync(accounts.user_password_hash, "BOB"), "hash")

    def test_duplicate_login_conflicts_case_insensitively(self):
        self.sync(accounts.add_user, "bob", "hash")
        self.assertRaises(Conflict, self.sync, accounts.add_user, "BoB", "other")
        self.assertEqual([u.login for u in self.sync(accounts.list_users)], ["bob"])
        self.assertEqual(len(self.sync(context_ops.list_contexts)), 1)

    def test_invalid_logins(self):
        for login in ("", "-bob", ".bob", "bob smith", "bob@example.com", "jürgen", "x" * 65):
            with self.subTest(login=login):
                self.assertRaises(Invalid, self.sync, accounts.add_user, login, "hash")
        self.assertEqual(self.sync(accounts.list_users), [])

    def test_has_admin(self):
        self.assertFalse(self.sync(accounts.has_admin))
        self.sync(accounts.add_user, "bob", "hash")
        self.assertFalse(self.sync(accounts.has_admin))
        self.sync(accounts.add_user, "root", "hash", is_admin=True)
        self.assertTrue(self.sync(accounts.has_admin))

    def test_list_users_and_unknown_user(self):
        for login in ("carol", "alice", "bob"):
            self.sync(accounts.add_user, login, "hash")
        self.assertEqual(
            [u.login for u in self.sync(accounts.list_users)], ["alice", "bob", "carol"]
        )
        self.assertRaises(NotFound, self.sync, accounts.user_password_hash, "nobody")

    def test_add_context(self):
        self.sync(accounts.add_user, "bob", "hash")
        folder = self.sync(context_ops.add_context, "folder", " Invoices ", "bob")
        project = self.sync(context_ops.add_context, "project", "Launch")
        self.assertEqual(
            (folder.kind, folder.name, folder.owner_login), ("folder", "Invoices", "bob")
        )
        self.assertEqual((project.kind, project.owner_login), ("project", None))
        self.assertEqual(
            [c.id for c in self.sync(context_ops.list_contexts)][-2:], [folder.id, project.id]
        )
        self.assertRaises(
            Invalid, self.sync, context_ops.add_context, "todo", "Second To Do", "bob"
        )
        self.assertRaises(Invalid, self.sync, context_ops.add_context, "shelf", "X")
        self.assertRaises(Invalid, self.sync, context_ops.add_context, "folder", "  ")
        self.assertRaises(NotFound, self.sync, context_ops.add_context, "folder", "X", "nobody")

    # -- mailboxes ------------------------------------------------------------------------

    def test_add_mailbox_defaults(self):
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash")
        first = self.sync(mailbox_ops.add_mailbox, "Bob@Example.com", "bob")
        self.assertEqual(first.address, "bob@example.com")
        self.assertEqual((first.local_part, first.domain), ("bob", "example.com"))
        self.assertEqual(first.owner_login, "bob")
        self.assertEqual(first.identity, "bob@example.com")
        self.assertEqual((first.store_to.kind, first.store_to.owner_login), ("todo", "bob"))
        self.assertTrue(first.active)
        self.assertTrue(first.is_default)
        self.assertEqual(first.aliases, ())
        second = self.sync(mailbox_ops.add_mailbox, "robert@example.com", "bob")
        self.assertFalse(second.is_default)
        self.assertEqual(self.sync(mailbox_ops.get_mailbox, "BOB@example.COM"), first)

    def test_add_mailbox_options(self):
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash")
        folder = self.sync(context_ops.add_context, "folder", "Support")
        mailbox = self.sync(
            mailbox_ops.add_mailbox,
            "help@example.com",
            "bob",
            identity="Help.Desk@Example.COM",
            active=False,
            store_to_context_id=folder.id,
        )
        self.assertEqual(mailbox.identity, "Help.Desk@example.com")
        self.assertFalse(mailbox.active)
        self.assertEqual(mailbox.store_to, folder)
        self.assertRaises(
            NotFound,
            self.sync,
            mailbox_ops.add_mailbox,
            "other@example.com",
            "bob",
            store_to_context_id=folder.id + 1000,
        )

    def test_invalid_identities_and_overlong_names_are_refused_on_every_backend(self):
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash")
        for identity in (
            "a b@example.com",
            "bell\x07@example.com",
            ".bob@example.com",
            "bob@",
            "x" * 65 + "@example.com",
            "bob@exa mple.com",
        ):
            with self.subTest(identity=identity):
                self.assertRaises(
                    Invalid,
                    self.sync,
                    mailbox_ops.add_mailbox,
                    "bob@example.com",
                    "bob",
                    identity=identity,
                )
        self.assertRaises(Invalid, self.sync, accounts.add_user, "long", "hash", name="n" * 201)
        self.assertRaises(Invalid, self.sync, context_ops.add_context, "folder", "f" * 201)
        self.assertEqual(self.sync(mailbox_ops.list_mailboxes), [])

    def test_mailbox_name_taken_conflicts(self):
        self.populate()
        for address in ("BOB@example.com", "Sales@Example.com", "carol@EXAMPLE.COM"):
            with self.subTest(address=address):
                self.assertRaises(Conflict, self.sync, mailbox_ops.add_mailbox, address, "carol")
        self.assertEqual(len(self.sync(mailbox_ops.list_mailboxes)), 2)

    def test_mailbox_unknown_domain_or_owner(self):
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash")
        self.assertRaises(
            NotFound, self.sync, mailbox_ops.add_mailbox, "bob@nowhere.example", "bob"
        )
        self.assertRaises(NotFound, self.sync, mailbox_ops.add_mailbox, "bob@example.com", "nobody")
        self.assertRaises(NotFound, self.sync, mailbox_ops.get_mailbox, "nobody@example.com")
        self.assertEqual(self.sync(mailbox_ops.list_mailboxes), [])

    def test_invalid_mailbox_names(self):
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash")
        for local in (
            "a+b",
            "a%b",
            "a!b",
            "a@b",
            ".bob",
            "bob.",
            "bo..b",
            "-bob",
            "bob smith",
            "x" * 65,
            "",
        ):
            with self.subTest(local=local):
                self.assertRaises(
                    Invalid, self.sync, mailbox_ops.add_mailbox, f"{local}@example.com", "bob"
                )
        self.assertRaises(Invalid, self.sync, mailbox_ops.add_mailbox, "no-domain", "bob")
        self.assertEqual(self.sync(mailbox_ops.list_mailboxes), [])

    def test_unicode_mailbox_names(self):
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash")
        mailbox = self.sync(mailbox_ops.add_mailbox, "Jürgen.Müller@example.com", "bob")
        self.assertEqual(mailbox.address, "jürgen.müller@example.com")
        self.sync(mailbox_ops.add_mailbox, "ünal@example.com", "bob")
        self.assertRaises(Conflict, self.sync, mailbox_ops.add_mailbox, "ÜNAL@example.com", "bob")
        found = self.sync(filing_ops.resolve_recipient, "JÜRGEN.MÜLLER", "example.com")
        self.assertEqual(found.mailbox_id, mailbox.id)

    def test_list_and_change_mailboxes(self):
        self.sync(domains.add_domain, "b.example")
        self.sync(domains.add_domain, "a.example")
        self.sync(accounts.add_user, "bob", "hash")
        for address in ("zed@a.example", "amy@b.example", "amy@a.example"):
            self.sync(mailbox_ops.add_mailbox, address, "bob")
        self.assertEqual(
            [m.address for m in self.sync(mailbox_ops.list_mailboxes)],
            ["amy@a.example", "zed@a.example", "amy@b.example"],
        )
        folder = self.sync(context_ops.add_context, "folder", "Archive")
        changed = self.sync(mailbox_ops.set_mailbox_store_to, "amy@a.example", folder.id)
        self.assertEqual(changed.store_to, folder)
        reset = self.sync(mailbox_ops.set_mailbox_store_to, "amy@a.example", None)
        self.assertEqual(reset.store_to.kind, "todo")
        self.assertFalse(self.sync(mailbox_ops.set_mailbox_active, "amy@a.example", False).active)
        self.assertFalse(self.sync(mailbox_ops.get_mailbox, "amy@a.example").active)
        self.assertRaises(
            NotFound, self.sync, mailbox_ops.set_mailbox_active, "none@a.example", True
        )
        self.assertRaises(
            NotFound, self.sync, mailbox_ops.set_mailbox_store_to, "amy@a.example", 10**9
        )

    # -- aliases --------------------------------------------------------------------------

    def test_add_alias(self):
        self.populate()
        alias = self.sync(alias_ops.add_alias, "Info@Example.com", "BOB@example.com")
        self.assertEqual(
            (alias.address, alias.mailbox_address), ("info@example.com", "bob@example.com")
        )
        self.assertEqual(
            [(a.address, a.mailbox_address) for a in self.sync(alias_ops.list_aliases)],
            [("info@example.com", "bob@example.com"), ("sales@example.com", "bob@example.com")],
        )
        self.assertEqual(
            self.sync(mailbox_ops.get_mailbox, "bob@example.com").aliases,
            ("info@example.com", "sales@example.com"),
        )

    def test_alias_in_other_domain_invalid(self):
        self.populate()
        self.sync(domains.add_domain, "other.example")
        self.assertRaises(
            Invalid, self.sync, alias_ops.add_alias, "bob@other.example", "bob@example.com"
        )
        self.assertEqual(len(self.sync(alias_ops.list_aliases)), 1)

    def test_alias_collisions_conflict(self):
        self.populate()
        for address in ("Carol@example.com", "SALES@example.com", "bob@example.com"):
            with self.subTest(address=address):
                self.assertRaises(
                    Conflict, self.sync, alias_ops.add_alias, address, "carol@example.com"
                )
        self.assertRaises(
            NotFound, self.sync, alias_ops.add_alias, "x@example.com", "nobody@example.com"
        )
        self.assertRaises(
            Invalid, self.sync, alias_ops.add_alias, "x+y@example.com", "bob@example.com"
        )
        self.assertEqual(len(self.sync(alias_ops.list_aliases)), 1)

    # -- resolving recipients -------------------------------------------------------------

    def test_resolve_mailbox_and_alias(self):
        self.populate()
        bob = self.sync(mailbox_ops.get_mailbox, "bob@example.com")
        self.assertEqual(
            self.sync(filing_ops.resolve_recipient, "bob", "example.com"),
            Recipient(
                address="bob@example.com", mailbox_id=bob.id, mailbox_address="bob@example.com"
            ),
        )
        self.assertEqual(
            self.sync(filing_ops.resolve_recipient, "sales", "example.com"),
            Recipient(
                address="sales@example.com", mailbox_id=bob.id, mailbox_address="bob@example.com"
            ),
        )
        for local, domain in (
            ("BOB", "EXAMPLE.COM"),
            ("Bob", "example.com."),
            ("SaLeS", "Example.Com"),
        ):
            with self.subTest(local=local, domain=domain):
                found = self.sync(filing_ops.resolve_recipient, local, domain)
                self.assertIsInstance(found, Recipient)
                self.assertEqual(found.mailbox_id, bob.id)

    def test_resolve_tagged_addresses(self):
        self.populate()
        bob = self.sync(mailbox_ops.get_mailbox, "bob@example.com")
        tagged = self.sync(filing_ops.resolve_recipient, "bob+lists", "example.com")
        self.assertEqual(
            tagged,
            Recipient(
                address="bob+lists@example.com",
                mailbox_id=bob.id,
                mailbox_address="bob@example.com",
            ),
        )
        via_alias = self.sync(filing_ops.resolve_recipient, "Sales+X", "example.com")
        self.assertEqual((via_alias.mailbox_id, via_alias.address), (bob.id, "sales+x@example.com"))
        for local in ("nobody+bob", "+bob", "bobby+x"):
            with self.subTest(local=local):
                self.assertEqual(
                    self.sync(filing_ops.resolve_recipient, local, "example.com").reason,
                    "unknown-address",
                )

    def test_resolve_rejections(self):
        self.populate()
        self.sync(domains.add_domain, "sleepy.example")
        self.sync(mailbox_ops.add_mailbox, "bob@sleepy.example", "bob")
        self.sync(_deactivate_domain, "sleepy.example")
        self.sync(mailbox_ops.set_mailbox_active, "carol@example.com", False)
        self.sync(alias_ops.add_alias, "help@example.com", "carol@example.com")
        cases = {
            ("bob", "nowhere.example"): "unknown-domain",
            ("bob", "sleepy.example"): "inactive-domain",
            ("nobody", "example.com"): "unknown-address",
            ("carol", "example.com"): "inactive-mailbox",
            ("carol+tag", "example.com"): "inactive-mailbox",
            ("help", "example.com"): "inactive-mailbox",
        }
        for (local, domain), reason in cases.items():
            with self.subTest(local=local, domain=domain):
                found = self.sync(filing_ops.resolve_recipient, local, domain)
                self.assertIsInstance(found, Rejection)
                self.assertEqual(found.reason, reason)
                self.assertTrue(found.detail)

    @defer.inlineCallbacks
    def test_resolve_through_run(self):
        self.populate()
        found = yield self.store.run(filing_ops.resolve_recipient, "bob", "example.com")
        self.assertEqual(found.mailbox_address, "bob@example.com")

    # -- storing messages -----------------------------------------------------------------

    def test_message_stored_once_filed_once_per_mailbox(self):
        self.populate()
        bob, sales, carol = (self.recipient(n) for n in ("bob", "sales", "carol"))
        [stored] = self.sync(filing_ops.store_messages, [_message(bob, sales, carol, bob)])
        self.assertIsInstance(stored, StoredMessage)
        self.assertEqual(stored.filings, 2)
        self.assertEqual(self.sync(filing_ops.count_messages), 1)
        for address in ("bob@example.com", "carol@example.com"):
            [filing] = self.sync(filing_ops.list_filings, address)
            self.assertEqual((filing.uid, filing.message.id), (1, stored.id))

    def test_filing_goes_to_store_to_or_owner_todo(self):
        self.populate()
        folder = self.sync(context_ops.add_context, "folder", "Shared")
        self.sync(mailbox_ops.set_mailbox_store_to, "carol@example.com", folder.id)
        self.sync(
            filing_ops.store_messages, [_message(self.recipient("bob"), self.recipient("carol"))]
        )
        [to_bob] = self.sync(filing_ops.list_filings, "bob@example.com")
        [to_carol] = self.sync(filing_ops.list_filings, "carol@example.com")
        self.assertEqual((to_bob.context.kind, to_bob.context.owner_login), ("todo", "bob"))
        self.assertEqual(to_carol.context, folder)
        self.assertEqual(to_bob.flags, ())

    def test_resolution_carries_the_filing_context_and_storing_uses_it(self):
        self.populate()
        folder = self.sync(context_ops.add_context, "folder", "Shared")
        self.sync(mailbox_ops.set_mailbox_store_to, "carol@example.com", folder.id)
        carol = self.sync(filing_ops.resolve_recipient, "carol", "example.com")
        bob = self.sync(filing_ops.resolve_recipient, "bob", "example.com")
        self.assertEqual(carol.context_id, folder.id)
        bob_todo = [c for c in self.sync(context_ops.list_contexts) if c.owner_login == "bob"][0]
        self.assertEqual(bob.context_id, bob_todo.id)
        self.sync(filing_ops.store_messages, [_message(bob, carol)])
        self.assertEqual(self.sync(filing_ops.list_filings, "carol@example.com")[0].context, folder)
        self.assertEqual(self.sync(filing_ops.list_filings, "bob@example.com")[0].context, bob_todo)
        unresolved = Recipient(carol.address, carol.mailbox_id, carol.mailbox_address)
        self.assertIsNone(unresolved.context_id)
        self.sync(filing_ops.store_messages, [_message(unresolved)])
        self.assertEqual(
            [f.context for f in self.sync(filing_ops.list_filings, "carol@example.com")],
            [folder, folder],
        )

    def test_uids_per_mailbox_ascend_without_gaps(self):
        self.populate()
        bob, carol = self.recipient("bob"), self.recipient("carol")
        self.sync(filing_ops.store_messages, [_message(bob), _message(bob, carol), _message(bob)])
        self.sync(filing_ops.store_messages, [_message(carol)])
        self.sync(filing_ops.store_messages, [_message(bob)])
        self.assertEqual(self.uids("bob@example.com"), [1, 2, 3, 4])
        self.assertEqual(self.uids("carol@example.com"), [1, 2])

    def test_raw_bytes_round_trip(self):
        self.populate()
        bob = self.recipient("bob")
        bodies = [
            b"Subject: plain\r\n\r\nline\r\n.\r\n..dot\r\n",
            "Subject: caf\u00e9\r\n\r\nGr\u00fc\u00dfe \u2713\r\n".encode(),
            bytes(range(1, 256)) * 4,  # every 8-bit value but NUL
            b"\r\n" + b"x" * 300_000 + b"\n\r\r\n",
            b" \t trailing whitespace \t \r\n\r\n",
        ]
        results = self.sync(filing_ops.store_messages, [_message(bob, raw=raw) for raw in bodies])
        for raw, stored in zip(bodies, results):
            got = self.sync(filing_ops.message_raw, stored.id)
            self.assertIs(type(got), bytes)
            self.assertEqual(got, _filed(raw))
        sizes = {
            f.message.id: f.message.size
            for f in self.sync(filing_ops.list_filings, "bob@example.com")
        }
        self.assertEqual([sizes[s.id] for s in results], [len(_filed(raw)) for raw in bodies])

    def test_received_mail_is_filed_under_one_return_path(self):
        """RFC 5321 4.4: the final delivery adds Return-Path with the envelope sender; one
        the message arrived with is replaced, so there is exactly one."""
        self.populate()
        raw = b"Return-Path: <forged@elsewhere.example>\r\nSubject: hi\r\n\r\nbody\r\n"
        [stored] = self.sync(filing_ops.store_messages, [_message(self.recipient("bob"), raw=raw)])
        got = self.sync(filing_ops.message_raw, stored.id)
        self.assertEqual(
            got, b"Return-Path: <sender@elsewhere.example>\r\nSubject: hi\r\n\r\nbody\r\n"
        )
        [filing] = self.sync(filing_ops.list_filings, "bob@example.com")
        self.assertEqual(filing.message.size, len(got))

    def test_message_summary_fields(self):
        self.populate()
        message = _message(
            self.recipient("bob"),
            message_id="<1@elsewhere.example>",
            subject="Grüße",
            from_header="Sender <sender@elsewhere.example>",
            date_header="Mon, 1 Jan 2024 00:00:00 +0000",
        )
        [stored] = self.sync(filing_ops.store_messages, [message])
        [filing] = self.sync(filing_ops.list_filings, "bob@example.com")
        summary = filing.message
        self.assertEqual(summary.id, stored.id)
        self.assertEqual(summary.message_id, "<1@elsewhere.example>")
        self.assertEqual(summary.subject, "Grüße")
        self.assertEqual(summary.from_header, "Sender <sender@elsewhere.example>")
        self.assertEqual(summary.date_header, "Mon, 1 Jan 2024 00:00:00 +0000")
        self.assertEqual(summary.envelope_sender, "sender@elsewhere.example")
        self.assertEqual(summary.size, len(_filed(message.raw)))
        self.assertIsNotNone(summary.received_at)

    def test_failing_message_reported_others_kept(self):
        self.populate()
        bob, carol = self.recipient("bob"), self.recipient("carol")
        self.sync(_delete_mailbox, "carol@example.com")
        first, failed, third, empty = self.sync(
            filing_ops.store_messages,
            [
                _message(bob, raw=b"first"),
                _message(bob, carol, raw=b"second"),
                _message(bob, raw=b"third"),
                _message(raw=b"nobody"),
            ],
        )
        self.assertIsInstance(failed, NotFound)
        self.assertIsInstance(empty, Invalid)
        self.assertIsInstance(first, StoredMessage)
        self.assertIsInstance(third, StoredMessage)
        self.assertEqual(self.sync(filing_ops.count_messages), 2)
        # The failed message's uid was given back: bob's uids stay gap-free.
        filings = self.sync(filing_ops.list_filings, "bob@example.com")
        self.assertEqual([(f.uid, f.message.id) for f in filings], [(2, third.id), (1, first.id)])
        self.assertEqual(self.sync(filing_ops.message_raw, third.id), _filed(b"third"))
        [fourth] = self.sync(filing_ops.store_messages, [_message(bob)])
        self.assertEqual(self.uids("bob@example.com"), [1, 2, 3])
        self.assertIsInstance(fourth, StoredMessage)

    @defer.inlineCallbacks
    def test_concurrent_stores_give_unique_gap_free_uids(self):
        self.populate()
        bob = self.recipient("bob")
        count = 40
        results = yield defer.gatherResults(
            [
                self.store.run(filing_ops.store_messages, [_message(bob, raw=b"m%d" % n)])
                for n in range(count)
            ]
        )
        self.assertTrue(all(isinstance(r, StoredMessage) for [r] in results), results)
        self.assertEqual(self.uids("bob@example.com"), list(range(1, count + 1)))
        self.assertEqual(self.sync(filing_ops.count_messages), count)

    @defer.inlineCallbacks
    def test_concurrent_batches_in_crossed_order(self):
        # Batches filing into bob then carol race batches filing into carol then bob: each
        # must wait for the other, never deadlock.
        self.populate()
        bob, carol = self.recipient("bob"), self.recipient("carol")
        runs = []
        for n in range(24):
            order = (bob, carol) if n % 2 else (carol, bob)
            batch = [_message(order[0]), _message(order[1]), _message(*reversed(order))]
            runs.append(self.store.run(filing_ops.store_messages, batch))
        results = yield defer.gatherResults(runs)
        flat = [r for batch in results for r in batch]
        self.assertTrue(all(isinstance(r, StoredMessage) for r in flat), flat)
        self.assertEqual(self.uids("bob@example.com"), list(range(1, 24 * 2 + 1)))
        self.assertEqual(self.uids("carol@example.com"), list(range(1, 24 * 2 + 1)))

    @defer.inlineCallbacks
    def test_concurrent_admin_writes_conflict_cleanly(self):
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash")
        self.sync(accounts.add_user, "dora", "hash")
        self.sync(mailbox_ops.add_mailbox, "target@example.com", "bob")
        runs = []
        for n in range(8):
            runs.append(self.store.run(domains.add_domain, "race.example"))
            runs.append(self.store.run(mailbox_ops.add_mailbox, f"n{n}@example.com", "bob"))
            runs.append(
                self.store.run(alias_ops.add_alias, f"n{n}@example.com", "target@example.com")
            )
            runs.append(self.store.run(mailbox_ops.add_mailbox, f"dora{n}@example.com", "dora"))
        outcomes = yield defer.DeferredList(runs, consumeErrors=True)
        failures = [result.value for ok, result in outcomes if not ok]
        # Every loser is told Conflict, never a raw database error.
        self.assertTrue(all(isinstance(f, Conflict) for f in failures), failures)
        # Seven of the eight add_domain lose, and one of each mailbox/alias pair.
        self.assertEqual(len(failures), 7 + 8)
        self.assertEqual(
            [d.name for d in self.sync(domains.list_domains)], ["example.com", "race.example"]
        )
        mailboxes = {m.local_part for m in self.sync(mailbox_ops.list_mailboxes)}
        aliases = {a.address.split("@")[0] for a in self.sync(alias_ops.list_aliases)}
        self.assertEqual(mailboxes & aliases, set())
        self.assertEqual(
            {f"n{n}" for n in range(8)},
            (mailboxes | aliases) - {"target"} - {f"dora{n}" for n in range(8)},
        )
        defaults = [
            m
            for m in self.sync(mailbox_ops.list_mailboxes)
            if m.owner_login == "dora" and m.is_default
        ]
        self.assertEqual(len(defaults), 1)

    # -- transactions ---------------------------------------------------------------------

    def _write_everything_then_fail(self):
        domains.add_domain("example.com")
        accounts.add_user("bob", "hash")
        mailbox_ops.add_mailbox("bob@example.com", "bob")
        alias_ops.add_alias("sales@example.com", "bob@example.com")
        filing_ops.store_messages([_message(filing_ops.resolve_recipient("bob", "example.com"))])
        raise _Boom("late failure")

    def _assert_nothing_written(self):
        self.assertEqual(self.sync(domains.list_domains), [])
        self.assertEqual(self.sync(accounts.list_users), [])
        self.assertEqual(self.sync(context_ops.list_contexts), [])
        self.assertEqual(self.sync(mailbox_ops.list_mailboxes), [])
        self.assertEqual(self.sync(alias_ops.list_aliases), [])
        self.assertEqual(self.sync(filing_ops.count_messages), 0)

    @defer.inlineCallbacks
    def test_failing_run_rolls_back_everything(self):
        yield self.assertFailure(self.store.run(self._write_everything_then_fail), _Boom)
        self._assert_nothing_written()
        # The store's thread is fine afterwards.
        domain = yield self.store.run(domains.add_domain, "example.com")
        self.assertEqual(domain.name, "example.com")

    def test_failing_run_sync_rolls_back_everything(self):
        self.assertRaises(_Boom, self.sync, self._write_everything_then_fail)
        self._assert_nothing_written()

    @defer.inlineCallbacks
    def test_store_error_mid_run_rolls_back_earlier_writes(self):
        def twice():
            domains.add_domain("example.com")
            domains.add_domain("example.com")

        yield self.assertFailure(self.store.run(twice), Conflict)
        self.assertEqual(self.sync(domains.list_domains), [])

    # -- reading --------------------------------------------------------------------------

    def test_list_filings_newest_first_with_limit_and_offset(self):
        self.populate()
        bob = self.recipient("bob")
        stored = self.sync(
            filing_ops.store_messages, [_message(bob, raw=b"%d" % n) for n in range(5)]
        )
        ids = [s.id for s in stored]
        listed = self.sync(filing_ops.list_filings, "bob@example.com")
        self.assertEqual([f.uid for f in listed], [5, 4, 3, 2, 1])
        self.assertEqual([f.message.id for f in listed], ids[::-1])
        self.assertEqual({f.mailbox_address for f in listed}, {"bob@example.com"})
        page = self.sync(filing_ops.list_filings, "bob@example.com", 2, 1)
        self.assertEqual([f.uid for f in page], [4, 3])
        self.assertEqual(self.sync(filing_ops.list_filings, "bob@example.com", 10, 5), [])
        self.assertEqual(self.sync(filing_ops.list_filings, "carol@example.com"), [])
        self.assertRaises(NotFound, self.sync, filing_ops.list_filings, "nobody@example.com")

    def test_message_raw_unknown_and_count(self):
        self.assertRaises(NotFound, self.sync, filing_ops.message_raw, 12345)
        self.assertEqual(self.sync(filing_ops.count_messages), 0)
        self.populate()
        self.sync(filing_ops.store_messages, [_message(self.recipient("bob")) for _ in range(3)])
        self.assertEqual(self.sync(filing_ops.count_messages), 3)

    # -- lifetime -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_committed_data_survives_reopen(self):
        self.populate()
        raw = b"Subject: keep\r\n\r\n\xff\xfe kept\r\n"
        [stored] = yield self.store.run(
            filing_ops.store_messages, [_message(self.recipient("bob"), raw=raw)]
        )
        # Work queued before stop() still runs and commits.
        queued = [self.store.run(domains.add_domain, f"queued{n}.example") for n in range(3)]
        self.store.stop()
        yield defer.gatherResults(queued)
        reopened = self.fresh_store(self.database_url, migrate=False)
        self.assertEqual(reopened.migrate(), [])
        self.assertEqual(
            [d.name for d in (yield reopened.run(domains.list_domains))],
            ["example.com", "queued0.example", "queued1.example", "queued2.example"],
        )
        self.assertEqual((yield reopened.run(filing_ops.message_raw, stored.id)), _filed(raw))
        self.assertEqual(
            (yield reopened.run(mailbox_ops.get_mailbox, "bob@example.com")).aliases,
            ("sales@example.com",),
        )

    @defer.inlineCallbacks
    def test_two_stores_in_one_process_keep_to_their_own_database(self):
        # The second Store re-initializes the models' proxy; the first must still work on
        # its own database, inside its own transactions.
        other = self.fresh_store()
        yield self.store.run(domains.add_domain, "first.example")
        yield other.run(domains.add_domain, "second.example")
        self.assertEqual([d.name for d in self.sync(domains.list_domains)], ["first.example"])
        self.assertEqual([d.name for d in other.run_sync(domains.list_domains)], ["second.example"])
        yield self.assertFailure(self.store.run(self._write_everything_then_fail), _Boom)
        self.assertEqual([d.name for d in self.sync(domains.list_domains)], ["first.example"])


class SqliteStoreTests(SqliteStoreMixin, StoreContractTests, unittest.TestCase):
    @defer.inlineCallbacks
    def test_pragmas_in_force_on_the_store_connection(self):
        def pragmas():
            return {
                name: self.store.database.execute_sql(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }

        found = yield self.store.run(pragmas)
        self.assertEqual(found["journal_mode"], "wal")
        self.assertEqual(found["synchronous"], 2)  # FULL
        self.assertEqual(found["foreign_keys"], 1)
        self.assertGreaterEqual(found["busy_timeout"], 1000)

    def test_run_sync_in_calling_thread_has_pragmas_too(self):
        found = self.sync(
            lambda: [
                self.store.database.execute_sql(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "foreign_keys")
            ]
        )
        self.assertEqual(found, ["wal", 2, 1])

    def test_reads_do_not_wait_for_another_writer(self):
        import sqlite3
        import time

        from atollon_mail.store.database import sqlite_path

        other = sqlite3.connect(sqlite_path(self.database_url), timeout=0, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")  # another process (the server) is writing
        self.addCleanup(other.execute, "ROLLBACK")
        started = time.monotonic()
        self.assertEqual(self.sync(domains.list_domains), [])
        self.assertLess(time.monotonic() - started, 1.0, "a read must not queue for the lock")
        reader = Store.from_url(self.database_url, None)
        self.addCleanup(reader.stop)
        reader.database.execute_sql("PRAGMA busy_timeout = 100")
        self.assertRaises(peewee.OperationalError, reader.run_sync, domains.add_domain, "x.example")


class PostgresStoreTests(PostgresStoreMixin, StoreContractTests, unittest.TestCase):
    pass
