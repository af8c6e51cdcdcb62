"""Store operations for campaigns (mass mail): the campaign and its language variants, the
preview, and the checks a draft passes before it is sent. Its send list and the state
changes that make, hand over and take back that list live in sendlists.py; what happens
to each recipient (progress, delivery outcomes, bounces, unsubscribes, the suppression
list) lives in campaign_recipients.py.

Campaign states: draft -> running <-> paused; running -> finished (nothing left to send);
draft, running or paused -> cancelled; finished -> running again when failed recipients
are retried.
"""

from __future__ import annotations

import datetime
import re

from peewee import fn

from atollon_mail.massmail.templates import (
    SAMPLE_FIELDS,
    TemplateProblem,
    check_variant,
    contact_fields,
    render_variant,
)
from atollon_mail.store import groups as group_ops
from atollon_mail.store import identities, message_types
from atollon_mail.store import mailboxes as mailbox_ops
from atollon_mail.store.campaign_records import (
    CampaignRecord,
    NewCampaignChoices,
    RenderedPreview,
    VariantRecord,
)
from atollon_mail.store.common import limited, locked, read_only
from atollon_mail.store.contacts import get_organization_row
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.groups import get_group_row, members_query
from atollon_mail.store.mailboxes import get_mailbox_row
from atollon_mail.store.models import (
    Campaign,
    CampaignRecipient,
    CampaignVariant,
    Contact,
    DistributionGroup,
    Domain,
    Employment,
    Mailbox,
    MessageType,
    utc_now,
)

_LANGUAGE = re.compile(r"^[a-z]{2}$")
_NAME_LIMIT = 200
_SUBJECT_LIMIT = 998

# Recipients still to be sent: a running campaign with none of these is finished.
PENDING_STATES = ("queued", "sending", "deferred")


# --- normalisation --------------------------------------------------------------------


def normalize_language(language: str) -> str:
    code = language.strip().lower()
    if not _LANGUAGE.match(code):
        raise Invalid(f"{language!r} is not a language code; give two letters (ISO 639-1), like en")
    return code


def _today(now: datetime.datetime) -> datetime.date:
    return now.date()


# --- looking things up ----------------------------------------------------------------


def _get_type(code: str | None) -> MessageType | None:
    if code is None:
        return MessageType.get_or_none(MessageType.default_outgoing == True)  # noqa: E712
    wanted = code.strip().lower()
    found = MessageType.get_or_none(MessageType.code == wanted)
    if found is None:
        raise NotFound(f"no message type {wanted}; see: message-type list")
    if not found.active:
        raise Invalid(f"message type {wanted} is inactive; activate it or choose another")
    return found


def _active_mailbox(address: str) -> Mailbox:
    mailbox = get_mailbox_row(address)
    if not mailbox.active:
        raise Invalid(
            f"the mailbox {mailbox.local_part}@{mailbox.domain.name} is inactive; "
            "activate it or send from another"
        )
    return mailbox


def get_campaign_row(campaign_id: int, lock: bool = False) -> Campaign:
    query = Campaign.select().where(Campaign.id == campaign_id)
    # Locked: state changes of one campaign (start, pause, the sender's finish) run one
    # at a time, each seeing the state the previous one left.
    campaign = (locked(query) if lock else query).first()
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}; see: massmail list")
    return campaign


def campaign_variants(campaign_id: int) -> dict[str, CampaignVariant]:
    query = (
        CampaignVariant.select()
        .where(CampaignVariant.campaign == campaign_id)
        .order_by(CampaignVariant.language)
    )
    return {variant.language: variant for variant in query}


# --- records --------------------------------------------------------------------------


