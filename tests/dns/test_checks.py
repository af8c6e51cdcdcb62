"""The live checks, against the test DNS server on loopback: each passes and fails."""

from __future__ import annotations

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from atollon_mail.delivery import dkim
from atollon_mail.dns.checks import FAIL, PASS, WARN, failed, run_checks
from atollon_mail.dns.lookup import Lookups, spf_evaluate
from atollon_mail.store.records import PublishedKey
from tests.dns.fixtures import (
    HOSTNAME,
    IPV4,
    IPV6,
    OTHER_MX,
    appliance_zones,
    make_config,
    primary_subject,
    primary_zone,
    reverse,
    secondary_subject,
    secondary_zone,
)
from tests.dnsserver import start_dns_server


class ChecksTestBase(unittest.TestCase):
    def setUp(self):
        _, self.public = dkim.generate_key("ed25519")
        _, self.other_public = dkim.generate_key("ed25519")
        zones = appliance_zones()
        zones["good.test"] = primary_zone(dkim.txt_value("ed25519", self.public))
        zones["acme.test"] = secondary_zone(dkim.txt_value("ed25519", self.public))
        self.dns = start_dns_server(reactor, zones)
        self.addCleanup(self.dns.stop)
        self.config = make_config(self.dns.nameserver)
        self.good_key = PublishedKey("good.test", "atollon", "ed25519", self.public)
        self.acme_key = PublishedKey("acme.test", "atollon", "ed25519", self.public)

    def check(self, subject=None, config=None):
        """{check: result} for subject (default: good.test), checked in a thread."""
        subject = subject or primary_subject((self.good_key,))
        config = config or self.config

        def blocking():
            lookups = Lookups.using(config.delivery.nameservers, timeout=5)
            return run_checks(subject, config, lookups)

        return threads.deferToThread(blocking).addCallback(
            lambda results: {result.check: result for result in results}
        )

    @defer.inlineCallbacks
    def assertCheck(self, name, status, fragment, subject=None, config=None):
        results = yield self.check(subject, config)
        self.assertIn(name, results, sorted(results))
        result = results[name]
        self.assertEqual(result.status, status, result)
        self.assertIn(fragment, result.reason)
        return result


class AllGoodTests(ChecksTestBase):
    @defer.inlineCallbacks
    def test_primary_mode_all_pass(self):
        results = yield self.check()
        self.assertEqual(
            list(results),
            [
                "mx good.test",
                f"address {HOSTNAME} A",
                f"address {HOSTNAME} AAAA",
                f"ptr {IPV4}",
                f"ptr {IPV6}",
                "spf good.test",
                "spf lookups good.test",
                "dkim atollon._domainkey.good.test",
                "dmarc good.test",
            ],
        )
        self.assertEqual({r.check: r.status for r in results.values() if r.status != PASS}, {})
        self.assertIn(f"the MX of good.test is {HOSTNAME}", results["mx good.test"].reason)

    @defer.inlineCallbacks
    def test_secondary_mode_all_pass(self):
        subject = secondary_subject((self.acme_key,))
        results = yield self.check(subject)
        self.assertEqual(
            list(results),
            [
                "mx crm.acme.test",
                f"address {HOSTNAME} A",
                f"address {HOSTNAME} AAAA",
                f"ptr {IPV4}",
                f"ptr {IPV6}",
                "spf acme.test",
                "spf lookups acme.test",
                "dkim atollon._domainkey.acme.test",
                "dmarc acme.test",
            ],
        )
        self.assertEqual(failed(results.values()), [])
        self.assertEqual({r.status for r in results.values()}, {PASS})
        # acme.test's own MX is the other provider's: not ours to check.
        self.assertNotIn("mx acme.test", results)

    @defer.inlineCallbacks
    def test_primary_domain_kept_for_a_secondary_has_no_mx_check(self):
        subject = secondary_subject((self.acme_key,))
        subject = type(subject)(
            domain=type(subject.domain)(3, "acme.test", "primary", False),
            hosted=False,
            sending_domains=("acme.test",),
            dkim_keys=(self.acme_key,),
            forwards=(),
            secondaries=("crm.acme.test",),
        )
        results = yield self.check(subject)
        self.assertNotIn("mx acme.test", results)
        self.assertEqual({r.status for r in results.values()}, {PASS})

    @defer.inlineCallbacks
    def test_pyspf_asks_the_configured_server(self):
        def evaluate():
            lookups = Lookups.using(self.config.delivery.nameservers, timeout=5)
            return spf_evaluate(lookups.resolver, IPV4, "postmaster@good.test", HOSTNAME)

        before = self.dns.query_count("good.test", "TXT")
        result = yield threads.deferToThread(evaluate)
        self.assertEqual(result[0], "pass")
        self.assertGreater(self.dns.query_count("good.test", "TXT"), before)


