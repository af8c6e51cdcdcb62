"""The store tells its `changed` callback the mailbox an operation marked
`changes_mailbox` changed, once it committed; not for a refused one, nor for others.
Written once, run on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial import unittest

from atollon_mail.store import mailfolders
from atollon_mail.store.errors import NotFound
from atollon_mail.store.pool import Store
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin


class ChangesContract(StoreFixtureMixin):
    def setUp(self):
        self.told: list[str] = []
        self.store = Store.from_url(self.make_database_url(), reactor, changed=self.told.append)
        self.store.migrate()
        self.store.start()
        self.addCleanup(self.store.stop)
        builders.hosted_mailbox(self.store, "jane@acme.test", "jane")

    @defer.inlineCallbacks
    def test_a_committed_change_is_told_with_its_mailbox(self):
        yield self.store.run(mailfolders.empty_trash, "jane@acme.test")
        self.assertEqual(self.told, ["jane@acme.test"])

    @defer.inlineCallbacks
    def test_a_refused_change_and_a_reading_are_not(self):
        with self.assertRaises(NotFound):
            yield self.store.run(mailfolders.empty_trash, "nobody@acme.test")
        yield self.store.run(mailfolders.folder_counts, "jane@acme.test")
        self.assertEqual(self.told, [])

    def test_the_web_clients_changes_are_marked(self):
        from atollon_mail.store import crm_mail, drafts, filing

        for operation in (
            filing.add_flag,
            filing.remove_flag,
            filing.move_message,
            mailfolders.change_flags,
            mailfolders.move_filings,
            mailfolders.delete_from_trash,
            mailfolders.mark_read,
            crm_mail.file_into,
            drafts.save_draft,
            drafts.delete_draft,
        ):
            self.assertTrue(getattr(operation, "changes_mailbox", False), operation.__name__)


class SqliteChangesTests(SqliteStoreMixin, ChangesContract, unittest.TestCase):
    pass


class PostgresChangesTests(PostgresStoreMixin, ChangesContract, unittest.TestCase):
    pass
