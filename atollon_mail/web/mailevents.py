"""New mail told to the open mailbox pages, as server-sent events from the reactor.

A mailbox page opens GET /mail/events?address=... (pages_live.py); the request stays
open and `MailEventStreams` writes to it, with no thread and no query per client:

- `event: filed` (data `{"folder": "inbox"}` or `"junk"`) when the events object's
  `filed` channel says a message was filed into that mailbox (after the store committed);
- `event: unread` (data `{"unread": n}`): the unread count of the mailbox's inbox, once
  when the stream opens and after mail is filed into the inbox; counted once per
  mailbox, however many pages watch it, and recounted once for a burst of mail;
- a comment line every `heartbeat` seconds, so that proxies keep the connection open.

The open streams are capped in total and per user (`StreamsFull`, answered 503 with
Retry-After); a stream is forgotten when its client goes away, and all are finished when
the web service stops (`MailEventsService`). The heartbeat is one LoopingCall on the
injected clock, running only while a stream is open.

Written by hand: the event-stream format is a few lines of text, and the libraries that
serve it are made for asyncio frameworks, not twisted.web's requests.
"""

from __future__ import annotations

import collections
import json

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from atollon_mail.events import Events
from atollon_mail.store import unread
from atollon_mail.store.values import INBOX, JUNK

log = Logger()

HEARTBEAT = 25.0  # seconds between comments; proxies commonly cut at 30 or 60 s idle
MAX_STREAMS = 1000
MAX_STREAMS_PER_USER = 20
RETRY_AFTER = 30  # seconds a refused page waits before it asks again
RECONNECT_MS = 5000  # how soon a browser reconnects after the stream ended


class StreamsFull(Exception):
    """No stream is opened now: the total or the user's streams are at their cap."""


class _Stream:
    def __init__(self, request, login: str, mailbox_id: int):
        self.request = request
        self.login = login
        self.mailbox_id = mailbox_id

    def write(self, data: bytes) -> None:
        if not self.request.finished and not self.request._disconnected:
            self.request.write(data)


def event_text(name: str, data: dict) -> bytes:
    """One server-sent event: its name and its data as one line of JSON."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


HEARTBEAT_TEXT = b": still here\n\n"


class MailEventStreams:
    """The open event streams, by mailbox; subscribed to `events.filed` when made."""

    def __init__(
        self,
        store,
        events: Events,
        clock,
        max_streams: int = MAX_STREAMS,
        max_per_user: int = MAX_STREAMS_PER_USER,
        heartbeat: float = HEARTBEAT,
    ):
        self._store = store
        self._clock = clock
        self.max_streams = max_streams
        self.max_per_user = max_per_user
        self.heartbeat = heartbeat
        self._by_mailbox: dict[int, set[_Stream]] = {}
        self._per_user: collections.Counter[str] = collections.Counter()
        self._count = 0
        # Mailboxes whose unread count is being read: True when it must be read again
        # once it is in (mail came meanwhile).
        self._counting: dict[int, bool] = {}
        self._beating = LoopingCall(self._beat)
        self._beating.clock = clock
        self._stopped = False
        events.filed.subscribe(self._filed)

    def __len__(self) -> int:
        return self._count

    def streams_of(self, login: str) -> int:
        return self._per_user[login]

    @property
    def counting(self) -> int:
        """Unread counts being read now (for tests: none is left behind)."""
        return len(self._counting)

    @property
    def beating(self) -> bool:
        return self._beating.running

    def open(self, request, login: str, mailbox_id: int) -> None:
        """Answer `request` with an event stream of the mailbox's new mail; it stays open
        until the client goes away or the service stops. StreamsFull when at a cap."""
        if self._stopped or self._count >= self.max_streams:
            raise StreamsFull("The server has too many open mailbox pages; try again soon.")
        if self._per_user[login] >= self.max_per_user:
            raise StreamsFull(
                "You have too many mailbox pages open; close some, and this one "
                "updates itself again soon."
            )
        stream = _Stream(request, login, mailbox_id)
        self._by_mailbox.setdefault(mailbox_id, set()).add(stream)
        self._per_user[login] += 1
        self._count += 1
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx: pass each event at once
        request.notifyFinish().addBoth(self._gone, stream)
        stream.write(f"retry: {RECONNECT_MS}\n\n".encode())
        if not self._beating.running:
            self._beating.start(self.heartbeat, now=False)
        self._count_unread(mailbox_id)

    def _gone(self, _result, stream: _Stream) -> None:
        """The request finished or its client went away: forget the stream."""
        streams = self._by_mailbox.get(stream.mailbox_id)
        if streams is None or stream not in streams:
            return
        streams.discard(stream)
        if not streams:
            del self._by_mailbox[stream.mailbox_id]
        self._per_user[stream.login] -= 1
        if not self._per_user[stream.login]:
            del self._per_user[stream.login]
        self._count -= 1
        if not self._count and self._beating.running:
            self._beating.stop()

    def stop(self) -> None:
        """Finish every stream and open no more (the web service stops)."""
        self._stopped = True
        for streams in list(self._by_mailbox.values()):
            for stream in list(streams):
                request = stream.request
                if not request.finished and not request._disconnected:
                    # No idle keep-alive connection left behind at shutdown.
                    transport = getattr(getattr(request, "channel", None), "transport", None)
                    request.finish()
                    if transport is not None:
                        transport.loseConnection()
                self._gone(None, stream)
        if self._beating.running:
            self._beating.stop()

    # --- what is written --------------------------------------------------------------

    def _send(self, mailbox_id: int, data: bytes) -> None:
        for stream in tuple(self._by_mailbox.get(mailbox_id, ())):
            stream.write(data)

    def _beat(self) -> None:
        for streams in tuple(self._by_mailbox.values()):
            for stream in tuple(streams):
                stream.write(HEARTBEAT_TEXT)

    def _filed(self, envelope_sender, recipients, raw, junk=frozenset()) -> None:
        for mailbox_id in dict.fromkeys(recipient.mailbox_id for recipient in recipients):
            if mailbox_id not in self._by_mailbox:
                continue
            folder = JUNK if mailbox_id in junk else INBOX
            self._send(mailbox_id, event_text("filed", {"folder": folder}))
            if folder == INBOX:
                self._count_unread(mailbox_id)

    def _count_unread(self, mailbox_id: int) -> None:
        if mailbox_id in self._counting:
            self._counting[mailbox_id] = True  # once more when this count is in
            return
        self._counting[mailbox_id] = False
        counted = self._store.run(unread.count_unread, mailbox_id)
        counted.addCallbacks(
            self._counted,
            self._not_counted,
            callbackArgs=(mailbox_id,),
            errbackArgs=(mailbox_id,),
        )

    def _counted(self, count: int, mailbox_id: int) -> None:
        again = self._counting.pop(mailbox_id, False)
        if mailbox_id not in self._by_mailbox:
            return
        self._send(mailbox_id, event_text("unread", {"unread": count}))
        if again:
            self._count_unread(mailbox_id)

    def _not_counted(self, failure, mailbox_id: int) -> None:
        # The pages keep their title; the next mail tries again.
        self._counting.pop(mailbox_id, None)
        log.failure("could not count the unread mail of mailbox {id}", failure, id=mailbox_id)


class MailEventsService(Service):
    """Finishes the open event streams when the appliance stops."""

    name = "web-events"

    def __init__(self, streams: MailEventStreams):
        self.streams = streams

    def stopService(self):
        self.streams.stop()
        return super().stopService()