class MxTests(ChecksTestBase):
    def test_missing(self):
        self.dns.set_records("good.test", [("TXT", "v=spf1 mx -all")])
        return self.assertCheck("mx good.test", FAIL, "good.test has no MX record")

    def test_domain_does_not_exist(self):
        subject = primary_subject()
        subject = type(subject)(
            domain=type(subject.domain)(1, "nothing.good.test", "primary", True),
            hosted=True,
            sending_domains=(),
            dkim_keys=(),
            forwards=(),
            secondaries=(),
        )
        return self.assertCheck(
            "mx nothing.good.test", FAIL, "nothing.good.test does not exist in the DNS", subject
        )

    def test_points_elsewhere(self):
        self.dns.set_records("good.test", [("MX", 10, OTHER_MX)])
        return self.assertCheck(
            "mx good.test", FAIL, f"the MX of good.test is {OTHER_MX}, not {HOSTNAME}"
        )

    def test_null_mx(self):
        self.dns.set_records("good.test", [("MX", 0, ".")])
        return self.assertCheck("mx good.test", FAIL, "null MX")

    def test_outranked_in_primary_mode_fails(self):
        self.dns.set_records("good.test", [("MX", 10, HOSTNAME), ("MX", 5, OTHER_MX)])
        return self.assertCheck("mx good.test", FAIL, f"{OTHER_MX} outranks {HOSTNAME}")

    def test_outranked_in_secondary_mode_warns(self):
        self.dns.set_records("crm.acme.test", [("MX", 10, HOSTNAME), ("MX", 5, OTHER_MX)])
        return self.assertCheck(
            "mx crm.acme.test", WARN, "outranks", secondary_subject((self.acme_key,))
        )

    def test_equal_preference_warns(self):
        self.dns.set_records("good.test", [("MX", 10, HOSTNAME), ("MX", 10, OTHER_MX)])
        return self.assertCheck("mx good.test", WARN, "gets part of the mail")

    def test_backup_mx_passes(self):
        self.dns.set_records("good.test", [("MX", 10, HOSTNAME), ("MX", 20, OTHER_MX)])
        return self.assertCheck("mx good.test", PASS, f"(backup: {OTHER_MX})")

    @defer.inlineCallbacks
    def test_servfail_is_a_temporary_failure(self):
        self.dns.fail("good.test", "SERVFAIL")
        result = yield self.assertCheck("mx good.test", FAIL, "could not be checked")
        self.assertTrue(result.temporary)


class AddressTests(ChecksTestBase):
    def test_wrong_address(self):
        self.dns.set_records(HOSTNAME, [("A", "192.0.2.99"), ("AAAA", IPV6)])
        return self.assertCheck(
            f"address {HOSTNAME} A", FAIL, f"resolves to 192.0.2.99, not the configured {IPV4}"
        )

    def test_missing_ipv6(self):
        self.dns.set_records(HOSTNAME, [("A", IPV4)])
        return self.assertCheck(
            f"address {HOSTNAME} AAAA", FAIL, f"publish: {HOSTNAME}. AAAA {IPV6}"
        )

    def test_extra_address_warns(self):
        self.dns.set_records(HOSTNAME, [("A", IPV4), ("A", "192.0.2.99"), ("AAAA", IPV6)])
        return self.assertCheck(f"address {HOSTNAME} A", WARN, "also to 192.0.2.99")

    @defer.inlineCallbacks
    def test_no_configured_address(self):
        config = make_config(self.dns.nameserver, ipv4=None, ipv6=None)
        result = yield self.assertCheck(
            f"address {HOSTNAME}", WARN, "set [appliance] public_ipv4", config=config
        )
        self.assertIn(IPV4, result.reason)
        # The PTR checks use what the name resolves to.
        results = yield self.check(config=config)
        self.assertEqual(results[f"ptr {IPV4}"].status, PASS)
        self.dns.set_records(HOSTNAME, [])
        yield self.assertCheck(f"address {HOSTNAME}", FAIL, "does not resolve", config=config)


class PtrTests(ChecksTestBase):
    def test_missing(self):
        self.dns.set_records(reverse(IPV4), [])
        return self.assertCheck(f"ptr {IPV4}", FAIL, f"{IPV4} has no PTR record")

    def test_wrong_name(self):
        self.dns.set_records(reverse(IPV6), [("PTR", "host.provider.test")])
        return self.assertCheck(
            f"ptr {IPV6}", FAIL, f"the PTR of {IPV6} is host.provider.test, not {HOSTNAME}"
        )

    def test_not_forward_confirmed(self):
        self.dns.set_records(HOSTNAME, [("A", "192.0.2.99"), ("AAAA", IPV6)])
        return self.assertCheck(f"ptr {IPV4}", FAIL, f"{HOSTNAME} does not resolve back to {IPV4}")


