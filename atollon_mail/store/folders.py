"""Store operations for folders, projects and default folders.

A folder (the CRM's "subject") belongs to a company within an organization; a project
belongs to an organization. A contact's default folder in an organization says where
mail to and from the contact is filed; the maintenance gives persons their employer's
folder by the rule of crm.defaultfolders.
"""

from __future__ import annotations

import datetime

import peewee

from atollon_mail.crm.defaultfolders import plan_default_folders
from atollon_mail.crm.records import (
    DefaultFolderChange,
    DefaultFolderRecord,
    DefaultFolderReport,
    FolderRecord,
)
from atollon_mail.store.common import chunks, create, limited, read_only
from atollon_mail.store.contacts import (
    current_employment,
    default_folder_records,
    get_contact_row,
    get_organization_row,
)
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.models import (
    Contact,
    ContactContext,
    Context,
    Employment,
    Organization,
    utc_now,
)

# Longest activity text of a default folder (the column's size).
ACTIVITY_LIMIT = 200


def _folder_query():
    return (
        Context.select(Context, Organization, Contact)
        .join(Organization, peewee.JOIN.LEFT_OUTER, on=(Context.organization == Organization.id))
        .switch(Context)
        .join(Contact, peewee.JOIN.LEFT_OUTER, on=(Context.company == Contact.id))
    )


def folder_record(context: Context) -> FolderRecord:
    organization = context.organization if context.organization_id is not None else None
    company = context.company if context.company_id is not None else None
    return FolderRecord(
        id=context.id,
        kind=context.kind,
        name=context.name,
        organization_id=context.organization_id,
        organization_name=organization.name if organization else None,
        company_id=context.company_id,
        company_name=company.name if company else None,
    )


def _name(name: str, kind: str) -> str:
    name = limited(name, 200, f"{kind}'s name")
    if not name:
        raise Invalid(f"a {kind} needs a name")
    return name


def add_folder(name: str, organization: int | str, company_id: int) -> FolderRecord:
    """A folder of a company within an organization (a company may have several)."""
    owner = get_organization_row(organization)
    company = get_contact_row(company_id)
    if company.kind != "company":
        raise Invalid(
            f"contact {company.id} ({company.name}) is a person; folders belong to companies"
        )
    if company.organization_id != owner.id:
        raise Invalid(
            f"company {company.id} ({company.name}) belongs to organization "
            f"{company.organization.name}, not {owner.name}"
        )
    context = Context.create(
        kind="folder",
        name=_name(name, "folder"),
        owner=None,
        organization=owner.id,
        company=company.id,
        created_at=utc_now(),
    )
    return get_folder(context.id)


def add_project(name: str, organization: int | str) -> FolderRecord:
    owner = get_organization_row(organization)
    context = Context.create(
        kind="project",
        name=_name(name, "project"),
        owner=None,
        organization=owner.id,
        company=None,
        created_at=utc_now(),
    )
    return get_folder(context.id)


def _get_context_row(context_id: int) -> Context:
    found = _folder_query().where(Context.id == context_id).get_or_none()
    if found is None or found.kind not in ("folder", "project"):
        raise NotFound(f"no folder or project with id {context_id}; see: folder list")
    return found


@read_only
def get_folder(folder_id: int) -> FolderRecord:
    return folder_record(_get_context_row(folder_id))


@read_only
def list_folders(
    organization: int | str | None = None,
    company_id: int | None = None,
    kind: str | None = None,
) -> list[FolderRecord]:
    """Folders and projects of organizations (not users' own contexts), by id."""
    query = _folder_query().where(Context.organization.is_null(False)).order_by(Context.id)
    if organization is not None:
        query = query.where(Context.organization == get_organization_row(organization).id)
    if company_id is not None:
        query = query.where(Context.company == get_contact_row(company_id).id)
    if kind is not None:
        if kind not in ("folder", "project"):
            raise Invalid(f"{kind!r} is not a kind of context here; use folder or project")
        query = query.where(Context.kind == kind)
    return [folder_record(context) for context in query]


