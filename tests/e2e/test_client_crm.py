"""The CRM in the mail client, in headless Chromium against the real appliance: a message
arrives over SMTP from a contact's address, its reader files it into a project with
"File to..." (the filter picks the project by its name), then finds it on the contact's
page and on the project's page; another user who may not view the mailbox finds it on
neither and reaches nothing of it (404)."""

from __future__ import annotations

import smtplib

from tests.builders import commands_succeed, mailbox_commands
from tests.e2e.browser import ApplianceBrowserCase


class ClientCrmTests(ApplianceBrowserCase):
    def test_file_a_message_into_a_project_and_find_it_on_the_contact_and_project_pages(self):
        commands_succeed(self, self.appliance, mailbox_commands(), stdin="jane-password\n")
        self.cli("user", "add", "petr", "--password-stdin", stdin="petr-password\n")
        self.cli("organization", "add", "Acme")
        self.cli("contacts", "add", "--organization", "Acme", "--kind", "company", "--name", "Firm")
        self.cli(
            "contacts", "add", "--organization", "Acme", "--kind", "person",
            "--first-name", "Jana", "--last-name", "Nováková", "--email", "jana@firm.test",
        )  # fmt: skip
        self.cli("folder", "add", "--organization", "Acme", "--company", "Firm", "Firm orders")
        self.cli("project", "add", "--organization", "Acme", "Spring launch")
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=10) as client:
            client.sendmail(
                "jana@firm.test",
                ["jane@acme.test"],
                b"From: Jana Novakova <jana@firm.test>\r\nTo: jane@acme.test\r\n"
                b"Subject: Launch dates\r\n\r\nThe launch moves to May.\r\n",
            )
        self.log_in_as("jane", "jane-password")
        self.page.goto(f"{self.base}/mail/box?address=jane@acme.test")
        self.page.get_by_role("link", name="Launch dates").click()
        self.page.wait_for_load_state()
        options = self.page.locator("#file_to option")
        self.assertEqual(options.count(), 2)
        self.page.locator("#file_to_filter").press_sequentially("spring")
        self.assertEqual(
            options.filter(visible=True).all_inner_texts(), ["Spring launch (project, Acme)"]
        )
        self.assertEqual(
            self.page.locator("#file_to option:checked").inner_text(),
            "Spring launch (project, Acme)",
        )
        self.page.locator("#file_to_filter").fill("nothing like it")
        self.assertTrue(self.page.locator("#file_to_none").is_visible())
        self.page.locator("#file_to_filter").fill("firm")  # by the company's name
        self.assertEqual(
            options.filter(visible=True).all_inner_texts(),
            ["Firm orders (folder of Firm, Acme)"],
        )
        self.page.locator("#file_to_filter").fill("launch")
        self.page.get_by_role("button", name="File", exact=True).click()
        self.page.wait_for_load_state()
        self.assertIn("Filed into Spring launch.", self.page.content())
        message_url = self.page.url.split("&filed=")[0]
        # Filed a second time into the same project: nothing changes.
        self.page.locator("#file_to_filter").fill("launch")
        self.page.get_by_role("button", name="File", exact=True).click()
        self.page.wait_for_load_state()
        self.assertIn("It was filed into Spring launch already.", self.page.content())
        self.assertEqual(
            self.page.locator("#contexts li").all_inner_texts(),
            ["To Do (jane)", "Project Spring launch"],
        )

        # The inbox lists it once still.
        self.page.goto(f"{self.base}/mail/box?address=jane@acme.test")
        self.assertEqual(self.page.get_by_role("link", name="Launch dates").count(), 1)
        self.page.goto(message_url)

        # The contact's page, found by searching the contacts.
        self.page.get_by_role("link", name="Contacts").click()
        self.page.fill("input[name=q]", "jana@firm")
        self.page.get_by_role("button", name="Search").click()
        self.page.wait_for_load_state()
        self.page.get_by_role("link", name="Jana Nováková").click()
        self.page.wait_for_load_state()
        mail = self.page.locator("#mail")
        self.assertIn("1 message from or to jana@firm.test", mail.inner_text())
        mail.get_by_role("link", name="Launch dates").click()
        self.page.wait_for_load_state()
        self.assertIn("The launch moves to May.", self.page.content())

        # The project's page, from the message.
        self.page.get_by_role("link", name="Project Spring launch").click()
        self.page.wait_for_load_state()
        self.assertIn("Project Spring launch", self.page.locator("h1").inner_text())
        rows = self.page.locator("#messages tbody tr")
        self.assertEqual(rows.count(), 1)
        self.assertIn("Launch dates", rows.inner_text())
        project_url = self.page.url
        contact_url = f"{self.base}/contacts?q=jana"

        # Petr may not view jane's mailbox: the pages open, without her mail; her
        # message is not found.
        self.page.context.clear_cookies()
        self.log_in_as("petr", "petr-password")
        self.page.goto(project_url)
        self.assertEqual(self.page.locator("#messages tbody tr").count(), 0)
        self.page.goto(contact_url)
        self.page.get_by_role("link", name="Jana Nováková").click()
        self.page.wait_for_load_state()
        self.assertNotIn("Launch dates", self.page.content())
        response = self.page.goto(message_url)
        self.assertEqual(response.status, 404)
