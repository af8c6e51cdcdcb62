"""Store operations for campaigns (mass mail): the campaign and its language variants, the
preview, the durable send list, pausing, resuming, cancelling, retrying, progress, and the
suppression list.

The send list is made in one INSERT ... SELECT from the group's query: the members never
pass through Python, so a million contacts take as little memory as ten. Each address
appears once (the contact with the lowest id wins); an address on the suppression list is
recorded as suppressed and never sent to.

Campaign states: draft -> running <-> paused; running -> finished (nothing left to send);
draft, running or paused -> cancelled; finished -> running again when failed recipients
are retried.
"""

from __future__ import annotations

import datetime
import re

from peewee import JOIN, Case, Value, fn

from atollon_mail.crm.contacts import get_organization_row
from atollon_mail.crm.filters import members_query
from atollon_mail.crm.groups import get_group_row
from atollon_mail.massmail.records import (
    CampaignRecord,
    CampaignStatus,
    RenderedPreview,
    SendListEntry,
    SuppressionRecord,
    VariantRecord,
)
from atollon_mail.massmail.templates import (
    SAMPLE_FIELDS,
    TemplateProblem,
    check_variant,
    contact_fields,
    render_variant,
)
from atollon_mail.store import identities
from atollon_mail.store.common import limited, locked, normalize_identity, read_only
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.mailboxes import get_mailbox_row as _get_mailbox
from atollon_mail.store.models import (
    FINAL_RECIPIENT_STATES,
    RECIPIENT_STATES,
    SUPPRESSION_REASONS,
    Campaign,
    CampaignRecipient,
    CampaignVariant,
    Contact,
    DistributionGroup,
    Domain,
    Employment,
    Mailbox,
    MessageType,
    Suppression,
    utc_now,
)

_LANGUAGE = re.compile(r"^[a-z]{2}$")
_NAME_LIMIT = 200
_SUBJECT_LIMIT = 998
_DETAIL_LIMIT = 4000

# Recipients still to be sent: a running campaign with none of these is finished.
PENDING_STATES = ("queued", "sending", "deferred")
# The rate is measured over this many seconds before `now`.
RATE_WINDOW_SECONDS = 60


# --- normalisation --------------------------------------------------------------------


def normalize_language(language: str) -> str:
    code = language.strip().lower()
    if not _LANGUAGE.match(code):
        raise Invalid(f"{language!r} is not a language code; give two letters (ISO 639-1), like en")
    return code


def normalize_suppressed_address(address: str) -> str:
    """An address as the send list holds it: lower-cased, like every contact's e-mail."""
    try:
        return normalize_identity(address).lower()
    except Invalid:
        raise Invalid(
            f"{address.strip()!r} is not an e-mail address; give one such as name@example.com"
        ) from None


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
    mailbox = _get_mailbox(address)
    if not mailbox.active:
        raise Invalid(
            f"the mailbox {mailbox.local_part}@{mailbox.domain.name} is inactive; "
            "activate it or send from another"
        )
    return mailbox


def _get_campaign(campaign_id: int, lock: bool = False) -> Campaign:
    query = Campaign.select().where(Campaign.id == campaign_id)
    # Locked: state changes of one campaign (start, pause, the sender's finish) run one
    # at a time, each seeing the state the previous one left.
    campaign = (locked(query) if lock else query).first()
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}; see: massmail list")
    return campaign


def _variants(campaign_id: int) -> dict[str, CampaignVariant]:
    query = (
        CampaignVariant.select()
        .where(CampaignVariant.campaign == campaign_id)
        .order_by(CampaignVariant.language)
    )
    return {variant.language: variant for variant in query}


# --- records --------------------------------------------------------------------------


def _campaign_records(campaigns: list[Campaign]) -> list[CampaignRecord]:
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


def _campaign_record(campaign: Campaign) -> CampaignRecord:
    [record] = _campaign_records([campaign])
    return record


def _suppression_record(suppression: Suppression) -> SuppressionRecord:
    return SuppressionRecord(
        address=suppression.address,
        reason=suppression.reason,
        detail=suppression.detail,
        campaign_id=suppression.campaign_id,
        created_at=suppression.created_at,
    )


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
    return _campaign_record(campaign)


@read_only
def get_campaign(campaign_id: int) -> CampaignRecord:
    return _campaign_record(_get_campaign(campaign_id))


@read_only
def list_campaigns() -> list[CampaignRecord]:
    """Every campaign, the newest first."""
    query = Campaign.select().order_by(Campaign.created_at.desc(), Campaign.id.desc())
    return _campaign_records(list(query))


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
    campaign = _get_campaign(campaign_id, lock=True)
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
    return _campaign_record(campaign)


