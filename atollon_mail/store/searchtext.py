"""What full-text search indexes of a message: its subject, its addresses (From, To, Cc)
and its body text (decoded; HTML stripped to text), capped; of its attachments only their
file names. Pure functions (no database), so the text can be taken once per message
wherever it costs least, and the query is read the same way the text was.

Words are runs of letters and digits; accents are folded away (café finds cafe and the
other way round) and case is the engines' business (both lower-case). The databases'
own tokenizers split the text; the words of a query are found here with the same rule,
so an address such as alice@remote.example is searched as the phrase "alice remote
example" on both backends.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.message
import html
import re
import unicodedata

import attrs
import nh3

from atollon_mail.store.message_addresses import header_addresses

# How much body text of one message is indexed (characters, after decoding and
# stripping HTML): the first 64 KiB. Longer text is found by its beginning only; the
# cost of indexing a message stays bounded whatever its size.
BODY_TEXT_LIMIT = 64 * 1024
# HTML read before its markup is stripped: enough to give BODY_TEXT_LIMIT of text in
# all but markup-heavy mail, and a bound on the work for a huge HTML part.
_HTML_READ_LIMIT = 4 * BODY_TEXT_LIMIT
_HEADER_LIMIT = 4000  # characters of a subject, and of each address field
_ADDRESS_FIELDS = ("from", "to", "cc")

_WORD = re.compile(r"[^\W_]+")
_COMBINING = re.compile(r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")


@attrs.frozen
class SearchText:
    """The text of one message as the search index takes it."""

    subject: str
    sender: str  # the From field, decoded: names and addresses
    recipients: str  # the To and Cc fields, decoded
    body: str  # attachment file names, then the body text (at most BODY_TEXT_LIMIT)
    has_attachment: bool
    # (role, address) pairs for message_address (message_addresses.header_addresses),
    # read here with the rest so the storing transaction does not scan the headers again.
    addresses: tuple[tuple[str, str], ...] | None = None


def _clean(text: str) -> str:
    """Folded, and without NUL characters: a decoded part or encoded word may carry
    them, and PostgreSQL takes no NUL in text (the whole batch stored with it failed)."""
    return fold(text).replace("\x00", " ")


def fold(text: str) -> str:
    """text without accents (NFKD, combining marks dropped); ASCII text as it is."""
    if text.isascii():
        return text
    return _COMBINING.sub("", unicodedata.normalize("NFKD", text))


def words(text: str) -> list[str]:
    """The words of a query as the index holds them: folded, lower-cased."""
    return _WORD.findall(fold(text).lower())


def _words_of(value) -> str:
    """A header field's value decoded: RFC 2047 encoded words, and raw 8-bit text (as
    SMTPUTF8 mail carries it) read as UTF-8."""
    try:
        chunks = email.header.decode_header(value)
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return str(value)
    found = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            if not charset or charset == "unknown-8bit":
                charset = "utf-8"
            try:
                chunk = chunk.decode(charset, errors="replace")
            except LookupError:
                chunk = chunk.decode("utf-8", errors="replace")
        found.append(chunk)
    return "".join(found)


def _header(message: email.message.Message, name: str) -> str:
    values = message.get_all(name) or []
    text = " ".join(_words_of(value) for value in values)
    return " ".join(text.split())[:_HEADER_LIMIT]


def _decoded(part: email.message.Message, limit: int) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload[: limit * 4].decode(charset, errors="replace")[:limit]
    except LookupError:  # a charset Python does not know: what decodes as UTF-8
        return payload[: limit * 4].decode("utf-8", errors="replace")[:limit]


def _is_attachment(part: email.message.Message) -> bool:
    # As the message page decides: marked as one, or anything but text and messages.
    return part.get_content_disposition() == "attachment" or part.get_content_maintype() not in (
        "text",
        "message",
        "multipart",
    )


def _filename(part: email.message.Message) -> str:
    return _words_of(part.get_filename() or "")[:_HEADER_LIMIT]


def _walk(part: email.message.Message, plain: list, rich: list, attached: list) -> None:
    """The leaves under part: inline text into plain or rich (HTML), attachments' file
    names into attached; nothing inside an attachment (a message forwarded as one)."""
    if _is_attachment(part):
        attached.append(_filename(part))
        return
    if part.is_multipart():
        for inner in part.get_payload():
            if isinstance(inner, email.message.Message):
                _walk(inner, plain, rich, attached)
        return
    kind = part.get_content_type()
    if kind == "text/html":
        rich.append(part)
    elif part.get_content_maintype() == "text":
        plain.append(part)


def _body(parts: list, limit: int, is_html: bool) -> str:
    texts: list[str] = []
    room = limit
    for part in parts:
        if room <= 0:
            break
        if is_html:
            # nh3 (ammonia) drops every tag and the content of script and style; a blank
            # before each tag keeps the words of adjacent elements apart.
            markup = _decoded(part, _HTML_READ_LIMIT).replace("<", " <")
            text = html.unescape(nh3.clean(markup, tags=set()))
        else:
            text = _decoded(part, room)
        texts.append(text[:room])
        room -= len(texts[-1])
    return "\n".join(texts)


def extract(raw: bytes, limit: int = BODY_TEXT_LIMIT) -> SearchText:
    """The search text of a message in its raw bytes. Never fails, whatever the message:
    what cannot be read is left out (a message is stored whether or not it is found)."""
    message = email.message_from_bytes(raw)
    plain: list = []
    rich: list = []
    attached: list = []
    try:
        _walk(message, plain, rich, attached)
        # An alternative of text and HTML is indexed once, by its text.
        body = _body(plain, limit, False) if plain else _body(rich, limit, True)
    except Exception:  # a broken structure: the headers are still indexed
        body = ""
    names = " ".join(name for name in attached if name)
    try:
        subject = _header(message, "subject")
        sender = _header(message, "from")
        recipients = " ".join(_header(message, name) for name in _ADDRESS_FIELDS[1:])
    except Exception:  # a header the email package cannot read at all
        subject = sender = recipients = ""
    return SearchText(
        subject=_clean(subject),
        sender=_clean(sender),
        recipients=_clean(recipients),
        body=_clean(f"{names}\n{body}" if names else body),
        has_attachment=bool(attached),
        addresses=tuple(header_addresses(raw)),
    )


def with_search_text(record):
    """An IncomingMessage or OutgoingMessage with its search text taken (store.records)."""
    return attrs.evolve(record, search_text=extract(record.raw))
