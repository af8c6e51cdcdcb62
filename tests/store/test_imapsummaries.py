"""What IMAP keeps of each message's header (store.imapfolders: save_summaries,
search_summaries, MessageItem.envelope; migration 15): header SEARCH answered by the
database gives exactly the answers of the in-memory matcher (imap.search) on tricky
headers (encoded words, raw 8-bit, case folding beyond ASCII, several fields of a name,
LIKE's wildcards), what is not kept is reported missing, another rendering version counts
as not kept, a summary goes with its message; migration 15 over a database made before
it. Written once, run on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial import unittest

from atollon_mail.imap.message import envelope
from atollon_mail.imap.parser import Atom
from atollon_mail.imap.search import KEPT_FIELDS, kept_fields, parse_search
from atollon_mail.store import filing, imapfolders, migrations
from atollon_mail.store.models import ImapSummary
from atollon_mail.store.pool import Store
from atollon_mail.store.records import IncomingMessage
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

# Header blocks with what makes matching hard; each message gets a body line after them.
HEADERS = (
    b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@example.de>\r\n"
    b"To: Team: alice@example.com, bob@example.com;\r\n"
    b"Subject: =?iso-8859-1?q?Gr=FC=DFe?= =?utf-8?b?YXVz?= Prag\r\n",
    'From: "Ελένη Σπύρου" <eleni@example.gr>\r\nSubject: ΟΔΟΣ straße İstanbul\r\n'.encode(),
    b"From: Latin <latin@example.fr>\r\nSubject: caf\xe9 cr\xe8me 100% _done_\r\n",
    b"From: Bob <bob@example.com>\r\nTo: Carol <carol@example.com>\r\n"
    b"To: Dave <dave@example.com>\r\nCc: Erin\r\n  <erin@example.com>\r\n"
    b"Subject: folded\r\n  across lines\r\n",
    b"From: nobody@example.com\r\nSubject: =?utf-8?b?broken?=base64?= =?x-unknown?q?ab?=\r\n"
    b"Bcc: hidden@example.com\r\n",
    b"Subject:\r\nFrom: <empty@example.com>\r\n",
)

# (key, text) searched: each the in-memory matcher's answer must be the database's.
SEARCHES = (
    ("SUBJECT", "grüße"),
    ("SUBJECT", "GRÜSSE"),  # case folding: ß is ss
    ("SUBJECT", "ße aus"),  # across two encoded words
    ("SUBJECT", "odos"),
    ("SUBJECT", "οδος"),
    ("SUBJECT", "ΟΔΟΣ"),
    ("SUBJECT", "STRASSE"),
    ("SUBJECT", "i̇stanbul"),
    ("SUBJECT", "CAFÉ"),
    ("SUBJECT", "100%"),
    ("SUBJECT", "_done_"),
    ("SUBJECT", "%"),
    ("SUBJECT", "d_ne"),
    ("SUBJECT", "folded  across"),
    ("SUBJECT", "folded across"),
    ("SUBJECT", "broken"),
    ("SUBJECT", "=?x-unknown?q?ab?="),
    ("FROM", "jörg müller"),
    ("FROM", "JÖRG"),
    ("FROM", "σπύρου"),
    ("FROM", "ΣΠΎΡΟΥ"),
    ("FROM", "@example.com"),
    ("FROM", "<empty@"),
    ("TO", "team:"),
    ("TO", "BOB@"),
    ("TO", "dave"),
    ("TO", "carol@example.com"),
    ("CC", "erin"),
    ("CC", "erin  <"),
    ("BCC", "hidden"),
    ("HEADER", "Subject", "prag"),
    ("HEADER", "FROM", "latin"),
    ("HEADER", "to", "ALICE"),
)


def _program(search: tuple[str, ...]):
    *key, text = search
    tokens = [Atom(key[0]), *(part.encode() for part in key[1:]), text.encode()]
    return parse_search(tokens, "UTF-8")


class SummariesContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(self.store, "joe@acme.test", "joe")
        self.recipient = self.sync(filing.resolve_recipient, "joe", "acme.test")

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def receive(self, headers: bytes) -> int:
        incoming = IncomingMessage(
            envelope_sender="sender@remote.example",
            recipients=(self.recipient,),
            raw=headers + b"\r\nbody\r\n",
        )
        [stored] = self.sync(filing.store_messages, [incoming])
        return stored.id

    def items(self) -> tuple[imapfolders.MessageItem, ...]:
        snapshot = self.sync(imapfolders.folder_snapshot, "joe", "INBOX")
        return self.sync(imapfolders.message_items, "joe", "INBOX", snapshot.uids)

    def keep(self, items) -> dict[int, bytes]:
        """Keep the summaries of these messages as the server makes them; their headers."""
        by_uid = self.sync(
            imapfolders.message_headers,
            "joe",
            self.recipient.mailbox_id,
            [item.uid for item in items],
        )
        headers = {item.message_id: by_uid[item.uid] for item in items}
        self.sync(
            imapfolders.save_summaries,
            [
                imapfolders.ImapSummaryRecord(
                    message_id=item.message_id,
                    envelope=envelope(headers[item.message_id]),
                    fields=kept_fields(headers[item.message_id]),
                )
                for item in items
            ],
        )
        return headers

    def test_the_database_answers_as_the_in_memory_matcher(self):
        for headers in HEADERS:
            self.receive(headers)
        items = self.items()
        headers = self.keep(items)
        found_any = set()
        for search in SEARCHES:
            with self.subTest(search=search):
                program = _program(search)
                self.assertIsNotNone(program.header_terms)
                expected = tuple(
                    item.uid
                    for seq, item in enumerate(items, 1)
                    if program.matches(item, seq, headers[item.message_id])
                )
                answer = self.sync(
                    imapfolders.search_summaries, "joe", "INBOX", program.header_terms
                )
                self.assertEqual(answer.found, expected)
                self.assertEqual(answer.missing, ())
                found_any.update(expected)
        # The searches are not vacuous: every message is found by one of them.
        self.assertEqual(found_any, {item.uid for item in items})

    def test_terms_all_match_and_unknown_fields_are_refused(self):
        self.receive(HEADERS[3])
        self.receive(HEADERS[2])
        self.keep(self.items())
        [bob, _latin] = [item.uid for item in self.items()]
        answer = self.sync(
            imapfolders.search_summaries, "joe", "INBOX", (("from", "bob"), ("to", "dave"))
        )
        self.assertEqual(answer.found, (bob,))
        answer = self.sync(
            imapfolders.search_summaries, "joe", "INBOX", (("from", "bob"), ("to", "alice"))
        )
        self.assertEqual(answer.found, ())
        with self.assertRaises(ValueError):
            self.sync(imapfolders.search_summaries, "joe", "INBOX", (("x-spam", "a"),))
        self.assertEqual(len(KEPT_FIELDS), len(imapfolders.SUMMARY_FIELDS))

    def test_what_is_not_kept_is_missing_and_envelopes_come_with_items(self):
        self.receive(HEADERS[0])
        self.receive(HEADERS[1])
        items = self.items()
        self.assertEqual({item.envelope for item in items}, {None})
        answer = self.sync(imapfolders.search_summaries, "joe", "INBOX", (("subject", "prag"),))
        self.assertEqual(answer, imapfolders.SummarySearch((), tuple(i.uid for i in items)))
        headers = self.keep(items[:1])
        answer = self.sync(imapfolders.search_summaries, "joe", "INBOX", (("subject", "prag"),))
        self.assertEqual(answer, imapfolders.SummarySearch((items[0].uid,), (items[1].uid,)))
        first, second = self.items()
        self.assertEqual(first.envelope, envelope(headers[first.message_id]))
        self.assertIsNone(second.envelope)
        # Kept again (a second server's race): replaced, not doubled.
        self.keep(items[:1])
        self.assertEqual(
            self.sync(builders.table_rows, ImapSummary.message, order_by=ImapSummary.message),
            [(first.message_id,)],
        )

    def test_another_version_counts_as_not_kept(self):
        self.receive(HEADERS[0])
        self.keep(self.items())
        self.sync(lambda: ImapSummary.update(version=0).execute())
        [item] = self.items()
        self.assertIsNone(item.envelope)
        answer = self.sync(imapfolders.search_summaries, "joe", "INBOX", (("subject", "prag"),))
        self.assertEqual(answer, imapfolders.SummarySearch((), (item.uid,)))
        self.keep([item])
        self.assertIsNotNone(self.items()[0].envelope)

    def test_a_summary_goes_with_its_message(self):
        self.receive(HEADERS[0])
        [item] = self.items()
        self.keep([item])
        self.sync(imapfolders.store_flags, "joe", "INBOX", (item.uid,), "+", ("\\Deleted",), None)
        self.sync(imapfolders.expunge, "joe", "INBOX")
        self.assertEqual(
            self.sync(builders.table_rows, ImapSummary.message, order_by=ImapSummary.message),
            [],
        )
        record = imapfolders.ImapSummaryRecord(item.message_id, b"NIL", (None,) * 5)
        self.assertEqual(self.sync(imapfolders.save_summaries, [record]), 0)
        self.assertEqual(
            self.sync(builders.table_rows, ImapSummary.message, order_by=ImapSummary.message),
            [],
        )


class SqliteSummariesTests(SqliteStoreMixin, SummariesContract, unittest.TestCase):
    pass


class PostgresSummariesTests(PostgresStoreMixin, SummariesContract, unittest.TestCase):
    pass


class SummaryMigrationContract:
    def test_migration_15_over_a_database_made_before_it(self):
        store = Store.from_url(self.make_database_url(), reactor)
        self.addCleanup(store.stop)
        database = store.database
        with database.connection_context():
            migrations.migrate(database, up_to=14)
        store.start()
        builders.hosted_mailbox(store, "joe@acme.test", "joe")
        joe = store.run_sync(filing.resolve_recipient, "joe", "acme.test")
        for raw in (b"Subject: one\r\n\r\nx\r\n", b"Subject: Two\r\n\r\nx\r\n"):
            store.run_sync(
                builders.filed_in_old_schema, database, joe.mailbox_id, joe.context_id, raw
            )
        with database.connection_context():
            applied = migrations.migrate(database)
        self.assertEqual(
            [migration.number for migration in applied],
            [migration.number for migration in migrations.MIGRATIONS if migration.number > 14],
        )
        snapshot = store.run_sync(imapfolders.folder_snapshot, "joe", "INBOX")
        items = store.run_sync(imapfolders.message_items, "joe", "INBOX", snapshot.uids)
        self.assertEqual([item.envelope for item in items], [None, None])
        answer = store.run_sync(imapfolders.search_summaries, "joe", "INBOX", (("subject", "two"),))
        self.assertEqual(answer, imapfolders.SummarySearch((), snapshot.uids))
        by_uid = store.run_sync(
            imapfolders.message_headers, "joe", joe.mailbox_id, [item.uid for item in items]
        )
        headers = {item.message_id: by_uid[item.uid] for item in items}
        store.run_sync(
            imapfolders.save_summaries,
            [
                imapfolders.ImapSummaryRecord(
                    item.message_id,
                    envelope(headers[item.message_id]),
                    kept_fields(headers[item.message_id]),
                )
                for item in items
            ],
        )
        answer = store.run_sync(imapfolders.search_summaries, "joe", "INBOX", (("subject", "two"),))
        self.assertEqual(answer, imapfolders.SummarySearch((snapshot.uids[1],), ()))


class SqliteSummaryMigrationTests(SqliteStoreMixin, SummaryMigrationContract, unittest.TestCase):
    pass


class PostgresSummaryMigrationTests(
    PostgresStoreMixin, SummaryMigrationContract, unittest.TestCase
):
    pass
