"""Sending and the outbound queue, DKIM keys and submission look-ups: the store's contract,
written once and run on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime
import threading

from twisted.internet import defer, threads
from twisted.trial import unittest

from atollon_mail.store import accounts, domains, mailboxes, queue
from atollon_mail.store import filing as filing_ops
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.models import (
    QUEUE_STATES,
    Context,
    DkimKey,
    Mailbox,
    QueueMessage,
    QueueRecipient,
    utc_now,
)
from atollon_mail.store.records import (
    Delivery,
    DeliveryResult,
    DkimKeyRecord,
    IncomingMessage,
    Origin,
    OutgoingMessage,
    SendingIdentity,
    SubmittedMessage,
    UserRecord,
)
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

T0 = datetime.datetime(2030, 1, 1, 12, 0, 0)
SUBMISSION = Origin("submission")


def minutes(count: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=count)


def _queue_rows() -> list[tuple]:
    return builders.table_rows(
        QueueRecipient.address,
        QueueRecipient.domain,
        QueueRecipient.state,
        QueueRecipient.attempts,
        QueueRecipient.next_attempt_at,
        QueueRecipient.delay_warned,
    )


def _queue_messages() -> list[tuple]:
    return builders.table_rows(
        QueueMessage.message,
        QueueMessage.envelope_sender,
        QueueMessage.is_bounce,
        QueueMessage.origin_mailbox,
        QueueMessage.created_at,
    )


def _sent_context_id(mailbox_id: int) -> int | None:
    return Mailbox.get_by_id(mailbox_id).sent_context_id


def _context_names() -> list[str]:
    return [context.name for context in Context.select().order_by(Context.id)]


class QueueContractTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def populate(self) -> None:
        """example.com: bob (bob@, default; info@; old@, inactive) and carol (carol@)."""
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash-bob")
        self.sync(accounts.add_user, "carol", "hash-carol")
        self.bob = self.sync(mailboxes.add_mailbox, "bob@example.com", "bob")
        self.info = self.sync(
            mailboxes.add_mailbox, "info@example.com", "bob", identity="help.desk@example.com"
        )
        self.old = self.sync(mailboxes.add_mailbox, "old@example.com", "bob", active=False)
        self.carol = self.sync(mailboxes.add_mailbox, "carol@example.com", "carol")

    def recipient(self, local: str):
        return self.sync(filing_ops.resolve_recipient, local, "example.com")

    def outgoing(self, *remote: str, local=(), sent=None, raw=b"Subject: hi\r\n\r\nbody\r\n", **kw):
        return OutgoingMessage(
            envelope_sender=kw.pop("envelope_sender", "bob@example.com"),
            raw=raw,
            local_recipients=tuple(local),
            remote_recipients=tuple(remote),
            sent_mailbox_id=sent,
            **kw,
        )

    def submit(self, *messages: OutgoingMessage, now=T0) -> list:
        return self.sync(queue.submit_messages, [(m, SUBMISSION) for m in messages], now)

    def submit_one(self, *remote: str, now=T0, **kw) -> SubmittedMessage:
        [submitted] = self.submit(self.outgoing(*remote, **kw), now=now)
        self.assertIsInstance(submitted, SubmittedMessage)
        return submitted

    def claim(self, now, limit=100) -> list[Delivery]:
        return self.sync(queue.claim_due_deliveries, now, limit)

    def result(self, delivery, outcome, at, next_attempt_at=None, reply=None, server=None):
        return DeliveryResult(
            recipient_id=delivery.recipient_id,
            outcome=outcome,
            reply=reply or f"reply for {outcome}",
            server=server,
            at=at,
            next_attempt_at=next_attempt_at,
        )

    def states(self, queue_message_id: int) -> dict[str, str]:
        detail = self.sync(queue.queue_show, queue_message_id)
        return {r.entry.address: r.entry.state for r in detail.recipients}

    # -- submitting -------------------------------------------------------------------------

    def test_submit_files_locally_copies_to_sent_and_queues_remote(self):
        self.populate()
        message = self.outgoing(
            "Ann@Remote.Example",
            "Ann@remote.example.",  # the same address: its domain differs only in case
            "zed@other.example",
            local=[self.recipient("carol"), self.recipient("carol+tag")],
            sent=self.bob.id,
            subject="Hello",
            message_id="<1@example.com>",
        )
        [submitted] = self.submit(message)
        self.assertEqual(submitted.filings, 2)  # carol once, and bob's Sent copy
        self.assertEqual(submitted.queued_recipients, 2)
        self.assertIsNotNone(submitted.queue_message_id)
        self.assertEqual(self.sync(filing_ops.count_messages), 1)
        # Filed for carol: a final delivery, so stored with its Return-Path; it is sent on
        # without it.
        self.assertEqual(
            self.sync(filing_ops.message_raw, submitted.id),
            b"Return-Path: <bob@example.com>\r\n" + message.raw,
        )
        self.assertEqual(self.sync(queue.outgoing_raw, [submitted.id]), {submitted.id: message.raw})

        [to_carol] = self.sync(filing_ops.list_filings, "carol@example.com")
        self.assertEqual((to_carol.message.id, to_carol.uid, to_carol.flags), (submitted.id, 1, ()))
        self.assertEqual((to_carol.context.kind, to_carol.context.owner_login), ("todo", "carol"))
        [sent] = self.sync(filing_ops.list_filings, "bob@example.com")
        self.assertEqual((sent.message.id, sent.uid, sent.flags), (submitted.id, 1, ("\\Seen",)))
        self.assertEqual(
            (sent.context.kind, sent.context.name, sent.context.owner_login),
            ("folder", "Sent (bob@example.com)", "bob"),
        )
        self.assertEqual(sent.message.subject, "Hello")
        self.assertEqual(sent.message.envelope_sender, "bob@example.com")
        self.assertEqual(self.sync(_sent_context_id, self.bob.id), sent.context.id)

        self.assertEqual(
            self.sync(_queue_messages), [(submitted.id, "bob@example.com", False, self.bob.id, T0)]
        )
        self.assertEqual(
            self.sync(_queue_rows),
            [
                ("Ann@remote.example", "remote.example", "queued", 0, T0, False),
                ("zed@other.example", "other.example", "queued", 0, T0, False),
            ],
        )

    def test_sent_folder_is_made_once_and_reused(self):
        self.populate()
        self.submit_one("a@remote.example", sent=self.bob.id)
        self.submit(*(self.outgoing("b@remote.example", sent=self.bob.id) for _ in range(2)))
        # Mail received in between takes the next uid of the same counter.
        self.sync(
            filing_ops.store_messages,
            [IncomingMessage("x@remote.example", (self.recipient("bob"),), b"Subject: in\r\n\r\n")],
        )
        self.submit_one("c@remote.example", sent=self.bob.id)
        self.submit_one("d@remote.example", sent=self.info.id)
        names = self.sync(_context_names)
        self.assertEqual(names.count("Sent (bob@example.com)"), 1)
        self.assertEqual(names.count("Sent (info@example.com)"), 1)
        filings = self.sync(filing_ops.list_filings, "bob@example.com")
        self.assertEqual([f.uid for f in filings], [5, 4, 3, 2, 1])
        self.assertEqual(
            [f.context.name for f in filings if f.flags],
            ["Sent (bob@example.com)"] * 4,
        )
        [info] = self.sync(filing_ops.list_filings, "info@example.com")
        self.assertEqual((info.uid, info.context.name), (1, "Sent (info@example.com)"))

    def test_a_removed_sent_folder_is_made_again(self):
        self.populate()
        self.submit_one("a@remote.example", sent=self.bob.id)

        def forget_sent_folder():
            Mailbox.update(sent_context=None).where(Mailbox.id == self.bob.id).execute()

        self.sync(forget_sent_folder)
        self.submit_one("b@remote.example", sent=self.bob.id)
        self.assertEqual(self.sync(_context_names).count("Sent (bob@example.com)"), 2)
        contexts = {f.context.id for f in self.sync(filing_ops.list_filings, "bob@example.com")}
        self.assertEqual(len(contexts), 2)

    def test_nothing_is_queued_without_remote_recipients(self):
        self.populate()
        submitted = self.submit_one(local=[self.recipient("carol")], sent=self.bob.id)
        self.assertEqual(
            (submitted.queue_message_id, submitted.queued_recipients, submitted.filings),
            (None, 0, 2),
        )
        self.assertEqual(self.sync(_queue_messages), [])
        self.assertEqual(self.sync(queue.queue_counts), dict.fromkeys(QUEUE_STATES, 0))
        self.assertIsNone(self.sync(queue.next_due_at))

    def test_an_address_here_given_as_remote_is_filed_not_queued(self):
        """Whatever a producer passes as remote, an address of our own domains (any case,
        with a +tag) is filed at once; only the others reach the queue."""
        self.populate()
        message = self.outgoing("CAROL+news@Example.COM", "far@remote.example", sent=self.bob.id)
        [submitted] = self.submit(message)
        self.assertEqual((submitted.filings, submitted.queued_recipients), (2, 1))
        self.assertEqual(
            [r.mailbox_address for r in submitted.filed_recipients], ["carol@example.com"]
        )
        self.assertEqual(self.states(submitted.queue_message_id), {"far@remote.example": "queued"})
        [to_carol] = self.sync(filing_ops.list_filings, "carol@example.com")
        self.assertEqual((to_carol.message.id, to_carol.uid), (submitted.id, 1))
        self.assertEqual(
            self.sync(filing_ops.message_raw, submitted.id),
            b"Return-Path: <bob@example.com>\r\n" + message.raw,
        )
        self.assertEqual(
            to_carol.message.size, len(self.sync(filing_ops.message_raw, submitted.id))
        )

    def test_only_addresses_here_are_filed_and_nothing_queued(self):
        self.populate()
        submitted = self.submit_one("carol@example.com", "info@example.com")
        self.assertEqual((submitted.queue_message_id, submitted.filings), (None, 2))
        self.assertEqual(self.sync(_queue_messages), [])

    def test_an_address_here_that_receives_nothing_refuses_the_message(self):
        self.populate()
        for address, why in (
            ("nobody@example.com", "nobody@example.com is not an address here"),
            ("old@example.com", "old@example.com does not receive mail"),
        ):
            [refused] = self.submit(self.outgoing(address, "far@remote.example", sent=self.bob.id))
            self.assertIsInstance(refused, Invalid)
            self.assertEqual(str(refused), f"{why}; nothing was sent")
        self.assertEqual(self.sync(filing_ops.count_messages), 0)
        self.assertEqual(self.sync(_queue_messages), [])

    def test_a_bounce_to_an_address_here_is_filed_under_a_null_return_path(self):
        self.populate()
        raw = (
            b"Return-Path: <forged@elsewhere.example>\r\nSubject: Undelivered\r\n"
            b"return-path:\r\n <folded@elsewhere.example>\r\n\r\nReturn-Path: body text\r\n"
        )
        submitted = self.submit_one("bob@example.com", envelope_sender="", is_bounce=True, raw=raw)
        self.assertIsNone(submitted.queue_message_id)
        stored = self.sync(filing_ops.message_raw, submitted.id)
        self.assertEqual(
            stored,
            b"Return-Path: <>\r\nSubject: Undelivered\r\n\r\nReturn-Path: body text\r\n",
            "one Return-Path, the final delivery's; the body is left alone",
        )
        [filing] = self.sync(filing_ops.list_filings, "bob@example.com")
        self.assertEqual(filing.message.size, len(stored))

    def test_bounce_is_queued_with_the_null_sender(self):
        self.populate()
        submitted = self.submit_one(
            "sender@remote.example", envelope_sender="", is_bounce=True, subject="Undelivered"
        )
        self.assertEqual(submitted.filings, 0)
        detail = self.sync(queue.queue_show, submitted.queue_message_id)
        self.assertEqual((detail.envelope_sender, detail.is_bounce), ("", True))
        [delivery] = self.claim(T0)
        self.assertEqual((delivery.envelope_sender, delivery.is_bounce), ("", True))
        self.assertEqual(self.sync(_queue_messages)[0][3], None)  # no origin mailbox

    def test_failing_message_in_a_batch_fails_alone(self):
        self.populate()
        carol = self.recipient("carol")
        self.sync(lambda: Mailbox.delete().where(Mailbox.id == self.carol.id).execute())
        good1, bad_address, removed, empty, good2 = self.submit(
            self.outgoing("a@remote.example", sent=self.bob.id, raw=b"one"),
            self.outgoing("a@remote.example", "no-at-sign", sent=self.bob.id, raw=b"two"),
            self.outgoing("b@remote.example", local=[carol], sent=self.bob.id, raw=b"three"),
            self.outgoing(sent=self.bob.id, raw=b"four"),
            self.outgoing("c@remote.example", sent=self.bob.id, raw=b"five"),
        )
        self.assertIsInstance(bad_address, Invalid)
        self.assertIn("no-at-sign", str(bad_address))
        self.assertIsInstance(removed, NotFound)
        self.assertIsInstance(empty, Invalid)
        self.assertIsInstance(good1, SubmittedMessage)
        self.assertIsInstance(good2, SubmittedMessage)
        self.assertEqual(self.sync(filing_ops.count_messages), 2)
        # The failed messages' uids were given back: the Sent uids stay gap-free.
        filings = self.sync(filing_ops.list_filings, "bob@example.com")
        self.assertEqual([(f.uid, f.message.id) for f in filings], [(2, good2.id), (1, good1.id)])
        self.assertEqual(
            [row[0] for row in self.sync(_queue_rows)], ["a@remote.example", "c@remote.example"]
        )
        self.assertEqual(self.sync(filing_ops.message_raw, good2.id), b"five")

    def test_a_removed_sending_mailbox_fails_the_message(self):
        self.populate()
        [failed] = self.submit(self.outgoing("a@remote.example", sent=10**9))
        self.assertIsInstance(failed, NotFound)
        self.assertEqual((self.sync(filing_ops.count_messages), self.sync(_queue_rows)), (0, []))

    @defer.inlineCallbacks
    def test_concurrent_submissions_share_one_sent_folder(self):
        self.populate()
        count = 16
        results = yield defer.gatherResults(
            [
                self.store.run(
                    queue.submit_messages,
                    [
                        (
                            self.outgoing("a@remote.example", sent=self.info.id, raw=b"m%d" % n),
                            SUBMISSION,
                        )
                    ],
                    T0,
                )
                for n in range(count)
            ]
        )
        self.assertTrue(all(isinstance(r, SubmittedMessage) for [r] in results), results)
        self.assertEqual(self.sync(_context_names).count("Sent (info@example.com)"), 1)
        filings = self.sync(filing_ops.list_filings, "info@example.com", 1000)
        self.assertEqual(sorted(f.uid for f in filings), list(range(1, count + 1)))
        self.assertEqual(len({f.context.id for f in filings}), 1)

    # -- claiming ---------------------------------------------------------------------------

    def test_claim_respects_due_time_order_and_limit(self):
        self.populate()
        later = self.submit_one("later@remote.example", now=minutes(2))
        first = self.submit_one("first@remote.example", now=T0)
        middle = self.submit_one("middle@remote.example", now=minutes(1))
        self.assertEqual(self.claim(T0 - datetime.timedelta(seconds=1)), [])
        [claimed] = self.claim(minutes(1.5), limit=1)
        self.assertEqual(
            claimed,
            Delivery(
                recipient_id=claimed.recipient_id,
                queue_message_id=first.queue_message_id,
                message_id=first.id,
                envelope_sender="bob@example.com",
                address="first@remote.example",
                domain="remote.example",
                attempts=0,
                created_at=T0,
                is_bounce=False,
                delay_warned=False,
                origin=SUBMISSION,
            ),
        )
        self.assertEqual(self.states(first.queue_message_id), {"first@remote.example": "in-flight"})
        # In flight is not claimed again; what is due is, oldest first.
        self.assertEqual([d.address for d in self.claim(minutes(1.5))], ["middle@remote.example"])
        self.assertEqual(self.claim(minutes(1.5)), [])
        self.assertEqual([d.address for d in self.claim(minutes(2))], ["later@remote.example"])
        self.assertEqual(
            self.sync(queue.queue_counts),
            {"queued": 0, "in-flight": 3, "deferred": 0, "delivered": 0, "bounced": 0},
        )
        self.assertEqual(
            self.states(middle.queue_message_id), {"middle@remote.example": "in-flight"}
        )
        self.assertEqual(self.states(later.queue_message_id), {"later@remote.example": "in-flight"})

    def test_claim_orders_queued_and_deferred_together(self):
        self.populate()
        self.submit_one(*(f"d{n}@remote.example" for n in range(3)), now=T0)
        deferred = self.claim(T0)
        self.sync(
            queue.record_delivery_results,
            [
                self.result(d, "deferred", minutes(0), next_attempt_at=minutes(n * 2 + 1))
                for n, d in enumerate(deferred)
            ],
        )
        for n in range(3):
            self.submit_one(f"q{n}@remote.example", now=minutes(n * 2 + 2))
        # Due at 1 (d0), 2 (q0), 3 (d1), 4 (q1), 5 (d2), 6 (q2).
        claimed = self.claim(minutes(10), limit=4)
        self.assertEqual([d.address.split("@")[0] for d in claimed], ["d0", "q0", "d1", "q1"])
        self.assertEqual([d.attempts for d in claimed], [1, 0, 1, 0])
        self.assertEqual(
            [d.address.split("@")[0] for d in self.claim(minutes(10), limit=4)], ["d2", "q2"]
        )

    def test_claim_with_equal_due_times_goes_by_id_and_zero_limit_claims_nothing(self):
        self.populate()
        submitted = self.submit_one(*(f"r{n}@remote.example" for n in range(5)))
        self.assertEqual(self.claim(T0, limit=0), [])
        claimed = self.claim(T0, limit=3)
        self.assertEqual([d.address for d in claimed], [f"r{n}@remote.example" for n in range(3)])
        self.assertEqual(sorted(d.recipient_id for d in claimed), [d.recipient_id for d in claimed])
        self.assertEqual({d.queue_message_id for d in claimed}, {submitted.queue_message_id})

    @defer.inlineCallbacks
    def test_concurrent_claims_never_share_a_recipient(self):
        self.populate()
        self.submit(
            *(self.outgoing(*(f"r{m}-{n}@remote.example" for n in range(6))) for m in range(10))
        )
        runs = [self.store.run(queue.claim_due_deliveries, T0, 10) for _ in range(8)]
        claims = yield defer.gatherResults(runs)
        ids = [d.recipient_id for claim in claims for d in claim]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(len(ids), 60)
        # Each claim respects its limit; under contention one may come back a little short
        # (SKIP LOCKED skips rows another claimer holds), never over.
        self.assertTrue(all(len(claim) <= 10 for claim in claims), [len(c) for c in claims])
        self.assertEqual(self.sync(queue.queue_counts)["in-flight"], 60)

    # -- results and the timeline -----------------------------------------------------------

    def test_results_update_recipients_and_make_a_timeline(self):
        self.populate()
        submitted = self.submit_one(
            "ok@remote.example", "later@remote.example", "gone@remote.example", subject="Report"
        )
        ok, later, gone = self.claim(T0)
        self.sync(
            queue.record_delivery_results,
            [
                self.result(
                    ok,
                    "delivered",
                    minutes(1),
                    reply="250 2.0.0 queued as X",
                    server="mx.remote.example [192.0.2.1]:25",
                ),
                self.result(
                    later,
                    "deferred",
                    minutes(1),
                    next_attempt_at=minutes(11),
                    reply="451 4.7.1 try\r\n again later",
                    server="mx.remote.example",
                ),
                self.result(gone, "bounced", minutes(1), reply="550 5.1.1 no such user"),
            ],
        )
        detail = self.sync(queue.queue_show, submitted.queue_message_id)
        self.assertEqual((detail.subject, detail.message_id), ("Report", submitted.id))
        entries = {r.entry.address: r.entry for r in detail.recipients}
        self.assertEqual(
            [(e.state, e.attempts, e.next_attempt_at, e.last_reply) for e in entries.values()],
            [
                ("delivered", 1, T0, "250 2.0.0 queued as X"),
                ("deferred", 1, minutes(11), "451 4.7.1 try again later"),
                ("bounced", 1, T0, "550 5.1.1 no such user"),
            ],
        )
        events = {r.entry.address: r.events for r in detail.recipients}
        [event] = events["later@remote.example"]
        self.assertEqual(
            (event.at, event.server, event.reply, event.outcome, event.next_attempt_at),
            (minutes(1), "mx.remote.example", "451 4.7.1 try again later", "deferred", minutes(11)),
        )
        self.assertEqual(events["ok@remote.example"][0].server, "mx.remote.example [192.0.2.1]:25")
        self.assertIsNone(events["gone@remote.example"][0].next_attempt_at)
        # Not due before its time; then a second attempt extends the timeline.
        self.assertEqual(self.claim(minutes(10)), [])
        [again] = self.claim(minutes(11))
        self.assertEqual((again.address, again.attempts), ("later@remote.example", 1))
        self.sync(queue.record_delivery_results, [self.result(again, "delivered", minutes(12))])
        detail = self.sync(queue.queue_show, submitted.queue_message_id)
        later_detail = [r for r in detail.recipients if r.entry.address == "later@remote.example"]
        self.assertEqual(
            [(e.at, e.outcome) for e in later_detail[0].events],
            [(minutes(1), "deferred"), (minutes(12), "delivered")],
        )
        self.assertEqual(later_detail[0].entry.attempts, 2)
        self.assertEqual(
            self.sync(queue.queue_counts),
            {"queued": 0, "in-flight": 0, "deferred": 0, "delivered": 2, "bounced": 1},
        )

    def test_results_of_a_removed_recipient_are_skipped_and_the_others_written(self):
        self.populate()
        kept = self.submit_one("kept@remote.example")
        removed = self.submit_one("removed@remote.example", now=minutes(1))
        first, second = self.claim(minutes(1))
        self.assertEqual(second.queue_message_id, removed.queue_message_id)
        # Removed by hand once its attempt was over (an in-flight one cannot be).
        self.sync(
            queue.record_delivery_results,
            [self.result(second, "deferred", minutes(2), next_attempt_at=minutes(9))],
        )
        self.sync(queue.queue_delete, removed.queue_message_id)
        self.sync(
            queue.record_delivery_results,
            [
                self.result(second, "delivered", minutes(3)),
                self.result(first, "delivered", minutes(3), server="mx.remote.example"),
            ],
        )
        [recipient] = self.sync(queue.queue_show, kept.queue_message_id).recipients
        self.assertEqual((recipient.entry.state, recipient.entry.attempts), ("delivered", 1))
        self.assertEqual(
            [(e.at, e.outcome, e.server) for e in recipient.events],
            [(minutes(3), "delivered", "mx.remote.example")],
        )
        self.assertRaises(NotFound, self.sync, queue.queue_show, removed.queue_message_id)

    def test_bad_results_are_refused_whole(self):
        self.populate()
        self.submit_one("a@remote.example", "b@remote.example")
        first, second = self.claim(T0)
        for bad in (
            self.result(second, "lost", minutes(1)),
            self.result(second, "deferred", minutes(1)),  # no next attempt
        ):
            with self.subTest(outcome=bad.outcome):
                self.assertRaises(
                    Invalid,
                    self.sync,
                    queue.record_delivery_results,
                    [self.result(first, "delivered", minutes(1)), bad],
                )
        self.assertEqual(self.sync(queue.queue_counts)["in-flight"], 2)
        self.sync(queue.record_delivery_results, [])

    def test_long_server_names_and_replies_are_kept_short(self):
        self.populate()
        submitted = self.submit_one("a@remote.example")
        [delivery] = self.claim(T0)
        self.sync(
            queue.record_delivery_results,
            [self.result(delivery, "bounced", minutes(1), reply="5" * 10_000, server="m" * 400)],
        )
        [recipient] = self.sync(queue.queue_show, submitted.queue_message_id).recipients
        self.assertEqual(len(recipient.events[0].server), 300)
        self.assertLessEqual(len(recipient.entry.last_reply), 4000)

    def test_mark_delay_warned(self):
        self.populate()
        self.submit_one("a@remote.example", "b@remote.example")
        first, second = self.claim(T0)
        self.assertEqual(self.sync(queue.mark_delay_warned, [first.recipient_id]), 1)
        self.sync(
            queue.record_delivery_results,
            [
                self.result(d, "deferred", minutes(1), next_attempt_at=minutes(2))
                for d in (first, second)
            ],
        )
        again = {d.address: d.delay_warned for d in self.claim(minutes(2))}
        self.assertEqual(again, {"a@remote.example": True, "b@remote.example": False})
        self.assertEqual(self.sync(queue.mark_delay_warned, []), 0)

    def test_requeue_in_flight_after_a_restart(self):
        self.populate()
        submitted = self.submit_one("a@remote.example", "b@remote.example", "c@remote.example")
        claimed = self.claim(T0, limit=2)
        requeued = self.sync(queue.requeue_in_flight, minutes(5))
        # Neither dot was sent: both go back quietly, as if never claimed.
        self.assertEqual((requeued.quiet, requeued.uncertain), (2, ()))
        detail = self.sync(queue.queue_show, submitted.queue_message_id)
        self.assertEqual(
            [(r.entry.state, r.entry.attempts, r.entry.next_attempt_at) for r in detail.recipients],
            [("queued", 0, minutes(5)), ("queued", 0, minutes(5)), ("queued", 0, T0)],
        )
        self.assertEqual([r.events for r in detail.recipients], [(), (), ()])
        self.assertEqual([r.entry.uncertain for r in detail.recipients], [False] * 3)
        self.assertEqual(self.sync(queue.requeue_in_flight, minutes(6)).quiet, 0)
        self.assertEqual(
            [(d.address, d.attempts) for d in self.claim(minutes(5))],
            [("c@remote.example", 0), ("a@remote.example", 0), ("b@remote.example", 0)],
        )
        self.assertEqual([d.address for d in claimed], ["a@remote.example", "b@remote.example"])
        self.assertEqual(self.sync(queue.queue_list, uncertain=True), [])

    def test_only_recipients_whose_dot_was_sent_without_a_recorded_reply_are_uncertain(self):
        self.populate()
        submitted = self.submit_one(*(f"{name}@remote.example" for name in "abcd"))
        a, b, c, d = self.claim(T0)
        # a: dot sent, reply recorded. b: dot sent, no reply recorded (the kill).
        # c: claimed, its dot never sent. d: RCPT refused, recorded, no dot.
        self.assertEqual(self.sync(queue.mark_dots_sent, [a.recipient_id, b.recipient_id], T0), 2)
        self.sync(
            queue.record_delivery_results,
            [
                self.result(a, "delivered", minutes(1), reply="250 ok"),
                self.result(d, "bounced", minutes(1), reply="550 no such user"),
            ],
        )
        # A mark for a recipient no longer in flight changes nothing.
        self.assertEqual(self.sync(queue.mark_dots_sent, [a.recipient_id], minutes(1)), 0)
        requeued = self.sync(queue.requeue_in_flight, minutes(5))
        self.assertEqual((requeued.quiet, requeued.uncertain), (1, (b.recipient_id,)))
        detail = self.sync(queue.queue_show, submitted.queue_message_id)
        by_address = {r.entry.address: r for r in detail.recipients}
        self.assertEqual(
            {address: (r.entry.state, r.entry.uncertain) for address, r in by_address.items()},
            {
                "a@remote.example": ("delivered", False),
                "b@remote.example": ("queued", True),
                "c@remote.example": ("queued", False),
                "d@remote.example": ("bounced", False),
            },
        )
        uncertain = by_address["b@remote.example"]
        [event] = uncertain.events
        self.assertEqual(
            (event.at, event.outcome, event.next_attempt_at), (minutes(5), "uncertain", minutes(5))
        )
        self.assertIn("second copy", event.reply)
        # The attempt counts, and happened when its dot was sent.
        self.assertEqual(uncertain.entry.attempts, 1)
        self.assertEqual(uncertain.entry.last_reply, event.reply)
        self.assertEqual(by_address["c@remote.example"].events, ())
        self.assertEqual(
            [e.address for e in self.sync(queue.queue_list, uncertain=True)], ["b@remote.example"]
        )
        # Delivered on the retry: still listed, the first copy may have arrived too.
        [again_b, again_c] = self.claim(minutes(5))
        self.sync(queue.mark_dots_sent, [again_b.recipient_id, again_c.recipient_id], minutes(5))
        self.sync(
            queue.record_delivery_results,
            [self.result(x, "delivered", minutes(6)) for x in (again_b, again_c)],
        )
        self.assertEqual(self.sync(queue.requeue_in_flight, minutes(7)).uncertain, ())
        listed = self.sync(queue.queue_list, uncertain=True)
        self.assertEqual(
            [(e.address, e.state) for e in listed], [("b@remote.example", "delivered")]
        )
        self.assertEqual(self.sync(queue.queue_list, "delivered", uncertain=True), listed)
        self.assertEqual(self.sync(queue.queue_list, "queued", uncertain=True), [])

    def test_a_result_without_a_reply_after_the_dot_is_uncertain(self):
        self.populate()
        submitted = self.submit_one("a@remote.example", "b@remote.example")
        a, b = self.claim(T0)
        self.sync(queue.mark_dots_sent, [a.recipient_id, b.recipient_id], T0)
        lost = DeliveryResult(
            recipient_id=a.recipient_id,
            outcome="deferred",
            reply="connection lost before the reply to the end of data",
            server="mx [192.0.2.1]:25",
            at=minutes(1),
            next_attempt_at=minutes(6),
            uncertain=True,
        )
        self.sync(
            queue.record_delivery_results,
            [lost, self.result(b, "deferred", minutes(1), next_attempt_at=minutes(6))],
        )
        detail = self.sync(queue.queue_show, submitted.queue_message_id)
        self.assertEqual(
            [(r.entry.state, r.entry.uncertain, r.events[0].outcome) for r in detail.recipients],
            [("deferred", True, "uncertain"), ("deferred", False, "deferred")],
        )
        # Recorded outcomes clear the mark: a later restart finds nothing to doubt.
        self.assertEqual(
            self.sync(lambda: [r.dot_sent_at for r in QueueRecipient.select()]), [None, None]
        )
        self.assertEqual(
            [e.address for e in self.sync(queue.queue_list, uncertain=True)], ["a@remote.example"]
        )

    # -- reading the queue ------------------------------------------------------------------

    def test_next_due_at(self):
        self.assertIsNone(self.sync(queue.next_due_at))
        self.populate()
        self.submit_one("a@remote.example", now=minutes(3))
        self.submit_one("b@remote.example", now=minutes(7))
        self.assertEqual(self.sync(queue.next_due_at), minutes(3))
        [a] = self.claim(minutes(3))
        self.assertEqual(self.sync(queue.next_due_at), minutes(7))  # in flight is not waiting
        self.sync(
            queue.record_delivery_results,
            [self.result(a, "deferred", minutes(4), next_attempt_at=minutes(5))],
        )
        self.assertEqual(self.sync(queue.next_due_at), minutes(5))
        [a] = self.claim(minutes(5))
        self.sync(queue.record_delivery_results, [self.result(a, "delivered", minutes(5))])
        [b] = self.claim(minutes(7))
        self.assertIsNone(self.sync(queue.next_due_at))

    def test_queue_list_newest_first_with_filter_and_pages(self):
        self.populate()
        old = self.submit_one("a@remote.example", "b@remote.example", subject="Old", now=T0)
        new = self.submit_one("c@remote.example", subject="New", now=minutes(1))
        listed = self.sync(queue.queue_list)
        self.assertEqual(
            [(e.queue_message_id, e.address, e.subject) for e in listed],
            [
                (new.queue_message_id, "c@remote.example", "New"),
                (old.queue_message_id, "a@remote.example", "Old"),
                (old.queue_message_id, "b@remote.example", "Old"),
            ],
        )
        entry = listed[0]
        self.assertEqual(
            (entry.state, entry.attempts, entry.next_attempt_at, entry.last_reply),
            ("queued", 0, minutes(1), None),
        )
        self.assertEqual((entry.envelope_sender, entry.created_at), ("bob@example.com", minutes(1)))
        [a, _b] = self.claim(T0)
        self.sync(
            queue.record_delivery_results,
            [self.result(a, "deferred", minutes(2), next_attempt_at=minutes(9), reply="451 wait")],
        )
        [deferred] = self.sync(queue.queue_list, "deferred")
        self.assertEqual(
            (deferred.address, deferred.last_reply, deferred.next_attempt_at),
            ("a@remote.example", "451 wait", minutes(9)),
        )
        self.assertEqual(
            [e.address for e in self.sync(queue.queue_list, "in-flight")], ["b@remote.example"]
        )
        self.assertEqual(self.sync(queue.queue_list, "bounced"), [])
        self.assertEqual(
            [e.address for e in self.sync(queue.queue_list, None, 1, 1)], ["a@remote.example"]
        )
        self.assertRaises(Invalid, self.sync, queue.queue_list, "stuck")

    def test_queue_show_unknown(self):
        with self.assertRaises(NotFound) as raised:
            self.sync(queue.queue_show, 404)
        self.assertIn("see: queue list", str(raised.exception))

    def test_queue_show_details(self):
        self.populate()
        submitted = self.submit_one(
            "a@remote.example", subject="Hi", message_id="<x@example.com>", now=minutes(2)
        )
        detail = self.sync(queue.queue_show, submitted.queue_message_id)
        self.assertEqual(
            (detail.id, detail.message_id, detail.envelope_sender, detail.is_bounce),
            (submitted.queue_message_id, submitted.id, "bob@example.com", False),
        )
        self.assertEqual(
            (detail.created_at, detail.subject, detail.message_id_header),
            (minutes(2), "Hi", "<x@example.com>"),
        )
        [recipient] = detail.recipients
        self.assertEqual(recipient.entry, self.sync(queue.queue_list)[0])
        self.assertEqual(recipient.events, ())

    def test_queue_retry(self):
        self.populate()
        submitted = self.submit_one(*(f"{n}@remote.example" for n in "abcde"))
        other = self.submit_one("z@remote.example")
        a, b, c, d, _e, z = self.claim(T0)
        self.sync(
            queue.record_delivery_results,
            [
                self.result(a, "delivered", minutes(1)),
                self.result(b, "bounced", minutes(1)),
                self.result(c, "deferred", minutes(1), next_attempt_at=minutes(60)),
                self.result(z, "deferred", minutes(1), next_attempt_at=minutes(60)),
            ],
        )
        # d stays in flight; e is queued again (as after a restart), due later.
        self.sync(
            lambda: (
                QueueRecipient.update(state="queued", next_attempt_at=minutes(30))
                .where(QueueRecipient.id == _e.recipient_id)
                .execute()
            )
        )
        self.assertEqual(self.sync(queue.queue_retry, submitted.queue_message_id, minutes(2)), 2)
        self.assertEqual(
            self.states(submitted.queue_message_id),
            {
                "a@remote.example": "delivered",
                "b@remote.example": "bounced",
                "c@remote.example": "queued",
                "d@remote.example": "in-flight",
                "e@remote.example": "queued",
            },
        )
        self.assertEqual(
            [x.address for x in self.claim(minutes(2))], ["c@remote.example", "e@remote.example"]
        )
        self.assertEqual(self.states(other.queue_message_id), {"z@remote.example": "deferred"})
        self.assertEqual(self.sync(queue.queue_retry, submitted.queue_message_id, minutes(3)), 0)
        self.assertRaises(NotFound, self.sync, queue.queue_retry, 404, minutes(3))

    def test_queue_delete(self):
        self.populate()
        with_sent = self.submit_one("a@remote.example", "b@remote.example", sent=self.bob.id)
        without = self.submit_one("c@remote.example", raw=b"only queued")
        [a, _b] = self.claim(T0, limit=2)
        with self.assertRaises(Conflict) as raised:
            self.sync(queue.queue_delete, with_sent.queue_message_id)
        self.assertIn("being delivered", str(raised.exception))
        self.assertEqual(len(self.sync(queue.queue_show, with_sent.queue_message_id).recipients), 2)
        self.sync(
            queue.record_delivery_results,
            [
                self.result(a, "delivered", minutes(1)),
                self.result(_b, "deferred", minutes(1), next_attempt_at=minutes(5)),
            ],
        )
        self.assertEqual(self.sync(queue.queue_delete, with_sent.queue_message_id), 2)
        self.assertRaises(NotFound, self.sync, queue.queue_show, with_sent.queue_message_id)
        # Filed in bob's Sent folder: the message itself stays.
        self.assertEqual(
            self.sync(filing_ops.message_raw, with_sent.id), b"Subject: hi\r\n\r\nbody\r\n"
        )
        self.assertEqual(self.sync(queue.queue_delete, without.queue_message_id), 1)
        self.assertRaises(NotFound, self.sync, filing_ops.message_raw, without.id)
        self.assertEqual(self.sync(filing_ops.count_messages), 1)
        self.assertEqual(self.sync(queue.queue_counts), dict.fromkeys(QUEUE_STATES, 0))
        self.assertEqual(self.sync(queue.claim_due_deliveries, minutes(10), 10), [])
        self.assertRaises(NotFound, self.sync, queue.queue_delete, without.queue_message_id)

    def test_messages_raw(self):
        self.populate()
        first = self.submit_one("a@remote.example", raw=b"\xff first\r\n")
        second = self.submit_one("a@remote.example", raw=b"second")
        found = self.sync(filing_ops.messages_raw, [second.id, first.id, 10**9, first.id])
        self.assertEqual(found, {first.id: b"\xff first\r\n", second.id: b"second"})
        self.assertIs(type(found[first.id]), bytes)
        self.assertEqual(self.sync(filing_ops.messages_raw, []), {})

    # -- DKIM keys --------------------------------------------------------------------------

    def test_dkim_keys(self):
        self.sync(domains.add_domain, "example.com")
        self.sync(domains.add_domain, "other.example")
        first = self.sync(domains.add_dkim_key, "Example.com", "Atollon", "rsa", "PRIVATE1", "PUB1")
        self.assertEqual(
            first,
            DkimKeyRecord(
                domain="example.com",
                selector="atollon",
                algorithm="rsa",
                private_key="PRIVATE1",
                public_key="PUB1",
                active=True,
            ),
        )
        self.sync(domains.add_dkim_key, "example.com", "s2", "ed25519", "PRIVATE2", "PUB2")
        self.sync(domains.add_dkim_key, "other.example", "atollon", "ed25519", "PRIVATE3", "PUB3")
        self.assertEqual(
            [(k.domain, k.selector) for k in self.sync(domains.dkim_keys)],
            [("other.example", "atollon"), ("example.com", "s2"), ("example.com", "atollon")],
        )
        self.assertEqual(
            [k.selector for k in self.sync(domains.dkim_keys, "EXAMPLE.com")], ["s2", "atollon"]
        )
        self.assertEqual(self.sync(domains.dkim_keys, "not-ours.example"), [])
        self.sync(lambda: DkimKey.update(active=False).where(DkimKey.selector == "s2").execute())
        self.assertEqual(
            [k.selector for k in self.sync(domains.dkim_keys, "example.com")], ["atollon"]
        )

    def test_dkim_key_refusals(self):
        self.sync(domains.add_domain, "example.com")
        self.sync(domains.add_dkim_key, "example.com", "atollon", "rsa", "PRIVATE", "PUB")
        for args, error in (
            (("nowhere.example", "atollon", "rsa"), NotFound),
            (("example.com", "ATOLLON", "ed25519"), Conflict),
            (("example.com", "two.labels", "rsa"), Invalid),
            (("example.com", "-bad", "rsa"), Invalid),
            (("example.com", "", "rsa"), Invalid),
            (("example.com", "x" * 64, "rsa"), Invalid),
            (("example.com", "s2", "dsa"), Invalid),
        ):
            with self.subTest(args=args):
                self.assertRaises(error, self.sync, domains.add_dkim_key, *args, "PRIVATE", "PUB")
        self.assertRaises(
            Invalid, self.sync, domains.add_dkim_key, "example.com", "s3", "rsa", "", "P"
        )
        self.assertEqual(len(self.sync(domains.dkim_keys)), 1)

    # -- submission look-ups ----------------------------------------------------------------

    def test_sending_identities(self):
        self.populate()
        self.assertEqual(
            self.sync(mailboxes.sending_identities, "Bob"),
            (
                SendingIdentity(self.bob.id, "bob@example.com", "bob@example.com"),
                SendingIdentity(self.info.id, "info@example.com", "help.desk@example.com"),
            ),
        )
        self.assertEqual(
            self.sync(mailboxes.sending_identities, "carol"),
            (SendingIdentity(self.carol.id, "carol@example.com", "carol@example.com"),),
        )
        self.sync(mailboxes.set_mailbox_active, "info@example.com", False)
        self.assertEqual(
            [i.mailbox_address for i in self.sync(mailboxes.sending_identities, "bob")],
            ["bob@example.com"],
        )
        self.assertEqual(self.sync(mailboxes.sending_identities, "nobody"), ())

    def test_authenticate_lookup(self):
        self.populate()
        user, password_hash = self.sync(accounts.authenticate_lookup, " BOB ")
        self.assertEqual(user, UserRecord(id=user.id, login="bob", name="bob", is_admin=False))
        self.assertEqual(password_hash, "hash-bob")
        self.assertIsNone(self.sync(accounts.authenticate_lookup, "nobody"))
        self.assertIsNone(self.sync(accounts.authenticate_lookup, ""))

    @defer.inlineCallbacks
    def test_operations_through_run(self):
        self.populate()
        [submitted] = yield self.store.run(
            queue.submit_messages,
            [(self.outgoing("a@remote.example", sent=self.bob.id), SUBMISSION)],
        )
        identities = yield self.store.run(mailboxes.sending_identities, "bob")
        self.assertEqual(len(identities), 2)
        counts = yield self.store.run(queue.queue_counts)
        self.assertEqual(counts["queued"], 1)
        # Without `now`, a submission is due at once.
        due = yield self.store.run(queue.next_due_at)
        self.assertLessEqual(due, utc_now())
        claimed = yield self.store.run(queue.claim_due_deliveries, utc_now(), 10)
        self.assertEqual([d.queue_message_id for d in claimed], [submitted.queue_message_id])


class SqliteQueueTests(SqliteStoreMixin, QueueContractTests, unittest.TestCase):
    pass


class PostgresQueueTests(PostgresStoreMixin, QueueContractTests, unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_claim_skips_rows_another_claim_holds(self):
        # One claim holds its rows in an open transaction; another, meanwhile, gets the
        # next rows at once instead of waiting for them or taking them too.
        self.populate()
        self.submit_one(*(f"r{n}@remote.example" for n in range(6)))
        holding, release = threading.Event(), threading.Event()

        def claim_and_hold():
            claimed = queue.claim_due_deliveries(T0, 3)
            holding.set()
            if not release.wait(30):
                raise RuntimeError("never released")
            return claimed

        held = self.store.run(claim_and_hold)
        self.assertTrue((yield threads.deferToThread(holding.wait, 30)))
        try:
            other = yield threads.deferToThread(
                self.store.run_sync, queue.claim_due_deliveries, T0, 10
            )
        finally:
            release.set()
        first = yield held
        self.assertEqual([d.address for d in first], [f"r{n}@remote.example" for n in range(3)])
        self.assertEqual([d.address for d in other], [f"r{n}@remote.example" for n in range(3, 6)])
