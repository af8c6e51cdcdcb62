"""The ACME exchange (AcmeIssuer) against Debian's pebble on loopback, with the web root
answering its HTTP-01 challenges, on SQLite and PostgreSQL: the account is registered
once, each certificate has a key of its own, and a challenge the CA cannot check or a CA
nobody answers for is one line saying what to do."""

from __future__ import annotations

import datetime
import json
import os

import josepy
from acme import client, messages
from cryptography import x509
from twisted.internet import defer, reactor, threads
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from atollon_mail.certificates.challenges import ChallengeAnswers
from atollon_mail.certificates.issuer import (
    ACCOUNT_FILE,
    ACCOUNT_KEY_FILE,
    AcmeIssuer,
    CertificateError,
    _new_key_pem,
    retry_after_seconds,
)
from atollon_mail.config import parse_config
from atollon_mail.selfsigned import write_private
from atollon_mail.tlscontext import load_pem
from tests.builders import web_root
from tests.dnsserver import start_dns_server
from tests.e2e.appliance import free_port
from tests.pebble import start_pebble
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin

HOSTNAME = "mx.acme.test"


class IssuerTests(ServedWebMixin, StoreFixtureMixin):
    timeout = 60

    def setUp(self):
        self.store = self.make_store()
        self.answers = ChallengeAnswers()
        config = parse_config(f"[appliance]\nhostname = {HOSTNAME}\n")
        root = web_root(
            self, self.store, config, reactor, clock=Clock(), challenge_answers=self.answers
        )
        self.serve(root)  # self.port: where pebble fetches the answers
        self.dns = start_dns_server(reactor, {"acme.test": {"mx": [("A", "127.0.0.1")]}})
        self.addCleanup(self.dns.stop)
        self.directory = os.path.abspath(self.mktemp())
        self.data_dir = os.path.join(self.directory, "data")

    def pebble(self, http_port: int):
        pebble = start_pebble(os.path.join(self.directory, "pebble"), http_port, self.dns.port)
        self.addCleanup(pebble.stop)
        return pebble

    def issuer(self, pebble) -> AcmeIssuer:
        return AcmeIssuer(
            pebble.directory_url,
            self.data_dir,
            self.answers,
            email="postmaster@acme.test",
            ca_bundle=pebble.ca_bundle,
        )

    @defer.inlineCallbacks
    def test_two_certificates_one_account(self):
        pebble = self.pebble(self.port)
        issuer = self.issuer(pebble)
        first = yield threads.deferToThread(issuer.issue, HOSTNAME)
        with open(os.path.join(self.data_dir, ACCOUNT_FILE)) as account_file:
            account = json.load(account_file)
        second = yield threads.deferToThread(issuer.issue, HOSTNAME)
        with open(os.path.join(self.data_dir, ACCOUNT_FILE)) as account_file:
            self.assertEqual(json.load(account_file), account)
        self.assertEqual(account["directory"], pebble.directory_url)
        self.assertEqual(pebble.log().count("POST /sign-me-up"), 1, "registered once")
        intermediate = yield threads.deferToThread(pebble.intermediate)
        loaded = [load_pem(first), load_pem(second)]
        for certificate in (loaded[0].certificate, loaded[1].certificate):
            certificate.verify_directly_issued_by(intermediate)
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            self.assertEqual(names.value.get_values_for_type(x509.DNSName), [HOSTNAME])
        self.assertNotEqual(
            loaded[0].certificate.public_key().public_numbers(),
            loaded[1].certificate.public_key().public_numbers(),
            "each certificate has a new key",
        )
        self.assertEqual(len(self.answers), 0, "nothing left to answer")

    @defer.inlineCallbacks
    def test_a_challenge_the_ca_cannot_check_says_what_to_do(self):
        pebble = self.pebble(free_port())  # where nothing answers
        issuer = self.issuer(pebble)
        with self.assertRaises(CertificateError) as raised:
            yield threads.deferToThread(issuer.issue, HOSTNAME)
        message = str(raised.exception)
        self.assertEqual(message.count("\n"), 0)
        self.assertIn(f"the CA could not check that {HOSTNAME} is ours (", message)
        self.assertIn(
            "A/AAAA records point at this server and port 80 reaches [web] listen", message
        )
        self.assertEqual(len(self.answers), 0, "the answer is withdrawn")

    def kept_account(self) -> dict:
        with open(os.path.join(self.data_dir, ACCOUNT_FILE)) as account_file:
            return json.load(account_file)

    @defer.inlineCallbacks
    def test_an_account_whose_key_no_longer_matches_is_registered_again(self):
        pebble = self.pebble(self.port)
        issuer = self.issuer(pebble)
        yield threads.deferToThread(issuer.issue, HOSTNAME)
        before = self.kept_account()
        # The key file replaced (restored from elsewhere): the kept account is not its.
        write_private(os.path.join(self.data_dir, ACCOUNT_KEY_FILE), _new_key_pem())
        pem = yield threads.deferToThread(issuer.issue, HOSTNAME)
        load_pem(pem).certificate.verify_directly_issued_by(
            (yield threads.deferToThread(pebble.intermediate))
        )
        after = self.kept_account()
        self.assertNotEqual(after["registration"]["uri"], before["registration"]["uri"])
        self.assertEqual(pebble.log().count("POST /sign-me-up"), 2)

    @defer.inlineCallbacks
    def test_a_deactivated_account_is_registered_again(self):
        pebble = self.pebble(self.port)
        issuer = self.issuer(pebble)
        yield threads.deferToThread(issuer.issue, HOSTNAME)
        before = self.kept_account()
        yield threads.deferToThread(deactivate, issuer, before)
        pem = yield threads.deferToThread(issuer.issue, HOSTNAME)
        self.assertEqual(load_pem(pem).certificate.issuer.rfc4514_string().count("Pebble"), 1)
        self.assertNotEqual(
            self.kept_account()["registration"]["uri"], before["registration"]["uri"]
        )

    @defer.inlineCallbacks
    def test_a_changed_email_updates_the_account(self):
        pebble = self.pebble(self.port)
        yield threads.deferToThread(self.issuer(pebble).issue, HOSTNAME)
        before = self.kept_account()
        changed = AcmeIssuer(
            pebble.directory_url,
            self.data_dir,
            self.answers,
            email="hostmaster@acme.test",
            ca_bundle=pebble.ca_bundle,
        )
        yield threads.deferToThread(changed.issue, HOSTNAME)
        after = self.kept_account()
        self.assertEqual(after["registration"]["uri"], before["registration"]["uri"])
        self.assertEqual(after["email"], "hostmaster@acme.test")
        self.assertEqual(after["registration"]["body"]["contact"], ["mailto:hostmaster@acme.test"])


