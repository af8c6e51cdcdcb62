"""Reply, reply all and forward in the web mail client, over a real listening port, on
SQLite and PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import html
import re
from urllib.parse import unquote

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

import atollon_mail.web as web
from atollon_mail.config import parse_config
from atollon_mail.delivery.intake import summarize_headers
from atollon_mail.store import accounts, aliases, domains, filing, mailboxes, queue
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.mailboxes import grant_mailbox_access, update_mailbox
from atollon_mail.store.records import IncomingMessage
from atollon_mail.web import compose, pages_mail, replies
from tests.builders import web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_security import _hash

LUNCH = (
    b"From: Alice Smith <alice@remote.example>\r\n"
    b"To: bob@example.com, Dave <dave@remote.example>, robert@example.com\r\n"
    b"Cc: Erin <erin@remote.example>, BOB@example.com, alice@remote.example\r\n"
    b"Subject: Re: Lunch plans\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <lunch@remote.example>\r\n"
    b"In-Reply-To: <plans@remote.example>\r\n"
    b"References: <first@remote.example> <plans@remote.example>\r\n\r\n"
    b"Shall we meet at noon?\r\n> Earlier: where?\r\n"
)

WITH_REPLY_TO = (
    b"From: Newsletter <news@remote.example>\r\nReply-To: Help Desk <help@remote.example>\r\n"
    b"To: bob@example.com\r\nSubject: Your order\r\nMessage-ID: <order@remote.example>\r\n"
    b"\r\nIt shipped.\r\n"
)

OFFER = (
    b"From: Mallory <mallory@remote.example>\r\nTo: bob@example.com\r\nSubject: Offer\r\n"
    b"Date: Tue, 03 Nov 2026 09:00:00 +0000\r\nMessage-ID: <offer@remote.example>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    b"\r\nThe offer is attached. P\xc5\x99\xc3\xadli\xc5\xa1 dobr\xc3\xa9.\r\n"
    b"--XX\r\nContent-Type: application/pdf\r\n"
    b'Content-Disposition: attachment; filename="offer.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n"
)

LONG_LINES = (
    b"From: Alice <alice@remote.example>\r\nTo: bob@example.com\r\nSubject: Long\r\n"
    b"Message-ID: <long@remote.example>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
    b"\r\n\r\n" + b"=C5=BE" * 900 + b"\r\n" + (b"word " * 180).replace(b" ", b"=20") + b"\r\n"
)


def body_of(page) -> str:
    return html.unescape(re.search(r"<textarea[^>]*>\n(.*?)</textarea>", page.text, re.S)[1])


def value_of(page, name: str) -> str:
    return html.unescape(re.search(rf'id="{name}" name="{name}" value="([^"]*)"', page.text)[1])


class ReplyTests(ServedWebMixin, StoreFixtureMixin):
    default_login = ("bob", "bob-secret")

    def setUp(self):
        if "atollon_mail.web.pages_mail" not in web.PAGE_MODULES:
            self.patch(web, "PAGE_MODULES", web.PAGE_MODULES + ("atollon_mail.web.pages_mail",))
        self.store = self.make_store()
        sync = self.store.run_sync
        sync(accounts.add_user, "admin", _hash("admin-secret"), name="Ada", is_admin=True)
        sync(accounts.add_user, "bob", _hash("bob-secret"), name="Bob")
        sync(accounts.add_user, "carol", _hash("carol-secret"), name="Carol")
        sync(domains.add_domain, "example.com")
        sync(mailboxes.add_mailbox, "bob@example.com", "bob")
        sync(mailboxes.add_mailbox, "carol@example.com", "carol")
        sync(mailboxes.add_mailbox, "shared@example.com", "carol")
        sync(grant_mailbox_access, "shared@example.com", "bob", view=True, edit=False)
        sync(aliases.add_alias, "robert", "bob@example.com")
        sync(update_mailbox, "bob@example.com", signature="Bob\nExample Ltd")
        sync(update_mailbox, "bob@example.com", identity="robert@example.com", actor="admin")
        self.lunch_id = self.deliver(LUNCH, "bob")
        self.order_id = self.deliver(WITH_REPLY_TO, "bob")
        self.offer_id = self.deliver(OFFER, "bob")
        self.shared_id = self.deliver(LUNCH, "shared")
        self.carol_id = self.deliver(LUNCH, "carol")
        self.clock = Clock()
        self.clock.advance(1_000_000)
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        self.serve(web_root(self, self.store, config, reactor, clock=self.clock))

    def deliver(self, raw: bytes, local_part: str) -> int:
        recipient = self.store.run_sync(filing.resolve_recipient, local_part, "example.com")
        incoming = IncomingMessage(
            envelope_sender="someone@remote.example",
            recipients=(recipient,),
            raw=raw,
            **summarize_headers(raw),
        )
        [stored] = self.store.run_sync(filing.store_messages, [incoming])
        return stored.id

    def flags(self, message_id: int, address: str = "bob@example.com") -> tuple[str, ...]:
        [found] = [
            f.flags
            for f in self.store.run_sync(filing.list_filings, address)
            if f.message.id == message_id and f.folder == "inbox"
        ]
        return found

    def sent(self) -> tuple[bytes, email.message.EmailMessage]:
        """The one message queued for remote delivery, as stored."""
        [queued] = self.store.run_sync(queue.queue_list)
        detail = self.store.run_sync(queue.queue_show, queued.queue_message_id)
        raw = self.store.run_sync(filing.message_raw, detail.message_id)
        return raw, email.message_from_bytes(raw, policy=email.policy.default)

    def compose_url(self, action: str, message_id, address: str = "bob@example.com") -> str:
        return f"/mail/compose?address={address}&action={action}&id={message_id}"

    @defer.inlineCallbacks
    def answer(self, browser, action: str, message_id: int, **changes):
        """Open the prefilled form, change what is given, send it."""
        page = yield browser.get(self.compose_url(action, message_id))
        self.assertEqual(page.status, 200)
        form = {
            "csrf_token": page.csrf(),
            "address": "bob@example.com",
            "action": action,
            "original": str(message_id),
            "to": value_of(page, "to"),
            "cc": value_of(page, "cc"),
            "subject": value_of(page, "subject"),
            "body": body_of(page),
            **changes,
        }
        return (yield browser.post("/mail/compose?address=bob@example.com", form))

    # --- the message page -----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_the_message_page_offers_the_answers_to_those_who_may_send(self):
        bob = yield self.logged_in()
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={self.lunch_id}")
        links = re.findall(r'href="(/mail/compose\?[^"]+)">([^<]+)</a>', page.text)
        self.assertEqual(
            [(html.unescape(url), label) for url, label in links],
            [
                (self.compose_url(action, self.lunch_id).replace("@", "%40", 1), label)
                for action, label in (
                    ("reply", "Reply"),
                    ("reply-all", "Reply all"),
                    ("forward", "Forward"),
                    ("forward-attached", "Forward as attachment"),
                )
            ],
        )
        shared = yield bob.get(f"/mail/message?address=shared@example.com&id={self.shared_id}")
        self.assertEqual(shared.status, 200)
        self.assertNotIn("/mail/compose", shared.text)

    # --- prefilled forms ------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_reply_is_prefilled(self):
        bob = yield self.logged_in()
        page = yield bob.get(self.compose_url("reply", self.lunch_id))
        self.assertEqual(page.status, 200)
        self.assertIn("<h1>Reply</h1>", page.text)
        self.assertIn('value="robert@example.com" readonly', page.text)
        self.assertIn('name="action" value="reply"', page.text)
        self.assertIn(f'name="original" value="{self.lunch_id}"', page.text)
        self.assertEqual(value_of(page, "to"), "Alice Smith <alice@remote.example>")
        self.assertEqual(value_of(page, "cc"), "")
        self.assertEqual(value_of(page, "subject"), "Re: Lunch plans")
        self.assertEqual(
            body_of(page),
            "On Mon, 02 Nov 2026 10:00:00 +0000, Alice Smith wrote:\n"
            "> Shall we meet at noon?\n>> Earlier: where?\n\n\n\n-- \nBob\nExample Ltd",
        )

    @defer.inlineCallbacks
    def test_reply_all_adds_the_others_but_not_the_mailbox_itself(self):
        bob = yield self.logged_in()
        page = yield bob.get(self.compose_url("reply-all", self.lunch_id))
        self.assertIn("<h1>Reply to all</h1>", page.text)
        # bob@ (any case), the alias robert@ and the identity are the mailbox's own.
        self.assertEqual(
            value_of(page, "to"), "Alice Smith <alice@remote.example>, Dave <dave@remote.example>"
        )
        self.assertEqual(value_of(page, "cc"), "Erin <erin@remote.example>")
        self.assertEqual(value_of(page, "subject"), "Re: Lunch plans")

    @defer.inlineCallbacks
    def test_reply_goes_to_reply_to(self):
        bob = yield self.logged_in()
        page = yield bob.get(self.compose_url("reply", self.order_id))
        self.assertEqual(value_of(page, "to"), "Help Desk <help@remote.example>")
        self.assertEqual(value_of(page, "subject"), "Re: Your order")
        self.assertTrue(body_of(page).startswith("Newsletter wrote:\n> It shipped.\n"))
        page = yield bob.get(self.compose_url("reply-all", self.order_id))
        self.assertEqual(value_of(page, "to"), "Help Desk <help@remote.example>")
        self.assertEqual(value_of(page, "cc"), "")

    @defer.inlineCallbacks
    def test_forward_inline_is_prefilled_with_the_original(self):
        bob = yield self.logged_in()
        page = yield bob.get(self.compose_url("forward", self.offer_id))
        self.assertIn("<h1>Forward</h1>", page.text)
        self.assertEqual(value_of(page, "to"), "")
        self.assertEqual(value_of(page, "subject"), "Fwd: Offer")
        self.assertEqual(
            body_of(page),
            "\n\n---------- Forwarded message ----------\n"
            "From: Mallory <mallory@remote.example>\n"
            "Date: Tue, 03 Nov 2026 09:00:00 +0000\n"
            "Subject: Offer\nTo: bob@example.com\n\n"
            "The offer is attached. Příliš dobré.\n\n-- \nBob\nExample Ltd",
        )
        self.assertRegex(page.text, r'id="carried">\s*<p>Sent along:</p>\s*<ul>\s*<li>offer.pdf')

    @defer.inlineCallbacks
    def test_forward_as_attachment_is_prefilled(self):
        bob = yield self.logged_in()
        page = yield bob.get(self.compose_url("forward-attached", self.offer_id))
        self.assertEqual(value_of(page, "subject"), "Fwd: Offer")
        self.assertEqual(body_of(page), "\n\n-- \nBob\nExample Ltd")
        self.assertIn("<li>the original message (.eml)</li>", page.text)

    # --- sending --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_a_reply_threads_and_marks_the_original_answered(self):
        bob = yield self.logged_in()
        self.assertNotIn("\\Answered", self.flags(self.lunch_id))
        response = yield self.answer(bob, "reply", self.lunch_id, body="Noon is fine.\n")
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("location"), "/mail/box?address=bob%40example.com&sent=1")
        raw, message = self.sent()
        self.assertEqual(message["From"], "robert@example.com")
        self.assertEqual(message["To"], "Alice Smith <alice@remote.example>")
        self.assertEqual(message["Subject"], "Re: Lunch plans")
        self.assertEqual(message["In-Reply-To"], "<lunch@remote.example>")
        self.assertEqual(
            message["References"].split(),
            ["<first@remote.example>", "<plans@remote.example>", "<lunch@remote.example>"],
        )
        self.assertEqual(message.get_content().replace("\r\n", "\n"), "Noon is fine.\n")
        self.assertIn("\\Answered", self.flags(self.lunch_id))
        self.assertNotIn("\\Answered", self.flags(self.order_id))
        # The copy in Sent is the message sent.
        [sent] = [
            f
            for f in self.store.run_sync(filing.list_filings, "bob@example.com")
            if f.context.name.startswith("Sent")
        ]
        self.assertEqual(sent.message.subject, "Re: Lunch plans")
        self.assertEqual(sent.flags, ("\\Seen",))
        # Answered twice: the flag is there once.
        response = yield self.answer(bob, "reply", self.lunch_id)
        self.assertEqual(response.status, 303)
        self.assertEqual(self.flags(self.lunch_id).count("\\Answered"), 1)

    @defer.inlineCallbacks
    def test_reply_all_reaches_everyone_once(self):
        bob = yield self.logged_in()
        response = yield self.answer(bob, "reply-all", self.lunch_id)
        self.assertEqual(response.status, 303)
        queued = self.store.run_sync(queue.queue_list)
        self.assertEqual(
            sorted(recipient.address for recipient in queued),
            ["alice@remote.example", "dave@remote.example", "erin@remote.example"],
        )
        detail = self.store.run_sync(queue.queue_show, queued[0].queue_message_id)
        raw = self.store.run_sync(filing.message_raw, detail.message_id)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(message["Cc"], "Erin <erin@remote.example>")
        self.assertIn("\\Answered", self.flags(self.lunch_id))

    @defer.inlineCallbacks
    def test_a_refused_reply_leaves_the_original_unanswered(self):
        bob = yield self.logged_in()
        response = yield self.answer(bob, "reply", self.lunch_id, to="nobody@example.com")
        self.assertEqual(response.status, 400)
        # The form comes back as a reply still.
        self.assertIn('name="action" value="reply"', response.text)
        self.assertIn(f'name="original" value="{self.lunch_id}"', response.text)
        self.assertNotIn("\\Answered", self.flags(self.lunch_id))
        self.assertEqual(self.store.run_sync(queue.queue_list), [])

    @defer.inlineCallbacks
    def test_forward_inline_keeps_the_attachments(self):
        bob = yield self.logged_in()
        response = yield self.answer(bob, "forward", self.offer_id, to="far@remote.example")
        self.assertEqual(response.status, 303)
        _, message = self.sent()
        self.assertEqual(message["Subject"], "Fwd: Offer")
        self.assertEqual(message["From"], "robert@example.com")
        self.assertIsNone(message["In-Reply-To"])
        self.assertIn("Příliš dobré.", message.get_body(("plain",)).get_content())
        [attached] = list(message.iter_attachments())
        self.assertEqual(attached.get_filename(), "offer.pdf")
        self.assertEqual(attached.get_content_type(), "application/pdf")
        self.assertEqual(attached.get_content(), b"%PDF-1.4\n")
        self.assertIn("$Forwarded", self.flags(self.offer_id))
        self.assertNotIn("\\Answered", self.flags(self.offer_id))

    @defer.inlineCallbacks
    def test_forward_as_attachment_carries_the_original_bytes(self):
        original = self.store.run_sync(filing.message_raw, self.offer_id)
        bob = yield self.logged_in()
        response = yield self.answer(
            bob, "forward-attached", self.offer_id, to="far@remote.example", body="See below."
        )
        self.assertEqual(response.status, 303)
        raw, message = self.sent()
        self.assertEqual(message["Subject"], "Fwd: Offer")
        self.assertEqual(message.get_content_type(), "multipart/mixed")
        text, attached = message.get_payload()
        self.assertEqual(text.get_content().replace("\r\n", "\n"), "See below.\n")
        self.assertEqual(attached.get_content_type(), "message/rfc822")
        self.assertEqual(attached.get_filename(), "Offer.eml")
        self.assertEqual(attached["Content-Transfer-Encoding"], "8bit")
        self.assertEqual(attached.get_payload(0)["Message-ID"], "<offer@remote.example>")
        self.assertIn(b"\r\n\r\n" + original + b"\r\n--", raw)
        self.assertLessEqual(max(len(line) for line in raw.split(b"\r\n")), 998)
        self.assertIn("$Forwarded", self.flags(self.offer_id))

    @defer.inlineCallbacks
    def test_long_lines_are_quoted_wrapped(self):
        long_id = self.deliver(LONG_LINES, "bob")
        bob = yield self.logged_in()
        page = yield bob.get(self.compose_url("reply", long_id))
        quoted = [line for line in body_of(page).split("\n") if line.startswith(">")]
        # One word of 900 letters cut in 200s; 180 short words wrapped, 15 a line.
        self.assertEqual(quoted[:5], ["> " + "ž" * 200] * 4 + ["> " + "ž" * 100])
        self.assertEqual(quoted[5:], ["> " + " ".join(["word"] * 15)] * 12)
        response = yield self.answer(bob, "reply", long_id, to="far@remote.example")
        self.assertEqual(response.status, 303)
        raw, message = self.sent()
        self.assertLessEqual(max(len(line) for line in raw.split(b"\r\n")), 998)
        # What the page writes itself, before the intake fits anything.
        mailbox = self.store.run_sync(mailboxes.get_mailbox, "bob@example.com")
        original = pages_mail.Original(
            "reply", long_id, self.store.run_sync(filing.message_raw, long_id)
        )
        values = replies.prefill("reply", original.raw, mailbox, pages_mail.MAX_BODY)
        threading = replies.threading_headers(original.raw)
        written = compose.build(mailbox, values, [], threading)
        self.assertLessEqual(max(len(line) for line in written.split(b"\r\n")), 998)
        # The quote as sent reads back as shown in the form.
        self.assertEqual(
            message.get_content().replace("\r\n", "\n").rstrip("\n"), body_of(page).rstrip("\n")
        )

    # --- refusals -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_answers_need_the_csrf_token(self):
        bob = yield self.logged_in()
        for token in ("", "forged"):
            response = yield self.answer(bob, "reply", self.lunch_id, csrf_token=token)
            self.assertEqual(response.status, 403, token)
        self.assertEqual(self.store.run_sync(queue.queue_list), [])
        self.assertNotIn("\\Answered", self.flags(self.lunch_id))

    @defer.inlineCallbacks
    def test_answers_need_the_edit_right(self):
        bob = yield self.logged_in()
        for action in replies.ACTIONS:
            # Bob may only view the shared box, and has no rights on carol's.
            for address, message_id in (
                ("shared@example.com", self.shared_id),
                ("carol@example.com", self.carol_id),
            ):
                page = yield bob.get(self.compose_url(action, message_id, address=address))
                self.assertEqual(page.status, 404, (action, address))
        own = yield bob.get("/mail/compose?address=bob@example.com")
        for address, message_id in (
            ("shared@example.com", self.shared_id),
            ("bob@example.com", self.shared_id),  # not filed in bob's box
            ("bob@example.com", self.carol_id),
        ):
            form = {
                "csrf_token": own.csrf(),
                "address": address,
                "action": "reply",
                "original": str(message_id),
                "to": "far@remote.example",
                "subject": "Re: Lunch plans",
                "body": "x",
            }
            response = yield bob.post(f"/mail/compose?address={address}", form)
            self.assertEqual(response.status, 404, (address, message_id))
        self.assertEqual(self.store.run_sync(queue.queue_list), [])
        self.assertNotIn("\\Answered", self.flags(self.shared_id, "shared@example.com"))
        self.assertNotIn("\\Answered", self.flags(self.carol_id, "carol@example.com"))

    @defer.inlineCallbacks
    def test_an_id_that_is_none_is_not_found(self):
        bob = yield self.logged_in()
        own = yield bob.get("/mail/compose?address=bob@example.com")
        for action, message_id in (
            ("reply", "x"),
            ("reply", ""),
            ("reply", "0"),
            ("reply", "-1"),
            ("reply", "9" * 40),
            ("reply", "999999"),
            ("forward", str(2**63)),
            ("forward-attached", "%C2%B2"),
            ("delete", str(self.lunch_id)),
            ("r" * 5000, str(self.lunch_id)),
        ):
            page = yield bob.get(self.compose_url(action, message_id))
            self.assertEqual(page.status, 404, (action, message_id))
            form = {
                "csrf_token": own.csrf(),
                "address": "bob@example.com",
                "action": action,
                "original": unquote(message_id),
                "to": "far@remote.example",
                "subject": "s",
                "body": "b",
            }
            response = yield bob.post("/mail/compose?address=bob@example.com", form)
            self.assertEqual(response.status, 404, (action, message_id))
        self.assertEqual(self.store.run_sync(queue.queue_list), [])

    # --- the flag in the store ------------------------------------------------------------

    def test_add_flag(self):
        sync = self.store.run_sync
        self.assertEqual(sync(filing.add_flag, "bob@example.com", self.lunch_id, "\\Answered"), 1)
        self.assertEqual(sync(filing.add_flag, "bob@example.com", self.lunch_id, "\\Answered"), 0)
        self.assertEqual(self.flags(self.lunch_id), ("\\Answered",))
        self.assertEqual(sync(filing.add_flag, "bob@example.com", self.lunch_id, "$Forwarded"), 1)
        self.assertEqual(self.flags(self.lunch_id), ("\\Answered", "$Forwarded"))
        with self.assertRaises(NotFound):
            sync(filing.add_flag, "bob@example.com", self.carol_id, "\\Answered")
        for bad in ("", "\\", "two words", "\\Answered)", "x" * 201):
            with self.assertRaises(Invalid, msg=bad):
                sync(filing.add_flag, "bob@example.com", self.lunch_id, bad)


class RepliesUnitTests(unittest.TestCase):
    def test_subjects_get_one_prefix(self):
        for subject, expected in (
            ("Lunch", "Re: Lunch"),
            ("Re: Lunch", "Re: Lunch"),
            ("RE: re: Lunch", "Re: Lunch"),
            ("Re[2]: AW: Lunch", "Re: Lunch"),
            ("Regarding lunch", "Re: Regarding lunch"),
            ("", "Re: "),
        ):
            self.assertEqual(replies.reply_subject(subject), expected, subject)
        self.assertEqual(replies.forward_subject("Offer"), "Fwd: Offer")
        self.assertEqual(replies.forward_subject("Fwd: Offer"), "Fwd: Offer")
        self.assertEqual(replies.forward_subject("FW: Offer"), "FW: Offer")

    def test_threading_headers(self):
        self.assertEqual(
            replies.threading_headers(b"Message-ID: <b@x>\r\nIn-Reply-To: <a@x>\r\n\r\nx\r\n"),
            {"In-Reply-To": "<b@x>", "References": "<a@x> <b@x>"},
        )
        self.assertEqual(replies.threading_headers(b"Subject: none\r\n\r\nx\r\n"), {})
        many = " ".join(f"<{n}@x>" for n in range(50))
        found = replies.threading_headers(
            f"Message-ID: <last@x>\r\nReferences: {many}\r\n\r\nx\r\n".encode()
        )
        chain = found["References"].split()
        self.assertEqual(len(chain), replies.MOST_REFERENCES)
        self.assertEqual((chain[0], chain[1], chain[-1]), ("<0@x>", "<32@x>", "<last@x>"))

    def test_a_reply_to_a_message_the_mailbox_sent_goes_to_its_recipients(self):
        class Mailbox:
            address = "bob@example.com"
            identity = "bob@example.com"
            aliases = ()
            signature = ""

        message = replies.parse(
            b"From: bob@example.com\r\nTo: Far <far@remote.example>\r\n"
            b"Cc: near@remote.example\r\n\r\nx\r\n"
        )
        self.assertEqual(
            replies.recipients(message, Mailbox, False), ("Far <far@remote.example>", "")
        )
        self.assertEqual(
            replies.recipients(message, Mailbox, True),
            ("Far <far@remote.example>", "near@remote.example"),
        )
        to_self = replies.parse(b"From: bob@example.com\r\nTo: bob@example.com\r\n\r\nx\r\n")
        self.assertEqual(replies.recipients(to_self, Mailbox, True), ("bob@example.com", ""))

    def test_names_that_would_split_at_a_comma_are_left_out(self):
        class Mailbox:
            address = identity = "bob@example.com"
            aliases = ()

        message = replies.parse(b'From: "Smith, Alice" <alice@remote.example>\r\n\r\nx\r\n')
        self.assertEqual(replies.recipients(message, Mailbox, False), ("alice@remote.example", ""))

    def test_an_html_only_original_is_quoted_as_text(self):
        class Mailbox:
            address = identity = "bob@example.com"
            aliases = ()
            signature = ""

        raw = (
            b"From: Alice <alice@remote.example>\r\nContent-Type: text/html; charset=utf-8"
            b"\r\n\r\n<p>Hello &amp; <b>welcome</b></p><script>alert(1)</script>\r\n"
        )
        values = replies.prefill(replies.REPLY, raw, Mailbox, 60 * 1024)
        self.assertEqual(values["body"], "Alice wrote:\n> Hello & welcome\n\n")

    def test_a_text_too_long_to_quote_is_cut_and_says_so(self):
        class Mailbox:
            address = identity = "bob@example.com"
            aliases = ()
            signature = "Bob"

        raw = b"From: alice@remote.example\r\n\r\n" + b"line of text\r\n" * 1000
        room = replies.TEXT_ROOM + 1300  # 100 lines of 13 characters
        body = replies.prefill(replies.FORWARD, raw, Mailbox, room)["body"]
        self.assertEqual(body.count("line of text"), 100)
        self.assertIn("line of text\n" + replies.LEFT_OUT + "\n\n-- \nBob", body)
        body = replies.prefill(replies.REPLY, raw, Mailbox, room)["body"]
        self.assertEqual(body.count("> line of text"), 100)
        self.assertIn("> " + replies.LEFT_OUT, body)


class SqliteReplyTests(SqliteStoreMixin, ReplyTests, unittest.TestCase):
    pass


class PostgresReplyTests(PostgresStoreMixin, ReplyTests, unittest.TestCase):
    pass
