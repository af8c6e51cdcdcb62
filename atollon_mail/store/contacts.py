"""Store operations for organizations, contacts and employments (the values are checked
by crm.normalize).

An organization is named by its name or its id: an int is an id; a string is a name, or
an id when it is all digits and no organization has that name.
"""

from __future__ import annotations

import datetime

import peewee

from atollon_mail.crm.normalize import (
    check_employment_dates,
    contact_names,
    normalize_email,
    normalize_kind,
    normalize_language,
)
from atollon_mail.crm.records import (
    ContactDetail,
    ContactRecord,
    DefaultFolderRecord,
    EmploymentRecord,
    OrganizationRecord,
)
from atollon_mail.store.common import create, limited, read_only
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.models import (
    Contact,
    ContactContext,
    Context,
    Employment,
    Organization,
    utc_now,
)

# --- lookups --------------------------------------------------------------------------


def get_organization_row(organization: int | str) -> Organization:
    if isinstance(organization, int):
        found = Organization.get_or_none(Organization.id == organization)
    else:
        text = organization.strip()
        found = Organization.get_or_none(Organization.name == text)
        if found is None and text.isdigit():
            found = Organization.get_or_none(Organization.id == int(text))
    if found is None:
        raise NotFound(
            f"no organization {organization}; see: organization list, or add it: organization add"
        )
    return found


def get_contact_row(contact_id: int) -> Contact:
    found = (
        Contact.select(Contact, Organization)
        .join(Organization)
        .where(Contact.id == contact_id)
        .get_or_none()
    )
    if found is None:
        raise NotFound(f"no contact with id {contact_id}; see: contacts list")
    return found


def organization_record(organization: Organization) -> OrganizationRecord:
    return OrganizationRecord(id=organization.id, name=organization.name)


def contact_record(contact: Contact) -> ContactRecord:
    return ContactRecord(
        id=contact.id,
        organization_id=contact.organization_id,
        organization_name=contact.organization.name,
        kind=contact.kind,
        external_id=contact.external_id,
        name=contact.name,
        first_name=contact.first_name,
        last_name=contact.last_name,
        email=contact.email,
        language=contact.language,
    )


# --- organizations --------------------------------------------------------------------


def add_organization(name: str, now: datetime.datetime | None = None) -> OrganizationRecord:
    name = limited(name, 200, "organization's name")
    if not name:
        raise Invalid("an organization needs a name")
    if name.isdigit():
        raise Invalid(f"{name!r} would read as an id; give the organization a name with letters")
    if Organization.select().where(Organization.name == name).exists():
        raise Conflict(f"organization {name} exists already")
    organization = create(
        Organization,
        f"organization {name} exists already",
        name=name,
        created_at=now or utc_now(),
    )
    return organization_record(organization)


@read_only
def list_organizations() -> list[OrganizationRecord]:
    return [organization_record(o) for o in Organization.select().order_by(Organization.name)]


@read_only
def get_organization(organization: int | str) -> OrganizationRecord:
    return organization_record(get_organization_row(organization))


# --- contacts -------------------------------------------------------------------------


def add_contact(
    organization: int | str,
    kind: str,
    *,
    name: str = "",
    first_name: str = "",
    last_name: str = "",
    email: str = "",
    language: str = "",
    external_id: str | None = None,
    now: datetime.datetime | None = None,
) -> ContactRecord:
    """A person or a company of the organization's CRM."""
    owner = get_organization_row(organization)
    kind = normalize_kind(kind)
    name, first_name, last_name = contact_names(kind, name, first_name, last_name)
    if external_id is not None:
        external_id = limited(external_id, 100, "external id") or None
    conflict = f"organization {owner.name} has a contact with external id {external_id} already"
    if (
        external_id is not None
        and Contact.select()
        .where((Contact.organization == owner.id) & (Contact.external_id == external_id))
        .exists()
    ):
        raise Conflict(conflict)
    now = now or utc_now()
    contact = create(
        Contact,
        conflict,
        organization=owner.id,
        kind=kind,
        external_id=external_id,
        name=name,
        first_name=first_name,
        last_name=last_name,
        email=normalize_email(email),
        language=normalize_language(language),
        created_at=now,
        updated_at=now,
    )
    contact.organization = owner
    return contact_record(contact)


