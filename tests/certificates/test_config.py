"""[tls]: its defaults, its errors (each naming the file, section and key), and which
certificate the appliance starts with when acme is on."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from atollon_mail import tap
from atollon_mail.certificates.renewal import ACME_CERTIFICATE_FILE
from atollon_mail.config import LETS_ENCRYPT_DIRECTORY, ConfigError, load_config, parse_config
from atollon_mail.selfsigned import make_self_signed
from tests.certificates.localca import LocalCA
from tests.test_tap import MINIMAL, SpyReactor, write_config


class TlsConfigTests(unittest.TestCase):
    def test_defaults(self):
        tls = parse_config("").tls
        self.assertEqual(
            (tls.acme, tls.acme_directory, tls.acme_email, tls.acme_ca_bundle),
            (False, LETS_ENCRYPT_DIRECTORY, None, None),
        )
        self.assertIsNone(parse_config("").web.tls_listen)

    def error(self, text: str) -> str:
        with self.assertRaises(ConfigError) as raised:
            parse_config(text, "atollon-mail.ini")
        return str(raised.exception)

    def test_acme_with_a_configured_certificate_names_both_keys(self):
        path = write_config(self, "")
        directory = os.path.dirname(path)
        certificate, key = make_self_signed("mx.acme.test")
        for name, data in (("cert.pem", certificate), ("key.pem", key)):
            with open(os.path.join(directory, name), "wb") as out:
                out.write(data)
        message = self.error(
            f"[smtp]\ntls_certificate = {directory}/cert.pem\ntls_key = {directory}/key.pem\n"
            "[tls]\nacme = yes\n"
        )
        self.assertTrue(message.startswith("atollon-mail.ini: [tls] acme: "), message)
        self.assertIn("[smtp] tls_certificate", message)

    def test_bad_values_name_their_key(self):
        self.assertEqual(
            self.error("[tls]\nacme_directory = http://ca.example/dir\n"),
            "atollon-mail.ini: [tls] acme_directory: must be an https:// address, "
            "got 'http://ca.example/dir'",
        )
        self.assertIn("[tls] acme_email: must be an address", self.error("[tls]\nacme_email = x\n"))
        self.assertIn(
            "[tls] acme_ca_bundle: no such file: /nonexistent/ca.pem",
            self.error("[tls]\nacme_ca_bundle = /nonexistent/ca.pem\n"),
        )
        self.assertIn("[tls] acme: must be yes or no", self.error("[tls]\nacme = maybe\n"))
        config = parse_config("[web]\ntls_listen = nonsense:1\n", "atollon-mail.ini")
        with self.assertRaises(ConfigError) as raised:
            tap.check_endpoints(config, reactor)
        self.assertIn("atollon-mail.ini: [web] tls_listen: 'nonsense:1'", str(raised.exception))


class StartingCertificateTests(unittest.TestCase):
    def config(self, acme: str):
        return load_config(write_config(self, MINIMAL + f"[tls]\nacme = {acme}\n"))

    def test_the_kept_certificate_from_the_ca_is_served_from_start(self):
        config = self.config("yes")
        ca = LocalCA(reactor)
        os.makedirs(config.appliance.data_dir)
        with open(os.path.join(config.appliance.data_dir, ACME_CERTIFICATE_FILE), "wb") as out:
            out.write(ca.certificate("mx.acme.test"))
        self.assertEqual(tap.load_tls_options(config).certificate.issuer, ca.name)
        # Without acme the kept one is not used: the self-signed one is.
        certificate = tap.load_tls_options(self.config("no")).certificate
        self.assertEqual(certificate.issuer, certificate.subject)

    def test_an_unusable_kept_certificate_falls_back_to_the_self_signed_one(self):
        config = self.config("yes")
        os.makedirs(config.appliance.data_dir)
        with open(os.path.join(config.appliance.data_dir, ACME_CERTIFICATE_FILE), "wb") as out:
            out.write(b"-----BEGIN CERTIFICATE-----\ntruncated\n")
        certificate = tap.load_tls_options(config).certificate
        self.assertEqual(certificate.issuer, certificate.subject)


class ServiceTreeTests(unittest.TestCase):
    def tree(self, acme: str, web: str = ""):
        config = load_config(write_config(self, MINIMAL + f"[tls]\nacme = {acme}\n" + web))
        return tap.build_appliance(config, SpyReactor())

    def test_acme_with_a_loopback_only_web_listener_warns_what_to_set(self):
        lines = []

        def observe(event):
            if event.get("log_level") == LogLevel.warn:
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.tree("yes")  # [web] listen's default: tcp:8080:interface=127.0.0.1
        (line,) = [line for line in lines if "[tls] acme = yes" in line]
        self.assertEqual(line.count("\n"), 0)
        self.assertIn("[web] listen = tcp:8080:interface=127.0.0.1 takes connections", line)
        self.assertIn("set [web] listen = tcp:80 (and tls_listen = tcp:443)", line)
        for listen in ("tcp:80", "tcp:80:interface=0.0.0.0", "tcp6:80:interface=\\:\\:"):
            lines.clear()
            self.tree("yes", f"[web]\nlisten = {listen}\n")
            self.assertEqual([line for line in lines if "[tls] acme" in line], [], listen)
        for listen in ("tcp:80:interface=127.0.0.2", "tcp6:80:interface=\\:\\:1"):
            lines.clear()
            self.tree("yes", f"[web]\nlisten = {listen}\n")
            self.assertEqual(len([line for line in lines if "[tls] acme" in line]), 1, listen)
        lines.clear()
        self.tree("no")
        self.assertEqual([line for line in lines if "[tls] acme" in line], [])

    def test_with_acme_the_certificates_service_fills_the_listeners_tls_options(self):
        appliance = self.tree("yes")
        renewal = appliance.getServiceNamed("certificates")
        smtp = appliance.getServiceNamed("smtp").factory.wrappedFactory
        imap = appliance.getServiceNamed("imap").factory.wrappedFactory
        self.assertIs(renewal.tls_options, smtp.tls_options)
        self.assertIs(renewal.tls_options, imap.tls_options)
        self.assertEqual(renewal.hostname, "mx.acme.test")

    def test_without_acme_there_is_no_certificates_service(self):
        names = [child.name for child in self.tree("no")]
        self.assertNotIn("certificates", names)
        self.assertIn("smtp", names)
