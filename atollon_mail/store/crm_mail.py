"""Store operations joining the CRM and the mail: a contact's messages and campaign mail,
the groups a contact is in, and filing a message into folders and projects.

Whose mail is shown is decided here, by the rule of every mail page
(mailboxes.user_rights): a message appears only through a mailbox its reader may view.
"""

from __future__ import annotations

import datetime

import peewee

from atollon_mail.crm.records import (
    CampaignMail,
    ContactGroup,
    ContactMail,
    ContactMessage,
    FiledInto,
    MessageContext,
)
from atollon_mail.store.common import changes_mailbox, read_only
from atollon_mail.store.contacts import find_contact_row
from atollon_mail.store.errors import NotFound
from atollon_mail.store.filing import FILED_COPY_FLAG, execute_prepared, lock_mailboxes
from atollon_mail.store.folders import find_folder_row, get_folder
from atollon_mail.store.groups import members_query
from atollon_mail.store.mailboxes import get_mailbox_row, viewable_mailbox_ids
from atollon_mail.store.message_addresses import FROM
from atollon_mail.store.models import (
    Campaign,
    CampaignRecipient,
    Contact,
    Context,
    DistributionGroup,
    Domain,
    Filing,
    GroupMember,
    Mailbox,
    Message,
    MessageAddress,
    utc_now,
)
from atollon_mail.store.values import INBOX

# --- a contact's mail -------------------------------------------------------------------


def _viewable_filing(viewer: str):
    """The condition on Filing: in a mailbox the viewer may view."""
    viewable = viewable_mailbox_ids(viewer)
    return Filing.id.is_null(False) if viewable is None else Filing.mailbox.in_(viewable)


@read_only
def contact_messages(
    contact: int | str, viewer: str, limit: int = 50, offset: int = 0
) -> ContactMail:
    """The messages from or to the contact's address filed in mailboxes the viewer (a
    login) may view, newest first, each once; found by message_address's index."""
    row = find_contact_row(contact)
    address = row.email
    if not address:
        return ContactMail(address="", total=0, messages=())
    viewable = _viewable_filing(viewer)
    of_contact = MessageAddress.select(MessageAddress.message).where(
        MessageAddress.address == address
    )
    seen_here = Filing.select(Filing.id).where((Filing.message == Message.id) & viewable)
    condition = Message.id.in_(of_contact) & peewee.fn.EXISTS(seen_here)
    total = Message.select().where(condition).count()
    rows = list(
        Message.select(
            Message.id, Message.received_at, Message.from_header, Message.subject, Message.size
        )
        .where(condition)
        .order_by(Message.received_at.desc(), Message.id.desc())
        .limit(limit)
        .offset(offset)
        .tuples()
    )
    ids = [message_id for message_id, *_ in rows]
    roles: dict[int, set[str]] = {}
    for message_id, role in (
        MessageAddress.select(MessageAddress.message, MessageAddress.role)
        .where(MessageAddress.message.in_(ids) & (MessageAddress.address == address))
        .tuples()
    ):
        roles.setdefault(message_id, set()).add(role)
    where: dict[int, str] = {}
    for message_id, local_part, domain in (
        Filing.select(Filing.message, Mailbox.local_part, Domain.name)
        .join(Mailbox, on=(Filing.mailbox == Mailbox.id))
        .join(Domain, on=(Mailbox.domain == Domain.id))
        .where(Filing.message.in_(ids) & viewable)
        .order_by(Filing.id)
        .tuples()
    ):
        where.setdefault(message_id, f"{local_part}@{domain}")
    messages = tuple(
        ContactMessage(
            id=message_id,
            received_at=received_at,
            from_header=from_header,
            subject=subject,
            size=size,
            mailbox_address=where[message_id],
            from_contact=FROM in roles.get(message_id, ()),
            to_contact=bool(roles.get(message_id, set()) - {FROM}),
        )
        for message_id, received_at, from_header, subject, size in rows
    )
    return ContactMail(address=address, total=total, messages=messages)


