"""End to end: the appliance under twistd gets its certificate from Debian's pebble test
CA over loopback ([tls] acme), answering pebble's HTTP-01 challenge on its web listener,
and its SMTP and IMAP listeners present the new certificate without a restart."""

from __future__ import annotations

import imaplib
import os
import smtplib
import ssl
import stat
import time

from cryptography import x509
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from atollon_mail.certificates.issuer import ACCOUNT_FILE, ACCOUNT_KEY_FILE
from atollon_mail.certificates.renewal import ACME_CERTIFICATE_FILE
from tests.builders import new_appliance
from tests.dnsserver import start_dns_server
from tests.pebble import start_pebble

HOSTNAME = "mx.acme.test"  # RunningAppliance's
ISSUE_TIMEOUT = 25.0


def unverified() -> ssl.SSLContext:
    # Which certificate is shown is checked against pebble's intermediate below.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def shown(sock) -> x509.Certificate:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))


def smtp_starttls_certificate(port: int) -> x509.Certificate:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=unverified())
        return shown(client.sock)


def imap_certificates(port: int, tls_port: int) -> tuple[x509.Certificate, x509.Certificate]:
    """(the certificate after STARTTLS, the one on the implicit-TLS port)."""
    plain = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        plain.starttls(ssl_context=unverified())
        after_starttls = shown(plain.sock)
    finally:
        plain.logout()
    implicit = imaplib.IMAP4_SSL("127.0.0.1", tls_port, ssl_context=unverified(), timeout=10)
    try:
        return after_starttls, shown(implicit.sock)
    finally:
        implicit.logout()


class AcmeCertificateTests(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def test_the_pebble_certificate_replaces_the_self_signed_one_without_a_restart(self):
        dns = start_dns_server(reactor, {"acme.test": {"mx": [("A", "127.0.0.1")]}})
        self.addCleanup(dns.stop)
        directory = os.path.abspath(self.mktemp())
        pebble_directory = os.path.join(directory, "pebble")
        os.makedirs(pebble_directory)
        appliance = new_appliance(self, extra="greet_pause = 0\n", imap_tls=True)
        pebble = start_pebble(pebble_directory, http_port=appliance.web_port, dns_port=dns.port)
        self.addCleanup(pebble.stop)
        with open(appliance.config, "a") as config_file:
            config_file.write(
                f"[tls]\nacme = yes\nacme_directory = {pebble.directory_url}\n"
                f"acme_ca_bundle = {pebble.ca_bundle}\nacme_email = postmaster@acme.test\n"
            )
        intermediate = yield threads.deferToThread(pebble.intermediate)
        started = time.monotonic()
        yield threads.deferToThread(appliance.start)
        self.addCleanup(appliance.stop)

        def wait_for_the_ca_certificate() -> x509.Certificate:
            first = smtp_starttls_certificate(appliance.smtp_port)
            # Served at once from start: the self-signed one, before pebble's arrives.
            if first.issuer != intermediate.subject:
                self.assertEqual(first.issuer, first.subject, "self-signed at first")
            while time.monotonic() - started < ISSUE_TIMEOUT:
                seen = smtp_starttls_certificate(appliance.smtp_port)
                if seen.issuer == intermediate.subject:
                    return seen
                time.sleep(0.2)
            raise AssertionError(
                f"no certificate from pebble within {ISSUE_TIMEOUT} s\n"
                f"appliance: {appliance.log()}\npebble: {pebble.log()}"
            )

        issued = yield threads.deferToThread(wait_for_the_ca_certificate)
        names = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), [HOSTNAME])
        # Signed by pebble's intermediate, not only named after it.
        issued.verify_directly_issued_by(intermediate)
        after_starttls, implicit = yield threads.deferToThread(
            imap_certificates, appliance.imap_port, appliance.imap_tls_port
        )
        self.assertEqual((after_starttls, implicit), (issued, issued))

        data = os.path.join(appliance.directory, "data")
        for name in (ACME_CERTIFICATE_FILE, ACCOUNT_KEY_FILE, ACCOUNT_FILE):
            mode = stat.S_IMODE(os.stat(os.path.join(data, name)).st_mode)
            self.assertEqual(mode, 0o600, name)
        log = appliance.log()
        self.assertIn("requesting a certificate for mx.acme.test", log)
        self.assertIn("new certificate for mx.acme.test in use", log)
        self.assertNotIn("not renewed", log)
