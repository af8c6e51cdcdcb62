"""Intake: what the SMTP server hands accepted mail to.

It resolves recipients against the store and stores messages with group commit: while
one transaction is being written, the messages that arrive meanwhile wait and go
together in the next one. Every session still gets its 250 only after the transaction
holding its message committed; many sessions share one fsync.
"""

from __future__ import annotations

import email.header
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from atollon_mail.delivery.reencode import fit_line_length, has_long_line
from atollon_mail.delivery.srs import ExpiredAddress, ForgedAddress, SRSError, is_srs
from atollon_mail.events import Events
from atollon_mail.interfaces import IMailIntake, IStore, ISubmissionIntake
from atollon_mail.metrics import counting
from atollon_mail.store import domains as domain_ops
from atollon_mail.store import filing, forwarding, mailboxes, queue, searchtext
from atollon_mail.store.records import (
    ForwardingPlan,
    InboundVerdict,
    IncomingMessage,
    Origin,
    OutgoingMessage,
    Recipient,
    Rejection,
    Resolution,
    SendingIdentity,
)

# How stale the cached list of our domains may be: a domain added with the admin command
# is recognised by a running server within this many seconds.
DOMAIN_CACHE_SECONDS = 2.0

# A batch is bounded so one commit never holds an unbounded amount of memory.
MAX_BATCH_MESSAGES = 256
# Messages up to this size are looked over for an over-long line on the reactor (about
# 0.25 ms at most); larger ones go to the CPU pool (see Intake._in_workers).
INLINE_FIT_LIMIT = 64 * 1024
MAX_BATCH_BYTES = 32 * 1024 * 1024

# Header fields kept beside the raw bytes (for listings) and their length limits.
_SUMMARY_FIELDS = {
    b"message-id": ("message_id", 998),
    b"subject": ("subject", 4000),
    b"from": ("from_header", 4000),
    b"date": ("date_header", 200),
}


# The longest envelope sender worth writing: a path of at most 256 octets (RFC 5321).
MAX_SENDER_LENGTH = 254


class ForwardingLoop(Exception):
    """A message for a forwarding mailbox that has been through that mailbox already.

    Permanent: smtp_code and enhanced_status say how the SMTP server answers (the hop
    that sent it bounces it, once).
    """

    smtp_code = 554
    enhanced_status = "5.4.6"


def delivered_to(raw: bytes) -> frozenset[str]:
    """The addresses of the Delivered-To: fields of the header section, lower-cased."""
    end = raw.find(b"\r\n\r\n")
    block = raw if end < 0 else raw[: end + 2]
    if b"delivered-to:" not in block.lower():
        return frozenset()
    found = set()
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"delivered-to":
            address = value.decode("utf-8", "replace").strip().strip("<>").strip()
            found.add(address.lower())
    return frozenset(found)


def _decoded(value: bytes, limit: int) -> str | None:
    text = value.decode("utf-8", "replace")
    if "=?" in text:  # RFC 2047 encoded words
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except (ValueError, LookupError, UnicodeError):
            pass  # keep the undecoded text rather than nothing
    # An encoded word may decode to NUL, which PostgreSQL takes in no text column.
    text = " ".join(text.replace("\x00", " ").split())
    return text[:limit] or None


def summarize_headers(raw: bytes) -> dict[str, str | None]:
    """The first Message-ID, Subject, From and Date of the header section, decoded.

    Scanned by hand rather than with the email package's parser: this runs for every
    message on the reactor thread, and the full parser cost more than the rest of the
    SMTP session. The raw bytes are stored untouched either way.
    """
    if raw.startswith(b"\r\n"):
        return {field: None for field, _ in _SUMMARY_FIELDS.values()}  # no header section
    end = raw.find(b"\r\n\r\n")
    block = raw if end < 0 else raw[:end]
    found: dict[bytes, list[bytes]] = {}
    current: list[bytes] | None = None
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):  # a folded continuation of the previous field
            if current is not None:
                current.append(line.strip())
            continue
        name, colon, value = line.partition(b":")
        key = name.strip().lower()
        current = None
        if colon and key in _SUMMARY_FIELDS and key not in found:
            current = found[key] = [value.strip()]
    summary: dict[str, str | None] = {field: None for field, _ in _SUMMARY_FIELDS.values()}
    for key, parts in found.items():
        field, limit = _SUMMARY_FIELDS[key]
        summary[field] = _decoded(b" ".join(parts), limit)
    return summary


