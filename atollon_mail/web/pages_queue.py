"""Web pages: the outbound queue (list, a message's timeline, retry, delete) and the
message types (list, create, edit, delete)."""

from __future__ import annotations

from urllib.parse import urlencode

from atollon_mail.store import message_types as type_ops
from atollon_mail.store import queue as queue_ops
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.values import QUEUE_STATES, utc_now
from atollon_mail.web.app import HttpError, Page, PageRequest, Redirect, WebApp, not_found
from atollon_mail.web.numbers import page_number, parse_id

PAGE_SIZE = 50  # queue recipients per page; a module constant so tests may lower it

# Confirmations come back through the redirect as a key, never as free text in the URL.
QUEUE_DONE = {
    "retried": "Retry requested: the waiting recipients are due now.",
    "nothing": "Nothing to retry: no recipient of this message is waiting.",
    "deleted": "The message was deleted from the queue.",
}
TYPE_DONE = {
    "created": "The message type was created.",
    "saved": "The changes were saved.",
    "deleted": "The message type was deleted.",
}

_NAME_LIMIT = 100
_DESCRIPTION_LIMIT = 2000


def _first_clause(error: Exception) -> str:
    # Store messages are "what is wrong; what to do" with command-line advice after the ";".
    return str(error).split(";")[0]


