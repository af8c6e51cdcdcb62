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
    """This node's lock held as long as it runs (so the others know it is alive), and the
    in-flight deliveries of nodes that died queued again (queue.release_dead_claims);
    `released` is told of each (`events.queued.fire`: the runner looks). Nothing to do on
    SQLite.

    A free node lock does not prove its node dead: the lock lives on one connection,
    free whenever that connection ends (a PostgreSQL restart or failover, an idle
    session killed, a NAT dropping it) while the node still runs. So the keeper looks
    every third of `interval`, and a node's claims are released only when its lock was
    seen free on at least two looks spanning more than 2 x `interval`, all while this
    node's own lock held (a look right after this node lost its own tells nothing). The
    node that lost its lock retakes it within a third of `interval`, and its runner
    sends no final dot unless the lock was confirmed within the last `interval`
    (`confirmed`), so no message of a released claim leaves after the release; its late
    outcomes are dropped by the store (queue.record_delivery_results)."""

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
        # When this node's lock was last confirmed held, and since when it holds it
        # without a gap (clock seconds; None: not held).
        self._confirmed_at: float | None = None
        self._held_since: float | None = None
        # Other nodes whose lock was seen free: (first seen, looks) by name.
        self._free: dict[str, tuple[float, int]] = {}

    def confirmed(self) -> bool:
        """Whether this node's lock was confirmed within the last `interval` (the
        runner's fence before each final dot). Always on SQLite."""
        if self._store.leases.always_held:
            return True
        if self._confirmed_at is None:
            return False
        return self._clock.seconds() - self._confirmed_at <= self._interval

    def startService(self) -> None:
        super().startService()
        if self._store.leases.always_held:
            return
        if self._store.leases.holding(node_lock_name(self.node)):
            # Taken at start-up, before the runner claims anything (tap.StoreService).
            self.holding = True
            self._confirmed_at = self._held_since = self._clock.seconds()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval / 3, now=True)

    def _tick(self) -> defer.Deferred | None:
        if self.round is not None and not self.round.called:
            return None
        self.round = self._run_round()
        return None

    @defer.inlineCallbacks
    def _run_round(self):
        lock = node_lock_name(self.node)
        try:
            asked_at = self._clock.seconds()
            if not self.holding:
                self.holding = yield self._store.leases.take(lock)
                if not self.holding:
                    log.error(
                        "another running node is named {node!r}: give each node its own "
                        "[cluster] node_name",
                        node=self.node,
                    )
            else:
                self.holding = yield self._store.leases.held(lock)
                if not self.holding:
                    log.warn("this node's lock was lost with its connection; taking it again")
        except Exception as problem:
            self.holding = False
            self._lost()
            log.warn("confirming this node's lock failed: {problem}", problem=problem)
            return {}
        if not self.holding:
            self._lost()
            return {}
        self._confirmed_at = asked_at
        if self._held_since is None:
            self._held_since = asked_at
        try:
            free = yield self._store.run(queue.dead_claimers, self.node)
            now = self._clock.seconds()
            self._free = {
                name: (self._free[name][0], self._free[name][1] + 1)
                if name in self._free
                else (now, 1)
                for name in free
            }
            due = [
                name
                for name, (first, looks) in self._free.items()
                if looks >= 2 and now - first > 2 * self._interval and self._held_since <= first
            ]
            if not due:
                return {}
            released = yield self._store.run(
                queue.release_dead_claims, utc_from_seconds(now), self.node, due
            )
        except Exception as problem:
            log.warn("looking for deliveries of nodes that died failed: {problem}", problem=problem)
            return {}
        for name, requeued in released.items():
            self._free.pop(name, None)
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

    def _lost(self) -> None:
        # What was seen while this node's own lock did not hold tells nothing of others.
        self._held_since = None
        self._free = {}

    def stopService(self):
        # The node lock is not let go here: the runner's connections may still be running
        # and their progress not committed; it goes when the store closes, last
        # (Store.stop, after its pool drained), or with the process.
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.round if self.round is not None and not self.round.called else None
