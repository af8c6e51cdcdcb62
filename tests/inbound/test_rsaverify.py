"""dkimpy's RSA verification through OpenSSL: the same answers as dkimpy's own
pure-Python function, for good and bad signatures, both digests and a key too small."""

from __future__ import annotations

import hashlib

import dkim
import dkim.crypto
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from twisted.trial import unittest

from atollon_mail.inbound import rsaverify
from tests.inbound import fixtures


def key_pair(bits: int = 2048):
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    numbers = private.public_key().public_numbers()
    return private, {"modulus": numbers.n, "publicExponent": numbers.e}


class VerifyTests(unittest.TestCase):
    def assert_both(self, digest, signature, public_key, expected: bool):
        self.assertIs(rsaverify.verify(digest, signature, public_key), expected)
        self.assertIs(rsaverify._pure_python(digest, signature, public_key), expected)

    def test_a_good_signature_verifies_and_a_changed_one_does_not(self):
        private, public_key = key_pair()
        for name, algorithm in (("sha256", hashes.SHA256()), ("sha1", hashes.SHA1())):
            message = b"the canonical header fields"
            signature = private.sign(message, padding.PKCS1v15(), algorithm)
            digest = hashlib.new(name, message)
            self.assert_both(digest, signature, public_key, True)
            changed = bytes([signature[0] ^ 1]) + signature[1:]
            self.assert_both(digest, changed, public_key, False)
            self.assert_both(hashlib.new(name, b"other fields"), signature, public_key, False)

    def test_a_signature_of_another_key_does_not_verify(self):
        private, _ = key_pair()
        _, other_key = key_pair()
        signature = private.sign(b"fields", padding.PKCS1v15(), hashes.SHA256())
        self.assert_both(hashlib.sha256(b"fields"), signature, other_key, False)

    def test_a_key_too_small_for_the_digest_is_a_key_error_as_in_dkimpy(self):
        # 256 bits cannot hold a SHA-256 digest info: dkimpy reports the key.
        modulus = (1 << 255) + 1
        public_key = {"modulus": modulus, "publicExponent": 65537}
        digest = hashlib.sha256(b"fields")
        with self.assertRaises(dkim.crypto.DigestTooLargeError):
            rsaverify._pure_python(digest, b"\x01" * 32, public_key)
        with self.assertRaises(dkim.crypto.DigestTooLargeError):
            rsaverify.verify(digest, b"\x01" * 32, public_key)

    def test_installed_dkimpy_verifies_with_openssl(self):
        rsaverify.install()
        self.assertIs(dkim.RSASSA_PKCS1_v1_5_verify, rsaverify.verify)
        self.assertIs(dkim.parse_public_key, rsaverify.parsed_public_key)
        raw = fixtures.signed(fixtures.message())
        public = fixtures.key("sender")[1]
        record = f"v=DKIM1; k=rsa; p={public}".encode()
        calls = []

        def counted(*args):
            calls.append(args)
            return rsaverify.verify(*args)

        self.patch(dkim, "RSASSA_PKCS1_v1_5_verify", counted)
        self.assertTrue(dkim.verify(raw, dnsfunc=lambda name, timeout=5: record))
        self.assertFalse(
            dkim.verify(raw.replace(b"figures", b"Figures"), dnsfunc=lambda n, timeout=5: record)
        )
        self.assertEqual(len(calls), 2)

    def test_a_key_is_loaded_into_openssl_once(self):
        _, public_key = key_pair()
        rsaverify._public_key.cache_clear()
        for _ in range(3):
            rsaverify.verify(hashlib.sha256(b"x"), b"\x00" * 256, public_key)
        self.assertEqual(rsaverify._public_key.cache_info().misses, 1)
        self.assertEqual(rsaverify._public_key.cache_info().hits, 2)

    def test_a_key_record_is_parsed_once(self):
        rsaverify.install()
        raw = fixtures.signed(fixtures.message())
        record = f"v=DKIM1; k=rsa; p={fixtures.key('sender')[1]}".encode()
        rsaverify.parsed_public_key.cache_clear()
        for _ in range(3):
            self.assertTrue(dkim.verify(raw, dnsfunc=lambda name, timeout=5: record))
        info = rsaverify.parsed_public_key.cache_info()
        self.assertEqual((info.misses, info.hits), (1, 2))
