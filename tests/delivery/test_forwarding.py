"""Forwarding through the intake: real store, real Intake, and the SMTP server over a
StringTransport where the reply on the wire matters (loops, bounces to SRS addresses)."""

from __future__ import annotations

import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from zope.interface import implementer

from atollon_mail.delivery.intake import ForwardingLoop, Intake
from atollon_mail.delivery.runner import send_notification
from atollon_mail.delivery.srs import SRS
from atollon_mail.events import Events
from atollon_mail.interfaces import IStore
from atollon_mail.passwords import hash_password
from atollon_mail.store import filing, forwarding, mailboxes
from atollon_mail.store import queue as queue_ops
from atollon_mail.store.records import (
    Origin,
    OutgoingMessage,
    Recipient,
    Rejection,
    Resolution,
)
from tests import builders
from tests.smtp.fakes import Session
from tests.store.test_forwarding import JOES_MAILBOXES
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

SECRET = b"forwarding test secret"
DAY = 86400
RAW = (
    b"From: Someone <someone@elsewhere.test>\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <1@elsewhere.test>\r\n"
    b"\r\n"
    b"body\r\n"
)


@implementer(IStore)
class CountingStore:
    """The real store, with every operation the intake runs on it recorded."""

    def __init__(self, store):
        self._store = store
        self.database = store.database
        self.operations: list = []

    def run(self, operation, *args, **kwargs):
        self.operations.append(operation)
        return self._store.run(operation, *args, **kwargs)

    def run_sync(self, operation, *args, **kwargs):
        return self._store.run_sync(operation, *args, **kwargs)


