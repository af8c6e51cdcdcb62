"""Web pages: the mail client: a user's mailboxes, their messages, reading and composing."""

from __future__ import annotations

import datetime
import email
import email.policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from urllib.parse import quote

import attrs
import nh3
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from atollon_mail.delivery.intake import summarize_headers
from atollon_mail.store import common, filing, mailboxes
from atollon_mail.store.errors import Invalid, NotFound, StoreError
from atollon_mail.store.records import InboundVerdict, Origin, OutgoingMessage, Recipient
from atollon_mail.store.values import INBOX, JUNK
from atollon_mail.web import replies
from atollon_mail.web.app import Page, PageRequest, Redirect, WebApp, not_found
from atollon_mail.web.numbers import page_number, parse_count, parse_id
from atollon_mail.web.pages_contacts import filing_context

log = Logger()

PER_PAGE = 50
# The main reasons of a spam score shown with it.
SHOWN_SYMBOLS = 10
FOLDER_NAMES = {INBOX: "Inbox", JUNK: "Junk"}
MAX_BODY = 60 * 1024  # characters of text in a message written in the browser
# The compose form's request body: MAX_BODY characters form-encoded (a 4-byte UTF-8
# character is 12 bytes as %XX%XX%XX%XX: 720 KiB) plus the recipients and subject. Refused
# before it is read, even before the login is checked; larger when attachments come.
MAX_COMPOSE_FORM_BYTES = 1024 * 1024
SHOWN_HEADERS = ("From", "To", "Cc", "Date", "Subject")

# No images (remote ones would tell the sender the mail was read), nor image maps.
_HTML_TAGS = nh3.ALLOWED_TAGS - {"img", "area", "map"}
_HTML_SCHEMES = {"http", "https", "mailto"}


def _box_url(address: str, **params) -> str:
    extra = "".join(f"&{name}={quote(str(value), safe='')}" for name, value in params.items())
    return f"/mail/box?address={quote(address, safe='')}{extra}"


def _message_id_arg(page: PageRequest) -> int:
    value = parse_id(page.arg("id"))
    if value is None:
        raise not_found()
    return value


def _folder_arg(text: str) -> str:
    """A folder named in a link or form (none: the inbox); any other value is a 404."""
    folder = text or INBOX
    if folder not in FOLDER_NAMES:
        raise not_found()
    return folder


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


def _write_download(page: PageRequest, body: bytes, content_type: str, filename: str):
    """Answer with the file itself; the framework adds nothing to a finished request."""
    request = page.request
    safe_name = quote(filename, safe="")
    request.setResponseCode(200)
    request.setHeader(b"content-type", content_type.encode("ascii", "replace"))
    request.setHeader(
        b"content-disposition",
        f"attachment; filename*=UTF-8''{safe_name}".encode("ascii"),
    )
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
    request.setHeader(b"content-length", str(len(body)).encode())
    if request.method != b"HEAD":
        request.write(body)
    request.finish()
    return Redirect("/mail")  # never sent: the request is already finished


