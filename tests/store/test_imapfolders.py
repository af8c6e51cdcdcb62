"""The store's side of IMAP (store.imapfolders): the folders a user sees, each folder's
uids, flags and mod-sequences, messages read whole, in pieces or by their headers, and
what a client changes; migration 14 (mod-sequences) over a database made before it.
Written once, run on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime

import attrs
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
    search,
    unread,
)
from atollon_mail.store.errors import Invalid, NotFound, ReadOnly
from atollon_mail.store.models import Filing, Message
from atollon_mail.store.pool import Store
from atollon_mail.store.records import (
    IncomingMessage,
    Origin,
    OutgoingMessage,
    Recipient,
    SearchQuery,
)
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

    def test_a_folder_is_read_in_a_few_queries_however_many_messages(self):
        for n in range(30):
            self.receive(subject=f"m{n}")
        uids = self.snapshot("INBOX").uids
        statements: list[str] = []
        database = self.store.database
        original = database.execute_sql

        def counting(sql, *args, **kwargs):
            statements.append(sql)
            return original(sql, *args, **kwargs)

        self.patch(database, "execute_sql", counting)
        self.snapshot("INBOX")
        self.items("INBOX", uids)
        self.sync(imapfolders.message_headers, "joe", self.joe.id, range(1, 40))
        # Each: the user, the mailboxes (owned, shared, To Do), the filings; the headers:
        # the user, whether they may read the mailbox, the filings with their messages.
        self.assertLessEqual(len(statements), 2 * 5 + 3, statements)

    def count_statements(self) -> list[str]:
        statements: list[str] = []
        database = self.store.database
        original = database.execute_sql

        def counting(sql, *args, **kwargs):
            statements.append(sql)
            return original(sql, *args, **kwargs)

        self.patch(database, "execute_sql", counting)
        return statements

    def test_store_copy_and_expunge_take_a_few_statements_however_many_messages(self):
        for n in range(30):
            self.receive(subject=f"m{n}")
        uids = self.snapshot("INBOX").uids
        self.store_flags("INBOX", uids[:1], "+", [FLAGGED])
        statements = self.count_statements()
        result = self.store_flags("INBOX", uids, "+", [SEEN])
        self.assertEqual(len(result.changed), 30)
        self.assertLessEqual(len(statements), 12, statements)
        self.assertEqual({item.flags for item in self.items("INBOX")}, {(SEEN,), (FLAGGED, SEEN)})
        del statements[:]
        copied = self.sync(imapfolders.copy, "joe", "INBOX", uids, "Trash", False)
        self.assertLessEqual(len(statements), 20, statements)
        targets = [target for _, target in copied.pairs]
        self.assertEqual(len(set(targets)), 30)
        self.assertEqual(list(self.snapshot("Trash").uids), sorted(targets))
        self.assertGreater(min(targets), max(uids))
        del statements[:]
        filed = self.sync(imapfolders.copy, "joe", "INBOX", uids, "CRM/Spring-launch", False)
        self.assertLessEqual(len(statements), 25, statements)
        self.assertEqual(len(filed.pairs), 30)
        again = self.sync(imapfolders.copy, "joe", "INBOX", uids, "CRM/Spring-launch", False)
        self.assertEqual(again.pairs, filed.pairs, "filed there once")
        self.store_flags("INBOX", uids, "+", [DELETED])
        del statements[:]
        self.assertEqual(self.sync(imapfolders.expunge, "joe", "INBOX"), uids)
        self.assertLessEqual(len(statements), 20, statements)
        self.assertEqual(self.snapshot("INBOX").uids, ())
        # The next uid comes after all those taken at once.
        self.assertGreater(
            self.sync(imapfolders.folder_status, "joe", "INBOX").uidnext, max(targets)
        )

    # -- bytes ------------------------------------------------------------------------------

    def uid_of(self, message_id: int, name: str = "INBOX") -> int:
        [uid] = [item.uid for item in self.items(name) if item.message_id == message_id]
        return uid

    def test_message_bytes_slices_and_headers(self):
        small = self.receive(subject="small", body="tiny")
        big = self.receive(subject="big", body="y" * 100_000)
        raws = {self.uid_of(mid): self.sync(filing.message_raw, mid) for mid in (small, big)}
        small, big = self.uid_of(small), self.uid_of(big)
        joe = ("joe", self.joe.id)
        found = self.sync(imapfolders.message_bytes, *joe, (small, big, 10**9))
        self.assertEqual(found, {small: raws[small]})
        found = self.sync(imapfolders.message_bytes, *joe, (small, big), 1 << 20)
        self.assertEqual(found, raws)
        self.assertEqual(self.sync(imapfolders.raw_slice, *joe, big, 0, 10), raws[big][:10])
        self.assertEqual(
            self.sync(imapfolders.raw_slice, *joe, big, 70_000, 4096), raws[big][70_000:74_096]
        )
        self.assertEqual(
            self.sync(imapfolders.raw_slice, *joe, big, len(raws[big]) - 3, 100), raws[big][-3:]
        )
        self.assertEqual(self.sync(imapfolders.raw_slice, *joe, big, len(raws[big]) + 5, 100), b"")
        with self.assertRaises(NotFound):
            self.sync(imapfolders.raw_slice, *joe, 10**9, 0, 10)
        heads = self.sync(imapfolders.message_headers, *joe, (small, big))
        for uid, raw in raws.items():
            end = raw.index(b"\r\n\r\n") + 4
            self.assertEqual(heads[uid], raw[:end])

    def test_bytes_are_read_only_through_a_filing_the_user_may_read(self):
        """By (mailbox, uid), never by a Message id that a deleted message's may become:
        another user reads nothing of joe's mailbox, and an expunged uid gives nothing
        even once a new message took the deleted one's id."""
        mine = self.receive(subject="mine", body="joe's secret")
        uid = self.uid_of(mine)
        for operation, args in (
            (imapfolders.message_bytes, ((uid,),)),
            (imapfolders.message_headers, ((uid,),)),
        ):
            self.assertEqual(self.sync(operation, "ann", self.joe.id, *args), {})
            self.assertEqual(self.sync(operation, "nobody", self.joe.id, *args), {})
            self.assertEqual(list(self.sync(operation, "joe", self.joe.id, *args)), [uid])
        with self.assertRaises(NotFound):
            self.sync(imapfolders.raw_slice, "ann", self.joe.id, uid, 0, 10)
        self.store_flags("INBOX", [uid], "+", [DELETED])
        self.assertEqual(self.sync(imapfolders.expunge, "joe", "INBOX"), (uid,))
        theirs = self.receive("ann@other.test", subject="theirs", body="ann's secret")
        self.assertNotEqual(self.sync(filing.message_raw, theirs), b"")
        self.assertEqual(self.sync(imapfolders.message_bytes, "joe", self.joe.id, (uid,)), {})
        self.assertEqual(self.sync(imapfolders.message_headers, "joe", self.joe.id, (uid,)), {})
        with self.assertRaises(NotFound):
            self.sync(imapfolders.raw_slice, "joe", self.joe.id, uid, 0, 10)

    def test_headers_longer_than_the_first_read(self):
        long_header = "X-Long: " + "z" * 70_000
        raw = f"Subject: long\r\n{long_header}\r\n\r\nbody\r\n".encode()
        recipient = self.sync(filing.resolve_recipient, "joe", "acme.test")
        [stored] = self.sync(
            filing.store_messages,
            [IncomingMessage(envelope_sender="s@remote.example", recipients=(recipient,), raw=raw)],
        )
        headerless = self.receive(subject="nobody")
        stored_uid, headerless_uid = self.uid_of(stored.id), self.uid_of(headerless)
        heads = self.sync(
            imapfolders.message_headers, "joe", self.joe.id, (stored_uid, headerless_uid)
        )
        stored_raw = self.sync(filing.message_raw, stored.id)
        self.assertTrue(heads[stored_uid].endswith(long_header.encode() + b"\r\n\r\n"))
        self.assertEqual(heads[stored_uid], stored_raw[: len(heads[stored_uid])])
        self.assertTrue(heads[headerless_uid].endswith(b"remote.example>\r\n\r\n"))

    # -- STORE -----------------------------------------------------------------------------

    def store_flags(self, name, uids, mode, flags, unchangedsince=None, login="joe"):
        return self.sync(
            imapfolders.store_flags, login, name, tuple(uids), mode, tuple(flags), unchangedsince
        )

    def test_store_adds_takes_and_sets_flags(self):
        first = self.receive(subject="one")
        self.receive(subject="two")
        self.sync(crm_mail.file_into, "joe@acme.test", first, self.project.id)
        uids = self.snapshot("INBOX").uids
        result = self.store_flags("INBOX", uids, "+", [SEEN, "\\Recent", "$Work"])
        self.assertEqual([item.flags for item in result.changed], [(SEEN, "$Work")] * 2)
        self.assertEqual(len({item.modseq for item in result.changed}), 1)
        self.assertEqual((result.modified, result.unchanged), ((), ()))
        again = self.store_flags("INBOX", uids, "+", [SEEN])
        self.assertEqual((again.changed, [i.uid for i in again.unchanged]), ((), list(uids)))
        taken = self.store_flags("INBOX", uids[:1], "-", ["$Work"])
        self.assertEqual([item.flags for item in taken.changed], [(SEEN,)])
        self.assertGreater(taken.changed[0].modseq, result.changed[0].modseq)
        # Setting the flags of a "File to..." copy keeps it a copy.
        [copy] = self.items("CRM/Spring-launch")
        self.store_flags("CRM/Spring-launch", [copy.uid], "=", [FLAGGED])
        [copy] = self.items("CRM/Spring-launch")
        self.assertEqual(copy.flags, (FLAGGED,))
        self.assertEqual(len(self.snapshot("INBOX").uids), 2)
        stored = dict(
            self.sync(
                builders.table_rows,
                Filing.uid,
                Filing.flags,
                where=Filing.uid == copy.uid,
            )
        )
        self.assertEqual(stored[copy.uid].split(), ["$Filed", FLAGGED])
        # The web client sees what IMAP did.
        self.assertEqual(self.sync(mailfolders.message_flags, "joe@acme.test", first)[:1], (SEEN,))
        # Uids of other folders are passed over.
        self.assertEqual(self.store_flags("Sent", uids, "+", [FLAGGED]).changed, ())
        with self.assertRaises(Invalid):
            self.store_flags("INBOX", uids, "+", ["bad flag"])
        with self.assertRaises(Invalid):
            self.store_flags("INBOX", uids, "*", [SEEN])

    def test_a_keyword_containing_filed_hides_nothing(self):
        """Only the store's own $Filed, as a whole word in its case, keeps a filing out
        of the Inbox (IMAP, the web's folder and its unread count)."""
        first = self.receive(subject="one")
        second = self.receive(subject="two")
        uids = self.snapshot("INBOX").uids
        self.store_flags("INBOX", uids[:1], "+", ["MyProject$filedLater"])
        self.sync(mailfolders.change_flags, "joe@acme.test", uids[1:], ["x$FILED"])
        self.assertEqual(self.snapshot("INBOX").uids, uids)
        self.assertEqual(self.sync(imapfolders.folder_status, "joe", "INBOX").messages, 2)
        listed = self.sync(mailfolders.list_folder, "joe@acme.test")
        self.assertEqual(sorted(row.message.id for row in listed), sorted([first, second]))
        self.assertEqual(self.sync(unread.count_unread, self.joe.id), 2)
        [item] = self.items("INBOX", uids[:1])
        self.assertEqual(item.flags, ("MyProject$filedLater",))

    def test_filed_is_refused_and_system_flags_are_spelled_as_usual(self):
        self.receive(subject="one")
        uids = self.snapshot("INBOX").uids
        for flag in ("$Filed", "$filed", "$FILED"):
            with self.subTest(flag), self.assertRaises(Invalid):
                self.store_flags("INBOX", uids, "+", [flag])
            with self.subTest(flag), self.assertRaises(Invalid):
                self.sync(mailfolders.change_flags, "joe@acme.test", uids, [flag])
        for flag in ("\\Foo", "\\SeenX", "\\"):
            with self.subTest(flag), self.assertRaises(Invalid):
                self.store_flags("INBOX", uids, "+", [flag])
        self.store_flags("INBOX", uids, "+", ["\\SEEN", "\\flagged"])
        [item] = self.items("INBOX")
        self.assertEqual(item.flags, (SEEN, FLAGGED))
        self.assertEqual(self.sync(unread.count_unread, self.joe.id), 0)
        self.store_flags("INBOX", uids, "-", ["\\seen"])
        [item] = self.items("INBOX")
        self.assertEqual(item.flags, (FLAGGED,))

    def test_store_unchangedsince(self):
        self.receive(subject="one")
        self.receive(subject="two")
        first, second = self.items("INBOX")
        self.store_flags("INBOX", [second.uid], "+", [FLAGGED])
        result = self.store_flags("INBOX", [first.uid, second.uid], "+", [SEEN], second.modseq)
        self.assertEqual(result.modified, (second.uid,))
        self.assertEqual([item.uid for item in result.changed], [first.uid])
        [_, now] = self.items("INBOX")
        self.assertEqual(now.flags, (FLAGGED,))

    def test_a_mailbox_shared_to_view_is_read_only(self):
        self.receive("ann@other.test")
        self.sync(mailboxes.grant_mailbox_access, "ann@other.test", "joe", view=True)
        name = "Shared/ann@other.test/INBOX"
        uids = self.snapshot(name).uids
        with self.assertRaises(ReadOnly):
            self.store_flags(name, uids, "+", [SEEN])
        with self.assertRaises(ReadOnly):
            self.sync(imapfolders.expunge, "joe", name, None)
        with self.assertRaises(ReadOnly):
            self.sync(imapfolders.append, "joe", name, b"Subject: x\r\n\r\nx\r\n")
        with self.assertRaises(ReadOnly):
            self.sync(imapfolders.copy, "joe", name, uids, "INBOX", True)
        with self.assertRaises(ReadOnly):
            self.sync(imapfolders.copy, "joe", "INBOX", (), name, False)
        # Copying out of it is reading.
        result = self.sync(imapfolders.copy, "joe", name, uids, "INBOX", False)
        self.assertEqual(len(result.pairs), 1)
        self.assertEqual(len(self.snapshot(name).uids), 1)

    # -- EXPUNGE ---------------------------------------------------------------------------

    def test_expunge_removes_what_is_deleted(self):
        first = self.receive(subject="one")
        second = self.receive(subject="two")
        third = self.receive(subject="three")
        uids = self.snapshot("INBOX").uids
        self.store_flags("INBOX", uids[:2], "+", [DELETED])
        self.assertEqual(self.sync(imapfolders.expunge, "joe", "INBOX", uids[1:]), uids[1:2])
        self.assertEqual(self.snapshot("INBOX").uids, (uids[0], uids[2]))
        self.assertEqual(self.sync(imapfolders.expunge, "joe", "INBOX", None), uids[:1])
        self.assertEqual(self.snapshot("INBOX").uids, uids[2:])
        self.assertFalse(self.sync(lambda: filing.messages_raw([first, second])))
        self.assertTrue(self.sync(lambda: filing.messages_raw([third])))

    def test_expunge_in_a_crm_folder_leaves_the_inbox(self):
        message = self.receive(subject="one")
        self.sync(crm_mail.file_into, "joe@acme.test", message, self.project.id)
        [copy] = self.items("CRM/Spring-launch")
        self.store_flags("CRM/Spring-launch", [copy.uid], "+", [DELETED])
        self.assertEqual(
            self.sync(imapfolders.expunge, "joe", "CRM/Spring-launch", None), (copy.uid,)
        )
        self.assertEqual(self.snapshot("CRM/Spring-launch").uids, ())
        [inbox] = self.items("INBOX")
        self.assertEqual(inbox.message_id, message)
        # A message filed into the project first leaves it, and stays in the INBOX.
        joe = self.sync(filing.resolve_recipient, "joe", "acme.test")
        filed = attrs.evolve(joe, context_id=self.project.id)
        raw = b"Subject: filed\r\n\r\nx\r\n"
        self.sync(
            filing.store_messages,
            [IncomingMessage(envelope_sender="s@remote.example", recipients=(filed,), raw=raw)],
        )
        [first] = self.items("CRM/Spring-launch")
        self.assertIn(first.uid, self.snapshot("INBOX").uids)
        self.store_flags("CRM/Spring-launch", [first.uid], "+", [DELETED, SEEN])
        self.sync(imapfolders.expunge, "joe", "CRM/Spring-launch", None)
        self.assertEqual(self.snapshot("CRM/Spring-launch").uids, ())
        [kept] = self.items("INBOX", [first.uid])
        self.assertEqual(kept.flags, (SEEN,))

    # -- COPY and MOVE ---------------------------------------------------------------------

    def test_move_between_fixed_folders(self):
        first = self.receive(subject="one")
        second = self.receive(subject="two")
        uids = self.snapshot("INBOX").uids
        self.store_flags("INBOX", uids[:1], "+", [SEEN])
        result = self.sync(imapfolders.copy, "joe", "INBOX", uids, "Trash", True)
        self.assertEqual(result.uidvalidity, self.joe.id)
        self.assertEqual([source for source, _ in result.pairs], list(uids))
        targets = [target for _, target in result.pairs]
        self.assertEqual(targets, sorted(targets))
        self.assertGreater(targets[0], max(uids))
        self.assertEqual(self.snapshot("INBOX").uids, ())
        items = self.items("Trash")
        self.assertEqual([item.uid for item in items], targets)
        self.assertEqual([item.message_id for item in items], [first, second])
        self.assertEqual(items[0].flags, (SEEN,))
        self.assertEqual(
            self.sync(mailfolders.list_folder, "joe@acme.test", TRASH)[0].uid, targets[1]
        )
        # Into Junk: the filter learns spam; out of it into INBOX: ham.
        # (by the target uids: the bytes are read through the filing).
        result = self.sync(imapfolders.copy, "joe", "Trash", targets[:1], "Junk", True)
        [junk_uid] = [target for _, target in result.pairs]
        self.assertEqual(result.learned_spam, (junk_uid,))
        result = self.sync(imapfolders.copy, "joe", "Junk", [junk_uid], "INBOX", True)
        [inbox_uid] = [target for _, target in result.pairs]
        self.assertEqual((result.learned_spam, result.learned_ham), ((), (inbox_uid,)))
        self.assertEqual([item.message_id for item in self.items("INBOX")], [first])

    def test_copy_makes_a_second_filing(self):
        message = self.receive(subject="one")
        [item] = self.items("INBOX")
        result = self.sync(imapfolders.copy, "joe", "INBOX", [item.uid], "Drafts", False)
        [(source, target)] = result.pairs
        self.assertEqual(source, item.uid)
        self.assertEqual([i.message_id for i in self.items("Drafts")], [message])
        self.assertEqual([i.uid for i in self.items("INBOX")], [item.uid])
        self.assertEqual(self.sync(lambda: Message.select().count()), 1)
        self.assertEqual(target, self.snapshot("Drafts").uids[0])

    def test_copy_and_move_into_a_crm_folder_file_it(self):
        first = self.receive(subject="one")
        second = self.receive(subject="two")
        uids = self.snapshot("INBOX").uids
        result = self.sync(imapfolders.copy, "joe", "INBOX", uids[:1], "CRM/Spring-launch")
        [(_, copied)] = result.pairs
        self.assertEqual(
            result.uidvalidity, imapfolders.crm_uidvalidity(self.joe.id, self.project.id)
        )
        contexts = self.sync(crm_mail.message_contexts, "joe@acme.test", first)
        self.assertEqual([c.id for c in contexts][1:], [self.project.id])
        self.assertEqual(self.snapshot("INBOX").uids, uids)
        # Copied again: filed there already, its uid there comes back.
        again = self.sync(imapfolders.copy, "joe", "INBOX", uids[:1], "CRM/Spring-launch")
        self.assertEqual(again.pairs, ((uids[0], copied),))
        # Moved: seen in the CRM folder only.
        moved = self.sync(imapfolders.copy, "joe", "INBOX", uids, "CRM/Spring-launch", True)
        self.assertEqual(moved.pairs[0], (uids[0], copied))
        self.assertEqual(self.snapshot("INBOX").uids, ())
        self.assertEqual([i.message_id for i in self.items("CRM/Spring-launch")], [first, second])
        self.assertEqual(
            [c.id for c in self.sync(crm_mail.message_contexts, "joe@acme.test", second)],
            [self.project.id],
        )
        folders_counted = {
            c.name: c.total for c in self.sync(mailfolders.folder_counts, "joe@acme.test")
        }
        self.assertEqual((folders_counted["Inbox"], folders_counted["Spring/launch"]), (0, 2))

    def test_copy_across_mailboxes(self):
        self.sync(mailboxes.grant_mailbox_access, "ann@other.test", "joe", edit=True)
        message = self.receive(subject="one")
        [item] = self.items("INBOX")
        target = "Shared/ann@other.test/INBOX"
        result = self.sync(imapfolders.copy, "joe", "INBOX", [item.uid], target, True)
        self.assertEqual(result.uidvalidity, self.ann.id)
        self.assertEqual(self.snapshot("INBOX").uids, ())
        [there] = self.items(target)
        self.assertEqual((there.message_id, result.pairs), (message, ((item.uid, there.uid),)))
        self.assertEqual(
            [r.message.id for r in self.sync(mailfolders.list_folder, "ann@other.test")],
            [message],
        )
        # Into another mailbox's CRM folder: "File to..." there.
        crm = "Shared/ann@other.test/CRM/Spring-launch"
        self.sync(imapfolders.copy, "joe", target, [there.uid], crm, False)
        [filed] = self.items(crm)
        self.assertEqual(filed.message_id, message)

    # -- APPEND ----------------------------------------------------------------------------

    def test_append_files_a_message(self):
        raw = (
            b"From: Joe <joe@acme.test>\r\nTo: far@remote.example\r\n"
            b"Subject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <draft@acme.test>\r\n\r\nhello\r\n"
        )
        record = imapfolders.append_message(raw)
        self.assertEqual(
            (record.subject, record.message_id, record.from_header),
            ("café", "<draft@acme.test>", "Joe <joe@acme.test>"),
        )
        moment = datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
        result = self.sync(imapfolders.append, "joe", "Drafts", record, (SEEN, "\\Draft"), moment)
        self.assertFalse(result.merged)
        self.assertEqual(result.uidvalidity, self.joe.id)
        [item] = self.items("Drafts")
        self.assertEqual((item.uid, item.flags), (result.uid, (SEEN, "\\Draft")))
        self.assertEqual(item.internaldate, moment)
        self.assertEqual(self.sync(filing.message_raw, item.message_id), raw)
        found = self.sync(search.search, "joe", SearchQuery(text="café"), 10, 0)
        self.assertEqual([r.message.id for r in found.hits], [item.message_id])
        # Into a CRM folder: seen there only.
        crm = self.sync(imapfolders.append, "joe", "CRM/Spring-launch", raw)
        self.assertEqual([i.uid for i in self.items("CRM/Spring-launch")], [crm.uid])
        self.assertEqual(self.snapshot("INBOX").uids, ())

    def test_append_to_sent_merges_the_submitted_copy(self):
        sent = self.send("report")
        [filed] = self.items("Sent")
        raw = self.sync(filing.message_raw, sent)
        result = self.sync(imapfolders.append, "joe", "Sent", raw, (SEEN,))
        self.assertEqual((result.uid, result.merged), (filed.uid, True))
        self.assertEqual(len(self.snapshot("Sent").uids), 1)
        other = b"Subject: other\r\nMessage-ID: <other@acme.test>\r\n\r\nx\r\n"
        result = self.sync(imapfolders.append, "joe", "Sent", other, (SEEN,))
        self.assertFalse(result.merged)
        self.assertEqual(len(self.snapshot("Sent").uids), 2)

    def test_append_to_sent_before_anything_was_sent(self):
        raw = b"Subject: first\r\nMessage-ID: <first@acme.test>\r\n\r\nx\r\n"
        result = self.sync(imapfolders.append, "joe", "Sent", raw)
        self.assertEqual(self.snapshot("Sent").uids, (result.uid,))
        self.assertEqual(self.snapshot("INBOX").uids, ())
        # The submission files its copy beside it in the same Sent.
        self.send("later")
        self.assertEqual(len(self.snapshot("Sent").uids), 2)


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
        self.assertEqual(
            [migration.number for migration in applied],
            [migration.number for migration in migrations.MIGRATIONS if migration.number > 13],
        )
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
