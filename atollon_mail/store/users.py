"""Store operations behind the web admin's Users pages: the list with mailbox counts, one
user, changing a name or the admin flag, and setting a password.

Like those in `queries`, each runs inside the one transaction `Store.run` opens and
returns frozen records.
"""

from __future__ import annotations

import re

import attrs
import peewee

from atollon_mail.store.common import limited, locked, read_only
from atollon_mail.store.errors import Conflict, Invalid
from atollon_mail.store.models import Mailbox, User
from atollon_mail.store.queries import _get_user, _user_record
from atollon_mail.store.records import UserRecord

NAME_LIMIT = 200

# PostgreSQL refuses NUL in text, and the other control characters have no place in a name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@attrs.frozen
class UserSummary:
    """A user as the Users list shows them."""

    login: str
    name: str
    is_admin: bool
    mailboxes: int  # owned


def normalize_user_name(name: str) -> str:
    """A user's display name, stripped; refused if too long or with control characters."""
    if _CONTROL.search(name):
        raise Invalid("the name must be one line of text, without control characters")
    return limited(name, NAME_LIMIT, "name")


@read_only
def list_user_summaries() -> list[UserSummary]:
    owned = (
        Mailbox.select(Mailbox.owner, peewee.fn.COUNT(Mailbox.id).alias("owned"))
        .group_by(Mailbox.owner)
        .tuples()
    )
    counts = dict(owned)
    return [
        UserSummary(user.login, user.name, user.is_admin, counts.get(user.id, 0))
        for user in User.select().order_by(User.login)
    ]


@read_only
def get_user(login: str) -> UserRecord:
    return _user_record(_get_user(login))


def update_user(login: str, name: str | None = None, is_admin: bool | None = None) -> UserRecord:
    """Change what is given; an empty name becomes the login (as `add_user` does).

    Removing the admin flag from the last admin is refused: the appliance would have no
    one left to administer it.
    """
    user = _get_user(login)
    if name is not None:
        user.name = normalize_user_name(name) or user.login
    if is_admin is not None and is_admin != user.is_admin:
        if not is_admin:
            # Every admin row locked: two admins demoting each other at once cannot both
            # see the other still an admin.
            admins = list(locked(User.select(User.id).where(User.is_admin == True)))  # noqa: E712
            if not any(admin.id != user.id for admin in admins):
                raise Conflict(
                    f"{user.login} is the last administrator; make another user an "
                    "administrator first"
                )
        user.is_admin = is_admin
    user.save()
    return _user_record(user)


def set_password(login: str, password_hash: str) -> UserRecord:
    if not password_hash:
        raise Invalid("the password hash must not be empty")
    user = _get_user(login)
    user.password_hash = password_hash
    user.save()
    return _user_record(user)