def remove_variant(campaign_id: int, language: str) -> CampaignRecord:
    """Remove a language's variant (draft or paused); a paused campaign keeps every
    variant its send list still uses."""
    campaign = _get_campaign(campaign_id, lock=True)
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
    return _campaign_record(campaign)


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


def _preview(
    campaign: Campaign, today: datetime.date, unsubscribe_url: str
) -> list[RenderedPreview]:
    variants = _variants(campaign.id)
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
    campaign = _get_campaign(campaign_id)
    return _preview(campaign, today or _today(utc_now()), unsubscribe_url)


# --- starting: the send list ----------------------------------------------------------


def _check_startable(campaign: Campaign, variants: dict[str, CampaignVariant]) -> None:
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
    _check_identity(campaign, mailbox)


def identity_refusal(mailbox: Mailbox) -> str | None:
    """Why the campaign's mailbox may not send as its identity now, or None."""
    refused = identities.refusal(mailbox, mailbox.identity, mailbox.identity_approved)
    if refused is None:
        return None
    return f"it would be sent as {mailbox.identity}, which is refused: {refused}"


def _check_identity(campaign: Campaign, mailbox: Mailbox) -> None:
    refused = identity_refusal(mailbox)
    if refused is not None:
        raise Invalid(f"campaign {campaign.id} cannot be sent: {refused}")


def _expand_send_list(
    campaign: Campaign, languages: list[str], today: datetime.date, now: datetime.datetime
) -> int:
    """The whole send list in one INSERT ... SELECT; how many rows it made.

    Ordered by contact id, so when two contacts share an address the lowest id is
    inserted first and the unique (campaign, address) index ignores the others."""
    language = Case(
        None, [(Contact.language.in_(languages), Contact.language)], campaign.fallback_language
    )
    suppressed = Contact.email.in_(Suppression.select(Suppression.address))
    state = Case(None, [(suppressed, "suppressed")], "queued")
    rows = (
        members_query(campaign.group, today)
        .select(
            Value(campaign.id),
            Contact.id,
            Contact.email,
            language,
            state,
            Value(False),
            Value(0),
            Value(now),
        )
        .where(Contact.email != "")
        .order_by(Contact.id)
    )
    insert = CampaignRecipient.insert_from(
        rows,
        fields=[
            CampaignRecipient.campaign,
            CampaignRecipient.contact,
            CampaignRecipient.address,
            CampaignRecipient.language,
            CampaignRecipient.state,
            CampaignRecipient.uncertain,
            CampaignRecipient.attempts,
            CampaignRecipient.updated_at,
        ],
    )
    return insert.on_conflict_ignore().as_rowcount().execute()


def _set_status(campaign: Campaign, status: str, now: datetime.datetime, **stamps) -> None:
    Campaign.update(status=status, updated_at=now, **stamps).where(
        Campaign.id == campaign.id
    ).execute()


def start_campaign(campaign_id: int, now: datetime.datetime | None = None) -> CampaignStatus:
    """Send a draft: check every variant (and render it for a real member), then make the
    send list and mark the campaign running, all in this one transaction."""
    now = now or utc_now()
    today = _today(now)
    campaign = _get_campaign(campaign_id, lock=True)
    variants = _variants(campaign.id)
    _check_startable(campaign, variants)
    # Rendered only to check it (never shown): any link does.
    for preview in _preview(campaign, today, SAMPLE_FIELDS["unsubscribe_url"]):
        if preview.error is not None:
            whom = f" for {preview.address}" if preview.address else ""
            raise Invalid(
                f"the {preview.language} variant cannot be rendered{whom}: {preview.error}"
            )
    made = _expand_send_list(campaign, sorted(variants), today, now)
    if not made:
        raise Invalid(
            f"the group has no member with an address; add members to "
            f"{campaign.group.name!r} or choose another group"
        )
    _set_status(campaign, "running", now, started_at=now, finished_at=None)
    # Every address suppressed: nothing to send, so it is finished at once.
    finish_if_done(campaign.id, now)
    return _status(campaign.id, now)


def finish_if_done(campaign_id: int, now: datetime.datetime | None = None) -> bool:
    """A running campaign with nobody left to send to becomes finished; True if it did."""
    now = now or utc_now()
    campaign = _get_campaign(campaign_id, lock=True)
    if campaign.status != "running":
        return False
    pending = (
        CampaignRecipient.select(CampaignRecipient.id)
        .where(
            (CampaignRecipient.campaign == campaign.id)
            & CampaignRecipient.state.in_(PENDING_STATES)
        )
        .exists()
    )
    if pending:
        return False
    _set_status(campaign, "finished", now, finished_at=now)
    return True


# --- pause, resume, cancel, retry -----------------------------------------------------


