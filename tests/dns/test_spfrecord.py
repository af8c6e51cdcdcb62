"""SPF records: merging this appliance into a published record, counting lookups."""

from __future__ import annotations

from twisted.trial import unittest

from atollon_mail.dns import spfrecord
from atollon_mail.dns.spfrecord import count_lookups, merge, our_terms

OURS = ["include:spf.atollon.com"]
SEED = "v=spf1 mx include:spf.google.com include:_spf.mailprovider.sk -all"


class MergeTests(unittest.TestCase):
    def test_multi_provider_record_keeps_every_mechanism_and_adds_ours_once(self):
        merged = merge([SEED], OURS, "acme.com")
        # The seeds' own example of a record with several providers.
        self.assertEqual(
            merged.record,
            "v=spf1 mx include:spf.google.com include:_spf.mailprovider.sk "
            "include:spf.atollon.com -all",
        )
        self.assertEqual(merged.added, ("include:spf.atollon.com",))
        self.assertFalse(merged.unchanged)
        self.assertEqual(merged.warnings, ())
        self.assertEqual(merged.record.count("all"), 1)

    def test_softfail_stays_softfail(self):
        merged = merge(["v=spf1 include:spf.google.com ~all"], OURS, "acme.com")
        self.assertEqual(
            merged.record, "v=spf1 include:spf.google.com include:spf.atollon.com ~all"
        )

    def test_no_record_makes_a_new_one(self):
        merged = merge([], OURS, "acme.com")
        self.assertEqual(merged.record, "v=spf1 include:spf.atollon.com -all")
        self.assertEqual(merged.existing, ())
        self.assertFalse(merged.unchanged)

    def test_ours_already_present_is_unchanged(self):
        published = "v=spf1 mx include:spf.google.com include:spf.atollon.com -all"
        merged = merge([published], OURS, "acme.com")
        self.assertEqual(merged.record, published)
        self.assertEqual(merged.added, ())
        self.assertTrue(merged.unchanged)

    def test_ours_present_written_another_way(self):
        published = "v=spf1 +IP4:192.0.2.10/32 Include:SPF.Atollon.com. -all"
        merged = merge([published], ["ip4:192.0.2.10", "include:spf.atollon.com"], "acme.com")
        self.assertEqual(merged.record, published)
        self.assertTrue(merged.unchanged)

    def test_addresses_added_before_all(self):
        merged = merge(["v=spf1 a -all"], ["ip4:192.0.2.10", "ip6:2001:db8::10"], "acme.com")
        self.assertEqual(merged.record, "v=spf1 a ip4:192.0.2.10 ip6:2001:db8::10 -all")

    def test_no_all_gets_minus_all(self):
        merged = merge(["v=spf1 include:spf.google.com"], OURS, "acme.com")
        self.assertEqual(
            merged.record, "v=spf1 include:spf.google.com include:spf.atollon.com -all"
        )

    def test_two_records_become_one_with_a_warning(self):
        merged = merge(
            ["v=spf1 include:spf.google.com ~all", "v=spf1 mx include:spf.google.com -all"],
            OURS,
            "acme.com",
        )
        self.assertEqual(
            merged.record, "v=spf1 include:spf.google.com mx include:spf.atollon.com ~all"
        )
        self.assertIn("publishes 2 SPF records", merged.warnings[0])

    def test_plus_all_becomes_minus_all_with_a_warning(self):
        merged = merge(["v=spf1 mx +all"], OURS, "acme.com")
        self.assertEqual(merged.record, "v=spf1 mx include:spf.atollon.com -all")
        self.assertIn("lets anyone send", merged.warnings[0])
        merged = merge(["v=spf1 mx all"], OURS, "acme.com")
        self.assertEqual(merged.record, "v=spf1 mx include:spf.atollon.com -all")

    def test_neutral_all_kept_with_a_warning(self):
        merged = merge(["v=spf1 mx ?all"], OURS, "acme.com")
        self.assertEqual(merged.record, "v=spf1 mx include:spf.atollon.com ?all")
        self.assertIn("protects nothing", merged.warnings[0])

    def test_redirect_kept_at_the_end_without_all(self):
        merged = merge(["v=spf1 redirect=_spf.acme.com"], OURS, "acme.com")
        self.assertEqual(merged.record, "v=spf1 include:spf.atollon.com redirect=_spf.acme.com")

    def test_exp_modifier_kept_after_all(self):
        merged = merge(["v=spf1 exp=why.acme.com mx -all"], OURS, "acme.com")
        self.assertEqual(merged.record, "v=spf1 mx include:spf.atollon.com -all exp=why.acme.com")


