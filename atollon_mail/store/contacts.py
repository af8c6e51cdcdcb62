"""Store operations for organizations, contacts and employments (the values are checked
by crm.normalize).

An organization is named by its name or its id: an int is an id; a string is a name, or
an id when it is all digits and no organization has that name.

A contact is named by what a person knows of it (`find_contacts`): an int is an id; a
string all digits is the id of a stored contact; otherwise, or when no contact has that
id, the contacts whose external id, e-mail or name is the text (any case), else those
whose name contains it. One match is the contact; none or several
are refused with a line naming what was searched or listing the candidates.
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
    ContactMatches,
    ContactRecord,
    DefaultFolderRecord,
    EmploymentChange,
    EmploymentRecord,
    OrganizationRecord,
)
from atollon_mail.store.common import (
    CANDIDATES_SHOWN,
    chunks,
    contains_text,
    create,
    limited,
    no_match,
    read_only,
    same_text,
    several_match,
)
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.models import (
    Contact,
    ContactContext,
    Context,
    Employment,
    Organization,
    database_proxy,
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


def _contact_query():
    return Contact.select(Contact, Organization).join(Organization)


def get_contact_row(contact_id: int) -> Contact:
    found = _contact_query().where(Contact.id == contact_id).get_or_none()
    if found is None:
        raise NotFound(f"no contact with id {contact_id}; see: contacts list")
    return found


# What a contact is found by, and the words for a kind of contact (None: either kind).
CONTACT_SEARCHED = "id, external id, e-mail or name"
_CONTACT_WORDS = {
    None: ("contact", "contacts"),
    "person": ("person", "persons"),
    "company": ("company", "companies"),
}
_CONTACT_HINT = "give the id, the e-mail or the external id; see: contacts list --search TEXT"


def _match_conditions(text: str) -> list:
    """The conditions on Contact a text is tried against, best first."""
    exact = (
        same_text(Contact.external_id, text)
        | (Contact.email == text.lower())
        | same_text(Contact.name, text)
    )
    # Part of a name only: a part of an address or an id would name a contact by chance.
    conditions = [exact, contains_text(Contact.name, text)]
    if text.isdigit():
        conditions.insert(0, Contact.id == int(text))
    return conditions


@read_only
def find_contacts(
    text: str,
    organization: int | str | None = None,
    kind: str | None = None,
    limit: int = CANDIDATES_SHOWN,
) -> ContactMatches:
    """The contacts `text` names, best matches only (see the module's docstring), of the
    organization and kind when given: the first `limit` by id, and how many there are."""
    text = text.strip()
    if not text:
        raise Invalid(f"give a contact's {CONTACT_SEARCHED}")
    query = _contact_query()
    if organization is not None:
        query = query.where(Contact.organization == get_organization_row(organization).id)
    if kind is not None:
        query = query.where(Contact.kind == normalize_kind(kind))
    for condition in _match_conditions(text):
        matching = query.where(condition)
        total = matching.count()
        if total:
            found = [contact_record(row) for row in matching.order_by(Contact.id).limit(limit)]
            persons = [contact.id for contact in found if contact.kind == "person"]
            return ContactMatches(text, tuple(found), employer_names(persons), total)
    return ContactMatches(text, (), {}, 0)


def contact_label(contact: ContactRecord, employer: str | None = None) -> str:
    """A contact as a candidate is listed: id, name, e-mail, employer or kind."""
    label = f"{contact.id} {contact.name}"
    if contact.email:
        label += f" <{contact.email}>"
    if contact.kind == "company":
        return label + " (company)"
    return label + (f" at {employer}" if employer else "")


def find_contact_row(
    reference: int | str, organization: int | str | None = None, kind: str | None = None
) -> Contact:
    """The one contact a reference names: an int or a stored id as such (of any
    organization and kind: callers say why another does not fit), else by
    `find_contacts` within the organization and kind given."""
    if isinstance(reference, int):
        return get_contact_row(reference)
    text = reference.strip()
    if text.isdigit():
        found = _contact_query().where(Contact.id == int(text)).get_or_none()
        if found is not None:
            return found
    matches = find_contacts(text, organization, kind)
    one, several = _CONTACT_WORDS[kind]
    if matches.total == 1:
        return get_contact_row(matches.contacts[0].id)
    if not matches.total:
        where = ""
        if organization is not None:
            where = f" in {get_organization_row(organization).name}"
        raise no_match(one, text, CONTACT_SEARCHED + where, "see: contacts list --search TEXT")
    labels = [
        contact_label(contact, matches.employers.get(contact.id)) for contact in matches.contacts
    ]
    raise several_match(several, text, labels, matches.total, _CONTACT_HINT)


def employer_names(person_ids: list[int], today: datetime.date | None = None) -> dict[int, str]:
    """Each person's current employer's name (a primary employment first)."""
    today = today or utc_now().date()
    company = Contact.alias("company")
    found: dict[int, str] = {}
    for chunk in chunks(sorted(set(person_ids))):
        query = (
            Employment.select(Employment.person, company.name)
            .join(company, on=(Employment.company == company.id))
            .where(Employment.person.in_(chunk) & current_employment(today))
            .order_by(Employment.is_primary.desc(), Employment.id)
            .tuples()
        )
        for person_id, name in query:
            found.setdefault(person_id, name)
    return found


@read_only
def current_employers(person_ids: list[int]) -> dict[int, str]:
    """Each person's current employer's name (a primary employment first), for lists."""
    return employer_names(person_ids)


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


def update_contact(
    contact: int | str,
    *,
    name: str = "",
    first_name: str = "",
    last_name: str = "",
    email: str = "",
    language: str = "",
    external_id: str | None = None,
    now: datetime.datetime | None = None,
) -> ContactRecord:
    """A contact's details, as `add_contact` checks them (its organization and kind stay:
    employments, folders and groups hang on them); every field is set as given."""
    row = find_contact_row(contact)
    name, first_name, last_name = contact_names(row.kind, name, first_name, last_name)
    if external_id is not None:
        external_id = limited(external_id, 100, "external id") or None
    conflict = (
        f"organization {row.organization.name} has a contact with external id {external_id} already"
    )
    if (
        external_id is not None
        and Contact.select()
        .where(
            (Contact.organization == row.organization_id)
            & (Contact.external_id == external_id)
            & (Contact.id != row.id)
        )
        .exists()
    ):
        raise Conflict(conflict)
    values = {
        Contact.name: name,
        Contact.first_name: first_name,
        Contact.last_name: last_name,
        Contact.email: normalize_email(email),
        Contact.language: normalize_language(language),
        Contact.external_id: external_id,
        Contact.updated_at: now or utc_now(),
    }
    try:
        with database_proxy.atomic():  # a savepoint keeps the transaction usable
            Contact.update(values).where(Contact.id == row.id).execute()
    except peewee.IntegrityError:
        raise Conflict(conflict) from None
    return contact_record(get_contact_row(row.id))


@read_only
def get_contact(
    contact: int | str, organization: int | str | None = None, kind: str | None = None
) -> ContactRecord:
    """The one contact a reference names (see `find_contact_row`)."""
    return contact_record(find_contact_row(contact, organization, kind))


def search_condition(text: str, today: datetime.date | None = None):
    """The condition on Contact: the text is in its name, e-mail or external id, or in
    the name of a company it works at now (any case)."""
    text = text.strip()
    company = Contact.alias("company")
    at_company = (
        Employment.select(Employment.person)
        .join(company, on=(Employment.company == company.id))
        .where(contains_text(company.name, text) & current_employment(today or utc_now().date()))
    )
    return (
        contains_text(Contact.name, text)
        | contains_text(Contact.email, text)
        | contains_text(Contact.external_id, text)
        | Contact.id.in_(at_company)
    )


def _listed(
    organization: int | str | None, language: str | None, search: str | None
) -> peewee.Select:
    query = _contact_query()
    if organization is not None:
        query = query.where(Contact.organization == get_organization_row(organization).id)
    if language is not None:
        query = query.where(Contact.language == normalize_language(language))
    if search is not None and search.strip():
        query = query.where(search_condition(search))
    return query


@read_only
def list_contacts(
    organization: int | str | None = None,
    language: str | None = None,
    limit: int | None = 100,
    offset: int = 0,
    search: str | None = None,
) -> list[ContactRecord]:
    """Contacts by id; language "" lists those without a language; `search` keeps those
    whose name, e-mail, external id or current employer's name contains it (any case)."""
    query = _listed(organization, language, search).order_by(Contact.id)
    if limit is not None:
        query = query.limit(limit).offset(offset)
    return [contact_record(contact) for contact in query]


