"""DKIM keys, records, signing and verification, keys served by a DNS server on loopback."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re

import dkim as dkimpy
import dns.rdatatype
import dns.zone
from cryptography.hazmat.primitives import serialization
from dkim.canonicalization import CanonicalizationPolicy
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from atollon_mail.delivery import dkim
from atollon_mail.delivery.mx import dns_resolver
from atollon_mail.smtp.client import normalize_line_endings
from tests.dnsserver import start_dns_server

HAVE_NACL = importlib.util.find_spec("nacl") is not None
NO_NACL = "PyNaCl is not installed: dkimpy needs it for ed25519 (pip install pynacl)"

MESSAGE = (
    b"Received: from client by mx.acme.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: Alice <alice@acme.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: quarterly figures\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@acme.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: atollon\r\n"
    b"\r\n"
    b"Hello Bob,\r\n\r\nthe figures are attached.\r\n"
)


# Shapes of message the signer must get right, each checked against dkimpy.
TRICKY_MESSAGES = {
    "folded and spaced headers": (
        b"From:   Alice\r\n\t<alice@acme.test>  \r\nTo: bob@example.org\r\n"
        b"Subject: a  \t b\r\n   c \r\n\r\nbody\r\n"
    ),
    "body whitespace": (
        b"From: alice@acme.test\r\n\r\none  two\tthree \r\n\t indented\t\r\n \r\nlast   \r\n"
    ),
    "empty body": b"From: alice@acme.test\r\nSubject: nothing\r\n\r\n",
    "no blank line": b"From: alice@acme.test\r\nSubject: headers only\r\n",
    "last line unended": b"From: alice@acme.test\r\n\r\nfirst\r\nlast line",
    "blank lines only": b"From: alice@acme.test\r\n\r\n\r\n \r\n\t\r\n\r\n",
    "trailing blank lines": b"From: alice@acme.test\r\n\r\ntext\r\n\r\n\r\n\r\n",
    "repeated and odd-case names": (
        b"FROM: alice@acme.test\r\nto: a@example.org\r\nTo: b@example.org\r\n"
        b"TO: c@example.org\r\nsUbJeCt: x\r\nCc:\r\nReply-To:r@acme.test\r\n\r\nbody\r\n"
    ),
    "8-bit header and body": (
        "From: Žofie <zofie@acme.test>\r\nSubject: Příliš žluťoučký kůň\r\n\r\n"
        "úpěl ďábelské ódy\r\n"
    ).encode(),
    "LF only": b"From: alice@acme.test\nSubject: lf\n folded\n\nline  one \nline two\n",
    "bare CR and LF mixed": (b"From: alice@acme.test\r\nSubject: mixed\r\n\r\none\ntwo\rthree\r\n"),
    "every signed header": b"".join(
        name.title() + b": value of " + name + b"\r\n" for name in dkim.SIGNED_HEADERS
    ).replace(b"value of from", b"alice@acme.test")
    + b"\r\nbody\r\n",
    "mbox separator": b"From alice@acme.test Mon Jan  1 00:00:00 2024\r\n" + MESSAGE,
}


def as_sent(raw: bytes) -> bytes:
    """The message as the SMTP client sends it: CRLF lines, the last one ended."""
    sent = normalize_line_endings(raw)
    return sent if sent.endswith(b"\r\n") else sent + b"\r\n"


def dkimpy_body_hash(raw: bytes) -> bytes:
    _, body = dkimpy.rfc822_parse(as_sent(raw))
    canonical = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").canonicalize_body(body)
    return base64.b64encode(hashlib.sha256(canonical).digest())


def signature_tags(signed: bytes) -> dict[bytes, bytes]:
    header = signed.split(b"\r\n\r\n", 1)[0]
    match = re.match(rb"DKIM-Signature:(.*?)\r\n(?![ \t])", header + b"\r\n", re.S)
    tags = {}
    for part in match.group(1).split(b";"):
        name, _, value = part.partition(b"=")
        tags[name.strip()] = re.sub(rb"\s+", b"", value)
    return tags


def signed_header_names(signed: bytes) -> list[bytes]:
    return signature_tags(signed)[b"h"].split(b":")


class KeyTests(unittest.TestCase):
    def test_rsa_key(self):
        private, public = dkim.generate_key("rsa")
        self.assertTrue(private.startswith("-----BEGIN RSA PRIVATE KEY-----"))
        key = serialization.load_pem_private_key(private.encode(), password=None)
        self.assertEqual(key.key_size, 2048)
        loaded = serialization.load_der_public_key(base64.b64decode(public))
        self.assertEqual(loaded.public_numbers(), key.public_key().public_numbers())

    def test_ed25519_key(self):
        private, public = dkim.generate_key("ed25519")
        self.assertEqual(len(base64.b64decode(private)), 32)
        self.assertEqual(len(base64.b64decode(public)), 32)

    def test_unknown_algorithm(self):
        with self.assertRaises(ValueError):
            dkim.generate_key("dsa")

    def test_txt_value(self):
        self.assertEqual(dkim.txt_value("rsa", "AAAB"), "v=DKIM1; k=rsa; p=AAAB")
        self.assertEqual(dkim.txt_value("ed25519", "AAAB"), "v=DKIM1; k=ed25519; p=AAAB")

    def test_zone_record_splits_and_parses_back(self):
        _, public = dkim.generate_key("rsa")
        line = dkim.zone_record("atollon", "acme.com", "rsa", public)
        self.assertTrue(line.startswith("atollon._domainkey.acme.com. 3600 IN TXT ( "))
        quoted = re.findall(r'"([^"]*)"', line)
        self.assertGreater(len(quoted), 2)
        self.assertTrue(all(len(string) <= 255 for string in quoted))
        self.assertEqual(quoted[0], "v=DKIM1; k=rsa; ")
        zone = dns.zone.from_text(line + "\n", origin="acme.com.", check_origin=False)
        rdataset = zone.find_rdataset("atollon._domainkey", dns.rdatatype.TXT)
        self.assertEqual(rdataset.ttl, 3600)
        (rdata,) = list(rdataset)
        self.assertEqual(b"".join(rdata.strings).decode(), dkim.txt_value("rsa", public))

    def test_short_zone_record(self):
        _, public = dkim.generate_key("ed25519")
        line = dkim.zone_record("sel", "acme.com.", "ed25519", public)
        self.assertEqual(
            line, f'sel._domainkey.acme.com. 3600 IN TXT ( "v=DKIM1; k=ed25519; " "p={public}" )'
        )


class SigningTests(unittest.TestCase):
    def setUp(self):
        self.dns = start_dns_server(reactor, {"acme.test": {"@": [("TXT", "v=spf1 -all")]}})
        self.addCleanup(self.dns.stop)
        self.resolver = dns_resolver((self.dns.nameserver,), timeout=2)

    def publish(self, algorithm: str, selector: str = dkim.DEFAULT_SELECTOR) -> str:
        private, public = dkim.generate_key(algorithm)
        self.dns.set_records(
            f"{selector}._domainkey.acme.test", [("TXT", dkim.txt_value(algorithm, public))]
        )
        return private

    def verify(self, raw: bytes) -> defer.Deferred:
        # verify blocks on DNS, and the DNS server answers on the reactor thread.
        return threads.deferToThread(dkim.verify, raw, self.resolver)

    @defer.inlineCallbacks
    def check_round_trip(self, algorithm: str, signature_algorithm: bytes):
        private = self.publish(algorithm)
        signed = dkim.sign(MESSAGE, "acme.test", dkim.DEFAULT_SELECTOR, algorithm, private)
        self.assertTrue(signed.startswith(b"DKIM-Signature: "))
        self.assertTrue(signed.endswith(MESSAGE))
        tags = signature_tags(signed)
        self.assertEqual(tags[b"a"], signature_algorithm)
        self.assertEqual(tags[b"c"], b"relaxed/relaxed")
        self.assertEqual((tags[b"d"], tags[b"s"]), (b"acme.test", b"atollon"))
        self.assertTrue((yield self.verify(signed)))
        self.assertGreaterEqual(self.dns.query_count("atollon._domainkey.acme.test", "TXT"), 1)

    def test_rsa_sign_and_verify(self):
        return self.check_round_trip("rsa", b"rsa-sha256")

    def test_ed25519_sign_and_verify(self):
        return self.check_round_trip("ed25519", b"ed25519-sha256")

    if not HAVE_NACL:
        test_ed25519_sign_and_verify.skip = NO_NACL

    @defer.inlineCallbacks
    def test_modified_body_fails(self):
        private = self.publish("rsa")
        signed = dkim.sign(MESSAGE, "acme.test", "atollon", "rsa", private)
        self.assertFalse((yield self.verify(signed.replace(b"attached", b"enclosed"))))

    @defer.inlineCallbacks
    def test_modified_ed25519_body_fails(self):
        private = self.publish("ed25519")
        signed = dkim.sign(MESSAGE, "acme.test", "atollon", "ed25519", private)
        self.assertFalse((yield self.verify(signed.replace(b"attached", b"enclosed"))))

    if not HAVE_NACL:
        test_modified_ed25519_body_fails.skip = NO_NACL

    @defer.inlineCallbacks
    def test_relaxed_canonicalization_survives_whitespace(self):
        private = self.publish("rsa")
        signed = dkim.sign(MESSAGE, "acme.test", "atollon", "rsa", private)
        rewhitespaced = signed.replace(
            b"Subject: quarterly figures\r\n", b"subject:   quarterly\r\n\tfigures  \r\n"
        ).replace(b"the figures are attached.\r\n", b"the  figures are attached.   \r\n\r\n")
        self.assertNotEqual(rewhitespaced, signed)
        self.assertTrue((yield self.verify(rewhitespaced)))

    @defer.inlineCallbacks
    def test_signs_only_listed_headers_that_are_present(self):
        private = self.publish("rsa")
        signed = dkim.sign(MESSAGE, "acme.test", "atollon", "rsa", private)
        names = signed_header_names(signed)
        self.assertEqual(
            names,
            [
                b"from",
                b"to",
                b"subject",
                b"date",
                b"message-id",
                b"mime-version",
                b"content-type",
                b"from",  # once more: a From added in transit breaks the signature
            ],
        )
        # Headers outside the list may change in transit; listed ones may not.
        self.assertTrue((yield self.verify(signed.replace(b"X-Mailer: atollon", b"X-Mailer: x"))))
        self.assertFalse((yield self.verify(signed.replace(b"quarterly", b"monthly"))))
        added_cc = signed.replace(b"X-Mailer:", b"Cc: eve@example.org\r\nX-Mailer:")
        self.assertTrue((yield self.verify(added_cc)))  # cc was absent, so not covered

    def test_list_headers_and_repeated_headers_are_covered(self):
        private, _ = dkim.generate_key("rsa")
        raw = (
            b"From: news@acme.test\r\nTo: a@example.org\r\nTo: b@example.org\r\n"
            b"List-Unsubscribe: <https://acme.test/u/1>\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nbody\r\n"
        )
        signed = dkim.sign(raw, "acme.test", "atollon", "rsa", private)
        self.assertEqual(
            signed_header_names(signed),
            [b"from", b"to", b"to", b"list-unsubscribe", b"list-unsubscribe-post", b"from"],
        )

    @defer.inlineCallbacks
    def test_tricky_messages_verify_with_dkimpy(self):
        keys = {algorithm: self.publish(algorithm, algorithm) for algorithm in dkim.ALGORITHMS}
        if not HAVE_NACL:
            del keys["ed25519"]
        for label, raw in TRICKY_MESSAGES.items():
            for algorithm, private in keys.items():
                signed = dkim.sign(raw, "acme.test", algorithm, algorithm, private)
                self.assertTrue(signed.endswith(raw), label)
                verified = yield self.verify(as_sent(signed))
                self.assertTrue(verified, f"{label} ({algorithm}) does not verify")
                self.assertEqual(signature_tags(signed)[b"bh"], dkimpy_body_hash(raw), label)
                tampered = as_sent(signed).replace(b"acme.test", b"acme.tesu", 1)
                self.assertFalse((yield self.verify(tampered)), label)

    def test_signature_header_lines_are_short(self):
        private, _ = dkim.generate_key("rsa")
        signed = dkim.sign(
            TRICKY_MESSAGES["every signed header"],
            "a-rather-long-domain-name.acme.test",
            "selector2026",
            "rsa",
            private,
        )
        header = signed.split(b"\r\nFrom: ", 1)[0].split(b"\r\n")
        self.assertGreater(len(header), 3)
        self.assertTrue(all(len(line) <= 78 for line in header), header)
        self.assertTrue(all(line[:1] in (b" ", b"\t") for line in header[1:]), header)

    def test_same_time_same_signature(self):
        private, _ = dkim.generate_key("rsa")
        first = dkim.sign(MESSAGE, "acme.test", "atollon", "rsa", private, timestamp=1700000000)
        again = dkim.sign(MESSAGE, "acme.test", "atollon", "rsa", private, timestamp=1700000000)
        self.assertEqual(first, again)
        self.assertEqual(signature_tags(first)[b"t"], b"1700000000")

    def test_bad_header_line_is_refused(self):
        private, _ = dkim.generate_key("rsa")
        with self.assertRaises(ValueError):
            dkim.sign(
                b"From: a@acme.test\r\nno colon here\r\n\r\nbody\r\n",
                "acme.test",
                "atollon",
                "rsa",
                private,
            )

    def test_bad_key_is_refused(self):
        with self.assertRaises(ValueError):
            dkim.sign(MESSAGE, "acme.test", "atollon", "rsa", "not a key")
        with self.assertRaises(ValueError):
            dkim.sign(MESSAGE, "acme.test", "atollon", "ed25519", "c2hvcnQ=")

    def test_message_without_from_is_refused(self):
        private, _ = dkim.generate_key("rsa")
        with self.assertRaises(ValueError):
            dkim.sign(b"Subject: x\r\n\r\nbody\r\n", "acme.test", "atollon", "rsa", private)

    @defer.inlineCallbacks
    def test_lf_only_message(self):
        private = self.publish("rsa")
        raw = MESSAGE.replace(b"\r\n", b"\n")
        signed = dkim.sign(raw, "acme.test", "atollon", "rsa", private)
        self.assertNotIn(b"\r\n", signed)
        self.assertTrue((yield self.verify(signed)))

    @defer.inlineCallbacks
    def test_zone_record_strings_served_verify(self):
        private, public = dkim.generate_key("rsa")
        line = dkim.zone_record("split", "acme.test", "rsa", public)
        strings = re.findall(r'"([^"]*)"', line)
        self.dns.set_records("split._domainkey.acme.test", [("TXT", *strings)])
        signed = dkim.sign(MESSAGE, "acme.test", "split", "rsa", private)
        self.assertTrue((yield self.verify(signed)))

    @defer.inlineCallbacks
    def test_key_not_published_fails(self):
        private, _ = dkim.generate_key("rsa")
        signed = dkim.sign(MESSAGE, "acme.test", "missing", "rsa", private)
        self.assertFalse((yield self.verify(signed)))

    @defer.inlineCallbacks
    def test_wrong_key_published_fails(self):
        self.publish("rsa")
        other, _ = dkim.generate_key("rsa")
        signed = dkim.sign(MESSAGE, "acme.test", "atollon", "rsa", other)
        self.assertFalse((yield self.verify(signed)))

    @defer.inlineCallbacks
    def test_unsigned_message_does_not_verify(self):
        self.assertFalse((yield self.verify(MESSAGE)))

    @defer.inlineCallbacks
    def test_dns_failure_does_not_verify(self):
        private = self.publish("rsa")
        signed = dkim.sign(MESSAGE, "acme.test", "atollon", "rsa", private)
        self.dns.fail("atollon._domainkey.acme.test", "SERVFAIL")
        self.assertFalse((yield self.verify(signed)))
