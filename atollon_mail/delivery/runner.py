"""The delivery runner: takes due recipients from the queue and delivers them.

Recipients are claimed in batches (their state becomes in-flight), grouped by
destination (the recipient's domain, or the smarthost), and sent over a bounded number
of connections per destination and in all, several messages per connection. Every
outcome is written back with its reply; a 5xx or an expired recipient bounces with a
DSN to the sender, a 4xx or a failed connection defers it with backoff.

Outcomes are written as the replies arrive, and each final dot is written down before it
goes out (delivery.progress). So after a kill the store knows, per in-flight recipient,
whether its message may have left: those whose dot was sent and whose reply was not
recorded are queued again and marked uncertain (at most the replies of the last commit
plus one message per open connection); the others go back quietly.

Who produced a message is the queue's business, not the runner's: a delivery says only
whether its sender is told of a bounce or a delay, and its outcome carries its origin
back to the store (store.origins).
"""

from __future__ import annotations

import datetime
from collections import defaultdict, deque
from collections.abc import Callable, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from atollon_mail.config import DeliveryConfig
from atollon_mail.delivery.bounce import FailedRecipient, build_dsn
from atollon_mail.delivery.dotjournal import DotJournal
from atollon_mail.delivery.mx import DNSLookupError, TemporaryDNSError
from atollon_mail.delivery.progress import (
    PROGRESS_DELAY,
    ConnectionProgress,
    Progress,
    ProgressWriter,
    keyed,
)
from atollon_mail.events import Events
from atollon_mail.metrics import counting
from atollon_mail.smtp import client
from atollon_mail.store import filing, queue
from atollon_mail.store.records import (
    Delivery,
    DeliveryResult,
    Origin,
    OutgoingMessage,
    Recipient,
)

log = Logger()

CLAIM_BATCH = 500
MESSAGES_PER_CONNECTION = 100
# How many claimed recipients may wait in memory for a connection.
MAX_BACKLOG = 5000
SMARTHOST = "[smarthost]"
# After mail is queued (or a connection finished), wait this long before claiming, so one
# claim (one commit) and one connection take what many sessions queued meanwhile.
CLAIM_COALESCE_SECONDS = 0.1


_EPOCH = datetime.datetime(1970, 1, 1)


def utc_from_seconds(seconds: float) -> datetime.datetime:
    # The same naive UTC time as fromtimestamp(seconds, UTC).replace(tzinfo=None), at
    # about half the cost: the runner asks once or twice per relayed message.
    return _EPOCH + datetime.timedelta(seconds=seconds)


@defer.inlineCallbacks
def send_notification(intake, address: str, raw: bytes, origin: Origin):
    """Deliver a message from <> (a DSN, an auto-reply, a notice: `origin` says which) to
    address: filed if local, else queued."""
    routed = yield intake.route(address)
    if isinstance(routed, Recipient):
        yield intake.accept("", [routed], raw, notification=True)
    elif isinstance(routed, str):
        yield intake.submit(
            OutgoingMessage(
                envelope_sender="", raw=raw, remote_recipients=(routed,), is_bounce=True
            ),
            origin,
        )
    else:
        log.warn(
            "a notification to {address} was dropped: {why}", address=address, why=routed.detail
        )


