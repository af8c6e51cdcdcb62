"""A small page framework on twisted.web.

A page handler is `async def handler(page: PageRequest) -> Page | Redirect`, registered
with `WebApp.route(path, methods=..., login=..., admin=..., max_body=..., uploads=...)`.
The framework looks up the session, refuses what the route does not allow, checks the CSRF
token of every POST, runs the handler, and turns `HttpError` (or any failure) into an error
page: never a traceback. A request body over the route's max_body is refused before it is
read; a route that needs a login takes no more than MAX_FORM_BYTES from a client without a
session. A route with uploads takes multipart/form-data: its files are `page.files`.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import unicodedata
from collections.abc import Awaitable, Callable
from urllib.parse import quote, unquote, urlsplit

import attrs
import jinja2
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from atollon_mail.addresses import forwarded_client
from atollon_mail.web.bodylimit import DEFAULT_BODY_LIMIT
from atollon_mail.web.sessions import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Session,
    SessionStore,
)
from atollon_mail.web.uploads import Upload, is_multipart, read_multipart

log = Logger()

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
TEMPLATES_DIR = os.path.join(PACKAGE_DIR, "templates")
STATIC_DIR = os.path.join(PACKAGE_DIR, "static")

# Form bodies of the admin pages are small; a route may allow more (max_body). A larger
# body is refused before it is read (bodylimit.py) and, behind that, before parsing.
MAX_FORM_BYTES = DEFAULT_BODY_LIMIT

ERROR_TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    429: "Too many attempts",
    500: "Something went wrong",
    503: "Busy",
}


class HttpError(Exception):
    """Raised by a handler: answered with an error page of this status and message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def not_found() -> HttpError:
    # Used also for objects the user may not see: whether they exist is not told.
    return HttpError(404, "There is no such page here; check the address or use the menu.")


HTML = "text/html; charset=utf-8"


@attrs.frozen
class Page:
    template: str
    context: dict = attrs.field(factory=dict)
    status: int = 200
    content_type: str = HTML  # another, such as text/xml, for a document that is no page


@attrs.frozen
class Redirect:
    location: str  # a path on this site
    status: int = 303  # after a POST: the browser follows with a GET


@attrs.frozen
class Streaming:
    """The handler answered the request itself and keeps it open (an event stream): the
    framework writes nothing more to it."""


Handler = Callable[["PageRequest"], Awaitable["Page | Redirect | Streaming"]]


@attrs.frozen
class Route:
    handler: Handler
    methods: tuple[str, ...]
    login: bool
    admin: bool
    max_body: int = MAX_FORM_BYTES  # bytes of request body the route accepts
    uploads: bool = False  # the route takes multipart/form-data with files


def cookie_header(request, name: str, value: str, max_age: int | None = None) -> bytes:
    """A Set-Cookie value: HttpOnly and SameSite=Lax always, Secure when served over TLS."""
    parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Lax"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if request.isSecure():
        parts.append("Secure")
    return "; ".join(parts).encode("ascii")


