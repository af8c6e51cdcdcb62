"""Store operations for folders, projects and default folders, and the messages filed
in them.

A folder (the CRM's "subject") belongs to a company within an organization; a project
belongs to an organization. A contact's default folder in an organization says where
mail to and from the contact is filed; the maintenance gives persons their employer's
folder by the rule of crm.defaultfolders.

A folder or project is named by what a person knows of it (`find_folders`): an int is an
id; a string all digits is the id of a stored folder or project; otherwise, or when none
has that id, those whose name is the text or whose company's name or external id is the
text (any case), else those whose name or company's name contains it.
"""

from __future__ import annotations

import datetime

import peewee

from atollon_mail.crm.defaultfolders import plan_default_folders
from atollon_mail.crm.records import (
    DefaultFolderChange,
    DefaultFolderRecord,
    DefaultFolderReport,
    FiledMessage,
    FolderMatches,
    FolderMessages,
    FolderRecord,
    MessageFilings,
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
from atollon_mail.store.contacts import (
    current_employment,
    default_folder_records,
    find_contact_row,
    get_organization_row,
)
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.mailboxes import viewable_mailbox_ids
from atollon_mail.store.models import (
    Contact,
    ContactContext,
    Context,
    Domain,
    Employment,
    Filing,
    Mailbox,
    Message,
    MessageType,
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


def folder_record(context: Context, is_company_default: bool = False) -> FolderRecord:
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
        is_company_default=is_company_default,
    )


def _company_defaults(contexts: list[Context]) -> set[int]:
    """Which of the folders are their company's default folder in their organization."""
    folder_ids = [context.id for context in contexts if context.company_id is not None]
    found: set[int] = set()
    for chunk in chunks(folder_ids):
        query = (
            ContactContext.select(ContactContext.folder)
            .join(Context, on=(ContactContext.folder == Context.id))
            .where(
                ContactContext.folder.in_(chunk)
                & (ContactContext.contact == Context.company)
                & (ContactContext.organization == Context.organization)
            )
        )
        found.update(folder_id for (folder_id,) in query.tuples())
    return found


def _folder_records(contexts: list[Context]) -> list[FolderRecord]:
    defaults = _company_defaults(contexts)
    return [folder_record(context, context.id in defaults) for context in contexts]


# --- finding a folder or project by what a person knows of it -------------------------

FOLDER_SEARCHED = "id, name, or company's name or external id"
_FOLDER_WORDS = {
    None: ("folder or project", "folders and projects"),
    "folder": ("folder", "folders"),
    "project": ("project", "projects"),
}


def _folder_conditions(text: str) -> list:
    exact = (
        same_text(Context.name, text)
        | same_text(Contact.name, text)
        | same_text(Contact.external_id, text)
    )
    partial = contains_text(Context.name, text) | contains_text(Contact.name, text)
    conditions = [exact, partial]
    if text.isdigit():
        conditions.insert(0, Context.id == int(text))
    return conditions


@read_only
def find_folders(
    text: str,
    organization: int | str | None = None,
    kind: str | None = None,
    limit: int = CANDIDATES_SHOWN,
) -> FolderMatches:
    """The folders and projects `text` names, best matches only (see the module's
    docstring), of the organization and kind when given: the first `limit` by id, and
    how many there are."""
    text = text.strip()
    if not text:
        raise Invalid(f"give a folder's or project's {FOLDER_SEARCHED}")
    query = _folder_query().where(Context.kind.in_(_kinds(kind)))
    if organization is not None:
        query = query.where(Context.organization == get_organization_row(organization).id)
    for condition in _folder_conditions(text):
        matching = query.where(condition)
        total = matching.count()
        if total:
            found = list(matching.order_by(Context.id).limit(limit))
            return FolderMatches(text, tuple(_folder_records(found)), total)
    return FolderMatches(text, (), 0)


def _kinds(kind: str | None) -> tuple[str, ...]:
    if kind is None:
        return ("folder", "project")
    if kind not in ("folder", "project"):
        raise Invalid(f"{kind!r} is not a kind of context here; use folder or project")
    return (kind,)


def folder_label(folder: FolderRecord) -> str:
    """A folder or project as a candidate is listed."""
    label = f"{folder.id} {folder.kind} {folder.name}"
    if folder.company_name is not None:
        label += f" of {folder.company_name}"
    if folder.organization_name is not None:
        label += f" ({folder.organization_name})"
    return label


def find_folder_row(
    reference: int | str, organization: int | str | None = None, kind: str | None = None
) -> Context:
    """The one folder or project a reference names: an int or a stored id as such (of
    any organization and kind: callers say why another does not fit), else by
    `find_folders` within the organization and kind given."""
    if isinstance(reference, int):
        return _get_context_row(reference)
    text = reference.strip()
    if text.isdigit():
        found = _folder_query().where(Context.id == int(text)).get_or_none()
        if found is not None and found.kind in ("folder", "project"):
            return found
    matches = find_folders(text, organization, kind)
    one, several = _FOLDER_WORDS[kind]
    if matches.total == 1:
        return _get_context_row(matches.folders[0].id)
    if not matches.total:
        where = ""
        if organization is not None:
            where = f" in {get_organization_row(organization).name}"
        raise no_match(one, text, FOLDER_SEARCHED + where, "see: folder list")
    labels = [folder_label(folder) for folder in matches.folders]
    raise several_match(
        several, text, labels, matches.total, "give the id or the whole name; see: folder list"
    )


def _name(name: str, kind: str) -> str:
    name = limited(name, 200, f"{kind}'s name")
    if not name:
        raise Invalid(f"a {kind} needs a name")
    return name


def add_folder(
    name: str, organization: int | str, company: int | str, default: bool = False
) -> FolderRecord:
    """A folder of a company within an organization (a company may have several);
    default: it becomes the company's default folder there (set by hand), the folder
    the default-folder maintenance gives the company's employees."""
    owner = get_organization_row(organization)
    company = find_contact_row(company, owner.id, kind="company")
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
    if default:
        _set_default(owner, company, context, None, None)
    return get_folder(context.id)


def make_company_default(folder: int | str, organization: int | str | None = None):
    """The folder becomes its company's default folder in its organization (set by hand;
    a project or activity already chosen for the company stays)."""
    context = find_folder_row(folder, organization, kind="folder")
    if context.kind != "folder" or context.company_id is None:
        raise Invalid(
            f"{context.kind} {context.id} ({context.name}) belongs to no company; "
            "give a folder of a company; see: folder list"
        )
    current = _default_folder(context.organization_id, context.company_id)
    return _set_default(
        context.organization,
        context.company,
        context,
        _row_or_none(current.project_id if current else None),
        current.activity if current else None,
    )


def _row_or_none(context_id: int | None) -> Context | None:
    return None if context_id is None else Context.get_by_id(context_id)


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
def get_folder(
    folder: int | str, organization: int | str | None = None, kind: str | None = None
) -> FolderRecord:
    """The one folder or project a reference names (see `find_folder_row`)."""
    return _folder_records([find_folder_row(folder, organization, kind)])[0]


@read_only
def list_folders(
    organization: int | str | None = None,
    company_id: int | str | None = None,
    kind: str | None = None,
) -> list[FolderRecord]:
    """Folders and projects of organizations (not users' own contexts), by id; of one
    company when given (its id, name, e-mail or external id)."""
    query = _folder_query().where(Context.organization.is_null(False)).order_by(Context.id)
    if organization is not None:
        query = query.where(Context.organization == get_organization_row(organization).id)
    if company_id is not None:
        company = find_contact_row(company_id, organization, kind="company")
        query = query.where(Context.company == company.id)
    if kind is not None:
        query = query.where(Context.kind.in_(_kinds(kind)))
    return _folder_records(list(query))


def _context_of(context_id: int | str, kind: str, organization: Organization) -> Context:
    context = find_folder_row(context_id, organization.id, kind)
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
    contact_id: int | str,
    organization: int | str,
    folder_id: int | str | None = None,
    project_id: int | str | None = None,
    activity: str | None = None,
) -> DefaultFolderRecord:
    """A contact's default folder and/or project in an organization, chosen by a person
    (source "manual": the maintenance never overwrites it). The folder and project must
    belong to that organization; the contact may be of another one (a contact has a
    default folder per organization). Each is named by id or as find_* finds it."""
    owner = get_organization_row(organization)
    contact = find_contact_row(contact_id)
    if folder_id is None and project_id is None:
        raise Invalid("give a folder or a project (or clear the default folder)")
    folder = _context_of(folder_id, "folder", owner) if folder_id is not None else None
    project = _context_of(project_id, "project", owner) if project_id is not None else None
    return _set_default(owner, contact, folder, project, activity)