class OurTermsTests(unittest.TestCase):
    def test_include_wins(self):
        terms = our_terms("mx.a.test", "spf.atollon.com", "192.0.2.1", None, True)
        self.assertEqual(terms, ["include:spf.atollon.com"])

    def test_addresses_when_no_include(self):
        terms = our_terms("mx.a.test", None, "192.0.2.1", "2001:db8::1", True)
        self.assertEqual(terms, ["ip4:192.0.2.1", "ip6:2001:db8::1"])

    def test_mx_when_nothing_is_configured(self):
        self.assertEqual(our_terms("mx.a.test", None, None, None, True), ["mx"])

    def test_host_when_the_domain_receives_elsewhere(self):
        # The primary domain in secondary mode: its MX is the other provider.
        self.assertEqual(our_terms("mx.a.test", None, None, None, False), ["a:mx.a.test"])


def _chain(count: int) -> dict[str, list[str]]:
    """acme.com whose record costs `count` lookups: includes, each with one more term."""
    zone = {"spf.atollon.com": ["v=spf1 ip4:192.0.2.10 -all"]}
    includes = []
    for number in range(count):
        includes.append(f"include:p{number}.example")
        zone[f"p{number}.example"] = ["v=spf1 ip4:198.51.100.1 -all"]
    zone["acme.com"] = [f"v=spf1 {' '.join(includes)} -all"]
    return zone


class CountLookupsTests(unittest.TestCase):
    def count(self, record: str, zone: dict[str, list[str]]):
        return count_lookups(record, lambda domain: zone.get(domain, []))

    def test_ten_is_the_limit(self):
        zone = _chain(10)
        self.assertEqual(self.count(zone["acme.com"][0], zone).count, 10)
        self.assertLessEqual(10, spfrecord.MAX_LOOKUPS)

    def test_eleven_is_over(self):
        zone = _chain(11)
        self.assertEqual(self.count(zone["acme.com"][0], zone).count, 11)

    def test_nested_includes_and_every_lookup_term(self):
        zone = {
            "a.example": ["v=spf1 a mx ptr exists:%{i}.x.example include:b.example -all"],
            "b.example": ["v=spf1 a:h.example mx:m.example/24 ip4:192.0.2.0/24 -all"],
        }
        # include (1) + a, mx, ptr, exists, include (5) + a, mx (2)
        self.assertEqual(self.count("v=spf1 include:a.example -all", zone).count, 8)

    def test_redirect_counts_unless_all_is_present(self):
        zone = {"r.example": ["v=spf1 mx -all"]}
        self.assertEqual(self.count("v=spf1 redirect=r.example", zone).count, 2)
        self.assertEqual(self.count("v=spf1 -all redirect=r.example", zone).count, 0)

    def test_loops_and_missing_records_end(self):
        zone = {
            "a.example": ["v=spf1 include:b.example -all"],
            "b.example": ["v=spf1 include:a.example include:gone.example -all"],
        }
        counted = self.count("v=spf1 include:a.example -all", zone)
        self.assertEqual(counted.count, 4)
        self.assertEqual(counted.unreadable, ("gone.example",))

    def test_merged_seed_record(self):
        zone = {
            "spf.google.com": ["v=spf1 include:_netblocks.google.com ~all"],
            "_netblocks.google.com": ["v=spf1 ip4:203.0.113.0/24 ~all"],
            "_spf.mailprovider.sk": ["v=spf1 a -all"],
            "spf.atollon.com": ["v=spf1 ip4:192.0.2.10 -all"],
        }
        record = merge([SEED], OURS, "acme.com").record
        # mx, include google (+1 nested), include mailprovider (+1 a), include atollon
        self.assertEqual(self.count(record, zone).count, 6)
