"""Web sessions kept in the store: a login on one node's web service is valid on every
node's (two web apps, each on its own Store, on one database), logout ends it on all,
and a page view writes the session's last use at most once a minute."""

from __future__ import annotations

import re
import time

from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.store import accounts, domains
from atollon_mail.store.models import WebSession
from atollon_mail.store.pool import Store
from atollon_mail.web.sessions import SESSION_COOKIE, TOUCH_INTERVAL, token_hash
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import Browser, ServedWebMixin, _hash

CONFIG = "[appliance]\nhostname = mail.example.com\n[web]\nsession_idle_timeout = 30m\n"


class SharedSessionTests(ServedWebMixin, StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.store.run_sync(accounts.add_user, "bob", _hash("bob-secret"), name="Bob")
        self.clock = Clock()
        self.clock.advance(time.time())
        config = parse_config(CONFIG)
        self.ports = []
        for name in ("a", "b"):
            store = Store.from_url(self.database_url, reactor, node=name)
            store.start()
            self.addCleanup(store.stop)
            root = builders.web_root(self, store, config, reactor, clock=self.clock)
            self.serve(root)
            self.ports.append(self.port)

    def browser_on(self, node: int, cookies=None) -> Browser:
        browser = Browser(self.ports[node])
        self.browsers.append(browser)
        browser.cookies = dict(cookies or {})
        return browser

    def last_seen(self, token: str):
        [(seen,)] = self.store.run_sync(
            builders.table_rows,
            WebSession.last_seen,
            where=WebSession.token_hash == token_hash(token),
        )
        return seen

    @defer.inlineCallbacks
    def test_a_login_on_one_node_is_valid_on_the_other_and_logout_ends_it_on_both(self):
        on_a = self.browser_on(0)
        response = yield on_a.login("bob", "bob-secret")
        self.assertEqual(response.status, 303)
        token = on_a.cookies[SESSION_COOKIE]
        stored = self.store.run_sync(builders.table_rows, WebSession.token_hash)
        self.assertEqual(stored, [(token_hash(token),)], "only the token's hash is kept")
        on_b = self.browser_on(1, on_a.cookies)
        page = yield on_b.get("/")
        self.assertEqual(page.status, 200)
        self.assertIn(b"Bob", page.body)
        # Logged out through node b (its form's CSRF token is the session's, read on b).
        response = yield on_b.post("/logout", {"csrf_token": page.csrf()})
        self.assertEqual(response.status, 303)
        again = self.browser_on(0, {SESSION_COOKIE: token})
        page = yield again.get("/")
        self.assertEqual(page.status, 303)
        self.assertTrue(page.header("location").startswith("/login"))
        self.assertEqual(self.store.run_sync(builders.row_count, WebSession), 0)

    @defer.inlineCallbacks
    def test_page_views_write_the_last_use_at_most_once_a_minute_and_idle_sessions_end(self):
        on_a = self.browser_on(0)
        yield on_a.login("bob", "bob-secret")
        token = on_a.cookies[SESSION_COOKIE]
        made = self.last_seen(token)
        on_b = self.browser_on(1, on_a.cookies)
        for _ in range(5):
            self.clock.advance(10)
            page = yield on_b.get("/")
            self.assertEqual(page.status, 200)
        self.assertEqual(self.last_seen(token), made, "no write within the minute")
        self.clock.advance(TOUCH_INTERVAL)
        page = yield on_b.get("/")
        self.assertEqual(page.status, 200)
        yield self.wait_until(lambda: self.last_seen(token) > made)
        # Idle for longer than the timeout: gone, on both nodes.
        self.clock.advance(30 * 60 + 1)
        page = yield on_a.get("/")
        self.assertEqual(page.status, 303)
        page = yield on_b.get("/")
        self.assertEqual(page.status, 303)

    @defer.inlineCallbacks
    def test_confirmations_reach_the_browser_whichever_node_answers(self):
        # A confirmation kept in one process's memory was lost when the redirect's GET
        # reached the other node; a generated password was then never shown at all.
        self.store.run_sync(accounts.update_user, "bob", is_admin=True)
        self.store.run_sync(accounts.add_user, "carol", _hash("carol-secret"), name="Carol")
        on_a = self.browser_on(0)
        yield on_a.login("bob", "bob-secret")
        on_b = self.browser_on(1, on_a.cookies)
        form = yield on_a.get("/users/edit?login=carol")
        saved = yield on_a.post(
            "/users/edit?login=carol",
            {"login": "carol", "name": "Carol C", "csrf_token": form.csrf()},
        )
        self.assertEqual(saved.status, 303)
        shown = yield on_b.get(saved.header("location"))
        self.assertIn("Changes saved.", shown.text)
        for browser in (on_a, on_b):  # read once, and cleared for every node
            again = yield browser.get(saved.header("location"))
            self.assertEqual(again.status, 200)
            self.assertNotIn("Changes saved.", again.text)
        reset = yield on_a.post(
            "/users/reset-password", {"login": "carol", "csrf_token": form.csrf()}
        )
        self.assertEqual(reset.status, 200)
        [password] = re.findall(r'<code id="new-password">([^<]*)</code>', reset.text)
        for browser in (on_a, on_b):  # shown once, in the POST's answer, and kept nowhere
            page = yield browser.get("/users/edit?login=carol")
            self.assertNotIn(password, page.text)
        carol = self.browser_on(1)
        self.assertEqual((yield carol.login("carol", password)).status, 303)
        # A mailbox's confirmation, likewise: set through a, shown by b, then gone.
        self.store.run_sync(domains.add_domain, "example.com")
        listing = yield on_a.get("/mailboxes")
        added = yield on_a.post(
            "/mailboxes",
            {
                "new_address": "carol@example.com",
                "new_owner": "carol",
                "csrf_token": listing.csrf(),
            },
        )
        self.assertEqual(added.status, 303)
        shown = yield on_b.get(added.header("location"))
        self.assertIn("Mailbox carol@example.com added.", shown.text)
        again = yield on_a.get(added.header("location"))
        self.assertNotIn("Mailbox carol@example.com added.", again.text)

    @defer.inlineCallbacks
    def wait_until(self, predicate, seconds=5.0):
        for _ in range(int(seconds / 0.05)):
            if predicate():
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail("it did not happen in time")


class SqliteSharedSessionTests(SqliteStoreMixin, SharedSessionTests, unittest.TestCase):
    pass


class PostgresSharedSessionTests(PostgresStoreMixin, SharedSessionTests, unittest.TestCase):
    pass
