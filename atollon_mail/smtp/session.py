"""What the SMTP protocol and its policy say to each other: replies, decisions, and the
session and envelope records a policy decides on (aiosmtpd's handler model)."""

from __future__ import annotations

import functools
import ipaddress
from typing import Any, NamedTuple

import attrs

from atollon_mail.smtp.address import Path

__all__ = [
    "IMPLICIT_TLS_LISTENER",
    "MX_LISTENER",
    "SUBMISSION_LISTENER",
    "Accept",
    "Envelope",
    "Listener",
    "Reply",
    "Session",
    "within",
]


class Reply(NamedTuple):
    """One SMTP reply; status is the RFC 3463 enhanced code (None for 220/354 lines)."""

    code: int
    status: str | None
    text: str

    def encode(self) -> bytes:
        text = self.text
        if "\r" in text or "\n" in text:
            text = text.replace("\r", " ").replace("\n", " ")
        line = f"{self.code} {self.status} {text}\r\n" if self.status else f"{self.code} {text}\r\n"
        return line.encode("utf-8")


@attrs.frozen
class Accept:
    """A policy's yes. `value` is what the protocol keeps: the authenticated user (AUTH),
    a note on the envelope (MAIL), the recipient to deliver to (RCPT), the stored message
    (end of data). `reply` replaces the protocol's usual 2xx reply when given."""

    value: Any = None
    reply: Reply | None = None


# A policy's no is a Reply, or a tuple of Replies sent in order; a 421 among them ends the
# session (RFC 5321: the service is closing the channel).
Decision = Accept | Reply | tuple[Reply, ...]


@attrs.frozen
class Listener:
    """What one listening port offers; the protocol is the same on all of them.

    name: for logs and policies ("smtp", "submission", "submission-tls").
    greet_pause: whether [smtp] greet_pause applies (not to people's mail programs).
    auth: AUTH PLAIN/LOGIN offered once TLS is active (the policy must provide
        ISMTPAuthPolicy), and MAIL refused before AUTH.
    implicit_tls: the port is wrapped in TLS from the first byte (465): sessions start
        with TLS active and STARTTLS is not offered.
    """

    name: str
    greet_pause: bool = True
    auth: bool = False
    implicit_tls: bool = False


MX_LISTENER = Listener("smtp")
SUBMISSION_LISTENER = Listener("submission", greet_pause=False, auth=True)
IMPLICIT_TLS_LISTENER = Listener("submission-tls", greet_pause=False, auth=True, implicit_tls=True)


@attrs.define
class Session:
    """One connection as the policy sees it. The protocol updates it; policies read it."""

    listener: str
    peer: str | None = None  # the client's IP address as text (IPv4-mapped unwrapped)
    tls: bool = False
    helo: str | None = None
    esmtp: bool = False
    authenticated_user: Any = None  # the UserRecord an ISMTPAuthPolicy accepted


@attrs.define
class Envelope:
    """One mail transaction: MAIL FROM, its parameters, and the recipients accepted."""

    sender: Path
    params: dict[str, str | None] = attrs.field(factory=dict)
    note: Any = None  # what the policy's check_mail accepted with
    recipients: list[Any] = attrs.field(factory=list)  # what check_rcpt accepted with
    paths: list[Path] = attrs.field(factory=list)  # the RCPT TO path of each

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.params


def networks(specs: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(spec, strict=False) for spec in specs)


@functools.lru_cache(maxsize=4096)
def within(client_ip: str | None, nets: tuple[Any, ...]) -> bool:
    """Whether client_ip is in one of nets. Cached: the same few clients connect again
    and again, and parsing the address showed up per connection in profiles."""
    if client_ip is None or not nets:
        return False
    ip = ipaddress.ip_address(client_ip)
    return any(ip in network for network in nets)
