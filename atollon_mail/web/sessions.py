"""Login sessions, kept in this process's memory (logins are throttled by auth.py).

One appliance runs one process, so a dict is enough; a restart logs everyone out. The
table is bounded so that a flood of logins cannot grow memory without end.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict

import attrs

from atollon_mail.store.records import UserRecord

SESSION_COOKIE = "atollon_session"
# Before login there is no session: the login form's CSRF token is a double-submit cookie.
LOGIN_CSRF_COOKIE = "atollon_login_csrf"


def new_token() -> str:
    return secrets.token_urlsafe(32)


@attrs.define
class Session:
    id: str
    user: UserRecord
    csrf_token: str
    last_seen: float


class SessionStore:
    """Sessions by id; one idle longer than `idle_timeout` seconds is gone."""

    def __init__(self, clock, idle_timeout: float = 30 * 60, max_sessions: int = 10_000):
        self._clock = clock
        self.idle_timeout = idle_timeout
        self._max = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: UserRecord) -> Session:
        """A new session with a new random id: an id known before login is never reused."""
        now = self._clock.seconds()
        self._expire(now)
        while len(self._sessions) >= self._max:
            self._sessions.popitem(last=False)
        session = Session(id=new_token(), user=user, csrf_token=new_token(), last_seen=now)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, its idle time restarted; None if none or expired."""
        session = self._sessions.get(session_id) if session_id else None
        if session is None:
            return None
        now = self._clock.seconds()
        if now - session.last_seen > self.idle_timeout:
            del self._sessions[session.id]
            return None
        session.last_seen = now
        self._sessions.move_to_end(session.id)
        return session

    def alive(self, session_id: str) -> bool:
        """Whether the session is live, its idle time left as it is (an open event
        stream asks this and must not keep its session alive)."""
        session = self._sessions.get(session_id)
        return (
            session is not None and self._clock.seconds() - session.last_seen <= self.idle_timeout
        )

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _expire(self, now: float) -> None:
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_seen <= self.idle_timeout:
                break
            del self._sessions[oldest.id]
