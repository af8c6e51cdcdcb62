"""The CRM's commands used as a CRM user would: contacts, companies, folders, projects
and groups named by name, e-mail or external id (a number is still the id); employments;
the default-folder cases grouped by reason; a folder's messages and message types. Run
in-process on SQLite and on PostgreSQL."""

from __future__ import annotations

import os

from twisted.trial import unittest

from atollon_mail.store import contacts, filing
from atollon_mail.store.records import IncomingMessage, Recipient
from tests.support import PostgresStoreMixin, SqliteStoreMixin
from tests.test_cli import ConfiguredCli

# Firm (1) and Beta (2); Jana Nováková (3) and Petr Svoboda (4) work at Firm, Jana
# Dvořáková (5) at Beta.
PEOPLE_CSV = (
    "organization,kind,external_id,name,first_name,last_name,email,language,employer\n"
    "Acme,company,F1,Firm,,,office@firm.test,cs,\n"
    "Acme,company,F2,Beta,,,,,\n"
    "Acme,person,p1,,Jana,Nováková,jana@firm.test,cs,F1\n"
    "Acme,person,p2,,Petr,Svoboda,,de,F1\n"
    "Acme,person,p3,,Jana,Dvořáková,jd@beta.test,,F2\n"
)


def _deliver(address: str, subject: str, sender: str) -> int:
    local, domain = address.split("@")
    recipient = filing.resolve_recipient(local, domain)
    assert isinstance(recipient, Recipient), recipient
    raw = f"From: {sender}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    [stored] = filing.store_messages(
        [
            IncomingMessage(
                envelope_sender=sender,
                recipients=(recipient,),
                raw=raw,
                subject=subject,
                from_header=sender,
            )
        ]
    )
    assert not isinstance(stored, Exception), stored
    return stored.id


