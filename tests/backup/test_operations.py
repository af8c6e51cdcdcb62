"""Backing up a store and restoring it into another instance, on SQLite and PostgreSQL:
everything comes back with the same ids, uids, flags, folders, DKIM keys and queue; a
non-empty or busy instance is refused; an older backup is migrated."""

from __future__ import annotations

import datetime
import os
import subprocess

from twisted.internet import reactor
from twisted.trial import unittest

from atollon_mail.backup import archive, operations
from atollon_mail.backup.operations import RestoreRefused
from atollon_mail.config import parse_config
from atollon_mail.delivery.dkim import generate_key
from atollon_mail.store import accounts, domains, filing, mailboxes, migrations, queue
from atollon_mail.store import backup as store_backup
from atollon_mail.store.pool import Store
from atollon_mail.store.records import Origin, OutgoingMessage
from tests.support import (
    PG_DUMP_SKIP_REASON,
    PostgresStoreMixin,
    SqliteStoreMixin,
    create_postgres_database,
    drop_postgres_database,
)

CREATED = datetime.datetime(2026, 12, 7, 3, 30, tzinfo=datetime.UTC)
T0 = datetime.datetime(2026, 12, 6, 12, 0)


def snapshot(store: Store) -> dict:
    """What a restore must bring back, as records (ids included)."""
    run = store.run_sync
    return {
        "mailboxes": run(mailboxes.list_mailboxes),
        "filings": {
            address: run(filing.list_filings, address)
            for address in ("bob@example.com", "carol@example.com")
        },
        "dkim": run(domains.all_dkim_keys),
        "queue": run(queue.queue_list),
        "users": run(accounts.list_users),
    }


