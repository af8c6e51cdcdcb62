"""`dns records`, `dns check`, `domain add --primary-domain` and `domain show`, run in-process
through `main` on SQLite and on PostgreSQL, with the test DNS server on loopback.

The command blocks on its DNS lookups, so it runs in a thread while the reactor answers
them.
"""

from __future__ import annotations

import datetime
import json
import os

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from atollon_mail import cli
from atollon_mail.config import CONFIG_ENVIRONMENT_VARIABLE
from atollon_mail.delivery import dkim
from atollon_mail.dns.advisor import MICROSOFT_365_NOTE
from atollon_mail.store import domains
from atollon_mail.store.domains import all_dkim_keys
from atollon_mail.store.models import utc_now
from atollon_mail.store.pool import Store
from tests.dns.fixtures import HOSTNAME, IPV4, IPV6, appliance_zones, primary_zone, secondary_zone
from tests.dnsserver import start_dns_server
from tests.support import PostgresStoreMixin, SqliteStoreMixin
from tests.test_cli import CliHarness

MODULES = ("atollon_mail.commands.dns", "atollon_mail.commands.domains")


class DnsCommandsContract(CliHarness):
    def setUp(self):
        self.set_environment(CONFIG_ENVIRONMENT_VARIABLE, None)
        modules = tuple(dict.fromkeys(cli.COMMAND_MODULES + MODULES))
        self.patch(cli, "COMMAND_MODULES", modules)
        zones = appliance_zones()
        zones["good.test"] = primary_zone("v=DKIM1; k=ed25519; p=NOTYET")
        zones["acme.test"] = secondary_zone("v=DKIM1; k=ed25519; p=NOTYET")
        zones["acme.test"]["@"] = [
            ("MX", 10, "mx.provider.test"),
            ("TXT", "v=spf1 mx include:_spf.google.test include:_spf.mailprovider.test -all"),
        ]
        self.dns = start_dns_server(reactor, zones)
        self.addCleanup(self.dns.stop)
        self.database_url = self.make_database_url()
        directory = self.mktemp()
        os.makedirs(directory)
        self.config_path = os.path.join(directory, "atollon-mail.ini")
        with open(self.config_path, "w", encoding="utf-8") as config_file:
            config_file.write(
                f"[appliance]\nhostname = {HOSTNAME}\n"
                f"public_ipv4 = {IPV4}\npublic_ipv6 = {IPV6}\n"
                f"[database]\nurl = {self.database_url}\n"
                f"[delivery]\nnameservers = 127.0.0.1:{self.dns.port}\n"
                "[dns]\nspf_include = spf.atollon.test\n"
                "[imap]\ntls_listen = tcp:2993\n"
            )
        self.main("--config", self.config_path, "db", "migrate")

    def cli(self, *argv: str, stdin: bytes = b""):
        """Runs the command in a thread; fires with its Outcome."""
        return threads.deferToThread(self.main, "--config", self.config_path, *argv, stdin=stdin)

    @defer.inlineCallbacks
    def ok(self, *argv: str, stdin: bytes = b""):
        outcome = yield self.cli(*argv, stdin=stdin)
        self.assertEqual((outcome.code, outcome.err), (0, ""), outcome)
        return outcome

    def store_op(self, operation, *args, **kwargs):
        store = Store.from_url(self.database_url, reactor=None)
        try:
            return store.run_sync(operation, *args, **kwargs)
        finally:
            store.stop()

    @defer.inlineCallbacks
    def setup_domains(self):
        """good.test (primary) and crm.acme.test (secondary of acme.test), keys published,
        jane with jane@good.test and sales@crm.acme.test; joe with an inactive mailbox."""
        yield self.ok("domain", "add", "good.test")
        yield self.ok(
            "domain", "add", "crm.acme.test", "--mode", "secondary", "--primary-domain", "acme.test"
        )
        for login in ("jane", "joe"):
            yield self.ok("user", "add", login, "--password-stdin", stdin=b"password\n")
        yield self.ok("mailbox", "add", "jane@good.test", "--owner", "jane")
        yield self.ok("mailbox", "add", "sales@crm.acme.test", "--owner", "jane")
        yield self.ok("mailbox", "add", "old@crm.acme.test", "--owner", "joe", "--inactive")
        for domain in ("good.test", "acme.test"):
            yield self.ok("dkim", "generate", domain, "--algorithm", "ed25519")
            [key] = self.store_op(domains.dkim_keys, domain)
            self.dns.set_records(
                f"atollon._domainkey.{domain}",
                [("TXT", dkim.txt_value(key.algorithm, key.public_key))],
            )

    # -- domain add --primary-domain --------------------------------------------------------

    @defer.inlineCallbacks
    def test_domain_add_secondary(self):
        added = yield self.ok(
            "domain", "add", "CRM.acme.test", "--mode", "secondary", "--primary-domain", "acme.test"
        )
        self.assertEqual(
            added.lines,
            [
                "added domain crm.acme.test (secondary, mailboxes send as name@acme.test)",
                "the DNS records to publish: atollon-mail dns records crm.acme.test",
            ],
        )
        listed = yield self.ok("domain", "list")
        self.assertEqual(
            listed.lines,
            [
                "DOMAIN         MODE       ACTIVE",
                "acme.test      primary    no",
                "crm.acme.test  secondary  yes",
            ],
        )
        yield self.ok("user", "add", "jane", "--password-stdin", stdin=b"password\n")
        box = yield self.ok("mailbox", "add", "sales@crm.acme.test", "--owner", "jane")
        self.assertIn("identity sales@acme.test", box.text)

    @defer.inlineCallbacks
    def test_domain_add_refusals(self):
        for argv, message in (
            (("crm.acme.test", "--mode", "secondary"), "give --primary-domain"),
            (
                ("acme.test", "--mode", "secondary", "--primary-domain", "acme.test"),
                "acme.test cannot be its own primary domain",
            ),
            (
                ("crm.acme.test", "--primary-domain", "acme.test"),
                "only a secondary domain has a primary domain",
            ),
        ):
            outcome = yield self.cli("domain", "add", *argv)
            self.assertRefused(outcome, message)
        listed = yield self.ok("domain", "list")
        self.assertEqual(listed.lines, ["DOMAIN  MODE  ACTIVE"])

    @defer.inlineCallbacks
    def test_domain_show(self):
        yield self.setup_domains()
        shown = yield self.ok("domain", "show", "crm.acme.test")
        self.assertEqual(
            shown.lines,
            [
                "domain:         crm.acme.test",
                "mode:           secondary",
                "active:         yes",
                "receives here:  yes",
                "primary domain: acme.test",
                "sends as:       acme.test",
                "last DNS check: (none yet)",
            ],
        )
        shown = yield self.ok("domain", "show", "acme.test")
        self.assertIn("receives here:     no (its mail stays with its own provider)", shown.lines)
        self.assertIn("secondary domains: crm.acme.test", shown.lines)

    # -- dns records --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_records_zone_secondary(self):
        yield self.setup_domains()
        outcome = yield self.ok("dns", "records", "crm.acme.test")
        lines = outcome.lines
        self.assertIn(f"crm.acme.test. 3600 IN MX 10 {HOSTNAME}.", lines)
        self.assertIn(
            'acme.test. 3600 IN TXT "v=spf1 mx include:_spf.google.test '
            'include:_spf.mailprovider.test include:spf.atollon.test -all"',
            lines,
        )
        self.assertIn(";   sales@acme.test -> sales@crm.acme.test", lines)
        self.assertNotIn("old@", outcome.text)  # inactive: receives nothing
        self.assertIn(f";   {MICROSOFT_365_NOTE}", lines)
        [key] = self.store_op(domains.dkim_keys, "acme.test")
        self.assertIn(f"p={key.public_key}", outcome.text)
        # Mail clients find the domain received here, not the one whose mail stays away.
        self.assertIn(f"_imaps._tcp.crm.acme.test. 3600 IN SRV 0 1 993 {HOSTNAME}.", lines)
        self.assertIn(f"_submission._tcp.crm.acme.test. 3600 IN SRV 10 1 587 {HOSTNAME}.", lines)
        self.assertIn(f"autoconfig.crm.acme.test. 3600 IN CNAME {HOSTNAME}.", lines)
        self.assertNotIn("_imaps._tcp.acme.test.", outcome.text)

    @defer.inlineCallbacks
    def test_records_table_and_json_primary(self):
        yield self.setup_domains()
        table = yield self.ok("dns", "records", "good.test", "--format", "table")
        self.assertEqual(table.lines[0].split(), ["NAME", "TYPE", "VALUE", "PURPOSE"])
        self.assertEqual(table.lines[1].split()[:4], ["good.test", "MX", "10", f"{HOSTNAME}."])
        outcome = yield self.ok("dns", "records", "good.test", "--format", "json")
        data = json.loads(outcome.text)
        self.assertEqual((data["domain"], data["mode"]), ("good.test", "primary"))
        spf = [r for r in data["records"] if (r["name"], r["type"]) == ("good.test", "TXT")]
        self.assertEqual(spf[0]["value"], "v=spf1 mx include:spf.atollon.test -all")
        self.assertIn("keep it", spf[0]["purpose"])

    @defer.inlineCallbacks
    def test_records_json_secondary(self):
        yield self.setup_domains()
        outcome = yield self.ok("dns", "records", "crm.acme.test", "--format", "json")
        data = json.loads(outcome.text)
        self.assertEqual(
            data["forwarding"], [{"from": "sales@acme.test", "to": "sales@crm.acme.test"}]
        )
        self.assertIn(MICROSOFT_365_NOTE, data["notes"])

    @defer.inlineCallbacks
    def test_records_of_an_unknown_domain(self):
        outcome = yield self.cli("dns", "records", "nothing.test")
        self.assertRefused(outcome, "no domain nothing.test")

    # -- dns check ----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_check_all_pass(self):
        yield self.setup_domains()
        for domain, count in (("good.test", 9), ("crm.acme.test", 9)):
            self.dns.set_records(
                "acme.test",
                [
                    ("MX", 10, "mx.provider.test"),
                    ("TXT", "v=spf1 include:spf.provider.test include:spf.atollon.test -all"),
                ],
            )
            outcome = yield self.ok("dns", "check", domain)
            self.assertEqual(len(outcome.lines), count, outcome.text)
            for line in outcome.lines:
                self.assertTrue(line.startswith("pass  "), line)

    @defer.inlineCallbacks
    def test_check_failure_exits_1(self):
        yield self.setup_domains()
        self.dns.set_records("good.test", [("MX", 10, "mx.provider.test")])
        outcome = yield self.cli("dns", "check", "good.test")
        self.assertEqual(outcome.code, 1, outcome)
        self.assertEqual(outcome.err, "atollon-mail: 2 of 8 DNS checks of good.test failed\n")
        self.assertIn(
            f"fail  mx good.test: the MX of good.test is mx.provider.test, not {HOSTNAME}",
            outcome.text,
        )
        self.assertIn("fail  spf good.test: good.test publishes no SPF record", outcome.text)

    @defer.inlineCallbacks
    def test_check_warnings_do_not_fail(self):
        yield self.setup_domains()
        self.dns.set_records(
            "good.test",
            [
                ("MX", 10, HOSTNAME),
                ("MX", 10, "mx.provider.test"),
                ("TXT", "v=spf1 mx include:spf.atollon.test -all"),
            ],
        )
        outcome = yield self.ok("dns", "check", "good.test")
        self.assertIn("warn  mx good.test:", outcome.text)

    @defer.inlineCallbacks
    def test_check_json(self):
        yield self.setup_domains()
        self.dns.set_records("_dmarc.acme.test", [])
        outcome = yield self.cli("dns", "check", "crm.acme.test", "--json")
        self.assertEqual(outcome.code, 1)
        data = json.loads(outcome.text)
        self.assertEqual((data["domain"], data["ok"]), ("crm.acme.test", False))
        statuses = {r["check"]: r["status"] for r in data["results"]}
        self.assertEqual(statuses["dmarc acme.test"], "fail")
        self.assertEqual(statuses["mx crm.acme.test"], "pass")
        self.assertEqual(set(data["results"][0]), {"check", "status", "reason", "temporary"})

    # -- dkim rotation --------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_dkim_rotation(self):
        yield self.setup_domains()  # good.test signs with atollon (ed25519), published
        added = yield self.ok(
            "dkim", "generate", "good.test", "--selector", "next", "--algorithm", "ed25519"
        )
        self.assertEqual(added.lines[0], "added DKIM key next for good.test (ed25519)")
        self.assertEqual(
            added.lines[-1],
            "mail from good.test is still signed with its current ed25519 key; once the "
            "record is published, switch with: atollon-mail dkim activate good.test next",
        )
        self.assertEqual(
            [key.selector for key in self.store_op(domains.dkim_keys, "good.test")], ["atollon"]
        )
        shown = yield self.ok("dkim", "show", "good.test")
        self.assertEqual(len(shown.lines), 2, "the pending key's record is shown to publish")
        self.assertIn("next._domainkey.good.test.", shown.lines[1])

        refused = yield self.cli("dkim", "activate", "good.test", "next")
        self.assertRefused(
            refused,
            "next is not activated: next._domainkey.good.test publishes no DKIM key",
        )
        [key] = [k for k in self.store_op(all_dkim_keys, "good.test") if k.selector == "next"]
        self.assertEqual(key.state, "pending")
        self.dns.set_records("next._domainkey.good.test", [("TXT", "v=DKIM1; k=ed25519; p=AAAA")])
        refused = yield self.cli("dkim", "activate", "good.test", "next")
        self.assertRefused(refused, "publishes another key")

        self.dns.set_records(
            "next._domainkey.good.test", [("TXT", dkim.txt_value("ed25519", key.public_key))]
        )
        before = utc_now()
        activated = yield self.ok("dkim", "activate", "good.test", "next")
        self.assertEqual(
            activated.lines[0],
            "mail from good.test is signed with next (ed25519) from now on "
            "(a running server picks it up within a minute)",
        )
        removal = before + datetime.timedelta(days=7)
        self.assertRegex(
            activated.lines[1],
            r"^atollon is retired: keep its DNS record published until it is removed after "
            rf"{removal:%Y-%m-%d} \d\d:\d\d UTC \(see: atollon-mail dkim list\)$",
        )
        self.assertEqual(
            [key.selector for key in self.store_op(domains.dkim_keys, "good.test")], ["next"]
        )
        listed = yield self.ok("dkim", "list")
        self.assertEqual(listed.lines[0].split(), ["DOMAIN", "SELECTOR", "ALGORITHM", "STATE"])
        rows = [line.split(None, 3) for line in listed.lines[1:] if "good.test" in line]
        self.assertEqual([row[:4] for row in rows][0], ["good.test", "next", "ed25519", "active"])
        self.assertEqual(rows[1][:3], ["good.test", "atollon", "ed25519"])
        self.assertTrue(rows[1][3].startswith("retired, removed after "), rows[1])
        again = yield self.cli("dkim", "activate", "good.test", "next")
        self.assertRefused(again, "the DKIM key next of good.test signs already")
        missing = yield self.cli("dkim", "activate", "good.test", "nope")
        self.assertRefused(missing, "good.test has no DKIM key with selector nope")
        # The retired key stays published: a missing record is a warning, not a failure.
        self.dns.set_records("atollon._domainkey.good.test", [])
        outcome = yield self.cli("dns", "check", "good.test")
        self.assertIn("warn  dkim atollon._domainkey.good.test:", outcome.text)
        self.assertIn("pass  dkim next._domainkey.good.test:", outcome.text)


class DnsCommandsOnSqliteTests(SqliteStoreMixin, DnsCommandsContract, unittest.TestCase):
    pass


class DnsCommandsOnPostgresTests(PostgresStoreMixin, DnsCommandsContract, unittest.TestCase):
    pass
