"""The records advisor: what a domain must publish, merged with what it publishes now."""

from __future__ import annotations

import json

import attrs
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from atollon_mail.commands.dns import _records_table
from atollon_mail.config import InboundConfig
from atollon_mail.dns import advisor
from atollon_mail.dns.lookup import Lookups
from atollon_mail.store.records import DnsSubject, DomainRecord, PublishedKey
from tests.dns.fixtures import (
    HOSTNAME,
    IPV4,
    appliance_zones,
    make_config,
    primary_subject,
    primary_zone,
    reverse,
    secondary_subject,
    secondary_zone,
)
from tests.dnsserver import start_dns_server

GOOD_KEY = PublishedKey("good.test", "atollon", "ed25519", "GOODKEY")
ACME_KEY = PublishedKey("acme.test", "atollon", "ed25519", "ACMEKEY")
SEED_SPF = "v=spf1 mx include:_spf.google.test include:_spf.mailprovider.test -all"
FORWARDS = (
    ("office@acme.test", "office@crm.acme.test"),
    ("sales@acme.test", "sales@crm.acme.test"),
)

PRIMARY_ZONE_TEXT = f"""\
; DNS records for good.test (primary mode)
; mail for good.test comes to this appliance
good.test. 3600 IN MX 10 {HOSTNAME}.
; this appliance's address, in the zone of {HOSTNAME}
{HOSTNAME}. 3600 IN A 192.0.2.10
; this appliance's address, in the zone of {HOSTNAME}
{HOSTNAME}. 3600 IN AAAA 2001:db8::10
; reverse DNS of 192.0.2.10: set by the provider of the address, not in your zone; \
receivers compare it with the host name
10.2.0.192.in-addr.arpa. 3600 IN PTR {HOSTNAME}.
; reverse DNS of 2001:db8::10: set by the provider of the address, not in your zone; \
receivers compare it with the host name
0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 3600 IN PTR {HOSTNAME}.
; SPF: the published record with include:spf.atollon.test added; publish it instead of the \
one there now
good.test. 3600 IN TXT "v=spf1 mx include:_spf.google.test include:_spf.mailprovider.test \
include:spf.atollon.test -all"
; DKIM: the public key that signs mail from good.test
atollon._domainkey.good.test. 3600 IN TXT "v=DKIM1; k=ed25519; p=GOODKEY"
; DMARC: published already; keep it (p=none only reports: move to p=quarantine once they are \
clean)
_dmarc.good.test. 3600 IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@good.test"
; mail clients find IMAP (reading mail) with implicit TLS on port 993 here (RFC 6186)
_imaps._tcp.good.test. 3600 IN SRV 0 1 993 {HOSTNAME}.
; mail clients find IMAP (reading mail) with STARTTLS on port 143 here (RFC 6186)
_imap._tcp.good.test. 3600 IN SRV 10 1 143 {HOSTNAME}.
; submission (sending mail) with implicit TLS on port 465 is not offered, and this record \
tells mail clients not to try it (RFC 6186); to offer it, set [submission] tls_listen (such as \
tcp:465) and publish the record proposed then
_submissions._tcp.good.test. 3600 IN SRV 0 0 0 .
; mail clients find submission (sending mail) with STARTTLS on port 587 here (RFC 6186)
_submission._tcp.good.test. 3600 IN SRV 10 1 587 {HOSTNAME}.
; Thunderbird asks https://autoconfig.good.test/mail/config-v1.1.xml for the settings of an \
address; this appliance's web service answers it
autoconfig.good.test. 3600 IN CNAME {HOSTNAME}.
;
; notes:
;   remove every other MX record of good.test: a lower number would take the mail first, an \
equal one would share it
;   autoconfig: the web server that answers for {HOSTNAME} must answer for autoconfig.good.test \
too (HTTPS, with a certificate valid for that name) and pass /mail/config-v1.1.xml to this \
appliance's web service"""


