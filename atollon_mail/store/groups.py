"""Store operations for distribution groups.

A static group lists its contacts one by one; a dynamic group holds the contacts its
filter (a GroupFilter, kept as JSON) matches on the day it is read. A group of an
organization holds contacts of that organization only: a static group refuses others, a
dynamic group's filter carries the organization.

A group is named by its name or its id: an int is an id; a string is a name, or an id
when it is all digits and no group has that name.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence

import attrs
import peewee

from atollon_mail.crm.filters import GroupFilter, describe_filter
from atollon_mail.crm.normalize import normalize_language
from atollon_mail.crm.records import (
    GroupOverview,
    GroupPreview,
    GroupRecord,
    GroupSummary,
    MemberRecord,
    MembersChange,
)
from atollon_mail.store.common import (
    CANDIDATES_SHOWN,
    chunks,
    contains_text,
    create,
    limited,
    locked,
    no_match,
    read_only,
    same_text,
    several_match,
)
from atollon_mail.store.contacts import (
    current_employment,
    find_contact_row,
    get_organization_row,
)
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.models import (
    GROUP_KINDS,
    Campaign,
    Contact,
    DistributionGroup,
    Employment,
    GroupMember,
    Organization,
    utc_now,
)

# How many members a group page or command shows as a sample.
SAMPLE_SIZE = 50


def _today(today: datetime.date | None) -> datetime.date:
    return today or datetime.datetime.now(datetime.UTC).date()


# --- a filter as a query: the user's choices among GroupFilter's fields, built by peewee
# with bound parameters, so no text a user typed ever becomes SQL.


def filter_condition(spec: GroupFilter, today: datetime.date):
    """The WHERE condition on Contact for a filter (None: every contact)."""
    conditions = []
    if spec.organization_id is not None:
        conditions.append(Contact.organization == spec.organization_id)
    if spec.kinds:
        conditions.append(Contact.kind.in_(list(spec.kinds)))
    if spec.languages:
        conditions.append(Contact.language.in_(list(spec.languages)))
    if spec.has_email is True:
        conditions.append(Contact.email != "")
    elif spec.has_email is False:
        conditions.append(Contact.email == "")
    if spec.company_ids or spec.employment_current is not None:
        employed = Employment.select(Employment.person).where(
            *(
                ([Employment.company.in_(list(spec.company_ids))] if spec.company_ids else [])
                + ([current_employment(today)] if spec.employment_current is not None else [])
                + ([Employment.is_primary == True] if spec.primary_only else [])  # noqa: E712
            )
        )
        if spec.employment_current is False:
            conditions.append((Contact.kind == "person") & Contact.id.not_in(employed))
        else:
            person_match = Contact.id.in_(employed)
            if spec.company_ids:
                person_match |= Contact.id.in_(list(spec.company_ids))
            conditions.append(person_match)
    if not conditions:
        return None
    condition = conditions[0]
    for more in conditions[1:]:
        condition &= more
    return condition


def members_query(group: DistributionGroup, today: datetime.date | None = None) -> peewee.Select:
    """The group's contacts as a query on Contact (not yet run, so callers may add columns,
    order it, count it or feed it to INSERT ... SELECT without loading it)."""
    today = today or datetime.datetime.now(datetime.UTC).date()
    if group.kind == "static":
        return (
            Contact.select()
            .join(GroupMember, on=(GroupMember.contact == Contact.id))
            .where(GroupMember.group == group.id)
        )
    condition = filter_condition(GroupFilter.from_json(group.filter or "{}"), today)
    query = Contact.select()
    return query if condition is None else query.where(condition)


def _group_query():
    return DistributionGroup.select(DistributionGroup, Organization).join(
        Organization, peewee.JOIN.LEFT_OUTER
    )


def get_group_row(group: int | str) -> DistributionGroup:
    """The one group a reference names (see the module's docstring)."""
    query = _group_query()
    if isinstance(group, int):
        found = query.where(DistributionGroup.id == group).get_or_none()
        if found is None:
            raise NotFound(f"no distribution group with id {group}; see: group list")
        return found
    text = group.strip()
    conditions = [DistributionGroup.name == text]
    if text.isdigit():
        conditions.append(DistributionGroup.id == int(text))
    conditions += [
        same_text(DistributionGroup.name, text),
        contains_text(DistributionGroup.name, text),
    ]
    for condition in conditions:
        matching = query.where(condition)
        total = matching.count()
        if total == 1:
            return matching.get()
        if total:
            found = matching.order_by(DistributionGroup.name).limit(CANDIDATES_SHOWN)
            labels = [f"{row.id} {row.name}" for row in found]
            raise several_match(
                "distribution groups",
                text,
                labels,
                total,
                "give the id or the whole name; see: group list",
            )
    raise no_match("distribution group", text, "id or name", "see: group list")


def _names(model, ids: Iterable[int]) -> dict[int, str]:
    found: dict[int, str] = {}
    for chunk in chunks(sorted(set(ids))):
        query = model.select(model.id, model.name).where(model.id.in_(chunk)).tuples()
        found.update(query)
    return found


def _group_record(group: DistributionGroup) -> GroupRecord:
    organization = group.organization if group.organization_id is not None else None
    organization_name = organization.name if organization else None
    if group.kind == "static":
        return GroupRecord(
            id=group.id,
            name=group.name,
            kind=group.kind,
            organization_id=group.organization_id,
            organization_name=organization_name,
            filter=None,
            description="listed contacts"
            + (f" of {organization_name}" if organization_name else ""),
        )
    spec = GroupFilter.from_json(group.filter or "{}")
    filter_organization = organization_name
    if spec.organization_id is not None and spec.organization_id != group.organization_id:
        filter_organization = _names(Organization, [spec.organization_id]).get(
            spec.organization_id, f"organization {spec.organization_id}"
        )
    return GroupRecord(
        id=group.id,
        name=group.name,
        kind=group.kind,
        organization_id=group.organization_id,
        organization_name=organization_name,
        filter=spec,
        description=describe_filter(spec, filter_organization, _names(Contact, spec.company_ids)),
    )


def _checked_filter(spec: GroupFilter, organization: Organization | None) -> GroupFilter:
    """The filter with its languages normalised and the group's organization in it;
    the companies it names must be companies (of that organization)."""
    organization_id = spec.organization_id
    if organization is not None:
        if organization_id is not None and organization_id != organization.id:
            raise Invalid(
                f"the filter names organization {organization_id} but the group belongs to "
                f"{organization.name} ({organization.id}); give one organization"
            )
        organization_id = organization.id
    elif organization_id is not None:
        get_organization_row(organization_id)
    languages = tuple(dict.fromkeys(normalize_language(code) for code in spec.languages))
    company_ids = tuple(dict.fromkeys(spec.company_ids))
    if company_ids:
        found = {
            row.id: row
            for row in Contact.select(Contact.id, Contact.kind, Contact.organization).where(
                Contact.id.in_(list(company_ids))
            )
        }
        for company_id in company_ids:
            row = found.get(company_id)
            if row is None:
                raise NotFound(f"no contact with id {company_id}; see: contacts list")
            if row.kind != "company":
                raise Invalid(f"contact {company_id} is a person; the filter takes companies")
            if organization_id is not None and row.organization_id != organization_id:
                raise Invalid(
                    f"company {company_id} belongs to another organization than the group's"
                )
    if spec.primary_only and not company_ids and spec.employment_current is None:
        raise Invalid(
            "primary only applies to employments: give companies or employment current as well"
        )
    return attrs.evolve(
        spec, organization_id=organization_id, languages=languages, company_ids=company_ids
    )


def add_group(
    name: str,
    organization: int | str | None = None,
    kind: str = "static",
    filter: GroupFilter | None = None,
    now: datetime.datetime | None = None,
    companies: Sequence[int | str] = (),
) -> GroupRecord:
    """A static group (members added by hand) or a dynamic one (members by its filter; no
    filter: every contact, of the organization when one is given). `companies` adds to
    the filter's companies, each named by id, name, e-mail or external id."""
    name = limited(name, 200, "group's name")
    if not name:
        raise Invalid("a group needs a name")
    if name.isdigit():
        raise Invalid(f"{name!r} would read as an id; give the group a name with letters")
    if kind not in GROUP_KINDS:
        raise Invalid(f"{kind!r} is not a kind of group; use static or dynamic")
    owner = get_organization_row(organization) if organization is not None else None
    if kind == "static" and filter is not None:
        raise Invalid("a static group lists its contacts; only a dynamic group has a filter")
    spec_json = None
    if companies and kind != "dynamic":
        raise Invalid("a static group lists its contacts; only a dynamic group has companies")
    if kind == "dynamic":
        spec = filter or GroupFilter()
        if companies:
            found = [
                find_contact_row(company, owner.id if owner else None, kind="company").id
                for company in companies
            ]
            spec = attrs.evolve(spec, company_ids=(*spec.company_ids, *found))
        spec = _checked_filter(spec, owner)
        if owner is None and spec.organization_id is not None:
            owner = get_organization_row(spec.organization_id)
        spec_json = spec.to_json()
    if DistributionGroup.select().where(DistributionGroup.name == name).exists():
        raise Conflict(f"group {name} exists already")
    group = create(
        DistributionGroup,
        f"group {name} exists already",
        name=name,
        organization=owner.id if owner else None,
        kind=kind,
        filter=spec_json,
        created_at=now or utc_now(),
    )
    return get_group(group.id)


@read_only
def get_group(group: int | str) -> GroupRecord:
    return _group_record(get_group_row(group))


@read_only
def list_groups() -> list[GroupRecord]:
    query = (
        DistributionGroup.select(DistributionGroup, Organization)
        .join(Organization, peewee.JOIN.LEFT_OUTER)
        .order_by(DistributionGroup.name)
    )
    return [_group_record(group) for group in query]


@read_only
def member_counts(today: datetime.date | None = None) -> dict[int, int]:
    """Each group's member count (one COUNT per group; members are never loaded)."""
    today = _today(today)
    return {
        group.id: members_query(group, today).count()
        for group in DistributionGroup.select().order_by(DistributionGroup.id)
    }


@read_only
def groups_with_counts(today: datetime.date | None = None) -> list[GroupSummary]:
    """Every group by name with its member count (for the groups page)."""
    counts = member_counts(today)
    return [GroupSummary(group, counts.get(group.id, 0)) for group in list_groups()]


def change_members(
    group: int | str, add: Iterable[int | str] = (), remove: Iterable[int | str] = ()
) -> MembersChange:
    """Add and remove contacts of a static group (removals first); unknown contacts and
    contacts of another organization are refused, nothing is changed then. A contact is
    an id (int), or a text as store.contacts.find_contact_row finds it."""
    row = get_group_row(group)
    if row.kind != "static":
        raise Invalid(
            f"group {row.name} is dynamic: its filter chooses its members; "
            "add or remove contacts in a static group"
        )
    _lock_group(row)
    add_ids = list(dict.fromkeys(_contact_ids(add, row.organization_id)))
    remove_ids = list(dict.fromkeys(_contact_ids(remove, row.organization_id)))
    both = set(add_ids) & set(remove_ids)
    if both:
        raise Invalid(f"contacts {_id_list(both)} are both added and removed; choose one")
    organizations: dict[int, int] = {}
    for chunk in chunks(add_ids):
        query = Contact.select(Contact.id, Contact.organization).where(Contact.id.in_(chunk))
        organizations.update(query.tuples())
    missing = [contact_id for contact_id in add_ids if contact_id not in organizations]
    if missing:
        raise NotFound(f"no contacts with ids {_id_list(missing)}; see: contacts list")
    if row.organization_id is not None:
        foreign = [cid for cid in add_ids if organizations[cid] != row.organization_id]
        if foreign:
            raise Invalid(
                f"contacts {_id_list(foreign)} belong to another organization than "
                f"{row.organization.name}, the group's"
            )
    present: set[int] = set()
    for chunk in chunks(add_ids + remove_ids):
        query = GroupMember.select(GroupMember.contact).where(
            (GroupMember.group == row.id) & GroupMember.contact.in_(chunk)
        )
        present.update(contact_id for (contact_id,) in query.tuples())
    removing = [contact_id for contact_id in remove_ids if contact_id in present]
    for chunk in chunks(removing):
        GroupMember.delete().where(
            (GroupMember.group == row.id) & GroupMember.contact.in_(chunk)
        ).execute()
    adding = [contact_id for contact_id in add_ids if contact_id not in present]
    now = utc_now()
    for chunk in chunks(adding):
        GroupMember.insert_many(
            [(row.id, contact_id, now) for contact_id in chunk],
            fields=[GroupMember.group, GroupMember.contact, GroupMember.added_at],
        ).execute()
    return MembersChange(
        group=_group_record(row),
        added=len(adding),
        removed=len(removing),
        already=len(add_ids) - len(adding),
        absent=len(remove_ids) - len(removing),
    )


def _contact_ids(references: Iterable[int | str], organization_id: int | None) -> list[int]:
    return [
        reference if isinstance(reference, int) else find_contact_row(reference, organization_id).id
        for reference in references
    ]


def _lock_group(row: DistributionGroup) -> None:
    # Two admins changing one group at once see each other's change.
    locked(
        DistributionGroup.select(DistributionGroup.id).where(DistributionGroup.id == row.id)
    ).execute()


def _id_list(ids: Iterable[int]) -> str:
    return ", ".join(str(contact_id) for contact_id in sorted(ids))


@read_only
def group_preview(group: int | str, today: datetime.date | None = None) -> GroupPreview:
    """How many contacts the group holds, per language, with and without an address:
    one aggregate query over the members (they are never loaded)."""
    row = get_group_row(group)
    without = peewee.Case(None, [(Contact.email == "", 1)], 0)
    query = (
        members_query(row, _today(today))
        .select(Contact.language, peewee.fn.COUNT(Contact.id), peewee.fn.SUM(without))
        .group_by(Contact.language)
        .order_by(Contact.language)
        .tuples()
    )
    by_language: dict[str, int] = {}
    total = without_address = 0
    for language, count, missing in query:
        by_language[language] = count
        total += count
        without_address += int(missing or 0)
    return GroupPreview(
        total=total,
        by_language=by_language,
        without_address=without_address,
        with_address=total - without_address,
    )


@read_only
def group_sample(
    group: int | str, limit: int = SAMPLE_SIZE, today: datetime.date | None = None
) -> list[MemberRecord]:
    """The group's first members by contact id."""
    row = get_group_row(group)
    query = (
        members_query(row, _today(today))
        .select(Contact.id, Contact.kind, Contact.name, Contact.email, Contact.language)
        .order_by(Contact.id)
        .limit(limit)
        .tuples()
    )
    return [MemberRecord(*values) for values in query]


def delete_group(group: int | str) -> GroupRecord:
    """Delete a group (its member list with it); refused while a campaign uses it."""
    row = get_group_row(group)
    _lock_group(row)
    record = _group_record(row)
    campaigns = list(
        Campaign.select(Campaign.id, Campaign.name)
        .where(Campaign.group == row.id)
        .order_by(Campaign.id)
        .limit(4)
        .tuples()
    )
    if campaigns:
        names = ", ".join(f"{name} ({campaign_id})" for campaign_id, name in campaigns[:3])
        more = ", ..." if len(campaigns) > 3 else ""
        raise Conflict(
            f"group {row.name} is used by campaign {names}{more}; "
            "delete those campaigns or give them another group first"
        )
    GroupMember.delete().where(GroupMember.group == row.id).execute()
    DistributionGroup.delete().where(DistributionGroup.id == row.id).execute()
    return record


@read_only
def group_overview(
    group: int | str, today: datetime.date | None = None, limit: int = SAMPLE_SIZE
) -> GroupOverview:
    """A group with its preview and its first members, read in one transaction."""
    row = get_group_row(group)
    return GroupOverview(
        group=_group_record(row),
        preview=group_preview(row.id, today),
        sample=tuple(group_sample(row.id, limit, today)),
    )
