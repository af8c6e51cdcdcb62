"""Sender authentication against zones served on loopback: SPF for both identities,
every DKIM signature, DMARC policies and alignment, ARC, trusted forwarders, and the
Authentication-Results header that says it all (read back with authres)."""

from __future__ import annotations

import authres
import authres.core
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from atollon_mail.delivery.mx import dns_resolver
from atollon_mail.inbound.authentication import (
    Forwarder,
    SpfResults,
    aligned,
    authenticate,
    helo_domain,
    organizational_domain,
)
from tests.inbound import fixtures
from tests.inbound.fixtures import FORWARDER_IP, HOSTNAME, SENDER_IP, STRANGER_IP


def results(header: str) -> dict[str, list]:
    """The Authentication-Results value parsed: method -> its results, in order."""
    parsed = authres.core.AuthenticationResultsHeader.parse_value(authres.all_features(), header)
    found: dict[str, list] = {}
    for result in parsed.results:
        found.setdefault(result.method, []).append(result)
    return found


def prop(result, kind: str, name: str):
    for found in result.properties:
        if found.type == kind and found.name == name:
            return str(found.value)
    return None


class OrganizationalDomainTests(unittest.TestCase):
    def test_the_public_suffix_list_decides_where_the_organization_starts(self):
        self.assertEqual(organizational_domain("mail.acme.co.uk"), "acme.co.uk")
        self.assertEqual(organizational_domain("a.b.example.com"), "example.com")
        self.assertEqual(organizational_domain("Mail.Acme.Test."), "acme.test")
        self.assertEqual(organizational_domain("co.uk"), "co.uk")

    def test_relaxed_alignment_is_the_same_organization_strict_the_same_name(self):
        self.assertTrue(aligned("mail.acme.co.uk", "acme.co.uk", strict=False))
        self.assertFalse(aligned("mail.acme.co.uk", "acme.co.uk", strict=True))
        self.assertFalse(aligned("other.co.uk", "acme.co.uk", strict=False))

    def test_helo_names_that_are_no_domain(self):
        self.assertEqual(helo_domain("MX.Client.Test."), "mx.client.test")
        for name in (None, "", "localhost", "[192.0.2.1]", "192.0.2.1", "bad name.test"):
            self.assertIsNone(helo_domain(name), name)


