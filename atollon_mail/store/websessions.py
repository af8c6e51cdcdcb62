"""Web sessions, kept in the database so that every node's web service knows them.

A session is found by the SHA-256 of its token (the cookie's value): the table alone
lets no one in. The web side (web/sessions.py) caches them, and writes `last_seen` at
most once a minute per session, so a page view does not cost a write.
"""

from __future__ import annotations

import datetime

from atollon_mail.store.accounts import user_record
from atollon_mail.store.common import read_only
from atollon_mail.store.models import User, WebSession
from atollon_mail.store.records import WebSessionRecord


def create_session(
    token_hash: str,
    login: str,
    csrf_token: str,
    now: datetime.datetime,
    idle_before: datetime.datetime,
    max_sessions: int,
) -> bool:
    """A new session of the user `login` (False: no such user any more). Sessions idle
    since before `idle_before` go; past `max_sessions`, the least recently seen go too
    (a flood of logins cannot grow the table without end)."""
    user = User.get_or_none(User.login == login)
    if user is None:
        return False
    WebSession.delete().where(WebSession.last_seen < idle_before).execute()
    surplus = WebSession.select().count() - max_sessions + 1
    if surplus > 0:
        oldest = WebSession.select(WebSession.id).order_by(WebSession.last_seen, WebSession.id)
        ids = [row.id for row in oldest.limit(surplus)]
        WebSession.delete().where(WebSession.id.in_(ids)).execute()
    WebSession.insert(
        token_hash=token_hash,
        user=user.id,
        csrf_token=csrf_token,
        created_at=now,
        last_seen=now,
    ).execute()
    return True


@read_only
def find_session(token_hash: str) -> WebSessionRecord | None:
    """The session with this token's hash and its user as they are now; None if none."""
    row = (
        WebSession.select(WebSession, User)
        .join(User)
        .where(WebSession.token_hash == token_hash)
        .first()
    )
    if row is None:
        return None
    return WebSessionRecord(
        user=user_record(row.user),
        csrf_token=row.csrf_token,
        created_at=row.created_at,
        last_seen=row.last_seen,
    )


def touch_session(token_hash: str, now: datetime.datetime) -> bool:
    """The session was used at `now` (False: it is gone)."""
    query = WebSession.update(last_seen=now).where(
        (WebSession.token_hash == token_hash) & (WebSession.last_seen < now)
    )
    return query.execute() > 0 or find_session(token_hash) is not None


def drop_session(token_hash: str) -> None:
    WebSession.delete().where(WebSession.token_hash == token_hash).execute()


@read_only
def live_sessions(token_hashes: list[str]) -> frozenset[str]:
    """Those of `token_hashes` whose session still exists (one query per 500)."""
    found: set[str] = set()
    for start in range(0, len(token_hashes), 500):  # under SQLite's bound on parameters
        chunk = token_hashes[start : start + 500]
        query = WebSession.select(WebSession.token_hash).where(WebSession.token_hash.in_(chunk))
        found.update(row.token_hash for row in query)
    return frozenset(found)


def set_flash(token_hash: str, page: str, message: str) -> None:
    """A confirmation for the session's next view of `page`, replacing any pending one."""
    WebSession.update(flash_for=page[:400], flash=message).where(
        WebSession.token_hash == token_hash
    ).execute()


def take_flash(token_hash: str, page: str) -> str | None:
    """The pending confirmation for `page`, cleared as it is read (None: none for it)."""
    row = (
        WebSession.select(WebSession.id, WebSession.flash)
        .where((WebSession.token_hash == token_hash) & (WebSession.flash_for == page[:400]))
        .first()
    )
    if row is None or row.flash is None:
        return None
    # Cleared only if still the one read: of two views at once, on any nodes, one shows it.
    cleared = (
        WebSession.update(flash_for=None, flash=None)
        .where((WebSession.id == row.id) & (WebSession.flash == row.flash))
        .execute()
    )
    return row.flash if cleared else None


@read_only
def count_sessions() -> int:
    return WebSession.select().count()
