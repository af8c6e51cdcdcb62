"""Zones, configuration and domains shared by the DNS tests (all answered on loopback)."""

from __future__ import annotations

import dns.reversename

from atollon_mail.config import Config, HostPort, parse_config
from atollon_mail.store.records import DnsSubject, DomainRecord, PublishedKey

HOSTNAME = "mx.atollon.test"
IPV4 = "192.0.2.10"
IPV6 = "2001:db8::10"
OTHER_MX = "mx.provider.test"
ATOLLON_SPF = f"v=spf1 ip4:{IPV4} ip6:{IPV6} -all"
PROVIDER_SPF = "v=spf1 ip4:198.51.100.0/24 -all"


def make_config(
    nameserver: HostPort,
    ipv4: str | None = IPV4,
    ipv6: str | None = IPV6,
    spf_include: str | None = None,
    dmarc_report_address: str | None = None,
    mta_sts: bool = False,
    check_interval: str = "1d",
) -> Config:
    return parse_config(
        "[appliance]\n"
        f"hostname = {HOSTNAME}\n"
        f"public_ipv4 = {ipv4 or ''}\n"
        f"public_ipv6 = {ipv6 or ''}\n"
        "[delivery]\n"
        f"nameservers = {nameserver.host}:{nameserver.port}\n"
        "[dns]\n"
        f"spf_include = {spf_include or ''}\n"
        f"dmarc_report_address = {dmarc_report_address or ''}\n"
        f"mta_sts = {'yes' if mta_sts else 'no'}\n"
        f"check_interval = {check_interval}\n"
        # IMAP over implicit TLS offered, so that every client record is proposed.
        "[imap]\ntls_listen = tcp:2993\n"
    )


def reverse(address: str) -> str:
    """The absolute PTR owner name of address, with the final dot (absolute in a zone)."""
    return dns.reversename.from_address(address).to_text()


def appliance_zones() -> dict:
    """The appliance's host, its reverse DNS, and the SPF records that are included."""
    return {
        "atollon.test": {
            "mx": [("A", IPV4), ("AAAA", IPV6)],
            "spf": [("TXT", ATOLLON_SPF)],
        },
        "2.0.192.in-addr.arpa": {reverse(IPV4): [("PTR", HOSTNAME)]},
        "8.b.d.0.1.0.0.2.ip6.arpa": {reverse(IPV6): [("PTR", HOSTNAME)]},
        "provider.test": {
            "mx": [("A", "198.51.100.25")],
            "spf": [("TXT", PROVIDER_SPF)],
        },
        "google.test": {"_spf": [("TXT", "v=spf1 ip4:203.0.113.0/24 ~all")]},
        "mailprovider.test": {"_spf": [("TXT", "v=spf1 ip4:198.51.100.128/25 -all")]},
    }


def primary_zone(dkim_txt: str) -> dict:
    """good.test: everything right for primary mode."""
    return {
        "@": [("MX", 10, HOSTNAME), ("TXT", "v=spf1 mx include:spf.atollon.test -all")],
        "atollon._domainkey": [("TXT", dkim_txt)],
        "_dmarc": [("TXT", "v=DMARC1; p=none; rua=mailto:dmarc@good.test")],
    }


def secondary_zone(dkim_txt: str) -> dict:
    """acme.test at its own provider, crm.acme.test here: everything right."""
    return {
        "@": [
            ("MX", 10, OTHER_MX),
            ("TXT", "v=spf1 include:spf.provider.test include:spf.atollon.test -all"),
        ],
        "crm": [("MX", 10, HOSTNAME)],
        "atollon._domainkey": [("TXT", dkim_txt)],
        "_dmarc": [("TXT", "v=DMARC1; p=quarantine")],
    }


def primary_subject(keys: tuple[PublishedKey, ...] = ()) -> DnsSubject:
    return DnsSubject(
        domain=DomainRecord(1, "good.test", "primary", True),
        hosted=True,
        sending_domains=("good.test",),
        dkim_keys=keys,
        forwards=(),
        secondaries=(),
    )


def secondary_subject(
    keys: tuple[PublishedKey, ...] = (), forwards: tuple[tuple[str, str], ...] = ()
) -> DnsSubject:
    return DnsSubject(
        domain=DomainRecord(2, "crm.acme.test", "secondary", True, "acme.test"),
        hosted=True,
        sending_domains=("acme.test",),
        dkim_keys=keys,
        forwards=forwards,
        secondaries=(),
    )
