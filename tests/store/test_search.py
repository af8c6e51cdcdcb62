"""Full-text search of filed mail (store.search, migration 13): written once, run on
SQLite (FTS5) and PostgreSQL (tsvector)."""

from __future__ import annotations

import base64
import datetime

import attrs
from twisted.internet import reactor
from twisted.trial import unittest

from atollon_mail.delivery.intake import summarize_headers
from atollon_mail.store import filing, migrations, queue, search, searchtext
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.mailboxes import grant_mailbox_access
from atollon_mail.store.models import Message
from atollon_mail.store.pool import Store
from atollon_mail.store.records import IncomingMessage, Origin, OutgoingMessage, SearchQuery
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

HTML_WITH_ATTACHMENT = (
    b"From: Mallory Smith <mallory@remote.example>\r\nTo: joe@acme.test\r\n"
    b"Cc: Carla <carla@partner.example>\r\nSubject: Quarterly figures\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(
        "<html><style>p {color: hidden}</style><p>The <b>marmalade</b> caf\u00e9"
        "</p><p>report&amp;summary</p><script>var secret = 1;</script></html>".encode()
    ).replace(b"\n", b"\r\n")
    + b"--XX\r\nContent-Type: text/plain\r\n"
    b'Content-Disposition: attachment; filename="budget-2027.txt"\r\n\r\n'
    b"pineapple inside the attachment\r\n--XX--\r\n"
)


def _text_mail(subject: str, body: str, sender: str = "alice@remote.example") -> bytes:
    return (f"From: {sender}\r\nTo: joe@acme.test\r\nSubject: {subject}\r\n\r\n{body}\r\n").encode()


