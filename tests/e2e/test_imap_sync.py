"""End to end: mbsync (isync) syncs a mailbox of the appliance to a Maildir and back over
IMAP with STARTTLS: messages (multipart, 8-bit, a large attachment) arrive, a second sync
changes nothing, a flag set on either side reaches the other, and a message moved on the
client side is filed in the right folder on the appliance. Skipped when mbsync is not
installed (`make test` installs it from Debian)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import smtplib
import subprocess

from twisted.internet import defer, threads
from twisted.trial import unittest

from atollon_mail.selfsigned import self_signed_paths
from atollon_mail.store import imapfolders
from tests.builders import commands_succeed, mailbox_commands, started_appliance

PASSWORD = "a-password"
MBSYNC = shutil.which("mbsync")


def plain(number: int) -> bytes:
    return (
        f"From: Someone <someone@example.org>\r\nTo: jane@acme.test\r\n"
        f"Subject: message {number}\r\nMessage-ID: <m{number}@example.org>\r\n\r\n"
        f"Body of message {number}.\r\n"
    ).encode()


def eight_bit() -> bytes:
    return (
        "From: Jiří <jiri@example.org>\r\nTo: jane@acme.test\r\nSubject: 8-bit\r\n"
        "Message-ID: <eight@example.org>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Příliš žluťoučký kůň.\r\n"
    ).encode()


def with_attachment(size: int) -> bytes:
    data = base64.encodebytes(os.urandom(size)).replace(b"\n", b"\r\n")
    return (
        b"From: someone@example.org\r\nTo: jane@acme.test\r\nSubject: attachment\r\n"
        b"Message-ID: <attached@example.org>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="data.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + data + b"--b1--\r\n"
    )


class MbsyncTests(unittest.TestCase):
    if MBSYNC is None:
        skip = "mbsync (isync) is not installed: `make test` installs it from Debian"

    @defer.inlineCallbacks
    def setUp(self):
        self.appliance = yield started_appliance(self, extra="greet_pause = 0\n")
        yield threads.deferToThread(
            commands_succeed, self, self.appliance, mailbox_commands(), stdin=PASSWORD + "\n"
        )
        self.maildir = os.path.join(self.appliance.directory, "maildir")
        os.makedirs(self.maildir)
        certificate, _ = self_signed_paths(os.path.join(self.appliance.directory, "data"))
        self.config = os.path.join(self.appliance.directory, "mbsyncrc")
        with open(self.config, "w") as config:
            config.write(
                f"IMAPAccount appliance\nHost 127.0.0.1\nPort {self.appliance.imap_port}\n"
                f"User jane\nPass {PASSWORD}\nSSLType STARTTLS\n"
                f"CertificateFile {certificate}\n\n"
                "IMAPStore remote\nAccount appliance\n\n"
                f"MaildirStore local\nPath {self.maildir}/\nInbox {self.maildir}/INBOX\n"
                "SubFolders Verbatim\n\n"
                "Channel mail\nFar :remote:\nNear :local:\nPatterns *\nCreate Near\n"
                "Sync All\nExpunge Both\nSyncState *\n"
            )

    def deliver(self, raw: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=30) as client:
            client.sendmail("someone@example.org", ["jane@acme.test"], raw)

    def sync(self) -> str:
        result = subprocess.run(
            [MBSYNC, "--config", self.config, "--all", "--verbose"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout

    def files(self, folder: str = "INBOX") -> dict[str, str]:
        """Maildir file name -> its flags, of new and cur."""
        found = {}
        for sub in ("new", "cur"):
            path = os.path.join(self.maildir, folder, sub)
            for name in os.listdir(path) if os.path.isdir(path) else ():
                found[os.path.join(sub, name)] = name.partition(":2,")[2]
        return found

    def remote_flags(self, folder: str = "INBOX") -> list[tuple[str, ...]]:
        snapshot = self.appliance.run_sync(imapfolders.folder_snapshot, "jane", folder)
        items = self.appliance.run_sync(imapfolders.message_items, "jane", folder, snapshot.uids)
        return [item.flags for item in items]

    def test_sync_both_ways(self):
        for number in range(20):
            self.deliver(plain(number))
        self.deliver(eight_bit())
        self.deliver(with_attachment(3 * 1024 * 1024))
        self.sync()
        files = self.files()
        self.assertEqual(len(files), 22)
        contents = []
        for name in files:
            with open(os.path.join(self.maildir, "INBOX", name), "rb") as message:
                contents.append(message.read())
        # Maildir keeps LF line ends; the 8-bit text and the attachment arrive whole.
        self.assertTrue(any("Příliš žluťoučký kůň.\n".encode() in text for text in contents))
        attached = [text for text in contents if b'filename="data.bin"' in text]
        self.assertEqual(len(attached), 1)
        self.assertGreater(len(attached[0]), 4 * 1024 * 1024)
        for folder in ("Sent", "Drafts", "Junk", "Trash"):
            self.assertTrue(os.path.isdir(os.path.join(self.maildir, folder)), folder)

        second = self.sync()
        self.assertEqual(self.files(), files, second)

        # A flag set on the client side reaches the appliance.
        name = sorted(files)[0]
        source = os.path.join(self.maildir, "INBOX", name)
        base = os.path.basename(name).split(":2,")[0]
        target = os.path.join(self.maildir, "INBOX", "cur", base + ":2,F")
        os.rename(source, target)
        self.sync()
        self.assertEqual(sum("\\Flagged" in flags for flags in self.remote_flags()), 1)

        # A flag set on the appliance (the web marks a message read) reaches the client.
        snapshot = self.appliance.run_sync(imapfolders.folder_snapshot, "jane", "INBOX")
        self.appliance.run_sync(
            imapfolders.store_flags, "jane", "INBOX", snapshot.uids[-1:], "+", ("\\Seen",)
        )
        self.sync()
        self.assertEqual(sum("S" in flags for flags in self.files().values()), 1)

        # A message moved on the client side is filed in that folder on the appliance.
        moved = sorted(self.files())[1]
        # A mail program moving a file drops mbsync's ",U=<uid>" of the folder it left.
        fresh = re.sub(r",U=\d+", "", os.path.basename(moved))
        os.rename(
            os.path.join(self.maildir, "INBOX", moved),
            os.path.join(self.maildir, "Junk", "cur", fresh),
        )
        self.sync()
        self.assertEqual(len(self.remote_flags("Junk")), 1)
        self.assertEqual(len(self.remote_flags()), 21)
