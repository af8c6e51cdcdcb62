"""The one authenticator: the argon2 check in a worker pool, and the throttle in front of it."""

from __future__ import annotations

import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from atollon_mail.auth import (
    ADDRESS_LIMIT,
    LOGIN_LIMIT,
    WINDOW,
    Authenticator,
    PasswordChecker,
    Throttled,
    build_authenticator,
)
from atollon_mail.interfaces import IAuthenticator
from atollon_mail.store import accounts, mailboxes
from atollon_mail.store.records import UserRecord
from tests.builders import alias, hosted_mailbox, mailbox
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import _hash

ALICE = UserRecord(id=1, login="alice", name="Alice", is_admin=False)


class HeldCheck:
    """A password check whose answers the test gives: alice/secret is right."""

    def __init__(self):
        self.calls: list[defer.Deferred] = []

    def __call__(self, login: str, password: str) -> defer.Deferred:
        deferred = defer.Deferred()
        deferred.login = login
        deferred.right = (login, password) == ("alice", "secret")
        self.calls.append(deferred)
        return deferred

    def answer_all(self) -> None:
        for deferred in self.calls:
            if not deferred.called:
                deferred.callback(ALICE if deferred.right else None)


class CountingPool(ThreadPool):
    """A real thread pool that counts the work given to it (argon2 checks here)."""

    def __init__(self):
        super().__init__(minthreads=1, maxthreads=2, name="test-workers")
        self.jobs = 0

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        self.jobs += 1
        return super().callInThreadWithCallback(onResult, func, *args, **kw)


class PasswordCheckerTests(SqliteStoreMixin, StoreFixtureMixin, unittest.TestCase):
    def setUp(self):
        self.store = self.make_store()
        self.store.run_sync(accounts.add_user, "alice", _hash("secret"), name="Alice")
        self.pool = CountingPool()
        self.checker = PasswordChecker(self.store, reactor, self.pool)

    def start_pool(self):
        self.pool.start()
        self.addCleanup(self.pool.stop)

    def test_provides_the_interface(self):
        authenticator = build_authenticator(self.store, reactor, self.pool, Clock())
        self.assertTrue(verifyObject(IAuthenticator, authenticator))

    @defer.inlineCallbacks
    def test_right_wrong_and_unknown(self):
        self.start_pool()
        user = yield self.checker.check("alice", "secret")
        self.assertEqual(user.login, "alice")
        same = yield self.checker.check(" ALICE ", "secret")  # as the store finds logins
        self.assertEqual(same.login, "alice")
        self.assertIsNone((yield self.checker.check("alice", "wrong")))
        # An unknown login is verified against a dummy hash: it costs an argon2 check too
        # (and the first time, the hashing of the dummy).
        self.assertIsNone((yield self.checker.check("nobody", "secret")))
        self.assertEqual(self.pool.jobs, 5)

    @defer.inlineCallbacks
    def test_the_unknown_users_hash_is_made_once_in_the_pool_when_first_needed(self):
        self.start_pool()
        first = self.checker.check("nobody", "secret")
        second = self.checker.check("nemo", "secret")
        self.assertEqual((yield first), None)
        self.assertEqual((yield second), None)
        self.assertEqual(self.pool.jobs, 3)  # one hash, two checks
        self.assertIsNone((yield self.checker.check("nobody", "again")))
        self.assertEqual(self.pool.jobs, 4)  # the hash is kept

    def test_importing_the_module_hashes_nothing(self):
        code = (
            "import atollon_mail.passwords as p\n"
            "calls = []\n"
            "p.hash_password = lambda *args: calls.append(args)\n"
            "import atollon_mail.auth\n"
            "print(len(calls))\n"
        )
        output = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        self.assertEqual(output.stdout.strip(), "0")

    @defer.inlineCallbacks
    def test_argon2_runs_in_the_worker_pool(self):
        checked = self.checker.check("alice", "secret")
        yield self.store.run(accounts.has_admin)  # the lookup is done; argon2 waits for a worker
        self.assertFalse(checked.called)
        self.assertEqual(self.pool.jobs, 1)
        self.start_pool()
        user = yield checked
        self.assertEqual(user.login, "alice")


class ThrottleTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.check = HeldCheck()
        self.authenticator = Authenticator(self.check, self.clock)

    def attempt(self, client="192.0.2.1", login="alice", password="wrong"):
        results = []
        self.authenticator.authenticate(client, login, password).addBoth(results.append)
        return results

    def test_attempts_in_progress_count_against_the_limit(self):
        burst = [self.attempt() for _ in range(100)]
        right = self.attempt(password="secret")
        self.assertEqual(len(self.check.calls), LOGIN_LIMIT)
        refused = [result for result in burst + [right] if result]
        self.assertEqual(len(refused), 101 - LOGIN_LIMIT)
        for [failure] in refused:
            self.assertIsInstance(failure.value, Throttled)
        self.check.answer_all()
        self.assertEqual(burst[:LOGIN_LIMIT], [[None]] * LOGIN_LIMIT)
        self.assertTrue(self.authenticator.login_blocked("192.0.2.1", "alice"))
        [failure] = self.attempt(password="secret")
        self.assertEqual(failure.value.retry_after, WINDOW)

    def test_login_case_and_spaces_do_not_give_more_guesses(self):
        for login in ("alice", "ALICE", " Alice", "alicE ", "aLice"):
            self.attempt(login=login)
        self.check.answer_all()
        [failure] = self.attempt()
        self.assertIsInstance(failure.value, Throttled)

    def test_per_login_then_per_address(self):
        for _ in range(LOGIN_LIMIT):
            self.attempt()
        self.check.answer_all()
        self.assertTrue(self.authenticator.login_blocked("192.0.2.1", "alice"))
        self.assertFalse(self.authenticator.blocked("192.0.2.1"))
        bob = self.attempt(login="bob")
        self.check.answer_all()
        self.assertEqual(bob, [None])  # checked: another login from the same address
        for number in range(ADDRESS_LIMIT - LOGIN_LIMIT - 1):
            self.attempt(login=f"user{number}")
        self.check.answer_all()
        self.assertTrue(self.authenticator.blocked("192.0.2.1"))
        [failure] = self.attempt(login="carol")
        self.assertIsInstance(failure.value, Throttled)
        self.assertFalse(self.authenticator.blocked("192.0.2.2"))
        self.clock.advance(WINDOW)
        self.assertFalse(self.authenticator.blocked("192.0.2.1"))

    def test_retry_after_counts_from_the_last_failure(self):
        for _ in range(LOGIN_LIMIT):
            self.attempt()
            self.check.answer_all()
            self.clock.advance(10)
        [failure] = self.attempt()
        self.assertEqual(failure.value.retry_after, WINDOW - 10)

    def test_a_check_that_could_not_be_made_is_not_counted(self):
        for _ in range(LOGIN_LIMIT * 2):
            result = self.attempt()
            self.check.calls[-1].errback(RuntimeError("the store did not answer"))
            self.assertTrue(result[0].check(RuntimeError))
        self.assertEqual(len(self.authenticator.by_login), 0)
        self.assertEqual(len(self.authenticator.by_address), 0)


# Mailbox addresses and whose login each stands for, as PasswordChecker.resolve finds them.
OWNERS = {"alice@example.com": "alice", "sales@example.com": "alice", "bob@example.com": "bob"}


def resolve(name: str) -> defer.Deferred:
    return defer.succeed(OWNERS.get(name.strip().lower()))


class AddressThrottleTests(unittest.TestCase):
    """A mailbox address given as the login counts under it and under its owner's login."""

    def setUp(self):
        self.clock = Clock()
        self.check = HeldCheck()
        self.authenticator = Authenticator(self.check, self.clock, resolve=resolve)

    def attempt(self, login, password="wrong", client="192.0.2.1"):
        results = []
        self.authenticator.authenticate(client, login, password).addBoth(results.append)
        return results

    def test_the_owners_password_is_checked(self):
        result = self.attempt("Alice@Example.com", "secret")
        self.assertEqual([call.login for call in self.check.calls], ["alice"])
        self.check.answer_all()
        self.assertEqual(result, [ALICE])

    def test_guesses_through_addresses_spend_the_owners_allowance(self):
        for number in range(LOGIN_LIMIT):
            self.attempt(("alice@example.com", "sales@example.com")[number % 2])
        self.check.answer_all()
        self.assertTrue(self.authenticator.login_blocked("192.0.2.1", "alice"))
        self.assertFalse(self.authenticator.login_blocked("192.0.2.1", "sales@example.com"))
        # Neither the login itself nor another of its addresses gets more guesses.
        for login in ("alice", "sales@example.com", "SALES@example.com "):
            [failure] = self.attempt(login, "secret")
            self.assertIsInstance(failure.value, Throttled)
        self.assertEqual(len(self.check.calls), LOGIN_LIMIT)
        # Not counted against the address of the client: refused, not checked.
        self.assertFalse(self.authenticator.blocked("192.0.2.1"))
        self.assertEqual(self.authenticator.by_login.in_flight(("192.0.2.1", "alice")), 0)
        # Another owner's address from the same client is still checked.
        bob = self.attempt("bob@example.com")
        self.assertEqual(len(self.check.calls), LOGIN_LIMIT + 1)
        self.check.answer_all()
        self.assertEqual(bob, [None])

    def test_guesses_at_the_login_block_its_addresses(self):
        for _ in range(LOGIN_LIMIT):
            self.attempt("alice")
        self.check.answer_all()
        [failure] = self.attempt("alice@example.com", "secret")
        self.assertIsInstance(failure.value, Throttled)
        self.assertEqual(len(self.check.calls), LOGIN_LIMIT)

    def test_attempts_in_progress_through_an_address_count_for_the_owner(self):
        for _ in range(LOGIN_LIMIT):
            self.attempt("alice@example.com")
        [failure] = self.attempt("alice", "secret")
        self.assertIsInstance(failure.value, Throttled)
        self.assertEqual(len(self.check.calls), LOGIN_LIMIT)

    def test_a_success_forgets_both_names(self):
        for _ in range(LOGIN_LIMIT - 1):
            self.attempt("alice@example.com")
        self.check.answer_all()
        result = self.attempt("sales@example.com", "secret")
        self.check.answer_all()
        self.assertEqual(result, [ALICE])
        for key in ("alice", "sales@example.com"):
            self.assertFalse(self.authenticator.by_login._recent(("192.0.2.1", key)), key)
        self.assertEqual(len(self.authenticator.by_login), 1)  # alice@example.com's remain

    def test_an_unknown_address_is_checked_as_given_and_counted_under_it(self):
        result = self.attempt("nobody@example.com", "secret")
        self.assertEqual([call.login for call in self.check.calls], ["nobody@example.com"])
        self.check.answer_all()
        self.assertEqual(result, [None])
        self.assertEqual(
            list(self.authenticator.by_login._failures), [("192.0.2.1", "nobody@example.com")]
        )

    def test_a_resolution_that_could_not_be_made_is_not_counted(self):
        def unavailable(name):
            return defer.fail(RuntimeError("the store did not answer"))

        authenticator = Authenticator(self.check, self.clock, resolve=unavailable)
        for _ in range(LOGIN_LIMIT * 2):
            results = []
            authenticator.authenticate("192.0.2.1", "alice@example.com", "x").addBoth(
                results.append
            )
            self.assertTrue(results[0].check(RuntimeError))
        self.assertEqual(self.check.calls, [])
        self.assertEqual(len(authenticator.by_login), 0)
        self.assertEqual(authenticator.by_address.in_flight("192.0.2.1"), 0)


