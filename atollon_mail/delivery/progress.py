"""Delivery progress: what the runner's connections write down as they go.

Outcomes are written as the replies arrive, not when the connection is done, and each
message's final dot is sent only after it was written down in the dot journal (and is
committed to the store with the next progress commit: the replies that came in meanwhile
ride in the same commit; all connections share one group commit). So after a kill the
store knows, per in-flight recipient, whether its message may have left (see
`ProgressWriter.requeue`).
"""

from __future__ import annotations

import datetime
import functools
from collections import defaultdict
from collections.abc import Callable, Sequence

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from atollon_mail.delivery.dotjournal import DotJournal
from atollon_mail.delivery.intake import GroupCommitter
from atollon_mail.smtp import client
from atollon_mail.store import common, queue
from atollon_mail.store.records import Delivery, DeliveryResult, RequeuedDeliveries

log = Logger()

# A connection sends its next final dot without waiting for a commit while fewer than
# this many of its progress writes are uncommitted; past it, the dot waits for the
# oldest. This bounds what a kill can leave uncertain per connection when the store is
# slow. With 2, each connection sent at most 2 messages per commit interval, which capped
# relaying (bench/relay.py) at 567 and 720 msg/s and campaign delivery at 977 msg/s; with
# 4 relaying ran at 878 and 902 msg/s, with 8 no faster (876, 951) but a kill -9 in
# tests/e2e/test_kill.py left 150 recipients uncertain instead of 77 to 80.
MAX_AHEAD = 4
# Replies and marks are committed this long after the first of a batch came in, so one
# commit takes many: relaying 5000 messages (bench/relay.py) made about 2100 progress
# commits without the wait.
PROGRESS_DELAY = 0.02


@attrs.frozen
class Progress:
    """What one connection has to write down at once: recipients whose final dot is
    about to be sent (already in the dot journal, segment `segment`), and outcomes that
    came in."""

    marks: tuple[int, ...]
    results: tuple[DeliveryResult, ...]
    at: datetime.datetime
    segment: int | None = None


@common.flushed_lazily
def record_progress(items: Sequence[Progress], node: str | None = None) -> list[None]:
    """Progress of several connections in one transaction (one commit). Nothing waits
    for the disk here: the dots were written down in the dot journal before they went
    out, and what this must survive is this process dying (see common.flushed_lazily).
    A mark whose outcome is in the same batch needs no writing. Given `node` (several
    nodes on PostgreSQL): only on recipients still in flight under its claim."""
    decided = {result.recipient_id for item in items for result in item.results}
    marks = [
        recipient_id for item in items for recipient_id in item.marks if recipient_id not in decided
    ]
    if marks:
        at = max(item.at for item in items if item.marks)
        queue.mark_dots_sent(marks, at, node, or_unclaimed=False)
    queue.record_delivery_results([result for item in items for result in item.results], node)
    return [None] * len(items)


def progress_recorder(node: str | None):
    """record_progress for this node's runner (a partial keeps its name in the metrics)."""
    if node is None:
        return record_progress
    recorder = functools.partial(record_progress, node=node)
    recorder.flushed_lazily = True  # type: ignore[attr-defined]
    return recorder


def requeue(marks: dict[int, datetime.datetime], now: datetime.datetime, node: str | None = None):
    """At start: the dot journal's marks into the store, then every in-flight recipient
    of this node queued again (those marked as uncertain), in one transaction."""
    by_time: dict[datetime.datetime, list[int]] = defaultdict(list)
    for recipient_id, at in marks.items():
        by_time[at].append(recipient_id)
    for at, recipient_ids in by_time.items():
        queue.mark_dots_sent(recipient_ids, at, node)
    return queue.requeue_in_flight(now, node)


def keyed(outcome: client.EnvelopeOutcome):
    """(queue recipient id, RecipientOutcome) for each recipient of an envelope."""
    return zip(outcome.envelope.key, outcome.recipients, strict=True)


class NodeLockUnconfirmed(OSError):
    """The node's lock was not confirmed lately (several nodes: cluster.ClaimKeeper):
    another node may release this node's claims, so no final dot goes out. An OSError,
    as a dot journal that cannot be written: the connection is dropped, replies kept."""


class ProgressWriter:
    """The runner's progress writes: marks and outcomes of every connection, group
    committed (one batch at a time, taken `delay` after its first item), and the dot
    journal each final dot is written down in before it goes out."""

    def __init__(
        self,
        store,
        journal: DotJournal,
        clock,
        delay: float = PROGRESS_DELAY,
        batch_sizes=None,
        dots_allowed: Callable[[], bool] | None = None,
    ):
        self._store = store
        self._dots = journal
        # Several nodes: whether this node's lock was confirmed lately (the fence before
        # each final dot; cluster.ClaimKeeper.confirmed). None: one box, always.
        self._dots_allowed = dots_allowed
        # Nothing but the dot of a connection too far ahead of its commits waits for
        # these (see MAX_AHEAD).
        self._committer = GroupCommitter(
            store,
            progress_recorder(getattr(store, "node", None)),
            size_of=lambda item: 0,
            clock=clock,
            delay=delay,
            batch_sizes=batch_sizes,
        )

    def requeue(self, now: datetime.datetime) -> defer.Deferred:
        """At start: what the dot journal holds and every in-flight recipient queued
        again (`requeue`); fires with the RequeuedDeliveries once committed, the
        journal's segments removed then."""
        node = getattr(self._store, "node", None)
        requeued = self._store.run(requeue, self._dots.recover(), now, node)
        requeued.addCallback(self._requeued)
        return requeued

    def _requeued(self, requeued: RequeuedDeliveries) -> RequeuedDeliveries:
        self._dots.discard()
        return requeued

    def write(self, progress: Progress) -> defer.Deferred:
        """Fires once the progress is committed (with the others of its batch)."""
        return self._committer.add(progress)

    def note_dots(self, marks: tuple[int, ...], at: datetime.datetime) -> int:
        """Marks written down in the dot journal; the segment they went to. OSError when
        they cannot be (the dot must not go out then)."""
        if self._dots_allowed is not None and not self._dots_allowed():
            raise NodeLockUnconfirmed("this node's lock is not confirmed: no final dot sent")
        return self._dots.note(marks, at)

    def settled(self, progress: Progress) -> None:
        """A progress write committed: its marks need the dot journal no more."""
        if progress.segment is not None:
            self._dots.settled(progress.segment, len(progress.marks))

    def close(self) -> defer.Deferred:
        """The dot journal closed, and what waits written now, not lost to the delay."""
        self._dots.close()
        return self._committer.flush()


