"""Web pages: mass-mail campaigns: the list and a new campaign, one campaign (variants,
preview per language, sending controls, progress), its send list by state, and its
status as JSON for the page's progress bar."""

from __future__ import annotations

import json
import math
import re
from urllib.parse import urlencode

import attrs

from atollon_mail.massmail.templates import MERGE_FIELDS
from atollon_mail.massmail.tokens import preview_unsubscribe_url, unsubscribe_base
from atollon_mail.store import campaign_recipients as recipient_ops
from atollon_mail.store import campaigns as campaign_ops
from atollon_mail.store import sendlists as sendlist_ops
from atollon_mail.store import traffic as traffic_ops
from atollon_mail.store.campaign_records import CampaignStatus
from atollon_mail.store.errors import Conflict, NotFound, StoreError
from atollon_mail.store.values import RECIPIENT_STATES, utc_now
from atollon_mail.web.app import HttpError, Page, PageRequest, Redirect, WebApp, not_found
from atollon_mail.web.cached import Cached
from atollon_mail.web.charts import send_rate_chart
from atollon_mail.web.numbers import page_number, parse_id
from atollon_mail.web.pages import QUEUE_FACTS_SECONDS, clock_now

PAGE_SIZE = 50  # send-list rows per page; a module constant so tests may lower it
DEFAULT_LANGUAGE = "en"

# Which sending control each status offers (the page's script shows and hides them alike).
CONTROLS = {
    "send": ("draft",),
    "pause": ("running",),
    "resume": ("paused",),
    "cancel": ("draft", "running", "paused"),
    "retry": ("running", "paused", "finished"),  # and only while some recipient failed
}
# The store lets variants change while nothing is being sent.
EDITABLE_STATUSES = ("draft", "paused")

# Confirmations come back through the redirect as a key, never as free text in the URL.
DONE = {
    "created": "The campaign was created; write a variant for each language, then send it.",
    "variant-saved": "The variant was saved.",
    "variant-removed": "The variant was removed.",
    "started": "Sending started.",
    "paused": "Sending paused; resume it when you are ready.",
    "resumed": "Sending resumed.",
    "cancelled": "The campaign was cancelled; nothing more will be sent.",
    "nothing-failed": "No recipient has failed: there is nothing to retry.",
}


# Store messages end with advice for the command line ("see: massmail list", "add one:
# massmail variant ..."); the page has its own buttons for that, so it is left out.
_SEE_ALSO = re.compile(r"\s*(?:;\s*see:[^;()]*|\(see:[^()]*\))")
_COMMAND = re.compile(r":\s*massmail [^;()]*")


def for_the_page(text: str) -> str:
    return _COMMAND.sub("", _SEE_ALSO.sub("", text)).strip()


def _sentence(error: Exception | str) -> str:
    text = for_the_page(str(error))
    if not text:
        return "Refused."
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def campaign_url(campaign_id: int, **params: str) -> str:
    return "/campaign?" + urlencode({"id": campaign_id, **params})


def status_url(campaign_id: int) -> str:
    return f"/campaign/status.json?id={campaign_id}"


def recipients_url(campaign_id: int, state: str = "", uncertain: bool = False, number=1) -> str:
    params: dict[str, object] = {"id": campaign_id}
    if state:
        params["state"] = state
    if uncertain:
        params["uncertain"] = "1"
    if number > 1:
        params["page"] = number
    return "/campaign/recipients?" + urlencode(params)


def percent_done(status: CampaignStatus) -> int:
    # Rounded down: 100 % only when every recipient is done.
    if status.total == 0:
        return 100 if status.campaign.status == "finished" else 0
    return math.floor(status.done * 100 / status.total)


