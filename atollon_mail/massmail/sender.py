"""The campaign sender: moves running campaigns' send lists into the delivery queue.

Every second it looks for running campaigns (a `massmail send` from the admin command is
seen within a second). For each it hands rows over in batches: each batch is read,
rendered off the reactor thread and committed (messages queued, rows `sending`) in one
transaction, which re-checks under the campaign's lock that it is still running, so a
pause takes effect at the next batch. Pacing: `[massmail] rate` per campaign (a token
bucket; 0 means no limit) and at most `[massmail] window` rows in `sending` at once, so
the delivery queue never holds more of a campaign than a pause has to take back, and
ordinary mail is not stuck behind a whole campaign.
"""

from __future__ import annotations

import datetime

from twisted.application import service
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from atollon_mail.config import MassmailConfig
from atollon_mail.events import Events
from atollon_mail.massmail.compose import build_message
from atollon_mail.massmail.templates import TemplateProblem
from atollon_mail.massmail.tokens import RecipientTokens
from atollon_mail.store import sendlists

log = Logger()

# How many rows one handoff takes at most (one transaction).
HANDOFF_BATCH = 500
POLL_SECONDS = 1.0
# How long to wait when the window is full or the rate allows nothing yet.
TICK_SECONDS = 0.1
# After a store failure, before the campaign is tried again.
RETRY_SECONDS = 5.0


