"""SEARCH: the search keys parsed into a program, and the program matched against one
message at a time (RFC 3501 6.4.4, CONDSTORE's MODSEQ of RFC 7162): pure code, no
store, no reactor.

The server reads what `SearchProgram.needs` says ("none": the item's record is enough,
"headers": the header block, "full": the whole message) and calls matches for each
message of the folder. Text keys match case-insensitively (Unicode case folding) as
substrings: header keys on the unfolded values with RFC 2047 words decoded, BODY on the
text of the text parts with their transfer encoding and charset undone, TEXT on both.
SENT* keys read the Date header (the internal date when it has none or it is broken);
BEFORE/ON/SINCE the internal date, in UTC.
"""

from __future__ import annotations

import binascii
import codecs
import datetime
import email.utils
import quopri
import re
from collections.abc import Callable

import attrs

from atollon_mail.imap.message import (
    Message,
    Part,
    field_finder,
    found_values,
    header_end,
    unfold,
)
from atollon_mail.imap.parser import (
    Atom,
    ParseError,
    in_sequence_set,
    merge_ranges,
    parse_sequence_set,
)

CHARSETS = ("US-ASCII", "UTF-8")


class BadCharset(Exception):
    """A CHARSET the server cannot search in: it answers NO [BADCHARSET (US-ASCII UTF-8)]."""


class Target:
    """One message as the keys see it; what is decoded is decoded once, when first asked."""

    __slots__ = ("item", "seq", "raw", "_fields", "_body", "_message")

    def __init__(self, item, seq: int, raw: bytes | None) -> None:
        self.item = item
        self.seq = seq
        self.raw = raw or b""
        self._fields: list[tuple[bytes, str]] | None = None
        self._body: str | None = None
        self._message: Message | None = None

    def fields(self) -> list[tuple[bytes, str]]:
        """(name lower-case, decoded value) of every header field, in order."""
        if self._fields is None:
            fields_end, _ = header_end(self.raw)
            self._fields = decoded_fields(self.raw[:fields_end])
        return self._fields

    def header(self, name: bytes) -> list[str]:
        """The decoded values of every `name` field (lower-case)."""
        if self._fields is not None:
            return [value for field, value in self._fields if field == name]
        return [decode_header_value(value) for value in field_values(self.raw, name)]

    def body(self) -> str:
        if self._body is None:
            if self._message is None:
                self._message = Message(self.raw)
            texts: list[str] = []
            _text_of(self._message.root, texts, top=True)
            self._body = "\n".join(texts).casefold()
        return self._body


Test = Callable[[Target], bool]


@attrs.frozen
class SearchProgram:
    """A parsed search: `matches(item, seq, raw)`; needs is "none", "headers" or "full";
    uses_modseq tells that a MODSEQ key was given (the answer then ends with
    (MODSEQ <highest mod-sequence found>), RFC 7162 3.1.5)."""

    test: Test
    needs: str
    uses_modseq: bool = False
    # When the search is nothing but header keys over KEPT_FIELDS with a text to find:
    # ((field lower-case, text case-folded), ...), all to match. A store keeping each
    # message's kept_fields can then answer it as `text in kept value` (no newline in
    # text: the values of a field are kept joined by newlines), exactly as `matches` would.
    header_terms: tuple[tuple[str, str], ...] | None = None

    def matches(self, item, seq: int, raw: bytes | None = None) -> bool:
        """Whether the message (its MessageItem-like record, sequence number and what
        `needs` asks for: the header block or the whole message) matches."""
        return self.test(Target(item, seq, raw))


NEEDS_ORDER = {"none": 0, "headers": 1, "full": 2}

FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
HEADER_KEYS = {"BCC": b"bcc", "CC": b"cc", "FROM": b"from", "SUBJECT": b"subject", "TO": b"to"}
MONTHS = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")
_SEQUENCE_SET = re.compile(
    r"(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?(?:,(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?)*\Z"
)


