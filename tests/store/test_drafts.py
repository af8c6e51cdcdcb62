"""Drafts: saved into a mailbox's Drafts folder, replaced by the next save, removed when
sent. Written once, run on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.trial import unittest

from atollon_mail.delivery.intake import summarize_headers
from atollon_mail.store import drafts, filing
from atollon_mail.store.errors import NotFound
from atollon_mail.store.records import IncomingMessage, OutgoingMessage
from atollon_mail.store.values import DRAFTS
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin


def _draft(subject: str) -> OutgoingMessage:
    raw = (
        f"From: jane@acme.test\r\nTo: far@remote.example\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@acme.test>\r\n\r\nWords.\r\n"
    ).encode()
    return OutgoingMessage(envelope_sender="jane@acme.test", raw=raw, **summarize_headers(raw))


class DraftTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.jane = builders.hosted_mailbox(self.store).mailbox
        builders.mailbox(self.store, "john@acme.test", "jane")
        self.sync = self.store.run_sync

    def drafts(self, address: str = "jane@acme.test"):
        return self.sync(filing.list_filings, address, 100, 0, folder=DRAFTS)

    def test_a_draft_is_filed_into_drafts_seen_and_flagged(self):
        saved = self.sync(drafts.save_draft, "jane@acme.test", _draft("Plan"))
        self.assertIsNone(saved.replaced)
        [filed] = self.drafts()
        self.assertEqual((filed.message.id, filed.uid), (saved.message_id, saved.uid))
        self.assertEqual(filed.flags, ("\\Draft", "\\Seen"))
        self.assertEqual(filed.message.subject, "Plan")
        self.assertEqual(filed.context.id, self.jane.store_to.id)
        # Stored as written: no Return-Path (it was delivered to nobody).
        raw = self.sync(filing.message_raw, saved.message_id)
        self.assertTrue(raw.startswith(b"From: jane@acme.test\r\n"))
        self.assertEqual(self.sync(filing.list_filings, "jane@acme.test", 100, 0, "inbox"), [])

    def test_saving_again_replaces_the_draft(self):
        first = self.sync(drafts.save_draft, "jane@acme.test", _draft("Plan"))
        second = self.sync(drafts.save_draft, "jane@acme.test", _draft("Plan B"), first.message_id)
        self.assertEqual(second.replaced, first.message_id)
        self.assertGreater(second.uid, first.uid)
        [filed] = self.drafts()
        self.assertEqual((filed.uid, filed.message.subject), (second.uid, "Plan B"))
        self.assertEqual(self.sync(filing.count_messages), 1)

    def test_replacing_a_draft_that_is_gone_saves_a_new_one(self):
        first = self.sync(drafts.save_draft, "jane@acme.test", _draft("Plan"))
        self.sync(drafts.delete_draft, "jane@acme.test", first.message_id)
        again = self.sync(drafts.save_draft, "jane@acme.test", _draft("Plan"), first.message_id)
        self.assertIsNone(again.replaced)
        self.assertEqual(len(self.drafts()), 1)

    def test_a_draft_of_another_mailbox_is_not_replaced_nor_removed(self):
        johns = self.sync(drafts.save_draft, "john@acme.test", _draft("John's"))
        mine = self.sync(drafts.save_draft, "jane@acme.test", _draft("Mine"), johns.message_id)
        self.assertIsNone(mine.replaced)
        with self.assertRaises(NotFound):
            self.sync(drafts.delete_draft, "jane@acme.test", johns.message_id)
        self.assertEqual(len(self.drafts("john@acme.test")), 1)

    def test_delete_removes_the_draft_and_its_message(self):
        saved = self.sync(drafts.save_draft, "jane@acme.test", _draft("Plan"))
        self.sync(drafts.delete_draft, "jane@acme.test", saved.message_id)
        self.assertEqual(self.drafts(), [])
        self.assertEqual(self.sync(filing.count_messages), 0)
        with self.assertRaises(NotFound):
            self.sync(drafts.delete_draft, "jane@acme.test", saved.message_id)

    def test_a_message_that_is_no_draft_is_not_removed(self):
        recipient = self.sync(filing.resolve_recipient, "jane", "acme.test")
        raw = b"Subject: hi\r\n\r\nbody\r\n"
        received = IncomingMessage(
            envelope_sender="x@remote.example", recipients=(recipient,), raw=raw, subject="hi"
        )
        [stored] = self.sync(filing.store_messages, [received])
        with self.assertRaises(NotFound):
            self.sync(drafts.delete_draft, "jane@acme.test", stored.id)
        self.assertEqual(self.sync(filing.count_messages), 1)


class SqliteDraftTests(SqliteStoreMixin, DraftTests, unittest.TestCase):
    pass


class PostgresDraftTests(PostgresStoreMixin, DraftTests, unittest.TestCase):
    pass
