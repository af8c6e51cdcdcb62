"""End to end: real IMAP clients against the appliance under twistd.

Each test starts its own appliance, with IMAP on a loopback port (STARTTLS with the
appliance's certificate, LOGIN after it), a user jane whose mailbox holds 300 messages
(plain, 8-bit, multipart, a forwarded message, one with a 2 MiB attachment: see
imapclients.corpus) filed by the store's operation for received mail, and a CRM project
"Orders" of the organization Acme, which IMAP shows as CRM/Orders.

Python's imaplib and imapclient exercise what clients use: capabilities before and after
TLS, NAMESPACE, ID, SPECIAL-USE, ENABLE CONDSTORE with CHANGEDSINCE, UNSELECT, UIDPLUS
(APPENDUID, COPYUID), MOVE, partial FETCH, BODYSTRUCTURE, ENVELOPE, SEARCH, and IDLE,
which must report a message delivered over SMTP within a second. mbsync (Debian's isync)
and offlineimap3 each sync the mailbox to a Maildir and back: a second sync changes
nothing on either side, a flag set on either side reaches the other, a message the client
moves into CRM/Orders is filed in that project as the web's "File to..." files it, and
what the web client reads is \\Seen over IMAP and the other way round. Without mbsync or
offlineimap (installed by `make test`), their tests are skipped with the reason.
"""

from __future__ import annotations

import configparser
import imaplib
import os
import re
import smtplib
import socket
import time

from twisted.internet import defer
from twisted.trial import unittest

from atollon_mail.delivery.intake import summarize_headers
from atollon_mail.store import filing, mailfolders
from atollon_mail.store.records import IncomingMessage
from tests.builders import commands_succeed, mailbox_commands, started_appliance
from tests.e2e import imapclients
from tests.e2e.appliance import RunningAppliance, free_port
from tests.e2e.imapclients import LARGE_ATTACHMENT, WORDS, Mbsync, OfflineImap, corpus

ADDRESS, LOGIN, PASSWORD = "jane@acme.test", "jane", "jane-password"
MESSAGES = 300
PROJECT = "Orders"
CRM_FOLDER = f"CRM/{PROJECT}"
CAPABILITIES = (
    "IMAP4REV1",
    "IDLE",
    "UIDPLUS",
    "MOVE",
    "SPECIAL-USE",
    "NAMESPACE",
    "ENABLE",
    "UNSELECT",
    "ID",
    "LITERAL+",
    "CONDSTORE",
)