def _one_line(value: str) -> str:
    return " ".join(value.split())


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

    @app.route("/mail/box")
    async def box(page: PageRequest):
        mailbox = await _mailbox(page, page.arg("address"))
        folder = _folder_arg(page.arg("folder"))
        rights = await page.rights(mailbox.address)
        number = page_number(page.arg("page"))
        filings = await page.store.run(
            filing.list_filings,
            mailbox.address,
            PER_PAGE + 1,
            (number - 1) * PER_PAGE,
            folder=folder,
        )
        moved = page.arg("moved")
        context = {
            "mailbox": mailbox,
            "folder": folder,
            "folders": FOLDER_NAMES,
            "may_send": rights.edit,
            "may_move": rights.edit,
            "filings": filings[:PER_PAGE],
            "number": number,
            "previous_url": (
                _box_url(mailbox.address, folder=folder, page=number - 1) if number > 1 else None
            ),
            "next_url": (
                _box_url(mailbox.address, folder=folder, page=number + 1)
                if len(filings) > PER_PAGE
                else None
            ),
            "sent": page.arg("sent") == "1",
            "moved": FOLDER_NAMES.get(moved),
            "not_learned": moved in FOLDER_NAMES and page.arg("learned") == "0",
        }
        return Page("mail_box.html", context)

    @app.route("/mail/message")
    async def message(page: PageRequest):
        mailbox, filed = await _filed(page)
        rights = await page.rights(mailbox.address)
        context = {
            "mailbox": mailbox,
            "message_id": filed.message_id,
            "folder": filed.folder,
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
        if moved.moved and page.app.learner is not None:
            try:
                await maybeDeferred(page.app.learner.learn, moved.raw, target == JUNK)
            except Exception:  # the filter is down or refused: the move stands
                log.failure("the spam filter could not learn from message {id}", id=message_id)
                learned = False
        params = {"folder": origin, "moved": target}
        if not learned:
            params["learned"] = 0
        return Redirect(_box_url(mailbox.address, **params))

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

    def _compose_page(page, mailbox, values, errors=None, status=200, original=None) -> Page:
        context = {
            "mailbox": mailbox,
            "values": values,
            "errors": errors or {},
            "action": original.action if original else "",
            "original_id": original.message_id if original else "",
            "carried": original.carried if original else [],
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

    @app.route("/mail/compose", methods=("GET", "POST"), max_body=MAX_COMPOSE_FORM_BYTES)
    async def compose(page: PageRequest):
        address = page.form.get("address") or page.arg("address")
        mailbox = await _mailbox(page, address)
        if not (await page.rights(mailbox.address)).edit:
            raise not_found()
        if page.request.method != b"POST":
            original = await _original(page, mailbox, page.arg("action"), page.arg("id"))
            if original is not None:
                values = replies.prefill(original.action, original.raw, mailbox, MAX_BODY)
                return _compose_page(page, mailbox, values, original=original)
            body = f"\n\n-- \n{mailbox.signature}" if mailbox.signature else ""
            values = {"to": "", "cc": "", "subject": "", "body": body}
            return _compose_page(page, mailbox, values)
        original = await _original(
            page, mailbox, page.form.get("action", ""), page.form.get("original", "")
        )
        values = {name: page.form.get(name, "") for name in ("to", "cc", "subject", "body")}
        errors = {}
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
        if len(values["body"]) > MAX_BODY:
            errors["body"] = f"The message is longer than {MAX_BODY // 1024} KiB."
        if not mailbox.active:
            errors["to"] = "This mailbox is not active; it cannot send."
        else:  # the rule submission applies: a stored identity that no longer passes
            refused = await page.store.run(mailboxes.identity_refusal, mailbox.address)
            if refused is not None:
                errors["to"] = f"Sending as {mailbox.identity} is refused: {refused}."
        if errors:
            return _compose_page(page, mailbox, values, errors, status=400, original=original)
        outgoing = _outgoing(mailbox, values, local, remote, original)
        try:
            await page.app.intake.submit(outgoing, Origin("compose", mailbox_id=mailbox.id))
        except StoreError as problem:
            errors["to"] = str(problem)
            return _compose_page(page, mailbox, values, errors, status=400, original=original)
        if original is not None:
            await _mark_original(page, mailbox, original)
        return Redirect(_box_url(mailbox.address, sent=1))

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


def _outgoing(
    mailbox,
    values: dict,
    local: list[Recipient],
    remote: list[str],
    original: Original | None = None,
):
    message = EmailMessage()
    message["From"] = mailbox.identity
    message["To"] = _one_line(values["to"])
    if values["cc"].strip():
        message["Cc"] = _one_line(values["cc"])
    message["Subject"] = _one_line(values["subject"])
    message["Date"] = format_datetime(datetime.datetime.now(datetime.UTC))
    message["Message-ID"] = make_msgid(domain=mailbox.identity.rpartition("@")[2])
    if original is not None and original.action in (replies.REPLY, replies.REPLY_ALL):
        for name, value in replies.threading_headers(original.raw).items():
            message[name] = value
    message.set_content(values["body"].replace("\r\n", "\n"))
    if original is not None and original.action == replies.FORWARD:
        replies.attach_files(message, replies.attachments(original.raw))
    if original is not None and original.action == replies.FORWARD_ATTACHED:
        raw = replies.with_original(message, original.raw)
    else:
        raw = message.as_bytes(policy=email.policy.SMTP)
    unique_local = {recipient.mailbox_id: recipient for recipient in local}
    return OutgoingMessage(
        envelope_sender=mailbox.identity,
        raw=raw,
        local_recipients=tuple(unique_local.values()),
        remote_recipients=tuple(dict.fromkeys(remote)),
        sent_mailbox_id=mailbox.id,
        **summarize_headers(raw),
    )