class BackupRestoreContract:
    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.source = self.open_store(self.make_database_url())
        self.source_config = self.config("source", self.source_url)

    def open_store(self, url: str, up_to: int | None = None) -> Store:
        store = Store.from_url(url, reactor)
        with store.database.connection_context():
            migrations.migrate(store.database, up_to=up_to)
        self.addCleanup(store.stop)
        self.source_url = url
        return store

    def config(self, name: str, url: str):
        data_dir = os.path.join(self.base, name)
        text = (
            f"[appliance]\nhostname = mx.example.com\ndata_dir = {data_dir}\n"
            f"[database]\nurl = {url}\n"
            f"[backup]\ndirectory = {os.path.join(data_dir, 'backups')}\n"
        )
        return parse_config(text, f"{name}.ini")

    def populate(self, store: Store) -> None:
        run = store.run_sync
        run(domains.add_domain, "example.com")
        run(accounts.add_user, "bob", "hash-bob")
        run(accounts.add_user, "carol", "hash-carol")
        bob = run(mailboxes.add_mailbox, "bob@example.com", "bob")
        run(mailboxes.add_mailbox, "carol@example.com", "carol")
        private, public = generate_key("ed25519")
        run(domains.add_dkim_key, "example.com", "s1", "ed25519", private, public)
        for number in range(3):
            message = OutgoingMessage(
                envelope_sender="bob@example.com",
                raw=f"Subject: {number}\r\n\r\nbody {number}\r\n".encode(),
                local_recipients=(run(filing.resolve_recipient, "carol", "example.com"),),
                remote_recipients=("ann@remote.example",),
                sent_mailbox_id=bob.id,
            )
            [submitted] = run(queue.submit_messages, [(message, Origin("submission"))], T0)
        run(filing.add_flag, "carol@example.com", submitted.id, "\\Flagged")
        run(filing.move_message, "carol@example.com", submitted.id - 1, "junk")

    def write_data_files(self, config) -> None:
        os.makedirs(os.path.join(config.appliance.data_dir, "dot-journal"))
        for name, text in (("srs-secret", "s3cret\n"), ("dot-journal/000000000001.dots", "1\n")):
            with open(os.path.join(config.appliance.data_dir, name), "w") as out:
                out.write(text)

    def back_up(self, passphrase=None) -> str:
        target = os.path.join(self.base, "backup.tar")
        operations.make_backup(
            self.source_config,
            target,
            passphrase,
            CREATED,
        )
        return target

    def restore(self, target_url: str, path: str, passphrase=None, force=False):
        config = self.config("target", target_url)
        store = Store.from_url(target_url, reactor)
        try:
            return operations.restore(config, store, path, passphrase, force)
        finally:
            store.stop()  # as the admin command does when it ends

    def reopened(self, url: str) -> Store:
        store = Store.from_url(url, reactor)
        self.addCleanup(store.stop)
        return store

    # -- tests -----------------------------------------------------------------------

    def test_restore_brings_back_mail_uids_flags_folders_keys_queue_and_secrets(self):
        self.populate(self.source)
        self.write_data_files(self.source_config)
        path = self.back_up(b"passphrase")
        target_url = self.empty_target_url()
        restored = self.restore(target_url, path, b"passphrase")
        self.assertEqual(restored.data_files, ("srs-secret",))
        self.assertEqual((restored.migrations, restored.replaced), ((), False))
        self.assertEqual(restored.manifest.database, self.backend)
        target = self.reopened(target_url)
        expected = snapshot(self.source)
        self.assertEqual(snapshot(target), expected)
        # What the comparison covers is there at all.
        carol = expected["filings"]["carol@example.com"]
        self.assertEqual(len(carol), 3)
        self.assertIn(("\\Flagged",), [f.flags for f in carol])
        self.assertEqual(len(expected["queue"]), 3)
        self.assertEqual([key.selector for key in expected["dkim"]], ["s1"])
        data_dir = os.path.join(self.base, "target")
        with open(os.path.join(data_dir, "srs-secret")) as secret:
            self.assertEqual(secret.read(), "s3cret\n")
        self.assertFalse(os.path.exists(os.path.join(data_dir, "dot-journal")))
        # The restored store takes new mail after the old.
        self.assertEqual(
            target.run_sync(filing.add_flag, "carol@example.com", carol[0].message.id, "\\Seen"),
            1,
        )

    def test_a_non_empty_instance_is_refused_unless_forced(self):
        self.populate(self.source)
        path = self.back_up()
        target_url = self.empty_target_url()
        store = self.reopened(target_url)
        with store.database.connection_context():
            migrations.migrate(store.database)
        store.run_sync(domains.add_domain, "other.example")
        store.stop()
        problem = self.assertRaises(RestoreRefused, self.restore, target_url, path)
        self.assertEqual(
            str(problem),
            "the instance is not empty (1 domain): restore into an empty one, or give "
            "--force to replace everything in it",
        )
        # The replaced instance's marks name recipient ids of its own database.
        journal = os.path.join(self.base, "target", "dot-journal")
        os.makedirs(journal)
        with open(os.path.join(journal, "000000000009.dots"), "w") as out:
            out.write("7\n")
        restored = self.restore(target_url, path, force=True)
        self.assertEqual(os.listdir(journal), [])
        self.assertTrue(restored.replaced)
        self.assertEqual(snapshot(self.reopened(target_url)), snapshot(self.source))

    def test_an_instance_in_use_is_refused(self):
        self.populate(self.source)
        path = self.back_up()
        target_url = self.empty_target_url()
        running = self.reopened(target_url)
        with running.database.connection_context():
            migrations.migrate(running.database)
        running.start()  # as the appliance holds it: a connection kept open
        running.run_sync(accounts.list_users)
        problem = self.assertRaises(RestoreRefused, self.restore, target_url, path)
        self.assertIn("stop the appliance", str(problem))

    def test_an_older_backup_is_migrated_after_the_restore(self):
        older = migrations.MIGRATIONS[-2].number
        self.source = self.open_store(self.make_database_url(), up_to=older)
        self.source_config = self.config("source", self.source_url)
        self.source.run_sync(domains.add_domain, "example.com")
        path = self.back_up()
        target_url = self.empty_target_url()
        restored = self.restore(target_url, path)
        self.assertEqual(restored.manifest.schema_version, older)
        self.assertEqual(restored.migrations, (migrations.LATEST_VERSION,))
        target = self.reopened(target_url)
        self.assertEqual(
            target.run_sync(store_backup.schema_version, target.database),
            migrations.LATEST_VERSION,
        )
        self.assertEqual([d.name for d in target.run_sync(domains.list_domains)], ["example.com"])

    def test_a_backup_of_the_other_kind_is_refused(self):
        path = self.back_up()
        other = "postgresql://u@127.0.0.1/x" if self.backend == "sqlite" else self.sqlite_url()
        config = self.config("target", other)
        store = Store.from_url(other, reactor)
        self.addCleanup(store.stop)
        problem = self.assertRaises(
            RestoreRefused, operations.restore, config, store, path, None, False
        )
        self.assertIn(f"the backup holds a {self.backend} database", str(problem))

    def test_data_files_over_what_a_backup_leaves_out_are_refused(self):
        self.populate(self.source)
        evil = os.path.join(self.base, "evil")
        with open(evil, "w") as out:
            out.write("x\n")
        target_url = self.empty_target_url()
        path = os.path.join(self.base, "evil.backup")
        database = os.path.join(self.base, "database")
        with open(database, "w") as out:
            out.write("never read\n")
        header = operations._header(self.config("target", target_url), 1, CREATED)
        for name in ("dot-journal/000000000001.dots", "backups/old.backup"):
            archive.write_archive(path, header, database, [(name, evil)])
            problem = self.assertRaises(
                archive.ArchiveError, self.restore, target_url, path, force=True
            )
            self.assertIn(f"the archive's data/{name} would be written over", str(problem))
            self.assertFalse(os.path.exists(os.path.join(self.base, "target", name)))

    def sqlite_url(self) -> str:
        return f"sqlite:///{os.path.join(self.base, 'other', 'store.sqlite')}"


