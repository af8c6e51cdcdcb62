"""Shared by the web tests: a small HTTP client with a cookie jar, and a mixin that
serves the web root on a real loopback port."""

from __future__ import annotations

import functools
import re
from http.cookies import SimpleCookie
from io import BytesIO
from urllib.parse import urlencode

from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from atollon_mail.passwords import hash_password
from atollon_mail.web.bodylimit import BodyLimitedRequest


@functools.cache
def _hash(password: str) -> str:
    return hash_password(password)


class Response:
    def __init__(self, status: int, headers: Headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body
        self.text = body.decode("utf-8")

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def set_cookies(self) -> list[str]:
        return self.headers.getRawHeaders("set-cookie") or []

    def csrf(self) -> str:
        return re.search(r'name="csrf_token" value="([^"]*)"', self.text).group(1)


class _Collect(Protocol):
    def __init__(self, done: defer.Deferred):
        self.done = done
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason) -> None:
        self.done.callback(b"".join(self.parts))


def _read_body(response) -> defer.Deferred:
    # readBody would warn about Twisted's own transport proxy; this reads the same bytes.
    done = defer.Deferred()
    response.deliverBody(_Collect(done))
    return done


class Browser:
    """An HTTP client with its own cookie jar, following no redirects."""

    def __init__(self, port: int, headers: dict[str, str] | None = None):
        self.base = f"http://127.0.0.1:{port}"
        self.headers = dict(headers or {})  # sent with every request
        # One connection per request: nothing stays open when a test ends.
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        self.cookies: dict[str, str] = {}

    @defer.inlineCallbacks
    def request(
        self,
        method: str,
        path: str,
        form: dict | None = None,
        body: bytes | None = None,
        content_type: str = "",
    ):
        headers = Headers()
        for name, value in self.headers.items():
            headers.addRawHeader(name, value)
        if self.cookies:
            cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            headers.addRawHeader("cookie", cookie)
        if form is not None:
            headers.addRawHeader("content-type", "application/x-www-form-urlencoded")
            body = urlencode(form).encode()
        elif body is not None:
            headers.addRawHeader("content-type", content_type)
        if body is not None:
            body = FileBodyProducer(BytesIO(body))
        response = yield self.agent.request(
            method.encode(), (self.base + path).encode(), headers, body
        )
        content = yield _read_body(response)
        for raw in response.headers.getRawHeaders("set-cookie") or []:
            parsed = SimpleCookie()
            parsed.load(raw)
            for name, morsel in parsed.items():
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return Response(response.code, response.headers, content)

    def get(self, path: str):
        return self.request("GET", path)

    def post_multipart(self, path: str, form: dict, files: list[tuple[str, str, bytes]] = ()):
        """A multipart/form-data POST, as a browser sends a form with file inputs: the
        fields, then each (field, filename, bytes) of files."""
        boundary = "----form" + "7d9e1c3b5a"
        parts = []
        for name, value in form.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                + str(value).encode("utf-8")
                + b"\r\n"
            )
        for field, filename, data in files:
            quoted = filename.replace('"', "%22")
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{quoted}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                + data
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request(
            "POST", path, body=body, content_type=f"multipart/form-data; boundary={boundary}"
        )

    def post(self, path: str, form: dict):
        return self.request("POST", path, form)

    @defer.inlineCallbacks
    def login(self, login: str, password: str):
        form = yield self.get("/login")
        return (
            yield self.post(
                "/login", {"login": login, "password": password, "csrf_token": form.csrf()}
            )
        )


class ServedWebMixin:
    """Serves a web root on a free loopback port; browsers made here are closed after."""

    default_login = ("admin", "admin-secret")

    def serve(self, root) -> None:
        site = Site(root, requestFactory=BodyLimitedRequest)  # as the appliance serves it
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        # Agent keeps connections alive: close them before the reactor is checked for leaks.
        self.browsers: list[Browser] = []
        self.addCleanup(self._close_browsers)

    def _close_browsers(self):
        pools = [browser.agent._pool for browser in self.browsers]
        return defer.gatherResults([pool.closeCachedConnections() for pool in pools])

    def browser(self, headers: dict[str, str] | None = None) -> Browser:
        browser = Browser(self.port, headers)
        self.browsers.append(browser)
        return browser

    @defer.inlineCallbacks
    def logged_in(self, login: str | None = None, password: str | None = None):
        if login is None:
            login, password = self.default_login
        browser = self.browser()
        response = yield browser.login(login, password)
        self.assertEqual(response.status, 303)
        return browser
