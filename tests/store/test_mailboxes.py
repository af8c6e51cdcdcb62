"""Mailbox behaviours (options, aliases, redirects, access rights, message types), written
once and run on SQLite and on PostgreSQL."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from atollon_mail.store import accounts, aliases, campaigns, contexts, domains, message_types, queue
from atollon_mail.store import filing as filing_ops
from atollon_mail.store import mailboxes as m
from atollon_mail.store.errors import Conflict, IdentityRefused, Invalid, NotFound
from atollon_mail.store.models import (
    Campaign,
    DistributionGroup,
    Mailbox,
    Message,
    MessageType,
    utc_now,
)
from atollon_mail.store.records import (
    IncomingMessage,
    MailboxAccessRecord,
    MailboxRights,
    Origin,
    OutgoingMessage,
    Recipient,
    Rejection,
    StoredMessage,
)
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin


def _campaign_of_type(code: str) -> None:
    DistributionGroup.create(name="All", kind="dynamic", filter="{}", created_at=utc_now())
    campaigns.create_campaign("News", "All", "bob@example.com", "en", type_code=code)


def _incoming(*recipients: Recipient, raw: bytes = b"Subject: hi\r\n\r\nbody\r\n"):
    return IncomingMessage(
        envelope_sender="sender@elsewhere.example", recipients=recipients, raw=raw
    )


def _filed(raw: bytes) -> bytes:
    """raw as filed: the final delivery's Return-Path on top."""
    return b"Return-Path: <sender@elsewhere.example>\r\n" + raw


def _type_codes_of(message_ids) -> list[str]:
    query = (
        Message.select(MessageType.code)
        .join(MessageType)
        .where(Message.id.in_(list(message_ids)))
        .order_by(Message.id)
    )
    return [code for (code,) in query.tuples()]


def _next_uid(address: str) -> int:
    return m.get_mailbox_row(address).next_uid


class MailboxBehaviourContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def populate(self) -> None:
        """example.com: bob (bob@, robert@; alias sales -> bob@), carol (carol@), dave,
        and the admin root; other.example with bob@other.example."""
        self.sync(domains.add_domain, "example.com")
        self.sync(domains.add_domain, "other.example")
        for login in ("bob", "carol", "dave"):
            self.sync(accounts.add_user, login, f"hash-{login}")
        self.sync(accounts.add_user, "root", "hash-root", is_admin=True)
        self.sync(m.add_mailbox, "bob@example.com", "bob")
        self.sync(m.add_mailbox, "robert@example.com", "bob")
        self.sync(m.add_mailbox, "carol@example.com", "carol")
        self.sync(m.add_mailbox, "bob@other.example", "bob")
        self.sync(aliases.add_alias, "sales", "bob@example.com")

    def state(self):
        """Everything these operations could change, to show a refusal changed nothing."""
        return (
            self.sync(m.list_mailboxes),
            self.sync(aliases.list_aliases),
            [self.sync(m.mailbox_access, box.address) for box in self.sync(m.list_mailboxes)],
            self.sync(message_types.list_message_types),
        )

    def resolve(self, address: str):
        local, domain = address.split("@")
        return self.sync(filing_ops.resolve_recipient, local, domain)

    def receiving_mailbox(self, address: str) -> str:
        found = self.resolve(address)
        self.assertIsInstance(found, Recipient, address)
        return found.mailbox_address

    def deliver(self, address: str, count: int = 1) -> list[int]:
        recipient = self.resolve(address)
        self.assertIsInstance(recipient, Recipient)
        stored = self.sync(
            filing_ops.store_messages, [_incoming(recipient, raw=b"m%d" % n) for n in range(count)]
        )
        self.assertTrue(all(isinstance(s, StoredMessage) for s in stored), stored)
        return [s.id for s in stored]

    def defaults(self, owner: str) -> list[str]:
        return [
            box.address
            for box in self.sync(m.list_mailboxes)
            if box.owner_login == owner and box.is_default
        ]

    def identities(self, login: str) -> list[str]:
        return [i.mailbox_address for i in self.sync(m.sending_identities, login)]

    # -- the default box -------------------------------------------------------------------

    def test_switching_the_default_box(self):
        self.populate()
        self.assertEqual(self.defaults("bob"), ["bob@example.com"])
        switched = self.sync(m.set_default_mailbox, "Robert@Example.com")
        self.assertTrue(switched.is_default)
        self.assertEqual(self.defaults("bob"), ["robert@example.com"])
        self.assertFalse(self.sync(m.get_mailbox, "bob@example.com").is_default)
        # Another owner's default is not touched; doing it twice changes nothing.
        self.assertEqual(self.defaults("carol"), ["carol@example.com"])
        self.sync(m.set_default_mailbox, "robert@example.com")
        self.assertEqual(self.defaults("bob"), ["robert@example.com"])
        # The default box is the identity offered first.
        self.assertEqual(self.identities("bob")[0], "robert@example.com")
        self.sync(m.set_default_mailbox, "bob@other.example")
        self.assertEqual(self.defaults("bob"), ["bob@other.example"])
        self.assertEqual(self.identities("bob")[0], "bob@other.example")

    def test_default_box_refusals(self):
        self.populate()
        self.sync(m.update_mailbox, "robert@example.com", active=False)
        before = self.state()
        with self.assertRaises(Conflict) as raised:
            self.sync(m.set_default_mailbox, "robert@example.com")
        self.assertIn("--active yes", str(raised.exception))
        self.assertRaises(NotFound, self.sync, m.set_default_mailbox, "nobody@example.com")
        self.assertRaises(Invalid, self.sync, m.set_default_mailbox, "no-address")
        self.assertEqual(self.state(), before)

    @defer.inlineCallbacks
    def test_concurrent_default_switches_leave_exactly_one_default(self):
        self.populate()
        boxes = ["bob@example.com", "robert@example.com", "bob@other.example"]
        for n in range(3):
            self.sync(m.add_mailbox, f"extra{n}@example.com", "bob")
            boxes.append(f"extra{n}@example.com")
        runs = [self.store.run(m.set_default_mailbox, boxes[n % len(boxes)]) for n in range(60)]
        # Deliveries lock the same rows meanwhile: nothing may deadlock.
        bob = self.resolve("bob@example.com")
        runs += [self.store.run(filing_ops.store_messages, [_incoming(bob)]) for _ in range(20)]
        yield defer.gatherResults(runs, consumeErrors=True)
        self.assertEqual(len(self.defaults("bob")), 1)
        self.assertEqual(self.defaults("carol"), ["carol@example.com"])

    # -- options ---------------------------------------------------------------------------

    def test_identity_is_validated_as_an_address(self):
        self.populate()
        changed = self.sync(m.update_mailbox, "bob@example.com", identity="Bob.B@Example.COM")
        self.assertEqual(changed.identity, "Bob.B@example.com")
        self.assertEqual(self.sync(m.get_mailbox, "bob@example.com").identity, "Bob.B@example.com")
        # Any domain: a secondary-mode mailbox sends as the company's own address.
        self.sync(m.update_mailbox, "robert@example.com", identity="robert@company.example")
        before = self.state()
        for identity in (
            "bob",
            "bob@",
            "a b@example.com",
            ".bob@example.com",
            "bob@exa mple.com",
            "x" * 65 + "@example.com",
            "bell\x07@example.com",
        ):
            with self.subTest(identity=identity):
                self.assertRaises(
                    Invalid, self.sync, m.update_mailbox, "bob@example.com", identity=identity
                )
        self.assertEqual(self.state(), before)

    # -- who may send as what ---------------------------------------------------------------

    def assertIdentityRefused(self, message, operation, *args, **kwargs):
        before = self.state()
        with self.assertRaises(IdentityRefused) as raised:
            self.sync(operation, *args, **kwargs)
        self.assertIn(message, str(raised.exception))
        self.assertEqual(self.state(), before, "a refused identity changes nothing")

    def sends_as(self, login: str) -> list[str]:
        return [i.identity for i in self.sync(m.sending_identities, login)]

    def test_an_owner_sets_only_the_mailboxs_own_address(self):
        self.populate()
        for identity in ("ceo@bank.example", "carol@example.com", "robert@example.com"):
            with self.subTest(identity=identity):
                self.assertIdentityRefused(
                    "mailbox bob@example.com may send as bob@example.com; only an administrator "
                    f"can set another identity such as {identity}",
                    m.update_mailbox,
                    "bob@example.com",
                    identity=identity,
                    actor="bob",
                )
        # The same for someone with edit rights on it, and on its creation.
        self.sync(m.grant_mailbox_access, "bob@example.com", "dave", edit=True)
        self.assertIdentityRefused(
            "only an administrator",
            m.update_mailbox,
            "bob@example.com",
            identity="d@x.example",
            actor="dave",
        )
        self.assertIdentityRefused(
            "only an administrator",
            m.add_mailbox,
            "new@example.com",
            "bob",
            identity="ceo@bank.example",
            actor="bob",
        )
        changed = self.sync(
            m.update_mailbox, "bob@example.com", identity="Bob@Example.com", actor="bob"
        )
        self.assertEqual(changed.identity, "Bob@example.com")
        detail = self.sync(m.mailbox_detail, "bob@example.com")
        self.assertEqual(
            (detail.own_identities, detail.identity_approved, detail.identity_refusal),
            (("bob@example.com",), False, None),
        )

    def test_an_admin_sets_another_identity_which_the_owner_keeps_or_sets_back_to_own(self):
        self.populate()
        self.sync(
            m.update_mailbox, "robert@example.com", identity="info@company.example", actor="root"
        )
        detail = self.sync(m.mailbox_detail, "robert@example.com")
        self.assertEqual((detail.identity_approved, detail.identity_refusal), (True, None))
        self.assertIn("info@company.example", self.sends_as("bob"))
        # The owner's page sends the identity back with every change: kept, still approved.
        self.sync(
            m.update_mailbox,
            "robert@example.com",
            identity="Info@company.example",
            signature="Robert",
            actor="bob",
        )
        detail = self.sync(m.mailbox_detail, "robert@example.com")
        self.assertEqual(
            (detail.mailbox.identity, detail.identity_approved), ("Info@company.example", True)
        )
        self.assertIn("Info@company.example", self.sends_as("bob"))
        self.assertIdentityRefused(
            "an administrator set Info@company.example as the identity of "
            "robert@example.com; ask an administrator to change it",
            m.update_mailbox,
            "robert@example.com",
            identity="other@company.example",
            actor="bob",
        )
        # Back to the mailbox's own address the owner may go; the approval is gone, and
        # the administrator's identity cannot be set again by the owner.
        self.sync(
            m.update_mailbox, "robert@example.com", identity="Robert@example.com", actor="bob"
        )
        detail = self.sync(m.mailbox_detail, "robert@example.com")
        self.assertEqual(
            (detail.mailbox.identity, detail.identity_approved), ("Robert@example.com", False)
        )
        self.assertIdentityRefused(
            "only an administrator can set another identity such as info@company.example",
            m.update_mailbox,
            "robert@example.com",
            identity="info@company.example",
            actor="bob",
        )
        # The command line is the appliance's administrator.
        self.sync(m.update_mailbox, "robert@example.com", identity="ceo@company.example")
        self.assertTrue(self.sync(m.mailbox_detail, "robert@example.com").identity_approved)
        # An admin's own alias of the mailbox is fine: it is no other mailbox's.
        self.sync(m.update_mailbox, "bob@example.com", identity="sales@example.com", actor="root")
        self.assertIn("sales@example.com", self.sends_as("bob"))

    def test_another_mailboxs_address_alias_or_identity_is_refused_to_everyone(self):
        self.populate()
        self.sync(m.update_mailbox, "robert@example.com", identity="info@company.example")
        for identity, message in (
            ("Bob@example.com", "another mailbox, bob@example.com, receives at Bob@example.com"),
            ("bob+news@example.com", "bob@example.com, receives at bob+news@example.com"),
            ("sales@example.com", "bob@example.com, receives at sales@example.com (an alias)"),
            (
                "INFO@company.example",
                "another mailbox, robert@example.com, sends as INFO@company.example already",
            ),
        ):
            # The command line, an admin user, and the owner (who may not anyway).
            for actor in (None, "root", "carol"):
                with self.subTest(identity=identity, actor=actor):
                    self.assertIdentityRefused(
                        "only an administrator" if actor == "carol" else message,
                        m.update_mailbox,
                        "carol@example.com",
                        identity=identity,
                        actor=actor,
                    )
            self.assertIdentityRefused(
                message, m.add_mailbox, "new@example.com", "carol", identity=identity
            )

    def test_a_stored_identity_that_no_longer_passes_is_not_offered(self):
        self.populate()
        # Stored before the rule (no approval): refused, and said so.
        self.sync(
            lambda: (
                Mailbox.update(identity="ceo@bank.example")
                .where(Mailbox.local_part == "carol")
                .execute()
            )
        )
        self.assertEqual(self.sends_as("carol"), [])
        refusal = self.sync(m.identity_refusal, "carol@example.com")
        self.assertIn(
            "only an administrator can set another identity such as ceo@bank.example", refusal
        )
        self.assertEqual(self.sync(m.mailbox_detail, "carol@example.com").identity_refusal, refusal)
        # Approved by an admin, then another mailbox's address or alias since.
        self.sync(m.update_mailbox, "carol@example.com", identity="desk@example.com", actor="root")
        self.sync(
            m.update_mailbox, "robert@example.com", identity="info@other.example", actor="root"
        )
        self.assertEqual(self.sends_as("carol"), ["desk@example.com"])
        self.assertIn("info@other.example", self.sends_as("bob"))
        self.sync(m.add_mailbox, "desk@example.com", "dave")
        self.sync(aliases.add_alias, "info", "bob@other.example")
        self.assertEqual(self.sends_as("carol"), [])
        self.assertNotIn("info@other.example", self.sends_as("bob"))
        self.assertIn(
            "another mailbox, desk@example.com, receives at desk@example.com",
            self.sync(m.identity_refusal, "carol@example.com"),
        )
        # Its own address always passes, whoever else claims it.
        self.assertEqual(self.sends_as("dave"), ["desk@example.com"])

    def test_secondary_mailboxes_send_as_the_company_address(self):
        self.populate()
        self.sync(
            domains.add_domain, "company.atollon.test", "secondary", primary_domain="company.test"
        )
        box = self.sync(m.add_mailbox, "thomas@company.atollon.test", "carol")
        self.assertEqual(box.identity, "thomas@company.test")
        detail = self.sync(m.mailbox_detail, box.address)
        self.assertEqual(
            (detail.own_identities, detail.identity_approved),
            (("thomas@company.atollon.test", "thomas@company.test"), False),
        )
        # Its owner may switch between the two, and no further.
        self.sync(
            m.update_mailbox, box.address, identity="thomas@company.atollon.test", actor="carol"
        )
        self.sync(m.update_mailbox, box.address, identity="Thomas@company.test", actor="carol")
        self.assertIn("Thomas@company.test", self.sends_as("carol"))
        self.assertIdentityRefused(
            "only an administrator",
            m.update_mailbox,
            box.address,
            identity="ceo@company.test",
            actor="carol",
        )
        # A second hosted domain of the same company: thomas@company.test is taken.
        self.sync(
            domains.add_domain, "company2.atollon.test", "secondary", primary_domain="company.test"
        )
        self.assertIdentityRefused(
            "another mailbox, thomas@company.atollon.test, sends as thomas@company.test "
            "already; choose another identity",
            m.add_mailbox,
            "thomas@company2.atollon.test",
            "dave",
        )
        other = self.sync(
            m.add_mailbox,
            "thomas@company2.atollon.test",
            "dave",
            identity="thomas@company2.atollon.test",
            actor="dave",
        )
        self.assertEqual(other.identity, "thomas@company2.atollon.test")

    def test_signature(self):
        self.populate()
        changed = self.sync(
            m.update_mailbox, "bob@example.com", signature="\r\n-- \r\nBob\r\nSales\r\n"
        )
        self.assertEqual(changed.signature, "-- \nBob\nSales")
        longest = "s" * m.SIGNATURE_LIMIT
        self.assertEqual(
            self.sync(m.update_mailbox, "bob@example.com", signature=longest).signature, longest
        )
        before = self.state()
        for signature in (longest + "s", "nul\x00byte", "escape\x1b[31m"):
            with self.subTest(signature=signature[:12]):
                self.assertRaises(
                    Invalid, self.sync, m.update_mailbox, "bob@example.com", signature=signature
                )
        self.assertEqual(self.state(), before)
        self.assertEqual(self.sync(m.update_mailbox, "bob@example.com", signature="").signature, "")

    def test_store_to_todo_or_a_folder_or_project(self):
        self.populate()
        folder = self.sync(contexts.add_context, "folder", "Support")
        project = self.sync(contexts.add_context, "project", "Launch")
        changed = self.sync(m.update_mailbox, "bob@example.com", store_to=folder.id)
        self.assertEqual(changed.store_to, folder)
        [first] = self.deliver("bob@example.com")
        [filing] = self.sync(filing_ops.list_filings, "bob@example.com")
        self.assertEqual((filing.message.id, filing.context), (first, folder))
        self.assertEqual(
            self.sync(m.update_mailbox, "bob@example.com", store_to=str(project.id)).store_to,
            project,
        )
        back = self.sync(m.update_mailbox, "bob@example.com", store_to="TODO")
        self.assertEqual((back.store_to.kind, back.store_to.owner_login), ("todo", "bob"))
        self.deliver("bob@example.com")
        self.assertEqual(
            self.sync(filing_ops.list_filings, "bob@example.com")[0].context.kind, "todo"
        )
        # The owner's own To Do by id is the same as "todo"; another user's is refused.
        todos = {c.owner_login: c for c in self.sync(contexts.list_contexts) if c.kind == "todo"}
        self.sync(m.update_mailbox, "bob@example.com", store_to=folder.id)
        self.assertEqual(
            self.sync(m.update_mailbox, "bob@example.com", store_to=todos["bob"].id).store_to,
            todos["bob"],
        )
        # Another user's folder or project (private, a Sent folder) is refused.
        carols = self.sync(contexts.add_context, "folder", "Sent (carol@example.com)", "carol")
        plan = self.sync(contexts.add_context, "project", "Carol's plan", "carol")
        before = self.state()
        for store_to, error in (
            (todos["carol"].id, Invalid),
            (carols.id, Invalid),
            (str(plan.id), Invalid),
            (10**9, NotFound),
            ("inbox", Invalid),
            (True, Invalid),
            (1.5, Invalid),
        ):
            with self.subTest(store_to=store_to):
                self.assertRaises(
                    error, self.sync, m.update_mailbox, "bob@example.com", store_to=store_to
                )
        self.assertEqual(self.state(), before)

    def test_store_targets_are_the_owners_contexts_and_those_of_no_user(self):
        self.populate()
        offers = self.sync(contexts.add_context, "folder", "Offers")
        launch = self.sync(contexts.add_context, "project", "Launch")
        archive = self.sync(contexts.add_context, "folder", "Archive", "bob")
        carols = self.sync(contexts.add_context, "folder", "Carol's own", "carol")
        self.sync(contexts.add_context, "project", "Carol's plan", "carol")
        # A new mailbox too: not into another user's folder.
        self.assertRaises(
            Invalid, self.sync, m.add_mailbox, "new@example.com", "bob", None, True, carols.id
        )
        new = self.sync(m.add_mailbox, "new@example.com", "bob", None, True, archive.id)
        self.assertEqual(new.store_to, archive)
        self.assertEqual(self.sync(m.store_targets, "bob@example.com"), [offers, launch, archive])
        for target in (offers, launch, archive):
            changed = self.sync(m.update_mailbox, "bob@example.com", store_to=target.id)
            self.assertEqual(changed.store_to, target)

    def test_inactive_mailbox_keeps_its_mail_and_refuses_new_mail(self):
        self.populate()
        ids = self.deliver("bob@example.com", 2)
        self.assertFalse(self.sync(m.update_mailbox, "bob@example.com", active=False).active)
        for address in ("bob@example.com", "bob+tag@example.com", "sales@example.com"):
            with self.subTest(address=address):
                found = self.resolve(address)
                self.assertIsInstance(found, Rejection)
                self.assertEqual(found.reason, "inactive-mailbox")
        self.assertEqual(
            [f.message.id for f in self.sync(filing_ops.list_filings, "bob@example.com")], ids[::-1]
        )
        self.assertEqual(self.sync(filing_ops.message_raw, ids[0]), _filed(b"m0"))
        self.assertNotIn("bob@example.com", self.identities("bob"))
        self.assertTrue(self.sync(m.update_mailbox, "bob@example.com", active=True).active)
        self.assertEqual(self.receiving_mailbox("sales@example.com"), "bob@example.com")

    def test_update_without_changes_and_unknown_mailbox(self):
        self.populate()
        before = self.sync(m.get_mailbox, "bob@example.com")
        self.assertEqual(self.sync(m.update_mailbox, "bob@example.com"), before)
        self.assertRaises(NotFound, self.sync, m.update_mailbox, "no@example.com", active=True)

    @defer.inlineCallbacks
    def test_updates_racing_deliveries_keep_every_message_and_uid(self):
        # An update writes only what it changes: the mail counter moved by concurrent
        # deliveries is never written back stale.
        self.populate()
        bob = self.resolve("bob@example.com")
        runs = []
        for n in range(30):
            runs.append(self.store.run(filing_ops.store_messages, [_incoming(bob, raw=b"%d" % n)]))
            runs.append(self.store.run(m.update_mailbox, "bob@example.com", signature=f"v{n}"))
        results = yield defer.gatherResults(runs, consumeErrors=True)
        stored = [r for r in results if isinstance(r, list)]
        self.assertTrue(all(isinstance(s, StoredMessage) for [s] in stored), stored)
        uids = sorted(f.uid for f in self.sync(filing_ops.list_filings, "bob@example.com", 1000))
        self.assertEqual(uids, list(range(1, 31)))
        self.assertEqual(self.sync(_next_uid, "bob@example.com"), 31)

    # -- aliases ---------------------------------------------------------------------------

    def test_alias_by_bare_name_or_in_the_mailbox_domain(self):
        self.populate()
        bare = self.sync(aliases.add_alias, " Info ", "bob@example.com")
        self.assertEqual(
            (bare.address, bare.mailbox_address), ("info@example.com", "bob@example.com")
        )
        full = self.sync(aliases.add_alias, "Help@Example.COM.", "carol@example.com")
        self.assertEqual(full.address, "help@example.com")
        other = self.sync(aliases.add_alias, "info", "bob@other.example")
        self.assertEqual(other.address, "info@other.example")
        self.assertEqual(self.receiving_mailbox("info@example.com"), "bob@example.com")
        self.assertEqual(self.receiving_mailbox("info@other.example"), "bob@other.example")

    def test_alias_in_another_domain_is_refused(self):
        self.populate()
        before = self.state()
        with self.assertRaises(Invalid) as raised:
            self.sync(aliases.add_alias, "info@other.example", "bob@example.com")
        message = str(raised.exception)
        self.assertIn("aliases are always in the mailbox's domain; give just the name", message)
        self.assertIn("info@example.com", message)
        self.assertRaises(
            Invalid, self.sync, aliases.add_alias, "info@nowhere.example", "bob@example.com"
        )
        self.assertEqual(self.state(), before)

    def test_alias_never_shares_a_name_in_its_domain(self):
        self.populate()
        self.sync(m.update_mailbox, "robert@example.com", active=False)
        before = self.state()
        for name in ("carol", "CAROL@example.com", "Robert", "SALES", "bob", "sales@example.com"):
            with self.subTest(name=name):
                self.assertRaises(Conflict, self.sync, aliases.add_alias, name, "carol@example.com")
        for name, error in (("x+y", Invalid), ("a b", Invalid), ("", Invalid), ("@x", Invalid)):
            with self.subTest(name=name):
                self.assertRaises(error, self.sync, aliases.add_alias, name, "carol@example.com")
        self.assertRaises(NotFound, self.sync, aliases.add_alias, "x", "nobody@example.com")
        self.assertEqual(self.state(), before)
        # The same name in another domain is another address.
        self.sync(aliases.add_alias, "carol", "bob@other.example")

    def test_remove_alias(self):
        self.populate()
        removed = self.sync(aliases.remove_alias, "SALES@example.com")
        self.assertEqual(
            (removed.address, removed.mailbox_address), ("sales@example.com", "bob@example.com")
        )
        self.assertEqual(self.sync(aliases.list_aliases), [])
        self.assertEqual(self.resolve("sales@example.com").reason, "unknown-address")
        for address in ("sales@example.com", "bob@example.com", "sales@other.example"):
            with self.subTest(address=address):
                self.assertRaises(NotFound, self.sync, aliases.remove_alias, address)
        self.assertRaises(Invalid, self.sync, aliases.remove_alias, "sales")

    def test_an_alias_is_never_an_identity_to_send_as(self):
        self.populate()
        self.sync(aliases.add_alias, "info", "bob@example.com")
        addresses = {i.identity for i in self.sync(m.sending_identities, "bob")}
        addresses |= {i.mailbox_address for i in self.sync(m.sending_identities, "bob")}
        self.assertEqual(addresses, {"bob@example.com", "robert@example.com", "bob@other.example"})
        # Nor after a redirect made the old address an alias of the new mailbox.
        self.sync(m.redirect_mailbox, "carol@example.com", "robert@example.com")
        self.assertNotIn("carol@example.com", self.identities("bob"))
        self.assertEqual(self.identities("carol"), [])

    # -- redirecting an address --------------------------------------------------------------

    def redirect_setup(self):
        self.populate()
        self.sync(aliases.add_alias, "info", "carol@example.com")
        self.sync(aliases.add_alias, "help", "carol@example.com")
        return self.deliver("carol@example.com", 3)

    def test_redirect_moves_the_address_and_its_aliases(self):
        ids = self.redirect_setup()
        preview = self.sync(m.preview_redirect, "Carol@example.com", "robert@example.com")
        result = self.sync(m.redirect_mailbox, "carol@example.com", "ROBERT@example.com")
        self.assertEqual(result, preview)
        self.assertEqual(result.old_address, "carol@example.com")
        self.assertEqual(result.new_address, "robert@example.com")
        self.assertEqual(
            result.aliases_added, ("carol@example.com", "help@example.com", "info@example.com")
        )
        self.assertTrue(result.old_was_active)
        old = self.sync(m.get_mailbox, "carol@example.com")
        self.assertEqual((old.active, old.aliases), (False, ()))
        self.assertEqual(
            self.sync(m.get_mailbox, "robert@example.com").aliases, result.aliases_added
        )
        for address in (
            "carol@example.com",
            "CAROL+news@example.com",
            "info@example.com",
            "help+x@example.com",
        ):
            with self.subTest(address=address):
                self.assertEqual(self.receiving_mailbox(address), "robert@example.com")
        # New mail to the old address lands in the new mailbox; the old mail stays readable.
        [new_id] = self.deliver("carol@example.com")
        self.assertEqual(
            [f.message.id for f in self.sync(filing_ops.list_filings, "robert@example.com")],
            [new_id],
        )
        self.assertEqual(
            [f.message.id for f in self.sync(filing_ops.list_filings, "carol@example.com")],
            ids[::-1],
        )
        self.assertEqual(self.sync(filing_ops.message_raw, ids[1]), _filed(b"m1"))
        detail = self.sync(m.mailbox_detail, "carol@example.com")
        self.assertEqual(detail.redirected_to, "robert@example.com")
        # The old name cannot be taken again, nor the old mailbox reactivated over it.
        self.assertRaises(Conflict, self.sync, aliases.add_alias, "carol", "bob@example.com")
        self.assertRaises(Conflict, self.sync, m.add_mailbox, "carol@example.com", "dave")
        before = self.state()
        with self.assertRaises(Conflict) as raised:
            self.sync(m.update_mailbox, "carol@example.com", active=True)
        self.assertIn("alias remove carol@example.com", str(raised.exception))
        self.assertEqual(self.state(), before)
        # Undoing it by hand: the alias removed, the mailbox active again.
        self.sync(aliases.remove_alias, "carol@example.com")
        self.sync(m.update_mailbox, "carol@example.com", active=True)
        self.assertEqual(self.receiving_mailbox("carol@example.com"), "carol@example.com")

    def test_preview_changes_nothing(self):
        self.redirect_setup()
        before = self.state()
        preview = self.sync(m.preview_redirect, "carol@example.com", "robert@example.com")
        self.assertEqual(preview.aliases_added[0], "carol@example.com")
        self.assertEqual(self.state(), before)
        self.assertEqual(self.receiving_mailbox("carol@example.com"), "carol@example.com")

    def test_redirect_of_a_mailbox_already_made_inactive(self):
        # The seed's first manual step done by hand: the rest still follows.
        self.redirect_setup()
        self.sync(m.update_mailbox, "carol@example.com", active=False)
        result = self.sync(m.redirect_mailbox, "carol@example.com", "robert@example.com")
        self.assertFalse(result.old_was_active)
        self.assertEqual(self.receiving_mailbox("info@example.com"), "robert@example.com")

    def test_redirect_refusals_change_nothing(self):
        self.redirect_setup()
        self.sync(m.add_mailbox, "ann@example.com", "dave", active=False)
        self.sync(m.add_mailbox, "old@example.com", "dave")
        self.sync(m.add_mailbox, "older@example.com", "dave")
        self.sync(m.redirect_mailbox, "older@example.com", "old@example.com")
        # Someone took the old name by hand before: it is an alias of another mailbox.
        self.sync(m.update_mailbox, "bob@example.com", active=False)
        self.sync(aliases.remove_alias, "sales@example.com")
        before = self.state()
        for old, new, error, words in (
            ("carol@example.com", "carol@example.com", Invalid, "to itself"),
            ("carol@example.com", "bob@other.example", Invalid, "only be redirected"),
            ("bob@other.example", "carol@example.com", Invalid, "only be redirected"),
            ("carol@example.com", "ann@example.com", Conflict, "ann@example.com is inactive"),
            ("carol@example.com", "bob@example.com", Conflict, "bob@example.com is inactive"),
            ("older@example.com", "robert@example.com", Conflict, "is an alias of"),
            ("nobody@example.com", "robert@example.com", NotFound, "no mailbox"),
            ("carol@example.com", "nobody@example.com", NotFound, "no mailbox"),
            ("carol", "robert@example.com", Invalid, "not an address"),
        ):
            for operation in (m.redirect_mailbox, m.preview_redirect):
                with self.subTest(old=old, new=new, operation=operation.__name__):
                    with self.assertRaises(error) as raised:
                        self.sync(operation, old, new)
                    self.assertIn(words, str(raised.exception))
        self.assertEqual(self.state(), before)
        self.assertEqual(self.receiving_mailbox("info@example.com"), "carol@example.com")

    def test_redirects_chain(self):
        self.redirect_setup()
        self.sync(m.redirect_mailbox, "carol@example.com", "robert@example.com")
        result = self.sync(m.redirect_mailbox, "robert@example.com", "bob@example.com")
        self.assertEqual(
            result.aliases_added,
            (
                "robert@example.com",
                "carol@example.com",
                "help@example.com",
                "info@example.com",
            ),
        )
        for address in ("carol@example.com", "robert@example.com", "info@example.com"):
            with self.subTest(address=address):
                self.assertEqual(self.receiving_mailbox(address), "bob@example.com")

    @defer.inlineCallbacks
    def test_crossed_concurrent_redirects_one_wins(self):
        # OLD to NEW and NEW to OLD at once: both would leave both mailboxes inactive.
        self.populate()
        pairs = 6
        for n in range(pairs):
            self.sync(m.add_mailbox, f"a{n}@example.com", "dave")
            self.sync(m.add_mailbox, f"b{n}@example.com", "dave")
        runs = []
        for n in range(pairs):
            runs.append(
                self.store.run(m.redirect_mailbox, f"a{n}@example.com", f"b{n}@example.com")
            )
            runs.append(
                self.store.run(m.redirect_mailbox, f"b{n}@example.com", f"a{n}@example.com")
            )
        outcomes = yield defer.DeferredList(runs, consumeErrors=True)
        failures = [result.value for ok, result in outcomes if not ok]
        self.assertEqual(len(failures), pairs)
        self.assertTrue(all(isinstance(f, Conflict) for f in failures), failures)
        for n in range(pairs):
            a, b = f"a{n}@example.com", f"b{n}@example.com"
            active = [box.active for box in (self.sync(m.get_mailbox, x) for x in (a, b))]
            self.assertEqual(sorted(active), [False, True])
            self.assertEqual(self.receiving_mailbox(a), self.receiving_mailbox(b))

    # -- access rights -----------------------------------------------------------------------

    def test_grant_and_revoke(self):
        self.populate()
        viewed = self.sync(m.grant_mailbox_access, "bob@example.com", "Carol", view=True)
        self.assertEqual(viewed, MailboxAccessRecord("bob@example.com", "carol", True, False))
        # Edit implies view.
        edited = self.sync(m.grant_mailbox_access, "bob@example.com", "dave", False, True)
        self.assertEqual((edited.view, edited.edit), (True, True))
        self.assertEqual(
            self.sync(m.mailbox_access, "BOB@example.com"),
            [
                MailboxAccessRecord("bob@example.com", "carol", True, False),
                MailboxAccessRecord("bob@example.com", "dave", True, True),
            ],
        )
        rights = {
            login: self.sync(m.user_rights, login, "bob@example.com")
            for login in ("bob", "carol", "dave", "root")
        }
        self.assertEqual(
            rights,
            {
                "bob": MailboxRights(True, True),
                "carol": MailboxRights(True, False),
                "dave": MailboxRights(True, True),
                "root": MailboxRights(True, True),
            },
        )
        self.assertEqual(
            self.sync(m.user_rights, "carol", "robert@example.com"), MailboxRights(False, False)
        )
        # A second grant changes the first instead of adding another.
        self.sync(m.grant_mailbox_access, "bob@example.com", "carol", True, True)
        self.assertEqual(len(self.sync(m.mailbox_access, "bob@example.com")), 2)
        self.assertEqual(
            self.sync(m.user_rights, "carol", "bob@example.com"), MailboxRights(True, True)
        )
        self.sync(m.grant_mailbox_access, "bob@example.com", "carol", True, False)
        self.assertEqual(
            self.sync(m.user_rights, "carol", "bob@example.com"), MailboxRights(True, False)
        )
        revoked = self.sync(m.revoke_mailbox_access, "bob@example.com", "dave")
        self.assertEqual(revoked, MailboxAccessRecord("bob@example.com", "dave", True, True))
        self.assertEqual(
            self.sync(m.user_rights, "dave", "bob@example.com"), MailboxRights(False, False)
        )
        self.assertEqual(
            [a.login for a in self.sync(m.mailbox_detail, "bob@example.com").access], ["carol"]
        )

    def test_access_refusals(self):
        self.populate()
        self.sync(m.grant_mailbox_access, "bob@example.com", "carol")
        before = self.state()
        for operation, args, error, words in (
            (m.grant_mailbox_access, ("bob@example.com", "bob", True, True), Invalid, "owns"),
            (m.grant_mailbox_access, ("bob@example.com", "dave", False, False), Invalid, "revoke"),
            (m.grant_mailbox_access, ("bob@example.com", "nobody"), NotFound, "no user"),
            (m.grant_mailbox_access, ("no@example.com", "dave"), NotFound, "no mailbox"),
            (m.revoke_mailbox_access, ("bob@example.com", "bob"), Invalid, "owns"),
            (m.revoke_mailbox_access, ("bob@example.com", "dave"), NotFound, "no rights"),
            (m.revoke_mailbox_access, ("robert@example.com", "carol"), NotFound, "no rights"),
            (m.user_rights, ("nobody", "bob@example.com"), NotFound, "no user"),
            (m.user_rights, ("bob", "no@example.com"), NotFound, "no mailbox"),
            (m.mailbox_access, ("no@example.com",), NotFound, "no mailbox"),
        ):
            with self.subTest(operation=operation.__name__, args=args):
                with self.assertRaises(error) as raised:
                    self.sync(operation, *args)
                self.assertIn(words, str(raised.exception))
        self.assertEqual(self.state(), before)

    def test_edit_rights_let_a_user_send_view_rights_do_not(self):
        self.populate()
        self.assertEqual(self.identities("dave"), [])
        self.sync(m.grant_mailbox_access, "bob@example.com", "carol", view=True)
        self.sync(m.grant_mailbox_access, "robert@example.com", "dave", edit=True)
        self.sync(m.grant_mailbox_access, "bob@example.com", "dave", edit=True)
        self.assertEqual(self.identities("carol"), ["carol@example.com"])
        # Carol's own default first; bob's default is not dave's.
        self.assertEqual(self.identities("dave"), ["bob@example.com", "robert@example.com"])
        self.sync(m.grant_mailbox_access, "carol@example.com", "dave", edit=True)
        self.sync(m.add_mailbox, "dave@example.com", "dave")
        self.assertEqual(
            self.identities("dave"),
            ["dave@example.com", "bob@example.com", "carol@example.com", "robert@example.com"],
        )
        # Only active mailboxes; the grant of another user adds nothing to anyone else.
        self.sync(m.update_mailbox, "robert@example.com", active=False)
        self.assertNotIn("robert@example.com", self.identities("dave"))
        self.assertEqual(len(self.identities("carol")), 1)
        self.sync(m.revoke_mailbox_access, "bob@example.com", "dave")
        self.assertEqual(self.identities("dave"), ["dave@example.com", "carol@example.com"])
        # An admin may see and change every mailbox, but sends only as what is granted.
        self.assertEqual(self.identities("root"), [])
        # The identity offered is the mailbox's identity.
        self.sync(m.update_mailbox, "carol@example.com", identity="office@company.example")
        carol = [
            i
            for i in self.sync(m.sending_identities, "dave")
            if i.mailbox_address == "carol@example.com"
        ]
        self.assertEqual([i.identity for i in carol], ["office@company.example"])

    # -- message types -----------------------------------------------------------------------

    def types(self) -> dict:
        return {t.code: t for t in self.sync(message_types.list_message_types)}

    def test_default_message_types(self):
        found = self.types()
        self.assertEqual(sorted(found), ["email-in", "email-out"])
        self.assertEqual(
            [(t.default_incoming, t.default_outgoing, t.active) for t in found.values()],
            [(True, False, True), (False, True, True)],
        )

    def test_add_and_update_message_types(self):
        fax = self.sync(message_types.add_message_type, " Fax ", "FAX-1", "Scanned faxes")
        self.assertEqual(
            (fax.code, fax.name, fax.description, fax.active),
            ("fax-1", "Fax", "Scanned faxes", True),
        )
        self.assertFalse(fax.default_incoming or fax.default_outgoing)
        memo = self.sync(message_types.add_message_type, "Memo", "memo", active=False)
        self.assertFalse(memo.active)
        self.assertEqual(list(self.types()), ["email-in", "email-out", "fax-1", "memo"])
        changed = self.sync(
            message_types.update_message_type,
            "memo",
            name="Memo 2",
            description="Inside",
            active=True,
        )
        self.assertEqual(
            (changed.name, changed.description, changed.active), ("Memo 2", "Inside", True)
        )
        self.assertEqual(self.types()["memo"], changed)
        before = self.state()
        for args, kwargs, error in (
            (("Fax", "fax-1"), {}, Conflict),
            (("Fax", "FAX-1"), {}, Conflict),
            (("", "x"), {}, Invalid),
            (("n" * 101, "x"), {}, Invalid),
            (("X", "x y"), {}, Invalid),
            (("X", "-x"), {}, Invalid),
            (("X", "x_y"), {}, Invalid),
            (("X", "x" * 33), {}, Invalid),
            (("X", ""), {}, Invalid),
            (("X", "x"), {"description": "d" * 2001}, Invalid),
        ):
            with self.subTest(args=args):
                self.assertRaises(error, self.sync, message_types.add_message_type, *args, **kwargs)
        self.assertRaises(NotFound, self.sync, message_types.update_message_type, "nope", name="X")
        self.assertRaises(Invalid, self.sync, message_types.update_message_type, "memo", name=" ")
        self.assertEqual(self.state(), before)

    def test_switching_the_default_types(self):
        self.sync(message_types.add_message_type, "Fax", "fax")
        switched = self.sync(message_types.update_message_type, "fax", default_incoming=True)
        self.assertTrue(switched.default_incoming)
        found = self.types()
        self.assertEqual([c for c, t in found.items() if t.default_incoming], ["fax"])
        self.assertEqual([c for c, t in found.items() if t.default_outgoing], ["email-out"])
        self.sync(message_types.update_message_type, "fax", default_outgoing=True)
        self.assertEqual([c for c, t in self.types().items() if t.default_outgoing], ["fax"])
        # New mail gets the new defaults.
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash")
        self.sync(m.add_mailbox, "bob@example.com", "bob")
        ids = self.deliver("bob@example.com", 2)
        self.sync(message_types.update_message_type, "email-in", default_incoming=True)
        ids += self.deliver("bob@example.com")
        self.assertEqual(self.sync(_type_codes_of, ids), ["fax", "fax", "email-in"])
        bob = self.sync(m.get_mailbox, "bob@example.com")
        [sent] = self.sync(
            queue.submit_messages,
            [
                (
                    OutgoingMessage(
                        envelope_sender="bob@example.com",
                        raw=b"x",
                        remote_recipients=("a@b.example",),
                        sent_mailbox_id=bob.id,
                    ),
                    Origin("submission", mailbox_id=bob.id),
                )
            ],
        )
        self.assertEqual(self.sync(_type_codes_of, [sent.id]), ["fax"])

    def test_default_type_refusals(self):
        self.sync(message_types.add_message_type, "Memo", "memo", active=False)
        before = self.state()
        for code, kwargs, words in (
            ("memo", {"default_incoming": True}, "memo is inactive"),
            ("memo", {"default_outgoing": True}, "memo is inactive"),
            ("email-in", {"default_incoming": False}, "make another type the default"),
            ("email-in", {"active": False}, "must stay active"),
            ("email-out", {"active": False}, "--default-outgoing"),
        ):
            with self.subTest(code=code, kwargs=kwargs):
                with self.assertRaises(Conflict) as raised:
                    self.sync(message_types.update_message_type, code, **kwargs)
                self.assertIn(words, str(raised.exception))
        self.assertEqual(self.state(), before)
        # Activated in the same change, it may become the default; False on a type that
        # is not the default changes nothing.
        memo = self.sync(
            message_types.update_message_type, "memo", active=True, default_incoming=True
        )
        self.assertTrue(memo.default_incoming)
        self.assertFalse(
            self.sync(
                message_types.update_message_type, "email-in", default_incoming=False
            ).default_incoming
        )

    def test_delete_message_type(self):
        self.sync(message_types.add_message_type, "Fax", "fax")
        self.sync(message_types.add_message_type, "Memo", "memo")
        deleted = self.sync(message_types.delete_message_type, "MEMO")
        self.assertEqual(
            (deleted.code, deleted.reassigned, deleted.reassigned_to), ("memo", 0, None)
        )
        self.assertEqual(list(self.types()), ["email-in", "email-out", "fax"])
        self.assertRaises(NotFound, self.sync, message_types.delete_message_type, "memo")

    def test_delete_a_type_in_use_needs_a_type_to_move_its_messages_to(self):
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash")
        self.sync(m.add_mailbox, "bob@example.com", "bob")
        self.sync(message_types.add_message_type, "Fax", "fax")
        self.sync(message_types.add_message_type, "Letter", "letter")
        self.sync(message_types.update_message_type, "fax", default_incoming=True)
        faxes = self.deliver("bob@example.com", 3)
        self.sync(message_types.update_message_type, "email-in", default_incoming=True)
        others = self.deliver("bob@example.com")
        before = self.state()
        with self.assertRaises(Conflict) as raised:
            self.sync(message_types.delete_message_type, "fax")
        self.assertEqual(
            str(raised.exception),
            "3 archived messages have type fax and would change type; say which type they get "
            "instead: --reassign-to CODE (see: message-type list)",
        )
        self.assertRaises(
            Invalid, self.sync, message_types.delete_message_type, "fax", reassign_to="fax"
        )
        self.assertRaises(
            NotFound, self.sync, message_types.delete_message_type, "fax", reassign_to="nope"
        )
        self.assertEqual(self.state(), before)
        self.assertEqual(self.sync(_type_codes_of, faxes), ["fax"] * 3)
        deleted = self.sync(message_types.delete_message_type, "fax", reassign_to="Letter")
        self.assertEqual((deleted.reassigned, deleted.reassigned_to), (3, "letter"))
        self.assertNotIn("fax", self.types())
        self.assertEqual(self.sync(_type_codes_of, faxes + others), ["letter"] * 3 + ["email-in"])
        self.assertEqual(self.sync(filing_ops.message_raw, faxes[0]), _filed(b"m0"))

    def test_a_type_a_campaign_uses_moves_with_it_or_stays(self):
        self.sync(domains.add_domain, "example.com")
        self.sync(accounts.add_user, "bob", "hash")
        self.sync(m.add_mailbox, "bob@example.com", "bob")
        self.sync(message_types.add_message_type, "Newsletter", "newsletter")
        self.sync(message_types.add_message_type, "Letter", "letter")
        self.sync(_campaign_of_type, "newsletter")
        with self.assertRaises(Conflict) as raised:
            self.sync(message_types.delete_message_type, "newsletter")
        self.assertEqual(
            str(raised.exception),
            "1 campaign has type newsletter and would change type; say which type they get "
            "instead: --reassign-to CODE (see: message-type list)",
        )
        self.sync(message_types.delete_message_type, "newsletter", reassign_to="letter")
        self.assertEqual(self.sync(lambda: Campaign.get().type.code), "letter")

    def test_a_default_type_is_never_deleted(self):
        self.sync(message_types.add_message_type, "Fax", "fax")
        before = self.state()
        for code, words in (
            ("email-in", "default type for incoming mail"),
            ("email-out", "default type for outgoing mail"),
        ):
            for reassign_to in (None, "fax"):
                with self.subTest(code=code, reassign_to=reassign_to):
                    with self.assertRaises(Conflict) as raised:
                        self.sync(message_types.delete_message_type, code, reassign_to)
                    self.assertIn(words, str(raised.exception))
                    self.assertIn("make another type the default first", str(raised.exception))
        self.assertEqual(self.state(), before)

    @defer.inlineCallbacks
    def test_concurrent_default_type_switches_leave_one_default_each(self):
        codes = [f"t{n}" for n in range(5)]
        for code in codes:
            self.sync(message_types.add_message_type, code.upper(), code)
        runs = []
        for n in range(40):
            field = "default_incoming" if n % 2 else "default_outgoing"
            runs.append(
                self.store.run(message_types.update_message_type, codes[n % 5], **{field: True})
            )
        yield defer.gatherResults(runs, consumeErrors=True)
        found = self.types().values()
        self.assertEqual(len([t for t in found if t.default_incoming]), 1)
        self.assertEqual(len([t for t in found if t.default_outgoing]), 1)


class SqliteMailboxBehaviourTests(SqliteStoreMixin, MailboxBehaviourContract, unittest.TestCase):
    pass


class PostgresMailboxBehaviourTests(
    PostgresStoreMixin, MailboxBehaviourContract, unittest.TestCase
):
    pass
