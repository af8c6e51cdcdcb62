"""The worker pools: work given after they stopped fails at once instead of waiting."""

from __future__ import annotations

import threading

from twisted.internet import defer, reactor
from twisted.trial import unittest

from atollon_mail import affinity
from atollon_mail.workers import Workers, WorkersStopped


class WorkersTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_work_runs_in_the_pools_and_fails_once_they_stopped(self):
        workers = Workers(reactor)
        workers.startService()
        names = yield defer.gatherResults(
            [
                workers.in_cpu(lambda: threading.current_thread().name),
                workers.in_dns(lambda: threading.current_thread().name),
            ]
        )
        self.assertNotIn(threading.current_thread().name, names)
        workers.stopService()
        for asked in (workers.in_cpu(len, "x"), workers.in_dns(len, "x")):
            yield self.assertFailure(asked, WorkersStopped)


class CpuPoolThreadTests(unittest.TestCase):
    def test_the_cpu_pool_s_threads_are_not_held_to_the_appliance_s_cpu(self):
        self.assertIs(Workers(reactor=None).cpu.threadFactory, affinity.UnpinnedThread)
        self.assertIsNot(Workers(reactor=None).dns.threadFactory, affinity.UnpinnedThread)
