"""Writing in the web mail client: attachments uploaded with the compose form (and its
body limit, the message size the appliance accepts), drafts saved, replaced, reopened and
sent, and address suggestions; over a real listening port, on SQLite and PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import html
import json
import re

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.delivery.intake import summarize_headers
from atollon_mail.store import filing, queue
from atollon_mail.store.mailboxes import grant_mailbox_access
from atollon_mail.store.records import IncomingMessage
from atollon_mail.web import compose
from atollon_mail.web.sessions import SESSION_COOKIE
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin, _hash
from tests.web.test_body_limits import RawClient
from tests.web.test_reply import LUNCH, OFFER

MOST = 300_000  # [smtp] max_message_size of these tests
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4
NOTES = "Poznámky k nabídce.\n".encode()
CZECH_NAME = "Příloha č. 1.pdf"


class ComposeTests(ServedWebMixin, StoreFixtureMixin):
    default_login = ("bob", "bob-secret")

    def setUp(self):
        self.store = self.make_store()
        sync = self.store.run_sync
        builders.user(self.store, "admin", _hash("admin-secret"), name="Ada", is_admin=True)
        builders.hosted_mailbox(self.store, "bob@example.com", "bob", _hash("bob-secret"), "Bob")
        builders.user(self.store, "carol", _hash("carol-secret"), name="Carol Jones")
        builders.mailbox(self.store, "carol@example.com", "carol")
        builders.mailbox(self.store, "shared@example.com", "carol")
        sync(grant_mailbox_access, "shared@example.com", "bob", view=True, edit=False)
        builders.organization(self.store, "Acme")
        builders.person(self.store, name="Carla Customer", email="carla@customer.example")
        self.lunch_id = self.deliver(LUNCH, "bob")
        self.offer_id = self.deliver(OFFER, "bob")
        self.clock = Clock()
        self.clock.advance(1_000_000)
        config = parse_config(
            f"[appliance]\nhostname = mail.example.com\n[smtp]\nmax_message_size = {MOST}\n"
        )
        self.serve(builders.web_root(self, self.store, config, reactor, clock=self.clock))

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

    def queued(self) -> list[email.message.EmailMessage]:
        """The messages queued for remote delivery, as stored, oldest first."""
        found = []
        for item in self.store.run_sync(queue.queue_list):
            detail = self.store.run_sync(queue.queue_show, item.queue_message_id)
            raw = self.store.run_sync(filing.message_raw, detail.message_id)
            found.append(email.message_from_bytes(raw, policy=email.policy.default))
        return found

    def folder(self, name: str, address: str = "bob@example.com"):
        return self.store.run_sync(filing.list_filings, address, 100, 0, folder=name)

    def sent_copies(self, address: str = "bob@example.com"):
        return [f for f in self.folder("inbox", address) if f.context.name.startswith("Sent")]

    def form(self, page, **values) -> dict:
        form = {
            "csrf_token": page.csrf(),
            "address": "bob@example.com",
            "to": "",
            "cc": "",
            "subject": "",
            "body": "",
        }
        form.update(values)
        return form

    @defer.inlineCallbacks
    def compose(self, browser, query: str = ""):
        page = yield browser.get("/mail/compose?address=bob@example.com" + query)
        self.assertEqual(page.status, 200)
        return page

    # --- attachments ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_uploaded_files_are_sent_named_and_typed(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob)
        self.assertIn('enctype="multipart/form-data"', page.text)
        form = self.form(page, to="far@remote.example", subject="Offer", body="See both.")
        files = [("attachments", CZECH_NAME, PDF), ("attachments", "C:\\docs\\notes.txt", NOTES)]
        response = yield bob.post_multipart("/mail/compose?address=bob@example.com", form, files)
        self.assertEqual(response.status, 303, response.text[:500])
        [sent] = self.queued()
        self.assertEqual(sent.get_body(("plain",)).get_content().strip(), "See both.")
        attached = [
            (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
            for part in sent.iter_attachments()
        ]
        self.assertEqual(
            attached,
            [(CZECH_NAME, "application/pdf", PDF), ("notes.txt", "text/plain", NOTES)],
        )
        # The non-ASCII name as RFC 2231 says.
        self.assertIn("filename*=utf-8''P%C5%99%C3%ADloha%20%C4%8D.%201.pdf", sent.as_string())
        # And the copy in Sent is the same message, attachments and all.
        [copy] = self.sent_copies()
        self.assertEqual(copy.message.subject, "Offer")
        raw = self.store.run_sync(filing.message_raw, copy.message.id)
        self.assertIn(b"notes.txt", raw)

    @defer.inlineCallbacks
    def test_forward_as_attachment_goes_with_uploads(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob, f"&action=forward-attached&id={self.lunch_id}")
        form = self.form(
            page,
            to="far@remote.example",
            subject="Fwd: Lunch",
            action="forward-attached",
            original=str(self.lunch_id),
        )
        files = [("attachments", "menu.txt", b"Soup\n")]
        response = yield bob.post_multipart("/mail/compose?address=bob@example.com", form, files)
        self.assertEqual(response.status, 303, response.text[:500])
        [sent] = self.queued()
        kinds = [part.get_content_type() for part in sent.iter_attachments()]
        self.assertEqual(kinds, ["text/plain", "message/rfc822"])
        self.assertIn(b"Shall we meet at noon?", sent.as_bytes())
        self.assertIn("$Forwarded", self.folder("inbox")[-1].flags)

    @defer.inlineCallbacks
    def test_a_body_over_the_message_size_is_refused_before_it_is_read(self):
        bob = yield self.logged_in()
        cookie = f"Cookie: {SESSION_COOKIE}={bob.cookies[SESSION_COOKIE]}\r\n".encode()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        client = yield connectProtocol(endpoint, RawClient())
        self.addCleanup(client.transport.loseConnection)
        client.transport.write(
            b"POST /mail/compose?address=bob@example.com HTTP/1.1\r\nHost: x\r\n"
            + cookie
            + b"Content-Type: multipart/form-data; boundary=x\r\n"
            + f"Content-Length: {MOST + 1}\r\n\r\n".encode()
        )
        # Answered with no byte of the body sent: it was never read, nor seen by the page.
        received = yield client.closed.addTimeout(10, reactor)
        self.assertTrue(received.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), received)
        self.assertIn(f"accepts ({MOST} bytes); send less.".encode(), received)
        self.assertEqual(self.folder("drafts"), [])
        # Up to the limit, the same user's body is read (and answered by the page).
        small = yield bob.post_multipart(
            "/mail/compose?address=bob@example.com",
            self.form((yield self.compose(bob)), to="far@remote.example", subject="Small"),
            [("attachments", "a.bin", b"x" * (MOST // 2))],
        )
        self.assertEqual(small.status, 303)

    @defer.inlineCallbacks
    def test_a_chunked_upload_is_cut_off_at_the_message_size(self):
        bob = yield self.logged_in()
        cookie = f"Cookie: {SESSION_COOKIE}={bob.cookies[SESSION_COOKIE]}\r\n".encode()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        client = yield connectProtocol(endpoint, RawClient())
        self.addCleanup(client.transport.loseConnection)
        chunk = b"x" * (MOST + 1)
        client.transport.write(
            b"POST /mail/compose?address=bob@example.com HTTP/1.1\r\nHost: x\r\n"
            + cookie
            + b"Content-Type: multipart/form-data; boundary=x\r\n"
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(chunk), chunk)
        )
        received = yield client.closed.addTimeout(10, reactor)
        self.assertTrue(received.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), received)

    @defer.inlineCallbacks
    def test_attachments_larger_than_a_message_may_be_are_refused_clearly(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob)
        form = self.form(page, to="far@remote.example", subject="Big")
        # Under the body limit, but over it once base64-encoded.
        files = [("attachments", "big.bin", b"x" * (MOST * 9 // 10))]
        response = yield bob.post_multipart("/mail/compose?address=bob@example.com", form, files)
        self.assertEqual(response.status, 413)
        self.assertIn("Remove some.", html.unescape(response.text))
        self.assertEqual(self.queued(), [])

    @defer.inlineCallbacks
    def test_files_of_a_refused_form_are_kept_in_a_draft(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob)
        form = self.form(page, to="not an address", subject="Keep")
        files = [("attachments", "keep.txt", b"kept\n")]
        response = yield bob.post_multipart("/mail/compose?address=bob@example.com", form, files)
        self.assertEqual(response.status, 400)
        self.assertIn("kept in a draft", response.text)
        self.assertIn("keep.txt", response.text)
        [draft] = self.folder("drafts")
        self.assertIn(f'name="draft" id="draft" value="{draft.message.id}"', response.text)

    @defer.inlineCallbacks
    def test_a_refused_form_lists_what_goes_along_as_before(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob, f"&action=forward&id={self.offer_id}")
        form = self.form(page, subject="Fwd: Offer", action="forward", original=str(self.offer_id))
        refused = yield bob.post_multipart("/mail/compose?address=bob@example.com", form)
        self.assertEqual(refused.status, 400)
        self.assertIn('id="carried"', refused.text)  # from the original, as before
        self.assertNotIn('name="remove-0"', refused.text)
        # A draft's attachments are listed as stored, whatever was ticked for removal.
        yield self.save(bob, page, [("attachments", "x.txt", b"x")], subject="D")
        [draft] = self.folder("drafts")
        opened = yield self.compose(bob, f"&draft={draft.message.id}")
        form = self.form(opened, subject="D", draft=str(draft.message.id), **{"remove-0": "1"})
        refused = yield bob.post_multipart("/mail/compose?address=bob@example.com", form)
        self.assertEqual(refused.status, 400)
        self.assertIn('name="remove-0"', refused.text)
        self.assertIn("x.txt", refused.text)
        self.assertEqual(len(self.folder("drafts")), 1)

    @defer.inlineCallbacks
    def test_a_form_that_is_not_multipart_is_refused_elsewhere(self):
        bob = yield self.logged_in()
        page = yield bob.get("/mail")
        response = yield bob.post_multipart(
            "/logout", {"csrf_token": page.csrf()}, [("f", "a.txt", b"a")]
        )
        self.assertEqual(response.status, 400)

    @defer.inlineCallbacks
    def test_a_broken_multipart_body_is_a_bad_request(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob)
        for body in (
            b"--other\r\nContent-Disposition: form-data; name=to\r\n\r\nx\r\n--other--\r\n",
            b"--b\r\nContent-Disposition: form-data; name=to\r\n\r\n\xff\xfe\r\n--b--\r\n",
            b"no parts at all",
        ):
            response = yield bob.request(
                "POST",
                "/mail/compose?address=bob@example.com",
                body=body,
                content_type="multipart/form-data; boundary=b",
            )
            self.assertEqual(response.status, 400, body)
            self.assertIn("could not be read", response.text)
        self.assertEqual(self.queued(), [])
        self.assertTrue(page.csrf())

    def test_names_and_types_of_uploads(self):
        self.assertEqual(compose.clean_filename("C:\\docs\\a.pdf"), "a.pdf")
        self.assertEqual(compose.clean_filename("../../etc/passwd"), "passwd")
        self.assertEqual(compose.clean_filename("a\r\nb.txt"), "ab.txt")
        self.assertEqual(compose.clean_filename(""), "attachment")
        long = compose.clean_filename("x" * 300 + ".pdf")
        self.assertEqual((len(long), long[-4:]), (compose.LONGEST_FILENAME, ".pdf"))
        self.assertEqual(compose.content_type_of("Offer.PDF"), "application/pdf")
        self.assertEqual(compose.content_type_of("photo.jpeg"), "image/jpeg")
        self.assertEqual(compose.content_type_of("backup.tar.gz"), "application/gzip")
        self.assertEqual(compose.content_type_of("README"), "application/octet-stream")

    # --- drafts ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def save(self, browser, page, files=(), **values):
        form = self.form(page, intent="draft", **values)
        return (yield browser.post_multipart("/mail/compose?address=bob@example.com", form, files))

    @defer.inlineCallbacks
    def test_a_draft_with_an_address_no_message_can_carry_is_refused_beside_it(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob)
        refused = yield self.save(bob, page, to="x@[1.2.3", subject="Odd", body="Words.")
        self.assertEqual(refused.status, 400)
        self.assertIn("cannot be written into a message", refused.text)
        self.assertIn("Words.", refused.text)
        self.assertEqual(self.folder("drafts"), [])
        # Saved in the background: told in JSON, not a server error.
        page = yield self.compose(bob)
        form = self.form(page, intent="draft", autosave="1", cc="y@[", subject="Odd")
        autosaved = yield bob.post_multipart("/mail/compose?address=bob@example.com", form, ())
        self.assertEqual(autosaved.status, 400)
        self.assertIn("cc", json.loads(autosaved.text)["errors"])

    @defer.inlineCallbacks
    def test_a_draft_is_saved_replaced_reopened_and_sent(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob)
        saved = yield self.save(
            bob,
            page,
            [("attachments", "one.txt", b"1\n"), ("attachments", "two.txt", b"2\n")],
            to="far@remote.example",
            subject="Plan",
            body="First words.",
        )
        self.assertEqual(saved.status, 303)
        [draft] = self.folder("drafts")
        self.assertEqual(set(draft.flags), {"\\Draft", "\\Seen"})
        self.assertEqual(draft.message.subject, "Plan")
        self.assertEqual(
            saved.header("location"),
            f"/mail/compose?address=bob%40example.com&draft={draft.message.id}&saved=1",
        )
        # Listed in the Drafts folder, opening compose.
        listing = yield bob.get("/mail/box?address=bob@example.com&folder=drafts")
        self.assertEqual(listing.status, 200)
        self.assertIn(
            f"/mail/compose?address=bob%40example.com&amp;draft={draft.message.id}", listing.text
        )
        # Opened: its fields and attachments.
        opened = yield self.compose(bob, f"&draft={draft.message.id}&saved=1")
        self.assertIn("Draft saved.", opened.text)
        self.assertIn('value="far@remote.example"', opened.text)
        self.assertIn("First words.", opened.text)
        self.assertIn("one.txt", opened.text)
        self.assertIn('name="remove-1"', opened.text)
        messages = self.store.run_sync(filing.count_messages)
        # Saved again: one removed, one added; the new draft replaces the old.
        again = yield self.save(
            bob,
            opened,
            [("attachments", "three.txt", b"3\n")],
            to="far@remote.example",
            subject="Plan B",
            body="Second words.",
            draft=str(draft.message.id),
            **{"remove-0": "1"},
        )
        self.assertEqual(again.status, 303)
        [second] = self.folder("drafts")
        self.assertGreater(second.uid, draft.uid)
        self.assertEqual(second.message.subject, "Plan B")
        # The old message went with its filing (SQLite may give its id to the new one).
        self.assertEqual(self.store.run_sync(filing.count_messages), messages)
        # Sent: through the intake, the draft gone, the copy in Sent.
        reopened = yield self.compose(bob, f"&draft={second.message.id}")
        form = self.form(
            reopened,
            to="far@remote.example",
            subject="Plan B",
            body="Second words.",
            draft=str(second.message.id),
        )
        response = yield bob.post_multipart("/mail/compose?address=bob@example.com", form)
        self.assertEqual(response.status, 303, response.text[:500])
        [sent] = self.queued()
        self.assertEqual(
            [part.get_filename() for part in sent.iter_attachments()], ["two.txt", "three.txt"]
        )
        self.assertIsNone(sent["X-Atollon-Draft-Action"])
        self.assertEqual(self.folder("drafts"), [])
        [copy] = self.sent_copies()
        self.assertEqual(copy.message.subject, "Plan B")

    @defer.inlineCallbacks
    def test_autosave_answers_json_and_replaces(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob)
        first = yield self.save(
            bob, page, [("attachments", "a.txt", b"a")], subject="Auto", autosave="1"
        )
        self.assertEqual(first.status, 200)
        self.assertEqual(first.header("content-type"), "application/json")
        answer = json.loads(first.body)
        self.assertEqual(answer["attachments"], [{"index": 0, "filename": "a.txt", "size": 1}])
        second = yield self.save(
            bob, page, subject="Auto 2", autosave="1", draft=str(answer["draft"])
        )
        later = json.loads(second.body)
        self.assertEqual([a["filename"] for a in later["attachments"]], ["a.txt"])
        [draft] = self.folder("drafts")
        self.assertEqual((draft.message.id, draft.message.subject), (later["draft"], "Auto 2"))
        self.assertEqual(draft.uid, 4)  # after two received messages and the first draft

    @defer.inlineCallbacks
    def test_a_reply_draft_keeps_its_threading_and_answers_the_original(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob, f"&action=reply&id={self.lunch_id}")
        saved = yield self.save(
            bob,
            page,
            to="alice@remote.example",
            subject="Re: Lunch plans",
            body="Noon is fine.",
            action="reply",
            original=str(self.lunch_id),
        )
        self.assertEqual(saved.status, 303)
        [draft] = self.folder("drafts")
        opened = yield self.compose(bob, f"&draft={draft.message.id}")
        self.assertIn('name="action" value="reply"', opened.text)
        form = self.form(
            opened,
            to="alice@remote.example",
            subject="Re: Lunch plans",
            body="Noon is fine.",
            action="reply",
            original=str(self.lunch_id),
            draft=str(draft.message.id),
        )
        response = yield bob.post_multipart("/mail/compose?address=bob@example.com", form)
        self.assertEqual(response.status, 303, response.text[:500])
        [sent] = self.queued()
        self.assertEqual(sent["In-Reply-To"], "<lunch@remote.example>")
        self.assertEqual(
            " ".join(sent["References"].split()),
            "<first@remote.example> <plans@remote.example> <lunch@remote.example>",
        )
        [lunch] = [f for f in self.folder("inbox") if f.message.id == self.lunch_id]
        self.assertIn("\\Answered", lunch.flags)

    @defer.inlineCallbacks
    def test_a_forward_draft_carries_the_original_attachment_once(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob, f"&action=forward&id={self.offer_id}")
        self.assertIn("offer.pdf", page.text)
        yield self.save(
            bob, page, subject="Fwd: Offer", action="forward", original=str(self.offer_id)
        )
        [draft] = self.folder("drafts")
        opened = yield self.compose(bob, f"&draft={draft.message.id}")
        self.assertIn('name="remove-0"', opened.text)
        self.assertNotIn('id="carried"', opened.text)
        form = self.form(
            opened,
            to="far@remote.example",
            subject="Fwd: Offer",
            action="forward",
            original=str(self.offer_id),
            draft=str(draft.message.id),
        )
        response = yield bob.post_multipart("/mail/compose?address=bob@example.com", form)
        self.assertEqual(response.status, 303)
        [sent] = self.queued()
        self.assertEqual([p.get_filename() for p in sent.iter_attachments()], ["offer.pdf"])

    @defer.inlineCallbacks
    def test_drafts_of_others_are_not_found(self):
        carol = yield self.logged_in("carol", "carol-secret")
        page = yield carol.get("/mail/compose?address=carol@example.com")
        form = self.form(page, address="carol@example.com", intent="draft", subject="Mine")
        yield carol.post_multipart("/mail/compose?address=carol@example.com", form)
        [draft] = self.folder("drafts", "carol@example.com")
        bob = yield self.logged_in()
        for path in (
            f"/mail/compose?address=carol@example.com&draft={draft.message.id}",
            f"/mail/compose?address=bob@example.com&draft={draft.message.id}",
            f"/mail/compose?address=bob@example.com&draft={self.lunch_id}",  # no draft
            "/mail/box?address=carol@example.com&folder=drafts",
        ):
            response = yield bob.get(path)
            self.assertEqual(response.status, 404, path)

    @defer.inlineCallbacks
    def test_a_draft_needs_the_edit_right(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob)
        form = self.form(page, address="shared@example.com", intent="draft", subject="No")
        response = yield bob.post_multipart("/mail/compose?address=shared@example.com", form)
        self.assertEqual(response.status, 404)
        self.assertEqual(self.folder("drafts", "shared@example.com"), [])

    # --- address suggestions --------------------------------------------------------------

    @defer.inlineCallbacks
    def suggestions(self, browser, prefix: str) -> list[str]:
        response = yield browser.get(f"/mail/addresses?q={prefix}")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("content-type"), "application/json")
        return [item["label"] for item in json.loads(response.body)["matches"]]

    @defer.inlineCallbacks
    def test_suggestions_are_what_the_user_may_see(self):
        bob = yield self.logged_in()
        # Carol's own mailbox is not his to see (only the CRM's Carla is offered); the one
        # she shares with him is, by its address (her name is her default mailbox's).
        self.assertEqual(
            (yield self.suggestions(bob, "car")), ["Carla Customer <carla@customer.example>"]
        )
        self.assertEqual((yield self.suggestions(bob, "SHA")), ["shared@example.com"])
        self.assertEqual((yield self.suggestions(bob, "bo")), ["Bob <bob@example.com>"])
        # CRM contacts are the shared address book: offered to him too.
        self.assertEqual(
            (yield self.suggestions(bob, "carla")), ["Carla Customer <carla@customer.example>"]
        )
        admin = yield self.logged_in("admin", "admin-secret")
        self.assertEqual(
            (yield self.suggestions(admin, "car")),
            ["Carol Jones <carol@example.com>", "Carla Customer <carla@customer.example>"],
        )
        self.assertEqual(
            (yield self.suggestions(admin, "jones")), ["Carol Jones <carol@example.com>"]
        )
        self.assertEqual((yield self.suggestions(admin, "%")), [])
        self.assertEqual((yield self.suggestions(admin, "")), [])

    @defer.inlineCallbacks
    def test_at_most_ten_suggestions_escaped(self):
        for number in range(12):
            builders.person(
                self.store, name=f'Zed <b>"{number}"</b>', email=f"zed{number}@crm.example"
            )
        admin = yield self.logged_in("admin", "admin-secret")
        response = yield admin.get("/mail/addresses?q=zed")
        matches = json.loads(response.body)["matches"]
        self.assertEqual(len(matches), 10)
        self.assertEqual(matches[0]["name"], 'Zed <b>"0"</b>')
        self.assertEqual(matches[0]["label"], "zed0@crm.example")  # the name would not parse
        self.assertNotIn(b"<", response.body)  # escaped, should it ever land in markup
        self.assertEqual(response.header("x-content-type-options"), "nosniff")

    @defer.inlineCallbacks
    def test_suggestions_need_a_login(self):
        response = yield self.browser().get("/mail/addresses?q=bob")
        self.assertEqual(response.status, 303)
        self.assertTrue(response.header("location").startswith("/login?next="))

    @defer.inlineCallbacks
    def test_the_compose_page_asks_for_suggestions_and_saves_drafts(self):
        bob = yield self.logged_in()
        page = yield self.compose(bob)
        self.assertIn('list="to-suggestions"', page.text)
        self.assertRegex(page.text, r'<script src="/static/compose.js" nonce="[^"]+" defer>')
        script = yield bob.get("/static/compose.js")
        self.assertEqual(script.status, 200)
        for needed in ("sendBeacon", "/mail/addresses", "30000", "autosave"):
            self.assertIn(needed, script.text)
        self.assertTrue(re.search(r'name="intent" value="draft"', page.text))


class SqliteComposeTests(SqliteStoreMixin, ComposeTests, unittest.TestCase):
    pass


class PostgresComposeTests(PostgresStoreMixin, ComposeTests, unittest.TestCase):
    pass
