"""Intake: group commit, the promise that a message is acknowledged only once committed."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from atollon_mail.delivery.intake import (
    DOMAIN_CACHE_SECONDS,
    Intake,
    SubmissionIntake,
    summarize_headers,
)
from atollon_mail.events import Events
from atollon_mail.interfaces import IMailIntake, IStore, ISubmissionIntake
from atollon_mail.passwords import hash_password
from atollon_mail.store import domains
from atollon_mail.store import filing as filing_ops
from atollon_mail.store.records import (
    Origin,
    OutgoingMessage,
    Recipient,
    Resolution,
    StoredMessage,
)
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

RAW = b"From: a@example.org\r\nSubject: hello\r\nMessage-ID: <1@example.org>\r\n\r\nbody\r\n"
RECIPIENT = Recipient(address="joe@acme.test", mailbox_id=1, mailbox_address="joe@acme.test")


@implementer(IStore)
class ControlledStore:
    """A store whose operations complete only when the test says so."""

    database = None

    def __init__(self):
        self.calls: list[tuple[object, tuple, defer.Deferred]] = []

    def run(self, operation, *args, **kwargs):
        finished = defer.Deferred()
        self.calls.append((operation, args, finished))
        return finished

    def run_sync(self, operation, *args, **kwargs):
        raise AssertionError("the intake must not block on the store")


class GroupCommitTests(unittest.TestCase):
    def setUp(self):
        self.store = ControlledStore()
        self.intake = Intake(self.store)

    def test_provides_interface(self):
        verifyObject(IMailIntake, self.intake)

    def test_submission_intake_provides_its_interface(self):
        self.assertTrue(verifyObject(ISubmissionIntake, SubmissionIntake(self.store, self.intake)))

    def test_acknowledged_only_after_commit(self):
        stored = self.intake.accept("a@example.org", [RECIPIENT], RAW)
        results = []
        stored.addCallback(results.append)
        self.assertEqual(results, [])
        operation, (batch,), commit = self.store.calls[0]
        self.assertIs(operation, filing_ops.store_messages)
        self.assertEqual(len(batch), 1)
        commit.callback([StoredMessage(id=7, filings=1)])
        self.assertEqual(results, [StoredMessage(id=7, filings=1)])

    def test_the_search_text_is_taken_before_the_store_operation(self):
        self.intake.accept("a@example.org", [RECIPIENT], RAW)
        self.intake.submit(
            OutgoingMessage(envelope_sender="", raw=RAW, remote_recipients=("x@example.org",)),
            Origin("relay"),
        )
        (_, (incoming,), _), (_, (queued,), _) = [
            (operation, batch, commit) for operation, (batch,), commit in self.store.calls
        ]
        self.assertEqual(incoming.search_text.subject, "hello")
        self.assertIn("body", incoming.search_text.body)
        # Mail only queued for elsewhere is never searched here: nothing taken.
        outgoing, _ = queued
        self.assertIsNone(outgoing.search_text)

    def test_messages_arriving_during_a_commit_share_the_next_one(self):
        first = self.intake.accept("a@example.org", [RECIPIENT], RAW)
        later = [self.intake.accept("b@example.org", [RECIPIENT], RAW) for _ in range(3)]
        self.assertEqual(len(self.store.calls), 1, "one transaction at a time on SQLite")
        self.store.calls[0][2].callback([StoredMessage(id=1, filings=1)])
        self.assertEqual(len(self.store.calls), 2)
        (_, (batch,), commit) = self.store.calls[1]
        self.assertEqual([incoming.envelope_sender for incoming in batch], ["b@example.org"] * 3)
        commit.callback([StoredMessage(id=i, filings=1) for i in (2, 3, 4)])
        self.assertEqual(self.successResultOf(first).id, 1)
        self.assertEqual([self.successResultOf(d).id for d in later], [2, 3, 4])

    def test_failed_transaction_fails_every_message_in_it(self):
        waiting = [self.intake.accept("a@example.org", [RECIPIENT], RAW) for _ in range(2)]
        self.store.calls[0][2].errback(RuntimeError("disk full"))
        self.failureResultOf(waiting[0], RuntimeError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # The second message went in its own (next) batch; it must still be written.
        self.assertEqual(len(self.store.calls), 2)
        self.store.calls[1][2].callback([StoredMessage(id=9, filings=1)])
        self.assertEqual(self.successResultOf(waiting[1]).id, 9)

    def test_one_bad_message_fails_alone(self):
        self.intake.accept("a@example.org", [RECIPIENT], RAW)
        pair = [self.intake.accept("b@example.org", [RECIPIENT], RAW) for _ in range(2)]
        self.store.calls[0][2].callback([StoredMessage(id=1, filings=1)])
        self.store.calls[1][2].callback([ValueError("mailbox removed"), StoredMessage(2, 1)])
        self.failureResultOf(pair[0], ValueError)
        self.assertEqual(self.successResultOf(pair[1]).id, 2)
        self.flushLoggedErrors(ValueError)

    def test_batches_are_bounded(self):
        for _ in range(600):
            self.intake.accept("a@example.org", [RECIPIENT], RAW)
        self.store.calls[0][2].callback([StoredMessage(id=0, filings=1)])
        (_, (batch,), _) = self.store.calls[1]
        self.assertEqual(len(batch), 256)


class DomainCacheTests(unittest.TestCase):
    """With a clock, someone else's domain is answered from a short-lived cache."""

    def setUp(self):
        self.store = ControlledStore()
        self.clock = Clock()
        self.intake = Intake(self.store, clock=self.clock)

    def load_domains(self, *names):
        [loading] = [d for op, _, d in self.store.calls if op is domains.domain_names]
        loading.callback(frozenset(names))

    def test_other_domains_cost_no_query_once_the_list_is_loaded(self):
        self.intake.resolve_recipient("bob", "remote.example")  # loads the list meanwhile
        self.load_domains("acme.test")
        calls = len(self.store.calls)
        rejection = self.successResultOf(self.intake.resolve_recipient("bob", "Remote.Example."))
        self.assertEqual(rejection.reason, "unknown-domain")
        self.assertEqual(len(self.store.calls), calls, "answered from the cache")
        self.intake.resolve_recipient("joe", "ACME.test")
        self.assertIs(
            self.store.calls[-1][0], filing_ops.resolve_recipient, "ours: asked the store"
        )

    def test_a_foreign_recipient_is_classified_at_once_without_a_deferred(self):
        self.load_domains_via_lookup()
        resolution = self.intake.lookup_recipient("bob", "Remote.Example.")
        self.assertIsInstance(resolution, Resolution)
        self.assertEqual(resolution.kind, "foreign")
        ours = self.intake.lookup_recipient("joe", "acme.test")
        self.assertIsInstance(ours, Deferred, "ours: asked the store")

    def load_domains_via_lookup(self):
        self.assertIsInstance(self.intake.lookup_recipient("bob", "remote.example"), Deferred)
        self.load_domains("acme.test")

    def test_a_new_domain_is_seen_once_the_cache_is_stale(self):
        self.intake.resolve_recipient("bob", "new.example")
        self.load_domains("acme.test")
        self.clock.advance(DOMAIN_CACHE_SECONDS)
        self.intake.resolve_recipient("bob", "new.example")  # stale: store lookup and reload
        self.assertIs(self.store.calls[-2][0], domains.domain_names)
        self.assertIs(self.store.calls[-1][0], filing_ops.resolve_recipient)
        self.store.calls[-2][2].callback(frozenset({"acme.test", "new.example"}))
        self.intake.resolve_recipient("bob", "new.example")
        self.assertIs(self.store.calls[-1][0], filing_ops.resolve_recipient)