def parse_search(
    tokens: list,
    charset: str | None = None,
    *,
    last_seq: int = 0,
    last_uid: int = 0,
) -> SearchProgram:
    """The program of SEARCH's arguments (a leading CHARSET x is read here too when the
    server leaves it in). last_seq and last_uid are what * stands for in sequence sets.
    Raises ParseError (tag None: the server answers BAD with the command's tag) or
    BadCharset."""
    tokens = list(tokens)
    if tokens and isinstance(tokens[0], Atom) and tokens[0].upper() == "CHARSET":
        if len(tokens) < 2:
            raise ParseError(None, "CHARSET needs a name")
        name = tokens[1]
        charset = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        tokens = tokens[2:]
    codec = _codec(charset or "US-ASCII")
    if not tokens:
        raise ParseError(None, "SEARCH needs a key")
    parser = _Parser(tokens, codec, last_seq, last_uid)
    tests = []
    while parser.position < len(tokens):
        tests.append(parser.key())
    terms = tuple(getattr(test, "header_term", None) for test in tests)
    simple = not parser.uses_modseq and all(
        term is not None and term[0] in KEPT_FIELDS and term[1] and "\n" not in term[1]
        for term in terms
    )
    return SearchProgram(_all(tests), parser.needs, parser.uses_modseq, terms if simple else None)


def _text_encoding(name: str) -> None:
    """LookupError unless the codec decodes bytes to text (rot13, base64 or zlib do
    not: bytes.decode refuses them whatever the bytes)."""
    try:
        b"a".decode(name)
    except UnicodeError:
        pass  # a text encoding, not of this octet alone (UTF-16)


def _codec(charset: str) -> str:
    upper = charset.upper()
    if upper in ("US-ASCII", "ASCII"):
        return "ascii"
    if upper in ("UTF-8", "UTF8"):
        return "utf-8"
    try:
        name = codecs.lookup(charset).name
        _text_encoding(name)
    except LookupError:
        raise BadCharset(charset) from None
    return name


# How deeply keys may nest (NOT, OR, parentheses): deeper is refused (BAD) before
# Python's own recursion limit is reached, by the parser or by matching.
MAX_KEY_NESTING = 100