@read_only
def count_contacts(
    organization: int | str | None = None,
    language: str | None = None,
    search: str | None = None,
) -> int:
    return _listed(organization, language, search).count()


def employment_records(
    where, limit: int | None = None, offset: int = 0
) -> tuple[EmploymentRecord, ...]:
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
    if limit is not None:
        query = query.limit(limit).offset(offset)
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
def contact_detail(contact: int | str) -> ContactDetail:
    """A contact with their employments (as person or as company) and default folders."""
    contact = find_contact_row(contact)
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


def _employment_record(employment: Employment, person: Contact, company: Contact):
    return EmploymentRecord(
        id=employment.id,
        person_id=person.id,
        person_name=person.name,
        company_id=company.id,
        company_name=company.name,
        is_primary=employment.is_primary,
        valid_from=employment.valid_from,
        valid_to=employment.valid_to,
    )


def _person_and_company(
    person: int | str, company: int | str | None, organization: int | str | None = None
) -> tuple[Contact, Contact | None]:
    person_row = find_contact_row(person, organization, kind="person")
    if person_row.kind != "person":
        raise Invalid(f"contact {person_row.id} ({person_row.name}) is a company; give a person")
    if company is None:
        return person_row, None
    company_row = find_contact_row(company, person_row.organization_id, kind="company")
    if company_row.kind != "company":
        raise Invalid(f"contact {company_row.id} ({company_row.name}) is a person; give a company")
    if person_row.organization_id != company_row.organization_id:
        raise Invalid(
            f"{person_row.name} ({person_row.organization.name}) and {company_row.name} "
            f"({company_row.organization.name}) belong to different organizations"
        )
    return person_row, company_row


