"""The purge of old Junk: mail that has lain in a mailbox's Junk folder longer than
[spam] junk_retention_days is removed, every PURGE_INTERVAL seconds.

Each round removes filings in batches (store.filing.purge_junk), each batch one short
transaction, so the filing of new mail waits little for it; the reactor never waits at
all. Time comes from the injected clock.
"""

from __future__ import annotations

import datetime

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from atollon_mail.store import filing

log = Logger()

PURGE_INTERVAL = 3600.0  # seconds between rounds
FIRST_PURGE_DELAY = 120.0  # seconds after start before the first round


def utc_from_seconds(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(tzinfo=None)


class JunkPurger(service.Service):
    """Removes Junk older than `retention_days` days, a round every `interval` seconds of
    `clock`, the first `first_delay` seconds after start. `round` is the Deferred of the
    round last started (it fires with how many filings went, and never fails)."""

    name = "junk-purger"

    def __init__(
        self,
        store,
        retention_days: int,
        clock,
        interval: float = PURGE_INTERVAL,
        first_delay: float = FIRST_PURGE_DELAY,
        batch: int = filing.PURGE_BATCH,
    ):
        self._store = store
        self.retention_days = retention_days
        self._retention = datetime.timedelta(days=retention_days)
        self._clock = clock
        self._interval = interval
        self._first_delay = first_delay
        self._batch = batch
        self._loop: task.LoopingCall | None = None
        self._first_call = None
        self.round: defer.Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._clock
        if self._first_delay > 0:
            self._first_call = self._clock.callLater(self._first_delay, self._start_loop)
        else:
            self._start_loop()

    def _start_loop(self) -> None:
        self._first_call = None
        if self.running:
            self._loop.start(self._interval, now=True)

    def stopService(self):
        if not self.running:
            return defer.succeed(None)
        super().stopService()
        if self._first_call is not None and self._first_call.active():
            self._first_call.cancel()
        self._first_call = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        # Stopped once the batch under way has committed.
        if self.round is None or self.round.called:
            return defer.succeed(None)
        finished = defer.Deferred()

        def finish(result):
            finished.callback(None)
            return result

        self.round.addBoth(finish)
        return finished

    def purge(self) -> defer.Deferred:
        """One round: every filing that came into a Junk before now less the retention."""
        self.round = defer.Deferred.fromCoroutine(self._purge())
        return self.round

    def _tick(self) -> defer.Deferred:
        # The loop waits for the round on a Deferred of its own: what it adds to the one
        # it waits on would take the round's result away from `round`.
        finished = defer.Deferred()

        def done(result):
            finished.callback(None)
            return result

        self.purge().addBoth(done)
        return finished

    async def _purge(self) -> int:
        cutoff = utc_from_seconds(self._clock.seconds()) - self._retention
        removed = 0
        try:
            while True:
                count = await self._store.run(filing.purge_junk, cutoff, self._batch)
                removed += count
                if count < self._batch or not self.running:
                    break
        except Exception:
            log.failure("purging old Junk failed; the next round tries again")
        if removed:
            log.info(
                "removed {count} messages from Junk folders (in Junk since before {cutoff})",
                count=removed,
                cutoff=cutoff,
            )
        return removed
