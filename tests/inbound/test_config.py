"""The [inbound] section: defaults, trusted forwarders globally and per domain, and
errors that name the file, the section and the key."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial import unittest

from atollon_mail.config import ConfigError, InboundConfig, load_config, parse_config
from atollon_mail.inbound import build as inbound_build
from atollon_mail.inbound.checkprocess import CheckProcesses
from atollon_mail.inbound.checks import InboundChecks
from tests.conftest import ROOT

BASE = "[appliance]\nhostname = mx.acme.test\n"


class InboundConfigTests(unittest.TestCase):
    def parse(self, inbound: str):
        return parse_config(BASE + "[inbound]\n" + inbound, "atollon-mail.ini").inbound

    def refused(self, inbound: str) -> ConfigError:
        with self.assertRaises(ConfigError) as caught:
            self.parse(inbound)
        return caught.exception

    def test_defaults(self):
        inbound = parse_config(BASE).inbound
        self.assertEqual(inbound, InboundConfig())
        self.assertEqual(
            (inbound.checks, inbound.dmarc_reject, inbound.dmarc_quarantine),
            (True, "reject", "junk"),
        )
        self.assertEqual((inbound.dnsbl_zones, inbound.junk_score), ((), 5.0))
        self.assertEqual(inbound.check_processes, 1)

    def test_the_shipped_configuration_reads_as_the_defaults(self):
        self.assertEqual(
            load_config(str(ROOT / "etc" / "atollon-mail.ini")).inbound, InboundConfig()
        )

    def test_trusted_forwarders_globally_and_per_domain(self):
        inbound = self.parse(
            "trusted_forwarders = 192.0.2.7, 2001:DB8::/32 MX.Partner.example.\n"
            "trusted_forwarders.company.com = 198.51.100.0/24 relay.company.com\n"
            "trusted_forwarders.Other.Test = 203.0.113.5\n"
        )
        self.assertEqual(
            inbound.trusted_forwarders, ("192.0.2.7/32", "2001:db8::/32", "mx.partner.example")
        )
        self.assertEqual(
            inbound.forwarders_for("company.com"),
            (
                "192.0.2.7/32",
                "2001:db8::/32",
                "mx.partner.example",
                "198.51.100.0/24",
                "relay.company.com",
            ),
        )
        self.assertEqual(inbound.forwarders_for("other.test")[-1], "203.0.113.5/32")
        self.assertEqual(len(inbound.forwarders_for("acme.test")), 3)

    def test_actions_zones_and_score(self):
        inbound = self.parse(
            "checks = off\ndmarc_reject = junk\ndmarc_quarantine = tag\n"
            "dnsbl_zones = zen.spamhaus.org, bl.example\njunk_score = 7.5\n"
        )
        self.assertFalse(inbound.checks)
        self.assertEqual((inbound.dmarc_reject, inbound.dmarc_quarantine), ("junk", "tag"))
        self.assertEqual(inbound.dnsbl_zones, ("zen.spamhaus.org", "bl.example"))
        self.assertEqual(inbound.junk_score, 7.5)
        self.assertEqual(self.parse("check_processes = 0\n").check_processes, 0)
        self.assertEqual(self.parse("check_processes = 2\n").check_processes, 2)

    def test_errors_name_the_file_section_and_key(self):
        cases = {
            "checks = maybe\n": "[inbound] checks: must be on or off, got 'maybe'",
            "dmarc_reject = bounce\n": "[inbound] dmarc_reject: must be reject or junk or tag",
            "dmarc_quarantine = reject\n": "[inbound] dmarc_quarantine: must be junk or tag",
            "trusted_forwarders = 192.0.2.0/24 not_a_host\n": (
                "[inbound] trusted_forwarders: must be a list of networks"
            ),
            "trusted_forwarders.bad_domain = 192.0.2.1\n": (
                "[inbound] trusted_forwarders.bad_domain: must be trusted_forwarders.DOMAIN"
            ),
            "trusted_forwarders.company.com = 300.1.1.1/8\n": (
                "[inbound] trusted_forwarders.company.com: must be a list of networks"
            ),
            "dnsbl_zones = bl..test\n": "[inbound] dnsbl_zones: must be a list of DNS blocklist",
            "junk_score = 0\n": "[inbound] junk_score: must be more than zero",
            "junk_score = lots\n": "[inbound] junk_score: must be a number of points",
            "check_processes = -1\n": (
                "[inbound] check_processes: must be a whole number from 0 to 8, got '-1'"
            ),
            "check_processes = some\n": "[inbound] check_processes: must be a whole number",
            "check_processes = 9\n": "[inbound] check_processes: must be a whole number from 0",
            "spam = yes\n": "[inbound] spam: unknown key; allowed: checks,",
        }
        for text, expected in cases.items():
            problem = str(self.refused(text))
            self.assertTrue(problem.startswith("atollon-mail.ini: "), problem)
            self.assertIn(expected, problem)
        self.assertIn("trusted_forwarders.DOMAIN", str(self.refused("spam = yes\n")))

    def test_checks_off_builds_none(self):
        off = parse_config(BASE + "[inbound]\nchecks = off\n")
        self.assertIsNone(inbound_build.build(off, None, None, reactor))
        on = parse_config(BASE)
        checks = inbound_build.build(on, None, None, reactor)
        self.assertIsInstance(checks, InboundChecks)
        # One check process by default, a service of its own (not started here); none
        # with check_processes = 0: the checks run in the DNS worker threads.
        self.assertIsInstance(checks.processes, CheckProcesses)
        self.assertEqual(
            (checks.processes.name, len(checks.processes.children)), ("inbound-checks", 1)
        )
        in_threads = parse_config(BASE + "[inbound]\ncheck_processes = 0\n")
        self.assertIsNone(inbound_build.build(in_threads, None, None, reactor).processes)
