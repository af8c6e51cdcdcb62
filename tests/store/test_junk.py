"""What the inbound checks decided, kept with the message; each mailbox's spam handling and
its Junk folder: filing by verdict, moving between Junk and the inbox, purging old Junk, and
migration 9 over a database made before it. Written once, run on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime

import peewee
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from atollon_mail.store import aliases, migrations, queue
from atollon_mail.store import filing as filing_ops
from atollon_mail.store import mailboxes as mailbox_ops
from atollon_mail.store.database import open_database
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.models import Filing, Message, database_proxy, utc_now
from atollon_mail.store.pool import Store
from atollon_mail.store.records import (
    FolderMove,
    InboundVerdict,
    IncomingMessage,
    Origin,
    OutgoingMessage,
    Recipient,
)
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

SPAM = InboundVerdict(
    junk=True,
    authentication="mail.acme.test; spf=fail smtp.mailfrom=x@spam.example; dkim=none",
    spam_score=9.5,
    spam_threshold=6.0,
    spam_symbols=("GTUBE", "R_SPF_FAIL"),
    spam_action="add header",
    notes=("could not verify the sender", "spam score 9.5 of 6: GTUBE, R_SPF_FAIL"),
)
HAM = InboundVerdict(
    authentication="mail.acme.test; dkim=pass header.d=partner.example; dmarc=pass",
    spam_score=-0.5,
    spam_threshold=6.0,
    spam_action="no action",
    notes=("signed by partner.example",),
)
UNSCANNED = InboundVerdict(scanned=False, notes=("not scanned: the spam filter was down",))


def _incoming(*recipients: Recipient, verdict=None, raw: bytes = b"Subject: hi\r\n\r\nbody\r\n"):
    return IncomingMessage(
        envelope_sender="sender@elsewhere.example",
        recipients=recipients,
        raw=raw,
        subject="hi",
        verdict=verdict,
    )


def _folders(mailbox_address: str) -> list[tuple[int, str]]:
    """Store operation: (message id, folder) of each filing of a mailbox, by uid."""
    return [
        (filing.message.id, filing.folder)
        for filing in reversed(filing_ops.list_filings(mailbox_address))
    ]


def _filed_at(message_id: int, when: datetime.datetime) -> None:
    """Store operation: the message's filings came into their folder at `when`."""
    Filing.update(filed_at=when).where(Filing.message == message_id).execute()


def _message_exists(message_id: int) -> bool:
    return Message.select().where(Message.id == message_id).exists()


class JunkContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(self.store, "joe@acme.test", "joe")
        builders.mailbox(self.store, "tagged@acme.test", "joe", spam_handling="tag")
        builders.mailbox(self.store, "open@acme.test", "joe")
        builders.hosted_mailbox(self.store, "ann@other.test", "ann")
        self.sync(mailbox_ops.update_mailbox, "open@acme.test", spam_handling="OFF")
        self.sync(aliases.add_alias, "sales@acme.test", "joe@acme.test")

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def recipient(self, address: str) -> Recipient:
        found = self.sync(filing_ops.resolve_recipient, *address.split("@"))
        self.assertIsInstance(found, Recipient)
        return found

    def store_one(self, *addresses: str, verdict=None, raw: bytes = b"Subject: hi\r\n\r\nx\r\n"):
        recipients = [self.recipient(address) for address in addresses]
        [stored] = self.sync(
            filing_ops.store_messages, [_incoming(*recipients, verdict=verdict, raw=raw)]
        )
        return stored.id

    # -- spam handling -----------------------------------------------------------------

    def test_mailboxes_start_with_junk_and_the_handling_is_read_with_the_recipient(self):
        self.assertEqual(self.sync(mailbox_ops.get_mailbox, "joe@acme.test").spam_handling, "junk")
        self.assertEqual(
            self.sync(mailbox_ops.get_mailbox, "tagged@acme.test").spam_handling, "tag"
        )
        handling = {box.address: box.spam_handling for box in self.sync(mailbox_ops.list_mailboxes)}
        self.assertEqual(
            handling,
            {
                "joe@acme.test": "junk",
                "tagged@acme.test": "tag",
                "open@acme.test": "off",
                "ann@other.test": "junk",
            },
        )
        self.assertEqual(self.recipient("open@acme.test").spam_handling, "off")
        # Through an alias and a +tag: the handling of the mailbox reached.
        self.assertEqual(self.recipient("sales+x@acme.test").spam_handling, "junk")
        self.sync(mailbox_ops.update_mailbox, "joe@acme.test", spam_handling="tag")
        self.assertEqual(self.recipient("sales@acme.test").spam_handling, "tag")

    def test_an_unknown_spam_handling_is_refused_and_changes_nothing(self):
        with self.assertRaises(Invalid):
            builders.mailbox(self.store, "new@acme.test", "joe", spam_handling="maybe")
        with self.assertRaises(NotFound):
            self.sync(mailbox_ops.get_mailbox, "new@acme.test")
        before = self.sync(mailbox_ops.get_mailbox, "joe@acme.test")
        for value in ("spam", "", "junk ,tag", "1"):
            with self.assertRaises(Invalid) as refused:
                self.sync(
                    mailbox_ops.update_mailbox, "joe@acme.test", signature="x", spam_handling=value
                )
            self.assertIn("junk", str(refused.exception))
        self.assertEqual(self.sync(mailbox_ops.get_mailbox, "joe@acme.test"), before)

    # -- filing by verdict -------------------------------------------------------------

    def test_junk_goes_to_junk_only_where_the_mailbox_wants_it(self):
        spam = self.store_one(
            "joe@acme.test", "tagged@acme.test", "open@acme.test", "ann@other.test", verdict=SPAM
        )
        ham = self.store_one("joe@acme.test", "tagged@acme.test", verdict=HAM)
        plain = self.store_one("joe@acme.test")  # nothing checked it (e.g. submitted mail)
        unscanned = self.store_one("joe@acme.test", verdict=UNSCANNED)
        self.assertEqual(
            self.sync(_folders, "joe@acme.test"),
            [(spam, "junk"), (ham, "inbox"), (plain, "inbox"), (unscanned, "inbox")],
        )
        self.assertEqual(self.sync(_folders, "tagged@acme.test"), [(spam, "inbox"), (ham, "inbox")])
        self.assertEqual(self.sync(_folders, "open@acme.test"), [(spam, "inbox")])
        self.assertEqual(self.sync(_folders, "ann@other.test"), [(spam, "junk")])
        # The listings by folder.
        [junk] = self.sync(filing_ops.list_junk, "joe@acme.test")
        self.assertEqual((junk.message.id, junk.folder), (spam, "junk"))
        inbox = self.sync(filing_ops.list_filings, "joe@acme.test", folder="inbox")
        self.assertEqual([f.message.id for f in inbox], [unscanned, plain, ham])
        with self.assertRaises(Invalid):
            self.sync(filing_ops.list_filings, "joe@acme.test", folder="spam")

    def test_the_verdict_is_kept_with_the_message_and_read_back(self):
        odd = InboundVerdict(
            junk=False,
            notes=("signed by příklad.test", "nul \x00 and newline\n kept"),
            spam_symbols=(),
            spam_score=None,
        )
        for verdict in (SPAM, HAM, UNSCANNED, odd):
            message_id = self.store_one("joe@acme.test", "tagged@acme.test", verdict=verdict)
            for address in ("joe@acme.test", "tagged@acme.test"):
                found = self.sync(filing_ops.filed_message, address, message_id)
                self.assertEqual(found.verdict, verdict)
                self.assertEqual(found.message_id, message_id)
                self.assertEqual(found.mailbox_address, address)
                self.assertTrue(found.raw.endswith(b"Subject: hi\r\n\r\nx\r\n"))
        message_id = self.store_one("joe@acme.test")
        self.assertIsNone(self.sync(filing_ops.filed_message, "joe@acme.test", message_id).verdict)
        # Not filed in that mailbox: not found, whatever the id.
        for address, wanted in (("ann@other.test", message_id), ("joe@acme.test", 2**62)):
            with self.assertRaises(NotFound):
                self.sync(filing_ops.filed_message, address, wanted)

    def test_stored_verdicts_read_back_leniently(self):
        self.assertIsNone(filing_ops.verdict_from_json(None))
        self.assertIsNone(filing_ops.verdict_from_json("not json"))
        self.assertIsNone(filing_ops.verdict_from_json("[1, 2]"))
        self.assertEqual(
            filing_ops.verdict_from_json('{"junk": true, "from_the_future": 1}'),
            InboundVerdict(junk=True),
        )
        self.assertEqual(filing_ops.verdict_from_json(filing_ops.verdict_json(SPAM)), SPAM)

    def test_relayed_and_forwarded_mail_files_its_local_recipients_by_verdict(self):
        joe, tagged = self.recipient("joe@acme.test"), self.recipient("tagged@acme.test")
        outgoing = OutgoingMessage(
            envelope_sender="sender@elsewhere.example",
            raw=b"Subject: relayed\r\n\r\nx\r\n",
            local_recipients=(joe, tagged),
            remote_recipients=("far@remote.example", "open@acme.test"),
            verdict=SPAM,
        )
        [submitted] = self.sync(queue.submit_messages, [(outgoing, Origin("relay"))])
        self.assertEqual(submitted.queued_recipients, 1)
        self.assertEqual(self.sync(_folders, "joe@acme.test"), [(submitted.id, "junk")])
        self.assertEqual(self.sync(_folders, "tagged@acme.test"), [(submitted.id, "inbox")])
        # Found among the "remote" addresses: its own handling (off) applies.
        self.assertEqual(self.sync(_folders, "open@acme.test"), [(submitted.id, "inbox")])
        found = self.sync(filing_ops.filed_message, "joe@acme.test", submitted.id)
        self.assertEqual((found.folder, found.verdict), ("junk", SPAM))

    def statements_storing(self, incoming: IncomingMessage) -> list[str]:
        """The SQL statements store_messages runs for one message."""
        statements: list[str] = []
        database = self.store.database
        original = database.execute_sql

        def counting(sql, params=None, *args, **kwargs):
            statements.append(sql)
            return original(sql, params, *args, **kwargs)

        database.execute_sql = counting
        try:
            self.sync(filing_ops.store_messages, [incoming])
        finally:
            del database.execute_sql
        return statements

    def test_the_hot_path_costs_no_more_statements_for_a_verdict(self):
        joe = self.recipient("joe@acme.test")
        plain = self.statements_storing(_incoming(joe))
        junk = self.statements_storing(_incoming(joe, verdict=SPAM))
        self.assertGreater(len(plain), 3)
        self.assertEqual(len(junk), len(plain))
        self.assertEqual(self.sync(_folders, "joe@acme.test")[-1][1], "junk")

    # -- moving --------------------------------------------------------------------------

    def test_moving_to_junk_and_back(self):
        first = self.store_one("joe@acme.test", raw=b"Subject: one\r\n\r\nx\r\n")
        second = self.store_one("joe@acme.test", verdict=HAM)
        [before] = [
            f for f in self.sync(filing_ops.list_filings, "joe@acme.test") if f.message.id == first
        ]
        moved = self.sync(filing_ops.move_to_junk, "joe@acme.test", first)
        self.assertIsInstance(moved, FolderMove)
        self.assertEqual(
            (moved.message_id, moved.mailbox_address, moved.folder, moved.moved),
            (first, "joe@acme.test", "junk", 1),
        )
        self.assertEqual(moved.raw, self.sync(filing_ops.message_raw, first))
        self.assertIn(b"Subject: one", moved.raw)
        [junk] = self.sync(filing_ops.list_junk, "joe@acme.test")
        self.assertEqual(junk.message.id, first)
        # A new uid, above every other of the mailbox: the uids of each folder ascend.
        self.assertGreater(junk.uid, max(before.uid, 2))
        self.assertEqual(self.sync(filing_ops.filed_message, "joe@acme.test", first).folder, "junk")
        # Again: it lies there already, nothing changes.
        again = self.sync(filing_ops.move_to_junk, "joe@acme.test", first)
        self.assertEqual(again.moved, 0)
        self.assertEqual(self.sync(filing_ops.list_junk, "joe@acme.test"), [junk])
        back = self.sync(filing_ops.move_to_inbox, "joe@acme.test", first)
        self.assertEqual((back.folder, back.moved), ("inbox", 1))
        self.assertEqual(self.sync(filing_ops.list_junk, "joe@acme.test"), [])
        self.assertEqual(
            [
                f.message.id
                for f in self.sync(filing_ops.list_filings, "joe@acme.test", folder="inbox")
            ],
            [first, second],
        )
        # Another mailbox's message, one that does not exist, a folder that does not.
        other = self.store_one("ann@other.test")
        for address, message_id in (("joe@acme.test", other), ("joe@acme.test", 2**62)):
            with self.assertRaises(NotFound):
                self.sync(filing_ops.move_to_junk, address, message_id)
        with self.assertRaises(NotFound):
            self.sync(filing_ops.move_to_junk, "nobody@acme.test", first)
        with self.assertRaises(Invalid):
            self.sync(filing_ops.move_message, "joe@acme.test", first, "archive")
        self.assertEqual(self.sync(_folders, "ann@other.test"), [(other, "inbox")])

    def test_moving_one_mailboxs_copy_leaves_the_others(self):
        shared = self.store_one("joe@acme.test", "ann@other.test", verdict=SPAM)
        self.sync(filing_ops.move_to_inbox, "joe@acme.test", shared)
        self.assertEqual(self.sync(_folders, "joe@acme.test"), [(shared, "inbox")])
        self.assertEqual(self.sync(_folders, "ann@other.test"), [(shared, "junk")])

    # -- purging -------------------------------------------------------------------------

    def test_purge_removes_junk_that_came_in_before_the_cutoff(self):
        now = utc_now()
        old_junk = self.store_one("joe@acme.test", verdict=SPAM)
        recent_junk = self.store_one("joe@acme.test", verdict=SPAM)
        old_inbox = self.store_one("joe@acme.test", verdict=HAM)
        # Junk for joe, inbox for tagged: only joe's filing goes, the message stays.
        shared = self.store_one("joe@acme.test", "tagged@acme.test", verdict=SPAM)
        # Moved to Junk just now: its age counts from the move.
        moved = self.store_one("joe@acme.test")
        month_ago = now - datetime.timedelta(days=40)
        for message_id in (old_junk, old_inbox, shared, moved):
            self.sync(_filed_at, message_id, month_ago)
        self.sync(_filed_at, recent_junk, now - datetime.timedelta(days=10))
        self.sync(filing_ops.move_to_junk, "joe@acme.test", moved)
        cutoff = now - datetime.timedelta(days=30)
        self.assertEqual(self.sync(filing_ops.purge_junk, cutoff), 2)
        self.assertEqual(
            self.sync(_folders, "joe@acme.test"),
            [(recent_junk, "junk"), (old_inbox, "inbox"), (moved, "junk")],
        )
        self.assertEqual(self.sync(_folders, "tagged@acme.test"), [(shared, "inbox")])
        self.assertFalse(self.sync(_message_exists, old_junk))
        self.assertTrue(self.sync(_message_exists, shared))
        self.assertEqual(self.sync(filing_ops.purge_junk, cutoff), 0)

    def test_purge_goes_in_batches_and_keeps_queued_messages(self):
        ids = [self.store_one("joe@acme.test", verdict=SPAM) for _ in range(5)]
        joe = self.recipient("joe@acme.test")
        outgoing = OutgoingMessage(
            envelope_sender="sender@elsewhere.example",
            raw=b"Subject: relayed\r\n\r\nx\r\n",
            local_recipients=(joe,),
            remote_recipients=("far@remote.example",),
            verdict=SPAM,
        )
        [queued] = self.sync(queue.submit_messages, [(outgoing, Origin("relay"))])
        later = utc_now() + datetime.timedelta(seconds=5)
        self.assertEqual(self.sync(filing_ops.purge_junk, later, 4), 4)
        self.assertEqual(self.sync(filing_ops.purge_junk, later, 4), 2)
        self.assertEqual(self.sync(filing_ops.list_junk, "joe@acme.test"), [])
        self.assertFalse(any(self.sync(_message_exists, message_id) for message_id in ids))
        # Still waiting to go elsewhere: the message stays for the queue.
        self.assertTrue(self.sync(_message_exists, queued.id))
        self.assertEqual(len(self.sync(queue.queue_list)), 1)