def _take_back(campaign_id: int, now: datetime.datetime) -> None:
    # The sender's module owns the delivery queue side: what is still waiting there (not
    # yet being delivered) is removed and its send-list rows go back to "queued".
    from atollon_mail.massmail.sending import take_back

    take_back(campaign_id, now)


def pause_campaign(campaign_id: int, now: datetime.datetime | None = None) -> CampaignStatus:
    now = now or utc_now()
    campaign = _get_campaign(campaign_id, lock=True)
    if campaign.status != "running":
        raise Conflict(f"campaign {campaign.id} is {campaign.status}; only a running one pauses")
    _take_back(campaign.id, now)
    _set_status(campaign, "paused", now)
    return _status(campaign.id, now)


def resume_campaign(campaign_id: int, now: datetime.datetime | None = None) -> CampaignStatus:
    now = now or utc_now()
    campaign = _get_campaign(campaign_id, lock=True)
    if campaign.status != "paused":
        raise Conflict(f"campaign {campaign.id} is {campaign.status}; only a paused one resumes")
    _check_identity(campaign, Mailbox.get_by_id(campaign.mailbox_id))
    _set_status(campaign, "running", now)
    # Everything may have been delivered while it was paused.
    finish_if_done(campaign.id, now)
    return _status(campaign.id, now)


def cancel_campaign(campaign_id: int, now: datetime.datetime | None = None) -> CampaignStatus:
    """Stop for good: what is still waiting in the delivery queue is taken back, and the
    recipients left "queued" stay so and are never sent to."""
    now = now or utc_now()
    campaign = _get_campaign(campaign_id, lock=True)
    if campaign.status not in ("draft", "running", "paused"):
        raise Conflict(f"campaign {campaign.id} is {campaign.status} already; nothing to cancel")
    if campaign.status != "draft":  # a draft has nothing in the queue
        _take_back(campaign.id, now)
    _set_status(campaign, "cancelled", now, finished_at=now)
    return _status(campaign.id, now)


def retry_failed(campaign_id: int, now: datetime.datetime | None = None) -> int:
    """Queue the failed recipients again (their attempts and last reply kept); how many.
    Sent, bounced and suppressed recipients are never touched."""
    now = now or utc_now()
    campaign = _get_campaign(campaign_id, lock=True)
    if campaign.status == "cancelled":
        raise Conflict(
            f"campaign {campaign.id} is cancelled; nothing more is sent for it "
            "(copy it into a new campaign instead)"
        )
    requeued = (
        CampaignRecipient.update(state="queued", updated_at=now)
        .where((CampaignRecipient.campaign == campaign.id) & (CampaignRecipient.state == "failed"))
        .execute()
    )
    if requeued and campaign.status == "finished":
        _set_status(campaign, "running", now, finished_at=None)
    return requeued


# --- progress and the send list -------------------------------------------------------


def _rate(campaign: Campaign, now: datetime.datetime) -> float | None:
    """Recipients finished per second over the last minute (None: none finished in it).

    Suppressed rows are left out: they were decided when the list was made, not sent."""
    if campaign.started_at is None:
        return None
    covered = min(RATE_WINDOW_SECONDS, (now - campaign.started_at).total_seconds())
    since = now - datetime.timedelta(seconds=covered)
    # A row's updated_at is when it reached its state (sent_at too, for sent rows), so
    # one range per state on the (campaign, state, updated_at) index counts them.
    finished = (
        CampaignRecipient.select()
        .where(
            (CampaignRecipient.campaign == campaign.id)
            & CampaignRecipient.state.in_(("sent", "bounced", "failed"))
            & (CampaignRecipient.updated_at >= since)
            & (CampaignRecipient.updated_at <= now)
        )
        .count()
    )
    if not finished:
        return None
    # Less than a second since the start still counts as one second.
    return finished / max(covered, 1.0)


def _status(campaign_id: int, now: datetime.datetime) -> CampaignStatus:
    campaign = _get_campaign(campaign_id)
    counts = dict.fromkeys(RECIPIENT_STATES, 0)
    query = (
        CampaignRecipient.select(CampaignRecipient.state, fn.COUNT(CampaignRecipient.id))
        .where(CampaignRecipient.campaign == campaign.id)
        .group_by(CampaignRecipient.state)
        .tuples()
    )
    for state, count in query:
        counts[state] = count
    uncertain = (
        CampaignRecipient.select()
        .where(
            (CampaignRecipient.campaign == campaign.id) & (CampaignRecipient.uncertain == True)  # noqa: E712
        )
        .count()
    )
    rate = _rate(campaign, now)
    remaining = sum(counts[state] for state in PENDING_STATES)
    eta = remaining / rate if rate and remaining else None
    refused = None
    if campaign.status in ("draft", "running", "paused"):
        refused = identity_refusal(Mailbox.get_by_id(campaign.mailbox_id))
    return CampaignStatus(
        campaign=_campaign_record(campaign),
        counts=counts,
        total=sum(counts.values()),
        done=sum(counts[state] for state in FINAL_RECIPIENT_STATES),
        uncertain=uncertain,
        rate=rate,
        eta_seconds=eta,
        identity_refusal=refused,
    )