class FakeTime:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class ForwardingIntakeTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailboxes(self.store, JOES_MAILBOXES, "joe", hash_password("x"))
        self.counting = CountingStore(self.store)
        self.time = FakeTime()
        self.srs = SRS(SECRET, clock=self.time)
        events = Events()
        self.queued = []
        events.queued.subscribe(lambda: self.queued.append(True))
        self.filed = []
        events.filed.subscribe(
            lambda sender, recipients, raw, junk: self.filed.append(
                (sender, tuple(r.mailbox_address for r in recipients))
            )
        )
        self.intake = Intake(self.counting, events, srs=self.srs)

    # -- helpers ---------------------------------------------------------------------------

    def forward(self, mailbox: str, *targets: str, keep_copy: bool = True) -> None:
        self.store.run_sync(
            forwarding.change_forwarding, mailbox, add=targets, enabled=True, keep_copy=keep_copy
        )

    @defer.inlineCallbacks
    def deliver(self, sender: str, *addresses: str, raw: bytes = RAW):
        recipients = []
        for address in addresses:
            local, _, domain = address.rpartition("@")
            found = yield self.intake.resolve_recipient(local, domain)
            self.assertNotIsInstance(found, Rejection)
            recipients.append(found)
        stored = yield self.intake.accept(sender, recipients, raw)
        return stored

    def filings(self, address: str) -> list:
        return self.store.run_sync(filing.list_filings, address)

    def raw(self, message_id: int) -> bytes:
        return self.store.run_sync(filing.message_raw, message_id)

    def outgoing_raw(self, message_id: int) -> bytes:
        return self.store.run_sync(queue_ops.outgoing_raw, [message_id])[message_id]

    def queue(self) -> list:
        return sorted(self.store.run_sync(queue_ops.queue_list), key=lambda e: e.address)

    def session(self) -> Session:
        session = Session(intake=self.intake)
        session.ehlo()
        return session

    @defer.inlineCallbacks
    def answer(self, session: Session, data: str):
        """The reply lines to data, once the server has written any (lookups take time)."""
        lines = session.send(data)
        deadline = time.monotonic() + 20
        while not lines and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.01, lambda: None)
            lines = session.replies()
        return lines

    # -- keep a copy, forward only, local targets --------------------------------------------

    @defer.inlineCallbacks
    def test_keep_copy_files_in_the_mailbox_and_its_local_target(self):
        self.forward("joe@acme.test", "ann@acme.test", keep_copy=True)
        stored = yield self.deliver("someone@elsewhere.test", "joe@acme.test")
        [joe], [ann] = self.filings("joe@acme.test"), self.filings("ann@acme.test")
        self.assertEqual(joe.message.id, ann.message.id, "stored once, filed twice")
        self.assertEqual(stored.id, joe.message.id)
        self.assertEqual(
            self.raw(stored.id),
            b"Return-Path: <someone@elsewhere.test>\r\n" + RAW,
            "no remote copy: the bytes as received, under the final delivery's Return-Path",
        )
        self.assertEqual(joe.message.envelope_sender, "someone@elsewhere.test")
        self.assertEqual(self.queue(), [])
        self.assertEqual(
            self.filed, [("someone@elsewhere.test", ("joe@acme.test", "ann@acme.test"))]
        )

    @defer.inlineCallbacks
    def test_forward_only_leaves_nothing_in_the_mailbox(self):
        self.forward("joe@acme.test", "ann@acme.test", keep_copy=False)
        yield self.deliver("someone@elsewhere.test", "joe@acme.test")
        self.assertEqual(self.filings("joe@acme.test"), [])
        self.assertEqual(len(self.filings("ann@acme.test")), 1)

    @defer.inlineCallbacks
    def test_forwarding_off_keeps_the_mail_whatever_the_targets(self):
        self.forward("joe@acme.test", "bob@remote.test", keep_copy=False)
        self.store.run_sync(forwarding.set_forwarding, "joe@acme.test", enabled=False)
        yield self.deliver("someone@elsewhere.test", "joe@acme.test")
        self.assertEqual(len(self.filings("joe@acme.test")), 1)
        self.assertEqual(self.queue(), [])

    # -- remote targets: SRS and Delivered-To ----------------------------------------------

    @defer.inlineCallbacks
    def test_remote_target_is_queued_with_an_srs_sender_and_delivered_to(self):
        self.forward("joe@acme.test", "bob@remote.test", keep_copy=True)
        stored = yield self.deliver("someone@elsewhere.test", "joe@acme.test")
        [entry] = self.queue()
        self.assertEqual(entry.address, "bob@remote.test")
        self.assertRegex(
            entry.envelope_sender,
            r"^SRS0=[A-Z2-7]{4}=[A-Z2-7]{2}=elsewhere\.test=someone@acme\.test$",
        )
        self.assertEqual(self.srs.reverse(entry.envelope_sender), "someone@elsewhere.test")
        self.assertEqual(self.outgoing_raw(stored.id), b"Delivered-To: joe@acme.test\r\n" + RAW)
        self.assertEqual(
            self.raw(stored.id),
            b"Return-Path: <someone@elsewhere.test>\r\nDelivered-To: joe@acme.test\r\n" + RAW,
            "the copy kept names the real sender, not the SRS one of the copy sent on",
        )
        [joe] = self.filings("joe@acme.test")
        self.assertEqual(joe.message.id, stored.id, "the copy kept shares the stored bytes")
        self.assertEqual(self.queued, [True], "the runner was woken")
        self.assertEqual(self.filed, [("someone@elsewhere.test", ("joe@acme.test",))])
        detail = self.store.run_sync(queue_ops.queue_show, entry.queue_message_id)
        self.assertFalse(detail.is_bounce)

    @defer.inlineCallbacks
    def test_submitted_mail_to_a_forwarding_mailbox_is_forwarded_too(self):
        self.forward("bob@acme.test", "bob@remote.test", keep_copy=True)
        bob = yield self.intake.resolve_recipient("bob", "acme.test")
        joe = self.store.run_sync(mailboxes.get_mailbox, "joe@acme.test")
        submitted = yield self.intake.submit(
            OutgoingMessage(
                envelope_sender="joe@acme.test",
                raw=RAW,
                local_recipients=(bob,),
                remote_recipients=("carol@remote.test",),
                sent_mailbox_id=joe.id,
            ),
            Origin("submission", mailbox_id=joe.id),
        )
        self.assertEqual(
            [(entry.address, entry.envelope_sender) for entry in self.queue()],
            [("bob@remote.test", "joe@acme.test"), ("carol@remote.test", "joe@acme.test")],
            "one message: the forward target beside the user's own remote recipient; a sender"
            " in the forwarding domain needs no SRS",
        )
        self.assertEqual(len(self.filings("bob@acme.test")), 1, "the copy kept")
        self.assertEqual(self.filings("joe@acme.test")[0].context.name, "Sent (joe@acme.test)")
        self.assertTrue(
            self.outgoing_raw(submitted.id).startswith(b"Delivered-To: bob@acme.test\r\n")
        )

    @defer.inlineCallbacks
    def test_forward_only_to_a_remote_target_files_nothing(self):
        self.forward("joe@acme.test", "bob@remote.test", keep_copy=False)
        yield self.deliver("someone@elsewhere.test", "joe@acme.test")
        self.assertEqual(self.filings("joe@acme.test"), [])
        self.assertEqual([e.address for e in self.queue()], ["bob@remote.test"])
        self.assertEqual(self.filed, [], "nothing was filed: nobody to tell")

    @defer.inlineCallbacks
    def test_a_bounce_is_forwarded_from_the_null_sender(self):
        self.forward("joe@acme.test", "bob@remote.test", keep_copy=False)
        yield self.deliver("", "joe@acme.test")
        [entry] = self.queue()
        self.assertEqual(entry.envelope_sender, "")
        detail = self.store.run_sync(queue_ops.queue_show, entry.queue_message_id)
        self.assertTrue(detail.is_bounce, "a failing forwarded bounce is never bounced")

    @defer.inlineCallbacks
    def test_srs_domain_is_the_forwarding_mailboxs_domain(self):
        self.forward("eve@other.test", "bob@remote.test")
        yield self.deliver("someone@elsewhere.test", "eve@other.test")
        [entry] = self.queue()
        self.assertTrue(entry.envelope_sender.endswith("@other.test"), entry.envelope_sender)

    @defer.inlineCallbacks
    def test_without_srs_the_original_sender_is_kept(self):
        self.intake.srs = None
        self.forward("joe@acme.test", "bob@remote.test")
        yield self.deliver("someone@elsewhere.test", "joe@acme.test")
        self.assertEqual(self.queue()[0].envelope_sender, "someone@elsewhere.test")

    @defer.inlineCallbacks
    def test_chain_through_a_local_mailbox_to_a_remote_target(self):
        self.forward("joe@acme.test", "ann@acme.test", keep_copy=False)
        self.forward("ann@acme.test", "carl@remote.test", keep_copy=True)
        stored = yield self.deliver("someone@elsewhere.test", "joe@acme.test")
        self.assertEqual(self.filings("joe@acme.test"), [])
        self.assertEqual(len(self.filings("ann@acme.test")), 1)
        [entry] = self.queue()
        self.assertEqual(entry.address, "carl@remote.test")
        self.assertTrue(entry.envelope_sender.startswith("SRS0="))
        self.assertEqual(
            self.outgoing_raw(stored.id),
            b"Delivered-To: ann@acme.test\r\nDelivered-To: joe@acme.test\r\n" + RAW,
        )

    @defer.inlineCallbacks
    def test_a_local_loop_ends_with_each_mailbox_filed_once(self):
        self.forward("joe@acme.test", "ann@acme.test")
        self.forward("ann@acme.test", "joe@acme.test")
        yield self.deliver("someone@elsewhere.test", "joe@acme.test")
        self.assertEqual(len(self.filings("joe@acme.test")), 1)
        self.assertEqual(len(self.filings("ann@acme.test")), 1)
        self.assertEqual(self.queue(), [])

    @defer.inlineCallbacks
    def test_a_loop_without_copies_files_into_the_recipient(self):
        self.forward("joe@acme.test", "ann@acme.test", keep_copy=False)
        self.forward("ann@acme.test", "joe@acme.test", keep_copy=False)
        yield self.deliver("someone@elsewhere.test", "joe@acme.test")
        self.assertEqual(len(self.filings("joe@acme.test")), 1)
        self.assertEqual(self.filings("ann@acme.test"), [])

    @defer.inlineCallbacks
    def test_several_recipients_and_relayed_addresses_go_in_one_message(self):
        self.forward("joe@acme.test", "bob@remote.test", "ann@acme.test", keep_copy=False)
        joe = yield self.intake.resolve_recipient("joe", "acme.test")
        eve = yield self.intake.resolve_recipient("eve", "other.test")
        before = len(self.counting.operations)
        stored = yield self.intake.accept(
            "someone@elsewhere.test", [joe, eve, "relayed@remote.test"], RAW
        )
        self.assertEqual(
            self.counting.operations[before:],
            [forwarding.expand_forwarding, queue_ops.submit_messages],
            "one read, one write transaction",
        )
        self.assertEqual(self.filings("eve@other.test")[0].message.id, stored.id)
        self.assertEqual(self.filings("ann@acme.test")[0].message.id, stored.id)
        self.assertEqual(
            [e.address for e in self.queue()], ["bob@remote.test", "relayed@remote.test"]
        )

    # -- what mail without forwarding costs ----------------------------------------------------

    @defer.inlineCallbacks
    def test_mailboxes_without_forwarding_cost_no_extra_query(self):
        self.forward("ann@acme.test", "bob@remote.test")  # someone else forwards
        recipient = yield self.intake.resolve_recipient("joe", "acme.test")
        self.assertEqual(self.counting.operations, [filing.resolve_recipient])
        self.assertIsInstance(recipient, Recipient)
        self.assertFalse(recipient.forwards)
        yield self.intake.accept("someone@elsewhere.test", [recipient], RAW)
        self.assertEqual(
            self.counting.operations, [filing.resolve_recipient, filing.store_messages]
        )
        # An unknown address that looks like nothing SRS costs one lookup too.
        self.counting.operations.clear()
        found = yield self.intake.resolve_recipient("nobody", "acme.test")
        self.assertEqual(found.reason, "unknown-address")
        self.assertEqual(self.counting.operations, [filing.resolve_recipient])

    # -- loops across servers: Delivered-To -------------------------------------------------

    @defer.inlineCallbacks
    def test_delivered_to_the_forwarding_mailbox_is_a_loop(self):
        self.forward("joe@acme.test", "bob@remote.test")
        looped = b"Delivered-To: <JOE@acme.test>\r\n" + RAW
        recipient = yield self.intake.resolve_recipient("joe", "acme.test")
        failure = yield self.assertFailure(
            self.intake.accept("someone@elsewhere.test", [recipient], looped), ForwardingLoop
        )
        self.assertEqual((failure.smtp_code, failure.enhanced_status), (554, "5.4.6"))
        self.assertEqual(self.store.run_sync(filing.count_messages), 0)

    @defer.inlineCallbacks
    def test_delivered_to_another_mailbox_is_no_loop(self):
        self.forward("joe@acme.test", "bob@remote.test")
        yield self.deliver(
            "someone@elsewhere.test",
            "joe@acme.test",
            raw=b"Delivered-To: ann@acme.test\r\n" + RAW + b"Delivered-To: joe@acme.test\r\n",
        )
        self.assertEqual(len(self.queue()), 1, "a Delivered-To in the body is not a header")

    @defer.inlineCallbacks
    def test_loop_refused_at_end_of_data_with_554_5_4_6(self):
        self.forward("joe@acme.test", "bob@remote.test")
        session = self.session()
        self.assertEqual(session.command("MAIL FROM:<someone@elsewhere.test>")[0][:3], "250")
        reply = yield self.answer(session, "RCPT TO:<joe@acme.test>\r\n")
        self.assertEqual(reply, ["250 2.1.5 Ok"])
        self.assertEqual(session.command("DATA")[0][:3], "354")
        reply = yield self.answer(
            session, "Delivered-To: joe@acme.test\r\nSubject: again\r\n\r\nbody\r\n.\r\n"
        )
        self.assertEqual(len(reply), 1)
        self.assertTrue(reply[0].startswith("554 5.4.6 forwarding loop detected"), reply)
        self.assertEqual(self.store.run_sync(filing.count_messages), 0)
        self.assertFalse(session.closed)

    # -- bounces to our SRS addresses ----------------------------------------------------------

    def srs_address(self, sender="someone@elsewhere.test", domain="acme.test") -> str:
        return self.srs.forward(sender, domain)

    @defer.inlineCallbacks
    def test_a_valid_srs_address_resolves_to_the_original_sender(self):
        address = self.srs_address()
        local, _, domain = address.rpartition("@")
        self.assertEqual(
            (yield self.intake.resolve_recipient(local, domain)), "someone@elsewhere.test"
        )
        self.assertEqual(
            (yield self.intake.resolve_recipient(local.lower(), domain.upper())),
            "someone@elsewhere.test",
            "the case of the address does not matter",
        )
        self.assertEqual((yield self.intake.route(address)), "someone@elsewhere.test")

    @defer.inlineCallbacks
    def test_lookup_tells_the_smtp_policies_one_tagged_resolution(self):
        local, _, domain = self.srs_address().rpartition("@")
        returned = yield self.intake.lookup_recipient(local, domain)
        self.assertEqual(returned, Resolution("remote", address="someone@elsewhere.test"))
        joe = yield self.intake.lookup_recipient("Joe", "acme.test")
        self.assertEqual((joe.kind, joe.recipient.mailbox_address), ("local", "joe@acme.test"))
        foreign = yield self.intake.lookup_recipient("x", "elsewhere.test")
        self.assertEqual(foreign.kind, "foreign")
        nobody = yield self.intake.lookup_recipient("nobody", "acme.test")
        self.assertEqual(
            nobody, Resolution("refused", detail="nobody@acme.test is not an address here")
        )

    @defer.inlineCallbacks
    def test_an_srs_address_of_a_local_sender_resolves_to_the_mailbox(self):
        # Mail from ann@acme.test forwarded by a mailbox of other.test.
        local, _, domain = self.srs_address("ann@acme.test", "other.test").rpartition("@")
        found = yield self.intake.resolve_recipient(local, domain)
        self.assertIsInstance(found, Recipient)
        self.assertEqual(found.mailbox_address, "ann@acme.test")

    @defer.inlineCallbacks
    def test_bounce_to_srs_address_is_accepted_without_relay_rights_and_queued(self):
        address = self.srs_address()
        session = self.session()
        self.assertFalse(session.factory.policy.may_relay(session.protocol.client_ip))
        self.assertEqual(session.command("MAIL FROM:<>")[0][:3], "250")
        self.assertEqual((yield self.answer(session, f"RCPT TO:<{address}>\r\n")), ["250 2.1.5 Ok"])
        self.assertEqual(session.command("DATA")[0][:3], "354")
        reply = yield self.answer(session, "Subject: Undelivered Mail\r\n\r\nsorry\r\n.\r\n")
        self.assertTrue(reply[0].startswith("250 2.0.0 Ok: queued as"), reply)
        [entry] = self.queue()
        self.assertEqual((entry.address, entry.envelope_sender), ("someone@elsewhere.test", ""))
        detail = self.store.run_sync(queue_ops.queue_show, entry.queue_message_id)
        self.assertTrue(detail.is_bounce)

    @defer.inlineCallbacks
    def test_forged_or_expired_srs_address_is_refused_at_rcpt(self):
        good = self.srs_address()
        signature = good.split("=")[1]
        forged = good.replace(f"={signature}=", "=AAAA=" if signature != "AAAA" else "=BBBB=")
        victim = good.replace("=someone@", "=victim@")
        session = self.session()
        session.command("MAIL FROM:<>")
        for address in (forged, victim):
            [reply] = yield self.answer(session, f"RCPT TO:<{address}>\r\n")
            self.assertTrue(reply.startswith(f"550 5.1.1 <{address}>: the SRS signature"), reply)
        self.time.now += 30 * DAY
        [reply] = yield self.answer(session, f"RCPT TO:<{good}>\r\n")
        self.assertTrue(reply.startswith("550 5.1.1"), reply)
        self.assertIn("expired", reply)
        # Not one of our domains: no decoding, the usual relay refusal.
        elsewhere = good.replace("@acme.test", "@remote.test")
        [reply] = yield self.answer(session, f"RCPT TO:<{elsewhere}>\r\n")
        self.assertTrue(reply.startswith("554 5.7.1"), reply)

    @defer.inlineCallbacks
    def test_runner_notification_to_an_srs_address_goes_to_the_original_sender(self):
        yield send_notification(
            self.intake, self.srs_address(), b"Subject: dsn\r\n\r\nx\r\n", Origin("bounce")
        )
        [entry] = self.queue()
        self.assertEqual((entry.address, entry.envelope_sender), ("someone@elsewhere.test", ""))


class SqliteForwardingIntakeTests(SqliteStoreMixin, ForwardingIntakeTests, unittest.TestCase):
    pass


class PostgresForwardingIntakeTests(PostgresStoreMixin, ForwardingIntakeTests, unittest.TestCase):
    pass
