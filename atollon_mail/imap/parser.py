"""The IMAP command parser (RFC 3501 section 9, with LITERAL+ of RFC 7888): pure code.

The server frames the wire: it reads a line, and while the line ends with a literal marker
(`{n}` or `{n+}`, see literal_marker) it reads n octets and then the rest of the line. It
hands parse_command the pieces: line text without CRLF (each but the last ending in its
literal marker, kept) alternating with the literal octets.

One generic tokenizer serves every command (their arguments are atoms, strings, literals
and parenthesised lists); the number of arguments is checked per command, their meaning is
the server's. Tokens:

- Atom (a str): an atom as sent: NIL, flags such as \\Seen, sequence sets such as 1:*,4,
  search keys, fetch items, list patterns with % and *, and astrings sent as atoms.
- bytes: a quoted string or a literal (the server decodes mailbox names from modified
  UTF-7 and search strings from their charset).
- list: a parenthesised list of tokens.
- FetchAtt: a fetch attribute with a section, BODY[...]<...>, BODY.PEEK[...], BINARY[...],
  BINARY.PEEK[...], BINARY.SIZE[...].

ParseError carries the tag when it was read (None otherwise): the server answers BAD.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator

import attrs


class ParseError(Exception):
    """A command that cannot be parsed; `tag` is None when even the tag was unreadable."""

    def __init__(self, tag: str | None, text: str) -> None:
        super().__init__(tag, text)
        self.tag = tag
        self.text = text

    def __str__(self) -> str:
        return self.text


class Atom(str):
    """An IMAP atom as sent (case kept); compare upper() for keywords."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


@attrs.frozen
class FetchAtt:
    """A fetch attribute with a section: name is "BODY", "BODY.PEEK", "BINARY",
    "BINARY.PEEK" or "BINARY.SIZE"; section the section text upper-cased without the
    header list ("" for the whole message, "1.2.HEADER.FIELDS", "TEXT", "3.MIME");
    fields the header names of HEADER.FIELDS[.NOT] as sent; partial (origin, count)."""

    name: str
    section: str = ""
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None


@attrs.frozen
class Command:
    """A parsed command: name upper-case ("FETCH" for UID FETCH, with uid True)."""

    tag: str
    name: str
    args: list = attrs.field(factory=list, eq=True)
    uid: bool = False


Token = Atom | bytes | list | FetchAtt

# Number of arguments per command: (least, most); most None for no limit. The server checks
# what they mean.
ARITY: dict[str, tuple[int, int | None]] = {
    "CAPABILITY": (0, 0),
    "NOOP": (0, 0),
    "LOGOUT": (0, 0),
    "STARTTLS": (0, 0),
    "LOGIN": (2, 2),
    "AUTHENTICATE": (1, 2),  # mechanism [initial response] (SASL-IR)
    "ENABLE": (1, None),
    "ID": (1, 1),  # NIL or a list
    "NAMESPACE": (0, 0),
    "LIST": (2, None),  # [selection options] reference pattern(s) [RETURN (...)]
    "LSUB": (2, 2),
    "STATUS": (2, 2),
    "SELECT": (1, 2),  # mailbox [(CONDSTORE)]
    "EXAMINE": (1, 2),
    "CREATE": (1, 2),
    "DELETE": (1, 1),
    "RENAME": (2, 3),
    "SUBSCRIBE": (1, 1),
    "UNSUBSCRIBE": (1, 1),
    "APPEND": (2, 4),  # mailbox [flags] [date-time] literal
    "CHECK": (0, 0),
    "CLOSE": (0, 0),
    "UNSELECT": (0, 0),
    "EXPUNGE": (0, 0),
    "SEARCH": (1, None),
    "FETCH": (2, 3),  # sequence-set items [(CHANGEDSINCE n)]
    "STORE": (3, 4),  # sequence-set [(UNCHANGEDSINCE n)] item value
    "COPY": (2, 2),
    "MOVE": (2, 2),
    "IDLE": (0, 0),
    "GETQUOTA": (1, 1),
    "GETQUOTAROOT": (1, 1),
}