class SqliteBackupTests(SqliteStoreMixin, BackupRestoreContract, unittest.TestCase):
    def empty_target_url(self) -> str:
        return f"sqlite:///{os.path.join(self.base, 'target-db', 'store.sqlite')}"


class PostgresBackupTests(PostgresStoreMixin, BackupRestoreContract, unittest.TestCase):
    if PG_DUMP_SKIP_REASON:
        skip = PG_DUMP_SKIP_REASON

    def damaged_backup(self) -> str:
        """A checked archive around a dump cut short: its table of contents reads, its
        data does not."""
        staging = os.path.abspath(self.mktemp())
        os.makedirs(staging)
        dump = operations.dump_postgresql(self.source_config, staging)
        size = os.path.getsize(dump)
        with open(dump, "r+b") as cut:
            cut.truncate(size - 64)
        target = os.path.join(self.base, "damaged.backup")
        version = self.source.run_sync(store_backup.schema_version, self.source.database)
        operations.finish_backup(self.source_config, target, dump, version, CREATED, None)
        return target

    def test_a_failing_restore_keeps_the_old_data(self):
        self.populate(self.source)
        before = snapshot(self.source)
        target_url = self.empty_target_url()
        self.restore(target_url, self.back_up())
        path = self.damaged_backup()
        problem = self.assertRaises(
            store_backup.BackupError, self.restore, target_url, path, force=True
        )
        self.assertIn("pg_restore failed", str(problem))
        self.assertEqual(snapshot(self.reopened(target_url)), before)

    def test_the_drops_and_the_restore_are_one_transaction(self):
        self.populate(self.source)
        before = snapshot(self.source)
        scripts = []
        for name, text in (
            ("drop.sql", store_backup.drop_tables_sql(["domain", "mailbox", "message"])),
            ("restore.sql", "CREATE TABLE domain (id integer);\nSELECT 1 / 0;\n"),
        ):
            scripts.append(os.path.join(self.base, name))
            with open(scripts[-1], "w") as out:
                out.write(text)
        argv, environment = store_backup.psql_restore_command(self.source_url, scripts)
        done = subprocess.run(argv, env=environment, capture_output=True, check=False)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn(b"division by zero", done.stderr)
        self.assertEqual(snapshot(self.reopened(self.source_url)), before)

    def empty_target_url(self) -> str:
        """A new database with the source's schema in it, empty, as an administrator
        makes one for a [database] url naming a search_path."""
        url, name = create_postgres_database(self.source_url)
        self.addCleanup(drop_postgres_database, name)
        store = Store.from_url(url, reactor)
        schema = store_backup.postgres_schema(url)
        with store.database.connection_context():
            store.database.execute_sql(f'CREATE SCHEMA "{schema}"')
        store.stop()
        return url