class AuthenticateTests(unittest.TestCase):
    def setUp(self):
        self.dns = fixtures.start_zones(self, reactor)
        self.resolver = dns_resolver((self.dns.nameserver,), timeout=2)

    def check(
        self,
        raw: bytes,
        client_ip: str = SENDER_IP,
        helo: str | None = "mx.client.test",
        mail_from: str = "bounces@sender.test",
        forwarder: Forwarder | None = None,
        spf_results: SpfResults | None = None,
    ) -> defer.Deferred:
        return threads.deferToThread(
            authenticate,
            fixtures.received(raw, helo or "unknown", client_ip),
            self.resolver,
            HOSTNAME,
            client_ip,
            helo,
            mail_from,
            forwarder,
            spf_results,
        )

    @defer.inlineCallbacks
    def test_a_signature_the_dns_publishes_passes_dkim_and_dmarc(self):
        found = yield self.check(fixtures.signed(fixtures.message()))
        self.assertEqual([c.result for c in found.dkim], ["pass"])
        self.assertEqual(found.dmarc.result, "pass")
        self.assertEqual(found.dmarc.aligned_by, "dkim")
        self.assertEqual(found.dmarc.policy, "reject")
        said = results(found.header)
        self.assertTrue(found.header.startswith(f"{HOSTNAME};"))
        self.assertEqual(said["dkim"][0].result, "pass")
        self.assertEqual(prop(said["dkim"][0], "header", "d"), "sender.test")
        self.assertEqual(said["dmarc"][0].result, "pass")
        self.assertEqual(prop(said["dmarc"][0], "header", "from"), "sender.test")
        self.assertEqual([r.result for r in said["spf"]], ["pass", "pass"])
        self.assertEqual(prop(said["spf"][0], "smtp", "mailfrom"), "bounces@sender.test")
        self.assertEqual(prop(said["spf"][1], "smtp", "helo"), "mx.client.test")
        self.assertEqual(said["arc"][0].result, "none")
        self.assertIn("signed by sender.test", found.notes)

    @defer.inlineCallbacks
    def test_every_signature_is_verified(self):
        # A good signature below one whose key is published nowhere: both are reported,
        # and the good one is enough for DMARC.
        raw = fixtures.signed(fixtures.message())
        raw = fixtures.signed(raw, "client.test", "gone", name="other")
        found = yield self.check(raw)
        self.assertEqual(
            [(c.result, c.domain) for c in found.dkim],
            [("fail", "client.test"), ("pass", "sender.test")],
        )
        self.assertEqual(found.dmarc.result, "pass")
        self.assertEqual([r.result for r in results(found.header)["dkim"]], ["fail", "pass"])
        self.assertIn("a signature of client.test is not valid", found.notes)

    @defer.inlineCallbacks
    def test_a_body_changed_after_signing_fails(self):
        raw = fixtures.signed(fixtures.message()).replace(b"Hello Jane.", b"Hello Joan.")
        found = yield self.check(raw, client_ip=STRANGER_IP)
        self.assertEqual([c.result for c in found.dkim], ["fail"])
        self.assertEqual(found.dmarc.result, "fail")

    @defer.inlineCallbacks
    def test_spf_alone_aligns_when_the_sender_is_the_from_domain(self):
        found = yield self.check(fixtures.message(), mail_from="alice@sender.test")
        self.assertEqual(found.dkim, ())
        self.assertEqual(found.dmarc.result, "pass")
        self.assertEqual(found.dmarc.aligned_by, "spf")
        self.assertEqual(results(found.header)["dkim"][0].result, "none")
        self.assertIn("sent from a server sender.test names (SPF)", found.notes)

    @defer.inlineCallbacks
    def test_a_forged_from_of_a_reject_domain_fails_dmarc(self):
        found = yield self.check(
            fixtures.message("The Bank <service@bank.test>"),
            client_ip=STRANGER_IP,
            mail_from="x@client.test",
        )
        self.assertEqual(found.mailfrom.result, "none")
        self.assertEqual(found.dmarc.result, "fail")
        self.assertEqual(found.dmarc.policy, "reject")
        said = results(found.header)["dmarc"][0]
        self.assertEqual((said.result, prop(said, "policy", "dmarc")), ("fail", "reject"))
        self.assertIn(
            "could not verify the sender: not sent by bank.test, which asks to reject (DMARC)",
            found.notes,
        )

    @defer.inlineCallbacks
    def test_a_subdomain_takes_the_organizational_domains_sp_policy(self):
        found = yield self.check(
            fixtures.message("alerts@mail.bank.test"), client_ip=STRANGER_IP, mail_from=""
        )
        self.assertEqual((found.dmarc.result, found.dmarc.policy), ("fail", "quarantine"))
        self.assertEqual(found.dmarc.from_domain, "mail.bank.test")

    @defer.inlineCallbacks
    def test_strict_spf_alignment_wants_the_same_domain(self):
        self.dns.set_records("_dmarc.sender.test", [("TXT", "v=DMARC1; p=reject; aspf=s")])
        found = yield self.check(fixtures.message(), mail_from="news@mail.sender.test")
        self.assertEqual(found.mailfrom.result, "pass")
        self.assertEqual(found.dmarc.result, "fail")
        self.dns.set_records("_dmarc.sender.test", [("TXT", "v=DMARC1; p=reject")])
        found = yield self.check(fixtures.message(), mail_from="news@mail.sender.test")
        self.assertEqual(found.dmarc.result, "pass")

    @defer.inlineCallbacks
    def test_a_domain_without_a_record_gets_none(self):
        found = yield self.check(
            fixtures.message("someone@client.test"),
            client_ip=STRANGER_IP,
            helo="mx.partner.test",
            mail_from="",
        )
        self.assertEqual(found.dmarc.result, "none")
        self.assertIsNone(found.dmarc.policy)
        self.assertIn("could not verify the sender", found.notes)

    @defer.inlineCallbacks
    def test_a_null_sender_is_checked_as_postmaster_at_the_helo_name(self):
        found = yield self.check(fixtures.message(), mail_from="", helo="mx.client.test")
        self.assertEqual(found.mailfrom.domain, "mx.client.test")
        self.assertEqual(found.mailfrom.result, "pass")
        spf = results(found.header)["spf"]
        self.assertEqual(prop(spf[0], "smtp", "mailfrom"), "postmaster@mx.client.test")

    @defer.inlineCallbacks
    def test_a_helo_without_a_domain_has_no_spf(self):
        found = yield self.check(fixtures.signed(fixtures.message()), helo="localhost")
        self.assertEqual(found.spf[1].result, "none")
        self.assertEqual(found.dmarc.result, "pass")

    @defer.inlineCallbacks
    def test_a_dns_failure_is_a_temporary_error(self):
        self.dns.fail("_dmarc.bank.test", "SERVFAIL")
        found = yield self.check(fixtures.message("service@bank.test"), client_ip=STRANGER_IP)
        self.assertEqual(found.dmarc.result, "temperror")
        self.assertTrue(found.temporary_error)
        self.assertIn("could not verify the sender now: a DNS lookup failed", found.notes)

    @defer.inlineCallbacks
    def test_a_key_that_cannot_be_fetched_is_a_temporary_error(self):
        self.dns.fail("sel._domainkey.sender.test", "SERVFAIL")
        found = yield self.check(fixtures.signed(fixtures.message()), client_ip=STRANGER_IP)
        self.assertEqual([c.result for c in found.dkim], ["temperror"])

    @defer.inlineCallbacks
    def test_recent_spf_results_are_kept_for_a_minute(self):
        clock = task.Clock()
        kept = SpfResults(clock)
        raw = fixtures.message()
        found = yield self.check(raw, spf_results=kept)
        self.assertEqual([c.result for c in found.spf], ["pass", "pass"])
        asked = (
            self.dns.query_count("sender.test", "TXT"),
            self.dns.query_count("mx.client.test", "TXT"),
        )
        self.assertEqual(asked, (1, 1))
        # The record changes: the same client, sender and HELO keep their result...
        self.dns.set_records("sender.test", [("TXT", "v=spf1 -all")])
        found = yield self.check(raw, spf_results=kept)
        self.assertEqual(found.mailfrom.result, "pass")
        self.assertEqual(self.dns.query_count("sender.test", "TXT"), 1)
        self.assertEqual(self.dns.query_count("mx.client.test", "TXT"), 1)
        # ...another sender, client or HELO name is evaluated...
        found = yield self.check(raw, mail_from="other@sender.test", spf_results=kept)
        self.assertEqual(found.mailfrom.result, "fail")
        found = yield self.check(raw, client_ip=STRANGER_IP, spf_results=kept)
        self.assertEqual(found.mailfrom.result, "fail")
        # ...and after a minute the first one is too.
        clock.advance(61)
        found = yield self.check(raw, spf_results=kept)
        self.assertEqual(found.mailfrom.result, "fail")
        self.assertEqual(self.dns.query_count("mx.client.test", "TXT"), 3)

    @defer.inlineCallbacks
    def test_a_temporary_spf_error_is_not_kept(self):
        kept = SpfResults(task.Clock())
        self.dns.fail("sender.test", "SERVFAIL")
        found = yield self.check(fixtures.message(), spf_results=kept)
        self.assertEqual(found.mailfrom.result, "temperror")
        self.dns.fail("sender.test", None)
        found = yield self.check(fixtures.message(), spf_results=kept)
        self.assertEqual(found.mailfrom.result, "pass")

    @defer.inlineCallbacks
    def test_the_oldest_spf_results_go_first(self):
        kept = SpfResults(task.Clock(), size=2)
        for sender in ("a@sender.test", "b@sender.test", "c@sender.test", "b@sender.test"):
            result = yield threads.deferToThread(
                kept.evaluate, self.resolver, SENDER_IP, sender, "mx.client.test"
            )
            self.assertEqual(result, "pass")
        self.assertEqual(self.dns.query_count("sender.test", "TXT"), 3)
        yield threads.deferToThread(
            kept.evaluate, self.resolver, SENDER_IP, "a@sender.test", "mx.client.test"
        )
        self.assertEqual(self.dns.query_count("sender.test", "TXT"), 4)

    @defer.inlineCallbacks
    def test_a_verified_arc_chain_is_reported_with_its_sealer(self):
        raw = fixtures.arc_sealed(fixtures.message(), "spf=pass smtp.mailfrom=alice@sender.test")
        found = yield self.check(raw, client_ip=FORWARDER_IP, helo="mx.partner.test")
        self.assertEqual((found.arc.result, found.arc.sealer), ("pass", "partner.test"))
        self.assertEqual(found.arc.instance, 1)
        arc = results(found.header)["arc"][0]
        self.assertEqual(arc.result, "pass")
        self.assertEqual(prop(arc, "smtp", "remote-ip"), FORWARDER_IP)
        self.assertIn("forwarded by partner.test (ARC)", found.notes)
        # Not a trusted forwarder: its seal changes nothing about DMARC.
        self.assertEqual(found.dmarc.result, "fail")

    @defer.inlineCallbacks
    def test_a_broken_arc_chain_fails(self):
        raw = fixtures.arc_sealed(fixtures.message(), "dmarc=pass header.from=sender.test")
        raw = raw.replace(b"Subject: figures", b"Subject: changed")
        found = yield self.check(raw, client_ip=FORWARDER_IP)
        self.assertEqual(found.arc.result, "fail")

    @defer.inlineCallbacks
    def test_a_trusted_forwarders_verified_seal_vouches_for_the_sender(self):
        # The forwarder passed the message on from its own address: SPF of the hop fails
        # for sender.test, and the footer it added broke the signature.
        raw = fixtures.signed(fixtures.message()) + b"-- \r\nforwarded\r\n"
        raw = fixtures.arc_sealed(
            raw, "dkim=pass header.d=sender.test; dmarc=pass header.from=sender.test"
        )
        forwarder = Forwarder("mx.partner.test", ("partner.test",))
        found = yield self.check(
            raw, client_ip=FORWARDER_IP, helo="mx.partner.test", forwarder=forwarder
        )
        self.assertEqual(found.mailfrom.result, "fail")
        self.assertFalse(found.mailfrom.counted)
        self.assertEqual([c.result for c in found.dkim], ["fail"])
        self.assertEqual((found.dmarc.result, found.dmarc.aligned_by), ("pass", "forwarder"))
        self.assertEqual(found.vouched_by, "arc")
        said = results(found.header)
        self.assertEqual(said["spf"][0].result, "fail")
        self.assertEqual(said["dmarc"][0].result, "pass")
        # authres reads no comments back: the header's text says why.
        self.assertIn("spf=fail (not counted: forwarded by mx.partner.test, trusted)", found.header)
        self.assertIn(
            "dmarc=pass (forwarded by mx.partner.test, trusted: its ARC seal says dmarc=pass)",
            found.header,
        )
        self.assertIn("forwarded by mx.partner.test, trusted", found.notes)

    @defer.inlineCallbacks
    def test_a_trusted_forwarders_own_results_vouch_without_arc(self):
        raw = (
            b"Authentication-Results: mx.partner.test; spf=pass smtp.mailfrom=alice@sender.test\r\n"
            + fixtures.message()
        )
        forwarder = Forwarder("mx.partner.test", ("partner.test",))
        found = yield self.check(raw, client_ip=FORWARDER_IP, forwarder=forwarder)
        self.assertEqual(found.dmarc.result, "pass")
        self.assertEqual(found.vouched_by, "authentication-results")
        self.assertIn("its Authentication-Results says spf=pass", found.header)

    @defer.inlineCallbacks
    def test_results_of_someone_else_vouch_for_nothing(self):
        raw = (
            b"Authentication-Results: mx.stranger.test; dmarc=pass header.from=sender.test\r\n"
            + fixtures.message()
        )
        forwarder = Forwarder("mx.partner.test", ("partner.test",))
        found = yield self.check(raw, client_ip=FORWARDER_IP, forwarder=forwarder)
        self.assertEqual(found.dmarc.result, "fail")
        self.assertIsNone(found.vouched_by)
        # Not vouched for by anyone, and the failing SPF of the hop does not count.
        self.assertEqual(found.mailfrom.result, "fail")

    @defer.inlineCallbacks
    def test_results_about_another_domain_vouch_for_nothing(self):
        raw = (
            b"Authentication-Results: mx.partner.test; dmarc=pass header.from=other.test\r\n"
            + fixtures.message()
        )
        forwarder = Forwarder("mx.partner.test", ("partner.test",))
        found = yield self.check(raw, client_ip=FORWARDER_IP, forwarder=forwarder)
        self.assertEqual(found.dmarc.result, "fail")
