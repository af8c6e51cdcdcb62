"""Intake: what the SMTP server hands accepted mail to.

It resolves recipients against the store and stores messages with group commit: while
one transaction is being written, the messages that arrive meanwhile wait and go
together in the next one. Every session still gets its 250 only after the transaction
holding its message committed; many sessions share one fsync.
"""

from __future__ import annotations

import email.header
from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from atollon_mail.interfaces import IMailIntake, IStore
from atollon_mail.store import queries
from atollon_mail.store.records import IncomingMessage, Recipient, StoredMessage

# A batch is bounded so one commit never holds an unbounded amount of memory.
MAX_BATCH_MESSAGES = 256
MAX_BATCH_BYTES = 32 * 1024 * 1024

# Header fields kept beside the raw bytes (for listings) and their length limits.
_SUMMARY_FIELDS = {
    b"message-id": ("message_id", 998),
    b"subject": ("subject", 4000),
    b"from": ("from_header", 4000),
    b"date": ("date_header", 200),
}


def _decoded(value: bytes, limit: int) -> str | None:
    text = value.decode("utf-8", "replace")
    if "=?" in text:  # RFC 2047 encoded words
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except (ValueError, LookupError, UnicodeError):
            pass  # keep the undecoded text rather than nothing
    text = " ".join(text.split())
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


@implementer(IMailIntake)
class Intake:
    def __init__(self, store: IStore, concurrent_batches: int = 1):
        self._store = store
        self._concurrent_batches = concurrent_batches
        self._writing = 0
        self._waiting: list[tuple[IncomingMessage, Deferred]] = []
        self._log = Logger()

    def resolve_recipient(self, local_part: str, domain: str) -> Deferred:
        return self._store.run(queries.resolve_recipient, local_part, domain)

    def accept(self, envelope_sender: str, recipients: Sequence[Recipient], raw: bytes) -> Deferred:
        incoming = IncomingMessage(
            envelope_sender=envelope_sender,
            recipients=tuple(recipients),
            raw=raw,
            **summarize_headers(raw),
        )
        stored: Deferred = Deferred()
        self._waiting.append((incoming, stored))
        self._write_next_batch()
        return stored

    def _take_batch(self) -> list[tuple[IncomingMessage, Deferred]]:
        size = 0
        count = 0
        for incoming, _ in self._waiting:
            if count and (
                count >= MAX_BATCH_MESSAGES or size + len(incoming.raw) > MAX_BATCH_BYTES
            ):
                break
            size += len(incoming.raw)
            count += 1
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        return batch

    def _write_next_batch(self) -> None:
        if self._writing >= self._concurrent_batches or not self._waiting:
            return
        batch = self._take_batch()
        self._writing += 1
        written = self._store.run(queries.store_messages, [incoming for incoming, _ in batch])
        written.addCallbacks(self._batch_written, self._batch_failed, (batch,), None, (batch,))
        written.addBoth(self._batch_done)

    def _batch_written(self, results, batch) -> None:
        for (_, stored), result in zip(batch, results, strict=True):
            if isinstance(result, StoredMessage):
                stored.callback(result)
            else:
                self._log.error("storing a message failed: {problem!r}", problem=result)
                stored.errback(result)

    def _batch_failed(self, failure, batch) -> None:
        # The transaction did not commit, so none of these messages may be acknowledged.
        self._log.failure("storing a batch of {count} messages failed", failure, count=len(batch))
        for _, stored in batch:
            stored.errback(failure)

    def _batch_done(self, _) -> None:
        self._writing -= 1
        self._write_next_batch()
