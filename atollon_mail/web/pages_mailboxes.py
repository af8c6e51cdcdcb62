"""Web pages: mailboxes: the list, one mailbox's settings, and redirecting an address."""

from __future__ import annotations

import datetime
from urllib.parse import quote, urlencode

from atollon_mail.store import aliases, autorespond, common, dashboard, forwarding
from atollon_mail.store import mailboxes as mailbox_ops
from atollon_mail.store.errors import Conflict, IdentityRefused, Invalid, NotFound
from atollon_mail.web.app import Page, PageRequest, Redirect, WebApp, not_found
from atollon_mail.web.numbers import page_number, parse_id
from atollon_mail.web.sessions import set_flash, take_flash

PER_PAGE = 50
# A mailbox's spam handling (store.values.SPAM_HANDLINGS), as the mailbox page offers it.
SPAM_CHOICES = {
    "junk": "Into the Junk folder",
    "tag": "Into the inbox, marked as junk",
    "off": "Into the inbox, like any other mail",
}


def mailbox_url(address: str) -> str:
    return f"/mailbox?address={quote(address, safe='@')}"


def _flash_page(address: str) -> str:
    return f"mailbox {address}"


def _checked(page: PageRequest, name: str) -> bool:
    return page.form.get(name, "") in ("on", "1", "yes", "true")


def _address_or_404(page: PageRequest) -> str:
    address = page.arg("address").strip()
    try:
        local, domain = common.normalize_address(address)
    except Invalid:
        raise not_found() from None
    return f"{local}@{domain}"


