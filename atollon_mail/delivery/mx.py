"""Where to deliver a domain's mail: MX lookup (RFC 5321 section 5.1, RFC 7505).

dnspython answers the queries; it blocks, so every query runs in the resolver's own
small thread pool and the reactor thread only orders the results. Answers are kept
for their TTL (at most five minutes), because the queue asks for the same domains
over and over.
"""

from __future__ import annotations

import ipaddress
import random as _random

import attrs
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from atollon_mail.config import HostPort
from atollon_mail.interfaces import IMXResolver

CACHE_TTL_CAP = 300.0
CACHE_MAX_ENTRIES = 10_000


@attrs.frozen
class Destination:
    host: str  # the MX host name (or the domain itself for an implicit MX)
    address: str  # an IP address to connect to
    preference: int


class DNSLookupError(Exception):
    """A domain's mail cannot be routed; smtp_code and enhanced_status say how to answer."""

    smtp_code = 451
    enhanced_status = "4.4.3"

    def __init__(self, domain: str, problem: str):
        self.domain = domain
        super().__init__(problem)


class NullMX(DNSLookupError):
    """RFC 7505: the domain publishes a null MX, it accepts no mail (permanent)."""

    smtp_code = 556
    enhanced_status = "5.1.10"


class NoSuchDomain(DNSLookupError):
    """The domain does not exist, or has neither MX nor address records (permanent)."""

    smtp_code = 550
    enhanced_status = "5.1.2"


class TemporaryDNSError(DNSLookupError):
    """SERVFAIL, a timeout, no nameserver answered, or no MX host resolved: retry later."""


def dns_resolver(
    nameservers: tuple[HostPort, ...] = (),
    timeout: float = 10,
    kind: type[dns.resolver.Resolver] = dns.resolver.Resolver,
) -> dns.resolver.Resolver:
    """
    A dnspython resolver (of class `kind`) asking the configured nameservers (the
    system's when empty).

    Its calls block: run them in a thread pool, never on the reactor thread. Its own
    cache is off; callers that want one keep it with their own clock.
    """
    if nameservers:
        resolver = kind(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(server.host, server.port) for server in nameservers
        ]
    else:
        resolver = kind()  # /etc/resolv.conf
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 2.0)  # one try at one server; retried until lifetime
    resolver.cache = None
    return resolver


@attrs.frozen
class _Answer:
    """Plain values crossing back from the pool: the records' text, and how long to keep them."""

    records: tuple
    ttl: float


def _absolute(name: str) -> str:
    return name.rstrip(".") + "."


