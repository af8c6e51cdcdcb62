"""Client addresses as the throttle and the connection caps see them, and the client of a
request that came through a trusted reverse proxy (`forwarded_client`).

An IPv4 address mapped into IPv6 (::ffff:192.0.2.7, as a dual-stack listener reports an
IPv4 peer) is the IPv4 address; an IPv6 host usually holds a whole /64, so it is counted
by its /64 (counting single addresses would give it 2**64 fresh starts and let it flush
any bounded table).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

__all__ = [
    "MAX_KEY",
    "client_ip",
    "client_key",
    "forwarded_client",
    "in_networks",
    "ip_of",
]

MAX_KEY = 256  # characters of a host that is not an address, kept as a key

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_of(host: Any) -> IPAddress | None:
    """The address `host` names (an IPv4-mapped one as IPv4), or None if it names none."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_ip(host: Any) -> str | None:
    """A connection's peer host as the servers log and check it: the address as text (an
    IPv4-mapped one as IPv4), or None when it is no address (a UNIX socket's peer)."""
    if not isinstance(host, str):
        return None
    ip = ip_of(host)
    return None if ip is None else str(ip)


def client_key(host: Any) -> str:
    """What a client is counted by: its address, or its /64 for IPv6."""
    if not host:
        return "unknown"
    ip = ip_of(host)
    if ip is None:
        return str(host)[:MAX_KEY]
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def in_networks(host: Any, networks: Iterable[IPNetwork]) -> bool:
    """Whether `host` is an address in one of `networks`."""
    ip = ip_of(host)
    return ip is not None and any(ip in network for network in networks)


def forwarded_client(peer: Any, forwarded_for: Iterable[str], trusted: Iterable[IPNetwork]) -> str:
    """The client of a request from `peer` with these X-Forwarded-For header values.

    From a peer outside the `trusted` proxies the header is the client's own word and is
    ignored: the client is the peer. From a trusted proxy, the client is the right-most
    address in the header that is not a trusted proxy (each proxy appends the address it
    was connected from; what lies left of that can be forged). Without the header, or when
    an entry is not an address, the last trusted hop is the client.
    """
    trusted = tuple(trusted)
    client = str(peer)
    if not in_networks(peer, trusted):
        return client
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed([hop for hop in hops if hop]):
        ip = ip_of(hop)
        if ip is None:
            break
        client = str(ip)
        if not in_networks(ip, trusted):
            break
    return client
