"""End to end: `atollon-mail backup` while a client keeps sending over SMTP, then
`atollon-mail restore` into a fresh instance, on SQLite and on PostgreSQL (a database of
its own for each side, made and dropped here).

Every message acknowledged with 250 before the backup began is in the restored instance
with its uid, its mailbox's id (UIDVALIDITY), flags and folder; the DKIM keys and the
queue come back too, and the restored appliance receives mail and delivers the queued
message, signed, to a test MTA.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import threading
import time

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from atollon_mail.store import domains, filing, mailboxes, queue
from tests.builders import commands_succeed, mailbox_commands, new_appliance
from tests.dnsserver import start_dns_server
from tests.remote_mta import RemoteMTA, self_signed_tls_options
from tests.support import (
    PG_DUMP_SKIP_REASON,
    POSTGRES_URL,
    create_postgres_database,
    drop_postgres_database,
)

JANE = "jane@acme.test"
PASSWORD = "jane-password\n"


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class InboundLoad:
    """A client sending to jane over port 25 without pause, in a thread of its own;
    `acknowledged` holds (monotonic time of the 250, Message-ID) of each accepted one."""

    def __init__(self, port: int):
        self.port = port
        self.acknowledged: list[tuple[float, str]] = []
        self.problems: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        number = 0
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
                client.ehlo("sender.outside.test")
                while not self._stop.is_set():
                    number += 1
                    message_id = f"<load-{number}@outside.test>"
                    raw = (
                        f"From: sender@outside.test\r\nTo: {JANE}\r\n"
                        f"Subject: load {number}\r\nMessage-ID: {message_id}\r\n\r\n"
                        f"message {number}\r\n"
                    ).encode()
                    client.sendmail("sender@outside.test", [JANE], raw)
                    self.acknowledged.append((time.monotonic(), message_id))
        except Exception as problem:  # shown by the test
            self.problems.append(problem)


def inbox(appliance):
    """jane's filings by Message-ID."""
    filings = appliance.run_sync(filing.list_filings, JANE, 100000)
    return {f.message.message_id: f for f in filings}