@read_only
def get_contact(contact_id: int) -> ContactRecord:
    return contact_record(get_contact_row(contact_id))


@read_only
def list_contacts(
    organization: int | str | None = None,
    language: str | None = None,
    limit: int | None = 100,
    offset: int = 0,
) -> list[ContactRecord]:
    """Contacts by id; language "" lists those without a language."""
    query = Contact.select(Contact, Organization).join(Organization).order_by(Contact.id)
    if organization is not None:
        query = query.where(Contact.organization == get_organization_row(organization).id)
    if language is not None:
        query = query.where(Contact.language == normalize_language(language))
    if limit is not None:
        query = query.limit(limit).offset(offset)
    return [contact_record(contact) for contact in query]


@read_only
def count_contacts(organization: int | str | None = None) -> int:
    query = Contact.select()
    if organization is not None:
        query = query.where(Contact.organization == get_organization_row(organization).id)
    return query.count()


def employment_records(where) -> tuple[EmploymentRecord, ...]:
    person = Contact.alias("person")
    company = Contact.alias("company")
    query = (
        Employment.select(
            Employment.id,
            Employment.person,
            person.name,
            Employment.company,
            company.name,
            Employment.is_primary,
            Employment.valid_from,
            Employment.valid_to,
        )
        .join(person, on=(Employment.person == person.id))
        .switch(Employment)
        .join(company, on=(Employment.company == company.id))
        .where(where)
        .order_by(Employment.id)
        .tuples()
    )
    return tuple(EmploymentRecord(*row) for row in query)


def default_folder_records(where) -> tuple[DefaultFolderRecord, ...]:
    folder = Context.alias("folder")
    project = Context.alias("project")
    query = (
        ContactContext.select(
            ContactContext.organization,
            Organization.name,
            ContactContext.contact,
            ContactContext.folder,
            folder.name,
            ContactContext.project,
            project.name,
            ContactContext.activity,
            ContactContext.source,
        )
        .join(Organization)
        .switch(ContactContext)
        .join(folder, peewee.JOIN.LEFT_OUTER, on=(ContactContext.folder == folder.id))
        .switch(ContactContext)
        .join(project, peewee.JOIN.LEFT_OUTER, on=(ContactContext.project == project.id))
        .where(where)
        .order_by(Organization.name, ContactContext.contact)
        .tuples()
    )
    return tuple(DefaultFolderRecord(*row) for row in query)


@read_only
def contact_detail(contact_id: int) -> ContactDetail:
    """A contact with their employments (as person or as company) and default folders."""
    contact = get_contact_row(contact_id)
    return ContactDetail(
        contact=contact_record(contact),
        employments=employment_records(
            (Employment.person == contact.id) | (Employment.company == contact.id)
        ),
        default_folders=default_folder_records(ContactContext.contact == contact.id),
    )


# --- employments ----------------------------------------------------------------------


def current_employment(today: datetime.date):
    """The condition on Employment: valid on `today` (from and to are inclusive)."""
    return ((Employment.valid_from.is_null()) | (Employment.valid_from <= today)) & (
        (Employment.valid_to.is_null()) | (Employment.valid_to >= today)
    )


def add_employment(
    person_id: int,
    company_id: int,
    is_primary: bool = True,
    valid_from: datetime.date | None = None,
    valid_to: datetime.date | None = None,
) -> EmploymentRecord:
    """A person's employment at a company of the same organization."""
    person = get_contact_row(person_id)
    company = get_contact_row(company_id)
    if person.kind != "person":
        raise Invalid(f"contact {person.id} ({person.name}) is a company; give a person")
    if company.kind != "company":
        raise Invalid(f"contact {company.id} ({company.name}) is a person; give a company")
    if person.organization_id != company.organization_id:
        raise Invalid(
            f"{person.name} ({person.organization.name}) and {company.name} "
            f"({company.organization.name}) belong to different organizations"
        )
    check_employment_dates(valid_from, valid_to)
    employment = Employment.create(
        person=person.id,
        company=company.id,
        is_primary=is_primary,
        valid_from=valid_from,
        valid_to=valid_to,
        created_at=utc_now(),
    )
    return EmploymentRecord(
        id=employment.id,
        person_id=person.id,
        person_name=person.name,
        company_id=company.id,
        company_name=company.name,
        is_primary=is_primary,
        valid_from=valid_from,
        valid_to=valid_to,
    )
