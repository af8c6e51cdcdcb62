"""The default-folder maintenance (persons get their current primary employer's folder),
written once and run on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime

from twisted.trial import unittest

from atollon_mail.crm.records import DefaultFolderChange
from atollon_mail.store import contacts as c
from atollon_mail.store import folders as f
from atollon_mail.store.errors import NotFound
from atollon_mail.store.models import ContactContext, Context, Organization, utc_now
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

TODAY = datetime.date(2024, 6, 15)
DAY = datetime.timedelta(days=1)


def _default_rows(organization_id: int) -> dict[int, tuple[int | None, str]]:
    rows = builders.table_rows(
        ContactContext.contact,
        ContactContext.folder,
        ContactContext.source,
        where=ContactContext.organization == organization_id,
    )
    return {contact_id: (folder_id, source) for contact_id, folder_id, source in rows}


class DefaultFoldersContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.acme = self.op(c.add_organization, "Acme")
        self.firm = self.company("Firm")
        self.firm_folder = self.op(f.add_folder, "Firm main", "Acme", self.firm.id)

    def op(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def company(self, name: str, organization: str = "Acme"):
        return self.op(c.add_contact, organization, "company", name=name)

    def person(self, name: str, *employers, organization: str = "Acme", **job):
        person = self.op(c.add_contact, organization, "person", name=name)
        for employer in employers:
            self.op(c.add_employment, person.id, employer.id, **job)
        return person

    def run_setup(self, dry_run: bool = False, today: datetime.date = TODAY):
        return self.op(f.setup_default_folders, "Acme", today=today, dry_run=dry_run)

    def rows(self):
        return self.op(_default_rows, self.acme.id)

    def case_of(self, report, person) -> str:
        [why] = [case.why for case in report.cases if case.contact_id == person.id]
        return why

    # -- the rule ----------------------------------------------------------------------

    def test_a_current_primary_employer_with_one_folder_gives_it(self):
        jana = self.person("Jana", self.firm)
        report = self.run_setup()
        self.assertEqual(
            (report.set, report.changed, report.unchanged, report.kept_manual, report.cases),
            (1, 0, 0, 0, ()),
        )
        self.assertEqual(
            report.changes,
            (DefaultFolderChange(jana.id, "Jana", None, self.firm_folder.id, "Firm main"),),
        )
        self.assertEqual(self.rows(), {jana.id: (self.firm_folder.id, "employer")})
        # Companies themselves are not given default folders by the maintenance.
        self.assertNotIn(self.firm.id, self.rows())

    def test_employment_dates_are_judged_at_today(self):
        ended = self.person("Ended", self.firm, valid_to=TODAY - DAY)
        future = self.person("Future", self.firm, valid_from=TODAY + DAY)
        last_day = self.person("Last day", self.firm, valid_to=TODAY)
        first_day = self.person("First day", self.firm, valid_from=TODAY)
        secondary = self.person("Secondary", self.firm, is_primary=False)
        report = self.run_setup()
        self.assertEqual(set(self.rows()), {last_day.id, first_day.id})
        for person in (ended, future, secondary):
            self.assertEqual(self.case_of(report, person), "no current primary employer")
        # Judged a day later, the last day's employment has ended too.
        later = self.run_setup(dry_run=True, today=TODAY + DAY)
        self.assertIn(last_day.id, {case.contact_id for case in later.cases})

    def test_an_ended_employment_gives_way_to_the_current_one(self):
        old = self.company("Old")
        self.op(f.add_folder, "Old main", "Acme", old.id)
        jana = self.person("Jana")
        self.op(c.add_employment, jana.id, old.id, valid_to=TODAY - DAY)
        self.op(c.add_employment, jana.id, self.firm.id, valid_from=TODAY - DAY)
        self.run_setup()
        self.assertEqual(self.rows(), {jana.id: (self.firm_folder.id, "employer")})

    def test_two_current_primary_employers_are_listed(self):
        second = self.company("Second")
        self.op(f.add_folder, "Second main", "Acme", second.id)
        both = self.person("Both", self.firm, second)
        report = self.run_setup()
        self.assertEqual(
            self.case_of(report, both),
            f"2 current primary employers: Firm ({self.firm.id}), Second ({second.id}); "
            "keep one primary",
        )
        self.assertEqual(self.rows(), {})

    def test_a_company_with_two_folders_is_listed_unless_its_default_folder_decides(self):
        extra = self.op(f.add_folder, "Firm extra", "Acme", self.firm.id)
        jana = self.person("Jana", self.firm)
        report = self.run_setup()
        self.assertEqual(
            self.case_of(report, jana),
            f"employer Firm ({self.firm.id}) has 2 folders in Acme and no default folder to "
            f"choose: Firm main ({self.firm_folder.id}), Firm extra ({extra.id})",
        )
        self.assertEqual(self.rows(), {})
        # The company's own default folder decides.
        self.op(f.set_default_folder, self.firm.id, "Acme", folder_id=extra.id)
        report = self.run_setup()
        self.assertEqual((report.set, report.cases), (1, ()))
        self.assertEqual(self.rows()[jana.id], (extra.id, "employer"))

    def test_a_company_default_without_a_folder_does_not_decide(self):
        self.op(f.add_folder, "Firm extra", "Acme", self.firm.id)
        project = self.op(f.add_project, "Launch", "Acme")
        self.op(f.set_default_folder, self.firm.id, "Acme", project_id=project.id)
        jana = self.person("Jana", self.firm)
        report = self.run_setup()
        self.assertIn("has 2 folders", self.case_of(report, jana))

    def test_a_company_without_a_folder_is_listed(self):
        bare = self.company("Bare")
        jana = self.person("Jana", bare)
        report = self.run_setup()
        self.assertEqual(
            self.case_of(report, jana), f"employer Bare ({bare.id}) has no folder in Acme"
        )

    def test_each_case_has_its_reason_and_employer(self):
        extra = self.op(f.add_folder, "Firm extra", "Acme", self.firm.id)
        bare = self.company("Bare")
        second = self.company("Second")
        alone = self.person("Alone")
        both = self.person("Both", bare, second)
        at_bare = self.person("At Bare", bare)
        at_firm = self.person("At Firm", self.firm)
        report = self.run_setup()
        self.assertEqual(
            sorted(
                (case.contact_id, case.reason, case.company_id, case.folders)
                for case in report.cases
            ),
            [
                (alone.id, "no-employer", None, ()),
                (both.id, "several-employers", None, ()),
                (at_bare.id, "no-folder", bare.id, ()),
                (
                    at_firm.id,
                    "several-folders",
                    self.firm.id,
                    ((self.firm_folder.id, "Firm main"), (extra.id, "Firm extra")),
                ),
            ],
        )
        # A folder added as the company's default decides for its employees.
        added = self.op(f.add_folder, "Bare main", "Acme", "Bare", default=True)
        self.assertTrue(added.is_company_default)
        chosen = self.op(f.make_company_default, "firm extra")
        self.assertEqual((chosen.contact_id, chosen.folder_id), (self.firm.id, extra.id))
        report = self.run_setup()
        self.assertEqual(
            [(case.contact_id, case.reason) for case in report.cases],
            [(alone.id, "no-employer"), (both.id, "several-employers")],
        )
        self.assertEqual(self.rows()[at_bare.id], (added.id, "employer"))
        self.assertEqual(self.rows()[at_firm.id], (extra.id, "employer"))
        self.assertEqual(
            [(folder.name, folder.is_company_default) for folder in self.op(f.list_folders)],
            [("Firm main", False), ("Firm extra", True), ("Bare main", True)],
        )

    def test_a_fired_person_loses_the_employers_folder_at_the_next_run(self):
        jana = self.person("Jana", self.firm)
        self.run_setup()
        self.assertEqual(self.rows()[jana.id], (self.firm_folder.id, "employer"))
        self.op(c.end_employment, "Jana", "Firm", on=TODAY - DAY)
        report = self.run_setup()
        [case] = report.cases
        self.assertEqual((case.contact_id, case.reason), (jana.id, "no-employer"))
        self.assertEqual(
            case.note,
            f"its default folder {self.firm_folder.id} from an earlier run is left as it is",
        )
        self.assertEqual(self.op(c.get_contact, jana.id).name, "Jana")

    def test_a_folder_in_another_organization_does_not_count(self):
        self.op(c.add_organization, "Other")
        bare = self.company("Bare")
        # A folder of the company filed under another organization (set up directly).
        self.op(_folder_elsewhere, "Bare elsewhere", "Other", bare.id)
        jana = self.person("Jana", bare)
        report = self.run_setup()
        self.assertIn("has no folder in Acme", self.case_of(report, jana))

    def test_a_manual_default_folder_is_kept(self):
        other = self.op(f.add_project, "Launch", "Acme")
        jana = self.person("Jana", self.firm)
        self.op(f.set_default_folder, jana.id, "Acme", project_id=other.id)
        report = self.run_setup()
        self.assertEqual((report.set, report.changed, report.kept_manual), (0, 0, 1))
        self.assertEqual(self.rows(), {jana.id: (None, "manual")})

    def test_an_employer_row_follows_a_new_employer(self):
        jana = self.person("Jana")
        self.op(c.add_employment, jana.id, self.firm.id, valid_to=TODAY + DAY)
        self.run_setup()
        new = self.company("New")
        new_folder = self.op(f.add_folder, "New main", "Acme", new.id)
        self.op(c.add_employment, jana.id, new.id, valid_from=TODAY + 2 * DAY)
        report = self.run_setup(today=TODAY + 2 * DAY)
        self.assertEqual((report.set, report.changed, report.unchanged), (0, 1, 0))
        self.assertEqual(
            report.changes,
            (DefaultFolderChange(jana.id, "Jana", self.firm_folder.id, new_folder.id, "New main"),),
        )
        self.assertEqual(self.rows(), {jana.id: (new_folder.id, "employer")})

    def test_an_employer_row_is_left_when_the_rule_gives_nothing(self):
        jana = self.person("Jana", self.firm, valid_to=TODAY)
        self.run_setup()
        report = self.run_setup(today=TODAY + DAY)
        self.assertEqual(
            self.case_of(report, jana),
            f"no current primary employer; its default folder {self.firm_folder.id} from an "
            "earlier run is left as it is",
        )
        self.assertEqual(self.rows(), {jana.id: (self.firm_folder.id, "employer")})

    def test_a_second_run_changes_nothing(self):
        self.person("Jana", self.firm)
        self.person("Petr", self.firm)
        self.person("Nobody")
        first = self.run_setup()
        rows = self.rows()
        second = self.run_setup()
        self.assertEqual((first.set, first.unchanged, len(first.cases)), (2, 0, 1))
        self.assertEqual((second.set, second.changed, second.unchanged), (0, 0, 2))
        self.assertEqual(second.changes, ())
        self.assertEqual(second.cases, first.cases)
        self.assertEqual(self.rows(), rows)

    def test_a_dry_run_changes_nothing(self):
        jana = self.person("Jana", self.firm)
        dry = self.run_setup(dry_run=True)
        self.assertTrue(dry.dry_run)
        self.assertEqual((dry.set, [change.contact_id for change in dry.changes]), (1, [jana.id]))
        self.assertEqual(self.rows(), {})
        real = self.run_setup()
        self.assertEqual((real.set, real.changes), (dry.set, dry.changes))

    def test_other_organizations_are_left_alone(self):
        self.op(c.add_organization, "Other")
        there = self.company("There", organization="Other")
        self.op(f.add_folder, "There main", "Other", there.id)
        ann = self.person("Ann", there, organization="Other")
        report = self.run_setup()
        self.assertNotIn(ann.id, {case.contact_id for case in report.cases})
        self.assertEqual(self.rows(), {})
        reports = self.op(f.setup_default_folders_everywhere, today=TODAY)
        self.assertEqual([r.organization_name for r in reports], ["Acme", "Other"])
        self.assertEqual(reports[1].set, 1)

    def test_an_unknown_organization_is_refused(self):
        with self.assertRaisesRegex(NotFound, "no organization Nope"):
            self.op(f.setup_default_folders, "Nope")


def _folder_elsewhere(name: str, organization: str, company_id: int) -> None:
    Context.create(
        kind="folder",
        name=name,
        organization=Organization.get(Organization.name == organization).id,
        company=company_id,
        created_at=utc_now(),
    )


class SqliteDefaultFoldersTests(SqliteStoreMixin, DefaultFoldersContract, unittest.TestCase):
    pass


class PostgresDefaultFoldersTests(PostgresStoreMixin, DefaultFoldersContract, unittest.TestCase):
    pass
