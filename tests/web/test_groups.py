"""The distribution group pages of the web admin, over a real listening port, on SQLite and
PostgreSQL: the list and the new-group form, a group's preview and its members."""

from __future__ import annotations

import html
import re

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.crm.records import GroupPreview
from atollon_mail.store import accounts, contacts, domains, groups, mailboxes
from tests import builders
from tests.builders import web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_security import _hash

# Acme's contacts: (kind, name, email, language).
CONTACTS = (
    ("company", "Firm", "office@firm.test", "cs"),
    ("person", "Jana Nováková", "jana@firm.test", "cs"),
    ("person", "Petr Svoboda", "", "cs"),
    ("person", "Hans Müller", "hans@firm.test", "de"),
    ("person", "<b>Bold</b>", "bold@firm.test", ""),
)


def make_contacts() -> list[int]:
    """Store operation: organization Acme and its contacts; their ids in CONTACTS order."""
    contacts.add_organization("Acme")
    contacts.add_organization("Other")
    return [
        contacts.add_contact("Acme", kind, name=name, email=email, language=language).id
        for kind, name, email, language in CONTACTS
    ]


def _texts(pattern: str, text: str) -> list:
    return [
        tuple(html.unescape(part) for part in found) if isinstance(found, tuple) else found
        for found in re.findall(pattern, text)
    ]


