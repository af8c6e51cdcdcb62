"""The CRM's admin commands (organization, contacts, folder, project, group), run
in-process on SQLite and on PostgreSQL."""

from __future__ import annotations

import os

from twisted.trial import unittest

from atollon_mail.crm.records import GroupPreview
from atollon_mail.passwords import hash_password
from atollon_mail.store import contacts, groups
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin
from tests.test_cli import ConfiguredCli

CONTACTS_CSV = (
    "organization,kind,external_id,name,first_name,last_name,email,language,employer\n"
    "Acme,company,F1,Firm,,,Office@Firm.test,cs,\n"
    "Acme,person,P1,,Jana,Nováková,jana@firm.test,cs,F1\n"
    "Acme,person,P2,,Petr,Svoboda,,de,F1\n"
)


class CrmCommandTests(ConfiguredCli):
    def setUp(self):
        super().setUp()
        self.ok("db", "migrate")
        self.ok("organization", "add", "Acme")

    def write(self, name: str, content: str | bytes) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "wb") as file:
            file.write(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    def imported(self) -> None:
        """Firm (1, company), Jana (2) and Petr (3) employed there; folder 1 of Firm."""
        self.ok("contacts", "import", self.write("contacts.csv", CONTACTS_CSV))
        self.ok("folder", "add", "Firm main", "--organization", "Acme", "--company", "1")

    # -- organizations -----------------------------------------------------------------

    def test_organization_add_and_list(self):
        self.ok("organization", "add", "Beta Ltd")
        self.assertEqual(
            self.ok("organization", "list").lines,
            ["ID  NAME", " 1  Acme", " 2  Beta Ltd"],
        )
        self.assertRefused(
            self.cli("organization", "add", "Acme"), "organization Acme exists already"
        )

    # -- contacts ----------------------------------------------------------------------

    def test_contacts_add_list_and_show(self):
        self.assertEqual(
            self.ok(
                "contacts", "add", "--organization", "Acme", "--kind", "company", "--name", "Firm"
            ).lines,
            ["added company Firm (id 1, Acme)"],
        )
        self.ok(
            "contacts",
            "add",
            "--organization",
            "1",
            "--kind",
            "person",
            "--first-name",
            "Jana",
            "--last-name",
            "Nováková",
            "--email",
            "Jana@Firm.TEST",
            "--language",
            "cs",
            "--external-id",
            "P1",
        )
        self.assertEqual(
            self.ok("contacts", "list").lines,
            [
                "ID  ORGANIZATION  KIND     NAME           EMAIL           LANGUAGE  EXTERNAL ID",
                " 1  Acme          company  Firm           -               (none)    -",
                " 2  Acme          person   Jana Nováková  jana@firm.test  cs        P1",
            ],
        )
        self.assertEqual(len(self.ok("contacts", "list", "--language", "none").lines), 2)
        self.assertEqual(
            self.ok("contacts", "list", "--limit", "1").lines[1:],
            [
                " 1  Acme          company  Firm  -      (none)    -",
                "1-1 of 2; the next: --offset 1",
            ],
        )
        self.store_op(contacts.add_employment, 2, 1, is_primary=True)
        self.assertEqual(
            self.ok("contacts", "show", "2").lines,
            [
                "id:           2",
                "organization: Acme (1)",
                "kind:         person",
                "name:         Jana Nováková",
                "first name:   Jana",
                "last name:    Nováková",
                "email:        jana@firm.test",
                "language:     cs",
                "external id:  P1",
                "employments:",
                "  at Firm (1), primary, from - to -",
                "default folders: (none)",
            ],
        )
        self.assertIn(
            "  employs Jana Nováková (2), primary, from - to -",
            self.ok("contacts", "show", "1").lines,
        )
        self.assertRefused(
            self.cli("contacts", "show", "99"),
            'no contact matches "99" (by id, external id, e-mail or name); see: contacts list '
            "--search TEXT",
        )
        self.assertRefused(
            self.cli("contacts", "add", "--organization", "Acme", "--kind", "company"),
            "a company needs a name",
        )

    def test_contacts_import_twice(self):
        path = self.write("contacts.csv", b"\xef\xbb\xbf" + CONTACTS_CSV.encode("utf-8"))
        self.assertEqual(
            self.ok("contacts", "import", path).lines,
            ["3 contacts created, 0 updated, 0 unchanged, 2 employments added or changed"],
        )
        self.assertEqual(
            self.ok("contacts", "import", path).lines,
            ["0 contacts created, 0 updated, 3 unchanged, 0 employments added or changed"],
        )
        self.assertEqual(self.store_op(contacts.count_contacts), 3)

    def test_contacts_import_from_standard_input(self):
        outcome = self.ok("contacts", "import", "-", stdin=CONTACTS_CSV.encode("utf-8"))
        self.assertEqual(outcome.lines[0][:19], "3 contacts created,")

    def test_a_bad_file_imports_nothing_and_lists_every_problem(self):
        path = self.write(
            "bad.csv",
            "organization,kind,name,email\nAcme,company,,x@\nAcme,robot,X,\nAcme,company,Ok,\n",
        )
        outcome = self.cli("contacts", "import", path)
        self.assertEqual((outcome.code, outcome.out), (1, b""))
        self.assertEqual(
            outcome.err.splitlines(),
            [
                "line 2, column name: a company needs a name",
                "line 2, column email: 'x@' is not an e-mail address; give one such as "
                "name@example.com",
                "line 3, column kind: 'robot' is not a kind; write person or company",
                f"atollon-mail: nothing was imported: 3 problems in {path}; correct them and "
                "import the file again",
            ],
        )
        self.assertEqual(self.store_op(contacts.count_contacts), 0)

    def test_import_refusals(self):
        self.assertRefused(
            self.cli("contacts", "import", os.path.join(self.mktemp(), "none.csv")),
            "cannot read",
        )
        outcome = self.cli(
            "contacts", "import", self.write("odd.csv", "organization,kind,colour\n")
        )
        self.assertEqual(outcome.code, 1)
        self.assertIn("line 1, column colour: unknown column;", outcome.err)

    def test_import_help_names_the_columns(self):
        help_text = self.ok("contacts", "import", "--help").text
        for column in ("organization", "employer_primary", "employed_from", "external_id"):
            self.assertIn(column, help_text)

    # -- folders, projects, default folders --------------------------------------------

    def test_folder_and_project_add_and_list(self):
        self.imported()
        self.assertEqual(
            self.ok("project", "add", "Launch", "--organization", "Acme").lines,
            ["added project Launch (id 2) in Acme"],
        )
        self.assertEqual(
            self.ok("folder", "list").lines,
            [
                "ID  KIND     NAME       ORGANIZATION  COMPANY   COMPANY DEFAULT",
                " 1  folder   Firm main  Acme          Firm (1)  -",
                " 2  project  Launch     Acme          -         -",
            ],
        )
        self.assertEqual(len(self.ok("folder", "list", "--company", "1").lines), 2)
        self.assertRefused(
            self.cli("folder", "add", "X", "--organization", "Acme", "--company", "2"),
            "is a person; folders belong to companies",
        )
        self.assertUsageError(self.cli("folder", "add", "X", "--organization", "Acme"))

    def test_default_folder_by_hand_and_cleared(self):
        self.imported()
        self.ok("project", "add", "Launch", "--organization", "Acme")
        self.assertEqual(
            self.ok(
                "contacts",
                "default-folder",
                "2",
                "--organization",
                "Acme",
                "--folder",
                "1",
                "--project",
                "2",
                "--activity",
                "calls",
            ).lines,
            [
                "contact 2: default in Acme is folder Firm main (1), project Launch (2), "
                "activity calls [manual]"
            ],
        )
        self.assertIn(
            "  Acme: folder Firm main (1), project Launch (2), activity calls [manual]",
            self.ok("contacts", "show", "2").lines,
        )
        self.assertEqual(
            self.ok("contacts", "default-folder", "2", "--organization", "Acme", "--clear").lines,
            ["Jana Nováková (2): default folder in Acme cleared"],
        )
        self.assertRefused(
            self.cli("contacts", "default-folder", "2", "--organization", "Acme"),
            "give --folder FOLDER, --project PROJECT (or both), or --clear",
        )
        self.assertRefused(
            self.cli("contacts", "default-folder", "2", "--organization", "Acme", "--folder", "2"),
            "is a project, not a folder",
        )

    def test_setup_default_folders(self):
        self.imported()
        self.ok("contacts", "add", "--organization", "Acme", "--kind", "person", "--name", "Ota")
        dry = self.ok("contacts", "setup-default-folders", "--dry-run", "--today", "2024-06-15")
        self.assertEqual(
            dry.lines,
            [
                "Acme (employments as of 2024-06-15): 2 would be set, 0 would be changed, "
                "0 unchanged, 0 kept manual, 1 case to decide",
                "  would set 2 Jana Nováková: folder Firm main (1), was no default folder",
                "  would set 3 Petr Svoboda: folder Firm main (1), was no default folder",
                "  no current primary employer: 1 person; give them one: employment add "
                "PERSON COMPANY",
                "    4 Ota",
                "dry run: nothing was changed",
            ],
        )
        self.assertEqual(self.store_op(contacts.contact_detail, 2).default_folders, ())
        self.ok("contacts", "default-folder", "3", "--organization", "Acme", "--folder", "1")
        first = self.ok(
            "contacts", "setup-default-folders", "--organization", "Acme", "--today", "2024-06-15"
        )
        self.assertEqual(
            first.lines,
            [
                "Acme (employments as of 2024-06-15): 1 set, 0 changed, 0 unchanged, "
                "1 kept manual, 1 case to decide",
                "  no current primary employer: 1 person; give them one: employment add "
                "PERSON COMPANY",
                "    4 Ota",
            ],
        )
        again = self.ok("contacts", "setup-default-folders", "--organization", "1")
        self.assertIn("0 set, 0 changed, 1 unchanged, 1 kept manual", again.lines[0])
        self.assertRefused(
            self.cli("contacts", "setup-default-folders", "--organization", "Nope"),
            "no organization Nope",
        )
        self.assertUsageError(self.cli("contacts", "setup-default-folders", "--today", "June"))

    def test_setup_help_states_the_rule(self):
        help_text = " ".join(self.ok("contacts", "setup-default-folders", "--help").text.split())
        self.assertIn("Several current primary employers: listed as ambiguous", help_text)
        self.assertIn("the company's own default folder in the organization", help_text)
        self.assertIn('source "manual"', help_text)

    # -- groups ------------------------------------------------------------------------

    def test_group_add_dynamic_with_filter_options(self):
        self.imported()
        outcome = self.ok(
            "group",
            "add",
            "Czech staff",
            "--organization",
            "Acme",
            "--language",
            "cs",
            "--language",
            "none",
            "--kind",
            "person",
            "--has-email",
            "yes",
            "--company",
            "1",
            "--employment-current",
            "yes",
            "--primary-only",
        )
        self.assertEqual(
            outcome.lines,
            [
                "added dynamic group Czech staff (id 1): persons of Acme; language cs or "
                "(none); with an e-mail address; Firm (1) and persons with a current primary "
                "employment there"
            ],
        )
        group = self.store_op(groups.get_group, "Czech staff")
        self.assertEqual(
            (group.filter.languages, group.filter.company_ids, group.filter.has_email),
            (("cs", ""), (1,), True),
        )
        self.assertEqual(self.store_op(groups.group_preview, group.id).total, 1)
        self.ok("group", "add", "Everyone at Acme", "--organization", "Acme")
        self.assertEqual(self.store_op(groups.group_preview, "Everyone at Acme").total, 3)

    def test_group_add_refusals(self):
        self.assertRefused(
            self.cli("group", "add", "Nothing"), "give --static for a group of listed contacts"
        )
        self.assertRefused(
            self.cli("group", "add", "Mixed", "--static", "--language", "cs"),
            "a static group has no filter",
        )
        self.assertRefused(
            self.cli("group", "add", "Mixed", "--primary-only"),
            "primary only applies to employments",
        )
        self.assertUsageError(self.cli("group", "add", "X", "--has-email", "maybe"))
        self.assertUsageError(self.cli("group", "add", "X", "--kind", "robot"))

    def test_static_group_members_list_show_preview(self):
        self.imported()
        self.assertEqual(
            self.ok("group", "add", "Listed", "--organization", "Acme", "--static").lines,
            ["added static group Listed (id 1): listed contacts of Acme"],
        )
        self.assertEqual(
            self.ok("group", "members", "Listed", "--add", "1", "3", "--remove", "2").lines,
            ["group Listed: 2 added, 0 removed (1 not members)"],
        )
        self.assertEqual(
            self.ok("group", "members", "1", "--add", "3", "--remove", "1").lines,
            ["group Listed: 0 added, 1 removed (1 already members)"],
        )
        self.ok("group", "members", "Listed", "--add", "1")
        self.ok("group", "add", "German", "--language", "de")
        self.assertEqual(
            self.ok("group", "list").lines,
            [
                "ID  NAME    KIND     ORGANIZATION  MEMBERS  WHO",
                " 2  German  dynamic  -                   1  persons and companies; language de",
                " 1  Listed  static   Acme                2  listed contacts of Acme",
            ],
        )
        self.assertEqual(
            self.ok("group", "show", "Listed").lines,
            [
                "group:        Listed (id 1)",
                "kind:         static",
                "organization: Acme",
                "who:          listed contacts of Acme",
                "members:      2",
                "the members:",
                "ID  KIND     NAME          EMAIL             LANGUAGE",
                " 1  company  Firm          office@firm.test  cs",
                " 3  person   Petr Svoboda  -                 de",
            ],
        )
        self.assertEqual(
            self.ok("group", "preview", "Listed").lines,
            [
                "group:              Listed (id 1)",
                "kind:               static",
                "organization:       Acme",
                "who:                listed contacts of Acme",
                "members:            2",
                "with an address:    1",
                "without an address: 1",
                "LANGUAGE  MEMBERS",
                "cs              1",
                "de              1",
            ],
        )
        self.assertEqual(
            self.store_op(groups.group_preview, "Listed"),
            GroupPreview(
                total=2, by_language={"cs": 1, "de": 1}, without_address=1, with_address=1
            ),
        )

    def test_group_members_refusals(self):
        self.imported()
        self.ok("group", "add", "German", "--language", "de")
        self.ok("group", "add", "Listed", "--static")
        self.assertRefused(
            self.cli("group", "members", "German", "--add", "1"), "group German is dynamic"
        )
        self.assertRefused(
            self.cli("group", "members", "Listed", "--add", "1", "77"),
            'no contact matches "77" (by id, external id, e-mail or name)',
        )
        self.assertRefused(
            self.cli("group", "members", "Listed"), "give --add CONTACT... or --remove CONTACT..."
        )
        self.assertRefused(
            self.cli("group", "show", "Nope"), 'no distribution group matches "Nope"'
        )
        self.assertRefused(
            self.cli("group", "members", "Listed", "--add", "one"), 'no contact matches "one"'
        )

    def test_group_preview_counts_languages_without_one_last(self):
        self.imported()
        self.ok("contacts", "add", "--organization", "Acme", "--kind", "person", "--name", "Ota")
        self.ok("group", "add", "All", "--organization", "Acme")
        self.assertEqual(
            self.ok("group", "preview", "All").lines[4:],
            [
                "members:            4",
                "with an address:    2",
                "without an address: 2",
                "LANGUAGE  MEMBERS",
                "cs              2",
                "de              1",
                "(none)          1",
            ],
        )

    def test_group_delete_refused_while_a_campaign_uses_it(self):
        self.ok("group", "add", "Listed", "--static")
        self.ok("group", "add", "Spare", "--static")
        builders.hosted_mailbox(self.store_op, "news@acme.test", "joe", hash_password("x"))
        builders.campaign(self.store_op, 1, "news@acme.test")
        self.assertRefused(
            self.cli("group", "delete", "Listed"),
            "group Listed is used by campaign Spring news (1); delete those campaigns",
        )
        self.assertEqual(self.ok("group", "delete", "Spare").lines, ["deleted group Spare (id 2)"])
        self.assertEqual([g.name for g in self.store_op(groups.list_groups)], ["Listed"])

    def test_setup_default_folders_for_every_organization(self):
        self.imported()
        self.ok("organization", "add", "Empty")
        outcome = self.ok("contacts", "setup-default-folders", "--today", "2024-06-15")
        self.assertEqual(
            [line for line in outcome.lines if not line.startswith("  ")],
            [
                "Acme (employments as of 2024-06-15): 2 set, 0 changed, 0 unchanged, "
                "0 kept manual, 0 cases to decide",
                "Empty (employments as of 2024-06-15): 0 set, 0 changed, 0 unchanged, "
                "0 kept manual, 0 cases to decide",
            ],
        )
        [default] = self.store_op(contacts.contact_detail, 2).default_folders
        self.assertEqual((default.folder_name, default.source), ("Firm main", "employer"))


class SqliteCrmCommandTests(SqliteStoreMixin, CrmCommandTests, unittest.TestCase):
    pass


class PostgresCrmCommandTests(PostgresStoreMixin, CrmCommandTests, unittest.TestCase):
    pass
