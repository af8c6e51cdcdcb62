"""Dynamic distribution groups: a filter kept as JSON and turned into a peewee query.

Users choose among these fields only; the query is built by peewee with bound
parameters, so no text a user typed ever becomes SQL.
"""

from __future__ import annotations

import datetime
import json

import attrs
import peewee

from atollon_mail.store.errors import Invalid
from atollon_mail.store.models import (
    CONTACT_KINDS,
    Contact,
    DistributionGroup,
    Employment,
    GroupMember,
)


@attrs.frozen
class GroupFilter:
    """Which contacts a dynamic group holds; every set field must match (AND).

    - organization_id: contacts of this organization.
    - kinds: "person" and/or "company".
    - languages: preferred languages (ISO 639-1 codes; "" matches contacts with none).
    - has_email: True, only contacts with an address; False, only those without.
    - company_ids: persons employed at one of these companies (current employments only
      when employment_current is True), and those companies themselves when kinds allows.
    - employment_current: True, persons with an employment valid today (valid_from not in
      the future, valid_to not in the past); False, persons with none.
    - primary_only: with company_ids or employment_current, count primary employments only.
    """

    organization_id: int | None = None
    kinds: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    has_email: bool | None = None
    company_ids: tuple[int, ...] = ()
    employment_current: bool | None = None
    primary_only: bool = False

    def __attrs_post_init__(self):
        for kind in self.kinds:
            if kind not in CONTACT_KINDS:
                raise Invalid(f"unknown contact kind {kind!r}; use person or company")

    def to_json(self) -> str:
        # Fields left at their default are left out; has_email=False and
        # employment_current=False are choices, so they are kept.
        values = {
            field.name: getattr(self, field.name)
            for field in attrs.fields(type(self))
            if getattr(self, field.name) != field.default
        }
        return json.dumps(
            {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in values.items()
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> GroupFilter:
        try:
            values = json.loads(text or "{}")
        except ValueError:
            raise Invalid("the group's filter is not valid JSON") from None
        if not isinstance(values, dict):
            raise Invalid("the group's filter must be a JSON object")
        known = {field.name for field in attrs.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise Invalid(f"unknown filter fields: {', '.join(sorted(unknown))}")
        for key in ("kinds", "languages", "company_ids"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def current_employment(today: datetime.date):
    """The condition on Employment: valid on `today` (from and to are inclusive)."""
    return ((Employment.valid_from.is_null()) | (Employment.valid_from <= today)) & (
        (Employment.valid_to.is_null()) | (Employment.valid_to >= today)
    )


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
