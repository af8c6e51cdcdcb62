"""Browser journey: mail with an HTML body arrives over SMTP at the real appliance, the
search box of the mailbox page finds it by a word of its body, and once it is deleted
(Trash emptied) finds it no more (Chromium)."""

from __future__ import annotations

import smtplib

from tests.builders import commands_succeed, mailbox_commands
from tests.e2e.browser import ApplianceBrowserCase

HTML_MAIL = (
    b"From: Olga <olga@example.org>\r\nTo: jane@acme.test\r\nSubject: Site visit\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><body><p>The <b>scaffolding</b> arrives on Tuesday.</p></body></html>\r\n"
)
OTHER_MAIL = (
    b"From: someone@example.org\r\nTo: jane@acme.test\r\nSubject: Lunch\r\n\r\n"
    b"Noon at the usual place.\r\n"
)


class SearchJourney(ApplianceBrowserCase):
    def test_the_search_box_finds_a_word_of_an_html_body(self):
        commands_succeed(self, self.appliance, mailbox_commands(), stdin="jane-password\n")
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=10) as client:
            client.sendmail("olga@example.org", ["jane@acme.test"], HTML_MAIL)
            client.sendmail("someone@example.org", ["jane@acme.test"], OTHER_MAIL)
        self.log_in_as("jane", "jane-password")
        self.page.goto(f"{self.base}/mail/box?address=jane@acme.test")
        self.page.get_by_role("searchbox", name="Search this mailbox").fill("scaffolding")
        self.page.get_by_role("button", name="Search").click()
        self.page.wait_for_url("**/mail/search?**")
        results = self.page.locator("#results")
        self.assertEqual(results.get_by_role("link", name="Site visit").count(), 1)
        self.assertEqual(results.get_by_role("link", name="Lunch").count(), 0)
        results.get_by_role("link", name="Site visit").click()
        self.page.wait_for_load_state()
        self.assertIn("/mail/message?", self.page.url)
        self.assertIn("scaffolding", self.page.frame_locator("iframe").locator("body").inner_text())

        # Deleted for good: the word finds nothing.
        self.page.goto(f"{self.base}/mail/box?address=jane@acme.test")
        self.page.locator("tr", has_text="Site visit").get_by_role("checkbox").check()
        self.page.get_by_role("button", name="Delete", exact=True).click()
        self.page.wait_for_load_state()
        self.page.locator("#folders").get_by_role("link", name="Trash").click()
        self.page.wait_for_load_state()
        self.page.get_by_role("button", name="Empty Trash").click()
        self.page.wait_for_load_state()
        self.page.get_by_role("searchbox", name="Search this mailbox").fill("scaffolding")
        self.page.get_by_role("button", name="Search").click()
        self.page.wait_for_url("**/mail/search?**")
        self.assertEqual(self.page.get_by_role("link", name="Site visit").count(), 0)
        # The other message is still found, from the results page's own form.
        self.page.fill("#q", "usual")
        self.page.get_by_role("button", name="Search").click()
        self.page.wait_for_load_state()
        self.assertEqual(self.page.locator("#results").get_by_role("link", name="Lunch").count(), 1)
