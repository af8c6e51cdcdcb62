"""Frozen records: what crosses from the store's threads back to the reactor.

Live peewee instances never leave the store; these plain values do.
"""

from __future__ import annotations

import datetime

import attrs


@attrs.frozen
class DomainRecord:
    id: int
    name: str
    mode: str
    active: bool


@attrs.frozen
class UserRecord:
    id: int
    login: str
    name: str
    is_admin: bool


@attrs.frozen
class ContextRecord:
    id: int
    kind: str
    name: str
    owner_login: str | None


@attrs.frozen
class MailboxRecord:
    id: int
    address: str
    local_part: str
    domain: str
    owner_login: str
    identity: str
    store_to: ContextRecord
    active: bool
    is_default: bool
    signature: str
    aliases: tuple[str, ...]


@attrs.frozen
class AliasRecord:
    id: int
    address: str
    mailbox_address: str


@attrs.frozen
class MessageSummary:
    id: int
    size: int
    message_id: str | None
    subject: str | None
    from_header: str | None
    date_header: str | None
    envelope_sender: str
    received_at: datetime.datetime


@attrs.frozen
class FilingRecord:
    uid: int
    mailbox_address: str
    context: ContextRecord
    flags: tuple[str, ...]
    message: MessageSummary


@attrs.frozen
class Recipient:
    """A local recipient resolved at RCPT time: the mailbox its mail is filed into."""

    address: str
    mailbox_id: int
    mailbox_address: str
    # Where its mail is filed, as resolved at RCPT time (None: looked up when storing);
    # a detail of delivery, not of who the recipient is, so it takes no part in equality.
    context_id: int | None = attrs.field(default=None, eq=False)


@attrs.frozen
class Rejection:
    """Why an address cannot receive mail here; the SMTP layer turns it into a reply."""

    reason: str  # "unknown-domain" | "inactive-domain" | "unknown-address" | "inactive-mailbox"
    detail: str


@attrs.frozen
class IncomingMessage:
    """A message accepted at end of DATA, ready to be stored and filed."""

    envelope_sender: str
    recipients: tuple[Recipient, ...]
    raw: bytes
    message_id: str | None = None
    subject: str | None = None
    from_header: str | None = None
    date_header: str | None = None


@attrs.frozen
class StoredMessage:
    id: int
    filings: int
