"""The `atollon-mail` admin command, run in-process through `main(argv)`.

The commands that touch the database are written once in `CliContractMixin` and run on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

import base64
import datetime
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
import tempfile

import attrs
from twisted.trial import unittest

from atollon_mail import cli, passwords
from atollon_mail.commands import common, output
from atollon_mail.config import CONFIG_ENVIRONMENT_VARIABLE
from atollon_mail.store import (
    accounts,
    aliases,
    contexts,
    domains,
    filing,
    mailboxes,
    migrations,
    queue,
)
from atollon_mail.store.models import database_proxy, utc_now
from atollon_mail.store.pool import Store
from atollon_mail.store.records import (
    DeliveryResult,
    IncomingMessage,
    Origin,
    OutgoingMessage,
    Recipient,
)
from tests.support import PostgresStoreMixin, SqliteStoreMixin

T0 = datetime.datetime(2030, 1, 1, 12, 0, 0)
SUBMISSION = Origin("submission")
MX = "mx.remote.example [192.0.2.1]:25"
GREYLISTED = "451 4.7.1 Greylisted, please try again in five minutes"

NOT_MIGRATED = (
    "atollon-mail: the database at {url} is not migrated (version 0 of {latest}); "
    "run: atollon-mail db migrate\n"
)


@attrs.frozen
class Outcome:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode("utf-8")

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()


class CliHarness:
    """Runs `main` with captured streams and checks each run closes what it opened."""

    database_url: str

    def mktemp(self) -> str:
        # trial's mktemp writes under the working directory, which is the checkout under
        # pytest; these files go to the system's temporary directory and are removed.
        base = getattr(self, "_temporary_base", None)
        if base is None:
            base = self._temporary_base = tempfile.mkdtemp(prefix="atollon-mail-cli-")
            self.addCleanup(shutil.rmtree, base, True)
        self._temporary_count = getattr(self, "_temporary_count", 0) + 1
        return os.path.join(base, str(self._temporary_count))

    def write_config(self, database_url: str, name: str = "atollon-mail.ini") -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as config_file:
            config_file.write(
                f"[appliance]\nhostname = mx.test.example\n\n[database]\nurl = {database_url}\n"
            )
        return path

    def set_environment(self, name: str, value: str | None) -> None:
        old = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
        self.addCleanup(
            lambda: os.environ.pop(name, None) if old is None else os.environ.update({name: old})
        )

    def main(self, *argv: str, stdin: bytes = b"") -> Outcome:
        out, err = io.BytesIO(), io.BytesIO()
        streams = {
            "stdin": io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"),
            "stdout": io.TextIOWrapper(out, encoding="utf-8", write_through=True),
            "stderr": io.TextIOWrapper(err, encoding="utf-8", write_through=True),
        }
        saved = {name: getattr(sys, name) for name in streams}
        opened: list[Store] = []

        class RecordingStore(Store):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                opened.append(self)

        original_store = common.Store
        common.Store = RecordingStore
        for name, stream in streams.items():
            setattr(sys, name, stream)
        try:
            code = cli.main(list(argv))
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            common.Store = original_store
            for name, stream in saved.items():
                setattr(sys, name, stream)
        for store in opened:
            database = store.database
            self.assertTrue(database.is_closed(), f"{argv} left the database open")
            self.assertEqual(getattr(database, "_connections", []), [], f"{argv}: idle conns")
            self.assertEqual(getattr(database, "_in_use", {}), {}, f"{argv}: conns in use")
        return Outcome(code, out.getvalue(), err.getvalue().decode("utf-8"))

    def assertRefused(self, outcome: Outcome, message: str) -> None:
        """Exit 1, nothing on stdout, and exactly one line on stderr containing message."""
        self.assertEqual((outcome.code, outcome.out), (1, b""), outcome)
        self.assertTrue(outcome.err.startswith("atollon-mail: "), outcome.err)
        self.assertEqual(outcome.err.count("\n"), 1, outcome.err)
        self.assertIn(message, outcome.err)

    def assertUsageError(self, outcome: Outcome) -> None:
        self.assertEqual((outcome.code, outcome.out), (2, b""), outcome)
        self.assertIn("usage: atollon-mail", outcome.err)


class ConfiguredCli(CliHarness):
    """A config file naming a fresh database (SQLite or PostgreSQL by the mixin), and
    commands run against it. Command tests of other modules build on this."""

    def setUp(self):
        self.set_environment(CONFIG_ENVIRONMENT_VARIABLE, None)
        self.database_url = self.make_database_url()
        self.config_path = self.write_config(self.database_url)

    def cli(self, *argv: str, stdin: bytes = b"") -> Outcome:
        return self.main("--config", self.config_path, *argv, stdin=stdin)

    def ok(self, *argv: str, stdin: bytes = b"") -> Outcome:
        outcome = self.cli(*argv, stdin=stdin)
        self.assertEqual((outcome.code, outcome.err), (0, ""), outcome)
        return outcome

    def store_op(self, operation, *args, **kwargs):
        """Run one store operation on the test database in a store of its own."""
        store = Store.from_url(self.database_url, reactor=None)
        try:
            return store.run_sync(operation, *args, **kwargs)
        finally:
            store.stop()


class CliContractMixin(ConfiguredCli):
    def migrate(self) -> None:
        self.ok("db", "migrate")

    def setup_mailbox(self) -> None:
        """acme.com with user joe and his mailbox joe@acme.com (and the context ids 1, 2)."""
        self.migrate()
        self.ok("domain", "add", "acme.com")
        self.ok("user", "add", "joe", "--password-stdin", stdin=b"joe-password\n")
        self.ok("user", "add", "ann", "--password-stdin", stdin=b"ann-password\n")
        self.ok("mailbox", "add", "joe@acme.com", "--owner", "joe")

    def deliver(self, address: str, raw: bytes, subject: str, sender: str) -> int:
        def operation():
            local, domain = address.split("@")
            recipient = filing.resolve_recipient(local, domain)
            assert isinstance(recipient, Recipient), recipient
            message = IncomingMessage(
                envelope_sender=sender,
                recipients=(recipient,),
                raw=raw,
                subject=subject,
                from_header=sender,
            )
            [stored] = filing.store_messages([message])
            assert not isinstance(stored, Exception), stored
            return stored.id

        return self.store_op(operation)

    # -- db migrate and the schema check ------------------------------------------------

    def test_db_migrate(self):
        first = self.ok("db", "migrate")
        self.assertEqual(
            first.lines,
            [f"applied migration {m.number}: {m.name}" for m in migrations.MIGRATIONS]
            + [f"the schema is now at version {migrations.LATEST_VERSION}"],
        )
        self.assertEqual(
            self.store_op(migrations.applied_versions, database_proxy),
            [m.number for m in migrations.MIGRATIONS],
        )
        again = self.ok("db", "migrate")
        self.assertEqual(
            again.lines, [f"the schema is current at version {migrations.LATEST_VERSION}"]
        )

    def test_unmigrated_database_refused(self):
        expected = NOT_MIGRATED.format(url=self.database_url, latest=migrations.LATEST_VERSION)
        for argv in (
            ("domain", "list"),
            ("domain", "add", "acme.com"),
            ("user", "add", "joe"),
            ("context", "list"),
            ("mailbox", "add", "joe@acme.com", "--owner", "joe"),
            ("mailbox", "show", "joe@acme.com"),
            ("alias", "list"),
            ("messages", "list", "joe@acme.com"),
            ("messages", "show", "1"),
        ):
            outcome = self.cli(*argv, stdin=b"password\n")
            self.assertEqual((outcome.code, outcome.out, outcome.err), (1, b"", expected), argv)
        # The check only reads: not even the version table was created.
        tables = self.store_op(lambda: database_proxy.get_tables())
        self.assertEqual(tables, [])

    # -- domains ------------------------------------------------------------------------

    def test_domain_add_and_list(self):
        self.migrate()
        self.assertEqual(
            self.ok("domain", "add", "Acme.COM.").lines, ["added domain acme.com (primary)"]
        )
        # The vendor's own example: a hosted domain not below the company's domain.
        added = self.ok(
            "domain",
            "add",
            "company.atollon.com",
            "--mode",
            "secondary",
            "--primary-domain",
            "company.com",
        ).lines
        self.assertEqual(
            added[0],
            "added domain company.atollon.com (secondary, mailboxes send as name@company.com)",
        )
        self.assertEqual(
            self.ok("domain", "list").lines,
            [
                "DOMAIN               MODE       ACTIVE",
                "acme.com             primary    yes",
                "company.atollon.com  secondary  yes",
                "company.com          primary    no",
            ],
        )

    def test_domain_list_empty_has_header(self):
        self.migrate()
        self.assertEqual(self.ok("domain", "list").lines, ["DOMAIN  MODE  ACTIVE"])

    def test_domain_refusals(self):
        self.migrate()
        self.ok("domain", "add", "acme.com")
        self.assertRefused(self.cli("domain", "add", "ACME.com"), "domain acme.com exists already")
        self.assertRefused(self.cli("domain", "add", "not a domain"), "is not a domain name")
        self.assertUsageError(self.cli("domain", "add", "other.com", "--mode", "tertiary"))
        self.assertRefused(
            self.cli(
                "domain",
                "add",
                "crm.acme.com",
                "--mode",
                "secondary",
                "--primary-domain",
                "acme.com",
            ),
            "acme.com is hosted here as a primary domain already, so it needs no secondary "
            "domain: add its mailboxes to acme.com itself",
        )
        self.assertUsageError(self.cli("domain", "add"))
        self.assertEqual([d.name for d in self.store_op(domains.list_domains)], ["acme.com"])

    # -- users --------------------------------------------------------------------------

    def test_user_add_generates_a_password_shown_once(self):
        self.migrate()
        outcome = self.ok("user", "add", "Joe", "--name", "Joe Smith", "--admin")
        added, shown = outcome.lines
        self.assertEqual(added, "added user joe (name Joe Smith, admin)")
        prefix = "password for joe (shown only this once): "
        self.assertTrue(shown.startswith(prefix), shown)
        password = shown[len(prefix) :]
        self.assertGreaterEqual(len(password), 20)
        password_hash = self.store_op(accounts.user_password_hash, "joe")
        self.assertNotIn(password, password_hash)
        self.assertTrue(passwords.verify_password(password_hash, password))
        self.assertEqual(
            self.ok("user", "list").lines, ["LOGIN  NAME       ADMIN", "joe    Joe Smith  yes"]
        )

    def test_user_add_password_stdin(self):
        self.migrate()
        outcome = self.ok(
            "user", "add", "ann", "--password-stdin", stdin=b"  s\xc3\xa9cret words \r\nmore\n"
        )
        # Confirmation only: a password the operator chose is never echoed.
        self.assertEqual(outcome.lines, ["added user ann (name ann)"])
        password_hash = self.store_op(accounts.user_password_hash, "ann")
        self.assertTrue(passwords.verify_password(password_hash, "  s\u00e9cret words "))
        self.assertFalse(passwords.verify_password(password_hash, "s\u00e9cret words"))

    def test_user_add_password_stdin_refusals(self):
        self.migrate()
        for stdin, message in (
            (b"", "no password on standard input"),
            (b"\n", "no password on standard input"),
            (b"\xff\xfe bad\n", "cannot read the password from standard input"),
        ):
            self.assertRefused(
                self.cli("user", "add", "ann", "--password-stdin", stdin=stdin), message
            )
        self.assertEqual(self.store_op(accounts.list_users), [])

    def test_user_refusals(self):
        self.migrate()
        self.ok("user", "add", "joe")
        self.assertRefused(self.cli("user", "add", "JOE"), "user joe exists already")
        self.assertRefused(self.cli("user", "add", "_x"), "is not a valid login")
        self.assertRefused(self.cli("user", "add", "jo e"), "is not a valid login")
        self.assertUsageError(self.cli("user", "add"))
        self.assertEqual([u.login for u in self.store_op(accounts.list_users)], ["joe"])

    # -- contexts -----------------------------------------------------------------------

    def test_context_add_and_list(self):
        self.migrate()
        self.ok("user", "add", "joe")
        self.assertEqual(
            self.ok("context", "add", "folder", "Sales", "--owner", "joe").lines,
            ["added folder Sales (id 2, owner joe)"],
        )
        self.assertEqual(
            self.ok("context", "add", "project", "Launch 2025").lines,
            ["added project Launch 2025 (id 3, no owner)"],
        )
        self.assertEqual(
            self.ok("context", "list").lines,
            [
                "ID  KIND     NAME         OWNER",
                " 1  todo     To Do (joe)  joe",
                " 2  folder   Sales        joe",
                " 3  project  Launch 2025  -",
            ],
        )

    def test_context_refusals(self):
        self.migrate()
        self.assertRefused(
            self.cli("context", "add", "folder", "Sales", "--owner", "nobody"), "no user nobody"
        )
        self.assertRefused(self.cli("context", "add", "folder", "  "), "needs a name")
        self.assertUsageError(self.cli("context", "add", "todo", "Mine"))
        self.assertUsageError(self.cli("context", "add", "folder"))
        self.assertEqual(self.store_op(contexts.list_contexts), [])

    # -- mailboxes ----------------------------------------------------------------------

    def test_mailbox_add(self):
        self.setup_mailbox()
        self.assertEqual(self.store_op(mailboxes.get_mailbox, "joe@acme.com").owner_login, "joe")
        self.ok("context", "add", "folder", "Sales")
        outcome = self.ok(
            "mailbox",
            "add",
            "Sales@Acme.com",
            "--owner",
            "ann",
            "--identity",
            "team@acme.com",
            "--inactive",
            "--store-to",
            "3",
        )
        self.assertEqual(
            outcome.lines,
            [
                "added mailbox sales@acme.com (owner ann, identity team@acme.com, "
                "stores to folder #3 Sales, inactive)"
            ],
        )
        record = self.store_op(mailboxes.get_mailbox, "sales@acme.com")
        self.assertEqual(
            (record.identity, record.active, record.store_to.id, record.is_default),
            ("team@acme.com", False, 3, True),
        )

    def test_mailbox_add_confirmation(self):
        self.migrate()
        self.ok("domain", "add", "acme.com")
        self.ok("user", "add", "joe")
        self.assertEqual(
            self.ok("mailbox", "add", "joe@acme.com", "--owner", "joe").lines,
            ["added mailbox joe@acme.com (owner joe, identity joe@acme.com)"],
        )

    def test_mailbox_list_and_show(self):
        self.setup_mailbox()
        self.ok("mailbox", "add", "info@acme.com", "--owner", "joe", "--inactive")
        self.ok("alias", "add", "sales@acme.com", "--mailbox", "joe@acme.com")
        self.ok("alias", "add", "boss@acme.com", "--mailbox", "joe@acme.com")
        self.assertEqual(
            self.ok("mailbox", "list").lines,
            [
                "ADDRESS        OWNER  IDENTITY       STORE TO             ACTIVE  DEFAULT"
                "  SPAM  ALIASES",
                "info@acme.com  joe    info@acme.com  todo #1 To Do (joe)  no      no       junk"
                "  -",
                "joe@acme.com   joe    joe@acme.com   todo #1 To Do (joe)  yes     yes      junk"
                "  boss@acme.com, sales@acme.com",
            ],
        )
        self.assertEqual(
            self.ok("mailbox", "show", "JOE@acme.com").lines,
            [
                "address:      joe@acme.com",
                "owner:        joe",
                "identity:     joe@acme.com",
                "store to:     todo #1 To Do (joe)",
                "active:       yes",
                "default box:  yes",
                "spam:         junk (junk mail goes to its Junk folder)",
                "aliases:      boss@acme.com, sales@acme.com",
                "forwarding:   off",
                "auto-respond: off (never set up)",
                "signature:    (none)",
            ],
        )
        self.assertIn("aliases:      (none)", self.ok("mailbox", "show", "info@acme.com").lines)

    def test_mailbox_refusals(self):
        self.setup_mailbox()
        before = self.store_op(mailboxes.list_mailboxes)
        for argv, message in (
            (("bob@acme.com", "--owner", "nobody"), "no user nobody"),
            (("not-an-address", "--owner", "joe"), "is not an address"),
            (("bob@acme.com@", "--owner", "joe"), "is not an address"),
            (("bo b@acme.com", "--owner", "joe"), "is not a valid mailbox name"),
            (("bob@other.com", "--owner", "joe"), "no domain other.com"),
            (("JOE@acme.com", "--owner", "ann"), "joe@acme.com is a mailbox already"),
            (("bob@acme.com", "--owner", "joe", "--store-to", "99"), "no folder or project"),
            (("bob@acme.com", "--owner", "joe", "--identity", "nobody"), "is not an address"),
        ):
            self.assertRefused(self.cli("mailbox", "add", *argv), message)
        self.assertRefused(self.cli("mailbox", "show", "bob@acme.com"), "no mailbox bob@acme.com")
        self.assertRefused(self.cli("mailbox", "show", "bob"), "is not an address")
        self.assertUsageError(self.cli("mailbox", "add", "bob@acme.com"))
        self.assertRefused(
            self.cli("mailbox", "add", "bob@acme.com", "--owner", "joe", "--store-to", "x"),
            'no folder or project matches "x"',
        )
        self.assertUsageError(self.cli("mailbox", "show"))
        self.assertEqual(self.store_op(mailboxes.list_mailboxes), before)

    # -- aliases ------------------------------------------------------------------------

    def test_alias_add_and_list(self):
        self.setup_mailbox()
        self.assertEqual(
            self.ok("alias", "add", "Sales@acme.com", "--mailbox", "joe@acme.com").lines,
            ["added alias sales@acme.com -> joe@acme.com"],
        )
        self.assertEqual(
            self.ok("alias", "list").lines,
            ["ALIAS           MAILBOX", "sales@acme.com  joe@acme.com"],
        )
        recipient = self.store_op(filing.resolve_recipient, "sales", "acme.com")
        self.assertEqual(recipient.mailbox_address, "joe@acme.com")

    def test_alias_refusals(self):
        self.setup_mailbox()
        self.ok("domain", "add", "other.com")
        self.ok("alias", "add", "sales@acme.com", "--mailbox", "joe@acme.com")
        for argv, message in (
            (("info@other.com", "--mailbox", "joe@acme.com"), "use info@acme.com"),
            (("sales@acme.com", "--mailbox", "joe@acme.com"), "is an alias already"),
            (("joe@acme.com", "--mailbox", "joe@acme.com"), "is a mailbox already"),
            (("info@acme.com", "--mailbox", "nobody@acme.com"), "no mailbox nobody@acme.com"),
            (("info@", "--mailbox", "joe@acme.com"), "is not an address"),
        ):
            self.assertRefused(self.cli("alias", "add", *argv), message)
        self.assertUsageError(self.cli("alias", "add", "info@acme.com"))
        self.assertEqual(
            [a.address for a in self.store_op(aliases.list_aliases)], ["sales@acme.com"]
        )

    # -- messages -----------------------------------------------------------------------

    def test_messages_list(self):
        self.setup_mailbox()
        ids = [
            self.deliver("joe@acme.com", b"x" * size, f"Subject {n}", f"s{n}@example.org")
            for n, size in enumerate((10, 2000, 30))
        ]
        lines = self.ok("messages", "list", "joe@acme.com").lines
        self.assertEqual(
            lines[0].split(),
            ["UID", "ID", "RECEIVED", "(UTC)", "SIZE", "FROM", "TYPE", "SUBJECT"],
        )
        rows = [line.split() for line in lines[1:]]
        self.assertEqual(
            [(row[0], row[1], row[4], row[5], row[6], " ".join(row[7:])) for row in rows],
            [
                # The size of the bytes filed: Return-Path: <sN@example.org> and CRLF more.
                ("3", str(ids[2]), "61", "s2@example.org", "email-in", "Subject 2"),
                ("2", str(ids[1]), "2031", "s1@example.org", "email-in", "Subject 1"),
                ("1", str(ids[0]), "41", "s0@example.org", "email-in", "Subject 0"),
            ],
        )
        self.assertRegex(rows[0][2] + " " + rows[0][3], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
        limited = self.ok("messages", "list", "joe@acme.com", "--limit", "1", "--offset", "1")
        self.assertEqual([line.split()[0] for line in limited.lines], ["UID", "2"])
        empty = self.ok("messages", "list", "joe@acme.com", "--offset", "5")
        self.assertEqual(len(empty.lines), 1)

    def test_messages_list_shows_header_text_harmlessly(self):
        self.setup_mailbox()
        self.deliver("joe@acme.com", b"x", "hi\x1b[2J\nthere\u202egnp.exe", "a@example.org")
        row = self.ok("messages", "list", "joe@acme.com").lines[1]
        self.assertNotIn("\x1b", row)
        self.assertNotIn("\u202e", row)
        self.assertIn("hi\ufffd[2J there\ufffdgnp.exe", row)

    def test_control_characters_never_reach_the_terminal(self):
        self.setup_mailbox()
        outcome = self.cli("mailbox", "add", "bob@acme.com", "--owner", "jo\x1b[2Je")
        self.assertRefused(outcome, "no user jo\ufffd[2Je")
        self.assertNotIn("\x1b", outcome.err)

    def test_messages_refusals(self):
        self.setup_mailbox()
        self.assertRefused(
            self.cli("messages", "list", "nobody@acme.com"), "no mailbox nobody@acme.com"
        )
        self.assertRefused(self.cli("messages", "show", "42"), "no message with id 42")
        self.assertUsageError(self.cli("messages", "list", "joe@acme.com", "--limit", "0"))
        self.assertUsageError(self.cli("messages", "list", "joe@acme.com", "--offset", "-1"))
        self.assertUsageError(self.cli("messages", "show", "abc"))
        self.assertUsageError(self.cli("messages", "list"))

    def test_messages_show_writes_the_exact_bytes(self):
        self.setup_mailbox()
        raw = (
            b"Received: from x\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n"
            b"body \xff\xfe not UTF-8\r\n.\r\nlast line without CRLF"
        )
        message_id = self.deliver("joe@acme.com", raw, "cafe", "a@example.org")
        outcome = self.ok("messages", "show", str(message_id))
        self.assertEqual(outcome.out, b"Return-Path: <a@example.org>\r\n" + raw)

    # -- the outbound queue ---------------------------------------------------------------

    def send(self, *remote: str, subject: str, now=T0, sent: bool = False, **headers) -> int:
        """Queue a message from joe for remote addresses; its queue message id."""
        joe = self.store_op(mailboxes.get_mailbox, "joe@acme.com")
        message = OutgoingMessage(
            envelope_sender="joe@acme.com",
            raw=f"Subject: {subject}\r\n\r\nbody\r\n".encode(),
            remote_recipients=remote,
            sent_mailbox_id=joe.id if sent else None,
            subject=subject,
            **headers,
        )
        [submitted] = self.store_op(queue.submit_messages, [(message, SUBMISSION)], now)
        return submitted.queue_message_id

    def attempt(self, outcomes: dict[str, tuple], at) -> None:
        """Claim what is due at `at` and record {address: (outcome, reply, next)} for it."""

        def operation():
            claimed = queue.claim_due_deliveries(at, 100)
            results = [
                DeliveryResult(d.recipient_id, outcome, reply, MX, at, next_attempt)
                for d in claimed
                if d.address in outcomes
                for outcome, reply, next_attempt in [outcomes[d.address]]
            ]
            queue.record_delivery_results(results)

        self.store_op(operation)

    def setup_queue(self) -> None:
        """Message 1 (joe's Sent copy kept): ann deferred, bob delivered; message 2 queued."""
        self.setup_mailbox()
        self.send(
            "ann@remote.example",
            "bob@remote.example",
            subject="Quarterly report",
            sent=True,
            message_id="<q1@acme.com>",
        )
        self.send("carol@far.example", subject="Hello", now=T0 + datetime.timedelta(minutes=1))
        self.attempt(
            {
                "ann@remote.example": ("deferred", GREYLISTED, T0 + datetime.timedelta(minutes=10)),
                "bob@remote.example": ("delivered", "250 2.0.0 Ok: queued as ABC", None),
            },
            at=T0,
        )

    def test_queue_list(self):
        self.setup_queue()
        self.assertEqual(
            self.ok("queue", "list").lines,
            [
                "ID  RECIPIENT           STATE      ATTEMPTS  NEXT ATTEMPT (UTC)   LAST REPLY"
                "                                SUBJECT",
                " 2  carol@far.example   queued            0  2030-01-01 12:01:00  -"
                "                                         Hello",
                " 1  ann@remote.example  deferred          1  2030-01-01 12:10:00  451 4.7.1"
                " Greylisted, please try agai...  Quarterly report",
                " 1  bob@remote.example  delivered         1  -                    250 2.0.0"
                " Ok: queued as ABC               Quarterly report",
            ],
        )
        deferred = self.ok("queue", "list", "--state", "deferred").lines
        self.assertEqual(
            [line.split()[:3] for line in deferred[1:]], [["1", "ann@remote.example", "deferred"]]
        )
        paged = self.ok("queue", "list", "--limit", "1", "--offset", "1").lines
        self.assertEqual([line.split()[1] for line in paged[1:]], ["ann@remote.example"])
        self.assertEqual(len(self.ok("queue", "list", "--state", "bounced").lines), 1)

    def test_queue_show(self):
        self.setup_queue()
        self.assertEqual(
            self.ok("queue", "show", "1").lines,
            [
                "queued message 1 (message 1)",
                "sender:     joe@acme.com",
                "subject:    Quarterly report",
                "message-id: <q1@acme.com>",
                "queued:     2030-01-01 12:00:00 UTC",
                "",
                "ann@remote.example: deferred, 1 attempt, next attempt 2030-01-01 12:10:00 UTC",
                f"  2030-01-01 12:00:00  deferred  {MX}  {GREYLISTED}"
                "  next attempt 2030-01-01 12:10:00",
                "",
                "bob@remote.example: delivered, 1 attempt",
                f"  2030-01-01 12:00:00  delivered  {MX}  250 2.0.0 Ok: queued as ABC",
            ],
        )
        self.assertEqual(
            self.ok("queue", "show", "2").lines[-3:],
            [
                "",
                "carol@far.example: queued, 0 attempts, next attempt 2030-01-01 12:01:00 UTC",
                "  (no attempt yet)",
            ],
        )

    def test_queue_list_uncertain_after_a_kill(self):
        self.setup_mailbox()
        self.send("ann@remote.example", "bob@remote.example", "cid@remote.example", subject="Kill")

        def killed_mid_attempt():
            # ann's reply was recorded; bob's dot went out, no reply; cid's never did.
            ann, bob, _cid = queue.claim_due_deliveries(T0, 100)
            queue.mark_dots_sent([ann.recipient_id, bob.recipient_id], T0)
            queue.record_delivery_results(
                [DeliveryResult(ann.recipient_id, "delivered", "250 ok", MX, T0)]
            )

        self.store_op(killed_mid_attempt)
        later = T0 + datetime.timedelta(minutes=1)
        self.store_op(queue.requeue_in_flight, later)
        listed = self.ok("queue", "list", "--uncertain").lines
        self.assertEqual(
            [line.split()[:4] for line in listed[1:]],
            [["1", "bob@remote.example", "queued,", "uncertain"]],
        )
        everything = self.ok("queue", "list").lines
        self.assertEqual(
            [line.split()[2] for line in everything[1:]], ["delivered", "queued,", "queued"]
        )
        shown = self.ok("queue", "show", "1").lines
        bob = shown.index(
            "bob@remote.example: queued, 1 attempt, next attempt 2030-01-01 12:01:00 UTC, "
            "uncertain: may have got two copies"
        )
        self.assertIn(
            "12:01:00  uncertain  -  the appliance stopped after the final dot", shown[bob + 1]
        )
        self.assertEqual(
            shown[bob + 3 :],
            [
                "cid@remote.example: queued, 0 attempts, next attempt 2030-01-01 12:01:00 UTC",
                "  (no attempt yet)",
            ],
        )

    def test_queue_show_a_bounce_and_hostile_replies(self):
        self.setup_mailbox()

        def bounce():
            message = OutgoingMessage(
                envelope_sender="",
                raw=b"x",
                remote_recipients=("joe@remote.example",),
                is_bounce=True,
            )
            return queue.submit_messages([(message, Origin("bounce"))], T0)[0].queue_message_id

        queue_id = self.store_op(bounce)
        self.attempt({"joe@remote.example": ("bounced", "550 \x1b[2Jno\u202eway", None)}, at=T0)
        outcome = self.ok("queue", "show", str(queue_id))
        self.assertIn("sender:     <> (a bounce)", outcome.lines)
        self.assertIn("subject:    (none)", outcome.lines)
        self.assertNotIn("\x1b", outcome.text)
        self.assertNotIn("\u202e", outcome.text)
        self.assertIn("550 \ufffd[2Jno\ufffdway", outcome.lines[-1])

    def test_queue_retry(self):
        self.setup_queue()
        self.assertEqual(
            self.ok("queue", "retry", "1").lines,
            ["queued message 1: 1 recipient due now (tried at the server's next queue run)"],
        )
        listed = self.ok("queue", "list", "--state", "queued").lines
        self.assertEqual(
            [line.split()[1] for line in listed[1:]], ["carol@far.example", "ann@remote.example"]
        )
        self.attempt({"ann@remote.example": ("delivered", "250 ok", None)}, at=utc_now())
        self.assertEqual(
            self.ok("queue", "retry", "1").lines,
            ["queued message 1: nothing to retry (no recipient is waiting)"],
        )

    def test_queue_delete(self):
        self.setup_queue()
        self.store_op(queue.claim_due_deliveries, T0 + datetime.timedelta(minutes=1), 10)
        self.assertRefused(self.cli("queue", "delete", "2"), "is being delivered right now")
        self.store_op(
            queue.record_delivery_results,
            [
                DeliveryResult(
                    entry.recipient_id, "bounced", "550 no", MX, T0 + datetime.timedelta(minutes=2)
                )
                for entry in self.store_op(queue.queue_list, "in-flight")
            ],
        )
        self.assertEqual(
            self.ok("queue", "delete", "2").lines, ["deleted queued message 2 (1 recipient)"]
        )
        self.assertRefused(self.cli("messages", "show", "2"), "no message with id 2")
        self.assertEqual(
            self.ok("queue", "delete", "1").lines, ["deleted queued message 1 (2 recipients)"]
        )
        self.assertEqual(len(self.ok("queue", "list").lines), 1)
        # Joe's Sent copy stays.
        self.assertEqual(
            self.ok("messages", "show", "1").out, b"Subject: Quarterly report\r\n\r\nbody\r\n"
        )

    def test_queue_refusals(self):
        self.setup_queue()
        for action in ("show", "retry", "delete"):
            self.assertRefused(self.cli("queue", action, "42"), "no queued message with id 42")
            self.assertUsageError(self.cli("queue", action, "abc"))
            self.assertUsageError(self.cli("queue", action, "0"))
            self.assertUsageError(self.cli("queue", action))
        self.assertUsageError(self.cli("queue", "list", "--state", "stuck"))
        self.assertUsageError(self.cli("queue", "list", "--limit", "0"))

    # -- DKIM keys ----------------------------------------------------------------------

    def test_dkim_generate_list_and_show(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        from atollon_mail.delivery import dkim

        self.setup_mailbox()
        first = self.ok("dkim", "generate", "acme.com", "--algorithm", "ed25519").lines
        [key] = self.store_op(domains.dkim_keys, "acme.com")
        self.assertEqual((key.selector, key.algorithm), (dkim.DEFAULT_SELECTOR, "ed25519"))
        record = dkim.zone_record("atollon", "acme.com", "ed25519", key.public_key)
        self.assertEqual(
            first,
            [
                "added DKIM key atollon for acme.com (ed25519)",
                "publish this TXT record in the DNS of acme.com:",
                record,
                "mail from acme.com is signed with it from now on; "
                "show the record again with: atollon-mail dkim show acme.com",
            ],
        )
        self.assertTrue(record.startswith('atollon._domainkey.acme.com. 3600 IN TXT ( "v=DKIM1;'))
        # The stored private key is the one the published record verifies.
        seed = base64.b64decode(key.private_key)
        public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
        raw_public = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.assertEqual(base64.b64encode(raw_public).decode(), key.public_key)

        second = self.ok("dkim", "generate", "ACME.com", "--selector", "Mail2030").lines
        self.assertEqual(second[0], "added DKIM key mail2030 for acme.com (rsa)")
        rsa_key = self.store_op(domains.dkim_keys, "acme.com")[0]
        private = serialization.load_pem_private_key(rsa_key.private_key.encode(), None)
        spki = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.assertEqual(base64.b64encode(spki).decode(), rsa_key.public_key)
        self.assertIn(f'"p={rsa_key.public_key[:100]}', second[2])

        self.ok("domain", "add", "beta.example")
        self.ok("dkim", "generate", "beta.example", "--algorithm", "ed25519")
        self.assertEqual(
            self.ok("dkim", "list").lines,
            [
                "DOMAIN        SELECTOR  ALGORITHM  STATE",
                "acme.com      mail2030  rsa        active",
                "acme.com      atollon   ed25519    active",
                "beta.example  atollon   ed25519    active",
            ],
        )
        self.assertEqual(
            self.ok("dkim", "show", "acme.com").lines,
            [
                dkim.zone_record("mail2030", "acme.com", "rsa", rsa_key.public_key),
                record,
            ],
        )

    def test_dkim_refusals(self):
        self.setup_mailbox()
        self.ok("dkim", "generate", "acme.com", "--algorithm", "ed25519")
        for argv, message in (
            (
                ("generate", "nowhere.example", "--algorithm", "ed25519"),
                "no domain nowhere.example",
            ),
            (("generate", "acme.com", "--algorithm", "ed25519"), "with selector atollon already"),
            (
                ("generate", "acme.com", "--selector", "a.b", "--algorithm", "ed25519"),
                "is not a DKIM selector",
            ),
            (("generate", "not a domain"), "is not a domain name"),
            (("show", "nowhere.example"), "no domain nowhere.example"),
        ):
            self.assertRefused(self.cli("dkim", *argv), message)
        self.ok("domain", "add", "beta.example")
        self.assertRefused(
            self.cli("dkim", "show", "beta.example"),
            "beta.example has no DKIM key; make one with: atollon-mail dkim generate beta.example",
        )
        self.assertUsageError(self.cli("dkim", "generate", "acme.com", "--algorithm", "dsa"))
        self.assertUsageError(self.cli("dkim", "generate"))
        self.assertUsageError(self.cli("dkim", "show"))
        self.assertEqual(len(self.store_op(domains.dkim_keys)), 1)


class CliOnSqliteTests(SqliteStoreMixin, CliContractMixin, unittest.TestCase):
    pass


class CliOnPostgresTests(PostgresStoreMixin, CliContractMixin, unittest.TestCase):
    def test_password_hidden_in_messages(self):
        # Trust authentication ignores the password, so the URL still reaches the schema.
        with_password = self.database_url.replace(
            "postgresql://postgres@", "postgresql://postgres:hunter2@"
        )
        self.assertNotEqual(with_password, self.database_url)
        config_path = self.write_config(with_password)
        outcome = self.main("--config", config_path, "domain", "list")
        self.assertRefused(outcome, "postgresql://postgres:***@")
        self.assertNotIn("hunter2", outcome.err)


class CliWithoutDatabaseTests(CliHarness, unittest.TestCase):
    """Configuration, usage and entry points; SQLite where a database is needed."""

    def setUp(self):
        self.set_environment(CONFIG_ENVIRONMENT_VARIABLE, None)

    def sqlite_url(self) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        return f"sqlite:///{os.path.abspath(directory)}/store.sqlite"

    def test_config_from_environment(self):
        config_path = self.write_config(self.sqlite_url())
        self.set_environment(CONFIG_ENVIRONMENT_VARIABLE, config_path)
        self.assertEqual(self.main("db", "migrate").code, 0)
        self.assertEqual(self.main("domain", "add", "acme.com").code, 0)
        self.assertEqual(self.main("domain", "list").lines[1].split()[0], "acme.com")

    def test_config_option_wins_over_environment(self):
        self.set_environment(CONFIG_ENVIRONMENT_VARIABLE, os.path.abspath("does-not-exist.ini"))
        config_path = self.write_config(self.sqlite_url())
        self.assertEqual(self.main("--config", config_path, "db", "migrate").code, 0)

    def test_default_config_path(self):
        # Neither --config nor the variable: the relative default, named in the refusal.
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        old = os.getcwd()
        os.chdir(directory)
        self.addCleanup(os.chdir, old)
        self.assertRefused(
            self.main("domain", "list"),
            "etc/atollon-mail.ini: cannot read the file: No such file or directory; "
            "use --config or ATOLLON_MAIL_CONFIG",
        )

    def test_missing_config_file(self):
        missing = os.path.abspath(self.mktemp())
        self.assertRefused(self.main("--config", missing, "domain", "list"), missing)
        self.set_environment(CONFIG_ENVIRONMENT_VARIABLE, missing)
        self.assertRefused(self.main("db", "migrate"), missing)

    def test_bad_config_value(self):
        config_path = self.write_config("mysql://nowhere")
        self.assertRefused(
            self.main("--config", config_path, "domain", "list"), "[database] url: must be"
        )

    def test_database_that_cannot_be_opened(self):
        # A directory where the SQLite file should be.
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config_path = self.write_config(f"sqlite:///{directory}")
        self.assertRefused(
            self.main("--config", config_path, "domain", "list"),
            f"cannot open the database at sqlite:///{directory}: ",
        )
        self.assertRefused(
            self.main("--config", config_path, "db", "migrate"),
            f"cannot migrate the database at sqlite:///{directory}: ",
        )
        # Nobody listens on port 1.
        config_path = self.write_config("postgresql://postgres@127.0.0.1:1/test")
        self.assertRefused(
            self.main("--config", config_path, "domain", "list"),
            "cannot open the database at postgresql://postgres@127.0.0.1:1/test: ",
        )

    def test_database_newer_than_the_program(self):
        url = self.sqlite_url()
        config_path = self.write_config(url)
        self.assertEqual(self.main("--config", config_path, "db", "migrate").code, 0)
        store = Store.from_url(url, reactor=None)
        try:
            store.run_sync(
                store.database.execute_sql,
                "INSERT INTO schema_migration (version, name, applied_at) "
                "VALUES (999, 'future', '2030-01-01 00:00:00')",
            )
        finally:
            store.stop()
        self.assertRefused(
            self.main("--config", config_path, "domain", "list"), "newer than this program"
        )
        self.assertRefused(
            self.main("--config", config_path, "db", "migrate"), "run a newer atollon-mail"
        )

    def test_usage_errors(self):
        self.assertUsageError(self.main())
        self.assertUsageError(self.main("bogus"))
        self.assertUsageError(self.main("domain"))
        self.assertUsageError(self.main("domain", "remove", "acme.com"))
        self.assertUsageError(self.main("db", "migrate", "--now"))

    def test_help(self):
        outcome = self.main("--help")
        self.assertEqual((outcome.code, outcome.err), (0, ""))
        for group in (
            "db",
            "domain",
            "user",
            "context",
            "mailbox",
            "alias",
            "messages",
            "queue",
            "dkim",
        ):
            self.assertIn(group, outcome.text)
        self.assertIn("--password-stdin", self.main("user", "add", "--help").text)

    def test_version_from_the_package_metadata(self):
        outcome = self.main("--version")
        self.assertEqual((outcome.code, outcome.err), (0, ""))
        self.assertEqual(
            outcome.text, f"atollon-mail {importlib.metadata.version('atollon-mail')}\n"
        )

    def test_display_url_hides_password(self):
        self.assertEqual(
            output.display_url("postgresql://mail:s3cret@db.example:5432/mail?sslmode=require"),
            "postgresql://mail:***@db.example:5432/mail?sslmode=require",
        )
        self.assertEqual(output.display_url("sqlite:///var/x.sqlite"), "sqlite:///var/x.sqlite")

    def test_works_while_the_server_holds_the_database(self):
        # Another process (here: this one) keeps its SQLite connection open, as the
        # server does; the command, a separate process, writes and the server sees it.
        url = self.sqlite_url()
        config_path = self.write_config(url)
        server = Store.from_url(url, reactor=None)
        self.addCleanup(server.stop)
        server.migrate()
        self.assertEqual(server.run_sync(domains.list_domains), [])
        result = subprocess.run(
            [sys.executable, "-m", "atollon_mail.cli", "--config", config_path]
            + ["domain", "add", "acme.com"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        self.assertEqual(result.stdout, b"added domain acme.com (primary)\n")
        self.assertEqual([d.name for d in server.run_sync(domains.list_domains)], ["acme.com"])

    def test_module_entry_point(self):
        environment = dict(os.environ)
        environment.pop(CONFIG_ENVIRONMENT_VARIABLE, None)
        result = subprocess.run(
            [sys.executable, "-m", "atollon_mail.cli", "--help"],
            capture_output=True,
            env=environment,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"usage: atollon-mail", result.stdout)
        self.assertIn(b"messages", result.stdout)
