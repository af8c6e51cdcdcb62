"""A running campaign's page in headless Chromium (Debian's, driven by Playwright): its
progress bar, counts and status follow the send list while the page stays loaded.

The web root is served by this test's own reactor; the browser runs in a worker thread
(Playwright's sync API blocks), and changes to the send list go through the store from
there, as the delivery runner's would."""

from __future__ import annotations

import shutil

from twisted.internet import defer, reactor, threads
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.store import sendlists
from atollon_mail.store.models import utc_now
from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS, sync_playwright

if sync_playwright is not None:
    from playwright.sync_api import expect
from tests import builders
from tests.builders import web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_campaigns import MEMBERS, make_group, set_states
from tests.web.test_security import _hash

PROGRESS = "#campaign-progress"


def finish(campaign_id: int, addresses) -> bool:
    """Store operation: these rows sent, then the campaign finished as the sender would."""
    set_states(campaign_id, dict.fromkeys(addresses, "sent"))
    return sendlists.finish_if_done(campaign_id, utc_now())


class CampaignBrowserTests(ServedWebMixin, StoreFixtureMixin):
    timeout = 120

    def setUp(self):
        if sync_playwright is None:
            raise unittest.SkipTest("playwright is not installed (make test installs it)")
        if not shutil.which(CHROMIUM):
            raise unittest.SkipTest(f"{CHROMIUM} is missing (make test installs Debian's chromium)")
        self.store = self.make_store()
        builders.hosted_mailbox(
            self.store, "news@example.com", "admin", _hash("admin-secret"), is_admin=True
        )
        group_id = make_group(self.store)
        self.campaign_id = builders.campaign(
            self.store,
            group_id,
            "news@example.com",
            variants={"en": ("Hello {{ first_name }}", "News.")},
            started=True,
        ).id
        self.addresses = [email for _, _, email, _ in MEMBERS if email]
        clock = Clock()
        clock.advance(1_000_000)
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        self.serve(web_root(self, self.store, config, reactor, clock=clock))

    def change(self, operation, *args):
        """From the browser's thread: a store operation run by the reactor's store."""
        return threads.blockingCallFromThread(reactor, self.store.run, operation, *args)

    @defer.inlineCallbacks
    def test_the_progress_bar_follows_the_send_list_without_a_reload(self):
        yield threads.deferToThread(self.in_chromium)

    def in_chromium(self):
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                self.watch_the_page(browser.new_page(viewport={"width": 1366, "height": 768}))
            finally:
                browser.close()

    def watch_the_page(self, page):
        base = f"http://127.0.0.1:{self.port}"
        polls: list[str] = []
        problems: list[str] = []
        page.on(
            "request",
            lambda request: polls.append(request.url) if "status.json" in request.url else None,
        )
        failed: list[str] = []
        page.on(
            "console",
            lambda message: problems.append(message.text) if message.type == "error" else None,
        )
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on(
            "response",
            lambda response: failed.append(response.url) if response.status >= 400 else None,
        )

        page.goto(f"{base}/campaign?id={self.campaign_id}")
        self.assertIn("/login", page.url)
        page.fill("input[name=login]", "admin")
        page.fill("input[name=password]", "admin-secret")
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/campaign?id={self.campaign_id}")
        # Set on this very document: still there afterwards means it was never reloaded.
        page.evaluate("window.sameDocument = true")
        self.assertEqual(page.eval_on_selector(PROGRESS, "bar => bar.value"), 0)
        self.assertEqual(page.inner_text('[data-count="queued"]'), "5")
        self.assertEqual(page.inner_text('[data-field="status"]'), "running")

        self.change(set_states, self.campaign_id, dict.fromkeys(self.addresses[:2], "sent"))
        # Playwright's own polling: the page's CSP allows no eval of test code in it.
        expect(page.locator(PROGRESS)).to_have_js_property("value", 2, timeout=10_000)
        self.assertEqual(page.eval_on_selector(PROGRESS, "bar => bar.max"), 5)
        self.assertEqual(page.inner_text('[data-count="sent"]'), "2")
        self.assertEqual(page.inner_text('[data-count="queued"]'), "3")
        self.assertEqual(page.inner_text('[data-field="percent"]'), "40")
        self.assertIn("messages a second", page.inner_text('[data-field="rate_text"]'))

        self.change(set_states, self.campaign_id, {self.addresses[2]: "failed"})
        expect(page.locator('[data-count="failed"]')).to_have_text("1", timeout=10_000)
        self.assertTrue(page.is_visible("button:text-is('Retry failed')"))

        self.assertTrue(self.change(finish, self.campaign_id, self.addresses[2:]))
        expect(page.locator('h1 [data-field="status"]')).to_have_text("finished", timeout=10_000)
        self.assertEqual(page.eval_on_selector(PROGRESS, "bar => bar.value"), 5)
        self.assertEqual(page.inner_text('[data-field="percent"]'), "100")
        self.assertEqual(page.inner_text('[data-field="rate_text"]'), "Finished.")
        self.assertFalse(page.is_visible("button:text-is('Pause')"))
        self.assertFalse(page.is_visible("button:text-is('Cancel')"))
        self.assertTrue(page.evaluate("window.sameDocument === true"), "the page was reloaded")
        # Finished: the page stops asking.
        asked = len(polls)
        self.assertGreaterEqual(asked, 3)
        page.wait_for_timeout(2500)
        self.assertEqual(len(polls), asked, "still polling after the campaign finished")
        # The browser asks for /favicon.ico by itself; the appliance has none.
        self.assertEqual([url for url in failed if not url.endswith("/favicon.ico")], [])
        self.assertEqual(
            [text for text in problems if not text.startswith("Failed to load resource")],
            [],
            "errors in the browser's console (a script blocked by the CSP, say)",
        )


class SqliteCampaignBrowserTests(SqliteStoreMixin, CampaignBrowserTests, unittest.TestCase):
    pass


class PostgresCampaignBrowserTests(PostgresStoreMixin, CampaignBrowserTests, unittest.TestCase):
    pass
