"""The folders of a mailbox as its mail client shows them: the folder list with unread
counts, each folder's filings, flags and moves on several filings at once, Trash emptied;
migration 12 (their indexes) over a database made before it.
Written once, run on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial import unittest

from atollon_mail.store import contexts, filing, mailfolders, migrations, queue
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.models import CampaignRecipient, Filing, Message, utc_now
from atollon_mail.store.pool import Store
from atollon_mail.store.records import (
    BulkMove,
    IncomingMessage,
    Origin,
    OutgoingMessage,
    Recipient,
)
from atollon_mail.store.values import INBOX, JUNK, TRASH
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

SEEN, FLAGGED, ANSWERED = "\\Seen", "\\Flagged", "\\Answered"


def _message_exists(message_id: int) -> bool:
    return Message.select().where(Message.id == message_id).exists()


def _filing_rows(mailbox_id: int) -> list[tuple[int, str, int]]:
    """Store operation: (uid, folder, message id) of a mailbox's filings, by uid."""
    return builders.table_rows(
        Filing.uid,
        Filing.folder,
        Filing.message,
        where=Filing.mailbox == mailbox_id,
        order_by=Filing.uid,
    )


def _campaign_record(campaign_id: int, message_id: int) -> None:
    """Store operation: a campaign's send list names the message (as sent to someone)."""
    CampaignRecipient.create(
        campaign=campaign_id,
        address="reader@remote.example",
        language="en",
        state="sent",
        message_id=message_id,
        updated_at=utc_now(),
    )


class MailFoldersContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.joe = builders.hosted_mailbox(self.store, "joe@acme.test", "joe").mailbox
        self.ann = builders.hosted_mailbox(self.store, "ann@other.test", "ann").mailbox
        self.project = self.sync(contexts.add_context, "project", "Spring launch")
        self.archive = self.sync(contexts.add_context, "folder", "Archive", "joe")

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def recipient(self, address: str, context_id: int | None = None) -> Recipient:
        found = self.sync(filing.resolve_recipient, *address.split("@"))
        if context_id is None:
            return found
        return Recipient(
            address=found.address,
            mailbox_id=found.mailbox_id,
            mailbox_address=found.mailbox_address,
            context_id=context_id,
        )

    def receive(self, *recipients: Recipient, subject: str = "hi") -> int:
        raw = f"Subject: {subject}\r\nMessage-ID: <{subject}@remote.example>\r\n\r\nx\r\n"
        incoming = IncomingMessage(
            envelope_sender="sender@remote.example",
            recipients=recipients,
            raw=raw.encode(),
            subject=subject,
        )
        [stored] = self.sync(filing.store_messages, [incoming])
        return stored.id

    def send(self, subject: str = "sent") -> int:
        outgoing = OutgoingMessage(
            envelope_sender="joe@acme.test",
            raw=f"Subject: {subject}\r\n\r\nx\r\n".encode(),
            remote_recipients=("far@remote.example",),
            sent_mailbox_id=self.joe.id,
            subject=subject,
        )
        [sent] = self.sync(queue.submit_messages, [(outgoing, Origin("compose"))])
        return sent.id

    def listed(self, folder=INBOX, context_id=None) -> list[int]:
        found = self.sync(mailfolders.list_folder, "joe@acme.test", folder, context_id)
        return [record.message.id for record in found]

    def counts(self) -> dict:
        return {
            (count.folder or count.name): (count.total, count.unread)
            for count in self.sync(mailfolders.folder_counts, "joe@acme.test")
        }

    def uids(self, *message_ids: int) -> list[int]:
        return [uid for uid, _, mid in self.sync(_filing_rows, self.joe.id) if mid in message_ids]

    # -- the folder list -----------------------------------------------------------------

    def test_every_folder_with_its_unread_count(self):
        inbox = [self.receive(self.recipient("joe@acme.test"), subject=f"m{n}") for n in range(3)]
        filed = self.receive(self.recipient("joe@acme.test", self.project.id))
        archived = self.receive(self.recipient("joe@acme.test", self.archive.id))
        sent = self.send()
        self.receive(self.recipient("ann@other.test", self.project.id))  # another mailbox
        self.sync(filing.add_flag, "joe@acme.test", inbox[0], SEEN)
        self.sync(filing.add_flag, "joe@acme.test", inbox[1], FLAGGED)
        self.sync(filing.add_flag, "joe@acme.test", filed, SEEN)
        self.sync(mailfolders.move_filings, "joe@acme.test", self.uids(inbox[2]), TRASH)
        found = self.sync(mailfolders.folder_counts, "joe@acme.test")
        self.assertEqual(
            [(c.folder, c.name) for c in found],
            [
                ("inbox", "Inbox"),
                ("sent", "Sent"),
                ("drafts", "Drafts"),
                ("junk", "Junk"),
                ("trash", "Trash"),
                (None, "Archive"),
                (None, "Spring launch"),
            ],
        )
        self.assertEqual([c.context.id for c in found[5:]], [self.archive.id, self.project.id])
        # The Inbox holds what is filed into the CRM contexts too; Sent is seen already.
        self.assertEqual(
            self.counts(),
            {
                "inbox": (4, 2),
                "sent": (1, 0),
                "drafts": (0, 0),
                "junk": (0, 0),
                "trash": (1, 1),
                "Archive": (1, 1),
                "Spring launch": (1, 0),
            },
        )
        self.assertEqual(self.listed(), [archived, filed, inbox[1], inbox[0]])
        self.assertEqual(self.listed("sent"), [sent])
        self.assertEqual(self.listed("trash"), [inbox[2]])
        self.assertEqual(self.listed(None, self.project.id), [filed])
        self.assertEqual(self.listed("drafts"), [])

    def test_counts_take_two_queries_however_many_folders(self):
        contexts_made = [
            self.sync(contexts.add_context, "folder", f"F{n}", "joe") for n in range(5)
        ]
        for context in contexts_made:
            self.receive(self.recipient("joe@acme.test", context.id))
        statements: list[str] = []
        database = self.store.database
        original = database.execute_sql

        def counting(sql, *args, **kwargs):
            statements.append(sql)
            return original(sql, *args, **kwargs)

        self.patch(database, "execute_sql", counting)
        found = self.sync(mailfolders.folder_counts, "joe@acme.test")
        self.assertEqual(len(found), 10)
        # The mailbox, its To Do (no "store messages to" set), the counts, the names.
        self.assertLessEqual(len([s for s in statements if "SELECT" in s]), 4, statements)

    def test_an_unknown_folder_or_context_is_refused(self):
        with self.assertRaises(Invalid):
            self.sync(mailfolders.list_folder, "joe@acme.test", "archive")
        with self.assertRaises(NotFound):
            self.sync(mailfolders.list_folder, "joe@acme.test", None, 2**40)
        with self.assertRaises(NotFound):
            self.sync(mailfolders.folder_counts, "nobody@acme.test")

    # -- flags -----------------------------------------------------------------------------

    def test_flags_on_several_filings_at_once(self):
        first, second, third = (
            self.receive(self.recipient("joe@acme.test"), subject=s) for s in "abc"
        )
        other = self.receive(self.recipient("ann@other.test"))
        self.sync(filing.add_flag, "joe@acme.test", first, ANSWERED)
        uids = self.uids(first, second)
        changed = self.sync(mailfolders.change_flags, "joe@acme.test", uids, add=[SEEN, FLAGGED])
        self.assertEqual(changed, 2)
        flags = {r.message.id: r.flags for r in self.sync(mailfolders.list_folder, "joe@acme.test")}
        self.assertEqual(flags[first], (ANSWERED, SEEN, FLAGGED))
        self.assertEqual(flags[second], (SEEN, FLAGGED))
        self.assertEqual(flags[third], ())
        # Again: nothing changes. Take \Seen away: unread again, the others kept.
        self.assertEqual(self.sync(mailfolders.change_flags, "joe@acme.test", uids, [SEEN]), 0)
        self.assertEqual(
            self.sync(mailfolders.change_flags, "joe@acme.test", uids, remove=[SEEN]), 2
        )
        self.assertEqual(self.counts()["inbox"], (3, 3))
        flags = {r.message.id: r.flags for r in self.sync(mailfolders.list_folder, "joe@acme.test")}
        self.assertEqual(flags[first], (ANSWERED, FLAGGED))
        # A uid of another mailbox's filing (ann's uid 1 is joe's too: only joe's changes).
        self.sync(mailfolders.change_flags, "ann@other.test", [1], add=[FLAGGED])
        [ann] = self.sync(mailfolders.list_folder, "ann@other.test")
        self.assertEqual((ann.message.id, ann.flags), (other, (FLAGGED,)))
        self.assertEqual(self.sync(mailfolders.change_flags, "joe@acme.test", [999], [SEEN]), 0)
        with self.assertRaises(Invalid):
            self.sync(mailfolders.change_flags, "joe@acme.test", uids, add=["not a flag"])

    def test_remove_flag_and_mark_read(self):
        message = self.receive(self.recipient("joe@acme.test"))
        self.assertEqual(self.sync(mailfolders.mark_read, "joe@acme.test", message), 1)
        self.assertEqual(self.sync(mailfolders.mark_read, "joe@acme.test", message), 0)
        self.assertEqual(self.sync(filing.remove_flag, "joe@acme.test", message, SEEN), 1)
        self.assertEqual(self.sync(filing.remove_flag, "joe@acme.test", message, SEEN), 0)
        self.sync(filing.add_flag, "joe@acme.test", message, FLAGGED)
        self.assertEqual(self.sync(mailfolders.message_flags, "joe@acme.test", message), (FLAGGED,))
        self.assertEqual(self.counts()["inbox"], (1, 1))
        other = self.receive(self.recipient("ann@other.test"))
        for operation in (mailfolders.mark_read, mailfolders.message_flags, filing.remove_flag):
            args = (SEEN,) if operation is filing.remove_flag else ()
            with self.assertRaises(NotFound):
                self.sync(operation, "joe@acme.test", other, *args)

    # -- moves -----------------------------------------------------------------------------

    def test_moves_keep_the_uids_of_each_folder_ascending(self):
        ids = [self.receive(self.recipient("joe@acme.test"), subject=s) for s in "abcd"]
        later = self.receive(self.recipient("joe@acme.test"), subject="e")
        # Picked out of order: they keep their order, above every uid of the mailbox.
        moved = self.sync(
            mailfolders.move_filings, "joe@acme.test", self.uids(ids[2], ids[0]), TRASH
        )
        self.assertIsInstance(moved, BulkMove)
        self.assertEqual((moved.folder, moved.moved, moved.spam, moved.ham), ("trash", 2, (), ()))
        rows = self.sync(_filing_rows, self.joe.id)
        self.assertEqual(
            rows[-2:],
            [(6, "trash", ids[0]), (7, "trash", ids[2])],
        )
        self.assertEqual(self.listed("trash"), [ids[2], ids[0]])
        self.assertEqual(self.listed(), [later, ids[3], ids[1]])
        # Back to the inbox: new uids again, above all.
        self.sync(mailfolders.move_filings, "joe@acme.test", [6, 7], INBOX)
        self.assertEqual(self.listed(), [ids[2], ids[0], later, ids[3], ids[1]])
        uids = [uid for uid, _, _ in self.sync(_filing_rows, self.joe.id)]
        self.assertEqual(len(uids), len(set(uids)))
        self.assertEqual(max(uids), 9)
        # Already there, or not a uid of the mailbox: nothing moves.
        again = self.sync(mailfolders.move_filings, "joe@acme.test", [8, 9, 999], INBOX)
        self.assertEqual(again.moved, 0)
        with self.assertRaises(Invalid):
            self.sync(mailfolders.move_filings, "joe@acme.test", [8], "archive")

    def test_moving_into_junk_and_out_returns_what_the_filter_learns(self):
        first = self.receive(self.recipient("joe@acme.test"), subject="one")
        second = self.receive(self.recipient("joe@acme.test"), subject="two")
        into = self.sync(mailfolders.move_filings, "joe@acme.test", self.uids(first, second), JUNK)
        self.assertEqual(into.moved, 2)
        self.assertEqual(
            into.spam, tuple((m, self.sync(filing.message_raw, m)) for m in (first, second))
        )
        self.assertEqual(into.ham, ())
        # Out of Junk into Trash teaches nothing; into the inbox, ham.
        trashed = self.sync(mailfolders.move_filings, "joe@acme.test", self.uids(first), TRASH)
        self.assertEqual((trashed.spam, trashed.ham), ((), ()))
        back = self.sync(mailfolders.move_filings, "joe@acme.test", self.uids(first, second), INBOX)
        self.assertEqual(back.moved, 2)
        self.assertEqual(back.ham, ((second, self.sync(filing.message_raw, second)),))

    # -- Trash -----------------------------------------------------------------------------

    def test_empty_trash_removes_rows_and_keeps_what_is_needed_elsewhere(self):
        alone = self.receive(self.recipient("joe@acme.test"), subject="alone")
        shared = self.receive(
            self.recipient("joe@acme.test"), self.recipient("ann@other.test"), subject="shared"
        )
        kept = self.receive(self.recipient("joe@acme.test"), subject="kept")
        queued = self.send("queued")  # its Sent copy, and still queued for far@remote
        group = builders.group(self.store, "Readers", builders.organization(self.store).id)
        campaign = builders.campaign(self.store, group.id, "joe@acme.test")
        recorded = self.receive(self.recipient("joe@acme.test"), subject="campaign")
        self.sync(_campaign_record, campaign.id, recorded)
        trash = self.uids(alone, shared, queued, recorded)
        self.sync(mailfolders.move_filings, "joe@acme.test", trash, TRASH)
        self.assertEqual(self.counts()["trash"][0], 4)
        self.assertEqual(self.sync(mailfolders.empty_trash, "joe@acme.test"), 4)
        self.assertEqual(self.listed("trash"), [])
        self.assertEqual(self.listed(), [kept])
        self.assertFalse(self.sync(_message_exists, alone))
        for needed in (shared, queued, recorded, kept):
            self.assertTrue(self.sync(_message_exists, needed), needed)
        [ann] = self.sync(mailfolders.list_folder, "ann@other.test")
        self.assertEqual(ann.message.id, shared)
        self.assertEqual(self.sync(mailfolders.empty_trash, "joe@acme.test"), 0)

    def test_delete_forever_removes_only_what_lies_in_trash(self):
        first = self.receive(self.recipient("joe@acme.test"), subject="first")
        second = self.receive(self.recipient("joe@acme.test"), subject="second")
        inbox = self.receive(self.recipient("joe@acme.test"), subject="inbox")
        self.sync(mailfolders.move_filings, "joe@acme.test", self.uids(first, second), TRASH)
        chosen = self.uids(first, inbox)
        self.assertEqual(self.sync(mailfolders.delete_from_trash, "joe@acme.test", chosen), 1)
        self.assertEqual(self.listed("trash"), [second])
        self.assertEqual(self.listed(), [inbox])
        self.assertFalse(self.sync(_message_exists, first))
        self.assertTrue(self.sync(_message_exists, inbox))

    def test_message_heads_read_the_start_of_each_message(self):
        first = self.receive(self.recipient("joe@acme.test"), subject="first")
        heads = self.sync(mailfolders.message_heads, [first, 2**40])
        self.assertEqual(list(heads), [first])
        self.assertIn(b"Message-ID: <first@remote.example>", heads[first])
        big = self.receive(self.recipient("joe@acme.test"), subject="x" * 100)
        self.sync(_grow, big, 100_000)
        self.assertEqual(
            len(self.sync(mailfolders.message_heads, [big])[big]), mailfolders.HEADER_BYTES
        )


