"""Web pages: distribution groups (administrators only): the list with member counts and
the form for a new static or dynamic group; one group's preview (counts per language,
contacts without an address), its first members, and adding or removing contacts of a
static group by name, e-mail, external id or id."""

from __future__ import annotations

import re
from urllib.parse import quote

from atollon_mail.crm.filters import GroupFilter
from atollon_mail.store import contacts as contact_ops
from atollon_mail.store import groups as group_ops
from atollon_mail.store.errors import Ambiguous, Conflict, Invalid, NotFound
from atollon_mail.web.app import Page, PageRequest, Redirect, WebApp, not_found
from atollon_mail.web.numbers import parse_count, parse_id

_SEPARATORS = re.compile(r"[\s,;]+")
_TRI_STATE = {"": None, "yes": True, "no": False}
NEW_GROUP_FIELDS = (
    "name",
    "organization",
    "kind",
    "languages",
    "kind_person",
    "kind_company",
    "has_email",
    "companies",
    "employment_current",
    "primary_only",
)


def group_url(group_id: int, **flags: int) -> str:
    extra = "".join(f"&{name}={value}" for name, value in flags.items())
    return f"/group?id={group_id}{extra}"


def _words(text: str) -> list[str]:
    return [word for word in _SEPARATORS.split(text.strip()) if word]


def parse_contact_ids(text: str) -> list[int]:
    """Contact ids separated by commas or spaces."""
    ids = []
    for word in _words(text):
        number = parse_id(word)
        if number is None:
            raise Invalid(f"{word!r} is not a contact id; give numbers such as 12, 15")
        ids.append(number)
    return ids


_REFERENCE_SEPARATORS = re.compile(r"[,;\n]+")
_ID_LIST = re.compile(r"[0-9\s]+")


def parse_contact_references(text: str) -> list[int | str]:
    """The contacts a member field names, separated by commas, semicolons or lines: a
    name, e-mail or external id each (as store.contacts.find_contact_row finds them),
    or ids (numbers, also separated by spaces)."""
    references: list[int | str] = []
    for item in _REFERENCE_SEPARATORS.split(text):
        item = item.strip()
        if not item:
            continue
        if _ID_LIST.fullmatch(item):
            references.extend(parse_contact_ids(item))
        else:
            references.append(item)
    return references


def _checked(form: dict[str, str], name: str) -> bool:
    return form.get(name, "") in ("on", "1", "yes", "true")


def _problem(error: Exception) -> str:
    text = str(error)
    return text[:1].upper() + text[1:] if text else "Refused."


def _new_group(form: dict[str, str]) -> tuple[dict, dict[str, str]]:
    """The add_group arguments from the form, or the form's errors (field -> message)."""
    errors: dict[str, str] = {}
    name = form["name"]
    if not name:
        errors["name"] = "Enter the group's name."
    kind = form["kind"] if form["kind"] in ("static", "dynamic") else ""
    if not kind:
        errors["kind"] = "Choose static or dynamic."
    languages = tuple("" if word.lower() == "none" else word for word in _words(form["languages"]))
    try:
        company_ids = tuple(parse_contact_ids(form["companies"]))
    except Invalid as problem:
        errors["companies"] = _problem(problem)
        company_ids = ()
    kinds = tuple(k for k in ("person", "company") if _checked(form, f"kind_{k}"))
    has_email = _TRI_STATE.get(form["has_email"])
    employment_current = _TRI_STATE.get(form["employment_current"])
    primary_only = _checked(form, "primary_only")
    filtered = bool(
        languages
        or company_ids
        or kinds
        or has_email is not None
        or employment_current is not None
        or primary_only
    )
    if kind == "static" and filtered:
        errors["kind"] = "A static group has no filter: choose dynamic, or clear the filter fields."
    if kind == "dynamic" and not filtered and not form["organization"]:
        errors["kind"] = (
            "A dynamic group needs a filter: choose an organization (all its contacts) "
            "or fill in filter fields."
        )
    arguments = {
        "name": name,
        "organization": parse_id(form["organization"]),
        "kind": kind,
        "filter": GroupFilter(
            kinds=kinds,
            languages=languages,
            has_email=has_email,
            company_ids=company_ids,
            employment_current=employment_current,
            primary_only=primary_only,
        )
        if kind == "dynamic"
        else None,
    }
    return arguments, errors


def _blank_form() -> dict[str, str]:
    return {field: "" for field in NEW_GROUP_FIELDS} | {"kind": "static"}


def register(app: WebApp) -> None:
    @app.route("/groups", methods=("GET", "POST"), admin=True)
    async def groups_page(page: PageRequest):
        form = _blank_form()
        errors: dict[str, str] = {}
        if page.request.method == b"POST":
            form = {field: page.form.get(field, "").strip() for field in NEW_GROUP_FIELDS}
            arguments, errors = _new_group(form)
            if not errors:
                try:
                    created = await page.store.run(group_ops.add_group, **arguments)
                except Conflict as problem:
                    errors["name"] = _problem(problem)
                except (Invalid, NotFound) as problem:
                    errors["form"] = _problem(problem)
                else:
                    return Redirect(group_url(created.id, created=1))
        summaries = await page.store.run(group_ops.groups_with_counts)
        organizations = await page.store.run(contact_ops.list_organizations)
        context = {
            "summaries": summaries,
            "organizations": organizations,
            "form": form,
            "errors": errors,
            "deleted": page.arg("deleted"),
        }
        return Page("groups.html", context, status=400 if errors else 200)

    @app.route("/group", methods=("GET", "POST"), admin=True)
    async def group_page(page: PageRequest):
        group_id = parse_id(page.arg("id"))
        if group_id is None:
            raise not_found()
        try:
            group = await page.store.run(group_ops.get_group, group_id)
        except NotFound:
            raise not_found() from None
        values = {"add": "", "remove": ""}
        errors: dict[str, str] = {}
        if page.request.method == b"POST":
            action = page.form.get("action", "")
            if action == "members":
                values = {key: page.form.get(key, "").strip() for key in values}
                try:
                    change = await page.store.run(
                        group_ops.change_members,
                        group.id,
                        add=parse_contact_references(values["add"]),
                        remove=parse_contact_references(values["remove"]),
                    )
                except (Invalid, NotFound, Ambiguous) as problem:
                    errors["members"] = _problem(problem)
                else:
                    return Redirect(group_url(group.id, added=change.added, removed=change.removed))
            elif action == "delete":
                try:
                    await page.store.run(group_ops.delete_group, group.id)
                except Conflict as problem:
                    errors["delete"] = _problem(problem)
                else:
                    return Redirect(f"/groups?deleted={quote(group.name, safe='')}")
            else:
                raise not_found()
        overview = await page.store.run(group_ops.group_overview, group.id)
        languages = sorted(
            overview.preview.by_language.items(), key=lambda item: (item[0] == "", item[0])
        )
        changed = (parse_count(page.arg("added")), parse_count(page.arg("removed")))
        if None in changed:
            changed = None
        context = {
            "overview": overview,
            "group": overview.group,
            "languages": languages,
            "values": values,
            "errors": errors,
            "created": page.arg("created") == "1",
            "changed": changed,
            "url": group_url(group.id),
        }
        return Page("groups_detail.html", context, status=400 if errors else 200)
