"""FETCH: the request parsed from the command's tokens, and each message's untagged
response rendered (RFC 3501 6.4.5 and 7.4.2, CONDSTORE's MODSEQ of RFC 7162, BINARY of
RFC 3516): pure code, no store, no reactor.

The server reads what `FetchRequest.needs` says ("none": the item's record is enough,
"headers": the header block, "full": the whole message), sets \\Seen when
`FetchRequest.sets_seen` (then renders with flags=True so FLAGS is in the answer), and
calls render for each message.
"""

from __future__ import annotations

import binascii
import datetime
import quopri
import re
from typing import Protocol

import attrs

from atollon_mail.imap.message import Message, envelope, header_end, literal, string
from atollon_mail.imap.parser import Atom, FetchAtt, ParseError

MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}

# Item -> what must be read to render it.
SIMPLE_ITEMS = {
    "UID": "none",
    "FLAGS": "none",
    "INTERNALDATE": "none",
    "RFC822.SIZE": "none",
    "MODSEQ": "none",
    "ENVELOPE": "headers",
    "RFC822.HEADER": "headers",
    "BODY": "full",
    "BODYSTRUCTURE": "full",
    "RFC822": "full",
    "RFC822.TEXT": "full",
}
NEEDS_ORDER = {"none": 0, "headers": 1, "full": 2}
# Items that answer with octets of the message (each a section, or a slice of one): one
# FETCH may ask for at most this many different ones (each may be as large as the
# message), so that a line of thousands of <origin.count> slices is refused (BAD).
COPYING_ITEMS = ("RFC822", "RFC822.TEXT", "RFC822.HEADER")
MAX_SECTIONS = 50
LARGE_PIECE = 16384  # a literal's data this large is a piece of its own, never copied

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class MessageItemLike(Protocol):
    uid: int
    modseq: int
    flags: tuple[str, ...]
    size: int
    internaldate: datetime.datetime


class UnknownEncoding(Exception):
    """BINARY of a part whose Content-Transfer-Encoding is unknown: the server answers
    NO [UNKNOWN-CTE]."""


@attrs.frozen
class FetchRequest:
    """The items of one FETCH in the order asked: names ("UID", "FLAGS", "ENVELOPE", ...)
    and FetchAtt for BODY[...], BODY.PEEK[...], BINARY[...], BINARY.PEEK[...] and
    BINARY.SIZE[...].

    needs: "none", "headers" or "full", the octets the items need; sets_seen: whether
    fetching them sets \\Seen (BODY[...], BINARY[...], RFC822, RFC822.TEXT; not the .PEEK
    forms, RFC822.HEADER or BINARY.SIZE). Both are worked out once, from the items.
    envelope_only: the header block is needed for ENVELOPE alone (a message whose
    ENVELOPE the store kept needs nothing read then: render uses item.envelope)."""

    items: tuple[str | FetchAtt, ...]
    needs: str = attrs.field(init=False)
    sets_seen: bool = attrs.field(init=False)
    envelope_only: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        needs = "none"
        sets_seen = False
        reading: set = set()
        for item in self.items:
            if isinstance(item, FetchAtt):
                if item.name.startswith("BODY") and item.section.startswith("HEADER"):
                    found = "headers"
                else:
                    found = "full"
                sets_seen = sets_seen or item.name in ("BODY", "BINARY")
            else:
                found = SIMPLE_ITEMS[item]
                sets_seen = sets_seen or item in ("RFC822", "RFC822.TEXT")
            if found != "none":
                reading.add(item)
            if NEEDS_ORDER[found] > NEEDS_ORDER[needs]:
                needs = found
        object.__setattr__(self, "needs", needs)
        object.__setattr__(self, "envelope_only", reading == {"ENVELOPE"})
        object.__setattr__(self, "sets_seen", sets_seen)