class SearchContract:
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(self.store, "joe@acme.test", "joe")
        builders.user(self.store, "ann")
        builders.mailbox(self.store, "ann@acme.test", "ann")
        self.joe = self.sync(filing.resolve_recipient, "joe", "acme.test")
        self.ann = self.sync(filing.resolve_recipient, "ann", "acme.test")

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def deliver(self, raw: bytes, *recipients) -> int:
        incoming = IncomingMessage(
            envelope_sender="someone@remote.example",
            recipients=recipients or (self.joe,),
            raw=raw,
            **summarize_headers(raw),
        )
        [stored] = self.sync(filing.store_messages, [incoming])
        return stored.id

    def found(self, login="joe", **query) -> list[int]:
        results = self.sync(search.search, login, SearchQuery(**query))
        return [hit.message.id for hit in results.hits]

    # --- what is indexed ------------------------------------------------------------------

    def test_finds_a_word_of_an_html_body_not_its_markup_nor_its_attachment(self):
        message = self.deliver(HTML_WITH_ATTACHMENT)
        for words in ("marmalade", "MARMALADE", "cafe", "café", "report summary", "summary"):
            self.assertEqual(self.found(text=words), [message], words)
        for words in ("pineapple", "secret", "color", "hidden", "html", "amp"):
            self.assertEqual(self.found(text=words), [], words)
        # The attachment's file name is indexed, its content is not.
        self.assertEqual(self.found(text="budget-2027.txt"), [message])
        [hit] = self.sync(search.search, "joe", SearchQuery(text="marmalade")).hits
        self.assertTrue(hit.message.has_attachment)
        self.assertEqual(hit.mailbox_address, "joe@acme.test")
        self.assertEqual(hit.folder, "inbox")

    def test_a_nul_decoded_from_a_message_fails_nothing_stored_with_it(self):
        # NUL cannot come raw over SMTP, but a base64 part or an encoded word may decode
        # to it; PostgreSQL takes no NUL in text.
        nul = (
            b"From: =?utf-8?q?Eve=00?= <eve@remote.example>\r\n"
            b"To: joe@acme.test\r\nSubject: =?utf-8?q?Nul=00subject?=\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.b64encode(b"kumquat\x00harvest\r\n")
            + b"\r\n"
        )
        good = _text_mail("Lunch", "noon at the usual place")
        stored = self.sync(
            filing.store_messages,
            [
                IncomingMessage(
                    envelope_sender="someone@remote.example",
                    recipients=(self.joe,),
                    raw=raw,
                    **summarize_headers(raw),
                )
                for raw in (good, nul)
            ],
        )
        self.assertEqual([type(result).__name__ for result in stored], ["StoredMessage"] * 2)
        self.assertEqual(self.found(text="kumquat harvest"), [stored[1].id])
        self.assertEqual(self.found(text="usual"), [stored[0].id])

    def test_finds_by_subject_and_address(self):
        message = self.deliver(HTML_WITH_ATTACHMENT)
        other = self.deliver(_text_mail("Lunch", "noon at the usual place"))
        self.assertEqual(self.found(text="quarterly"), [message])
        self.assertEqual(self.found(text="mallory@remote.example"), [message])
        self.assertEqual(self.found(text="remote.example"), [other, message])
        self.assertEqual(self.found(text="carla"), [message])
        # A phrase is its words in order; loose words may stand anywhere.
        self.assertEqual(self.found(text='"usual place"'), [other])
        self.assertEqual(self.found(text='"place usual"'), [])
        self.assertEqual(self.found(text="place noon"), [other])

    def test_an_empty_or_punctuation_query_lists_by_the_filters(self):
        first = self.deliver(_text_mail("One", "first"))
        second = self.deliver(_text_mail("Two", "second"))
        self.assertEqual(self.found(text="  -- "), [second, first])

    # --- who sees what ----------------------------------------------------------------------

    def test_not_in_another_users_mailbox(self):
        self.deliver(_text_mail("Private", "zucchini"), self.ann)
        self.assertEqual(self.found(text="zucchini"), [])
        with self.assertRaises(NotFound):
            self.sync(
                search.search, "joe", SearchQuery(text="zucchini", mailboxes=("ann@acme.test",))
            )
        with self.assertRaises(NotFound):
            self.sync(search.search, "joe", SearchQuery(mailboxes=("nobody@acme.test",)))
        self.assertEqual(len(self.found("ann", text="zucchini")), 1)
        # A view right is enough.
        self.sync(grant_mailbox_access, "ann@acme.test", "joe", view=True, edit=False)
        self.assertEqual(len(self.found(text="zucchini", mailboxes=("ann@acme.test",))), 1)

    def test_not_after_the_message_is_deleted(self):
        kept = self.deliver(_text_mail("Keep", "walnut"))
        gone = self.deliver(_text_mail("Gone", "walnut"))
        self.assertEqual(self.found(text="walnut"), [gone, kept])
        self.sync(lambda: Message.delete().where(Message.id == gone).execute())
        self.assertEqual(self.found(text="walnut"), [kept])
        self.assertEqual(self.sync(_index_rows, self.store.database), 1)

    def test_mail_only_queued_is_not_indexed_and_sent_copies_are(self):
        raw = _text_mail("Outbound", "hazelnut")
        queued = OutgoingMessage(
            envelope_sender="joe@acme.test", raw=raw, remote_recipients=("x@far.example",)
        )
        [submitted] = self.sync(queue.submit_messages, [(queued, Origin("relay"))])
        self.assertEqual(submitted.queued_recipients, 1)
        self.assertEqual(self.sync(_index_rows, self.store.database), 0)
        sent = attrs.evolve(queued, sent_mailbox_id=self.joe.mailbox_id)
        [submitted] = self.sync(queue.submit_messages, [(sent, Origin("compose"))])
        self.assertEqual(self.found(text="hazelnut"), [submitted.id])
        self.assertEqual(self.sync(_index_rows, self.store.database), 1)

    # --- filters ---------------------------------------------------------------------------

    def test_folder_filter(self):
        inbox = self.deliver(_text_mail("Apples", "fruit"))
        junk = self.deliver(_text_mail("Pears", "fruit"))
        self.sync(filing.move_message, "joe@acme.test", junk, "junk")
        self.assertEqual(self.found(text="fruit", folder="junk"), [junk])
        self.assertEqual(self.found(text="fruit", folder="inbox"), [inbox])
        with self.assertRaises(Invalid):
            self.found(text="fruit", folder="sent")

    def test_from_and_to_filters(self):
        from_alice = self.deliver(_text_mail("A", "melon", "Alice <alice@remote.example>"))
        from_bob = self.deliver(_text_mail("B", "melon alice", "bob@other.example"))
        self.assertEqual(self.found(text="melon", sender="alice"), [from_alice])
        self.assertEqual(self.found(sender="bob@other.example"), [from_bob])
        self.assertEqual(self.found(recipient="joe@acme.test"), [from_bob, from_alice])
        self.assertEqual(self.found(recipient="alice"), [])

    def test_date_filter(self):
        message = self.deliver(_text_mail("Dated", "plum"))
        today = datetime.datetime.now(datetime.UTC).date()
        day = datetime.timedelta(days=1)
        self.assertEqual(self.found(text="plum", since=today, until=today), [message])
        self.assertEqual(self.found(text="plum", since=today + day), [])
        self.assertEqual(self.found(text="plum", until=today - day), [])

    def test_attachment_and_unread_filters(self):
        attached = self.deliver(HTML_WITH_ATTACHMENT)
        plain = self.deliver(_text_mail("Plain", "nothing attached"))
        self.assertEqual(self.found(has_attachment=True), [attached])
        self.sync(filing.add_flag, "joe@acme.test", attached, "\\Seen")
        self.assertEqual(self.found(unread=True), [plain])
        self.assertEqual(self.found(), [plain, attached])

    def test_paged_newest_first(self):
        ids = [self.deliver(_text_mail(f"Page {n}", "kiwi")) for n in range(5)]
        first = self.sync(search.search, "joe", SearchQuery(text="kiwi"), limit=2)
        self.assertEqual([hit.message.id for hit in first.hits], ids[::-1][:2])
        self.assertTrue(first.more)
        last = self.sync(search.search, "joe", SearchQuery(text="kiwi"), limit=2, offset=4)
        self.assertEqual([hit.message.id for hit in last.hits], [ids[0]])
        self.assertFalse(last.more)

    def test_too_many_words_are_refused(self):
        with self.assertRaises(Invalid):
            self.found(text=" ".join(f"w{n}" for n in range(search.MAX_QUERY_WORDS + 1)))