def campaign_records(campaigns: list[Campaign]) -> list[CampaignRecord]:
    if not campaigns:
        return []
    ids = [campaign.id for campaign in campaigns]
    variants: dict[int, list[VariantRecord]] = {}
    query = (
        CampaignVariant.select(
            CampaignVariant.campaign,
            CampaignVariant.language,
            CampaignVariant.subject,
            CampaignVariant.body,
        )
        .where(CampaignVariant.campaign.in_(ids))
        .order_by(CampaignVariant.language)
        .tuples()
    )
    for campaign_id, language, subject, body in query:
        variants.setdefault(campaign_id, []).append(VariantRecord(language, subject, body))
    group_ids = {campaign.group_id for campaign in campaigns}
    groups = dict(
        DistributionGroup.select(DistributionGroup.id, DistributionGroup.name)
        .where(DistributionGroup.id.in_(list(group_ids)))
        .tuples()
    )
    mailbox_ids = {campaign.mailbox_id for campaign in campaigns}
    mailboxes = {
        mailbox_id: f"{local}@{domain}"
        for mailbox_id, local, domain in Mailbox.select(Mailbox.id, Mailbox.local_part, Domain.name)
        .join(Domain)
        .where(Mailbox.id.in_(list(mailbox_ids)))
        .tuples()
    }
    type_ids = {campaign.type_id for campaign in campaigns if campaign.type_id is not None}
    types = (
        dict(
            MessageType.select(MessageType.id, MessageType.code)
            .where(MessageType.id.in_(list(type_ids)))
            .tuples()
        )
        if type_ids
        else {}
    )
    return [
        CampaignRecord(
            id=campaign.id,
            name=campaign.name,
            status=campaign.status,
            group_id=campaign.group_id,
            group_name=groups[campaign.group_id],
            mailbox_address=mailboxes[campaign.mailbox_id],
            type_code=types.get(campaign.type_id),
            organization_id=campaign.organization_id,
            fallback_language=campaign.fallback_language,
            variants=tuple(variants.get(campaign.id, ())),
            created_at=campaign.created_at,
            started_at=campaign.started_at,
            finished_at=campaign.finished_at,
        )
        for campaign in campaigns
    ]


def campaign_record(campaign: Campaign) -> CampaignRecord:
    [record] = campaign_records([campaign])
    return record


# --- campaigns and variants -----------------------------------------------------------


def create_campaign(
    name: str,
    group: int | str,
    mailbox_address: str,
    fallback_language: str,
    type_code: str | None = None,
    organization: int | str | None = None,
    now: datetime.datetime | None = None,
) -> CampaignRecord:
    """A draft campaign: the group it goes to, the mailbox it is sent from (its identity
    and signature), its message type and the language of contacts without a variant."""
    now = now or utc_now()
    name = limited(name, _NAME_LIMIT, "campaign name")
    if not name:
        raise Invalid("a campaign needs a name")
    group_row = get_group_row(group)
    mailbox = _active_mailbox(mailbox_address)
    fallback = normalize_language(fallback_language)
    kind = _get_type(type_code)
    if organization is not None:
        organization_id = get_organization_row(organization).id
    else:
        organization_id = group_row.organization_id
    campaign = Campaign.create(
        name=name,
        group=group_row.id,
        mailbox=mailbox.id,
        type=kind.id if kind is not None else None,
        organization=organization_id,
        fallback_language=fallback,
        status="draft",
        created_at=now,
        started_at=None,
        finished_at=None,
        updated_at=now,
    )
    return campaign_record(campaign)


@read_only
def get_campaign(campaign_id: int) -> CampaignRecord:
    return campaign_record(get_campaign_row(campaign_id))


@read_only
def list_campaigns() -> list[CampaignRecord]:
    """Every campaign, the newest first."""
    query = Campaign.select().order_by(Campaign.created_at.desc(), Campaign.id.desc())
    return campaign_records(list(query))


def _editable(campaign: Campaign) -> None:
    if campaign.status not in ("draft", "paused"):
        raise Conflict(
            f"campaign {campaign.id} is {campaign.status}; its texts change only while it "
            f"is a draft or paused (pause it first: massmail pause {campaign.id})"
        )


