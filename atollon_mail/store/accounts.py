"""Store operations for users: adding and listing them, the Users pages of the web admin
(the list with mailbox counts, one user, changing a name or the admin flag, setting a
password), and looking a user up to authenticate them or to check a web session.

Each runs inside the one transaction `Store.run` opens and returns frozen records.
"""

from __future__ import annotations

import re

import attrs
import peewee

from atollon_mail.store.common import (
    create,
    limited,
    locked,
    normalize_address,
    read_only,
    validate_login,
)
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.models import Context, Domain, Mailbox, User, WebSession, utc_now
from atollon_mail.store.records import UserRecord

NAME_LIMIT = 200

# PostgreSQL refuses NUL in text, and the other control characters have no place in a name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def user_record(user: User) -> UserRecord:
    return UserRecord(id=user.id, login=user.login, name=user.name, is_admin=user.is_admin)


def get_user_row(login: str) -> User:
    try:
        return User.get(User.login == login.strip().lower())
    except User.DoesNotExist:
        raise NotFound(f"no user {login}; add one with: user add {login}") from None


def add_user(login: str, password_hash: str, name: str = "", is_admin: bool = False) -> UserRecord:
    """A new user, with the To Do context their mail is filed into by default."""
    login = validate_login(login)
    if User.select().where(User.login == login).exists():
        raise Conflict(f"user {login} exists already")
    user = create(
        User,
        f"user {login} exists already",
        login=login,
        name=limited(name, 200, "name") or login,
        password_hash=password_hash,
        is_admin=is_admin,
        created_at=utc_now(),
    )
    Context.create(kind="todo", name=f"To Do ({login})", owner=user, created_at=utc_now())
    return user_record(user)


@read_only
def list_users() -> list[UserRecord]:
    return [user_record(user) for user in User.select().order_by(User.login)]


@read_only
def user_password_hash(login: str) -> str:
    return get_user_row(login).password_hash


@read_only
def has_admin() -> bool:
    return User.select().where(User.is_admin == True).exists()  # noqa: E712 (peewee expression)


@read_only
def authenticate_lookup(login: str) -> tuple[UserRecord, str] | None:
    """The user and their password hash, to be checked off the store's thread."""
    user = User.get_or_none(User.login == login.strip().lower())
    if user is None:
        return None
    return user_record(user), user.password_hash


@read_only
def login_of_address(address: str) -> str | None:
    """The login of the user who owns the active mailbox at `address` (name@domain, in any
    case), so that a mailbox's address can be given as the login; None when no active
    mailbox has that address (an alias is not a mailbox's address)."""
    try:
        local, domain = normalize_address(address)
    except Invalid:
        return None
    found = (
        User.select(User.login)
        .join(Mailbox, on=(Mailbox.owner == User.id))
        .join(Domain, on=(Mailbox.domain == Domain.id))
        .where(
            (Domain.name == domain) & (Mailbox.local_part == local) & (Mailbox.active == True)  # noqa: E712
        )
        .tuples()
        .first()
    )
    return None if found is None else found[0]


@read_only
def session_user(login: str) -> UserRecord | None:
    """The user a session belongs to, as they are now (None once removed)."""
    user = User.get_or_none(User.login == login)
    return None if user is None else user_record(user)


# --- the Users pages --------------------------------------------------------------------


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
    return user_record(get_user_row(login))


def update_user(login: str, name: str | None = None, is_admin: bool | None = None) -> UserRecord:
    """Change what is given; an empty name becomes the login (as `add_user` does).

    Removing the admin flag from the last admin is refused: the appliance would have no
    one left to administer it.
    """
    user = get_user_row(login)
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
    return user_record(user)


def set_password(login: str, password_hash: str) -> UserRecord:
    if not password_hash:
        raise Invalid("the password hash must not be empty")
    user = get_user_row(login)
    user.password_hash = password_hash
    user.save()
    # A new password ends every web login of the user, on every node (the sessions are
    # in the store), in the same transaction.
    WebSession.delete().where(WebSession.user == user.id).execute()
    return user_record(user)
