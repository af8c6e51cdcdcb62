"""End to end: Python's imaplib against the appliance started by twistd, over loopback:
STARTTLS with the appliance's self-signed certificate, LOGIN, SELECT, FETCH, STORE, MOVE,
and IDLE woken by a message delivered over SMTP."""

from __future__ import annotations

import imaplib
import os
import re
import smtplib
import ssl
import time

from twisted.internet import defer, threads
from twisted.trial import unittest

from atollon_mail.selfsigned import self_signed_paths
from tests.builders import commands_succeed, mailbox_commands, started_appliance

PASSWORD = "a-password"


def message(subject: str) -> bytes:
    return (
        f"From: Someone <someone@example.org>\r\nTo: jane@acme.test\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n\r\n"
        f"Hello, {subject}.\r\n"
    ).encode()


class ImapClientTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.appliance = yield started_appliance(self, extra="greet_pause = 0\n", imap_tls=True)
        yield threads.deferToThread(
            commands_succeed, self, self.appliance, mailbox_commands(), stdin=PASSWORD + "\n"
        )

    def deliver(self, subject: str) -> None:
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=10) as client:
            client.sendmail("someone@example.org", ["jane@acme.test"], message(subject))

    def connect(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.appliance.imap_port, timeout=10)

        def close():
            try:
                client.shutdown()
            except OSError:  # closed by LOGOUT already
                pass

        self.addCleanup(close)
        return client

    def tls_context(self) -> ssl.SSLContext:
        certificate, _ = self_signed_paths(os.path.join(self.appliance.directory, "data"))
        context = ssl.create_default_context(cafile=certificate)
        context.check_hostname = False  # the certificate names mx.acme.test, we dial 127.0.0.1
        return context

    def test_a_mail_client_session(self):
        self.deliver("first")
        self.deliver("second")
        client = self.connect()
        self.assertIn("LOGINDISABLED", client.capabilities)
        with self.assertRaises(imaplib.IMAP4.error):
            client.login("jane", PASSWORD)
        client.starttls(ssl_context=self.tls_context())
        self.assertIn("AUTH=PLAIN", client.capabilities)
        self.assertEqual(client.login("jane", PASSWORD)[0], "OK")

        status, data = client.select("INBOX")
        self.assertEqual((status, data), ("OK", [b"2"]))
        status, data = client.fetch("1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(status, "OK")
        subjects = [part[1].strip() for part in data if isinstance(part, tuple)]
        self.assertEqual(subjects, [b"Subject: first", b"Subject: second"])

        status, data = client.fetch("1", "(BODY[TEXT])")
        self.assertEqual(data[0][1], b"Hello, first.\r\n")
        status, data = client.fetch("1", "(FLAGS)")
        self.assertIn(b"\\Seen", data[0])

        status, data = client.store("2", "+FLAGS", "(\\Flagged)")
        self.assertIn(b"\\Flagged", data[0])
        status, data = client.uid("SEARCH", "FLAGGED")
        [flagged_uid] = data[0].split()

        status, data = client.uid("MOVE", flagged_uid, "Junk")
        self.assertEqual(status, "OK")
        self.assertRegex(
            client.untagged_responses.get("OK", [b""])[-1].decode(), r"^\[COPYUID \d+ \d+ \d+\]"
        )
        status, data = client.select("INBOX")
        self.assertEqual(data, [b"1"])
        status, data = client.status("Junk", "(MESSAGES UNSEEN)")
        self.assertEqual(data[0], b'"Junk" (MESSAGES 1 UNSEEN 1)')

        draft = b"Subject: a draft\r\nMessage-ID: <draft@acme.test>\r\n\r\nNot yet.\r\n"
        status, data = client.append("Drafts", "(\\Draft)", None, draft)
        self.assertEqual(status, "OK")
        self.assertRegex(data[0], rb"^\[APPENDUID \d+ \d+\] APPEND completed$")
        client.select("Drafts")
        status, data = client.search(None, "SUBJECT", '"a draft"')
        self.assertEqual(data, [b"1"])

        status, data = client.list()
        names = [re.search(rb'"([^"]*)"$', line).group(1) for line in data]
        self.assertEqual(names[:5], [b"INBOX", b"Sent", b"Drafts", b"Junk", b"Trash"])
        self.assertEqual(client.logout()[0], "BYE")

    def test_idle_sees_a_delivered_message_within_a_second(self):
        client = self.connect()
        client.starttls(ssl_context=self.tls_context())
        client.login("jane", PASSWORD)
        client.select("INBOX")
        tag = client._new_tag()
        client.send(tag + b" IDLE\r\n")
        self.assertEqual(client.readline(), b"+ idling\r\n")
        self.deliver("pushed")
        delivered = time.monotonic()
        line = client.readline()
        elapsed = time.monotonic() - delivered
        self.assertEqual(line, b"* 1 EXISTS\r\n")
        self.assertLess(elapsed, 1.0)
        client.send(b"DONE\r\n")
        self.assertEqual(client.readline(), tag + b" OK IDLE terminated\r\n")

    def test_implicit_tls(self):
        self.deliver("over tls")
        client = imaplib.IMAP4_SSL(
            "127.0.0.1", self.appliance.imap_tls_port, ssl_context=self.tls_context(), timeout=10
        )
        self.addCleanup(client.shutdown)
        self.assertIn("AUTH=PLAIN", client.capabilities)
        self.assertNotIn("STARTTLS", client.capabilities)
        client.login("jane", PASSWORD)
        self.assertEqual(client.select("INBOX", readonly=True), ("OK", [b"1"]))
        status, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(data[0][1].strip(), b"Subject: over tls")


class ImapClientLibraryTests(unittest.TestCase):
    """imapclient, a second client library, for the extensions: NAMESPACE, SPECIAL-USE,
    ENABLE CONDSTORE with CHANGEDSINCE, UIDPLUS, MOVE and IDLE."""

    @defer.inlineCallbacks
    def setUp(self):
        try:
            import imapclient
        except ImportError:
            raise unittest.SkipTest("imapclient is not installed") from None
        self.imapclient = imapclient
        self.appliance = yield started_appliance(self, extra="greet_pause = 0\n")
        yield threads.deferToThread(
            commands_succeed, self, self.appliance, mailbox_commands(), stdin=PASSWORD + "\n"
        )

    def test_extensions(self):
        imapclient = self.imapclient
        for subject in ("one", "two"):
            ImapClientTests.deliver(self, subject)
        certificate, _ = self_signed_paths(os.path.join(self.appliance.directory, "data"))
        context = ssl.create_default_context(cafile=certificate)
        context.check_hostname = False
        client = imapclient.IMAPClient("127.0.0.1", port=self.appliance.imap_port, ssl=False)

        def close():
            try:
                client.shutdown()
            except OSError:  # closed by LOGOUT already
                pass

        self.addCleanup(close)
        client.starttls(context)
        client.login("jane", PASSWORD)
        for capability in (b"IDLE", b"UIDPLUS", b"MOVE", b"CONDSTORE", b"SPECIAL-USE"):
            self.assertTrue(client.has_capability(capability.decode()), capability)
        personal, other, shared = client.namespace()
        self.assertEqual(personal, (("", "/"),))
        self.assertEqual(shared, (("Shared/", "/"),))
        self.assertEqual(client.find_special_folder(b"\\Junk"), "Junk")
        self.assertEqual(client.enable("CONDSTORE"), [b"CONDSTORE"])

        selected = client.select_folder("INBOX")
        self.assertEqual(selected[b"EXISTS"], 2)
        highest = selected[b"HIGHESTMODSEQ"]
        uids = client.search("ALL")
        client.add_flags(uids[:1], [imapclient.FLAGGED])
        changed = client.fetch(uids, ["FLAGS"], modifiers=[f"CHANGEDSINCE {highest}"])
        self.assertEqual(list(changed), uids[:1])
        self.assertIn(imapclient.FLAGGED, changed[uids[0]][b"FLAGS"])

        client.move(uids[1:], "Trash")
        self.assertEqual(client.folder_status("Trash", ["MESSAGES"])[b"MESSAGES"], 1)

        client.idle()
        ImapClientTests.deliver(self, "three")
        responses = client.idle_check(timeout=5)
        client.idle_done()
        self.assertIn((2, b"EXISTS"), responses)
        client.logout()