def _set_default(
    owner: Organization,
    contact: Contact,
    folder: Context | None,
    project: Context | None,
    activity: str | None,
) -> DefaultFolderRecord:
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


def clear_default_folder(contact_id: int | str, organization: int | str) -> bool:
    """Forget the contact's default folder in the organization; False if there was none."""
    owner = get_organization_row(organization)
    contact = find_contact_row(contact_id)
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


# --- the messages filed in a folder or project ----------------------------------------


def _filed_messages(condition, order, limit: int | None, offset: int) -> list[tuple]:
    query = (
        Message.select(
            Message.id,
            Message.received_at,
            Message.date_header,
            Message.from_header,
            Message.envelope_sender,
            Message.subject,
            Message.size,
            MessageType.code,
        )
        .join(MessageType, peewee.JOIN.LEFT_OUTER, on=(Message.type == MessageType.id))
        .where(condition)
        .order_by(*order)
    )
    if limit is not None:
        query = query.limit(limit).offset(offset)
    return list(query.tuples())


def _mailbox_addresses(condition) -> dict[int, list[str]]:
    query = (
        Filing.select(Filing.message, Mailbox.local_part, Domain.name)
        .join(Mailbox, on=(Filing.mailbox == Mailbox.id))
        .join(Domain, on=(Mailbox.domain == Domain.id))
        .where(condition)
        .order_by(Filing.message, Mailbox.local_part, Domain.name)
        .tuples()
    )
    found: dict[int, list[str]] = {}
    for message_id, local_part, domain in query:
        address = f"{local_part}@{domain}"
        if address not in found.setdefault(message_id, []):
            found[message_id].append(address)
    return found


