"""DNS blocklists (RFC 5782): is the client's address listed in a zone?

An address is listed when the zone answers A records in 127.0.0.0/8 for its reversed
form (2.0.0.127.zone for 127.0.0.2; nibbles for IPv6). Answers in 127.255.255.0/24 are
the lists' own error codes (Spamhaus: the query came through a public resolver, or over
the free limit) and count as no answer; so does a failed lookup: a list that cannot be
asked never marks mail.

Blocks: run it in the DNS worker pool.
"""

from __future__ import annotations

import ipaddress

import attrs
import dns.exception
import dns.resolver
import dns.reversename

__all__ = ["Listing", "query_name", "listings"]

_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")


@attrs.frozen
class Listing:
    zone: str
    codes: tuple[str, ...]  # the 127.x.y.z answers (what the list says the address is)


def query_name(client_ip: str, zone: str) -> str:
    """The name to ask: the address reversed (octets or nibbles) under zone."""
    reverse = dns.reversename.from_address(client_ip).to_text(omit_final_dot=True)
    return reverse.rsplit(".", 2)[0] + "." + zone.rstrip(".")


def listed(resolver: dns.resolver.Resolver, client_ip: str, zone: str) -> Listing | None:
    try:
        answer = resolver.resolve(
            query_name(client_ip, zone) + ".", "A", raise_on_no_answer=False, search=False
        )
    except (dns.exception.DNSException, ValueError):
        return None
    if answer.rrset is None:
        return None
    codes = []
    for rdata in answer.rrset:
        address = ipaddress.ip_address(rdata.address)
        if address in _LOOPBACK and address not in _ERROR_CODES:
            codes.append(str(address))
    return Listing(zone, tuple(sorted(codes))) if codes else None


def listings(
    resolver: dns.resolver.Resolver, client_ip: str, zones: tuple[str, ...]
) -> tuple[Listing, ...]:
    """The zones that list client_ip, in the order given."""
    found = (listed(resolver, client_ip, zone) for zone in zones)
    return tuple(listing for listing in found if listing is not None)