def _moment_text(value: datetime.datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%dT%H:%M")


def _parse_moment(text: str):
    """A datetime-local value (UTC); empty removes the bound."""
    text = text.strip()
    if not text:
        return autorespond.CLEAR
    try:
        return datetime.datetime.fromisoformat(text).replace(tzinfo=None)
    except ValueError:
        raise Invalid("give a date and time such as 2030-01-31T18:00") from None


def _problem(error: Exception) -> str:
    text = str(error)
    return text[:1].upper() + text[1:] if text else "Refused."


def _store_targets(contexts) -> list[tuple[str, list]]:
    """The folders and projects a mailbox's mail can be filed into, for the "Store
    messages to" list: (group label, contexts sorted by name)."""
    groups = []
    for kind, label in (("folder", "Folders"), ("project", "Projects")):
        found = [context for context in contexts if context.kind == kind]
        found.sort(key=lambda context: (context.name.casefold(), context.id))
        if found:
            groups.append((label, found))
    return groups


def register(app: WebApp) -> None:
    # --- the list ---------------------------------------------------------------------

    @app.route("/mailboxes", methods=("GET", "POST"))
    async def mailboxes(page: PageRequest):
        new = {"new_address": "", "new_owner": page.user.login, "new_identity": ""}
        new_errors: dict[str, str] = {}
        status = 200
        if page.request.method == b"POST":
            if not page.user.is_admin:
                raise not_found()  # only administrators create mailboxes
            new = {key: page.form.get(key, "").strip() for key in new}
            try:
                created = await page.store.run(
                    mailbox_ops.add_mailbox,
                    new["new_address"],
                    new["new_owner"],
                    identity=new["new_identity"] or None,
                    actor=page.user.login,
                )
            except IdentityRefused as problem:
                new_errors["new_identity"] = _problem(problem)
            except NotFound as problem:
                field = "new_owner" if "user" in str(problem) else "new_address"
                new_errors[field] = _problem(problem)
            except (Invalid, Conflict) as problem:
                new_errors["new_address"] = _problem(problem)
            else:
                message = f"Mailbox {created.address} added."
                await set_flash(page.store, page.session, _flash_page(created.address), message)
                return Redirect(mailbox_url(created.address))
            status = 400
        domain = page.arg("domain").strip().lower()
        owner = page.arg("owner").strip().lower()
        number = page_number(page.arg("page"))
        listing = await page.store.run(
            dashboard.mailbox_page,
            page.user.login,
            domain,
            owner,
            PER_PAGE,
            (number - 1) * PER_PAGE,
        )
        pages = max(1, -(-listing.total // PER_PAGE))
        if number > pages:  # past the end: show the last page
            number = pages
            listing = await page.store.run(
                dashboard.mailbox_page,
                page.user.login,
                domain,
                owner,
                PER_PAGE,
                (number - 1) * PER_PAGE,
            )
        filters = {key: value for key, value in (("domain", domain), ("owner", owner)) if value}

        def page_url(n: int) -> str:
            return "/mailboxes?" + urlencode({**filters, "page": n})

        context = {
            "rows": listing.rows,
            "total": listing.total,
            "domains": listing.domains,
            "owners": listing.owners,
            "domain": domain,
            "owner": owner,
            "number": number,
            "pages": pages,
            "previous_url": page_url(number - 1) if number > 1 else None,
            "next_url": page_url(number + 1) if number < pages else None,
            "new": new,
            "new_errors": new_errors,
        }
        return Page("mailboxes.html", context, status=status)

    # --- one mailbox ------------------------------------------------------------------

    async def _detail_page(page, address, rights, values=None, errors=None, status=200):
        try:
            detail = await page.store.run(mailbox_ops.mailbox_detail, address)
            responder = await page.store.run(autorespond.get_autoresponder, address)
            forward = await page.store.run(forwarding.get_forwarding, address)
        except NotFound:  # removed meanwhile
            raise not_found() from None
        box = detail.mailbox
        store_targets = []
        if rights.edit:  # the owner's folders and projects and those of no user
            store_targets = await page.store.run(mailbox_ops.store_targets, address)
        defaults = {
            "identity": box.identity,
            "store_to": "todo" if box.store_to.kind == "todo" else str(box.store_to.id),
            "active": box.active,
            "is_default": box.is_default,
            "signature": box.signature,
            "alias": "",
            "ar_enabled": bool(responder and responder.enabled),
            "ar_subject": responder.subject if responder else autorespond.DEFAULT_SUBJECT,
            "ar_body": responder.body if responder else "",
            "ar_starts": _moment_text(responder.starts_at if responder else None),
            "ar_ends": _moment_text(responder.ends_at if responder else None),
            "fw_enabled": forward.enabled,
            "fw_keep": forward.keep_copy,
            "fw_target": "",
            "access_login": "",
            "access_right": "view",
            "spam_handling": box.spam_handling,
        }
        flash = None
        if status == 200:
            flash = await take_flash(page.store, page.session, _flash_page(address))
        context = {
            "detail": detail,
            "box": box,
            "forward": forward,
            "can_edit": rights.edit,
            "store_targets": _store_targets(store_targets),
            "spam_choices": SPAM_CHOICES,
            "values": {**defaults, **(values or {})},
            "errors": errors or {},
            "flash": flash,
        }
        return Page("mailbox.html", context, status=status)

    @app.route("/mailbox", methods=("GET", "POST"))
    async def mailbox(page: PageRequest):
        address = _address_or_404(page)
        rights = await page.require_view(address)
        if page.request.method != b"POST":
            return await _detail_page(page, address, rights)
        if not rights.edit:
            raise not_found()
        action = ACTIONS.get(page.form.get("action", ""))
        if action is None:
            raise not_found()
        try:
            outcome = await action(page, address)
        except NotFound:  # the mailbox (or what was named) is gone meanwhile
            raise not_found() from None
        if isinstance(outcome, str):
            await set_flash(page.store, page.session, _flash_page(address), outcome)
            return Redirect(mailbox_url(address))
        values, errors = outcome
        return await _detail_page(page, address, rights, values, errors, status=400)

    async def _settings(page: PageRequest, address: str):
        values = {
            "identity": page.form.get("identity", ""),
            "store_to": page.form.get("store_to", "").strip(),
            "active": _checked(page, "active"),
            "is_default": _checked(page, "is_default"),
            "signature": page.form.get("signature", ""),
        }
        errors = {}
        try:
            common.normalize_identity(values["identity"])
        except Invalid as problem:
            errors["identity"] = _problem(problem)
        try:
            mailbox_ops.normalize_signature(values["signature"])
        except Invalid as problem:
            errors["signature"] = _problem(problem)
        store_to = values["store_to"].lower()
        if store_to != mailbox_ops.TODO and parse_id(store_to) is None:
            errors["store_to"] = "Choose the owner's To Do or a folder or project from the list."
        if errors:
            return values, errors
        try:
            await page.store.run(
                mailbox_ops.update_mailbox,
                address,
                identity=values["identity"],
                signature=values["signature"],
                store_to=store_to,
                active=values["active"],
                actor=page.user.login,
            )
        except IdentityRefused as problem:
            return values, {"identity": _problem(problem)}
        except Conflict as problem:
            return values, {"active": _problem(problem)}
        except (Invalid, NotFound) as problem:
            try:  # a context that does not exist or is not usable here
                await page.store.run(mailbox_ops.get_mailbox, address)
            except NotFound:
                raise not_found() from None
            return values, {"store_to": _problem(problem)}
        box = await page.store.run(mailbox_ops.get_mailbox, address)
        if values["is_default"] and not box.is_default:
            try:
                await page.store.run(mailbox_ops.set_default_mailbox, address)
            except Conflict as problem:
                return values, {"is_default": _problem(problem)}
        return "Changes saved."

    async def _spam(page: PageRequest, address: str):
        values = {"spam_handling": page.form.get("spam_handling", "")}
        try:
            box = await page.store.run(
                mailbox_ops.update_mailbox, address, spam_handling=values["spam_handling"]
            )
        except Invalid:
            return values, {"spam_handling": "Choose one of the three ways."}
        label = SPAM_CHOICES[box.spam_handling]
        return f"Junk mail now goes {label[:1].lower()}{label[1:]}."

    async def _alias_add(page: PageRequest, address: str):
        values = {"alias": page.form.get("alias", "")}
        if not values["alias"].strip():
            return values, {"alias": "Enter a name."}
        try:
            alias = await page.store.run(aliases.add_alias, values["alias"], address)
        except (Invalid, Conflict) as problem:
            return values, {"alias": _problem(problem)}
        return f"Alias {alias.address} added."

    async def _alias_remove(page: PageRequest, address: str):
        box = await page.store.run(mailbox_ops.get_mailbox, address)
        alias = page.form.get("alias", "").strip().lower()
        if alias not in box.aliases:  # only this mailbox's own aliases
            raise not_found()
        await page.store.run(aliases.remove_alias, alias)
        return f"Alias {alias} removed."

    async def _autorespond(page: PageRequest, address: str):
        values = {
            "ar_enabled": _checked(page, "ar_enabled"),
            "ar_subject": page.form.get("ar_subject", ""),
            "ar_body": page.form.get("ar_body", ""),
            "ar_starts": page.form.get("ar_starts", ""),
            "ar_ends": page.form.get("ar_ends", ""),
        }
        errors = {}
        moments = {}
        for field in ("ar_starts", "ar_ends"):
            try:
                moments[field] = _parse_moment(values[field])
            except Invalid as problem:
                errors[field] = _problem(problem)
        if errors:
            return values, errors
        try:
            await page.store.run(
                autorespond.set_autoresponder,
                address,
                values["ar_enabled"],
                subject=values["ar_subject"],
                body=values["ar_body"],
                starts_at=moments["ar_starts"],
                ends_at=moments["ar_ends"],
            )
        except Invalid as problem:
            text = str(problem)
            field = (
                "ar_subject"
                if "subject" in text
                else "ar_ends"
                if "end" in text and "start" in text
                else "ar_body"
            )
            return values, {field: _problem(problem)}
        return "Auto-respond saved."

    async def _forwarding(page: PageRequest, address: str):
        values = {
            "fw_enabled": _checked(page, "fw_enabled"),
            "fw_keep": _checked(page, "fw_keep"),
            "fw_target": page.form.get("fw_target", ""),
        }
        target = values["fw_target"].strip()
        try:
            await page.store.run(
                forwarding.change_forwarding,
                address,
                add=[target] if target else [],
                enabled=values["fw_enabled"],
                keep_copy=values["fw_keep"],
            )
        except (Invalid, Conflict) as problem:
            return values, {"fw_target": _problem(problem)}
        return "Forwarding saved."

    async def _forward_remove(page: PageRequest, address: str):
        target = page.form.get("target", "")
        await page.store.run(forwarding.change_forwarding, address, remove=[target])
        return f"No longer forwarding to {target.strip()}."

    async def _access_add(page: PageRequest, address: str):
        values = {
            "access_login": page.form.get("access_login", ""),
            "access_right": "edit" if page.form.get("access_right") == "edit" else "view",
        }
        login = values["access_login"].strip().lower()
        if not login:
            return values, {"access_login": "Enter a login."}
        try:
            await page.store.run(
                mailbox_ops.grant_mailbox_access,
                address,
                login,
                view=True,
                edit=values["access_right"] == "edit",
            )
        except NotFound:
            return values, {"access_login": f"There is no user {login}."}
        except (Invalid, Conflict) as problem:
            return values, {"access_login": _problem(problem)}
        return f"{login} may now {values['access_right']} {address}."

    async def _access_revoke(page: PageRequest, address: str):
        login = page.form.get("login", "")
        try:
            record = await page.store.run(mailbox_ops.revoke_mailbox_access, address, login)
        except Invalid:
            raise not_found() from None
        return f"{record.login}'s rights on {address} revoked."

    ACTIONS = {
        "settings": _settings,
        "spam": _spam,
        "alias-add": _alias_add,
        "alias-remove": _alias_remove,
        "autorespond": _autorespond,
        "forwarding": _forwarding,
        "forward-remove": _forward_remove,
        "access-add": _access_add,
        "access-revoke": _access_revoke,
    }

    # --- redirecting an address ---------------------------------------------------------

    async def _redirect_page(page, box, new="", preview=None, errors=None, status=200):
        everything = await page.store.run(mailbox_ops.list_mailboxes)
        choices = [
            other.address
            for other in everything
            if other.domain == box.domain and other.active and other.address != box.address
        ]
        context = {
            "box": box,
            "choices": choices,
            "new": new,
            "preview": preview,
            "errors": errors or {},
        }
        return Page("mailbox_redirect.html", context, status=status)

    @app.route("/mailbox/redirect", methods=("GET", "POST"), admin=True)
    async def redirect(page: PageRequest):
        address = _address_or_404(page)
        try:
            box = await page.store.run(mailbox_ops.get_mailbox, address)
        except NotFound:
            raise not_found() from None
        if page.request.method != b"POST":
            return await _redirect_page(page, box)
        new = page.form.get("new", "").strip()
        if not new:
            return await _redirect_page(
                page, box, new, errors={"new": "Choose a mailbox."}, status=400
            )
        operation = (
            mailbox_ops.redirect_mailbox
            if page.form.get("step") == "confirm"
            else mailbox_ops.preview_redirect
        )
        try:
            result = await page.store.run(operation, box.address, new)
        except (Invalid, Conflict, NotFound) as problem:
            return await _redirect_page(
                page, box, new, errors={"new": _problem(problem)}, status=400
            )
        if operation is mailbox_ops.preview_redirect:
            return await _redirect_page(page, box, new, preview=result)
        message = f"{result.old_address} now goes to {result.new_address}."
        await set_flash(page.store, page.session, _flash_page(box.address), message)
        return Redirect(mailbox_url(box.address))