@read_only
def folder_messages(
    folder: int | str,
    organization: int | str | None = None,
    limit: int = 50,
    offset: int = 0,
    viewer: str | None = None,
) -> FolderMessages:
    """The messages filed in a folder or project (by any mailbox), newest first, each
    once with its message type and the mailboxes it is filed in there. With a viewer
    (a login): only what is filed there by mailboxes that user may view."""
    context = find_folder_row(folder, organization)
    filed_here = Filing.context == context.id
    if viewer is not None:
        viewable = viewable_mailbox_ids(viewer)
        if viewable is not None:
            filed_here &= Filing.mailbox.in_(viewable)
    in_context = Filing.select(Filing.message).where(filed_here)
    condition = Message.id.in_(in_context)
    total = Message.select().where(condition).count()
    rows = _filed_messages(
        condition, (Message.received_at.desc(), Message.id.desc()), limit, offset
    )
    ids = [row[0] for row in rows]
    mailboxes = _mailbox_addresses(filed_here & Filing.message.in_(ids))
    return FolderMessages(
        folder=_folder_records([context])[0],
        total=total,
        messages=tuple(
            FiledMessage(*row, mailboxes=tuple(mailboxes.get(row[0], ()))) for row in rows
        ),
    )


@read_only
def message_filings(message_id: int) -> MessageFilings:
    """A message, its type, and every mailbox and context it is filed in."""
    rows = _filed_messages(Message.id == message_id, (Message.id,), None, 0)
    if not rows:
        raise NotFound(f"no message with id {message_id}; see: messages list ADDRESS")
    query = (
        Filing.select(Mailbox.local_part, Domain.name, Context.kind, Context.id, Context.name)
        .join(Mailbox, on=(Filing.mailbox == Mailbox.id))
        .join(Domain, on=(Mailbox.domain == Domain.id))
        .switch(Filing)
        .join(Context, on=(Filing.context == Context.id))
        .where(Filing.message == message_id)
        .order_by(Filing.id)
        .tuples()
    )
    filings = tuple(
        (f"{local_part}@{domain}", kind, context_id, name)
        for local_part, domain, kind, context_id, name in query
    )
    mailboxes = tuple(dict.fromkeys(filing[0] for filing in filings))
    return MessageFilings(message=FiledMessage(*rows[0], mailboxes=mailboxes), filings=filings)
