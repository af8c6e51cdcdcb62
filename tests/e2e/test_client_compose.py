"""Writing in the web mail client, in headless Chromium against the real appliance: a
forward with an uploaded file reaching another mailbox, a draft that survives a reload and
is sent, drafts saved when the page is left, address suggestions as one types."""

from __future__ import annotations

import email
import email.policy
import smtplib
import time

from atollon_mail.store import filing
from tests.builders import commands_succeed, mailbox_commands
from tests.e2e.browser import ApplianceBrowserCase

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
FILENAME = "Nabídka č. 7.pdf"


class ComposeJourneys(ApplianceBrowserCase):
    def setUp(self):
        super().setUp()
        commands_succeed(self, self.appliance, mailbox_commands(), stdin="jane-password\n")
        self.cli("mailbox", "add", "joe@acme.test", "--owner", "jane")
        self.log_in_as("jane", "jane-password")

    def box(self, address: str, folder: str = "inbox") -> None:
        self.page.goto(f"{self.base}/mail/box?address={address}&folder={folder}")

    def filings(self, address: str, folder: str = "inbox"):
        return self.appliance.run_sync(filing.list_filings, address, 100, 0, folder=folder)

    def test_forward_a_received_message_with_an_uploaded_file(self):
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=10) as client:
            client.sendmail(
                "someone@example.org",
                ["jane@acme.test"],
                b"From: someone@example.org\r\nSubject: Price list\r\n\r\nPrices below.\r\n",
            )
        self.box("jane@acme.test")
        self.page.get_by_role("link", name="Price list").click()
        self.page.get_by_role("link", name="Forward", exact=True).click()
        self.page.fill("input[name=to]", "joe@acme.test")
        self.page.set_input_files(
            "#attachments",
            files=[{"name": FILENAME, "mimeType": "application/pdf", "buffer": PDF}],
        )
        self.page.get_by_role("button", name="Send").click()
        self.page.wait_for_load_state()
        self.assertIn("Message sent.", self.page.content())
        # It arrived in joe's mailbox, the file with it.
        self.box("joe@acme.test")
        self.page.get_by_role("link", name="Fwd: Price list").click()
        self.page.wait_for_load_state()
        attachments = self.page.locator("#attachments").inner_text()
        self.assertIn(FILENAME, attachments)
        self.assertIn("application/pdf", attachments)
        [arrived] = self.filings("joe@acme.test")
        raw = self.appliance.run_sync(filing.message_raw, arrived.message.id)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        [part] = message.iter_attachments()
        self.assertEqual(part.get_filename(), FILENAME)
        self.assertEqual(part.get_payload(decode=True), PDF)
        self.assertIn("Prices below.", message.get_body(("plain",)).get_content())
        # And jane's copy lies in Sent.
        sent = [f for f in self.filings("jane@acme.test") if f.context.name.startswith("Sent")]
        self.assertEqual([f.message.subject for f in sent], ["Fwd: Price list"])

    def test_a_draft_survives_a_reload_and_is_sent(self):
        self.page.goto(f"{self.base}/mail/compose?address=jane@acme.test")
        self.page.fill("input[name=to]", "joe@acme.test")
        self.page.fill("input[name=subject]", "Agenda")
        self.page.fill("textarea[name=body]", "Points for Monday.")
        self.page.set_input_files(
            "#attachments",
            files=[{"name": "agenda.txt", "mimeType": "text/plain", "buffer": b"1. Budget\n"}],
        )
        self.page.get_by_role("button", name="Save draft").click()
        self.page.wait_for_load_state()
        self.assertIn("Draft saved.", self.page.content())
        self.page.reload()
        self.assertEqual(self.page.input_value("input[name=subject]"), "Agenda")
        self.assertIn("agenda.txt", self.page.locator("#kept").inner_text())
        # In the Drafts folder; opened from there, and sent.
        self.box("jane@acme.test", "drafts")
        self.page.get_by_role("link", name="Agenda").click()
        self.page.wait_for_load_state()
        self.assertEqual(self.page.input_value("input[name=to]"), "joe@acme.test")
        self.assertIn("Points for Monday.", self.page.input_value("textarea[name=body]"))
        self.page.get_by_role("button", name="Send").click()
        self.page.wait_for_load_state()
        self.assertIn("Message sent.", self.page.content())
        self.assertEqual(self.filings("jane@acme.test", "drafts"), [])
        [arrived] = self.filings("joe@acme.test")
        self.assertEqual(arrived.message.subject, "Agenda")
        raw = self.appliance.run_sync(filing.message_raw, arrived.message.id)
        self.assertIn(b'filename="agenda.txt"', raw)

    def test_a_changed_form_is_saved_every_30_seconds(self):
        self.page.clock.install()
        self.page.goto(f"{self.base}/mail/compose?address=jane@acme.test")
        self.page.clock.run_for(31_000)  # unchanged: nothing saved
        self.assertEqual(self.filings("jane@acme.test", "drafts"), [])
        self.page.fill("input[name=subject]", "Autosaved")
        self.page.set_input_files(
            "#attachments",
            files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"notes\n"}],
        )
        self.page.clock.run_for(31_000)
        self.page.wait_for_function(
            "() => document.getElementById('draft-status').textContent.startsWith('Draft saved')"
        )
        [draft] = self.filings("jane@acme.test", "drafts")
        self.assertEqual(draft.message.subject, "Autosaved")
        self.assertEqual(self.page.input_value("#draft"), str(draft.message.id))
        self.assertIn("notes.txt", self.page.locator("#kept").inner_text())
        # Changed again: saved again, replacing it, the file kept and not sent twice.
        self.page.fill("input[name=subject]", "Autosaved again")
        self.page.clock.run_for(31_000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            [latest] = self.filings("jane@acme.test", "drafts")
            if latest.message.subject == "Autosaved again":
                break
            time.sleep(0.2)
        self.assertEqual(latest.message.subject, "Autosaved again")
        self.assertGreater(latest.uid, draft.uid)
        raw = self.appliance.run_sync(filing.message_raw, latest.message.id)
        self.assertEqual(raw.count(b'filename="notes.txt"'), 1)

    def test_leaving_the_page_saves_the_draft(self):
        self.page.goto(f"{self.base}/mail/compose?address=jane@acme.test")
        self.page.fill("input[name=subject]", "Half written")
        self.page.fill("textarea[name=body]", "To be continued")
        self.page.get_by_role("link", name="Back to jane@acme.test").click()
        self.page.wait_for_load_state()
        deadline = time.monotonic() + 10
        while not self.filings("jane@acme.test", "drafts") and time.monotonic() < deadline:
            time.sleep(0.2)  # the beacon is sent as the page goes; it may land a bit later
        [draft] = self.filings("jane@acme.test", "drafts")
        self.assertEqual(draft.message.subject, "Half written")

    def test_to_suggests_addresses_as_one_types(self):
        self.page.goto(f"{self.base}/mail/compose?address=jane@acme.test")
        self.page.type("input[name=to]", "jo")
        option = self.page.locator("#to-suggestions option")
        option.first.wait_for(state="attached", timeout=5000)
        self.assertEqual(
            option.evaluate_all("list => list.map(o => o.value)"), ["joe@acme.test"]
        )  # not jane's default
        # After a comma, the suggestion keeps what was written before it.
        self.page.fill("input[name=to]", "")
        self.page.type("input[name=to]", "someone@example.org, ja")
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('#to-suggestions option')]"
            ".some(o => o.value === 'someone@example.org, jane <jane@acme.test>')",
            timeout=5000,
        )
