"""Forwarding in the store, written once and run on SQLite and on PostgreSQL."""

from __future__ import annotations

from twisted.trial import unittest

from atollon_mail.passwords import hash_password
from atollon_mail.store import filing, mailboxes
from atollon_mail.store import forwarding as f
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.records import ForwardingRecord, Recipient
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

# joe's mailboxes, at two domains.
JOES_MAILBOXES = ("joe@acme.test", "ann@acme.test", "bob@acme.test", "eve@other.test")


class ForwardingContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailboxes(self.store, JOES_MAILBOXES, "joe", hash_password("x"))
        builders.alias(self.store, "sales@acme.test", "joe@acme.test")

    def op(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def resolve(self, address: str) -> Recipient:
        found = self.op(filing.resolve_recipient, *address.split("@"))
        self.assertIsInstance(found, Recipient)
        return found

    # -- settings and targets ----------------------------------------------------------------

    def test_a_new_mailbox_does_not_forward_and_keeps_a_copy(self):
        self.assertEqual(
            self.op(f.get_forwarding, "Joe@ACME.test"),
            ForwardingRecord("joe@acme.test", enabled=False, keep_copy=True, targets=()),
        )
        recipient = self.resolve("joe@acme.test")
        self.assertEqual((recipient.forwards, recipient.keep_copy), (False, True))

    def test_adding_targets_does_not_turn_forwarding_on(self):
        self.op(f.add_forward_target, "joe@acme.test", "Bob@Remote.Example")
        record = self.op(f.add_forward_target, "joe@acme.test", "ann@acme.test")
        self.assertEqual(record.targets, ("Bob@remote.example", "ann@acme.test"))
        self.assertFalse(record.enabled)
        self.assertFalse(self.resolve("joe@acme.test").forwards)

    def test_settings_change_independently_and_reach_resolution(self):
        record = self.op(f.set_forwarding, "joe@acme.test", enabled=True)
        self.assertEqual((record.enabled, record.keep_copy), (True, True))
        record = self.op(f.set_forwarding, "joe@acme.test", keep_copy=False)
        self.assertEqual((record.enabled, record.keep_copy), (True, False))
        self.assertEqual(self.op(f.set_forwarding, "joe@acme.test"), record, "nothing asked")
        for address in ("joe@acme.test", "sales@acme.test"):  # through an alias too
            recipient = self.resolve(address)
            self.assertEqual((recipient.forwards, recipient.keep_copy), (True, False))
        self.op(f.set_forwarding, "joe@acme.test", enabled=False, keep_copy=True)
        self.assertEqual(self.op(f.get_forwarding, "joe@acme.test").enabled, False)

    def test_duplicate_target_is_a_conflict_whatever_its_case(self):
        self.op(f.add_forward_target, "joe@acme.test", "bob@remote.example")
        for again in ("bob@remote.example", "BOB@Remote.Example"):
            with self.assertRaises(Conflict) as raised:
                self.op(f.add_forward_target, "joe@acme.test", again)
            self.assertIn("forwards to", str(raised.exception))
        self.assertEqual(
            self.op(f.get_forwarding, "joe@acme.test").targets, ("bob@remote.example",)
        )

    def test_the_mailbox_itself_is_no_target(self):
        for itself in ("joe@acme.test", "JOE@acme.test", "joe+tag@acme.test", "sales@acme.test"):
            with self.assertRaises(Invalid) as raised:
                self.op(f.add_forward_target, "joe@acme.test", itself)
            self.assertIn("itself", str(raised.exception))

    def test_invalid_targets_are_refused(self):
        for bad in ("no-at-sign", "a@b@", "a b@remote.example", "bob@not a domain", "@x.test"):
            with self.assertRaises(Invalid):
                self.op(f.add_forward_target, "joe@acme.test", bad)
        with self.assertRaises(Invalid) as raised:
            self.op(f.add_forward_target, "joe@acme.test", "nobody@acme.test")
        self.assertIn("is not an address here", str(raised.exception))
        with self.assertRaises(NotFound):
            self.op(f.add_forward_target, "nobody@acme.test", "bob@remote.example")
        self.assertEqual(self.op(f.get_forwarding, "joe@acme.test").targets, ())

    def test_remove_target(self):
        self.op(f.add_forward_target, "joe@acme.test", "bob@remote.example")
        self.op(f.add_forward_target, "joe@acme.test", "ann@acme.test")
        record = self.op(f.remove_forward_target, "joe@acme.test", "BOB@remote.EXAMPLE")
        self.assertEqual(record.targets, ("ann@acme.test",))
        with self.assertRaises(NotFound) as raised:
            self.op(f.remove_forward_target, "joe@acme.test", "bob@remote.example")
        self.assertIn("does not forward to bob@remote.example", str(raised.exception))

    def test_change_forwarding_is_all_or_nothing(self):
        self.op(f.change_forwarding, "joe@acme.test", add=["ann@acme.test"], enabled=True)

        def refused_midway():
            f.change_forwarding(
                "joe@acme.test", add=["bob@remote.example", "ann@acme.test"], keep_copy=False
            )

        with self.assertRaises(Conflict):
            self.op(refused_midway)
        self.assertEqual(
            self.op(f.get_forwarding, "joe@acme.test"),
            ForwardingRecord("joe@acme.test", True, True, ("ann@acme.test",)),
        )

    def test_targets_go_with_a_removed_mailbox(self):
        from atollon_mail.store.models import ForwardTarget, Mailbox

        self.op(f.add_forward_target, "joe@acme.test", "bob@remote.example")
        joe = self.resolve("joe@acme.test").mailbox_id
        self.op(lambda: Mailbox.delete().where(Mailbox.id == joe).execute())
        self.assertEqual(self.op(builders.row_count, ForwardTarget), 0)

    # -- what the intake reads -------------------------------------------------------------

    def test_forward_targets_by_mailbox(self):
        self.op(f.add_forward_target, "joe@acme.test", "x@remote.example")
        self.op(f.add_forward_target, "joe@acme.test", "ann@acme.test")
        self.op(f.add_forward_target, "bob@acme.test", "y@remote.example")
        joe, ann, bob = (self.resolve(f"{n}@acme.test").mailbox_id for n in ("joe", "ann", "bob"))
        self.assertEqual(
            self.op(f.forward_targets, [joe, ann, bob, joe]),
            {joe: ("x@remote.example", "ann@acme.test"), bob: ("y@remote.example",)},
        )
        self.assertEqual(self.op(f.forward_targets, []), {})

    def forwarding(self, mailbox: str, *targets: str, keep_copy: bool = True) -> None:
        for target in targets:
            self.op(f.add_forward_target, mailbox, target)
        self.op(f.set_forwarding, mailbox, enabled=True, keep_copy=keep_copy)

    def expand(self, *addresses: str):
        return self.op(f.expand_forwarding, [self.resolve(a) for a in addresses])

    def test_expansion_follows_local_chains_and_collects_remote_targets(self):
        self.forwarding("joe@acme.test", "ann@acme.test", "x@Remote.example", keep_copy=False)
        self.forwarding("ann@acme.test", "eve@other.test", "y@remote.example")
        plan = self.expand("sales@acme.test")
        self.assertEqual(
            [r.mailbox_address for r in plan.filed], ["ann@acme.test", "eve@other.test"]
        )
        self.assertEqual(plan.remote, ("x@remote.example", "y@remote.example"))
        self.assertEqual(plan.forwarders, ("joe@acme.test", "ann@acme.test"))
        self.assertEqual(plan.srs_domain, "acme.test")

    def test_expansion_ends_on_loops(self):
        self.forwarding("joe@acme.test", "ann@acme.test")
        self.forwarding("ann@acme.test", "joe@acme.test", "bob@acme.test")
        self.forwarding("bob@acme.test", "ann@acme.test", "joe@acme.test", keep_copy=False)
        plan = self.expand("joe@acme.test")
        self.assertEqual(
            [r.mailbox_address for r in plan.filed], ["joe@acme.test", "ann@acme.test"]
        )
        self.assertEqual(plan.remote, ())

    def test_a_loop_without_copies_still_files_the_message_somewhere(self):
        self.forwarding("joe@acme.test", "ann@acme.test", keep_copy=False)
        self.forwarding("ann@acme.test", "joe@acme.test", keep_copy=False)
        plan = self.expand("joe@acme.test")
        self.assertEqual([r.mailbox_address for r in plan.filed], ["joe@acme.test"])

    def test_targets_that_receive_nothing_are_skipped(self):
        self.forwarding("joe@acme.test", "ann@acme.test", "bob@acme.test", keep_copy=False)
        self.op(mailboxes.set_mailbox_active, "ann@acme.test", False)
        plan = self.expand("joe@acme.test")
        self.assertEqual([r.mailbox_address for r in plan.filed], ["bob@acme.test"])
        self.assertEqual(plan.skipped, ("ann@acme.test",))

    def test_forwarding_on_without_targets_files_as_usual(self):
        self.op(f.set_forwarding, "joe@acme.test", enabled=True, keep_copy=False)
        plan = self.expand("joe@acme.test", "bob@acme.test")
        self.assertEqual(
            [r.mailbox_address for r in plan.filed], ["joe@acme.test", "bob@acme.test"]
        )
        self.assertEqual((plan.remote, plan.forwarders), ((), ()))


class SqliteForwardingTests(SqliteStoreMixin, ForwardingContract, unittest.TestCase):
    pass


class PostgresForwardingTests(PostgresStoreMixin, ForwardingContract, unittest.TestCase):
    pass
