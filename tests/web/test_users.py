"""The Users pages of the web admin, over a real listening port, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.store import accounts, domains, mailboxes
from atollon_mail.store.errors import Conflict, NotFound
from tests.builders import web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_security import EVIL, _hash


def _new_password(page) -> str | None:
    found = re.search(r'<code id="new-password">([^<]*)</code>', page.text)
    return found.group(1) if found else None


class WebUsersTests(ServedWebMixin, StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        sync = self.store.run_sync
        sync(accounts.add_user, "admin", _hash("admin-secret"), name="Ada Admin", is_admin=True)
        sync(accounts.add_user, "bob", _hash("bob-secret"), name="Bob")
        sync(domains.add_domain, "example.com")
        sync(mailboxes.add_mailbox, "bob@example.com", "bob")
        sync(mailboxes.add_mailbox, "bobby@example.com", "bob")
        self.clock = Clock()
        self.clock.advance(1_000_000)
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        root = web_root(self, self.store, config, reactor, clock=self.clock)
        self.serve(root)

    @defer.inlineCallbacks
    def can_log_in(self, login: str, password: str):
        browser = self.browser()
        response = yield browser.login(login, password)
        return response.status == 303

    @defer.inlineCallbacks
    def add(self, browser, **fields):
        page = yield browser.get("/users")
        form = {"login": "", "name": "", "password": "", "csrf_token": page.csrf(), **fields}
        return (yield browser.post("/users", form))

    @defer.inlineCallbacks
    def edit(self, browser, login, **fields):
        page = yield browser.get(f"/users/edit?login={login}")
        form = {"login": login, "csrf_token": page.csrf(), **fields}
        return (yield browser.post(f"/users/edit?login={login}", form))

    # --- the list and adding ----------------------------------------------------------

    @defer.inlineCallbacks
    def test_list_shows_users_and_mailboxes_owned(self):
        browser = yield self.logged_in()
        page = yield browser.get("/users")
        self.assertEqual(page.status, 200)
        rows = re.findall(
            r'<tr>\s*<td><a href="/users/edit\?login=(\w+)">\w+</a></td>\s*'
            r"<td>([^<]*)</td>\s*<td>(yes|no)</td>\s*<td>(\d+)</td>",
            page.text,
        )
        self.assertEqual(rows, [("admin", "Ada Admin", "yes", "0"), ("bob", "Bob", "no", "2")])

    @defer.inlineCallbacks
    def test_add_with_a_given_password(self):
        browser = yield self.logged_in()
        response = yield self.add(
            browser, login="dave", name="Dave", password="dave-secret-1", is_admin="on"
        )
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("location"), "/users/edit?login=dave")
        page = yield browser.get(response.header("location"))
        self.assertIn("User dave added.", page.text)
        self.assertIsNone(_new_password(page))
        self.assertNotIn("dave-secret-1", page.text)
        [dave] = [u for u in self.store.run_sync(accounts.list_users) if u.login == "dave"]
        self.assertEqual((dave.name, dave.is_admin), ("Dave", True))
        self.assertTrue((yield self.can_log_in("dave", "dave-secret-1")))

    @defer.inlineCallbacks
    def test_add_with_a_generated_password_shown_once(self):
        browser = yield self.logged_in()
        response = yield self.add(browser, login="erin", name="Erin", generate="on")
        # Shown in the POST's own response: no redirect whose GET could reach another
        # node, and the password is kept nowhere for later.
        self.assertEqual(response.status, 200)
        self.assertIn("User erin added.", response.text)
        password = _new_password(response)
        self.assertTrue(password)
        again = yield browser.get("/users/edit?login=erin")
        self.assertEqual(again.status, 200)
        self.assertIsNone(_new_password(again))
        self.assertNotIn(password, again.text)
        self.assertTrue((yield self.can_log_in("erin", password)))

    @defer.inlineCallbacks
    def test_add_refusals_beside_the_fields_keep_typed_values(self):
        browser = yield self.logged_in()
        duplicate = yield self.add(browser, login="bob", name="Other Bob", password="long-enough")
        self.assertEqual(duplicate.status, 400)
        self.assertIn('id="login-error"', duplicate.text)
        self.assertIn("already a user bob", duplicate.text)
        self.assertIn('value="Other Bob"', duplicate.text)
        self.assertNotIn("long-enough", duplicate.text)  # a password is never echoed
        bad = yield self.add(browser, login="Not Valid!", name="N", password="short")
        self.assertEqual(bad.status, 400)
        self.assertIn('id="login-error"', bad.text)
        self.assertIn('id="password-error"', bad.text)
        self.assertIn('value="Not Valid!"', bad.text)
        self.assertEqual(len(self.store.run_sync(accounts.list_users)), 2)

    # --- editing ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_edit_name(self):
        browser = yield self.logged_in()
        response = yield self.edit(browser, "bob", name="Robert")
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("location"), "/users/edit?login=bob")
        page = yield browser.get(response.header("location"))
        self.assertIn("Changes saved.", page.text)
        self.assertIn('value="Robert"', page.text)
        self.assertEqual(self.store.run_sync(accounts.get_user, "bob").name, "Robert")

    @defer.inlineCallbacks
    def test_edit_name_too_long_keeps_the_typed_value(self):
        browser = yield self.logged_in()
        response = yield self.edit(browser, "bob", name="x" * 201, is_admin="on")
        self.assertEqual(response.status, 400)
        self.assertIn('id="name-error"', response.text)
        self.assertIn('value="' + "x" * 201 + '"', response.text)
        self.assertRegex(response.text, r'name="is_admin" value="on" checked')
        bob = self.store.run_sync(accounts.get_user, "bob")
        self.assertEqual((bob.name, bob.is_admin), ("Bob", False))

    @defer.inlineCallbacks
    def test_toggle_admin(self):
        browser = yield self.logged_in()
        response = yield self.edit(browser, "bob", name="Bob", is_admin="on")
        self.assertEqual(response.status, 303)
        self.assertTrue(self.store.run_sync(accounts.get_user, "bob").is_admin)
        bob = yield self.logged_in("bob", "bob-secret")
        self.assertEqual((yield bob.get("/users")).status, 200)
        # Another admin may remove it again (there are two admins now).
        response = yield self.edit(browser, "bob", name="Bob")
        self.assertEqual(response.status, 303)
        self.assertFalse(self.store.run_sync(accounts.get_user, "bob").is_admin)
        self.assertEqual((yield bob.get("/users")).status, 404)  # at once

    @defer.inlineCallbacks
    def test_an_admin_cannot_remove_their_own_admin_flag(self):
        self.store.run_sync(accounts.update_user, "bob", is_admin=True)
        browser = yield self.logged_in()
        response = yield self.edit(browser, "admin", name="Ada")
        self.assertEqual(response.status, 400)
        self.assertIn('id="is_admin-error"', response.text)
        self.assertIn('value="Ada"', response.text)
        admin = self.store.run_sync(accounts.get_user, "admin")
        self.assertEqual((admin.name, admin.is_admin), ("Ada Admin", True))

    def test_the_last_admin_keeps_the_flag_in_the_store(self):
        with self.assertRaises(Conflict):
            self.store.run_sync(accounts.update_user, "admin", is_admin=False)
        self.assertTrue(self.store.run_sync(accounts.get_user, "admin").is_admin)
        self.store.run_sync(accounts.update_user, "bob", is_admin=True)
        self.store.run_sync(accounts.update_user, "admin", is_admin=False)
        with self.assertRaises(Conflict):
            self.store.run_sync(accounts.update_user, "bob", is_admin=False)
        with self.assertRaises(NotFound):
            self.store.run_sync(accounts.update_user, "nobody", name="x")

    # --- passwords ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_reset_password(self):
        browser = yield self.logged_in()
        page = yield browser.get("/users/edit?login=bob")
        response = yield browser.post(
            "/users/reset-password", {"login": "bob", "csrf_token": page.csrf()}
        )
        self.assertEqual(response.status, 200)
        self.assertIn("New password set for bob.", response.text)
        password = _new_password(response)
        self.assertTrue(password)
        self.assertIsNone(_new_password((yield browser.get("/users/edit?login=bob"))))
        self.assertFalse((yield self.can_log_in("bob", "bob-secret")))
        self.assertTrue((yield self.can_log_in("bob", password)))

    # --- access -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_unknown_login_is_404(self):
        browser = yield self.logged_in()
        self.assertEqual((yield browser.get("/users/edit?login=nobody")).status, 404)
        self.assertEqual((yield browser.get("/users/edit")).status, 404)
        page = yield browser.get("/users")
        response = yield browser.post(
            "/users/reset-password", {"login": "nobody", "csrf_token": page.csrf()}
        )
        self.assertEqual(response.status, 404)

    @defer.inlineCallbacks
    def test_a_non_admin_gets_404(self):
        browser = yield self.logged_in("bob", "bob-secret")
        for path in ("/users", "/users/edit?login=admin"):
            self.assertEqual((yield browser.get(path)).status, 404)
        page = yield browser.get("/")
        response = yield browser.post(
            "/users/reset-password", {"login": "admin", "csrf_token": page.csrf()}
        )
        self.assertEqual(response.status, 404)
        self.assertTrue((yield self.can_log_in("admin", "admin-secret")))

    @defer.inlineCallbacks
    def test_csrf_missing_is_refused(self):
        browser = yield self.logged_in()
        add = yield browser.post("/users", {"login": "mallory", "generate": "on"})
        self.assertEqual(add.status, 403)
        edit = yield browser.post("/users/edit?login=bob", {"login": "bob", "is_admin": "on"})
        self.assertEqual(edit.status, 403)
        reset = yield browser.post("/users/reset-password", {"login": "bob"})
        self.assertEqual(reset.status, 403)
        self.assertEqual(
            [u.login for u in self.store.run_sync(accounts.list_users)], ["admin", "bob"]
        )
        self.assertFalse(self.store.run_sync(accounts.get_user, "bob").is_admin)
        self.assertTrue((yield self.can_log_in("bob", "bob-secret")))

    @defer.inlineCallbacks
    def test_a_name_with_script_is_escaped(self):
        browser = yield self.logged_in()
        response = yield self.add(browser, login="eve", name=EVIL, generate="on")
        self.assertEqual(response.status, 200)
        self.assertNotIn(EVIL, response.text)
        for path in ("/users", "/users/edit?login=eve"):
            page = yield browser.get(path)
            self.assertIn("&lt;script&gt;alert(1)&lt;/script&gt;", page.text)
            self.assertNotIn(EVIL, page.text)


class SqliteWebUsersTests(SqliteStoreMixin, WebUsersTests, unittest.TestCase):
    pass


class PostgresWebUsersTests(PostgresStoreMixin, WebUsersTests, unittest.TestCase):
    pass
