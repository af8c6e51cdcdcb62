"""The self-signed certificate made when no [smtp] tls_certificate is configured."""

from __future__ import annotations

import datetime
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from atollon_mail import selfsigned, tap
from atollon_mail.config import load_config
from tests.test_tap import MINIMAL, SpyReactor, write_config


def capture_log(testcase) -> list[dict]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def read(path: str) -> bytes:
    with open(path, "rb") as kept:
        return kept.read()


class SelfSignedTests(unittest.TestCase):
    def test_made_once_private_and_for_the_host_name(self):
        data_dir = os.path.join(os.path.abspath(self.mktemp()), "data")
        events = capture_log(self)
        certificate_path, key_path = selfsigned.load_or_create_self_signed(data_dir, "mx.acme.test")
        for path in (certificate_path, key_path):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
            self.assertEqual(os.path.dirname(path), data_dir)
        certificate = x509.load_pem_x509_certificate(read(certificate_path))
        key = serialization.load_pem_private_key(read(key_path), password=None)
        self.assertEqual(
            certificate.public_key().public_numbers(), key.public_key().public_numbers()
        )
        common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertEqual([name.value for name in common_name], ["mx.acme.test"])
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(names.value.get_values_for_type(x509.DNSName), ["mx.acme.test"])
        now = datetime.datetime.now(datetime.UTC)
        self.assertLess(certificate.not_valid_before_utc, now)
        self.assertGreater(certificate.not_valid_after_utc, now + datetime.timedelta(days=5 * 365))
        created = [event for event in events if "self-signed" in event.get("log_format", "")]
        self.assertEqual(len(created), 1)
        self.assertEqual(created[0]["path"], certificate_path)

        # Reused afterwards, untouched, and not announced again.
        before = read(certificate_path), read(key_path)
        again = selfsigned.load_or_create_self_signed(data_dir, "mx.acme.test")
        self.assertEqual(again, (certificate_path, key_path))
        self.assertEqual((read(certificate_path), read(key_path)), before)
        self.assertEqual(
            len([event for event in events if "self-signed" in event.get("log_format", "")]), 1
        )

    def test_without_a_configured_certificate_tls_uses_the_self_signed_one(self):
        config = load_config(write_config(self, MINIMAL))
        self.assertFalse(config.smtp.tls_enabled)
        self.assertIsNotNone(tap.load_tls_options(config))
        certificate_path, key_path = selfsigned.self_signed_paths(config.appliance.data_dir)
        self.assertTrue(os.path.isfile(certificate_path) and os.path.isfile(key_path))

    def test_implicit_tls_listens_without_a_configured_certificate(self):
        config = load_config(write_config(self, MINIMAL + "[submission]\ntls_listen = tcp:2465\n"))
        reactor = SpyReactor()
        appliance = tap.build_appliance(config, reactor)
        appliance.startService()
        self.addCleanup(appliance.stopService)
        self.assertIn(2465, [port for port, _, _, _ in reactor.tcpServers])


class WritePrivateTests(unittest.TestCase):
    def test_a_stale_partial_file_is_replaced_not_reused(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "tls.key")
        # A crash left tls.key.new readable by all; another left it a link to elsewhere.
        stale = path + ".new"
        with open(stale, "wb") as left:
            left.write(b"old and much longer than what is written next\n")
        os.chmod(stale, 0o644)
        selfsigned.write_private(path, b"secret\n")
        self.assertEqual(read(path), b"secret\n")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertFalse(os.path.exists(stale))

        elsewhere = os.path.join(directory, "elsewhere")
        with open(elsewhere, "wb") as other:
            other.write(b"not ours\n")
        os.chmod(elsewhere, 0o644)
        os.symlink(elsewhere, stale)
        selfsigned.write_private(path, b"secret 2\n")
        self.assertEqual(read(path), b"secret 2\n")
        self.assertEqual(read(elsewhere), b"not ours\n", "the link was followed")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertFalse(os.path.islink(path))
