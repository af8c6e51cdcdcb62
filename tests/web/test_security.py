"""The web admin's security rules, each checked over a real listening port, on SQLite and
on PostgreSQL."""

from __future__ import annotations

import datetime
import re
from types import SimpleNamespace

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from atollon_mail.auth import ADDRESS_LIMIT, LOGIN_LIMIT, build_authenticator
from atollon_mail.config import parse_config
from atollon_mail.store import accounts, domains, mailboxes, queue
from atollon_mail.store.domains import record_dns_check
from atollon_mail.store.mailboxes import grant_mailbox_access
from atollon_mail.store.records import DeliveryResult, DnsCheckResult, Origin, OutgoingMessage
from atollon_mail.web.app import cookie_header
from atollon_mail.web.sessions import SESSION_COOKIE
from tests.builders import web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.test_auth import CountingPool
from tests.web.support import Browser, ServedWebMixin, _hash  # noqa: F401 (others import them here)

T0 = datetime.datetime(2030, 1, 1, 12, 0, 0)
EVIL = "<script>alert(1)</script>"


class WebSecurityTests(ServedWebMixin, StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        sync = self.store.run_sync
        sync(accounts.add_user, "admin", _hash("admin-secret"), name="Ada Admin", is_admin=True)
        sync(accounts.add_user, "bob", _hash("bob-secret"), name=f"Bob {EVIL}")
        sync(accounts.add_user, "carol", _hash("carol-secret"), name="Carol")
        sync(domains.add_domain, "example.com")
        sync(domains.add_domain, "unchecked.example")
        sync(mailboxes.add_mailbox, "bob@example.com", "bob")
        sync(mailboxes.add_mailbox, "carol@example.com", "carol")
        sync(mailboxes.add_mailbox, "shared@example.com", "carol")
        sync(grant_mailbox_access, "shared@example.com", "bob", view=True, edit=False)
        checks = [
            DnsCheckResult("mx", "pass", "ok"),
            DnsCheckResult("spf", "pass", "ok"),
            DnsCheckResult("dmarc", "warn", "p=none"),
            DnsCheckResult("dkim", "fail", "missing"),
        ]
        sync(record_dns_check, "example.com", checks, T0)
        [submitted] = sync(
            queue.submit_messages,
            [
                (
                    OutgoingMessage(
                        envelope_sender="bob@example.com",
                        raw=b"Subject: hi\r\n\r\nbody\r\n",
                        remote_recipients=("far@remote.example", "gone@remote.example"),
                        subject=f"Subject {EVIL}",
                    ),
                    Origin("submission"),
                )
            ],
            T0,
        )
        claimed = sync(queue.claim_due_deliveries, T0, 10)
        sync(
            queue.record_delivery_results,
            [
                DeliveryResult(claimed[0].recipient_id, "delivered", "250 ok", None, T0, None),
                DeliveryResult(
                    claimed[1].recipient_id, "bounced", f"550 no {EVIL}", None, T0, None
                ),
            ],
        )
        self.clock = Clock()
        self.clock.advance(1_000_000)
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        # As the appliance builds it: argon2 in a pool of CPU workers (this one counts).
        self.workers = CountingPool()
        self.workers.start()
        self.addCleanup(self.workers.stop)
        authenticator = build_authenticator(self.store, reactor, self.workers, self.clock)
        root = web_root(
            self, self.store, config, reactor, clock=self.clock, authenticator=authenticator
        )
        self.app = root.app
        self.serve(root)

    # --- login and sessions ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_dashboard_requires_login(self):
        response = yield self.browser().get("/")
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("location"), "/login?next=/")

    @defer.inlineCallbacks
    def test_login_success_shows_the_dashboard_with_the_user(self):
        browser = self.browser()
        response = yield browser.login("admin", "admin-secret")
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("location"), "/")
        page = yield browser.get("/")
        self.assertEqual(page.status, 200)
        self.assertIn("Ada Admin", page.text)
        self.assertIn("mail.example.com", page.text)

    @defer.inlineCallbacks
    def test_login_failure_keeps_the_login_and_says_why(self):
        browser = self.browser()
        response = yield browser.login("admin", "wrong-password")
        self.assertEqual(response.status, 200)
        self.assertNotIn(SESSION_COOKIE, browser.cookies)
        self.assertIn('value="admin"', response.text)
        self.assertNotIn("wrong-password", response.text)
        self.assertIn('id="password-error"', response.text)
        unknown = yield browser.login("nobody", "whatever")
        self.assertIn('id="password-error"', unknown.text)
        empty = yield browser.login("", "x")
        self.assertIn('id="login-error"', empty.text)

    @defer.inlineCallbacks
    def test_login_redirects_only_within_the_site(self):
        browser = self.browser()
        form = yield browser.get("/login")
        fields = {"login": "admin", "password": "admin-secret", "csrf_token": form.csrf()}
        response = yield browser.post("/login", {**fields, "next": "//evil.example/x"})
        self.assertEqual(response.header("location"), "/")

    @defer.inlineCallbacks
    def test_session_cookie_flags(self):
        response = yield self.browser().login("admin", "admin-secret")
        [session] = [c for c in response.set_cookies if c.startswith(SESSION_COOKIE + "=")]
        self.assertIn("HttpOnly", session)
        self.assertIn("SameSite=Lax", session)
        self.assertNotIn("Secure", session)  # plain HTTP here

    def test_secure_flag_only_over_tls(self):
        tls = SimpleNamespace(isSecure=lambda: True)
        plain = SimpleNamespace(isSecure=lambda: False)
        self.assertIn(b"; Secure", cookie_header(tls, SESSION_COOKIE, "x"))
        self.assertNotIn(b"Secure", cookie_header(plain, SESSION_COOKIE, "x"))

    @defer.inlineCallbacks
    def test_a_new_session_id_at_login(self):
        browser = self.browser()
        yield browser.login("admin", "admin-secret")
        first = browser.cookies[SESSION_COOKIE]
        # A session id planted before login is not kept: login issues a new one.
        attacker = self.browser()
        attacker.cookies[SESSION_COOKIE] = "planted-id"
        yield attacker.login("admin", "admin-secret")
        self.assertNotEqual(attacker.cookies[SESSION_COOKIE], "planted-id")
        self.assertNotEqual(attacker.cookies[SESSION_COOKIE], first)

    @defer.inlineCallbacks
    def test_logout_invalidates_the_old_cookie(self):
        browser = self.browser()
        yield browser.login("admin", "admin-secret")
        old = browser.cookies[SESSION_COOKIE]
        page = yield browser.get("/")
        response = yield browser.post("/logout", {"csrf_token": page.csrf()})
        self.assertEqual(response.status, 303)
        self.assertNotIn(SESSION_COOKIE, browser.cookies)
        replay = self.browser()
        replay.cookies[SESSION_COOKIE] = old
        again = yield replay.get("/")
        self.assertEqual(again.status, 303)
        self.assertTrue(again.header("location").startswith("/login"))

    @defer.inlineCallbacks
    def test_logout_by_get_is_refused(self):
        browser = self.browser()
        yield browser.login("admin", "admin-secret")
        response = yield browser.get("/logout")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.header("allow"), "POST")
        still = yield browser.get("/")
        self.assertEqual(still.status, 200)

    @defer.inlineCallbacks
    def test_idle_timeout(self):
        browser = self.browser()
        yield browser.login("admin", "admin-secret")
        self.clock.advance(29 * 60)
        page = yield browser.get("/")
        self.assertEqual(page.status, 200)  # used within the timeout: it restarts
        self.clock.advance(29 * 60)
        page = yield browser.get("/")
        self.assertEqual(page.status, 200)
        self.clock.advance(30 * 60 + 1)
        page = yield browser.get("/")
        self.assertEqual(page.status, 303)

    @defer.inlineCallbacks
    def test_login_throttled_after_repeated_failures(self):
        browser = self.browser()
        for _ in range(5):
            failed = yield browser.login("admin", "wrong")
            self.assertEqual(failed.status, 200)
        blocked = yield browser.login("admin", "admin-secret")  # even the right password
        self.assertEqual(blocked.status, 429)
        self.assertIn("Too many failed attempts", blocked.text)
        self.assertNotIn(SESSION_COOKIE, browser.cookies)
        self.clock.advance(10 * 60 + 1)
        allowed = yield browser.login("admin", "admin-secret")
        self.assertEqual(allowed.status, 303)

    @defer.inlineCallbacks
    def test_behind_the_local_proxy_one_attacker_does_not_block_everyone(self):
        # The test's requests come from 127.0.0.1, as from a reverse proxy on the host
        # (trusted by default): each client is the address the proxy appends. The
        # attacker's own X-Forwarded-For (left of it) changes nothing.
        for number in range(ADDRESS_LIMIT + 5):
            attacker = self.browser({"X-Forwarded-For": f"10.0.0.{number}, 203.0.113.66"})
            answer = yield attacker.login(f"guess-{number}", "wrong")
            self.assertEqual(answer.status, 200 if number < ADDRESS_LIMIT else 429)
        user = self.browser({"X-Forwarded-For": "198.51.100.7"})
        allowed = yield user.login("bob", "bob-secret")
        self.assertEqual(allowed.status, 303)

    @defer.inlineCallbacks
    def test_x_forwarded_for_from_a_peer_that_is_no_trusted_proxy_is_ignored(self):
        config = parse_config(
            "[appliance]\nhostname = mail.example.com\n[web]\ntrusted_proxies = 192.0.2.1\n"
        )
        self.serve(web_root(self, self.store, config, reactor, clock=self.clock))
        for number in range(ADDRESS_LIMIT):
            forged = self.browser({"X-Forwarded-For": f"203.0.113.{number}"})
            answer = yield forged.login(f"guess-{number}", "wrong")
            self.assertEqual(answer.status, 200)
        # Counted by the peer (127.0.0.1), whatever the header says: blocked.
        forged = self.browser({"X-Forwarded-For": "198.51.100.7"})
        blocked = yield forged.login("bob", "bob-secret")
        self.assertEqual(blocked.status, 429)

    @defer.inlineCallbacks
    def test_parallel_wrong_logins_then_the_right_one_are_refused(self):
        browser = self.browser()
        form = yield browser.get("/login")
        fields = {"login": "admin", "csrf_token": form.csrf()}
        burst = [
            browser.post("/login", {**fields, "password": f"guess-{number}"})
            for number in range(100)
        ]
        burst.append(browser.post("/login", {**fields, "password": "admin-secret"}))
        answers = yield defer.gatherResults(burst)
        right = answers[-1]
        self.assertEqual(right.status, 429)
        self.assertIn("Too many failed attempts", right.text)
        self.assertNotIn(SESSION_COOKIE, browser.cookies)
        statuses = [answer.status for answer in answers[:-1]]
        self.assertEqual(statuses.count(200), LOGIN_LIMIT)  # the guesses checked
        self.assertEqual(statuses.count(429), 100 - LOGIN_LIMIT)
        self.assertEqual(self.workers.jobs, LOGIN_LIMIT)  # argon2 checks that ran

    @defer.inlineCallbacks
    def test_a_locked_login_leaves_other_logins_from_the_same_address(self):
        # Everyone behind one reverse proxy has the same address: one attacker guessing
        # admin's password must not lock bob out.
        attacker = self.browser()
        for _ in range(LOGIN_LIMIT):
            failed = yield attacker.login("admin", "wrong")
            self.assertEqual(failed.status, 200)
        locked = yield attacker.login("admin", "admin-secret")
        self.assertEqual(locked.status, 429)
        bob = self.browser()
        allowed = yield bob.login("bob", "bob-secret")
        self.assertEqual(allowed.status, 303)
        self.assertIn(SESSION_COOKIE, bob.cookies)

    @defer.inlineCallbacks
    def test_guesses_on_the_web_count_for_smtp_auth_too(self):
        from tests.smtp.test_submission import THROTTLED, make_factory, plain, secured

        # The appliance gives both the same authenticator (see tap.py).
        factory = make_factory(authenticator=self.app.authenticator)
        for _ in range(LOGIN_LIMIT):
            yield self.browser().login("admin", "wrong")
        session = secured(factory, "127.0.0.1")
        reply = session.command(f"AUTH PLAIN {plain('admin', 'admin-secret')}")
        self.assertEqual(reply, [THROTTLED])
        self.assertEqual(self.workers.jobs, LOGIN_LIMIT)

    # --- a mailbox's address as the login -------------------------------------------------

    @defer.inlineCallbacks
    def test_login_with_a_mailbox_address_logs_its_owner_in(self):
        browser = self.browser()
        response = yield browser.login(" Shared@Example.COM", "carol-secret")
        self.assertEqual(response.status, 303)
        page = yield browser.get("/")
        self.assertIn("Carol", page.text)
        # The address of a mailbox shared with bob is not his to log in with.
        refused = yield self.browser().login("shared@example.com", "bob-secret")
        self.assertEqual(refused.status, 200)

    @defer.inlineCallbacks
    def test_an_unknown_address_fails_like_an_unknown_login(self):
        yield self.browser().login("nobody", "whatever")  # the unknown user's hash is made
        answers = {}
        for name in ("nobody", "nobody@example.com", "bob@unchecked.example", "@", "a@b@c"):
            before = self.workers.jobs
            answer = yield self.browser().login(name, "whatever")
            self.assertEqual(self.workers.jobs - before, 1, name)  # one argon2 check each
            errors = re.findall(r'id="password-error">([^<]*)<', answer.text)
            answers[name] = (answer.status, tuple(errors))
        self.assertEqual(len(set(answers.values())), 1, answers)
        self.assertEqual(answers["nobody"][0], 200)

    @defer.inlineCallbacks
    def test_smtp_auth_with_a_mailbox_address(self):
        from tests.smtp.test_submission import AUTH_FAILED, make_factory, plain, secured

        factory = make_factory(authenticator=self.app.authenticator)
        session = secured(factory, "192.0.2.7")
        reply = yield _reply(session, f"AUTH PLAIN {plain('Bob@example.com', 'bob-secret')}")
        self.assertEqual(reply, ["235 2.7.0 Authentication successful"])
        self.assertEqual(session.protocol.session.authenticated_user.login, "bob")
        for name in ("nobody@example.com", "bob@example.com"):
            session = secured(factory, "192.0.2.7")
            reply = yield _reply(session, f"AUTH PLAIN {plain(name, 'wrong')}")
            self.assertEqual(reply, [AUTH_FAILED], name)

    @defer.inlineCallbacks
    def test_guesses_through_an_address_count_for_its_owner_everywhere(self):
        from tests.smtp.test_submission import THROTTLED, make_factory, plain, secured

        for _ in range(LOGIN_LIMIT):
            failed = yield self.browser().login("bob@example.com", "wrong")
            self.assertEqual(failed.status, 200)
        blocked = yield self.browser().login("bob", "bob-secret")
        self.assertEqual(blocked.status, 429)
        factory = make_factory(authenticator=self.app.authenticator)
        session = secured(factory, "127.0.0.1")
        # Another spelling of the address: counted under a name of its own, and under bob.
        reply = session.command(f"AUTH PLAIN {plain('BOB@example.com.', 'bob-secret')}")
        self.assertEqual(reply, [])  # the address is looked up first
        self.assertEqual((yield _reply(session)), [THROTTLED])
        allowed = yield self.browser().login("carol@example.com", "carol-secret")
        self.assertEqual(allowed.status, 303)

    @defer.inlineCallbacks
    def test_login_redirects_never_leave_the_site(self):
        browser = self.browser()
        queries = ("/%09/host", "//host", "/%5Chost", "/%5C%5Chost", "%5C%5Chost", "/%0A/host")
        for query in queries:
            form = yield browser.get(f"/login?next={query}")
            self.assertIn('name="next" value="/"', form.text, query)
        yield browser.login("admin", "admin-secret")
        for query in (*queries, "https://evil.example/", "/%E2%80%8B/host", "/%255Chost"):
            response = yield browser.get(f"/login?next={query}")
            self.assertEqual(response.header("location"), "/", query)
        kept = yield browser.get("/login?next=/mail/box%3Faddress%3Dbob%2540example.com")
        self.assertEqual(kept.header("location"), "/mail/box?address=bob%40example.com")

    @defer.inlineCallbacks
    def test_login_form_next_never_leaves_the_site(self):
        for target in ("/\t/host", "/\\host", "\\\\host", "/\r\n/host", " //host", "/%5Chost"):
            browser = self.browser()
            form = yield browser.get("/login")
            fields = {"login": "admin", "password": "admin-secret", "csrf_token": form.csrf()}
            response = yield browser.post("/login", {**fields, "next": target})
            self.assertEqual(response.status, 303, repr(target))
            self.assertEqual(response.header("location"), "/", repr(target))

    # --- numbers in addresses -----------------------------------------------------------

    @defer.inlineCallbacks
    def test_huge_or_odd_numbers_answer_400_or_404_and_log_nothing_critical(self):
        critical = []

        def observe(event):
            if event.get("log_level") == LogLevel.critical:
                critical.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        huge = "99999999999999999999"
        admin = self.browser()
        yield admin.login("admin", "admin-secret")
        bob = self.browser()
        yield bob.login("bob", "bob-secret")
        expected = {
            f"/queue?page={huge}": 400,
            "/queue?page=999999999999999999": 400,
            "/queue?page=%C2%B2": 400,  # "²" is a digit to str.isdigit, not to int()
            f"/queue/message?id={huge}": 404,
            f"/mailboxes?page={huge}": 400,
            "/mailboxes?page=%C2%B2": 400,
            f"/group?id={huge}": 404,
            "/group?id=%C2%B2": 404,
            "/group?id=9223372036854775808": 404,  # 2**63: one past the database's largest
            f"/campaign?id={huge}": 404,
            f"/campaign/recipients?id={huge}": 404,
            f"/campaign/status.json?id={huge}": 404,
        }
        for path, status in expected.items():
            response = yield admin.get(path)
            self.assertEqual(response.status, status, path)
        for path, status in {
            f"/mail/box?address=bob@example.com&page={huge}": 400,
            "/mail/box?address=bob@example.com&page=%C2%B2": 400,
            f"/mail/message?address=bob@example.com&id={huge}": 404,
            "/mail/message?address=bob@example.com&id=%C2%B2": 404,
        }.items():
            response = yield bob.get(path)
            self.assertEqual(response.status, status, path)
        self.assertEqual(critical, [])

    @defer.inlineCallbacks
    def test_health_sends_nosniff(self):
        response = yield self.browser().get("/health")
        self.assertEqual(response.header("x-content-type-options"), "nosniff")
        refused = yield self.browser().request("POST", "/health")
        self.assertEqual(refused.status, 405)
        self.assertEqual(refused.header("x-content-type-options"), "nosniff")

    # --- CSRF ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_csrf_missing_or_wrong_is_refused(self):
        browser = self.browser()
        yield browser.login("admin", "admin-secret")
        missing = yield browser.post("/logout", {})
        self.assertEqual(missing.status, 403)
        wrong = yield browser.post("/logout", {"csrf_token": "not-the-token"})
        self.assertEqual(wrong.status, 403)
        still = yield browser.get("/")
        self.assertEqual(still.status, 200)

    @defer.inlineCallbacks
    def test_login_form_needs_its_csrf_token(self):
        browser = self.browser()
        yield browser.get("/login")
        response = yield browser.post(
            "/login", {"login": "admin", "password": "admin-secret", "csrf_token": "forged"}
        )
        self.assertEqual(response.status, 403)
        self.assertNotIn(SESSION_COOKIE, browser.cookies)

    # --- pages --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_unknown_path_is_404_without_traceback(self):
        browser = self.browser()
        response = yield browser.get("/no/such/page")
        self.assertEqual(response.status, 404)
        self.assertIn("Not found", response.text)
        yield browser.login("admin", "admin-secret")
        response = yield browser.get("/static/../pages.py")
        self.assertEqual(response.status, 404)
        self.assertNotIn("Traceback", response.text)

    @defer.inlineCallbacks
    def test_templates_escape_what_users_wrote(self):
        browser = self.browser()
        yield browser.login("bob", "bob-secret")
        page = yield browser.get("/")
        self.assertIn("Bob &lt;script&gt;alert(1)&lt;/script&gt;", page.text)
        self.assertNotIn(EVIL, page.text)
        admin = self.browser()
        yield admin.login("admin", "admin-secret")
        page = yield admin.get("/")
        self.assertIn("&lt;script&gt;", page.text)  # subject and reply of the queue
        self.assertNotIn(EVIL, page.text)

    @defer.inlineCallbacks
    def test_admin_dashboard_shows_domains_checks_and_queue(self):
        browser = self.browser()
        yield browser.login("admin", "admin-secret")
        page = yield browser.get("/")
        self.assertIn('id="queue"', page.text)
        self.assertIn("not checked yet", page.text)  # unchecked.example
        self.assertRegex(page.text, r'class="pass">2<')
        self.assertIn("far@remote.example", page.text)
        self.assertIn("gone@remote.example", page.text)
        for address in ("bob@example.com", "carol@example.com", "shared@example.com"):
            self.assertIn(address, page.text)

    @defer.inlineCallbacks
    def test_a_non_admin_sees_only_their_mailboxes_and_no_queue(self):
        browser = self.browser()
        yield browser.login("bob", "bob-secret")
        page = yield browser.get("/")
        self.assertEqual(page.status, 200)
        self.assertNotIn('id="queue"', page.text)
        self.assertNotIn('id="domains"', page.text)
        self.assertIn("bob@example.com", page.text)
        self.assertIn("shared@example.com", page.text)  # granted view
        self.assertNotIn("carol@example.com", page.text)

    @defer.inlineCallbacks
    def test_options_filter_server_side(self):
        browser = self.browser()
        yield browser.login("admin", "admin-secret")
        page = yield browser.get("/options?q=message")
        shown = re.findall(r'<li data-text="[^"]*">\s*<a href="[^"]*">([^<]*)</a>', page.text)
        self.assertEqual(shown, ["Message configuration", "Mail client"])
        everything = yield browser.get("/options")
        self.assertNotRegex(everything.text, r"<li [^>]*hidden>")
        for title in ("Domains", "Users", "Mailboxes", "Queue", "DNS records", "Mail client"):
            self.assertIn(f">{title}</a>", everything.text)

    @defer.inlineCallbacks
    def test_health_needs_no_login(self):
        response = yield self.browser().get("/health")
        self.assertEqual(response.status, 200)
        self.assertIn(b'"status": "ok"', response.body)

    @defer.inlineCallbacks
    def test_stylesheet_is_served(self):
        response = yield self.browser().get("/static/admin.css")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.header("content-type").startswith("text/css"))


@defer.inlineCallbacks
def _reply(session, command: str | None = None, timeout: float = 10.0):
    """The reply lines to a command once they are in: a real authenticator answers from
    its threads (the store's, argon2's), not at once."""
    from twisted.internet.task import deferLater

    replies = session.command(command) if command is not None else []
    waited = 0.0
    while not replies and waited < timeout:
        yield deferLater(reactor, 0.01, lambda: None)
        waited += 0.01
        replies = session.replies()
    return replies


class SqliteWebSecurityTests(SqliteStoreMixin, WebSecurityTests, unittest.TestCase):
    pass


class PostgresWebSecurityTests(PostgresStoreMixin, WebSecurityTests, unittest.TestCase):
    pass