class SpfTests(ChecksTestBase):
    def test_missing(self):
        self.dns.set_records("good.test", [("MX", 10, HOSTNAME)])
        return self.assertCheck("spf good.test", FAIL, "good.test publishes no SPF record")

    @defer.inlineCallbacks
    def test_duplicated(self):
        self.dns.set_records(
            "good.test",
            [("MX", 10, HOSTNAME), ("TXT", "v=spf1 mx -all"), ("TXT", "v=spf1 a -all")],
        )
        yield self.assertCheck("spf good.test", FAIL, "publishes 2 SPF records")
        results = yield self.check()
        self.assertNotIn("spf lookups good.test", results)

    def test_does_not_authorize_us(self):
        self.dns.set_records(
            "acme.test", [("MX", 10, OTHER_MX), ("TXT", "v=spf1 include:spf.provider.test -all")]
        )
        return self.assertCheck(
            "spf acme.test",
            FAIL,
            f"gives fail for this appliance's address {IPV4}",
            secondary_subject((self.acme_key,)),
        )

    def test_softfail_is_not_enough(self):
        self.dns.set_records(
            "good.test", [("MX", 10, HOSTNAME), ("TXT", "v=spf1 ip4:198.51.100.1 ~all")]
        )
        return self.assertCheck("spf good.test", FAIL, "gives softfail")

    def test_invalid(self):
        self.dns.set_records(
            "good.test", [("MX", 10, HOSTNAME), ("TXT", f"v=spf1 ip4:{IPV4} frobnicate -all")]
        )
        return self.assertCheck("spf good.test", FAIL, "is invalid")

    def test_ipv6_checked_too(self):
        self.dns.set_records(
            "good.test", [("MX", 10, HOSTNAME), ("TXT", f"v=spf1 ip4:{IPV4} -all")]
        )
        return self.assertCheck("spf good.test", FAIL, f"address {IPV6}")


def _includes(count: int) -> tuple[str, dict]:
    """A record of good.test costing `count` lookups, and the zone entries it includes."""
    names = {f"s{number}": [("TXT", "v=spf1 -all")] for number in range(count)}
    includes = " ".join(f"include:s{number}.good.test" for number in range(count))
    return f"v=spf1 ip4:{IPV4} ip6:{IPV6} {includes} -all", names


class SpfLookupsTests(ChecksTestBase):
    def use(self, count):
        record, names = _includes(count)
        for name, records in names.items():
            self.dns.set_records(f"{name}.good.test", records)
        self.dns.set_records("good.test", [("MX", 10, HOSTNAME), ("TXT", record)])

    @defer.inlineCallbacks
    def test_ten_pass(self):
        self.use(10)
        yield self.assertCheck("spf lookups good.test", PASS, "needs 10 of at most 10")

    @defer.inlineCallbacks
    def test_eleven_fail(self):
        self.use(11)
        yield self.assertCheck("spf lookups good.test", FAIL, "needs 11 DNS lookups")
        # Our address matches before any include is evaluated: the record itself works.
        yield self.assertCheck("spf good.test", PASS, "lets")

    def test_include_without_a_record_warns(self):
        self.dns.set_records(
            "good.test",
            [
                ("MX", 10, HOSTNAME),
                ("TXT", f"v=spf1 ip4:{IPV4} ip6:{IPV6} include:x.good.test -all"),
            ],
        )
        self.dns.set_records("x.good.test", [("TXT", "not spf")])
        return self.assertCheck("spf lookups good.test", WARN, "x.good.test")


class DkimTests(ChecksTestBase):
    def test_missing(self):
        self.dns.set_records("atollon._domainkey.good.test", [])
        return self.assertCheck("dkim atollon._domainkey.good.test", FAIL, "publishes no DKIM key")

    def test_other_key(self):
        self.dns.set_records(
            "atollon._domainkey.good.test",
            [("TXT", dkim.txt_value("ed25519", self.other_public))],
        )
        return self.assertCheck(
            "dkim atollon._domainkey.good.test", FAIL, "atollon-mail dkim show good.test"
        )

    def test_revoked(self):
        self.dns.set_records("atollon._domainkey.good.test", [("TXT", "v=DKIM1; p=")])
        return self.assertCheck("dkim atollon._domainkey.good.test", FAIL, "revoked")

    def test_key_split_over_strings_passes(self):
        value = dkim.txt_value("ed25519", self.public)
        self.dns.set_records("atollon._domainkey.good.test", [("TXT", value[:20], value[20:])])
        return self.assertCheck("dkim atollon._domainkey.good.test", PASS, "publishes the key")

    def test_no_key_warns(self):
        return self.assertCheck(
            "dkim good.test", WARN, "dkim generate good.test", primary_subject()
        )


class DmarcTests(ChecksTestBase):
    def test_missing(self):
        self.dns.set_records("_dmarc.good.test", [])
        return self.assertCheck("dmarc good.test", FAIL, "publishes no DMARC record")

    def test_unreadable(self):
        self.dns.set_records("_dmarc.good.test", [("TXT", "v=DMARC1; p=maybe")])
        return self.assertCheck("dmarc good.test", FAIL, "cannot be read")

    def test_duplicated(self):
        self.dns.set_records(
            "_dmarc.good.test", [("TXT", "v=DMARC1; p=none"), ("TXT", "v=DMARC1; p=reject")]
        )
        return self.assertCheck("dmarc good.test", FAIL, "2 DMARC records")

    def test_none_passes_with_advice(self):
        return self.assertCheck("dmarc good.test", PASS, "move to p=quarantine")

    def test_reject_passes(self):
        self.dns.set_records("_dmarc.good.test", [("TXT", "v=DMARC1; p=reject")])
        return self.assertCheck("dmarc good.test", PASS, "p=reject")
