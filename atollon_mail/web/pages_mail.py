"""Web pages: the mail client: a user's mailboxes, their messages, reading and composing."""

from __future__ import annotations

import email
import email.policy
from email.utils import parseaddr
from urllib.parse import quote

import attrs
import nh3
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from atollon_mail.delivery.intake import summarize_headers
from atollon_mail.store import common, drafts, filing, mailboxes, mailfolders, searchtext
from atollon_mail.store.errors import Invalid, NotFound, StoreError
from atollon_mail.store.records import InboundVerdict, Origin, OutgoingMessage, Recipient
from atollon_mail.store.values import DRAFTS, INBOX, JUNK
from atollon_mail.web import compose, replies
from atollon_mail.web.app import HttpError, Page, PageRequest, Redirect, WebApp, not_found
from atollon_mail.web.numbers import parse_count, parse_id
from atollon_mail.web.pages_contacts import filing_context

log = Logger()

PER_PAGE = 50
# The main reasons of a spam score shown with it.
SHOWN_SYMBOLS = 10
FOLDER_NAMES = {INBOX: "Inbox", JUNK: "Junk", DRAFTS: "Drafts"}
MAX_BODY = 60 * 1024  # characters of text in a message written in the browser
# The compose form's request body (its text and its attachments) is limited by the size
# of message the appliance accepts ([smtp] max_message_size); refused before it is read,
# and to anyone without a session at the forms' limit (WebApp.body_limit).
SHOWN_HEADERS = ("From", "To", "Cc", "Date", "Subject")

# No images (remote ones would tell the sender the mail was read), nor image maps.
_HTML_TAGS = nh3.ALLOWED_TAGS - {"img", "area", "map"}
_HTML_SCHEMES = {"http", "https", "mailto"}


def box_url(address: str, **params) -> str:
    extra = "".join(f"&{name}={quote(str(value), safe='')}" for name, value in params.items())
    return f"/mail/box?address={quote(address, safe='')}{extra}"


def _message_id_arg(page: PageRequest) -> int:
    value = parse_id(page.arg("id"))
    if value is None:
        raise not_found()
    return value


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def verdict_lines(verdict: InboundVerdict | None) -> dict | None:
    """What the message page says of the inbound checks: their verdicts in words, the
    spam score with its main reasons, whether the spam filter saw it at all."""
    if verdict is None:
        return None
    score = None
    if verdict.spam_score is not None:
        score = _score(verdict.spam_score)
        if verdict.spam_threshold is not None:
            score += f" (junk from {_score(verdict.spam_threshold)})"
    return {
        "junk": verdict.junk,
        "notes": list(verdict.notes),
        "score": score,
        "reasons": list(verdict.spam_symbols[:SHOWN_SYMBOLS]),
        "more_reasons": max(0, len(verdict.spam_symbols) - SHOWN_SYMBOLS),
        "scanned": verdict.scanned,
        "authentication": verdict.authentication,
    }


