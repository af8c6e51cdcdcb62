"""Re-encoding of message parts whose lines are over the 998 octets of RFC 5322 2.1.1.

Such a line passes a tolerant server unchanged, but the next stock Postfix folds it (its
smtp_line_length_limit) and every DKIM signature of the message breaks. Mail that leaves
from here is therefore re-encoded before it is stored, signed and queued: a text part as
quoted-printable, any other part as base64, each with its Content-Transfer-Encoding
header. The email package parses the structure and encodes; the header section of the
message is kept byte for byte (but for its Content-Transfer-Encoding when the message is
a single part, and a long line folded).

A header line is folded at whitespace (unfolding gives it back). What cannot be
re-encoded without changing what someone signed or what MIME allows is refused
(UnencodableMessage): a long header line without whitespace to fold it at, a long line
inside a multipart/signed or multipart/encrypted part, inside a message that carries a
DKIM or ARC signature already, or in a message/* part other than message/rfc822 (those
may not be encoded at all, RFC 2046 5.2).

Parsing costs CPU in proportion to the message: only messages with a long line are
parsed (the check for one is a single scan), and callers run `fit_line_length` in a
thread pool.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import email.quoprimime
import re
from email.generator import BytesGenerator
from email.message import Message
from io import BytesIO

from atollon_mail.smtp.client import normalize_line_endings

MAX_LINE = 998  # octets, without the CRLF (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6)

# Each led by the LF that starts the line, so the engine jumps from LF to LF (25 MB in
# about 30 ms; a class like [^\r\n] would be ten times slower). A line of 1000 octets or
# more is too long whatever ends it; one of exactly 999 only when its last octet is not
# the CR of a CRLF.
_LONG_LINE = re.compile(rb"\n[^\n]{%d}" % (MAX_LINE + 2))
_LONG_LINE_EXACT = re.compile(rb"\n[^\n]{%d}[^\r\n](?:\n|\Z)" % MAX_LINE)
# A line of 999 octets or more, whatever its last one: without one, no line is too long.
_LINE_999 = re.compile(rb"\n[^\n]{%d}" % (MAX_LINE + 1))
# compat32 keeps what it does not understand as it was; the generator writes CRLF lines
# and never refolds a header (max_line_length 0).
_POLICY = email.policy.compat32.clone(linesep="\r\n", max_line_length=0, cte_type="8bit")
_SIGNATURE_HEADERS = (b"dkim-signature", b"arc-message-signature", b"arc-seal")
_UNTOUCHABLE = ("multipart/signed", "multipart/encrypted")


class UnencodableMessage(Exception):
    """A message with a line over 998 octets that cannot be re-encoded safely.

    554 5.6.3 "conversion required but not supported" (RFC 3463): the content must be
    converted to travel on, and this host cannot convert it without breaking a signature
    or MIME's rules. 5.6.0 says less, and 5.6.1 is about media types the next hop does
    not support, which is not the problem here.
    """

    smtp_code = 554
    enhanced_status = "5.6.3"


def has_long_line(raw: bytes) -> bool:
    """Whether a line of raw (CRLF or LF lines) is over 998 octets, its CR not counted."""
    first = b"\n" + raw[: MAX_LINE + 2]  # the first line has no LF before it
    if not _LINE_999.match(first) and not _LINE_999.search(raw):
        # The usual case, settled by one scan: the checks below count every line break.
        return False
    if _LONG_LINE.match(first) or _LONG_LINE_EXACT.match(first):
        return True
    last = raw[raw.rfind(b"\n") + 1 :]  # a last line without its line break
    if _LONG_LINE.search(raw) or len(last.removesuffix(b"\r")) > MAX_LINE:
        return True
    # With CRLF lines only, a 999-octet line was 1000 with its CR and found above.
    return raw.count(b"\n") != raw.count(b"\r\n") and bool(_LONG_LINE_EXACT.search(raw))


def _header_end(raw: bytes) -> int:
    """Where the body starts (after the empty line), or len(raw) when there is none."""
    if raw.startswith(b"\r\n"):
        return 2
    found = raw.find(b"\r\n\r\n")
    return len(raw) if found < 0 else found + 4


def _header_names(head: bytes) -> list[bytes]:
    return [
        line.partition(b":")[0].strip().lower()
        for line in head.split(b"\r\n")
        if line and line[:1] not in (b" ", b"\t")
    ]


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _encoded(part: Message) -> tuple[str, bytes]:
    """(new Content-Transfer-Encoding, the part's content in it, CRLF lines)."""
    content = part.get_payload(decode=True) or b""
    if part.get_content_maintype() == "text":
        # Text: line breaks stay line breaks, every line at most 76 octets. The encoder
        # takes text: latin-1 maps each octet to one character and back, the charset of
        # the part stays what it was.
        text = content.replace(b"\r\n", b"\n").decode("latin-1")
        encoded = email.quoprimime.body_encode(text, maxlinelen=76, eol="\r\n")
        return "quoted-printable", encoded.encode("latin-1")
    # The line break after the last line belongs to what follows (a boundary line).
    return "base64", _crlf(base64.encodebytes(content).rstrip(b"\n"))


def _source(part: Message) -> bytes:
    """A leaf part's content as it was written (the transfer encoding not undone)."""
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding in ("quoted-printable", "base64"):  # ASCII, as written
        return str(part.get_payload()).encode("ascii", "surrogateescape")
    # Nothing to undo: the decoded content is the bytes as written (get_payload() without
    # decode would decode 8-bit text with its charset).
    return part.get_payload(decode=True) or b""


def _refuse(why: str) -> UnencodableMessage:
    return UnencodableMessage(
        f"a line of the message is over {MAX_LINE} octets {why}, and the message cannot "
        "be re-encoded: wrap the long lines, or send the content as an attachment"
    )


def _reencode_parts(part: Message) -> bool:
    """Re-encode the leaf parts below part that have a long line; whether any changed."""
    content_type = part.get_content_type()
    if part.is_multipart():
        children = part.get_payload()
        if content_type.startswith("message/"):
            if content_type != "message/rfc822":
                if any(has_long_line(child.as_bytes(policy=_POLICY)) for child in children):
                    raise _refuse(f"inside a {content_type} part")
                return False
        elif content_type in _UNTOUCHABLE:
            if has_long_line(part.as_bytes(policy=_POLICY)):
                raise _refuse(f"inside a {content_type} part (re-encoding breaks it)")
            return False
        changed = False
        for child in children:
            changed = _reencode_parts(child) or changed
        return changed
    if not has_long_line(_source(part)):
        return False
    if content_type.startswith("message/") or content_type.startswith("multipart/"):
        raise _refuse(f"inside a {content_type} part")
    encoding, content = _encoded(part)
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = encoding
    part.set_payload(content.decode("ascii"))
    return True


def fit_line_length(raw: bytes) -> bytes:
    """
    raw with every line at most 998 octets: raw itself when it has no longer line, else
    with the parts holding one re-encoded (quoted-printable for text, base64 for the
    rest). Raises UnencodableMessage when that cannot be done without breaking a
    signature or MIME (see the module's note). A re-encoded message has CRLF lines.
    """
    if not has_long_line(raw):
        return raw
    # As the SMTP client will send it: CRLF lines (what comes from SMTP has them already).
    raw = normalize_line_endings(raw)
    end = _header_end(raw)
    head, body = raw[:end], raw[end:]
    names = _header_names(head)
    signed = [name for name in _SIGNATURE_HEADERS if name in names]
    if signed:
        shown = signed[0].decode("ascii").title().replace("Dkim", "DKIM").replace("Arc", "ARC")
        raise _refuse(f"in a message signed already ({shown})")
    if has_long_line(head):
        head = b"\r\n".join(_fold(line) for line in head.split(b"\r\n"))
        if not has_long_line(body):
            return head + body
    message = email.parser.BytesParser(policy=_POLICY).parsebytes(raw)
    if not message.is_multipart():
        if message.get_content_maintype() in ("message", "multipart"):
            raise _refuse(f"inside a {message.get_content_type()} body")
        encoding, content = _encoded(message)
        kept = _without_transfer_encoding(head)
        if b"mime-version" not in names:
            kept += b"MIME-Version: 1.0\r\n"
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
        result = kept + f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode() + content
    else:
        if not _reencode_parts(message):
            raise _refuse("in a part that cannot be re-encoded")
        generated = BytesIO()
        BytesGenerator(generated, policy=_POLICY).flatten(message)
        written = generated.getvalue()
        result = head + written[_header_end(written) :]
    if has_long_line(result):
        raise _refuse("in a part that cannot be re-encoded")
    return result


def _fold(line: bytes) -> bytes:
    """A header line folded before whitespace so that no piece is over 998 octets;
    unfolding (removing the CRLFs) gives the line back as it was (RFC 5322 2.2.3)."""
    pieces = []
    start = line.find(b":") + 2  # not in the name, and not right after it
    while len(line) > MAX_LINE:
        cut = max(line.rfind(b" ", start, MAX_LINE), line.rfind(b"\t", start, MAX_LINE))
        if cut < start or not line[cut:].strip():
            raise _refuse("in a header, with no space to fold it at")
        pieces.append(line[:cut])
        line, start = line[cut:], 1
    pieces.append(line)
    return b"\r\n".join(pieces)


def _without_transfer_encoding(head: bytes) -> bytes:
    """The header section (ending in its empty line) without Content-Transfer-Encoding
    fields and without the empty line."""
    lines = head.split(b"\r\n")
    kept: list[bytes] = []
    skipping = False
    for line in lines:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.partition(b":")[0].strip().lower() == b"content-transfer-encoding"
        if not skipping:
            kept.append(line)
    return b"".join(line + b"\r\n" for line in kept)
