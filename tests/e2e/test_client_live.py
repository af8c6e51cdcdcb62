"""The mail client in headless Chromium against the real appliance under twistd: new
mail appears in the open mailbox page without a reload; a reply written in the browser
reaches the remote MTA threaded, quoted and signed; a user without rights on a mailbox
reaches none of it.

DNS comes from a twisted.names server on loopback and the remote MTA is a scripted SMTP
server on loopback, both in this test process: the tests run in the reactor
(inlineCallbacks) and send over SMTP from a thread, so that they answer meanwhile.
"""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import time

from twisted.internet import defer, reactor, task, threads

from atollon_mail.store import filing
from atollon_mail.web.replies import ACTIONS
from tests.builders import commands_succeed, mailbox_commands
from tests.dnsserver import start_dns_server
from tests.e2e.browser import ApplianceBrowserCase
from tests.remote_mta import RemoteMTA

FIGURES = (
    b"From: Alice Remote <alice@remote.test>\r\n"
    b"To: jane@acme.test\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Date: Mon, 07 Dec 2026 09:00:00 +0000\r\n"
    b"Message-ID: <figures-2@remote.test>\r\n"
    b"References: <figures-1@remote.test>\r\n"
    b"In-Reply-To: <figures-1@remote.test>\r\n"
    b"\r\n"
    b"The figures are attached to the wiki.\r\n"
    b"Please check them by Friday.\r\n"
)
SIGNATURE = "Jane Doe\nAcme Ltd, sales"


def news(subject: str) -> bytes:
    return (
        f"From: Bob <bob@remote.test>\r\nTo: jane@acme.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@remote.test>\r\n\r\nHello Jane.\r\n"
    ).encode()


