"""Frozen records of mass mail: what crosses from the store's threads to the reactor, and
the built messages the sender hands back to the store."""

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


@attrs.frozen
class NewCampaignChoices:
    """What the new-campaign form offers."""

    groups: tuple
    mailboxes: tuple
    types: tuple


@attrs.frozen
class CampaignSending:
    """What the sender needs to build a campaign's messages."""

    campaign_id: int
    name: str
    mailbox_id: int
    mailbox_domain: str  # where its bounces and unsubscribe mails come back to
    identity: str  # the From: address
    sender_name: str  # the From: display name (the mailbox owner's name)
    signature: str
    type_id: int | None
    variants: dict[str, tuple[str, str]]  # language -> (subject, body)
    outstanding: int  # rows handed to the queue and not finished (state sending)


@attrs.frozen
class HandoffCandidate:
    """A send-list row about to be handed to the delivery queue, with its merge fields."""

    recipient_id: int
    address: str
    language: str
    first_name: str
    last_name: str
    name: str
    company: str | None


@attrs.frozen
class CampaignMessage:
    """A built message for one row, ready for the queue."""

    recipient_id: int
    address: str
    domain: str
    envelope_sender: str  # the row's VERP address
    raw: bytes
    message_id: str
    subject: str
    from_header: str
    # As the queue's other messages have them: no Date: summary kept, the campaign's type.
    date_header: str | None = None
    type_id: int | None = None


@attrs.frozen
class Unsubscribed:
    address: str
    already: bool  # the address was suppressed before
