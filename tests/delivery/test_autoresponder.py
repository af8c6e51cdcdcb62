"""The auto-responder against a real store and a real Intake, on SQLite and PostgreSQL.

Each RFC 3834 rule has a test that a missing rule would fail: every case uses a sender of
its own, so the once-per-interval rule cannot hide a missing one, and each group has a
control that does get a reply.
"""

from __future__ import annotations

import calendar
import datetime
import email
import email.policy

from twisted.internet import defer, task
from twisted.trial import unittest

from atollon_mail.delivery import autoresponder as responder_module
from atollon_mail.delivery.autoresponder import (
    CACHE_SECONDS,
    Autoresponder,
    sender_is_automatic,
)
from atollon_mail.delivery.intake import Intake
from atollon_mail.events import Events
from atollon_mail.store import accounts, aliases, autorespond, domains, mailboxes, queue
from atollon_mail.store import filing as filing_ops
from atollon_mail.store.records import InboundVerdict, Recipient
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

T0 = datetime.datetime(2030, 7, 1, 12, 0, 0)
T0_SECONDS = calendar.timegm(T0.timetuple())
DAY_SECONDS = 86400


def message(
    to: str | None = "Jane <jane@acme.test>",
    cc: str | None = None,
    subject: str = "Lunch on Friday?",
    extra: str = "",
    message_id: str | None = "<m1@remote.test>",
    sender: str = "Ann <ann@remote.test>",
) -> bytes:
    lines = [f"From: {sender}"]
    if to is not None:
        lines.append(f"To: {to}")
    if cc is not None:
        lines.append(f"Cc: {cc}")
    lines.append(f"Subject: {subject}")
    if message_id is not None:
        lines.append(f"Message-ID: {message_id}")
    lines.extend(line for line in extra.split("\n") if line)
    return ("\r\n".join(lines) + "\r\n\r\nHello Jane.\r\n").encode()


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


class FailingIntake:
    def route(self, address):
        raise RuntimeError("the intake is broken")


class AutoresponderTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.store.run_sync(domains.add_domain, "acme.test")
        for login in ("jane", "joe", "carol"):
            self.store.run_sync(accounts.add_user, login, "hash", name=login.title())
        self.jane = self.store.run_sync(
            mailboxes.add_mailbox, "jane@acme.test", "jane", identity="jane.doe@acme.test"
        )
        self.store.run_sync(aliases.add_alias, "j@acme.test", "jane@acme.test")
        self.joe = self.store.run_sync(mailboxes.add_mailbox, "joe@acme.test", "joe")
        self.carol = self.store.run_sync(mailboxes.add_mailbox, "carol@acme.test", "carol")
        self.turn_on("jane@acme.test", subject="Away", body="Back on Monday.\nJane")
        self.turn_on("joe@acme.test", body="Joe is away.")
        self.clock = task.Clock()
        self.clock.advance(T0_SECONDS)
        events = Events()
        self.intake = Intake(self.store, events)
        self.responder = Autoresponder(self.store, self.intake, "mx.acme.test", self.clock, events)

    def turn_on(self, address: str, **settings):
        settings.setdefault("body", "Away.")
        return self.store.run_sync(autorespond.set_autoresponder, address, True, **settings)

    @defer.inlineCallbacks
    def deliver(self, sender: str, raw: bytes, to=("jane@acme.test",), verdict=None):
        """Mail from sender accepted for `to` (filed), and any reply decided and sent."""
        recipients = []
        for address in to:
            routed = yield self.intake.route(address)
            self.assertIsInstance(routed, Recipient)
            recipients.append(routed)
        yield self.intake.accept(sender, recipients, raw, verdict)
        yield self.responder.when_idle()

    @defer.inlineCallbacks
    def test_mail_filed_into_junk_gets_no_reply(self):
        # jane files junk into Junk (the default); joe only tags it, so he still answers.
        self.store.run_sync(mailboxes.update_mailbox, "joe@acme.test", spam_handling="tag")
        junk = InboundVerdict(junk=True, spam_score=12.0)
        both = message(to="Jane <jane@acme.test>, Joe <joe@acme.test>")
        yield self.deliver(
            "Ann@Remote.test", both, to=("jane@acme.test", "joe@acme.test"), verdict=junk
        )
        self.assertEqual(self.replied_to(), ["Ann@remote.test"])
        [(_, _, reply_raw)] = self.queued()
        self.assertEqual(parsed(reply_raw)["From"], "joe@acme.test")

    def queued(self):
        """(envelope sender, recipient address, raw) of every queued message."""
        found = []
        for entry in self.store.run_sync(queue.queue_list):
            detail = self.store.run_sync(queue.queue_show, entry.queue_message_id)
            raw = self.store.run_sync(filing_ops.message_raw, detail.message_id)
            found.append((entry.envelope_sender, entry.address, raw))
        return found

    def filed(self, address: str):
        return [
            (
                filing.message.envelope_sender,
                self.store.run_sync(filing_ops.message_raw, filing.message.id),
            )
            for filing in self.store.run_sync(filing_ops.list_filings, address)
        ]

    def assertNoReply(self):
        self.assertEqual(self.queued(), [])

    def replied_to(self) -> list[str]:
        return sorted(address for _, address, _ in self.queued())

    # -- the reply ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_reply_to_a_remote_sender_is_queued_from_the_null_sender(self):
        raw = message(extra="References: <m0@remote.test>\nIn-Reply-To: <m0@remote.test>")
        yield self.deliver("Ann@Remote.test", raw)
        [(envelope_sender, address, reply_raw)] = self.queued()
        self.assertEqual((envelope_sender, address), ("", "Ann@remote.test"))
        self.assertIn(b"\r\n\r\n", reply_raw)
        self.assertNotIn(b"\n", reply_raw.replace(b"\r\n", b""), "CRLF line ends only")
        reply = parsed(reply_raw)
        self.assertEqual(reply["From"], "jane.doe@acme.test")
        self.assertEqual(reply["To"], "Ann@Remote.test")
        self.assertEqual(reply["Subject"], "Away")
        self.assertEqual(reply["Auto-Submitted"], "auto-replied")
        self.assertEqual(reply["In-Reply-To"], "<m1@remote.test>")
        self.assertEqual(reply["References"], "<m0@remote.test> <m1@remote.test>")
        self.assertEqual(reply["Date"].datetime, T0.replace(tzinfo=datetime.UTC))
        self.assertTrue(reply["Message-ID"].endswith("@mx.acme.test>"), reply["Message-ID"])
        self.assertNotEqual(reply["Message-ID"], "<m1@remote.test>")
        self.assertEqual(reply.get_content().replace("\r\n", "\n"), "Back on Monday.\nJane\n")
        # Jane's copy of the original is there; the reply is no copy in her mailbox.
        self.assertEqual(len(self.filed("jane@acme.test")), 1)

    @defer.inlineCallbacks
    def test_reply_to_a_local_sender_is_filed_and_not_answered_back(self):
        raw = message(sender="Joe <joe@acme.test>")
        yield self.deliver("joe@acme.test", raw)
        [(envelope_sender, reply_raw)] = self.filed("joe@acme.test")
        self.assertEqual(envelope_sender, "")
        self.assertTrue(reply_raw.startswith(b"Return-Path: <>\r\n"), reply_raw[:80])
        self.assertEqual(reply_raw.count(b"Return-Path:"), 1)
        reply = parsed(reply_raw)
        self.assertEqual((reply["From"], reply["To"]), ("jane.doe@acme.test", "joe@acme.test"))
        self.assertEqual(reply["Auto-Submitted"], "auto-replied")
        # Joe's responder is on too, but an auto-reply from <> gets no answer.
        self.assertEqual(len(self.filed("jane@acme.test")), 1)
        self.assertNoReply()

    @defer.inlineCallbacks
    def test_without_message_id_no_threading_headers(self):
        yield self.deliver("ann@remote.test", message(message_id=None))
        [(_, _, reply_raw)] = self.queued()
        reply = parsed(reply_raw)
        self.assertIsNone(reply["In-Reply-To"])
        self.assertIsNone(reply["References"])

    @defer.inlineCallbacks
    def test_non_ascii_subject_and_body(self):
        self.turn_on("jane@acme.test", subject="Abwesend – Grüße", body="Zurück am Montag.")
        yield self.deliver("ann@remote.test", message())
        [(_, _, reply_raw)] = self.queued()
        self.assertTrue(reply_raw.isascii(), "encoded for any relay on the way")
        reply = parsed(reply_raw)
        self.assertEqual(reply["Subject"], "Abwesend – Grüße")
        self.assertEqual(reply.get_content().replace("\r\n", "\n"), "Zurück am Montag.\n")

    # -- who is never answered ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_null_sender_is_not_answered(self):
        yield self.deliver("", message())
        self.assertNoReply()
        yield self.deliver("ann@remote.test", message())
        self.assertEqual(self.replied_to(), ["ann@remote.test"])

    @defer.inlineCallbacks
    def test_daemons_and_list_addresses_are_not_answered(self):
        senders = (
            "MAILER-DAEMON@remote.test",
            "mailer-daemon@remote.test",
            "postmaster@remote.test",
            "owner-staff@lists.remote.test",
            "staff-request@lists.remote.test",
            "staff-owner@lists.remote.test",
            "bounces+123-ann=acme.test@news.remote.test",
            "listserv@lists.remote.test",
            "majordomo@lists.remote.test",
            "noreply@shop.remote.test",
            "no-reply@shop.remote.test",
            "do-not-reply@shop.remote.test",
        )
        for sender in senders:
            self.assertTrue(sender_is_automatic(sender), sender)
            yield self.deliver(sender, message())
        self.assertNoReply()
        # People whose names merely look alike are answered.
        for sender in ("owner@remote.test", "requester@remote.test", "daemon@remote.test"):
            self.assertFalse(sender_is_automatic(sender), sender)
            yield self.deliver(sender, message())
        self.assertEqual(len(self.queued()), 3)

    @defer.inlineCallbacks
    def test_auto_submitted_other_than_no_is_not_answered(self):
        for n, value in enumerate(
            ("auto-replied", "auto-generated", "auto-notified; owner-email=x@remote.test")
        ):
            yield self.deliver(f"auto{n}@remote.test", message(extra=f"Auto-Submitted: {value}"))
        self.assertNoReply()
        yield self.deliver("person@remote.test", message(extra="Auto-Submitted: no"))
        self.assertEqual(self.replied_to(), ["person@remote.test"])

    @defer.inlineCallbacks
    def test_bulk_list_and_junk_precedence_are_not_answered(self):
        for value in ("bulk", "list", "junk", "Bulk"):
            yield self.deliver(f"{value}@remote.test", message(extra=f"Precedence: {value}"))
        self.assertNoReply()
        yield self.deliver("urgent@remote.test", message(extra="Precedence: urgent"))
        self.assertEqual(self.replied_to(), ["urgent@remote.test"])

    @defer.inlineCallbacks
    def test_list_headers_are_not_answered(self):
        for n, header in enumerate(
            (
                "List-Id: Staff <staff.lists.remote.test>",
                "List-Unsubscribe: <mailto:leave@lists.remote.test>",
                "List-Post: <mailto:staff@lists.remote.test>",
                "list-help: <https://lists.remote.test/>",
            )
        ):
            yield self.deliver(f"member{n}@remote.test", message(extra=header))
        self.assertNoReply()

    @defer.inlineCallbacks
    def test_auto_response_suppress_is_honoured(self):
        yield self.deliver("a@remote.test", message(extra="X-Auto-Response-Suppress: DR, OOF"))
        yield self.deliver("b@remote.test", message(extra="X-Auto-Response-Suppress: All"))
        self.assertNoReply()
        yield self.deliver("c@remote.test", message(extra="X-Auto-Response-Suppress: DR"))
        self.assertEqual(self.replied_to(), ["c@remote.test"])

    @defer.inlineCallbacks
    def test_not_named_in_to_or_cc_is_not_answered(self):
        # Bcc: the mailbox is reached but not named.
        yield self.deliver("a@remote.test", message(to="Team <team@remote.test>"))
        yield self.deliver("b@remote.test", message(to=None))
        yield self.deliver("c@remote.test", message(to="undisclosed-recipients:;"))
        yield self.deliver("d@remote.test", message(to="joe@acme.test"))
        self.assertNoReply()

    @defer.inlineCallbacks
    def test_named_in_cc_by_alias_identity_or_tag_is_answered(self):
        yield self.deliver("a@remote.test", message(to="x@remote.test", cc="JANE@acme.test"))
        yield self.deliver("b@remote.test", message(to="Sales J <j@acme.test>"))
        yield self.deliver("c@remote.test", message(to="jane.doe@acme.test"))
        yield self.deliver("d@remote.test", message(to="jane+lunch@acme.test"))
        yield self.deliver("e@remote.test", message(to='"Doe, Jane" <jane@acme.test>, x@y.test'))
        self.assertEqual(
            self.replied_to(), [f"{name}@remote.test" for name in ("a", "b", "c", "d", "e")]
        )

    @defer.inlineCallbacks
    def test_the_mailbox_itself_is_not_answered(self):
        yield self.deliver("jane@acme.test", message(sender="jane@acme.test"))
        yield self.deliver("j@acme.test", message(sender="j@acme.test"))
        yield self.deliver("jane.doe@acme.test", message(sender="jane.doe@acme.test"))
        self.assertNoReply()
        self.assertEqual(self.filed("jane@acme.test")[0][0], "jane.doe@acme.test")

    # -- how often and when ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_one_reply_per_sender_per_interval(self):
        yield self.deliver("ann@remote.test", message())
        self.clock.advance(DAY_SECONDS)
        yield self.deliver("ANN@remote.test", message(message_id="<m2@remote.test>"))
        self.assertEqual(len(self.queued()), 1)
        self.clock.advance(6 * DAY_SECONDS)  # seven days after the first reply
        yield self.deliver("ann@remote.test", message(message_id="<m3@remote.test>"))
        self.assertEqual(len(self.queued()), 2)

    @defer.inlineCallbacks
    def test_outside_the_window_no_reply(self):
        start = T0 + datetime.timedelta(days=1)
        self.turn_on("jane@acme.test", starts_at=start, ends_at=start + datetime.timedelta(days=1))
        yield self.deliver("early@remote.test", message())
        self.assertNoReply()
        self.clock.advance(DAY_SECONDS)
        yield self.deliver("ann@remote.test", message())
        self.assertEqual(self.replied_to(), ["ann@remote.test"])
        self.clock.advance(DAY_SECONDS)
        yield self.deliver("late@remote.test", message())
        self.assertEqual(self.replied_to(), ["ann@remote.test"])

    @defer.inlineCallbacks
    def test_turned_off_no_reply(self):
        self.store.run_sync(autorespond.set_autoresponder, "jane@acme.test", False)
        yield self.deliver("ann@remote.test", message())
        self.assertNoReply()

    @defer.inlineCallbacks
    def test_each_named_mailbox_replies_once(self):
        raw = message(to="jane@acme.test, joe@acme.test, carol@acme.test")
        to = ("jane@acme.test", "j@acme.test", "joe@acme.test", "carol@acme.test")
        yield self.deliver("ann@remote.test", raw, to=to)
        senders = sorted(parsed(raw)["From"] for _, _, raw in self.queued())
        self.assertEqual(senders, ["jane.doe@acme.test", "joe@acme.test"])  # carol's is off

    @defer.inlineCallbacks
    def test_a_responder_turned_on_is_seen_after_the_cache_time(self):
        yield self.deliver("ann@remote.test", message(to="carol@acme.test"), to=["carol@acme.test"])
        self.turn_on("carol@acme.test")
        yield self.deliver("bob@remote.test", message(to="carol@acme.test"), to=["carol@acme.test"])
        self.assertNoReply()
        self.clock.advance(CACHE_SECONDS)
        yield self.deliver("dan@remote.test", message(to="carol@acme.test"), to=["carol@acme.test"])
        self.assertEqual(self.replied_to(), ["dan@remote.test"])

    @defer.inlineCallbacks
    def test_mail_to_mailboxes_without_a_responder_costs_no_query(self):
        operations = []

        class CountingStore:
            def run(inner, operation, *args, **kwargs):
                operations.append(operation.__name__)
                return self.store.run(operation, *args, **kwargs)

        counted = Autoresponder(CountingStore(), self.intake, "mx.acme.test", self.clock, Events())
        carol = yield self.intake.route("carol@acme.test")
        for n in range(5):
            yield counted(f"s{n}@remote.test", (carol,), message(to="carol@acme.test"))
        self.assertEqual(operations, ["responding_mailbox_ids"])
        self.clock.advance(CACHE_SECONDS)
        yield counted("s@remote.test", (carol,), message(to="carol@acme.test"))
        self.assertEqual(operations, ["responding_mailbox_ids"] * 2)

    # -- trouble --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_errors_are_logged_never_raised(self):
        broken = Autoresponder(self.store, FailingIntake(), "mx.acme.test", self.clock, Events())
        jane = yield self.intake.route("jane@acme.test")
        result = broken("ann@remote.test", (jane,), message())
        yield broken.when_idle()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIsNone((yield result))

    @defer.inlineCallbacks
    def test_a_failing_store_is_logged(self):
        jane = yield self.intake.route("jane@acme.test")
        original = responder_module.autorespond.responding_mailbox_ids

        def broken():
            raise RuntimeError("the database went away")

        self.patch(responder_module.autorespond, "responding_mailbox_ids", broken)
        yield self.responder("ann@remote.test", (jane,), message())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.patch(responder_module.autorespond, "responding_mailbox_ids", original)
        yield self.responder("ann@remote.test", (jane,), message())
        self.assertEqual(self.replied_to(), ["ann@remote.test"])

    @defer.inlineCallbacks
    def test_garbage_headers_do_not_stop_the_intake(self):
        raw = b"To: jane@acme.test\r\nSubject: \xff\xfe\r\nMessage-ID: <<<>>>\r\n\r\nbody\r\n"
        yield self.deliver("ann@remote.test", raw)
        [(_, _, reply_raw)] = self.queued()
        self.assertIsNone(parsed(reply_raw)["In-Reply-To"])


class SqliteAutoresponderTests(SqliteStoreMixin, AutoresponderTests, unittest.TestCase):
    pass


class PostgresAutoresponderTests(PostgresStoreMixin, AutoresponderTests, unittest.TestCase):
    pass
