"""The CRM pages of the web admin, over a real listening port, on SQLite and PostgreSQL:
the contacts list and its search, adding and editing a contact (bad input: 400 and the
form again), a contact's page (employments, groups, mail, campaign mail), a folder's
messages, "File to..." on the message page, and 404 for what a user may not see."""

from __future__ import annotations

import html
import re
from urllib.parse import quote

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.delivery.intake import summarize_headers
from atollon_mail.store import contacts, contexts, crm_mail, filing, folders, groups, mailboxes
from atollon_mail.store.records import IncomingMessage
from tests import builders
from tests.builders import web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_security import _hash


def _raw(sender: str, to: str, subject: str) -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def _names(page) -> list[str]:
    return [
        html.unescape(name)
        for name in re.findall(r'<a href="/contact\?id=\d+">([^<]*)</a>', page.text)
    ]


class WebContactsTests(ServedWebMixin, StoreFixtureMixin):
    default_login = ("joe", "joe-secret")

    def setUp(self):
        self.store = self.make_store()
        sync = self.sync = self.store.run_sync
        builders.domain(self.store, "acme.test")
        builders.user(self.store, "admin", _hash("admin-secret"), is_admin=True)
        builders.user(self.store, "joe", _hash("joe-secret"))
        builders.user(self.store, "bob", _hash("bob-secret"))
        builders.mailbox(self.store, "joe@acme.test", "joe")
        builders.mailbox(self.store, "bob@acme.test", "bob")
        builders.organization(self.store)
        self.firm = builders.company(self.store, "Firm", email="office@firm.test", external_id="c1")
        self.jana = builders.person(
            self.store, name="Jana Nováková", email="jana@firm.test", external_id="p1"
        )
        builders.employment(self.store, self.jana, self.firm)
        self.hans = builders.person(self.store, name="<b>Hans</b>", email="hans@other.test")
        self.project = sync(folders.add_project, "Spring launch", "Acme")
        self.joe = sync(filing.resolve_recipient, "joe", "acme.test")
        self.bob = sync(filing.resolve_recipient, "bob", "acme.test")
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        self.serve(web_root(self, self.store, config, reactor, clock=Clock()))

    def receive(self, raw: bytes, *recipients) -> int:
        incoming = IncomingMessage(
            envelope_sender="x@elsewhere.test",
            recipients=recipients or (self.joe,),
            raw=raw,
            **summarize_headers(raw),
        )
        [stored] = self.sync(filing.store_messages, [incoming])
        return stored.id

    @defer.inlineCallbacks
    def post_form(self, browser, path: str, **fields):
        page = yield browser.get(path)
        self.assertEqual(page.status, 200, page.text)
        return (yield browser.post(path, {"csrf_token": page.csrf(), **fields}))

    # -- the list ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_search_by_name_email_company_or_external_id(self):
        browser = yield self.logged_in()
        everyone = yield browser.get("/contacts")
        self.assertEqual(everyone.status, 200)
        self.assertEqual(_names(everyone), ["Firm", "Jana Nováková", "<b>Hans</b>"])
        self.assertNotIn("<b>Hans</b>", everyone.text)  # escaped
        self.assertIn("<td>person</td>\n  <td>Firm</td>", everyone.text)  # Jana works there
        for query, expected in (
            ("nová", ["Jana Nováková"]),
            ("HANS@other", ["<b>Hans</b>"]),
            ("firm", ["Firm", "Jana Nováková"]),  # her employer's name, and her address
            ("p1", ["Jana Nováková"]),
            ("nobody", []),
        ):
            with self.subTest(query=query):
                page = yield browser.get(f"/contacts?q={quote(query)}")
                self.assertEqual(_names(page), expected)
        bad = yield browser.get("/contacts?page=0")
        self.assertEqual(bad.status, 400)

    @defer.inlineCallbacks
    def test_the_list_is_paged(self):
        for number in range(55):
            builders.person(self.store, name=f"Person {number:02d}")
        browser = yield self.logged_in()
        first = yield browser.get("/contacts?q=person")
        self.assertEqual(len(_names(first)), 50)
        self.assertIn('href="/contacts?q=person&amp;page=2"', first.text)
        second = yield browser.get("/contacts?q=person&page=2")
        self.assertEqual(_names(second), [f"Person {n}" for n in range(50, 55)])
        self.assertNotIn('rel="next"', second.text)

    # -- adding and editing -----------------------------------------------------------

    @defer.inlineCallbacks
    def test_add_a_person_and_a_company_and_edit_one(self):
        browser = yield self.logged_in()
        acme = self.sync(contacts.get_organization, "Acme")
        response = yield self.post_form(
            browser,
            "/contacts/new",
            organization=str(acme.id),
            kind="person",
            name="",
            first_name="Petr",
            last_name="Svoboda",
            email="Petr@Firm.test",
            language="cs",
            external_id="p2",
        )
        self.assertEqual(response.status, 303)
        petr = self.sync(contacts.get_contact, "p2")
        self.assertEqual((petr.name, petr.email), ("Petr Svoboda", "petr@firm.test"))
        self.assertEqual(response.header("location"), f"/contact?id={petr.id}&saved=1")
        response = yield self.post_form(
            browser, "/contacts/new", organization=str(acme.id), kind="company", name="Globex"
        )
        self.assertEqual(response.status, 303)
        self.assertEqual(self.sync(contacts.get_contact, "Globex").kind, "company")
        response = yield self.post_form(
            browser,
            f"/contact/edit?id={petr.id}",
            name="Petr Svoboda",
            first_name="Petr",
            last_name="Svoboda",
            email="petr.svoboda@firm.test",
            language="",
            external_id="p2",
        )
        self.assertEqual(response.status, 303)
        page = yield browser.get(response.header("location"))
        self.assertIn("Contact saved.", page.text)
        self.assertIn("petr.svoboda@firm.test", page.text)

    @defer.inlineCallbacks
    def test_bad_input_gives_400_and_the_form_again(self):
        browser = yield self.logged_in()
        acme = self.sync(contacts.get_organization, "Acme")
        cases = (
            ({"organization": "", "kind": "person", "last_name": "X"}, "Choose the organization"),
            (
                {"organization": "abc", "kind": "person", "last_name": "X"},
                "Choose the organization",
            ),
            (
                {"organization": str(acme.id), "kind": "robot", "name": "X"},
                "Choose person or company",
            ),
            ({"organization": str(acme.id), "kind": "person"}, "needs a last name or a name"),
            (
                {"organization": str(acme.id), "kind": "company", "name": "Y", "email": "no"},
                "is not an e-mail address",
            ),
            (
                {"organization": str(acme.id), "kind": "person", "name": "Z", "language": "ces"},
                "is not a language code",
            ),
            (
                {"organization": str(acme.id), "kind": "person", "name": "Z", "external_id": "p1"},
                "external id p1 already",
            ),
            ({"organization": "999", "kind": "person", "name": "Z"}, "No organization 999"),
        )
        before = self.sync(contacts.count_contacts)
        for fields, message in cases:
            with self.subTest(fields=fields):
                response = yield self.post_form(browser, "/contacts/new", **fields)
                self.assertEqual(response.status, 400)
                self.assertIn(message, html.unescape(response.text))
                self.assertIn('action="/contacts/new"', response.text)
                self.assertIn('aria-invalid="true"', response.text)
        self.assertEqual(self.sync(contacts.count_contacts), before)
        response = yield self.post_form(
            browser, f"/contact/edit?id={self.hans.id}", name="Hans", external_id="p1"
        )
        self.assertEqual(response.status, 400)
        self.assertIn("external id p1 already", response.text)
        self.assertEqual(self.sync(contacts.get_contact, self.hans.id).name, "<b>Hans</b>")

    # -- the contact page -------------------------------------------------------------

    @defer.inlineCallbacks
    def test_the_contact_page_lists_mail_from_and_to_the_contact_the_user_may_read(self):
        from_jana = self.receive(_raw("Jana <jana@firm.test>", "joe@acme.test", "Offer"))
        self.receive(_raw("hans@other.test", "joe@acme.test", "Unrelated"))
        self.receive(_raw("jana@firm.test", "bob@acme.test", "For bob only"), self.bob)
        browser = yield self.logged_in()
        page = yield browser.get(f"/contact?id={self.jana.id}")
        self.assertEqual(page.status, 200)
        self.assertIn(f'href="/mail/message?address=joe%40acme.test&amp;id={from_jana}"', page.text)
        self.assertIn("Offer", page.text)
        self.assertNotIn("Unrelated", page.text)
        self.assertNotIn("For bob only", page.text)
        self.assertIn("1 message from or to jana@firm.test", page.text)
        # Groups are the administrators': joe sees none, and may not change them.
        self.assertNotIn('id="groups"', page.text)
        group = builders.group(self.store, "Customers", "Acme")
        response = yield browser.post(
            f"/contact?id={self.jana.id}",
            {"csrf_token": page.csrf(), "action": "group-add", "group": str(group.id)},
        )
        self.assertEqual(response.status, 404)
        admin = yield self.logged_in("admin", "admin-secret")
        page = yield admin.get(f"/contact?id={self.jana.id}")
        self.assertIn("For bob only", page.text)

    @defer.inlineCallbacks
    def test_the_campaign_mail_a_contact_got_is_shown_to_administrators(self):
        builders.mailbox(self.store, "news@acme.test", "admin")
        group = builders.group(self.store, "Customers", "Acme", members=[self.jana.id])
        builders.campaign(self.store, group.id, variants={"en": ("Spring", "Hi")}, started=True)
        joe = yield self.logged_in()
        page = yield joe.get(f"/contact?id={self.jana.id}")
        self.assertEqual(page.status, 200)
        self.assertNotIn('id="campaign-mail"', page.text)
        self.assertNotIn("Spring news", page.text)
        admin = yield self.logged_in("admin", "admin-secret")
        page = yield admin.get(f"/contact?id={self.jana.id}")
        self.assertIn('id="campaign-mail"', page.text)
        self.assertIn("Spring news", page.text)

    @defer.inlineCallbacks
    def test_employments_added_made_primary_and_ended(self):
        builders.company(self.store, "Globex", external_id="c2")
        browser = yield self.logged_in()
        url = f"/contact?id={self.jana.id}"
        response = yield self.post_form(
            browser, url, action="employment-add", company="c2", valid_from="2026-01-01"
        )
        self.assertEqual(response.status, 303)
        jobs = self.sync(contacts.list_employments, self.jana.id)
        self.assertEqual(
            [(j.company_name, j.is_primary) for j in jobs], [("Firm", True), ("Globex", False)]
        )
        response = yield self.post_form(
            browser, url, action="employment-primary", employment=str(jobs[1].id)
        )
        self.assertEqual(response.status, 303)
        jobs = self.sync(contacts.list_employments, self.jana.id)
        self.assertEqual([j.is_primary for j in jobs], [False, True])
        response = yield self.post_form(
            browser, url, action="employment-end", employment=str(jobs[0].id), ended_on="2026-02-28"
        )
        self.assertEqual(response.status, 303)
        page = yield browser.get(response.header("location"))
        self.assertIn("Employment ended.", page.text)
        self.assertEqual(
            str(self.sync(contacts.list_employments, self.jana.id)[0].valid_to), "2026-02-28"
        )
        # Refusals: the form again with the reason, 400.
        for fields, message in (
            ({"action": "employment-add", "company": "nobody"}, "No company matches"),
            (
                {"action": "employment-add", "company": "Globex", "valid_from": "soon"},
                "is not a date",
            ),
            ({"action": "employment-end", "employment": "999"}, "not this contact"),
            (
                {
                    "action": "employment-end",
                    "employment": str(jobs[1].id),
                    "ended_on": "2025-01-01",
                },
                "give an end on or after it",
            ),
        ):
            with self.subTest(fields=fields):
                response = yield self.post_form(browser, url, **fields)
                self.assertEqual(response.status, 400)
                self.assertIn(message, html.unescape(response.text))
        response = yield self.post_form(browser, url, action="unknown")
        self.assertEqual(response.status, 404)

    @defer.inlineCallbacks
    def test_default_folder_set_and_cleared_and_linked_to_its_messages(self):
        orders = self.sync(folders.add_folder, "Firm orders", "Acme", "Firm")
        browser = yield self.logged_in()
        url = f"/contact?id={self.jana.id}"
        page = yield browser.get(url)
        self.assertIn(f'<option value="{orders.id}"', page.text)
        response = yield self.post_form(browser, url, action="default-set", target=str(orders.id))
        self.assertEqual(response.status, 303)
        response = yield self.post_form(
            browser, url, action="default-set", target=str(self.project.id)
        )
        self.assertEqual(response.status, 303)
        [default] = self.sync(contacts.contact_detail, self.jana.id).default_folders
        self.assertEqual(
            (default.folder_id, default.project_id, default.source),
            (orders.id, self.project.id, "manual"),
        )
        page = yield browser.get(url)
        self.assertIn(f'<a href="/folder?id={orders.id}">Firm orders</a>', page.text)
        self.assertIn(f'<a href="/folder?id={self.project.id}">Spring launch</a>', page.text)
        for target, message in (("", "Choose a folder or project"), ("999", "No folder")):
            response = yield self.post_form(browser, url, action="default-set", target=target)
            self.assertEqual(response.status, 400)
            self.assertIn(message, html.unescape(response.text))
        response = yield self.post_form(browser, url, action="default-clear")
        self.assertEqual(response.status, 303)
        self.assertEqual(self.sync(contacts.contact_detail, self.jana.id).default_folders, ())

    @defer.inlineCallbacks
    def test_an_admin_adds_and_removes_a_contact_from_static_groups(self):
        customers = builders.group(self.store, "Customers", "Acme")
        browser = yield self.logged_in("admin", "admin-secret")
        url = f"/contact?id={self.jana.id}"
        response = yield self.post_form(browser, url, action="group-add", group=str(customers.id))
        self.assertEqual(response.status, 303)
        self.assertEqual(self.sync(groups.group_preview, customers.id).total, 1)
        page = yield browser.get(url)
        self.assertIn('href="/group?id=%d">Customers</a>' % customers.id, page.text)
        response = yield browser.post(
            url, {"csrf_token": page.csrf(), "action": "group-remove", "group": str(customers.id)}
        )
        self.assertEqual(response.status, 303)
        self.assertEqual(self.sync(groups.group_preview, customers.id).total, 0)

    @defer.inlineCallbacks
    def test_group_members_by_name_or_email_on_the_group_page(self):
        customers = builders.group(self.store, "Customers", "Acme")
        browser = yield self.logged_in("admin", "admin-secret")
        response = yield self.post_form(
            browser,
            f"/group?id={customers.id}",
            action="members",
            add="Jana Nováková, office@firm.test",
            remove="",
        )
        self.assertEqual(response.status, 303)
        preview = self.sync(groups.group_overview, customers.id)
        self.assertEqual(sorted(m.name for m in preview.sample), ["Firm", "Jana Nováková"])
        response = yield self.post_form(
            browser, f"/group?id={customers.id}", action="members", add="", remove="jana@firm.test"
        )
        self.assertEqual(response.status, 303)
        self.assertEqual(self.sync(groups.group_preview, customers.id).total, 1)

    # -- filing and a folder's messages ------------------------------------------------

    @defer.inlineCallbacks
    def test_file_to_a_project_and_find_it_on_the_projects_page(self):
        message_id = self.receive(_raw("jana@firm.test", "joe@acme.test", "Launch plan"))
        browser = yield self.logged_in()
        message_url = f"/mail/message?address=joe%40acme.test&id={message_id}"
        page = yield browser.get(message_url)
        self.assertIn('id="file-to"', page.text)
        self.assertIn(f'<option value="{self.project.id}"', page.text)
        for expected in ("new", "already"):
            response = yield browser.post(
                "/mail/file",
                {
                    "csrf_token": page.csrf(),
                    "address": "joe@acme.test",
                    "id": str(message_id),
                    "folder": str(self.project.id),
                },
            )
            self.assertEqual(response.status, 303)
            self.assertIn(f"filed={expected}", response.header("location"))
        page = yield browser.get(response.header("location"))
        self.assertIn("It was filed into Spring launch already.", page.text)
        self.assertIn(
            f'<a href="/folder?id={self.project.id}">Project Spring launch</a>', page.text
        )
        contexts = self.sync(crm_mail.message_contexts, "joe@acme.test", message_id)
        self.assertEqual(len(contexts), 2)
        project_page = yield browser.get(f"/folder?id={self.project.id}")
        self.assertEqual(project_page.status, 200)
        self.assertIn("Launch plan", project_page.text)
        # bob may view neither joe's mailbox nor its mail in the project.
        bob = yield self.logged_in("bob", "bob-secret")
        project_page = yield bob.get(f"/folder?id={self.project.id}")
        self.assertEqual(project_page.status, 200)
        self.assertNotIn("Launch plan", project_page.text)

    @defer.inlineCallbacks
    def test_what_a_user_may_not_see_is_not_found(self):
        message_id = self.receive(_raw("jana@firm.test", "joe@acme.test", "Secret plan"))
        self.sync(crm_mail.file_into, "joe@acme.test", message_id, self.project.id)
        bob = yield self.logged_in("bob", "bob-secret")
        home = yield bob.get("/")
        for path in (
            "/contact?id=999",
            "/contact?id=abc",
            "/contact",
            "/contact/edit?id=999",
            "/folder?id=999",
            "/folder?id=abc",
            f"/mail/message?address=joe%40acme.test&id={message_id}",
        ):
            with self.subTest(path=path):
                self.assertEqual((yield bob.get(path)).status, 404)
        # A To Do is no folder or project: it has no page.
        todo = self.sync(crm_mail.message_contexts, "joe@acme.test", message_id)[0]
        self.assertEqual((yield bob.get(f"/folder?id={todo.id}")).status, 404)
        # Nor a user's own folder (not the CRM's).
        own = self.sync(contexts.add_context, "folder", "Joe's notes", "joe")
        self.assertEqual((yield bob.get(f"/folder?id={own.id}")).status, 404)
        # Filing another's message: 404, nothing filed.
        for address in ("joe@acme.test", "nobody@acme.test", "bad"):
            response = yield bob.post(
                "/mail/file",
                {
                    "csrf_token": home.csrf(),
                    "address": address,
                    "id": str(message_id),
                    "folder": str(self.project.id),
                },
            )
            self.assertEqual(response.status, 404)
        # Nor a message of bob's own mailbox that is not there, nor a folder that is none.
        mine = self.receive(_raw("jana@firm.test", "bob@acme.test", "Mine"), self.bob)
        for message, folder in ((str(message_id), str(self.project.id)), (str(mine), "999")):
            response = yield bob.post(
                "/mail/file",
                {
                    "csrf_token": home.csrf(),
                    "address": "bob@acme.test",
                    "id": message,
                    "folder": folder,
                },
            )
            self.assertEqual(response.status, 404)
        self.assertEqual(len(self.sync(crm_mail.message_contexts, "joe@acme.test", message_id)), 2)
        # A user with view but no edit right reads the message but is not offered filing.
        self.sync(mailboxes.grant_mailbox_access, "joe@acme.test", "bob", view=True, edit=False)
        page = yield bob.get(f"/mail/message?address=joe%40acme.test&id={message_id}")
        self.assertEqual(page.status, 200)
        self.assertNotIn('id="file-to"', page.text)
        response = yield bob.post(
            "/mail/file",
            {
                "csrf_token": home.csrf(),
                "address": "joe@acme.test",
                "id": str(message_id),
                "folder": str(self.project.id),
            },
        )
        self.assertEqual(response.status, 404)
        project_page = yield bob.get(f"/folder?id={self.project.id}")
        self.assertIn("Secret plan", project_page.text)


class SqliteWebContactsTests(SqliteStoreMixin, WebContactsTests, unittest.TestCase):
    pass


class PostgresWebContactsTests(PostgresStoreMixin, WebContactsTests, unittest.TestCase):
    pass