class BackupRestoreEndToEnd:
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        certificates = os.path.abspath(self.mktemp())
        os.makedirs(certificates)
        # Deferred at first: the submitted message waits in the queue when the backup runs.
        self.remote = RemoteMTA(
            tls_options=self_signed_tls_options(certificates, "mx.remote.test"),
            rcpt_default="451 4.3.0 come back later",
        )
        self.remote_port = reactor.listenTCP(0, self.remote, interface="127.0.0.1")
        self.addCleanup(self.remote_port.stopListening)
        self.dns = start_dns_server(
            reactor,
            {"remote.test": {"@": [("MX", 10, "mx.remote.test")], "mx": [("A", "127.0.0.1")]}},
        )
        self.addCleanup(self.dns.stop)
        self.source = self.appliance()
        yield threads.deferToThread(self.source.start)
        self.addCleanup(self.source.stop)
        commands = (*mailbox_commands(JANE, "jane"), ("dkim", "generate", "acme.test"))
        yield threads.deferToThread(commands_succeed, self, self.source, commands, PASSWORD)

    def appliance(self):
        delivery = (
            f"[delivery]\nnameservers = 127.0.0.1:{self.dns.port}\n"
            f"mx_port = {self.remote_port.getHost().port}\nretry_first = 1\nretry_max = 2\n"
            "[inbound]\nchecks = off\n"
        )
        appliance = new_appliance(
            self, tls=True, extra="greet_pause = 0\n", delivery_config=delivery
        )
        url = self.database_url()
        if url is not None:
            with open(appliance.config) as config_file:
                text = config_file.read()
            with open(appliance.config, "w") as config_file:
                config_file.write(
                    text.replace(f"url = {appliance.database_url}\n", f"url = {url}\n")
                )
            appliance.database_url = url
        return appliance

    def submit(self) -> None:
        with smtplib.SMTP("127.0.0.1", self.source.submission_port, timeout=30) as client:
            client.starttls(context=_unverified_context())
            client.login("jane", PASSWORD.strip())
            client.sendmail(
                JANE,
                ["bob@remote.test"],
                b"From: jane@acme.test\r\nTo: bob@remote.test\r\nSubject: queued\r\n"
                b"Message-ID: <queued-1@acme.test>\r\n\r\nwaiting in the queue\r\n",
            )

    @defer.inlineCallbacks
    def wait_for(self, predicate, what: str, seconds: float = 30):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = yield threads.deferToThread(predicate)
            if result:
                return result
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.fail(f"timed out waiting for {what}")

    @defer.inlineCallbacks
    def test_backup_under_load_restores_everything_acknowledged_before_it(self):
        source = self.source
        yield threads.deferToThread(self.submit)
        yield self.wait_for(
            lambda: [e for e in source.run_sync(queue.queue_list) if e.attempts > 0],
            "the first delivery attempt",
        )
        load = InboundLoad(source.smtp_port)
        load.start()
        self.addCleanup(load.stop)
        yield self.wait_for(lambda: len(load.acknowledged) >= 20, "the first messages")
        # Some of it flagged, some moved to Junk.
        first = inbox(source)
        loaded = [f for f in first.values() if f.message.message_id.startswith("<load-")]
        flagged, junked = sorted(loaded, key=lambda f: f.uid)[:2]
        source.run_sync(filing.add_flag, JANE, flagged.message.id, "\\Flagged")
        source.run_sync(filing.move_message, JANE, junked.message.id, "junk")

        yield task.deferLater(reactor, 1, lambda: None)
        began = time.monotonic()
        archive = os.path.join(os.path.abspath(self.mktemp()), "backup.tar")
        passphrase_file = os.path.join(source.directory, "passphrase")
        with open(passphrase_file, "w") as out:
            out.write("correct horse battery staple\n")
        backup = yield threads.deferToThread(
            source.cli, "backup", archive, "--passphrase-file", passphrase_file
        )
        self.assertEqual(backup.returncode, 0, backup.stderr)
        acknowledged_during = [m for t, m in load.acknowledged if t >= began]
        load.stop()
        self.assertEqual(load.problems, [])
        before = [message_id for at, message_id in load.acknowledged if at < began]
        self.assertGreater(len(acknowledged_during), 0, "mail kept flowing during the backup")

        expected_inbox = inbox(source)
        expected_mailboxes = source.run_sync(mailboxes.list_mailboxes)
        expected_keys = source.run_sync(domains.all_dkim_keys)
        [queued] = source.run_sync(queue.queue_list)
        source.stop()

        # A fresh instance on another machine: the configuration and the archive.
        restored = self.appliance()
        result = yield threads.deferToThread(
            restored.cli, "restore", archive, "--passphrase-file", passphrase_file
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        got = inbox(restored)
        for message_id in before:
            want = expected_inbox[message_id]
            self.assertEqual(got[message_id], want, message_id)
        self.assertEqual(got[flagged.message.message_id].flags, ("\\Flagged",))
        self.assertEqual(got[junked.message.message_id].folder, "junk")
        # Nothing half-stored: whatever the backup caught after it began is whole too.
        for message_id, record in got.items():
            self.assertEqual(record, expected_inbox[message_id])
        self.assertEqual(restored.run_sync(mailboxes.list_mailboxes), expected_mailboxes)
        self.assertEqual(restored.run_sync(domains.all_dkim_keys), expected_keys)
        [entry] = restored.run_sync(queue.queue_list)
        self.assertEqual(
            (entry.queue_message_id, entry.recipient_id, entry.address),
            (queued.queue_message_id, queued.recipient_id, "bob@remote.test"),
        )
        # The secrets of the data directory (SRS: bounces to old addresses still verify).
        for name in ("srs-secret", "massmail-secret", "initial-admin-password"):
            with open(os.path.join(source.directory, "data", name), "rb") as kept:
                with open(os.path.join(restored.directory, "data", name), "rb") as new:
                    self.assertEqual(new.read(), kept.read(), name)

        # The restored appliance sends (the queued message, signed with the restored
        # key) and receives.
        self.remote.rcpt_default = 250
        yield threads.deferToThread(restored.start)
        self.addCleanup(restored.stop)
        yield self.wait_for(lambda: self.remote.delivered, "the queued message's delivery", 40)
        [envelope] = self.remote.delivered
        self.assertIn(b"Message-ID: <queued-1@acme.test>", envelope.data)
        [key] = expected_keys
        self.assertIn(f"s={key.selector};".encode(), envelope.data.split(b"\r\n\r\n")[0])

        def receive():
            with smtplib.SMTP("127.0.0.1", restored.smtp_port, timeout=30) as client:
                client.sendmail(
                    "sender@outside.test",
                    [JANE],
                    b"Subject: after\r\nMessage-ID: <after-restore@outside.test>\r\n\r\nhi\r\n",
                )

        yield threads.deferToThread(receive)
        after = inbox(restored)["<after-restore@outside.test>"]
        self.assertGreater(after.uid, max(f.uid for f in got.values()))


class SqliteBackupEndToEnd(BackupRestoreEndToEnd, unittest.TestCase):
    def database_url(self):
        return None  # the appliance's own SQLite file in its data directory


class PostgresBackupEndToEnd(BackupRestoreEndToEnd, unittest.TestCase):
    if PG_DUMP_SKIP_REASON:
        skip = PG_DUMP_SKIP_REASON

    def database_url(self):
        url, name = create_postgres_database(POSTGRES_URL)
        self.addCleanup(drop_postgres_database, name)
        return url
