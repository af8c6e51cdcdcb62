"""Distribution groups in the store: static lists and dynamic filters, previews by SQL
aggregates, written once and run on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime

from twisted.trial import unittest

from atollon_mail.crm.filters import GroupFilter
from atollon_mail.crm.records import GroupPreview, MemberRecord
from atollon_mail.passwords import hash_password
from atollon_mail.store import contacts as c
from atollon_mail.store import groups as g
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

TODAY = datetime.date(2024, 6, 15)
DAY = datetime.timedelta(days=1)


class GroupsContract(StoreFixtureMixin):
    """Acme: Firm (company, cs, with address), Shop (company, no language, no address);
    Jana (cs, Firm primary, current), Petr (de, Firm non-primary, current), Eva (en, no
    address, Firm primary ended), Karel (cs, Shop primary, starts tomorrow), Ota (no
    language, not employed). Other: Zoe (cs, with address)."""

    def setUp(self):
        self.store = self.make_store()
        self.op(c.add_organization, "Acme")
        self.op(c.add_organization, "Other")
        self.firm = self.contact("company", "Firm", "cs", "office@firm.test")
        self.shop = self.contact("company", "Shop", "", "")
        self.jana = self.contact("person", "Jana", "cs", "jana@firm.test")
        self.petr = self.contact("person", "Petr", "de", "petr@firm.test")
        self.eva = self.contact("person", "Eva", "en", "")
        self.karel = self.contact("person", "Karel", "cs", "karel@shop.test")
        self.ota = self.contact("person", "Ota", "", "ota@home.test")
        self.zoe = self.contact("person", "Zoe", "cs", "zoe@other.test", organization="Other")
        self.job(self.jana, self.firm)
        self.job(self.petr, self.firm, is_primary=False)
        self.job(self.eva, self.firm, valid_to=TODAY - DAY)
        self.job(self.karel, self.shop, valid_from=TODAY + DAY)

    def op(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def contact(self, kind, name, language, email, organization="Acme"):
        return self.op(c.add_contact, organization, kind, name=name, language=language, email=email)

    def job(self, person, company, **dates):
        self.op(c.add_employment, person.id, company.id, **dates)

    def members(self, group) -> set[str]:
        return {member.name for member in self.op(g.group_sample, group, 1000, today=TODAY)}

    def matching(self, organization="Acme", **fields) -> set[str]:
        name = f"group {len(self.op(g.list_groups))}"
        self.op(g.add_group, name, organization, "dynamic", GroupFilter(**fields))
        return self.members(name)

    # -- dynamic groups: each filter field ---------------------------------------------

    def test_organization_alone_is_every_contact_of_it(self):
        self.assertEqual(self.matching(), {"Firm", "Shop", "Jana", "Petr", "Eva", "Karel", "Ota"})
        self.assertEqual(self.matching(organization="Other"), {"Zoe"})
        # No organization at all: every contact of every organization.
        self.assertEqual(len(self.matching(organization=None)), 8)

    def test_kinds(self):
        self.assertEqual(self.matching(kinds=("company",)), {"Firm", "Shop"})
        self.assertEqual(
            self.matching(kinds=("person", "company")),
            {"Firm", "Shop", "Jana", "Petr", "Eva", "Karel", "Ota"},
        )

    def test_languages_with_none(self):
        self.assertEqual(self.matching(languages=("cs",)), {"Firm", "Jana", "Karel"})
        self.assertEqual(self.matching(languages=("DE", "en")), {"Petr", "Eva"})
        self.assertEqual(self.matching(languages=("",)), {"Shop", "Ota"})

    def test_has_email(self):
        self.assertEqual(self.matching(has_email=False), {"Shop", "Eva"})
        self.assertEqual(self.matching(has_email=True), {"Firm", "Jana", "Petr", "Karel", "Ota"})

    def test_company_ids_take_the_company_and_its_people(self):
        # Without employment_current every employment counts, ended or not.
        self.assertEqual(
            self.matching(company_ids=(self.firm.id,)), {"Firm", "Jana", "Petr", "Eva"}
        )
        self.assertEqual(
            self.matching(company_ids=(self.firm.id, self.shop.id), kinds=("person",)),
            {"Jana", "Petr", "Eva", "Karel"},
        )

    def test_company_ids_with_current_employment_and_primary_only(self):
        self.assertEqual(
            self.matching(company_ids=(self.firm.id,), employment_current=True),
            {"Firm", "Jana", "Petr"},
        )
        self.assertEqual(
            self.matching(company_ids=(self.firm.id,), employment_current=True, primary_only=True),
            {"Firm", "Jana"},
        )
        self.assertEqual(
            self.matching(company_ids=(self.firm.id,), primary_only=True),
            {"Firm", "Jana", "Eva"},
        )
        # A future employment is not current either.
        self.assertEqual(
            self.matching(company_ids=(self.shop.id,), employment_current=True), {"Shop"}
        )

    def test_employment_current(self):
        self.assertEqual(self.matching(employment_current=True), {"Jana", "Petr"})
        self.assertEqual(self.matching(employment_current=True, primary_only=True), {"Jana"})
        # "No current employment": persons only, ended and future employments included.
        self.assertEqual(self.matching(employment_current=False), {"Eva", "Karel", "Ota"})
        self.assertEqual(
            self.matching(employment_current=False, primary_only=True),
            {"Petr", "Eva", "Karel", "Ota"},
        )

    def test_employment_is_judged_on_the_day_given(self):
        self.op(g.add_group, "employed", "Acme", "dynamic", GroupFilter(employment_current=True))
        later = self.op(g.group_sample, "employed", today=TODAY + DAY)
        self.assertEqual({m.name for m in later}, {"Jana", "Petr", "Karel"})
        earlier = self.op(g.group_sample, "employed", today=TODAY - DAY)
        self.assertEqual({m.name for m in earlier}, {"Jana", "Petr", "Eva"})

    def test_combinations_match_every_field(self):
        self.assertEqual(
            self.matching(kinds=("person",), languages=("cs", "de"), has_email=True),
            {"Jana", "Petr", "Karel"},
        )
        self.assertEqual(
            self.matching(
                languages=("cs",),
                has_email=True,
                company_ids=(self.firm.id,),
                employment_current=True,
                primary_only=True,
                kinds=("person",),
            ),
            {"Jana"},
        )

    def test_the_filter_is_stored_with_the_groups_organization(self):
        group = self.op(
            g.add_group, "Czech", "Acme", "dynamic", GroupFilter(languages=(" CS ", "cs"))
        )
        self.assertEqual(
            group.filter, GroupFilter(organization_id=group.organization_id, languages=("cs",))
        )
        self.assertEqual(group.description, "persons and companies of Acme; language cs")
        # An organization in the filter alone gives the group its organization.
        by_filter = self.op(
            g.add_group,
            "Others",
            kind="dynamic",
            filter=GroupFilter(organization_id=group.organization_id),
        )
        self.assertEqual(by_filter.organization_name, "Acme")

    def test_descriptions(self):
        group = self.op(
            g.add_group,
            "Described",
            "Acme",
            "dynamic",
            GroupFilter(
                kinds=("person",),
                languages=("cs", ""),
                has_email=True,
                company_ids=(self.firm.id,),
                employment_current=True,
                primary_only=True,
            ),
        )
        self.assertEqual(
            group.description,
            "persons of Acme; language cs or (none); with an e-mail address; "
            f"Firm ({self.firm.id}) and persons with a current primary employment there",
        )
        unemployed = self.op(
            g.add_group, "Unemployed", None, "dynamic", GroupFilter(employment_current=False)
        )
        self.assertEqual(
            unemployed.description, "persons and companies; persons with no current employment"
        )
        static = self.op(g.add_group, "Listed", "Acme")
        self.assertEqual((static.description, static.filter), ("listed contacts of Acme", None))

    def test_add_group_refusals(self):
        self.op(g.add_group, "Taken")
        acme = self.op(c.get_organization, "Acme")
        other = self.op(c.get_organization, "Other")
        cases = [
            (Conflict, "group Taken exists already", ("Taken",), {}),
            (Invalid, "needs a name", (" ",), {}),
            (Invalid, "would read as an id", ("42",), {}),
            (Invalid, "not a kind of group", ("X",), {"kind": "smart"}),
            (Invalid, "only a dynamic group has a filter", ("X",), {"filter": GroupFilter()}),
            (NotFound, "no organization Nope", ("X", "Nope"), {}),
            (
                Invalid,
                "the filter names organization",
                ("X", "Acme", "dynamic", GroupFilter(organization_id=other.id)),
                {},
            ),
            (
                Invalid,
                "is a person; the filter takes companies",
                ("X", "Acme", "dynamic", GroupFilter(company_ids=(self.jana.id,))),
                {},
            ),
            (
                Invalid,
                "belongs to another organization",
                ("X", "Other", "dynamic", GroupFilter(company_ids=(self.firm.id,))),
                {},
            ),
            (
                NotFound,
                "no contact with id 999",
                ("X", "Acme", "dynamic", GroupFilter(company_ids=(999,))),
                {},
            ),
            (
                Invalid,
                "primary only applies to employments",
                ("X", "Acme", "dynamic", GroupFilter(primary_only=True)),
                {},
            ),
            (
                Invalid,
                "not a language code",
                ("X", acme.id, "dynamic", GroupFilter(languages=("czech",))),
                {},
            ),
        ]
        for error, message, args, kwargs in cases:
            with self.assertRaisesRegex(error, message):
                self.op(g.add_group, *args, **kwargs)
        with self.assertRaisesRegex(Invalid, "unknown contact kind"):
            GroupFilter(kinds=("robot",))

    # -- static groups -----------------------------------------------------------------

    def test_static_members_are_added_and_removed(self):
        self.op(g.add_group, "Listed", "Acme")
        change = self.op(g.change_members, "Listed", add=[self.jana.id, self.firm.id, self.jana.id])
        self.assertEqual(
            (change.added, change.removed, change.already, change.absent), (2, 0, 0, 0)
        )
        self.assertEqual(self.members("Listed"), {"Jana", "Firm"})
        change = self.op(
            g.change_members,
            "Listed",
            add=[self.jana.id, self.ota.id],
            remove=[self.firm.id, self.eva.id],
        )
        self.assertEqual(
            (change.added, change.removed, change.already, change.absent), (1, 1, 1, 1)
        )
        self.assertEqual(self.members("Listed"), {"Jana", "Ota"})

    def test_static_member_refusals_change_nothing(self):
        group = self.op(g.add_group, "Listed", "Acme")
        self.op(g.change_members, group.id, add=[self.jana.id])
        with self.assertRaisesRegex(NotFound, "no contacts with ids 998, 999"):
            self.op(g.change_members, "Listed", add=[self.ota.id, 999, 998])
        with self.assertRaisesRegex(
            Invalid, f"contacts {self.zoe.id} belong to another organization"
        ):
            self.op(g.change_members, "Listed", add=[self.ota.id, self.zoe.id])
        with self.assertRaisesRegex(Invalid, "both added and removed"):
            self.op(g.change_members, "Listed", add=[self.ota.id], remove=[self.ota.id])
        self.assertEqual(self.members("Listed"), {"Jana"})
        self.op(g.add_group, "Czech", "Acme", "dynamic", GroupFilter(languages=("cs",)))
        with self.assertRaisesRegex(Invalid, "group Czech is dynamic"):
            self.op(g.change_members, "Czech", add=[self.ota.id])
        # A group without an organization takes contacts of any.
        self.op(g.add_group, "Anyone")
        self.op(g.change_members, "Anyone", add=[self.jana.id, self.zoe.id])
        self.assertEqual(self.members("Anyone"), {"Jana", "Zoe"})

    # -- lookups, preview, sample, counts ----------------------------------------------

    def test_groups_by_name_or_id(self):
        group = self.op(g.add_group, "Listed", "Acme")
        self.assertEqual(self.op(g.get_group, "Listed"), group)
        self.assertEqual(self.op(g.get_group, str(group.id)), group)
        self.assertEqual(self.op(g.get_group, group.id), group)
        with self.assertRaisesRegex(
            NotFound, 'no distribution group matches "Nope" \\(by id or name\\); see: group list'
        ):
            self.op(g.get_group, "Nope")
        second = self.op(g.add_group, "Another")
        self.assertEqual(self.op(g.list_groups), [second, group])

    def test_preview_counts_languages_and_addresses(self):
        self.op(g.add_group, "Everyone", "Acme", "dynamic")
        self.assertEqual(
            self.op(g.group_preview, "Everyone", today=TODAY),
            GroupPreview(
                total=7,
                by_language={"": 2, "cs": 3, "de": 1, "en": 1},
                without_address=2,
                with_address=5,
            ),
        )
        self.op(g.add_group, "Listed", "Acme")
        self.op(g.change_members, "Listed", add=[self.eva.id, self.jana.id, self.shop.id])
        self.assertEqual(
            self.op(g.group_preview, "Listed"),
            GroupPreview(
                total=3, by_language={"": 1, "cs": 1, "en": 1}, without_address=2, with_address=1
            ),
        )
        self.op(g.add_group, "Empty", "Other", "dynamic", GroupFilter(languages=("fr",)))
        self.assertEqual(self.op(g.group_preview, "Empty"), GroupPreview(0, {}, 0, 0))

    def test_sample_and_member_counts(self):
        listed = self.op(g.add_group, "Listed", "Acme")
        self.op(g.change_members, "Listed", add=[self.ota.id, self.jana.id])
        self.assertEqual(
            self.op(g.group_sample, "Listed"),
            [
                MemberRecord(self.jana.id, "person", "Jana", "jana@firm.test", "cs"),
                MemberRecord(self.ota.id, "person", "Ota", "ota@home.test", ""),
            ],
        )
        self.assertEqual(len(self.op(g.group_sample, "Listed", limit=1)), 1)
        czech = self.op(g.add_group, "Czech", None, "dynamic", GroupFilter(languages=("cs",)))
        self.assertEqual(self.op(g.member_counts, today=TODAY), {listed.id: 2, czech.id: 4})

    # -- deleting ----------------------------------------------------------------------

    def test_delete_a_group(self):
        group = self.op(g.add_group, "Listed", "Acme")
        self.op(g.change_members, "Listed", add=[self.jana.id])
        self.assertEqual(self.op(g.delete_group, "Listed"), group)
        with self.assertRaises(NotFound):
            self.op(g.get_group, group.id)
        self.assertEqual(self.op(c.get_contact, self.jana.id), self.jana)

    def test_a_group_a_campaign_uses_is_not_deleted(self):
        builders.hosted_mailbox(self.store, "news@acme.test", "joe", hash_password("x"))
        group = self.op(g.add_group, "Listed", "Acme")
        builders.campaign(self.store, group.id, "news@acme.test", name="Spring news")
        with self.assertRaisesRegex(
            Conflict, r"group Listed is used by campaign Spring news \(\d+\); delete those"
        ):
            self.op(g.delete_group, "Listed")
        self.assertEqual(self.op(g.get_group, group.id), group)


class GroupFilterJsonTests(unittest.TestCase):
    def test_choices_survive_the_round_trip(self):
        spec = GroupFilter(
            organization_id=3,
            kinds=("person",),
            languages=("cs", ""),
            has_email=False,
            company_ids=(7, 9),
            employment_current=False,
            primary_only=True,
        )
        self.assertEqual(GroupFilter.from_json(spec.to_json()), spec)
        self.assertEqual(GroupFilter().to_json(), "{}")
        self.assertEqual(GroupFilter(has_email=False).to_json(), '{"has_email": false}')

    def test_bad_json_is_refused(self):
        for text, message in (
            ("[1]", "must be a JSON object"),
            ("{", "not valid JSON"),
            ('{"sql": "1=1"}', "unknown filter fields: sql"),
        ):
            with self.assertRaisesRegex(Invalid, message):
                GroupFilter.from_json(text)


class SqliteGroupsTests(SqliteStoreMixin, GroupsContract, unittest.TestCase):
    pass


class PostgresGroupsTests(PostgresStoreMixin, GroupsContract, unittest.TestCase):
    pass