def duration_text(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return "less than a minute"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def rate_text(status: CampaignStatus) -> str:
    """The rate and the time left in words, as the page shows them."""
    state = status.campaign.status
    if state == "draft":
        return "Not sent yet."
    if state == "paused":
        return "Paused: nothing is being sent."
    if state == "cancelled":
        return "Cancelled."
    if state == "finished":
        return "Finished."
    if status.rate is None:
        return "Measuring the rate."
    text = f"{status.rate:.1f} messages a second"
    if status.eta_seconds is not None:
        left = duration_text(status.eta_seconds)
        text += f"; {left} left" if status.eta_seconds < 60 else f"; about {left} left"
    return text + "."


def status_json(status: CampaignStatus) -> dict:
    return {
        "status": status.campaign.status,
        "counts": {state: status.counts.get(state, 0) for state in RECIPIENT_STATES},
        "total": status.total,
        "done": status.done,
        "uncertain": status.uncertain,
        "rate": status.rate,
        "eta_seconds": status.eta_seconds,
        # Worded here so the page's script and the server say the same.
        "percent": percent_done(status),
        "rate_text": rate_text(status),
    }


def register(app: WebApp) -> None:
    # A campaign's send rate counts its sent rows: kept a while per campaign, as the
    # dashboard's queue facts are, not counted again at each view of a large campaign.
    send_rates = Cached(app.clock, QUEUE_FACTS_SECONDS)

    # --- the list and a new campaign ----------------------------------------------------

    async def _list_page(page: PageRequest, new=None, errors=None, status=200):
        statuses = await page.store.run(recipient_ops.campaign_statuses, utc_now())
        choices = await page.store.run(campaign_ops.new_campaign_choices)
        context = {
            "statuses": statuses,
            "choices": choices,
            "new": new
            or {"name": "", "group": "", "mailbox": "", "type": "", "language": DEFAULT_LANGUAGE},
            "errors": errors or {},
        }
        return Page("campaigns.html", context, status=status)

    @app.route("/campaigns", methods=("GET", "POST"), admin=True)
    async def campaigns(page: PageRequest):
        if page.request.method != b"POST":
            return await _list_page(page)
        new = {
            key: page.form.get(key, "").strip()
            for key in ("name", "group", "mailbox", "type", "language")
        }
        errors = {}
        if not new["name"]:
            errors["name"] = "Enter a name."
        group_id = parse_id(new["group"])
        if group_id is None:
            errors["group"] = "Choose a group."
        if not new["mailbox"]:
            errors["mailbox"] = "Choose the mailbox it is sent from."
        if not new["language"]:
            errors["language"] = "Enter a language code such as en."
        if errors:
            return await _list_page(page, new, errors, status=400)
        try:
            created = await page.store.run(
                campaign_ops.create_campaign,
                new["name"],
                group_id,
                new["mailbox"],
                new["language"],
                type_code=new["type"] or None,
                now=utc_now(),
            )
        except StoreError as problem:
            errors["form"] = _sentence(problem)
            return await _list_page(page, new, errors, status=400)
        return Redirect(campaign_url(created.id, done="created"))

    # --- one campaign -------------------------------------------------------------------

    async def _status_or_404(page: PageRequest, campaign_id: int | None) -> CampaignStatus:
        if campaign_id is None:
            raise not_found()
        try:
            return await page.store.run(recipient_ops.campaign_status, campaign_id, utc_now())
        except NotFound:
            raise not_found() from None

    async def _detail_page(
        page: PageRequest,
        campaign_id: int | None,
        *,
        problem: str | None = None,
        edit_target: str | None = None,
        edit: dict | None = None,
        edit_error: str | None = None,
        status: int = 200,
    ):
        progress = await _status_or_404(page, campaign_id)
        campaign = progress.campaign
        previews, preview_problem = [], None
        try:
            rendered = await page.store.run(
                campaign_ops.preview_campaign,
                campaign.id,
                unsubscribe_url=preview_unsubscribe_url(unsubscribe_base(page.app.config)),
            )
        except NotFound:
            raise not_found() from None
        except StoreError as refusal:
            preview_problem = _sentence(refusal)
        else:
            previews = [
                attrs.evolve(item, error=_sentence(item.error)) if item.error else item
                for item in rendered
            ]
        send_rate = await send_rates.get(
            campaign.id,
            lambda: page.store.run(
                traffic_ops.campaign_send_rate, campaign.id, clock_now(page.app.clock)
            ),
        )
        done = DONE.get(page.arg("done")) if status == 200 else None
        retried = parse_id(page.arg("retried")) if status == 200 else None
        if retried:
            noun = "recipient is" if retried == 1 else "recipients are"
            done = f"{retried} failed {noun} queued again."
        context = {
            "campaign": campaign,
            "progress": progress,
            "percent": percent_done(progress),
            "rate_text": rate_text(progress),
            "send_rate_chart": send_rate_chart(send_rate),
            "send_rate_unit": send_rate.unit,
            "states": RECIPIENT_STATES,
            "controls": CONTROLS,
            "editable": campaign.status in EDITABLE_STATUSES,
            "previews": previews,
            "preview_problem": preview_problem,
            "merge_fields": MERGE_FIELDS,
            "done": done,
            "problem": problem,
            "edit_target": edit_target,
            "edit": edit or {"language": "", "subject": "", "body": ""},
            "edit_error": edit_error,
            "status_url": status_url(campaign.id),
            "recipients_url": lambda state="", uncertain=False: recipients_url(
                campaign.id, state, uncertain
            ),
        }
        return Page("campaign.html", context, status=status)

    @app.route("/campaign", methods=("GET", "POST"), admin=True)
    async def campaign(page: PageRequest):
        campaign_id = parse_id(page.arg("id"))
        if page.request.method != b"POST":
            return await _detail_page(page, campaign_id)
        if campaign_id is None:
            raise not_found()
        action = ACTIONS.get(page.form.get("action", ""))
        if action is None:
            raise HttpError(400, "This form asks for nothing the page knows; reload it and retry.")
        return await action(page, campaign_id)

    async def _refused(page: PageRequest, campaign_id: int, refusal: StoreError, **edit):
        status = 409 if isinstance(refusal, Conflict) else 400
        if isinstance(refusal, NotFound):
            await _status_or_404(page, campaign_id)  # the campaign itself gone: 404
            status = 404
        if edit:
            return await _detail_page(
                page, campaign_id, edit_error=_sentence(refusal), status=status, **edit
            )
        return await _detail_page(page, campaign_id, problem=_sentence(refusal), status=status)

    async def _variant_save(page: PageRequest, campaign_id: int):
        # The add form says new=1; each variant's own form names its language.
        target = "new" if page.form.get("new") else page.form.get("language", "").strip()
        edit = {
            "language": page.form.get("language", "").strip(),
            "subject": page.form.get("subject", ""),
            "body": page.form.get("body", ""),
        }
        if not edit["language"]:
            return await _detail_page(
                page,
                campaign_id,
                edit_target=target,
                edit=edit,
                edit_error="Enter a language code such as en or cs.",
                status=400,
            )
        try:
            await page.store.run(
                campaign_ops.set_variant,
                campaign_id,
                edit["language"],
                edit["subject"],
                edit["body"],
                now=utc_now(),
            )
        except StoreError as refusal:
            return await _refused(page, campaign_id, refusal, edit_target=target, edit=edit)
        return Redirect(campaign_url(campaign_id, done="variant-saved"))

    async def _variant_remove(page: PageRequest, campaign_id: int):
        language = page.form.get("language", "").strip()
        try:
            await page.store.run(campaign_ops.remove_variant, campaign_id, language)
        except StoreError as refusal:
            return await _refused(page, campaign_id, refusal)
        return Redirect(campaign_url(campaign_id, done="variant-removed"))

    def _control(operation, done: str):
        async def act(page: PageRequest, campaign_id: int):
            try:
                await page.store.run(operation, campaign_id, utc_now())
            except StoreError as refusal:
                return await _refused(page, campaign_id, refusal)
            return Redirect(campaign_url(campaign_id, done=done))

        return act

    async def _retry(page: PageRequest, campaign_id: int):
        try:
            count = await page.store.run(sendlist_ops.retry_failed, campaign_id, utc_now())
        except StoreError as refusal:
            return await _refused(page, campaign_id, refusal)
        if not count:
            return Redirect(campaign_url(campaign_id, done="nothing-failed"))
        return Redirect(campaign_url(campaign_id, retried=str(count)))

    ACTIONS = {
        "variant-save": _variant_save,
        "variant-remove": _variant_remove,
        "send": _control(sendlist_ops.start_campaign, "started"),
        "pause": _control(sendlist_ops.pause_campaign, "paused"),
        "resume": _control(sendlist_ops.resume_campaign, "resumed"),
        "cancel": _control(sendlist_ops.cancel_campaign, "cancelled"),
        "retry": _retry,
    }

    # --- the progress bar's source ------------------------------------------------------

    @app.route("/campaign/status.json", admin=True)
    async def campaign_status_json(page: PageRequest):
        progress = await _status_or_404(page, parse_id(page.arg("id")))
        body = json.dumps(status_json(progress)).encode("utf-8")
        request = page.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
        request.setHeader(b"content-length", str(len(body)).encode())
        if request.method != b"HEAD":
            request.write(body)
        request.finish()
        return Redirect("/campaigns")  # never sent: the request is already finished

    # --- the send list ------------------------------------------------------------------

    @app.route("/campaign/recipients", admin=True)
    async def campaign_recipients(page: PageRequest):
        progress = await _status_or_404(page, parse_id(page.arg("id")))
        campaign = progress.campaign
        state = page.arg("state").strip()
        if state and state not in RECIPIENT_STATES:
            raise HttpError(400, f"A recipient state is one of {', '.join(RECIPIENT_STATES)}.")
        uncertain = page.arg("uncertain") in ("1", "yes", "true", "on")
        number = page_number(page.arg("page"))
        try:
            # One more than a page: whether there is a next page, without counting.
            entries = await page.store.run(
                recipient_ops.send_list,
                campaign.id,
                state=state or None,
                uncertain=True if uncertain else None,
                limit=PAGE_SIZE + 1,
                offset=(number - 1) * PAGE_SIZE,
            )
        except NotFound:
            raise not_found() from None
        context = {
            "campaign": campaign,
            "progress": progress,
            "states": RECIPIENT_STATES,
            "state": state,
            "uncertain": uncertain,
            "entries": entries[:PAGE_SIZE],
            "number": number,
            "prev_url": (
                recipients_url(campaign.id, state, uncertain, number - 1) if number > 1 else None
            ),
            "next_url": (
                recipients_url(campaign.id, state, uncertain, number + 1)
                if len(entries) > PAGE_SIZE
                else None
            ),
            "recipients_url": lambda state="", uncertain=False: recipients_url(
                campaign.id, state, uncertain
            ),
        }
        return Page("campaign_recipients.html", context)
