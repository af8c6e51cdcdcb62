"""Store operations for the message types of the message configuration: the type each
message has (incoming and outgoing mail get the defaults unless they name one), added,
changed, listed and deleted.

Each runs inside the one transaction `Store.run` opens and returns frozen records.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import peewee

from atollon_mail.store.common import chunks, create, limited, locked, read_only
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.models import Campaign, Message, MessageType, database_proxy, utc_now
from atollon_mail.store.records import (
    MessageTypeChange,
    MessageTypeDeletion,
    MessageTypeRecord,
    MessageTypeUsage,
)

_TYPE_CODE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
_TYPE_NAME_LIMIT = 100
_TYPE_DESCRIPTION_LIMIT = 2000
_KINDS = {"default_incoming": "incoming", "default_outgoing": "outgoing"}


def normalize_type_code(code: str) -> str:
    found = code.strip().lower()
    if not _TYPE_CODE.match(found):
        raise Invalid(
            f"{code!r} is not a message type code; use lowercase letters, digits and - "
            "(not at the start or end), at most 32 characters"
        )
    return found


def _type_name(name: str) -> str:
    found = limited(name, _TYPE_NAME_LIMIT, "name")
    if not found:
        raise Invalid("a message type needs a name")
    return found


def _type_record(kind: MessageType) -> MessageTypeRecord:
    return MessageTypeRecord(
        id=kind.id,
        code=kind.code,
        name=kind.name,
        description=kind.description,
        active=kind.active,
        default_incoming=kind.default_incoming,
        default_outgoing=kind.default_outgoing,
    )


def _lock_types() -> None:
    """Every message type locked (a short table): changes to the defaults run one at a
    time, so two concurrent switches cannot leave two defaults of one kind."""
    locked(MessageType.select(MessageType.id).order_by(MessageType.id)).execute()


def _get_type(code: str) -> MessageType:
    found = MessageType.get_or_none(MessageType.code == normalize_type_code(code))
    if found is None:
        raise NotFound(f"no message type {code.strip().lower()}; see: message-type list")
    return found


def _default_of(kind: str) -> MessageType | None:
    return MessageType.get_or_none(getattr(MessageType, kind) == True)  # noqa: E712


def add_message_type(
    name: str, code: str, description: str = "", active: bool = True
) -> MessageTypeRecord:
    code = normalize_type_code(code)
    name = _type_name(name)
    description = limited(description, _TYPE_DESCRIPTION_LIMIT, "description")
    conflict = f"a message type with code {code} exists already"
    if MessageType.select().where(MessageType.code == code).exists():
        raise Conflict(conflict)
    kind = create(
        MessageType,
        conflict,
        name=name,
        code=code,
        description=description,
        active=bool(active),
        default_incoming=False,
        default_outgoing=False,
        created_at=utc_now(),
    )
    return _type_record(kind)


def update_message_type(
    code: str,
    name: str | None = None,
    description: str | None = None,
    active: bool | None = None,
    default_incoming: bool | None = None,
    default_outgoing: bool | None = None,
) -> MessageTypeRecord:
    """Change a message type; None leaves a field as it is. Making it the default for
    incoming (outgoing) mail takes that from the previous default in one transaction."""
    _lock_types()
    kind = _get_type(code)
    changes: dict = {}
    if name is not None:
        changes["name"] = _type_name(name)
    if description is not None:
        changes["description"] = limited(description, _TYPE_DESCRIPTION_LIMIT, "description")
    if active is not None:
        changes["active"] = bool(active)
    will_be_active = changes.get("active", kind.active)
    for field, wanted in (
        ("default_incoming", default_incoming),
        ("default_outgoing", default_outgoing),
    ):
        is_default = getattr(kind, field)
        if wanted and not will_be_active:
            raise Conflict(
                f"{kind.code} is inactive; an inactive type cannot be the default for "
                f"{_KINDS[field]} mail (activate it too: --active yes)"
            )
        if wanted is False and is_default:
            raise Conflict(
                f"{kind.code} is the default for {_KINDS[field]} mail; make another type "
                f"the default instead: message-type set CODE --default-{_KINDS[field]}"
            )
        if not will_be_active and is_default:
            raise Conflict(
                f"{kind.code} is the default for {_KINDS[field]} mail and must stay active; "
                f"make another type the default first: message-type set CODE "
                f"--default-{_KINDS[field]}"
            )
        if wanted and not is_default:
            MessageType.update({field: False}).where(
                (getattr(MessageType, field) == True) & (MessageType.id != kind.id)  # noqa: E712
            ).execute()
            changes[field] = True
    if changes:
        MessageType.update(**changes).where(MessageType.id == kind.id).execute()
    return _type_record(MessageType.get_by_id(kind.id))


@read_only
def list_message_types() -> list[MessageTypeRecord]:
    return [_type_record(kind) for kind in MessageType.select().order_by(MessageType.code)]


@read_only
def message_type_usage() -> list[MessageTypeUsage]:
    """Every message type by code with how many stored messages and campaigns have it
    (one grouped count each)."""
    messages = dict(
        Message.select(Message.type, peewee.fn.COUNT(Message.id))
        .where(Message.type.is_null(False))
        .group_by(Message.type)
        .tuples()
    )
    campaigns = dict(
        Campaign.select(Campaign.type, peewee.fn.COUNT(Campaign.id))
        .where(Campaign.type.is_null(False))
        .group_by(Campaign.type)
        .tuples()
    )
    return [
        MessageTypeUsage(
            type=_type_record(kind),
            messages=messages.get(kind.id, 0),
            campaigns=campaigns.get(kind.id, 0),
        )
        for kind in MessageType.select().order_by(MessageType.code)
    ]


@read_only
def message_type_codes(message_ids: Iterable[int]) -> dict[int, str | None]:
    """Each stored message's type code (None: it has none), for the ids given."""
    found: dict[int, str | None] = {}
    for chunk in chunks(sorted(set(message_ids))):
        query = (
            Message.select(Message.id, MessageType.code)
            .join(MessageType, peewee.JOIN.LEFT_OUTER, on=(Message.type == MessageType.id))
            .where(Message.id.in_(chunk))
            .tuples()
        )
        found.update(query)
    return found


