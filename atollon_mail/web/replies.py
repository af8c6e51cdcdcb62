"""Replies and forwards written in the web mail client: who they go to, their subject, the
quoted or forwarded text, the threading headers, and the original carried along.

Pure functions over the original's bytes and the mailbox record; pages_mail asks them."""

from __future__ import annotations

import email
import email.policy
import html
import re
import textwrap
import uuid
from email.message import EmailMessage, MIMEPart
from email.utils import getaddresses

import nh3

from atollon_mail.delivery.reencode import has_long_line

REPLY = "reply"
REPLY_ALL = "reply-all"
FORWARD = "forward"
FORWARD_ATTACHED = "forward-attached"
ACTIONS = (REPLY, REPLY_ALL, FORWARD, FORWARD_ATTACHED)
# The flag each action leaves on the original once the intake accepted what was sent.
FLAGS = {
    REPLY: "\\Answered",
    REPLY_ALL: "\\Answered",
    FORWARD: "$Forwarded",
    FORWARD_ATTACHED: "$Forwarded",
}

# Quoted lines are wrapped to this many characters (the prefix included); a word longer
# than LONGEST_WORD is cut, so no quoted line comes near 998 octets even in 4-byte UTF-8.
QUOTE_WIDTH = 76
LONGEST_WORD = 200
# A deeper quote prefix than this is treated as text (it is wrapped like any other).
LONGEST_PREFIX = 40
# Room left in the compose form's text for the user's own words and the signature.
TEXT_ROOM = 4096
LEFT_OUT = "[The rest of the original is left out: it is too long to quote.]"

_REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|antw)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"^\s*(fwd?|wg|tr)\s*:", re.IGNORECASE)
_QUOTE_PREFIX = re.compile(r"^>[> ]*")
# Characters that would make a display name need quoting: the compose form splits its
# address fields at commas, so such a name is left out and the address kept.
_AWKWARD_NAME = re.compile(r'[,;:"<>()\[\]\\@]')
_FORWARDED_HEADERS = ("From", "Date", "Subject", "To", "Cc")


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def header(message, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # a malformed header counts as missing
        return ""
    return "" if value is None else " ".join(str(value).split())


def _addresses(message, *names: str) -> list[tuple[str, str]]:
    """(display name, address) of the named headers, in order; malformed ones left out."""
    found = []
    for name in names:
        value = header(message, name)
        if not value:
            continue
        for display, address in getaddresses([value]):
            if "@" in address and not any(c.isspace() for c in address):
                found.append((" ".join(display.split()), address))
    return found


def _shown(display: str, address: str) -> str:
    if display and not _AWKWARD_NAME.search(display):
        return f"{display} <{address}>"
    return address


def _without(pairs, excluded: set[str]) -> list[str]:
    """The addresses not excluded (case-insensitively), each once; adds to `excluded`."""
    kept = []
    for display, address in pairs:
        key = address.lower()
        if key in excluded:
            continue
        excluded.add(key)
        kept.append(_shown(display, address))
    return kept


def own_addresses(mailbox) -> set[str]:
    return {a.lower() for a in (mailbox.address, mailbox.identity, *mailbox.aliases) if a}


def reply_subject(subject: str) -> str:
    return "Re: " + _REPLY_PREFIX.sub("", subject).strip()


def forward_subject(subject: str) -> str:
    subject = subject.strip()
    return subject if _FORWARD_PREFIX.match(subject) else f"Fwd: {subject}"


def recipients(message, mailbox, reply_all: bool) -> tuple[str, str]:
    """(To, Cc) of a reply: Reply-To or From of the original; for reply all also its
    other To and Cc addresses, none of the mailbox's own. A reply to a message this
    mailbox sent goes to that message's recipients."""
    own = own_addresses(mailbox)
    target = _addresses(message, "Reply-To") or _addresses(message, "From")
    if not _addresses(message, "Reply-To") and all(a.lower() in own for _, a in target):
        target = _addresses(message, "To") or target
    excluded = set(own)
    to = _without(target, excluded)
    cc: list[str] = []
    if reply_all:
        to += _without(_addresses(message, "To"), excluded)
        cc = _without(_addresses(message, "Cc"), excluded)
    if not to and target:  # a message from this mailbox to itself: back to itself
        to = [_shown(*target[0])]
    return ", ".join(to), ", ".join(cc)


def _text_part(message) -> str:
    """The first text/plain part that is not an attachment, or the first HTML one with
    its markup stripped; empty when there is neither."""
    html_text = None
    for part in message.walk():
        if part.is_multipart() or part.is_attachment():
            continue
        kind = part.get_content_type()
        if kind == "text/plain":
            return part_text(part)
        if kind == "text/html" and html_text is None:
            html_text = part_text(part)
    if html_text is None:
        return ""
    stripped = html.unescape(nh3.clean(html_text, tags=set()))
    return re.sub(r"\n\s*\n(\s*\n)+", "\n\n", stripped).strip()


def part_text(part) -> str:
    try:
        text = part.get_content()
    except Exception:  # an unknown charset or broken encoding: what decodes
        text = (part.get_payload(decode=True) or b"").decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _cut(text: str, room: int) -> str:
    if len(text) <= room:
        return text
    return text[:room].rstrip() + "\n" + LEFT_OUT


def quote_lines(text: str) -> list[str]:
    """Each line of text behind "> ", wrapped at QUOTE_WIDTH; what was quoted before keeps
    its prefix on every wrapped line, and an overlong word is cut."""
    quoted = []
    for line in text.rstrip("\n").split("\n"):
        line = line.rstrip()
        found = _QUOTE_PREFIX.match(line)
        prefix = found.group(0) if found and len(found.group(0)) <= LONGEST_PREFIX else ""
        # "> text" quoted again is ">> text"; anything else gets "> ".
        lead = ">" + prefix.rstrip() + " " if prefix else "> "
        rest = line[len(prefix) :].strip()
        if not rest:
            quoted.append(lead.rstrip())
            continue
        pieces = textwrap.wrap(
            rest,
            width=max(QUOTE_WIDTH - len(lead), 20),
            break_long_words=False,
            break_on_hyphens=False,
        )
        for piece in pieces:
            while len(piece) > LONGEST_WORD:
                quoted.append(lead + piece[:LONGEST_WORD])
                piece = piece[LONGEST_WORD:]
            quoted.append(lead + piece)
    return quoted


def _signature(mailbox) -> str:
    return f"\n\n-- \n{mailbox.signature}" if mailbox.signature else ""


def reply_body(message, mailbox, room: int) -> str:
    """The attribution ("On DATE, NAME wrote:"), the original's text quoted, room to
    write, the signature."""
    date = header(message, "Date")
    senders = _addresses(message, "From")
    name = (senders[0][0] or senders[0][1]) if senders else "someone"
    intro = f"On {date}, {name} wrote:" if date else f"{name} wrote:"
    text = _cut(_text_part(message), room - TEXT_ROOM)
    return "\n".join([intro, *quote_lines(text)]) + "\n\n" + _signature(mailbox)


def forward_body(message, mailbox, room: int, inline: bool) -> str:
    """Room to write, then (inline) the original's headers and text, then the signature."""
    if not inline:
        return _signature(mailbox)
    lines = ["", "", "---------- Forwarded message ----------"]
    for name in _FORWARDED_HEADERS:
        value = header(message, name)
        if value:
            lines.append(f"{name}: {value}")
    text = _cut(_text_part(message), room - TEXT_ROOM)
    return "\n".join([*lines, "", text]) + _signature(mailbox)


def prefill(action: str, raw: bytes, mailbox, room: int) -> dict[str, str]:
    """The compose form's values for `action` (ACTIONS) on the original `raw`."""
    message = parse(raw)
    subject = header(message, "Subject")
    if action in (REPLY, REPLY_ALL):
        to, cc = recipients(message, mailbox, action == REPLY_ALL)
        return {
            "to": to,
            "cc": cc,
            "subject": reply_subject(subject),
            "body": reply_body(message, mailbox, room),
        }
    return {
        "to": "",
        "cc": "",
        "subject": forward_subject(subject),
        "body": forward_body(message, mailbox, room, inline=action == FORWARD),
    }


# A message id longer than this is left out of the threading headers (no line of them
# may pass 998 octets); of a longer chain of References the first and the last are kept.
LONGEST_ID = 250
MOST_REFERENCES = 20


def _message_ids(value: str) -> list[str]:
    return [found for found in re.findall(r"<[^<>\s]+>", value) if len(found) <= LONGEST_ID]


def threading_headers(raw: bytes) -> dict[str, str]:
    """In-Reply-To and References for a reply to raw: its Message-ID, and its References
    (or else its In-Reply-To) followed by that id. Empty when it has no Message-ID."""
    message = parse(raw)
    own = _message_ids(header(message, "Message-ID"))
    if not own:
        return {}
    earlier = (
        _message_ids(header(message, "References"))
        or _message_ids(header(message, "In-Reply-To"))[:1]
    )
    chain = [found for found in earlier if found != own[0]]
    if len(chain) >= MOST_REFERENCES:
        chain = chain[:1] + chain[-(MOST_REFERENCES - 2) :]
    chain.append(own[0])
    return {"In-Reply-To": own[0], "References": " ".join(chain)}


def attachments(raw: bytes) -> list[dict]:
    """The original's attachments (what the message page lists), for an inline forward:
    filename, content type and the decoded bytes."""
    found = []
    for number, part in enumerate(p for p in parse(raw).walk() if not p.is_multipart()):
        if part.is_attachment() or part.get_content_maintype() not in ("text", "message"):
            found.append(
                {
                    "filename": part.get_filename() or f"part-{number}",
                    "content_type": part.get_content_type(),
                    "data": part.get_payload(decode=True) or b"",
                }
            )
    return found


def attach_files(message: EmailMessage, files: list[dict]) -> None:
    for item in files:
        maintype, _, subtype = item["content_type"].partition("/")
        message.add_attachment(
            item["data"],
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=item["filename"],
        )


def with_original(message: EmailMessage, raw: bytes) -> bytes:
    """message, as sent, with raw attached as a message/rfc822 part byte for byte (7bit
    or 8bit). An original with a line over 998 octets cannot travel so: it goes
    base64-encoded as application/octet-stream, a .eml file any mail program opens."""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    filename = eml_name(header(parse(raw), "Subject"))
    if has_long_line(raw):
        message.add_attachment(
            raw, maintype="application", subtype="octet-stream", filename=filename
        )
        return message.as_bytes(policy=email.policy.SMTP)
    # The email package writes a part's text as ASCII only: the part holds a placeholder
    # that the original's bytes replace once the rest is written.
    placeholder = f"original-{uuid.uuid4().hex}"
    part = MIMEPart(policy=message.policy)
    part["Content-Type"] = "message/rfc822"
    part["Content-Disposition"] = "attachment"
    part.set_param("filename", filename, header="Content-Disposition")
    if any(byte > 127 for byte in raw):
        part["Content-Transfer-Encoding"] = "8bit"
    part.set_payload(placeholder)
    if message.get_content_type() != "multipart/mixed":  # files are attached already
        message.make_mixed()
    message.attach(part)
    boundary = f"=_{uuid.uuid4().hex}"
    while boundary.encode() in raw:  # as good as never
        boundary = f"=_{uuid.uuid4().hex}"
    message.set_boundary(boundary)
    written = message.as_bytes(policy=email.policy.SMTP)
    head, found, tail = written.partition(placeholder.encode())
    assert found and placeholder.encode() not in tail
    return head + raw + tail


def eml_name(subject: str) -> str:
    name = re.sub(r"[^\w\- .]+", "", subject, flags=re.UNICODE).strip()[:60].strip()
    return f"{name or 'message'}.eml"
