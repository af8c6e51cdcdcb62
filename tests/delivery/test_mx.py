"""MX resolution against an authoritative DNS server on loopback."""

from __future__ import annotations

import random
import socket

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from atollon_mail.config import HostPort
from atollon_mail.delivery.mx import (
    CACHE_TTL_CAP,
    Destination,
    MXResolver,
    NoSuchDomain,
    NullMX,
    TemporaryDNSError,
    dns_resolver,
)
from atollon_mail.interfaces import IMXResolver
from atollon_mail.workers import Workers
from tests.dnsserver import start_dns_server

ZONES = {
    "example.test": {
        "@": [("MX", 20, "mx2.example.test"), ("MX", 10, "mx1.example.test")],
        "mx1": [("AAAA", "::11"), ("A", "127.0.0.11"), ("A", "127.0.0.12")],
        "mx2": [("A", "127.0.0.13")],
    },
    "equal.test": {
        "@": [
            ("MX", 10, "a.equal.test"),
            ("MX", 10, "b.equal.test"),
            ("MX", 10, "c.equal.test"),
            ("MX", 5, "first.equal.test"),
        ],
        "a": [("A", "127.0.1.1")],
        "b": [("A", "127.0.1.2")],
        "c": [("A", "127.0.1.3")],
        "first": [("A", "127.0.1.4")],
    },
    "implicit.test": {"@": [("A", "127.0.2.1"), ("AAAA", "::21"), ("TXT", "v=spf1 -all")]},
    "nomail.test": {"@": [("TXT", "v=spf1 -all")]},
    "null.test": {"@": [("MX", 0, ".")]},
    "dangling.test": {
        "@": [("MX", 10, "gone.dangling.test"), ("MX", 20, "bare.dangling.test")],
        "bare": [("TXT", "no address here")],
    },
    "partial.test": {
        "@": [("MX", 10, "sick.partial.test"), ("MX", 20, "well.partial.test")],
        "sick": [("A", "127.0.3.1")],
        "well": [("A", "127.0.3.2")],
    },
    "servfail.test": {"@": [("MX", 10, "mx.servfail.test")], "mx": [("A", "127.0.4.1")]},
    "short.test": {"@": [(30, "MX", 10, "mx.short.test")], "mx": [(30, "A", "127.0.5.1")]},
    "long.test": {"@": [(86400, "MX", 10, "mx.long.test")], "mx": [(86400, "A", "127.0.6.1")]},
}