def deactivate(issuer: AcmeIssuer, kept: dict) -> None:
    """The CA deactivates the account (here its owner does, through the CA's API)."""
    key = josepy.JWKRSA(key=issuer._account_key())
    network = client.ClientNetwork(key, verify_ssl=issuer.ca_bundle)
    acme = client.ClientV2(client.ClientV2.get_directory(issuer.directory_url, network), network)
    account = messages.RegistrationResource.from_json(kept["registration"])
    network.account = account
    acme.deactivate_registration(account)


class SqliteIssuerTests(SqliteStoreMixin, IssuerTests, unittest.TestCase):
    pass


class PostgresIssuerTests(PostgresStoreMixin, IssuerTests, unittest.TestCase):
    pass


class UnreachableTests(unittest.TestCase):
    def test_a_ca_nobody_answers_for_says_what_to_do(self):
        directory = f"https://127.0.0.1:{free_port()}/dir"
        issuer = AcmeIssuer(directory, os.path.abspath(self.mktemp()), ChallengeAnswers())
        with self.assertRaises(CertificateError) as raised:
            issuer.issue(HOSTNAME)
        message = str(raised.exception)
        self.assertTrue(message.startswith(f"cannot reach the ACME CA at {directory} ("), message)
        self.assertTrue(
            message.endswith(
                "; check [tls] acme_directory (and acme_ca_bundle for a private CA) and that "
                "this server can make HTTPS connections out"
            ),
            message,
        )


class RateLimitedCA(Resource):
    """A CA answering every request as a rate-limited one does (RFC 8555 6.6)."""

    isLeaf = True

    def __init__(self, retry_after: str):
        super().__init__()
        self.retry_after = retry_after

    def render(self, request):
        request.setResponseCode(429)
        request.setHeader(b"content-type", b"application/problem+json")
        request.setHeader(b"retry-after", self.retry_after.encode())
        request.write(
            json.dumps(
                {
                    "type": "urn:ietf:params:acme:error:rateLimited",
                    "detail": "too many certificates already issued for this name",
                }
            ).encode()
        )
        # Closed by us: the client's connection pool would keep it open past the test.
        transport = request.channel.transport
        request.finish()
        transport.loseConnection()
        return NOT_DONE_YET


class RetryAfterTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_the_cas_retry_after_comes_with_the_error(self):
        port = reactor.listenTCP(0, Site(RateLimitedCA("7200")), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        directory = f"http://127.0.0.1:{port.getHost().port}/directory"
        issuer = AcmeIssuer(directory, os.path.abspath(self.mktemp()), ChallengeAnswers())
        with self.assertRaises(CertificateError) as raised:
            yield threads.deferToThread(issuer.issue, HOSTNAME)
        self.assertEqual(raised.exception.retry_after, 7200.0)
        self.assertIn("rateLimited", str(raised.exception))
        self.assertIn("too many certificates", str(raised.exception))

    def test_seconds_or_an_http_date(self):
        now = datetime.datetime(2027, 3, 1, 12, 0, tzinfo=datetime.UTC)
        self.assertEqual(retry_after_seconds("120", now), 120.0)
        self.assertEqual(retry_after_seconds("Mon, 01 Mar 2027 13:30:00 GMT", now), 5400.0)
        self.assertEqual(retry_after_seconds("Mon, 01 Mar 2027 11:00:00 GMT", now), 0.0)
        self.assertIsNone(retry_after_seconds("soon", now))
        self.assertIsNone(retry_after_seconds(None, now))
