"""The delivery runner: takes due recipients from the queue and delivers them.

Recipients are claimed in batches (their state becomes in-flight), grouped by
destination (the recipient's domain, or the smarthost), and sent over a bounded number
of connections per destination and in all, several messages per connection. Every
outcome is written back with its reply; a 5xx or an expired recipient bounces with a
DSN to the sender, a 4xx or a failed connection defers it with backoff.

Outcomes are written as the replies arrive, not when the connection is done, and each
message's final dot is sent only after the store has committed that it is being sent
(the replies that came in meanwhile ride in the same commit; all connections share one
group commit). So after a kill the store knows, per in-flight recipient, whether its
message may have left: those whose dot was sent and whose reply was not recorded are
queued again and marked uncertain (at most the replies of the last commit plus one
message per open connection); the others go back quietly.
"""

from __future__ import annotations

import datetime
from collections import defaultdict, deque
from collections.abc import Callable, Sequence

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from atollon_mail.config import DeliveryConfig
from atollon_mail.delivery.bounce import FailedRecipient, build_dsn
from atollon_mail.delivery.dotjournal import DotJournal
from atollon_mail.delivery.intake import GroupCommitter
from atollon_mail.delivery.mx import DNSLookupError, TemporaryDNSError
from atollon_mail.events import Events
from atollon_mail.smtp import client
from atollon_mail.store import common, filing, queue
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
# A connection sends its next final dot without waiting for a commit while fewer than
# this many of its progress writes are uncommitted; past it, the dot waits for the
# oldest. This bounds what a kill can leave uncertain per connection when the store is
# slow.
MAX_AHEAD = 2
# Replies and marks are committed this long after the first of a batch came in, so one
# commit takes many: relaying 5000 messages (bench/relay.py) made about 2100 progress
# commits without the wait.
PROGRESS_DELAY = 0.02


@attrs.frozen
class _Progress:
    """What one connection has to write down at once: recipients whose final dot is
    about to be sent (already in the dot journal, segment `segment`), and outcomes that
    came in."""

    marks: tuple[int, ...]
    results: tuple[DeliveryResult, ...]
    at: datetime.datetime
    segment: int | None = None


@common.flushed_lazily
def _record_progress(items: Sequence[_Progress]) -> list[None]:
    """Progress of several connections in one transaction (one commit). Nothing waits
    for the disk here: the dots were written down in the dot journal before they went
    out, and what this must survive is this process dying (see common.flushed_lazily).
    A mark whose outcome is in the same batch needs no writing."""
    decided = {result.recipient_id for item in items for result in item.results}
    marks = [
        recipient_id for item in items for recipient_id in item.marks if recipient_id not in decided
    ]
    if marks:
        queue.mark_dots_sent(marks, max(item.at for item in items if item.marks))
    queue.record_delivery_results([result for item in items for result in item.results])
    return [None] * len(items)


def _requeue(marks: dict[int, datetime.datetime], now: datetime.datetime):
    """At start: the dot journal's marks into the store, then every in-flight recipient
    queued again (those marked as uncertain), in one transaction."""
    by_time: dict[datetime.datetime, list[int]] = defaultdict(list)
    for recipient_id, at in marks.items():
        by_time[at].append(recipient_id)
    for at, recipient_ids in by_time.items():
        queue.mark_dots_sent(recipient_ids, at)
    return queue.requeue_in_flight(now)


def utc_from_seconds(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(tzinfo=None)


@defer.inlineCallbacks
def send_notification(intake, address: str, raw: bytes, origin: Origin):
    """Deliver a message from <> (a DSN, an auto-reply, a notice: `origin` says which) to
    address: filed if local, else queued."""
    routed = yield intake.route(address)
    if isinstance(routed, Recipient):
        yield intake.accept("", [routed], raw)
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
    ):
        self._store = store
        self._dots = journal
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
        # taken progress_delay after its first item. Nothing but the dot of a connection
        # too far ahead of its commits waits for these (see MAX_AHEAD).
        self._journal = GroupCommitter(
            store,
            _record_progress,
            size_of=lambda item: 0,
            clock=reactor,
            delay=progress_delay,
        )
        self._starting: defer.Deferred | None = None
        # Fires when the queue is idle (nothing pending or in flight); tests wait on it.
        self._idle_waiters: list[defer.Deferred] = []

    # -- lifecycle ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # Anything in flight when the appliance stopped (or was killed) is tried again.
        marks = self._dots.recover()
        self._starting = self._store.run(_requeue, marks, self._now())
        self._starting.addCallback(self._requeued)
        self._starting.addErrback(self._requeue_failed)

    def _requeued(self, requeued) -> None:
        self._dots.discard()
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
        self._dots.close()
        # Replies that came in are written now, not lost to the delay.
        return self._journal.flush()

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
        claimed = self._store.run(queue.claim_due_deliveries, self._now(), limit)
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
            progress = _ConnectionProgress(self, deliveries, server)
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
                for recipient_id, recipient_outcome in _keyed(outcome)
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
        yield self._journal.add(_Progress((), tuple(results), now))
        self.outcomes_committed(results)
        yield self._notify_after_commit(bounced, warn, now)

    def outcomes_committed(self, results) -> None:
        """Outcomes committed: the subscribers of `events.outcome` hear of them."""
        if results:
            self._events.outcome.fire(tuple(results))

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