class HeaderSummaryTests(unittest.TestCase):
    def test_fields_are_decoded(self):
        raw = (
            b"From: =?utf-8?q?J=C3=B3zef?= <jozef@example.org>\r\n"
            b"Subject: =?utf-8?b?xb5sdcWlb3XEjWvDvQ==?=\r\n"
            b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
            b"Message-ID: <abc@example.org>\r\n\r\nbody\r\n"
        )
        summary = summarize_headers(raw)
        self.assertEqual(summary["subject"], "žluťoučký")
        self.assertEqual(summary["from_header"], "Józef <jozef@example.org>")
        self.assertEqual(summary["message_id"], "<abc@example.org>")
        self.assertEqual(summary["date_header"], "Sat, 21 Nov 2026 10:00:00 +0000")

    def test_folded_fields_are_unfolded_and_the_first_occurrence_wins(self):
        raw = (
            b"Subject: a long\r\n\tsubject line\r\nsubject: second\r\n"
            b"X-Subject: not this\r\n\r\nSubject: in the body\r\n"
        )
        self.assertEqual(summarize_headers(raw)["subject"], "a long subject line")

    def test_body_only_message_has_no_fields(self):
        summary = summarize_headers(b"\r\nSubject: body text, not a header\r\n")
        self.assertEqual(set(summary.values()), {None})

    def test_missing_and_broken_headers_do_not_stop_storage(self):
        summary = summarize_headers(b"X-Garbage: \xff\xfe\r\nSubject\r\n\r\nbody")
        self.assertIsNone(summary["message_id"])
        self.assertIsNone(summary["from_header"])


