"""Web pages of the CRM: the contacts list with its search, a new contact and its edit
form, a contact's page (details, employments, default folders, groups, mail, campaign
mail), a folder's or project's messages, and "File to..." on the message page.

Who may see what: the CRM is the organization's shared address book, so every user who
logs in may list, open, add and edit contacts and open folders and projects (as the
command line's CRM commands, there is no per-user CRM right); the mail they show comes
only from mailboxes the user may view (the rule of every mail page), and filing a
message needs the edit right on its mailbox, as moving it does. Distribution groups are
the administrators' (pages_groups) and campaigns too (pages_campaigns): only they see
and change a contact's groups and see the campaign mail it got.
"""

from __future__ import annotations

import datetime
from urllib.parse import quote

from atollon_mail.store import contacts as contact_ops
from atollon_mail.store import crm_mail
from atollon_mail.store import folders as folder_ops
from atollon_mail.store import groups as group_ops
from atollon_mail.store.errors import Invalid, NotFound, StoreError
from atollon_mail.web.app import Page, PageRequest, Redirect, WebApp, not_found
from atollon_mail.web.numbers import page_number, parse_id

PER_PAGE = 50
CONTACT_FIELDS = ("name", "first_name", "last_name", "email", "language", "external_id")
NEW_CONTACT_FIELDS = ("organization", "kind", *CONTACT_FIELDS)


def contact_url(contact_id: int, **params) -> str:
    extra = "".join(f"&{name}={quote(str(value), safe='')}" for name, value in params.items())
    return f"/contact?id={contact_id}{extra}"


def folder_url(folder_id: int) -> str:
    return f"/folder?id={folder_id}"


def _problem(error: Exception) -> str:
    text = str(error)
    return text[:1].upper() + text[1:] if text else "Refused."


def _date(text: str, what: str) -> datetime.date | None:
    text = text.strip()
    if not text:
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise Invalid(f"{text!r} is not a date; give the {what} as 2026-01-31") from None


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()  # as the store judges employments


def _pages(base: str, number: int, total: int) -> dict:
    joiner = "&" if "?" in base else "?"
    return {
        "number": number,
        "previous_url": f"{base}{joiner}page={number - 1}" if number > 1 else None,
        "next_url": f"{base}{joiner}page={number + 1}" if number * PER_PAGE < total else None,
    }


def _contact_arguments(form: dict[str, str]) -> dict:
    values = {field: form[field] for field in CONTACT_FIELDS}
    values["external_id"] = values["external_id"] or None
    return values


_FIELD_OF_PROBLEM = (
    ("external id", "external_id"),
    ("e-mail", "email"),
    ("language", "language"),
    ("first name", "first_name"),
    ("last name", "last_name"),
    ("organization", "organization"),
)


def _field_of(problem: Exception) -> str:
    """The form field a refusal of the store is about (the whole form when unclear)."""
    text = str(problem)
    for words, field in _FIELD_OF_PROBLEM:
        if words in text:
            return field
    return "name" if "name" in text else "form"


def _edited_fields(contact) -> tuple[str, ...]:
    """The fields of a contact's edit form: a company has no first and last name."""
    if contact.kind == "company":
        return tuple(field for field in CONTACT_FIELDS if field not in ("first_name", "last_name"))
    return CONTACT_FIELDS


