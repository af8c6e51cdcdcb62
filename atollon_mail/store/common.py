"""What every store module shares: the operation markers, name and address validation, and
small query helpers. Nothing here opens a transaction; `Store.run` does.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence

import peewee

from atollon_mail.store.database import is_sqlite
from atollon_mail.store.errors import Ambiguous, Conflict, Invalid, NotFound
from atollon_mail.store.models import QueueRecipient, database_proxy

# Everything after the first "+" of a local part is the user's tag (user+tag@domain).
RECIPIENT_DELIMITER = "+"

_DOMAIN_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"
)
# Mailbox and alias names: letters (any script), digits, and . _ - inside; no "+" (the tag
# delimiter) and none of the characters that once meant routing (% ! @).
_MAILBOX_NAME = re.compile(r"^\w(?:[\w.-]{0,62}\w)?$")
_LOGIN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def read_only(operation):
    """Mark an operation that only reads: the store runs it without taking the write lock."""
    operation.read_only = True
    return operation


def changes_mailbox(operation):
    """Mark an operation that changes what a mailbox shows (flags, folders, filings) and
    takes the mailbox's address as its first argument: once it committed, `Store.run`
    tells its `changed` callback the address, so that mail clients reading that mailbox
    (IMAP sessions) hear of a change made elsewhere (the web client) at once."""
    operation.changes_mailbox = True
    return operation


def flushed_lazily(operation):
    """Mark an operation whose commit must survive a crash or `kill -9` of this process
    but need not wait for the disk: SQLite runs it with synchronous=NORMAL (in WAL mode
    the commit is in the operating system's hands when it returns, and the next commit
    with synchronous=FULL, such as any stored message's, flushes it too), PostgreSQL
    with synchronous_commit off (the server flushes it within a moment). Only a power
    loss or an operating system crash may undo its last moments. For delivery progress
    that means a message sent once more, as before it was written down at all; accepted
    mail is never written this way."""
    operation.flushed_lazily = True
    return operation


# --- validation helpers ---------------------------------------------------------------


def strip_root_dot(domain: str) -> str:
    # One trailing dot is the DNS root ("example.com."); more is not a name.
    return domain[:-1] if domain.endswith(".") else domain


def normalize_domain_name(name: str) -> str:
    domain = strip_root_dot(name.strip().lower())
    if not _DOMAIN_NAME.match(domain):
        raise Invalid(f"{name!r} is not a domain name; give one such as example.com")
    return domain


def normalize_mailbox_name(name: str) -> str:
    local = name.strip().lower()
    if "@" in local:
        raise Invalid(f"{name!r}: give the name without @domain")
    if not _MAILBOX_NAME.match(local) or ".." in local:
        raise Invalid(
            f"{name!r} is not a valid mailbox name; use letters, digits and . _ - "
            "(not at the start or end), at most 64 characters"
        )
    return local


def split_address(address: str) -> tuple[str, str]:
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        raise Invalid(f"{address!r} is not an address; give one such as name@example.com")
    return local, domain


_IDENTITY_LOCAL_PART = re.compile(r"^[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*$")


def normalize_identity(identity: str) -> str:
    """A sending identity: a plain address (dot-atom local part, a real domain)."""
    local, domain = split_address(identity)
    if len(local) > 64 or not _IDENTITY_LOCAL_PART.match(local):
        raise Invalid(f"{identity!r} is not a valid sending address; use name@domain")
    return f"{local}@{normalize_domain_name(domain)}"


def limited(value: str, limit: int, what: str) -> str:
    value = value.strip()
    if len(value) > limit:
        raise Invalid(f"the {what} is longer than {limit} characters")
    return value


def normalize_address(address: str) -> tuple[str, str]:
    local, domain = split_address(address)
    return normalize_mailbox_name(local), normalize_domain_name(domain)


def validate_login(login: str) -> str:
    login = login.strip().lower()
    if not _LOGIN.match(login):
        raise Invalid(
            f"{login!r} is not a valid login; use lowercase letters, digits and . _ -, "
            "starting with a letter or digit"
        )
    return login


def create(model, conflict: str, **fields):
    """model.create(**fields); a unique index refusing it (a concurrent writer got there
    first) is the same Conflict the check before it would have raised."""
    try:
        with database_proxy.atomic():  # a savepoint keeps the transaction usable
            return model.create(**fields)
    except peewee.IntegrityError:
        raise Conflict(conflict) from None


def locked(query):
    """The query's rows locked until commit (PostgreSQL); SQLite has one writer anyway.

    NO KEY UPDATE: writers of the same rows wait, inserts merely referencing them do not.
    """
    return query.for_update("FOR NO KEY UPDATE") if database_proxy.for_update else query


CHUNK = 500  # ids per IN (...): well under every SQLite's parameter limit


def chunks(values: Sequence, size: int = CHUNK):
    for start in range(0, len(values), size):
        yield values[start : start + size]


def placeholders(count: int) -> str:
    return ", ".join([database_proxy.param] * count)


def timestamp(value) -> datetime.datetime | None:
    # Raw SQL hands SQLite's timestamps back as text; peewee's field parses them.
    return QueueRecipient.next_attempt_at.python_value(value)


# --- finding things by what a person knows of them ------------------------------------

# How many candidates an ambiguous name lists.
CANDIDATES_SHOWN = 10


def folded(value):
    """A text column or value in lower case, made by the database the same way on both
    backends (PostgreSQL's lower(), SQLite's registered unicode_lower()), so a value and
    the text searched for compare alike whatever their case or script."""
    if is_sqlite(database_proxy.obj):
        return peewee.fn.unicode_lower(value)
    return peewee.fn.LOWER(value)


def same_text(column, text: str):
    """The column equals text, ignoring case."""
    return folded(column) == folded(text)


def contains_text(column, text: str):
    """The column contains text, ignoring case; % and _ are plain characters."""
    position = peewee.fn.INSTR if is_sqlite(database_proxy.obj) else peewee.fn.STRPOS
    return position(folded(column), folded(text)) > 0


def no_match(what: str, text: str, searched: str, hint: str) -> NotFound:
    """The refusal for a text that names nothing: what was searched and what to do."""
    return NotFound(f'no {what} matches "{text}" (by {searched}); {hint}')


def several_match(what: str, text: str, labels: Sequence[str], total: int, hint: str):
    """The refusal for a text that names several things: the first few and the count."""
    more = f"; and {total - len(labels)} more" if total > len(labels) else ""
    return Ambiguous(f'{total} {what} match "{text}": {"; ".join(labels)}{more}; {hint}')