class AdvisorTestBase(unittest.TestCase):
    def setUp(self):
        zones = appliance_zones()
        zones["good.test"] = primary_zone("v=DKIM1; k=ed25519; p=GOODKEY")
        zones["good.test"]["@"] = [("MX", 10, HOSTNAME), ("TXT", SEED_SPF)]
        zones["acme.test"] = secondary_zone("v=DKIM1; k=ed25519; p=ACMEKEY")
        zones["acme.test"]["@"] = [("MX", 10, "mx.provider.test"), ("TXT", SEED_SPF)]
        zones["atollon.test"]["spf"] = [("TXT", "v=spf1 ip4:192.0.2.10 -all")]
        self.dns = start_dns_server(reactor, zones)
        self.addCleanup(self.dns.stop)
        self.config = make_config(self.dns.nameserver, spf_include="spf.atollon.test")
        # IMAP with implicit TLS listening: its SRV record is proposed.
        self.config = attrs.evolve(
            self.config, imap=attrs.evolve(self.config.imap, tls_listen="tcp:993")
        )

    def advise(self, subject, config=None, live=True):
        config = config or self.config

        def blocking():
            lookups = Lookups.using(config.delivery.nameservers, timeout=5) if live else None
            return advisor.advise(subject, config, lookups)

        return threads.deferToThread(blocking)

    def record(self, advice, name, kind):
        found = [r for r in advice.records if (r.name, r.type) == (name, kind)]
        self.assertEqual(len(found), 1, (name, kind, advice.records))
        return found[0]


