"""Messages written in the web client: built from the compose form with their attachments
(uploaded, kept from a draft, carried from a forwarded original), and drafts read back
into the form.

Pure functions over bytes and records; pages_mail's compose page asks them."""

from __future__ import annotations

import datetime
import email
import email.policy
import json
import mimetypes
import re
import unicodedata
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import attrs

from atollon_mail.web import replies
from atollon_mail.web.app import Redirect

# The headers a draft keeps what the form was answering, for when it is opened again
# (a sent message is built anew from the form and never carries them).
ACTION_HEADER = "X-Atollon-Draft-Action"
ORIGINAL_HEADER = "X-Atollon-Draft-Original"
THREADING = ("In-Reply-To", "References")
LONGEST_FILENAME = 200


@attrs.frozen
class Attachment:
    """A file that goes with a message: its name, MIME type and bytes."""

    filename: str
    content_type: str
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")

    @property
    def is_message(self) -> bool:
        return self.content_type == "message/rfc822"


def clean_filename(name: str) -> str:
    """The last part of a name a browser sent (some send the whole path), without control
    characters, at most LONGEST_FILENAME characters; "attachment" when nothing is left."""
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    if len(name) > LONGEST_FILENAME:
        stem, dot, extension = name.rpartition(".")
        keep = extension if dot and len(extension) <= 10 else ""
        name = name[: LONGEST_FILENAME - len(keep) - 1].rstrip() + ("." + keep if keep else "")
    return name or "attachment"


def content_type_of(filename: str) -> str:
    """The MIME type a file's name says (python's mimetypes), else application/octet-stream:
    what a browser says of an upload is often only that anyway."""
    found, encoding = mimetypes.guess_type(filename, strict=False)
    if found is None or encoding is not None:  # "x.tar.gz" is a gzip file, not a tar
        return "application/gzip" if encoding == "gzip" else "application/octet-stream"
    return found


def uploaded(files) -> list[Attachment]:
    """The files of the form's attachment input (web.uploads.Upload), typed by their names."""
    found = []
    for upload in files:
        name = clean_filename(upload.filename)
        found.append(Attachment(name, content_type_of(name), upload.data))
    return found


def carried(action: str, raw: bytes) -> list[Attachment]:
    """What a forward carries of its original: an inline forward its attachments, a
    forward as attachment the original itself."""
    if action == replies.FORWARD:
        return [
            Attachment(item["filename"], item["content_type"], item["data"])
            for item in replies.attachments(raw)
        ]
    if action == replies.FORWARD_ATTACHED:
        name = replies.eml_name(replies.header(replies.parse(raw), "Subject"))
        return [Attachment(name, "message/rfc822", raw)]
    return []


def unwritable(values: dict) -> dict[str, str]:
    """{field: why} for the To and Cc texts the email package cannot write into a
    message header at all (a broken address such as x@[1.2.3): a draft is saved with
    whatever else the form holds, but not with these, and says so beside them."""
    problems = {}
    for field, name in (("to", "To"), ("cc", "Cc")):
        text = _one_line(values.get(field, ""))
        if not text:
            continue
        try:
            EmailMessage()[name] = text
        except Exception:  # the header parser's defects surface as several kinds
            problems[field] = f"{text!r} cannot be written into a message; correct it."
    return problems


def _one_line(value: str) -> str:
    return " ".join(value.split())


def build(
    mailbox,
    values: dict,
    attachments: list[Attachment],
    threading: dict[str, str],
    draft_of: tuple[str, str] | None = None,
) -> bytes:
    """The message the form says, with its attachments, as bytes.

    A message/rfc822 attachment (a forwarded original) goes byte for byte, last
    (replies.with_original); a second one as a file. `draft_of`: (action, original id)
    kept in a draft's own headers."""
    message = EmailMessage()
    message["From"] = mailbox.identity
    message["To"] = _one_line(values["to"])
    if values["cc"].strip():
        message["Cc"] = _one_line(values["cc"])
    message["Subject"] = _one_line(values["subject"])
    message["Date"] = format_datetime(datetime.datetime.now(datetime.UTC))
    message["Message-ID"] = make_msgid(domain=mailbox.identity.rpartition("@")[2])
    for name, value in threading.items():
        message[name] = value
    if draft_of is not None and draft_of[0]:
        message[ACTION_HEADER] = draft_of[0]
        message[ORIGINAL_HEADER] = draft_of[1]
    message.set_content(values["body"].replace("\r\n", "\n"))
    original = None
    for item in attachments:
        if item.is_message and original is None:
            original = item.data
            continue
        maintype, _, subtype = item.content_type.partition("/")
        if maintype in ("message", "multipart"):  # the email package takes these as objects
            maintype, subtype = "application", "octet-stream"
        # add_attachment writes a non-ASCII name as RFC 2231 (filename*=utf-8''...).
        message.add_attachment(
            item.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=item.filename,
        )
    if original is not None:
        return replies.with_original(message, original)
    return message.as_bytes(policy=email.policy.SMTP)


@attrs.frozen
class Draft:
    """A stored draft read back into the compose form."""

    values: dict
    attachments: list[Attachment]
    threading: dict[str, str]
    action: str  # replies.ACTIONS, or "" for a new message
    original: str  # the id of the message answered or forwarded, "" for none


def _embedded(part) -> bytes:
    """The bytes of a message/rfc822 part's message."""
    inner = part.get_payload(0) if part.is_multipart() else part.get_content()
    if isinstance(inner, bytes | str):
        return inner.encode("utf-8") if isinstance(inner, str) else inner
    return inner.as_bytes(policy=inner.policy.clone(linesep="\r\n"))


def read_draft(raw: bytes) -> Draft:
    message = replies.parse(raw)
    body = message.get_body(preferencelist=("plain",))
    text = "" if body is None else replies.part_text(body)
    attachments = []
    if message.is_multipart():
        for number, part in enumerate(message.iter_attachments()):
            kind = part.get_content_type()
            if kind == "message/rfc822":
                data = _embedded(part)
            else:
                data = part.get_payload(decode=True) or b""
            name = part.get_filename() or f"attachment-{number + 1}"
            attachments.append(Attachment(name, kind, data))
    action = replies.header(message, ACTION_HEADER)
    return Draft(
        values={
            "to": replies.header(message, "To"),
            "cc": replies.header(message, "Cc"),
            "subject": replies.header(message, "Subject"),
            "body": text,
        },
        attachments=attachments,
        threading={
            name: replies.header(message, name)
            for name in THREADING
            if replies.header(message, name)
        },
        action=action if action in replies.ACTIONS else "",
        original=replies.header(message, ORIGINAL_HEADER),
    )


def listed(attachments: list[Attachment]) -> list[dict]:
    """The attachments as the form lists them: their number (for "remove"), name, size."""
    return [
        {"index": index, "filename": item.filename, "size": len(item.data)}
        for index, item in enumerate(attachments)
    ]


def write_json(request, value, status: int = 200) -> Redirect:
    """Answer with JSON; the request is finished, so the page framework adds nothing (and
    sends nothing of the Redirect given back for the handler to return)."""
    text = json.dumps(value, ensure_ascii=True)
    # Nothing that reads as markup, should the text ever be put into a page as it is.
    for character, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(character, escaped)
    body = text.encode("ascii")
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-length", str(len(body)).encode())
    if request.method != b"HEAD":
        request.write(body)
    request.finish()
    return Redirect("/mail")