@read_only
def contact_campaign_mail(contact: int | str, limit: int = 50) -> tuple[CampaignMail, ...]:
    """What campaigns sent the contact (newest campaign first) and where each stands."""
    row = find_contact_row(contact)
    query = (
        CampaignRecipient.select(
            Campaign.id,
            Campaign.name,
            Campaign.status,
            CampaignRecipient.address,
            CampaignRecipient.state,
            CampaignRecipient.uncertain,
            CampaignRecipient.attempts,
            CampaignRecipient.last_reply,
            CampaignRecipient.sent_at,
            CampaignRecipient.updated_at,
        )
        .join(Campaign, on=(CampaignRecipient.campaign == Campaign.id))
        .where(CampaignRecipient.contact == row.id)
        .order_by(Campaign.created_at.desc(), Campaign.id.desc())
        .limit(limit)
        .tuples()
    )
    return tuple(CampaignMail(*values) for values in query)


@read_only
def contact_groups(
    contact: int | str, today: datetime.date | None = None
) -> tuple[ContactGroup, ...]:
    """The groups the contact is in: the static groups listing it, the dynamic groups
    whose filter matches it now; by name."""
    row = find_contact_row(contact)
    found = []
    for group in DistributionGroup.select().order_by(DistributionGroup.name):
        if group.organization_id not in (None, row.organization_id):
            continue
        if group.kind == "static":
            member = (
                GroupMember.select()
                .where((GroupMember.group == group.id) & (GroupMember.contact == row.id))
                .exists()
            )
        else:
            member = members_query(group, today).where(Contact.id == row.id).exists()
        if member:
            found.append(ContactGroup(group.id, group.name, group.kind))
    return tuple(found)


# --- filing a message into folders and projects -----------------------------------------


def _filings_here(mailbox: Mailbox, message_id: int) -> list[Filing]:
    found = list(
        Filing.select()
        .where((Filing.mailbox == mailbox.id) & (Filing.message == message_id))
        .order_by(Filing.id)
    )
    if not found:
        raise NotFound(f"no message {message_id} in {mailbox.local_part}@{mailbox.domain.name}")
    return found


@changes_mailbox
def file_into(mailbox_address: str, message_id: int, folder: int | str) -> FiledInto:
    """File a message of this mailbox into a folder or project as well: a new filing in
    the mailbox with that context (the mailbox's next uid, the flags it has there), the
    bytes stored once still. Filed there already: nothing changes (`filed` False).
    NotFound when the message is not filed in this mailbox, or there is no such folder
    or project of an organization."""
    mailbox = get_mailbox_row(mailbox_address)
    context = find_folder_row(folder)
    if context.organization_id is None:
        # A user's own folder (context add --owner) is no CRM folder to file into.
        raise NotFound(f"no folder or project {folder} of an organization; see: folder list")
    # Locked first (PostgreSQL): two filings of one message run one after the other, and
    # the second finds the first.
    lock_mailboxes([mailbox.id])
    filings = _filings_here(mailbox, message_id)
    record = get_folder(context.id)
    if any(filing.context_id == context.id for filing in filings):
        return FiledInto(folder=record, filed=False)
    (next_uid,) = execute_prepared("next_uid", (mailbox.id,)).fetchone()
    Filing.create(
        message=message_id,
        mailbox=mailbox.id,
        context=context.id,
        uid=next_uid - 1,
        flags=" ".join(
            [name for name in filings[0].flags.split() if name != FILED_COPY_FLAG]
            + [FILED_COPY_FLAG]
        ),
        filed_at=utc_now(),
        folder=INBOX,
    )
    return FiledInto(folder=record, filed=True)


@read_only
def message_contexts(mailbox_address: str, message_id: int) -> tuple[MessageContext, ...]:
    """The contexts a message is filed in within this mailbox, in the order it was
    filed; NotFound when it is not filed here."""
    mailbox = get_mailbox_row(mailbox_address)
    query = (
        Context.select(Context.id, Context.kind, Context.name, Context.organization)
        .join(Filing, on=(Filing.context == Context.id))
        .where((Filing.mailbox == mailbox.id) & (Filing.message == message_id))
        .order_by(Filing.id)
        .tuples()
    )
    found: dict[int, MessageContext] = {}
    for context_id, kind, name, organization_id in query:
        found.setdefault(
            context_id, MessageContext(context_id, kind, name, organization_id is not None)
        )
    if not found:
        raise NotFound(f"no message {message_id} in {mailbox.local_part}@{mailbox.domain.name}")
    return tuple(found.values())
