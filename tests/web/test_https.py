"""[web] tls_listen: the plain listener keeps only the ACME challenge, /health and
/metrics and redirects the rest to HTTPS on the host name; the HTTPS listener sends
Strict-Transport-Security and a Secure session cookie. Without tls_listen the plain
listener serves the whole site (TLS ends in a reverse proxy). Over real loopback ports,
on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.internet import defer, reactor, ssl
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from atollon_mail.auth import build_authenticator
from atollon_mail.certificates.challenges import ChallengeAnswers
from atollon_mail.config import parse_config
from atollon_mail.delivery.intake import Intake
from atollon_mail.events import Events
from atollon_mail.metrics import Metrics
from atollon_mail.selfsigned import make_self_signed
from atollon_mail.store import accounts
from atollon_mail.tlscontext import ReloadableTLSOptions, load_pem
from atollon_mail.web import build as web_build
from atollon_mail.web.sessions import SESSION_COOKIE
from tests.builders import started_workers
from tests.e2e.appliance import free_port
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import Browser, _hash

HOSTNAME = "mail.example.test"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


@implementer(IPolicyForHTTPS)
class TrustOne:
    """Trusts one certificate, checked for HOSTNAME whatever address is dialled."""

    def __init__(self, certificate_pem: bytes):
        self._root = ssl.Certificate.loadPEM(certificate_pem)

    def creatorForNetloc(self, hostname, port):
        return ssl.optionsForClientTLS(HOSTNAME, trustRoot=self._root)


class HttpsTests(StoreFixtureMixin):
    tls_listen = True

    def setUp(self):
        self.store = self.make_store()
        self.store.run_sync(accounts.add_user, "admin", _hash("admin-secret"), is_admin=True)
        self.plain_port, self.tls_port = free_port(), free_port()
        text = (
            f"[appliance]\nhostname = {HOSTNAME}\n"
            f"[web]\nlisten = tcp:{self.plain_port}:interface=127.0.0.1\n"
        )
        if self.tls_listen:
            text += f"tls_listen = tcp:{self.tls_port}:interface=127.0.0.1\n"
        self.config = parse_config(text)
        self.certificate, key = make_self_signed(HOSTNAME)
        self.answers = ChallengeAnswers()
        workers = started_workers(self, reactor)
        services = web_build.build(
            self.config,
            self.store,
            Events(),
            workers,
            reactor,
            Intake(self.store, Events()),
            build_authenticator(self.store, reactor, workers.cpu),
            None,
            metrics=Metrics(),
            tls_options=ReloadableTLSOptions(load_pem(key + self.certificate)),
            challenge_answers=self.answers,
        )
        for service in services:
            service.startService()
            self.addCleanup(service.stopService)
        self.browsers: list[Browser] = []
        self.addCleanup(
            lambda: defer.gatherResults(
                [browser.agent._pool.closeCachedConnections() for browser in self.browsers]
            )
        )

    def plain(self, headers=None) -> Browser:
        browser = Browser(self.plain_port, headers)
        self.browsers.append(browser)
        return browser

    def https(self) -> Browser:
        browser = Browser(self.tls_port)
        browser.base = f"https://127.0.0.1:{self.tls_port}"
        browser.agent = Agent(
            reactor,
            contextFactory=TrustOne(self.certificate),
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
        self.browsers.append(browser)
        return browser


class WithTlsListen(HttpsTests):
    @defer.inlineCallbacks
    def test_plain_http_redirects_the_site_to_https_on_the_host_name(self):
        origin = f"https://{HOSTNAME}:{self.tls_port}"
        # The Host header is not trusted for where to send the browser.
        browser = self.plain({"host": "evil.example"})
        for method, path in (
            ("GET", "/"),
            ("GET", "/login"),
            ("GET", "/mail?folder=INBOX&page=2"),
            ("POST", "/login"),
            ("GET", "/.well-known/autoconfig/mail/config-v1.1.xml"),
            ("HEAD", "/healthz"),
        ):
            response = yield browser.request(method, path)
            self.assertEqual(response.status, 301, (method, path))
            self.assertEqual(response.header("location"), origin + path)
            self.assertEqual(response.set_cookies, [], "no cookie over plain HTTP")
            self.assertNotIn(b"<form", response.body)

    @defer.inlineCallbacks
    def test_the_challenge_health_and_metrics_stay_on_plain_http(self):
        self.answers.add(TOKEN, TOKEN + ".thumbprint")
        browser = self.plain()
        response = yield browser.get("/.well-known/acme-challenge/" + TOKEN)
        self.assertEqual((response.status, response.body), (200, (TOKEN + ".thumbprint").encode()))
        response = yield browser.get("/.well-known/acme-challenge/other")
        self.assertEqual(response.status, 404)
        response = yield browser.get("/health")
        self.assertEqual(response.status, 200)
        response = yield browser.get("/metrics")  # from loopback: metrics_networks' default
        self.assertEqual(response.status, 200)
        self.assertIn(b"# TYPE", response.body)

    @defer.inlineCallbacks
    def test_https_sends_hsts_and_a_secure_session_cookie(self):
        browser = self.https()
        response = yield browser.get("/login")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("strict-transport-security"), "max-age=31536000")
        response = yield browser.login("admin", "admin-secret")
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("strict-transport-security"), "max-age=31536000")
        session = [c for c in response.set_cookies if c.startswith(SESSION_COOKIE + "=")]
        self.assertEqual(len(session), 1, response.set_cookies)
        self.assertIn("Secure", session[0].split("; "))
        self.assertIn("HttpOnly", session[0].split("; "))
        page = yield browser.get("/")
        self.assertEqual(page.status, 200)


class WithoutTlsListen(HttpsTests):
    tls_listen = False

    @defer.inlineCallbacks
    def test_plain_http_serves_the_whole_site(self):
        browser = self.plain()
        response = yield browser.get("/login")
        self.assertEqual(response.status, 200)
        self.assertIn(b"<form", response.body)
        self.assertIsNone(response.header("strict-transport-security"))
        response = yield browser.login("admin", "admin-secret")
        self.assertEqual(response.status, 303)


class SqliteWithTlsListen(SqliteStoreMixin, WithTlsListen, unittest.TestCase):
    pass


class PostgresWithTlsListen(PostgresStoreMixin, WithTlsListen, unittest.TestCase):
    pass


class SqliteWithoutTlsListen(SqliteStoreMixin, WithoutTlsListen, unittest.TestCase):
    pass


class PostgresWithoutTlsListen(PostgresStoreMixin, WithoutTlsListen, unittest.TestCase):
    pass


class BuildTests(unittest.TestCase):
    def test_tls_listen_without_tls_options_fails_at_build(self):
        config = parse_config(
            f"[appliance]\nhostname = {HOSTNAME}\n[web]\ntls_listen = tcp:{free_port()}\n"
        )
        with self.assertRaisesRegex(ValueError, r"\[web\] tls_listen needs"):
            web_build.build(config, None, Events(), None, reactor, None, None, None)
