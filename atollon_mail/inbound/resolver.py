"""The resolver of the inbound checks: the configured nameservers, answers kept.

Its own module so the check process (inbound.checkprocess) builds the same resolver
from the nameservers alone, without the appliance's builders."""

from __future__ import annotations

import threading
import time

import dns.resolver

from atollon_mail.config import Config
from atollon_mail.delivery.mx import dns_resolver

# Seconds one DNS question of the checks may take (SPF as a whole: pyspf's 20 s limit).
DNS_TIMEOUT = 5.0


# How many answers AnswersKept keeps in front of dnspython's cache.
ANSWERS_KEPT = 10_000


class AnswersKept(dns.resolver.Resolver):
    """dnspython's resolver with the answers that hold records kept in front of it, by
    the name and type as asked, until they expire (the same expiry as dnspython's own
    cache: its answer's, by the system clock).

    dnspython's cache answers only after a query is built (the name parsed, a
    resolution set up): about 7 microseconds of interpreter time per question, and a
    message's checks ask four or five questions whose answers are nearly always cached
    (the DKIM key, the DMARC and SPF records), a tenth of what authenticating a message
    cost once its RSA check went to OpenSSL. Here a kept answer costs under one.
    Anything else (no such name, no records of the type, an error) goes the usual way,
    where dnspython's cache still keeps what it keeps."""

    def __init__(self, *args, kept: int = ANSWERS_KEPT, **kwargs):
        super().__init__(*args, **kwargs)
        self._kept: dict[tuple, dns.resolver.Answer] = {}
        self._most = kept
        self._lock = threading.Lock()

    def resolve(self, qname, rdtype="A", rdclass="IN", *args, **kwargs):
        key = None
        if not args and all(isinstance(value, str) for value in (qname, rdtype, rdclass)):
            key = (qname.lower(), rdtype.upper(), rdclass.upper(), kwargs.get("search"))
            answer = self._kept.get(key)
            if answer is not None and answer.expiration > time.time():
                return answer
        answer = super().resolve(qname, rdtype, rdclass, *args, **kwargs)
        if key is not None and answer.rrset is not None:
            with self._lock:
                self._kept.pop(key, None)
                self._kept[key] = answer
                while len(self._kept) > self._most:  # the oldest first
                    del self._kept[next(iter(self._kept))]
        return answer


def checks_resolver(nameservers) -> dns.resolver.Resolver:
    """A resolver asking `nameservers` ([delivery] nameservers; the system's when
    empty), with a cache: the same SPF, DKIM key and DMARC records are asked for message
    after message, and dnspython keeps each answer for its TTL (AnswersKept in front of
    its cache)."""
    resolver = dns_resolver(nameservers, DNS_TIMEOUT, AnswersKept)
    resolver.cache = dns.resolver.LRUCache(10_000)
    return resolver


def inbound_resolver(config: Config) -> dns.resolver.Resolver:
    """The checks' resolver for config's [delivery] nameservers (checks_resolver)."""
    return checks_resolver(config.delivery.nameservers)
