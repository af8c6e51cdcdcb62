"""Frozen records of the CRM: what crosses from the store's threads back to the caller."""

from __future__ import annotations

import datetime

import attrs

from atollon_mail.crm.filters import GroupFilter


@attrs.frozen
class OrganizationRecord:
    id: int
    name: str


@attrs.frozen
class ContactRecord:
    id: int
    organization_id: int
    organization_name: str
    kind: str  # person | company
    external_id: str | None
    name: str
    first_name: str
    last_name: str
    email: str  # lower-cased; "" when the contact has none
    language: str  # ISO 639-1, lower-case; "" when unknown


@attrs.frozen
class EmploymentRecord:
    id: int
    person_id: int
    person_name: str
    company_id: int
    company_name: str
    is_primary: bool
    valid_from: datetime.date | None
    valid_to: datetime.date | None


@attrs.frozen
class EmploymentChange:
    """An employment added or made primary, and the person's employments that stopped
    being primary for it (a person has one primary employer)."""

    employment: EmploymentRecord
    no_longer_primary: tuple[EmploymentRecord, ...]


@attrs.frozen
class ContactMatches:
    """The contacts a text names (see store.contacts.find_contacts): the first few by id,
    how many there are, and the persons' current employers."""

    text: str
    contacts: tuple[ContactRecord, ...]
    employers: dict[int, str]  # person id -> name of a current employer, primary first
    total: int


@attrs.frozen
class FolderRecord:
    """A folder (of a company, within an organization) or a project (of an organization)."""

    id: int
    kind: str  # folder | project
    name: str
    organization_id: int | None
    organization_name: str | None
    company_id: int | None
    company_name: str | None
    # The folder is its company's default folder in its organization.
    is_company_default: bool = False


@attrs.frozen
class FolderMatches:
    """The folders and projects a text names (see store.folders.find_folders)."""

    text: str
    folders: tuple[FolderRecord, ...]  # the first few by id
    total: int


@attrs.frozen
class FiledMessage:
    """A message as a folder's listing shows it, with the mailboxes it is filed in."""

    id: int
    received_at: datetime.datetime
    date_header: str | None
    from_header: str | None
    envelope_sender: str
    subject: str | None
    size: int
    type_code: str | None
    mailboxes: tuple[str, ...]


@attrs.frozen
class FolderMessages:
    """A page of the messages filed in a folder or project, newest first."""

    folder: FolderRecord
    total: int
    messages: tuple[FiledMessage, ...]


@attrs.frozen
class MessageFilings:
    """One message and every mailbox and context (folder, project, To Do) it is filed in."""

    message: FiledMessage
    filings: tuple[tuple[str, str, int, str], ...]  # (mailbox, context kind, id, name)


@attrs.frozen
class DefaultFolderRecord:
    """A contact's default folder (and project, activity) in one organization."""

    organization_id: int
    organization_name: str
    contact_id: int
    folder_id: int | None
    folder_name: str | None
    project_id: int | None
    project_name: str | None
    activity: str | None
    source: str  # manual | employer


@attrs.frozen
class ContactDetail:
    contact: ContactRecord
    employments: tuple[EmploymentRecord, ...]
    default_folders: tuple[DefaultFolderRecord, ...]


@attrs.frozen
class DefaultFolderChange:
    """One default folder the maintenance sets (previous None) or changes."""

    contact_id: int
    contact_name: str
    previous_folder_id: int | None
    folder_id: int
    folder_name: str


# Why the maintenance leaves a person to decide (DefaultFolderCase.reason), in the order
# they are reported, with what each says.
CASE_REASONS = {
    "no-employer": "no current primary employer",
    "several-employers": "several current primary employers",
    "no-folder": "the employer has no folder",
    "several-folders": "the employer has several folders and no default folder",
}