def _not_ended(today: datetime.date):
    return Employment.valid_to.is_null() | (Employment.valid_to >= today)


def _demote_others(person: Contact, kept_id: int, today: datetime.date):
    """The person's other primary employments that have not ended stop being primary."""
    others = (
        Employment.select()
        .where(
            (Employment.person == person.id)
            & (Employment.id != kept_id)
            & (Employment.is_primary == True)  # noqa: E712 (peewee expression)
            & _not_ended(today)
        )
        .order_by(Employment.id)
    )
    demoted = []
    for employment in others:
        employment.is_primary = False
        demoted.append(employment)
    if demoted:
        Employment.update(is_primary=False).where(
            Employment.id.in_([employment.id for employment in demoted])
        ).execute()
    return demoted


def _records_of(employments, person: Contact) -> tuple[EmploymentRecord, ...]:
    companies = {
        row.id: row
        for row in Contact.select().where(
            Contact.id.in_(sorted({employment.company_id for employment in employments}))
        )
    }
    return tuple(
        _employment_record(employment, person, companies[employment.company_id])
        for employment in employments
    )


def add_employment(
    person: int | str,
    company: int | str,
    is_primary: bool | None = True,
    valid_from: datetime.date | None = None,
    valid_to: datetime.date | None = None,
    sole_primary: bool = False,
    today: datetime.date | None = None,
    organization: int | str | None = None,
) -> EmploymentRecord:
    """A person's employment at a company of the same organization.

    is_primary None: primary when the person has no primary employment that has not
    ended. sole_primary: the person's other primary employments that have not ended stop
    being primary (`add_job` reports which)."""
    return add_job(
        person, company, is_primary, valid_from, valid_to, sole_primary, today, organization
    ).employment


def add_job(
    person: int | str,
    company: int | str,
    is_primary: bool | None = None,
    valid_from: datetime.date | None = None,
    valid_to: datetime.date | None = None,
    sole_primary: bool = True,
    today: datetime.date | None = None,
    organization: int | str | None = None,
) -> EmploymentChange:
    """`add_employment`, with the employments that stopped being primary for it. Names
    are looked for in the organization when given."""
    today = today or utc_now().date()
    person_row, company_row = _person_and_company(person, company, organization)
    check_employment_dates(valid_from, valid_to)
    if is_primary is None:
        is_primary = not (
            Employment.select()
            .where(
                (Employment.person == person_row.id)
                & (Employment.is_primary == True)  # noqa: E712 (peewee expression)
                & _not_ended(today)
            )
            .exists()
        )
    employment = Employment.create(
        person=person_row.id,
        company=company_row.id,
        is_primary=is_primary,
        valid_from=valid_from,
        valid_to=valid_to,
        created_at=utc_now(),
    )
    demoted = (
        _demote_others(person_row, employment.id, today) if is_primary and sole_primary else []
    )
    return EmploymentChange(
        employment=_employment_record(employment, person_row, company_row),
        no_longer_primary=_records_of(demoted, person_row),
    )


def _employment_label(employment: Employment, company: Contact) -> str:
    since = employment.valid_from or "-"
    until = employment.valid_to or "-"
    primary = ", primary" if employment.is_primary else ""
    return f"at {company.name} ({company.id}) from {since} to {until}{primary}"