class ImapAppliance(RunningAppliance):
    """The appliance, started once its IMAP server listens too: `imap_port` (STARTTLS)
    and `imap_tls_port` (implicit TLS)."""

    def __init__(self, directory: str, **options):
        super().__init__(directory, **options)
        self.imap_tls_port = free_port()
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(self.config)
        parser.set("imap", "tls_listen", f"tcp:{self.imap_tls_port}:interface=127.0.0.1")
        with open(self.config, "w") as config_file:
            parser.write(config_file)

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + 15
        while True:
            try:
                for port in (self.imap_port, self.imap_tls_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()  # not left running: the cleanup that stops it is not set yet
                    raise AssertionError(
                        f"the appliance serves no IMAP on ports {self.imap_port} and"
                        f" {self.imap_tls_port}: {self.log()}"
                    ) from None
                time.sleep(0.05)


class ImapCase(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        try:
            import imapclient  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("imapclient is not installed (make test installs it)") from None
        self.appliance = yield started_appliance(self, ImapAppliance, tls=True)
        commands_succeed(self, self.appliance, mailbox_commands(ADDRESS, LOGIN), f"{PASSWORD}\n")
        commands_succeed(
            self,
            self.appliance,
            (
                ("organization", "add", "Acme"),
                ("project", "add", "--organization", "Acme", PROJECT),
            ),
        )
        recipient = self.appliance.run_sync(filing.resolve_recipient, *ADDRESS.split("@"))
        sent = corpus(MESSAGES, ADDRESS)
        for start in range(0, MESSAGES, 100):
            stored = self.appliance.run_sync(
                filing.store_messages,
                [
                    IncomingMessage(
                        "sender@corr.example", (recipient,), raw, **summarize_headers(raw)
                    )
                    for raw in sent[start : start + 100]
                ],
            )
            self.assertFalse([item for item in stored if isinstance(item, Exception)])
        # The messages as the store keeps them (with the Return-Path it adds), by number.
        records = self.store(mailfolders.list_folder, ADDRESS, "inbox", None, 1000)
        raws = self.store(filing.messages_raw, [record.message.id for record in records])
        self.raws = {
            _number(record.message.message_id): raws[record.message.id] for record in records
        }
        self.assertEqual(sorted(self.raws), list(range(MESSAGES)))
        self.port = self.appliance.imap_port

    def connect(self):
        client = imapclients.connect(self.port, LOGIN, PASSWORD)
        self.addCleanup(_logout, client)
        return client

    def store(self, operation, *args):
        return self.appliance.run_sync(operation, *args)

    def web_filing(self, message_number: int, folder: str = "inbox"):
        """The web client's filing of corpus message n (by its Message-ID) in a folder."""
        wanted = f"<{message_number}@corpus.test>"
        found = [
            record
            for record in self.store(mailfolders.list_folder, ADDRESS, folder, None, 1000)
            if record.message.message_id == wanted
        ]
        self.assertEqual(len(found), 1, f"{wanted} in the web's {folder}")
        return found[0]

    def numbered(self, client) -> dict[int, int]:
        """{n: uid} of the corpus messages in the selected folder (by FETCH, so that SEARCH
        is tested on its own)."""
        kind, data = client._imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        self.assertEqual(kind, "OK", data)
        return {
            _number(_header_value(item[1])): int(re.search(rb"UID (\d+)", item[0]).group(1))
            for item in data
            if isinstance(item, tuple) and b"corpus.test" in item[1]
        }

    def uid_of(self, client, message_number: int) -> int:
        return self.numbered(client)[message_number]

    def all_uids(self, client) -> list[int]:
        """The uids of the selected folder, ascending (by FETCH, not SEARCH)."""
        kind, data = client._imap.uid("FETCH", "1:*", "(UID)")
        self.assertEqual(kind, "OK", data)
        return [int(uid) for uid in re.findall(rb"UID (\d+)", b" ".join(filter(None, data)))]


def _header_value(block: bytes) -> str:
    """The value of the one header field of a HEADER.FIELDS section."""
    return block.decode().partition(":")[2].strip()


def _number(message_id: str) -> int:
    """n of the Message-ID <n@corpus.test>."""
    return int(message_id.strip("<>").split("@")[0])


def uid_command(client, command: str, uid: int, folder: str) -> bytes:
    """The tagged answer's text of UID COPY or UID MOVE (imapclient's copy and move
    drop it, and with it the COPYUID code)."""
    kind, (text,) = client._imap._simple_command("UID", command, str(uid), folder)
    if kind != "OK":
        raise AssertionError(f"UID {command}: {kind} {text!r}")
    return text


def _logout(client) -> None:
    try:
        client.logout()
    except Exception:  # already gone: the test is over either way
        pass


class ProtocolTests(ImapCase):
    """imaplib and imapclient, command by command."""

    def test_capabilities_namespace_id_and_special_use(self):
        plain = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        self.addCleanup(plain.shutdown)
        self.assertIn("STARTTLS", plain.capabilities)
        self.assertIn("LOGINDISABLED", plain.capabilities)
        with self.assertRaises(imaplib.IMAP4.error):
            plain.login(LOGIN, PASSWORD)  # never before TLS
        plain.starttls(imapclients.unverified_context())
        plain.login(LOGIN, PASSWORD)
        _kind, lines = plain.capability()
        offered = set(lines[-1].decode().upper().split())
        self.assertEqual([name for name in CAPABILITIES if name not in offered], [])

        client = self.connect()
        namespace = client.namespace()
        self.assertEqual(namespace.personal, (("", "/"),))
        # The shared namespace: announced, or NIL while nothing is shared with jane.
        self.assertIn(namespace.shared, (None, (("Shared/", "/"),)))
        self.assertTrue(client.id_({"name": "atollon-mail tests", "version": "1"}))
        folders = {name: set(flags) for flags, _delimiter, name in client.list_folders()}
        self.assertEqual(
            {name for name in folders if b"\\Noselect" not in folders[name]},
            {"INBOX", "Sent", "Drafts", "Junk", "Trash", CRM_FOLDER},
        )
        self.assertIn(b"\\Noselect", folders["CRM"])
        special = {b"\\Sent": "Sent", b"\\Drafts": "Drafts", b"\\Junk": "Junk", b"\\Trash": "Trash"}
        for flag, name in special.items():
            self.assertIn(flag, folders[name])
            self.assertEqual(client.find_special_folder(flag), name)
        self.assertIn(b"\\Archive", folders[CRM_FOLDER])
        for verb in (client.create_folder, client.delete_folder):
            with self.assertRaises(client.Error):
                verb("Elsewhere")

    def test_fetch_of_multipart_8bit_and_large_mail_and_search(self):
        client = self.connect()
        selected = client.select_folder("INBOX")
        self.assertEqual(selected[b"EXISTS"], MESSAGES)
        uids = self.all_uids(client)
        self.assertEqual(len(uids), MESSAGES)
        self.assertEqual(uids, sorted(set(uids)))

        # ENVELOPE and sizes of all of them at once, as clients open a folder.
        listing = client.fetch(uids, ["UID", "FLAGS", "RFC822.SIZE", "ENVELOPE"])
        self.assertEqual(len(listing), MESSAGES)
        self.assertEqual(
            sorted(item[b"RFC822.SIZE"] for item in listing.values()),
            sorted(len(raw) for raw in self.raws.values()),
        )
        czech = listing[self.uid_of(client, 2)][b"ENVELOPE"]
        self.assertEqual(
            czech.subject, f"=?utf-8?q?P=C5=99=C3=ADloha?= Message 2 about {WORDS[2]}".encode()
        )
        self.assertEqual(
            czech.from_[0].mailbox + b"@" + czech.from_[0].host, b"sender2@corr.example"
        )
        self.assertEqual(czech.message_id, b"<2@corpus.test>")

        # The large one: whole, and in pieces as clients stream it (the bytes as stored).
        large = self.uid_of(client, 7)
        whole = client.fetch([large], ["BODY.PEEK[]"])[large][b"BODY[]"]
        self.assertEqual(whole, self.raws[7])
        self.assertGreater(len(whole), LARGE_ATTACHMENT)
        pieces = b""
        while True:
            part = client.fetch([large], [f"BODY.PEEK[]<{len(pieces)}.500000>"])[large]
            chunk = part[f"BODY[]<{len(pieces)}>".encode()]
            pieces += chunk
            if len(chunk) < 500000:
                break
        self.assertEqual(pieces, self.raws[7])
        self.assertNotIn(b"\\Seen", client.get_flags([large])[large])  # PEEK

        # BODYSTRUCTURE of multipart/mixed and of a forwarded message.
        structure = client.fetch([large], ["BODYSTRUCTURE"])[large][b"BODYSTRUCTURE"]
        self.assertTrue(structure.is_multipart)
        self.assertEqual(structure[1].lower(), b"mixed")
        text, attachment = structure[0]
        self.assertEqual((text[0].lower(), text[1].lower()), (b"text", b"plain"))
        self.assertEqual(attachment[0].lower(), b"application")
        self.assertEqual(attachment[5].lower(), b"base64")
        forwarded = self.uid_of(client, 3)
        structure = client.fetch([forwarded], ["BODYSTRUCTURE"])[forwarded][b"BODYSTRUCTURE"]
        inner = structure[0][1]
        self.assertEqual((inner[0].lower(), inner[1].lower()), (b"message", b"rfc822"))
        self.assertEqual(inner[7][1], f"Message 3 about {WORDS[3]}".encode())  # its ENVELOPE

        # Sections: a part of an 8-bit multipart, headers by name, a partial.
        alternative = self.uid_of(client, 1)
        parts = client.fetch(
            [alternative],
            ["BODY.PEEK[1]", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "BODY.PEEK[]<0.40>"],
        )[alternative]
        self.assertTrue(parts[b"BODY[1]"].startswith("Žluťoučký kůň.".encode()))
        self.assertEqual(
            parts[b"BODY[HEADER.FIELDS (SUBJECT)]"],
            f"Subject: Message 1 about {WORDS[1]}\r\n\r\n".encode(),
        )
        self.assertEqual(parts[b"BODY[]<0>"], self.raws[1][:40])

        # SEARCH over headers and text.
        def numbers(found):
            messages = client.fetch(found, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
            return sorted(
                _number(_header_value(item[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"]))
                for item in messages.values()
            )

        self.assertEqual(client.search("ALL"), uids)
        self.assertEqual(
            numbers(client.search(["SUBJECT", WORDS[4]])),
            [n for n in range(MESSAGES) if n % len(WORDS) == 4],
        )
        self.assertEqual(
            numbers(client.search(["FROM", "sender13@corr.example"])),
            [n for n in range(MESSAGES) if n % 20 == 13],
        )
        self.assertEqual(numbers(client.search(["HEADER", "Message-ID", "<42@corpus.test>"])), [42])
        self.assertEqual(
            numbers(client.search(["TEXT", "Forwarded below"])),
            [n for n in range(MESSAGES) if n % 5 == 3 and n % 2 and n != 7],
        )
        self.assertEqual(
            numbers(client.search(["BODY", "žluťoučký"], charset="UTF-8")),
            [n for n in range(MESSAGES) if n % 5 in (1, 2) and n != 7],
        )
        self.assertEqual(
            numbers(client.search(["SUBJECT", "Příloha"], charset="UTF-8")),
            [n for n in range(MESSAGES) if n % 5 == 2 and n != 7],
        )
        client.unselect_folder()
        with self.assertRaises(client.Error):
            client.search("ALL")  # nothing selected any more

    def test_append_copy_and_move_answer_their_uids_and_file_as_the_web_does(self):
        client = self.connect()
        draft = b"From: jane@acme.test\r\nSubject: Draft of mine\r\n\r\nNot yet.\r\n"
        answer = client.append("Drafts", draft, [b"\\Draft"])
        self.assertRegex(answer, rb"\[APPENDUID \d+ \d+\]")
        client.select_folder("Drafts")
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", answer).group(1))
        self.assertEqual(self.all_uids(client), [uid])
        self.assertEqual(client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"], draft)

        client.select_folder("INBOX")
        first, second = self.uid_of(client, 10), self.uid_of(client, 11)
        answer = uid_command(client, "COPY", first, "Trash")
        self.assertRegex(answer, rb"\[COPYUID \d+ %d \d+\]" % first)
        # Moved into the CRM folder: filed there as "File to..." does.
        client._imap.untagged_responses.pop("COPYUID", None)
        moved = uid_command(client, "MOVE", second, CRM_FOLDER)
        # COPYUID comes in an untagged OK before the EXPUNGE (or in the tagged OK):
        # imaplib keeps the former under its code.
        codes = [moved] + [
            b"COPYUID " + code for code in client._imap.untagged_responses.get("COPYUID", [])
        ]
        self.assertTrue(
            any(re.search(rb"COPYUID \d+ %d \d+" % second, code) for code in codes),
            f"no COPYUID for the MOVE: {codes}",
        )
        self.assertNotIn(11, self.numbered(client))
        self.web_filing(10, "trash")
        folders = {
            count.name: count
            for count in self.store(mailfolders.folder_counts, ADDRESS)
            if count.context is not None
        }
        self.assertEqual(folders[PROJECT].total, 1)
        (in_project,) = self.store(
            mailfolders.list_folder, ADDRESS, None, folders[PROJECT].context.id, 10
        )
        self.assertEqual(in_project.message.message_id, "<11@corpus.test>")
        client.select_folder(CRM_FOLDER)
        self.assertEqual(list(self.numbered(client)), [11])

    def test_condstore_changedsince_reports_changes_from_imap_and_from_the_web(self):
        client = self.connect()
        self.assertIn(b"CONDSTORE", client.enable("CONDSTORE"))
        selected = client.select_folder("INBOX")
        highest = selected[b"HIGHESTMODSEQ"]
        every = self.all_uids(client)  # imapclient keeps the answers for what it asked
        self.assertEqual(client.fetch(every, ["FLAGS"], ["CHANGEDSINCE %d" % highest]), {})
        flagged = self.uid_of(client, 20)
        client.add_flags([flagged], [b"\\Flagged"])
        record = self.web_filing(21)
        self.store(mailfolders.change_flags, ADDRESS, [record.uid], ["\\Seen"])
        changed = client.fetch(every, ["FLAGS"], ["CHANGEDSINCE %d" % highest])
        self.assertEqual(sorted(changed), sorted([flagged, self.uid_of(client, 21)]))
        self.assertIn(b"\\Flagged", changed[flagged][b"FLAGS"])
        self.assertIn(b"\\Seen", changed[self.uid_of(client, 21)][b"FLAGS"])
        self.assertTrue(all(item[b"MODSEQ"][0] > highest for item in changed.values()))
        self.assertGreater(client.select_folder("INBOX")[b"HIGHESTMODSEQ"], highest)

    def test_idle_reports_mail_delivered_over_smtp_within_a_second(self):
        client = self.connect()
        client.select_folder("INBOX")
        client.idle()
        with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=30) as smtp:
            smtp.sendmail(
                "someone@example.org",
                [ADDRESS],
                b"From: someone@example.org\r\nSubject: Pushed\r\n\r\nHello.\r\n",
            )
            delivered = time.monotonic()
        news = []
        while time.monotonic() - delivered < 1.0 and not news:
            news = [
                item
                for item in client.idle_check(
                    timeout=max(0.01, 1.0 - (time.monotonic() - delivered))
                )
                if len(item) > 1 and item[1] == b"EXISTS"
            ]
        elapsed = time.monotonic() - delivered
        client.idle_done()
        self.assertTrue(news, f"no EXISTS within {elapsed:.2f} s of the 250")
        self.assertEqual(news[-1][0], MESSAGES + 1)
        self.assertEqual(len(self.all_uids(client)), MESSAGES + 1)

    def test_seen_in_the_web_is_seen_over_imap_and_the_other_way_round(self):
        client = self.connect()
        client.select_folder("INBOX")
        read_on_web = self.web_filing(30)
        self.store(mailfolders.mark_read, ADDRESS, read_on_web.message.id)
        uid = self.uid_of(client, 30)
        client.noop()
        self.assertIn(b"\\Seen", client.get_flags([uid])[uid])
        # Read over IMAP (a FETCH of the body without PEEK sets \Seen): read on the web.
        other = self.uid_of(client, 31)
        client.fetch([other], ["BODY[]"])
        record = self.web_filing(31)
        self.assertIn("\\Seen", self.store(mailfolders.message_flags, ADDRESS, record.message.id))
        client.remove_flags([other], [b"\\Seen"])
        self.assertNotIn(
            "\\Seen", self.store(mailfolders.message_flags, ADDRESS, record.message.id)
        )


class SyncMixin:
    """A real client syncing the mailbox with a Maildir of its own, then both sides
    changed: `client_class` is Mbsync or OfflineImap."""

    client_class: type
    implicit_tls: bool  # the client connects to the implicit TLS port, else STARTTLS

    def setUp(self):
        # Skipped before an appliance is started for nothing.
        if not imapclients.available(self.client_class.command):
            raise unittest.SkipTest(
                f"{self.client_class.command} is not installed (make test installs it)"
            )
        return super().setUp()

    def test_sync_both_ways(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        certificate = imapclients.server_certificate(
            self.port, os.path.join(directory, "server.pem")
        )
        port = self.appliance.imap_tls_port if self.implicit_tls else self.port
        client = self.client_class(directory, port, LOGIN, PASSWORD, certificate)
        client.sync()
        inbox = client.folder("INBOX")
        self.assertEqual(len(imapclients.maildir_messages(inbox)), MESSAGES)
        large = imapclients.maildir_find(inbox, b"<7@corpus.test>")
        with open(large, "rb") as message:
            # Line ends as the client keeps them, and without the X-TUID field mbsync adds.
            kept = re.sub(rb"\nX-TUID: [^\n]*", b"", message.read().replace(b"\r\n", b"\n"))
            self.assertEqual(kept, self.raws[7].replace(b"\r\n", b"\n"))
        for name in ("Sent", "Drafts", "Junk", "Trash", CRM_FOLDER):
            self.assertTrue(os.path.isdir(client.folder(name)), name)

        # A second sync changes nothing, on either side.
        before = self.both_sides(client)
        client.sync()
        self.assertEqual(self.both_sides(client), before)

        # Flagged in the Maildir: flagged on the appliance.
        path = imapclients.maildir_find(inbox, b"<40@corpus.test>")
        imapclients.maildir_set_flags(path, imapclients.maildir_flags(path) + "F")
        # Read on the web, flagged in the web client: so in the Maildir.
        on_web = self.web_filing(41)
        self.store(mailfolders.mark_read, ADDRESS, on_web.message.id)
        self.store(mailfolders.change_flags, ADDRESS, [on_web.uid], ["\\Flagged"])
        client.sync()
        flags = self.store(mailfolders.message_flags, ADDRESS, self.web_filing(40).message.id)
        self.assertIn("\\Flagged", flags)
        self.assertNotIn("\\Seen", flags)
        self.assertEqual(
            imapclients.maildir_flags(imapclients.maildir_find(inbox, b"<41@corpus.test>")), "FS"
        )
        # Read in the Maildir: \Seen on the web.
        path = imapclients.maildir_find(inbox, b"<42@corpus.test>")
        imapclients.maildir_set_flags(path, imapclients.maildir_flags(path) + "S")
        client.sync()
        self.assertIn(
            "\\Seen", self.store(mailfolders.message_flags, ADDRESS, self.web_filing(42).message.id)
        )

        # Moved into CRM/Orders in the Maildir: filed into the project on the appliance,
        # and gone from the Inbox as after "File to..." and Delete.
        path = imapclients.maildir_find(inbox, b"<43@corpus.test>")
        imapclients.maildir_move(path, client.folder(CRM_FOLDER))
        client.sync()
        projects = {
            count.name: count
            for count in self.store(mailfolders.folder_counts, ADDRESS)
            if count.context is not None
        }
        self.assertIn(PROJECT, projects)
        filed = self.store(mailfolders.list_folder, ADDRESS, None, projects[PROJECT].context.id, 10)
        self.assertEqual([record.message.message_id for record in filed], ["<43@corpus.test>"])
        inbox_ids = {
            record.message.message_id
            for record in self.store(mailfolders.list_folder, ADDRESS, "inbox", None, 1000)
        }
        self.assertNotIn("<43@corpus.test>", inbox_ids)
        self.assertEqual(len(inbox_ids), MESSAGES - 1)

        # And then a sync changes nothing again.
        before = self.both_sides(client)
        client.sync()
        self.assertEqual(self.both_sides(client), before)

    def both_sides(self, client) -> tuple:
        """What the client's Maildir holds (names and flags, per folder) and what IMAP
        shows (uids and flags, per folder)."""
        near = {}
        for folder in ("INBOX", "Sent", "Drafts", "Junk", "Trash", CRM_FOLDER):
            near[folder] = imapclients.maildir_messages(client.folder(folder))
        return near, imapclients.server_state(self.port, LOGIN, PASSWORD)


class MbsyncTests(SyncMixin, ImapCase):
    client_class = Mbsync
    implicit_tls = False


class OfflineImapTests(SyncMixin, ImapCase):
    client_class = OfflineImap
    implicit_tls = True
