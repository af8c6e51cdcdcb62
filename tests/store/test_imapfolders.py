"""The store's side of IMAP (store.imapfolders): the folders a user sees, each folder's
uids, flags and mod-sequences, messages read whole, in pieces or by their headers, and
what a client changes; migration 14 (mod-sequences) over a database made before it.
Written once, run on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime

from twisted.internet import reactor
from twisted.trial import unittest

from atollon_mail.store import (
    crm_mail,
    filing,
    folders,
    imapfolders,
    mailboxes,
    mailfolders,
    migrations,
    queue,
)
from atollon_mail.store.errors import NotFound
from atollon_mail.store.models import Filing
from atollon_mail.store.pool import Store
from atollon_mail.store.records import IncomingMessage, Origin, OutgoingMessage, Recipient
from atollon_mail.store.values import JUNK, TRASH
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

SEEN, FLAGGED, ANSWERED, DELETED = "\\Seen", "\\Flagged", "\\Answered", "\\Deleted"


def _modseqs(mailbox_id: int) -> dict[int, int | None]:
    """Store operation: uid -> stored modseq of a mailbox's filings."""
    return dict(builders.table_rows(Filing.uid, Filing.modseq, where=Filing.mailbox == mailbox_id))


class ImapFoldersContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.joe = builders.hosted_mailbox(self.store, "joe@acme.test", "joe").mailbox
        self.ann = builders.hosted_mailbox(self.store, "ann@other.test", "ann").mailbox
        builders.organization(self.store, "Acme")
        self.project = self.sync(folders.add_project, "Spring/launch", "Acme")

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def receive(self, address: str = "joe@acme.test", subject: str = "hi", body: str = "x"):
        raw = (
            f"Subject: {subject}\r\nMessage-ID: <{subject}@remote.example>\r\n\r\n{body}\r\n"
        ).encode()
        recipient: Recipient = self.sync(filing.resolve_recipient, *address.split("@"))
        incoming = IncomingMessage(
            envelope_sender="sender@remote.example",
            recipients=(recipient,),
            raw=raw,
            subject=subject,
        )
        [stored] = self.sync(filing.store_messages, [incoming])
        return stored.id

    def send(self, subject: str = "sent") -> int:
        outgoing = OutgoingMessage(
            envelope_sender="joe@acme.test",
            raw=f"Subject: {subject}\r\nMessage-ID: <{subject}@acme.test>\r\n\r\nx\r\n".encode(),
            remote_recipients=("far@remote.example",),
            sent_mailbox_id=self.joe.id,
            subject=subject,
            message_id=f"<{subject}@acme.test>",
        )
        [sent] = self.sync(queue.submit_messages, [(outgoing, Origin("compose"))])
        return sent.id

    def names(self, login: str = "joe") -> list[str]:
        return [folder.name for folder in self.sync(imapfolders.list_folders, login)]

    def snapshot(self, name: str, login: str = "joe") -> imapfolders.FolderSnapshot:
        return self.sync(imapfolders.folder_snapshot, login, name)

    def items(self, name: str, uids=None, login: str = "joe"):
        if uids is None:
            uids = self.snapshot(name, login).uids
        return self.sync(imapfolders.message_items, login, name, tuple(uids))

    # -- the folder list -------------------------------------------------------------------

    def test_the_folders_of_a_user(self):
        other = builders.mailbox(self.store, "sales@acme.test", "joe")
        builders.mailbox(self.store, "info@other.test", "ann")
        self.sync(mailboxes.grant_mailbox_access, "ann@other.test", "joe", view=True)
        self.sync(mailboxes.grant_mailbox_access, "info@other.test", "joe", edit=True)
        self.assertEqual(
            self.names(),
            [
                "INBOX",
                "Sent",
                "Drafts",
                "Junk",
                "Trash",
                "CRM",
                "CRM/Spring-launch",
                "sales@acme.test",
                "sales@acme.test/INBOX",
                "sales@acme.test/Sent",
                "sales@acme.test/Drafts",
                "sales@acme.test/Junk",
                "sales@acme.test/Trash",
                "sales@acme.test/CRM",
                "sales@acme.test/CRM/Spring-launch",
                "Shared",
                "Shared/ann@other.test",
                "Shared/ann@other.test/INBOX",
                "Shared/ann@other.test/Sent",
                "Shared/ann@other.test/Drafts",
                "Shared/ann@other.test/Junk",
                "Shared/ann@other.test/Trash",
                "Shared/info@other.test",
                "Shared/info@other.test/INBOX",
                "Shared/info@other.test/Sent",
                "Shared/info@other.test/Drafts",
                "Shared/info@other.test/Junk",
                "Shared/info@other.test/Trash",
                "Shared/info@other.test/CRM",
                "Shared/info@other.test/CRM/Spring-launch",
            ],
        )
        found = {folder.name: folder for folder in self.sync(imapfolders.list_folders, "joe")}
        self.assertEqual(
            [found[name].special_use for name in ("INBOX", "Sent", "Drafts", "Junk", "Trash")],
            [None, "\\Sent", "\\Drafts", "\\Junk", "\\Trash"],
        )
        crm = found["CRM/Spring-launch"]
        self.assertEqual(
            (crm.special_use, crm.context_id, crm.folder, crm.writable, crm.mailbox_id),
            ("\\Archive", self.project.id, None, True, self.joe.id),
        )
        self.assertFalse(found["CRM"].selectable)
        self.assertFalse(found["Shared/ann@other.test"].selectable)
        self.assertEqual(found["INBOX"].uidvalidity, self.joe.id)
        self.assertEqual(found["sales@acme.test/Junk"].uidvalidity, other.id)
        self.assertNotIn(crm.uidvalidity, (0, self.joe.id))
        self.assertLess(crm.uidvalidity, 2**32)
        self.assertNotEqual(crm.uidvalidity, found["sales@acme.test/CRM/Spring-launch"].uidvalidity)
        self.assertFalse(found["Shared/ann@other.test/INBOX"].writable)
        self.assertTrue(found["Shared/info@other.test/INBOX"].writable)
        # The same list again: UIDVALIDITY is stable.
        again = {folder.name: folder for folder in self.sync(imapfolders.list_folders, "joe")}
        self.assertEqual(again, found)

    def test_crm_folders_holding_mail_and_duplicate_names(self):
        twin = self.sync(folders.add_project, "Spring-launch", "Acme")
        # A read-only mailbox shows only the CRM folders holding its mail.
        self.sync(mailboxes.grant_mailbox_access, "ann@other.test", "joe", view=True)
        message = self.receive("ann@other.test")
        self.sync(crm_mail.file_into, "ann@other.test", message, twin.id)
        names = self.names()
        self.assertIn("CRM/Spring-launch", names)
        self.assertIn(f"CRM/Spring-launch ({twin.id})", names)
        self.assertIn(f"Shared/ann@other.test/CRM/Spring-launch ({twin.id})", names)
        self.assertNotIn("Shared/ann@other.test/CRM/Spring-launch", names)

    def test_names_of_other_users_are_not_found(self):
        for name in (
            "ann@other.test/INBOX",
            "Shared/ann@other.test/INBOX",
            "Shared/nobody@other.test/INBOX",
            "CRM",
            "CRM/nothing",
            "Archive",
            "../INBOX",
            "INBOX/",
        ):
            with self.assertRaises(NotFound) as raised:
                self.snapshot(name)
            self.assertNotIn("ann", str(raised.exception).replace(name, ""))
        self.assertEqual(self.names("nobody"), [])
        with self.assertRaises(NotFound):
            self.snapshot("INBOX", "nobody")

    # -- a folder's messages ---------------------------------------------------------------

    def test_snapshot_items_and_status(self):
        first = self.receive(subject="one")
        second = self.receive(subject="two")
        self.receive("ann@other.test")
        self.send()
        self.sync(filing.add_flag, "joe@acme.test", first, SEEN)
        self.sync(filing.add_flag, "joe@acme.test", second, "$Work")
        self.sync(crm_mail.file_into, "joe@acme.test", second, self.project.id)
        inbox = self.snapshot("inbox")
        self.assertEqual(inbox.folder.name, "INBOX")
        self.assertEqual(len(inbox.uids), 2)
        self.assertEqual(list(inbox.uids), sorted(inbox.uids))
        self.assertEqual((inbox.unseen, inbox.first_unseen_uid), (1, inbox.uids[1]))
        self.assertEqual(inbox.keywords, ("$Work",))
        mailbox = self.sync(mailboxes.get_mailbox_row, "joe@acme.test")
        self.assertEqual(inbox.uidnext, mailbox.next_uid)
        items = self.items("INBOX")
        self.assertEqual([item.message_id for item in items], [first, second])
        self.assertEqual(items[0].flags, (SEEN,))
        self.assertEqual(items[1].flags, ("$Work",))
        self.assertEqual(items[0].internaldate.tzinfo, datetime.UTC)
        self.assertLess(
            abs(datetime.datetime.now(datetime.UTC) - items[0].internaldate),
            datetime.timedelta(minutes=5),
        )
        raw = self.sync(filing.message_raw, first)
        self.assertEqual(items[0].size, len(raw))
        self.assertEqual(inbox.highestmodseq, max(item.modseq for item in items))
        # The copy "File to..." made is in the CRM folder, without its $Filed.
        [copy] = self.items("CRM/Spring-launch")
        self.assertEqual((copy.message_id, copy.flags), (second, ("$Work",)))
        self.assertNotIn(copy.uid, inbox.uids)
        [sent] = self.items("Sent")
        self.assertEqual(sent.flags, (SEEN,))
        self.assertEqual(self.snapshot("Drafts").uids, ())
        self.assertEqual(self.snapshot("Drafts").highestmodseq, 1)
        status = self.sync(imapfolders.folder_status, "joe", "INBOX")
        self.assertEqual(
            status,
            imapfolders.FolderStatus(
                messages=2,
                unseen=1,
                uidnext=inbox.uidnext,
                uidvalidity=self.joe.id,
                highestmodseq=inbox.highestmodseq,
            ),
        )
        # Uids of another folder or mailbox are left out.
        self.assertEqual(self.items("INBOX", [sent.uid, copy.uid, 10**9]), ())

    def test_message_items_of_many_uids(self):
        for n in range(3):
            self.receive(subject=f"m{n}")
        uids = self.snapshot("INBOX").uids
        asked = tuple(range(1, 1200)) + uids
        self.assertEqual([item.uid for item in self.items("INBOX", asked)], list(uids))

    def test_every_flag_change_takes_a_fresh_modseq(self):
        first = self.receive(subject="one")
        second = self.receive(subject="two")
        before = {item.uid: item.modseq for item in self.items("INBOX")}
        # New filings write no modseq: the uid stands for it.
        self.assertEqual(set(self.sync(_modseqs, self.joe.id).values()), {None})
        self.assertEqual(before, {uid: uid for uid in before})
        start = self.snapshot("INBOX").highestmodseq
        seen = []
        changes = [
            lambda: self.sync(filing.add_flag, "joe@acme.test", first, SEEN),
            lambda: self.sync(filing.remove_flag, "joe@acme.test", first, SEEN),
            lambda: self.sync(
                mailfolders.change_flags, "joe@acme.test", list(before), add=[FLAGGED]
            ),
            lambda: self.sync(mailfolders.mark_read, "joe@acme.test", second),
        ]
        for change in changes:
            change()
            highest = self.snapshot("INBOX").highestmodseq
            seen.append(highest)
            changed = self.sync(imapfolders.changed_since, "joe", "INBOX", start)
            self.assertTrue(changed)
            self.assertTrue(all(item.modseq > start for item in changed))
            self.assertEqual(max(item.modseq for item in changed), highest)
            start = highest
        self.assertEqual(seen, sorted(set(seen)))
        # One change of several filings gives them one mod-sequence.
        items = self.items("INBOX")
        self.assertEqual(len({item.modseq for item in items}), 2)
        self.assertEqual(self.sync(imapfolders.changed_since, "joe", "INBOX", start), ())
        # A change that changes nothing takes none.
        self.sync(filing.add_flag, "joe@acme.test", first, FLAGGED)
        self.assertEqual(self.snapshot("INBOX").highestmodseq, start)

    def test_a_move_gives_a_new_modseq_with_the_new_uid(self):
        first = self.receive(subject="one")
        self.sync(filing.add_flag, "joe@acme.test", first, SEEN)
        [item] = self.items("INBOX")
        self.sync(mailfolders.move_filings, "joe@acme.test", [item.uid], TRASH)
        [moved] = self.items("Trash")
        self.assertEqual(moved.modseq, moved.uid)
        self.assertGreater(moved.modseq, item.modseq)
        self.sync(filing.move_message, "joe@acme.test", first, JUNK)
        [junk] = self.items("Junk")
        self.assertEqual(junk.modseq, junk.uid)
        self.assertGreater(junk.modseq, moved.modseq)

    # -- bytes ------------------------------------------------------------------------------

    def test_message_bytes_slices_and_headers(self):
        small = self.receive(subject="small", body="tiny")
        big = self.receive(subject="big", body="y" * 100_000)
        raws = {mid: self.sync(filing.message_raw, mid) for mid in (small, big)}
        found = self.sync(imapfolders.message_bytes, (small, big, 10**9))
        self.assertEqual(found, {small: raws[small]})
        found = self.sync(imapfolders.message_bytes, (small, big), 1 << 20)
        self.assertEqual(found, raws)
        self.assertEqual(self.sync(imapfolders.raw_slice, big, 0, 10), raws[big][:10])
        self.assertEqual(
            self.sync(imapfolders.raw_slice, big, 70_000, 4096), raws[big][70_000:74_096]
        )
        self.assertEqual(
            self.sync(imapfolders.raw_slice, big, len(raws[big]) - 3, 100), raws[big][-3:]
        )
        self.assertEqual(self.sync(imapfolders.raw_slice, big, len(raws[big]) + 5, 100), b"")
        with self.assertRaises(NotFound):
            self.sync(imapfolders.raw_slice, 10**9, 0, 10)
        heads = self.sync(imapfolders.message_headers, (small, big))
        for mid, raw in raws.items():
            end = raw.index(b"\r\n\r\n") + 4
            self.assertEqual(heads[mid], raw[:end])

    def test_headers_longer_than_the_first_read(self):
        long_header = "X-Long: " + "z" * 70_000
        raw = f"Subject: long\r\n{long_header}\r\n\r\nbody\r\n".encode()
        recipient = self.sync(filing.resolve_recipient, "joe", "acme.test")
        [stored] = self.sync(
            filing.store_messages,
            [IncomingMessage(envelope_sender="s@remote.example", recipients=(recipient,), raw=raw)],
        )
        headerless = self.receive(subject="nobody")
        heads = self.sync(imapfolders.message_headers, (stored.id, headerless))
        stored_raw = self.sync(filing.message_raw, stored.id)
        self.assertTrue(heads[stored.id].endswith(long_header.encode() + b"\r\n\r\n"))
        self.assertEqual(heads[stored.id], stored_raw[: len(heads[stored.id])])
        self.assertTrue(heads[headerless].endswith(b"remote.example>\r\n\r\n"))