def _query(resolver: dns.resolver.Resolver, name: str, rdtype: str) -> _Answer:
    """Runs in the pool. Empty records: the name exists but has no such records."""
    try:
        answer = resolver.resolve(_absolute(name), rdtype, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        raise NoSuchDomain(name, f"{name} does not exist (NXDOMAIN)") from None
    except dns.resolver.NoNameservers as problem:
        raise TemporaryDNSError(
            name, f"no nameserver answered {rdtype} {name}: {problem}"
        ) from None
    except dns.exception.Timeout:
        raise TemporaryDNSError(name, f"DNS query {rdtype} {name} timed out") from None
    except dns.exception.DNSException as problem:
        raise TemporaryDNSError(name, f"DNS query {rdtype} {name} failed: {problem}") from None
    ttl = float(answer.chaining_result.minimum_ttl)
    if answer.rrset is None:
        return _Answer((), ttl)
    if rdtype == "MX":
        records = tuple(
            (rdata.preference, rdata.exchange.to_text(omit_final_dot=True)) for rdata in answer
        )
    else:
        records = tuple(rdata.to_text() for rdata in answer)
    return _Answer(records, ttl)


def _is_root(host: str) -> bool:
    return host in ("", ".")


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IMXResolver)
class MXResolver:
    """Resolves domains to ordered Destinations with a TTL cache; the blocking queries run
    in `threadpool` (the workers' DNS pool, started and stopped by its owner)."""

    def __init__(
        self,
        reactor,
        threadpool: ThreadPool,
        nameservers: tuple[HostPort, ...] = (),
        timeout: float = 10,
        random: _random.Random | None = None,
        clock=None,
        resolver: dns.resolver.Resolver | None = None,
    ):
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._random = random if random is not None else _random.Random()
        self._resolver = resolver if resolver is not None else dns_resolver(nameservers, timeout)
        self._pool = threadpool
        self._cache: dict[tuple[str, str], tuple[float, tuple]] = {}
        self._in_flight: dict[tuple[str, str], list[defer.Deferred]] = {}

    @property
    def resolver(self) -> dns.resolver.Resolver:
        return self._resolver

    # --- one query, cached, with identical concurrent queries sharing one answer ---

    def _lookup(self, name: str, rdtype: str) -> defer.Deferred:
        key = (name.lower().rstrip("."), rdtype)
        now = self._clock.seconds()
        cached = self._cache.get(key)
        if cached is not None:
            expires, records = cached
            if now < expires:
                return defer.succeed(records)
            del self._cache[key]
        waiting = defer.Deferred()
        if key in self._in_flight:
            self._in_flight[key].append(waiting)
            return waiting
        if not self._pool.started:
            return defer.fail(
                RuntimeError("the DNS thread pool must start() before MXResolver.resolve()")
            )
        self._in_flight[key] = [waiting]
        asked = deferToThreadPool(self._reactor, self._pool, _query, self._resolver, name, rdtype)
        asked.addBoth(self._answered, key)
        return waiting

    def _answered(self, result, key: tuple[str, str]) -> None:
        waiters = self._in_flight.pop(key, [])
        if isinstance(result, _Answer):
            ttl = min(result.ttl, CACHE_TTL_CAP)
            if ttl > 0:
                self._remember(key, self._clock.seconds() + ttl, result.records)
            for waiter in waiters:
                waiter.callback(result.records)
        else:
            for waiter in waiters:
                waiter.errback(result)
        # The failure now belongs to the waiters: returning None consumes it here.

    def _remember(self, key: tuple[str, str], expires: float, records: tuple) -> None:
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            now = self._clock.seconds()
            for stale in [k for k, (until, _) in self._cache.items() if until <= now]:
                del self._cache[stale]
            while len(self._cache) >= CACHE_MAX_ENTRIES:
                del self._cache[next(iter(self._cache))]  # the oldest entry
        self._cache[key] = (expires, records)

    # --- the MX logic ---

    def resolve(self, domain: str) -> defer.Deferred:
        domain = domain.lower().rstrip(".")
        return defer.ensureDeferred(self._resolve(domain))

    async def _resolve(self, domain: str) -> list[Destination]:
        exchanges = await self._lookup(domain, "MX")
        if not exchanges:
            # RFC 5321 5.1: no MX records, the domain itself is the implicit MX.
            addresses, problem, temporary = await self._addresses(domain)
            if addresses:
                return [Destination(domain, address, 0) for address in addresses]
            if temporary:
                raise TemporaryDNSError(domain, f"{domain} has no MX and its address {problem}")
            raise NoSuchDomain(domain, f"{domain} has no MX and no A/AAAA record: it takes no mail")
        if len(exchanges) == 1 and _is_root(exchanges[0][1]):
            raise NullMX(domain, f"{domain} accepts no mail (null MX, RFC 7505)")
        hosts = self._ordered_hosts(exchanges)
        if not hosts:
            raise TemporaryDNSError(domain, f"the MX records of {domain} name no usable host")
        results = await defer.gatherResults(
            [defer.ensureDeferred(self._addresses(host)) for host, _ in hosts]
        )
        destinations = []
        problems = []
        for (host, preference), (addresses, problem, _) in zip(hosts, results):
            destinations.extend(Destination(host, address, preference) for address in addresses)
            if not addresses:
                problems.append(f"{host}: {problem}")
        if not destinations:
            raise TemporaryDNSError(
                domain, f"no MX host of {domain} has an address ({'; '.join(problems)})"
            )
        return destinations

    def _ordered_hosts(self, exchanges: tuple) -> list[tuple[str, int]]:
        """MX hosts by preference, equal preferences shuffled; unusable names dropped."""
        by_preference: dict[int, list[str]] = {}
        seen: set[str] = set()
        for preference, host in sorted(exchanges):
            host = host.lower()
            # A root exchange beside real ones, or an address where a name belongs, is a
            # misconfiguration: skip it and use the rest.
            if _is_root(host) or _is_ip_literal(host) or host in seen:
                continue
            seen.add(host)
            by_preference.setdefault(preference, []).append(host)
        ordered = []
        for preference in sorted(by_preference):
            hosts = by_preference[preference]
            self._random.shuffle(hosts)
            ordered.extend((host, preference) for host in hosts)
        return ordered

    async def _addresses(self, host: str) -> tuple[list[str], str | None, bool]:
        """
        IPv4 then IPv6 addresses of host; when there are none, why not, and whether that
        may change on a retry (a temporary DNS failure rather than no such record).
        """
        results = await defer.DeferredList(
            [self._lookup(host, "A"), self._lookup(host, "AAAA")], consumeErrors=True
        )
        addresses: list[str] = []
        problem, temporary = "no A/AAAA record", False
        for succeeded, result in results:
            if succeeded:
                addresses.extend(result)
            elif result.check(TemporaryDNSError):
                problem, temporary = str(result.value), True
            elif result.check(NoSuchDomain):
                if not temporary:
                    problem = "does not exist (NXDOMAIN)"
            else:
                result.raiseException()
        return addresses, problem, temporary
