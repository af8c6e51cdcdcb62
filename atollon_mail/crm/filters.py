"""Dynamic distribution groups: a filter kept as JSON, and said in words.

Users choose among these fields only; the store turns a filter into a query
(store.groups.filter_condition), built by peewee with bound parameters, so no text a
user typed ever becomes SQL.
"""

from __future__ import annotations

import json

import attrs

from atollon_mail.crm.normalize import CONTACT_KINDS
from atollon_mail.store.errors import Invalid


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


def describe_filter(
    spec: GroupFilter, organization_name: str | None, company_names: dict[int, str]
) -> str:
    """The filter in words, one line: "persons of Acme; language cs or (none); ..."."""
    kinds = {("person",): "persons", ("company",): "companies"}.get(
        tuple(sorted(set(spec.kinds))), "persons and companies"
    )
    parts = [kinds if organization_name is None else f"{kinds} of {organization_name}"]
    if spec.languages:
        languages = " or ".join(language or "(none)" for language in spec.languages)
        parts.append(f"language {languages}")
    if spec.has_email is True:
        parts.append("with an e-mail address")
    elif spec.has_email is False:
        parts.append("without an e-mail address")
    primary = "primary " if spec.primary_only else ""
    if spec.company_ids:
        companies = ", ".join(
            f"{company_names.get(company_id, '?')} ({company_id})"
            for company_id in spec.company_ids
        )
        if spec.employment_current is False:
            parts.append(f"persons with no current {primary}employment at {companies}")
        else:
            when = "current " if spec.employment_current else ""
            words = f"{when}{primary}employment"
            article = "an" if words[0] in "aeiou" else "a"
            parts.append(f"{companies} and persons with {article} {words} there")
    elif spec.employment_current is True:
        parts.append(f"with a current {primary}employment")
    elif spec.employment_current is False:
        parts.append(f"persons with no current {primary}employment")
    return "; ".join(parts)