def set_variant(
    campaign_id: int,
    language: str,
    subject: str,
    body: str,
    now: datetime.datetime | None = None,
) -> CampaignRecord:
    """The subject and body sent to contacts in one language (added or replaced).

    A variant that cannot render for a contact with every merge field is refused, so a
    missing field is found here rather than half-way through sending."""
    now = now or utc_now()
    campaign = get_campaign_row(campaign_id, lock=True)
    _editable(campaign)
    code = normalize_language(language)
    subject = subject.strip()
    if len(subject) > _SUBJECT_LIMIT:
        raise Invalid(f"the subject is longer than {_SUBJECT_LIMIT} characters")
    problem = check_variant(subject, body)
    if problem is not None:
        raise Invalid(f"the {code} variant cannot be sent: {problem}")
    updated = (
        CampaignVariant.update(subject=subject, body=body, updated_at=now)
        .where((CampaignVariant.campaign == campaign.id) & (CampaignVariant.language == code))
        .execute()
    )
    if not updated:
        # The campaign row is locked, so no one else adds this language meanwhile.
        CampaignVariant.create(
            campaign=campaign.id, language=code, subject=subject, body=body, updated_at=now
        )
    Campaign.update(updated_at=now).where(Campaign.id == campaign.id).execute()
    return campaign_record(campaign)


def remove_variant(campaign_id: int, language: str) -> CampaignRecord:
    """Remove a language's variant (draft or paused); a paused campaign keeps every
    variant its send list still uses."""
    campaign = get_campaign_row(campaign_id, lock=True)
    _editable(campaign)
    code = normalize_language(language)
    variant = CampaignVariant.get_or_none(
        (CampaignVariant.campaign == campaign.id) & (CampaignVariant.language == code)
    )
    if variant is None:
        raise NotFound(
            f"campaign {campaign.id} has no {code} variant; see: massmail show {campaign.id}"
        )
    in_use = (
        CampaignRecipient.select()
        .where((CampaignRecipient.campaign == campaign.id) & (CampaignRecipient.language == code))
        .count()
    )
    if in_use:
        raise Conflict(
            f"{in_use} recipients of campaign {campaign.id} get the {code} variant; change it "
            f"instead: massmail variant {campaign.id} {code} --subject ... --body-file FILE"
        )
    CampaignVariant.delete().where(CampaignVariant.id == variant.id).execute()
    Campaign.update(updated_at=utc_now()).where(Campaign.id == campaign.id).execute()
    return campaign_record(campaign)


# --- preview --------------------------------------------------------------------------


def _primary_employer_name(person_id: int, today: datetime.date) -> str | None:
    """The name of the company a person works for now as their primary employment."""
    Company = Contact.alias()
    found = (
        Employment.select(Company.name)
        .join(Company, on=(Employment.company == Company.id))
        .where(
            (Employment.person == person_id)
            & (Employment.is_primary == True)  # noqa: E712
            & (Employment.valid_from.is_null() | (Employment.valid_from <= today))
            & (Employment.valid_to.is_null() | (Employment.valid_to >= today))
        )
        .order_by(Employment.id)
        .tuples()
        .first()
    )
    return found[0] if found else None


def _member_fields(
    contact: Contact, language: str, today: datetime.date, unsubscribe_url: str
) -> dict[str, str]:
    employer = _primary_employer_name(contact.id, today) if contact.kind == "person" else None
    return contact_fields(
        first_name=contact.first_name,
        last_name=contact.last_name,
        name=contact.name,
        email=contact.email,
        language=language,
        company=employer,
        unsubscribe_url=unsubscribe_url,
    )


def _rendered(
    language: str,
    variant: CampaignVariant | None,
    fields: dict[str, str],
    recipients: int,
    contact: Contact | None,
    fallback: str,
    campaign_id: int,
) -> RenderedPreview:
    subject = body = error = None
    if variant is None:
        error = (
            f"no variant in the fallback language {fallback}; add one: "
            f"massmail variant {campaign_id} {fallback} --subject ... --body-file FILE"
        )
    else:
        try:
            subject, body = render_variant(variant.subject, variant.body, fields)
        except TemplateProblem as problem:
            error = str(problem)
    return RenderedPreview(
        language=language,
        contact_id=contact.id if contact is not None else None,
        address=contact.email if contact is not None else None,
        subject=subject,
        body=body,
        error=error,
        recipients=recipients,
    )