def safe_next(target: str | None) -> str:
    """A path on this site to go to after login; anything else (another site) is "/".

    Browsers read a backslash as a slash and drop tabs and newlines, so "/\\host" and
    "/\t/host" would lead to another site like "//host": a path must start with exactly
    one "/", hold no control character or backslash, and parse to no scheme or host.
    """
    if not _local_path(target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not _local_path(unquote(parts.path)):
        return "/"  # the path once more percent-decoded, for whatever decodes it again
    return target


def _local_path(text: str | None) -> bool:
    return bool(
        text
        and text.startswith("/")
        and not text.startswith("//")
        and "\\" not in text
        and not any(unicodedata.category(character) in ("Cc", "Cf") for character in text)
    )


class PageRequest:
    """What a handler sees: the request, its form, the session, the store and rendering."""

    def __init__(self, app: WebApp, request, session: Session | None, form: dict[str, str]):
        self.app = app
        self.request = request
        self.session = session
        self.form = form
        # The files uploaded with a multipart form (a route with uploads only), in order.
        self.files: list[Upload] = []
        self.store = app.store
        # A cookie to set with the answer (login, logout), as (name, value, max_age).
        self.cookies: list[tuple[str, str, int | None]] = []

    @property
    def user(self):
        return None if self.session is None else self.session.user

    @property
    def client_address(self) -> str:
        return self.app.client_address(self.request)

    def arg(self, name: str, default: str = "") -> str:
        values = self.request.args.get(name.encode())
        if not values:
            return default
        return values[0].decode("utf-8", errors="replace")

    def cookie(self, name: str) -> str | None:
        value = self.request.getCookie(name.encode())
        return None if value is None else value.decode("ascii", errors="replace")

    def set_cookie(self, name: str, value: str, max_age: int | None = None) -> None:
        self.cookies.append((name, value, max_age))

    async def rights(self, mailbox_address: str):
        """The user's rights on a mailbox (view, edit); a mailbox not found, or an address
        that is none, is no rights."""
        from atollon_mail.store import mailboxes
        from atollon_mail.store.errors import Invalid, NotFound
        from atollon_mail.store.records import MailboxRights

        try:
            return await self.store.run(mailboxes.user_rights, self.user.login, mailbox_address)
        except (NotFound, Invalid):
            return MailboxRights(view=False, edit=False)

    async def require_view(self, mailbox_address: str):
        """The rights on a mailbox the user may view; otherwise 404 (as if it did not exist)."""
        rights = await self.rights(mailbox_address)
        if not rights.view:
            raise not_found()
        return rights


class WebApp:
    """Routes, sessions, the authenticator and the one Jinja2 environment of the web admin."""

    def __init__(
        self,
        store,
        reactor,
        config,
        intake,
        workers,
        authenticator,
        clock=None,
        learner=None,
        mail_events=None,
    ):
        self.store = store
        # Reverse proxies whose X-Forwarded-For names the client (see client_address).
        self.trusted_proxies = tuple(
            ipaddress.ip_network(network, strict=False) for network in config.web.trusted_proxies
        )
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        # Pages that need settings (DNS lookups, size limits, links) read them here.
        self.config = config
        # Mail composed in the browser goes through the same intake as SMTP submission:
        # forwarding, group commit, the auto-responder and the delivery runner's wake-up.
        self.intake = intake
        # The appliance's worker pools (atollon_mail.workers): password hashing in `cpu`,
        # the DNS pages' lookups in `dns`.
        self.workers = workers
        appliance_name = config.appliance.hostname
        self.appliance_name = appliance_name
        self.sessions = SessionStore(
            self.store, self.clock, idle_timeout=config.web.session_idle_timeout
        )
        # The appliance's one IAuthenticator (argon2 + throttle), shared with SMTP AUTH.
        self.authenticator = authenticator
        # The spam filter's ISpamLearner: told when a user moves mail to Junk or back
        # (None: no spam filter to teach).
        self.learner = learner
        # The open mailbox pages' event streams (mailevents.MailEventStreams; None: the
        # pages are not told of new mail).
        self.mail_events = mail_events
        self.routes: dict[str, Route] = {}
        self.environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.environment.globals["appliance_name"] = appliance_name

    def route(
        self,
        path: str,
        methods=("GET",),
        login: bool = True,
        admin: bool = False,
        max_body: int = MAX_FORM_BYTES,
        uploads: bool = False,
    ):
        def register(handler: Handler) -> Handler:
            self.routes[path] = Route(handler, tuple(methods), login, admin, max_body, uploads)
            return handler

        return register

    def client_address(self, request) -> str:
        """The client a request comes from: the TCP peer, or for a peer that is a trusted
        proxy, the client its X-Forwarded-For names (atollon_mail.addresses). The throttle
        counts logins by it, so one attacker behind the proxy does not block everyone."""
        peer = getattr(request.getClientAddress(), "host", None)
        if not peer:
            return "unknown"
        forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for", [])
        values = [value.decode("latin-1") for value in forwarded]
        return forwarded_client(peer, values, self.trusted_proxies)

    def body_limit(self, path: bytes, request=None) -> int:
        """How many bytes of request body a path accepts (read by BodyLimitedRequest when
        the request's headers are in). A route that needs a login allows more than a form
        only to a request with a live session: anyone else is answered with the login
        page, so a large body of theirs would be read for nothing."""
        route = self.routes.get(path.decode("utf-8", errors="replace"))
        if route is None:
            return MAX_FORM_BYTES
        if route.login and route.max_body > MAX_FORM_BYTES and request is not None:
            cookie = request.getCookie(SESSION_COOKIE.encode())
            # Asked before the body is read, without waiting: a session this node served
            # (one made on another node gets the larger limit after its first page here).
            if self.sessions.cached(cookie.decode("ascii", "replace") if cookie else None) is None:
                return MAX_FORM_BYTES
        return route.max_body

    # --- answering one request -------------------------------------------------------

    def render(self, request) -> object:
        finished = request.notifyFinish()
        finished.addErrback(lambda _: None)  # the client went away; nothing to answer
        answer = Deferred.fromCoroutine(self._answer(request))
        answer.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure, request) -> None:
        log.failure("web: a page failed", failure)
        if request.finished or request._disconnected:
            return
        try:
            self._write(request, *self._error_page(request, None, HttpError(500, _FAILED)))
        except Exception:  # the error page itself failed: answer plainly
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(_FAILED.encode() + b"\n")
            request.finish()

    async def _answer(self, request) -> None:
        session = None
        page = None
        try:
            path = request.path.decode("utf-8", errors="replace")
            route = self.routes.get(path)
            if route is None:
                raise not_found()
            method = request.method.decode("ascii", errors="replace")
            if method == "HEAD" and "GET" in route.methods:
                method = "GET"
            if method not in route.methods:
                raise HttpError(
                    405,
                    f"This page does not accept {method}; use the page's own form.",
                    {"Allow": ", ".join(route.methods)},
                )
            session = await self._session(request)
            if route.login and session is None:
                target = request.uri.decode("utf-8", "replace") if method == "GET" else "/"
                result = Redirect(f"/login?next={quote(safe_next(target), safe='/')}")
            elif route.admin and not session.user.is_admin:
                raise not_found()
            else:
                form, files = self._form(request, route) if method == "POST" else ({}, [])
                page = PageRequest(self, request, session, form)
                page.files = files
                if method == "POST":
                    self._check_csrf(page)
                result = await route.handler(page)
                if isinstance(result, Streaming):
                    return
            status, body, headers = self._result(request, page, result)
        except HttpError as problem:
            status, body, headers = self._error_page(request, session, problem)
        if request.finished or request._disconnected:
            return
        for name, value, max_age in page.cookies if page is not None else ():
            request.responseHeaders.addRawHeader(
                b"set-cookie", cookie_header(request, name, value, max_age)
            )
        self._write(request, status, body, headers)

    async def _session(self, request) -> Session | None:
        cookie = request.getCookie(SESSION_COOKIE.encode())
        # The session and its user as the store knows them now (removed or demoted takes
        # effect at once), on whichever node it was made.
        return await self.sessions.get(cookie.decode("ascii", "replace") if cookie else None)

    def _form(self, request, route: Route) -> tuple[dict[str, str], list[Upload]]:
        header = request.getHeader(b"content-type") or b""
        content_type = header.split(b";")[0].strip().lower()
        multipart = route.uploads and is_multipart(header)
        if content_type != b"application/x-www-form-urlencoded" and not multipart:
            raise HttpError(400, "This form must be sent by the browser as a normal form.")
        request.content.seek(0, os.SEEK_END)
        size = request.content.tell()
        if size > route.max_body:
            raise HttpError(413, "The form sent is too large; send less.")
        if multipart:
            request.content.seek(0)
            found = read_multipart(request.content, header, size)
            if found is None:
                raise HttpError(400, "The form could not be read; reload the page and retry.")
            return found
        form = {
            key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
            for key, values in request.args.items()
            if values
        }
        return form, []

    def _check_csrf(self, page: PageRequest) -> None:
        if page.session is not None:
            expected = page.session.csrf_token
        else:
            expected = page.cookie(LOGIN_CSRF_COOKIE) or ""
        sent = page.form.get("csrf_token", "")
        if not expected or not sent or not hmac.compare_digest(expected, sent):
            raise HttpError(
                403, "This form has expired or did not come from this site; reload it and retry."
            )

    def _result(self, request, page: PageRequest, result) -> tuple[int, bytes, dict]:
        if isinstance(result, Redirect):
            return result.status, b"", {"Location": safe_next(result.location)}
        if not isinstance(result, Page):
            raise TypeError(f"a page handler returned {result!r}")
        nonce = secrets.token_urlsafe(16)
        body = self.render_template(
            result.template, page.session, nonce, path=page.request.path.decode(), **result.context
        )
        headers = {"Content-Security-Policy": _csp(nonce)}
        if result.content_type != HTML:
            headers["Content-Type"] = result.content_type
        return result.status, body, headers

    def render_template(self, name: str, session: Session | None, nonce: str, **context) -> bytes:
        context.setdefault("user", None if session is None else session.user)
        context.setdefault("csrf_token", "" if session is None else session.csrf_token)
        context.setdefault("path", "")
        template = self.environment.get_template(name)
        return template.render(csp_nonce=nonce, **context).encode("utf-8")

    def write_page(self, request, response_code: int, template: str, **context) -> None:
        """Answer a request outside the routes (no session) with a rendered page."""
        nonce = secrets.token_urlsafe(16)
        body = self.render_template(template, None, nonce, **context)
        self._write(request, response_code, body, {"Content-Security-Policy": _csp(nonce)})

    def _error_page(self, request, session, problem: HttpError) -> tuple[int, bytes, dict]:
        nonce = secrets.token_urlsafe(16)
        body = self.render_template(
            "error.html",
            session,
            nonce,
            status=problem.status,
            title=ERROR_TITLES.get(problem.status, "Error"),
            message=problem.message,
        )
        return problem.status, body, {**problem.headers, "Content-Security-Policy": _csp(nonce)}

    def _write(self, request, status: int, body: bytes, headers: dict) -> None:
        request.setResponseCode(status)
        request.setHeader(b"content-type", HTML.encode())
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"same-origin")
        for name, value in headers.items():
            request.setHeader(name.encode(), value.encode())
        if request.method != b"HEAD":
            request.write(body)
        request.finish()


