"""The mail client of the web admin, over a real listening port, on SQLite and PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import html
import re

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

import atollon_mail.web as web
from atollon_mail.config import parse_config
from atollon_mail.delivery.intake import summarize_headers
from atollon_mail.interfaces import ISpamLearner
from atollon_mail.store import accounts, domains, filing, mailboxes, queue
from atollon_mail.store.mailboxes import grant_mailbox_access, update_mailbox
from atollon_mail.store.records import InboundVerdict, IncomingMessage
from atollon_mail.web import compose
from tests.builders import web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_security import _hash

TEXT_MAIL = (
    b"From: Alice <alice@remote.example>\r\nTo: bob@example.com\r\n"
    b"Subject: Lunch plans\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <lunch@remote.example>\r\n\r\nShall we meet at noon?\r\n"
)

HTML_MAIL = (
    b"From: mallory@remote.example\r\nTo: bob@example.com\r\nSubject: Offer\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<p>Hello <b>friend</b><script>alert(1)</script>"
    b'<img src="https://tracker.example/p.gif" onerror="alert(2)"></p>\r\n'
    b"--XX\r\nContent-Type: application/pdf\r\n"
    b'Content-Disposition: attachment; filename="offer.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n"
)


SPAM_MAIL = (
    b"From: Winner <prize@spam.example>\r\nTo: bob@example.com\r\n"
    b"Subject: You won\r\nMessage-ID: <won@spam.example>\r\n\r\nClaim it now.\r\n"
)
SPAM = InboundVerdict(
    junk=True,
    authentication="mail.example.com; spf=fail smtp.mailfrom=prize@spam.example; dkim=none",
    spam_score=12.25,
    spam_threshold=6.0,
    spam_symbols=tuple(f"SYMBOL_{n}" for n in range(12)),
    spam_action="add header",
    notes=("could not verify the sender", "<b>not</b> signed"),
)
HAM = InboundVerdict(
    authentication="mail.example.com; dkim=pass header.d=remote.example",
    spam_score=0.5,
    spam_threshold=6.0,
    spam_symbols=("BAYES_HAM",),
    notes=("signed by remote.example", "forwarded by mx.partner.com, trusted"),
)


@implementer(ISpamLearner)
class RecordingLearner:
    """Records what it is taught; fails with `failure` when one is set."""

    def __init__(self):
        self.taught: list[tuple[bytes, bool]] = []
        self.failure: Exception | None = None

    def learn(self, raw, spam):
        if self.failure is not None:
            return defer.fail(self.failure)
        self.taught.append((raw, spam))
        return defer.succeed(None)


class WebMailTests(ServedWebMixin, StoreFixtureMixin):
    default_login = ("bob", "bob-secret")

    def setUp(self):
        if "atollon_mail.web.pages_mail" not in web.PAGE_MODULES:
            self.patch(web, "PAGE_MODULES", web.PAGE_MODULES + ("atollon_mail.web.pages_mail",))
        self.store = self.make_store()
        sync = self.store.run_sync
        sync(accounts.add_user, "admin", _hash("admin-secret"), name="Ada Admin", is_admin=True)
        sync(accounts.add_user, "bob", _hash("bob-secret"), name="Bob")
        sync(accounts.add_user, "carol", _hash("carol-secret"), name="Carol")
        sync(domains.add_domain, "example.com")
        self.bob_box = sync(mailboxes.add_mailbox, "bob@example.com", "bob")
        sync(mailboxes.add_mailbox, "carol@example.com", "carol")
        sync(mailboxes.add_mailbox, "shared@example.com", "carol")
        sync(grant_mailbox_access, "shared@example.com", "bob", view=True, edit=False)
        sync(update_mailbox, "bob@example.com", signature="Bob\nExample Ltd")
        self.text_id = self.deliver(TEXT_MAIL, "bob")
        self.html_id = self.deliver(HTML_MAIL, "bob")
        self.carol_id = self.deliver(TEXT_MAIL, "carol")
        self.clock = Clock()
        self.clock.advance(1_000_000)
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        self.learner = RecordingLearner()
        root = web_root(self, self.store, config, reactor, clock=self.clock, learner=self.learner)
        self.serve(root)

    def deliver(self, raw: bytes, local_part: str, verdict=None) -> int:
        recipient = self.store.run_sync(filing.resolve_recipient, local_part, "example.com")
        incoming = IncomingMessage(
            envelope_sender="someone@remote.example",
            recipients=(recipient,),
            raw=raw,
            verdict=verdict,
            **summarize_headers(raw),
        )
        [stored] = self.store.run_sync(filing.store_messages, [incoming])
        return stored.id

    # --- seeing mailboxes and messages ---------------------------------------------------

    @defer.inlineCallbacks
    def test_lists_only_viewable_mailboxes(self):
        bob = yield self.logged_in()
        page = yield bob.get("/mail")
        self.assertEqual(page.status, 200)
        listed = re.findall(r'href="/mail/box\?address=([^"]+)"', page.text)
        self.assertEqual(listed, ["bob%40example.com", "shared%40example.com"])
        carol = yield self.logged_in("carol", "carol-secret")
        page = yield carol.get("/mail")
        listed = re.findall(r'href="/mail/box\?address=([^"]+)"', page.text)
        self.assertEqual(listed, ["carol%40example.com", "shared%40example.com"])

    @defer.inlineCallbacks
    def test_mailbox_lists_messages_newest_first(self):
        bob = yield self.logged_in()
        page = yield bob.get("/mail/box?address=bob@example.com")
        self.assertEqual(page.status, 200)
        subjects = re.findall(r"&amp;id=\d+\">([^<]*)</a>", page.text)
        self.assertEqual(subjects, ["Offer", "Lunch plans"])
        self.assertIn("Alice &lt;alice@remote.example&gt;", page.text)
        self.assertIn("Mon, 02 Nov 2026 10:00:00 +0000", page.text)
        self.assertIn("<td>To Do (bob)</td>", page.text)
        # Bob may view the shared box but not write from it.
        shared = yield bob.get("/mail/box?address=shared@example.com")
        self.assertEqual(shared.status, 200)
        self.assertNotIn("/mail/compose", shared.text)

    @defer.inlineCallbacks
    def test_another_users_mailbox_is_not_found(self):
        bob = yield self.logged_in()
        for path in (
            "/mail/box?address=carol@example.com",
            f"/mail/message?address=carol@example.com&id={self.carol_id}",
            "/mail/box?address=nobody@example.com",
            "/mail/box?address=not%20an%20address",
            "/mail/box?address=" + "x" * 5000,
        ):
            response = yield bob.get(path)
            self.assertEqual(response.status, 404, path)

    @defer.inlineCallbacks
    def test_a_message_of_another_mailbox_by_id_is_not_found(self):
        bob = yield self.logged_in()
        for path in (
            f"/mail/message?address=bob@example.com&id={self.carol_id}",
            f"/mail/attachment?address=bob@example.com&id={self.carol_id}&part=0",
            "/mail/message?address=bob@example.com&id=999999",
            "/mail/message?address=bob@example.com&id=x",
        ):
            response = yield bob.get(path)
            self.assertEqual(response.status, 404, path)
        self.assertNotIn("noon", response.text)

    @defer.inlineCallbacks
    def test_reading_a_text_message(self):
        bob = yield self.logged_in()
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={self.text_id}")
        self.assertEqual(page.status, 200)
        self.assertIn("<pre>Shall we meet at noon?", page.text)
        self.assertIn("<dt>Subject</dt><dd>Lunch plans</dd>", page.text)
        self.assertIn("<dd>Alice &lt;alice@remote.example&gt;</dd>", page.text)
        self.assertNotIn("<iframe", page.text)

    @defer.inlineCallbacks
    def test_html_is_sanitized_in_a_sandboxed_frame(self):
        bob = yield self.logged_in()
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={self.html_id}")
        self.assertEqual(page.status, 200)
        [frame] = re.findall(r"<iframe [^>]*>", page.text)
        self.assertRegex(frame, r"^<iframe sandbox srcdoc=")
        self.assertNotIn("allow-scripts", frame)
        shown = html.unescape(re.search(r'srcdoc="([^"]*)"', frame).group(1))
        self.assertIn("<b>friend</b>", shown)
        for banned in ("<script", "alert", "onerror", "tracker.example", "<img"):
            self.assertNotIn(banned, shown)
        self.assertNotIn("<script>alert", page.text)

    @defer.inlineCallbacks
    def test_attachment_download(self):
        bob = yield self.logged_in()
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={self.html_id}")
        [link] = re.findall(r'href="(/mail/attachment\?[^"]+)"', page.text)
        self.assertIn("offer.pdf", page.text)
        response = yield bob.get(html.unescape(link))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("content-type"), "application/pdf")
        self.assertEqual(
            response.header("content-disposition"), "attachment; filename*=UTF-8''offer.pdf"
        )
        self.assertEqual(response.header("x-content-type-options"), "nosniff")
        self.assertEqual(response.body, b"%PDF-1.4\n")
        # The HTML part is not an attachment, and a part that does not exist is not found.
        for part in ("0", "7", "x"):
            other = yield bob.get(
                f"/mail/attachment?address=bob@example.com&id={self.html_id}&part={part}"
            )
            self.assertEqual(other.status, 404, part)

    # --- writing --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_compose_needs_the_edit_right(self):
        bob = yield self.logged_in()
        page = yield bob.get("/mail/compose?address=shared@example.com")
        self.assertEqual(page.status, 404)
        own = yield bob.get("/mail/compose?address=bob@example.com")
        response = yield bob.post(
            "/mail/compose?address=shared@example.com",
            {"csrf_token": own.csrf(), "to": "carol@example.com", "body": "hi"},
        )
        self.assertEqual(response.status, 404)
        self.assertEqual(self.store.run_sync(queue.queue_list), [])

    @defer.inlineCallbacks
    def test_compose_sends(self):
        bob = yield self.logged_in()
        page = yield bob.get("/mail/compose?address=bob@example.com")
        self.assertEqual(page.status, 200)
        self.assertIn('value="bob@example.com" readonly', page.text)
        body = html.unescape(re.search(r"<textarea[^>]*>\n(.*?)</textarea>", page.text, re.S)[1])
        self.assertEqual(body, "\n\n-- \nBob\nExample Ltd")
        response = yield bob.post(
            "/mail/compose?address=bob@example.com",
            {
                "csrf_token": page.csrf(),
                "to": "Far Away <far@remote.example>, carol@example.com",
                "cc": "",
                "subject": "Hello there",
                "body": "Hi both," + body,
            },
        )
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("location"), "/mail/box?address=bob%40example.com&sent=1")
        confirmation = yield bob.get(response.header("location"))
        self.assertIn("Message sent.", confirmation.text)
        [queued] = self.store.run_sync(queue.queue_list)
        self.assertEqual(
            (queued.address, queued.envelope_sender), ("far@remote.example", "bob@example.com")
        )
        self.assertEqual(queued.subject, "Hello there")
        [filed] = self.store.run_sync(filing.list_filings, "carol@example.com", 1)
        self.assertEqual(filed.message.subject, "Hello there")
        stored = self.store.run_sync(filing.message_raw, filed.message.id)
        self.assertTrue(stored.startswith(b"Return-Path: <bob@example.com>\r\n"))
        self.assertEqual(stored.count(b"Return-Path:"), 1)
        self.assertEqual(filed.message.size, len(stored))
        outgoing = self.store.run_sync(queue.outgoing_raw, [filed.message.id])[filed.message.id]
        self.assertNotIn(b"Return-Path:", outgoing, "the copy sent on has none")
        [sent, *_] = self.store.run_sync(filing.list_filings, "bob@example.com", 10)
        self.assertTrue(sent.context.name.startswith("Sent"))
        self.assertEqual(sent.message.id, filed.message.id)
        message = email.message_from_bytes(
            self.store.run_sync(filing.message_raw, sent.message.id), policy=email.policy.default
        )
        self.assertEqual(message["From"], "bob@example.com")
        self.assertTrue(message["Message-ID"] and message["Date"])
        content = message.get_content().replace("\r\n", "\n")
        self.assertEqual(content, "Hi both,\n\n-- \nBob\nExample Ltd\n")

    @defer.inlineCallbacks
    def test_compose_form_may_be_larger_than_other_forms(self):
        # 26,000 characters of Cyrillic: within the text limit, but the browser's form
        # encoding (%D0%9F per byte) makes it about 130 kB, over the 64 KiB of other forms.
        bob = yield self.logged_in()
        page = yield bob.get("/mail/compose?address=bob@example.com")
        text = "Привет, мир!\n" * 2000
        form = {"csrf_token": page.csrf(), "to": "carol@example.com", "subject": "Привет"}
        response = yield bob.post("/mail/compose?address=bob@example.com", {**form, "body": text})
        self.assertEqual(response.status, 303)
        [filed] = self.store.run_sync(filing.list_filings, "carol@example.com", 1)
        message = email.message_from_bytes(
            self.store.run_sync(filing.message_raw, filed.message.id), policy=email.policy.default
        )
        self.assertEqual(message.get_content().replace("\r\n", "\n"), text)

    @defer.inlineCallbacks
    def test_compose_of_a_long_paragraph_has_no_line_over_998_octets(self):
        paragraph = ("Příliš žluťoučký kůň úpěl ďábelské ódy, " * 125)[:5000]
        subject = "Long " * 200
        bob = yield self.logged_in()
        page = yield bob.get("/mail/compose?address=bob@example.com")
        response = yield bob.post(
            "/mail/compose?address=bob@example.com",
            {
                "csrf_token": page.csrf(),
                "to": "far@remote.example",
                "cc": "",
                "subject": subject,
                "body": paragraph,
            },
        )
        self.assertEqual(response.status, 303)
        [queued] = self.store.run_sync(queue.queue_list)
        detail = self.store.run_sync(queue.queue_show, queued.queue_message_id)
        raw = self.store.run_sync(filing.message_raw, detail.message_id)
        self.assertLessEqual(max(len(line) for line in raw.split(b"\r\n")), 998)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertIn(message["Content-Transfer-Encoding"], ("quoted-printable", "base64"))
        self.assertEqual(message.get_content().replace("\r\n", "\n"), paragraph + "\n")
        self.assertEqual(message["Subject"], subject.strip())
        # What the page itself writes, before the intake sees it.
        mailbox = self.store.run_sync(mailboxes.get_mailbox, "bob@example.com")
        values = {"to": "far@remote.example", "cc": "", "subject": subject, "body": paragraph}
        written = compose.build(mailbox, values, [], {})
        self.assertLessEqual(max(len(line) for line in written.split(b"\r\n")), 998)

    @defer.inlineCallbacks
    def test_compose_refuses_an_identity_that_no_longer_passes(self):
        # Set by an administrator, then become another mailbox's address.
        self.store.run_sync(update_mailbox, "bob@example.com", identity="desk@example.com")
        self.store.run_sync(mailboxes.add_mailbox, "desk@example.com", "carol")
        bob = yield self.logged_in()
        page = yield bob.get("/mail/compose?address=bob@example.com")
        form = {"csrf_token": page.csrf(), "to": "far@remote.example", "subject": "s", "body": "b"}
        response = yield bob.post("/mail/compose?address=bob@example.com", form)
        self.assertEqual(response.status, 400)
        self.assertIn(
            "Sending as desk@example.com is refused: another mailbox, desk@example.com, "
            "receives at desk@example.com.",
            html.unescape(response.text),
        )
        self.assertEqual(self.store.run_sync(queue.queue_list), [])

    @defer.inlineCallbacks
    def test_compose_bad_address_beside_the_field_keeps_values(self):
        bob = yield self.logged_in()
        page = yield bob.get("/mail/compose?address=bob@example.com")
        form = {"csrf_token": page.csrf(), "subject": "Kept", "body": "Typed text"}
        for to in ("not an address", "nobody@example.com"):
            response = yield bob.post("/mail/compose?address=bob@example.com", {**form, "to": to})
            self.assertEqual(response.status, 400, to)
            self.assertIn('id="to-error"', response.text)
            self.assertIn(f'value="{to}"', response.text)
            self.assertIn('value="Kept"', response.text)
            self.assertIn("Typed text</textarea>", response.text)
        self.assertEqual(self.store.run_sync(queue.queue_list), [])

    @defer.inlineCallbacks
    def test_compose_without_csrf_is_refused(self):
        bob = yield self.logged_in()
        response = yield bob.post(
            "/mail/compose?address=bob@example.com",
            {"to": "far@remote.example", "subject": "x", "body": "x"},
        )
        self.assertEqual(response.status, 403)
        self.assertEqual(self.store.run_sync(queue.queue_list), [])
        self.assertEqual(len(self.store.run_sync(filing.list_filings, "bob@example.com")), 2)

    # --- Junk ---------------------------------------------------------------------------

    def folders(self, address: str = "bob@example.com") -> dict[int, str]:
        return {f.message.id: f.folder for f in self.store.run_sync(filing.list_filings, address)}

    @staticmethod
    def subjects(page) -> list[str]:
        return re.findall(r"&amp;id=\d+\">([^<]*)</a>", page.text)

    @staticmethod
    def buttons(page) -> list[tuple[str, str]]:
        """(message id, target folder) of each move button on the page."""
        return re.findall(
            r'name="id" value="(\d+)">\s*<input type="hidden" name="to" value="(\w+)">',
            page.text,
        )

    @defer.inlineCallbacks
    def move(self, browser, message_id, to, address="bob@example.com", csrf=None):
        if csrf is None:
            page = yield browser.get(f"/mail/box?address={address}")
            csrf = page.csrf()
        form = {"address": address, "id": str(message_id), "to": to}
        if csrf:
            form["csrf_token"] = csrf
        return (yield browser.post("/mail/move", form))

    def test_the_learner_fits_the_interface(self):
        self.assertTrue(verifyObject(ISpamLearner, self.learner))

    @defer.inlineCallbacks
    def test_each_mailbox_shows_its_inbox_and_its_junk(self):
        spam_id = self.deliver(SPAM_MAIL, "bob", verdict=SPAM)
        bob = yield self.logged_in()
        inbox = yield bob.get("/mail/box?address=bob@example.com")
        self.assertEqual(self.subjects(inbox), ["Offer", "Lunch plans"])
        self.assertIn('<strong aria-current="page">Inbox</strong>', inbox.text)
        self.assertIn(
            'href="/mail/box?address=bob%40example.com&amp;folder=junk">Junk</a>', inbox.text
        )
        self.assertEqual(
            self.buttons(inbox), [(str(self.html_id), "junk"), (str(self.text_id), "junk")]
        )
        self.assertIn(">Junk</button>", inbox.text)
        junk = yield bob.get("/mail/box?address=bob@example.com&folder=junk")
        self.assertEqual(junk.status, 200)
        self.assertEqual(self.subjects(junk), ["You won"])
        self.assertEqual(self.buttons(junk), [(str(spam_id), "inbox")])
        self.assertIn(">Not junk</button>", junk.text)
        # A folder that does not exist, a page that is none.
        for path, status in (
            ("/mail/box?address=bob@example.com&folder=archive", 404),
            ("/mail/box?address=bob@example.com&folder=" + "j" * 5000, 404),
            ("/mail/box?address=bob@example.com&folder=junk&page=x", 400),
        ):
            response = yield bob.get(path)
            self.assertEqual(response.status, status, path)

    @defer.inlineCallbacks
    def test_tagged_junk_stays_in_the_inbox_marked(self):
        self.store.run_sync(update_mailbox, "bob@example.com", spam_handling="tag")
        spam_id = self.deliver(SPAM_MAIL, "bob", verdict=SPAM)
        self.assertEqual(self.folders()[spam_id], "inbox")
        bob = yield self.logged_in()
        inbox = yield bob.get("/mail/box?address=bob@example.com")
        self.assertEqual(self.subjects(inbox), ["You won", "Offer", "Lunch plans"])
        self.assertEqual(inbox.text.count("(probably junk)"), 1)
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={spam_id}")
        self.assertIn("Probably junk: what the checks found", page.text)

    @defer.inlineCallbacks
    def test_not_junk_moves_it_back_and_teaches_the_filter(self):
        spam_id = self.deliver(SPAM_MAIL, "bob", verdict=SPAM)
        raw = self.store.run_sync(filing.message_raw, spam_id)
        bob = yield self.logged_in()
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={spam_id}")
        self.assertIn(">Not junk</button>", page.text)
        self.assertIn('name="to" value="inbox"', page.text)
        response = yield self.move(bob, spam_id, "inbox")
        self.assertEqual(response.status, 303)
        self.assertEqual(
            response.header("location"),
            "/mail/box?address=bob%40example.com&folder=junk&moved=inbox",
        )
        self.assertEqual(self.folders()[spam_id], "inbox")
        self.assertEqual(self.learner.taught, [(raw, False)])
        confirmation = yield bob.get(response.header("location"))
        self.assertIn("Message moved to the inbox.", confirmation.text)
        self.assertEqual(self.subjects(confirmation), [])
        # Already there: nothing moves, nothing more is taught.
        response = yield self.move(bob, spam_id, "inbox")
        self.assertEqual(response.status, 303)
        self.assertEqual(self.learner.taught, [(raw, False)])
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={spam_id}")
        self.assertIn(">Junk</button>", page.text)

    @defer.inlineCallbacks
    def test_junk_moves_it_to_junk_and_teaches_the_filter(self):
        raw = self.store.run_sync(filing.message_raw, self.text_id)
        bob = yield self.logged_in()
        response = yield self.move(bob, self.text_id, "junk")
        self.assertEqual(response.status, 303)
        self.assertEqual(
            response.header("location"),
            "/mail/box?address=bob%40example.com&folder=inbox&moved=junk",
        )
        self.assertEqual(self.folders()[self.text_id], "junk")
        self.assertEqual(self.learner.taught, [(raw, True)])
        confirmation = yield bob.get(response.header("location"))
        self.assertIn("Message moved to Junk.", confirmation.text)
        self.assertEqual(self.subjects(confirmation), ["Offer"])
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={self.text_id}")
        self.assertIn("Back to Junk of bob@example.com", page.text)

    @defer.inlineCallbacks
    def test_a_filter_that_cannot_learn_leaves_the_move_and_says_so(self):
        self.learner.failure = ConnectionRefusedError("the spam filter is down")
        bob = yield self.logged_in()
        response = yield self.move(bob, self.text_id, "junk")
        self.assertEqual(response.status, 303)
        self.assertIn("learned=0", response.header("location"))
        self.assertEqual(self.folders()[self.text_id], "junk")
        confirmation = yield bob.get(response.header("location"))
        self.assertIn("The spam filter could not learn from it now", confirmation.text)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionRefusedError)), 1)

    @defer.inlineCallbacks
    def test_moving_without_a_spam_filter(self):
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        self.serve(web_root(self, self.store, config, reactor, clock=self.clock))  # no learner
        bob = yield self.logged_in()
        response = yield self.move(bob, self.text_id, "junk")
        self.assertEqual(response.status, 303)
        self.assertNotIn("learned=0", response.header("location"))
        self.assertEqual(self.folders()[self.text_id], "junk")
        self.assertEqual(self.learner.taught, [])

    @defer.inlineCallbacks
    def test_moving_needs_the_csrf_token(self):
        bob = yield self.logged_in()
        for csrf in ("", "forged"):
            response = yield self.move(bob, self.text_id, "junk", csrf=csrf)
            self.assertEqual(response.status, 403, csrf)
        self.assertEqual(self.folders()[self.text_id], "inbox")
        self.assertEqual(self.learner.taught, [])

    @defer.inlineCallbacks
    def test_moving_needs_the_edit_right(self):
        shared_id = self.deliver(SPAM_MAIL, "shared", verdict=SPAM)
        bob = yield self.logged_in()
        # Bob may only view the shared box: no buttons, and a move is not found.
        page = yield bob.get("/mail/box?address=shared@example.com&folder=junk")
        self.assertEqual(page.status, 200)
        self.assertEqual(self.subjects(page), ["You won"])
        self.assertEqual(self.buttons(page), [])
        page = yield bob.get(f"/mail/message?address=shared@example.com&id={shared_id}")
        self.assertNotIn("/mail/move", page.text)
        response = yield self.move(bob, shared_id, "inbox", address="shared@example.com")
        self.assertEqual(response.status, 404)
        # Carol's own box: bob has no rights at all; nor through his own box.
        response = yield self.move(bob, self.carol_id, "junk", address="carol@example.com")
        self.assertEqual(response.status, 404)
        response = yield self.move(bob, self.carol_id, "junk")
        self.assertEqual(response.status, 404)
        self.assertEqual(self.folders("shared@example.com")[shared_id], "junk")
        self.assertEqual(self.folders("carol@example.com")[self.carol_id], "inbox")
        self.assertEqual(self.learner.taught, [])

    @defer.inlineCallbacks
    def test_garbage_in_a_move_is_not_found(self):
        bob = yield self.logged_in()
        page = yield bob.get("/mail/box?address=bob@example.com")
        csrf = page.csrf()
        good = {"csrf_token": csrf, "address": "bob@example.com", "id": str(self.text_id)}
        for changed in (
            {"id": "x"},
            {"id": ""},
            {"id": "0"},
            {"id": "-1"},
            {"id": "9" * 40},
            {"id": str(2**63)},
            {"id": str(2**63 - 1)},
            {"id": "²"},
            {"to": "trash"},
            {"to": ""},
            {"address": "not an address"},
            {"address": "nobody@example.com"},
            {"address": "x" * 5000},
        ):
            form = {**good, "to": "junk", **changed}
            response = yield bob.post("/mail/move", form)
            self.assertEqual(response.status, 404, changed)
        response = yield bob.get(f"/mail/move?address=bob@example.com&id={self.text_id}&to=junk")
        self.assertEqual(response.status, 405)
        self.assertEqual(self.folders()[self.text_id], "inbox")
        self.assertEqual(self.learner.taught, [])

    @defer.inlineCallbacks
    def test_the_message_page_tells_the_verdicts_in_words(self):
        spam_id = self.deliver(SPAM_MAIL, "bob", verdict=SPAM)
        ham_id = self.deliver(TEXT_MAIL, "bob", verdict=HAM)
        unscanned_id = self.deliver(
            TEXT_MAIL, "bob", verdict=InboundVerdict(scanned=False, notes=("signed by x.example",))
        )
        bob = yield self.logged_in()
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={spam_id}")
        self.assertIn("In Junk: what the checks found", page.text)
        self.assertIn("<li>could not verify the sender</li>", page.text)
        self.assertIn("<li>&lt;b&gt;not&lt;/b&gt; signed</li>", page.text)
        reasons = ", ".join(f"SYMBOL_{n}" for n in range(10))
        self.assertIn(f"Spam score 12.25 (junk from 6), mainly: {reasons} and 2 more.", page.text)
        self.assertIn("spf=fail smtp.mailfrom=prize@spam.example", page.text)
        self.assertNotIn("Not scanned", page.text)
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={ham_id}")
        self.assertIn("<h2>what the checks found</h2>", page.text)
        self.assertIn("<li>signed by remote.example</li>", page.text)
        self.assertIn("<li>forwarded by mx.partner.com, trusted</li>", page.text)
        self.assertIn("Spam score 0.5 (junk from 6), mainly: BAYES_HAM.", page.text)
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={unscanned_id}")
        self.assertIn("Not scanned: the spam filter did not answer", page.text)
        self.assertNotIn("Spam score", page.text)
        # Mail nothing checked says nothing of checks.
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={self.text_id}")
        self.assertNotIn('id="checks"', page.text)


class SqliteWebMailTests(SqliteStoreMixin, WebMailTests, unittest.TestCase):
    pass


class PostgresWebMailTests(PostgresStoreMixin, WebMailTests, unittest.TestCase):
    pass