def _header(message, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # a malformed header is shown as missing, not as a failure
        return ""
    return "" if value is None else str(value)


def _parts(message) -> list:
    """Every leaf part, in walk order: its index is the part number of the links."""
    return [part for part in message.walk() if not part.is_multipart()]


def _is_attachment(part) -> bool:
    if part.is_attachment():
        return True
    return part.get_content_maintype() not in ("text", "message")


def _text(part) -> str:
    try:
        return part.get_content()
    except Exception:  # an unknown charset or broken encoding: show what decodes
        payload = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", errors="replace")


def sanitize_html(html: str) -> str:
    return nh3.clean(
        html, tags=_HTML_TAGS, url_schemes=_HTML_SCHEMES, link_rel="noopener noreferrer"
    )


def read_message(raw: bytes) -> dict:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    text = html = None
    attachments = []
    for number, part in enumerate(_parts(message)):
        kind = part.get_content_type()
        if _is_attachment(part):
            payload = part.get_payload(decode=True) or b""
            attachments.append(
                {
                    "part": number,
                    "filename": part.get_filename() or f"part-{number}",
                    "content_type": kind,
                    "size": len(payload),
                }
            )
        elif kind == "text/plain" and text is None:
            text = _text(part)
        elif kind == "text/html" and html is None:
            html = sanitize_html(_text(part))
    return {
        "headers": [(name, _header(message, name)) for name in SHOWN_HEADERS],
        "text": text,
        "html": html,
        "attachments": attachments,
    }


def write_body(page: PageRequest, body: bytes, content_type: str, disposition: str):
    """Answer with `body` itself (a download, or text shown as it is: never rendered nor
    sniffed); the framework adds nothing to a finished request."""
    request = page.request
    request.setResponseCode(200)
    request.setHeader(b"content-type", content_type.encode("ascii", "replace"))
    request.setHeader(b"content-disposition", disposition.encode("ascii"))
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
    request.setHeader(b"content-length", str(len(body)).encode())
    if request.method != b"HEAD":
        request.write(body)
    request.finish()
    return Redirect("/mail")  # never sent: the request is already finished


def _write_download(page: PageRequest, body: bytes, content_type: str, filename: str):
    safe_name = quote(filename, safe="")
    return write_body(page, body, content_type, f"attachment; filename*=UTF-8''{safe_name}")


async def learn(page: PageRequest, raw: bytes, spam: bool, message_id: int) -> bool:
    """The spam filter (if any) learns that a message moved by the user is spam (into
    Junk) or not (out of it); False when it could not (the move stands all the same)."""
    if page.app.learner is None:
        return True
    try:
        await maybeDeferred(page.app.learner.learn, raw, spam)
    except Exception:  # the filter is down or refused: the move stands
        log.failure("the spam filter could not learn from message {id}", id=message_id)
        return False
    return True


def _one_line(value: str) -> str:
    return " ".join(value.split())


def _draft_message(mailbox, values, attachments, threading, draft_of) -> OutgoingMessage:
    """The draft the compose form holds, with its search text (in the CPU pool)."""
    raw = compose.build(mailbox, values, attachments, threading, draft_of)
    draft = OutgoingMessage(envelope_sender=mailbox.identity, raw=raw, **summarize_headers(raw))
    return searchtext.with_search_text(draft)


def register(app: WebApp) -> None:
    async def _mailbox(page: PageRequest, address: str):
        await page.require_view(address)
        try:
            return await page.store.run(mailboxes.get_mailbox, address)
        except (NotFound, Invalid):
            raise not_found() from None

    async def _filed(page: PageRequest):
        address = page.arg("address")
        mailbox = await _mailbox(page, address)
        try:
            filed = await page.store.run(
                filing.filed_message, mailbox.address, _message_id_arg(page)
            )
        except NotFound:
            raise not_found() from None
        return mailbox, filed

    @app.route("/mail")
    async def mail(page: PageRequest):
        boxes = await page.store.run(filing.viewable_mailboxes, page.user.login)
        return Page("mail.html", {"mailboxes": boxes})

    # A mailbox's folders and their messages (/mail/box): pages_folders.

    @app.route("/mail/message")
    async def message(page: PageRequest):
        mailbox, filed = await _filed(page)
        rights = await page.rights(mailbox.address)
        try:
            if rights.edit:  # opened: read (by whoever may change the mailbox)
                await page.store.run(mailfolders.mark_read, mailbox.address, filed.message_id)
            flags = await page.store.run(
                mailfolders.message_flags, mailbox.address, filed.message_id
            )
        except NotFound:  # removed meanwhile
            raise not_found() from None
        context = {
            "mailbox": mailbox,
            "message_id": filed.message_id,
            "folder": filed.folder,
            "flagged": mailfolders.FLAGGED_FLAG in flags,
            "may_move": rights.edit,
            "may_send": rights.edit,
            "verdict": verdict_lines(filed.verdict),
            **read_message(filed.raw),
            **await filing_context(page, mailbox.address, filed.message_id, rights.edit),
        }
        return Page("mail_message.html", context)

    @app.route("/mail/move", methods=("POST",))
    async def move(page: PageRequest):
        """The "Junk" and "Not junk" buttons: the message moves within the mailbox, and
        the spam filter (if any) learns from it. Needs the edit right, as sending does."""
        address = page.form.get("address", "")
        mailbox = await _mailbox(page, address)
        if not (await page.rights(mailbox.address)).edit:
            raise not_found()
        message_id = parse_id(page.form.get("id"))
        target = page.form.get("to", "")
        if message_id is None or target not in (INBOX, JUNK):
            raise not_found()
        origin = INBOX if target == JUNK else JUNK
        try:
            moved = await page.store.run(filing.move_message, mailbox.address, message_id, target)
        except NotFound:
            raise not_found() from None
        learned = True
        if moved.moved:
            learned = await learn(page, moved.raw, target == JUNK, message_id)
        params = {"folder": origin, "moved": target}
        if not learned:
            params["learned"] = 0
        return Redirect(box_url(mailbox.address, **params))

    @app.route("/mail/attachment")
    async def attachment(page: PageRequest):
        _, filed = await _filed(page)
        raw = filed.raw
        number = parse_count(page.arg("part"))
        parts = _parts(email.message_from_bytes(raw, policy=email.policy.default))
        if number is None or number >= len(parts):
            raise not_found()
        part = parts[number]
        if not _is_attachment(part):
            raise not_found()
        body = part.get_payload(decode=True) or b""
        filename = part.get_filename() or f"part-{number}"
        return _write_download(page, body, part.get_content_type(), filename)

    def _compose_page(
        page,
        mailbox,
        values,
        errors=None,
        status=200,
        original=None,
        draft_id=None,
        kept=(),
        note="",
        action=None,
        original_id=None,
    ) -> Page:
        if action is None:
            action = original.action if original else ""
        if original is not None:
            original_id = original.message_id
        elif original_id is None:  # a form sent back: what it named
            original_id = page.form.get("original", "")
        context = {
            "mailbox": mailbox,
            "values": values,
            "errors": errors or {},
            "action": action,
            "original_id": original_id,
            # What a draft carries is among its attachments already.
            "carried": original.carried if original and draft_id is None else [],
            "draft_id": draft_id or "",
            "kept": compose.listed(list(kept)),
            "most_bytes": page.app.config.smtp.max_message_size,
            "note": note,
        }
        return Page("mail_compose.html", context, status=status)

    async def _original(page: PageRequest, mailbox, action: str, message_id: str):
        """The message replied to or forwarded (None for a new message); an action or
        message that is none, or not filed in this mailbox, is not found."""
        if not action:
            return None
        number = parse_id(message_id)
        if action not in replies.ACTIONS or number is None:
            raise not_found()
        try:
            filed = await page.store.run(filing.filed_message, mailbox.address, number)
        except NotFound:
            raise not_found() from None
        return Original(action, number, filed.raw)

    async def _recipients(page: PageRequest, value: str):
        """(local, remote, error) for one address field: comma-separated addresses."""
        local: list[Recipient] = []
        remote: list[str] = []
        for item in value.split(","):
            if not item.strip():
                continue
            _, address = parseaddr(item.strip())
            try:
                address = common.normalize_identity(address)
            except Invalid:
                return [], [], f"{item.strip()!r} is not an address; use one like name@example.org"
            # The intake's routing, as for mail submitted over SMTP.
            found = await page.app.intake.route(address)
            if isinstance(found, Recipient):
                local.append(found)
            elif isinstance(found, str):
                remote.append(found)
            else:
                return [], [], f"{address}: {found.detail}"
        return local, remote, None

    async def _draft(page: PageRequest, mailbox, text: str):
        """(message id, compose.Draft) of a draft of this mailbox named by a form or link;
        None for none named. A draft that is none here is not found."""
        if not text:
            return None
        number = parse_id(text)
        if number is None:
            raise not_found()
        try:
            filed = await page.store.run(filing.filed_message, mailbox.address, number)
        except NotFound:
            raise not_found() from None
        if filed.folder != DRAFTS:
            raise not_found()
        return number, compose.read_draft(filed.raw)

    async def _draft_original(page: PageRequest, mailbox, action: str, text: str):
        """The original a draft answers; gone meanwhile, the draft is sent without it."""
        try:
            return await _original(page, mailbox, action, text)
        except HttpError:
            return None

    async def _save_draft(
        page, mailbox, values, attachments, threading, action, original_id, replaces
    ):
        # Building (base64 of the attachments) and reading its text for search cost CPU in
        # proportion to the draft's size, up to the largest message: not on the reactor,
        # nor in the store's transaction; autosave repeats it every 30 s.
        draft = await page.app.workers.in_cpu(
            _draft_message, mailbox, values, attachments, threading, (action, original_id)
        )
        return await page.store.run(drafts.save_draft, mailbox.address, draft, replaces)

    @app.route(
        "/mail/compose",
        methods=("GET", "POST"),
        max_body=app.config.smtp.max_message_size,
        uploads=True,
    )
    async def compose_page(page: PageRequest):
        address = page.form.get("address") or page.arg("address")
        mailbox = await _mailbox(page, address)
        if not (await page.rights(mailbox.address)).edit:
            raise not_found()
        if page.request.method != b"POST":
            found = await _draft(page, mailbox, page.arg("draft"))
            if found is not None:
                draft_id, draft = found
                note = "Draft saved." if page.arg("saved") == "1" else ""
                original = await _draft_original(page, mailbox, draft.action, draft.original)
                return _compose_page(
                    page,
                    mailbox,
                    draft.values,
                    original=original,
                    draft_id=draft_id,
                    kept=draft.attachments,
                    note=note,
                    action=draft.action,
                    original_id=draft.original,
                )
            original = await _original(page, mailbox, page.arg("action"), page.arg("id"))
            if original is not None:
                values = replies.prefill(original.action, original.raw, mailbox, MAX_BODY)
                return _compose_page(page, mailbox, values, original=original)
            body = f"\n\n-- \n{mailbox.signature}" if mailbox.signature else ""
            values = {"to": "", "cc": "", "subject": "", "body": body}
            return _compose_page(page, mailbox, values)
        intent = page.form.get("intent", "send")
        autosave = page.form.get("autosave") == "1"
        values = {name: page.form.get(name, "") for name in ("to", "cc", "subject", "body")}
        action = page.form.get("action", "")
        try:
            found = await _draft(page, mailbox, page.form.get("draft", ""))
        except HttpError:
            if intent != "draft":
                raise
            found = None  # saved again after it was sent or removed elsewhere: a new one
        # What a form sent back lists as kept: the stored draft's attachments, numbered
        # as stored (the removal boxes name those numbers).
        stored: list = []
        if found is not None:
            draft_id, draft = found
            stored = draft.attachments
            original = await _draft_original(page, mailbox, action, page.form.get("original", ""))
            threading = draft.threading
            removed = {
                index for index in range(len(draft.attachments)) if page.form.get(f"remove-{index}")
            }
            attachments = [a for i, a in enumerate(draft.attachments) if i not in removed]
        else:
            draft_id = None
            original = await _original(page, mailbox, action, page.form.get("original", ""))
            threading = {}
            if original is not None and original.action in (replies.REPLY, replies.REPLY_ALL):
                threading = replies.threading_headers(original.raw)
            attachments = compose.carried(original.action, original.raw) if original else []
        attachments += compose.uploaded(page.files)
        original_id = str(original.message_id) if original else page.form.get("original", "")
        most = page.app.config.smtp.max_message_size
        errors = {}
        if len(values["body"]) > MAX_BODY:
            errors["body"] = f"The message is longer than {MAX_BODY // 1024} KiB."
        total = sum(len(item.data) for item in attachments)
        if total > most * 3 // 4:  # base64 makes 4 bytes of 3
            errors["attachments"] = (
                f"The attachments come to {total} bytes; with them a message may not pass "
                f"{most} bytes. Remove some."
            )
        if intent == "draft":
            errors.update(compose.unwritable(values))
            if errors:
                status = 413 if "attachments" in errors or "body" in errors else 400
                if autosave:
                    return compose.write_json(page.request, {"errors": errors}, status)
                return _compose_page(
                    page,
                    mailbox,
                    values,
                    errors,
                    status,
                    original,
                    draft_id,
                    stored,
                    action=action,
                )
            saved = await _save_draft(
                page, mailbox, values, attachments, threading, action, original_id, draft_id
            )
            if autosave:
                return compose.write_json(
                    page.request,
                    {"draft": saved.message_id, "attachments": compose.listed(attachments)},
                )
            return Redirect(
                f"/mail/compose?address={quote(mailbox.address, safe='')}"
                f"&draft={saved.message_id}&saved=1"
            )
        local: list[Recipient] = []
        remote: list[str] = []
        for field in ("to", "cc"):
            found_local, found_remote, problem = await _recipients(page, values[field])
            if problem:
                errors[field] = problem
            local += found_local
            remote += found_remote
        if not errors.get("to") and not values["to"].strip():
            errors["to"] = "Enter at least one recipient."
        if not mailbox.active:
            errors["to"] = "This mailbox is not active; it cannot send."
        else:  # the rule submission applies: a stored identity that no longer passes
            refused = await page.store.run(mailboxes.identity_refusal, mailbox.address)
            if refused is not None:
                errors["to"] = f"Sending as {mailbox.identity} is refused: {refused}."
        raw = b""
        if not errors:
            raw = await page.app.workers.in_cpu(
                compose.build, mailbox, values, attachments, threading
            )
            if len(raw) > most:
                errors["attachments"] = (
                    f"With its attachments the message is {len(raw)} bytes; this server "
                    f"sends at most {most}. Remove some."
                )
        if errors:
            status = 413 if "attachments" in errors else 400
            note = ""
            if (
                page.files
                and "attachments" not in errors
                and "body" not in errors
                and not compose.unwritable(values)
            ):
                # The browser cannot give the files back to the form: kept in a draft.
                saved = await _save_draft(
                    page, mailbox, values, attachments, threading, action, original_id, draft_id
                )
                draft_id, stored = saved.message_id, attachments
                note = "The files you attached are kept in a draft."
            return _compose_page(
                page,
                mailbox,
                values,
                errors,
                status,
                original,
                draft_id,
                stored,
                note,
                action=action,
            )
        outgoing = _outgoing(mailbox, raw, local, remote)
        try:
            await page.app.intake.submit(outgoing, Origin("compose", mailbox_id=mailbox.id))
        except StoreError as problem:
            errors["to"] = str(problem)
            return _compose_page(
                page,
                mailbox,
                values,
                errors,
                400,
                original,
                draft_id,
                stored,
                action=action,
            )
        if draft_id is not None:
            try:
                await page.store.run(drafts.delete_draft, mailbox.address, draft_id)
            except NotFound:
                pass  # sent from another window meanwhile: nothing left to remove
        if original is not None:
            await _mark_original(page, mailbox, original)
        return Redirect(box_url(mailbox.address, sent=1))

    async def _mark_original(page: PageRequest, mailbox, original) -> None:
        """The original gets \\Answered (or $Forwarded) once the intake accepted the
        message; if it was removed meanwhile, what was sent stands."""
        flag = replies.FLAGS[original.action]
        try:
            await page.store.run(filing.add_flag, mailbox.address, original.message_id, flag)
        except StoreError:
            log.failure("could not flag message {id} {flag}", id=original.message_id, flag=flag)


@attrs.frozen
class Original:
    """The message a reply or forward written in the browser answers or carries."""

    action: str  # replies.ACTIONS
    message_id: int
    raw: bytes

    @property
    def carried(self) -> list[str]:
        """What goes along with the new message: the original's attachments on an inline
        forward, the original itself on a forward as attachment."""
        if self.action == replies.FORWARD:
            return [item["filename"] for item in replies.attachments(self.raw)]
        if self.action == replies.FORWARD_ATTACHED:
            return ["the original message (.eml)"]
        return []


def _outgoing(mailbox, raw: bytes, local: list[Recipient], remote: list[str]):
    unique_local = {recipient.mailbox_id: recipient for recipient in local}
    return OutgoingMessage(
        envelope_sender=mailbox.identity,
        raw=raw,
        local_recipients=tuple(unique_local.values()),
        remote_recipients=tuple(dict.fromkeys(remote)),
        sent_mailbox_id=mailbox.id,
        **summarize_headers(raw),
    )
