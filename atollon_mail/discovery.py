"""What mail clients are told about the appliance's mail services, so that they set
themselves up from an address and a password: one description, published two ways, as
the RFC 6186 SRV records `dns records` proposes (dns/advisor.py) and as the Thunderbird
autoconfig file the web serves (web/pages_autoconfig.py), so the two always agree.

The ports are the standard ones (993 and 143 for IMAP, 465 and 587 for submission), not
those of the listen endpoints: a development box listens on 2143 or 2587, and a box behind
port forwarding is reached at the standard port whatever it listens on. A service with
implicit TLS is offered only when its listener is configured ([submission] tls_listen,
[imap] tls_listen).
"""

from __future__ import annotations

from typing import Any

import attrs

IMAP_PORT = 143
IMAPS_PORT = 993
SUBMISSION_PORT = 587
SUBMISSIONS_PORT = 465

# Autoconfig's socketType values.
IMPLICIT_TLS = "SSL"
STARTTLS = "STARTTLS"

# SRV priorities: a lower number is tried first, and RFC 8314 (5.1) asks that implicit
# TLS be preferred to STARTTLS.
IMPLICIT_TLS_PRIORITY = 0
STARTTLS_PRIORITY = 10


@attrs.frozen
class MailService:
    """One way in for a mail client."""

    kind: str  # "imap" (reading) or "smtp" (sending): autoconfig's server type
    srv: str  # the RFC 6186 service label, such as "_imaps._tcp"
    port: int
    socket_type: str  # IMPLICIT_TLS or STARTTLS
    offered: bool  # False: the listener is not configured, clients must not try it
    why_not: str = ""  # for a service not offered: what to configure to offer it

    @property
    def priority(self) -> int:
        return IMPLICIT_TLS_PRIORITY if self.socket_type == IMPLICIT_TLS else STARTTLS_PRIORITY


@attrs.frozen
class ClientServices:
    """The appliance's host name and its mail services, the reading ones first."""

    hostname: str
    services: tuple[MailService, ...]

    def offered(self, kind: str) -> tuple[MailService, ...]:
        """The services of a kind ("imap", "smtp") clients may use, preferred first."""
        found = [s for s in self.services if s.kind == kind and s.offered]
        return tuple(sorted(found, key=lambda service: service.priority))

    def srv_value(self, service: MailService) -> str:
        """The data of the service's SRV record: priority, weight, port and target, or
        "0 0 0 ." for a service not offered (RFC 6186 section 3: decidedly not available,
        so clients do not wait on a port nobody listens on)."""
        if not service.offered:
            return "0 0 0 ."
        return f"{service.priority} 1 {service.port} {self.hostname}."


def client_services(config: Any) -> ClientServices:
    """The mail services `config` (an atollon_mail.config.Config) offers to clients."""
    submissions = config.submission.tls_listen is not None
    imaps = config.imap.tls_listen is not None
    return ClientServices(
        hostname=config.appliance.hostname,
        services=(
            MailService(
                "imap",
                "_imaps._tcp",
                IMAPS_PORT,
                IMPLICIT_TLS,
                imaps,
                "" if imaps else "set [imap] tls_listen (such as tcp:993)",
            ),
            MailService("imap", "_imap._tcp", IMAP_PORT, STARTTLS, True),
            MailService(
                "smtp",
                "_submissions._tcp",
                SUBMISSIONS_PORT,
                IMPLICIT_TLS,
                submissions,
                "" if submissions else "set [submission] tls_listen (such as tcp:465)",
            ),
            MailService("smtp", "_submission._tcp", SUBMISSION_PORT, STARTTLS, True),
        ),
    )