def render_previews(
    campaign: Campaign, today: datetime.date, unsubscribe_url: str
) -> list[RenderedPreview]:
    variants = campaign_variants(campaign.id)
    fallback = campaign.fallback_language
    members = members_query(campaign.group, today).where(Contact.email != "")
    # The members the send list will hold: one per address, the lowest contact id.
    kept = members.select(fn.MIN(Contact.id)).group_by(Contact.email)
    per_language = (
        members.select(Contact.language, fn.COUNT(Contact.id), fn.MIN(Contact.id))
        .where(Contact.id.in_(kept))
        .group_by(Contact.language)
        .tuples()
    )
    # Which variant each member language gets: its own, else the fallback's.
    counts: dict[str, int] = {}
    first_member: dict[str, int] = {}
    for language, count, lowest_id in per_language:
        sent_as = language if language in variants else fallback
        counts[sent_as] = counts.get(sent_as, 0) + count
        first_member[sent_as] = min(first_member.get(sent_as, lowest_id), lowest_id)
    previews = []
    for language in sorted(set(counts) | set(variants)):
        variant = variants.get(language)
        if language in counts:
            contact = Contact.get_by_id(first_member[language])
            fields = _member_fields(contact, language, today, unsubscribe_url)
            previews.append(
                _rendered(
                    language, variant, fields, counts[language], contact, fallback, campaign.id
                )
            )
        else:
            fields = dict(SAMPLE_FIELDS, language=language, unsubscribe_url=unsubscribe_url)
            previews.append(_rendered(language, variant, fields, 0, None, fallback, campaign.id))
    return previews


@read_only
def preview_campaign(
    campaign_id: int,
    today: datetime.date | None = None,
    *,
    unsubscribe_url: str,
) -> list[RenderedPreview]:
    """Each variant as it will be sent, rendered for the first group member who gets it
    (with that member's own fields), or for a sample contact when nobody does; the
    unsubscribe link is `unsubscribe_url`, the configured one:
    tokens.preview_unsubscribe_url(tokens.unsubscribe_base(config))."""
    campaign = get_campaign_row(campaign_id)
    return render_previews(campaign, today or _today(utc_now()), unsubscribe_url)


# --- before sending -------------------------------------------------------------------


def check_startable(campaign: Campaign, variants: dict[str, CampaignVariant]) -> None:
    if campaign.status != "draft":
        raise Conflict(
            f"campaign {campaign.id} is {campaign.status}; only a draft can be sent "
            f"(see: massmail status {campaign.id})"
        )
    fallback = campaign.fallback_language
    if fallback not in variants:
        raise Invalid(
            f"campaign {campaign.id} has no variant in its fallback language {fallback}; "
            f"add one: massmail variant {campaign.id} {fallback} --subject ... --body-file FILE"
        )
    for language, variant in variants.items():
        problem = check_variant(variant.subject, variant.body)
        if problem is not None:
            raise Invalid(f"the {language} variant cannot be sent: {problem}")
    mailbox = Mailbox.get_by_id(campaign.mailbox_id)
    if not mailbox.active:
        raise Invalid(f"campaign {campaign.id} is sent from an inactive mailbox; activate it first")
    check_identity(campaign, mailbox)


def identity_refusal(mailbox: Mailbox) -> str | None:
    """Why the campaign's mailbox may not send as its identity now, or None."""
    refused = identities.refusal(mailbox, mailbox.identity, mailbox.identity_approved)
    if refused is None:
        return None
    return f"it would be sent as {mailbox.identity}, which is refused: {refused}"


def check_identity(campaign: Campaign, mailbox: Mailbox) -> None:
    refused = identity_refusal(mailbox)
    if refused is not None:
        raise Invalid(f"campaign {campaign.id} cannot be sent: {refused}")


# --- the new-campaign form ------------------------------------------------------------


@read_only
def new_campaign_choices() -> NewCampaignChoices:
    """Store operation: the groups, active mailboxes and active message types to choose."""
    return NewCampaignChoices(
        groups=tuple(group_ops.list_groups()),
        mailboxes=tuple(box for box in mailbox_ops.list_mailboxes() if box.active),
        types=tuple(kind for kind in message_types.list_message_types() if kind.active),
    )
