"""Several appliances on one PostgreSQL database: jobs run on one node at a time, and the
delivery claims of a node that died are taken back.

The locks are the store's leases (store.leases: PostgreSQL advisory locks on a connection
of their own, gone with the node's session); these services ask for them on the injected
clock. On SQLite (one box) every lock always holds, so the wrapped jobs start at once.
"""

from __future__ import annotations

import datetime

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from atollon_mail.store import queue
from atollon_mail.store.leases import node_lock_name

log = Logger()

# How often a node that does not hold a job's lock asks for it, and one that holds it
# checks its connection still does: the longest a job stays without a node after its
# node died (the server frees the lock as soon as it sees the session end). And how
# often each node looks for in-flight deliveries of nodes that died. ([cluster]
# check_interval.)
LEASE_SECONDS = 15.0
RELEASE_SECONDS = 15.0


def utc_from_seconds(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(tzinfo=None)


class OneNodeAtATime(service.Service):
    """Runs `job` (a service) only while this node holds the lock `lock_name`: asks for
    it every `interval` seconds of `clock`, starts the job once it has it, and stops the
    job when it lost it (the lock's connection failed: another node may take it now).
    Named as the job, which is found as `.job`. Any periodic service can be wrapped so,
    as the builders do: `OneNodeAtATime("backup-schedule", schedule, store.leases,
    reactor, config.cluster.check_interval)`."""

    def __init__(
        self, lock_name: str, job: service.IService, leases, clock, interval=LEASE_SECONDS
    ):
        self.lock_name = lock_name
        self.job = job
        self.name = job.name
        self._leases = leases
        self._clock = clock
        self._interval = interval
        self._loop: task.LoopingCall | None = None
        self._asking: defer.Deferred | None = None
        self.holding = False

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self._round)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def _round(self) -> None:
        if self._asking is not None:
            return  # the last question is not answered yet
        if self.holding:
            self._asking = self._leases.held(self.lock_name)
        else:
            self._asking = self._leases.take(self.lock_name)
        self._asking.addCallbacks(self._answered, self._failed)

    def _answered(self, held: bool) -> None:
        self._asking = None
        if not self.running:
            if held:
                self._leases.release(self.lock_name).addErrback(lambda _: None)
            return
        if held and not self.holding:
            self.holding = True
            if not self._leases.always_held:
                log.info("this node now runs {job}", job=self.lock_name)
            self.job.startService()
        elif not held and self.holding:
            self.holding = False
            log.warn("this node lost the lock of {job}; it stops here", job=self.lock_name)
            self.job.stopService()

    def _failed(self, failure) -> None:
        self._asking = None
        log.warn(
            "asking for the lock of {job} failed: {problem}",
            job=self.lock_name,
            problem=failure.getErrorMessage(),
        )
        if self.holding and self.running:
            self.holding = False
            self.job.stopService()

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if not self.holding:
            return None
        self.holding = False
        stopped = defer.maybeDeferred(self.job.stopService)
        stopped.addBoth(lambda _: self._leases.release(self.lock_name))
        stopped.addErrback(lambda _: None)
        return stopped


class ClaimKeeper(service.Service):
    """This node's lock held as long as it runs (so the others know it is alive), and,
    every `interval` seconds, the in-flight deliveries of nodes that died queued again
    (queue.release_dead_claims); `released` is told of each (`events.queued.fire`: the
    runner looks). Nothing to do on SQLite."""

    name = "claim-keeper"

    def __init__(self, store, node: str, clock, released=None, interval=RELEASE_SECONDS):
        self._store = store
        self.node = node
        self._clock = clock
        self._released = released
        self._interval = interval
        self._loop: task.LoopingCall | None = None
        self.holding = False
        self.round: defer.Deferred | None = None

    def startService(self) -> None:
        super().startService()
        if self._store.leases.always_held:
            return
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def _tick(self) -> defer.Deferred | None:
        if self.round is not None and not self.round.called:
            return None
        self.round = self._run_round()
        return None

    @defer.inlineCallbacks
    def _run_round(self):
        try:
            if not self.holding:
                self.holding = yield self._store.leases.take(node_lock_name(self.node))
                if not self.holding:
                    log.error(
                        "another running node is named {node!r}: give each node its own "
                        "[cluster] node_name",
                        node=self.node,
                    )
            else:
                self.holding = yield self._store.leases.held(node_lock_name(self.node))
            now = utc_from_seconds(self._clock.seconds())
            released = yield self._store.run(queue.release_dead_claims, now, self.node)
        except Exception as problem:
            log.warn("looking for deliveries of nodes that died failed: {problem}", problem=problem)
            return {}
        for name, requeued in released.items():
            log.warn(
                "node {name!r} is gone: {quiet} of its deliveries queued again, {uncertain} "
                "uncertain (their message may have left before it died)",
                name=name,
                quiet=requeued.quiet,
                uncertain=len(requeued.uncertain),
            )
        if released and self._released is not None:
            self._released()
        return released

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        waiting = self.round if self.round is not None and not self.round.called else None
        if self.holding:
            self.holding = False
            released = self._store.leases.release(node_lock_name(self.node))
            released.addErrback(lambda _: None)
        return waiting