def _context_of(context_id: int, kind: str, organization: Organization) -> Context:
    context = _get_context_row(context_id)
    if context.kind != kind:
        raise Invalid(f"{context.id} ({context.name}) is a {context.kind}, not a {kind}")
    if context.organization_id != organization.id:
        raise Invalid(
            f"{kind} {context.id} ({context.name}) does not belong to organization "
            f"{organization.name}; see: folder list --organization {organization.id}"
        )
    return context


def _default_folder(organization_id: int, contact_id: int) -> DefaultFolderRecord | None:
    found = default_folder_records(
        (ContactContext.organization == organization_id) & (ContactContext.contact == contact_id)
    )
    return found[0] if found else None


def set_default_folder(
    contact_id: int,
    organization: int | str,
    folder_id: int | None = None,
    project_id: int | None = None,
    activity: str | None = None,
) -> DefaultFolderRecord:
    """A contact's default folder and/or project in an organization, chosen by a person
    (source "manual": the maintenance never overwrites it). The folder and project must
    belong to that organization; the contact may be of another one (a contact has a
    default folder per organization)."""
    owner = get_organization_row(organization)
    contact = get_contact_row(contact_id)
    if folder_id is None and project_id is None:
        raise Invalid("give a folder or a project (or clear the default folder)")
    folder = _context_of(folder_id, "folder", owner) if folder_id is not None else None
    project = _context_of(project_id, "project", owner) if project_id is not None else None
    activity = limited(activity or "", ACTIVITY_LIMIT, "activity") or None
    values = {
        ContactContext.folder: folder.id if folder else None,
        ContactContext.project: project.id if project else None,
        ContactContext.activity: activity,
        ContactContext.source: "manual",
        ContactContext.updated_at: utc_now(),
    }
    updated = (
        ContactContext.update(values)
        .where((ContactContext.organization == owner.id) & (ContactContext.contact == contact.id))
        .execute()
    )
    if not updated:
        create(
            ContactContext,
            f"the default folder of contact {contact.id} in {owner.name} was set at the same "
            "time by someone else; look at it and set it again",
            organization=owner.id,
            contact=contact.id,
            **{field.name: value for field, value in values.items()},
        )
    return _default_folder(owner.id, contact.id)


def clear_default_folder(contact_id: int, organization: int | str) -> bool:
    """Forget the contact's default folder in the organization; False if there was none."""
    owner = get_organization_row(organization)
    contact = get_contact_row(contact_id)
    removed = (
        ContactContext.delete()
        .where((ContactContext.organization == owner.id) & (ContactContext.contact == contact.id))
        .execute()
    )
    return bool(removed)


# --- the default-folder maintenance ---------------------------------------------------