class LiveClientTests(ApplianceBrowserCase):
    def setUp(self):
        self.remote = RemoteMTA()
        self.remote_port = reactor.listenTCP(0, self.remote, interface="127.0.0.1")
        self.addCleanup(self.remote_port.stopListening)
        self.dns = start_dns_server(
            reactor,
            {
                "remote.test": {"@": [("MX", 10, "mx.remote.test")], "mx": [("A", "127.0.0.1")]},
                "acme.test": {"@": [("MX", 10, "mx.acme.test")], "mx": [("A", "127.0.0.1")]},
            },
        )
        self.addCleanup(self.dns.stop)
        super().setUp()
        commands_succeed(self, self.appliance, mailbox_commands(), stdin="jane-password\n")

    def appliance_options(self) -> dict:
        return {
            "delivery_config": (
                f"[delivery]\nnameservers = 127.0.0.1:{self.dns.port}\n"
                f"mx_port = {self.remote_port.getHost().port}\n"
            )
        }

    def receive(self, raw: bytes, sender: str = "alice@remote.test") -> defer.Deferred:
        """Send to jane@acme.test on port 25 from a thread (the reactor answers DNS
        meanwhile); fires once the appliance said 250."""

        def send():
            with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=30) as client:
                client.sendmail(sender, ["jane@acme.test"], raw)

        return threads.deferToThread(send)

    @defer.inlineCallbacks
    def wait_for(self, predicate, what: str, seconds: float = 60):
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {seconds} s for {what}")
            yield task.deferLater(reactor, 0.1, lambda: None)

    # --- a new message appears without reload --------------------------------------------

    @defer.inlineCallbacks
    def test_new_mail_appears_in_the_open_mailbox_without_reload(self):
        yield self.receive(news("First news"))
        self.log_in_as("jane", "jane-password")
        self.page.goto(f"{self.base}/mail/box?address=jane@acme.test")
        # The count in the title comes over the stream: it is open now.
        self.page.wait_for_function(
            "() => document.title.startsWith('(1) Inbox of jane@acme.test')"
        )
        self.page.evaluate("window.notReloaded = true")
        rows = self.page.locator("#messages tbody tr")
        self.assertEqual(rows.count(), 1)
        yield self.receive(news("Second news"))
        self.page.locator("#messages a", has_text="Second news").wait_for(timeout=10_000)
        self.page.wait_for_function("() => document.title.startsWith('(2) ')")
        self.assertEqual(rows.count(), 2)
        self.assertIn("Second news", rows.first.inner_text(), "the newest on top")
        self.assertTrue(self.page.evaluate("window.notReloaded === true"), "no reload")
        self.assertEqual(self.page.url, f"{self.base}/mail/box?address=jane@acme.test")
        # Stopped while the page listens: at once, cleanly.
        started = time.monotonic()
        self.appliance.stop()
        self.assertLess(time.monotonic() - started, 10)
        log = self.appliance.log()
        self.assertIn("Main loop terminated.", log)
        self.assertNotIn("Traceback", log)

    # --- read, reply with quoting and signature, the remote MTA receives it ---------------

    @defer.inlineCallbacks
    def test_reply_in_the_browser_reaches_the_remote_mta_threaded_quoted_and_signed(self):
        signature = os.path.join(self.appliance.directory, "signature.txt")
        with open(signature, "w") as signature_file:
            signature_file.write(SIGNATURE + "\n")
        self.cli("mailbox", "set", "jane@acme.test", "--signature-file", signature)
        yield self.receive(FIGURES)
        self.log_in_as("jane", "jane-password")
        self.page.goto(f"{self.base}/mail/box?address=jane@acme.test")
        self.page.get_by_role("link", name="Quarterly figures").click()
        self.page.wait_for_load_state()
        self.assertIn("Please check them by Friday.", self.page.content())
        self.page.get_by_role("link", name="Reply", exact=True).click()
        self.page.wait_for_load_state()
        self.assertEqual(
            self.page.input_value("input[name=to]"), "Alice Remote <alice@remote.test>"
        )
        self.assertEqual(self.page.input_value("input[name=subject]"), "Re: Quarterly figures")
        body = self.page.locator("textarea[name=body]")
        prefilled = body.input_value()
        self.assertIn("> Please check them by Friday.", prefilled)
        self.assertIn(SIGNATURE, prefilled)
        body.fill("Checked: they are right.\n\n" + prefilled)
        self.page.get_by_role("button", name="Send").click()
        self.page.wait_for_load_state()
        self.assertIn("Message sent.", self.page.content())
        yield self.wait_for(lambda: self.remote.envelopes, "the reply at the remote MTA")
        [envelope] = self.remote.envelopes
        self.assertTrue(envelope.accepted)
        self.assertEqual(envelope.sender, "jane@acme.test")
        self.assertEqual(envelope.recipients, ("alice@remote.test",))
        reply = email.message_from_bytes(envelope.data, policy=email.policy.default)
        self.assertEqual(reply["In-Reply-To"], "<figures-2@remote.test>")
        self.assertEqual(
            reply["References"].split(), ["<figures-1@remote.test>", "<figures-2@remote.test>"]
        )
        self.assertEqual(reply["Subject"], "Re: Quarterly figures")
        text = reply.get_body(("plain",)).get_content().replace("\r\n", "\n")
        self.assertTrue(text.startswith("Checked: they are right."), text)
        self.assertIn(
            "> The figures are attached to the wiki.\n> Please check them by Friday.", text
        )
        self.assertIn("Alice Remote wrote:\n> The figures", text)
        self.assertIn(f"\n-- \n{SIGNATURE}", text)
        self.assertLess(text.index("> Please check"), text.index(SIGNATURE))
        # The original is marked answered.
        filings = self.appliance.run_sync(filing.list_filings, "jane@acme.test", 10)
        [original] = [f for f in filings if f.message.subject == "Quarterly figures"]
        self.assertIn("\\Answered", original.flags)

    # --- no rights, no route -----------------------------------------------------------

    @defer.inlineCallbacks
    def test_a_user_without_view_rights_gets_404_on_every_route_of_the_mailbox(self):
        self.cli("user", "add", "mallory", "--password-stdin", stdin="mallory-password\n")
        self.cli("mailbox", "add", "mallory@acme.test", "--owner", "mallory")
        yield self.receive(FIGURES)
        [filed] = self.appliance.run_sync(filing.list_filings, "jane@acme.test", 10)
        message = filed.message.id
        self.log_in_as("mallory", "mallory-password")
        # The browser: the mailbox is not listed, and its page is "not found".
        self.page.goto(f"{self.base}/mail")
        self.assertNotIn("jane@acme.test", self.page.content())
        shown = self.page.goto(f"{self.base}/mail/box?address=jane@acme.test")
        self.assertEqual(shown.status, 404)
        self.assertNotIn("Quarterly figures", self.page.content())
        csrf = self.page.locator("input[name=csrf_token]").first.input_value()
        box = "address=jane%40acme.test"
        gets = [
            f"/mail/box?{box}",
            f"/mail/box?{box}&folder=junk",
            f"/mail/box?{box}&page=2",
            f"/mail/message?{box}&id={message}",
            f"/mail/attachment?{box}&id={message}&part=0",
            f"/mail/compose?{box}",
            *(f"/mail/compose?{box}&action={action}&id={message}" for action in ACTIONS),
            f"/mail/events?{box}",
            # Her own mailbox with jane's message: not found either.
            f"/mail/message?address=mallory%40acme.test&id={message}",
            f"/mail/attachment?address=mallory%40acme.test&id={message}&part=0",
            f"/mail/compose?address=mallory%40acme.test&action=reply&id={message}",
        ]
        for path in gets:
            response = self.page.request.get(f"{self.base}{path}", max_redirects=0)
            self.assertEqual(response.status, 404, path)
            self.assertNotIn("Quarterly", response.text(), path)
        posts = [
            ("/mail/move", {"address": "jane@acme.test", "id": str(message), "to": "junk"}),
            (
                "/mail/compose",
                {
                    "address": "jane@acme.test",
                    "to": "alice@remote.test",
                    "subject": "from mallory",
                    "body": "hello",
                },
            ),
            *(
                (
                    "/mail/compose",
                    {
                        "address": "jane@acme.test",
                        "action": action,
                        "original": str(message),
                        "to": "alice@remote.test",
                        "subject": "from mallory",
                        "body": "hello",
                    },
                )
                for action in ACTIONS
            ),
            (
                "/mail/compose",
                {
                    "address": "mallory@acme.test",
                    "action": "forward-attached",
                    "original": str(message),
                    "to": "alice@remote.test",
                    "subject": "jane's mail",
                    "body": "hello",
                },
            ),
        ]
        for path, form in posts:
            response = self.page.request.post(
                f"{self.base}{path}", form={**form, "csrf_token": csrf}, max_redirects=0
            )
            self.assertEqual(response.status, 404, (path, form))
        # Nothing moved, nothing sent.
        [still] = self.appliance.run_sync(filing.list_filings, "jane@acme.test", 10)
        self.assertEqual((still.folder, still.flags), (filed.folder, filed.flags))
        self.assertEqual(self.appliance.run_sync(filing.list_filings, "mallory@acme.test", 10), [])
        yield task.deferLater(reactor, 1, lambda: None)
        self.assertEqual(self.remote.envelopes, [])
