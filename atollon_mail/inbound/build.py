"""The inbound checks of port 25, built from the configuration ([inbound])."""

from __future__ import annotations

import dns.resolver

from atollon_mail.config import Config
from atollon_mail.delivery.mx import dns_resolver
from atollon_mail.inbound.checks import InboundChecks

# Seconds one DNS question of the checks may take (SPF as a whole: pyspf's 20 s limit).
DNS_TIMEOUT = 5.0


def inbound_resolver(config: Config) -> dns.resolver.Resolver:
    """A resolver asking [delivery] nameservers (the system's when empty), with a cache:
    the same SPF, DKIM key and DMARC records are asked for message after message, and
    dnspython keeps each answer for its TTL."""
    resolver = dns_resolver(config.delivery.nameservers, DNS_TIMEOUT)
    resolver.cache = dns.resolver.LRUCache(10_000)
    return resolver


def build(config: Config, store, workers, reactor, spam_filter=None) -> InboundChecks | None:
    """The checks of [inbound] (None when `checks = off`), asking `spam_filter` when one
    is given (see inbound.checks.InboundChecks)."""
    if not config.inbound.checks:
        return None
    return InboundChecks(
        config.inbound,
        config.appliance.hostname,
        inbound_resolver(config),
        workers,
        store,
        reactor,
        spam_filter=spam_filter,
    )
