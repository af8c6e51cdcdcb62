"""A raw message as IMAP shows it: ENVELOPE, BODYSTRUCTURE/BODY and the BODY[...] sections
of RFC 3501 (7.4.2 and 6.4.5): pure code, no store, no reactor.

A message is split ONCE into a light tree of byte offsets (header block, body, the parts
of a multipart, the message inside a message/rfc822 part); sections are slices of the raw
octets, never re-encoded. The header splitter and the address parser are small and
hand-written on purpose: email.parser builds a full object tree, decodes and re-folds,
and costs hundreds of microseconds a message, while FETCH ENVELOPE of a whole folder
(10 000 messages) must stay within a small multiple of Dovecot's time. They follow
Dovecot, the server clients are written against: header values as sent (RFC 2047 words
left encoded, folding line ends removed), a missing mailbox or domain as MISSING_MAILBOX
or MISSING_DOMAIN, sender and reply-to defaulting to from, the first of repeated headers,
a text/plain; charset=us-ascii default (message/rfc822 inside multipart/digest), a
charset=us-ascii parameter added to a text part without one, "7bit" for a missing or
malformed transfer encoding, Content-Language always a list, part types and parameters
as written in the message.

Line ends are those of the raw message (CRLF or bare LF); sizes and line counts are of
the octets given.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

NIL = b"NIL"

# -- IMAP strings -------------------------------------------------------------------------

_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")
_PLAIN = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x21\x23-\x5b\x5d-\x7f]*\Z")  # nothing to escape


def string(value: bytes) -> bytes:
    """An IMAP string: quoted when it can be (7-bit, no CR/LF/NUL, short), else a literal."""
    if len(value) < 1000:
        if _PLAIN.match(value):
            return b'"%s"' % value
        if _QUOTABLE.match(value):
            return b'"%s"' % value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return literal(value)


def literal(value: bytes) -> bytes:
    """An IMAP literal. A literal may hold no NUL octet (RFC 3501 4.3): a NUL in a broken
    message becomes a space, so the client's parser is not broken."""
    if b"\0" in value:
        value = value.replace(b"\0", b" ")
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | None) -> bytes:
    return NIL if value is None else string(value)


# -- header block -------------------------------------------------------------------------

_FIELD_START = re.compile(rb"(?<=\n)(?=[^ \t])")  # where a new header field starts
_FOLD = re.compile(rb"\r?\n")