class PrimaryModeTests(AdvisorTestBase):
    @defer.inlineCallbacks
    def test_zone(self):
        advice = yield self.advise(primary_subject((GOOD_KEY,)))
        self.assertEqual(advisor.zone_text(advice), PRIMARY_ZONE_TEXT)
        self.assertEqual(advice.warnings, ())

    @defer.inlineCallbacks
    def test_rotation_keys_are_published_with_their_purpose(self):
        keys = (
            PublishedKey("good.test", "next", "ed25519", "NEXTKEY", "pending"),
            GOOD_KEY,
            PublishedKey("good.test", "old", "rsa", "OLDKEY", "retired"),
        )
        advice = yield self.advise(primary_subject(keys))
        purposes = {
            name: self.record(advice, f"{name}._domainkey.good.test", "TXT").purpose
            for name in ("next", "atollon", "old")
        }
        self.assertEqual(
            purposes,
            {
                "next": "DKIM: the next key of good.test; activate it once this is published",
                "atollon": "DKIM: the public key that signs mail from good.test",
                "old": "DKIM: a replaced key of good.test, kept until it is removed",
            },
        )

    @defer.inlineCallbacks
    def test_json(self):
        advice = yield self.advise(primary_subject((GOOD_KEY,)))
        data = json.loads(json.dumps(advisor.advice_json(advice)))
        self.assertEqual(
            (data["domain"], data["mode"], data["receiving_domain"], data["sending_domains"]),
            ("good.test", "primary", "good.test", ["good.test"]),
        )
        self.assertEqual(data["forwarding"], [])
        self.assertEqual(
            [(r["name"], r["type"]) for r in data["records"]],
            [
                ("good.test", "MX"),
                (HOSTNAME, "A"),
                (HOSTNAME, "AAAA"),
                (reverse(IPV4).rstrip("."), "PTR"),
                (reverse("2001:db8::10").rstrip("."), "PTR"),
                ("good.test", "TXT"),
                ("atollon._domainkey.good.test", "TXT"),
                ("_dmarc.good.test", "TXT"),
                ("_imaps._tcp.good.test", "SRV"),
                ("_imap._tcp.good.test", "SRV"),
                ("_submissions._tcp.good.test", "SRV"),
                ("_submission._tcp.good.test", "SRV"),
                ("autoconfig.good.test", "CNAME"),
            ],
        )
        self.assertEqual(data["records"][0]["zone"], f"good.test. 3600 IN MX 10 {HOSTNAME}.")

    @defer.inlineCallbacks
    def test_table(self):
        advice = yield self.advise(primary_subject((GOOD_KEY,)))
        lines = _records_table(advice).splitlines()
        self.assertEqual(lines[0].split(), ["NAME", "TYPE", "VALUE", "PURPOSE"])
        self.assertTrue(lines[1].startswith("good.test "), lines[1])
        self.assertEqual(lines[1].split()[:4], ["good.test", "MX", "10", f"{HOSTNAME}."])
        self.assertIn("notes:", lines)

    @defer.inlineCallbacks
    def test_no_record_published_makes_a_new_one(self):
        self.dns.set_records("good.test", [("MX", 10, HOSTNAME)])
        advice = yield self.advise(primary_subject((GOOD_KEY,)))
        spf = self.record(advice, "good.test", "TXT")
        self.assertEqual(spf.value, "v=spf1 include:spf.atollon.test -all")
        self.assertIn("publishes none", spf.purpose)

    @defer.inlineCallbacks
    def test_ours_already_published_is_kept(self):
        published = "v=spf1 mx include:spf.atollon.test ~all"
        self.dns.set_records("good.test", [("MX", 10, HOSTNAME), ("TXT", published)])
        advice = yield self.advise(primary_subject((GOOD_KEY,)))
        spf = self.record(advice, "good.test", "TXT")
        self.assertEqual((spf.value, spf.purpose.endswith("keep it")), (published, True))

    @defer.inlineCallbacks
    def test_addresses_when_there_is_no_include(self):
        config = make_config(self.dns.nameserver)
        advice = yield self.advise(primary_subject((GOOD_KEY,)), config)
        self.assertEqual(
            self.record(advice, "good.test", "TXT").value,
            "v=spf1 mx include:_spf.google.test include:_spf.mailprovider.test "
            "ip4:192.0.2.10 ip6:2001:db8::10 -all",
        )

    @defer.inlineCallbacks
    def test_nothing_configured_uses_mx_and_warns(self):
        config = make_config(self.dns.nameserver, ipv4=None, ipv6=None)
        self.dns.set_records("good.test", [("MX", 10, HOSTNAME)])
        advice = yield self.advise(primary_subject((GOOD_KEY,)), config)
        self.assertEqual(self.record(advice, "good.test", "TXT").value, "v=spf1 mx -all")
        self.assertEqual([r.type for r in advice.records if r.name == HOSTNAME], [])
        self.assertIn("no public address is configured", advice.warnings[0])

    @defer.inlineCallbacks
    def test_ten_lookups_ok_eleven_warn(self):
        def publish(count):
            includes = " ".join(f"include:i{n}.good.test" for n in range(count))
            for n in range(count):
                self.dns.set_records(f"i{n}.good.test", [("TXT", "v=spf1 -all")])
            self.dns.set_records(
                "good.test", [("MX", 10, HOSTNAME), ("TXT", f"v=spf1 {includes} -all")]
            )

        publish(9)  # and ours: 10
        advice = yield self.advise(primary_subject((GOOD_KEY,)))
        self.assertEqual([w for w in advice.warnings if "lookups" in w], [])
        publish(10)  # and ours: 11
        advice = yield self.advise(primary_subject((GOOD_KEY,)))
        [warning] = [w for w in advice.warnings if "lookups" in w]
        self.assertIn("needs 11 DNS lookups, over the limit of 10", warning)

    @defer.inlineCallbacks
    def test_unreadable_spf_is_a_warning(self):
        self.dns.fail("good.test", "SERVFAIL")
        advice = yield self.advise(primary_subject((GOOD_KEY,)))
        self.assertIn("could not read the published TXT records of good.test", advice.warnings[0])
        spf = self.record(advice, "good.test", "TXT")
        self.assertEqual(spf.value, "v=spf1 include:spf.atollon.test -all")

    @defer.inlineCallbacks
    def test_dmarc_proposed_with_reports(self):
        self.dns.set_records("_dmarc.good.test", [])
        config = make_config(self.dns.nameserver, dmarc_report_address="dmarc@reports.example")
        advice = yield self.advise(primary_subject((GOOD_KEY,)), config)
        dmarc = self.record(advice, "_dmarc.good.test", "TXT")
        self.assertEqual(dmarc.value, "v=DMARC1; p=none; rua=mailto:dmarc@reports.example")
        self.assertIn("move to p=quarantine", dmarc.purpose)
        self.assertIn(
            'good.test._report._dmarc.reports.example. TXT "v=DMARC1"', " ".join(advice.notes)
        )

    @defer.inlineCallbacks
    def test_no_dkim_key_warns(self):
        advice = yield self.advise(primary_subject())
        self.assertIn("atollon-mail dkim generate good.test", " ".join(advice.warnings))

    @defer.inlineCallbacks
    def test_mta_sts_and_tls_rpt(self):
        config = make_config(self.dns.nameserver, mta_sts=True)
        advice = yield self.advise(primary_subject((GOOD_KEY,)), config)
        self.assertTrue(
            self.record(advice, "_mta-sts.good.test", "TXT").value.startswith("v=STSv1; id=")
        )
        self.assertEqual(self.record(advice, "mta-sts.good.test", "CNAME").value, f"{HOSTNAME}.")
        self.assertEqual(
            self.record(advice, "_smtp._tls.good.test", "TXT").value,
            "v=TLSRPTv1; rua=mailto:postmaster@good.test",
        )
        self.assertIn(f"mx: {HOSTNAME}", " ".join(advice.notes))

    @defer.inlineCallbacks
    def test_without_lookups_nothing_is_read(self):
        before = len(self.dns.queries)
        advice = yield self.advise(primary_subject((GOOD_KEY,)), live=False)
        self.assertEqual(len(self.dns.queries), before)
        self.assertEqual(
            self.record(advice, "good.test", "TXT").value, "v=spf1 include:spf.atollon.test -all"
        )


