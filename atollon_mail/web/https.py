"""The plain-HTTP listener when the site has its own HTTPS listener ([web] tls_listen).

Over plain HTTP only what must be reachable without TLS is served: the ACME CA's HTTP-01
challenge (the CA asks on port 80), /health (load balancers, monitoring) and /metrics
(its own access rule: loopback or a bearer token). Every other path is answered with a
301 to the same path on https://<hostname>, so the login form and the session cookie
never travel in clear text. The HTTPS listener's answers carry Strict-Transport-Security,
so a browser that has been there once never uses plain HTTP for the host again.
"""

from __future__ import annotations

import re

from twisted.web.resource import Resource

from atollon_mail.certificates.challenges import CHALLENGE_PATH
from atollon_mail.web.bodylimit import BodyLimitedRequest

# A year; no includeSubDomains, as other hosts of the
# domain may not speak HTTPS.
HSTS = b"max-age=31536000"
PLAIN_PATHS = (b"health", b"metrics")


def https_port(description: str) -> int | None:
    """The TCP port of an endpoint description such as tcp:443:interface=\\:\\:, or None
    when it names none (a systemd socket, a UNIX socket)."""
    kind, *fields = re.split(r"(?<!\\):", description)  # a backslash escapes a colon
    if kind.strip().lower() not in ("tcp", "tcp6", "ssl"):
        return None
    named = dict(field.split("=", 1) for field in fields if "=" in field)
    positional = [field for field in fields if "=" not in field]
    port = named.get("port", positional[0] if positional else None)
    try:
        return int(port)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


class RedirectToHttps(Resource):
    isLeaf = True

    def __init__(self, origin: bytes):
        super().__init__()
        self._origin = origin

    def render(self, request):
        # The configured host name, never the Host header: no redirect to elsewhere.
        location = self._origin + (request.uri if request.uri.startswith(b"/") else b"/")
        request.setResponseCode(301)
        request.setHeader(b"location", location)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"" if request.method == b"HEAD" else b"This site is served over HTTPS.\n"


class PlainHttpRoot(Resource):
    """The root of the plain listener: `site_root`'s challenge, /health and /metrics;
    a redirect to https://`hostname`[:`port`] for the rest."""

    def __init__(self, site_root: Resource, hostname: str, port: int | None):
        super().__init__()
        self._site_root = site_root
        origin = f"https://{hostname}" + ("" if port in (None, 443) else f":{port}")
        self._redirect = RedirectToHttps(origin.encode("ascii"))

    def getChildWithDefault(self, path, request):
        challenge = path == CHALLENGE_PATH[0] and request.postpath[:1] == [CHALLENGE_PATH[1]]
        if path in PLAIN_PATHS or challenge:
            return self._site_root.getChildWithDefault(path, request)
        return self._redirect

    def render(self, request):
        return self._redirect.render(request)

    def client_address(self, request) -> str:
        return self._site_root.client_address(request)  # type: ignore[attr-defined]

    def body_limit(self, path: bytes, request=None) -> int:
        return self._site_root.body_limit(path, request)  # type: ignore[attr-defined]


class HstsRequest(BodyLimitedRequest):
    """A request on the HTTPS listener: every answer says to use HTTPS only."""

    def process(self):
        self.setHeader(b"strict-transport-security", HSTS)
        return super().process()
