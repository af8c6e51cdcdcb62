"""The Mailboxes pages of the web admin, over a real listening port, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.store import accounts, aliases, autorespond, contexts, domains, forwarding
from atollon_mail.store import mailboxes as mailbox_ops
from atollon_mail.store.errors import NotFound
from atollon_mail.store.models import Mailbox
from atollon_mail.web import pages_mailboxes
from tests.builders import web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_security import EVIL, _hash

BOB = "/mailbox?address=bob@example.com"


class WebMailboxesTests(ServedWebMixin, StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        sync = self.store.run_sync
        sync(accounts.add_user, "admin", _hash("admin-secret"), is_admin=True)
        sync(accounts.add_user, "bob", _hash("bob-secret"))
        sync(accounts.add_user, "carol", _hash("carol-secret"))
        sync(domains.add_domain, "example.com")
        sync(domains.add_domain, "example.org")
        sync(mailbox_ops.add_mailbox, "bob@example.com", "bob")
        sync(mailbox_ops.add_mailbox, "bobby@example.com", "bob")
        sync(mailbox_ops.add_mailbox, "carol@example.org", "carol")
        self.clock = Clock()
        self.clock.advance(1_000_000)
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        root = web_root(self, self.store, config, reactor, clock=self.clock)
        if "/mailboxes" not in root.app.routes:
            pages_mailboxes.register(root.app)
        self.serve(root)

    @defer.inlineCallbacks
    def act(self, browser, action, path=BOB, **fields):
        page = yield browser.get(path)
        form = {"action": action, "csrf_token": page.csrf(), **fields}
        return (yield browser.post(path, form))

    def settings(self, **fields):
        form = {
            "identity": "bob@example.com",
            "store_to": "todo",
            "active": "on",
            "signature": "",
        }
        return {**form, **fields}

    def box(self, address="bob@example.com"):
        return self.store.run_sync(mailbox_ops.get_mailbox, address)

    @staticmethod
    def listed(page) -> list[str]:
        return re.findall(r'<td><a href="/mailbox\?address=[^"]*">([^<]*)</a></td>', page.text)

    # --- the list -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_list_filters(self):
        browser = yield self.logged_in()
        page = yield browser.get("/mailboxes")
        self.assertEqual(page.status, 200)
        self.assertEqual(
            self.listed(page), ["bob@example.com", "bobby@example.com", "carol@example.org"]
        )
        page = yield browser.get("/mailboxes?domain=example.org")
        self.assertEqual(self.listed(page), ["carol@example.org"])
        page = yield browser.get("/mailboxes?owner=bob&domain=example.com")
        self.assertEqual(self.listed(page), ["bob@example.com", "bobby@example.com"])

    @defer.inlineCallbacks
    def test_list_pagination(self):
        for n in range(60):
            self.store.run_sync(mailbox_ops.add_mailbox, f"box{n:02d}@example.org", "carol")
        browser = yield self.logged_in()
        first = yield browser.get("/mailboxes?domain=example.org")
        self.assertEqual(len(self.listed(first)), 50)
        self.assertIn("Page 1 of 2", first.text)
        self.assertIn('href="/mailboxes?domain=example.org&amp;page=2"', first.text)
        second = yield browser.get("/mailboxes?domain=example.org&page=2")
        self.assertEqual(len(self.listed(second)), 11)
        self.assertIn("Page 2 of 2", second.text)

    @defer.inlineCallbacks
    def test_list_shows_only_what_a_user_may_view(self):
        self.store.run_sync(mailbox_ops.grant_mailbox_access, "carol@example.org", "bob", True)
        browser = yield self.logged_in("bob", "bob-secret")
        page = yield browser.get("/mailboxes")
        self.assertEqual(
            self.listed(page), ["bob@example.com", "bobby@example.com", "carol@example.org"]
        )
        carol = yield self.logged_in("carol", "carol-secret")
        self.assertEqual(self.listed((yield carol.get("/mailboxes"))), ["carol@example.org"])

    @defer.inlineCallbacks
    def test_admin_adds_a_mailbox_and_errors_keep_the_typed_values(self):
        browser = yield self.logged_in()
        page = yield browser.get("/mailboxes")
        form = {"csrf_token": page.csrf(), "new_address": "New@Example.com", "new_owner": "bob"}
        added = yield browser.post("/mailboxes", {**form, "new_identity": ""})
        self.assertEqual(added.status, 303)
        self.assertEqual(self.box("new@example.com").owner_login, "bob")
        refused = yield browser.post("/mailboxes", {**form, "new_owner": "nobody"})
        self.assertEqual(refused.status, 400)
        self.assertIn('value="New@Example.com"', refused.text)
        self.assertIn('id="new_owner-error"', refused.text)
        taken = yield browser.post("/mailboxes", form)
        self.assertEqual(taken.status, 400)
        self.assertIn('id="new_address-error"', taken.text)

    @defer.inlineCallbacks
    def test_only_admins_add_mailboxes(self):
        browser = yield self.logged_in("bob", "bob-secret")
        page = yield browser.get("/mailboxes")
        self.assertNotIn('name="new_address"', page.text)
        form = {"csrf_token": page.csrf(), "new_address": "x@example.com", "new_owner": "bob"}
        self.assertEqual((yield browser.post("/mailboxes", form)).status, 404)
        self.assertRaises(NotFound, self.box, "x@example.com")

    # --- viewing ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_view_allowed_and_denied(self):
        bob = yield self.logged_in("bob", "bob-secret")
        page = yield bob.get(BOB)
        self.assertEqual(page.status, 200)
        self.assertIn('name="identity"', page.text)
        carol = yield self.logged_in("carol", "carol-secret")
        self.assertEqual((yield carol.get(BOB)).status, 404)
        self.assertEqual((yield carol.get("/mailbox?address=nobody@example.com")).status, 404)
        self.assertEqual((yield carol.get("/mailbox?address=not-an-address")).status, 404)
        response = yield self.act(
            carol, "settings", path="/mailbox?address=carol@example.org", active="on"
        )
        self.assertEqual(response.status, 400)  # her own: her identity is refused, no more
        page = yield carol.get("/mailboxes")
        form = {"action": "settings", "csrf_token": page.csrf(), **self.settings()}
        self.assertEqual((yield carol.post(BOB, form)).status, 404)

    @defer.inlineCallbacks
    def test_view_only_rights_show_no_forms_and_refuse_posts(self):
        self.store.run_sync(mailbox_ops.grant_mailbox_access, "bob@example.com", "carol", True)
        carol = yield self.logged_in("carol", "carol-secret")
        page = yield carol.get(BOB)
        self.assertEqual(page.status, 200)
        self.assertNotIn('name="identity"', page.text)
        form = {"action": "settings", "csrf_token": page.csrf(), **self.settings(identity="x@y.z")}
        self.assertEqual((yield carol.post(BOB, form)).status, 404)
        self.assertEqual(self.box().identity, "bob@example.com")

    # --- settings -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_settings_saved(self):
        browser = yield self.logged_in()
        response = yield self.act(
            browser,
            "settings",
            path="/mailbox?address=bobby@example.com",
            **self.settings(identity="robert@example.com", signature="Bob\nExample"),
            is_default="on",
        )
        self.assertEqual(response.status, 303)
        page = yield browser.get(response.header("location"))
        self.assertIn("Changes saved.", page.text)
        bobby = self.box("bobby@example.com")
        self.assertEqual(
            (bobby.identity, bobby.signature, bobby.is_default),
            ("robert@example.com", "Bob\nExample", True),
        )
        self.assertFalse(self.box().is_default)

    @defer.inlineCallbacks
    def test_spam_handling_chosen_by_owner_or_admin(self):
        bob = yield self.logged_in("bob", "bob-secret")
        page = yield bob.get(BOB)
        self.assertRegex(page.text, r'<option value="junk" selected>Into the Junk folder</option>')
        response = yield self.act(bob, "spam", spam_handling="tag")
        self.assertEqual(response.status, 303)
        page = yield bob.get(response.header("location"))
        self.assertIn("Junk mail now goes into the inbox, marked as junk.", page.text)
        self.assertIn('<option value="tag" selected>', page.text)
        self.assertEqual(self.box().spam_handling, "tag")
        admin = yield self.logged_in()
        response = yield self.act(admin, "spam", spam_handling="off")
        self.assertEqual(response.status, 303)
        self.assertEqual(self.box().spam_handling, "off")
        # Anything else is refused beside the field, and changes nothing.
        for value in ("maybe", "", "x" * 5000):
            response = yield self.act(admin, "spam", spam_handling=value)
            self.assertEqual(response.status, 400, value)
            self.assertIn('id="spam_handling-error"', response.text)
        self.assertEqual(self.box().spam_handling, "off")

    @defer.inlineCallbacks
    def test_spam_handling_only_with_the_edit_right_and_csrf(self):
        self.store.run_sync(mailbox_ops.grant_mailbox_access, "bob@example.com", "carol", True)
        carol = yield self.logged_in("carol", "carol-secret")
        page = yield carol.get(BOB)
        self.assertIn('<dd id="spam-handling">Into the Junk folder</dd>', page.text)
        self.assertNotIn('name="spam_handling"', page.text)
        form = {"action": "spam", "csrf_token": page.csrf(), "spam_handling": "off"}
        self.assertEqual((yield carol.post(BOB, form)).status, 404)
        own = "/mailbox?address=carol@example.org"
        self.assertEqual((yield carol.post(own, {**form, "csrf_token": "forged"})).status, 403)
        self.assertEqual(
            (yield carol.post(own, {"action": "spam", "spam_handling": "off"})).status, 403
        )
        self.assertEqual(self.box().spam_handling, "junk")
        self.assertEqual(self.box("carol@example.org").spam_handling, "junk")

    @staticmethod
    def identity_error(page) -> str:
        found = re.search(r'<p class="error" id="identity-error">([^<]*)</p>', page.text)
        return found[1] if found else ""

    @defer.inlineCallbacks
    def test_an_owner_cannot_send_as_someone_else(self):
        bob = yield self.logged_in("bob", "bob-secret")
        page = yield bob.get(BOB)
        self.assertIn("It may send as bob@example.com.", page.text)
        self.assertIn("Another address only an administrator can set.", page.text)
        for identity in ("ceo@bank.example", "bobby@example.com", "carol@example.org"):
            response = yield self.act(bob, "settings", **self.settings(identity=identity))
            self.assertEqual(response.status, 400, identity)
            self.assertEqual(
                self.identity_error(response),
                "Mailbox bob@example.com may send as bob@example.com; only an administrator can "
                f"set another identity such as {identity}",
            )
            self.assertIn(f'value="{identity}"', response.text)
        self.assertEqual(self.box().identity, "bob@example.com")

    @defer.inlineCallbacks
    def test_an_admin_sets_another_identity_the_owner_keeps(self):
        admin = yield self.logged_in()
        response = yield self.act(admin, "settings", **self.settings(identity="info@acme.test"))
        self.assertEqual(response.status, 303)
        self.assertEqual(self.box().identity, "info@acme.test")
        bob = yield self.logged_in("bob", "bob-secret")
        page = yield bob.get(BOB)
        self.assertIn("An administrator set its identity; ask one to change it.", page.text)
        self.assertRegex(
            page.text, r'<input id="identity" name="identity" value="info@acme.test" readonly'
        )
        # His other changes keep it (the form sends it back as it is) ...
        response = yield self.act(
            bob, "settings", **self.settings(identity="info@acme.test", signature="Bob")
        )
        self.assertEqual(response.status, 303)
        self.assertEqual((self.box().identity, self.box().signature), ("info@acme.test", "Bob"))
        detail = self.store.run_sync(mailbox_ops.mailbox_detail, "bob@example.com")
        self.assertTrue(detail.identity_approved)
        # ... but he cannot change it.
        response = yield self.act(bob, "settings", **self.settings(identity="news@acme.test"))
        self.assertEqual(response.status, 400)
        self.assertEqual(
            self.identity_error(response),
            "An administrator set info@acme.test as the identity of bob@example.com; ask an "
            "administrator to change it",
        )
        self.assertEqual(self.box().identity, "info@acme.test")

    @defer.inlineCallbacks
    def test_another_mailboxs_address_alias_or_identity_refused_even_to_an_admin(self):
        self.store.run_sync(aliases.add_alias, "help", "carol@example.org")
        self.store.run_sync(
            mailbox_ops.update_mailbox, "bobby@example.com", identity="news@acme.test"
        )
        admin = yield self.logged_in()
        for identity, message in (
            (
                "carol@example.org",
                "Another mailbox, carol@example.org, receives at carol@example.org",
            ),
            (
                "help@example.org",
                "Another mailbox, carol@example.org, receives at help@example.org (an alias)",
            ),
            (
                "news@acme.test",
                "Another mailbox, bobby@example.com, sends as news@acme.test already",
            ),
        ):
            response = yield self.act(admin, "settings", **self.settings(identity=identity))
            self.assertEqual(response.status, 400, identity)
            self.assertEqual(self.identity_error(response), message + "; choose another identity")
        self.assertEqual(self.box().identity, "bob@example.com")
        page = yield admin.get("/mailboxes")
        form = {
            "csrf_token": page.csrf(),
            "new_address": "new@example.com",
            "new_owner": "bob",
            "new_identity": "help@example.org",
        }
        refused = yield admin.post("/mailboxes", form)
        self.assertEqual(refused.status, 400)
        self.assertIn('id="new_identity-error"', refused.text)
        self.assertIn(
            "Another mailbox, carol@example.org, receives at help@example.org (an alias)",
            refused.text,
        )
        self.assertRaises(NotFound, self.box, "new@example.com")

    @defer.inlineCallbacks
    def test_a_refused_stored_identity_is_shown(self):
        self.store.run_sync(mailbox_ops.add_mailbox, "info@example.com", "carol")
        self.store.run_sync(
            lambda: (
                Mailbox.update(identity="info@example.com")
                .where(Mailbox.local_part == "bob")
                .execute()
            )
        )
        bob = yield self.logged_in("bob", "bob-secret")
        page = yield bob.get(BOB)
        self.assertIn(
            "Sending as info@example.com is refused: mailbox bob@example.com may send as "
            "bob@example.com; only an administrator can set another identity such as "
            "info@example.com.",
            page.text,
        )

    @defer.inlineCallbacks
    def test_settings_errors_beside_the_fields(self):
        browser = yield self.logged_in()
        response = yield self.act(
            browser, "settings", **self.settings(identity="not an address", store_to="99999")
        )
        self.assertEqual(response.status, 400)
        self.assertIn('id="identity-error"', response.text)
        self.assertIn('value="not an address"', response.text)
        response = yield self.act(browser, "settings", **self.settings(store_to="99999"))
        self.assertEqual(response.status, 400)
        self.assertIn('id="store_to-error"', response.text)
        self.assertEqual(self.box().store_to.kind, "todo")

    @staticmethod
    def store_to_options(page) -> list[tuple[str, str, bool]]:
        """(value, text, selected) of each option of the "Store messages to" list."""
        [select] = re.findall(r'<select id="store_to" name="store_to".*?</select>', page.text, re.S)
        return [
            (value, text, bool(selected))
            for value, selected, text in re.findall(
                r'<option value="([^"]*)"[^>]*?( selected)?>([^<]*)</option>', select
            )
        ]

    @defer.inlineCallbacks
    def test_store_to_is_chosen_from_the_folders_and_projects_by_name_and_owner(self):
        sync = self.store.run_sync
        launch = sync(contexts.add_context, "project", "Launch", "bob")
        archive = sync(contexts.add_context, "folder", "archive", "bob")
        offers = sync(contexts.add_context, "folder", "Offers")
        browser = yield self.logged_in()
        page = yield browser.get(BOB)
        self.assertEqual(
            self.store_to_options(page),
            [
                ("todo", "To Do of bob", True),
                (str(archive.id), "archive (owner bob)", False),
                (str(offers.id), "Offers (no owner)", False),
                (str(launch.id), "Launch (owner bob)", False),
            ],
        )
        # The filter box (shown by the script) and the words it matches: name and owner.
        self.assertIn('id="store_to_filter"', page.text)
        self.assertIn(f'<option value="{launch.id}" data-text="launch bob"', page.text)
        self.assertIn('<script src="/static/mailbox.js"', page.text)
        self.assertNotIn('<input id="store_to"', page.text)
        response = yield self.act(browser, "settings", **self.settings(store_to=str(launch.id)))
        self.assertEqual(response.status, 303)
        self.assertEqual((self.box().store_to.id, self.box().store_to.name), (launch.id, "Launch"))
        page = yield browser.get(BOB)
        self.assertIn((str(launch.id), "Launch (owner bob)", True), self.store_to_options(page))
        self.assertIn(("todo", "To Do of bob", False), self.store_to_options(page))
        script = yield browser.get("/static/mailbox.js")
        self.assertEqual(script.status, 200)
        self.assertIn("store_to_filter", script.text)

    @defer.inlineCallbacks
    def test_store_to_offers_the_owners_contexts_and_those_of_no_user_only(self):
        sync = self.store.run_sync
        offers = sync(contexts.add_context, "folder", "Offers")
        archive = sync(contexts.add_context, "folder", "archive", "bob")
        private = sync(contexts.add_context, "folder", "Carol's own", "carol")
        sync(contexts.add_context, "folder", "Sent (carol@example.org)", "carol")
        sync(contexts.add_context, "project", "Carol's plan", "carol")
        expected = [
            ("todo", "To Do of bob", True),
            (str(archive.id), "archive (owner bob)", False),
            (str(offers.id), "Offers (no owner)", False),
        ]
        admin = yield self.logged_in()
        bob = yield self.logged_in("bob", "bob-secret")
        for browser in (admin, bob):  # the mailbox owner's list, whoever looks
            page = yield browser.get(BOB)
            self.assertEqual(self.store_to_options(page), expected)
        # Another user's folder by id is refused, to an administrator too.
        for browser in (admin, bob):
            response = yield self.act(
                browser, "settings", **self.settings(store_to=str(private.id))
            )
            self.assertEqual(response.status, 400)
            self.assertIn('id="store_to-error"', response.text)
            self.assertIn("belongs to another user", response.text)
            self.assertEqual(self.box().store_to.kind, "todo")

    @defer.inlineCallbacks
    def test_a_script_signature_is_escaped(self):
        browser = yield self.logged_in()
        response = yield self.act(browser, "settings", **self.settings(signature=EVIL))
        self.assertEqual(response.status, 303)
        page = yield browser.get(BOB)
        self.assertIn("&lt;script&gt;alert(1)&lt;/script&gt;", page.text)
        self.assertNotIn(EVIL, page.text)

    # --- aliases ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_alias_add_and_remove(self):
        browser = yield self.logged_in("bob", "bob-secret")
        response = yield self.act(browser, "alias-add", alias="robert")
        self.assertEqual(response.status, 303)
        page = yield browser.get(BOB)
        self.assertIn("Alias robert@example.com added.", page.text)
        self.assertEqual(self.box().aliases, ("robert@example.com",))
        response = yield self.act(browser, "alias-remove", alias="robert@example.com")
        self.assertEqual(response.status, 303)
        self.assertEqual(self.box().aliases, ())

    @defer.inlineCallbacks
    def test_alias_of_another_domain_is_refused(self):
        browser = yield self.logged_in()
        response = yield self.act(browser, "alias-add", alias="robert@example.org")
        self.assertEqual(response.status, 400)
        self.assertIn('id="alias-error"', response.text)
        self.assertIn('value="robert@example.org"', response.text)
        self.assertEqual(self.box().aliases, ())

    @defer.inlineCallbacks
    def test_alias_of_another_mailbox_cannot_be_removed_here(self):
        self.store.run_sync(aliases.add_alias, "carla", "carol@example.org")
        browser = yield self.logged_in("bob", "bob-secret")
        response = yield self.act(browser, "alias-remove", alias="carla@example.org")
        self.assertEqual(response.status, 404)
        self.assertEqual(self.box("carol@example.org").aliases, ("carla@example.org",))

    # --- auto-respond and forwarding ----------------------------------------------------

    @defer.inlineCallbacks
    def test_autorespond_saved(self):
        browser = yield self.logged_in()
        response = yield self.act(
            browser,
            "autorespond",
            ar_enabled="on",
            ar_subject="Away",
            ar_body="Back on Monday.",
            ar_starts="2030-01-01T08:00",
            ar_ends="",
        )
        self.assertEqual(response.status, 303)
        self.assertIn("Auto-respond saved.", (yield browser.get(BOB)).text)
        responder = self.store.run_sync(autorespond.get_autoresponder, "bob@example.com")
        self.assertEqual((responder.enabled, responder.subject), (True, "Away"))
        self.assertEqual(str(responder.starts_at), "2030-01-01 08:00:00")
        self.assertIsNone(responder.ends_at)

    @defer.inlineCallbacks
    def test_autorespond_on_without_a_body_is_refused(self):
        browser = yield self.logged_in()
        response = yield self.act(
            browser, "autorespond", ar_enabled="on", ar_subject="Away typed", ar_body=""
        )
        self.assertEqual(response.status, 400)
        self.assertIn('id="ar_body-error"', response.text)
        self.assertIn('value="Away typed"', response.text)
        self.assertIsNone(self.store.run_sync(autorespond.get_autoresponder, "bob@example.com"))

    @defer.inlineCallbacks
    def test_forwarding_targets_added_and_removed(self):
        browser = yield self.logged_in()
        response = yield self.act(
            browser, "forwarding", fw_enabled="on", fw_keep="on", fw_target="x@elsewhere.net"
        )
        self.assertEqual(response.status, 303)
        record = self.store.run_sync(forwarding.get_forwarding, "bob@example.com")
        self.assertEqual((record.enabled, record.keep_copy), (True, True))
        self.assertEqual(record.targets, ("x@elsewhere.net",))
        response = yield self.act(browser, "forward-remove", target="x@elsewhere.net")
        self.assertEqual(response.status, 303)
        record = self.store.run_sync(forwarding.get_forwarding, "bob@example.com")
        self.assertEqual(record.targets, ())

    @defer.inlineCallbacks
    def test_forwarding_to_itself_is_refused(self):
        browser = yield self.logged_in()
        response = yield self.act(browser, "forwarding", fw_target="bob@example.com")
        self.assertEqual(response.status, 400)
        self.assertIn('id="fw_target-error"', response.text)
        self.assertIn('value="bob@example.com"', response.text)

    # --- access rights ------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_rights_added_and_revoked(self):
        browser = yield self.logged_in("bob", "bob-secret")
        response = yield self.act(browser, "access-add", access_login="carol", access_right="edit")
        self.assertEqual(response.status, 303)
        rights = self.store.run_sync(mailbox_ops.user_rights, "carol", "bob@example.com")
        self.assertEqual((rights.view, rights.edit), (True, True))
        carol = yield self.logged_in("carol", "carol-secret")
        self.assertEqual((yield carol.get(BOB)).status, 200)
        response = yield self.act(browser, "access-revoke", login="carol")
        self.assertEqual(response.status, 303)
        self.assertEqual((yield carol.get(BOB)).status, 404)

    @defer.inlineCallbacks
    def test_rights_for_an_unknown_user_are_refused(self):
        browser = yield self.logged_in()
        response = yield self.act(browser, "access-add", access_login="nobody")
        self.assertEqual(response.status, 400)
        self.assertIn('id="access_login-error"', response.text)
        self.assertIn('value="nobody"', response.text)

    # --- redirecting --------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_redirect_preview_then_confirm(self):
        self.store.run_sync(aliases.add_alias, "robert", "bob@example.com")
        browser = yield self.logged_in()
        path = "/mailbox/redirect?address=bob@example.com"
        page = yield browser.get(path)
        self.assertEqual(page.status, 200)
        preview = yield browser.post(
            path, {"csrf_token": page.csrf(), "step": "preview", "new": "bobby@example.com"}
        )
        self.assertEqual(preview.status, 200)
        self.assertIn("<li>bob@example.com</li>", preview.text)
        self.assertIn("<li>robert@example.com</li>", preview.text)
        self.assertTrue(self.box().active)  # nothing changed yet
        done = yield browser.post(
            path, {"csrf_token": page.csrf(), "step": "confirm", "new": "bobby@example.com"}
        )
        self.assertEqual(done.status, 303)
        page = yield browser.get(done.header("location"))
        self.assertIn("bob@example.com now goes to bobby@example.com.", page.text)
        self.assertFalse(self.box().active)
        self.assertEqual(
            self.box("bobby@example.com").aliases, ("bob@example.com", "robert@example.com")
        )

    @defer.inlineCallbacks
    def test_redirect_refusals_and_admin_only(self):
        browser = yield self.logged_in()
        path = "/mailbox/redirect?address=bob@example.com"
        page = yield browser.get(path)
        response = yield browser.post(
            path, {"csrf_token": page.csrf(), "step": "preview", "new": "carol@example.org"}
        )
        self.assertEqual(response.status, 400)
        self.assertIn('id="new-error"', response.text)
        self.assertIn('value="carol@example.org"', response.text)
        bob = yield self.logged_in("bob", "bob-secret")
        self.assertEqual((yield bob.get(path)).status, 404)

    # --- CSRF ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_csrf_missing_is_refused(self):
        browser = yield self.logged_in()
        response = yield browser.post(BOB, {"action": "alias-add", "alias": "mallory"})
        self.assertEqual(response.status, 403)
        response = yield browser.post(
            "/mailbox/redirect?address=bob@example.com",
            {"step": "confirm", "new": "bobby@example.com"},
        )
        self.assertEqual(response.status, 403)
        self.assertEqual(self.box().aliases, ())
        self.assertTrue(self.box().active)


class SqliteWebMailboxesTests(SqliteStoreMixin, WebMailboxesTests, unittest.TestCase):
    pass


class PostgresWebMailboxesTests(PostgresStoreMixin, WebMailboxesTests, unittest.TestCase):
    pass
