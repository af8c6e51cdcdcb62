"""`atollon-mail mailbox autorespond`, run in-process on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime
import os

from twisted.trial import unittest

from atollon_mail.commands.autorespond import autoresponder_fields
from atollon_mail.store import autorespond
from atollon_mail.store.pool import Store
from tests.support import PostgresStoreMixin, SqliteStoreMixin
from tests.test_cli import ConfiguredCli

T0 = datetime.datetime(2030, 7, 1, 12, 0, 0)


class AutorespondCommandTests(ConfiguredCli):
    def setUp(self):
        super().setUp()
        self.ok("db", "migrate")
        self.ok("domain", "add", "acme.com")
        self.ok("user", "add", "joe", "--password-stdin", stdin=b"joe-password\n")
        self.ok("mailbox", "add", "joe@acme.com", "--owner", "joe")

    def stored(self, address: str = "joe@acme.com"):
        store = Store.from_url(self.database_url, reactor=None)
        try:
            return store.run_sync(autorespond.get_autoresponder, address)
        finally:
            store.stop()

    def body_file(self, text: str) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "body.txt")
        with open(path, "w", encoding="utf-8") as body:
            body.write(text)
        return path

    def test_on_with_everything(self):
        path = self.body_file("Away until the 15th.\nUrgent: ann@acme.com\n")
        outcome = self.ok(
            "mailbox",
            "autorespond",
            "Joe@ACME.com",
            "--on",
            "--subject",
            "On holiday",
            "--body-file",
            path,
            "--from",
            "2030-07-01",
            "--until",
            "2030-07-15T08:30+02:00",
            "--interval-days",
            "3",
        )
        # 2030 is still to come.
        self.assertEqual(
            outcome.lines[0], "auto-respond for joe@acme.com: on, replying from its start"
        )
        self.assertEqual(
            outcome.lines[1:],
            [
                "subject:  On holiday",
                "from:     2030-07-01 00:00:00 UTC",
                "until:    2030-07-15 06:30:00 UTC",
                "interval: 3 days (per sender)",
                "body:     Away until the 15th.",
                "          Urgent: ann@acme.com",
            ],
        )
        record = self.stored()
        self.assertEqual(
            (record.enabled, record.subject, record.body, record.interval_days),
            (True, "On holiday", "Away until the 15th.\nUrgent: ann@acme.com\n", 3),
        )
        self.assertEqual(
            (record.starts_at, record.ends_at),
            (datetime.datetime(2030, 7, 1), datetime.datetime(2030, 7, 15, 6, 30)),
        )

    def test_defaults_then_off_keeps_the_settings(self):
        outcome = self.ok(
            "mailbox", "autorespond", "joe@acme.com", "--on", "--body-file", "-", stdin=b"Away.\n"
        )
        self.assertEqual(
            outcome.lines,
            [
                "auto-respond for joe@acme.com: on",
                "subject:  Out of office",
                "from:     (no start)",
                "until:    (no end)",
                "interval: 7 days (per sender)",
                "body:     Away.",
            ],
        )
        off = self.ok("mailbox", "autorespond", "joe@acme.com", "--off")
        self.assertEqual(off.lines[0], "auto-respond for joe@acme.com: off")
        self.assertEqual(off.lines[1:], outcome.lines[1:])
        record = self.stored()
        self.assertEqual((record.enabled, record.body), (False, "Away.\n"))
        # On again: the stored text is used.
        self.assertEqual(
            self.ok("mailbox", "autorespond", "joe@acme.com", "--on").lines[0],
            "auto-respond for joe@acme.com: on",
        )

    def test_none_removes_a_bound(self):
        path = self.body_file("Away.")
        self.ok(
            "mailbox",
            "autorespond",
            "joe@acme.com",
            "--on",
            "--body-file",
            path,
            "--from",
            "2030-07-01 09:00",
            "--until",
            "2030-07-02",
        )
        outcome = self.ok("mailbox", "autorespond", "joe@acme.com", "--on", "--until", "none")
        self.assertIn("until:    (no end)", outcome.lines)
        self.assertIn("from:     2030-07-01 09:00:00 UTC", outcome.lines)
        self.assertIsNone(self.stored().ends_at)

    def test_refusals(self):
        self.assertRefused(
            self.cli("mailbox", "autorespond", "joe@acme.com", "--on"),
            "needs the text of its reply",
        )
        self.assertRefused(
            self.cli("mailbox", "autorespond", "nobody@acme.com", "--off"), "no mailbox"
        )
        missing = os.path.join(self.mktemp(), "missing.txt")
        self.assertRefused(
            self.cli("mailbox", "autorespond", "joe@acme.com", "--on", "--body-file", missing),
            "cannot read the reply's text from",
        )
        path = self.body_file("Away.")
        self.assertRefused(
            self.cli(
                "mailbox",
                "autorespond",
                "joe@acme.com",
                "--on",
                "--body-file",
                path,
                "--from",
                "2030-07-02",
                "--until",
                "2030-07-01",
            ),
            "must come after the start",
        )
        self.assertRefused(
            self.cli(
                "mailbox",
                "autorespond",
                "joe@acme.com",
                "--on",
                "--body-file",
                path,
                "--subject",
                "",
            ),
            "cannot be empty",
        )
        latin1 = self.body_file("")
        with open(latin1, "wb") as body:
            body.write(b"Abwesend bis \xfcbermorgen")
        self.assertRefused(
            self.cli("mailbox", "autorespond", "joe@acme.com", "--on", "--body-file", latin1),
            "cannot read the reply's text from",
        )
        self.assertIsNone(self.stored())

    def test_usage_errors(self):
        for argv in (
            ("joe@acme.com",),
            ("joe@acme.com", "--on", "--off"),
            ("joe@acme.com", "--on", "--from", "next tuesday"),
            ("joe@acme.com", "--on", "--until", "2030-13-01"),
            ("joe@acme.com", "--on", "--interval-days", "0"),
            ("joe@acme.com", "--on", "--interval-days", "two"),
            ("--on",),
        ):
            self.assertUsageError(self.cli("mailbox", "autorespond", *argv))
        self.assertIsNone(self.stored())

    def test_help_says_times_are_utc(self):
        outcome = self.cli("mailbox", "autorespond", "--help")
        self.assertEqual(outcome.code, 0)
        self.assertIn("taken as UTC", " ".join(outcome.text.split()))

    def test_fields_for_mailbox_show(self):
        self.assertEqual(autoresponder_fields(None), [("auto-respond", "off (never set up)")])
        path = self.body_file("Away.")
        self.ok("mailbox", "autorespond", "joe@acme.com", "--on", "--body-file", path)
        self.ok("mailbox", "autorespond", "joe@acme.com", "--on", "--until", "2030-07-02")
        record = self.stored()
        self.assertEqual(autoresponder_fields(record, T0)[0], ("auto-respond", "on"))
        later = T0 + datetime.timedelta(days=2)
        self.assertIn("its end has passed", autoresponder_fields(record, later)[0][1])


class SqliteAutorespondCommandTests(SqliteStoreMixin, AutorespondCommandTests, unittest.TestCase):
    pass


class PostgresAutorespondCommandTests(
    PostgresStoreMixin, AutorespondCommandTests, unittest.TestCase
):
    pass
