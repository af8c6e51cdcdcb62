"""Intake: what the SMTP server hands accepted mail to.

It resolves recipients against the store and stores messages with group commit: while
one transaction is being written, the messages that arrive meanwhile wait and go
together in the next one. Every session still gets its 250 only after the transaction
holding its message committed; many sessions share one fsync.
"""

from __future__ import annotations

import email.parser
import email.policy
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

_header_parser = email.parser.BytesParser(policy=email.policy.default)


def _header_block(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 2]


def _header_text(message, name: str, limit: int) -> str | None:
    try:
        value = message.get(name)
    except Exception:  # a malformed header must never stop a message from being stored
        return None
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text[:limit] or None


def summarize_headers(raw: bytes) -> dict[str, str | None]:
    """The header fields kept beside the raw bytes (for listings), decoded to text."""
    headers = _header_parser.parsebytes(_header_block(raw), headersonly=True)
    return {
        "message_id": _header_text(headers, "Message-ID", 998),
        "subject": _header_text(headers, "Subject", 4000),
        "from_header": _header_text(headers, "From", 4000),
        "date_header": _header_text(headers, "Date", 200),
    }


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
