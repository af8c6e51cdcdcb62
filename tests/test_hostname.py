"""A host name no other server can reach (localhost, or one label): warned about at start
and in the DNS advice, which then proposes no MX, A or PTR for it."""

from __future__ import annotations

import socket

from twisted.trial import unittest

from atollon_mail import tap
from atollon_mail.config import hostname_problem, load_config, parse_config
from atollon_mail.dns import advisor, checks
from tests.dns.fixtures import primary_subject
from tests.test_selfsigned import capture_log
from tests.test_tap import SpyReactor, write_config

UNSET = "[appliance]\nhostname =\npublic_ipv4 = 192.0.2.10\n[dns]\nmta_sts = yes\n"


class HostnameTests(unittest.TestCase):
    def machine_named(self, name: str) -> None:
        self.patch(socket, "getfqdn", lambda *args: name)

    def test_unset_hostname_on_a_machine_named_localhost_is_a_problem(self):
        for name in ("localhost", "localhost.localdomain", "mailbox"):
            self.machine_named(name)
            config = parse_config(UNSET)
            self.assertEqual(config.appliance.hostname, name)
            problem = hostname_problem(config.appliance)
            self.assertIn(f"hostname is unset and this machine's name is {name!r}", problem)
            self.assertIn("set [appliance] hostname", problem)
            self.assertEqual(len(problem.splitlines()), 1)

    def test_a_public_name_is_fine(self):
        self.machine_named("mx.acme.test")
        self.assertIsNone(hostname_problem(parse_config(UNSET).appliance))
        configured = parse_config("[appliance]\nhostname = mail.acme.test\n")
        self.assertIsNone(hostname_problem(configured.appliance))

    def test_a_configured_single_label_is_a_problem_too(self):
        config = parse_config("[appliance]\nhostname = mail\n")
        self.assertIn("[appliance] hostname is 'mail'", hostname_problem(config.appliance))

    def test_warned_once_at_start(self):
        self.machine_named("localhost")
        directory_config = write_config(
            self,
            "[appliance]\ndata_dir = {dir}/data\n[database]\nurl = sqlite:///{dir}/data/s.sqlite\n",
        )
        events = capture_log(self)
        appliance = tap.build_appliance(load_config(directory_config), SpyReactor())
        appliance.startService()
        self.addCleanup(appliance.stopService)
        warnings = [event for event in events if "localhost" in str(event.get("problem", ""))]
        self.assertEqual(len(warnings), 1)
        self.assertIn("set [appliance] hostname", warnings[0]["problem"])

    def test_dns_records_warn_and_propose_no_mx_to_localhost(self):
        self.machine_named("localhost")
        advice = advisor.advise(primary_subject(), parse_config(UNSET), None)
        self.assertEqual([r for r in advice.records if r.type in ("MX", "A", "PTR", "CNAME")], [])
        self.assertIn("set [appliance] hostname", advice.warnings[0])
        text = advisor.zone_text(advice)
        self.assertNotIn("MX 10 localhost.", text)
        self.assertNotIn("IN MX", text)
        self.assertIn("! [appliance] hostname is unset and this machine's name is", text)

    def test_dns_records_propose_the_mx_for_a_public_name(self):
        self.machine_named("mx.acme.test")
        advice = advisor.advise(primary_subject(), parse_config(UNSET), None)
        self.assertIn(
            "good.test. 3600 IN MX 10 mx.acme.test.", [r.zone_line() for r in advice.records]
        )

    def test_dns_check_of_the_mx_asks_for_the_host_name_first(self):
        # The MX check is decided before any lookup: no lookups are given.
        self.machine_named("localhost")
        checker = checks._Checker(primary_subject(), parse_config(UNSET), lookups=None)
        status, reason = checker.mx("good.test")
        self.assertEqual(status, checks.FAIL)
        self.assertIn("set [appliance] hostname", reason)
        self.assertNotIn("MX 10 localhost", reason)
