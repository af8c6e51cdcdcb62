"""The CRM's view of the mail: who each message is from and to (message_address, filled
when a message is stored and by migration 11 for those stored before), a contact's
messages in the mailboxes a user may view, the campaign mail a contact got, filing a
message into several folders and projects (once each, stored once), and a folder's
messages by the same rights. Written once, run on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
import email.utils

from twisted.internet import reactor
from twisted.trial import unittest

from atollon_mail.store import (
    contacts,
    crm_mail,
    folders,
    mailboxes,
    mailfolders,
    migrations,
    queue,
    unread,
)
from atollon_mail.store import contexts as contexts_ops
from atollon_mail.store import filing as filing_ops
from atollon_mail.store.errors import Ambiguous, Conflict, Invalid, NotFound
from atollon_mail.store.message_addresses import header_addresses
from atollon_mail.store.models import Filing, Message, MessageAddress
from atollon_mail.store.pool import Store
from atollon_mail.store.records import IncomingMessage, Origin, OutgoingMessage
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

T0 = datetime.datetime(2026, 3, 1, 9, 0)


def _raw(sender: str, to: str, subject: str, cc: str = "") -> bytes:
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}"]
    if cc:
        lines.append(f"Cc: {cc}")
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


class HeaderAddressesTests(unittest.TestCase):
    def test_senders_and_recipients_lower_cased_once_each(self):
        raw = (
            b'From: "Jana N." <Jana@Firm.TEST>\r\n'
            b"To: joe@acme.test,\r\n  Hans <hans@firm.test>\r\n"
            b"Cc: jana@firm.test, undisclosed-recipients:;\r\n"
            b"Sender: list@lists.test\r\n"
            b"Reply-To: other@firm.test\r\n"
            b"Subject: To: not@a.header\r\n"
            b"\r\n"
            b"To: body@not.header\r\n"
        )
        self.assertEqual(
            header_addresses(raw),
            [
                ("from", "jana@firm.test"),
                ("from", "list@lists.test"),
                ("to", "joe@acme.test"),
                ("to", "hans@firm.test"),
                ("to", "jana@firm.test"),
            ],
        )

    def test_plain_values_read_as_getaddresses_reads_them(self):
        # The common forms are read without the email package; each must give what
        # getaddresses gives, and the rest is still left to it.
        values = [
            "<sender@peer.test>",
            "user@sink.test",
            "John Smith <John@X.test>",
            "  Jo <j.k+tag@a-b.c.test>\t",
            "Name<n@x.test>",
            "=?utf-8?q?J=C3=A1na?= <jana@firm.test>",
            "o'neil!#$%&*/=?^_`{|}~-x@odd.test",
            '"Smith, John" <john@x.test>',
            "John (the boss) <john@x.test>",
            "a@x.test, b@y.test",
            "J. Smith <j@x.test>",
            "list: a@x.test, b@y.test;",
            "<a..b@x.test>",
            "Jána <jana@firm.test>",
        ]
        for value in values:
            with self.subTest(value=value):
                raw = f"To: {value}\r\n\r\nbody\r\n".encode()
                expected = [
                    ("to", address.lower())
                    for _, address in email.utils.getaddresses([value])
                    if "@" in address
                ]
                self.assertEqual(header_addresses(raw), expected)

    def test_no_header_section_no_addresses(self):
        self.assertEqual(header_addresses(b"\r\nTo: a@b.test\r\n"), [])
        self.assertEqual(header_addresses(b"From: nobody\r\n\r\n"), [])


class CrmMailContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        sync = self.sync = self.store.run_sync
        builders.domain(self.store, "acme.test")
        builders.user(self.store, "admin", is_admin=True)
        builders.user(self.store, "joe")
        builders.user(self.store, "bob")
        builders.mailbox(self.store, "joe@acme.test", "joe")
        builders.mailbox(self.store, "bob@acme.test", "bob")
        builders.organization(self.store)
        self.firm = builders.company(self.store, "Firm", email="office@firm.test")
        self.jana = builders.person(self.store, name="Jana Nováková", email="jana@firm.test")
        self.project = sync(folders.add_project, "Spring launch", "Acme")
        self.folder = sync(folders.add_folder, "Firm orders", "Acme", "Firm")
        self.joe = sync(filing_ops.resolve_recipient, "joe", "acme.test")
        self.bob = sync(filing_ops.resolve_recipient, "bob", "acme.test")

    def receive(self, raw: bytes, *recipients, at: datetime.datetime = T0) -> int:
        incoming = IncomingMessage(
            envelope_sender="bounce@elsewhere.test",
            recipients=recipients or (self.joe,),
            raw=raw,
            subject="s",
        )
        [stored] = self.sync(filing_ops.store_messages, [incoming])
        self.sync(lambda: Message.update(received_at=at).where(Message.id == stored.id).execute())
        return stored.id

    def titles(self, mail) -> list[tuple[int, bool, bool, str]]:
        return [(m.id, m.from_contact, m.to_contact, m.mailbox_address) for m in mail.messages]

    # -- a contact's messages ------------------------------------------------------------

    def test_a_contacts_messages_from_and_to_newest_first(self):
        day = datetime.timedelta(days=1)
        first = self.receive(_raw("Jana <JANA@firm.test>", "joe@acme.test", "one"), at=T0)
        other = self.receive(_raw("hans@firm.test", "joe@acme.test", "other"), at=T0 + day)
        copied = self.receive(
            _raw("hans@firm.test", "joe@acme.test", "cc", cc="jana@firm.test"), at=T0 + 2 * day
        )
        # A message sent from joe's mailbox to Jana: its Sent copy is filed in joe's box.
        sent = OutgoingMessage(
            envelope_sender="joe@acme.test",
            raw=_raw("joe@acme.test", "jana@firm.test", "answer"),
            remote_recipients=("jana@firm.test",),
            sent_mailbox_id=self.joe.mailbox_id,
            subject="answer",
        )
        [done] = self.sync(
            queue.submit_messages, [(sent, Origin("compose", mailbox_id=self.joe.mailbox_id))]
        )
        self.assertNotIsInstance(done, Exception)
        mail = self.sync(crm_mail.contact_messages, self.jana.id, "joe")
        self.assertEqual(mail.address, "jana@firm.test")
        self.assertEqual(mail.total, 3)
        [answer, *rest] = mail.messages
        self.assertEqual(
            (answer.subject, answer.from_contact, answer.to_contact), ("answer", False, True)
        )
        self.assertEqual(
            [(m.id, m.from_contact, m.to_contact) for m in rest],
            [(copied, False, True), (first, True, False)],
        )
        self.assertNotIn(other, [m.id for m in mail.messages])
        # Paged: the second page holds the oldest one.
        page = self.sync(crm_mail.contact_messages, self.jana.id, "joe", 2, 2)
        self.assertEqual((page.total, [m.id for m in page.messages]), (3, [first]))
        # By name, e-mail or external id, as the command line names contacts.
        self.assertEqual(self.sync(crm_mail.contact_messages, "jana@firm.test", "joe").total, 3)

    def test_only_mailboxes_the_reader_may_view(self):
        to_joe = self.receive(_raw("jana@firm.test", "joe@acme.test", "to joe"), self.joe)
        to_bob = self.receive(_raw("jana@firm.test", "bob@acme.test", "to bob"), self.bob)
        both = self.receive(_raw("jana@firm.test", "joe@acme.test", "both"), self.joe, self.bob)
        seen = {
            login: self.titles(self.sync(crm_mail.contact_messages, self.jana.id, login))
            for login in ("joe", "bob", "admin", "nobody")
        }
        self.assertEqual(
            seen["joe"],
            [(both, True, False, "joe@acme.test"), (to_joe, True, False, "joe@acme.test")],
        )
        self.assertEqual(
            seen["bob"],
            [(both, True, False, "bob@acme.test"), (to_bob, True, False, "bob@acme.test")],
        )
        self.assertEqual([item[0] for item in seen["admin"]], [both, to_bob, to_joe])
        self.assertEqual(seen["nobody"], [])
        # A view right granted on bob's mailbox shows its mail to joe too.
        self.sync(mailboxes.grant_mailbox_access, "bob@acme.test", "joe", view=True, edit=False)
        joe_now = self.sync(crm_mail.contact_messages, self.jana.id, "joe")
        self.assertEqual([m.id for m in joe_now.messages], [both, to_bob, to_joe])

    def test_a_contact_without_an_address_has_no_mail(self):
        petr = builders.person(self.store, name="Petr Svoboda")
        self.receive(_raw("jana@firm.test", "joe@acme.test", "x"))
        self.assertEqual(self.sync(crm_mail.contact_messages, petr.id, "joe").total, 0)
        with self.assertRaises(NotFound):
            self.sync(crm_mail.contact_messages, 999, "joe")

    def test_addresses_go_with_their_message(self):
        message_id = self.receive(_raw("jana@firm.test", "joe@acme.test", "x"))
        count = lambda: MessageAddress.select().where(MessageAddress.message == message_id).count()  # noqa: E731
        self.assertEqual(self.sync(count), 2)
        self.sync(lambda: Message.delete().where(Message.id == message_id).execute())
        self.assertEqual(self.sync(count), 0)

    def test_relayed_mail_filed_nowhere_records_no_addresses_other_queued_mail_does(self):
        def queued(origin: Origin, subject: str) -> int:
            outgoing = OutgoingMessage(
                envelope_sender="app@firm.test",
                raw=_raw("app@firm.test", "jana@firm.test", subject),
                remote_recipients=("jana@firm.test",),
                subject=subject,
            )
            [done] = self.sync(queue.submit_messages, [(outgoing, origin)])
            return done.id

        def addresses(message_id: int) -> list[str]:
            query = MessageAddress.select(MessageAddress.address)
            return sorted(a for (a,) in query.where(MessageAddress.message == message_id).tuples())

        relayed = queued(Origin("relay"), "relayed")
        # A campaign's message is filed in its sender's mailbox once delivered.
        campaign = queued(Origin("campaign", 1), "campaign")
        # Relayed mail with a recipient here is filed, so it has its addresses.
        [relayed_here] = self.sync(
            queue.submit_messages,
            [
                (
                    OutgoingMessage(
                        envelope_sender="app@firm.test",
                        raw=_raw("app@firm.test", "jana@firm.test", "both"),
                        local_recipients=(self.joe,),
                        remote_recipients=("jana@firm.test",),
                        subject="both",
                    ),
                    Origin("relay"),
                )
            ],
        )
        self.assertEqual(self.sync(addresses, relayed), [])
        both = ["app@firm.test", "jana@firm.test"]
        self.assertEqual(self.sync(addresses, campaign), both)
        self.assertEqual(self.sync(addresses, relayed_here.id), both)

    # -- campaign mail and groups -------------------------------------------------------

    def test_the_campaign_mail_a_contact_got_with_its_state(self):
        builders.mailbox(self.store, "news@acme.test", "joe")
        group = builders.group(self.store, "Customers", "Acme", members=[self.jana.id])
        builders.campaign(self.store, group.id, variants={"en": ("Spring", "Hello")}, started=True)
        [got] = self.sync(crm_mail.contact_campaign_mail, self.jana.id)
        self.assertEqual(
            (got.campaign_name, got.campaign_status, got.address, got.state),
            ("Spring news", "running", "jana@firm.test", "queued"),
        )
        self.assertEqual(self.sync(crm_mail.contact_campaign_mail, self.firm.id), ())
        groups = self.sync(crm_mail.contact_groups, self.jana.id)
        self.assertEqual([(g.name, g.kind) for g in groups], [("Customers", "static")])
        self.assertEqual(self.sync(crm_mail.contact_groups, self.firm.id), ())

    # -- filing into folders and projects ------------------------------------------------

    def test_filed_into_several_contexts_once_each_and_stored_once(self):
        message_id = self.receive(_raw("jana@firm.test", "joe@acme.test", "order"))
        self.sync(filing_ops.add_flag, "joe@acme.test", message_id, "\\Seen")
        into_project = self.sync(crm_mail.file_into, "joe@acme.test", message_id, self.project.id)
        self.assertEqual((into_project.filed, into_project.folder.name), (True, "Spring launch"))
        again = self.sync(crm_mail.file_into, "joe@acme.test", message_id, str(self.project.id))
        self.assertFalse(again.filed)
        # By name too, as the command line names folders.
        self.assertTrue(
            self.sync(crm_mail.file_into, "joe@acme.test", message_id, "Firm orders").filed
        )
        contexts = self.sync(crm_mail.message_contexts, "joe@acme.test", message_id)
        self.assertEqual(
            [(c.kind, c.name, c.is_crm) for c in contexts],
            [
                ("todo", "To Do (joe)", False),
                ("project", "Spring launch", True),
                ("folder", "Firm orders", True),
            ],
        )
        rows = self.sync(
            lambda: list(
                Filing.select(Filing.uid, Filing.flags, Filing.folder)
                .where(Filing.message == message_id)
                .order_by(Filing.id)
                .tuples()
            )
        )
        # Uid 2 went to the mod-sequence of the flag change (IMAP's CONDSTORE).
        self.assertEqual(
            rows,
            [
                (1, "\\Seen", "inbox"),
                (3, "\\Seen $Filed", "inbox"),
                (4, "\\Seen $Filed", "inbox"),
            ],
        )
        self.assertEqual(self.sync(lambda: Message.select().count()), 1)
        # The inbox lists it once; the listing of every filing shows each context.
        inbox = self.sync(filing_ops.list_filings, "joe@acme.test", folder="inbox")
        self.assertEqual([(f.uid, f.message.id) for f in inbox], [(1, message_id)])
        every = self.sync(filing_ops.list_filings, "joe@acme.test")
        self.assertEqual(
            [f.context.name for f in every], ["Firm orders", "Spring launch", "To Do (joe)"]
        )
        # The project's page lists it once, with the mailbox it is filed in there.
        listed = self.sync(folders.folder_messages, self.project.id, viewer="joe")
        self.assertEqual(
            [(m.id, m.mailboxes) for m in listed.messages], [(message_id, ("joe@acme.test",))]
        )

    def test_the_mail_client_shows_a_filed_message_once_and_its_copy_in_the_project(self):
        message_id = self.receive(_raw("jana@firm.test", "joe@acme.test", "order"))
        self.sync(crm_mail.file_into, "joe@acme.test", message_id, self.project.id)

        def listed(folder="inbox", context_id=None):
            return [
                (f.uid, f.context.name)
                for f in self.sync(
                    mailfolders.list_folder,
                    "joe@acme.test",
                    None if context_id else folder,
                    context_id,
                )
            ]

        def counts():
            return {
                c.name: (c.total, c.unread)
                for c in self.sync(mailfolders.folder_counts, "joe@acme.test")
                if c.total
            }

        self.assertEqual(listed(), [(1, "To Do (joe)")])
        self.assertEqual(listed(context_id=self.project.id), [(2, "Spring launch")])
        self.assertEqual(counts(), {"Inbox": (1, 1), "Spring launch": (1, 1)})
        self.assertEqual(
            self.sync(
                unread.count_unread,
                self.sync(filing_ops.resolve_recipient, "joe", "acme.test").mailbox_id,
            ),
            1,
        )
        # Deleted from the Inbox: in Trash once, still in the project.
        self.sync(mailfolders.move_filings, "joe@acme.test", [1], "trash")
        self.assertEqual(listed(), [])
        [(trash_uid, _)] = listed("trash")
        self.assertEqual(counts(), {"Trash": (1, 1), "Spring launch": (1, 1)})
        # Filed again from Trash into another folder: nothing comes back to the Inbox.
        self.sync(crm_mail.file_into, "joe@acme.test", message_id, "Firm orders")
        self.assertEqual(listed(), [])
        # Deleted from the project's listing: it leaves the project, the rest stays.
        moved = self.sync(mailfolders.move_filings, "joe@acme.test", [2], "trash")
        self.assertEqual(moved.moved, 1)
        self.assertEqual(listed(context_id=self.project.id), [])
        self.assertEqual(listed("trash"), [(trash_uid, "To Do (joe)")])
        # Trash emptied: the last copy's removal takes the message with it.
        self.sync(mailfolders.empty_trash, "joe@acme.test")
        firm_orders = self.sync(lambda: folders.find_folder_row("Firm orders").id)
        [(copy_uid, name)] = listed(context_id=firm_orders)
        self.assertEqual(name, "Firm orders")
        self.sync(mailfolders.move_filings, "joe@acme.test", [copy_uid], "trash")
        self.assertEqual(self.sync(lambda: Message.select().count()), 0)

    def test_filing_refusals(self):
        message_id = self.receive(_raw("jana@firm.test", "joe@acme.test", "order"))
        todo = self.sync(crm_mail.message_contexts, "joe@acme.test", message_id)[0]
        for mailbox, message, folder in (
            ("bob@acme.test", message_id, self.project.id),  # not filed in bob's box
            ("joe@acme.test", 999, self.project.id),
            ("joe@acme.test", message_id, 999),
            ("joe@acme.test", message_id, todo.id),  # a To Do is no folder or project
            ("joe@acme.test", message_id, "nothing like it"),
        ):
            with self.subTest(mailbox=mailbox, message=message, folder=folder):
                with self.assertRaises(NotFound):
                    self.sync(crm_mail.file_into, mailbox, message, folder)
        own = self.sync(contexts_ops.add_context, "folder", "Joe's notes", "joe")
        with self.assertRaises(NotFound):  # a user's own folder is not the CRM's
            self.sync(crm_mail.file_into, "joe@acme.test", message_id, own.id)
        builders.company(self.store, "Firmament")
        self.sync(folders.add_folder, "Firm orders", "Acme", "Firmament")
        with self.assertRaises(Ambiguous):
            self.sync(crm_mail.file_into, "joe@acme.test", message_id, "Firm orders")
        with self.assertRaises(NotFound):
            self.sync(crm_mail.message_contexts, "bob@acme.test", message_id)

    def test_a_folders_messages_by_the_readers_rights(self):
        for_joe = self.receive(_raw("jana@firm.test", "joe@acme.test", "a"), self.joe)
        for_bob = self.receive(_raw("jana@firm.test", "bob@acme.test", "b"), self.bob)
        self.sync(crm_mail.file_into, "joe@acme.test", for_joe, self.folder.id)
        self.sync(crm_mail.file_into, "bob@acme.test", for_bob, self.folder.id)
        shown = {
            login: [
                m.id
                for m in self.sync(folders.folder_messages, self.folder.id, viewer=login).messages
            ]
            for login in ("joe", "bob", "admin")
        }
        self.assertEqual(shown, {"joe": [for_joe], "bob": [for_bob], "admin": [for_bob, for_joe]})
        self.assertEqual(len(self.sync(folders.folder_messages, self.folder.id).messages), 2)

    # -- editing a contact ----------------------------------------------------------------

    def test_update_contact_checks_as_add_does(self):
        builders.person(self.store, name="Hans", external_id="h1")
        updated = self.sync(
            contacts.update_contact,
            self.jana.id,
            first_name="Jana",
            last_name="Nová",
            email=" JANA.NOVA@Firm.test ",
            language="CS",
            external_id="j1",
        )
        self.assertEqual(
            (updated.name, updated.email, updated.language, updated.external_id),
            ("Jana Nová", "jana.nova@firm.test", "cs", "j1"),
        )
        with self.assertRaises(Conflict):
            self.sync(contacts.update_contact, self.jana.id, name="Jana", external_id="h1")
        with self.assertRaises(Invalid):
            self.sync(contacts.update_contact, self.jana.id, name="Jana", email="not an address")
        with self.assertRaises(Invalid):
            self.sync(contacts.update_contact, self.firm.id, name="")
        self.assertEqual(self.sync(contacts.get_contact, self.jana.id), updated)


class SqliteCrmMailTests(SqliteStoreMixin, CrmMailContract, unittest.TestCase):
    pass


class PostgresCrmMailTests(PostgresStoreMixin, CrmMailContract, unittest.TestCase):
    pass


class MessageAddressMigrationContract:
    def test_messages_stored_before_get_their_addresses(self):
        store = Store.from_url(self.make_database_url(), reactor)
        self.addCleanup(store.stop)
        database = store.database
        with database.connection_context():
            migrations.migrate(database, up_to=10)
            insert = (
                "INSERT INTO message (raw, size, envelope_sender, received_at) "
                f"VALUES ({database.param}, 1, '', {database.param})"
            )
            for number in range(3):
                raw = _raw("Jana <jana@firm.test>", f"joe{number}@acme.test", "old")
                database.execute_sql(insert, (raw, T0))
            database.execute_sql(insert, (b"no header section", T0))
            applied = migrations.migrate(database)
            self.assertIn(11, [migration.number for migration in applied])
            rows = database.execute_sql(
                "SELECT message_id, address, role FROM message_address ORDER BY id"
            ).fetchall()
        self.assertEqual(
            [tuple(row) for row in rows],
            [
                (1, "jana@firm.test", "from"),
                (1, "joe0@acme.test", "to"),
                (2, "jana@firm.test", "from"),
                (2, "joe1@acme.test", "to"),
                (3, "jana@firm.test", "from"),
                (3, "joe2@acme.test", "to"),
            ],
        )

    def test_the_backfill_reads_in_batches(self):
        store = Store.from_url(self.make_database_url(), reactor)
        self.addCleanup(store.stop)
        database = store.database
        from atollon_mail.store import message_addresses

        self.patch(message_addresses, "BACKFILL_BATCH", 2)
        with database.connection_context():
            migrations.migrate(database, up_to=10)
            insert = (
                "INSERT INTO message (raw, size, envelope_sender, received_at) "
                f"VALUES ({database.param}, 1, '', {database.param})"
            )
            for number in range(5):
                database.execute_sql(insert, (_raw(f"s{number}@x.test", "t@x.test", "s"), T0))
            migrations.migrate(database)
            (count,) = database.execute_sql(
                "SELECT COUNT(*) FROM message_address WHERE role = 'from'"
            ).fetchone()
        self.assertEqual(count, 5)


class SqliteMessageAddressMigrationTests(
    SqliteStoreMixin, MessageAddressMigrationContract, unittest.TestCase
):
    pass


class PostgresMessageAddressMigrationTests(
    PostgresStoreMixin, MessageAddressMigrationContract, unittest.TestCase
):
    pass