def _keyed(outcome: client.EnvelopeOutcome):
    """(queue recipient id, RecipientOutcome) for each recipient of an envelope."""
    return zip(outcome.envelope.key, outcome.recipients, strict=True)


class _ConnectionProgress:
    """The client's `progress` for one connection: outcomes written as they arrive, and
    each final dot written down in the dot journal before it goes out."""

    def __init__(self, runner: DeliveryRunner, deliveries: Sequence[Delivery], server: str):
        self._runner = runner
        self._deliveries = {delivery.recipient_id: delivery for delivery in deliveries}
        self._server = server
        self._writes: list[defer.Deferred] = []
        self._recorded: set[int] = set()  # recipient ids whose outcome is committed

    def __call__(
        self, finished: Sequence[client.EnvelopeOutcome], dot: client.DotPending | None
    ) -> defer.Deferred | None:
        runner = self._runner
        now = runner._now()
        outcomes = {
            recipient_id: recipient_outcome
            for outcome in finished
            for recipient_id, recipient_outcome in _keyed(outcome)
        }
        decided = [self._deliveries[recipient_id] for recipient_id in outcomes]
        results, bounced, warn = runner._results(decided, outcomes, None, self._server, now)
        progress = _Progress((), tuple(results), now)
        if dot is None:
            self._write(progress, outcomes, bounced, warn)
            return None
        marks = tuple(dot.envelope.key[index] for index in dot.recipients)
        ahead = [write for write in self._writes if not write.called]
        if len(ahead) < MAX_AHEAD:
            # Written down before the dot goes out. If it cannot be, the dot is not sent
            # (raising makes the client drop the connection); the replies are kept.
            try:
                segment = runner._dots.note(marks, now)
            except OSError:
                self._write(progress, outcomes, bounced, warn)
                raise
            self._write(
                attrs.evolve(progress, marks=marks, segment=segment), outcomes, bounced, warn
            )
            return None
        # Too far ahead of the store: the dot waits for the oldest write (whatever its
        # outcome), and is written down as it goes.
        self._write(progress, outcomes, bounced, warn)
        gate: defer.Deferred = defer.Deferred()

        def release(passed):
            at = runner._now()
            try:
                segment = runner._dots.note(marks, at)
            except OSError:
                gate.errback()
                return passed
            self._write(_Progress(marks, (), at, segment), {}, [], [])
            gate.callback(None)
            return passed

        ahead[0].addBoth(release)
        return gate

    def _write(self, progress: _Progress, outcomes: dict, bounced, warn) -> None:
        runner = self._runner
        written = runner._journal.add(progress)

        def committed(_):
            self._recorded.update(outcomes)
            if progress.segment is not None:
                runner._dots.settled(progress.segment, len(progress.marks))
            runner.outcomes_committed(progress.results)
            return runner._notify_after_commit(bounced, warn, progress.at)

        def failed(failure):
            # Not recorded: these outcomes are written again when the connection is done
            # (the marks stay in the dot journal until the next start).
            log.failure("recording delivery outcomes failed", failure)

        written.addCallbacks(committed, failed)
        written.addErrback(lambda failure: log.failure("after delivery outcomes", failure))
        self._writes.append(written)

    @defer.inlineCallbacks
    def settled(self):
        """Fires, once every write made so far is over, with the recipients recorded."""
        while self._writes:
            writes, self._writes = self._writes, []
            yield defer.DeferredList(writes)
        return self._recorded
