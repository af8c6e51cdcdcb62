"""The search page of the web mail client, over a real listening port, on SQLite and
PostgreSQL; the mail client's set-up (bob's mailbox with a text and an HTML message,
carol's with one, the shared box bob may view)."""

from __future__ import annotations

import re

from twisted.internet import defer
from twisted.trial import unittest

from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_mail import TEXT_MAIL, WebMailTests


def _found(page) -> list[str]:
    return re.findall(r'href="/mail/message\?address=([^&]+)&amp;id=(\d+)"', page.text)


class WebSearchTests(ServedWebMixin, StoreFixtureMixin):
    default_login = ("bob", "bob-secret")
    setUp = WebMailTests.setUp
    deliver = WebMailTests.deliver

    @defer.inlineCallbacks
    def test_the_mailbox_page_has_a_search_box(self):
        bob = yield self.logged_in()
        page = yield bob.get("/mail/box?address=bob@example.com")
        self.assertIn('action="/mail/search"', page.text)
        self.assertIn('name="address" value="bob@example.com"', page.text)

    @defer.inlineCallbacks
    def test_finds_a_word_of_the_html_body_and_links_to_the_message(self):
        bob = yield self.logged_in()
        page = yield bob.get("/mail/search?address=bob@example.com&q=friend")
        self.assertEqual(page.status, 200)
        self.assertEqual(_found(page), [("bob%40example.com", str(self.html_id))])
        self.assertIn("Has an attachment", page.text)
        message = yield bob.get(f"/mail/message?address=bob@example.com&id={self.html_id}")
        self.assertEqual(message.status, 200)
        page = yield bob.get("/mail/search?address=bob@example.com&q=noon&attachment=1")
        self.assertEqual(_found(page), [])
        self.assertIn("Nothing found", page.text)

    @defer.inlineCallbacks
    def test_all_viewable_mailboxes_and_not_the_others(self):
        shared = self.deliver(TEXT_MAIL, "shared")
        bob = yield self.logged_in()
        page = yield bob.get("/mail/search?q=noon")
        self.assertEqual(
            sorted(_found(page)),
            sorted(
                [("bob%40example.com", str(self.text_id)), ("shared%40example.com", str(shared))]
            ),
        )
        self.assertNotIn(str(self.carol_id), [number for _, number in _found(page)])

    @defer.inlineCallbacks
    def test_a_mailbox_the_user_may_not_view_is_not_found(self):
        bob = yield self.logged_in()
        for address in ("carol@example.com", "nobody@example.com", "not%20an%20address"):
            response = yield bob.get(f"/mail/search?address={address}&q=noon")
            self.assertEqual(response.status, 404, address)
            self.assertNotIn("Lunch plans", response.text)
        anonymous = self.browser()
        response = yield anonymous.get("/mail/search?address=bob@example.com&q=noon")
        self.assertNotEqual(response.status, 200)
        self.assertNotIn("Lunch plans", response.text)

    @defer.inlineCallbacks
    def test_bad_filters_are_400_with_a_reason(self):
        bob = yield self.logged_in()
        for query, reason in (
            ("since=2026-13-01", "no day"),
            ("until=yesterday", "no day"),
            ("since=2026-12-02&until=2026-12-01", "comes after"),
            ("folder=sent", "A folder is one of"),
            ("page=0", "page number"),
            ("q=" + "+".join(f"w{n}" for n in range(40)), "at most"),
            ("q=" + "x" * 600, "at most"),
        ):
            response = yield bob.get(f"/mail/search?address=bob@example.com&{query}")
            self.assertEqual(response.status, 400, query)
            self.assertIn(reason, response.text, query)

    @defer.inlineCallbacks
    def test_filters_and_an_empty_form(self):
        bob = yield self.logged_in()
        page = yield bob.get("/mail/search?address=bob@example.com")
        self.assertEqual(page.status, 200)
        self.assertNotIn('id="results"', page.text)
        page = yield bob.get("/mail/search?address=bob@example.com&from=alice&folder=inbox")
        self.assertEqual(_found(page), [("bob%40example.com", str(self.text_id))])
        page = yield bob.get("/mail/search?address=bob@example.com&since=2000-01-01&unread=1")
        self.assertEqual(len(_found(page)), 2)
        page = yield bob.get("/mail/search?address=bob@example.com&until=2000-01-01")
        self.assertEqual(_found(page), [])
        # The last day there is: every message, no error.
        page = yield bob.get("/mail/search?address=bob@example.com&until=9999-12-31")
        self.assertEqual(page.status, 200)
        self.assertEqual(len(_found(page)), 2)


class SqliteWebSearchTests(SqliteStoreMixin, WebSearchTests, unittest.TestCase):
    pass


class PostgresWebSearchTests(PostgresStoreMixin, WebSearchTests, unittest.TestCase):
    pass