class DeliveryRunner(service.Service):
    name = "delivery"

    def __init__(
        self,
        store,
        intake,
        resolver,
        settings: DeliveryConfig,
        hostname: str,
        reactor,
        deliver: Callable = client.deliver,
        signer=None,
        events: Events | None = None,
        *,
        journal: DotJournal,
        progress_delay: float = PROGRESS_DELAY,
        metrics=None,
        dots_allowed: Callable[[], bool] | None = None,
    ):
        self._store = store
        # Outcomes by class and domain, progress batch sizes (atollon_mail.metrics;
        # None: not counted).
        self._metrics = metrics
        # Wakes up when a producer queued mail; tells of the outcomes it committed.
        self._events = events if events is not None else Events()
        self._events.queued.subscribe(self.queued)
        self._intake = intake
        self._resolver = resolver
        self._settings = settings
        self._hostname = hostname
        self._reactor = reactor
        self._deliver = deliver
        self._signer = signer
        self._pending: dict[str, deque[Delivery]] = defaultdict(deque)
        self._backlog = 0
        self._active: dict[str, int] = defaultdict(int)
        self._active_total = 0
        self._claiming = False
        self._wake_again = False
        self._timer = None
        self._coalesce = None
        # Marks and outcomes of every connection, group-committed: one batch at a time,
        # taken progress_delay after its first item.
        self._progress = ProgressWriter(
            store,
            journal,
            reactor,
            progress_delay,
            batch_sizes=(
                None
                if metrics is None
                else metrics.group_commit_batch_size.labels("record_progress")
            ),
            dots_allowed=dots_allowed,
        )
        self._starting: defer.Deferred | None = None
        # Fires when the queue is idle (nothing pending or in flight); tests wait on it.
        self._idle_waiters: list[defer.Deferred] = []

    # -- lifecycle ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # Anything in flight when the appliance stopped (or was killed) is tried again.
        self._starting = self._progress.requeue(self._now())
        self._starting.addCallback(self._requeued)
        self._starting.addErrback(self._requeue_failed)

    def _requeued(self, requeued) -> None:
        if requeued.quiet:
            log.info(
                "{count} recipients were claimed but not sent at the last stop; queued again",
                count=requeued.quiet,
            )
        if requeued.uncertain:
            log.warn(
                "{count} recipients may have got their message already: it was sent before "
                "the last stop and the reply was not recorded; queued again and marked "
                "uncertain (see: queue list --uncertain)",
                count=len(requeued.uncertain),
            )
        self._starting = None
        self.wake()
        self._check_idle()

    def _requeue_failed(self, failure) -> None:
        log.failure("putting in-flight recipients back in the queue failed", failure)
        self._starting = None
        self._set_timer(60)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for call in (self._timer, self._coalesce):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._coalesce = None
        # Replies that came in are written now, not lost to the delay.
        return self._progress.close()

    # -- claiming -------------------------------------------------------------------------

    def _now(self) -> datetime.datetime:
        return utc_from_seconds(self._reactor.seconds())

    def queued(self) -> None:
        """Mail was queued, or a connection is free: claim shortly, together with what
        else arrives meanwhile."""
        if self._coalesce is None or not self._coalesce.active():
            self._coalesce = self._reactor.callLater(CLAIM_COALESCE_SECONDS, self.wake)

    def wake(self) -> None:
        """Look for due recipients now (after a finished connection, a timer)."""
        if not self.running or self._starting is not None:
            return
        if self._claiming:
            self._wake_again = True
            return
        limit = min(CLAIM_BATCH, MAX_BACKLOG - self._backlog)
        if limit <= 0:
            return  # a finishing connection wakes us again
        self._claiming = True
        self._wake_again = False
        claimed = self._store.run(
            queue.claim_due_deliveries, self._now(), limit, getattr(self._store, "node", None)
        )
        claimed.addCallback(self._claimed, limit)
        claimed.addErrback(self._claim_failed)

    def _claimed(self, deliveries: Sequence[Delivery], limit: int):
        self._claiming = False
        for delivery in deliveries:
            key = SMARTHOST if self._settings.smarthost else delivery.domain
            self._pending[key].append(delivery)
            self._backlog += 1
        for key in list(self._pending):
            self._start_connections(key)
        if len(deliveries) >= limit or self._wake_again:
            self.wake()
            return None
        return self._schedule_next()

    def _claim_failed(self, failure) -> None:
        self._claiming = False
        log.failure("claiming due deliveries failed; trying again in a minute", failure)
        self._set_timer(60)

    @defer.inlineCallbacks
    def _schedule_next(self):
        due = yield self._store.run(queue.next_due_at)
        if due is None:
            # Nothing due: look again within a minute anyway, so mail queued by another
            # process (a `queue retry` from the admin command) is not left waiting.
            self._set_timer(60)
            self._check_idle()
            return
        delay = (due - self._now()).total_seconds()
        # At most a minute: a `queue retry` from the admin command is seen within it.
        self._set_timer(min(max(delay, 0.05), 60))
        self._check_idle()

    def _set_timer(self, delay: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self._reactor.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self._reactor.callLater(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.wake()

    def when_idle(self) -> defer.Deferred:
        """Fires once nothing is pending, in flight or being claimed (used by tests)."""
        waiter: defer.Deferred = defer.Deferred()
        self._idle_waiters.append(waiter)
        self._check_idle()
        return waiter

    def _check_idle(self) -> None:
        if self._backlog or self._active_total or self._claiming or self._starting is not None:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- connections ----------------------------------------------------------------------

    def _start_connections(self, key: str) -> None:
        pending = self._pending[key]
        while (
            pending
            and self._active[key] < self._settings.per_destination_concurrency
            and self._active_total < self._settings.max_concurrency
        ):
            batch: list[Delivery] = []
            messages: set[int] = set()
            while pending and (
                len(messages) < MESSAGES_PER_CONNECTION or pending[0].queue_message_id in messages
            ):
                delivery = pending.popleft()
                messages.add(delivery.queue_message_id)
                batch.append(delivery)
            self._backlog -= len(batch)
            self._active[key] += 1
            self._active_total += 1
            attempt = self._attempt(key, batch)
            attempt.addErrback(lambda failure: log.failure("delivery attempt failed", failure))
            attempt.addBoth(self._connection_done, key)
        if not pending:
            self._pending.pop(key, None)

    def _connection_done(self, _, key: str) -> None:
        self._active[key] -= 1
        self._active_total -= 1
        if not self._active[key]:
            del self._active[key]
        for pending_key in list(self._pending):
            self._start_connections(pending_key)
        if self._backlog < MAX_BACKLOG // 2:
            self.queued()
        self._check_idle()

    @defer.inlineCallbacks
    def _attempt(self, key: str, deliveries: list[Delivery]):
        envelopes = yield self._envelopes(deliveries)
        try:
            targets = yield self._targets(key, deliveries[0].domain)
        except DNSLookupError as problem:
            reply = f"{problem.smtp_code} {problem.enhanced_status} {problem}"
            temporary = isinstance(problem, TemporaryDNSError)
            yield self._finish(deliveries, {}, reply, None, temporary=temporary)
            return
        tls = (
            "required"
            if deliveries[0].domain in self._settings.require_tls_domains
            else ("opportunistic")
        )
        auth = None
        if key == SMARTHOST and self._settings.smarthost_username:
            auth = (self._settings.smarthost_username, self._settings.smarthost_password)
        last_failure: client.SessionFailure | None = None
        for host, address, port in targets:
            server = f"{host} [{address}]:{port}"
            progress = ConnectionProgress(
                deliveries,
                server,
                self._progress,
                now=self._now,
                decide=self._results,
                committed=self._committed,
            )
            try:
                outcomes = yield self._deliver(
                    self._reactor,
                    address,
                    port,
                    envelopes,
                    helo_name=self._hostname,
                    server_name=host,
                    tls=tls,
                    auth=auth,
                    connect_timeout=self._settings.connect_timeout,
                    progress=progress,
                )
            except client.SessionFailure as failure:
                last_failure = failure
                log.info("delivery to {server} failed: {reply}", server=server, reply=failure.reply)
                continue
            # What was written during the session is done with; the rest (outcomes decided
            # as the connection ended, writes that failed) is written now.
            recorded = yield progress.settled()
            by_recipient = {
                recipient_id: recipient_outcome
                for outcome in outcomes
                for recipient_id, recipient_outcome in keyed(outcome)
            }
            remaining = [d for d in deliveries if d.recipient_id not in recorded]
            if remaining:
                yield self._finish(remaining, by_recipient, None, server)
            return
        reply = last_failure.reply if last_failure else "451 4.4.1 no server could be reached"
        # A smarthost refusing us (a wrong password, say) is our problem, not the
        # recipient's: keep the mail queued rather than bounce everything.
        permanent = bool(last_failure and last_failure.permanent) and key != SMARTHOST
        yield self._finish(deliveries, {}, reply, None, temporary=not permanent)

    @defer.inlineCallbacks
    def _envelopes(self, deliveries: list[Delivery]):
        message_ids = sorted({delivery.message_id for delivery in deliveries})
        raws = yield self._store.run(queue.outgoing_raw, message_ids)
        if self._signer is not None:
            raws = yield self._signer.sign_all(raws)
        grouped: dict[int, list[Delivery]] = defaultdict(list)
        for delivery in deliveries:
            grouped[delivery.queue_message_id].append(delivery)
        return [
            client.Envelope(
                sender=group[0].envelope_sender,
                recipients=tuple(delivery.address for delivery in group),
                raw=raws[group[0].message_id],
                key=tuple(delivery.recipient_id for delivery in group),
            )
            for group in grouped.values()
        ]

    @defer.inlineCallbacks
    def _targets(self, key: str, domain: str):
        if key == SMARTHOST:
            smarthost = self._settings.smarthost
            return [(smarthost.host, smarthost.host, smarthost.port)]
        destinations = yield self._resolver.resolve(domain)
        port = self._settings.mx_port
        return [(destination.host, destination.address, port) for destination in destinations]

    # -- outcomes -------------------------------------------------------------------------

    def _backoff(self, delivery: Delivery, now: datetime.datetime) -> datetime.datetime:
        delay = min(
            self._settings.retry_first * 2 ** min(delivery.attempts, 30), self._settings.retry_max
        )
        return now + datetime.timedelta(seconds=delay)

    @defer.inlineCallbacks
    def _finish(
        self,
        deliveries,
        outcomes: dict,
        default_reply: str | None,
        server: str | None,
        temporary: bool = False,
    ):
        now = self._now()
        results, bounced, warn = self._results(
            deliveries, outcomes, default_reply, server, now, temporary
        )
        yield self._progress.write(Progress((), tuple(results), now))
        yield self._committed(results, bounced, warn, now)

    def _committed(self, results, bounced, warn, at) -> defer.Deferred | None:
        """Outcomes committed: the subscribers of `events.outcome` hear of them, then the
        senders are told of bounces and delays."""
        self.outcomes_committed(results)
        if not bounced and not warn:
            return None  # the usual case: nothing to wait for
        return self._notify_after_commit(bounced, warn, at)

    def outcomes_committed(self, results) -> None:
        """Outcomes committed: the subscribers of `events.outcome` hear of them."""
        if results:
            self._events.outcome.fire(tuple(results))
        if self._metrics is not None:
            # After the subscribers heard, and guarded: a failing count must not keep
            # the outcome from them or the DSN from the sender.
            counting(self._metrics.delivery_results, results)

    def _results(
        self,
        deliveries,
        outcomes: dict,
        default_reply: str | None,
        server: str | None,
        now: datetime.datetime,
        temporary: bool = False,
    ):
        """The DeliveryResult of each delivery, and who is told of a bounce or a delay."""
        lifetime = datetime.timedelta(seconds=self._settings.max_queue_lifetime)
        results: list[DeliveryResult] = []
        bounced: list[tuple[Delivery, FailedRecipient]] = []
        warn: list[tuple[Delivery, FailedRecipient]] = []
        for delivery in deliveries:
            outcome = outcomes.get(delivery.recipient_id)
            uncertain = False
            if outcome is not None:
                reply, code = outcome.reply, outcome.code
                permanent = 500 <= code < 600
                delivered = 200 <= code < 300
                uncertain = outcome.uncertain
            else:
                reply = default_reply or "451 4.4.1 no answer about this recipient"
                delivered, permanent = False, not temporary
            if delivered:
                results.append(
                    DeliveryResult(
                        delivery.recipient_id,
                        "delivered",
                        reply,
                        server,
                        now,
                        origin=delivery.origin,
                        domain=delivery.domain,
                    )
                )
                continue
            if not permanent and now - delivery.created_at >= lifetime:
                days = self._settings.max_queue_lifetime / 86400
                reply = f"{reply} (gave up after {days:g} days in the queue)"
                permanent = True
            if permanent:
                results.append(
                    DeliveryResult(
                        delivery.recipient_id,
                        "bounced",
                        reply,
                        server,
                        now,
                        origin=delivery.origin,
                        domain=delivery.domain,
                    )
                )
                if not delivery.notify_sender:
                    continue  # its origin records it (a hook): no DSN to the sender
                bounced.append(
                    (delivery, FailedRecipient(delivery.address, "failed", reply, server, now))
                )
                continue
            next_attempt = self._backoff(delivery, now)
            results.append(
                DeliveryResult(
                    delivery.recipient_id,
                    "deferred",
                    reply,
                    server,
                    now,
                    next_attempt,
                    origin=delivery.origin,
                    uncertain=uncertain,
                    domain=delivery.domain,
                )
            )
            warn_after = self._settings.delay_warning
            if (
                warn_after
                and delivery.notify_sender
                and not delivery.delay_warned
                and (now - delivery.created_at).total_seconds() >= warn_after
            ):
                warn.append(
                    (delivery, FailedRecipient(delivery.address, "delayed", reply, server, now))
                )
        return results, bounced, warn

    @defer.inlineCallbacks
    def _notify_after_commit(self, bounced, warn, now):
        """DSNs for bounces and delay warnings, once the outcomes are committed."""
        yield self._notify(bounced, now)
        if warn:
            yield self._notify(warn, now)
            yield self._store.run(
                queue.mark_delay_warned, [delivery.recipient_id for delivery, _ in warn]
            )

    @defer.inlineCallbacks
    def _notify(self, failures: list[tuple[Delivery, FailedRecipient]], now):
        """One DSN per original message; never for a bounce (no bounce loops)."""
        by_message: dict[int, list[tuple[Delivery, FailedRecipient]]] = defaultdict(list)
        for delivery, failed in failures:
            if delivery.is_bounce or not delivery.envelope_sender:
                log.warn(
                    "a bounce to {sender} could not be delivered to {address}: {reply}",
                    sender=delivery.envelope_sender or "<>",
                    address=failed.address,
                    reply=failed.reply,
                )
                continue
            by_message[delivery.queue_message_id].append((delivery, failed))
        if not by_message:
            return
        raws = yield self._store.run(
            filing.messages_raw, sorted({group[0][0].message_id for group in by_message.values()})
        )
        for group in by_message.values():
            first = group[0][0]
            dsn = build_dsn(
                self._hostname,
                first.envelope_sender,
                [failed for _, failed in group],
                raws[first.message_id],
                first.created_at,
                now,
            )
            try:
                yield send_notification(self._intake, first.envelope_sender, dsn, Origin("bounce"))
            except Exception:
                log.failure("sending a delivery status notification failed")