def _fitted(outgoing: OutgoingMessage) -> OutgoingMessage:
    """outgoing with no line over 998 octets (its headers, so its summary, unchanged)."""
    raw = fit_line_length(outgoing.raw)
    return outgoing if raw is outgoing.raw else attrs.evolve(outgoing, raw=raw)


class GroupCommitter:
    """Writes items through one store operation that takes a batch and returns one result
    (or exception) per item; items arriving while a batch is written wait for the next."""

    def __init__(
        self,
        store: IStore,
        operation,
        concurrent_batches: int = 1,
        size_of=None,
        clock=None,
        delay: float = 0.0,
        batch_sizes=None,
    ):
        """With `delay` (and `clock`), a batch is taken that long after its first item
        came, so what comes meanwhile shares its commit. `batch_sizes` (a Histogram of
        atollon_mail.metrics, labelled for this writer; None: not counted) observes the
        items of each batch."""
        self._store = store
        self._operation = operation
        self._size_of = size_of or (lambda item: len(item.raw))
        self._concurrent_batches = concurrent_batches
        self._writing = 0
        self._waiting: list[tuple[object, Deferred]] = []
        self._log = Logger()
        self._clock = clock
        self._delay = delay if clock is not None else 0.0
        self._timer = None
        self._batch_sizes = batch_sizes

    def add(self, item) -> Deferred:
        """Deferred firing with the item's result once its transaction has committed."""
        done: Deferred = Deferred()
        self._waiting.append((item, done))
        self._write_next_batch()
        return done

    def _take_batch(self) -> list[tuple[object, Deferred]]:
        size = 0
        count = 0
        for item, _ in self._waiting:
            item_size = self._size_of(item)
            if count and (count >= MAX_BATCH_MESSAGES or size + item_size > MAX_BATCH_BYTES):
                break
            size += item_size
            count += 1
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        return batch

    def _write_next_batch(self) -> None:
        if self._writing >= self._concurrent_batches or not self._waiting:
            return
        if self._delay:
            if self._timer is None:
                self._timer = self._clock.callLater(self._delay, self._delay_over)
            return
        self._write_batch()

    def flush(self) -> Deferred:
        """Write what waits now, without the delay; fires once it is written."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiting = [done for _, done in self._waiting]
        while self._waiting:
            self._write_batch()
        return DeferredList(waiting, consumeErrors=True)

    def _delay_over(self) -> None:
        self._timer = None
        if self._writing < self._concurrent_batches and self._waiting:
            self._write_batch()

    def _write_batch(self) -> None:
        batch = self._take_batch()
        self._writing += 1
        written = self._store.run(self._operation, [item for item, _ in batch])
        if self._batch_sizes is not None:
            # After the write is under way, and guarded: counting never holds up mail.
            counting(self._batch_sizes.observe, len(batch))
        written.addCallbacks(self._batch_written, self._batch_failed, (batch,), None, (batch,))
        written.addBoth(self._batch_done)

    def _batch_written(self, results, batch) -> None:
        for (_, done), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                self._log.error("storing a message failed: {problem!r}", problem=result)
                done.errback(result)
            else:
                done.callback(result)

    def _batch_failed(self, failure, batch) -> None:
        # The transaction did not commit, so none of these messages may be acknowledged.
        self._log.failure("storing a batch of {count} messages failed", failure, count=len(batch))
        for _, done in batch:
            done.errback(failure)

    def _batch_done(self, _) -> None:
        self._writing -= 1
        self._write_next_batch()


def fits_inline(raw: bytes) -> bool:
    """A message small enough to look over on the reactor that needs no fitting."""
    return len(raw) <= INLINE_FIT_LIMIT and not has_long_line(raw)


@implementer(IMailIntake)
class Intake:
    """Stores what the SMTP servers accept: local mail filed at once, the rest queued.

    After a commit that queued mail for remote delivery it fires `events.queued` (the
    delivery runner's wake-up); once mail filed into local mailboxes has committed it
    fires `events.filed(envelope_sender, recipients, raw)` (the auto-responder and the
    producers' return addresses listen). Mail to an address a producer sends from and
    hears back at (bounces and unsubscribe mail to a mass mailing's own addresses)
    resolves through `return_addresses` (an object with `resolve(local_part, domain)`
    answering a Deferred for such an address and None for any other; None: there are
    none here).

    Mail for a mailbox with forwarding on goes on to its forward addresses too; copies
    sent elsewhere get an SRS envelope sender from `srs` (a delivery.srs.SRS; without
    one they keep the original sender) and an ARC seal from `sealer` (a
    delivery.arc.ArcSealer; without one they go unsealed). Bounces to our SRS addresses
    resolve to the original sender's address, which the SMTP server queues like any
    remote recipient.

    Mail submitted here (by users, relay hosts, the web client) has its lines fitted to
    998 octets before it is stored (delivery.reencode; SMTP mail whenever it has a
    recipient elsewhere, even if a mailbox here also forwards it), so the stored copy, the
    Sent copy and what is signed and sent are the same bytes; with `workers` (a thread
    pool, and `clock` the reactor) that work runs there. Forwarded mail is someone else's
    message and goes on as it came: re-encoding it would break its author's DKIM signature.
    """

    def __init__(
        self,
        store: IStore,
        events: Events | None = None,
        concurrent_batches: int = 1,
        clock=None,
        srs=None,
        workers=None,
        return_addresses=None,
        sealer=None,
        metrics=None,
    ):
        self._store = store
        # Seals what a mailbox forwards elsewhere (delivery.arc.ArcSealer; None: unsealed).
        self._sealer = sealer
        self._events = events if events is not None else Events()
        self._workers = workers
        # With a clock, the set of our domains is cached for DOMAIN_CACHE_SECONDS, so a
        # recipient in someone else's domain (relayed or refused mail) costs no query.
        self._clock = clock
        self._domains: frozenset[str] | None = None
        self._domains_loaded_at: float | None = None
        self._domains_loading = False
        # The size of each group commit, on the appliance's metrics (None: not counted).
        batch_sizes = None if metrics is None else metrics.group_commit_batch_size
        self._local = GroupCommitter(
            store,
            filing.store_messages,
            concurrent_batches,
            batch_sizes=None if batch_sizes is None else batch_sizes.labels("store_messages"),
        )
        # Items are (OutgoingMessage, Origin): what queue.submit_messages takes.
        self._outgoing = GroupCommitter(
            store,
            queue.submit_messages,
            concurrent_batches,
            size_of=lambda item: len(item[0].raw),
            batch_sizes=None if batch_sizes is None else batch_sizes.labels("submit_messages"),
        )
        self.srs = srs
        self._return_addresses = return_addresses

    def _not_ours(self, domain: str) -> Rejection | None:
        """The refusal for a domain the cached list says is not ours (None: it may be)."""
        if self._clock is None:
            return None
        domains = self._known_domains()
        name = domain.lower().rstrip(".")
        if domains is not None and name not in domains:
            return Rejection("unknown-domain", f"{name} is not a domain of this server")
        return None

    def resolve_recipient(self, local_part: str, domain: str) -> Deferred:
        not_ours = self._not_ours(domain)
        if not_ours is not None:
            return succeed(not_ours)
        if self._return_addresses is not None:
            returned = self._return_addresses.resolve(local_part, domain)
            if returned is not None:
                return returned
        resolved = self._store.run(filing.resolve_recipient, local_part, domain)
        if self.srs is not None and is_srs(local_part):
            resolved.addCallback(self._srs_resolved, local_part, domain)
        return resolved

    def lookup_recipient(self, local_part: str, domain: str) -> Resolution | Deferred:
        """resolve_recipient's answer as one tagged Resolution (what the SMTP policies
        decide on); given at once, not in a Deferred, for a domain known not to be ours
        (every recipient of relayed mail: the Deferreds around those answers were a
        tenth of the Deferred callbacks run per relayed message)."""
        not_ours = self._not_ours(domain)
        if not_ours is not None:
            return Resolution.of(not_ours)
        return maybeDeferred(self.resolve_recipient, local_part, domain).addCallback(Resolution.of)

    def _srs_resolved(self, found, local_part: str, domain: str):
        """A bounce to one of our SRS addresses: where it goes, or why it goes nowhere."""
        if not (isinstance(found, Rejection) and found.reason == "unknown-address"):
            return found
        try:
            original = self.srs.reverse(f"{local_part}@{domain.lower().rstrip('.')}")
        except (ForgedAddress, ExpiredAddress) as problem:
            return Rejection("unknown-address", str(problem))
        except SRSError:
            return found
        original_local, _, original_domain = original.rpartition("@")

        def routed(result):
            if isinstance(result, Rejection) and result.reason == "unknown-domain":
                return original  # elsewhere: a remote recipient
            return result

        return self.resolve_recipient(original_local, original_domain).addCallback(routed)

    def _known_domains(self) -> frozenset[str] | None:
        """The cached domain set, or None while it is missing or stale (then it reloads)."""
        now = self._clock.seconds()
        loaded_at = self._domains_loaded_at
        fresh = loaded_at is not None and now - loaded_at < DOMAIN_CACHE_SECONDS
        if not fresh and not self._domains_loading:
            self._domains_loading = True
            loading = self._store.run(domain_ops.domain_names)
            loading.addCallback(self._domains_loaded, now)
            loading.addErrback(self._domains_failed)
        return self._domains if fresh else None

    def _domains_loaded(self, domains: frozenset[str], loaded_at: float) -> None:
        self._domains, self._domains_loaded_at = domains, loaded_at
        self._domains_loading = False

    def _domains_failed(self, failure) -> None:
        self._domains_loading = False
        Logger().failure("loading the domain list failed", failure)

    def route(self, address: str) -> Deferred:
        """Recipient for a local address, the address itself for a remote one (a domain
        that is not ours), or the Rejection for a local address that receives nothing."""
        local_part, _, domain = address.rpartition("@")

        def routed(found):
            if isinstance(found, Rejection) and found.reason == "unknown-domain":
                return address
            return found

        return self.resolve_recipient(local_part, domain).addCallback(routed)

    def accept(
        self,
        envelope_sender: str,
        recipients: Sequence[Recipient | str],
        raw: bytes,
        verdict: InboundVerdict | None = None,
        notification: bool = False,
    ) -> Deferred:
        """`verdict`: what the inbound checks said, stored with the message; its local
        recipients are filed by it (Junk or the inbox), also when copies go on elsewhere.
        `notification`: written by this server (runner.send_notification), not received
        mail in the traffic counts."""
        local = tuple(r for r in recipients if isinstance(r, Recipient))
        remote = tuple(r for r in recipients if not isinstance(r, Recipient))
        if remote and not fits_inline(raw):
            # Recipients elsewhere come from a relay host (or are the sender of a bounce
            # to our SRS address): the message leaves from here, so its lines are fitted
            # first, as submitted mail's are; what cannot be fitted is refused (5.6.3).
            fitted = self._in_workers(fit_line_length, raw)
            fitted.addCallback(
                lambda raw: self._route(envelope_sender, local, remote, raw, verdict, notification)
            )
            return fitted
        return self._route(envelope_sender, local, remote, raw, verdict, notification)

    def _text_taken(self, record) -> Deferred:
        """The IncomingMessage or OutgoingMessage with its text for the search index
        (store.searchtext) when it will be filed here, taken before the store's
        transaction, so the rows it locks (the mailbox's uid counter, SQLite's write
        lock) are not held while it is read: on the reactor up to INLINE_FIT_LIMIT
        octets, in the CPU pool above (about 0.1 ms for a 2 KiB text message, a few ms
        for a large HTML one). Mail only queued for elsewhere is not searched here."""
        if not self._filed_here(record):
            return succeed(record)
        pooled = self._workers is not None and self._clock is not None
        if pooled and len(record.raw) > INLINE_FIT_LIMIT:
            return deferToThreadPool(
                self._clock, self._workers, searchtext.with_search_text, record
            )
        return maybeDeferred(searchtext.with_search_text, record)

    @staticmethod
    def _filed_here(record) -> bool:
        """Whether the IncomingMessage or OutgoingMessage will be filed in a mailbox here
        (for a recipient, or as a Sent copy)."""
        filed = getattr(record, "recipients", None) or getattr(record, "local_recipients", None)
        return bool(filed) or getattr(record, "sent_mailbox_id", None) is not None

    def _in_workers(self, function, raw: bytes, argument=None) -> Deferred:
        """function(argument or raw) in the CPU pool when raw is large enough to hold the
        reactor up; a small message with no over-long line is let through at once.

        Looking for an over-long line costs about 3.6 ns per octet (7 us for 2 KiB, 95 ms
        for 25 MiB). For small messages the trip through the pool (two thread hand-overs
        and a wake-up of the reactor) is what costs: relaying 2 KiB messages
        (bench/relay.py, three alternating runs on a busy machine) took 1.02-1.23 ms of
        CPU per message without it and 1.11-1.39 ms with it."""
        argument = raw if argument is None else argument
        if fits_inline(raw):
            return succeed(argument)
        if self._workers is not None and self._clock is not None:
            return deferToThreadPool(self._clock, self._workers, function, argument)
        return maybeDeferred(function, argument)

    def _route(
        self,
        envelope_sender: str,
        local: tuple[Recipient, ...],
        remote: tuple,
        raw: bytes,
        verdict: InboundVerdict | None = None,
        notification: bool = False,
    ) -> Deferred:
        if any(recipient.forwards for recipient in local):
            planned = self._store.run(forwarding.expand_forwarding, local)
            planned.addCallback(self._forward, envelope_sender, remote, raw, verdict, notification)
            return planned
        return self._accept(envelope_sender, local, remote, raw, verdict, notification)

    def _forward(
        self,
        plan: ForwardingPlan,
        envelope_sender: str,
        remote: tuple,
        raw: bytes,
        verdict: InboundVerdict | None = None,
        notification: bool = False,
    ):
        self._check_loop(plan, raw)
        if not plan.remote:
            return self._accept(envelope_sender, plan.filed, remote, raw, verdict, notification)
        raw = self._marked(plan, raw)
        if self._sealer is not None and plan.srs_domain:
            sealed = self._sealer.seal(raw, plan.srs_domain)
            sealed.addCallback(self._queue_forwarded, plan, envelope_sender, remote, verdict)
            return sealed
        return self._queue_forwarded(raw, plan, envelope_sender, remote, verdict)

    def _queue_forwarded(
        self,
        raw: bytes,
        plan: ForwardingPlan,
        envelope_sender: str,
        remote,
        verdict: InboundVerdict | None = None,
    ):
        outgoing = OutgoingMessage(
            envelope_sender=self._forward_sender(envelope_sender, plan.srs_domain),
            return_path=envelope_sender,
            raw=raw,
            local_recipients=plan.filed,
            remote_recipients=remote + plan.remote,
            is_bounce=envelope_sender == "",
            verdict=verdict,  # the copies kept here are filed by it, as received mail is
            **summarize_headers(raw),
        )
        committed = self._text_taken(outgoing)
        committed.addCallback(lambda outgoing: self._outgoing.add((outgoing, Origin("forward"))))
        committed.addCallback(self._queued)
        # The listeners answer the real sender, not our rewritten one.
        committed.addCallback(self._filed_submitted, envelope_sender, raw, verdict)
        return committed

    @staticmethod
    def _check_loop(plan: ForwardingPlan, raw: bytes) -> None:
        seen = delivered_to(raw)
        for address in plan.forwarders:
            if address.lower() in seen:
                raise ForwardingLoop(
                    f"forwarding loop detected: the message was at {address} before"
                )
        for address in plan.skipped:
            Logger().warn("a forward address receives nothing here: {address}", address=address)

    @staticmethod
    def _marked(plan: ForwardingPlan, raw: bytes) -> bytes:
        """Delivered-To for each mailbox it went through, the latest on top: a copy that
        comes back to one of them is then recognised as a loop."""
        marks = b"".join(
            f"Delivered-To: {address}\r\n".encode() for address in reversed(plan.forwarders)
        )
        return marks + raw

    def _forward_sender(self, envelope_sender: str, domain: str | None) -> str:
        """The envelope sender of copies forwarded elsewhere: SRS in the domain of the
        mailbox that forwarded them, so the receiver's SPF check passes."""
        if not envelope_sender or domain is None:
            return envelope_sender
        if self.srs is None:
            Logger().warn("no SRS configured: mail is forwarded with its original sender")
            return envelope_sender
        try:
            rewritten = self.srs.forward(envelope_sender, domain)
        except SRSError as problem:
            Logger().warn("forwarded with the original sender: {problem}", problem=problem)
            return envelope_sender
        if len(rewritten) > MAX_SENDER_LENGTH:
            Logger().warn(
                "forwarded with the original sender {sender}: its SRS form is too long",
                sender=envelope_sender,
            )
            return envelope_sender
        return rewritten

    def _accept(
        self,
        envelope_sender: str,
        local: tuple[Recipient, ...],
        remote: tuple,
        raw: bytes,
        verdict: InboundVerdict | None = None,
        notification: bool = False,
    ) -> Deferred:
        if not remote:
            incoming = IncomingMessage(
                envelope_sender=envelope_sender,
                recipients=local,
                raw=raw,
                verdict=verdict,
                notification=notification,
                **summarize_headers(raw),
            )
            stored = self._text_taken(incoming)
            stored.addCallback(self._local.add)
            if self._events.filed.subscribed:
                stored.addCallback(self._filed, envelope_sender, local, raw, verdict)
            return stored
        # Fitted already by accept().
        return self._submit_fitted(
            OutgoingMessage(
                envelope_sender=envelope_sender,
                raw=raw,
                local_recipients=local,
                remote_recipients=remote,
                is_bounce=envelope_sender == "",
                verdict=verdict,
                **summarize_headers(raw),
            ),
            Origin("relay"),
        )

    def submit(self, outgoing: OutgoingMessage, origin: Origin) -> Deferred:
        """Store, file and queue an outgoing message from `origin` (who produced it: the
        queue's one entrance, queue.enqueue, records it); fires with a SubmittedMessage.

        Its lines are fitted to 998 octets first (fails with reencode.UnencodableMessage,
        a permanent refusal, when they cannot be). Local recipients that forward are
        expanded first, as for received mail. The store files any "remote" address that
        is in fact here (queue.route_addresses), so only mail for other domains is
        queued."""
        fitted = self._in_workers(_fitted, outgoing.raw, outgoing)
        fitted.addCallback(self._submit_fitted, origin)
        return fitted

    def _submit_fitted(self, outgoing: OutgoingMessage, origin: Origin) -> Deferred:
        if any(recipient.forwards for recipient in outgoing.local_recipients):
            planned = self._store.run(forwarding.expand_forwarding, outgoing.local_recipients)
            planned.addCallback(self._submit_forwarded, outgoing, origin)
            return planned
        return self._submit(outgoing, origin)

    def _submit_forwarded(
        self, plan: ForwardingPlan, outgoing: OutgoingMessage, origin: Origin
    ) -> Deferred:
        self._check_loop(plan, outgoing.raw)
        if plan.remote:
            outgoing = attrs.evolve(
                outgoing,
                raw=self._marked(plan, outgoing.raw),
                envelope_sender=self._forward_sender(outgoing.envelope_sender, plan.srs_domain),
                return_path=outgoing.envelope_sender,
                remote_recipients=outgoing.remote_recipients + plan.remote,
            )
        return self._submit(attrs.evolve(outgoing, local_recipients=plan.filed), origin)

    def _submit(self, outgoing: OutgoingMessage, origin: Origin) -> Deferred:
        if self._filed_here(outgoing):
            committed = self._text_taken(outgoing)
            committed.addCallback(lambda outgoing: self._outgoing.add((outgoing, origin)))
        else:  # only queued (relayed mail): nothing to take first
            committed = self._outgoing.add((outgoing, origin))
        committed.addCallback(self._queued)
        committed.addCallback(self._filed_submitted, outgoing.envelope_sender, outgoing.raw)
        return committed

    def _filed_submitted(
        self, submitted, envelope_sender: str, raw: bytes, verdict: InboundVerdict | None = None
    ):
        """The listeners hear of every local recipient the store filed the message for,
        those the producer named and those it found among the addresses."""
        if submitted.filed_recipients and self._events.filed.subscribed:
            self._filed(None, envelope_sender, submitted.filed_recipients, raw, verdict)
        return submitted

    def _filed(
        self,
        result,
        envelope_sender: str,
        local: tuple,
        raw: bytes,
        verdict: InboundVerdict | None = None,
    ):
        junk = frozenset(r.mailbox_id for r in local if filing.files_to_junk(r, verdict))
        # A subscriber's trouble is logged by the channel: it must not undo an
        # acknowledged delivery.
        self._events.filed.fire(envelope_sender, local, raw, junk)
        return result

    def _queued(self, submitted):
        if submitted.queued_recipients:
            self._events.queued.fire()
        return submitted


@implementer(ISubmissionIntake)
class SubmissionIntake:
    """What the submission policy asks of the appliance: the intake's questions, the
    user's sending identities, and submitting a message (filed in the Sent folder)."""

    def __init__(self, store: Any, intake: Intake):
        self._store = store
        self._intake = intake

    def resolve_recipient(self, local_part: str, domain: str) -> Deferred:
        return self._intake.resolve_recipient(local_part, domain)

    def lookup_recipient(self, local_part: str, domain: str) -> Deferred:
        return self._intake.lookup_recipient(local_part, domain)

    def accept(
        self,
        envelope_sender: str,
        recipients: Any,
        raw: bytes,
        verdict: Any = None,
        notification: bool = False,
    ) -> Deferred:
        return self._intake.accept(envelope_sender, recipients, raw, verdict, notification)

    def sending_identities(self, login: str) -> Deferred:
        return self._store.run(mailboxes.sending_identities, login)

    def submit(
        self,
        login: str,
        identity: SendingIdentity,
        envelope_sender: str,
        local_recipients: Any,
        remote_recipients: Any,
        raw: bytes,
    ) -> Deferred:
        return self._intake.submit(
            OutgoingMessage(
                envelope_sender=envelope_sender,
                raw=raw,
                local_recipients=tuple(local_recipients),
                remote_recipients=tuple(remote_recipients),
                sent_mailbox_id=identity.mailbox_id,
                **summarize_headers(raw),
            ),
            Origin("submission", mailbox_id=identity.mailbox_id),
        )
