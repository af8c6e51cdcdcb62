"""The contacts CSV import: all rows or none, written once and run on SQLite and on
PostgreSQL."""

from __future__ import annotations

import datetime

from twisted.trial import unittest

from atollon_mail.crm.records import ImportProblem
from atollon_mail.store import contacts as c
from atollon_mail.store.csvimport import import_contacts
from atollon_mail.store.models import Contact, Employment
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

HEADER = "organization,kind,external_id,name,first_name,last_name,email,language,employer"
GOOD = "\n".join(
    [
        HEADER,
        "Acme,company,F1,Firm,,,Office@Firm.TEST,CS,",
        "Acme,person,P1,,Jana,Nováková,Jana@Firm.test,cs,F1",
        "Acme,person,P2,Petr Svoboda,,,,,",
        "Other,person,P1,,,Smith,smith@other.test,en,",
    ]
)


def _stored() -> list[tuple]:
    return builders.table_rows(
        Contact.organization,
        Contact.kind,
        Contact.external_id,
        Contact.name,
        Contact.first_name,
        Contact.last_name,
        Contact.email,
        Contact.language,
        Contact.updated_at,
    )


def _employments() -> list[tuple]:
    return builders.table_rows(
        Employment.person,
        Employment.company,
        Employment.is_primary,
        Employment.valid_from,
        Employment.valid_to,
    )


class ImportContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.acme = self.op(c.add_organization, "Acme")
        self.other = self.op(c.add_organization, "Other")

    def op(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def load(self, text: str, bom: bool = False):
        data = text.encode("utf-8")
        return self.op(import_contacts, (b"\xef\xbb\xbf" if bom else b"") + data)

    def contact(self, external_id: str, organization: str = "Acme"):
        [found] = [
            record
            for record in self.op(c.list_contacts, organization=organization, limit=None)
            if record.external_id == external_id
        ]
        return found

    def problems(self, text: str) -> list[tuple[int, str, str]]:
        report = self.load(text)
        self.assertEqual((report.created, report.updated, report.employments), (0, 0, 0))
        self.assertEqual(self.op(_stored), [])
        return [(p.line, p.column, p.why) for p in report.problems]

    # -- good files --------------------------------------------------------------------

    def test_a_file_with_a_byte_order_mark_is_imported(self):
        report = self.load(GOOD, bom=True)
        self.assertEqual(
            (report.created, report.updated, report.unchanged, report.employments),
            (4, 0, 0, 1),
        )
        self.assertEqual(report.problems, ())
        firm, jana, petr = self.contact("F1"), self.contact("P1"), self.contact("P2")
        smith = self.contact("P1", "Other")
        self.assertEqual(
            (firm.kind, firm.name, firm.email, firm.language),
            ("company", "Firm", "office@firm.test", "cs"),
        )
        self.assertEqual(
            (jana.name, jana.first_name, jana.last_name, jana.email),
            ("Jana Nováková", "Jana", "Nováková", "jana@firm.test"),
        )
        self.assertEqual(
            (petr.name, petr.last_name, petr.email, petr.language), ("Petr Svoboda", "", "", "")
        )
        self.assertEqual((smith.name, smith.organization_name), ("Smith", "Other"))
        self.assertEqual(self.op(_employments), [(jana.id, firm.id, True, None, None)])

    def test_importing_the_same_file_twice_changes_nothing(self):
        self.load(GOOD)
        contacts, employments = self.op(_stored), self.op(_employments)
        report = self.load(GOOD)
        self.assertEqual(
            (report.created, report.updated, report.unchanged, report.employments),
            (0, 0, 4, 0),
        )
        self.assertEqual(self.op(_stored), contacts)
        self.assertEqual(self.op(_employments), employments)

    def test_a_stored_external_id_updates_that_contact(self):
        self.load(GOOD)
        jana = self.contact("P1")
        report = self.load(
            "organization,kind,external_id,email,employer,employed_to\n"
            "Acme,person,P1,jana@new.test,F1,2024-12-31\n"
        )
        self.assertEqual((report.created, report.updated, report.employments), (0, 1, 1))
        updated = self.contact("P1")
        self.assertEqual(updated.id, jana.id)
        # Columns the file does not have are left as stored.
        self.assertEqual(
            (updated.email, updated.name, updated.language),
            ("jana@new.test", "Jana Nováková", "cs"),
        )
        # The employment starting the same day (none given) is updated, not added.
        self.assertEqual(
            self.op(_employments),
            [(jana.id, self.contact("F1").id, True, None, datetime.date(2024, 12, 31))],
        )

    def test_an_empty_cell_clears_and_names_follow_first_and_last(self):
        self.load(GOOD)
        self.load(
            "organization,kind,external_id,first_name,last_name,email,language\n"
            "Acme,person,P1,Jana,Dvořáková,,\n"
        )
        jana = self.contact("P1")
        self.assertEqual((jana.name, jana.email, jana.language), ("Jana Dvořáková", "", ""))

    def test_employers_stored_before_and_employment_details(self):
        self.load(GOOD)
        report = self.load(
            "organization,kind,external_id,last_name,employer,employer_primary,"
            "employed_from,employed_to\n"
            "Acme,person,P3,Král,F1,no,2020-01-01,2021-06-30\n"
            "Acme,person,,Bez Id,F1,YES,,\n"
        )
        self.assertEqual((report.created, report.employments), (2, 2))
        firm = self.contact("F1")
        rows = self.op(_employments)[1:]
        self.assertEqual(
            [row[1:] for row in rows],
            [
                (firm.id, False, datetime.date(2020, 1, 1), datetime.date(2021, 6, 30)),
                (firm.id, True, None, None),
            ],
        )
        # A row without external_id is added each time.
        again = self.load("organization,kind,last_name\nAcme,person,Bez Id\n")
        self.assertEqual(again.created, 1)

    def test_an_employer_later_in_the_file_and_quoted_fields(self):
        report = self.load(
            "Organization, KIND ,external_id,last_name,name,employer\n"
            'Acme,person,P1,"Novák, Jr.",,F9\n'
            'Acme,company,F9,,"Firm\nwith two lines",\n'
        )
        self.assertEqual((report.created, report.employments, report.problems), (2, 1, ()))
        self.assertEqual(self.contact("F9").name, "Firm\nwith two lines")
        self.assertEqual(self.contact("P1").name, "Novák, Jr.")

    def test_a_persons_several_jobs_in_one_file(self):
        jobs = (
            "organization,kind,external_id,name,email,employer,employer_primary,"
            "employed_from,employed_to\n"
            "Acme,company,F1,Firm,,,,,\n"
            "Acme,company,F2,Beta,,,,,\n"
            "Acme,person,P1,Jana,jana@firm.test,F1,,2020-01-01,2022-12-31\n"
            "Acme,person,P1,,,F2,yes,2023-01-01,\n"
            "Acme,person,P1,Jana,JANA@firm.test,F1,no,2024-01-01,\n"
            "Acme,person,P2,Petr,,F2,,,\n"
        )
        report = self.load(jobs)
        self.assertEqual((report.created, report.employments, report.problems), (4, 4, ()))
        firm, beta, jana = self.contact("F1"), self.contact("F2"), self.contact("P1")
        self.assertEqual(
            [row for row in self.op(_employments) if row[0] == jana.id],
            [
                # The person's first row is primary unless it says; the further ones not.
                (jana.id, firm.id, True, datetime.date(2020, 1, 1), datetime.date(2022, 12, 31)),
                (jana.id, beta.id, True, datetime.date(2023, 1, 1), None),
                (jana.id, firm.id, False, datetime.date(2024, 1, 1), None),
            ],
        )
        self.assertEqual(jana.email, "jana@firm.test")
        again = self.load(jobs)
        self.assertEqual((again.created, again.unchanged, again.employments), (0, 4, 0))
        # A further row ending a job updates that employment.
        fired = self.load(
            "organization,kind,external_id,employer,employed_from,employed_to\n"
            "Acme,person,P1,F2,2023-01-01,2024-06-30\n"
        )
        self.assertEqual((fired.updated, fired.employments), (0, 1))
        self.assertIn(
            (jana.id, beta.id, True, datetime.date(2023, 1, 1), datetime.date(2024, 6, 30)),
            self.op(_employments),
        )

    def test_a_persons_further_rows_are_checked(self):
        found = self.problems(
            "organization,kind,external_id,name,email,employer,employer_primary,employed_from\n"
            "Acme,company,F1,Firm,,,,\n"
            "Acme,company,F1,Firm,,,,\n"
            "Acme,person,P1,Jana,jana@firm.test,F1,,\n"
            "Acme,person,P1,Janet,,F1,no,2024-01-01\n"
            "Acme,person,P1,,jana@other.test,F1,,\n"
            "Acme,person,P1,,,,,\n"
            "Acme,company,P1,,,,,\n"
            "Acme,person,P2,Petr,,F1,,2020-01-01\n"
            "Acme,person,P2,,,F1,yes,2021-01-01\n"
        )
        self.assertEqual(
            found,
            [
                (3, "external_id", "F1 is on line 2 already"),
                (
                    5,
                    "name",
                    "differs from line 4 of P1; give a person's details on their first row "
                    "(the further rows add employers)",
                ),
                (
                    6,
                    "email",
                    "differs from line 4 of P1; give a person's details on their first row "
                    "(the further rows add employers)",
                ),
                (6, "employer", "the same employment as line 4 (employer F1, employed_from empty)"),
                (
                    7,
                    "external_id",
                    "P1 is on line 4 already; a person's further rows each add an employer: "
                    "give the employer",
                ),
                (8, "external_id", "P1 is on line 4 already"),
                (
                    10,
                    "employer_primary",
                    "line 9 makes F1 primary at the same time; keep one primary (write no on "
                    "the other)",
                ),
            ],
        )

    def test_many_rows_in_chunks(self):
        lines = [HEADER, "Acme,company,F,Firm,,,,,"]
        lines += [f"Acme,person,P{n},,First,Last {n},p{n}@firm.test,de,F" for n in range(1200)]
        report = self.load("\n".join(lines))
        self.assertEqual((report.created, report.employments), (1201, 1200))
        self.assertEqual(self.op(c.count_contacts, "Acme"), 1201)
        again = self.load("\n".join(lines))
        self.assertEqual((again.created, again.updated, again.unchanged), (0, 0, 1201))
        # Ids given by the import do not collide with contacts added afterwards.
        later = self.op(c.add_contact, "Acme", "person", name="Later")
        self.assertEqual(later.name, "Later")

    # -- bad files: nothing is written, every problem listed ---------------------------

    def test_one_bad_row_writes_nothing_and_every_bad_row_is_listed(self):
        found = self.problems(
            "\n".join(
                [
                    HEADER + ",employer_primary,employed_from,employed_to",
                    "Acme,company,F1,Firm,,,,,,,,",
                    "Acme,person,P1,,Jana,,jana@,czech,F1,maybe,2024-02-30,",
                    "Nope,robot,P2,,,,,,,,,",
                    "Acme,company,F2,,Ann,,,,F1,,,",
                    "Acme,person,P3,,,Novák,,,,yes,,",
                    "Acme,person,P4,,,Novák,,,F1,,2024-05-01,2024-04-01",
                    "Acme,person,P5,,,Novák,,,P4,,,",
                    "Acme,person,P6,,,Novák,,,F404,,,",
                    "Acme,person,P1,,,Again,,,,,,",
                    "Acme,person,P7,,,Short",
                ]
            )
        )
        self.assertEqual(
            found,
            [
                (3, "last_name", "a person needs last_name or name"),
                (3, "email", "'jana@' is not an e-mail address; give one such as name@example.com"),
                (
                    3,
                    "language",
                    "'czech' is not a language code; give two letters (ISO 639-1), like cs",
                ),
                (3, "employer_primary", "'maybe': write yes or no"),
                (3, "employed_from", "'2024-02-30' is not a date; write YYYY-MM-DD"),
                (4, "organization", "no organization 'Nope'; add it first: organization add"),
                (4, "kind", "'robot' is not a kind; write person or company"),
                (5, "first_name", "persons only; a company has a name"),
                (5, "employer", "persons only; a company has a name"),
                (5, "name", "a company needs a name"),
                (6, "employer_primary", "give the employer as well"),
                (7, "employed_to", "2024-04-01 is before employed_from 2024-05-01"),
                (8, "employer", "P4 is a person, not a company"),
                (9, "employer", "no company with external_id F404 in this file or stored"),
                (
                    10,
                    "external_id",
                    "P1 is on line 3 already; a person's further rows each add an employer: "
                    "give the employer",
                ),
                (11, "", "has 6 fields but the header names 12 columns"),
            ],
        )

    def test_every_problem_of_every_row_in_one_pass(self):
        # A row with a problem is still checked for its employer; a person's further row
        # (the same external_id) is checked against the first; rows are checked below a
        # header with an unknown column, a line that is not CSV, and a line that is not
        # UTF-8.
        data = "\n".join(
            [
                "organization,kind,external_id,last_name,email,employer,colour,employed_from",
                "Acme,company,F1,,,,red,",
                "Acme,person,P1,Novák,jana@,F404,red,2024-13-01",
                "Acme,person,P1,,bad@,F1,red,",
                'Acme,person,P2,"Dvořák"x,,,red,',
                "Acme,person,P3,Svoboda,petr@,P1,red,",
            ]
        ).encode("utf-8")
        data += b"\nAcme,person,P4,Caf\xe9,,,red,\nAcme,robot,P5,Kos,,,red,\n"
        report = self.op(import_contacts, data)
        self.assertEqual(self.op(_stored), [])
        self.assertEqual(
            [(p.line, p.column, p.why) for p in report.problems],
            [
                (
                    1,
                    "colour",
                    "unknown column; the columns are organization, kind, external_id, name, "
                    "first_name, last_name, email, language, employer, employer_primary, "
                    "employed_from, employed_to",
                ),
                (2, "name", "a company needs a name"),
                (3, "email", "'jana@' is not an e-mail address; give one such as name@example.com"),
                (3, "employed_from", "'2024-13-01' is not a date; write YYYY-MM-DD"),
                (3, "employer", "no company with external_id F404 in this file or stored"),
                (
                    4,
                    "email",
                    "differs from line 3 of P1; give a person's details on their first row "
                    "(the further rows add employers)",
                ),
                (5, "", "is not valid CSV: ',' expected after '\"'"),
                (6, "email", "'petr@' is not an e-mail address; give one such as name@example.com"),
                (6, "employer", "P1 is a person, not a company"),
                (7, "", "is not UTF-8; save the file as UTF-8 and import it again"),
                (8, "kind", "'robot' is not a kind; write person or company"),
            ],
        )

    def test_header_problems(self):
        self.assertEqual(
            self.problems("organization,kind,colour,Shoe size\nAcme,person,red,44\n"),
            [
                (
                    1,
                    "colour, shoe size",
                    "unknown columns; the columns are organization, kind, external_id, name, "
                    "first_name, last_name, email, language, employer, employer_primary, "
                    "employed_from, employed_to",
                ),
                # The rows are still checked on the columns that are known.
                (2, "last_name", "a person needs last_name or name"),
            ],
        )
        self.assertEqual(
            self.problems("name,name\nX,Y\n"),
            [
                (1, "name", "named twice in the header"),
                (1, "organization, kind", "required column missing from the header"),
            ],
        )
        self.assertEqual(
            self.problems(""), [(1, "", "the file is empty; the first line names the columns")]
        )
        self.assertEqual(
            self.problems("organization,kind,name,\nAcme,company,Firm,\n"),
            [(1, "", "column 4 has no name; name it or remove it (a comma too many?)")],
        )

    def test_encoding_and_csv_problems(self):
        self.assertEqual(
            self.op(import_contacts, b"organization,kind,name\nAcme,company,Caf\xe9\n").problems,
            (ImportProblem(2, "", "is not UTF-8; save the file as UTF-8 and import it again"),),
        )
        [problem] = self.problems('organization,kind,name\nAcme,company,"Firm\n')
        self.assertEqual(problem[:2], (2, ""))
        self.assertIn("is not valid CSV", problem[2])

    def test_a_stored_contacts_kind_does_not_change(self):
        self.load(GOOD)
        contacts = self.op(_stored)
        report = self.load("organization,kind,external_id,name\nAcme,person,F1,Firm\n")
        self.assertEqual([(p.line, p.column) for p in report.problems], [(2, "kind")])
        self.assertIn("is a company; a contact's kind cannot change", report.problems[0].why)
        self.assertEqual(self.op(_stored), contacts)


class SqliteImportTests(SqliteStoreMixin, ImportContract, unittest.TestCase):
    pass


class PostgresImportTests(PostgresStoreMixin, ImportContract, unittest.TestCase):
    pass
