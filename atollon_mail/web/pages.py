"""The pages of the web admin so far: login, logout, the dashboard, Options & Tools."""

from __future__ import annotations

import attrs
from twisted.internet.threads import deferToThreadPool

from atollon_mail.passwords import hash_password, verify_password
from atollon_mail.store import queries
from atollon_mail.store import web as web_ops
from atollon_mail.web.app import Page, PageRequest, Redirect, WebApp, safe_next
from atollon_mail.web.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE, new_token


@attrs.frozen
class Setting:
    title: str
    url: str
    description: str
    keywords: str = ""
    admin: bool = True

    def matches(self, query: str) -> bool:
        text = f"{self.title} {self.description} {self.keywords}".lower()
        return all(word in text for word in query.lower().split())


# Every settings page, in the order shown; some are pages still to come.
SETTINGS = (
    Setting("Domains", "/domains", "Domains this appliance receives for, and their mode."),
    Setting("Users", "/users", "People who log in: names, passwords, administrators.", "login"),
    Setting(
        "Mailboxes",
        "/mailboxes",
        "Addresses, aliases, forwarding, auto-replies and who may view or edit them.",
        "alias",
        admin=False,
    ),
    Setting(
        "Message configuration",
        "/message-types",
        "Message types and the default type of incoming and outgoing messages.",
        "messaging",
    ),
    Setting("Queue", "/queue", "Outgoing mail waiting, delivered or bounced; retry or delete.", ""),
    Setting(
        "DNS records",
        "/dns",
        "Records to publish for MX, SPF, DKIM and DMARC, and the last check of each domain.",
    ),
    Setting(
        "Mail client",
        "/mail",
        "Read, write and file messages in the mailboxes you may use.",
        "messaging webmail",
        admin=False,
    ),
)


class _DummyHash:
    """A hash to check unknown logins against, so they take as long as known ones."""

    value: str | None = None

    @classmethod
    async def get(cls, app: WebApp) -> str:
        if cls.value is None:
            cls.value = await _in_thread(app, hash_password, new_token())
        return cls.value


def _in_thread(app: WebApp, function, *args):
    # argon2 is CPU heavy: never on the reactor thread.
    return deferToThreadPool(app.reactor, app.reactor.getThreadPool(), function, *args)


def register(app: WebApp) -> None:
    @app.route("/login", methods=("GET", "POST"), login=False)
    async def login(page: PageRequest):
        if page.session is not None:
            return Redirect(safe_next(page.arg("next")))
        if page.request.method == b"GET":
            return _login_form(page, "", page.arg("next"))
        login_name = page.form.get("login", "").strip()
        password = page.form.get("password", "")
        target = page.form.get("next", "")
        address = page.client_address
        if app.throttle.blocked(address):
            minutes = max(1, round(app.throttle.window / 60))
            message = f"Too many failed attempts; wait {minutes} minutes and try again."
            return _login_form(page, login_name, target, {"password": message}, status=429)
        errors = {}
        if not login_name:
            errors["login"] = "Enter your login."
        if not password:
            errors["password"] = "Enter your password."
        if errors:
            return _login_form(page, login_name, target, errors)
        found = await page.store.run(queries.authenticate_lookup, login_name)
        password_hash = found[1] if found else await _DummyHash.get(app)
        valid = await _in_thread(app, verify_password, password_hash, password)
        if not (found and valid):
            app.throttle.failed(address)
            message = "The login and password do not match; check both and try again."
            return _login_form(page, login_name, target, {"password": message})
        app.throttle.succeeded(address)
        # A new session id at every login: an id planted before it is worth nothing.
        session = app.sessions.create(found[0])
        page.set_cookie(SESSION_COOKIE, session.id)
        page.set_cookie(LOGIN_CSRF_COOKIE, "", max_age=0)
        return Redirect(safe_next(target))

    @app.route("/logout", methods=("POST",))
    async def logout(page: PageRequest):
        app.sessions.drop(page.session.id)
        page.set_cookie(SESSION_COOKIE, "", max_age=0)
        return Redirect("/login")

    @app.route("/")
    async def dashboard(page: PageRequest):
        data = await page.store.run(web_ops.dashboard, page.user.login)
        return Page("dashboard.html", {"data": data})

    @app.route("/options")
    async def options(page: PageRequest):
        query = page.arg("q").strip()
        # Only pages that exist are listed: the list grows as the pages are built.
        visible = [
            s for s in SETTINGS if s.url in app.routes and (page.user.is_admin or not s.admin)
        ]
        shown = [s for s in visible if s.matches(query)] if query else visible
        return Page("options.html", {"settings": visible, "shown": shown, "query": query})


def _login_form(page: PageRequest, login: str, target: str, errors=None, status=200) -> Page:
    token = page.cookie(LOGIN_CSRF_COOKIE)
    if not token:
        token = new_token()
        page.set_cookie(LOGIN_CSRF_COOKIE, token)
    context = {
        "login": login,
        "next": safe_next(target),
        "errors": errors or {},
        "csrf_token": token,
    }
    return Page("login.html", context, status=status)
