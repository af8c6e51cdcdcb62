"""Forwarding seals: mail that arrives on port 25 (through the inbound checks) for a
mailbox that forwards elsewhere is queued with an ARC set that dkimpy's arc_verify
accepts against the keys served on loopback, on both store backends."""

from __future__ import annotations

import dkim as dkimpy
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.delivery import dkim
from atollon_mail.delivery.arc import ArcSealer
from atollon_mail.delivery.intake import Intake
from atollon_mail.delivery.mx import dns_resolver
from atollon_mail.delivery.srs import SRS
from atollon_mail.events import Events
from atollon_mail.inbound.checks import InboundChecks
from atollon_mail.inbound.resolver import inbound_resolver
from atollon_mail.smtp.address import Path
from atollon_mail.smtp.session import Envelope, Session
from atollon_mail.store import domains, forwarding
from atollon_mail.store import queue as queue_ops
from tests import builders
from tests.inbound import fixtures
from tests.inbound.fixtures import HOSTNAME, SENDER_IP
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin


def arc_verify(raw: bytes, resolver) -> tuple:
    """dkimpy's verdict on raw's ARC chain, keys from the loopback DNS (blocking)."""
    return dkimpy.arc_verify(raw, dnsfunc=dkim._txt_lookup(resolver))


class ArcSealTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(self.store)  # jane@acme.test
        self.store.run_sync(
            forwarding.change_forwarding, "jane@acme.test", add=["jane@remote.test"], enabled=True
        )
        self.dns = fixtures.start_zones(self, reactor)
        self.resolver = dns_resolver((self.dns.nameserver,), timeout=2)
        self.workers = builders.started_workers(self)
        config = parse_config(
            f"[appliance]\nhostname = {HOSTNAME}\n"
            f"[delivery]\nnameservers = 127.0.0.1:{self.dns.port}\n"
        )
        self.checks = InboundChecks(
            config.inbound, HOSTNAME, inbound_resolver(config), self.workers, self.store, reactor
        )
        sealer = ArcSealer(self.store, HOSTNAME, reactor, self.workers.cpu)
        self.intake = Intake(self.store, Events(), srs=SRS(b"arc test secret"), sealer=sealer)

    def add_key(self, algorithm: str = "rsa", selector: str = "atollon"):
        private, public = (
            fixtures.key("acme") if algorithm == "rsa" else dkim.generate_key(algorithm)
        )
        self.store.run_sync(domains.add_dkim_key, "acme.test", selector, algorithm, private, public)

    @defer.inlineCallbacks
    def receive(self, raw: bytes) -> defer.Deferred:
        """raw received on port 25 for jane (checked as the MX policy does), forwarded:
        the copy queued for jane@remote.test."""
        session = Session("smtp", peer=SENDER_IP, helo="mx.client.test", esmtp=True)
        envelope = Envelope(
            sender=Path("bounces", "sender.test"), paths=[Path("jane", "acme.test")]
        )
        data = fixtures.received(raw)
        decision = yield self.checks.check(session, envelope, data)
        recipient = yield self.intake.resolve_recipient("jane", "acme.test")
        stored = yield self.intake.accept(
            "bounces@sender.test", [recipient], decision.prepared(data), verdict=decision.verdict
        )
        raws = self.store.run_sync(queue_ops.outgoing_raw, [stored.id])
        return raws[stored.id]

    @defer.inlineCallbacks
    def test_forwarded_mail_carries_a_seal_the_next_hop_verifies(self):
        self.add_key()
        raw = fixtures.signed(fixtures.message())
        queued = yield self.receive(raw)
        self.assertTrue(queued.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=acme.test;"))
        validation, sets, reason = yield threads.deferToThread(arc_verify, queued, self.resolver)
        self.assertEqual((validation, reason), (b"pass", "success"))
        (latest,) = sets
        self.assertEqual(latest["as-domain"], b"acme.test")
        # The set carries what our checks found on arrival.
        self.assertIn(b"mx.acme.test;", latest["aar-value"])
        self.assertIn(b"dkim=pass header.d=sender.test", latest["aar-value"])
        self.assertIn(b"dmarc=pass", latest["aar-value"])
        # The author's own signature goes on intact.
        good = yield threads.deferToThread(
            dkimpy.verify, queued, dnsfunc=dkim._txt_lookup(self.resolver)
        )
        self.assertTrue(good)

    @defer.inlineCallbacks
    def test_without_an_rsa_key_the_copy_goes_unsealed(self):
        self.add_key("ed25519", "ed")
        queued = yield self.receive(fixtures.signed(fixtures.message()))
        self.assertNotIn(b"ARC-Seal", queued)
        self.assertTrue(queued.startswith(b"Delivered-To: jane@acme.test\r\n"))

    @defer.inlineCallbacks
    def test_without_our_results_there_is_no_chain_to_start(self):
        self.add_key()
        recipient = yield self.intake.resolve_recipient("jane", "acme.test")
        stored = yield self.intake.accept("a@sender.test", [recipient], fixtures.message())
        queued = self.store.run_sync(queue_ops.outgoing_raw, [stored.id])[stored.id]
        self.assertNotIn(b"ARC-Seal", queued)


class SqliteArcSealTests(ArcSealTests, SqliteStoreMixin, unittest.TestCase):
    pass


class PostgresArcSealTests(ArcSealTests, PostgresStoreMixin, unittest.TestCase):
    pass
