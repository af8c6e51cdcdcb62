"""The folders of the web mail client, over a real listening port, on SQLite and PostgreSQL:
the folder list with unread counts, conversations, several messages changed at once, the
flag buttons of a message, its original, and nothing of it for a user without the rights."""

from __future__ import annotations

import html
import re

from twisted.internet import defer
from twisted.trial import unittest

from atollon_mail.delivery.intake import summarize_headers
from atollon_mail.store import contexts, filing, mailfolders
from atollon_mail.store.records import IncomingMessage, Recipient
from atollon_mail.web.pages_folders import MAX_SELECTED, thread_ids
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_mail import HTML_MAIL, TEXT_MAIL, WebMailTests

BOX = "/mail/box?address=bob@example.com"


def _mail(subject: str, message_id: str, *headers: str) -> bytes:
    lines = [
        "From: Alice <alice@remote.example>",
        "To: bob@example.com",
        f"Subject: {subject}",
        f"Message-ID: <{message_id}@remote.example>",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


class FolderWebTests(ServedWebMixin, StoreFixtureMixin):
    """Bob has his mailbox (the two messages of the mail tests in its inbox) and may view,
    not change, shared@example.com; carol@example.com is none of his."""

    default_login = ("bob", "bob-secret")
    # The mail tests' appliance and mailboxes.
    setUp = WebMailTests.setUp
    deliver = WebMailTests.deliver

    def sync(self, operation, *args):
        return self.store.run_sync(operation, *args)

    def flags(self, message_id: int, address: str = "bob@example.com") -> tuple:
        return self.sync(mailfolders.message_flags, address, message_id)

    def listed(self, folder: str = "inbox", address: str = "bob@example.com") -> list[int]:
        return [r.message.id for r in self.sync(mailfolders.list_folder, address, folder)]

    def uid(self, message_id: int, address: str = "bob@example.com") -> int:
        for folder in mailfolders.FIXED_FOLDERS:
            for record in self.sync(mailfolders.list_folder, address, folder):
                if record.message.id == message_id:
                    return record.uid
        raise AssertionError(f"message {message_id} is not filed in {address}")

    @staticmethod
    def unread_counts(page) -> dict[str, str]:
        found = re.findall(
            r'<span class="folder">(?:<strong[^>]*>|<a [^>]*>)([^<]+)</(?:strong|a)>'
            r'(?: <span class="unread-count" title="unread">(\d+)</span>)?</span>',
            page.text,
        )
        return {name: count or "0" for name, count in found}

    @staticmethod
    def rows(page) -> list[tuple[str, str]]:
        """(class, subject) of each message row of a folder's page."""
        return [
            (classes, html.unescape(subject))
            for classes, subject in re.findall(
                r'<tr class="([^"]*)" data-uid="\d+">.*?&amp;id=\d+">([^<]*)</a>',
                page.text,
                re.S,
            )
        ]

    @defer.inlineCallbacks
    def select(self, browser, action: str, uids, address="bob@example.com", **extra):
        page = yield browser.get(f"/mail/box?address={address}")
        form = [("csrf_token", page.csrf()), ("address", address), ("action", action)]
        form += [("uid", str(uid)) for uid in uids] + list(extra.items())
        return (yield browser.post("/mail/selection", form))

    # --- the folder list ----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_folders_with_their_unread_counts(self):
        project = self.sync(contexts.add_context, "project", "Spring launch")
        filed = self.deliver_to(project.id, _mail("Launch date", "launch"))
        bob = yield self.logged_in()
        page = yield bob.get(BOX)
        self.assertEqual(page.status, 200)
        self.assertEqual(
            self.unread_counts(page),
            {
                "Inbox": "3",
                "Sent": "0",
                "Drafts": "0",
                "Junk": "0",
                "Trash": "0",
                "Spring launch": "1",
            },
        )
        self.assertEqual(
            [classes for classes, _ in self.rows(page)], ["unread", "unread", "unread"]
        )
        link = f'href="/mail/box?address=bob%40example.com&amp;context={project.id}"'
        self.assertIn(link, page.text)
        in_project = yield bob.get(f"{BOX}&context={project.id}")
        self.assertEqual([subject for _, subject in self.rows(in_project)], ["Launch date"])
        self.assertIn('<strong aria-current="page">Spring launch</strong>', in_project.text)
        # Opened: read, in bold no more, one unread fewer (in both folders).
        opened = yield bob.get(f"/mail/message?address=bob@example.com&id={filed}")
        self.assertEqual(opened.status, 200)
        self.assertIn("\\Seen", self.flags(filed))
        page = yield bob.get(BOX)
        self.assertEqual(self.unread_counts(page)["Inbox"], "2")
        self.assertEqual(self.unread_counts(page)["Spring launch"], "0")
        self.assertIn(link, page.text)
        self.assertEqual(self.rows(page)[0], ("read", "Launch date"))
        # Sent: what Bob sends.
        compose = yield bob.get("/mail/compose?address=bob@example.com")
        response = yield bob.post(
            "/mail/compose?address=bob@example.com",
            {"csrf_token": compose.csrf(), "to": "carol@example.com", "subject": "Hi", "body": "x"},
        )
        self.assertEqual(response.status, 303)
        sent = yield bob.get(f"{BOX}&folder=sent")
        self.assertEqual(self.rows(sent), [("read", "Hi")])
        self.assertNotIn("Hi", [subject for _, subject in self.rows((yield bob.get(BOX)))])

    def deliver_to(self, context_id: int, raw: bytes) -> int:
        """Deliver to Bob into a CRM context, as a contact's default folder files mail."""
        found = self.sync(filing.resolve_recipient, "bob", "example.com")
        into = Recipient(
            address=found.address,
            mailbox_id=found.mailbox_id,
            mailbox_address=found.mailbox_address,
            context_id=context_id,
        )
        incoming = IncomingMessage(
            envelope_sender="alice@remote.example",
            recipients=(into,),
            raw=raw,
            **summarize_headers(raw),
        )
        [stored] = self.sync(filing.store_messages, [incoming])
        return stored.id

    @defer.inlineCallbacks
    def test_messages_with_an_attachment_are_marked(self):
        bob = yield self.logged_in()
        page = yield bob.get(BOX)
        rows = re.findall(r'<tr class="[^"]*" data-uid="\d+">(.*?)</tr>', page.text, re.S)
        marked = {
            html.unescape(re.search(r"&amp;id=\d+\">([^<]*)</a>", row).group(1)): (
                "attachment-mark" in row
            )
            for row in rows
        }
        # The HTML mail carries offer.pdf; the text mail nothing.
        self.assertEqual(marked, {"Offer": True, "Lunch plans": False})

    @defer.inlineCallbacks
    def test_conversations_group_the_page_by_references(self):
        first = self.deliver(_mail("Plans", "plans"), "bob")
        self.deliver(_mail("Other", "other"), "bob")
        self.deliver(_mail("Re: Plans", "re1", "In-Reply-To: <plans@remote.example>"), "bob")
        self.deliver(
            _mail("Re: Re: Plans", "re2", "References: <PLANS@remote.example> <re1@x.example>"),
            "bob",
        )
        bob = yield self.logged_in()
        page = yield bob.get(BOX)
        self.assertIn('id="threads-toggle">Show as conversations</a>', page.text)
        flat = [subject for _, subject in self.rows(page)]
        self.assertEqual(
            flat, ["Re: Re: Plans", "Re: Plans", "Other", "Plans", "Offer", "Lunch plans"]
        )
        threads = yield bob.get(f"{BOX}&threads=1")
        self.assertEqual(threads.status, 200)
        self.assertEqual(
            self.rows(threads),
            [
                ("unread", "Plans"),
                ("unread in-thread", "Re: Plans"),
                ("unread in-thread", "Re: Re: Plans"),
                ("unread", "Other"),
                ("unread", "Offer"),
                ("unread", "Lunch plans"),
            ],
        )
        self.assertIn("(3 messages)", threads.text)
        self.assertIn('id="threads-toggle">Show messages one by one</a>', threads.text)
        self.assertIn(f"&amp;id={first}", threads.text)

    # --- several messages at once -------------------------------------------------------

    @defer.inlineCallbacks
    def test_mark_flag_move_delete_and_empty_trash(self):
        bob = yield self.logged_in()
        both = [self.uid(self.text_id), self.uid(self.html_id)]
        response = yield self.select(bob, "read", both)
        self.assertEqual(response.status, 303)
        self.assertEqual(
            response.header("location"),
            "/mail/box?address=bob%40example.com&folder=inbox&done=read&count=2",
        )
        done = yield bob.get(response.header("location"))
        self.assertIn("2 messages marked read.", done.text)
        self.assertEqual([c for c, _ in self.rows(done)], ["read", "read"])
        yield self.select(bob, "flag", [self.uid(self.text_id)])
        yield self.select(bob, "unread", [self.uid(self.text_id)])
        self.assertEqual(self.flags(self.text_id), ("\\Flagged",))
        page = yield bob.get(BOX)
        self.assertEqual(self.rows(page), [("read", "Offer"), ("unread flagged", "Lunch plans")])
        self.assertIn('<span class="flag-mark" title="Flagged">', page.text)
        # Into Junk: the spam filter learns; out into the inbox, it learns it was not.
        response = yield self.select(bob, "junk", both)
        self.assertIn("done=junk&count=2", response.header("location"))
        self.assertEqual(self.listed("junk"), [self.html_id, self.text_id])
        self.assertEqual([spam for _, spam in self.learner.taught], [True, True])
        response = yield self.select(
            bob, "inbox", [self.uid(self.text_id)], folder="junk", page="1"
        )
        self.assertEqual(
            response.header("location"),
            "/mail/box?address=bob%40example.com&folder=junk&done=inbox&count=1",
        )
        raw, spam = self.learner.taught[-1]
        self.assertFalse(spam)
        self.assertIn(b"Lunch plans", raw)
        # Delete: into Trash (from the inbox, and from Junk without a lesson).
        both = [self.uid(self.text_id), self.uid(self.html_id)]
        yield self.select(bob, "trash", both)
        self.assertEqual(len(self.learner.taught), 3)
        self.assertCountEqual(self.listed("trash"), [self.html_id, self.text_id])
        trash = yield bob.get(f"{BOX}&folder=trash")
        self.assertIn('value="delete" class="secondary">Delete forever</button>', trash.text)
        self.assertIn(">Empty Trash</button>", trash.text)
        response = yield self.select(bob, "delete", [self.uid(self.html_id)], folder="trash")
        self.assertIn("done=delete&count=1", response.header("location"))
        self.assertEqual(self.listed("trash"), [self.text_id])
        response = yield bob.post(
            "/mail/empty-trash", {"csrf_token": trash.csrf(), "address": "bob@example.com"}
        )
        self.assertEqual(response.status, 303)
        emptied = yield bob.get(response.header("location"))
        self.assertIn("1 message deleted for good (Trash emptied).", emptied.text)
        self.assertEqual(self.listed("trash"), [])
        self.assertEqual(self.listed(), [])

    @defer.inlineCallbacks
    def test_the_spam_filter_down_keeps_the_move(self):
        self.learner.failure = RuntimeError("down")
        bob = yield self.logged_in()
        response = yield self.select(bob, "junk", [self.uid(self.text_id)])
        self.assertIn("learned=0", response.header("location"))
        page = yield bob.get(response.header("location"))
        self.assertIn("could not learn from it now; the move is kept", page.text)
        self.assertEqual(self.listed("junk"), [self.text_id])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_bad_selections_are_refused(self):
        bob = yield self.logged_in()
        uid = str(self.uid(self.text_id))
        for action, uids, extra, status in (
            ("read", ["x"], {}, 400),
            ("read", [uid, "0"], {}, 400),
            ("read", [str(2**63)], {}, 400),
            ("read", [], {}, 400),
            ("read", [uid] * (MAX_SELECTED + 1), {}, 400),
            ("archive", [uid], {}, 400),
            ("", [uid], {}, 400),
            ("read", [uid], {"folder": "archive"}, 404),
            ("read", [uid], {"context": "x"}, 404),
        ):
            response = yield self.select(bob, action, uids, **extra)
            self.assertEqual(response.status, status, (action, uids, extra))
        self.assertEqual(self.flags(self.text_id), ())
        # A uid that is none of the mailbox's: nothing changes, nothing fails.
        response = yield self.select(bob, "read", ["999999"])
        self.assertIn("count=0", response.header("location"))
        for path in (
            f"{BOX}&folder=archive",
            f"{BOX}&context=x",
            f"{BOX}&context=999999",
            f"{BOX}&context=0",
        ):
            response = yield bob.get(path)
            self.assertEqual(response.status, 404, path)
        response = yield bob.get(f"{BOX}&page=x")
        self.assertEqual(response.status, 400)
        # A confirmation says only what the page knows to say.
        for query in ("done=read&count=<b>x</b>", "done=<b>&count=1", "done=read"):
            response = yield bob.get(f"{BOX}&{query}")
            self.assertEqual(response.status, 200, query)
            self.assertNotIn('id="confirmation"', response.text, query)
        # Without the form's token, nothing is done.
        for path in ("/mail/selection", "/mail/empty-trash", "/mail/message/flags"):
            form = {"address": "bob@example.com", "action": "trash", "uid": uid, "id": "1"}
            response = yield bob.post(path, form)
            self.assertEqual(response.status, 403, path)
        self.assertEqual(self.listed(), [self.html_id, self.text_id])

    # --- one message --------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_the_message_page_marks_read_and_its_buttons(self):
        bob = yield self.logged_in()
        path = f"/mail/message?address=bob@example.com&id={self.text_id}"
        page = yield bob.get(path)
        self.assertEqual(self.flags(self.text_id), ("\\Seen",))
        self.assertIn('value="flag" class="secondary">Flag</button>', page.text)
        self.assertNotIn('id="flag-state"', page.text)
        form = {"csrf_token": page.csrf(), "address": "bob@example.com", "id": str(self.text_id)}
        response = yield bob.post("/mail/message/flags", {**form, "action": "flag"})
        self.assertEqual(response.status, 303)
        self.assertEqual(
            response.header("location"),
            f"/mail/message?address=bob%40example.com&id={self.text_id}",
        )
        page = yield bob.get(path)
        self.assertIn('id="flag-state"', page.text)
        self.assertIn('value="unflag" class="secondary">Unflag</button>', page.text)
        response = yield bob.post("/mail/message/flags", {**form, "action": "unread"})
        self.assertEqual(
            response.header("location"),
            "/mail/box?address=bob%40example.com&folder=inbox&done=unread&count=1",
        )
        self.assertEqual(self.flags(self.text_id), ("\\Flagged",))
        response = yield bob.post("/mail/message/flags", {**form, "action": "unflag"})
        self.assertEqual(self.flags(self.text_id), ())
        response = yield bob.post("/mail/message/flags", {**form, "action": "trash"})
        self.assertIn("done=trash", response.header("location"))
        self.assertEqual(self.listed("trash"), [self.text_id])
        page = yield bob.get(path)
        self.assertIn("Back to Trash of", page.text)
        self.assertNotIn('value="trash"', page.text)
        # Bad input.
        for changed, status in (
            ({"action": "explode"}, 400),
            ({"action": "flag", "id": "x"}, 404),
            ({"action": "flag", "id": str(self.carol_id)}, 404),
            ({"action": "flag", "id": "999999"}, 404),
        ):
            response = yield bob.post("/mail/message/flags", {**form, **changed})
            self.assertEqual(response.status, status, changed)

    @defer.inlineCallbacks
    def test_show_original_is_plain_text(self):
        bob = yield self.logged_in()
        page = yield bob.get(f"/mail/message?address=bob@example.com&id={self.html_id}")
        [link] = re.findall(r'href="(/mail/original\?[^"]+)">Show original</a>', page.text)
        response = yield bob.get(html.unescape(link))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("content-type"), "text/plain; charset=utf-8")
        self.assertEqual(response.header("x-content-type-options"), "nosniff")
        self.assertEqual(response.header("content-disposition"), "inline")
        self.assertEqual(response.body, self.sync(filing.message_raw, self.html_id))
        self.assertIn(HTML_MAIL, response.body)
        for path in (
            "/mail/original?address=bob@example.com&id=x",
            "/mail/original?address=bob@example.com&id=999999",
            f"/mail/original?address=bob@example.com&id={self.carol_id}",
        ):
            response = yield bob.get(path)
            self.assertEqual(response.status, 404, path)

    # --- rights -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_a_user_who_may_only_view_sees_no_buttons_and_changes_nothing(self):
        shared_id = self.deliver(TEXT_MAIL, "shared")
        bob = yield self.logged_in()
        page = yield bob.get("/mail/box?address=shared@example.com")
        self.assertEqual(page.status, 200)
        self.assertEqual(self.rows(page), [("unread", "Lunch plans")])
        for absent in ('id="selection"', 'name="uid"', "Empty Trash", "Delete"):
            self.assertNotIn(absent, page.text)
        message = yield bob.get(f"/mail/message?address=shared@example.com&id={shared_id}")
        self.assertEqual(message.status, 200)
        self.assertNotIn('id="message-flags"', message.text)
        self.assertEqual(self.flags(shared_id, "shared@example.com"), (), "not read by Bob")
        original = yield bob.get(f"/mail/original?address=shared@example.com&id={shared_id}")
        self.assertEqual(original.status, 200)
        uid = str(self.uid(shared_id, "shared@example.com"))
        csrf = page.csrf()
        for address in ("shared@example.com", "carol@example.com"):
            for path, form in (
                ("/mail/selection", {"action": "trash", "uid": uid}),
                ("/mail/empty-trash", {}),
                ("/mail/message/flags", {"action": "trash", "id": str(shared_id)}),
            ):
                response = yield bob.post(path, {"csrf_token": csrf, "address": address, **form})
                self.assertEqual(response.status, 404, (path, address))
        self.assertEqual(self.listed("inbox", "shared@example.com"), [shared_id])

    @defer.inlineCallbacks
    def test_no_route_shows_anything_of_a_mailbox_without_rights(self):
        bob = yield self.logged_in()
        carol = f"address=carol@example.com&id={self.carol_id}"
        for path in (
            "/mail/box?address=carol@example.com",
            "/mail/box?address=carol@example.com&folder=trash",
            "/mail/box?address=carol@example.com&threads=1",
            f"/mail/original?{carol}",
            f"/mail/message?{carol}",
        ):
            response = yield bob.get(path)
            self.assertEqual(response.status, 404, path)
            self.assertNotIn("noon", response.text)
        self.assertEqual(self.flags(self.carol_id, "carol@example.com"), ())


