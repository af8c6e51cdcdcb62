"""`atollon-mail mailbox forward`, run in-process on SQLite and on PostgreSQL."""

from __future__ import annotations

from twisted.trial import unittest

from atollon_mail.store import forwarding
from atollon_mail.store.pool import Store
from atollon_mail.store.records import ForwardingRecord
from tests.support import PostgresStoreMixin, SqliteStoreMixin
from tests.test_cli import ConfiguredCli


class ForwardCommandTests(ConfiguredCli):
    def setUp(self):
        super().setUp()
        self.ok("db", "migrate")
        self.ok("domain", "add", "acme.com")
        self.ok("user", "add", "joe", "--password-stdin", stdin=b"joe-password\n")
        self.ok("mailbox", "add", "joe@acme.com", "--owner", "joe")
        self.ok("mailbox", "add", "ann@acme.com", "--owner", "joe")

    def stored(self, address: str = "joe@acme.com") -> ForwardingRecord:
        store = Store.from_url(self.database_url, reactor=None)
        try:
            return store.run_sync(forwarding.get_forwarding, address)
        finally:
            store.stop()

    def test_show_without_changes(self):
        self.assertEqual(
            self.ok("mailbox", "forward", "Joe@ACME.com").lines,
            [
                "joe@acme.com: forwarding off, a copy stays in the mailbox",
                "forwards to: (no address)",
            ],
        )

    def test_adding_an_address_does_not_turn_forwarding_on(self):
        outcome = self.ok("mailbox", "forward", "joe@acme.com", "--add", "Bob@Remote.Example")
        self.assertEqual(
            outcome.lines,
            [
                "joe@acme.com: forwarding off, a copy stays in the mailbox",
                "forwards to:",
                "  Bob@remote.example",
                "nothing is forwarded until it is on: "
                "atollon-mail mailbox forward joe@acme.com --on",
            ],
        )
        self.assertFalse(self.stored().enabled)

    def test_several_changes_at_once(self):
        outcome = self.ok(
            "mailbox",
            "forward",
            "joe@acme.com",
            "--add",
            "bob@remote.example",
            "--add",
            "ann@acme.com",
            "--keep-copy",
            "no",
            "--on",
        )
        self.assertEqual(
            outcome.lines,
            [
                "joe@acme.com: forwarding on, no copy stays in the mailbox",
                "forwards to:",
                "  bob@remote.example",
                "  ann@acme.com",
            ],
        )
        self.assertEqual(
            self.stored(),
            ForwardingRecord("joe@acme.com", True, False, ("bob@remote.example", "ann@acme.com")),
        )
        outcome = self.ok(
            "mailbox",
            "forward",
            "joe@acme.com",
            "--remove",
            "BOB@remote.example",
            "--keep-copy",
            "YES",
        )
        self.assertEqual(
            outcome.lines,
            [
                "joe@acme.com: forwarding on, a copy stays in the mailbox",
                "forwards to:",
                "  ann@acme.com",
            ],
        )
        self.ok("mailbox", "forward", "joe@acme.com", "--off")
        self.assertEqual(
            self.stored(), ForwardingRecord("joe@acme.com", False, True, ("ann@acme.com",))
        )

    def test_on_without_an_address_says_mail_stays(self):
        outcome = self.ok("mailbox", "forward", "joe@acme.com", "--on")
        self.assertEqual(
            outcome.lines[-1],
            "mail stays in the mailbox until there is an address: "
            "atollon-mail mailbox forward joe@acme.com --add ADDRESS",
        )

    def test_refusals_change_nothing(self):
        self.ok("mailbox", "forward", "joe@acme.com", "--add", "ann@acme.com")
        for argv, message in (
            (("--add", "ANN@acme.com"), "joe@acme.com forwards to ann@acme.com already"),
            (("--add", "joe+x@acme.com"), "is joe@acme.com itself"),
            (("--add", "nobody@acme.com"), "nobody@acme.com is not an address here"),
            (("--add", "not an address"), "is not an address to forward to"),
            (("--remove", "bob@remote.example"), "does not forward to bob@remote.example"),
            # The first change is undone when a later one is refused.
            (("--add", "bob@remote.example", "--add", "ann@acme.com", "--on"), "already"),
        ):
            self.assertRefused(self.cli("mailbox", "forward", "joe@acme.com", *argv), message)
        self.assertRefused(self.cli("mailbox", "forward", "nobody@acme.com"), "no mailbox")
        self.assertEqual(
            self.stored(), ForwardingRecord("joe@acme.com", False, True, ("ann@acme.com",))
        )

    def test_bad_usage(self):
        self.assertUsageError(self.cli("mailbox", "forward", "joe@acme.com", "--on", "--off"))
        self.assertUsageError(
            self.cli("mailbox", "forward", "joe@acme.com", "--keep-copy", "maybe")
        )
        self.assertUsageError(self.cli("mailbox", "forward"))


class SqliteForwardCommandTests(SqliteStoreMixin, ForwardCommandTests, unittest.TestCase):
    pass


class PostgresForwardCommandTests(PostgresStoreMixin, ForwardCommandTests, unittest.TestCase):
    pass