def parse_fetch(spec: object, uid: bool = False, modseq: bool = False) -> FetchRequest:
    """The request of FETCH's second argument: a macro (ALL, FAST, FULL), one item, or a
    list of items. `uid` (UID FETCH) adds UID, `modseq` (CHANGEDSINCE, or CONDSTORE
    enabled) adds MODSEQ, when they were not asked. Raises ParseError (tag None: the
    server answers BAD with the command's tag) for an unknown item."""
    if isinstance(spec, Atom) and spec.upper() in MACROS:
        names: list = list(MACROS[spec.upper()])
    else:
        tokens = spec if isinstance(spec, list) else [spec]
        if not tokens:
            raise ParseError(None, "FETCH needs at least one item")
        names = []
        for token in tokens:
            if isinstance(token, FetchAtt):
                names.append(token)
                continue
            if not isinstance(token, Atom) or token.upper() not in SIMPLE_ITEMS:
                raise ParseError(None, f"Unknown FETCH item {_shown(token)}")
            names.append(token.upper())
    items = []
    for name in names:
        if name not in items:
            items.append(name)
    sections = sum(1 for name in items if isinstance(name, FetchAtt) or name in COPYING_ITEMS)
    if sections > MAX_SECTIONS:
        raise ParseError(None, f"Too many body sections in one FETCH (at most {MAX_SECTIONS})")
    if uid and "UID" not in items:
        items.insert(0, "UID")
    if modseq and "MODSEQ" not in items:
        items.append("MODSEQ")
    return FetchRequest(tuple(items))


def _shown(token: object) -> str:
    if isinstance(token, bytes):
        return token.decode("ascii", "replace")
    if isinstance(token, list):
        return "(...)"
    return str(token)


def internaldate(moment: datetime.datetime) -> bytes:
    """An IMAP date-time: "07-Dec-2026 14:03:56 +0000" (month names never localised)."""
    offset = moment.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (
        f'"{moment.day:02d}-{MONTHS[moment.month - 1]}-{moment.year:04d} '
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} "
        f'{sign}{minutes // 60:02d}{minutes % 60:02d}"'
    ).encode("ascii")


def flags_list(flags: tuple[str, ...] | list[str]) -> bytes:
    """(\\Seen $Forwarded ...): \\Recent is never shown (no session owns new mail first)."""
    shown = " ".join(flag for flag in flags if flag != "\\Recent")
    return ("(" + shown + ")").encode("ascii", "replace")


def att_name(att: FetchAtt, origin: bool = True) -> bytes:
    """BODY[1.HEADER.FIELDS (Subject)]<0> as the answer names it (no .PEEK)."""
    name = att.name.removesuffix(".PEEK")
    text = att.section
    if att.fields:
        text += " (" + " ".join(_field_text(field) for field in att.fields) + ")"
    out = f"{name}[{text}]"
    if att.partial is not None and origin:
        out += f"<{att.partial[0]}>"
    return out.encode("ascii", "replace")


def _field_text(field: str) -> str:
    if field and all(33 <= ord(char) < 127 and char not in '(){%*"\\]' for char in field):
        return field
    return string(field.encode("ascii", "replace")).decode("ascii")


def render(
    request: FetchRequest,
    item: MessageItemLike,
    seq: int,
    raw: bytes | None,
    flags: bool = False,
) -> bytes:
    """The untagged answer "* <seq> FETCH (...)\\r\\n" for one message. `raw` is what
    request.needs asks for (the header block is enough for "headers"; None for "none");
    flags=True adds FLAGS when not asked (after \\Seen was set by this fetch)."""
    return b"".join(render_chunks(request, item, seq, raw, flags))