def register(app: WebApp) -> None:
    @app.route("/contacts")
    async def contacts_page(page: PageRequest):
        query = page.arg("q").strip()
        number = page_number(page.arg("page"))
        search = query or None
        total = await page.store.run(contact_ops.count_contacts, search=search)
        found = await page.store.run(
            contact_ops.list_contacts,
            limit=PER_PAGE,
            offset=(number - 1) * PER_PAGE,
            search=search,
        )
        persons = [contact.id for contact in found if contact.kind == "person"]
        employers = await page.store.run(contact_ops.current_employers, persons)
        base = f"/contacts?q={quote(query, safe='')}" if query else "/contacts"
        context = {
            "contacts": found,
            "employers": employers,
            "query": query,
            "total": total,
            **_pages(base, number, total),
        }
        return Page("contacts.html", context)

    async def _form_page(page: PageRequest, form, errors, contact=None) -> Page:
        organizations = await page.store.run(contact_ops.list_organizations)
        shown = set(CONTACT_FIELDS if contact is None else _edited_fields(contact))
        if contact is None:
            shown |= {"organization", "kind"}
        # A refusal about a field the form does not show is said above the form.
        errors = {(key if key in shown else "form"): text for key, text in errors.items()}
        context = {
            "form": form,
            "errors": errors,
            "contact": contact,
            "organizations": organizations,
        }
        return Page("contact_form.html", context, status=400 if errors else 200)

    @app.route("/contacts/new", methods=("GET", "POST"))
    async def new_contact(page: PageRequest):
        if page.request.method != b"POST":
            form = {field: "" for field in NEW_CONTACT_FIELDS} | {"kind": "person"}
            form["organization"] = page.arg("organization")
            return await _form_page(page, form, {})
        form = {field: page.form.get(field, "").strip() for field in NEW_CONTACT_FIELDS}
        errors: dict[str, str] = {}
        organization = parse_id(form["organization"])
        if organization is None:
            errors["organization"] = "Choose the organization the contact belongs to."
        if form["kind"] not in ("person", "company"):
            errors["kind"] = "Choose person or company."
        if not errors:
            try:
                created = await page.store.run(
                    contact_ops.add_contact,
                    organization,
                    form["kind"],
                    **_contact_arguments(form),
                )
            except StoreError as problem:
                errors[_field_of(problem)] = _problem(problem)
            else:
                return Redirect(contact_url(created.id, saved=1))
        return await _form_page(page, form, errors)

    async def _contact(page: PageRequest, value: str | None):
        contact_id = parse_id(value)
        if contact_id is None:
            raise not_found()
        try:
            return await page.store.run(contact_ops.contact_detail, contact_id)
        except NotFound:
            raise not_found() from None

    @app.route("/contact/edit", methods=("GET", "POST"))
    async def edit_contact(page: PageRequest):
        detail = await _contact(page, page.arg("id"))
        contact = detail.contact
        if page.request.method != b"POST":
            form = {field: getattr(contact, field) or "" for field in CONTACT_FIELDS}
            return await _form_page(page, form, {}, contact)
        form = {field: "" for field in CONTACT_FIELDS} | {
            field: page.form.get(field, "").strip() for field in _edited_fields(contact)
        }
        try:
            await page.store.run(contact_ops.update_contact, contact.id, **_contact_arguments(form))
        except StoreError as problem:
            return await _form_page(page, form, {_field_of(problem): _problem(problem)}, contact)
        return Redirect(contact_url(contact.id, saved=1))

    @app.route("/contact", methods=("GET", "POST"))
    async def contact_page(page: PageRequest):
        detail = await _contact(page, page.arg("id"))
        contact = detail.contact
        errors: dict[str, str] = {}
        values = {"company": "", "valid_from": "", "ended_on": "", "group": ""}
        if page.request.method == b"POST":
            action = page.form.get("action", "")
            handler = _ACTIONS.get(action)
            if handler is None or (action.startswith("group") and not page.user.is_admin):
                raise not_found()
            values |= {key: page.form.get(key, "").strip() for key in values}
            try:
                done = await handler(page, contact, values)
            except StoreError as problem:
                errors[action] = _problem(problem)
            else:
                return Redirect(contact_url(contact.id, done=done))
        number = page_number(page.arg("page"))
        mail = await page.store.run(
            crm_mail.contact_messages,
            contact.id,
            page.user.login,
            PER_PAGE,
            (number - 1) * PER_PAGE,
        )
        # Campaigns are the administrators' (pages_campaigns), their mail too.
        campaign_mail = ()
        groups = static_groups = ()
        if page.user.is_admin:
            campaign_mail = await page.store.run(crm_mail.contact_campaign_mail, contact.id)
            groups = await page.store.run(crm_mail.contact_groups, contact.id)
            member_of = {group.id for group in groups}
            static_groups = [
                group
                for group in await page.store.run(group_ops.list_groups)
                if group.kind == "static"
                and group.id not in member_of
                and group.organization_id in (None, contact.organization_id)
            ]
        targets = await page.store.run(folder_ops.list_folders, contact.organization_id)
        context = {
            "detail": detail,
            "targets": targets,
            "contact": contact,
            "mail": mail,
            "campaign_mail": campaign_mail,
            "groups": groups,
            "static_groups": static_groups,
            "errors": errors,
            "values": values,
            "done": _DONE.get(page.arg("done"), ""),
            "saved": page.arg("saved") == "1",
            "today": _today().isoformat(),
            "url": contact_url(contact.id),
            **_pages(contact_url(contact.id), number, mail.total),
        }
        return Page("contact.html", context, status=400 if errors else 200)

    @app.route("/folder")
    async def folder_page(page: PageRequest):
        folder_id = parse_id(page.arg("id"))
        if folder_id is None:
            raise not_found()
        number = page_number(page.arg("page"))
        try:
            found = await page.store.run(
                folder_ops.folder_messages,
                folder_id,
                None,
                PER_PAGE,
                (number - 1) * PER_PAGE,
                viewer=page.user.login,
            )
        except NotFound:
            raise not_found() from None
        if found.folder.organization_id is None:  # a user's own folder: not the CRM's
            raise not_found()
        context = {
            "found": found,
            "folder": found.folder,
            **_pages(folder_url(folder_id), number, found.total),
        }
        return Page("folder.html", context)

    @app.route("/mail/file", methods=("POST",))
    async def file_message(page: PageRequest):
        """ "File to...": the message goes into a folder or project as well (needs the
        edit right on its mailbox, as moving it does)."""
        address = page.form.get("address", "")
        if not (await page.rights(address)).edit:
            raise not_found()
        message_id = parse_id(page.form.get("id"))
        folder_id = parse_id(page.form.get("folder"))
        if message_id is None:
            raise not_found()
        message_url = f"/mail/message?address={quote(address, safe='')}&id={message_id}"
        if folder_id is None:
            return Redirect(f"{message_url}&filed=none")
        try:
            filed = await page.store.run(crm_mail.file_into, address, message_id, folder_id)
        except NotFound:
            raise not_found() from None
        state = "new" if filed.filed else "already"
        return Redirect(f"{message_url}&filed={state}&folder_id={filed.folder.id}")


