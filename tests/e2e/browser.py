"""The web admin in headless Chromium (Debian's, driven by Playwright) against the real
appliance under twistd: the shared set-up of the browser journeys (no tests here)."""

from __future__ import annotations

import os
import shutil

from twisted.trial import unittest

from tests.builders import new_appliance

CHROMIUM = "/usr/bin/chromium"
# As root, without a sandbox; and no background traffic to the (closed) network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the test extra not installed
    sync_playwright = None


class ApplianceBrowserCase(unittest.TestCase):
    """A running appliance, its admin password, and a page in Chromium; log_in as admin,
    log_in_as anyone, cli runs a command of the appliance."""

    timeout = 120

    def setUp(self):
        if sync_playwright is None:
            raise unittest.SkipTest("playwright is not installed (make test installs it)")
        if not shutil.which(CHROMIUM):
            raise unittest.SkipTest(f"{CHROMIUM} is missing (make test installs Debian's chromium)")
        self.appliance = new_appliance(self, **self.appliance_options())
        self.appliance.start()
        self.addCleanup(self.appliance.stop)
        with open(
            os.path.join(self.appliance.directory, "data", "initial-admin-password")
        ) as password_file:
            self.password = password_file.read().strip()
        self.base = f"http://127.0.0.1:{self.appliance.web_port}"
        self.playwright = sync_playwright().start()
        self.addCleanup(self.playwright.stop)
        self.browser = self.playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.addCleanup(self.browser.close)
        self.page = self.browser.new_page(viewport={"width": 1366, "height": 768})

    def appliance_options(self) -> dict:
        """Options of the appliance (RunningAppliance's), e.g. its delivery_config."""
        return {}

    def log_in(self):
        self.log_in_as("admin", self.password)

    def log_in_as(self, login: str, password: str) -> None:
        self.page.goto(f"{self.base}/")
        self.assertIn("/login", self.page.url)
        self.page.fill("input[name=login]", login)
        self.page.fill("input[name=password]", password)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(f"{self.base}/")

    def cli(self, *args: str, stdin: str = "jane-password\n") -> None:
        result = self.appliance.cli(*args, stdin=stdin)
        self.assertEqual(result.returncode, 0, result.stderr)
