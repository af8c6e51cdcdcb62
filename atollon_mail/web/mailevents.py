"""New mail told to the open mailbox pages, as server-sent events from the reactor.

A mailbox page opens GET /mail/events?address=... (pages_live.py); the request stays
open and `MailEventStreams` writes to it, with no thread and no query per client:

- `event: filed` (data `{"folder": "inbox"}` or `"junk"`) when the events object's
  `filed` channel says a message was filed into that mailbox (after the store committed);
- `event: unread` (data `{"unread": n}`): the unread count of the mailbox's inbox, once
  when the stream opens and after mail is filed;
- a comment line every `heartbeat` seconds, so that proxies keep the connection open.

Before news is written, one store operation (unread.mailbox_news) counts the unread mail
and says which of the listening users may still view the mailbox, however many pages
listen; mail that comes meanwhile waits for the next one (a burst costs two). A stream
whose user lost the right, or whose session ended (logout, idle timeout: looked at with
each heartbeat, in memory, then in the store with one query for all open streams, for a
logout through another node), is finished: the browser's reconnection then gets 404.

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
from atollon_mail.store import unread, websessions
from atollon_mail.store.values import INBOX, JUNK

log = Logger()

HEARTBEAT = 25.0  # seconds between comments; proxies commonly cut at 30 or 60 s idle
MAX_STREAMS = 1000
MAX_STREAMS_PER_USER = 20
RETRY_AFTER = 30  # seconds a refused page waits before it asks again
RECONNECT_MS = 5000  # how soon a browser reconnects after the stream ended


class StreamsFull(Exception):
    """No stream is opened now: the total or the user's streams are at their cap."""


def _always() -> bool:
    return True


class _Stream:
    def __init__(self, request, login: str, mailbox_id: int, alive, session: str | None):
        self.request = request
        self.login = login
        self.mailbox_id = mailbox_id
        self.alive = alive
        self.session = session

    @property
    def open(self) -> bool:
        return not self.request.finished and not self.request._disconnected

    def write(self, data: bytes) -> None:
        if self.open:
            self.request.write(data)

    def finish(self) -> None:
        if self.open:
            self.request.finish()


