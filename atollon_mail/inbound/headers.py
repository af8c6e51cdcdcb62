"""The header section of a received message, read and trimmed as bytes.

The message crosses the SMTP server as bytes with CRLF line ends; these helpers look at
its header section only (up to the first empty line) and never re-encode anything, so
whatever they leave alone stays byte for byte as it came (DKIM signatures still verify).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from email.utils import getaddresses

import attrs

__all__ = ["Field", "fields", "from_domains", "remove_fields", "authserv_id"]


@attrs.frozen
class Field:
    """One header field: its name in lower case, its value (continuation lines joined,
    CRLFs kept) and where it lies in the message (start, end: end after its CRLF)."""

    name: str
    value: bytes
    start: int
    end: int

    def text(self) -> str:
        """The value unfolded, as text (invalid UTF-8 replaced)."""
        return re.sub(r"\r?\n[ \t]*", " ", self.value.decode("utf-8", "replace")).strip()


def _header_end(raw: bytes) -> int:
    """Where the header section ends: the offset of the empty line (len(raw) if none)."""
    if raw.startswith(b"\r\n"):
        return 0
    found = raw.find(b"\r\n\r\n")
    return len(raw) if found < 0 else found + 2


def fields(raw: bytes) -> Iterator[Field]:
    """Each field of the header section, in order. A line that is no field (no colon)
    is skipped, and a continuation line after it joins nothing."""
    end = _header_end(raw)
    position = 0
    current: list | None = None  # [name, value start, line end]
    while position < end:
        line_end = raw.find(b"\r\n", position, end)
        line_end = end if line_end < 0 else line_end + 2
        line = raw[position:line_end]
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current[2] = line_end
        else:
            if current is not None:
                yield _field(raw, current)
            name, colon, _ = line.partition(b":")
            if colon and name and b" " not in name.rstrip(b" \t"):
                current = [name.rstrip(b" \t"), position, line_end, position + len(name) + 1]
            else:
                current = None
        position = line_end
    if current is not None:
        yield _field(raw, current)


def _field(raw: bytes, current: list) -> Field:
    name, start, end, value_start = current
    value = raw[value_start:end].removesuffix(b"\r\n")
    return Field(name.decode("ascii", "replace").lower(), value, start, end)


def remove_fields(
    raw: bytes, unwanted: Callable[[Field], bool], header_fields: Sequence[Field] | None = None
) -> tuple[bytes, int]:
    """raw without the header fields for which unwanted(field) is true, and how many
    were removed (raw itself, untouched, when none). `header_fields`: fields(raw), when
    the caller has it already."""
    found = fields(raw) if header_fields is None else header_fields
    cuts = [(field.start, field.end) for field in found if unwanted(field)]
    if not cuts:
        return raw, 0
    pieces = []
    position = 0
    for start, end in cuts:
        pieces.append(raw[position:start])
        position = end
    pieces.append(raw[position:])
    return b"".join(pieces), len(cuts)


_AUTHSERV_ID = re.compile(r"^\s*(?:\([^)]*\)\s*)*([^\s;()]+)")


def authserv_id(value: str) -> str | None:
    """The authserv-id an Authentication-Results value starts with, lower-cased."""
    match = _AUTHSERV_ID.match(value)
    return match.group(1).lower().rstrip(".") if match else None


def from_domains(raw: bytes, header_fields: Sequence[Field] | None = None) -> tuple[str, ...]:
    """The domains of the From: addresses (RFC 7489's RFC5322.From), lower-cased, each
    once, in order; () when there is no From: address with a domain. `header_fields`:
    fields(raw), when the caller has it already."""
    found = fields(raw) if header_fields is None else header_fields
    values = [field.text() for field in found if field.name == "from"]
    found: list[str] = []
    for _, address in getaddresses(values):
        local, at, domain = address.rpartition("@")
        domain = domain.strip().lower().rstrip(".")
        if at and local and domain and domain not in found:
            found.append(domain)
    return tuple(found)