@read_only
def campaign_status(campaign_id: int, now: datetime.datetime | None = None) -> CampaignStatus:
    """Counts per recipient state, how many are done, the rate and the time left."""
    return _status(campaign_id, now or utc_now())


@read_only
def send_list(
    campaign_id: int,
    state: str | None = None,
    uncertain: bool | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[SendListEntry]:
    """Rows of a campaign's send list in the order they were made (by contact id)."""
    campaign = _get_campaign(campaign_id)
    condition = CampaignRecipient.campaign == campaign.id
    if state is not None:
        if state not in RECIPIENT_STATES:
            raise Invalid(
                f"unknown recipient state {state!r}; use one of {', '.join(RECIPIENT_STATES)}"
            )
        condition &= CampaignRecipient.state == state
    if uncertain is not None:
        condition &= CampaignRecipient.uncertain == bool(uncertain)
    query = (
        CampaignRecipient.select(
            CampaignRecipient.id,
            CampaignRecipient.address,
            CampaignRecipient.language,
            CampaignRecipient.state,
            CampaignRecipient.uncertain,
            CampaignRecipient.attempts,
            CampaignRecipient.last_reply,
            CampaignRecipient.contact,
            Contact.name,
            Contact.first_name,
            Contact.last_name,
            CampaignRecipient.updated_at,
        )
        .join(Contact, JOIN.LEFT_OUTER, on=(CampaignRecipient.contact == Contact.id))
        .where(condition)
        .order_by(CampaignRecipient.id)
        .limit(limit)
        .offset(offset)
        .tuples()
    )
    entries = []
    for (
        row_id,
        address,
        language,
        row_state,
        row_uncertain,
        attempts,
        last_reply,
        contact_id,
        name,
        first_name,
        last_name,
        updated_at,
    ) in query:
        contact_name = None
        if contact_id is not None:
            contact_name = name or " ".join(part for part in (first_name, last_name) if part)
        entries.append(
            SendListEntry(
                id=row_id,
                address=address,
                language=language,
                state=row_state,
                uncertain=bool(row_uncertain),
                attempts=attempts,
                last_reply=last_reply,
                contact_id=contact_id,
                contact_name=contact_name,
                updated_at=updated_at,
            )
        )
    return entries


# --- suppressions ---------------------------------------------------------------------


def suppress_address(
    address: str,
    reason: str = "manual",
    detail: str | None = None,
    campaign_id: int | None = None,
    now: datetime.datetime | None = None,
) -> SuppressionRecord:
    """No campaign sends to this address any more. An address suppressed already keeps its
    first reason. Recipients of running or paused campaigns still waiting to be handed to
    the delivery queue are marked suppressed at once."""
    now = now or utc_now()
    normalized = normalize_suppressed_address(address)
    if reason not in SUPPRESSION_REASONS:
        raise Invalid(f"unknown reason {reason!r}; use one of {', '.join(SUPPRESSION_REASONS)}")
    if detail is not None:
        detail = limited(detail, _DETAIL_LIMIT, "detail") or None
    if campaign_id is not None:
        _get_campaign(campaign_id)
    # Ignored when it exists: a concurrent suppression of the same address is no error.
    Suppression.insert(
        address=normalized,
        reason=reason,
        detail=detail,
        campaign=campaign_id,
        created_at=now,
    ).on_conflict_ignore().as_rowcount().execute()
    active = Campaign.select(Campaign.id).where(Campaign.status.in_(("running", "paused")))
    CampaignRecipient.update(state="suppressed", updated_at=now).where(
        CampaignRecipient.campaign.in_(active)
        & (CampaignRecipient.address == normalized)
        & (CampaignRecipient.state == "queued")
    ).execute()
    return _suppression_record(Suppression.get(Suppression.address == normalized))


def unsuppress_address(address: str) -> bool:
    """Campaigns may send to this address again (from their next send list); True if it
    was suppressed."""
    normalized = normalize_suppressed_address(address)
    return bool(Suppression.delete().where(Suppression.address == normalized).execute())


@read_only
def list_suppressions(limit: int = 100, offset: int = 0) -> list[SuppressionRecord]:
    """The suppressed addresses, the latest first."""
    query = (
        Suppression.select()
        .order_by(Suppression.created_at.desc(), Suppression.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [_suppression_record(row) for row in query]
