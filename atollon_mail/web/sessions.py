"""Login sessions, kept in the store so that every node's web service knows them (logins
are throttled by auth.py).

The store keeps each session under the SHA-256 of its token, with its user, CSRF token
and when it was last seen (store.websessions). Each lookup reads it (one read, which
also gives the user as they are now: removed or demoted takes effect at once); `last_seen`
is written at most once every TOUCH_INTERVAL seconds per session, so page views cost no
writes (so a session used on one node and then on another may end up to that minute
before its idle timeout). The sessions this node served are cached: what must be
answered without waiting (a request body's size limit, an open event stream's
heartbeat) is answered from there.
Both the store's table and the cache are bounded, so a flood of logins cannot grow either
without end.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from collections import OrderedDict

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from atollon_mail.store import websessions
from atollon_mail.store.records import UserRecord

log = Logger()

SESSION_COOKIE = "atollon_session"
# Before login there is no session: the login form's CSRF token is a double-submit cookie.
LOGIN_CSRF_COOKIE = "atollon_login_csrf"
# `last_seen` is written at most this often per session (seconds); the idle timeout is
# counted from the last write or the last use this node saw, whichever is later.
TOUCH_INTERVAL = 60.0


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(tzinfo=None)


def _seconds(moment: datetime.datetime) -> float:
    return moment.replace(tzinfo=datetime.UTC).timestamp()


@attrs.define
class Session:
    id: str
    user: UserRecord
    csrf_token: str
    last_seen: float
    # When `last_seen` was last written to the store (seconds).
    written: float = 0.0


class SessionStore:
    """Sessions by token; one idle longer than `idle_timeout` seconds is gone."""

    def __init__(
        self,
        store,
        clock,
        idle_timeout: float = 30 * 60,
        max_sessions: int = 10_000,
        touch_interval: float = TOUCH_INTERVAL,
    ):
        self._store = store
        self._clock = clock
        self.idle_timeout = idle_timeout
        self._max = max_sessions
        self._touch_interval = touch_interval
        self._cache: OrderedDict[str, Session] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        """Sessions cached on this node."""
        return len(self._cache)

    @defer.inlineCallbacks
    def create(self, user: UserRecord):
        """A new session with a new random id (an id known before login is never reused);
        fires with it once stored, or with None when the user was removed meanwhile."""
        now = self._clock.seconds()
        session = Session(
            id=new_token(), user=user, csrf_token=new_token(), last_seen=now, written=now
        )
        made = yield self._store.run(
            websessions.create_session,
            token_hash(session.id),
            user.login,
            session.csrf_token,
            _utc(now),
            _utc(now - self.idle_timeout),
            self._max,
        )
        if not made:
            return None
        self._remember(session)
        return session

    @defer.inlineCallbacks
    def get(self, session_id: str | None):
        """Fires with the live session with this id (its user as the store knows them
        now), its idle time restarted; None if none or expired."""
        if not session_id:
            return None
        found = yield self._store.run(websessions.find_session, token_hash(session_id))
        cached = self._cache.pop(session_id, None)
        if found is None:
            return None
        now = self._clock.seconds()
        written = _seconds(found.last_seen)
        last_seen = max(written, cached.last_seen if cached is not None else written)
        if now - last_seen > self.idle_timeout:
            yield self._store.run(websessions.drop_session, token_hash(session_id))
            return None
        session = Session(
            id=session_id,
            user=found.user,
            csrf_token=found.csrf_token,
            last_seen=now,
            written=written,
        )
        if now - written >= self._touch_interval:
            session.written = now
            touched = self._store.run(websessions.touch_session, token_hash(session_id), _utc(now))
            touched.addErrback(
                lambda failure: log.failure("noting a session's use failed", failure)
            )
        self._remember(session)
        return session

    def cached(self, session_id: str | None) -> Session | None:
        """The live session with this id as this node last saw it, without asking the store
        (None: not seen here, or idle too long)."""
        session = self._cache.get(session_id) if session_id else None
        if session is None or self._clock.seconds() - session.last_seen > self.idle_timeout:
            return None
        return session

    def alive(self, session_id: str) -> bool:
        """Whether the session is live as far as this node knows, its idle time left as it
        is (an open event stream asks this and must not keep its session alive)."""
        return self.cached(session_id) is not None

    def drop(self, session_id: str):
        """Log out: the session is gone on every node; fires once the store forgot it."""
        self._cache.pop(session_id, None)
        return self._store.run(websessions.drop_session, token_hash(session_id))

    def _remember(self, session: Session) -> None:
        self._cache[session.id] = session
        self._cache.move_to_end(session.id)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)


def set_flash(store, session: Session, page: str, message: str):
    """Fires once `message` is kept for the session's next view of `page`. Kept in the
    store, not in this process: the redirect's GET may reach another node."""
    return store.run(websessions.set_flash, token_hash(session.id), page, message)


def take_flash(store, session: Session, page: str):
    """Fires with the confirmation kept for `page` (None: none), which is then gone."""
    return store.run(websessions.take_flash, token_hash(session.id), page)
