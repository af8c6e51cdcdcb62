"""The pages of the web admin so far: login, logout, the dashboard, Options & Tools."""

from __future__ import annotations

import datetime
import math

import attrs

from atollon_mail.auth import Throttled
from atollon_mail.store import dashboard as dashboard_ops
from atollon_mail.web.app import Page, PageRequest, Redirect, WebApp, safe_next
from atollon_mail.web.cached import Cached
from atollon_mail.web.charts import traffic_charts
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
        "Contacts",
        "/contacts",
        "Persons and companies of the CRM: details, jobs, default folders and their mail.",
        "crm address book people companies",
        admin=False,
    ),
    Setting(
        "Mail client",
        "/mail",
        "Read, write and file messages in the mailboxes you may use.",
        "messaging webmail",
        admin=False,
    ),
)


# A login, a password, the CSRF token and the page to go back to: a few hundred bytes.
LOGIN_FORM_BYTES = 8 * 1024


# How long the dashboard's queue facts and a campaign's send rate are kept (on the app's
# clock) before a view reads them again: they summarise the whole queue or campaign, and
# were read at every view (about 2.6 s at a million deferred recipients on SQLite, on the
# store's one thread, which the intake waits for meanwhile).
QUEUE_FACTS_SECONDS = 30


def register(app: WebApp) -> None:
    queue_facts = Cached(app.clock, QUEUE_FACTS_SECONDS)

    @app.route("/login", methods=("GET", "POST"), login=False, max_body=LOGIN_FORM_BYTES)
    async def login(page: PageRequest):
        if page.session is not None:
            return Redirect(safe_next(page.arg("next")))
        if page.request.method == b"GET":
            return _login_form(page, "", page.arg("next"))
        login_name = page.form.get("login", "").strip()
        password = page.form.get("password", "")
        target = page.form.get("next", "")
        errors = {}
        if not login_name:
            errors["login"] = "Enter your login."
        if not password:
            errors["password"] = "Enter your password."
        if errors:
            return _login_form(page, login_name, target, errors)
        try:
            user = await app.authenticator.authenticate(page.client_address, login_name, password)
        except Throttled as refusal:
            minutes = max(1, math.ceil(refusal.retry_after / 60))
            wait = "1 minute" if minutes == 1 else f"{minutes} minutes"
            message = f"Too many failed attempts; wait {wait} and try again."
            return _login_form(page, login_name, target, {"password": message}, status=429)
        if user is None:
            message = "The login and password do not match; check both and try again."
            return _login_form(page, login_name, target, {"password": message})
        # A new session id at every login: an id planted before it is worth nothing.
        session = await app.sessions.create(user)
        if session is None:
            message = "The login and password do not match; check both and try again."
            return _login_form(page, login_name, target, {"password": message})
        page.set_cookie(SESSION_COOKIE, session.id)
        page.set_cookie(LOGIN_CSRF_COOKIE, "", max_age=0)
        return Redirect(safe_next(target))

    @app.route("/logout", methods=("POST",))
    async def logout(page: PageRequest):
        await app.sessions.drop(page.session.id)
        page.set_cookie(SESSION_COOKIE, "", max_age=0)
        return Redirect("/login")

    @app.route("/")
    async def dashboard(page: PageRequest):
        now = clock_now(app.clock)
        data = await page.store.run(
            dashboard_ops.dashboard, page.user.login, now=now, with_queue=False
        )
        if data.domains is not None:  # an admin's
            facts = await queue_facts.get(
                None, lambda: page.store.run(dashboard_ops.queue_facts, now)
            )
            data = dashboard_ops.with_facts(data, facts)
        context = {"data": data, "traffic_charts": None, "oldest_age": ""}
        if data.traffic is not None:
            context["traffic_charts"] = traffic_charts(data.traffic)
        if data.oldest is not None:
            context["oldest_age"] = age_text(now - data.oldest.created_at)
        return Page("dashboard.html", context)

    @app.route("/options")
    async def options(page: PageRequest):
        query = page.arg("q").strip()
        # Only pages that exist are listed: the list grows as the pages are built.
        visible = [
            s for s in SETTINGS if s.url in app.routes and (page.user.is_admin or not s.admin)
        ]
        shown = [s for s in visible if s.matches(query)] if query else visible
        return Page("options.html", {"settings": visible, "shown": shown, "query": query})


def clock_now(clock) -> datetime.datetime:
    """The app's clock as the store's time: naive UTC."""
    return datetime.datetime.fromtimestamp(clock.seconds(), datetime.UTC).replace(tzinfo=None)


def age_text(age: datetime.timedelta) -> str:
    """An age in words, to the minute: "5 min", "3 h 20 min", "2 days 4 h"."""
    minutes = max(0, int(age.total_seconds() // 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} day{'' if days == 1 else 's'} {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


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
