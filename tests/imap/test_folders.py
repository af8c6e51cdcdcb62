"""The IMAP server's folder commands on a real store: LIST (patterns, SPECIAL-USE,
children), LSUB, STATUS, SELECT and EXAMINE (CONDSTORE, read-only shared mailboxes),
what cannot be done (CREATE, DELETE, RENAME), and names that must not reach another
user's mailbox. Written once, run on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from atollon_mail.store import folders, mailboxes
from tests import builders
from tests.imap.support import ImapServerMixin, password_hash
from tests.support import PostgresStoreMixin, SqliteStoreMixin

PROJECT = "Přehled/2027"  # shown as "Přehled-2027", sent as modified UTF-7
PROJECT_WIRE = "P&AVk-ehled-2027"


class FolderCommandsContract(ImapServerMixin):
    def setUp(self):
        super().setUp()
        builders.hosted_mailbox(self.store, "bob@other.test", "bob", password_hash=password_hash())
        builders.organization(self.store, "Acme")
        self.store.run_sync(folders.add_project, PROJECT, "Acme")

    @defer.inlineCallbacks
    def test_list_everything(self):
        client = yield self.logged_in()
        lines = yield client.command('LIST "" "*"')
        self.assertEqual(
            lines,
            [
                '* LIST (\\HasNoChildren) "/" "INBOX"',
                '* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
                '* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"',
                '* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
                '* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
                '* LIST (\\Noselect \\HasChildren) "/" "CRM"',
                f'* LIST (\\HasNoChildren \\Archive) "/" "CRM/{PROJECT_WIRE}"',
                "a2 OK LIST completed",
            ],
        )

    @defer.inlineCallbacks
    def test_list_patterns(self):
        client = yield self.logged_in()
        lines = yield client.command('LIST "" "%"')
        self.assertEqual(
            [line.rsplit(" ", 1)[1] for line in lines[:-1]],
            ['"INBOX"', '"Sent"', '"Drafts"', '"Junk"', '"Trash"', '"CRM"'],
        )
        lines = yield client.command('LIST "CRM/" "%"')
        self.assertEqual(lines[0].rsplit(" ", 1)[1], f'"CRM/{PROJECT_WIRE}"')
        self.assertEqual(len(lines), 2)
        lines = yield client.command('LIST "" "inbox"')
        self.assertEqual(lines[0], '* LIST (\\HasNoChildren) "/" "INBOX"')
        lines = yield client.command('LIST "" ""')
        self.assertEqual(lines[0], '* LIST (\\Noselect) "/" ""')
        lines = yield client.command('LIST "" "C%/*"')
        self.assertEqual(len(lines), 2)
        # A pattern with no match, and regular-expression characters taken literally.
        lines = yield client.command('LIST "" "I.BOX"')
        self.assertEqual(lines, ["a7 OK LIST completed"])

    @defer.inlineCallbacks
    def test_list_special_use_selection_and_return(self):
        client = yield self.logged_in()
        lines = yield client.command('LIST (SPECIAL-USE) "" "*"')
        self.assertEqual(
            [line.split(") ", 1)[1] for line in lines[:-1]],
            [
                '"/" "Sent"',
                '"/" "Drafts"',
                '"/" "Junk"',
                '"/" "Trash"',
                f'"/" "CRM/{PROJECT_WIRE}"',
            ],
        )
        lines = yield client.command('LIST "" "Sent" RETURN (SPECIAL-USE)')
        self.assertEqual(lines[0], '* LIST (\\HasNoChildren \\Sent) "/" "Sent"')
        lines = yield client.command('LSUB "" "*"')
        self.assertIn('* LSUB (\\HasNoChildren) "/" "Sent"', lines)

    @defer.inlineCallbacks
    def test_select_a_unicode_name(self):
        self.receive()
        client = yield self.logged_in()
        lines = yield client.command(f'SELECT "CRM/{PROJECT_WIRE}"')
        self.assertEqual(lines[-1], "a2 OK [READ-WRITE] SELECT completed")
        self.assertIn("* 0 EXISTS", lines)

    @defer.inlineCallbacks
    def test_select_inbox(self):
        self.receive("one")
        self.receive("two")
        client = yield self.logged_in()
        lines = yield client.command("SELECT inbox (CONDSTORE)")
        snapshot = client.protocol.selected
        self.assertEqual(len(snapshot), 2)
        self.assertEqual(
            lines,
            [
                "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
                "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
                "Flags permitted",
                "* 2 EXISTS",
                "* 0 RECENT",
                "* OK [UNSEEN 1] First unseen",
                f"* OK [UIDVALIDITY {self.hosted.mailbox.id}] UIDs valid",
                f"* OK [UIDNEXT {snapshot.uidnext}] Predicted next UID",
                f"* OK [HIGHESTMODSEQ {snapshot.highestmodseq}] Highest",
                "a2 OK [READ-WRITE] SELECT completed",
            ],
        )
        self.assertTrue(client.protocol.condstore)
        lines = yield client.command("EXAMINE Sent")
        self.assertEqual(lines[0], "* OK [CLOSED] Previous mailbox closed")
        self.assertIn("* OK [PERMANENTFLAGS ()] Flags permitted", lines)
        self.assertEqual(lines[-1], "a3 OK [READ-ONLY] EXAMINE completed")

    @defer.inlineCallbacks
    def test_status(self):
        self.receive("one")
        client = yield self.logged_in()
        lines = yield client.command(
            "STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY HIGHESTMODSEQ RECENT)"
        )
        status = lines[0]
        self.assertTrue(status.startswith('* STATUS "INBOX" (MESSAGES 1 UNSEEN 1 UIDNEXT '))
        self.assertIn(f"UIDVALIDITY {self.hosted.mailbox.id} ", status)
        self.assertTrue(status.endswith(" RECENT 0)"), status)
        lines = yield client.command("STATUS Trash (FROB)")
        self.assertEqual(lines[-1], "a3 BAD Unknown status item FROB")

    @defer.inlineCallbacks
    def test_no_other_users_mailbox_by_any_name(self):
        self.receive("for bob", address="bob@other.test")
        client = yield self.logged_in()
        names = [
            "bob@other.test/INBOX",
            "Shared/bob@other.test/INBOX",
            "../bob@other.test/INBOX",
            "INBOX/../bob@other.test/INBOX",
            "Shared/../bob@other.test/INBOX",
            "Shared/%",
            "Shared/*",
            "*",
            "%",
            "CRM",
            "Shared",
            "&AGQAbwB0-",
            "&Jjo!",
        ]
        for name in names:
            lines = yield client.command(f'SELECT "{name}"')
            self.assertIn(lines[-1].split(" ")[1], ("NO", "BAD"), (name, lines))
            self.assertNotIn(" EXISTS", " ".join(lines))
            lines = yield client.command(f'STATUS "{name}" (MESSAGES)')
            self.assertIn(lines[-1].split(" ")[1], ("NO", "BAD"), (name, lines))
        lines = yield client.command('LIST "" "*bob*"')
        self.assertEqual(len(lines), 1, lines)
        lines = yield client.command('LIST "../" "*"')
        self.assertEqual(len(lines), 1, lines)

    @defer.inlineCallbacks
    def test_names_not_in_modified_utf7_are_refused(self):
        client = yield self.logged_in()
        for name in ("&Jjo!", "&abc", "&AGQAbwB0-", "&!!!-", "CRM/P&AVk-ehled-2027&"):
            lines = yield client.command(f'SELECT "{name}"')
            self.assertEqual(
                lines[-1].split(" ", 2)[1:], ["BAD", "the mailbox name is not valid modified UTF-7"]
            )

    @defer.inlineCallbacks
    def test_a_mailbox_shared_for_viewing_is_read_only(self):
        self.receive("for bob", address="bob@other.test")
        self.store.run_sync(mailboxes.grant_mailbox_access, "bob@other.test", "jane", view=True)
        client = yield self.logged_in()
        lines = yield client.command('LIST "Shared/" "*"')
        self.assertIn('* LIST (\\HasNoChildren) "/" "Shared/bob@other.test/INBOX"', lines)
        lines = yield client.command('SELECT "Shared/bob@other.test/INBOX"')
        self.assertIn("* 1 EXISTS", lines)
        self.assertIn("* OK [PERMANENTFLAGS ()] Flags permitted", lines)
        self.assertEqual(lines[-1], "a3 OK [READ-ONLY] SELECT completed")
        lines = yield client.command("STORE 1 +FLAGS (\\Flagged)")
        self.assertEqual(lines[-1], "a4 NO [READ-ONLY] The mailbox is read-only")
        lines = yield client.command("EXPUNGE")
        self.assertEqual(lines[-1], "a5 NO [READ-ONLY] The mailbox is read-only")
        lines = yield client.command("MOVE 1 INBOX")
        self.assertEqual(lines[-1], "a6 NO [READ-ONLY] The mailbox is read-only")

    @defer.inlineCallbacks
    def test_folders_cannot_be_made_or_removed_and_all_are_subscribed(self):
        client = yield self.logged_in()
        for command in ("CREATE Projects", "DELETE Junk", "RENAME Junk Spam"):
            lines = yield client.command(command)
            self.assertEqual(lines[-1].split(" ", 3)[1:3], ["NO", "[CANNOT]"], command)
        lines = yield client.command("SUBSCRIBE Junk")
        self.assertEqual(lines, ["a5 OK SUBSCRIBE completed"])
        lines = yield client.command("UNSUBSCRIBE Junk")
        self.assertEqual(lines, ["a6 OK UNSUBSCRIBE completed"])

    @defer.inlineCallbacks
    def test_namespace_enable_and_select_errors(self):
        client = yield self.logged_in()
        lines = yield client.command("NAMESPACE")
        self.assertEqual(lines[0], '* NAMESPACE (("" "/")) NIL (("Shared/" "/"))')
        lines = yield client.command("ENABLE CONDSTORE QRESYNC")
        self.assertEqual(lines, ["* ENABLED CONDSTORE", "a3 OK ENABLE completed"])
        lines = yield client.command("SELECT CRM")
        self.assertEqual(lines[-1].split(" ")[1], "NO")
        self.assertEqual(client.protocol.state, "authenticated")
        lines = yield client.command("SELECT Nowhere")
        self.assertEqual(lines[-1], "a5 NO [NONEXISTENT] No such mailbox")


class FolderCommandsSqliteTests(FolderCommandsContract, SqliteStoreMixin, unittest.TestCase):
    pass


class FolderCommandsPostgresTests(FolderCommandsContract, PostgresStoreMixin, unittest.TestCase):
    pass