def register(app: WebApp) -> None:
    # --- the queue ----------------------------------------------------------------------

    @app.route("/queue", admin=True)
    async def queue(page: PageRequest):
        state = page.arg("state").strip()
        if state and state not in QUEUE_STATES:
            raise HttpError(400, f"A queue state is one of {', '.join(QUEUE_STATES)}.")
        # Recipients that may have got two copies (sent, reply lost at a kill).
        uncertain = page.arg("uncertain") == "1"
        number = page_number(page.arg("page"))
        # One more than a page: whether there is a next page, without counting.
        entries = await page.store.run(
            queue_ops.queue_list,
            state or None,
            PAGE_SIZE + 1,
            (number - 1) * PAGE_SIZE,
            uncertain,
        )
        counts = await page.store.run(queue_ops.queue_counts)

        def page_url(n: int) -> str:
            params = {"state": state} if state else {}
            if uncertain:
                params["uncertain"] = "1"
            if n > 1:
                params["page"] = str(n)
            return "/queue" + ("?" + urlencode(params) if params else "")

        context = {
            "entries": entries[:PAGE_SIZE],
            "counts": counts,
            "states": QUEUE_STATES,
            "state": state,
            "uncertain": uncertain,
            "number": number,
            "prev_url": page_url(number - 1) if number > 1 else None,
            "next_url": page_url(number + 1) if len(entries) > PAGE_SIZE else None,
            "done": QUEUE_DONE.get(page.arg("done")),
            "finished": ("delivered", "bounced"),
        }
        return Page("queue.html", context)

    async def _detail(page: PageRequest, queue_id: int | None, problem=None, status=200):
        if queue_id is None:
            raise not_found()
        try:
            detail = await page.store.run(queue_ops.queue_show, queue_id)
        except NotFound:
            raise not_found() from None
        context = {
            "detail": detail,
            "done": QUEUE_DONE.get(page.arg("done")),
            "problem": problem,
            "finished": ("delivered", "bounced"),
        }
        return Page("queue_message.html", context, status=status)

    @app.route("/queue/message", admin=True)
    async def queue_message(page: PageRequest):
        return await _detail(page, parse_id(page.arg("id")))

    @app.route("/queue/retry", methods=("POST",), admin=True)
    async def queue_retry(page: PageRequest):
        queue_id = parse_id(page.form.get("id", ""))
        if queue_id is None:
            raise not_found()
        try:
            count = await page.store.run(queue_ops.queue_retry, queue_id, utc_now())
        except NotFound:
            raise not_found() from None
        done = "retried" if count else "nothing"
        return Redirect(f"/queue/message?id={queue_id}&done={done}")

    @app.route("/queue/delete", methods=("POST",), admin=True)
    async def queue_delete(page: PageRequest):
        queue_id = parse_id(page.form.get("id", ""))
        if queue_id is None:
            raise not_found()
        try:
            await page.store.run(queue_ops.queue_delete, queue_id)
        except NotFound:
            raise not_found() from None
        except Conflict:
            problem = (
                "This message is being delivered right now; try again when the attempt is over."
            )
            return await _detail(page, queue_id, problem, status=409)
        return Redirect("/queue?done=deleted")

    # --- message types ------------------------------------------------------------------

    async def _types_page(page: PageRequest, status=200, **extra):
        types = await page.store.run(type_ops.list_message_types)
        done = TYPE_DONE.get(page.arg("done"))
        if done and page.arg("done") == "deleted":
            moved = parse_id(page.arg("moved"))
            target = page.arg("to")
            if moved and target in {t.code for t in types}:
                noun = "message was" if moved == 1 else "messages were"
                done = f"{done[:-1]}; {moved} {noun} moved to {target}."
        context = {
            "types": types,
            "done": done,
            "new": {"name": "", "code": "", "description": "", "active": True},
            "new_errors": {},
            "edit_code": None,
            "edit": {},
            "edit_errors": {},
            "row_problem": {},
        }
        context.update(extra)
        return Page("message_types.html", context, status=status)

    def _text_errors(name: str, description: str) -> dict[str, str]:
        errors = {}
        if not name:
            errors["name"] = "Enter a name."
        elif len(name) > _NAME_LIMIT:
            errors["name"] = f"A name is at most {_NAME_LIMIT} characters."
        if len(description) > _DESCRIPTION_LIMIT:
            errors["description"] = f"A description is at most {_DESCRIPTION_LIMIT} characters."
        return errors

    @app.route("/message-types", methods=("GET", "POST"), admin=True)
    async def message_types(page: PageRequest):
        if page.request.method != b"POST":
            return await _types_page(page)
        form = page.form
        new = {
            "name": form.get("name", "").strip(),
            "code": form.get("code", "").strip(),
            "description": form.get("description", "").strip(),
            "active": "active" in form,
        }
        errors = _text_errors(new["name"], new["description"])
        try:
            code = type_ops.normalize_type_code(new["code"])
        except Invalid:
            errors["code"] = (
                "Use lowercase letters, digits and - (not at the start or end), "
                "at most 32 characters."
            )
        if not errors:
            try:
                await page.store.run(
                    type_ops.add_message_type,
                    new["name"],
                    code,
                    new["description"],
                    new["active"],
                )
            except Conflict:
                errors["code"] = f"A message type with code {code} exists already."
            except Invalid as error:
                errors["name"] = str(error)
        if errors:
            return await _types_page(page, 400, new=new, new_errors=errors)
        return Redirect("/message-types?done=created")

    async def _current_type(page: PageRequest):
        code = page.form.get("code", "")
        for kind in await page.store.run(type_ops.list_message_types):
            if kind.code == code:
                return kind
        raise not_found()

    @app.route("/message-types/edit", methods=("POST",), admin=True)
    async def message_type_edit(page: PageRequest):
        kind = await _current_type(page)
        form = page.form
        edit = {
            "name": form.get("name", "").strip(),
            "description": form.get("description", "").strip(),
            "active": "active" in form,
            "default_incoming": "default_incoming" in form,
            "default_outgoing": "default_outgoing" in form,
        }
        errors = _text_errors(edit["name"], edit["description"])
        for field, what in (("default_incoming", "incoming"), ("default_outgoing", "outgoing")):
            if getattr(kind, field) and not edit[field]:
                errors[field] = (
                    f"This is the default for {what} mail; make another type the default instead."
                )
            elif edit[field] and not edit["active"]:
                errors[field] = f"Only an active type can be the default for {what} mail."
        if not errors:
            try:
                await page.store.run(
                    type_ops.update_message_type,
                    kind.code,
                    name=edit["name"],
                    description=edit["description"],
                    active=edit["active"],
                    # Only a change is sent: unticking a default is refused above.
                    default_incoming=True if edit["default_incoming"] else None,
                    default_outgoing=True if edit["default_outgoing"] else None,
                )
            except NotFound:
                raise not_found() from None
            except (Conflict, Invalid) as error:
                errors["active"] = _first_clause(error) + "."
        if errors:
            return await _types_page(page, 400, edit_code=kind.code, edit=edit, edit_errors=errors)
        return Redirect("/message-types?done=saved")

    @app.route("/message-types/delete", methods=("POST",), admin=True)
    async def message_type_delete(page: PageRequest):
        kind = await _current_type(page)
        target = page.form.get("reassign_to", "").strip() or None
        problem = None
        if kind.default_incoming or kind.default_outgoing:
            what = "incoming" if kind.default_incoming else "outgoing"
            problem = (
                f"{kind.code} is the default type for {what} mail and cannot be deleted; "
                "make another type the default first."
            )
        else:
            try:
                deletion = await page.store.run(type_ops.delete_message_type, kind.code, target)
            except NotFound:
                problem = "The type to reassign the messages to no longer exists; choose another."
            except (Conflict, Invalid) as error:
                problem = _first_clause(error)
                if target is None:
                    problem += "; choose a type to reassign them to and delete again."
                else:
                    problem += "."
            else:
                params = {"done": "deleted"}
                if deletion.reassigned:
                    params.update(moved=str(deletion.reassigned), to=deletion.reassigned_to)
                return Redirect("/message-types?" + urlencode(params))
        return await _types_page(page, 409, row_problem={kind.code: problem})