class IntakeOnStoreTests(StoreFixtureMixin):
    """The intake against a real store: resolution and durable, filed messages."""

    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(self.store, "joe@acme.test", "joe", hash_password("secret"))
        self.events = Events()
        self.intake = Intake(self.store, self.events)

    @defer.inlineCallbacks
    def test_many_concurrent_messages_are_all_stored_and_filed(self):
        recipient = yield self.intake.resolve_recipient("Joe+News", "ACME.test")
        self.assertEqual(recipient.mailbox_address, "joe@acme.test")
        stored = yield defer.gatherResults(
            [self.intake.accept("a@example.org", [recipient], RAW) for _ in range(50)]
        )
        self.assertEqual(len({message.id for message in stored}), 50)
        filings = yield self.store.run(filing_ops.list_filings, "joe@acme.test", 100)
        self.assertEqual(sorted(filing.uid for filing in filings), list(range(1, 51)))
        self.assertEqual(filings[0].message.subject, "hello")

    @defer.inlineCallbacks
    def test_received_mail_is_filed_under_one_return_path(self):
        recipient = yield self.intake.resolve_recipient("joe", "acme.test")
        stored = yield self.intake.accept(
            "a@example.org", [recipient], b"Return-Path: <b@example.org>\r\n" + RAW
        )
        raw = yield self.store.run(filing_ops.message_raw, stored.id)
        self.assertEqual(raw, b"Return-Path: <a@example.org>\r\n" + RAW)

    @defer.inlineCallbacks
    def test_submitted_mail_for_addresses_here_is_filed_and_heard_of(self):
        """A producer that names local addresses as remote ones (as the campaign sender
        and old callers do) still gets them filed; the filing listeners hear of them."""
        heard = []
        self.events.filed.subscribe(
            lambda sender, recipients, raw, junk: heard.append(
                (sender, [r.mailbox_address for r in recipients])
            )
        )
        queued = []
        self.events.queued.subscribe(lambda: queued.append(True))
        submitted = yield self.intake.submit(
            OutgoingMessage(envelope_sender="", raw=RAW, remote_recipients=("JOE@acme.test",)),
            Origin("bounce"),
        )
        self.assertEqual((submitted.queue_message_id, submitted.filings), (None, 1))
        self.assertEqual(heard, [("", ["joe@acme.test"])])
        self.assertEqual(queued, [], "nothing queued: the runner is not woken")
        [filing] = yield self.store.run(filing_ops.list_filings, "joe@acme.test")
        raw = yield self.store.run(filing_ops.message_raw, filing.message.id)
        self.assertEqual(raw, b"Return-Path: <>\r\n" + RAW)


class SqliteIntakeTests(SqliteStoreMixin, IntakeOnStoreTests, unittest.TestCase):
    pass


class PostgresIntakeTests(PostgresStoreMixin, IntakeOnStoreTests, unittest.TestCase):
    pass