@attrs.frozen
class DefaultFolderCase:
    """A contact the maintenance leaves alone for a person to decide, and why: the
    reason (a key of CASE_REASONS), the employer it concerns (the last two reasons) and
    that employer's folders, what is left as it is, and the whole story in words."""

    contact_id: int
    contact_name: str
    why: str
    reason: str = "no-employer"
    company_id: int | None = None
    company_name: str | None = None
    folders: tuple[tuple[int, str], ...] = ()
    note: str = ""  # what is left as it is ("" when the person had no default folder)


@attrs.frozen
class DefaultFolderReport:
    organization_id: int
    organization_name: str
    today: datetime.date
    dry_run: bool
    set: int  # persons that had no default folder and got one
    changed: int  # "employer" rows now pointing at another folder
    unchanged: int  # "employer" rows already right
    kept_manual: int  # "manual" rows left as they are
    changes: tuple[DefaultFolderChange, ...]
    cases: tuple[DefaultFolderCase, ...]


@attrs.frozen
class GroupRecord:
    id: int
    name: str
    kind: str  # static | dynamic
    organization_id: int | None
    organization_name: str | None
    filter: GroupFilter | None  # dynamic groups only
    description: str  # the filter (or "listed contacts") in words, for people


@attrs.frozen
class GroupPreview:
    total: int
    by_language: dict[str, int]  # "" is the key of contacts without a language
    without_address: int
    with_address: int


@attrs.frozen
class MemberRecord:
    id: int
    kind: str
    name: str
    email: str
    language: str


@attrs.frozen
class MembersChange:
    group: GroupRecord
    added: int
    removed: int
    already: int  # asked to add, but members already
    absent: int  # asked to remove, but not members


@attrs.frozen
class ImportProblem:
    line: int  # the file's line number (the header is line 1)
    column: str  # the column's name; "" when the problem is the whole line
    why: str


@attrs.frozen
class ImportReport:
    created: int
    updated: int
    unchanged: int
    employments: int  # employments added or changed
    problems: tuple[ImportProblem, ...]  # not empty: nothing was written


@attrs.frozen
class GroupSummary:
    group: GroupRecord
    members: int


@attrs.frozen
class GroupOverview:
    """A group's page: the group, its counts and its first members."""

    group: GroupRecord
    preview: GroupPreview
    sample: tuple[MemberRecord, ...]


@attrs.frozen
class ContactMessage:
    """A message from or to a contact's address, as the contact's page lists it: one
    mailbox the reader may view it in (for the link) and whether the contact sent it."""

    id: int
    received_at: datetime.datetime
    from_header: str | None
    subject: str | None
    size: int
    mailbox_address: str
    from_contact: bool  # the contact's address is among its senders
    to_contact: bool  # and/or among its recipients


@attrs.frozen
class ContactMail:
    """A page of a contact's messages, newest first, and how many there are."""

    address: str  # the contact's address searched ("" when the contact has none)
    total: int
    messages: tuple[ContactMessage, ...]


@attrs.frozen
class CampaignMail:
    """What a campaign sent (or is sending) a contact, and where that stands."""

    campaign_id: int
    campaign_name: str
    campaign_status: str
    address: str
    state: str  # values.RECIPIENT_STATES
    uncertain: bool
    attempts: int
    last_reply: str | None
    sent_at: datetime.datetime | None
    updated_at: datetime.datetime


@attrs.frozen
class ContactGroup:
    """A distribution group a contact is listed in (static) or matched by (dynamic)."""

    id: int
    name: str
    kind: str  # static | dynamic


@attrs.frozen
class MessageContext:
    """A context a message is filed in within one mailbox."""

    id: int
    kind: str  # todo | folder | project
    name: str
    is_crm: bool  # a folder or project of an organization (it has a messages page)


@attrs.frozen
class FiledInto:
    """The result of filing a message into a folder or project: `filed` False when it
    was filed there already (nothing changed)."""

    folder: FolderRecord
    filed: bool
