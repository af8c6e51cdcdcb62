"""The default-folder rule: which folder each person of an organization gets from their
current primary employer. The store reads what the rule looks at and writes what it
decides; store.folders.setup_default_folders states the rule in full."""

from __future__ import annotations

import attrs

from atollon_mail.crm.records import DefaultFolderCase, DefaultFolderChange


@attrs.frozen
class DefaultFolderPlan:
    """What the rule decides for an organization's persons."""

    changes: tuple[DefaultFolderChange, ...]
    cases: tuple[DefaultFolderCase, ...]  # left for a person to decide
    kept_manual: int  # "manual" rows left as they are
    unchanged: int  # "employer" rows already right


def _folder_list(folders: list[tuple[int, str]]) -> str:
    return ", ".join(f"{name} ({folder_id})" for folder_id, name in folders)


def plan_default_folders(
    organization_name: str,
    persons: dict[int, str],
    rows: dict[int, tuple[int, int | None, str]],
    employers: dict[int, dict[int, str]],
    own_default: dict[int, tuple[int, str]],
    company_folders: dict[int, list[tuple[int, str]]],
) -> DefaultFolderPlan:
    """Each person's default folder by the rule, from what is stored:

    - persons: the organization's persons, id -> name.
    - rows: their default folders in the organization, person id -> (row id, folder id,
      source).
    - employers: person id -> {company id: company name}, current primary employments.
    - own_default: company id -> (folder id, folder name), the company's own default
      folder in the organization.
    - company_folders: company id -> [(folder id, folder name)], the company's folders in
      the organization by id.
    """
    changes: list[DefaultFolderChange] = []
    cases: list[DefaultFolderCase] = []
    kept_manual = unchanged = 0
    for person_id in sorted(persons):
        row = rows.get(person_id)
        if row is not None and row[2] == "manual":
            kept_manual += 1
            continue
        name = persons[person_id]
        companies = employers.get(person_id, {})
        target: tuple[int, str] | None = None
        employer: tuple[int, str] | None = None
        folders: list[tuple[int, str]] = []
        if not companies:
            reason = "no-employer"
            why = "no current primary employer"
        elif len(companies) > 1:
            reason = "several-employers"
            names = ", ".join(f"{companies[cid]} ({cid})" for cid in sorted(companies))
            why = f"{len(companies)} current primary employers: {names}; keep one primary"
        else:
            ((company_id, company_name),) = companies.items()
            employer = (company_id, company_name)
            folders = company_folders.get(company_id, [])
            target = own_default.get(company_id)
            if target is None and len(folders) == 1:
                target = folders[0]
            if target is None and not folders:
                reason = "no-folder"
                why = f"employer {company_name} ({company_id}) has no folder in {organization_name}"
            elif target is None:
                reason = "several-folders"
                why = (
                    f"employer {company_name} ({company_id}) has {len(folders)} folders in "
                    f"{organization_name} and no default folder to choose: {_folder_list(folders)}"
                )
        if target is None:
            note = ""
            if row is not None:
                kept = f"folder {row[1]}" if row[1] is not None else "row (no folder)"
                note = f"its default {kept} from an earlier run is left as it is"
                why += f"; {note}"
            cases.append(
                DefaultFolderCase(
                    contact_id=person_id,
                    contact_name=name,
                    why=why,
                    reason=reason,
                    company_id=employer[0] if employer else None,
                    company_name=employer[1] if employer else None,
                    folders=tuple(folders),
                    note=note,
                )
            )
        elif row is not None and row[1] == target[0]:
            unchanged += 1
        else:
            changes.append(
                DefaultFolderChange(
                    contact_id=person_id,
                    contact_name=name,
                    previous_folder_id=None if row is None else row[1],
                    folder_id=target[0],
                    folder_name=target[1],
                )
            )
    return DefaultFolderPlan(
        changes=tuple(changes), cases=tuple(cases), kept_manual=kept_manual, unchanged=unchanged
    )