# What may follow UID, and the arity of "UID EXPUNGE" (it takes a sequence set).
UID_COMMANDS: dict[str, tuple[int, int | None]] = {
    "FETCH": ARITY["FETCH"],
    "STORE": ARITY["STORE"],
    "COPY": ARITY["COPY"],
    "MOVE": ARITY["MOVE"],
    "SEARCH": ARITY["SEARCH"],
    "EXPUNGE": (1, 1),
}

SECTION_ATTS = frozenset({"BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"})

_MARKER = re.compile(rb"\{([0-9]{1,10})(\+?)\}\Z")
# atom-char, with ']' (astring) and '\' (flags) allowed: what is not a special ends an atom.
_ATOM = re.compile(rb"[\x21\x23-\x27\x2a-\x7a\x7c-\x7e]+")  # no SP ( ) { " and no CTL
_TAG = re.compile(
    rb"[\x21\x23-\x24\x26-\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+"
)  # astring-chars but + % * \
_SECTION_ATT = re.compile(rb"(BODY\.PEEK|BODY|BINARY\.PEEK|BINARY\.SIZE|BINARY)\[", re.I)
_NUMBER = re.compile(rb"[0-9]{1,10}")
_SECTION_TEXT = re.compile(rb"[0-9A-Za-z.]*")
# Parenthesised lists nested deeper than this are refused (BAD) before Python's own
# recursion limit is reached.
MAX_NESTING = 32
# A number has at most 10 digits (nz-number is 32 bits): longer ones are refused (BAD).
_SEQUENCE = re.compile(r"(?:[0-9]{1,10}|\*)(?::(?:[0-9]{1,10}|\*))?\Z")
MAX_NUMBER = 4294967295


def literal_marker(line: bytes) -> tuple[int, bool] | None:
    """The literal a line (without CRLF) announces: (size, synchronizing) or None.

    `{n}` is synchronizing (the server sends a continuation before reading), `{n+}` is
    LITERAL+ (the client sends the octets at once)."""
    found = _MARKER.search(line)
    if found is None:
        return None
    return int(found.group(1)), not found.group(2)