class WebGroupsTests(ServedWebMixin, StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        sync = self.store.run_sync
        sync(accounts.add_user, "admin", _hash("admin-secret"), is_admin=True)
        sync(accounts.add_user, "bob", _hash("bob-secret"))
        self.ids = sync(make_contacts)
        self.acme = sync(contacts.get_organization, "Acme")
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        root = web_root(self, self.store, config, reactor, clock=Clock())
        self.serve(root)

    @defer.inlineCallbacks
    def create(self, browser, **fields):
        page = yield browser.get("/groups")
        self.assertEqual(page.status, 200)
        form = {"name": "", "organization": "", "kind": "static", **fields}
        return (yield browser.post("/groups", {**form, "csrf_token": page.csrf()}))

    @defer.inlineCallbacks
    def change(self, browser, group_id, **fields):
        path = f"/group?id={group_id}"
        page = yield browser.get(path)
        self.assertEqual(page.status, 200)
        return (yield browser.post(path, {"csrf_token": page.csrf(), **fields}))

    @staticmethod
    def counts(page) -> dict[str, str]:
        return dict(re.findall(r'<span class="count" id="([a-z-]+)">(\d+)</span>', page.text))

    @staticmethod
    def languages(page) -> list[tuple[str, str]]:
        table = page.text.split('<table id="languages">', 1)[1].split("</table>", 1)[0]
        return re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td></tr>", table)

    # --- creating groups --------------------------------------------------------------

    @defer.inlineCallbacks
    def test_create_a_dynamic_group_and_see_its_preview(self):
        browser = yield self.logged_in()
        response = yield self.create(
            browser,
            name="Czech persons",
            organization=str(self.acme.id),
            kind="dynamic",
            languages="cs, none",
            kind_person="on",
            has_email="",
            employment_current="",
        )
        self.assertEqual(response.status, 303)
        group = self.store.run_sync(groups.get_group, "Czech persons")
        self.assertEqual(response.header("location"), f"/group?id={group.id}&created=1")
        self.assertEqual(
            (group.kind, group.organization_name, group.filter.languages, group.filter.kinds),
            ("dynamic", "Acme", ("cs", ""), ("person",)),
        )
        page = yield browser.get(response.header("location"))
        self.assertEqual(page.status, 200)
        self.assertIn("Group Czech persons created.", page.text)
        self.assertEqual(
            self.counts(page), {"total": "3", "with-address": "2", "without-address": "1"}
        )
        self.assertEqual(self.languages(page), [("cs", "2"), ("(none)", "1")])
        # The page's numbers are the store's.
        self.assertEqual(
            self.store.run_sync(groups.group_preview, group.id),
            GroupPreview(3, {"": 1, "cs": 2}, 1, 2),
        )
        # Contact names are shown escaped.
        self.assertIn("&lt;b&gt;Bold&lt;/b&gt;", page.text)
        self.assertNotIn("<b>Bold</b>", page.text)
        # A dynamic group has no member form.
        self.assertNotIn('name="action" value="members"', page.text)

    @defer.inlineCallbacks
    def test_create_with_employment_filters(self):
        sync = self.store.run_sync
        firm, jana = self.ids[0], self.ids[1]
        sync(contacts.add_employment, jana, firm)
        browser = yield self.logged_in()
        response = yield self.create(
            browser,
            name="Firm staff",
            kind="dynamic",
            companies=f"{firm}",
            employment_current="yes",
            primary_only="on",
            has_email="yes",
        )
        self.assertEqual(response.status, 303)
        group = sync(groups.get_group, "Firm staff")
        self.assertEqual(
            (group.filter.company_ids, group.filter.employment_current, group.filter.primary_only),
            ((firm,), True, True),
        )
        self.assertEqual(sync(groups.group_preview, group.id).total, 2)

    @defer.inlineCallbacks
    def test_form_errors_are_shown_and_nothing_is_created(self):
        browser = yield self.logged_in()
        cases = [
            ({"name": ""}, "Enter the group&#39;s name."),
            ({"name": "X", "kind": "dynamic"}, "A dynamic group needs a filter"),
            ({"name": "X", "kind": "static", "languages": "cs"}, "A static group has no filter"),
            ({"name": "X", "kind": "dynamic", "companies": "12, x"}, "&#39;x&#39; is not a"),
            (
                {"name": "X", "kind": "dynamic", "companies": str(self.ids[1])},
                "is a person; the filter takes companies",
            ),
            ({"name": "X", "kind": "dynamic", "languages": "czech"}, "not a language code"),
        ]
        for fields, message in cases:
            response = yield self.create(browser, **fields)
            self.assertEqual(response.status, 400, fields)
            self.assertIn(message, response.text)
        self.assertEqual(self.store.run_sync(groups.list_groups), [])
        yield self.create(browser, name="Taken")
        response = yield self.create(browser, name="Taken")
        self.assertEqual(response.status, 400)
        self.assertIn("Group Taken exists already", response.text)

    # --- static groups, the list ------------------------------------------------------

    @defer.inlineCallbacks
    def test_static_group_members_are_added_and_removed(self):
        browser = yield self.logged_in()
        response = yield self.create(browser, name="Listed", organization=str(self.acme.id))
        group = self.store.run_sync(groups.get_group, "Listed")
        page = yield browser.get(response.header("location"))
        self.assertIn("No members yet", page.text)
        firm, jana, petr = self.ids[:3]
        response = yield self.change(
            browser, group.id, action="members", add=f"{firm}, {jana} {petr}", remove=""
        )
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("location"), f"/group?id={group.id}&added=3&removed=0")
        response = yield self.change(browser, group.id, action="members", add="", remove=str(firm))
        page = yield browser.get(response.header("location"))
        self.assertIn("0 added, 1 removed.", page.text)
        self.assertEqual(
            self.counts(page), {"total": "2", "with-address": "1", "without-address": "1"}
        )
        self.assertEqual(self.languages(page), [("cs", "2")])
        self.assertEqual(
            _texts(r"<tr>\s*<td>(\d+)</td>\s*<td>([^<]*)</td>\s*<td>(.*?)</td>", page.text),
            [
                (str(jana), "Jana Nováková", "jana@firm.test"),
                (str(petr), "Petr Svoboda", '<span class="muted">none</span>'),
            ],
        )
        listing = yield browser.get("/groups")
        self.assertEqual(
            _texts(
                r'<td><a href="/group\?id=(\d+)">([^<]*)</a></td>\s*<td>([^<]*)</td>\s*'
                r'<td>([^<]*)</td>\s*<td class="members">(\d+)</td>',
                listing.text,
            ),
            [(str(group.id), "Listed", "static", "Acme", "2")],
        )

    @defer.inlineCallbacks
    def test_member_refusals_are_shown(self):
        browser = yield self.logged_in()
        yield self.create(browser, name="Listed", organization=str(self.acme.id))
        group = self.store.run_sync(groups.get_group, "Listed")
        response = yield self.change(browser, group.id, action="members", add="999", remove="")
        self.assertEqual(response.status, 400)
        self.assertIn("No contacts with ids 999", response.text)
        response = yield self.change(browser, group.id, action="members", add="abc", remove="")
        self.assertEqual(response.status, 400)
        self.assertIn("No contact matches &#34;abc&#34;", response.text)
        self.assertEqual(self.store.run_sync(groups.group_preview, group.id).total, 0)

    @defer.inlineCallbacks
    def test_delete_and_its_refusal_while_a_campaign_uses_the_group(self):
        sync = self.store.run_sync
        sync(domains.add_domain, "example.com")
        sync(mailboxes.add_mailbox, "news@example.com", "admin")
        used = sync(groups.add_group, "Used")
        spare = sync(groups.add_group, "Spare")
        builders.campaign(self.store, used.id, "news@example.com")
        browser = yield self.logged_in()
        response = yield self.change(browser, used.id, action="delete")
        self.assertEqual(response.status, 400)
        self.assertIn("Group Used is used by campaign Spring news", response.text)
        response = yield self.change(browser, spare.id, action="delete")
        self.assertEqual(response.status, 303)
        page = yield browser.get(response.header("location"))
        self.assertIn("Group Spare deleted.", page.text)
        self.assertEqual([g.name for g in sync(groups.list_groups)], ["Used"])

    # --- who may use the pages --------------------------------------------------------

    @defer.inlineCallbacks
    def test_csrf_missing_is_refused(self):
        group = self.store.run_sync(groups.add_group, "Listed")
        browser = yield self.logged_in()
        response = yield browser.post("/groups", {"name": "Sneaky", "kind": "static"})
        self.assertEqual(response.status, 403)
        response = yield browser.post(
            f"/group?id={group.id}", {"action": "members", "add": str(self.ids[0])}
        )
        self.assertEqual(response.status, 403)
        response = yield browser.post(
            f"/group?id={group.id}", {"action": "delete", "csrf_token": "forged"}
        )
        self.assertEqual(response.status, 403)
        self.assertEqual([g.name for g in self.store.run_sync(groups.list_groups)], ["Listed"])
        self.assertEqual(self.store.run_sync(groups.group_preview, group.id).total, 0)

    @defer.inlineCallbacks
    def test_non_admins_are_refused(self):
        group = self.store.run_sync(groups.add_group, "Listed")
        bob = yield self.logged_in("bob", "bob-secret")
        for path in ("/groups", f"/group?id={group.id}"):
            self.assertEqual((yield bob.get(path)).status, 404)
        home = yield bob.get("/")
        self.assertNotIn('href="/groups"', home.text)
        response = yield bob.post(
            f"/group?id={group.id}",
            {"action": "members", "add": str(self.ids[0]), "csrf_token": home.csrf()},
        )
        self.assertEqual(response.status, 404)
        self.assertEqual(self.store.run_sync(groups.group_preview, group.id).total, 0)
        admin = yield self.logged_in()
        self.assertIn('href="/groups"', (yield admin.get("/")).text)

    @defer.inlineCallbacks
    def test_unknown_groups_are_not_found(self):
        browser = yield self.logged_in()
        for path in ("/group?id=999", "/group?id=abc", "/group"):
            self.assertEqual((yield browser.get(path)).status, 404)


class SqliteWebGroupsTests(SqliteStoreMixin, WebGroupsTests, unittest.TestCase):
    pass


class PostgresWebGroupsTests(PostgresStoreMixin, WebGroupsTests, unittest.TestCase):
    pass