def _index_rows(database) -> int:
    return database.execute_sql("SELECT COUNT(*) FROM message_search").fetchone()[0]


class SearchMigrationContract:
    def test_migration_13_indexes_and_marks_the_messages_stored_before_it(self):
        store = Store.from_url(self.make_database_url(), reactor)
        self.addCleanup(store.stop)
        database = store.database
        with database.connection_context():
            migrations.migrate(database, up_to=12)
        store.start()
        builders.hosted_mailbox(store, "joe@acme.test", "joe")
        joe = store.run_sync(filing.resolve_recipient, "joe", "acme.test")
        old = [
            store.run_sync(
                builders.filed_in_old_schema, database, joe.mailbox_id, joe.context_id, raw
            )
            for raw in (HTML_WITH_ATTACHMENT, _text_mail("Before", "gooseberry"))
        ]
        with database.connection_context():
            applied = migrations.migrate(database)
        self.assertEqual([m.number for m in applied][:1], [13])
        results = store.run_sync(search.search, "joe", SearchQuery(text="marmalade"))
        self.assertEqual([hit.message.id for hit in results.hits], [old[0]])
        self.assertTrue(results.hits[0].message.has_attachment)
        results = store.run_sync(search.search, "joe", SearchQuery(text="gooseberry"))
        self.assertEqual([hit.message.id for hit in results.hits], [old[1]])
        self.assertFalse(results.hits[0].message.has_attachment)


class SearchTextTests(unittest.TestCase):
    """The text taken out of a message, without a database."""

    def test_text_is_capped_and_alternatives_indexed_once(self):
        long_body = "word " * 30000
        text = searchtext.extract(_text_mail("Long", long_body), limit=1000)
        self.assertEqual(len(text.body), 1000)
        alternative = (
            b"Subject: Both\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/alternative; boundary=B\r\n\r\n"
            b"--B\r\nContent-Type: text/plain\r\n\r\nplain words\r\n"
            b"--B\r\nContent-Type: text/html\r\n\r\n<p>html words</p>\r\n--B--\r\n"
        )
        text = searchtext.extract(alternative)
        self.assertIn("plain", text.body)
        self.assertNotIn("html", text.body)
        self.assertFalse(text.has_attachment)

    def test_encoded_headers_and_a_broken_message(self):
        raw = (
            b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>\r\n"
            b"Subject: Stra\xc3\x9fe caf\xc3\xa9\r\n\r\nbody\r\n"
        )
        text = searchtext.extract(raw)
        self.assertIn("Jorg", text.sender)
        self.assertIn("cafe", text.subject)
        broken = b"Content-Type: multipart/mixed; boundary=Z\r\n\r\n--Z\r\nno end"
        self.assertIsInstance(searchtext.extract(broken), searchtext.SearchText)
        self.assertEqual(
            searchtext.words("Alice@Remote.example, e-mail"),
            ["alice", "remote", "example", "e", "mail"],
        )


class SqliteSearchTests(SqliteStoreMixin, StoreFixtureMixin, SearchContract, unittest.TestCase):
    pass


class PostgresSearchTests(PostgresStoreMixin, StoreFixtureMixin, SearchContract, unittest.TestCase):
    pass


class SqliteSearchMigrationTests(SqliteStoreMixin, SearchMigrationContract, unittest.TestCase):
    pass


class PostgresSearchMigrationTests(PostgresStoreMixin, SearchMigrationContract, unittest.TestCase):
    pass