class _Scanner:
    """A cursor over the line texts of a command and the literals between them."""

    def __init__(self, pieces: list[bytes], tag: str | None = None) -> None:
        self.pieces = pieces
        self.index = 0
        self.pos = 0
        self.tag = tag
        self.nesting = 0  # parenthesised lists open at this point

    def fail(self, text: str) -> ParseError:
        return ParseError(self.tag, text)

    @property
    def text(self) -> bytes:
        return self.pieces[self.index]

    def peek(self) -> int:
        text = self.text
        return text[self.pos] if self.pos < len(text) else -1

    def at_end(self) -> bool:
        return self.pos >= len(self.text) and self.index + 1 >= len(self.pieces)

    def space(self) -> None:
        if self.peek() != 0x20:
            raise self.fail("Expected a space")
        while self.peek() == 0x20:
            self.pos += 1

    def match(self, pattern: re.Pattern[bytes]) -> bytes | None:
        found = pattern.match(self.text, self.pos)
        if found is None or found.end() == self.pos:
            return None
        self.pos = found.end()
        return found.group(0)

    def number(self) -> int:
        found = self.match(_NUMBER)
        if found is None:
            raise self.fail("Expected a number")
        value = int(found)
        if value > MAX_NUMBER:
            raise self.fail("Number too large")
        return value

    def token(self) -> Token:
        char = self.peek()
        if char == 0x28:  # (
            return self.parenthesised()
        if char == 0x22:  # "
            return self.quoted()
        if char == 0x7B:  # {
            return self.literal()
        if char == -1:
            raise self.fail("Missing argument")
        found = _SECTION_ATT.match(self.text, self.pos)
        if found is not None:
            self.pos = found.end()
            return self.fetch_att(found.group(1).decode("ascii").upper())
        atom = self.match(_ATOM)
        if atom is None:
            raise self.fail(f"Unexpected character {chr(char)!r}")
        return Atom(atom.decode("ascii"))

    def fetch_att(self, name: str) -> FetchAtt:
        section = (self.match(_SECTION_TEXT) or b"").decode("ascii").upper()
        fields: tuple[str, ...] = ()
        if section.endswith(("HEADER.FIELDS", "HEADER.FIELDS.NOT")):
            if self.peek() != 0x20:
                raise self.fail(f"{section} needs a list of header names")
            self.space()
            names = self.token()
            if not isinstance(names, list) or not names:
                raise self.fail(f"{section} needs a list of header names")
            for field in names:
                if isinstance(field, bytes):
                    field = field.decode("ascii", "replace")
                if not isinstance(field, str) or not field or ":" in field:
                    raise self.fail("Bad header name")
                fields += (str(field),)
        if self.peek() != 0x5D:  # ]
            raise self.fail("Bad section")
        self.pos += 1
        check_section(section, self)
        partial = None
        if self.peek() == 0x3C:  # <
            self.pos += 1
            origin = self.number()
            if self.peek() != 0x2E:
                raise self.fail("Bad partial")
            self.pos += 1
            count = self.number()
            if self.peek() != 0x3E or count == 0:
                raise self.fail("Bad partial")
            self.pos += 1
            partial = (origin, count)
        if name == "BINARY.SIZE" and partial is not None:
            raise self.fail("BINARY.SIZE takes no partial")
        return FetchAtt(name, section, fields, partial)

    def parenthesised(self) -> list:
        if self.nesting >= MAX_NESTING:
            raise self.fail("Lists nested too deeply")
        self.nesting += 1
        try:
            return self._parenthesised()
        finally:
            self.nesting -= 1

    def _parenthesised(self) -> list:
        self.pos += 1
        items: list = []
        while True:
            char = self.peek()
            if char == 0x29:  # )
                self.pos += 1
                return items
            if char == -1:
                raise self.fail("Missing )")
            if items and char == 0x20:
                self.space()
                if self.peek() == 0x29:
                    raise self.fail("Space before )")
            elif items and not isinstance(items[-1], list):
                raise self.fail("Expected a space")
            items.append(self.token())

    def quoted(self) -> bytes:
        text = self.text
        start = self.pos + 1
        out = bytearray()
        pos = start
        while True:
            end = pos
            while end < len(text) and text[end] not in b'"\\\r\n\0':
                end += 1
            out += text[pos:end]
            if end >= len(text):
                raise self.fail("Unterminated quoted string")
            char = text[end]
            if char == 0x22:
                self.pos = end + 1
                return bytes(out)
            if char == 0x5C and end + 1 < len(text) and text[end + 1] in b'"\\':
                out.append(text[end + 1])
                pos = end + 2
                continue
            raise self.fail("Bad character in quoted string")

    def literal(self) -> bytes:
        found = _MARKER.match(self.text, self.pos)
        if found is None:
            raise self.fail("Bad literal")
        if found.end() != len(self.text) or self.index + 2 >= len(self.pieces):
            raise self.fail("Missing literal")
        octets = self.pieces[self.index + 1]
        if len(octets) != int(found.group(1)):
            raise self.fail("Literal size differs from its marker")
        self.index += 2
        self.pos = 0
        return octets

    def atom_text(self) -> str | None:
        atom = self.match(_ATOM)
        return None if atom is None else atom.decode("ascii")