# decide(deliveries, outcomes, default_reply, server, now) -> (results, bounced, warn): how
# the runner turns replies into DeliveryResults, and whom it tells of a bounce or a delay;
# committed(results, bounced, warn, at): what follows their commit (events, DSNs).
Decide = Callable[[Sequence[Delivery], dict, str | None, str, datetime.datetime], tuple]
Committed = Callable[[Sequence[DeliveryResult], list, list, datetime.datetime], object]


class ConnectionProgress:
    """The client's `progress` for one connection: outcomes written as they arrive, and
    each final dot written down in the dot journal before it goes out."""

    def __init__(
        self,
        deliveries: Sequence[Delivery],
        server: str,
        writer: ProgressWriter,
        *,
        now: Callable[[], datetime.datetime],
        decide: Decide,
        committed: Committed,
    ):
        self._deliveries = {delivery.recipient_id: delivery for delivery in deliveries}
        self._server = server
        self._writer = writer
        self._now = now
        self._decide = decide
        self._committed = committed
        self._writes: list[defer.Deferred] = []
        self._recorded: set[int] = set()  # recipient ids whose outcome is committed

    def __call__(
        self, finished: Sequence[client.EnvelopeOutcome], dot: client.DotPending | None
    ) -> defer.Deferred | None:
        now = self._now()
        outcomes = {
            recipient_id: recipient_outcome
            for outcome in finished
            for recipient_id, recipient_outcome in keyed(outcome)
        }
        decided = [self._deliveries[recipient_id] for recipient_id in outcomes]
        results, bounced, warn = self._decide(decided, outcomes, None, self._server, now)
        results = tuple(results)
        if dot is None:
            self._write(Progress((), results, now), outcomes, bounced, warn)
            return None
        marks = tuple(dot.envelope.key[index] for index in dot.recipients)
        # Only writes not yet committed are kept (settled() waits for them).
        self._writes = ahead = [write for write in self._writes if not write.called]
        if len(ahead) < MAX_AHEAD:
            # Written down before the dot goes out. If it cannot be, the dot is not sent
            # (raising makes the client drop the connection); the replies are kept.
            try:
                segment = self._writer.note_dots(marks, now)
            except OSError:
                self._write(Progress((), results, now), outcomes, bounced, warn)
                raise
            self._write(Progress(marks, results, now, segment), outcomes, bounced, warn)
            return None
        # Too far ahead of the store: the dot waits for the oldest write (whatever its
        # outcome), and is written down as it goes.
        self._write(Progress((), results, now), outcomes, bounced, warn)
        gate: defer.Deferred = defer.Deferred()

        def release(passed):
            at = self._now()
            try:
                segment = self._writer.note_dots(marks, at)
            except OSError:
                gate.errback()
                return passed
            self._write(Progress(marks, (), at, segment), {}, [], [])
            gate.callback(None)
            return passed

        ahead[0].addBoth(release)
        return gate

    def _write(self, progress: Progress, outcomes: dict, bounced, warn) -> None:
        # Bound methods and one addCallbacks: closures and a second errback per write cost
        # the reactor a few microseconds per relayed message.
        written = self._writer.write(progress)
        written.addCallbacks(
            self._write_committed,
            self._write_failed,
            callbackArgs=(progress, outcomes, bounced, warn),
        )
        self._writes.append(written)

    def _write_committed(self, _, progress: Progress, outcomes: dict, bounced, warn):
        try:
            self._recorded.update(outcomes)
            self._writer.settled(progress)
            after = self._committed(progress.results, bounced, warn, progress.at)
        except Exception:
            log.failure("after delivery outcomes")
            return None
        if isinstance(after, defer.Deferred):
            after.addErrback(lambda failure: log.failure("after delivery outcomes", failure))
        return after

    @staticmethod
    def _write_failed(failure) -> None:
        # Not recorded: these outcomes are written again when the connection is done
        # (the marks stay in the dot journal until the next start).
        log.failure("recording delivery outcomes failed", failure)

    @defer.inlineCallbacks
    def settled(self):
        """Fires, once every write made so far is over, with the recipients recorded."""
        while self._writes:
            writes, self._writes = self._writes, []
            yield defer.DeferredList(writes)
        return self._recorded
