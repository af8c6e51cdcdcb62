"""The admin commands of atollon_mail.commands.mailboxes, run in-process through `main`
on SQLite and on PostgreSQL."""

from __future__ import annotations

import os

from twisted.trial import unittest

from atollon_mail.store import aliases, filing, mailboxes, message_types
from atollon_mail.store.models import Message, MessageType
from atollon_mail.store.records import IncomingMessage, MailboxAccessRecord, Recipient, Rejection
from tests.support import PostgresStoreMixin, SqliteStoreMixin
from tests.test_cli import ConfiguredCli


def _type_codes_of(message_ids) -> list[str]:
    query = (
        Message.select(MessageType.code)
        .join(MessageType)
        .where(Message.id.in_(list(message_ids)))
        .order_by(Message.id)
    )
    return [code for (code,) in query.tuples()]


class MailboxCommandsContract(ConfiguredCli):
    def setUp(self):
        super().setUp()

    def setup_mailboxes(self) -> None:
        """acme.com and other.com; joe (joe@, jo@acme.com), ann (ann@acme.com), dave; the
        folder Sales (context 4)."""
        self.ok("db", "migrate")
        self.ok("domain", "add", "acme.com")
        self.ok("domain", "add", "other.com")
        for login in ("joe", "ann", "dave"):
            self.ok("user", "add", login, "--password-stdin", stdin=b"password\n")
        self.ok("mailbox", "add", "joe@acme.com", "--owner", "joe")
        self.ok("mailbox", "add", "jo@acme.com", "--owner", "joe")
        self.ok("mailbox", "add", "ann@acme.com", "--owner", "ann")
        self.ok("context", "add", "folder", "Sales")

    def write_file(self, content: bytes) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "signature.txt")
        with open(path, "wb") as written:
            written.write(content)
        return path

    def mailbox(self, address: str):
        return self.store_op(mailboxes.get_mailbox, address)

    def resolve(self, address: str):
        local, domain = address.split("@")
        return self.store_op(filing.resolve_recipient, local, domain)

    def deliver(self, address: str, count: int = 1) -> list[int]:
        def operation():
            recipient = filing.resolve_recipient(*address.split("@"))
            assert isinstance(recipient, Recipient), recipient
            messages = [
                IncomingMessage(
                    envelope_sender="s@example.org", recipients=(recipient,), raw=b"m%d" % n
                )
                for n in range(count)
            ]
            return [stored.id for stored in filing.store_messages(messages)]

        return self.store_op(operation)

    def state(self):
        return (
            self.store_op(mailboxes.list_mailboxes),
            self.store_op(aliases.list_aliases),
            self.store_op(message_types.list_message_types),
        )

    # -- mailbox set ----------------------------------------------------------------------

    def test_mailbox_set(self):
        self.setup_mailboxes()
        signature = self.write_file(b"-- \r\nJo \xc3\x9abl\r\nAcme\r\n")
        outcome = self.ok(
            "mailbox",
            "set",
            "JO@acme.com",
            "--identity",
            "Jo@Company.example",
            "--signature-file",
            signature,
            "--store-to",
            "4",
            "--default",
        )
        self.assertEqual(
            outcome.lines,
            [
                "updated mailbox jo@acme.com: identity Jo@company.example, signature 3 lines, "
                "stores to folder #4 Sales, default box"
            ],
        )
        box = self.mailbox("jo@acme.com")
        self.assertEqual(
            (box.identity, box.signature, box.store_to.id, box.is_default),
            ("Jo@company.example", "-- \nJo \u00dabl\nAcme", 4, True),
        )
        self.assertFalse(self.mailbox("joe@acme.com").is_default)
        self.assertEqual(
            self.ok("mailbox", "set", "jo@acme.com", "--store-to", "todo").lines,
            ["updated mailbox jo@acme.com: stores to todo #1 To Do (joe)"],
        )
        self.assertEqual(
            self.ok("mailbox", "set", "jo@acme.com", "--signature-file", "-", stdin=b"Jo\n").lines,
            ["updated mailbox jo@acme.com: signature 1 line"],
        )
        self.assertEqual(
            self.ok(
                "mailbox", "set", "jo@acme.com", "--signature-file", self.write_file(b"")
            ).lines,
            ["updated mailbox jo@acme.com: signature removed"],
        )
        self.assertEqual(self.mailbox("jo@acme.com").signature, "")

    def test_mailbox_set_active(self):
        self.setup_mailboxes()
        [kept] = self.deliver("jo@acme.com")
        self.assertEqual(
            self.ok("mailbox", "set", "jo@acme.com", "--active", "no").lines,
            ["updated mailbox jo@acme.com: inactive (mail to it is refused; its mail is kept)"],
        )
        refused = self.resolve("jo@acme.com")
        self.assertIsInstance(refused, Rejection)
        self.assertEqual(refused.reason, "inactive-mailbox")
        self.assertEqual(
            [f.message.id for f in self.store_op(filing.list_filings, "jo@acme.com")], [kept]
        )
        self.assertEqual(
            self.ok("mailbox", "set", "jo@acme.com", "--active", "YES").lines,
            ["updated mailbox jo@acme.com: active"],
        )
        self.assertIsInstance(self.resolve("jo@acme.com"), Recipient)

    def test_mailbox_spam_handling(self):
        self.setup_mailboxes()
        self.assertEqual(self.mailbox("jo@acme.com").spam_handling, "junk")
        self.assertEqual(
            self.ok("mailbox", "set", "jo@acme.com", "--spam", "TAG").lines,
            ["updated mailbox jo@acme.com: spam tag (junk mail stays in the inbox, marked)"],
        )
        self.assertEqual(self.mailbox("jo@acme.com").spam_handling, "tag")
        self.assertEqual(self.resolve("jo@acme.com").spam_handling, "tag")
        self.assertIn(
            "spam:         tag (junk mail stays in the inbox, marked)",
            self.ok("mailbox", "show", "jo@acme.com").lines,
        )
        self.assertEqual(
            self.ok("mailbox", "add", "box@acme.com", "--owner", "ann", "--spam", "off").lines,
            ["added mailbox box@acme.com (owner ann, identity box@acme.com, spam off)"],
        )
        listed = {line.split()[0]: line.split()[-2:] for line in self.ok("mailbox", "list").lines}
        self.assertEqual(listed["box@acme.com"], ["off", "-"])
        self.assertEqual(listed["jo@acme.com"], ["tag", "-"])
        self.assertEqual(listed["joe@acme.com"], ["junk", "-"])
        self.assertEqual(
            self.ok("mailbox", "set", "jo@acme.com", "--spam", "junk", "--active", "no").lines,
            [
                "updated mailbox jo@acme.com: inactive (mail to it is refused; its mail is "
                "kept), spam junk (junk mail goes to its Junk folder)"
            ],
        )
        before = self.state()
        for argv in (
            ("set", "jo@acme.com", "--spam", "spam"),
            ("set", "jo@acme.com", "--spam", ""),
            ("add", "new@acme.com", "--owner", "ann", "--spam", "yes"),
        ):
            with self.subTest(argv=argv):
                refused = self.cli("mailbox", *argv)
                self.assertUsageError(refused)
                self.assertIn("choose from 'junk', 'tag', 'off'", refused.err)
        self.assertEqual(self.state(), before)
        self.assertIn("--spam junk|tag|off", self.main("mailbox", "set", "--help").text)

    def test_mailbox_set_refusals_change_nothing(self):
        self.setup_mailboxes()
        self.ok("mailbox", "set", "jo@acme.com", "--active", "no")
        before = self.state()
        for argv, message in (
            (("jo@acme.com",), "nothing to change; give --identity"),
            (("jo@acme.com", "--identity", "not an address"), "is not an address"),
            (("jo@acme.com", "--identity", "a b@acme.com"), "is not a valid sending address"),
            (("jo@acme.com", "--store-to", "99"), "no folder or project with id 99"),
            (("jo@acme.com", "--store-to", "3"), "another user's To Do"),
            (("jo@acme.com", "--store-to", "inbox"), 'no folder or project matches "inbox"'),
            (("jo@acme.com", "--default"), "jo@acme.com is inactive"),
            # All or nothing: the identity is not changed when --default is refused.
            (("jo@acme.com", "--identity", "x@acme.com", "--default"), "is inactive"),
            (("nobody@acme.com", "--active", "no"), "no mailbox nobody@acme.com"),
            (
                ("jo@acme.com", "--signature-file", self.write_file(b"s" * 10_001)),
                "at most 10000 fit",
            ),
            (
                ("jo@acme.com", "--signature-file", self.write_file(b"\xff\xfe")),
                "cannot read the signature from",
            ),
            (
                ("jo@acme.com", "--signature-file", self.write_file(b"a\x00b")),
                "control characters",
            ),
            (
                ("jo@acme.com", "--signature-file", os.path.join(self.mktemp(), "missing.txt")),
                "cannot read the signature",
            ),
        ):
            with self.subTest(argv=argv):
                self.assertRefused(self.cli("mailbox", "set", *argv), message)
        for argv in (
            ("jo@acme.com", "--active", "maybe"),
            ("jo@acme.com", "--store-to", "0"),
            ("jo@acme.com", "--store-to", " "),
            ("--active", "yes"),
        ):
            with self.subTest(argv=argv):
                self.assertUsageError(self.cli("mailbox", "set", *argv))
        self.assertEqual(self.state(), before)

    def test_mailbox_identity_never_another_mailboxs(self):
        self.setup_mailboxes()
        self.ok("alias", "add", "sales", "--mailbox", "ann@acme.com")
        self.ok("mailbox", "set", "joe@acme.com", "--identity", "office@acme.com")
        before = self.state()
        for identity, message in (
            ("ann@acme.com", "another mailbox, ann@acme.com, receives at ann@acme.com"),
            ("Ann+news@acme.com", "another mailbox, ann@acme.com, receives at Ann+news@acme.com"),
            (
                "sales@acme.com",
                "another mailbox, ann@acme.com, receives at sales@acme.com (an alias)",
            ),
            ("office@acme.com", "another mailbox, joe@acme.com, sends as office@acme.com already"),
        ):
            with self.subTest(identity=identity):
                self.assertRefused(
                    self.cli("mailbox", "set", "jo@acme.com", "--identity", identity),
                    message + "; choose another identity",
                )
                self.assertRefused(
                    self.cli(
                        "mailbox", "add", "new@acme.com", "--owner", "dave", "--identity", identity
                    ),
                    message,
                )
        self.assertEqual(self.state(), before)
        # The command line is the administrator: another free address is approved, and shown.
        self.assertIn(
            "identity:     office@acme.com (set by an administrator)",
            self.ok("mailbox", "show", "joe@acme.com").lines,
        )
        # Become another mailbox's address since: shown as refused when sending.
        self.ok("mailbox", "add", "office@acme.com", "--owner", "ann")
        self.assertIn(
            "identity:     office@acme.com (refused when sending: another mailbox, "
            "office@acme.com, receives at office@acme.com)",
            self.ok("mailbox", "show", "joe@acme.com").lines,
        )
        self.assertEqual(
            [i.identity for i in self.store_op(mailboxes.sending_identities, "joe")],
            ["jo@acme.com"],
        )

    # -- mailbox show ---------------------------------------------------------------------

    def test_mailbox_show_lists_rights_signature_and_default(self):
        self.setup_mailboxes()
        self.ok("mailbox", "grant", "joe@acme.com", "dave", "--rights", "view,edit")
        self.ok("mailbox", "grant", "joe@acme.com", "ann", "--rights", "view")
        self.ok("alias", "add", "sales", "--mailbox", "joe@acme.com")
        signature = self.write_file(b"Joe\nAcme\n")
        self.ok("mailbox", "set", "joe@acme.com", "--signature-file", signature)
        self.assertEqual(
            self.ok("mailbox", "show", "joe@acme.com").lines,
            [
                "address:      joe@acme.com",
                "owner:        joe",
                "identity:     joe@acme.com",
                "store to:     todo #1 To Do (joe)",
                "active:       yes",
                "default box:  yes",
                "spam:         junk (junk mail goes to its Junk folder)",
                "aliases:      sales@acme.com",
                "rights:       ann view, dave view+edit",
                "forwarding:   off",
                "auto-respond: off (never set up)",
                "signature:    Joe",
                "              Acme",
            ],
        )
        self.ok("mailbox", "forward", "joe@acme.com", "--add", "x@remote.example", "--on")
        self.ok(
            "mailbox",
            "autorespond",
            "joe@acme.com",
            "--on",
            "--subject",
            "Away",
            "--body-file",
            signature,
        )
        shown = self.ok("mailbox", "show", "joe@acme.com").lines
        self.assertIn("forwarding:   on, keeping a copy, to x@remote.example", shown)
        self.assertIn("auto-respond: on: 'Away'", shown)
        self.ok("mailbox", "redirect", "joe@acme.com", "--to", "ann@acme.com")
        shown = self.ok("mailbox", "show", "joe@acme.com").lines
        self.assertIn("active:       no (redirected to ann@acme.com)", shown)
        self.assertIn("aliases:      (none)", shown)
        self.assertIn("default box:  no", self.ok("mailbox", "show", "jo@acme.com").lines)

    # -- mailbox redirect -----------------------------------------------------------------

    def test_mailbox_redirect(self):
        self.setup_mailboxes()
        self.ok("alias", "add", "sales", "--mailbox", "joe@acme.com")
        self.ok("alias", "add", "boss@acme.com", "--mailbox", "joe@acme.com")
        kept = self.deliver("joe@acme.com", 2)
        before = self.state()
        self.assertEqual(
            self.ok(
                "mailbox", "redirect", "joe@acme.com", "--to", "ann@acme.com", "--dry-run"
            ).lines,
            [
                "dry run, nothing changed: redirecting joe@acme.com to ann@acme.com would",
                "  add aliases to ann@acme.com: joe@acme.com, boss@acme.com, sales@acme.com",
                "  make joe@acme.com inactive (its stored mail is kept)",
            ],
        )
        self.assertEqual(self.state(), before)
        self.assertEqual(
            self.ok("mailbox", "redirect", "Joe@acme.com", "--to", "ann@acme.com").lines,
            [
                "redirected joe@acme.com to ann@acme.com",
                "aliases added to ann@acme.com: joe@acme.com, boss@acme.com, sales@acme.com",
                "joe@acme.com is now inactive (its stored mail is kept)",
            ],
        )
        for address in ("joe@acme.com", "joe+x@acme.com", "sales@acme.com", "boss@acme.com"):
            with self.subTest(address=address):
                self.assertEqual(self.resolve(address).mailbox_address, "ann@acme.com")
        listed = self.ok("messages", "list", "joe@acme.com").lines
        self.assertEqual(len(listed), 1 + len(kept))
        self.assertEqual(
            self.ok("alias", "list").lines,
            [
                "ALIAS           MAILBOX",
                "boss@acme.com   ann@acme.com",
                "joe@acme.com    ann@acme.com",
                "sales@acme.com  ann@acme.com",
            ],
        )
        # A mailbox that had been made inactive by hand is redirected all the same.
        self.ok("mailbox", "set", "jo@acme.com", "--active", "no")
        self.assertEqual(
            self.ok(
                "mailbox", "redirect", "jo@acme.com", "--to", "ann@acme.com", "--dry-run"
            ).lines[-1],
            "  leave jo@acme.com inactive, as it is (its stored mail is kept)",
        )
        self.assertEqual(
            self.ok("mailbox", "redirect", "jo@acme.com", "--to", "ann@acme.com").lines[-1],
            "jo@acme.com stays inactive (its stored mail is kept)",
        )

    def test_mailbox_redirect_refusals_change_nothing(self):
        self.setup_mailboxes()
        self.ok("mailbox", "add", "joe@other.com", "--owner", "joe")
        self.ok("mailbox", "add", "gone@acme.com", "--owner", "dave", "--inactive")
        self.ok("mailbox", "redirect", "jo@acme.com", "--to", "joe@acme.com")
        before = self.state()
        for old, new, message in (
            ("joe@acme.com", "joe@acme.com", "cannot be redirected to itself"),
            ("joe@acme.com", "joe@other.com", "only be redirected to a mailbox in acme.com"),
            ("ann@acme.com", "gone@acme.com", "gone@acme.com is inactive"),
            ("jo@acme.com", "ann@acme.com", "jo@acme.com is an alias of joe@acme.com already"),
            ("nobody@acme.com", "ann@acme.com", "no mailbox nobody@acme.com"),
        ):
            for dry_run in ((), ("--dry-run",)):
                with self.subTest(old=old, new=new, dry_run=dry_run):
                    self.assertRefused(
                        self.cli("mailbox", "redirect", old, "--to", new, *dry_run), message
                    )
        self.assertUsageError(self.cli("mailbox", "redirect", "joe@acme.com"))
        self.assertEqual(self.state(), before)

    # -- mailbox grant and revoke ---------------------------------------------------------

    def test_mailbox_grant_and_revoke(self):
        self.setup_mailboxes()
        for rights, shown in (("view", "view"), ("edit", "view+edit"), ("Edit, view", "view+edit")):
            with self.subTest(rights=rights):
                self.assertEqual(
                    self.ok("mailbox", "grant", "joe@acme.com", "Dave", "--rights", rights).lines,
                    [f"dave has {shown} rights on joe@acme.com"],
                )
        self.ok("mailbox", "grant", "jo@acme.com", "ann", "--rights", "view")
        self.assertEqual(
            [i.mailbox_address for i in self.store_op(mailboxes.sending_identities, "dave")],
            ["joe@acme.com"],
        )
        self.assertEqual(
            self.store_op(mailboxes.sending_identities, "ann")[-1].mailbox_address, "ann@acme.com"
        )
        self.assertEqual(
            self.ok("mailbox", "revoke", "joe@acme.com", "dave").lines,
            ["revoked dave's view+edit rights on joe@acme.com"],
        )
        self.assertEqual(self.store_op(mailboxes.sending_identities, "dave"), ())
        self.assertEqual(
            self.store_op(mailboxes.mailbox_access, "jo@acme.com"),
            [MailboxAccessRecord("jo@acme.com", "ann", True, False)],
        )

    def test_mailbox_grant_and_revoke_refusals(self):
        self.setup_mailboxes()
        self.ok("mailbox", "grant", "joe@acme.com", "ann", "--rights", "view")
        for argv, message in (
            (("grant", "joe@acme.com", "joe", "--rights", "view"), "joe owns joe@acme.com"),
            (("grant", "joe@acme.com", "nobody", "--rights", "view"), "no user nobody"),
            (("grant", "no@acme.com", "ann", "--rights", "view"), "no mailbox no@acme.com"),
            (("revoke", "joe@acme.com", "joe"), "cannot be revoked"),
            (("revoke", "joe@acme.com", "dave"), "dave has no rights on joe@acme.com"),
        ):
            with self.subTest(argv=argv):
                self.assertRefused(self.cli("mailbox", *argv), message)
        for rights in ("", "read", "view,delete", ","):
            with self.subTest(rights=rights):
                self.assertUsageError(
                    self.cli("mailbox", "grant", "joe@acme.com", "dave", "--rights", rights)
                )
        self.assertUsageError(self.cli("mailbox", "grant", "joe@acme.com", "dave"))
        self.assertEqual(
            self.store_op(mailboxes.mailbox_access, "joe@acme.com"),
            [MailboxAccessRecord("joe@acme.com", "ann", True, False)],
        )

    # -- aliases --------------------------------------------------------------------------

    def test_alias_add_bare_name_and_remove(self):
        self.setup_mailboxes()
        self.assertEqual(
            self.ok("alias", "add", "Sales", "--mailbox", "joe@acme.com").lines,
            ["added alias sales@acme.com -> joe@acme.com"],
        )
        self.assertEqual(
            self.ok("alias", "add", "info@ACME.com", "--mailbox", "ann@acme.com").lines,
            ["added alias info@acme.com -> ann@acme.com"],
        )
        self.assertIn("NAME[@DOMAIN]", self.ok("alias", "add", "--help").text)
        for argv, message in (
            (("x@other.com", "--mailbox", "joe@acme.com"), "give just the name: x"),
            (("ann", "--mailbox", "joe@acme.com"), "ann@acme.com is a mailbox already"),
            (("SALES", "--mailbox", "ann@acme.com"), "sales@acme.com is an alias already"),
            (("a+b", "--mailbox", "ann@acme.com"), "is not a valid mailbox name"),
        ):
            with self.subTest(argv=argv):
                self.assertRefused(self.cli("alias", "add", *argv), message)
        self.assertEqual(
            self.ok("alias", "remove", "Sales@acme.com").lines,
            ["removed alias sales@acme.com (of joe@acme.com)"],
        )
        self.assertEqual(self.resolve("sales@acme.com").reason, "unknown-address")
        self.assertRefused(self.cli("alias", "remove", "sales@acme.com"), "no alias sales@acme.com")
        self.assertRefused(self.cli("alias", "remove", "joe@acme.com"), "no alias joe@acme.com")
        self.assertRefused(self.cli("alias", "remove", "sales"), "is not an address")
        self.assertUsageError(self.cli("alias", "remove"))
        self.assertEqual(
            [a.address for a in self.store_op(aliases.list_aliases)], ["info@acme.com"]
        )

    # -- message types --------------------------------------------------------------------

    def test_message_type_add_list_set(self):
        self.ok("db", "migrate")
        self.assertEqual(
            self.ok("message-type", "add", "FAX", "--name", "Fax", "--description", "Faxes").lines,
            ["added message type fax (Fax)"],
        )
        self.assertEqual(
            self.ok("message-type", "add", "memo", "--name", "Memo", "--inactive").lines,
            ["added message type memo (Memo, inactive)"],
        )
        self.assertEqual(
            self.ok("message-type", "list").lines,
            [
                "CODE       NAME             ACTIVE  DEFAULT FOR  MESSAGES  CAMPAIGNS  DESCRIPTION",
                "email-in   Incoming e-mail  yes     incoming            0          0  Mail "
                "received from outside",
                "email-out  Outgoing e-mail  yes     outgoing            0          0  Mail sent "
                "by our users",
                "fax        Fax              yes     -                   0          0  Faxes",
                "memo       Memo             no      -                   0          0",
            ],
        )
        self.assertEqual(
            self.ok(
                "message-type",
                "set",
                "memo",
                "--name",
                "Memo 2",
                "--active",
                "yes",
                "--default-incoming",
                "--default-outgoing",
            ).lines,
            ["updated message type memo (Memo 2, active, default for incoming, outgoing mail)"],
        )
        self.assertEqual(
            self.ok("message-type", "set", "fax", "--description", "", "--active", "no").lines,
            ["updated message type fax (Fax, inactive)"],
        )
        self.assertEqual(
            [line.split()[:4] for line in self.ok("message-type", "list").lines[1:]],
            [
                ["email-in", "Incoming", "e-mail", "yes"],
                ["email-out", "Outgoing", "e-mail", "yes"],
                ["fax", "Fax", "no", "-"],
                ["memo", "Memo", "2", "yes"],
            ],
        )
        self.assertIn("incoming, outgoing", self.ok("message-type", "list").lines[-1])

    def test_message_type_refusals(self):
        self.ok("db", "migrate")
        self.ok("message-type", "add", "memo", "--name", "Memo", "--inactive")
        before = self.state()
        for argv, message in (
            (("add", "memo", "--name", "Other"), "a message type with code memo exists already"),
            (("add", "no code", "--name", "X"), "is not a message type code"),
            (("add", "x", "--name", " "), "needs a name"),
            (("set", "memo"), "nothing to change"),
            (("set", "nope", "--name", "X"), "no message type nope"),
            (("set", "memo", "--default-incoming"), "memo is inactive"),
            (("set", "email-in", "--active", "no"), "--default-incoming"),
            (("delete", "email-out"), "email-out is the default type for outgoing mail"),
            (("delete", "nope"), "no message type nope"),
            (("delete", "memo", "--reassign-to", "memo"), "cannot move to memo itself"),
            (("delete", "memo", "--reassign-to", "nope"), "no message type nope"),
        ):
            with self.subTest(argv=argv):
                self.assertRefused(self.cli("message-type", *argv), message)
        self.assertUsageError(self.cli("message-type", "add", "x"))
        self.assertUsageError(self.cli("message-type", "set", "memo", "--active", "perhaps"))
        self.assertUsageError(self.cli("message-type", "delete"))
        self.assertEqual(self.state(), before)

    def test_message_type_delete(self):
        self.setup_mailboxes()
        self.ok("message-type", "add", "fax", "--name", "Fax")
        self.ok("message-type", "add", "memo", "--name", "Memo")
        self.ok("message-type", "add", "letter", "--name", "Letter")
        self.ok("message-type", "set", "fax", "--default-incoming")
        faxes = self.deliver("joe@acme.com", 2)
        self.assertRefused(
            self.cli("message-type", "delete", "fax"),
            "fax is the default type for incoming mail; make another type the default first",
        )
        self.ok("message-type", "set", "email-in", "--default-incoming")
        others = self.deliver("joe@acme.com")
        self.assertRefused(
            self.cli("message-type", "delete", "fax"),
            "2 archived messages have type fax and would change type; say which type they "
            "get instead: --reassign-to CODE",
        )
        self.assertEqual(self.store_op(_type_codes_of, faxes), ["fax", "fax"])
        self.assertEqual(
            self.ok("message-type", "delete", "fax", "--reassign-to", "letter").lines,
            ["deleted message type fax (2 messages moved to letter)"],
        )
        self.assertEqual(
            self.store_op(_type_codes_of, faxes + others), ["letter", "letter", "email-in"]
        )
        self.assertEqual(
            self.ok("message-type", "delete", "memo").lines, ["deleted message type memo"]
        )
        self.assertEqual(
            self.ok("message-type", "delete", "letter", "--reassign-to", "email-in").lines,
            ["deleted message type letter (2 messages moved to email-in)"],
        )
        self.assertEqual(
            [line.split()[0] for line in self.ok("message-type", "list").lines[1:]],
            ["email-in", "email-out"],
        )

    def test_help_names_the_new_commands(self):
        self.assertIn("message-type", self.main("--help").text)
        mailbox_help = self.main("mailbox", "--help").text
        for action in ("set", "redirect", "grant", "revoke"):
            self.assertIn(action, mailbox_help)
        self.assertIn("remove", self.main("alias", "--help").text)
        self.assertIn("--reassign-to", self.main("message-type", "delete", "--help").text)


class MailboxCommandsOnSqliteTests(SqliteStoreMixin, MailboxCommandsContract, unittest.TestCase):
    pass


class MailboxCommandsOnPostgresTests(
    PostgresStoreMixin, MailboxCommandsContract, unittest.TestCase
):
    pass
