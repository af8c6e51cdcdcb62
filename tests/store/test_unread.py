"""Counting a mailbox's unread mail, on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.trial import unittest

from atollon_mail.store import filing, mailboxes, unread
from atollon_mail.store.errors import Invalid
from atollon_mail.store.records import IncomingMessage
from atollon_mail.store.values import INBOX, JUNK
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin


class UnreadContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.jane = builders.hosted_mailbox(self.store).mailbox
        self.john = builders.mailbox(self.store, "john@acme.test", "jane")

    def file(self, *local_parts: str) -> int:
        sync = self.store.run_sync
        recipients = tuple(
            sync(filing.resolve_recipient, part, "acme.test") for part in local_parts
        )
        incoming = IncomingMessage(
            envelope_sender="someone@remote.example",
            recipients=recipients,
            raw=b"Subject: hi\r\n\r\nbody\r\n",
            subject="hi",
        )
        [stored] = sync(filing.store_messages, [incoming])
        return stored.id

    def count(self, mailbox_id: int, folder: str = INBOX) -> int:
        return self.store.run_sync(unread.count_unread, mailbox_id, folder)

    def test_counts_what_lacks_seen_in_one_mailbox_and_folder(self):
        first = self.file("jane", "john")
        second = self.file("jane")
        self.file("john")
        self.assertEqual(self.count(self.jane.id), 2)
        self.assertEqual(self.count(self.john.id), 2)
        self.store.run_sync(filing.add_flag, "jane@acme.test", first, "\\Seen")
        self.store.run_sync(filing.add_flag, "jane@acme.test", second, "\\Answered")
        self.assertEqual(self.count(self.jane.id), 1, "\\Answered is not \\Seen")
        self.assertEqual(self.count(self.john.id), 2, "seen in one mailbox only")
        self.store.run_sync(filing.move_message, "jane@acme.test", second, JUNK)
        self.assertEqual(self.count(self.jane.id), 0)
        self.assertEqual(self.count(self.jane.id, JUNK), 1)

    def test_a_mailbox_that_is_none_has_no_unread_mail(self):
        self.assertEqual(self.count(999_999), 0)

    def test_a_folder_that_is_none_is_refused(self):
        with self.assertRaises(Invalid):
            self.count(self.jane.id, "Sent")

    def test_news_counts_and_names_who_may_still_view_the_mailbox(self):
        for login, is_admin in (("ann", True), ("vic", False), ("eve", False), ("max", False)):
            builders.user(self.store, login, is_admin=is_admin)
        sync = self.store.run_sync
        sync(mailboxes.grant_mailbox_access, "jane@acme.test", "vic", view=True)
        sync(mailboxes.grant_mailbox_access, "jane@acme.test", "eve", view=False, edit=True)
        sync(mailboxes.grant_mailbox_access, "john@acme.test", "max", view=True)
        self.file("jane")
        asked = ("jane", "ann", "vic", "eve", "max", "nobody")
        news = sync(unread.mailbox_news, self.jane.id, asked)
        self.assertEqual(news.unread, 1)
        self.assertEqual(news.viewers, {"jane", "ann", "vic", "eve"})
        sync(mailboxes.revoke_mailbox_access, "jane@acme.test", "vic")
        news = sync(unread.mailbox_news, self.jane.id, asked)
        self.assertEqual(news.viewers, {"jane", "ann", "eve"})
        self.assertEqual(sync(unread.mailbox_news, self.jane.id, ()).viewers, frozenset())
        gone = sync(unread.mailbox_news, 999_999, asked)
        self.assertEqual((gone.unread, gone.viewers), (0, frozenset()))


class SqliteUnreadTests(UnreadContract, SqliteStoreMixin, unittest.TestCase):
    pass


class PostgresUnreadTests(UnreadContract, PostgresStoreMixin, unittest.TestCase):
    pass