class ThreadIdTests(unittest.TestCase):
    def test_the_ids_a_message_names(self):
        head = (
            b"Subject: x\r\nMessage-ID: <A@x.example>\r\n"
            b"References: <r1@x.example>\r\n <r2@x.example> junk <a@x.example>\r\n"
            b"In-Reply-To: Bob's message <r2@x.example>\r\n\r\nbody <b@x.example>\r\n"
        )
        self.assertEqual(thread_ids(head), ("<a@x.example>", "<r2@x.example>", "<r1@x.example>"))

    def test_broken_headers_name_what_they_can(self):
        for head, expected in (
            (b"", ()),
            (b"Message-ID: no brackets\r\n\r\n", ()),
            (
                b"Message-ID: <\xff\xfe@x.example>\r\nSubject: \x80\r\n",
                ("<\ufffd\ufffd@x.example>",),
            ),
            (b"Message-ID: <cut-in-the-midd", ()),
            (b"\x00\x01 not a header at all", ()),
        ):
            self.assertEqual(thread_ids(head), expected, head)


class SqliteFolderWebTests(SqliteStoreMixin, FolderWebTests, unittest.TestCase):
    pass


class PostgresFolderWebTests(PostgresStoreMixin, FolderWebTests, unittest.TestCase):
    pass