class SqliteJunkTests(SqliteStoreMixin, JunkContract, unittest.TestCase):
    pass


class PostgresJunkTests(PostgresStoreMixin, JunkContract, unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_move_waits_for_one_under_way_and_finds_it_done(self):
        # (SQLite has one writer: there, moves never overlap.)
        message_id = self.store_one("joe@acme.test")
        joe = self.recipient("joe@acme.test")
        other = open_database(self.database_url)
        self.addCleanup(other.close)
        with database_proxy.bound_to(other), other.atomic():
            filing_ops.lock_mailboxes([joe.mailbox_id])  # a move under way holds it
            racing = self.store.run(filing_ops.move_to_junk, "joe@acme.test", message_id)
            yield task.deferLater(reactor, 0.5, lambda: None)
            self.assertFalse(racing.called, "the second move waits for the first")
            self.assertEqual(filing_ops.move_to_junk("joe@acme.test", message_id).moved, 1)
        move = yield racing
        self.assertEqual((move.folder, move.moved), ("junk", 0))
        [junk] = self.sync(filing_ops.list_junk, "joe@acme.test")
        self.assertEqual(junk.uid, 2)


# --- migration 9 ----------------------------------------------------------------------


class JunkMigrationContract:
    def test_existing_mail_lies_in_the_inbox_and_mailboxes_file_junk_to_junk(self):
        store = Store.from_url(self.make_database_url(), reactor)
        self.addCleanup(store.stop)
        database = store.database
        with database.connection_context():
            migrations.migrate(database, up_to=8)
            self.assertEqual(migrations.applied_versions(database), list(range(1, 9)))
        store.start()
        # Made by the operations of the program before migration 9, as far as they
        # reach: what they wrote is plain rows, written here as SQL.
        p = database.param
        now = "2026-01-02 03:04:05"

        def old_rows():
            run = database.execute_sql
            run(
                "INSERT INTO domain (name, mode, active, created_at)"
                f" VALUES ('acme.test', 'primary', TRUE, {p})",
                (now,),
            )
            run(
                'INSERT INTO "user" (login, name, password_hash, is_admin, created_at)'
                f" VALUES ('joe', '', 'h', FALSE, {p})",
                (now,),
            )
            run(
                "INSERT INTO context (kind, name, owner_id, created_at)"
                f" VALUES ('todo', 'To Do', 1, {p})",
                (now,),
            )
            run(
                "INSERT INTO mailbox (local_part, domain_id, owner_id, identity, active,"
                " is_default, signature, next_uid, created_at)"
                f" VALUES ('joe', 1, 1, 'joe@acme.test', TRUE, TRUE, '', 3, {p})",
                (now,),
            )
            for uid in (1, 2):
                (message_id,) = run(
                    "INSERT INTO message (raw, size, envelope_sender, received_at)"
                    f" VALUES ({p}, 1, 's@elsewhere.example', {p}) RETURNING id",
                    (b"Subject: old %d\r\n\r\nx\r\n" % uid, now),
                ).fetchone()
                run(
                    "INSERT INTO filing (message_id, mailbox_id, context_id, uid, flags, filed_at)"
                    f" VALUES ({p}, 1, 1, {p}, '', {p})",
                    (message_id, uid, now),
                )

        store.run_sync(old_rows)
        with database.connection_context():
            applied = migrations.migrate(database, up_to=9)
        self.assertEqual([m.number for m in applied], [9])
        # The database refuses a value the program would never write.
        for bad in (
            "UPDATE mailbox SET spam_handling = 'maybe'",
            "UPDATE filing SET folder = 'trash'",  # (until migration 10 allows it)
        ):
            with self.assertRaises(peewee.IntegrityError):
                store.run_sync(database.execute_sql, bad)
        self.assertEqual(
            store.run_sync(
                lambda: database.execute_sql(
                    "SELECT uid, folder FROM filing ORDER BY uid"
                ).fetchall()
            ),
            [(1, "inbox"), (2, "inbox")],
        )
        # The store's operations read and write the latest schema.
        with database.connection_context():
            migrations.migrate(database)
        filings = store.run_sync(filing_ops.list_filings, "joe@acme.test")
        self.assertEqual([(f.uid, f.folder) for f in filings], [(2, "inbox"), (1, "inbox")])
        self.assertEqual(store.run_sync(filing_ops.list_junk, "joe@acme.test"), [])
        old = store.run_sync(filing_ops.filed_message, "joe@acme.test", filings[0].message.id)
        self.assertIsNone(old.verdict)
        self.assertEqual(
            store.run_sync(mailbox_ops.get_mailbox, "joe@acme.test").spam_handling, "junk"
        )
        # The new columns work on the old rows: junk is filed into Junk, moves move.
        joe = store.run_sync(filing_ops.resolve_recipient, "joe", "acme.test")
        self.assertEqual(joe.spam_handling, "junk")
        [stored] = store.run_sync(filing_ops.store_messages, [_incoming(joe, verdict=SPAM)])
        [junk] = store.run_sync(filing_ops.list_junk, "joe@acme.test")
        self.assertEqual((junk.message.id, junk.uid), (stored.id, 3))
        moved = store.run_sync(filing_ops.move_to_junk, "joe@acme.test", filings[1].message.id)
        self.assertEqual(moved.moved, 1)
        self.assertEqual(len(store.run_sync(filing_ops.list_junk, "joe@acme.test")), 2)


class SqliteJunkMigrationTests(SqliteStoreMixin, JunkMigrationContract, unittest.TestCase):
    pass


class PostgresJunkMigrationTests(PostgresStoreMixin, JunkMigrationContract, unittest.TestCase):
    pass