class SecondaryModeTests(AdvisorTestBase):
    def with_forwarders(self, **inbound):
        return attrs.evolve(self.config, inbound=InboundConfig(**inbound))

    @defer.inlineCallbacks
    def test_the_primary_domains_mx_must_be_a_trusted_forwarder(self):
        advice = yield self.advise(secondary_subject((ACME_KEY,), FORWARDS))
        self.assertEqual(
            advice.trusted_forwarders,
            (("mx.provider.test", "MX of acme.test, not a trusted forwarder"),),
        )
        (warning,) = [w for w in advice.warnings if "trusted forwarder" in w]
        self.assertIn("add it to [inbound] trusted_forwarders.crm.acme.test", warning)
        lines = advisor.zone_text(advice).splitlines()
        self.assertIn("; servers forwarding mail for acme.test here:", lines)
        self.assertIn(";   mx.provider.test: MX of acme.test, not a trusted forwarder", lines)
        data = advisor.advice_json(advice)
        self.assertEqual(
            data["trusted_forwarders"],
            [
                {
                    "forwarder": "mx.provider.test",
                    "known": "MX of acme.test, not a trusted forwarder",
                }
            ],
        )

    @defer.inlineCallbacks
    def test_configured_forwarders_are_listed(self):
        config = self.with_forwarders(
            trusted_forwarders=("192.0.2.99/32",),
            domain_forwarders=(("crm.acme.test", ("mx.provider.test",)),),
        )
        advice = yield self.advise(secondary_subject((ACME_KEY,), FORWARDS), config)
        self.assertEqual(
            [forwarder for forwarder, _ in advice.trusted_forwarders],
            ["192.0.2.99/32", "mx.provider.test"],
        )
        self.assertEqual([w for w in advice.warnings if "trusted forwarder" in w], [])

    @defer.inlineCallbacks
    def test_an_mx_trusted_by_its_network(self):
        config = self.with_forwarders(domain_forwarders=(("acme.test", ("198.51.100.0/24",)),))
        advice = yield self.advise(secondary_subject((ACME_KEY,), FORWARDS), config)
        self.assertIn(
            ("mx.provider.test", "MX of acme.test, a trusted forwarder by its address"),
            advice.trusted_forwarders,
        )
        self.assertEqual([w for w in advice.warnings if "trusted forwarder" in w], [])

    @defer.inlineCallbacks
    def test_a_primary_domain_has_no_forwarders_listed(self):
        advice = yield self.advise(primary_subject((GOOD_KEY,)))
        self.assertEqual(advice.trusted_forwarders, ())

    @defer.inlineCallbacks
    def test_zone(self):
        advice = yield self.advise(secondary_subject((ACME_KEY,), FORWARDS))
        text = advisor.zone_text(advice)
        lines = text.splitlines()
        self.assertEqual(
            lines[0],
            "; DNS records for crm.acme.test (secondary mode, mailboxes send as name@acme.test)",
        )
        # MX for the 3rd-level domain only; acme.test's MX stays with its provider.
        self.assertIn(f"crm.acme.test. 3600 IN MX 10 {HOSTNAME}.", lines)
        self.assertEqual([line for line in lines if " IN MX " in line and "crm." not in line], [])
        # SPF for the domain the mailboxes send as.
        self.assertIn(
            'acme.test. 3600 IN TXT "v=spf1 mx include:_spf.google.test '
            'include:_spf.mailprovider.test include:spf.atollon.test -all"',
            lines,
        )
        self.assertNotIn("crm.acme.test. 3600 IN TXT", text)
        self.assertIn(
            'atollon._domainkey.acme.test. 3600 IN TXT "v=DKIM1; k=ed25519; p=ACMEKEY"', lines
        )
        self.assertIn('_dmarc.acme.test. 3600 IN TXT "v=DMARC1; p=quarantine"', lines)
        end = lines[lines.index("; forwarding to set up at acme.test's mail provider:") :]
        self.assertEqual(
            end,
            [
                "; forwarding to set up at acme.test's mail provider:",
                ";   office@acme.test -> office@crm.acme.test",
                ";   sales@acme.test -> sales@crm.acme.test",
            ],
        )
        self.assertIn(f";   {advisor.MICROSOFT_365_NOTE}", lines)
        self.assertIn("outbound spam filter policy", advisor.MICROSOFT_365_NOTE)
        # Everything else is a comment: the text can go into a zone file as it is.
        for line in lines:
            self.assertTrue(line.startswith(";") or " 3600 IN " in line, line)

    @defer.inlineCallbacks
    def test_json(self):
        advice = yield self.advise(secondary_subject((ACME_KEY,), FORWARDS))
        data = advisor.advice_json(advice)
        self.assertEqual(
            (data["mode"], data["primary_domain"], data["receiving_domain"]),
            ("secondary", "acme.test", "crm.acme.test"),
        )
        self.assertEqual(data["sending_domains"], ["acme.test"])
        self.assertEqual(
            data["forwarding"],
            [
                {"from": "office@acme.test", "to": "office@crm.acme.test"},
                {"from": "sales@acme.test", "to": "sales@crm.acme.test"},
            ],
        )
        self.assertIn(advisor.MICROSOFT_365_NOTE, data["notes"])
        json.dumps(data)

    @defer.inlineCallbacks
    def test_table(self):
        advice = yield self.advise(secondary_subject((ACME_KEY,), FORWARDS))
        text = _records_table(advice)
        lines = text.splitlines()
        self.assertIn("forwarding to set up at acme.test's mail provider:", lines)
        self.assertIn("  sales@acme.test -> sales@crm.acme.test", lines)
        self.assertIn(f"  {advisor.MICROSOFT_365_NOTE}", lines)
        self.assertTrue(lines[1].startswith("crm.acme.test "))

    @defer.inlineCallbacks
    def test_host_named_when_no_address_is_configured(self):
        # acme.test's MX is the other provider's: `mx` would authorize it, not us.
        config = make_config(self.dns.nameserver, ipv4=None, ipv6=None)
        self.dns.set_records("acme.test", [("MX", 10, "mx.provider.test")])
        advice = yield self.advise(secondary_subject((ACME_KEY,)), config)
        self.assertEqual(self.record(advice, "acme.test", "TXT").value, f"v=spf1 a:{HOSTNAME} -all")

    @defer.inlineCallbacks
    def test_no_mailbox_yet(self):
        advice = yield self.advise(secondary_subject((ACME_KEY,)))
        self.assertEqual(advice.forwarding, ())
        self.assertIn("no active mailbox in crm.acme.test", " ".join(advice.notes))

    @defer.inlineCallbacks
    def test_the_primary_domain_itself(self):
        subject = DnsSubject(
            domain=DomainRecord(3, "acme.test", "primary", False),
            hosted=False,
            sending_domains=("acme.test",),
            dkim_keys=(ACME_KEY,),
            forwards=(),
            secondaries=("crm.acme.test",),
        )
        advice = yield self.advise(subject)
        self.assertIsNone(advice.receiving_domain)
        self.assertEqual([r for r in advice.records if r.type == "MX"], [])
        self.assertIn("see: atollon-mail dns records crm.acme.test", advice.notes[0])
        self.assertEqual(
            self.record(advice, "acme.test", "TXT").value,
            "v=spf1 mx include:_spf.google.test include:_spf.mailprovider.test "
            "include:spf.atollon.test -all",
        )