def check_section(section: str, scanner: _Scanner | None = None) -> None:
    """A section spec of RFC 3501 6.4.5: parts 1.2... then HEADER, HEADER.FIELDS[.NOT],
    TEXT, or (after a part number) MIME."""
    if not section:
        return
    parts = section.split(".")
    index = 0
    while index < len(parts) and parts[index].isdigit():
        if parts[index].startswith("0"):
            break
        index += 1
    rest = ".".join(parts[index:])
    ok = rest in ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT") or (
        rest == "MIME" and index > 0
    )
    if not ok or any(not part for part in parts):
        error = ParseError(scanner.tag if scanner else None, f"Bad section {section}")
        raise error


def parse_command(pieces: list[bytes]) -> Command:
    """Parse one command from its line texts and literals (see the module docstring)."""
    if not pieces or len(pieces) % 2 == 0:
        raise ParseError(None, "Missing the line after a literal")
    scanner = _Scanner(pieces)
    tag = scanner.match(_TAG)
    if tag is None:
        raise ParseError(None, "Missing or bad tag")
    if scanner.peek() not in (0x20, -1):
        raise ParseError(None, "Bad tag")
    scanner.tag = tag.decode("ascii")
    if scanner.peek() != 0x20:
        raise scanner.fail("Missing command")
    scanner.space()
    name = scanner.atom_text()
    if name is None:
        raise scanner.fail("Missing command")
    name = name.upper()
    uid = False
    arity = ARITY.get(name)
    if name == "UID":
        uid = True
        if scanner.peek() != 0x20:
            raise scanner.fail("UID needs a command")
        scanner.space()
        name = (scanner.atom_text() or "").upper()
        arity = UID_COMMANDS.get(name)
        if arity is None:
            raise scanner.fail("Bad UID command")
    elif arity is None:
        raise scanner.fail("Unknown command")
    args: list = []
    while not scanner.at_end():
        if not (args and isinstance(args[-1], list) and scanner.peek() not in (0x20, -1)):
            scanner.space()
        if scanner.at_end():
            break  # trailing spaces
        args.append(scanner.token())
    least, most = arity
    if len(args) < least or (most is not None and len(args) > most):
        raise scanner.fail(f"Wrong number of arguments for {name}")
    return Command(scanner.tag, name, args, uid)


def parse_sequence_set(text: str, largest: int) -> list[tuple[int, int]]:
    """The ranges of a sequence set ("1:3,7,9:*") as (low, high) pairs, low <= high, in the
    order given; * is `largest` (the highest sequence number or uid; 0 when empty).
    Raises ParseError (tag None) for a malformed set or a zero."""
    if not text:
        raise ParseError(None, "Empty sequence set")
    ranges = []
    for part in text.split(","):
        if not _SEQUENCE.match(part):
            raise ParseError(None, f"Bad sequence set {text}")
        ends = []
        for end in part.split(":"):
            if end == "*":
                ends.append(largest)
                continue
            value = int(end)
            if value == 0 or value > MAX_NUMBER:
                raise ParseError(None, f"Bad sequence set {text}")
            ends.append(value)
        low, high = ends[0], ends[-1]
        ranges.append((low, high) if low <= high else (high, low))
    return ranges


def merge_ranges(
    ranges: list[tuple[int, int]], largest: int | None = None
) -> list[tuple[int, int]]:
    """The ranges sorted and merged (overlapping or adjacent ones made one), capped at
    `largest` when given: a set of thousands of "1:*" is one range."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if largest is not None:
            high = min(high, largest)
        if low > high:
            continue
        if merged and low <= merged[-1][1] + 1:
            if high > merged[-1][1]:
                merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged


def sequence_numbers(ranges: list[tuple[int, int]], largest: int) -> Iterator[int]:
    """Each number of the ranges once, ascending, capped at `largest`."""
    for low, high in merge_ranges(ranges, largest):
        yield from range(low, high + 1)


def in_sequence_set(ranges: list[tuple[int, int]], number: int) -> bool:
    """Whether a number is in the ranges, which merge_ranges made (sorted, disjoint):
    found by bisection."""
    index = bisect.bisect_right(ranges, (number, MAX_NUMBER + 1)) - 1
    return index >= 0 and ranges[index][1] >= number
