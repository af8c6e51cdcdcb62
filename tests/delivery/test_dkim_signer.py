"""The DkimSigner against a real store: which keys sign, both algorithms at once, key
rotation and the removal of retired keys (time from a task.Clock), each signature checked
with dkimpy against keys served by a DNS server on loopback."""

from __future__ import annotations

import email
import email.policy
import time

import dkim as dkimpy
from twisted.internet import defer, reactor, task, threads
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from atollon_mail.config import ConfigError, parse_config
from atollon_mail.delivery import dkim
from atollon_mail.delivery.dkim_signer import KEY_REFRESH_SECONDS, DkimSigner
from atollon_mail.delivery.mx import dns_resolver
from atollon_mail.store import domains
from atollon_mail.store.models import utc_now
from tests.delivery.test_dkim import HAVE_NACL, NO_NACL
from tests.dnsserver import start_dns_server
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

MESSAGE = (
    b"From: Alice <alice@acme.test>\r\nTo: bob@remote.test\r\nSubject: figures\r\n"
    b"Message-ID: <1@acme.test>\r\n\r\nHello Bob.\r\n"
)
RETENTION = 3 * 86400.0


def signature_tags(signed: bytes) -> list[dict[str, str]]:
    """The tags of each DKIM-Signature header, top first."""
    message = email.message_from_bytes(signed, policy=email.policy.compat32)
    found = []
    for value in message.get_all("DKIM-Signature", []):
        tags = {}
        for part in "".join(value.split()).split(";"):
            name, _, tag_value = part.partition("=")
            tags[name] = tag_value
        found.append(tags)
    return found


class SignerTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        self.store.run_sync(domains.add_domain, "acme.test")
        self.dns = start_dns_server(reactor, {"acme.test": {"@": [("TXT", "v=spf1 -all")]}})
        self.addCleanup(self.dns.stop)
        self.resolver = dns_resolver((self.dns.nameserver,), timeout=2)
        self.workers = ThreadPool(minthreads=1, maxthreads=1, name="test-signing")
        self.workers.start()
        self.addCleanup(self.workers.stop)
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.signer = DkimSigner(self.store, reactor, self.workers, RETENTION, clock=self.clock)

    def add_key(self, selector: str, algorithm: str, publish: bool = True):
        private, public = dkim.generate_key(algorithm)
        key = self.store.run_sync(
            domains.add_dkim_key, "acme.test", selector, algorithm, private, public
        )
        if publish:
            self.dns.set_records(
                f"{selector}._domainkey.acme.test", [("TXT", dkim.txt_value(algorithm, public))]
            )
        return key

    @defer.inlineCallbacks
    def sign(self, raw: bytes = MESSAGE) -> defer.Deferred:
        signed = yield self.signer.sign_all({1: raw})
        return signed[1]

    def verify_each(self, signed: bytes) -> defer.Deferred:
        """Whether each signature verifies, top first (dkimpy, blocking: in a thread)."""
        lookup = dkim._txt_lookup(self.resolver)

        def verify():
            checker = dkimpy.DKIM(signed)
            count = len(signature_tags(signed))
            return [bool(checker.verify(idx=index, dnsfunc=lookup)) for index in range(count)]

        return threads.deferToThread(verify)

    @defer.inlineCallbacks
    def test_rsa_and_ed25519_keys_both_sign(self):
        self.add_key("rsa1", "rsa")
        self.add_key("ed1", "ed25519")
        signed = yield self.sign()
        tags = signature_tags(signed)
        self.assertEqual(
            [(t["a"], t["s"]) for t in tags], [("rsa-sha256", "rsa1"), ("ed25519-sha256", "ed1")]
        )
        self.assertTrue(signed.endswith(MESSAGE))
        self.assertEqual((yield self.verify_each(signed)), [True, True])

    if not HAVE_NACL:
        test_rsa_and_ed25519_keys_both_sign.skip = NO_NACL

    @defer.inlineCallbacks
    def test_a_long_line_is_re_encoded_before_signing(self):
        self.add_key("rsa1", "rsa")
        raw = (
            b"From: alice@acme.test\r\nSubject: long\r\nContent-Type: text/plain\r\n"
            b"Content-Transfer-Encoding: 7bit\r\n\r\n" + b"word " * 300 + b"\r\n"
        )
        signed = yield self.sign(raw)
        self.assertLessEqual(max(len(line) for line in signed.split(b"\r\n")), 998)
        self.assertIn(b"\r\nContent-Transfer-Encoding: quoted-printable\r\n", signed)
        self.assertEqual((yield self.verify_each(signed)), [True])

    @defer.inlineCallbacks
    def test_rotation(self):
        self.add_key("old", "rsa")
        pending = self.add_key("new", "rsa", publish=False)
        self.assertEqual(pending.state, "pending")
        tags = signature_tags((yield self.sign()))
        self.assertEqual([t["s"] for t in tags], ["old"], "a pending key does not sign")

        yield self.store.run(domains.activate_dkim_key, "acme.test", "new", utc_now())
        self.clock.advance(KEY_REFRESH_SECONDS)
        signed = yield self.sign()
        self.assertEqual([t["s"] for t in signature_tags(signed)], ["new"])
        self.dns.set_records(
            "new._domainkey.acme.test",
            [("TXT", dkim.txt_value("rsa", pending.public_key))],
        )
        self.assertEqual((yield self.verify_each(signed)), [True])

        def listed():
            return [(k.selector, k.state) for k in self.store.run_sync(domains.all_dkim_keys)]

        self.clock.advance(RETENTION - 2 * KEY_REFRESH_SECONDS)
        yield self.sign()
        self.assertEqual(listed(), [("new", "active"), ("old", "retired")])
        self.clock.advance(2 * KEY_REFRESH_SECONDS)
        yield self.sign()
        self.assertEqual(listed(), [("new", "active")], "removed once the retention passed")


class RetentionConfigTests(unittest.TestCase):
    def test_default_and_set(self):
        self.assertEqual(parse_config("").delivery.dkim_key_retention, 7 * 86400)
        text = "[delivery]\ndkim_key_retention = 36h\n"
        self.assertEqual(parse_config(text).delivery.dkim_key_retention, 36 * 3600)
        with self.assertRaises(ConfigError) as refused:
            parse_config("[delivery]\ndkim_key_retention = soon\n")
        self.assertIn("dkim_key_retention", str(refused.exception))


class SignerOnSqliteTests(SqliteStoreMixin, SignerTests, unittest.TestCase):
    pass


class SignerOnPostgresTests(PostgresStoreMixin, SignerTests, unittest.TestCase):
    pass