def utc_from_seconds(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(tzinfo=None)


class _TokenBucket:
    """`rate` messages per second, with at most one second's worth saved up."""

    def __init__(self, rate: float, now: float):
        self.rate = rate
        self._tokens = min(rate, 1.0)
        self._updated = now

    def available(self, now: float) -> int:
        if not self.rate:
            return HANDOFF_BATCH
        self._tokens = min(self._tokens + (now - self._updated) * self.rate, max(self.rate, 1))
        self._updated = now
        return int(self._tokens)

    def spend(self, count: int) -> None:
        if self.rate:
            self._tokens -= count

    def wait_for_one(self) -> float:
        if not self.rate:
            return TICK_SECONDS
        return max((1 - self._tokens) / self.rate, 0.001)


def _build_all(
    sending_record, candidates, tokens, unsubscribe_base, hostname, now
) -> tuple[list, list]:
    built, failed = [], []
    for candidate in candidates:
        try:
            built.append(
                build_message(sending_record, candidate, tokens, unsubscribe_base, hostname, now)
            )
        except TemplateProblem as problem:
            failed.append((candidate.recipient_id, f"the message could not be made: {problem}"))
    return built, failed


class MassMailSender(service.Service):
    name = "massmail"

    def __init__(
        self,
        store,
        tokens: RecipientTokens,
        settings: MassmailConfig,
        hostname: str,
        unsubscribe_base: str,
        reactor,
        events: Events | None = None,
        workers=None,
    ):
        self._store = store
        self._tokens = tokens
        self._settings = settings
        self._hostname = hostname
        self._unsubscribe_base = unsubscribe_base
        self._reactor = reactor
        self._workers = workers
        # events.queued wakes the delivery runner after a hand-over queued messages.
        self._events = events if events is not None else Events()
        self._poll_call = None
        self._polling: defer.Deferred | None = None
        self._pumps: dict[int, defer.Deferred] = {}
        self._buckets: dict[int, _TokenBucket] = {}
        self._sleepers: dict[defer.Deferred, object] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._poll_call = self._reactor.callLater(0, self._poll)

    def stopService(self):
        super().stopService()
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        self._poll_call = None
        for woken, call in list(self._sleepers.items()):
            call.cancel()
            self._wake(woken)
        # Wait for batches being written: a stopped store must not get more work.
        waiting = list(self._pumps.values())
        if self._polling is not None:
            waiting.append(self._polling)
        return defer.DeferredList(waiting, consumeErrors=True) if waiting else None

    def _now(self) -> datetime.datetime:
        return utc_from_seconds(self._reactor.seconds())

    # -- finding running campaigns -------------------------------------------------------

    def _poll(self) -> None:
        self._poll_call = None
        self._polling = self._store.run(sendlists.running_campaigns)
        self._polling.addCallbacks(self._found, self._poll_failed)
        self._polling.addBoth(self._polled)

    def _found(self, campaign_ids) -> None:
        for campaign_id in campaign_ids:
            if campaign_id not in self._pumps and self.running:
                pump = self._pump(campaign_id)
                self._pumps[campaign_id] = pump
                pump.addBoth(self._pump_done, campaign_id)

    def _poll_failed(self, failure) -> None:
        log.failure("looking for running campaigns failed", failure)

    def _polled(self, _) -> None:
        self._polling = None
        if self.running:
            self._poll_call = self._reactor.callLater(POLL_SECONDS, self._poll)

    def _pump_done(self, result, campaign_id: int):
        self._pumps.pop(campaign_id, None)
        if isinstance(result, Exception) or hasattr(result, "getErrorMessage"):
            log.failure("sending campaign {campaign} failed", result, campaign=campaign_id)
        return None

    # -- one campaign -------------------------------------------------------------------

    def _sleep(self, seconds: float) -> defer.Deferred:
        """A pause in a pump that stopService ends at once (the pump then sees it must
        stop), so stopping never waits for a timer."""
        woken: defer.Deferred = defer.Deferred()
        call = self._reactor.callLater(seconds, self._wake, woken)
        self._sleepers[woken] = call
        return woken

    def _wake(self, woken: defer.Deferred) -> None:
        self._sleepers.pop(woken, None)
        woken.callback(None)

    @defer.inlineCallbacks
    def _pump(self, campaign_id: int):
        bucket = self._buckets.get(campaign_id)
        if bucket is None or bucket.rate != self._settings.rate:
            bucket = _TokenBucket(self._settings.rate, self._reactor.seconds())
            self._buckets[campaign_id] = bucket
        while self.running:
            allowed = bucket.available(self._reactor.seconds())
            if allowed <= 0:
                yield self._sleep(bucket.wait_for_one())
                continue
            limit = min(allowed, HANDOFF_BATCH)
            now = self._now()
            try:
                found = yield self._store.run(
                    sendlists.handoff_batch, campaign_id, limit, self._settings.window, now.date()
                )
            except Exception:
                log.failure("reading campaign {campaign} failed", campaign=campaign_id)
                yield self._sleep(RETRY_SECONDS)
                return
            if found is None:
                return  # paused, cancelled or finished: the poll starts it again if resumed
            sending_record, candidates = found
            if not candidates:
                if sending_record.outstanding >= self._settings.window:
                    yield self._sleep(TICK_SECONDS)  # the window is full
                    continue
                if sending_record.outstanding == 0:
                    yield self._store.run(sendlists.finish_if_done, campaign_id, now)
                return  # nothing queued: the poll looks again
            yield self._hand_over(sending_record, candidates, now)
            bucket.spend(len(candidates))

    @defer.inlineCallbacks
    def _hand_over(self, sending_record, candidates, now):
        arguments = (
            sending_record,
            candidates,
            self._tokens,
            self._unsubscribe_base,
            self._hostname,
            now,
        )
        if self._workers is not None:
            built, failed = yield deferToThreadPool(
                self._reactor, self._workers, _build_all, *arguments
            )
        else:
            built, failed = _build_all(*arguments)
        if failed:
            log.warn(
                "campaign {campaign}: {count} messages could not be made: {first}",
                campaign=sending_record.campaign_id,
                count=len(failed),
                first=failed[0][1],
            )
            yield self._store.run(sendlists.fail_rows, sending_record.campaign_id, failed, now)
        handed = yield self._store.run(
            sendlists.commit_handoff, sending_record.campaign_id, built, now
        )
        if handed:
            self._events.queued.fire()
        return handed