def closed_udp_port() -> int:
    """A loopback port nothing listens on (bound, noted, released)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


class MXResolverTests(unittest.TestCase):
    def setUp(self):
        self.dns = start_dns_server(reactor, ZONES)
        self.addCleanup(self.dns.stop)
        self.clock = task.Clock()
        self.resolver = self.make_resolver()

    def make_resolver(self, nameservers=None, timeout=2.0, **kwargs) -> MXResolver:
        kwargs.setdefault("clock", self.clock)
        workers = Workers(reactor)
        workers.startService()
        self.addCleanup(workers.stopService)
        return MXResolver(
            reactor,
            workers.dns,
            nameservers=(self.dns.nameserver,) if nameservers is None else nameservers,
            timeout=timeout,
            **kwargs,
        )

    def test_provides_interface(self):
        verifyObject(IMXResolver, self.resolver)

    @defer.inlineCallbacks
    def test_preference_order_ipv4_before_ipv6(self):
        destinations = yield self.resolver.resolve("example.test")
        self.assertEqual(
            destinations,
            [
                Destination("mx1.example.test", "127.0.0.11", 10),
                Destination("mx1.example.test", "127.0.0.12", 10),
                Destination("mx1.example.test", "::11", 10),
                Destination("mx2.example.test", "127.0.0.13", 20),
            ],
        )

    @defer.inlineCallbacks
    def test_names_are_case_and_dot_insensitive(self):
        destinations = yield self.resolver.resolve("Example.TEST.")
        self.assertEqual(destinations[0].host, "mx1.example.test")

    @defer.inlineCallbacks
    def test_equal_preferences_shuffled_with_injected_random(self):
        resolver = self.make_resolver(random=random.Random(7))
        expected = ["a.equal.test", "b.equal.test", "c.equal.test"]
        random.Random(7).shuffle(expected)
        destinations = yield resolver.resolve("equal.test")
        self.assertEqual([d.host for d in destinations], ["first.equal.test", *expected])

    @defer.inlineCallbacks
    def test_equal_preferences_take_turns(self):
        orders = set()
        for _ in range(30):
            destinations = yield self.resolver.resolve("equal.test")
            hosts = [d.host for d in destinations]
            self.assertEqual(hosts[0], "first.equal.test")  # the lower preference stays first
            self.assertEqual([d.preference for d in destinations], [5, 10, 10, 10])
            orders.add(tuple(hosts[1:]))
        self.assertGreater(len(orders), 1)

    @defer.inlineCallbacks
    def test_implicit_mx_is_the_domain_itself(self):
        destinations = yield self.resolver.resolve("implicit.test")
        self.assertEqual(
            destinations,
            [
                Destination("implicit.test", "127.0.2.1", 0),
                Destination("implicit.test", "::21", 0),
            ],
        )

    @defer.inlineCallbacks
    def test_no_mx_and_no_address_is_permanent(self):
        failure = yield self.assertFailure(self.resolver.resolve("nomail.test"), NoSuchDomain)
        self.assertIn("no MX and no A/AAAA", str(failure))
        self.assertEqual(failure.enhanced_status, "5.1.2")

    @defer.inlineCallbacks
    def test_null_mx(self):
        failure = yield self.assertFailure(self.resolver.resolve("null.test"), NullMX)
        self.assertEqual((failure.smtp_code, failure.enhanced_status), (556, "5.1.10"))
        self.assertIn("null.test", str(failure))

    @defer.inlineCallbacks
    def test_nxdomain(self):
        failure = yield self.assertFailure(
            self.resolver.resolve("nowhere.example.test"), NoSuchDomain
        )
        self.assertIn("NXDOMAIN", str(failure))
        self.assertEqual(failure.domain, "nowhere.example.test")

    @defer.inlineCallbacks
    def test_servfail_is_temporary(self):
        self.dns.fail("servfail.test", "SERVFAIL")
        failure = yield self.assertFailure(
            self.resolver.resolve("servfail.test"), TemporaryDNSError
        )
        self.assertIn("SERVFAIL", str(failure))
        self.assertTrue(failure.enhanced_status.startswith("4."))

    @defer.inlineCallbacks
    def test_unreachable_nameserver_is_temporary(self):
        resolver = self.make_resolver(
            nameservers=(HostPort("127.0.0.1", closed_udp_port()),), timeout=0.5
        )
        yield self.assertFailure(resolver.resolve("example.test"), TemporaryDNSError)

    @defer.inlineCallbacks
    def test_silent_nameserver_times_out_without_blocking_the_reactor(self):
        self.dns.fail("example.test", "TIMEOUT")
        resolver = self.make_resolver(timeout=0.5)
        resolving = resolver.resolve("example.test")
        self.assertNoResult(resolving)
        ticks = []
        yield task.deferLater(reactor, 0.1, ticks.append, "tick")
        self.assertEqual(ticks, ["tick"])  # the reactor ran while the query waited
        self.assertNoResult(resolving)
        failure = yield self.assertFailure(resolving, TemporaryDNSError)
        self.assertIn("timed out", str(failure))

    def test_resolve_returns_before_dns_answers(self):
        resolving = self.resolver.resolve("example.test")
        self.assertNoResult(resolving)
        return resolving

    @defer.inlineCallbacks
    def test_mx_hosts_without_addresses_is_temporary(self):
        failure = yield self.assertFailure(
            self.resolver.resolve("dangling.test"), TemporaryDNSError
        )
        message = str(failure)
        self.assertIn("gone.dangling.test: does not exist (NXDOMAIN)", message)
        self.assertIn("bare.dangling.test: no A/AAAA record", message)

    @defer.inlineCallbacks
    def test_host_that_fails_is_skipped(self):
        self.dns.fail("sick.partial.test", "SERVFAIL")
        destinations = yield self.resolver.resolve("partial.test")
        self.assertEqual(destinations, [Destination("well.partial.test", "127.0.3.2", 20)])

    @defer.inlineCallbacks
    def test_all_hosts_failing_says_why(self):
        self.dns.fail("sick.partial.test", "SERVFAIL")
        self.dns.fail("well.partial.test", "SERVFAIL")
        failure = yield self.assertFailure(self.resolver.resolve("partial.test"), TemporaryDNSError)
        self.assertIn("sick.partial.test", str(failure))
        self.assertIn("SERVFAIL", str(failure))

    @defer.inlineCallbacks
    def test_cache_answers_without_a_query_until_the_ttl_passes(self):
        first = yield self.resolver.resolve("short.test")
        asked = len(self.dns.queries)
        self.assertEqual(self.dns.query_count("short.test", "MX"), 1)
        self.clock.advance(29)
        second = yield self.resolver.resolve("short.test")
        self.assertEqual(second, first)
        self.assertEqual(len(self.dns.queries), asked)
        self.clock.advance(2)
        yield self.resolver.resolve("short.test")
        self.assertEqual(self.dns.query_count("short.test", "MX"), 2)
        self.assertEqual(self.dns.query_count("mx.short.test", "A"), 2)

    @defer.inlineCallbacks
    def test_cache_sees_changes_after_expiry(self):
        yield self.resolver.resolve("short.test")
        self.dns.set_records("mx.short.test", [("A", "127.0.5.9")])
        cached = yield self.resolver.resolve("short.test")
        self.assertEqual(cached[0].address, "127.0.5.1")
        self.clock.advance(31)
        fresh = yield self.resolver.resolve("short.test")
        self.assertEqual(fresh[0].address, "127.0.5.9")

    @defer.inlineCallbacks
    def test_cache_keeps_answers_at_most_the_cap(self):
        yield self.resolver.resolve("long.test")
        self.clock.advance(CACHE_TTL_CAP - 1)
        yield self.resolver.resolve("long.test")
        self.assertEqual(self.dns.query_count("long.test", "MX"), 1)
        self.clock.advance(2)
        yield self.resolver.resolve("long.test")
        self.assertEqual(self.dns.query_count("long.test", "MX"), 2)

    @defer.inlineCallbacks
    def test_failures_are_not_cached(self):
        self.dns.fail("servfail.test", "SERVFAIL")
        yield self.assertFailure(self.resolver.resolve("servfail.test"), TemporaryDNSError)
        self.dns.fail("servfail.test", None)
        destinations = yield self.resolver.resolve("servfail.test")
        self.assertEqual(destinations, [Destination("mx.servfail.test", "127.0.4.1", 10)])

    @defer.inlineCallbacks
    def test_concurrent_lookups_share_one_query(self):
        results = yield defer.gatherResults(
            [self.resolver.resolve("example.test") for _ in range(5)]
        )
        self.assertEqual(len({tuple(result) for result in results}), 1)
        self.assertEqual(self.dns.query_count("example.test", "MX"), 1)
        self.assertEqual(self.dns.query_count("mx1.example.test", "A"), 1)

    def test_resolve_before_start_fails_clearly(self):
        resolver = MXResolver(reactor, Workers(reactor).dns, nameservers=(self.dns.nameserver,))
        failure = self.failureResultOf(resolver.resolve("example.test"), RuntimeError)
        self.assertIn("start()", str(failure.value))


class DNSResolverTests(unittest.TestCase):
    def test_configured_nameservers(self):
        resolver = dns_resolver((HostPort("127.0.0.1", 5353), HostPort("::1", 53)), timeout=3)
        self.assertEqual(
            [(server.address, server.port) for server in resolver.nameservers],
            [("127.0.0.1", 5353), ("::1", 53)],
        )
        self.assertEqual(resolver.lifetime, 3)
        self.assertIsNone(resolver.cache)
