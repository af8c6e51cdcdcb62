"""Zones, keys and messages shared by the inbound tests (DNS answered on loopback).

Domains:
- sender.test: signs with selector "sel", SPF allows SENDER_IP, DMARC p=reject.
- bank.test: sends nothing from here (SPF -all), DMARC p=reject, a subdomain policy.
- shop.test: DMARC p=quarantine, SPF -all.
- relaxed.test: DMARC p=none.
- partner.test: the forwarder mx.partner.test (FORWARDER_IP), seals ARC as partner.test.
- acme.test: our domain (the store has it), SPF allows OUR_IP only.
- bl.test: a DNS blocklist listing LISTED_IP.
"""

from __future__ import annotations

import functools

import dkim as dkimpy

from atollon_mail.delivery import dkim
from tests.dnsserver import start_dns_server

HOSTNAME = "mx.acme.test"
SENDER_IP = "192.0.2.10"
FORWARDER_IP = "192.0.2.20"
OUR_IP = "192.0.2.1"
STRANGER_IP = "198.51.100.7"
LISTED_IP = "203.0.113.99"


@functools.cache
def key(name: str) -> tuple[str, str]:
    """An RSA key pair (private PEM, public base64), made once per test run and name."""
    return dkim.generate_key("rsa")


def zones() -> dict:
    sender_key = dkim.txt_value("rsa", key("sender")[1])
    partner_key = dkim.txt_value("rsa", key("partner")[1])
    acme_key = dkim.txt_value("rsa", key("acme")[1])
    return {
        "sender.test": {
            "@": [("TXT", f"v=spf1 ip4:{SENDER_IP} ip4:127.0.0.1 -all")],
            "_dmarc": [("TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@sender.test")],
            "sel._domainkey": [("TXT", sender_key)],
            "mail": [("TXT", f"v=spf1 ip4:{SENDER_IP} -all")],
        },
        "bank.test": {
            "@": [("TXT", "v=spf1 -all")],
            "_dmarc": [("TXT", "v=DMARC1; p=reject; sp=quarantine")],
        },
        "shop.test": {
            "@": [("TXT", "v=spf1 -all")],
            "_dmarc": [("TXT", "v=DMARC1; p=quarantine")],
        },
        "relaxed.test": {
            "@": [("TXT", "v=spf1 -all")],
            "_dmarc": [("TXT", "v=DMARC1; p=none")],
        },
        "partner.test": {
            "@": [("TXT", "v=spf1 ip4:192.0.2.20 -all")],
            "mx": [("A", FORWARDER_IP), ("TXT", "v=spf1 ip4:192.0.2.20 -all")],
            "arc._domainkey": [("TXT", partner_key)],
        },
        "acme.test": {
            "@": [("TXT", f"v=spf1 ip4:{OUR_IP} -all")],
            "atollon._domainkey": [("TXT", acme_key)],
            "mx": [("A", OUR_IP)],
        },
        "client.test": {
            "mx": [("TXT", f"v=spf1 ip4:{SENDER_IP} ip4:{STRANGER_IP} ip4:127.0.0.1 -all")],
        },
        "bl.test": {
            "99.113.0.203": [("A", "127.0.0.2")],
            "7.100.51.198": [("A", "127.255.255.254")],  # the list's own error code
        },
    }


def start_zones(test, reactor):
    """The loopback DNS server with zones(), stopped after the test."""
    running = start_dns_server(reactor, zones())
    test.addCleanup(running.stop)
    return running


def message(
    from_address: str = "Alice <alice@sender.test>",
    subject: str = "figures",
    extra: bytes = b"",
    body: bytes = b"Hello Jane.\r\n",
) -> bytes:
    return (
        extra
        + f"From: {from_address}\r\nTo: jane@acme.test\r\nSubject: {subject}\r\n".encode()
        + b"Message-ID: <1@sender.test>\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n\r\n"
        + body
    )


def signed(raw: bytes, domain: str = "sender.test", selector: str = "sel", name="sender"):
    return dkim.sign(raw, domain, selector, "rsa", key(name)[0])


def received(raw: bytes, helo: str = "mx.client.test", ip: str = SENDER_IP) -> bytes:
    """raw with the Received: header our server puts on top."""
    return f"Received: from {helo} ({helo} [{ip}])\r\n\tby {HOSTNAME}\r\n".encode() + raw


def arc_sealed(raw: bytes, results: str, domain: str = "partner.test") -> bytes:
    """raw as the forwarder passes it on: its Authentication-Results saying `results`
    and its ARC set (instance 1) on top."""
    authserv = f"mx.{domain}"
    with_results = f"Authentication-Results: {authserv}; {results}\r\n".encode() + raw
    headers = dkimpy.arc_sign(
        with_results,
        b"arc",
        domain.encode(),
        key("partner")[0].encode(),
        authserv.encode(),
    )
    return b"".join(headers) + with_results
