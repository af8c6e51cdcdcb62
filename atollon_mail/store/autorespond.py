"""Store operations for auto-respond (out of office): the settings of a mailbox's
responder, and the claim that makes "one reply per correspondent per interval" atomic.

Like every store operation each runs in the one transaction `Store.run` opens and returns
frozen records. Times are naive UTC.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

import peewee

from atollon_mail.store import identities
from atollon_mail.store.common import RECIPIENT_DELIMITER, create, locked, read_only
from atollon_mail.store.errors import Invalid
from atollon_mail.store.mailboxes import get_mailbox_row
from atollon_mail.store.models import (
    Alias,
    Autoresponder,
    AutoresponseLog,
    Domain,
    Mailbox,
    database_proxy,
    utc_now,
)
from atollon_mail.store.records import AutoreplyPlan, AutoresponderRecord

DEFAULT_SUBJECT = "Out of office"
DEFAULT_INTERVAL_DAYS = 7  # a week, the default of Sieve vacation (RFC 5230)
MAX_INTERVAL_DAYS = 365
SUBJECT_LIMIT = 998  # the column, and the longest header line RFC 5322 allows
BODY_LIMIT = 100_000
CORRESPONDENT_LIMIT = 320  # the column
_SETTINGS = ("subject", "body", "starts_at", "ends_at", "interval_days")


class _Clear:
    def __repr__(self) -> str:
        return "CLEAR"


# Passed as starts_at or ends_at: remove that bound (None leaves the stored value alone).
CLEAR = _Clear()


# --- validation -------------------------------------------------------------------------


def _moment(value, what: str) -> datetime.datetime | None:
    """A naive UTC datetime; an aware one is converted."""
    if value is None:
        return None
    if not isinstance(value, datetime.datetime):
        raise Invalid(f"the {what} must be a date and time, got {value!r}")
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value


def _subject(subject: str) -> str:
    if not isinstance(subject, str):
        raise Invalid(f"the subject must be text, got {subject!r}")
    if any(character in subject for character in "\r\n\0"):
        raise Invalid("the subject must be one line")
    subject = " ".join(subject.split())
    if not subject:
        raise Invalid("the subject of the reply cannot be empty")
    if len(subject) > SUBJECT_LIMIT:
        raise Invalid(f"the subject is longer than {SUBJECT_LIMIT} characters")
    return subject


def _body(body: str) -> str:
    if not isinstance(body, str):
        raise Invalid(f"the body must be text, got {body!r}")
    if "\0" in body:
        raise Invalid("the body contains a NUL character")
    if len(body) > BODY_LIMIT:
        raise Invalid(f"the body is longer than {BODY_LIMIT} characters")
    # One line-ending convention in the store; the email package writes CRLF when sending.
    return body.replace("\r\n", "\n").replace("\r", "\n")


def _interval(days) -> int:
    if isinstance(days, bool) or not isinstance(days, int):
        raise Invalid(f"the interval must be a whole number of days, got {days!r}")
    if not 1 <= days <= MAX_INTERVAL_DAYS:
        raise Invalid(
            f"the interval between replies to one sender must be 1 to {MAX_INTERVAL_DAYS} "
            f"days, got {days}"
        )
    return days


def normalize_correspondent(address: str) -> str:
    return address.strip().strip("<>").strip().lower()


# --- records ----------------------------------------------------------------------------


def _record(responder: Autoresponder, mailbox_address: str) -> AutoresponderRecord:
    return AutoresponderRecord(
        mailbox_address=mailbox_address,
        enabled=responder.enabled,
        subject=responder.subject,
        body=responder.body,
        starts_at=responder.starts_at,
        ends_at=responder.ends_at,
        interval_days=responder.interval_days,
        updated_at=responder.updated_at,
    )


def _address(mailbox: Mailbox) -> str:
    return f"{mailbox.local_part}@{mailbox.domain.name}"


# --- settings ---------------------------------------------------------------------------


def set_autoresponder(
    mailbox_address: str,
    enabled: bool,
    subject: str | None = None,
    body: str | None = None,
    starts_at=None,
    ends_at=None,
    interval_days: int | None = None,
) -> AutoresponderRecord:
    """Create or change a mailbox's auto-responder.

    None leaves a setting as it is (or gives the default when the responder is new);
    CLEAR as starts_at or ends_at removes that bound. Turning it on needs a body.
    """
    if not isinstance(enabled, bool):
        raise Invalid(f"enabled must be true or false, got {enabled!r}")
    mailbox = get_mailbox_row(mailbox_address)
    address = _address(mailbox)
    responder = locked(Autoresponder.select().where(Autoresponder.mailbox == mailbox.id)).first()
    if responder is None:
        settings = {
            "subject": DEFAULT_SUBJECT,
            "body": "",
            "starts_at": None,
            "ends_at": None,
            "interval_days": DEFAULT_INTERVAL_DAYS,
        }
    else:
        settings = {field: getattr(responder, field) for field in _SETTINGS}
    if subject is not None:
        settings["subject"] = _subject(subject)
    if body is not None:
        settings["body"] = _body(body)
    if starts_at is not None:
        settings["starts_at"] = None if starts_at is CLEAR else _moment(starts_at, "start")
    if ends_at is not None:
        settings["ends_at"] = None if ends_at is CLEAR else _moment(ends_at, "end")
    if interval_days is not None:
        settings["interval_days"] = _interval(interval_days)
    start, end = settings["starts_at"], settings["ends_at"]
    if start is not None and end is not None and end <= start:
        raise Invalid(
            f"the end ({end:%Y-%m-%d %H:%M:%S}) must come after the start "
            f"({start:%Y-%m-%d %H:%M:%S})"
        )
    if enabled and not settings["body"].strip():
        raise Invalid(f"auto-respond for {address} needs the text of its reply before it is on")
    settings.update(enabled=enabled, updated_at=utc_now())
    if responder is None:
        responder = create(
            Autoresponder,
            f"auto-respond for {address} was changed at the same time; try again",
            mailbox=mailbox.id,
            **settings,
        )
    else:
        for field, value in settings.items():
            setattr(responder, field, value)
        responder.save()
    return _record(responder, address)


@read_only
def get_autoresponder(mailbox_address: str) -> AutoresponderRecord | None:
    """The mailbox's auto-responder, or None if it never had one."""
    mailbox = get_mailbox_row(mailbox_address)
    responder = Autoresponder.get_or_none(Autoresponder.mailbox == mailbox.id)
    return None if responder is None else _record(responder, _address(mailbox))


