"""Lines over 998 octets: re-encoded before mail leaves, or refused with 554 5.6.3."""

from __future__ import annotations

import email
import email.policy

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from atollon_mail.delivery import reencode
from atollon_mail.delivery.intake import Intake, summarize_headers
from atollon_mail.delivery.reencode import MAX_LINE, UnencodableMessage, fit_line_length
from atollon_mail.passwords import hash_password
from atollon_mail.store import accounts, domains, forwarding, mailboxes, queue
from atollon_mail.store import filing as filing_ops
from atollon_mail.store.records import Origin, OutgoingMessage
from atollon_mail.workers import Workers
from tests import builders
from tests.smtp.fakes import Session, make_settings
from tests.support import SqliteStoreMixin, StoreFixtureMixin

LONG = b"word " * 300  # 1 500 octets
HEAD = b"From: Jane <jane@acme.test>\r\nTo: bob@remote.test\r\nSubject: long\r\n"


def longest_line(raw: bytes) -> int:
    return max(len(line) for line in raw.split(b"\r\n"))


def text_of(part) -> str:
    """A text part's content with LF line ends (the email package keeps CRLF as is)."""
    return part.get_content().replace("\r\n", "\n")


def parsed(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def multipart(*parts: bytes, kind: str = "mixed", extra: str = "") -> bytes:
    body = b"".join(b"--XYZ\r\n" + part + b"\r\n" for part in parts)
    return (
        HEAD
        + b"MIME-Version: 1.0\r\n"
        + f'Content-Type: multipart/{kind}; boundary="XYZ"{extra}\r\n\r\n'.encode()
        + b"preamble\r\n"
        + body
        + b"--XYZ--\r\n"
    )


class LongLineTests(unittest.TestCase):
    def test_line_lengths(self):
        cases = {
            b"x" * MAX_LINE + b"\r\n": False,
            b"x" * (MAX_LINE + 1) + b"\r\n": True,
            b"a\r\n" + b"x" * MAX_LINE + b"\r\nb": False,
            b"a\r\n" + b"x" * (MAX_LINE + 1) + b"\r\nb": True,
            b"a\r\n" + b"x" * (MAX_LINE + 1): True,
            b"a\n" + b"x" * (MAX_LINE + 1) + b"\n": True,
            b"a\n" + b"x" * MAX_LINE + b"\n": False,
            b"a\n" + b"x" * (MAX_LINE + 1): True,
            b"x" * (MAX_LINE + 1): True,
            b"x" * MAX_LINE + b"\r": False,
            b"a\r\n" + b"x" * (MAX_LINE - 1) + b"\r\r\n": False,
        }
        for raw, expected in cases.items():
            self.assertEqual(reencode.has_long_line(raw), expected, raw[:20])

    def test_short_lines_are_left_alone(self):
        raw = HEAD + b"\r\n" + b"x" * MAX_LINE + b"\r\n"
        self.assertIs(fit_line_length(raw), raw)

    def test_text_becomes_quoted_printable(self):
        raw = (
            HEAD + b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 7bit\r\n\r\nHello,\r\n" + LONG + b"\r\nBye.\r\n"
        )
        fitted = fit_line_length(raw)
        self.assertLessEqual(longest_line(fitted), 76)
        head, _, body = fitted.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(HEAD), "the other header fields are kept as they were")
        self.assertEqual(head.lower().count(b"content-transfer-encoding"), 1)
        message = parsed(fitted)
        self.assertEqual(message["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(message["MIME-Version"], "1.0")
        self.assertEqual(text_of(message), "Hello,\n" + LONG.decode() + "\nBye.\n")

    def test_lf_only_message(self):
        raw = (HEAD + b"Content-Type: text/plain\r\n\r\nHello,\r\n" + LONG + b"\r\n").replace(
            b"\r\n", b"\n"
        )
        fitted = fit_line_length(raw)
        self.assertLessEqual(longest_line(fitted), 76)
        self.assertTrue(fitted.startswith(HEAD), "CRLF lines, the header kept")
        self.assertEqual(text_of(parsed(fitted)), "Hello,\n" + LONG.decode() + "\n")

    def test_8bit_text_keeps_its_bytes_and_charset(self):
        text = "Příliš žluťoučký kůň úpěl ďábelské ódy. " * 40
        raw = (
            HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-2\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text.encode("iso-8859-2") + b"\r\n"
        )
        message = parsed(fit_line_length(raw))
        self.assertEqual(message["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(text_of(message), text + "\n")

    def test_parts_re_encoded_others_kept(self):
        # Every octet but CR and LF (a bare one never comes through SMTP).
        binary = bytes(octet for octet in range(1, 256) if octet not in (10, 13)) * 8
        raw = multipart(
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + LONG,
            b"Content-Type: text/plain\r\n\r\nshort and kept",
            b"Content-Type: application/octet-stream\r\n\r\n" + binary,
        )
        fitted = fit_line_length(raw)
        self.assertLessEqual(longest_line(fitted), 998)
        self.assertIn(b"\r\n\r\nshort and kept\r\n--XYZ", fitted)
        text, short, attachment = parsed(fitted).iter_parts()
        self.assertEqual(text["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(text_of(text), LONG.decode())
        self.assertIsNone(short["Content-Transfer-Encoding"])
        self.assertEqual(attachment["Content-Transfer-Encoding"], "base64")
        self.assertEqual(attachment.get_content(), binary)

    def test_nested_message_is_re_encoded_inside(self):
        inner = HEAD + b"Content-Type: text/plain\r\n\r\n" + LONG + b"\r\n"
        raw = multipart(b"Content-Type: message/rfc822\r\n\r\n" + inner)
        fitted = fit_line_length(raw)
        self.assertLessEqual(longest_line(fitted), 998)
        [attached] = parsed(fitted).iter_parts()
        inner_message = attached.get_content()
        self.assertEqual(text_of(inner_message), LONG.decode() + "\n")

    def check_refused(self, raw: bytes, why: str) -> None:
        with self.assertRaises(UnencodableMessage) as refused:
            fit_line_length(raw)
        self.assertEqual(
            (refused.exception.smtp_code, refused.exception.enhanced_status), (554, "5.6.3")
        )
        self.assertIn(why, str(refused.exception))
        self.assertNotIn("\n", str(refused.exception))

    def test_signed_part_is_refused(self):
        raw = multipart(
            b"Content-Type: text/plain\r\n\r\n" + LONG,
            b"Content-Type: application/pgp-signature\r\n\r\nsig",
            kind="signed",
            extra='; protocol="application/pgp-signature"',
        )
        self.check_refused(raw, "multipart/signed")

    def test_dkim_signed_message_is_refused(self):
        raw = b"DKIM-Signature: v=1; d=acme.test; b=xyz\r\n" + HEAD + b"\r\n" + LONG + b"\r\n"
        self.check_refused(raw, "signed already (DKIM-Signature)")

    def test_long_header_is_folded(self):
        references = b" ".join(b"<%d.part@example.org>" % number for number in range(100))
        raw = HEAD + b"References: " + references + b"\r\n\r\nbody\r\n" + LONG + b"\r\n"
        fitted = fit_line_length(raw)
        self.assertLessEqual(longest_line(fitted), 998)
        message = parsed(fitted)
        self.assertEqual(message["References"], references.decode())
        self.assertEqual(message["Content-Transfer-Encoding"], "quoted-printable")
        only_header = HEAD + b"References: " + references + b"\r\n\r\nbody\r\n"
        self.assertEqual(
            fit_line_length(only_header).replace(b"\r\n ", b" "),
            only_header,
            "folding is all that changed",
        )

    def test_long_header_without_space_is_refused(self):
        raw = HEAD + b"X-Long: " + b"x" * 1200 + b"\r\n\r\nbody\r\n"
        self.check_refused(raw, "in a header")

    def test_long_preamble_is_refused(self):
        raw = multipart(b"Content-Type: text/plain\r\n\r\nshort").replace(b"preamble", b"p" * 1200)
        self.check_refused(raw, "cannot be re-encoded")


SEVEN_BIT = (
    HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
    b"Content-Transfer-Encoding: 7bit\r\n\r\nHello,\r\n" + LONG + b"\r\n"
)
SIGNED = multipart(
    b"Content-Type: text/plain\r\n\r\n" + LONG,
    b"Content-Type: application/pgp-signature\r\n\r\nsig",
    kind="signed",
    extra='; protocol="application/pgp-signature"',
)


class IntakeTests(SqliteStoreMixin, StoreFixtureMixin, unittest.TestCase):
    """Mail that leaves is stored re-encoded (the queued and the Sent copy are the same
    bytes); mail filed into local mailboxes only is stored as it came."""

    def setUp(self):
        self.store = self.make_store()
        self.jane = builders.hosted_mailbox(self.store, password_hash=hash_password("pw")).mailbox
        self.workers = Workers(reactor)
        self.workers.startService()
        self.addCleanup(self.workers.stopService)
        self.intake = Intake(self.store, clock=reactor, workers=self.workers.cpu)

    def outgoing(self, raw: bytes) -> OutgoingMessage:
        return OutgoingMessage(
            envelope_sender="jane@acme.test",
            raw=raw,
            remote_recipients=("bob@remote.test",),
            sent_mailbox_id=self.jane.id,
            **summarize_headers(raw),
        )

    @defer.inlineCallbacks
    def test_submitted_mail_is_stored_re_encoded(self):
        submitted = yield self.intake.submit(self.outgoing(SEVEN_BIT), Origin("compose"))
        stored = yield self.store.run(filing_ops.message_raw, submitted.id)
        self.assertLessEqual(longest_line(stored), 998)
        self.assertEqual(parsed(stored)["Content-Transfer-Encoding"], "quoted-printable")
        [sent] = yield self.store.run(filing_ops.list_filings, "jane@acme.test", 10)
        self.assertEqual(sent.message.id, submitted.id, "the Sent copy is the queued bytes")
        self.assertEqual(sent.message.subject, "long")

    @defer.inlineCallbacks
    def test_unencodable_submission_fails_and_stores_nothing(self):
        failure = yield self.assertFailure(
            self.intake.submit(self.outgoing(SIGNED), Origin("compose")), UnencodableMessage
        )
        self.assertEqual(failure.enhanced_status, "5.6.3")
        self.assertEqual((yield self.store.run(queue.queue_list, None, 10)), [])

    @defer.inlineCallbacks
    def test_relayed_mail_is_re_encoded_local_mail_is_not(self):
        jane = yield self.store.run(filing_ops.resolve_recipient, "jane", "acme.test")
        yield self.intake.accept("app@acme.test", [jane, "bob@remote.test"], SEVEN_BIT)
        yield self.intake.accept("someone@example.org", [jane], SEVEN_BIT)
        filings = yield self.store.run(filing_ops.list_filings, "jane@acme.test", 10)
        raws = []
        for filing in filings:
            raws.append((yield self.store.run(filing_ops.message_raw, filing.message.id)))
        self.assertEqual(
            sorted(longest_line(raw) > 998 for raw in raws),
            [False, True],
            "the relayed copy is re-encoded; the one only filed here is kept as it came",
        )
        # Kept as it came, under the Return-Path that final delivery adds.
        self.assertIn(b"Return-Path: <someone@example.org>\r\n" + SEVEN_BIT, raws)


class SmtpReplyTests(SqliteStoreMixin, StoreFixtureMixin, unittest.TestCase):
    """What a relay host is told at the end of DATA, through the real intake and store."""

    recipients = (b"bob@remote.test",)

    @defer.inlineCallbacks
    def setUp(self):
        self.store = self.make_store()
        self.store.run_sync(domains.add_domain, "acme.test")
        self.prepare()
        self.session = Session(
            intake=Intake(self.store),
            settings=make_settings(relay_networks=("192.0.2.0/24",)),
            peer="192.0.2.10",
        )
        self.session.ehlo()
        self.session.command("MAIL FROM:<app@acme.test>")
        for recipient in self.recipients:
            # The real intake looks the domain up in the store: the reply comes later.
            reply = yield self.reply_to(b"RCPT TO:<" + recipient + b">\r\n")
            self.assertEqual(reply, "250 2.1.5 Ok\r\n")
        self.assertEqual(self.session.command("DATA")[0][:3], "354")

    def prepare(self):
        """Hook: more to set up in the store before the session starts."""

    @defer.inlineCallbacks
    def reply_to(self, data: bytes) -> defer.Deferred:
        at_once = self.session.send(data)
        if at_once:
            return "".join(line + "\r\n" for line in at_once)
        for _ in range(200):
            output = self.session.output()
            if output:
                return output
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail("no reply at the end of DATA")

    @defer.inlineCallbacks
    def test_re_encoded_and_accepted(self):
        reply = yield self.reply_to(SEVEN_BIT + b".\r\n")
        self.assertTrue(reply.startswith("250 2.0.0"), reply)
        entries = yield self.store.run(queue.queue_list, None, 10)
        self.assertEqual(len(entries), len(self.recipients))
        for entry in entries:  # one per address elsewhere (a forward address for jane@)
            detail = yield self.store.run(queue.queue_show, entry.queue_message_id)
            stored = yield self.store.run(filing_ops.message_raw, detail.message_id)
            self.assertLessEqual(longest_line(stored), 998)

    @defer.inlineCallbacks
    def test_unencodable_is_refused_with_5_6_3(self):
        reply = yield self.reply_to(SIGNED + b".\r\n")
        self.assertTrue(reply.startswith("554 5.6.3 "), reply)
        self.assertIn("multipart/signed", reply)
        self.assertEqual(reply.count("\r\n"), 1, "one line")
        self.assertEqual((yield self.store.run(queue.queue_list, None, 10)), [])


class RelayWithForwardingTests(SmtpReplyTests):
    """A relay host's message for an address elsewhere and for a mailbox here that
    forwards: it leaves from here as well, so it is fitted (or refused) the same."""

    recipients = (b"bob@remote.test", b"jane@acme.test")

    def prepare(self):
        self.store.run_sync(accounts.add_user, "jane", hash_password("pw"))
        self.store.run_sync(mailboxes.add_mailbox, "jane@acme.test", "jane")
        self.store.run_sync(forwarding.add_forward_target, "jane@acme.test", "jane@elsewhere.test")
        self.store.run_sync(forwarding.set_forwarding, "jane@acme.test", True, True)

    @defer.inlineCallbacks
    def test_re_encoded_and_accepted(self):
        yield super().test_re_encoded_and_accepted()
        [filing] = yield self.store.run(filing_ops.list_filings, "jane@acme.test", 10)
        kept = yield self.store.run(filing_ops.message_raw, filing.message.id)
        self.assertEqual(parsed(kept)["Content-Transfer-Encoding"], "quoted-printable")