def setup_default_folders(
    organization: int | str, today: datetime.date | None = None, dry_run: bool = False
) -> DefaultFolderReport:
    """Give each person of the organization their current primary employer's folder as
    default folder (the CRM's "Setup default main contact", done right).

    The rule, for each person of the organization:

    - A default folder set by hand (source "manual") is kept as it is.
    - Only current primary employments count: valid_from empty or on/before the day
      judged at (today, UTC, unless given), valid_to empty or on/after it. Several
      current primary employers: listed as ambiguous. None: listed as missing.
    - The employer's folder is (1) the company's own default folder in the
      organization, if that has a folder, else (2) the company's only folder in the
      organization. Several folders and no default folder to choose, or no folder at
      all: listed, with the company's folders.
    - A person without a default folder gets the employer's folder (source
      "employer"); an "employer" row pointing elsewhere is moved to it. When the rule
      gives no folder, an existing "employer" row is left as it is and listed.

    Running it twice changes nothing the second time. A dry run reports what would
    change and writes nothing. Everything happens in one transaction.
    """
    owner = get_organization_row(organization)
    today = today or datetime.datetime.now(datetime.UTC).date()
    persons = dict(
        Contact.select(Contact.id, Contact.name)
        .where((Contact.organization == owner.id) & (Contact.kind == "person"))
        .tuples()
    )
    rows = {
        contact_id: (row_id, folder_id, source)
        for row_id, contact_id, folder_id, source in ContactContext.select(
            ContactContext.id, ContactContext.contact, ContactContext.folder, ContactContext.source
        )
        .join(Contact, on=(ContactContext.contact == Contact.id))
        .where((ContactContext.organization == owner.id) & (Contact.kind == "person"))
        .tuples()
    }
    company = Contact.alias("company")
    employers: dict[int, dict[int, str]] = {}
    for person_id, company_id, company_name in (
        Employment.select(Employment.person, Employment.company, company.name)
        .join(Contact, on=(Employment.person == Contact.id))
        .switch(Employment)
        .join(company, on=(Employment.company == company.id))
        .where(
            (Contact.organization == owner.id)
            & (Contact.kind == "person")
            & (Employment.is_primary == True)  # noqa: E712 (peewee expression)
            & current_employment(today)
        )
        .tuples()
    ):
        employers.setdefault(person_id, {})[company_id] = company_name
    company_ids = {
        company_id
        for companies in employers.values()
        if len(companies) == 1
        for company_id in companies
    }
    own_default: dict[int, tuple[int, str]] = {}
    company_folders: dict[int, list[tuple[int, str]]] = {}
    folder = Context.alias("folder")
    for chunk in chunks(sorted(company_ids)):
        for company_id, folder_id, folder_name in (
            ContactContext.select(ContactContext.contact, folder.id, folder.name)
            .join(folder, on=(ContactContext.folder == folder.id))
            .where((ContactContext.organization == owner.id) & ContactContext.contact.in_(chunk))
            .tuples()
        ):
            own_default[company_id] = (folder_id, folder_name)
        for folder_id, folder_name, company_id in (
            Context.select(Context.id, Context.name, Context.company)
            .where(
                (Context.kind == "folder")
                & (Context.organization == owner.id)
                & Context.company.in_(chunk)
            )
            .order_by(Context.id)
            .tuples()
        ):
            company_folders.setdefault(company_id, []).append((folder_id, folder_name))

    plan = plan_default_folders(owner.name, persons, rows, employers, own_default, company_folders)
    changes = plan.changes
    created = [change for change in changes if change.contact_id not in rows]
    if not dry_run:
        _apply_default_folders(owner, changes, rows)
    return DefaultFolderReport(
        organization_id=owner.id,
        organization_name=owner.name,
        today=today,
        dry_run=dry_run,
        set=len(created),
        changed=len(changes) - len(created),
        unchanged=plan.unchanged,
        kept_manual=plan.kept_manual,
        changes=changes,
        cases=plan.cases,
    )


def _apply_default_folders(
    owner: Organization,
    changes: tuple[DefaultFolderChange, ...],
    rows: dict[int, tuple[int, int | None, str]],
) -> None:
    now = utc_now()
    new_rows = [
        (owner.id, change.contact_id, change.folder_id, "employer", now)
        for change in changes
        if change.contact_id not in rows
    ]
    for chunk in chunks(new_rows):
        ContactContext.insert_many(
            chunk,
            fields=[
                ContactContext.organization,
                ContactContext.contact,
                ContactContext.folder,
                ContactContext.source,
                ContactContext.updated_at,
            ],
        ).execute()
    # One UPDATE per target folder: a company's employees move together.
    moved: dict[int, list[int]] = {}
    for change in changes:
        if change.contact_id in rows:
            moved.setdefault(change.folder_id, []).append(rows[change.contact_id][0])
    for folder_id, row_ids in moved.items():
        for chunk in chunks(row_ids):
            ContactContext.update(
                {ContactContext.folder: folder_id, ContactContext.updated_at: now}
            ).where(ContactContext.id.in_(chunk)).execute()


def setup_default_folders_everywhere(
    today: datetime.date | None = None, dry_run: bool = False
) -> list[DefaultFolderReport]:
    """The maintenance for every organization, in one transaction."""
    return [
        setup_default_folders(organization.id, today=today, dry_run=dry_run)
        for organization in Organization.select().order_by(Organization.name)
    ]
