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
from atollon_mail.store import accounts
from atollon_mail.store.records import UserRecord
from tests.support import SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import _hash

ALICE = UserRecord(id=1, login="alice", name="Alice", is_admin=False)


class HeldCheck:
    """A password check whose answers the test gives: alice/secret is right."""

    def __init__(self):
        self.calls: list[defer.Deferred] = []

    def __call__(self, login: str, password: str) -> defer.Deferred:
        deferred = defer.Deferred()
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
