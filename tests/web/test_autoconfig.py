"""Thunderbird autoconfig over a real listening port, on SQLite and PostgreSQL: both paths,
without a login, for the domains hosted here only, and never a failure on what is asked."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.dns import advisor
from atollon_mail.store import domains
from atollon_mail.store.records import DnsSubject, DomainRecord
from tests.builders import hosted_mailbox, web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin

HOSTNAME = "mail.example.test"
PATHS = ("/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml")
# No implicit TLS IMAP listener configured: 143 only.
EXPECTED_INCOMING = [("imap", HOSTNAME, "143", "STARTTLS")]


def config_text(submission_tls: bool = False) -> str:
    text = f"[appliance]\nhostname = {HOSTNAME}\n"
    if submission_tls:
        text += "[submission]\ntls_listen = tcp:4465\n"
    return text


def servers(document: ElementTree.Element, tag: str) -> list[tuple[str, ...]]:
    found = []
    for server in document.iter(tag):
        found.append(
            (
                server.get("type"),
                server.findtext("hostname"),
                server.findtext("port"),
                server.findtext("socketType"),
            )
        )
        login = (server.findtext("authentication"), server.findtext("username"))
        assert login == ("password-cleartext", "%EMAILADDRESS%"), login
    return found


class AutoconfigTests(ServedWebMixin, StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        hosted_mailbox(self.store, "jane@example.test", "jane")
        self.store.run_sync(domains.add_domain, "crm.acme.test", "secondary", "acme.test")
        self.serve_with(config_text())

    def serve_with(self, text: str) -> None:
        self.config = parse_config(text)
        root = web_root(self, self.store, self.config, reactor, clock=Clock())
        self.app = root.app
        self.serve(root)

    @defer.inlineCallbacks
    def fetch(self, query: str, path: str = PATHS[1], headers=None, method="GET"):
        return (yield self.browser(headers).request(method, path + query))

    @defer.inlineCallbacks
    def settings(self, query: str, path: str = PATHS[1], headers=None):
        response = yield self.fetch(query, path, headers)
        self.assertEqual(response.status, 200, (path, query, response.text[:200]))
        self.assertEqual(response.header("content-type"), "text/xml; charset=utf-8")
        return response, ElementTree.fromstring(response.body)

    @defer.inlineCallbacks
    def test_both_paths_answer_without_a_login(self):
        for path in PATHS:
            response, document = yield self.settings("?emailaddress=jane@example.test", path)
            self.assertEqual(document.tag, "clientConfig")
            self.assertEqual(document.get("version"), "1.1")
            provider = document.find("emailProvider")
            self.assertEqual(provider.get("id"), "example.test")
            self.assertEqual([d.text for d in provider.findall("domain")], ["example.test"])
            self.assertEqual(servers(document, "incomingServer"), EXPECTED_INCOMING)
            # No implicit TLS submission listener configured: 587 only.
            self.assertEqual(
                servers(document, "outgoingServer"), [("smtp", HOSTNAME, "587", "STARTTLS")]
            )
            self.assertTrue(response.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>'))
            self.assertIsNone(response.header("set-cookie"))

    @defer.inlineCallbacks
    def test_implicit_tls_submission_once_configured(self):
        self.serve_with(config_text(submission_tls=True))
        _, document = yield self.settings("?emailaddress=jane@example.test")
        self.assertEqual(
            servers(document, "outgoingServer"),
            [("smtp", HOSTNAME, "465", "SSL"), ("smtp", HOSTNAME, "587", "STARTTLS")],
        )

    @defer.inlineCallbacks
    def test_every_address_of_a_hosted_domain_gets_the_same_answer(self):
        bodies = set()
        for address in ("jane@example.test", "nobody@example.test", "JANE@Example.Test."):
            response, _ = yield self.settings(f"?emailaddress={address}")
            bodies.add(response.body)
        self.assertEqual(len(bodies), 1)
        _, document = yield self.settings("?emailaddress=office@crm.acme.test")
        self.assertEqual(document.find("emailProvider").get("id"), "crm.acme.test")

    @defer.inlineCallbacks
    def test_a_domain_not_hosted_here_is_404(self):
        # acme.test is recorded only as the primary domain of crm.acme.test: its mail
        # stays with its own provider.
        for address in ("jane@elsewhere.test", "office@acme.test", "jane@mail.example.test"):
            for path in PATHS:
                response = yield self.fetch(f"?emailaddress={address}", path)
                self.assertEqual(response.status, 404, (path, address))

    @defer.inlineCallbacks
    def test_without_an_address_the_host_asked_names_the_domain(self):
        for host, path in (
            ("autoconfig.example.test", PATHS[1]),
            ("example.test", PATHS[0]),
            ("AUTOCONFIG.example.test:8080", PATHS[1]),
        ):
            _, document = yield self.settings("", path, {"Host": host})
            self.assertEqual(document.find("emailProvider").get("id"), "example.test", host)
        for host in ("autoconfig.elsewhere.test", "autoconfig.acme.test", "127.0.0.1", "[::1]"):
            response = yield self.fetch("", PATHS[1], {"Host": host})
            self.assertEqual(response.status, 404, host)

    @defer.inlineCallbacks
    def test_bad_input_is_refused_plainly(self):
        queries = (
            "?emailaddress=noat",
            "?emailaddress=@",
            "?emailaddress=jane@",
            "?emailaddress=@example.test",
            "?emailaddress=%3Cscript%3E@example.test",
            "?emailaddress=jane@%3Cscript%3E.test",
            "?emailaddress=a@b@example.test",
            "?emailaddress=jane@example.test%0D%0AX-Injected:%201",
            "?emailaddress=%00@example.test",
            "?emailaddress=jane@%00",
            "?emailaddress=%FF%FE@example.test",
            "?emailaddress=jane@exa%FFmple.test",
            "?emailaddress=" + "x" * 5000 + "@example.test",
            "?emailaddress=jane@" + "a." * 200 + "test",
            "?emailaddress=jane@example.test&emailaddress=other@elsewhere.test",
        )
        for query in queries:
            response = yield self.fetch(query)
            self.assertIn(response.status, (200, 400, 404), query[:80])
            self.assertNotIn(b"<script>", response.body, query[:80])
            self.assertIsNone(response.header("x-injected"), query[:80])
        refused = yield self.fetch("?emailaddress=noat")
        self.assertEqual(refused.status, 400)
        self.assertIn("emailaddress=name@example.com", refused.text)
        posted = yield self.fetch("?emailaddress=jane@example.test", method="POST")
        self.assertEqual(posted.status, 405)
        head = yield self.fetch("?emailaddress=jane@example.test", method="HEAD")
        self.assertEqual((head.status, head.body), (200, b""))

    def test_the_template_escapes_what_it_is_given(self):
        # Domains and host names are checked before they are stored; the template escapes
        # all the same (the one Jinja2 environment, autoescape on).
        hostile = "a&b<c>\"d'e"
        [imaps, imap, _, submission] = list(_services(self.config))
        body = self.app.render_template(
            "autoconfig.xml",
            None,
            "nonce",
            domain=hostile,
            hostname=hostile,
            incoming=(imaps, imap),
            outgoing=(submission,),
        )
        document = ElementTree.fromstring(body)
        self.assertEqual(document.find("emailProvider").get("id"), hostile)
        self.assertEqual(document.findtext("emailProvider/domain"), hostile)
        self.assertEqual(
            {server.findtext("hostname") for server in document.iter("incomingServer")}, {hostile}
        )

    @defer.inlineCallbacks
    def test_the_servers_are_those_of_the_srv_records(self):
        subject = DnsSubject(
            domain=DomainRecord(1, "example.test", "primary", True),
            hosted=True,
            sending_domains=("example.test",),
            dkim_keys=(),
            forwards=(),
            secondaries=(),
        )
        for submission_tls in (False, True):
            self.serve_with(config_text(submission_tls))
            advice = advisor.advise(subject, self.config, None)
            published = {
                (int(r.value.split()[2]), r.value.split()[3].rstrip("."))
                for r in advice.records
                if r.type == "SRV" and r.value != "0 0 0 ."
            }
            _, document = yield self.settings("?emailaddress=jane@example.test")
            offered = {
                (int(port), hostname)
                for tag in ("incomingServer", "outgoingServer")
                for _, hostname, port, _ in servers(document, tag)
            }
            self.assertEqual(offered, published)


def _services(config):
    from atollon_mail.discovery import client_services

    return client_services(config).services


class SqliteAutoconfigTests(SqliteStoreMixin, AutoconfigTests, unittest.TestCase):
    pass


class PostgresAutoconfigTests(PostgresStoreMixin, AutoconfigTests, unittest.TestCase):
    pass
