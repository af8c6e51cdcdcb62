"""The mail client's folders in headless Chromium against the real appliance under twistd:
a message marked unread and flagged stays so after a reload; moved to Trash and Trash
emptied, it is gone."""

from __future__ import annotations

import smtplib

from tests.builders import commands_succeed, mailbox_commands
from tests.e2e.browser import ApplianceBrowserCase


class ClientFolderTests(ApplianceBrowserCase):
    def row(self, subject: str):
        return self.page.locator("#messages tbody tr", has_text=subject)

    def test_unread_and_flagged_after_reload_then_trash_emptied(self):
        commands_succeed(self, self.appliance, mailbox_commands(), stdin="jane-password\n")
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=10) as client:
            for subject in ("Quarterly figures", "Team lunch"):
                client.sendmail(
                    "someone@example.org",
                    ["jane@acme.test"],
                    f"From: someone@example.org\r\nSubject: {subject}\r\n\r\nText.\r\n".encode(),
                )
        self.log_in_as("jane", "jane-password")
        box = f"{self.base}/mail/box?address=jane@acme.test"
        self.page.goto(box)
        self.assertEqual(self.page.locator("#folders .unread-count").first.inner_text(), "2")
        # Read it: no longer bold, one unread left.
        self.page.get_by_role("link", name="Quarterly figures").click()
        self.page.wait_for_load_state()
        self.assertIn("Text.", self.page.content())
        self.page.goto(box)
        figures = self.row("Quarterly figures")
        self.assertEqual(figures.get_attribute("class"), "read")
        self.assertEqual(
            figures.locator("td").nth(3).evaluate("e => getComputedStyle(e).fontWeight"), "400"
        )
        # Selected: marked unread, then flagged.
        figures.get_by_role("checkbox").check()
        self.page.get_by_role("button", name="Mark unread").click()
        self.page.wait_for_load_state()
        self.assertIn("1 message marked unread.", self.page.content())
        self.row("Quarterly figures").get_by_role("checkbox").check()
        self.page.get_by_role("button", name="Flag", exact=True).click()
        self.page.wait_for_load_state()
        self.page.reload()
        figures = self.row("Quarterly figures")
        self.assertEqual(figures.get_attribute("class"), "unread flagged")
        self.assertEqual(
            figures.locator("td").nth(3).evaluate("e => getComputedStyle(e).fontWeight"), "600"
        )
        self.assertEqual(figures.locator(".flag-mark").count(), 1)
        self.assertEqual(self.page.locator("#folders .unread-count").first.inner_text(), "2")
        # Deleted: into Trash; Trash emptied: gone.
        figures.get_by_role("checkbox").check()
        self.page.get_by_role("button", name="Delete", exact=True).click()
        self.page.wait_for_load_state()
        self.assertEqual(self.row("Quarterly figures").count(), 0)
        self.page.locator("#folders").get_by_role("link", name="Trash").click()
        self.page.wait_for_load_state()
        self.assertEqual(self.row("Quarterly figures").count(), 1)
        self.page.get_by_role("button", name="Empty Trash").click()
        self.page.wait_for_load_state()
        self.assertIn("1 message deleted for good (Trash emptied).", self.page.content())
        self.assertEqual(self.row("Quarterly figures").count(), 0)
        self.page.goto(box)
        self.assertEqual(self.row("Quarterly figures").count(), 0)
        self.assertEqual(self.row("Team lunch").count(), 1)
        listed = self.appliance.cli("messages", "list", "jane@acme.test").stdout
        self.assertNotIn("Quarterly figures", listed)
        self.assertIn("Team lunch", listed)