class _Parser:
    def __init__(
        self, tokens: list, codec: str, last_seq: int, last_uid: int, depth: int = 0
    ) -> None:
        self.tokens = tokens
        self.depth = depth  # keys nested around this parser's tokens
        self.position = 0
        self.codec = codec
        self.last_seq = last_seq
        self.last_uid = last_uid
        self.needs = "none"
        self.uses_modseq = False

    def need(self, needs: str) -> None:
        if NEEDS_ORDER[needs] > NEEDS_ORDER[self.needs]:
            self.needs = needs

    def next(self, what: str):
        if self.position >= len(self.tokens):
            raise ParseError(None, f"SEARCH: missing {what}")
        token = self.tokens[self.position]
        self.position += 1
        return token

    def string(self) -> str:
        token = self.next("a string")
        if isinstance(token, list):
            raise ParseError(None, "SEARCH: expected a string")
        if isinstance(token, bytes):
            try:
                return token.decode(self.codec)
            except UnicodeDecodeError:
                raise ParseError(None, "SEARCH: a string not in its charset") from None
        return str(token)

    def number(self) -> int:
        token = self.next("a number")
        if not isinstance(token, Atom) or not token.isdigit() or len(token) > 20:
            raise ParseError(None, "SEARCH: expected a number")
        return int(token)

    def date(self) -> datetime.date:
        text = self.string()
        found = _DATE.match(text)
        month = MONTHS.get(found.group(2).upper()) if found else None
        if found is None or month is None:
            raise ParseError(None, f"SEARCH: bad date {text}")
        try:
            return datetime.date(int(found.group(3)), month, int(found.group(1)))
        except ValueError:
            raise ParseError(None, f"SEARCH: bad date {text}") from None

    def key(self) -> Test:
        self.depth += 1
        try:
            if self.depth > MAX_KEY_NESTING:
                raise ParseError(None, "SEARCH: keys nested too deeply")
            return self._key()
        finally:
            self.depth -= 1

    def _key(self) -> Test:
        token = self.next("a key")
        if isinstance(token, list):
            if not token:
                raise ParseError(None, "SEARCH: empty parentheses")
            inner = _Parser(token, self.codec, self.last_seq, self.last_uid, self.depth)
            tests = []
            while inner.position < len(token):
                tests.append(inner.key())
            self.need(inner.needs)
            self.uses_modseq = self.uses_modseq or inner.uses_modseq
            return _all(tests)
        if not isinstance(token, Atom):
            raise ParseError(None, "SEARCH: expected a key")
        key = token.upper()
        if key in FLAG_KEYS:
            flag, present = FLAG_KEYS[key]
            return _flag(flag, present)
        if key == "ALL":
            return lambda target: True
        if key in ("RECENT", "NEW"):
            return lambda target: False  # no session owns new mail first: nothing is \Recent
        if key == "OLD":
            return lambda target: True
        if key in ("KEYWORD", "UNKEYWORD"):
            keyword = self.string()
            return _flag(keyword, key == "KEYWORD")
        if key in HEADER_KEYS:
            self.need("headers")
            return _header_contains(HEADER_KEYS[key], self.string())
        if key == "HEADER":
            self.need("headers")
            name = self.string().lower().encode("ascii", "replace")
            return _header_contains(name, self.string())
        if key in ("BODY", "TEXT"):
            self.need("full")
            needle = self.string().casefold()
            if key == "BODY":
                return lambda target: needle in target.body()
            return lambda target: (
                needle in target.body()
                or any(needle in value.casefold() for _, value in target.fields())
            )
        if key in ("BEFORE", "ON", "SINCE"):
            return _compare(key, self.date(), _internal_date)
        if key in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            self.need("headers")
            return _compare(key[4:], self.date(), _sent_date)
        if key in ("LARGER", "SMALLER"):
            size = self.number()
            if key == "LARGER":
                return lambda target: target.item.size > size
            return lambda target: target.item.size < size
        if key == "UID":
            ranges = self.sequence_set(self.last_uid)
            return lambda target: in_sequence_set(ranges, target.item.uid)
        if key == "NOT":
            test = self.key()
            return lambda target: not test(target)
        if key == "OR":
            first = self.key()
            second = self.key()
            return lambda target: first(target) or second(target)
        if key == "MODSEQ":
            self.uses_modseq = True
            if self.position < len(self.tokens) and isinstance(self.tokens[self.position], bytes):
                self.position += 1  # entry name (per-flag mod-sequences are not kept)
                kind = self.next("an entry type")
                if not isinstance(kind, Atom) or kind.lower() not in ("priv", "shared", "all"):
                    raise ParseError(None, "SEARCH: bad MODSEQ entry type")
            modseq = self.number()
            return lambda target: target.item.modseq >= modseq
        if _SEQUENCE_SET.match(token):
            ranges = merge_ranges(parse_sequence_set(str(token), self.last_seq))
            return lambda target: in_sequence_set(ranges, target.seq)
        raise ParseError(None, f"SEARCH: unknown key {token}")

    def sequence_set(self, largest: int) -> list[tuple[int, int]]:
        token = self.next("a sequence set")
        if not isinstance(token, Atom):
            raise ParseError(None, "SEARCH: expected a sequence set")
        return merge_ranges(parse_sequence_set(str(token), largest))


def _all(tests: list[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]
    return lambda target: all(test(target) for test in tests)


def _flag(flag: str, present: bool) -> Test:
    wanted = flag.lower()

    def test(target: Target) -> bool:
        found = any(value.lower() == wanted for value in target.item.flags)
        return found == present

    return test


def _header_contains(name: bytes, needle: str) -> Test:
    needle = needle.casefold()
    if not needle:
        return lambda target: bool(target.header(name))

    def test(target: Target) -> bool:
        return any(needle in value.casefold() for value in target.header(name))

    test.header_term = (name.decode("ascii", "replace"), needle)  # type: ignore[attr-defined]
    return test


# The header fields whose values a store may keep for SEARCH (see kept_fields).
KEPT_FIELDS = ("subject", "from", "to", "cc", "bcc")
_KEPT_NAMES = tuple(name.encode("ascii") for name in KEPT_FIELDS)


def kept_fields(headers: bytes) -> tuple[str | None, ...]:
    """For each of KEPT_FIELDS, what a header key of SEARCH matches in this header block
    (or whole message): the decoded values of every such field, case-folded, joined by
    newlines; None when there is no such field."""
    found = []
    for name in _KEPT_NAMES:
        values = field_values(headers, name)
        if not values:
            found.append(None)
        else:
            found.append("\n".join(decode_header_value(value).casefold() for value in values))
    return tuple(found)


def _internal_date(target: Target) -> datetime.date:
    moment = target.item.internaldate
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC)
    return moment.date()


