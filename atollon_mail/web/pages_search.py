"""The mail client's search: words of the subject, the addresses and the body text in a
mailbox (or in every mailbox the user may view), with filters for folder, sender,
recipient, days, attachments and unread mail; the results link to the message page.

A mailbox the user may not view is not found (404), as on every page of it; a filter that
is no value (a date that is none, a folder that is none) is a 400 saying what to give.
"""

from __future__ import annotations

import datetime
from urllib.parse import urlencode

from atollon_mail.store import search
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.records import SearchQuery
from atollon_mail.store.values import DRAFTS, INBOX, JUNK, TRASH
from atollon_mail.web.app import HttpError, Page, PageRequest, WebApp, not_found
from atollon_mail.web.numbers import page_number

PER_PAGE = 50
FOLDER_CHOICES = {"": "Any folder", INBOX: "Inbox", JUNK: "Junk", DRAFTS: "Drafts", TRASH: "Trash"}
# The characters a search field takes: far more than a person types, and a bound on the
# work of reading a hand-made URL.
MAX_FIELD = 500
_TEXT_FIELDS = ("q", "from", "to")


def _field(page: PageRequest, name: str) -> str:
    value = page.arg(name).strip()
    if len(value) > MAX_FIELD:
        raise HttpError(400, f"A search field takes at most {MAX_FIELD} characters.")
    return value


def _day(page: PageRequest, name: str, label: str) -> datetime.date | None:
    text = _field(page, name)
    if not text:
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise HttpError(
            400, f"The {label} date {text!r} is no day; give one such as 2026-12-07."
        ) from None


def register(app: WebApp) -> None:
    @app.route("/mail/search")
    async def search_mail(page: PageRequest):
        address = _field(page, "address")
        if address:
            await page.require_view(address)  # 404 for a mailbox the user may not view
        values = {name: _field(page, name) for name in _TEXT_FIELDS}
        folder = _field(page, "folder")
        if folder not in FOLDER_CHOICES:
            raise HttpError(400, f"A folder is one of {', '.join(FOLDER_CHOICES.values())}.")
        since = _day(page, "since", "first")
        until = _day(page, "until", "last")
        if since and until and since > until:
            raise HttpError(400, "The first day comes after the last; swap them.")
        attachment = page.arg("attachment") == "1"
        unread = page.arg("unread") == "1"
        number = page_number(page.arg("page"))
        params = {
            "address": address,
            **values,
            "folder": folder,
            "since": since.isoformat() if since else "",
            "until": until.isoformat() if until else "",
            "attachment": "1" if attachment else "",
            "unread": "1" if unread else "",
        }
        params = {name: value for name, value in params.items() if value}
        # Asked for something: words, or a filter beyond the mailbox (an empty form shows
        # only the form).
        asked = any(name != "address" for name in params)
        results = None
        if asked:
            query = SearchQuery(
                text=values["q"],
                mailboxes=(address,) if address else (),
                folder=folder or None,
                sender=values["from"],
                recipient=values["to"],
                since=since,
                until=until,
                has_attachment=attachment,
                unread=unread,
            )
            try:
                results = await page.store.run(
                    search.search,
                    page.user.login,
                    query,
                    PER_PAGE,
                    (number - 1) * PER_PAGE,
                )
            except NotFound:
                raise not_found() from None
            except Invalid as problem:
                raise HttpError(400, f"{str(problem).split(';')[0].capitalize()}.") from None

        def page_url(n: int) -> str:
            return "/mail/search?" + urlencode({**params, "page": str(n)})

        context = {
            "address": address,
            "values": values,
            "folder": folder,
            "folders": FOLDER_CHOICES,
            "since": params.get("since", ""),
            "until": params.get("until", ""),
            "attachment": attachment,
            "unread": unread,
            "results": results,
            "folder_names": {value: name for value, name in FOLDER_CHOICES.items() if value},
            "number": number,
            "previous_url": page_url(number - 1) if results and number > 1 else None,
            "next_url": page_url(number + 1) if results and results.more else None,
        }
        return Page("mail_search.html", context)
