"""Frozen records of mass mail: what crosses from the store's threads to the reactor."""

from __future__ import annotations

import datetime

import attrs


@attrs.frozen
class VariantRecord:
    language: str
    subject: str
    body: str


@attrs.frozen
class CampaignRecord:
    id: int
    name: str
    status: str  # draft | running | paused | cancelled | finished
    group_id: int
    group_name: str
    mailbox_address: str
    type_code: str | None
    organization_id: int | None
    fallback_language: str
    variants: tuple[VariantRecord, ...]
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None


@attrs.frozen
class CampaignStatus:
    """How far a campaign has got: counts per recipient state, rate and time left."""

    campaign: CampaignRecord
    counts: dict[str, int]  # every state of models.RECIPIENT_STATES, zeros included
    total: int
    done: int  # recipients in a final state (sent, bounced, failed, suppressed)
    uncertain: int  # recipients that may have got two copies (in flight at a kill)
    rate: float | None  # messages finished per second over the last minute; None: unknown
    eta_seconds: float | None  # None while the rate is unknown or nothing is left
    # Why its mailbox may not send as the identity now (one line); a running campaign is
    # paused at its next handoff for it. None: it may.
    identity_refusal: str | None = None


@attrs.frozen
class SendListEntry:
    id: int
    address: str
    language: str
    state: str
    uncertain: bool
    attempts: int
    last_reply: str | None
    contact_id: int | None
    contact_name: str | None
    updated_at: datetime.datetime


@attrs.frozen
class RenderedPreview:
    """One variant rendered for a sample contact (or the error that stops sending)."""

    language: str
    contact_id: int | None
    address: str | None
    subject: str | None
    body: str | None
    error: str | None  # "line 3: 'company' is not a merge field", say
    recipients: int  # send-list size in this language (the group's, at preview time)


@attrs.frozen
class SuppressionRecord:
    address: str
    reason: str
    detail: str | None
    campaign_id: int | None
    created_at: datetime.datetime
