"""Results kept on the app's clock and shared by the views asking meanwhile (web.cached)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.web.cached import Cached


class CachedTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.cached = Cached(self.clock, 30)
        self.reads: list[defer.Deferred] = []

    def read(self) -> defer.Deferred:
        self.reads.append(defer.Deferred())
        return self.reads[-1]

    def test_views_during_a_read_wait_for_it_and_later_ones_take_its_result(self):
        first = self.cached.get("k", self.read)
        second = self.cached.get("k", self.read)
        self.assertEqual(len(self.reads), 1)
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.reads[0].callback("facts")
        self.assertEqual(self.successResultOf(first), "facts")
        self.assertEqual(self.successResultOf(second), "facts")
        self.clock.advance(29.9)
        self.assertEqual(self.successResultOf(self.cached.get("k", self.read)), "facts")
        self.assertEqual(len(self.reads), 1)
        self.clock.advance(0.1)
        again = self.cached.get("k", self.read)
        self.assertEqual(len(self.reads), 2)
        self.reads[1].callback("newer")
        self.assertEqual(self.successResultOf(again), "newer")

    def test_keys_are_kept_apart(self):
        self.cached.get(1, self.read)
        self.cached.get(2, self.read)
        self.assertEqual(len(self.reads), 2)

    def test_a_failed_read_fails_its_waiters_and_is_not_kept(self):
        first = self.cached.get("k", self.read)
        second = self.cached.get("k", self.read)
        self.reads[0].errback(RuntimeError("database gone"))
        self.failureResultOf(first, RuntimeError)
        self.failureResultOf(second, RuntimeError)
        self.cached.get("k", self.read)
        self.assertEqual(len(self.reads), 2)

    def test_at_most_limit_keys_are_kept(self):
        cached = Cached(self.clock, 30, limit=2)
        for key in (1, 2, 3):
            cached.get(key, lambda key=key: defer.succeed(key))
        self.assertEqual(self.successResultOf(cached.get(3, self.read)), 3)
        cached.get(1, self.read)  # dropped: read again
        self.assertEqual(len(self.reads), 1)
