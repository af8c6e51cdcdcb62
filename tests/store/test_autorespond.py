"""Auto-respond in the store, written once and run on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime
import threading

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from atollon_mail.store import accounts, aliases, domains
from atollon_mail.store import autorespond as ar
from atollon_mail.store import mailboxes as m
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.models import AutoresponseLog, Mailbox
from atollon_mail.store.records import AutoreplyPlan, AutoresponderRecord
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

T0 = datetime.datetime(2030, 7, 1, 12, 0, 0)
DAY = datetime.timedelta(days=1)


class AutorespondContractTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash")
        self.bob = self.sync(m.add_mailbox, "bob@example.com", "bob", identity="Bob@Example.com")
        self.sync(aliases.add_alias, "sales@example.com", "bob@example.com")
        self.sync(accounts.add_user, "carol", "hash")
        self.carol = self.sync(m.add_mailbox, "carol@example.com", "carol")

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def turn_on(self, address="bob@example.com", **settings):
        settings.setdefault("body", "Away until Monday.")
        return self.sync(ar.set_autoresponder, address, True, **settings)

    def claim(self, correspondent="ann@remote.test", now=T0, mailbox=None, **kwargs):
        mailbox_id = (mailbox or self.bob).id
        return self.sync(ar.claim_autoreply, mailbox_id, correspondent, now, **kwargs)

    # -- settings -------------------------------------------------------------------------

    def test_none_until_set(self):
        self.assertIsNone(self.sync(ar.get_autoresponder, "bob@example.com"))
        self.assertIsNone(self.claim())

    def test_set_and_get_with_defaults(self):
        record = self.turn_on("Bob@EXAMPLE.com")
        self.assertIsInstance(record, AutoresponderRecord)
        self.assertEqual(
            (record.mailbox_address, record.enabled, record.subject, record.body),
            ("bob@example.com", True, ar.DEFAULT_SUBJECT, "Away until Monday."),
        )
        self.assertEqual((record.starts_at, record.ends_at, record.interval_days), (None, None, 7))
        self.assertEqual(self.sync(ar.get_autoresponder, "bob@example.com"), record)
        self.assertEqual(self.sync(ar.responding_mailbox_ids), frozenset({self.bob.id}))

    def test_update_keeps_what_is_not_given(self):
        self.turn_on(
            subject="On holiday",
            starts_at=T0,
            ends_at=T0 + 10 * DAY,
            interval_days=3,
        )
        off = self.sync(ar.set_autoresponder, "bob@example.com", False)
        self.assertEqual(
            (off.enabled, off.subject, off.body, off.starts_at, off.ends_at, off.interval_days),
            (False, "On holiday", "Away until Monday.", T0, T0 + 10 * DAY, 3),
        )
        self.assertEqual(self.sync(ar.responding_mailbox_ids), frozenset())
        on = self.sync(ar.set_autoresponder, "bob@example.com", True, ends_at=ar.CLEAR)
        self.assertEqual((on.enabled, on.starts_at, on.ends_at), (True, T0, None))
        # Still one row per mailbox.
        self.assertEqual(self.sync(ar.get_autoresponder, "bob@example.com"), on)

    def test_aware_times_are_stored_as_utc(self):
        plus_two = datetime.timezone(datetime.timedelta(hours=2))
        record = self.turn_on(starts_at=datetime.datetime(2030, 7, 1, 14, 0, tzinfo=plus_two))
        self.assertEqual(record.starts_at, T0)

    def test_validation(self):
        for settings, message in (
            ({"body": "   \n"}, "needs the text of its reply"),
            ({"subject": ""}, "cannot be empty"),
            ({"subject": "two\r\nBcc: victim@example.org"}, "one line"),
            ({"subject": "x" * 999}, "longer than 998"),
            ({"interval_days": 0}, "1 to 365 days"),
            ({"interval_days": -3}, "1 to 365 days"),
            ({"interval_days": 366}, "1 to 365 days"),
            ({"interval_days": True}, "whole number of days"),
            ({"starts_at": T0, "ends_at": T0}, "must come after the start"),
            ({"starts_at": T0, "ends_at": T0 - DAY}, "must come after the start"),
            ({"starts_at": "tomorrow"}, "must be a date and time"),
        ):
            with self.assertRaises(Invalid) as refused:
                self.turn_on(**settings)
            self.assertIn(message, str(refused.exception), settings)
        self.assertIsNone(self.sync(ar.get_autoresponder, "bob@example.com"))
        # Turning on with no body at all (first time, no --body-file) is refused too.
        self.assertRaises(Invalid, self.sync, ar.set_autoresponder, "bob@example.com", True)
        # Off needs no body: a responder can be prepared before it is turned on.
        off = self.sync(ar.set_autoresponder, "bob@example.com", False, subject="Later")
        self.assertEqual((off.enabled, off.body), (False, ""))
        # An end before an already stored start is refused as well.
        self.turn_on(starts_at=T0)
        with self.assertRaises(Invalid):
            self.turn_on(ends_at=T0 - DAY)
        self.assertEqual(self.sync(ar.get_autoresponder, "bob@example.com").ends_at, None)

    def test_unknown_mailbox(self):
        self.assertRaises(NotFound, self.turn_on, "nobody@example.com")
        self.assertRaises(NotFound, self.sync, ar.get_autoresponder, "nobody@example.com")

    # -- claiming -------------------------------------------------------------------------

    def test_claim_returns_what_to_send(self):
        self.turn_on(subject="On holiday")
        plan = self.claim("Ann@Remote.TEST")
        self.assertEqual(
            plan,
            AutoreplyPlan(
                mailbox_id=self.bob.id,
                mailbox_address="bob@example.com",
                identity="Bob@example.com",
                correspondent="ann@remote.test",
                subject="On holiday",
                body="Away until Monday.",
            ),
        )

    def test_claim_only_when_on(self):
        self.sync(ar.set_autoresponder, "bob@example.com", False, body="Away.")
        self.assertIsNone(self.claim())
        self.turn_on()
        self.assertIsNotNone(self.claim())

    def test_claim_within_the_window_only(self):
        self.turn_on(starts_at=T0, ends_at=T0 + 2 * DAY)
        self.assertIsNone(self.claim("early@remote.test", T0 - datetime.timedelta(seconds=1)))
        self.assertIsNotNone(self.claim("first@remote.test", T0))
        self.assertIsNotNone(self.claim("last@remote.test", T0 + 2 * DAY - DAY / 86400))
        self.assertIsNone(self.claim("late@remote.test", T0 + 2 * DAY))
        # Nothing was recorded for the claims outside the window.
        self.assertIsNotNone(self.claim("early@remote.test", T0 + DAY))
        self.assertIsNotNone(self.claim("late@remote.test", T0 + DAY))

    def test_once_per_interval_per_correspondent_ignoring_case(self):
        self.turn_on(interval_days=2)
        self.assertIsNotNone(self.claim("ann@remote.test", T0))
        self.assertIsNone(self.claim("ANN@Remote.Test", T0 + DAY))
        self.assertIsNone(self.claim("<ann@remote.test>", T0 + 2 * DAY - DAY / 86400))
        # Another correspondent, or another mailbox, has its own count.
        self.assertIsNotNone(self.claim("dan@remote.test", T0 + DAY))
        self.turn_on("carol@example.com")
        self.assertIsNotNone(self.claim("ann@remote.test", T0, mailbox=self.carol))
        # After the interval, one more reply; its time is the new start of the interval.
        self.assertIsNotNone(self.claim("ann@remote.test", T0 + 2 * DAY))
        self.assertIsNone(self.claim("ann@remote.test", T0 + 3 * DAY))
        self.assertIsNotNone(self.claim("ann@remote.test", T0 + 4 * DAY))
        logged = self.sync(
            lambda: [
                (row.correspondent, row.sent_at)
                for row in AutoresponseLog.select()
                .where(AutoresponseLog.mailbox == self.bob.id)
                .order_by(AutoresponseLog.correspondent)
            ]
        )
        self.assertEqual(logged, [("ann@remote.test", T0 + 4 * DAY), ("dan@remote.test", T0 + DAY)])

    def test_interval_of_one_day_is_the_minimum(self):
        self.turn_on(interval_days=1)
        self.assertIsNotNone(self.claim("ann@remote.test", T0))
        self.assertIsNone(self.claim("ann@remote.test", T0 + DAY - DAY / 86400))
        self.assertIsNotNone(self.claim("ann@remote.test", T0 + DAY))

    def test_no_claim_for_the_mailbox_itself(self):
        self.turn_on()
        for own in ("bob@example.com", "BOB@example.com", "sales@example.com", "bob+x@example.com"):
            self.assertIsNone(self.claim(own), own)

    def test_addressed_to_the_mailbox(self):
        self.turn_on()
        self.assertIsNone(self.claim("a@remote.test", addressed_to=[]))
        self.assertIsNone(self.claim("b@remote.test", addressed_to=["carol@example.com"]))
        self.assertIsNotNone(self.claim("c@remote.test", addressed_to=["Bob@Example.COM"]))
        self.assertIsNotNone(self.claim("d@remote.test", addressed_to=["sales@example.com"]))
        self.assertIsNotNone(self.claim("e@remote.test", addressed_to=["bob+news@example.com"]))
        self.assertIsNotNone(self.claim("f@remote.test", addressed_to=["bob@example.com"]))
        # The refused ones were not recorded.
        self.assertIsNotNone(self.claim("a@remote.test"))

    def test_addressed_to_the_identity_in_another_domain(self):
        self.sync(domains.add_domain, "crm.example.net")
        self.sync(m.add_mailbox, "desk@crm.example.net", "carol", identity="desk@example.com")
        self.turn_on("desk@crm.example.net")
        desk = self.sync(m.get_mailbox, "desk@crm.example.net")
        plan = self.claim(mailbox=desk, addressed_to=["desk@example.com"])
        self.assertEqual(plan.identity, "desk@example.com")

    def test_an_identity_the_rule_refuses_now_is_not_used(self):
        self.turn_on("carol@example.com")
        # Stored before the rule (not approved, not its own): the reply is from its address.
        self.sync(
            lambda: (
                Mailbox.update(identity="ceo@bank.example", identity_approved=False)
                .where(Mailbox.id == self.carol.id)
                .execute()
            )
        )
        plan = self.claim("ann@remote.test", mailbox=self.carol)
        self.assertEqual(plan.identity, "carol@example.com")
        # Approved by an administrator, then another mailbox's address: the same.
        self.sync(m.update_mailbox, "carol@example.com", identity="desk@example.org")
        self.assertEqual(
            self.claim("dan@remote.test", mailbox=self.carol).identity, "desk@example.org"
        )
        self.sync(domains.add_domain, "example.org")
        self.sync(m.add_mailbox, "desk@example.org", "bob")
        plan = self.claim("eve@remote.test", mailbox=self.carol)
        self.assertEqual(plan.identity, "carol@example.com")

    def test_no_claim_for_an_inactive_mailbox(self):
        self.turn_on()
        self.sync(m.set_mailbox_active, "bob@example.com", False)
        self.assertIsNone(self.claim())

    @defer.inlineCallbacks
    def test_concurrent_claims_give_exactly_one_plan(self):
        self.turn_on()
        claims = [
            self.store.run(
                ar.claim_autoreply, self.bob.id, sender, T0 + n * datetime.timedelta(0, 1)
            )
            for n, sender in enumerate(["ann@remote.test", "ANN@remote.test"] * 6)
        ]
        results = yield defer.gatherResults(claims)
        self.assertEqual(len([plan for plan in results if plan is not None]), 1, results)

    @defer.inlineCallbacks
    def test_a_claim_waits_for_a_concurrent_one_to_commit(self):
        # The correspondent's row exists, so the unique index cannot settle this race:
        # a second claim made while the first is still open must see its reply.
        self.turn_on(interval_days=1)
        self.assertIsNotNone(self.claim("ann@remote.test", T0))
        later = T0 + 2 * DAY
        claimed, release = threading.Event(), threading.Event()

        def claim_and_hold():
            plan = ar.claim_autoreply(self.bob.id, "ann@remote.test", later)
            claimed.set()
            release.wait(10)
            return plan

        first = self.store.run(claim_and_hold)
        yield threads.deferToThread(claimed.wait, 10)
        second = self.store.run(ar.claim_autoreply, self.bob.id, "ANN@remote.test", later)
        yield task.deferLater(reactor, 0.3, lambda: None)  # the second is under way
        release.set()
        results = yield defer.gatherResults([first, second])
        self.assertIsNotNone(results[0])
        self.assertIsNone(results[1])

    @defer.inlineCallbacks
    def test_concurrent_claims_for_several_correspondents(self):
        self.turn_on()
        senders = [f"s{n % 4}@remote.test" for n in range(16)]
        results = yield defer.gatherResults(
            [self.store.run(ar.claim_autoreply, self.bob.id, s, T0) for s in senders]
        )
        won = sorted(plan.correspondent for plan in results if plan is not None)
        self.assertEqual(won, [f"s{n}@remote.test" for n in range(4)])


class SqliteAutorespondTests(SqliteStoreMixin, AutorespondContractTests, unittest.TestCase):
    pass


class PostgresAutorespondTests(PostgresStoreMixin, AutorespondContractTests, unittest.TestCase):
    def test_several_store_threads(self):
        # The concurrency tests above only race on PostgreSQL if claims run side by side.
        self.assertGreater(self.store._pool.max, 1)