class MailClientRecordsTests(AdvisorTestBase):
    """RFC 6186 SRV records and the autoconfig host name, for every domain received here."""

    def found(self, advice, kinds=("SRV", "CNAME")):
        return {(r.name, r.type): r.value for r in advice.records if r.type in kinds}

    @defer.inlineCallbacks
    def test_the_records_name_the_appliance(self):
        advice = yield self.advise(primary_subject((GOOD_KEY,)), live=False)
        self.assertEqual(
            self.found(advice),
            {
                ("_imaps._tcp.good.test", "SRV"): f"0 1 993 {HOSTNAME}.",
                ("_imap._tcp.good.test", "SRV"): f"10 1 143 {HOSTNAME}.",
                ("_submissions._tcp.good.test", "SRV"): "0 0 0 .",
                ("_submission._tcp.good.test", "SRV"): f"10 1 587 {HOSTNAME}.",
                ("autoconfig.good.test", "CNAME"): f"{HOSTNAME}.",
            },
        )
        self.assertIn(
            "_submissions._tcp.good.test. 3600 IN SRV 0 0 0 .",
            advisor.zone_text(advice).splitlines(),
        )
        refusal = self.record(advice, "_submissions._tcp.good.test", "SRV")
        self.assertIn("not offered", refusal.purpose)
        self.assertIn("[submission] tls_listen", refusal.purpose)

    @defer.inlineCallbacks
    def test_implicit_tls_submission_once_its_listener_is_configured(self):
        config = attrs.evolve(
            self.config, submission=attrs.evolve(self.config.submission, tls_listen="tcp:465")
        )
        advice = yield self.advise(primary_subject((GOOD_KEY,)), config, live=False)
        record = self.record(advice, "_submissions._tcp.good.test", "SRV")
        self.assertEqual(record.value, f"0 1 465 {HOSTNAME}.")
        self.assertIn("mail clients find", record.purpose)

    @defer.inlineCallbacks
    def test_a_secondary_domain_has_them_and_its_primary_domain_not(self):
        advice = yield self.advise(secondary_subject((ACME_KEY,), FORWARDS), live=False)
        names = {name for name, _ in self.found(advice)}
        self.assertEqual(
            names,
            {
                "_imaps._tcp.crm.acme.test",
                "_imap._tcp.crm.acme.test",
                "_submissions._tcp.crm.acme.test",
                "_submission._tcp.crm.acme.test",
                "autoconfig.crm.acme.test",
            },
        )
        anchor = DnsSubject(
            domain=DomainRecord(3, "acme.test", "primary", False),
            hosted=False,
            sending_domains=("acme.test",),
            dkim_keys=(ACME_KEY,),
            forwards=(),
            secondaries=("crm.acme.test",),
        )
        advice = yield self.advise(anchor, live=False)
        self.assertEqual(self.found(advice), {})

    @defer.inlineCallbacks
    def test_none_while_the_host_name_is_no_public_name(self):
        config = attrs.evolve(
            self.config, appliance=attrs.evolve(self.config.appliance, hostname="localhost")
        )
        advice = yield self.advise(primary_subject((GOOD_KEY,)), config, live=False)
        self.assertEqual(self.found(advice), {})
        self.assertNotIn("autoconfig", " ".join(advice.notes))