async def filing_context(page: PageRequest, address: str, message_id: int, may_file: bool):
    """What the message page shows of filing: the contexts the message is filed in here,
    the folders and projects "File to..." offers (with the edit right), the last result."""
    try:
        contexts = await page.store.run(crm_mail.message_contexts, address, message_id)
    except NotFound:  # removed since the page began
        raise not_found() from None
    targets = await page.store.run(folder_ops.list_folders) if may_file else []
    filed = _FILED.get(page.arg("filed"), "")
    if filed and page.arg("filed") != "none":
        folder_id = parse_id(page.arg("folder_id"))
        named = [context.name for context in contexts if context.id == folder_id]
        filed = filed.format(name=named[0]) if named else ""
    return {"contexts": contexts, "file_targets": targets, "filed": filed}


_FILED = {
    "new": "Filed into {name}.",
    "already": "It was filed into {name} already.",
    "none": "Choose a folder or project to file the message into.",
}


# --- the contact page's forms: each returns the word of its "done" message ------------


async def _add_employment(page: PageRequest, contact, values) -> str:
    if contact.kind != "person":
        raise Invalid("only a person is employed; open the person's page to add a job")
    if not values["company"]:
        raise Invalid("give the company's name, e-mail or external id")
    await page.store.run(
        contact_ops.add_job,
        contact.id,
        values["company"],
        True if page.form.get("primary") == "on" else None,
        _date(values["valid_from"], "first day"),
        organization=contact.organization_id,
    )
    return "employment-added"


async def _employment(page: PageRequest, contact):
    """The employment a form names by id, of this contact (as person or company)."""
    employment_id = parse_id(page.form.get("employment"))
    detail = await page.store.run(contact_ops.contact_detail, contact.id)
    for employment in detail.employments:
        if employment.id == employment_id:
            return employment
    raise NotFound("that employment is not this contact's; reload the page")


async def _primary(page: PageRequest, contact, values) -> str:
    employment = await _employment(page, contact)
    await page.store.run(
        contact_ops.make_primary,
        employment.person_id,
        employment.company_id,
        employment.valid_from,
    )
    return "primary"


async def _end(page: PageRequest, contact, values) -> str:
    employment = await _employment(page, contact)
    await page.store.run(
        contact_ops.end_employment,
        employment.person_id,
        employment.company_id,
        _date(values["ended_on"], "last day") or _today(),
        employment.valid_from,
    )
    return "ended"


async def _set_default_folder(page: PageRequest, contact, values) -> str:
    """The folder or project chosen becomes the contact's default one in its
    organization (set by hand); the other of the two, and the activity, stay."""
    target_id = parse_id(page.form.get("target"))
    if target_id is None:
        raise Invalid("choose a folder or project")
    target = await page.store.run(folder_ops.get_folder, target_id)
    detail = await page.store.run(contact_ops.contact_detail, contact.id)
    current = next(
        (d for d in detail.default_folders if d.organization_id == contact.organization_id), None
    )
    folder_id = current.folder_id if current else None
    project_id = current.project_id if current else None
    if target.kind == "folder":
        folder_id = target.id
    else:
        project_id = target.id
    await page.store.run(
        folder_ops.set_default_folder,
        contact.id,
        contact.organization_id,
        folder_id,
        project_id,
        current.activity if current else None,
    )
    return "default-set"


async def _clear_default_folder(page: PageRequest, contact, values) -> str:
    await page.store.run(folder_ops.clear_default_folder, contact.id, contact.organization_id)
    return "default-cleared"


async def _group_add(page: PageRequest, contact, values) -> str:
    group_id = parse_id(values["group"])
    if group_id is None:
        raise Invalid("choose a group")
    await page.store.run(group_ops.change_members, group_id, add=[contact.id])
    return "group-added"


async def _group_remove(page: PageRequest, contact, values) -> str:
    group_id = parse_id(values["group"])
    if group_id is None:
        raise NotFound("no such group")
    await page.store.run(group_ops.change_members, group_id, remove=[contact.id])
    return "group-removed"


_ACTIONS = {
    "employment-add": _add_employment,
    "employment-primary": _primary,
    "employment-end": _end,
    "default-set": _set_default_folder,
    "default-clear": _clear_default_folder,
    "group-add": _group_add,
    "group-remove": _group_remove,
}
_DONE = {
    "employment-added": "Employment added.",
    "primary": "Made the primary employment.",
    "ended": "Employment ended.",
    "default-set": "Default folder set.",
    "default-cleared": "Default folder cleared.",
    "group-added": "Added to the group.",
    "group-removed": "Removed from the group.",
}
