"""Strict parsing of the MAIL FROM / RCPT TO argument: ``<path> [SP esmtp-params]``.

Grammar from RFC 5321 section 4.1.2, extended by RFC 6531 (UTF-8 in the local part and
the domain, only when the transaction was started with SMTPUTF8). Every syntax error is
an AddressError carrying the reply the server should give.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from types import MappingProxyType

import attrs

__all__ = [
    "AddressError",
    "ArgumentSyntaxError",
    "NonAsciiAddressError",
    "ParameterError",
    "Path",
    "PathArgument",
    "PathSyntaxError",
    "is_relay_attempt",
    "parse_forward_path",
    "parse_reverse_path",
]

# RFC 5321 section 4.5.3.1, counted in octets.
MAX_LOCAL_PART = 64
# SRS addresses carry a whole original address in their local part, so real-world
# forwarders produce longer ones (RFC 5321 4.5.3.1: be liberal where it does no harm).
MAX_SRS_LOCAL_PART = 200
MAX_DOMAIN = 255
MAX_LABEL = 63
MAX_PATH = 256  # including the angle brackets and any source route


class AddressError(Exception):
    """A MAIL/RCPT argument we refuse; `code`, `status` and `text` make the reply."""

    code = 501
    status = "5.5.4"

    def __init__(self, text: str, code: int | None = None, status: str | None = None):
        super().__init__(text)
        self.text = text
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    @property
    def reply(self) -> str:
        return f"{self.code} {self.status} {self.text}"


class ArgumentSyntaxError(AddressError):
    """The argument does not have the shape <path> [params] at all."""

    code = 501
    status = "5.5.4"


class PathSyntaxError(AddressError):
    """The text between the angle brackets is not a valid mailbox."""

    code = 501
    status = "5.1.3"


class ParameterError(AddressError):
    """A malformed or repeated ESMTP parameter."""

    code = 555
    status = "5.5.4"


class NonAsciiAddressError(AddressError):
    """UTF-8 in an address of a transaction that did not ask for SMTPUTF8."""

    code = 553
    status = "5.6.7"


@attrs.frozen
class Path:
    """A reverse- or forward-path; the null reverse-path `<>` has empty parts."""

    local_part: str  # unquoted value: `"a b"@x` gives `a b`
    domain: str  # as written; an address literal keeps its brackets: `[192.0.2.1]`
    source_route: tuple[str, ...] = ()
    quoted: bool = False

    @property
    def is_null(self) -> bool:
        return not self.local_part and not self.domain and not self.quoted

    @property
    def is_address_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def is_ascii(self) -> bool:
        return self.local_part.isascii() and self.domain.isascii()

    @property
    def address(self) -> str:
        """The mailbox as text (source route dropped), quoting the local part if needed."""
        if self.is_null:
            return ""
        local = self.local_part
        if not _DOT_STRING_RE.fullmatch(local):
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}" if self.domain else local

    def __str__(self) -> str:
        return self.address


NULL_PATH = Path("", "")


@attrs.frozen
class PathArgument:
    path: Path
    # upper-cased keyword -> value, or None for a keyword given without "="
    params: Mapping[str, str | None] = attrs.field(
        factory=dict, converter=lambda value: MappingProxyType(dict(value)), hash=False
    )


_UTF8 = "\u00a0-\U0010ffff"  # UTF8-non-ascii of RFC 6531, C1 controls left out
_ATEXT = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_UTF8}]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\[\x20-\x7e])*"'
_LETDIG = rf"[A-Za-z0-9{_UTF8}]"
_LABEL = rf"{_LETDIG}(?:[A-Za-z0-9\-{_UTF8}]*{_LETDIG})?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"

_DOT_STRING_RE = re.compile(_DOT_STRING)
_PATH_RE = re.compile(
    rf"<(?:(?P<route>@{_DOMAIN}(?:,@{_DOMAIN})*):)?"
    rf"(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})>"
)
_POSTMASTER_RE = re.compile(r"<(?P<local>postmaster)>", re.IGNORECASE)
_QUOTED_PAIR_RE = re.compile(r"\\(.)")
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE_RE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")
_GENERAL_TAG_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")


def _octets(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _decode(argument: str | bytes) -> str:
    if isinstance(argument, str):
        return argument
    try:
        return argument.decode("utf-8")
    except UnicodeDecodeError:
        raise PathSyntaxError("Bad address syntax: not valid UTF-8") from None


def _parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    if not text:
        return params
    if text[0] != " ":
        raise PathSyntaxError("Bad address syntax: text after the closing '>'")
    for item in text.split(" "):
        if not item:
            continue  # tolerate runs of spaces between parameters
        keyword, equals, value = item.partition("=")
        if not _KEYWORD_RE.fullmatch(keyword) or (equals and not _VALUE_RE.fullmatch(value)):
            raise ParameterError(f"Bad parameter syntax: {item[:40]}")
        keyword = keyword.upper()
        if keyword in params:
            raise ParameterError(f"Parameter given twice: {keyword}")
        params[keyword] = value if equals else None
    return params


def _check_address_literal(literal: str) -> None:
    inner = literal[1:-1]
    tag, colon, content = inner.partition(":")
    try:
        if not colon:
            ipaddress.IPv4Address(inner)
            return
        if tag.lower() == "ipv6":
            if "%" in content:
                raise ValueError(content)
            ipaddress.IPv6Address(content)
            return
    except ValueError:
        raise PathSyntaxError("Bad address syntax: invalid address literal") from None
    # General-address-literal: a registered tag and dcontent (RFC 5321 section 4.1.3)
    if not _GENERAL_TAG_RE.fullmatch(tag) or not content:
        raise PathSyntaxError("Bad address syntax: invalid address literal")


def _parse_path(text: str, *, allow_postmaster: bool) -> tuple[Path, str]:
    """The path at the start of text, and what follows it."""
    match = _PATH_RE.match(text)
    if match is None:
        postmaster = _POSTMASTER_RE.match(text) if allow_postmaster else None
        if postmaster is None:
            raise PathSyntaxError("Bad address syntax")
        return Path(postmaster.group("local"), ""), text[postmaster.end() :]
    local, domain, route = match.group("local", "domain", "route")
    if _octets(match.group(0)) > MAX_PATH:
        raise PathSyntaxError("Bad address syntax: path longer than 256 octets")
    limit = MAX_SRS_LOCAL_PART if local[:5].upper() in ("SRS0=", "SRS1=") else MAX_LOCAL_PART
    if _octets(local) > limit:
        raise PathSyntaxError(f"Bad address syntax: local part longer than {limit} octets")
    if _octets(domain) > MAX_DOMAIN:
        raise PathSyntaxError("Bad address syntax: domain longer than 255 octets")
    quoted = local.startswith('"')
    if quoted:
        local = _QUOTED_PAIR_RE.sub(r"\1", local[1:-1])
    if domain.startswith("["):
        _check_address_literal(domain)
    elif any(_octets(label) > MAX_LABEL for label in domain.split(".")):
        raise PathSyntaxError("Bad address syntax: domain label longer than 63 octets")
    source_route = tuple(hop[1:] for hop in route.split(",")) if route else ()
    return Path(local, domain, source_route, quoted), text[match.end() :]


def _check_utf8(path_text: str, smtputf8: bool) -> None:
    if not smtputf8 and not path_text.isascii():
        raise NonAsciiAddressError("Non-ASCII address requires SMTPUTF8")


def parse_reverse_path(argument: str | bytes) -> PathArgument:
    """Parse the MAIL FROM argument (after `FROM:`); `<>` is allowed.

    UTF-8 in the address is allowed only when the SMTPUTF8 parameter is among the
    parameters on the same line.
    """
    text = _decode(argument)
    if not text.startswith("<"):
        raise ArgumentSyntaxError("Syntax: MAIL FROM:<address> [parameters]")
    if text.startswith("<>"):
        return PathArgument(NULL_PATH, _parse_params(text[2:]))
    path, rest = _parse_path(text, allow_postmaster=False)
    params = _parse_params(rest)
    _check_utf8(text[: len(text) - len(rest)], "SMTPUTF8" in params)
    return PathArgument(path, params)


def parse_forward_path(argument: str | bytes, *, smtputf8: bool) -> PathArgument:
    """Parse the RCPT TO argument (after `TO:`); `<>` is refused, `<Postmaster>` allowed.

    smtputf8 says whether the transaction's MAIL command carried SMTPUTF8.
    """
    text = _decode(argument)
    if not text.startswith("<"):
        raise ArgumentSyntaxError("Syntax: RCPT TO:<address> [parameters]")
    if text.startswith("<>"):
        raise PathSyntaxError("Bad address syntax: a recipient cannot be empty")
    path, rest = _parse_path(text, allow_postmaster=True)
    params = _parse_params(rest)
    _check_utf8(text[: len(text) - len(rest)], smtputf8)
    return PathArgument(path, params)


def is_relay_attempt(path: Path) -> bool:
    """Whether a recipient path tries to route mail onward through us.

    A source route, or a local part holding `@`, `%` or `!` (old percent hack and bang
    paths, also hidden in a quoted string such as `"user@other"@ours`): a mailbox here
    never needs them, and a downstream system might act on them.
    """
    if path.source_route:
        return True
    local = path.local_part
    return "@" in local or "%" in local or "!" in local
