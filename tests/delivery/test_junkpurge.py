"""The purge of old Junk: rounds on a Clock against a real store, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime

from twisted.internet import defer, task
from twisted.trial import unittest

from atollon_mail.config import ConfigError, parse_config
from atollon_mail.delivery.junkpurge import JunkPurger, utc_from_seconds
from atollon_mail.store import filing
from atollon_mail.store.models import Filing
from atollon_mail.store.records import InboundVerdict, IncomingMessage
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

DAY = 86400.0
START = 1_900_000_000.0  # the clock's time when the test begins
INTERVAL = 3600.0


def _filed_at(message_id: int, when: datetime.datetime) -> None:
    Filing.update(filed_at=when).where(Filing.message == message_id).execute()


class JunkPurgerContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(self.store, "joe@acme.test", "joe")
        self.clock = task.Clock()
        self.clock.advance(START)

    def junk(self, days_ago: float) -> int:
        """A message the checks called junk, in joe's Junk since `days_ago` days before
        the clock's start."""
        joe = self.store.run_sync(filing.resolve_recipient, "joe", "acme.test")
        incoming = IncomingMessage(
            envelope_sender="s@spam.example",
            recipients=(joe,),
            raw=b"Subject: buy\r\n\r\nx\r\n",
            verdict=InboundVerdict(junk=True),
        )
        [stored] = self.store.run_sync(filing.store_messages, [incoming])
        self.store.run_sync(_filed_at, stored.id, utc_from_seconds(START - days_ago * DAY))
        return stored.id

    def junk_ids(self) -> list[int]:
        return sorted(f.message.id for f in self.store.run_sync(filing.list_junk, "joe@acme.test"))

    def purger(self, **options) -> JunkPurger:
        purger = JunkPurger(self.store, 30, self.clock, interval=INTERVAL, **options)
        purger.startService()
        self.addCleanup(purger.stopService)
        return purger

    @defer.inlineCallbacks
    def test_rounds_remove_junk_older_than_the_retention(self):
        old = self.junk(days_ago=45)
        young = self.junk(days_ago=29.99)  # 30 days old 864 seconds after the start
        purger = self.purger(first_delay=60)
        self.assertIsNone(purger.round, "no round at start")
        self.clock.advance(59)
        self.assertIsNone(purger.round)
        self.clock.advance(1)
        removed = yield purger.round
        self.assertEqual(removed, 1)
        self.assertEqual(self.junk_ids(), [young])
        self.assertNotIn(old, self.junk_ids())
        # The next round, an interval later, finds the other one 30 days old.
        first = purger.round
        self.clock.advance(INTERVAL - 1)
        self.assertIs(purger.round, first, "a round before the interval")
        self.clock.advance(1)
        self.assertIsNot(purger.round, first)
        removed = yield purger.round
        self.assertEqual((removed, self.junk_ids()), (1, []))

    @defer.inlineCallbacks
    def test_a_round_goes_in_batches_until_nothing_old_is_left(self):
        for _ in range(7):
            self.junk(days_ago=40)
        kept = self.junk(days_ago=1)
        purger = self.purger(first_delay=0, batch=3)
        removed = yield purger.round
        self.assertEqual(removed, 7)
        self.assertEqual(self.junk_ids(), [kept])

    def test_stopped_before_its_first_round_it_purges_nothing(self):
        old = self.junk(days_ago=90)
        purger = JunkPurger(self.store, 30, self.clock, first_delay=60)
        purger.startService()
        stopped = purger.stopService()
        self.clock.advance(10 * INTERVAL)
        self.assertIsNone(purger.round)
        self.assertEqual(self.junk_ids(), [old])
        return stopped

    @defer.inlineCallbacks
    def test_a_failing_round_is_logged_and_the_next_one_runs(self):
        old = self.junk(days_ago=90)
        store = self.store

        class Failing:
            calls = 0

            def run(self, operation, *args):
                Failing.calls += 1
                if Failing.calls == 1:
                    return defer.fail(RuntimeError("the database went away"))
                return store.run(operation, *args)

        purger = JunkPurger(Failing(), 30, self.clock, interval=INTERVAL, first_delay=0)
        purger.startService()
        self.addCleanup(purger.stopService)
        removed = yield purger.round
        self.assertEqual(removed, 0)
        [logged] = self.flushLoggedErrors(RuntimeError)
        self.assertIn("went away", str(logged.value))
        self.clock.advance(INTERVAL)
        removed = yield purger.round
        self.assertEqual((removed, self.junk_ids()), (1, []))
        self.assertNotIn(old, self.junk_ids())


class SqliteJunkPurgerTests(SqliteStoreMixin, JunkPurgerContract, unittest.TestCase):
    pass


class PostgresJunkPurgerTests(PostgresStoreMixin, JunkPurgerContract, unittest.TestCase):
    pass


class RetentionSettingTests(unittest.TestCase):
    def test_thirty_days_unless_configured(self):
        self.assertEqual(parse_config("").spam.junk_retention_days, 30)
        self.assertEqual(
            parse_config("[spam]\njunk_retention_days = 7\n").spam.junk_retention_days, 7
        )

    def test_a_bad_value_names_the_file_section_and_key(self):
        for value in ("0", "-3", "thirty", "1.5", ""):
            with self.assertRaises(ConfigError) as refused:
                parse_config(f"[spam]\njunk_retention_days = {value}\n", "mail.ini")
            self.assertIn(
                "mail.ini: [spam] junk_retention_days: must be a whole number of at least 1",
                str(refused.exception),
            )
