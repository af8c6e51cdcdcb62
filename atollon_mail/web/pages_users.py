"""Web pages: users (admin only): the list, adding one, editing one, resetting a password."""

from __future__ import annotations

from urllib.parse import quote

import attrs

from atollon_mail.passwords import generate_password, hash_password
from atollon_mail.store import accounts, common
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.web.app import Page, PageRequest, Redirect, WebApp, not_found
from atollon_mail.web.sessions import set_flash, take_flash

MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 takes any length; a bound keeps a form from costing much


@attrs.frozen
class Flash:
    """A confirmation on one user's page. One without a password is kept in the store for
    the redirect's GET, which may reach another node; a generated password is shown in
    the answer to the POST that made it, never after a redirect, so it is kept nowhere
    (not in a URL, not in the store, not in any process's memory)."""

    login: str
    message: str
    password: str | None = None


def _edit_url(login: str) -> str:
    return f"/users/edit?login={quote(login, safe='')}"


def _flash_page(login: str) -> str:
    return f"user {login}"


def _checked(page: PageRequest, name: str) -> bool:
    return page.form.get(name, "") in ("on", "1", "yes", "true")


def register(app: WebApp) -> None:
    async def _user_or_404(page: PageRequest, login: str):
        if not login:
            raise not_found()
        try:
            return await page.store.run(accounts.get_user, login)
        except NotFound:
            raise not_found() from None

    async def _list_page(page: PageRequest, values=None, errors=None, status=200) -> Page:
        users = await page.store.run(accounts.list_user_summaries)
        values = values or {"login": "", "name": "", "generate": True, "is_admin": False}
        context = {"users": users, "values": values, "errors": errors or {}}
        return Page("users.html", context, status=status)

    @app.route("/users", methods=("GET", "POST"), admin=True)
    async def users(page: PageRequest):
        if page.request.method != b"POST":
            return await _list_page(page)
        values = {
            "login": page.form.get("login", "").strip(),
            "name": page.form.get("name", ""),
            "generate": _checked(page, "generate"),
            "is_admin": _checked(page, "is_admin"),
        }
        password = page.form.get("password", "")
        errors = {}
        try:
            login = common.validate_login(values["login"])
        except Invalid as problem:
            errors["login"] = str(problem) if values["login"] else "Enter a login."
        try:
            name = accounts.normalize_user_name(values["name"])
        except Invalid as problem:
            errors["name"] = str(problem)
        if values["generate"]:
            password = generate_password()
        else:
            problem = _password_problem(password)
            if problem:
                errors["password"] = problem
        if errors:
            return await _list_page(page, values, errors, status=400)
        password_hash = await app.workers.in_cpu(hash_password, password)  # argon2: CPU heavy
        try:
            user = await page.store.run(
                accounts.add_user, login, password_hash, name=name, is_admin=values["is_admin"]
            )
        except Conflict:
            errors["login"] = f"There is already a user {login}; choose another login."
            return await _list_page(page, values, errors, status=400)
        if values["generate"]:  # shown in this response only: see Flash
            return await _edit_page(
                page, user, flash=Flash(user.login, f"User {user.login} added.", password)
            )
        await set_flash(
            page.store, page.session, _flash_page(user.login), f"User {user.login} added."
        )
        return Redirect(_edit_url(user.login))

    async def _edit_page(page, user, values=None, errors=None, status=200, flash=None) -> Page:
        if status == 200 and flash is None:
            message = await take_flash(page.store, page.session, _flash_page(user.login))
            flash = Flash(user.login, message) if message else None
        values = values or {"name": user.name, "is_admin": user.is_admin}
        context = {"target": user, "values": values, "errors": errors or {}, "flash": flash}
        return Page("users_edit.html", context, status=status)

    @app.route("/users/edit", methods=("GET", "POST"), admin=True)
    async def edit(page: PageRequest):
        user = await _user_or_404(page, page.form.get("login") or page.arg("login"))
        if page.request.method != b"POST":
            return await _edit_page(page, user)
        values = {"name": page.form.get("name", ""), "is_admin": _checked(page, "is_admin")}
        errors = {}
        try:
            name = accounts.normalize_user_name(values["name"])
        except Invalid as problem:
            errors["name"] = str(problem)
        if user.is_admin and not values["is_admin"] and user.login == page.user.login:
            errors["is_admin"] = (
                "You cannot remove your own administrator flag; another administrator can."
            )
        if errors:
            return await _edit_page(page, user, values, errors, status=400)
        try:
            user = await page.store.run(
                accounts.update_user, user.login, name=name, is_admin=values["is_admin"]
            )
        except Conflict as problem:
            return await _edit_page(page, user, values, {"is_admin": str(problem)}, status=400)
        except NotFound:  # removed meanwhile
            raise not_found() from None
        await set_flash(page.store, page.session, _flash_page(user.login), "Changes saved.")
        return Redirect(_edit_url(user.login))

    @app.route("/users/reset-password", methods=("POST",), admin=True)
    async def reset_password(page: PageRequest):
        user = await _user_or_404(page, page.form.get("login", ""))
        password = generate_password()
        password_hash = await app.workers.in_cpu(hash_password, password)  # argon2: CPU heavy
        try:
            await page.store.run(accounts.set_password, user.login, password_hash)
        except NotFound:
            raise not_found() from None
        # Shown in this response only: see Flash.
        flash = Flash(user.login, f"New password set for {user.login}.", password)
        return await _edit_page(page, user, flash=flash)


def _password_problem(password: str) -> str | None:
    if not password:
        return "Enter a password, or tick “Generate one”."
    if len(password) < MIN_PASSWORD:
        return f"Use at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"Use at most {MAX_PASSWORD} characters."
    return None