def _one_employment(
    person: int | str,
    company: int | str | None,
    started: datetime.date | None,
    today: datetime.date,
    organization: int | str | None = None,
) -> tuple[Employment, Contact, Contact]:
    """The employment a person, a company and a start day name. Without a company or a
    start: of the person's employments (at that company) those that have not ended, or
    if none has, all of them; one is it, several are listed."""
    person_row, company_row = _person_and_company(person, company, organization)
    condition = Employment.person == person_row.id
    if company_row is not None:
        condition &= Employment.company == company_row.id
    if started is not None:
        condition &= Employment.valid_from == started
    found = list(Employment.select().where(condition).order_by(Employment.id))
    if len(found) > 1:
        open_ones = [
            employment
            for employment in found
            if employment.valid_to is None or employment.valid_to >= today
        ]
        found = open_ones or found
    at = f" at {company_row.name}" if company_row is not None else ""
    since = f" starting {started}" if started is not None else ""
    if not found:
        raise NotFound(
            f"{person_row.name} ({person_row.id}) has no employment{at}{since}; "
            f"see: employment list --person {person_row.id}"
        )
    companies = {
        row.id: row
        for row in Contact.select().where(
            Contact.id.in_(sorted({employment.company_id for employment in found}))
        )
    }
    if len(found) > 1:
        labels = [_employment_label(job, companies[job.company_id]) for job in found]
        raise several_match(
            "employments",
            f"{person_row.name}{at}",
            labels[:CANDIDATES_SHOWN],
            len(found),
            "give the company, and --started DATE when it is the same company",
        )
    employment = found[0]
    return employment, person_row, companies[employment.company_id]


def make_primary(
    person: int | str,
    company: int | str | None = None,
    started: datetime.date | None = None,
    today: datetime.date | None = None,
    organization: int | str | None = None,
) -> EmploymentChange:
    """The named employment becomes the person's primary one; their other primary
    employments that have not ended stop being primary."""
    today = today or utc_now().date()
    employment, person_row, company_row = _one_employment(
        person, company, started, today, organization
    )
    if employment.valid_to is not None and employment.valid_to < today:
        raise Invalid(
            f"{person_row.name}'s employment at {company_row.name} ended on "
            f"{employment.valid_to}; an ended employment is not made primary"
        )
    if not employment.is_primary:
        Employment.update(is_primary=True).where(Employment.id == employment.id).execute()
        employment.is_primary = True
    demoted = _demote_others(person_row, employment.id, today)
    return EmploymentChange(
        employment=_employment_record(employment, person_row, company_row),
        no_longer_primary=_records_of(demoted, person_row),
    )


def end_employment(
    person: int | str,
    company: int | str | None = None,
    on: datetime.date | None = None,
    started: datetime.date | None = None,
    today: datetime.date | None = None,
    organization: int | str | None = None,
) -> EmploymentRecord:
    """The named employment ends on `on` (its last day, default today); the person and
    the company stay. Their default folder follows at the next default-folder run."""
    today = today or utc_now().date()
    on = on or today
    employment, person_row, company_row = _one_employment(
        person, company, started, today, organization
    )
    if employment.valid_from is not None and on < employment.valid_from:
        raise Invalid(
            f"the employment of {person_row.name} at {company_row.name} starts on "
            f"{employment.valid_from}; give an end on or after it"
        )
    Employment.update(valid_to=on).where(Employment.id == employment.id).execute()
    employment.valid_to = on
    return _employment_record(employment, person_row, company_row)


@read_only
def list_employments(
    person: int | str | None = None,
    company: int | str | None = None,
    organization: int | str | None = None,
    current: bool | None = None,
    today: datetime.date | None = None,
    limit: int | None = 100,
    offset: int = 0,
) -> tuple[EmploymentRecord, ...]:
    """Employments by id: of a person, at a company, in an organization; current True:
    valid today only, False: ended or not yet started only."""
    condition = Employment.id.is_null(False)
    if person is not None:
        person_row, _ = _person_and_company(person, None, organization)
        condition &= Employment.person == person_row.id
    if company is not None:
        company_row = find_contact_row(company, organization, kind="company")
        if company_row.kind != "company":
            raise Invalid(
                f"contact {company_row.id} ({company_row.name}) is a person; give a company"
            )
        condition &= Employment.company == company_row.id
    if organization is not None:
        owner = get_organization_row(organization)
        condition &= Employment.person.in_(
            Contact.select(Contact.id).where(Contact.organization == owner.id)
        )
    if current is not None:
        valid = current_employment(today or utc_now().date())
        condition &= valid if current else ~valid
    return employment_records(condition, limit, offset)