def render_chunks(
    request: FetchRequest,
    item: MessageItemLike,
    seq: int,
    raw: bytes | None,
    flags: bool = False,
) -> list[bytes | memoryview]:
    """render's answer in pieces (for transport.writeSequence): a large body section is
    one piece of its own, never copied into a joined answer."""
    parts: list[bytes | tuple[bytes | memoryview, ...]] = []
    message: Message | None = None
    items = request.items
    if raw and request.needs == "headers" and header_end(raw)[1] == len(raw):
        # A header block given without its blank line: header sections end with one.
        if not raw.endswith((b"\r\n\r\n", b"\n\n")):
            raw += (
                b"\r\n" if raw.endswith(b"\r\n") else b"\n" if raw.endswith(b"\n") else b"\r\n\r\n"
            )
    if flags and "FLAGS" not in items:
        items = items + ("FLAGS",)
    computed: dict = {}  # each section once, however many slices of it are asked
    for name in items:
        if isinstance(name, FetchAtt):
            if message is None:
                message = Message(raw or b"")
            parts.append(_render_att(name, message, computed))
        elif name == "UID":
            parts.append(b"UID %d" % item.uid)
        elif name == "FLAGS":
            parts.append(b"FLAGS " + flags_list(item.flags))
        elif name == "INTERNALDATE":
            parts.append(b"INTERNALDATE " + internaldate(item.internaldate))
        elif name == "RFC822.SIZE":
            parts.append(b"RFC822.SIZE %d" % item.size)
        elif name == "MODSEQ":
            parts.append(b"MODSEQ (%d)" % item.modseq)
        elif name == "ENVELOPE":
            if message is not None:
                parts.append(b"ENVELOPE " + message.envelope())
            elif raw is None and getattr(item, "envelope", None) is not None:
                parts.append(b"ENVELOPE " + item.envelope)  # kept by the store
            else:
                parts.append(b"ENVELOPE " + envelope(raw or b""))
        else:
            if message is None:
                message = Message(raw or b"")
            if name == "BODYSTRUCTURE":
                parts.append(b"BODYSTRUCTURE " + message.bodystructure(True))
            elif name == "BODY":
                parts.append(b"BODY " + message.bodystructure(False))
            elif name == "RFC822":
                parts.append(_literal_chunks(b"RFC822 ", message.raw))
            elif name == "RFC822.HEADER":
                parts.append(b"RFC822.HEADER " + literal(message.section("HEADER") or b""))
            elif name == "RFC822.TEXT":
                parts.append(b"RFC822.TEXT " + literal(message.section("TEXT") or b""))
    chunks = [b"* %d FETCH (" % seq]
    for index, part in enumerate(parts):
        if index:
            chunks.append(b" ")
        if isinstance(part, tuple):
            chunks.extend(part)
        else:
            chunks.append(part)
    chunks.append(b")\r\n")
    return chunks


def _render_att(
    att: FetchAtt, message: Message, computed: dict | None = None
) -> bytes | tuple[bytes | memoryview, ...]:
    key = (att.name.startswith("BINARY"), att.section, att.fields)
    if computed is not None and key in computed:
        data = computed[key]
    elif att.name.startswith("BINARY"):
        data = binary(message, att.section)
    else:
        data = message.section(att.section, att.fields)
    if computed is not None:
        computed[key] = data
    if att.name == "BINARY.SIZE":
        return att_name(att) + b" %d" % (len(data) if data is not None else 0)
    name = att_name(att)
    if data is None:
        return name + b" NIL"
    if att.partial is not None:
        origin, count = att.partial
        # A view, not a copy: many slices of one large section cost no memory each.
        data = memoryview(data)[origin : origin + count]
    if att.name.startswith("BINARY") and _has_nul(data):
        return (name + b" ~{%d}\r\n" % len(data), data)
    return _literal_chunks(name + b" ", data)


_NUL = re.compile(b"\0")


def _has_nul(data: bytes | memoryview) -> bool:
    return _NUL.search(data) is not None  # re reads a memoryview without copying it


def _literal_chunks(
    prefix: bytes, data: bytes | memoryview
) -> tuple[bytes | memoryview, ...] | bytes:
    """prefix + a literal of data, the data a piece of its own when large (a memoryview
    of the message stays one: the server writes it in slices)."""
    if len(data) < LARGE_PIECE or _has_nul(data):
        return prefix + literal(bytes(data))
    return (prefix + b"{%d}\r\n" % len(data), data)


def binary(message: Message, section: str) -> bytes | None:
    """BINARY[section]: the part's content with its transfer encoding undone (RFC 3516);
    the whole message or a header section as it is."""
    if not section or not section.replace(".", "").isdigit():
        return message.section(section)
    node = message.root.find([int(number) for number in section.split(".")])
    if node is None:
        return None
    body = node.body()
    if node.is_multipart or node.message is not None:
        return body
    encoding = node.headers.get(b"content-transfer-encoding", b"7bit").strip().lower()
    if encoding in (b"7bit", b"8bit", b"binary", b""):
        return body
    if encoding == b"base64":
        try:
            return binascii.a2b_base64(body)
        except binascii.Error:
            raise UnknownEncoding(section) from None
    if encoding == b"quoted-printable":
        return quopri.decodestring(body)
    raise UnknownEncoding(section)