class CrmByNameTests(ConfiguredCli):
    def setUp(self):
        super().setUp()
        self.ok("db", "migrate")
        self.ok("organization", "add", "Acme")
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "people.csv")
        with open(path, "w", encoding="utf-8") as csv_file:
            csv_file.write(PEOPLE_CSV)
        self.ok("contacts", "import", path)

    # -- contacts ----------------------------------------------------------------------

    def test_contacts_show_by_external_id_email_or_name(self):
        self.assertEqual(
            self.ok("contacts", "show", "p1").lines[:4],
            [
                "id:           3",
                "organization: Acme (1)",
                "kind:         person",
                "name:         Jana Nováková",
            ],
        )
        self.assertEqual(self.ok("contacts", "show", "JD@Beta.test").lines[0], "id:           5")
        self.assertEqual(self.ok("contacts", "show", "svoboda").lines[0], "id:           4")
        self.assertEqual(self.ok("contacts", "show", "NOVÁKOVÁ").lines[0], "id:           3")
        self.assertEqual(self.ok("contacts", "show", "4").lines[0], "id:           4")
        self.assertEqual(self.ok("contacts", "show", "f2").lines[3], "name:         Beta")
        self.assertRefused(
            self.cli("contacts", "show", "jana"),
            'atollon-mail: 2 contacts match "jana": 3 Jana Nováková <jana@firm.test> at Firm; '
            "5 Jana Dvořáková <jd@beta.test> at Beta; give the id, the e-mail or the external "
            "id; see: contacts list --search TEXT\n",
        )
        self.assertRefused(
            self.cli("contacts", "show", "Zoe"),
            'atollon-mail: no contact matches "Zoe" (by id, external id, e-mail or name); '
            "see: contacts list --search TEXT\n",
        )

    def test_contacts_list_search(self):
        self.assertEqual(
            self.ok("contacts", "list", "--search", "NOVÁK").lines,
            [
                "ID  ORGANIZATION  KIND    NAME           EMAIL           LANGUAGE  EXTERNAL ID",
                " 3  Acme          person  Jana Nováková  jana@firm.test  cs        p1",
            ],
        )
        # A company's name finds it and those who work there now.
        firm = self.ok("contacts", "list", "--search", "firm", "--organization", "Acme")
        self.assertEqual([line.split()[0] for line in firm.lines[1:]], ["1", "3", "4"])
        by_address = self.ok("contacts", "list", "--search", "@beta.")
        self.assertEqual([line.split()[0] for line in by_address.lines[1:]], ["5"])
        by_id = self.ok("contacts", "list", "--search", "P3")
        self.assertEqual([line.split()[0] for line in by_id.lines[1:]], ["5"])
        self.assertEqual(
            self.ok("contacts", "list", "--search", "jana", "--limit", "1").lines[1:],
            [
                " 3  Acme          person  Jana Nováková  jana@firm.test  cs        p1",
                "1-1 of 2; the next: --offset 1",
            ],
        )
        self.assertEqual(
            self.ok("contacts", "list", "--search", "zzz").lines, ['no contacts matching "zzz"']
        )

    # -- folders, projects, default folders --------------------------------------------

    def test_folders_by_company_name_and_the_default_folder(self):
        self.assertEqual(
            self.ok(
                "folder", "add", "Main", "--organization", "Acme", "--company", "firm", "--default"
            ).lines,
            ["added folder Main (id 1) of Firm (1) in Acme, Firm's default folder"],
        )
        self.ok("folder", "add", "Sales", "--organization", "Acme", "--company", "F1")
        self.ok("folder", "add", "Main", "--organization", "Acme", "--company", "office@firm.test")
        self.ok("folder", "add", "Beta main", "--organization", "Acme", "--company", "beta")
        self.ok("project", "add", "Launch", "--organization", "Acme")
        self.assertEqual(
            self.ok("folder", "list", "--company", "Firm").lines,
            [
                "ID  KIND    NAME   ORGANIZATION  COMPANY   COMPANY DEFAULT",
                " 1  folder  Main   Acme          Firm (1)  yes",
                " 2  folder  Sales  Acme          Firm (1)  -",
                " 3  folder  Main   Acme          Firm (1)  -",
            ],
        )
        self.assertEqual(
            self.ok("folder", "default", "sales").lines,
            [
                "Firm (1): default in Acme is folder Sales (2) [manual]",
                "its employees get it at the next: atollon-mail contacts setup-default-folders "
                "--organization 1",
            ],
        )
        self.assertRefused(
            self.cli("folder", "default", "main"),
            'atollon-mail: 2 folders match "main": 1 folder Main of Firm (Acme); 3 folder Main '
            "of Firm (Acme); give the id or the whole name; see: folder list\n",
        )
        self.assertRefused(self.cli("folder", "default", "Launch"), 'no folder matches "Launch"')
        self.assertRefused(
            self.cli("folder", "add", "X", "--organization", "Acme", "--company", "Jana"),
            'no company matches "Jana" (by id, external id, e-mail or name in Acme)',
        )
        self.assertEqual(
            self.ok(
                "contacts",
                "default-folder",
                "Petr Svoboda",
                "--organization",
                "Acme",
                "--folder",
                "beta main",
                "--project",
                "launch",
            ).lines,
            ["contact 4: default in Acme is folder Beta main (4), project Launch (5) [manual]"],
        )

    def test_setup_default_folders_groups_the_cases_by_reason(self):
        self.ok("folder", "add", "Firm main", "--organization", "Acme", "--company", "Firm")
        self.ok("folder", "add", "Firm sales", "--organization", "Acme", "--company", "Firm")
        self.ok("contacts", "add", "--organization", "Acme", "--kind", "person", "--name", "Ota")
        self.ok("contacts", "add", "--organization", "Acme", "--kind", "person", "--name", "Iva")
        self.ok("employment", "add", "Iva", "Firm", "--primary", "yes")
        self.ok("employment", "add", "Iva", "Beta", "--primary", "no")
        self.ok("employment", "add", "Ota", "Firm", "--primary", "no")
        self.store_op(contacts.make_primary, "Iva", "Beta")
        self.store_op(contacts.add_employment, "Iva", "Firm", is_primary=True)
        outcome = self.ok("contacts", "setup-default-folders", "--today", "2024-06-15")
        self.assertEqual(
            outcome.lines,
            [
                "Acme (employments as of 2024-06-15): 0 set, 0 changed, 0 unchanged, 0 kept "
                "manual, 5 cases to decide",
                "  no current primary employer: 1 person; give them one: employment add PERSON "
                "COMPANY",
                "    6 Ota",
                "  several current primary employers: 1 person; keep one primary: employment "
                "primary PERSON COMPANY",
                "    7 Iva: 2 current primary employers: Firm (1), Beta (2); keep one primary",
                "  the employer has no folder: 1 person",
                "    Beta (2): 1 person; add one: folder add NAME --organization Acme --company 2 "
                "--default",
                "      5 Jana Dvořáková",
                "  the employer has several folders and no default folder: 2 persons",
                "    Firm (1), folders Firm main (1), Firm sales (2): 2 persons; choose one: "
                "folder default FOLDER",
                "      3 Jana Nováková",
                "      4 Petr Svoboda",
            ],
        )
        self.ok("folder", "default", "firm sales")
        self.ok("folder", "add", "Beta", "--organization", "Acme", "--company", "Beta", "--default")
        again = self.ok("contacts", "setup-default-folders", "--today", "2024-06-15")
        self.assertEqual(
            again.lines[0],
            "Acme (employments as of 2024-06-15): 3 set, 0 changed, 0 unchanged, 0 kept manual, "
            "2 cases to decide",
        )

    # -- groups ------------------------------------------------------------------------

    def test_groups_take_companies_and_members_by_name(self):
        self.assertEqual(
            self.ok(
                "group", "add", "Firm people", "--organization", "Acme", "--company", "firm"
            ).lines,
            [
                "added dynamic group Firm people (id 1): persons and companies of Acme; Firm (1) "
                "and persons with an employment there"
            ],
        )
        self.ok("group", "add", "Listed", "--organization", "Acme", "--static")
        self.assertEqual(
            self.ok(
                "group", "members", "listed", "--add", "p1", "jd@beta.test", "Petr Svoboda"
            ).lines,
            ["group Listed: 3 added, 0 removed"],
        )
        self.assertEqual(
            self.ok("group", "members", "LIST", "--remove", "svoboda").lines,
            ["group Listed: 0 added, 1 removed"],
        )
        self.assertRefused(
            self.cli("group", "members", "Listed", "--remove", "Jana"),
            '2 contacts match "Jana"',
        )
        self.assertRefused(
            self.cli("group", "add", "Nobody", "--company", "Zoe"), 'no company matches "Zoe"'
        )
        self.ok("group", "add", "Listed again", "--static")
        # The whole name in any case is that group; a part of it names both.
        self.assertEqual(
            self.ok("group", "show", "listed ").lines[0], "group:        Listed (id 2)"
        )
        self.assertRefused(
            self.cli("group", "show", "list"),
            'atollon-mail: 2 distribution groups match "list": 2 Listed; 3 Listed again; give '
            "the id or the whole name; see: group list\n",
        )

    # -- employments -------------------------------------------------------------------

    def test_employments_add_primary_end_and_list(self):
        self.assertEqual(
            self.ok("employment", "add", "Petr Svoboda", "beta", "--from", "2024-01-01").lines,
            ["Petr Svoboda (4) works at Beta (2), from 2024-01-01, not primary"],
        )
        self.assertEqual(
            self.ok("employment", "primary", "p2", "Beta").lines,
            ["Petr Svoboda (4): Beta (2) is the primary employer; no longer primary: Firm (1)"],
        )
        self.assertRefused(
            self.cli("employment", "end", "p2", "--on", "2024-06-30"),
            '2 employments match "Petr Svoboda": at Firm (1) from - to -; at Beta (2) from '
            "2024-01-01 to -, primary; give the company, and --started DATE when it is the "
            "same company",
        )
        # The person got fired: the employment ends, the person stays.
        self.assertEqual(
            self.ok("employment", "end", "p2", "Beta", "--on", "2024-06-30").lines,
            [
                "the employment of Petr Svoboda (4) at Beta (2) ends on 2024-06-30; both stay "
                "contacts",
                "their default folder follows at the next: atollon-mail contacts "
                "setup-default-folders --dry-run",
            ],
        )
        listed = self.ok("employment", "list", "--person", "svoboda")
        self.assertEqual(
            listed.lines,
            [
                "ID  PERSON            COMPANY   PRIMARY  FROM        TO          NOW",
                " 2  Petr Svoboda (4)  Firm (1)  no       -           -           current",
                " 4  Petr Svoboda (4)  Beta (2)  yes      2024-01-01  2024-06-30  ended",
            ],
        )
        self.assertEqual(
            [line.split()[0] for line in self.ok("employment", "list", "--current", "no").lines],
            ["ID", "4"],
        )
        self.assertEqual(
            [line.split()[0] for line in self.ok("employment", "list", "--company", "F1").lines],
            ["ID", "1", "2"],
        )
        self.assertIn(
            "  at Beta (2), primary, from 2024-01-01 to 2024-06-30",
            self.ok("contacts", "show", "p2").lines,
        )
        self.assertRefused(
            self.cli("employment", "add", "Firm", "Beta"), 'no person matches "Firm"'
        )
        self.assertRefused(
            self.cli("employment", "end", "p2", "Beta", "--on", "2023-01-01"),
            "starts on 2024-01-01; give an end on or after it",
        )
        self.assertUsageError(self.cli("employment", "end", "p2", "--on", "June"))

    # -- a folder's messages and message types -----------------------------------------

    def filed_into_a_folder(self) -> list[int]:
        """Three messages to sales@acme.com, whose mail is filed into folder Sales (1)."""
        self.ok("folder", "add", "Sales", "--organization", "Acme", "--company", "Firm")
        self.ok("domain", "add", "acme.com")
        self.ok("user", "add", "joe", "--password-stdin", stdin=b"joe-password\n")
        self.ok("mailbox", "add", "sales@acme.com", "--owner", "joe", "--store-to", "Sales")
        return [
            self.store_op(_deliver, "sales@acme.com", f"Offer {number}", f"c{number}@example.org")
            for number in range(3)
        ]

    def test_folder_messages(self):
        ids = self.filed_into_a_folder()
        outcome = self.ok("folder", "messages", "sales")
        self.assertEqual(
            outcome.lines[0],
            "folder Sales (id 1) of Firm in Acme: 3 messages, newest first; 1-3:",
        )
        self.assertEqual(
            outcome.lines[1].split(),
            ["ID", "RECEIVED", "(UTC)", "FROM", "SUBJECT", "MAILBOX", "TYPE"],
        )
        self.assertEqual(
            [line.split()[:1] + line.split()[3:] for line in outcome.lines[2:]],
            [
                [str(ids[2]), "c2@example.org", "Offer", "2", "sales@acme.com", "email-in"],
                [str(ids[1]), "c1@example.org", "Offer", "1", "sales@acme.com", "email-in"],
                [str(ids[0]), "c0@example.org", "Offer", "0", "sales@acme.com", "email-in"],
            ],
        )
        page = self.ok("folder", "messages", "1", "--limit", "2", "--offset", "1")
        self.assertEqual(
            page.lines[0], "folder Sales (id 1) of Firm in Acme: 3 messages, newest first; 2-3:"
        )
        self.assertEqual([line.split()[0] for line in page.lines[2:]], [str(ids[1]), str(ids[0])])
        self.ok("project", "add", "Launch", "--organization", "Acme")
        self.assertEqual(
            self.ok("folder", "messages", "launch").lines,
            ["project Launch (id 3) in Acme: no messages"],
        )
        self.assertRefused(
            self.cli("folder", "messages", "nope"), 'no folder or project matches "nope"'
        )
        # A mailbox's "store to" is named too.
        self.assertEqual(
            self.ok("mailbox", "add", "desk@acme.com", "--owner", "joe", "--store-to", "todo")
            .lines[0]
            .split("stores to ")[1],
            "todo #2 To Do (joe))",
        )
        self.assertIn(
            "stores to project #3 Launch",
            self.ok("mailbox", "set", "desk@acme.com", "--store-to", "LAUNCH").lines[0],
        )

    def test_message_types_are_seen_and_set(self):
        ids = self.filed_into_a_folder()
        self.ok("message-type", "add", "offer", "--name", "Offer")
        self.assertEqual(
            self.ok("messages", "set-type", str(ids[0]), "OFFER").lines,
            [f"message {ids[0]}: type email-in -> offer"],
        )
        self.assertEqual(
            self.ok("messages", "set-type", str(ids[0]), "offer").lines,
            [f"message {ids[0]} has type offer already"],
        )
        self.assertEqual(
            [line.split()[:5] for line in self.ok("message-type", "list").lines],
            [
                ["CODE", "NAME", "ACTIVE", "DEFAULT", "FOR"],
                ["email-in", "Incoming", "e-mail", "yes", "incoming"],
                ["email-out", "Outgoing", "e-mail", "yes", "outgoing"],
                ["offer", "Offer", "yes", "-", "1"],
            ],
        )
        self.assertEqual(self.ok("message-type", "list").lines[1].split()[5:7], ["2", "0"])
        self.assertIn("offer", self.ok("messages", "list", "sales@acme.com").lines[-1].split())
        info = self.ok("messages", "info", str(ids[0])).lines
        self.assertEqual(info[0], f"id:              {ids[0]}")
        self.assertIn("type:            offer", info)
        self.assertIn("subject:         Offer 0", info)
        self.assertEqual(info[-2:], ["filed in:", "  sales@acme.com: folder #1 Sales"])
        self.assertRefused(
            self.cli("message-type", "delete", "offer"),
            "atollon-mail: 1 archived message has type offer and would change type; say which "
            "type they get instead: --reassign-to CODE (see: message-type list)\n",
        )
        self.assertEqual(
            self.ok("message-type", "delete", "offer", "--reassign-to", "email-in").lines,
            ["deleted message type offer (1 message moved to email-in)"],
        )
        self.ok("message-type", "add", "memo", "--name", "Memo", "--inactive")
        self.assertRefused(
            self.cli("messages", "set-type", str(ids[1]), "memo"),
            "message type memo is inactive; activate it or choose another",
        )
        self.assertRefused(
            self.cli("messages", "set-type", "999", "email-in"), "no message with id 999"
        )
        self.assertRefused(self.cli("messages", "info", "999"), "no message with id 999")


class SqliteCrmByNameTests(SqliteStoreMixin, CrmByNameTests, unittest.TestCase):
    pass


class PostgresCrmByNameTests(PostgresStoreMixin, CrmByNameTests, unittest.TestCase):
    pass
