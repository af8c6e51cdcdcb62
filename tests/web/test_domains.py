"""The domain pages of the web admin over a real listening port, on SQLite and PostgreSQL:
the list and the add form, a domain's records and its live check, the DNS overview."""

from __future__ import annotations

import re
from html import unescape

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.delivery import dkim
from atollon_mail.store import accounts
from atollon_mail.store import domains as domain_ops
from atollon_mail.store.domains import last_dns_check, record_dns_check
from atollon_mail.store.records import DnsCheckResult
from tests.builders import web_root
from tests.dns.fixtures import HOSTNAME, appliance_zones, make_config, primary_zone
from tests.dnsserver import start_dns_server
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_security import T0, Browser, _hash


class DomainPagesTests(ServedWebMixin, StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        sync = self.store.run_sync
        sync(accounts.add_user, "admin", _hash("admin-secret"), name="Ada Admin", is_admin=True)
        sync(accounts.add_user, "bob", _hash("bob-secret"), name="Bob")
        sync(domain_ops.add_domain, "good.test")
        sync(domain_ops.add_domain, "unchecked.test")
        sync(
            record_dns_check,
            "good.test",
            [DnsCheckResult("mx", "pass", "ok"), DnsCheckResult("dkim", "fail", "missing")],
            T0,
        )
        _, public = dkim.generate_key("ed25519")
        zones = appliance_zones()
        zones["good.test"] = primary_zone(dkim.txt_value("ed25519", public))
        self.dns = start_dns_server(reactor, zones)
        self.addCleanup(self.dns.stop)
        config = make_config(self.dns.nameserver)
        self.clock = Clock()
        # The records and checks need the whole configuration (nameservers, addresses).
        root = web_root(self, self.store, config, reactor, clock=self.clock)
        self.serve(root)

    @defer.inlineCallbacks
    def admin(self) -> Browser:
        browser = self.browser()
        yield browser.login("admin", "admin-secret")
        return browser

    @defer.inlineCallbacks
    def add(self, browser: Browser, **fields):
        page = yield browser.get("/domains")
        form = {"name": "", "mode": "primary", "primary_domain": "", **fields}
        return (yield browser.post("/domains", {**form, "csrf_token": page.csrf()}))

    # --- the list and the add form --------------------------------------------------------

    @defer.inlineCallbacks
    def test_list_shows_domains_and_their_last_check(self):
        browser = yield self.admin()
        page = yield browser.get("/domains")
        self.assertEqual(page.status, 200)
        self.assertIn('href="/domain?name=good.test"', page.text)
        self.assertIn("unchecked.test", page.text)
        self.assertIn("not checked yet", page.text)
        self.assertIn("2030-01-01 12:00 UTC", page.text)
        self.assertRegex(page.text, r'class="fail">1<')

    @defer.inlineCallbacks
    def test_add_primary(self):
        browser = yield self.admin()
        response = yield self.add(browser, name="New.Test")
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("location"), "/domain?name=new.test&added=1")
        [added] = [d for d in self.store.run_sync(domain_ops.list_domains) if d.name == "new.test"]
        self.assertEqual((added.mode, added.primary_domain, added.active), ("primary", None, True))
        page = yield browser.get(response.header("location"))
        self.assertEqual(page.status, 200)
        self.assertIn("Domain new.test added.", page.text)

    @defer.inlineCallbacks
    def test_add_secondary_with_its_primary_domain(self):
        browser = yield self.admin()
        response = yield self.add(
            browser, name="crm.acme.test", mode="secondary", primary_domain="acme.test"
        )
        self.assertEqual(response.status, 303)
        domains = {d.name: d for d in self.store.run_sync(domain_ops.list_domains)}
        self.assertEqual(domains["crm.acme.test"].mode, "secondary")
        self.assertEqual(domains["crm.acme.test"].primary_domain, "acme.test")
        self.assertFalse(domains["acme.test"].active)
        listing = yield browser.get("/domains")
        self.assertIn("crm.acme.test", listing.text)
        # Not below its primary, as on the vendor's pages (INSTANCENAME.atollon.com).
        response = yield self.add(
            browser, name="company.atollon.test", mode="secondary", primary_domain="company.test"
        )
        self.assertEqual(response.status, 303)
        domains = {d.name: d for d in self.store.run_sync(domain_ops.list_domains)}
        self.assertEqual(domains["company.atollon.test"].primary_domain, "company.test")

    @defer.inlineCallbacks
    def test_validation_errors_keep_the_typed_values_and_say_why(self):
        browser = yield self.admin()
        response = yield self.add(browser, name="crm.acme.test", mode="secondary")
        self.assertEqual(response.status, 400)
        self.assertIn('value="crm.acme.test"', response.text)
        self.assertRegex(response.text, r'<option value="secondary" selected>')
        self.assertIn('id="primary_domain-error"', response.text)
        self.assertIn("needs the primary domain", response.text)
        taken = yield self.add(browser, name="good.test")
        self.assertEqual(taken.status, 400)
        self.assertIn('id="name-error"', taken.text)
        self.assertIn("exists already", taken.text)
        bad = yield self.add(browser, name="not a domain")
        self.assertEqual(bad.status, 400)
        self.assertIn('value="not a domain"', bad.text)
        self.assertIn('id="name-error"', bad.text)
        hosted = yield self.add(
            browser, name="crm.good.test", mode="secondary", primary_domain="good.test"
        )
        self.assertEqual(hosted.status, 400)
        self.assertIn('id="primary_domain-error"', hosted.text)
        self.assertIn("good.test is hosted here as a primary domain already", hosted.text)
        names = {d.name for d in self.store.run_sync(domain_ops.list_domains)}
        self.assertEqual(names, {"good.test", "unchecked.test"})

    # --- who may ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_a_non_admin_gets_404(self):
        browser = self.browser()
        yield browser.login("bob", "bob-secret")
        for path in ("/domains", "/domain?name=good.test", "/dns"):
            response = yield browser.get(path)
            self.assertEqual(response.status, 404, path)
        home = yield browser.get("/")
        response = yield browser.post(
            "/domains", {"name": "x.test", "mode": "primary", "csrf_token": home.csrf()}
        )
        self.assertEqual(response.status, 404)
        self.assertNotIn("x.test", {d.name for d in self.store.run_sync(domain_ops.list_domains)})

    @defer.inlineCallbacks
    def test_csrf_missing_is_refused(self):
        browser = yield self.admin()
        response = yield browser.post("/domains", {"name": "x.test", "mode": "primary"})
        self.assertEqual(response.status, 403)
        check = yield browser.post("/domain?name=good.test", {})
        self.assertEqual(check.status, 403)
        self.assertNotIn("x.test", {d.name for d in self.store.run_sync(domain_ops.list_domains)})
        self.assertEqual(self.store.run_sync(last_dns_check, "good.test").checked_at, T0)

    # --- records, check, overview -------------------------------------------------------

    @defer.inlineCallbacks
    def test_records_page_shows_the_mx_line_and_the_last_check(self):
        browser = yield self.admin()
        page = yield browser.get("/domain?name=good.test")
        self.assertEqual(page.status, 200)
        zone = unescape(re.search(r'<pre class="reply" id="zone">(.*?)</pre>', page.text, re.S)[1])
        self.assertIn(f"good.test. 3600 IN MX 10 {HOSTNAME}.", zone)
        self.assertRegex(page.text, r"<td>MX</td>\s*<td[^>]*>10 " + re.escape(HOSTNAME))
        self.assertIn("missing", page.text)  # the stored check's reason
        self.assertIn('class="fail">fail', page.text)

    @defer.inlineCallbacks
    def test_records_page_shows_where_mail_clients_find_the_appliance(self):
        browser = yield self.admin()
        page = yield browser.get("/domain?name=good.test")
        zone = unescape(re.search(r'<pre class="reply" id="zone">(.*?)</pre>', page.text, re.S)[1])
        for line in (
            f"_imaps._tcp.good.test. 3600 IN SRV 0 1 993 {HOSTNAME}.",
            f"_imap._tcp.good.test. 3600 IN SRV 10 1 143 {HOSTNAME}.",
            "_submissions._tcp.good.test. 3600 IN SRV 0 0 0 .",
            f"_submission._tcp.good.test. 3600 IN SRV 10 1 587 {HOSTNAME}.",
            f"autoconfig.good.test. 3600 IN CNAME {HOSTNAME}.",
        ):
            self.assertIn(line, zone.splitlines())
        self.assertRegex(page.text, r"<td>SRV</td>\s*<td[^>]*>0 1 993 " + re.escape(HOSTNAME))

    @defer.inlineCallbacks
    def test_unknown_domain_is_404(self):
        browser = yield self.admin()
        for path in ("/domain?name=nowhere.test", "/domain?name=%3Cx%3E", "/domain"):
            response = yield browser.get(path)
            self.assertEqual(response.status, 404, path)

    @defer.inlineCallbacks
    def test_check_now_stores_the_result_and_shows_it(self):
        browser = yield self.admin()
        page = yield browser.get("/domain?name=unchecked.test")
        self.assertIn("not checked yet", page.text)
        response = yield browser.post("/domain?name=unchecked.test", {"csrf_token": page.csrf()})
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("location"), "/domain?name=unchecked.test&checked=1")
        stored = self.store.run_sync(last_dns_check, "unchecked.test")
        self.assertIsNotNone(stored)
        by_check = {result.check: result for result in stored.results}
        # unchecked.test is in no zone of the test server: its MX check cannot pass.
        self.assertNotEqual(by_check["mx unchecked.test"].status, "pass")
        self.assertEqual(by_check[f"address {HOSTNAME} A"].status, "pass")
        shown = yield browser.get(response.header("location"))
        self.assertIn("checked now", shown.text)
        self.assertNotIn("not checked yet", shown.text)
        self.assertIn(f"address {HOSTNAME} A", shown.text)

    @defer.inlineCallbacks
    def test_check_now_passes_for_a_good_domain(self):
        browser = yield self.admin()
        page = yield browser.get("/domain?name=good.test")
        yield browser.post("/domain?name=good.test", {"csrf_token": page.csrf()})
        stored = self.store.run_sync(last_dns_check, "good.test")
        self.assertNotEqual(stored.checked_at, T0)
        by_check = {result.check: result.status for result in stored.results}
        self.assertEqual(by_check["mx good.test"], "pass")
        self.assertEqual(by_check["spf good.test"], "pass")

    @defer.inlineCallbacks
    def test_dns_overview_links_every_domain(self):
        browser = yield self.admin()
        page = yield browser.get("/dns")
        self.assertEqual(page.status, 200)
        for name in ("good.test", "unchecked.test"):
            self.assertIn(f'href="/domain?name={name}"', page.text)


class SqliteDomainPagesTests(SqliteStoreMixin, DomainPagesTests, unittest.TestCase):
    pass


class PostgresDomainPagesTests(PostgresStoreMixin, DomainPagesTests, unittest.TestCase):
    pass