def header_end(raw: bytes, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(end of the header fields, start of the body) for the entity at raw[start:end]:
    the blank line lies between them. Without a blank line the whole entity is header."""
    if end is None:
        end = len(raw)
    if raw.startswith(b"\r\n", start) and start + 2 <= end:
        return start, start + 2
    if raw.startswith(b"\n", start) and start + 1 <= end:
        return start, start + 1
    crlf = raw.find(b"\n\r\n", start, end)
    lf = raw.find(b"\n\n", start, end if crlf < 0 else crlf)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 1, crlf + 3
    if lf >= 0:
        return lf + 1, lf + 2
    return end, end


def split_fields(block: bytes) -> list[bytes]:
    """The header fields of a header block, each with its folded lines and line end."""
    return [field for field in _FIELD_START.split(block) if field]


def field_name(field: bytes) -> bytes | None:
    colon = field.find(b":")
    if colon <= 0:
        return None
    return field[:colon].rstrip(b" \t").lower()


def unfold(value: bytes) -> bytes:
    """A header value as IMAP shows it: folding line ends removed, outer blanks trimmed."""
    if b"\n" in value:
        value = _FOLD.sub(b"", value)
    return value.strip(b" \t\r\n")


def field_finder(names: list[str]) -> re.Pattern[bytes]:
    """A pattern that finds the named fields in a header block for first_values."""
    alternatives = "|".join(re.escape(name) for name in names)
    return re.compile(rb"\n(" + alternatives.encode("ascii") + rb")[ \t]*:", re.I)


def found_values(block: bytes, finder: re.Pattern[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """(name lower-case, unfolded value) of each field `finder` finds, in order.

    It finds just those fields at line starts in one scan of the block (splitting every
    field costs several times more, and ENVELOPE of a whole folder is the hot path); the
    block is searched behind a line end, as a literal first character lets the regular
    expression engine skip quickly from line start to line start."""
    block = b"\n" + block
    size = len(block)
    for found in finder.finditer(block):
        start = found.end()
        end = block.find(b"\n", start)
        while end >= 0 and end + 1 < size and block[end + 1] in (0x20, 0x09):
            end = block.find(b"\n", end + 1)
        yield found.group(1).lower(), unfold(block[start : size if end < 0 else end])


def first_values(block: bytes, finder: re.Pattern[bytes]) -> dict[bytes, bytes]:
    """The first value of each field `finder` finds (names lower-case), unfolded."""
    values: dict[bytes, bytes] = {}
    for name, value in found_values(block, finder):
        if name not in values:
            values[name] = value
    return values


# -- addresses ----------------------------------------------------------------------------

_ADDRESS_TOKEN = re.compile(
    rb"""
    (?P<ws>[ \t\r\n]+)
    |(?P<quoted>"(?:[^"\\]|\\.)*(?:"|\Z))
    |(?P<comment>\((?:[^()\\]|\\.|\((?:[^()\\]|\\.)*\))*(?:\)|\Z))
    |(?P<dliteral>\[[^\]]*(?:\]|\Z))
    |(?P<special>[<>,:;@.])
    |(?P<atom>[^ \t\r\n"(),:;<>@.\[]+|[\[)])
    """,
    re.X | re.S,
)
_UNQUOTE = re.compile(rb"\\(.)", re.S)

MISSING_MAILBOX = b"MISSING_MAILBOX"
MISSING_DOMAIN = b"MISSING_DOMAIN"

Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]


def _unquote(quoted: bytes) -> bytes:
    inner = quoted[1:-1] if quoted.endswith(b'"') and len(quoted) > 1 else quoted[1:]
    return _UNQUOTE.sub(rb"\1", inner) if b"\\" in inner else inner


def parse_addresses(value: bytes) -> list[Address]:
    """An address list as IMAP address structures (name, adl, mailbox, host); a group
    opens with (None, None, name, None) and closes with (None, None, None, None)."""
    tokens = [(found.lastgroup, found.group()) for found in _ADDRESS_TOKEN.finditer(value)]
    addresses: list[Address] = []
    in_group = False
    index = 0
    count = len(tokens)
    while index < count:
        # A phrase (display name or local part), up to what says which of them it was.
        phrase: list[tuple[str, bytes]] = []
        comment = None
        while index < count:
            kind, text = tokens[index]
            if kind == "special" and text in b"<,:;@":
                break
            if kind == "comment":
                comment = text
            else:
                phrase.append((kind, text))
            index += 1
        stop = tokens[index][1] if index < count else b""
        if stop == b":" and not in_group:
            addresses.append((None, None, _phrase(phrase) or b"", None))
            in_group = True
            index += 1
            continue
        if stop == b"<":
            index += 1
            route, local, domain, index = _route_addr(tokens, index)
            name = _phrase(phrase) or (_comment(comment) if comment else None)
            addresses.append(_address(name, route, local, domain))
            while index < count and tokens[index][1] not in (b",", b";"):
                if tokens[index][0] == "comment" and name is None:
                    name = _comment(tokens[index][1])
                    addresses[-1] = _address(name, route, local, domain)
                index += 1
        elif stop == b"@":
            index += 1
            domain_parts = []
            while index < count:
                kind, text = tokens[index]
                if kind == "special" and text in b",;<:":
                    break
                if kind == "comment":
                    comment = text
                elif kind != "ws":
                    domain_parts.append(text)
                index += 1
            local = _local(phrase)
            name = _comment(comment) if comment else None
            addresses.append(_address(name, None, local, b"".join(domain_parts)))
        elif any(kind != "ws" for kind, _ in phrase):
            addresses.append(_address(None, None, _local(phrase), b""))
        if index < count and tokens[index][1] == b";":
            if in_group:
                addresses.append((None, None, None, None))
                in_group = False
        index += 1
    if in_group:
        addresses.append((None, None, None, None))
    return addresses


def _route_addr(tokens: list, index: int) -> tuple[bytes | None, bytes, bytes, int]:
    """The inside of <...>: an optional route (@a,@b:), then local@domain."""
    parts: list[bytes] = []
    route = None
    local = None
    count = len(tokens)
    while index < count:
        kind, text = tokens[index]
        index += 1
        if text == b">" and kind == "special":
            break
        if kind in ("ws", "comment"):
            continue
        if text == b":" and kind == "special" and route is None and parts[:1] == [b"@"]:
            route = b"".join(parts)
            parts = []
            continue
        if text == b"@" and kind == "special" and parts and local is None and route is not None:
            local = b"".join(parts)
            parts = []
            continue
        parts.append(text)
    joined = b"".join(parts)
    if local is None:
        if route is None and joined.startswith(b"@") and b":" not in joined:
            joined = joined[1:]
        local, at, domain = joined.rpartition(b"@")
        if not at:
            local, domain = joined, b""
    else:
        domain = joined
    if local.startswith(b'"') and local.endswith(b'"') and len(local) > 1:
        local = _unquote(local)
    return route, local, domain, index


def _local(phrase: list[tuple[str, bytes]]) -> bytes:
    local = b"".join(text for kind, text in phrase if kind != "ws")
    if local.startswith(b'"') and local.endswith(b'"') and len(local) > 1:
        return _unquote(local)
    return local


def _phrase(phrase: list[tuple[str, bytes]]) -> bytes | None:
    words: list[bytes] = []
    for kind, text in phrase:
        if kind == "ws":
            if words and words[-1] != b" ":
                words.append(b" ")
        elif kind == "quoted":
            words.append(_unquote(text))
        else:
            words.append(text)
    if words and words[-1] == b" ":
        words.pop()
    return b"".join(words) if words else None


def _comment(comment: bytes) -> bytes | None:
    inner = comment[1:-1] if comment.endswith(b")") else comment[1:]
    inner = inner.strip()
    return inner or None


def _address(name, route, local, domain) -> Address:
    return (name, route, local or MISSING_MAILBOX, domain or MISSING_DOMAIN)


# The common shapes (addr@host, Name <addr@host>, "Name" <addr@host>), matched whole: the
# general parser above is for the rest (groups, comments, routes, odd quoting).
_SIMPLE_ADDRESS = re.compile(
    rb"""[ \t]*(?:
      (?:("(?:[^"\\\r\n]|\\.)*")|([^\s"(),:;<>@\[\]\\](?:[^"(),:;<>@\[\]\\\r\n]*[^\s"(),:;<>@\[\]\\])?))?
      [ \t]*<([^\s"(),:;<>@\[\]\\]+)@([^\s"(),:;<>@\[\]\\]+)>
    | ([^\s"(),:;<>@\[\]\\]+)@([^\s"(),:;<>@\[\]\\]+)
    )[ \t]*(?:,|\Z)""",
    re.X,
)
_BLANKS = re.compile(rb"[ \t]+")


def _simple_addresses(value: bytes) -> list[Address] | None:
    addresses: list[Address] = []
    position = 0
    size = len(value)
    match = _SIMPLE_ADDRESS.match
    while position < size:
        found = match(value, position)
        if found is None:
            return None
        quoted, name, local, domain, bare_local, bare_domain = found.groups()
        if local is None:
            addresses.append((None, None, bare_local, bare_domain))
        else:
            if quoted is not None:
                name = _unquote(quoted)
            elif name is not None and (b"  " in name or b"\t" in name):
                name = _BLANKS.sub(b" ", name)
            addresses.append((name, None, local, domain))
        position = found.end()
    if value.endswith(b","):
        return None
    return addresses


def render_addresses(value: bytes | None) -> bytes:
    """The IMAP address list of a header value (NIL when it holds none)."""
    if not value:
        return NIL
    return _render_addresses(value)


# The same From and To values come back message after message in a folder (a user's own
# address above all): their rendering is kept.
@functools.lru_cache(maxsize=4096)
def _render_addresses(value: bytes) -> bytes:
    addresses = _simple_addresses(value)
    if addresses is None:
        addresses = parse_addresses(value)
    if not addresses:
        return NIL
    return b"(%s)" % b"".join(
        b"(%s %s %s %s)" % (nstring(name), nstring(route), nstring(mailbox), nstring(host))
        for name, route, mailbox, host in addresses
    )


# -- ENVELOPE -----------------------------------------------------------------------------

_ENVELOPE_FIELD = field_finder(
    [
        "date",
        "subject",
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "in-reply-to",
        "message-id",
    ]
)


def envelope_of_block(block: bytes) -> bytes:
    """The ENVELOPE of a header block (the fields, without the blank line or with it)."""
    values = first_values(block, _ENVELOPE_FIELD)
    get = values.get
    sender_from = render_addresses(get(b"from"))
    sender = get(b"sender")
    reply_to = get(b"reply-to")
    return b"".join(
        (
            b"(",
            nstring(get(b"date")),
            b" ",
            nstring(get(b"subject")),
            b" ",
            sender_from,
            b" ",
            render_addresses(sender) if sender else sender_from,
            b" ",
            render_addresses(reply_to) if reply_to else sender_from,
            b" ",
            render_addresses(get(b"to")),
            b" ",
            render_addresses(get(b"cc")),
            b" ",
            render_addresses(get(b"bcc")),
            b" ",
            nstring(get(b"in-reply-to")),
            b" ",
            nstring(get(b"message-id")),
            b")",
        )
    )


def envelope(raw_or_headers: bytes) -> bytes:
    """The IMAP ENVELOPE (RFC 3501 7.4.2) of a whole message or of its header block."""
    fields_end, _ = header_end(raw_or_headers)
    return envelope_of_block(raw_or_headers[:fields_end])


# -- MIME structure -----------------------------------------------------------------------

_PARAM = re.compile(
    rb"""[ \t\r\n]*;[ \t\r\n]*([^=;\s"]+)[ \t\r\n]*=[ \t\r\n]*("(?:[^"\\]|\\.)*"|[^;\s]*)""",
    re.S,
)
_TOKEN = re.compile(rb"[ \t]*([^;\s/]*)(?:[ \t]*/[ \t]*([^;\s]*))?")


_CONTINUATION = re.compile(rb"(.+)\*([0-9]{1,3})(\*?)\Z")


def parse_parameters(value: bytes, start: int) -> list[tuple[bytes, bytes]]:
    """The ;name=value parameters from `start` (quoted values unquoted), as written, but
    RFC 2231 continuations joined as Dovecot does: name*0="a"; name*1="b" is name "ab",
    and with an encoded segment (name*0*=utf-8''...) it is name* "utf-8''...", left
    encoded."""
    params: list[tuple[bytes, bytes]] = []
    segments: dict[bytes, list[tuple[int, bool, bytes]]] = {}
    for found in _PARAM.finditer(value, start):
        name, text = found.group(1), found.group(2)
        if text.startswith(b'"'):
            text = _unquote(text)
        continued = _CONTINUATION.match(name) if b"*" in name else None
        if continued is None:
            params.append((name, text))
            continue
        base = continued.group(1)
        if base.lower() not in segments:
            segments[base.lower()] = []
            params.append((base, b""))  # holds the place of the joined value
        segments[base.lower()].append((int(continued.group(2)), bool(continued.group(3)), text))
    if not segments:
        return params
    joined = []
    for name, text in params:
        parts = segments.get(name.lower()) if not text else None
        if parts is None:
            joined.append((name, text))
            continue
        parts.sort(key=lambda part: part[0])
        encoded = parts[0][1]
        joined.append((name + b"*" if encoded else name, b"".join(part[2] for part in parts)))
        segments.pop(name.lower())
    return joined


def parse_content_type(
    value: bytes | None,
) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """(type, subtype, parameters) of a Content-Type value; None when it is unusable."""
    if not value:
        return None
    found = _TOKEN.match(value)
    if found is None or not found.group(1) or not found.group(2):
        return None
    return found.group(1), found.group(2), parse_parameters(value, found.end())


def parse_disposition(value: bytes | None) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    if not value:
        return None
    found = _TOKEN.match(value)
    if found is None or not found.group(1):
        return None
    return found.group(1), parse_parameters(value, found.end())


_MIME_FIELD = field_finder(
    [
        "content-type",
        "content-transfer-encoding",
        "content-id",
        "content-description",
        "content-disposition",
        "content-language",
        "content-location",
        "content-md5",
    ]
)


class Part:
    """One entity of a message: the header block raw[start:fields_end], the blank line,
    the body raw[body_start:end]; children for a multipart, `message` for the entity
    inside a message/rfc822 part."""

    __slots__ = (
        "raw",
        "start",
        "fields_end",
        "body_start",
        "end",
        "headers",
        "type",
        "subtype",
        "params",
        "children",
        "message",
    )

    def __init__(self, raw: bytes, start: int, end: int, digest: bool = False, depth: int = 0):
        self.raw = raw
        self.start = start
        self.end = end
        self.fields_end, self.body_start = header_end(raw, start, end)
        self.headers = first_values(raw[start : self.fields_end], _MIME_FIELD)
        content_type = parse_content_type(self.headers.get(b"content-type"))
        if content_type is None:
            if digest:
                content_type = (b"message", b"rfc822", [])
            else:
                content_type = (b"text", b"plain", [(b"charset", b"us-ascii")])
        self.type, self.subtype, self.params = content_type
        self.children: list[Part] = []
        self.message: Part | None = None
        kind = self.type.lower()
        if depth > 50:  # a hostile nesting depth: the rest is one opaque part
            return
        if kind == b"multipart":
            self.children = self.split_multipart(depth)
        elif kind == b"message" and self.subtype.lower() in (b"rfc822", b"global"):
            encoding = self.headers.get(b"content-transfer-encoding", b"7bit").lower()
            if encoding in (b"7bit", b"8bit", b"binary"):
                self.message = Part(raw, self.body_start, end, depth=depth + 1)

    @property
    def is_multipart(self) -> bool:
        return self.type.lower() == b"multipart"

    def param(self, name: bytes) -> bytes | None:
        for key, value in self.params:
            if key.lower() == name:
                return value
        return None

    def split_multipart(self, depth: int) -> list[Part]:
        boundary = self.param(b"boundary")
        if not boundary:
            return []
        delimiter = re.compile(
            rb"(?:\A|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)"
        )
        raw = self.raw
        digest = self.subtype.lower() == b"digest"
        children = []
        part_start = None
        # The line end before a delimiter belongs to it (RFC 2046 5.1.1): the search starts
        # at the header's blank line, whose line end precedes a delimiter without preamble.
        position = self.fields_end
        end = self.end
        while True:
            found = delimiter.search(raw, position, end)
            if found is None:
                break
            if part_start is not None:
                children.append(
                    Part(raw, part_start, max(found.start(), part_start), digest, depth + 1)
                )
            if found.group(1):
                part_start = None
                break
            part_start = found.end()
            # The line end closing this delimiter may open the next one (an empty part).
            position = found.end()
            if raw[position - 1 : position] == b"\n":
                position -= 2 if raw[position - 2 : position] == b"\r\n" else 1
        if part_start is not None:
            children.append(Part(raw, part_start, end, digest, depth + 1))
        return children

    # -- sections --

    def header_block(self) -> bytes:
        """The header fields and the blank line after them."""
        return self.raw[self.start : self.body_start]

    def body(self) -> bytes:
        return self.raw[self.body_start : self.end]

    def line_end(self) -> bytes:
        first = self.raw.find(b"\n", self.start, self.end)
        return (
            b"\r\n"
            if first > 0 and self.raw[first - 1 : first] == b"\r"
            else b"\n"
            if first >= 0
            else b"\r\n"
        )

    def header_fields(self, names: tuple[str, ...], exclude: bool) -> bytes:
        wanted = {name.lower().encode("ascii", "replace") for name in names}
        chosen = []
        for field in split_fields(self.raw[self.start : self.fields_end]):
            name = field_name(field)
            if name is None:
                continue
            if (name in wanted) != exclude:
                chosen.append(field if field.endswith(b"\n") else field + self.line_end())
        chosen.append(self.line_end())
        return b"".join(chosen)

    # -- structure --

    def lines(self) -> int:
        return self.raw.count(b"\n", self.body_start, self.end)

    def bodystructure(self, extended: bool) -> bytes:
        headers = self.headers
        if self.is_multipart:
            children = self.children or [None]
            out = [
                b"(",
                b"".join(
                    child.bodystructure(extended) if child is not None else EMPTY_PART
                    for child in children
                ),
                b" ",
                string(self.subtype),
            ]
            if extended:
                out += [b" ", _params(self.params), b" ", _extension(headers)]
            out.append(b")")
            return b"".join(out)
        encoding = headers.get(b"content-transfer-encoding")
        if not encoding or not _ENCODING.match(encoding):
            encoding = b"7bit"
        params = self.params
        if self.type.lower() == b"text" and self.param(b"charset") is None:
            params = [*params, (b"charset", b"us-ascii")]
        out = [
            b"(",
            string(self.type),
            b" ",
            string(self.subtype),
            b" ",
            _params(params),
            b" ",
            nstring(headers.get(b"content-id")),
            b" ",
            nstring(headers.get(b"content-description")),
            b" ",
            string(encoding),
            b" %d" % (self.end - self.body_start),
        ]
        kind = self.type.lower()
        if self.message is not None:
            inner = self.message
            out += [
                b" ",
                envelope_of_block(self.raw[inner.start : inner.fields_end]),
                b" ",
                inner.bodystructure(extended),
                b" %d" % self.lines(),
            ]
        elif kind == b"text":
            out.append(b" %d" % self.lines())
        if extended:
            out += [b" ", nstring(headers.get(b"content-md5")), b" ", _extension(headers)]
        out.append(b")")
        return b"".join(out)

    # -- part numbers --

    def find(self, numbers: list[int]) -> Part | None:
        """The part a section's part numbers name (RFC 3501 6.4.5), or None."""
        node: Part = self
        entered = True  # at a message's top: its part 1 is its body when it has no parts
        for number in numbers:
            if node.message is not None and node is not self:
                node = node.message
                entered = True
            if node.is_multipart:
                if not 1 <= number <= len(node.children):
                    return None
                node = node.children[number - 1]
                entered = False
            elif entered and number == 1:
                entered = False
            else:
                return None
        return node


_ENCODING = re.compile(rb"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+\Z")  # a token, else "7bit"
EMPTY_PART = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'


def _params(params: list[tuple[bytes, bytes]]) -> bytes:
    if not params:
        return NIL
    return b"(" + b" ".join(string(key) + b" " + string(value) for key, value in params) + b")"


def _extension(headers: dict[bytes, bytes]) -> bytes:
    """disposition language location (the extension data both part kinds end with)."""
    disposition = parse_disposition(headers.get(b"content-disposition"))
    if disposition is None:
        rendered = NIL
    else:
        rendered = b"(" + string(disposition[0]) + b" " + _params(disposition[1]) + b")"
    language = headers.get(b"content-language")
    tags = [tag.strip() for tag in language.split(b",") if tag.strip()] if language else []
    language_text = b"(" + b" ".join(string(tag) for tag in tags) + b")" if tags else NIL
    return rendered + b" " + language_text + b" " + nstring(headers.get(b"content-location"))


class Message:
    """A raw message parsed once, for every item one FETCH asks of it; the MIME tree is
    built when first needed (not for ENVELOPE, BODY[] or BODY[HEADER...])."""

    __slots__ = ("raw", "_root")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._root: Part | None = None

    @property
    def root(self) -> Part:
        if self._root is None:
            self._root = Part(self.raw, 0, len(self.raw))
        return self._root

    def envelope(self) -> bytes:
        return envelope(self.raw)

    def bodystructure(self, extended: bool = True) -> bytes:
        return self.root.bodystructure(extended)

    def section(self, section: str, fields: tuple[str, ...] = ()) -> bytes | None:
        """The octets of BODY[section] (section upper-case as FetchAtt gives it, fields the
        header names of HEADER.FIELDS[.NOT]); None for a part that does not exist."""
        if not section:
            return self.raw
        parts = section.split(".")
        numbers = []
        while parts and parts[0].isdigit():
            numbers.append(int(parts.pop(0)))
        text = ".".join(parts)
        if not numbers:
            if text == "HEADER":  # no need for the MIME tree
                return self.raw[: header_end(self.raw)[1]]
            node = self.root
        else:
            node = self.root.find(numbers)
            if node is None:
                return None
            if not text:
                return node.body()
            if text == "MIME":
                return node.header_block()
            if node.message is not None:
                node = node.message
        if text == "HEADER":
            return node.header_block()
        if text == "TEXT":
            return node.body()
        if text == "HEADER.FIELDS":
            return node.header_fields(fields, exclude=False)
        if text == "HEADER.FIELDS.NOT":
            return node.header_fields(fields, exclude=True)
        raise ValueError(f"Bad section {section}")


def bodystructure(raw: bytes, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (extended) or BODY (not) of a raw message."""
    return Message(raw).bodystructure(extended)


def section(raw: bytes, spec: str, fields: tuple[str, ...] = ()) -> bytes | None:
    """BODY[spec] of a raw message (see Message.section)."""
    return Message(raw).section(spec, fields)


def partial(data: bytes, origin: int, count: int) -> bytes:
    """The <origin.count> slice of a section: empty past its end."""
    return data[origin : origin + count]
