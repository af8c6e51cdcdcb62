"""Organizations, contacts, employments, folders and hand-set default folders in the
store, written once and run on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime

from twisted.trial import unittest

from atollon_mail.crm.records import ContactRecord, DefaultFolderRecord, OrganizationRecord
from atollon_mail.store import contacts as c
from atollon_mail.store import folders as f
from atollon_mail.store.errors import Ambiguous, Conflict, Invalid, NotFound
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

    # -- finding contacts by what a person knows ---------------------------------------

    def crowd(self):
        """Firmament (company, F1), Jana Nováková (P1, works at Firmament), Šárka Dvořáková, and
        Petr Novák at Other (P1 there too)."""
        firm = self.op(
            c.add_contact,
            "Acme",
            "company",
            name="Firmament",
            email="office@firm.test",
            external_id="F1",
        )
        jana = self.op(
            c.add_contact,
            "Acme",
            "person",
            first_name="Jana",
            last_name="Nováková",
            email="jana@firm.test",
            external_id="P1",
        )
        sarka = self.op(c.add_contact, "Acme", "person", name="Šárka Dvořáková")
        petr = self.op(c.add_contact, "Other", "person", name="Petr Novák", external_id="P1")
        self.op(c.add_employment, jana.id, firm.id)
        return firm, jana, sarka, petr

    def named(self, text, **kwargs):
        return self.op(c.get_contact, text, **kwargs).id

    def test_a_contact_is_found_by_id_external_id_email_or_name(self):
        firm, jana, sarka, petr = self.crowd()
        self.assertEqual(self.named(str(jana.id)), jana.id)
        self.assertEqual(self.named(jana.id), jana.id)
        self.assertEqual(self.named("JANA@firm.TEST"), jana.id)
        self.assertEqual(self.named("f1"), firm.id)
        self.assertEqual(self.named("jana nováková"), jana.id)
        # Any case in any script, on both backends: SQLite's own lower() knows ASCII only.
        self.assertEqual(self.named("ŠÁRKA DVOŘÁKOVÁ"), sarka.id)
        self.assertEqual(self.named("dvořák"), sarka.id)
        # An exact match wins over a partial one ("Novák" is part of "Nováková" too).
        self.assertEqual(self.named("petr novák"), petr.id)
        # Within an organization, P1 is one contact.
        self.assertEqual(self.named("p1", organization="Other"), petr.id)
        self.assertEqual(self.named("p1", organization="Acme"), jana.id)
        # A number that is no contact's id is looked for as an external id and a name.
        self.op(c.add_contact, "Acme", "person", name="Nine", external_id="9000")
        self.assertEqual(self.op(c.get_contact, "9000").name, "Nine")

    def test_several_matches_are_listed_and_none_is_said(self):
        firm, jana, sarka, petr = self.crowd()
        with self.assertRaises(Ambiguous) as raised:
            self.op(c.get_contact, "p1")
        self.assertEqual(
            str(raised.exception),
            f'2 contacts match "p1": {jana.id} Jana Nováková <jana@firm.test> at Firmament; '
            f"{petr.id} Petr Novák; give the id, the e-mail or the external id; see: contacts "
            "list --search TEXT",
        )
        with self.assertRaisesRegex(
            NotFound,
            '^no contact matches "Zoe" \\(by id, external id, e-mail or name\\); '
            "see: contacts list --search TEXT$",
        ):
            self.op(c.get_contact, "Zoe")
        with self.assertRaisesRegex(NotFound, 'no company matches "Jana" .* in Acme'):
            self.op(c.get_contact, "Jana", organization="Acme", kind="company")
        with self.assertRaisesRegex(Invalid, "give a contact's id, external id, e-mail or name"):
            self.op(c.get_contact, "  ")

    def test_at_most_ten_candidates_and_how_many(self):
        for number in range(12):
            self.op(c.add_contact, "Acme", "person", name=f"Novák {number:02}")
        matches = self.op(c.find_contacts, "NOVÁK")
        self.assertEqual((matches.total, len(matches.contacts)), (12, 10))
        with self.assertRaises(Ambiguous) as raised:
            self.op(c.get_contact, "novák")
        self.assertIn("Novák 09; and 2 more; give the id", str(raised.exception))
        self.assertTrue(str(raised.exception).startswith('12 contacts match "novák": '))

    def test_search_lists_by_name_email_external_id_or_employer(self):
        firm, jana, sarka, petr = self.crowd()

        def found(text, **kwargs):
            return [contact.id for contact in self.op(c.list_contacts, search=text, **kwargs)]

        self.assertEqual(found("NOVÁK"), [jana.id, petr.id])
        self.assertEqual(found("novák", organization="Acme"), [jana.id])
        self.assertEqual(found("@firm.test"), [firm.id, jana.id])
        # The company's name finds the company and those who work there now.
        self.assertEqual(found("FIRMAMENT"), [firm.id, jana.id])
        self.assertEqual(found("p1"), [jana.id, petr.id])
        # LIKE's wildcards are plain characters.
        self.assertEqual(found("%"), [])
        self.assertEqual(found("_"), [])
        self.assertEqual(self.op(c.count_contacts, search="novák"), 2)
        # A finished employment no longer makes the person one of the company's.
        self.op(c.end_employment, jana.id, on=datetime.date(2020, 1, 1))
        self.assertEqual(found("firmament"), [firm.id])

    # -- employments by command ---------------------------------------------------------

    def test_add_an_employment_and_keep_one_primary(self):
        firm, jana, sarka, petr = self.crowd()
        beta = self.op(c.add_contact, "Acme", "company", name="Beta")
        # Without saying, a second job is not primary.
        second = self.op(c.add_job, "jana@firm.test", "beta")
        self.assertEqual((second.employment.is_primary, second.no_longer_primary), (False, ()))
        # Made primary, it takes that from the first.
        third = self.op(
            c.add_job,
            "P1",
            "Beta",
            is_primary=True,
            valid_from=datetime.date(2024, 1, 1),
            organization="Acme",
        )
        self.assertEqual(
            [(job.company_name, job.is_primary) for job in third.no_longer_primary],
            [("Firmament", False)],
        )
        # A person without a job gets a primary one.
        first = self.op(c.add_job, sarka.id, firm.id)
        self.assertTrue(first.employment.is_primary)
        with self.assertRaisesRegex(NotFound, 'no company matches "Jana"'):
            self.op(c.add_job, "Šárka", "Jana")
        with self.assertRaisesRegex(Invalid, "is a company; give a person"):
            self.op(c.add_job, str(beta.id), "Firm")

    def test_make_primary_and_end_an_employment(self):
        firm, jana, sarka, petr = self.crowd()
        beta = self.op(c.add_contact, "Acme", "company", name="Beta")
        self.op(c.add_employment, jana.id, beta.id, is_primary=False)
        with self.assertRaisesRegex(Ambiguous, '2 employments match "Jana Nováková": at Firm'):
            self.op(c.make_primary, "Jana Nováková")
        change = self.op(c.make_primary, "Jana Nováková", "Beta")
        self.assertEqual(
            (change.employment.company_name, change.employment.is_primary),
            ("Beta", True),
        )
        self.assertEqual([job.company_name for job in change.no_longer_primary], ["Firmament"])
        # The person got fired: the employment ends, the person and the company stay.
        ended = self.op(c.end_employment, "jana@firm.test", "Beta", on=datetime.date(2024, 6, 30))
        self.assertEqual(ended.valid_to, datetime.date(2024, 6, 30))
        self.assertEqual(self.op(c.get_contact, jana.id).name, "Jana Nováková")
        today = datetime.date(2024, 7, 1)
        self.assertEqual(
            [
                job.company_name
                for job in self.op(
                    c.list_employments, person="P1", organization="Acme", current=True, today=today
                )
            ],
            ["Firmament"],
        )
        self.assertEqual(
            [job.company_name for job in self.op(c.list_employments, current=False, today=today)],
            ["Beta"],
        )
        self.assertEqual(
            [job.person_name for job in self.op(c.list_employments, company="Firm")],
            ["Jana Nováková"],
        )
        # Only one employment is left open now: it is the one named without a company.
        self.assertEqual(
            self.op(c.end_employment, "P1", on=today, today=today, organization="Acme"),
            self.op(c.list_employments, company="Firm")[0],
        )
        with self.assertRaisesRegex(Invalid, "an ended employment is not made primary"):
            self.op(c.make_primary, jana.id, "Beta", today=today + datetime.timedelta(days=1))
        with self.assertRaisesRegex(Invalid, "starts on 2024-03-01; give an end on or after it"):
            self.op(c.add_employment, sarka.id, beta.id, valid_from=datetime.date(2024, 3, 1))
            self.op(c.end_employment, sarka.id, on=datetime.date(2024, 2, 1))
        with self.assertRaisesRegex(NotFound, "has no employment at Beta starting 2020-01-01"):
            self.op(c.end_employment, jana.id, "Beta", started=datetime.date(2020, 1, 1))

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

    def test_folders_and_projects_are_found_by_name_or_company(self):
        firm = self.op(c.add_contact, "Acme", "company", name="Firm", external_id="F1")
        beta = self.op(c.add_contact, "Other", "company", name="Beta")
        main = self.op(f.add_folder, "Main", "Acme", "f1")
        sales = self.op(f.add_folder, "Sales", "Acme", "Firm")
        beta_main = self.op(f.add_folder, "Main", "Other", "beta")
        launch = self.op(f.add_project, "Launch ŽIVĚ", "Acme")

        def named(text, **kwargs):
            return self.op(f.get_folder, text, **kwargs).id

        self.assertEqual(named(str(sales.id)), sales.id)
        self.assertEqual(named("sales"), sales.id)
        self.assertEqual(named("launch živě"), launch.id)
        self.assertEqual(named("beta"), beta_main.id)
        self.assertEqual(named("main", organization="Acme"), main.id)
        with self.assertRaises(Ambiguous) as raised:
            self.op(f.get_folder, "MAIN")
        self.assertEqual(
            str(raised.exception),
            f'2 folders and projects match "MAIN": {main.id} folder Main of Firm (Acme); '
            f"{beta_main.id} folder Main of Beta (Other); give the id or the whole name; "
            "see: folder list",
        )
        # The company's name names its folders.
        with self.assertRaisesRegex(Ambiguous, '^2 folders and projects match "firm"'):
            self.op(f.get_folder, "firm")
        with self.assertRaisesRegex(NotFound, '^no folder or project matches "Nope"'):
            self.op(f.get_folder, "Nope")
        self.assertEqual(
            [folder.id for folder in self.op(f.list_folders, company_id="Firm")],
            [main.id, sales.id],
        )
        self.assertEqual(firm.id, main.company_id)
        self.assertEqual(beta.id, beta_main.company_id)

    def test_default_folder_by_names(self):
        self.op(c.add_contact, "Acme", "company", name="Firm")
        jana = self.op(c.add_contact, "Acme", "person", name="Jana", email="jana@firm.test")
        main = self.op(f.add_folder, "Main", "Acme", "Firm")
        project = self.op(f.add_project, "Launch", "Acme")
        chosen = self.op(
            f.set_default_folder, "jana@firm.test", "Acme", folder_id="main", project_id="launch"
        )
        self.assertEqual(
            (chosen.contact_id, chosen.folder_id, chosen.project_id),
            (jana.id, main.id, project.id),
        )
        with self.assertRaisesRegex(NotFound, 'no project matches "Main"'):
            self.op(f.set_default_folder, jana.id, "Acme", project_id="Main")

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