@read_only
def responding_mailbox_ids() -> frozenset[int]:
    """The mailboxes whose auto-responder is on (whatever its window)."""
    query = Autoresponder.select(Autoresponder.mailbox).where(Autoresponder.enabled == True)  # noqa: E712
    return frozenset(mailbox_id for (mailbox_id,) in query.tuples())


# --- replying ---------------------------------------------------------------------------


def _own_addresses(mailbox: Mailbox, identity: str) -> frozenset[str]:
    """Every address the mailbox answers to or sends as (`identity`), lowercased."""
    domain = mailbox.domain.name
    aliases = Alias.select(Alias.name).where(Alias.mailbox == mailbox.id).tuples()
    return frozenset(
        [f"{mailbox.local_part}@{domain}", identity.lower()]
        + [f"{name}@{domain}" for (name,) in aliases]
    )


def _without_tag(address: str) -> str:
    local, at, domain = address.rpartition("@")
    base = local.partition(RECIPIENT_DELIMITER)[0]
    return f"{base}@{domain}" if at and base else address


def _is_own(address: str, own: frozenset[str]) -> bool:
    address = normalize_correspondent(address)
    return address in own or _without_tag(address) in own


def claim_autoreply(
    mailbox_id: int,
    correspondent: str,
    now: datetime.datetime,
    addressed_to: Iterable[str] | None = None,
) -> AutoreplyPlan | None:
    """What the mailbox replies to correspondent at `now`, recorded as sent; or None.

    None when the responder is off or `now` is outside [starts_at, ends_at), when the
    correspondent is the mailbox itself, when none of the mailbox's addresses is among
    `addressed_to` (the To and Cc addresses; None skips that check), or when the
    correspondent had a reply less than interval_days ago. The responder row is locked
    first, so concurrent claims for one mailbox take turns: at most one wins.
    """
    correspondent = normalize_correspondent(correspondent)
    if not correspondent or len(correspondent) > CORRESPONDENT_LIMIT:
        return None
    responder = locked(Autoresponder.select().where(Autoresponder.mailbox == mailbox_id)).first()
    if responder is None or not responder.enabled:
        return None
    if responder.starts_at is not None and now < responder.starts_at:
        return None
    if responder.ends_at is not None and now >= responder.ends_at:
        return None
    mailbox = Mailbox.select(Mailbox, Domain).join(Domain).where(Mailbox.id == mailbox_id).first()
    if mailbox is None or not mailbox.active:
        return None
    # An identity the rule refuses now (stored before it, or since become another
    # mailbox's) is not used: the reply comes from the mailbox's own address.
    identity = identities.sendable(mailbox)
    own = _own_addresses(mailbox, identity)
    if _is_own(correspondent, own):
        return None
    if addressed_to is not None and not any(_is_own(a, own) for a in addressed_to):
        return None
    last = AutoresponseLog.get_or_none(
        (AutoresponseLog.mailbox == mailbox_id) & (AutoresponseLog.correspondent == correspondent)
    )
    if last is not None:
        if now - last.sent_at < datetime.timedelta(days=responder.interval_days):
            return None
        last.sent_at = now
        last.save()
    else:
        try:
            with database_proxy.atomic():  # a savepoint keeps the transaction usable
                AutoresponseLog.create(mailbox=mailbox_id, correspondent=correspondent, sent_at=now)
        except peewee.IntegrityError:
            return None  # another claim recorded this correspondent first
    return AutoreplyPlan(
        mailbox_id=mailbox_id,
        mailbox_address=_address(mailbox),
        identity=identity,
        correspondent=correspondent,
        subject=responder.subject,
        body=responder.body,
    )