def set_message_type(message_id: int, code: str) -> MessageTypeChange:
    """Give a stored message another type (an active one)."""
    kind = _get_type(code)
    if not kind.active:
        raise Invalid(f"message type {kind.code} is inactive; activate it or choose another")
    row = (
        Message.select(Message.id, MessageType.code)
        .join(MessageType, peewee.JOIN.LEFT_OUTER, on=(Message.type == MessageType.id))
        .where(Message.id == message_id)
        .tuples()
        .first()
    )
    if row is None:
        raise NotFound(f"no message with id {message_id}; see: messages list ADDRESS")
    Message.update(type=kind.id).where(Message.id == message_id).execute()
    return MessageTypeChange(message_id=message_id, previous=row[1], code=kind.code)


def delete_message_type(code: str, reassign_to: str | None = None) -> MessageTypeDeletion:
    """Delete a message type. Messages of that type are moved to `reassign_to` first;
    without it, a type still in use is refused. A default type is never deleted."""
    _lock_types()
    kind = _get_type(code)
    for field, what in _KINDS.items():
        if getattr(kind, field):
            raise Conflict(
                f"{kind.code} is the default type for {what} mail; make another type the "
                f"default first: message-type set CODE --default-{what}"
            )
    target = None
    if reassign_to is not None:
        target = _get_type(reassign_to)
        if target.id == kind.id:
            raise Invalid(f"{kind.code}'s messages cannot move to {kind.code} itself")
    campaigns_using = Campaign.select().where(Campaign.type == kind.id).count()
    in_use = Message.select().where(Message.type == kind.id).count()
    if (in_use or campaigns_using) and target is None:
        users = []
        if in_use:
            users.append(
                f"{in_use} archived message{'s' if in_use != 1 else ''} "
                f"ha{'ve' if in_use != 1 else 's'}"
            )
        if campaigns_using:
            users.append(
                f"{campaigns_using} campaign{'s' if campaigns_using != 1 else ''} "
                f"ha{'ve' if campaigns_using != 1 else 's'}"
            )
        raise Conflict(
            f"{' and '.join(users)} type {kind.code} and would change type; say which "
            "type they get instead: --reassign-to CODE (see: message-type list)"
        )
    moved = 0
    if target is not None:
        moved = Message.update(type=target.id).where(Message.type == kind.id).execute()
        Campaign.update(type=target.id).where(Campaign.type == kind.id).execute()
    try:
        with database_proxy.atomic():  # a savepoint keeps the transaction usable
            MessageType.delete().where(MessageType.id == kind.id).execute()
    except peewee.IntegrityError:
        raise Conflict(
            f"messages of type {kind.code} arrived meanwhile; try again"
            + ("" if target is not None else " with --reassign-to CODE")
        ) from None
    return MessageTypeDeletion(
        code=kind.code, reassigned=moved, reassigned_to=target.code if target else None
    )
