"""Migration 10: every mailbox gains Drafts and Trash. The filings made before it keep
their ids, uids, flags and folders, the indexes come back, and the database takes the new
folders and still refuses a value the program would never write. Written once, run on
SQLite and PostgreSQL."""

from __future__ import annotations

import peewee
from twisted.internet import reactor
from twisted.trial import unittest

from atollon_mail.store import filing as filing_ops
from atollon_mail.store import migrations
from atollon_mail.store.pool import Store
from atollon_mail.store.records import IncomingMessage, Recipient
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin


def _incoming(recipient: Recipient, subject: str) -> IncomingMessage:
    return IncomingMessage(
        envelope_sender="someone@elsewhere.example",
        recipients=(recipient,),
        raw=f"From: someone@elsewhere.example\r\nSubject: {subject}\r\n\r\nbody\r\n".encode(),
    )


def _filings(database: peewee.Database) -> list[tuple]:
    return database.execute_sql(
        "SELECT id, message_id, mailbox_id, context_id, uid, flags, filed_at, folder"
        " FROM filing ORDER BY id"
    ).fetchall()


def _indexes(database: peewee.Database) -> set[str]:
    return {index.name for index in database.get_indexes("filing")}


class FolderMigrationContract:
    def test_filings_survive_and_drafts_and_trash_are_taken(self):
        store = Store.from_url(self.make_database_url(), reactor)
        self.addCleanup(store.stop)
        database = store.database
        with database.connection_context():
            migrations.migrate(database, up_to=9)
            indexes_before = _indexes(database)
        store.start()
        builders.hosted_mailbox(store, "joe@acme.test", "joe")
        joe = store.run_sync(filing_ops.resolve_recipient, "joe", "acme.test")
        for subject in ("first", "second"):
            raw = _incoming(joe, subject).raw
            store.run_sync(
                builders.filed_in_old_schema, database, joe.mailbox_id, joe.context_id, raw
            )
        # Flagged as the program of that time did (today's also writes a mod-sequence).
        store.run_sync(
            database.execute_sql, "UPDATE filing SET flags = '\\Flagged' WHERE message_id = 1"
        )
        before = store.run_sync(_filings, database)
        with self.assertRaises(peewee.IntegrityError):
            store.run_sync(database.execute_sql, "UPDATE filing SET folder = 'trash'")

        with database.connection_context():
            applied = migrations.migrate(database, up_to=10)
            self.assertEqual(_indexes(database), indexes_before)
        self.assertEqual([m.number for m in applied][:1], [10])
        self.assertEqual(store.run_sync(_filings, database), before)
        # Today's operations need the later migrations too.
        with database.connection_context():
            migrations.migrate(database)
        after = store.run_sync(filing_ops.list_filings, "joe@acme.test")
        self.assertIn("\\Flagged", {flag for f in after for flag in f.flags})
        # New mail still gets the next uid, and the new folders are taken.
        [stored] = store.run_sync(filing_ops.store_messages, [_incoming(joe, "third")])
        self.assertEqual(store.run_sync(filing_ops.list_filings, "joe@acme.test")[0].uid, 3)
        for folder in ("drafts", "trash"):
            store.run_sync(
                database.execute_sql, f"UPDATE filing SET folder = '{folder}' WHERE uid = 3"
            )
            [moved] = store.run_sync(filing_ops.list_filings, "joe@acme.test", folder=folder)
            self.assertEqual(moved.message.id, stored.id)
        with self.assertRaises(peewee.IntegrityError):
            store.run_sync(database.execute_sql, "UPDATE filing SET folder = 'sent'")
        # The uid of a mailbox is still unique after the table was made again.
        with self.assertRaises(peewee.IntegrityError):
            store.run_sync(database.execute_sql, "UPDATE filing SET uid = 1")


class SqliteFolderMigrationTests(SqliteStoreMixin, FolderMigrationContract, unittest.TestCase):
    pass


class PostgresFolderMigrationTests(PostgresStoreMixin, FolderMigrationContract, unittest.TestCase):
    pass
