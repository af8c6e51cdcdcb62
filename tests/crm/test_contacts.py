"""Organizations, contacts, employments, folders and hand-set default folders in the
store, written once and run on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime

from twisted.trial import unittest

from atollon_mail.crm.records import ContactRecord, DefaultFolderRecord, OrganizationRecord
from atollon_mail.store import contacts as c
from atollon_mail.store import folders as f
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin


class ContactsContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.acme = self.op(c.add_organization, "Acme")
        self.other = self.op(c.add_organization, "Other")

    def op(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    # -- organizations -----------------------------------------------------------------

    def test_organizations_by_name_or_id(self):
        self.assertEqual(self.acme, OrganizationRecord(id=self.acme.id, name="Acme"))
        self.assertEqual(self.op(c.get_organization, "Acme"), self.acme)
        self.assertEqual(self.op(c.get_organization, str(self.acme.id)), self.acme)
        self.assertEqual(self.op(c.get_organization, self.acme.id), self.acme)
        self.assertEqual([o.name for o in self.op(c.list_organizations)], ["Acme", "Other"])

    def test_organization_refusals(self):
        with self.assertRaisesRegex(Conflict, "organization Acme exists already"):
            self.op(c.add_organization, " Acme ")
        with self.assertRaisesRegex(Invalid, "needs a name"):
            self.op(c.add_organization, "  ")
        with self.assertRaisesRegex(Invalid, "would read as an id"):
            self.op(c.add_organization, "2024")
        with self.assertRaisesRegex(NotFound, "no organization Nope; see: organization list"):
            self.op(c.get_organization, "Nope")

    # -- contacts ----------------------------------------------------------------------

    def test_a_person_is_normalised(self):
        person = self.op(
            c.add_contact,
            "Acme",
            "Person",
            first_name=" Jana ",
            last_name="Nováková",
            email=" Jana.Novakova@Example.COM ",
            language="CS",
            external_id="P1",
        )
        self.assertEqual(
            person,
            ContactRecord(
                id=person.id,
                organization_id=self.acme.id,
                organization_name="Acme",
                kind="person",
                external_id="P1",
                name="Jana Nováková",
                first_name="Jana",
                last_name="Nováková",
                email="jana.novakova@example.com",
                language="cs",
            ),
        )
        self.assertEqual(self.op(c.get_contact, person.id), person)

    def test_contact_refusals(self):
        cases = [
            (Invalid, "a company needs a name", dict(kind="company")),
            (Invalid, "a company has a name only", dict(kind="company", name="X", last_name="Y")),
            (Invalid, "a person needs a last name or a name", dict(kind="person", first_name="J")),
            (Invalid, "not a contact kind", dict(kind="robot", name="R2")),
            (Invalid, "not an e-mail address", dict(kind="person", name="J", email="j@")),
            (Invalid, "not a language code", dict(kind="person", name="J", language="cze")),
        ]
        for error, message, fields in cases:
            kind = fields.pop("kind")
            with self.assertRaisesRegex(error, message):
                self.op(c.add_contact, "Acme", kind, **fields)
        self.op(c.add_contact, "Acme", "company", name="Firm", external_id="X1")
        with self.assertRaisesRegex(Conflict, "Acme has a contact with external id X1"):
            self.op(c.add_contact, "Acme", "person", name="J", external_id="X1")
        # The same external id in another organization is another contact.
        self.op(c.add_contact, "Other", "person", name="J", external_id="X1")
        with self.assertRaisesRegex(NotFound, "no contact with id 999"):
            self.op(c.get_contact, 999)

    def test_list_contacts_by_organization_and_language(self):
        one = self.op(c.add_contact, "Acme", "person", name="One", language="cs")
        two = self.op(c.add_contact, "Acme", "person", name="Two")
        three = self.op(c.add_contact, "Other", "person", name="Three", language="cs")

        def ids(**kwargs):
            return [contact.id for contact in self.op(c.list_contacts, **kwargs)]

        self.assertEqual(ids(), [one.id, two.id, three.id])
        self.assertEqual(ids(organization="Acme"), [one.id, two.id])
        self.assertEqual(ids(language="CS"), [one.id, three.id])
        self.assertEqual(ids(language=""), [two.id])
        self.assertEqual(ids(limit=1, offset=1), [two.id])
        self.assertEqual(self.op(c.count_contacts, "Acme"), 2)

    # -- employments -------------------------------------------------------------------

    def test_employments_and_the_contact_detail(self):
        firm = self.op(c.add_contact, "Acme", "company", name="Firm")
        jana = self.op(c.add_contact, "Acme", "person", name="Jana")
        job = self.op(
            c.add_employment,
            jana.id,
            firm.id,
            is_primary=False,
            valid_from=datetime.date(2020, 1, 1),
            valid_to=datetime.date(2021, 1, 1),
        )
        self.assertEqual(
            (job.person_name, job.company_name, job.is_primary, job.valid_to),
            ("Jana", "Firm", False, datetime.date(2021, 1, 1)),
        )
        self.assertEqual(self.op(c.contact_detail, jana.id).employments, (job,))
        self.assertEqual(self.op(c.contact_detail, firm.id).employments, (job,))

    def test_employment_refusals(self):
        firm = self.op(c.add_contact, "Acme", "company", name="Firm")
        jana = self.op(c.add_contact, "Acme", "person", name="Jana")
        elsewhere = self.op(c.add_contact, "Other", "company", name="Elsewhere")
        with self.assertRaisesRegex(Invalid, "is a company; give a person"):
            self.op(c.add_employment, firm.id, firm.id)
        with self.assertRaisesRegex(Invalid, "is a person; give a company"):
            self.op(c.add_employment, jana.id, jana.id)
        with self.assertRaisesRegex(Invalid, "different organizations"):
            self.op(c.add_employment, jana.id, elsewhere.id)
        with self.assertRaisesRegex(Invalid, "ends .* before it starts"):
            self.op(
                c.add_employment,
                jana.id,
                firm.id,
                valid_from=datetime.date(2022, 1, 1),
                valid_to=datetime.date(2021, 1, 1),
            )

    # -- folders, projects, default folders --------------------------------------------

    def test_folders_and_projects(self):
        firm = self.op(c.add_contact, "Acme", "company", name="Firm")
        main = self.op(f.add_folder, "Main", "Acme", firm.id)
        project = self.op(f.add_project, "Launch", self.acme.id)
        self.assertEqual(
            (main.kind, main.organization_name, main.company_id, main.company_name),
            ("folder", "Acme", firm.id, "Firm"),
        )
        self.assertEqual((project.kind, project.company_id), ("project", None))
        self.assertEqual(self.op(f.list_folders), [main, project])
        self.assertEqual(self.op(f.list_folders, company_id=firm.id), [main])
        self.assertEqual(self.op(f.list_folders, organization="Other"), [])
        self.assertEqual(self.op(f.list_folders, kind="project"), [project])

    def test_folder_refusals(self):
        firm = self.op(c.add_contact, "Acme", "company", name="Firm")
        jana = self.op(c.add_contact, "Acme", "person", name="Jana")
        with self.assertRaisesRegex(Invalid, "is a person; folders belong to companies"):
            self.op(f.add_folder, "Main", "Acme", jana.id)
        with self.assertRaisesRegex(Invalid, "belongs to organization Acme, not Other"):
            self.op(f.add_folder, "Main", "Other", firm.id)
        with self.assertRaisesRegex(Invalid, "a folder needs a name"):
            self.op(f.add_folder, " ", "Acme", firm.id)
        with self.assertRaisesRegex(NotFound, "no organization Nope"):
            self.op(f.add_project, "Launch", "Nope")

    def test_set_and_clear_a_default_folder_by_hand(self):
        firm = self.op(c.add_contact, "Acme", "company", name="Firm")
        jana = self.op(c.add_contact, "Acme", "person", name="Jana")
        main = self.op(f.add_folder, "Main", "Acme", firm.id)
        project = self.op(f.add_project, "Launch", "Acme")
        first = self.op(f.set_default_folder, jana.id, "Acme", folder_id=main.id, activity="sales")
        self.assertEqual(
            first,
            DefaultFolderRecord(
                organization_id=self.acme.id,
                organization_name="Acme",
                contact_id=jana.id,
                folder_id=main.id,
                folder_name="Main",
                project_id=None,
                project_name=None,
                activity="sales",
                source="manual",
            ),
        )
        # Setting again replaces the row (one per organization and contact).
        second = self.op(f.set_default_folder, jana.id, "Acme", project_id=project.id)
        self.assertEqual(
            (second.folder_id, second.project_id, second.activity), (None, project.id, None)
        )
        self.assertEqual(self.op(c.contact_detail, jana.id).default_folders, (second,))
        self.assertTrue(self.op(f.clear_default_folder, jana.id, "Acme"))
        self.assertFalse(self.op(f.clear_default_folder, jana.id, "Acme"))
        self.assertEqual(self.op(c.contact_detail, jana.id).default_folders, ())

    def test_default_folder_refusals(self):
        firm = self.op(c.add_contact, "Acme", "company", name="Firm")
        jana = self.op(c.add_contact, "Acme", "person", name="Jana")
        main = self.op(f.add_folder, "Main", "Acme", firm.id)
        project = self.op(f.add_project, "Launch", "Acme")
        elsewhere = self.op(f.add_project, "Elsewhere", "Other")
        with self.assertRaisesRegex(Invalid, "give a folder or a project"):
            self.op(f.set_default_folder, jana.id, "Acme")
        with self.assertRaisesRegex(Invalid, "is a project, not a folder"):
            self.op(f.set_default_folder, jana.id, "Acme", folder_id=project.id)
        with self.assertRaisesRegex(Invalid, "is a folder, not a project"):
            self.op(f.set_default_folder, jana.id, "Acme", project_id=main.id)
        with self.assertRaisesRegex(Invalid, "does not belong to organization Acme"):
            self.op(f.set_default_folder, jana.id, "Acme", project_id=elsewhere.id)
        # A contact has a default folder per organization, also in another one than its own.
        there = self.op(f.set_default_folder, jana.id, "Other", project_id=elsewhere.id)
        self.assertEqual((there.organization_name, there.project_name), ("Other", "Elsewhere"))
        with self.assertRaisesRegex(NotFound, "no folder or project with id 999"):
            self.op(f.set_default_folder, jana.id, "Acme", folder_id=999)


class SqliteContactsTests(SqliteStoreMixin, ContactsContract, unittest.TestCase):
    pass


class PostgresContactsTests(PostgresStoreMixin, ContactsContract, unittest.TestCase):
    pass