class SqliteImapFoldersTests(SqliteStoreMixin, ImapFoldersContract, unittest.TestCase):
    pass


class PostgresImapFoldersTests(PostgresStoreMixin, ImapFoldersContract, unittest.TestCase):
    pass


class ModseqMigrationContract:
    def test_migration_14_over_a_database_made_before_it(self):
        store = Store.from_url(self.make_database_url(), reactor)
        self.addCleanup(store.stop)
        database = store.database
        with database.connection_context():
            migrations.migrate(database, up_to=13)
        store.start()
        builders.hosted_mailbox(store, "joe@acme.test", "joe")
        joe = store.run_sync(filing.resolve_recipient, "joe", "acme.test")
        for raw in (b"Subject: one\r\n\r\nx\r\n", b"Subject: two\r\n\r\nx\r\n"):
            store.run_sync(
                builders.filed_in_old_schema, database, joe.mailbox_id, joe.context_id, raw
            )
        before = store.run_sync(
            database.execute_sql, "SELECT id, uid, flags FROM filing ORDER BY id"
        ).fetchall()
        with database.connection_context():
            applied = migrations.migrate(database)
        self.assertEqual([migration.number for migration in applied], [14])
        after = store.run_sync(
            database.execute_sql, "SELECT id, uid, flags, modseq FROM filing ORDER BY id"
        ).fetchall()
        self.assertEqual([row[:3] for row in after], [tuple(row) for row in before])
        self.assertEqual({row[3] for row in after}, {None})
        snapshot = store.run_sync(imapfolders.folder_snapshot, "joe", "INBOX")
        self.assertEqual(snapshot.highestmodseq, max(snapshot.uids))
        store.run_sync(mailfolders.change_flags, "joe@acme.test", snapshot.uids[:1], [SEEN])
        changed = store.run_sync(imapfolders.changed_since, "joe", "INBOX", snapshot.highestmodseq)
        self.assertEqual([item.uid for item in changed], [snapshot.uids[0]])


class SqliteModseqMigrationTests(SqliteStoreMixin, ModseqMigrationContract, unittest.TestCase):
    pass


class PostgresModseqMigrationTests(PostgresStoreMixin, ModseqMigrationContract, unittest.TestCase):
    pass
