"""HTTP-01 challenge answers: GET /.well-known/acme-challenge/<token>, no login.

The ACME exchange runs in a worker thread and adds a token's answer before it tells the CA
to look, and removes it once the order is done; the web service reads the answers on the
reactor thread. A lock keeps the two apart.
"""

from __future__ import annotations

import threading

from twisted.web.resource import Resource

CHALLENGE_PATH = (b".well-known", b"acme-challenge")


class ChallengeAnswers:
    """token -> key authorization, shared between the ACME thread and the web service."""

    def __init__(self):
        self._lock = threading.Lock()
        self._answers: dict[str, str] = {}

    def add(self, token: str, key_authorization: str) -> None:
        with self._lock:
            self._answers[token] = key_authorization

    def remove(self, token: str) -> None:
        with self._lock:
            self._answers.pop(token, None)

    def get(self, token: str) -> str | None:
        with self._lock:
            return self._answers.get(token)

    def __len__(self) -> int:
        with self._lock:
            return len(self._answers)


class ChallengeResource(Resource):
    """/.well-known/acme-challenge/<token>: the key authorization of a token being
    validated (text/plain), else 404. Served on whatever [web] listen is, which the CA
    reaches on port 80."""

    isLeaf = True

    def __init__(self, answers: ChallengeAnswers):
        super().__init__()
        self._answers = answers

    def render(self, request):
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-type", b"text/plain; charset=us-ascii")
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return b"only GET\n"
        # Traversal left [b"acme-challenge", token] (the root took ".well-known").
        segments = request.postpath
        answer = None
        if len(segments) == 2 and segments[0] == CHALLENGE_PATH[1] and segments[1]:
            answer = self._answers.get(segments[1].decode("ascii", "replace"))
        if answer is None:
            request.setResponseCode(404)
            return b"no such challenge\n"
        return b"" if request.method == b"HEAD" else answer.encode("ascii")