def _grow(message_id: int, size: int) -> None:
    """Store operation: the message's bytes made `size` long (a large body)."""
    raw = bytes(Message.get_by_id(message_id).raw)
    Message.update(raw=raw + b"y" * (size - len(raw))).where(Message.id == message_id).execute()


class MailFoldersMigrationContract:
    def test_migration_12_indexes_an_existing_database(self):
        store = Store.from_url(self.make_database_url(), reactor)
        self.addCleanup(store.stop)
        database = store.database
        with database.connection_context():
            migrations.migrate(database, up_to=11)
            before = {index.name for index in database.get_indexes("filing")}
        store.start()
        builders.hosted_mailbox(store, "joe@acme.test", "joe")
        joe = store.run_sync(filing.resolve_recipient, "joe", "acme.test")
        # Filed as the program before it did, in plain SQL (today's writes more).
        first, _ = [
            store.run_sync(
                builders.filed_in_old_schema, database, joe.mailbox_id, joe.context_id, raw
            )
            for raw in (b"Subject: one\r\n\r\nx\r\n", b"Subject: two\r\n\r\nx\r\n")
        ]
        store.run_sync(
            database.execute_sql,
            f"UPDATE filing SET folder = 'trash' WHERE message_id = {database.param}",
            (first,),
        )
        with database.connection_context():
            applied = migrations.migrate(database)
            after = {index.name for index in database.get_indexes("filing")}
        self.assertIn(12, [migration.number for migration in applied])
        self.assertEqual(
            after - before,
            {"filing_mailbox_folder_context_flags", "filing_trash_mailbox_uid"},
        )
        counts = store.run_sync(mailfolders.folder_counts, "joe@acme.test")
        self.assertEqual(
            [(c.folder, c.total, c.unread) for c in counts if c.total],
            [("inbox", 1, 1), ("trash", 1, 1)],
        )
        [trashed] = store.run_sync(mailfolders.list_folder, "joe@acme.test", TRASH)
        self.assertEqual(trashed.message.id, first)


class SqliteMailFoldersMigrationTests(
    SqliteStoreMixin, MailFoldersMigrationContract, unittest.TestCase
):
    pass


class PostgresMailFoldersMigrationTests(
    PostgresStoreMixin, MailFoldersMigrationContract, unittest.TestCase
):
    pass


class SqliteMailFoldersTests(SqliteStoreMixin, MailFoldersContract, unittest.TestCase):
    pass


class PostgresMailFoldersTests(PostgresStoreMixin, MailFoldersContract, unittest.TestCase):
    pass
