"""The inbound checks' resolver: answers kept in front of dnspython's cache until they
expire, the oldest dropped first."""

from __future__ import annotations

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.delivery.mx import dns_resolver
from atollon_mail.inbound.resolver import AnswersKept, inbound_resolver
from tests.inbound import fixtures


class AnswersKeptTests(unittest.TestCase):
    def setUp(self):
        self.dns = fixtures.start_zones(self, reactor)

    def resolve(self, resolver, name: str, kind: str = "TXT") -> defer.Deferred:
        return threads.deferToThread(
            resolver.resolve, name, kind, raise_on_no_answer=False, search=False
        )

    @defer.inlineCallbacks
    def test_an_answer_is_asked_once_until_it_expires(self):
        config = parse_config(f"[delivery]\nnameservers = 127.0.0.1:{self.dns.port}\n")
        resolver = inbound_resolver(config)
        self.assertIsInstance(resolver, AnswersKept)
        first = yield self.resolve(resolver, "sender.test.")
        again = yield self.resolve(resolver, "Sender.Test.")
        self.assertIs(again, first)
        self.assertEqual(self.dns.query_count("sender.test", "TXT"), 1)
        # A record with no time to live is asked for every time.
        self.dns.set_records("mail.sender.test", [(0, "TXT", "v=spf1 -all")])
        for _ in range(2):
            answer = yield self.resolve(resolver, "mail.sender.test.")
            self.assertEqual(answer.rrset[0].strings, (b"v=spf1 -all",))
        self.assertEqual(self.dns.query_count("mail.sender.test", "TXT"), 2)

    @defer.inlineCallbacks
    def test_the_oldest_answers_go_first(self):
        resolver = AnswersKept(configure=False, kept=2)  # and no cache of dnspython's
        resolver.nameservers = dns_resolver((self.dns.nameserver,)).nameservers
        for name in ("sender.test.", "bank.test.", "shop.test.", "bank.test.", "sender.test."):
            yield self.resolve(resolver, name)
        counts = [self.dns.query_count(name, "TXT") for name in ("sender.test", "bank.test")]
        self.assertEqual(counts, [2, 1])