class AddressLoginStoreTests(StoreFixtureMixin):
    """The store's side: which addresses stand for a login, and the checks they lead to."""

    def setUp(self):
        self.store = self.make_store()
        hosted_mailbox(self.store, "alice@example.com", "alice", _hash("secret"))
        mailbox(self.store, "sales@example.com", "alice")
        hosted_mailbox(self.store, "bob@other.example", "bob", _hash("bob-secret"))
        alias(self.store, "info@other.example", "bob@other.example")
        mailbox(self.store, "old@example.com", "bob")
        self.store.run_sync(mailboxes.set_mailbox_active, "old@example.com", False)
        self.pool = CountingPool()
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.checker = PasswordChecker(self.store, reactor, self.pool)

    def test_login_of_address(self):
        find = self.store.run_sync
        self.assertEqual(find(accounts.login_of_address, "alice@example.com"), "alice")
        self.assertEqual(find(accounts.login_of_address, " Sales@EXAMPLE.com. "), "alice")
        self.assertEqual(find(accounts.login_of_address, "bob@other.example"), "bob")
        for refused in (
            "info@other.example",  # an alias: not a mailbox's address
            "old@example.com",  # an inactive mailbox
            "alice@other.example",
            "nobody@example.com",
            "alice",
            "@example.com",
            "alice@",
            "a@b@example.com",
            "alice@exa mple.com",
            "\0@example.com",
            "x" * 300 + "@example.com",
        ):
            self.assertIsNone(find(accounts.login_of_address, refused), refused)

    @defer.inlineCallbacks
    def test_a_mailbox_address_logs_its_owner_in(self):
        authenticator = build_authenticator(self.store, reactor, self.pool, Clock())
        user = yield authenticator.authenticate("192.0.2.1", "Sales@Example.com", "secret")
        self.assertEqual(user.login, "alice")
        self.assertIsNone(
            (yield authenticator.authenticate("192.0.2.1", "bob@other.example", "secret"))
        )
        self.assertIsNone(
            (yield authenticator.authenticate("192.0.2.1", "info@other.example", "bob-secret"))
        )
        self.assertIsNone(
            (yield authenticator.authenticate("192.0.2.1", "old@example.com", "bob-secret"))
        )

    @defer.inlineCallbacks
    def test_an_unknown_address_costs_what_an_unknown_login_costs(self):
        authenticator = build_authenticator(self.store, reactor, self.pool, Clock())
        # The first unknown name hashes the unknown user's password, then verifies it.
        self.assertIsNone(
            (yield authenticator.authenticate("192.0.2.1", "nobody@example.com", "x"))
        )
        self.assertEqual(self.pool.jobs, 2)
        for name in (
            "nobody",
            "nobody@example.com",
            "info@other.example",
            "a@b@c",
            "alice@example.com",
        ):
            before = self.pool.jobs
            self.assertIsNone((yield authenticator.authenticate("192.0.2.2", name, "wrong")), name)
            self.assertEqual(self.pool.jobs - before, 1, name)  # one argon2 check, no more


class SqliteAddressLoginStoreTests(SqliteStoreMixin, AddressLoginStoreTests, unittest.TestCase):
    pass


class PostgresAddressLoginStoreTests(PostgresStoreMixin, AddressLoginStoreTests, unittest.TestCase):
    pass