_FAILED = "Something went wrong on the appliance; try again, and see its log if it persists."


def _csp(nonce: str) -> str:
    return (
        f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )


class PageResource(Resource):
    """Every path that is not another child of the root goes to the app's routes."""

    isLeaf = True

    def __init__(self, app: WebApp):
        super().__init__()
        self._app = app

    def render(self, request):
        return self._app.render(request)


_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


class StaticResource(Resource):
    """The files of static/ (no listing, no subdirectories), read once at start."""

    isLeaf = True

    def __init__(self, app: WebApp, directory: str = STATIC_DIR):
        super().__init__()
        self._app = app
        self._files: dict[str, tuple[bytes, str]] = {}
        for name in os.listdir(directory):
            kind = _STATIC_TYPES.get(os.path.splitext(name)[1])
            if kind:
                with open(os.path.join(directory, name), "rb") as source:
                    self._files[name] = (source.read(), kind)

    def render(self, request):
        name = "/".join(segment.decode("utf-8", "replace") for segment in request.postpath)
        found = self._files.get(name)
        if found is None or request.method not in (b"GET", b"HEAD"):
            return self._app.render(request)  # its routes answer 404 (/static/ is not one)
        body, kind = found
        request.setHeader(b"content-type", kind.encode())
        request.setHeader(b"cache-control", b"max-age=3600")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return b"" if request.method == b"HEAD" else body