# In place of a folder's name in the news waiting for a mailbox: news may have been lost,
# every folder may have changed (no folder is named "*").
MISSED = "*"


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
        # Mailboxes whose news is being read, and the folders of mail filed into each
        # that waits for the next reading.
        self._counting: set[int] = set()
        self._waiting: dict[int, list[str]] = {}
        self._beating = LoopingCall(self._beat)
        self._beating.clock = clock
        self._stopped = False
        self._checking = False  # the store is asked which sessions are live
        events.filed.subscribe(self._filed)
        events.filed_elsewhere.subscribe(self._filed_elsewhere)
        events.touched_elsewhere.subscribe(self._touched_elsewhere)
        events.missed_elsewhere.subscribe(self._missed_elsewhere)

    def __len__(self) -> int:
        return self._count

    def streams_of(self, login: str) -> int:
        return self._per_user[login]

    @property
    def counting(self) -> int:
        """Mailboxes whose news is being read now (for tests: none is left behind)."""
        return len(self._counting)

    @property
    def beating(self) -> bool:
        return self._beating.running

    def open(
        self, request, login: str, mailbox_id: int, alive=_always, session: str | None = None
    ) -> None:
        """Answer `request` with an event stream of the mailbox's new mail; it stays open
        until the client goes away, `alive()` (the session, asked with each heartbeat)
        is false, the session whose token hash is `session` is no longer in the store
        (looked at with each heartbeat), the user may no longer view the mailbox, or the
        service stops. StreamsFull when at a cap."""
        if self._stopped or self._count >= self.max_streams:
            raise StreamsFull("The server has too many open mailbox pages; try again soon.")
        if self._per_user[login] >= self.max_per_user:
            raise StreamsFull(
                "You have too many mailbox pages open; close some, and this one "
                "updates itself again soon."
            )
        stream = _Stream(request, login, mailbox_id, alive, session)
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
        self._news(mailbox_id, None)

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
                if stream.open:
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
                if stream.alive():
                    stream.write(HEARTBEAT_TEXT)
                else:
                    stream.finish()  # logged out or expired: the reconnection gets 404
        self._check_sessions()

    def _check_sessions(self) -> None:
        """End the streams whose session is gone from the store (logged out through
        another node, which this node's memory does not know): one query for all."""
        if self._checking:  # the last heartbeat's query has not answered yet
            return
        asked = sorted(
            {s.session for streams in self._by_mailbox.values() for s in streams if s.session}
        )
        if not asked:
            return
        self._checking = True
        reading = self._store.run(websessions.live_sessions, asked)
        reading.addCallback(self._end_gone_sessions, frozenset(asked))
        reading.addErrback(lambda failure: log.failure("checking the sessions failed", failure))
        reading.addBoth(self._checked)

    def _checked(self, _result) -> None:
        self._checking = False

    def _end_gone_sessions(self, live: frozenset[str], asked: frozenset[str]) -> None:
        for streams in tuple(self._by_mailbox.values()):
            for stream in tuple(streams):
                if stream.session in asked and stream.session not in live:
                    stream.finish()

    def _filed(self, envelope_sender, recipients, raw, junk=frozenset()) -> None:
        for mailbox_id in dict.fromkeys(recipient.mailbox_id for recipient in recipients):
            if mailbox_id in self._by_mailbox:
                self._news(mailbox_id, JUNK if mailbox_id in junk else INBOX)

    def _filed_elsewhere(self, mailbox_ids, junk) -> None:
        """Another node on the same database filed mail into these mailboxes."""
        for mailbox_id in sorted(mailbox_ids):
            if mailbox_id in self._by_mailbox:
                self._news(mailbox_id, JUNK if mailbox_id in junk else INBOX)

    def _touched_elsewhere(self, mailbox_ids) -> None:
        """Another node's IMAP client changed these mailboxes: their unread counts."""
        for mailbox_id in sorted(mailbox_ids):
            if mailbox_id in self._by_mailbox:
                self._news(mailbox_id, None)

    def _missed_elsewhere(self) -> None:
        """The other nodes' news may have been lost: every open page reads its list and
        count again (the `missed` event)."""
        for mailbox_id in sorted(self._by_mailbox):
            self._news(mailbox_id, MISSED)

    def _news(self, mailbox_id: int, folder: str | None) -> None:
        """Tell the mailbox's streams of mail filed into `folder` (None: of nothing but
        the unread count), once the store said who may still hear it."""
        waiting = self._waiting.setdefault(mailbox_id, [])
        if folder is not None:
            waiting.append(folder)
        if mailbox_id in self._counting:
            return  # told with the next reading
        folders = self._waiting.pop(mailbox_id)
        logins = tuple(sorted({s.login for s in self._by_mailbox.get(mailbox_id, ())}))
        self._counting.add(mailbox_id)
        reading = self._store.run(unread.mailbox_news, mailbox_id, logins)
        reading.addCallbacks(
            self._read,
            self._not_read,
            callbackArgs=(mailbox_id, logins, folders),
            errbackArgs=(mailbox_id,),
        )

    def _read(self, news, mailbox_id: int, asked: tuple[str, ...], folders: list[str]) -> None:
        self._counting.discard(mailbox_id)
        for stream in tuple(self._by_mailbox.get(mailbox_id, ())):
            # (A stream opened meanwhile was not asked about: its rights were just read.)
            if stream.login in asked and stream.login not in news.viewers:
                stream.finish()  # the right was taken away, or the mailbox removed
        for folder in folders:
            if folder == MISSED:
                self._send(mailbox_id, event_text("missed", {}))
            else:
                self._send(mailbox_id, event_text("filed", {"folder": folder}))
        self._send(mailbox_id, event_text("unread", {"unread": news.unread}))
        self._again(mailbox_id)

    def _not_read(self, failure, mailbox_id: int) -> None:
        # What was filed meanwhile is not told; the pages hear of the next mail.
        self._counting.discard(mailbox_id)
        log.failure("could not read the news of mailbox {id}", failure, id=mailbox_id)
        self._again(mailbox_id)

    def _again(self, mailbox_id: int) -> None:
        if mailbox_id not in self._by_mailbox:
            self._waiting.pop(mailbox_id, None)
        elif mailbox_id in self._waiting:
            self._news(mailbox_id, None)


class MailEventsService(Service):
    """Finishes the open event streams when the appliance stops."""

    name = "web-events"

    def __init__(self, streams: MailEventStreams):
        self.streams = streams

    def stopService(self):
        self.streams.stop()
        return super().stopService()