def _sent_date(target: Target) -> datetime.date:
    values = target.header(b"date")
    if values:
        parsed = email.utils.parsedate_tz(values[0])
        if parsed is not None:
            try:
                return datetime.date(parsed[0], parsed[1], parsed[2])
            except ValueError:
                pass
    return _internal_date(target)


def _compare(how: str, day: datetime.date, date_of: Callable[[Target], datetime.date]) -> Test:
    if how == "BEFORE":
        return lambda target: date_of(target) < day
    if how == "ON":
        return lambda target: date_of(target) == day
    return lambda target: date_of(target) >= day


# -- decoding -----------------------------------------------------------------------------

_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(rb"(\?=)[ \t\r\n]+(?==\?)")
_FIELD_START = re.compile(rb"(?<=\n)(?=[^ \t])")


def decode_header_value(value: bytes) -> str:
    """An unfolded header value with its RFC 2047 encoded words decoded (blanks between two
    encoded words dropped); other octets read as UTF-8, else Latin-1."""
    if b"=?" not in value:
        return _text(value)
    value = _BETWEEN_WORDS.sub(rb"\1", value)
    out: list[str] = []
    position = 0
    for found in _ENCODED_WORD.finditer(value):
        out.append(_text(value[position : found.start()]))
        charset, kind, text = found.groups()
        try:
            if kind in b"bB":
                data = binascii.a2b_base64(text + b"=" * (-len(text) % 4), strict_mode=True)
            else:
                data = binascii.a2b_qp(text, header=True)
            out.append(data.decode(_charset(charset), "replace"))
        except (binascii.Error, ValueError):
            out.append(_text(found.group()))
        position = found.end()
    out.append(_text(value[position:]))
    return "".join(out)


def _charset(name: bytes) -> str:
    text = name.decode("ascii", "replace").split("*", 1)[0]  # RFC 2231 language suffix
    try:
        name = codecs.lookup(text).name
        _text_encoding(name)
    except LookupError:
        return "latin-1"
    return name


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_FINDERS: dict[bytes, re.Pattern[bytes]] = {}


def field_values(raw: bytes, name: bytes) -> list[bytes]:
    """The unfolded values of every `name` field of a message's header block, found
    without splitting the others (a header search runs over a whole folder)."""
    finder = _FINDERS.get(name)
    if finder is None:
        if len(_FINDERS) > 256:
            _FINDERS.clear()
        finder = _FINDERS[name] = field_finder([name.decode("ascii", "replace")])
    fields_end, _ = header_end(raw)
    return [value for _, value in found_values(raw[:fields_end], finder)]


def decoded_fields(block: bytes) -> list[tuple[bytes, str]]:
    fields = []
    for field in _FIELD_START.split(block):
        colon = field.find(b":")
        if colon <= 0:
            continue
        name = field[:colon].rstrip(b" \t").lower()
        fields.append((name, decode_header_value(unfold(field[colon + 1 :]))))
    return fields


def _text_of(part: Part, texts: list[str], top: bool = False) -> None:
    """The decoded text of the text parts under `part` (headers of attached messages too)."""
    if part.is_multipart:
        for child in part.children:
            _text_of(child, texts)
        return
    if part.message is not None:
        inner = part.message
        texts.extend(
            value for _, value in decoded_fields(inner.raw[inner.start : inner.fields_end])
        )
        _text_of(inner, texts)
        return
    if part.type.lower() != b"text":
        return
    body = part.body()
    encoding = part.headers.get(b"content-transfer-encoding", b"").strip().lower()
    if encoding == b"base64":
        try:
            body = binascii.a2b_base64(body)
        except binascii.Error:
            pass
    elif encoding == b"quoted-printable":
        body = quopri.decodestring(body)
    charset = part.param(b"charset")
    if charset:
        try:
            texts.append(body.decode(_charset(charset), "replace"))
            return
        except LookupError:
            pass
    texts.append(_text(body))
