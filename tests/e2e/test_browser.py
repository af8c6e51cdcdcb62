"""The web admin in headless Chromium (Debian's, driven by Playwright) against the real
appliance under twistd: what a person does in a browser, with the page's own script."""

from __future__ import annotations

import smtplib

from tests.builders import commands_succeed, mailbox_commands
from tests.e2e.browser import ApplianceBrowserCase


class BrowserTests(ApplianceBrowserCase):
    def test_options_and_tools_filter_narrows_the_list_as_you_type(self):
        self.log_in()
        self.page.goto(f"{self.base}/options")
        entries = self.page.locator("li[data-text]")
        everything = entries.count()
        self.assertGreaterEqual(everything, 4)
        self.page.locator("input[name=q]").press_sequentially("message")
        visible = [text.strip() for text in entries.filter(visible=True).all_inner_texts()]
        self.assertTrue(visible, "something is left")
        self.assertTrue(all("Message" in text or "message" in text for text in visible), visible)
        self.assertLess(len(visible), everything)
        self.assertNotIn("/options?q=", self.page.url, "narrowed in the page, not by a reload")

    def test_add_a_domain_then_see_its_records(self):
        self.log_in()
        self.page.goto(f"{self.base}/domains")
        self.page.fill("input[name=name]", "acme.test")
        self.page.locator("form:has(input[name=name]) button[type=submit]").click()
        self.page.wait_for_load_state()
        self.assertIn("Domain acme.test added", self.page.content())
        self.assertIn("acme.test. 3600 IN MX 10 mx.acme.test.", self.page.content())

    def submit_form(self, action_value: str, button: str) -> None:
        self.page.locator(f"form:has(input[value={action_value}])").get_by_role(
            "button", name=button
        ).click()
        self.page.wait_for_load_state()

    def test_create_a_mailbox_with_an_alias_and_an_auto_reply(self):
        self.cli("domain", "add", "acme.test")
        self.cli("user", "add", "jane", "--password-stdin")
        self.log_in()
        self.page.goto(f"{self.base}/mailboxes")
        self.page.fill("input[name=new_address]", "jane@acme.test")
        self.page.fill("input[name=new_owner]", "jane")
        self.page.get_by_role("button", name="Add mailbox").click()
        self.page.wait_for_load_state()
        self.assertIn("Mailbox jane@acme.test added", self.page.content())
        self.page.fill("form:has(input[value=alias-add]) input[name=alias]", "sales@other.test")
        self.submit_form("alias-add", "Add alias")
        self.assertIn('id="alias-error"', self.page.content(), "another domain: said beside it")
        self.page.fill("form:has(input[value=alias-add]) input[name=alias]", "sales")
        self.submit_form("alias-add", "Add alias")
        self.page.check("input[name=ar_enabled]")
        self.page.fill("input[name=ar_subject]", "Away until Monday")
        self.page.fill("textarea[name=ar_body]", "I am out of the office.")
        self.submit_form("autorespond", "Save auto-respond")
        shown = self.appliance.cli("mailbox", "show", "jane@acme.test").stdout
        self.assertIn("sales@acme.test", shown)
        self.assertIn("auto-respond: on: 'Away until Monday'", shown)

    def test_store_messages_to_is_found_by_name_or_owner_and_saved(self):
        self.cli("domain", "add", "acme.test")
        self.cli("user", "add", "jane", "--password-stdin")
        self.cli("user", "add", "petr", "--password-stdin")
        self.cli("mailbox", "add", "jane@acme.test", "--owner", "jane")
        self.cli("context", "add", "project", "Spring launch")
        self.cli("context", "add", "folder", "Invoices", "--owner", "jane")
        self.cli("context", "add", "folder", "Archive")
        self.cli("context", "add", "folder", "Petr's notes", "--owner", "petr")  # not offered
        self.log_in()
        self.page.goto(f"{self.base}/mailbox?address=jane@acme.test")
        options = self.page.locator("#store_to option")
        self.assertEqual(options.count(), 4)
        self.page.locator("#store_to_filter").press_sequentially("spring")
        self.assertEqual(
            options.filter(visible=True).all_inner_texts(), ["Spring launch (no owner)"]
        )
        # The only match is chosen at once.
        chosen = self.page.locator("#store_to option:checked")
        self.assertEqual(chosen.inner_text(), "Spring launch (no owner)")
        self.page.locator("#store_to_filter").fill("nothing like it")
        self.assertTrue(self.page.locator("#store_to_none").is_visible())
        self.page.locator("#store_to_filter").fill("jane")  # her To Do and her folder
        self.assertEqual(
            options.filter(visible=True).all_inner_texts(),
            ["To Do of jane", "Invoices (owner jane)"],
        )
        self.page.select_option("#store_to", label="Invoices (owner jane)")
        self.submit_form("settings", "Save")
        self.assertIn("Changes saved.", self.page.content())
        shown = self.appliance.cli("mailbox", "show", "jane@acme.test").stdout
        self.assertIn("Invoices", shown)

    def test_read_a_received_message_then_compose_and_send_one(self):
        commands_succeed(self, self.appliance, mailbox_commands(), stdin="jane-password\n")
        self.cli("mailbox", "add", "joe@acme.test", "--owner", "jane")
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=10) as client:
            client.sendmail(
                "someone@example.org",
                ["jane@acme.test"],
                b"From: someone@example.org\r\nSubject: Quarterly figures\r\n\r\n"
                b"Please find the figures below.\r\n",
            )
        self.log_in_as("jane", "jane-password")
        self.page.goto(f"{self.base}/mail")
        self.page.get_by_role("link", name="jane@acme.test").click()
        self.page.get_by_role("link", name="Quarterly figures").click()
        self.page.wait_for_load_state()
        self.assertIn("Please find the figures below.", self.page.content())
        self.page.goto(f"{self.base}/mail/box?address=jane@acme.test")
        self.page.get_by_role("link", name="Write a message").click()
        self.page.fill("input[name=to]", "joe@acme.test")
        self.page.fill("input[name=subject]", "Figures received")
        self.page.get_by_role("button", name="Send").click()
        self.page.wait_for_load_state()
        self.assertIn("Message sent.", self.page.content())
        received = self.appliance.cli("messages", "list", "joe@acme.test").stdout
        self.assertIn("Figures received", received)

    def test_log_out_ends_the_session(self):
        self.log_in()
        self.page.click("text=Log out")
        self.page.wait_for_load_state()
        self.page.goto(f"{self.base}/")
        self.assertIn("/login", self.page.url)
