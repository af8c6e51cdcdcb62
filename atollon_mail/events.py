"""The appliance's events: one object, made first and passed into constructors.

Producers fire, consumers subscribe when they are built, so nothing is wired by patching
an object after it was made:

- `queued()`: a commit queued mail for remote delivery (the intake, the mass-mail
  sender); the delivery runner wakes up.
- `filed(envelope_sender, recipients, raw, junk)`: a message was filed into local
  mailboxes for every recipient the store filed it for; `junk` holds the mailbox ids of
  those it went to the Junk folder of (the inbound checks called it junk). The
  auto-responder (which answers no junk) and the campaign returns listen.
- `changed(mailbox_address)`: a store operation marked `changes_mailbox` (the web
  client's flags, moves, Trash, drafts, "File to...") committed a change to that mailbox;
  the IMAP sessions reading it look at once.
- `filed_elsewhere(mailbox_ids, junk)`: another node on the same PostgreSQL database
  filed mail into these mailboxes (`junk`: those of them it went to the Junk folder of);
  heard through the store's notices. The IMAP sessions and the live web pages look; the
  auto-responder and the campaign returns do not (the filing node's own ran).
- `touched_elsewhere(mailbox_ids)`: an IMAP client of another node changed these
  mailboxes (flags, expunges, copies, appends); the IMAP sessions and the live web pages
  (their unread counts) look.
- `missed_elsewhere()`: the other nodes' news may have been lost (this node's listener
  was cut off from PostgreSQL for a while and listens again): the IMAP sessions and the
  live web pages look again at what they show.
- `outcome(results)`: the delivery runner committed the outcomes of one connection (a
  tuple of store.records.DeliveryResult).

A subscriber's trouble is logged and never reaches the producer: by the time an event
fires, the work it tells of is committed and acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from zope.interface import implementer

from atollon_mail.interfaces import IEventChannel, IEvents

log = Logger()


@implementer(IEventChannel)
class Channel:
    """One kind of event: subscribe(callback) at construction time, fire(*args) after."""

    def __init__(self, name: str):
        self.name = name
        self._subscribers: list[Callable] = []

    def subscribe(self, callback: Callable) -> None:
        self._subscribers.append(callback)

    @property
    def subscribed(self) -> bool:
        return bool(self._subscribers)

    def fire(self, *args) -> None:
        for callback in tuple(self._subscribers):
            try:
                callback(*args)
            except Exception:
                log.failure("a subscriber of the {name} event failed", name=self.name)


@implementer(IEvents)
class Events:
    """The channels every subsystem shares."""

    def __init__(self):
        self.queued = Channel("queued")
        self.filed = Channel("filed")
        self.outcome = Channel("outcome")
        self.changed = Channel("changed")
        self.filed_elsewhere = Channel("filed_elsewhere")
        self.touched_elsewhere = Channel("touched_elsewhere")
        self.missed_elsewhere = Channel("missed_elsewhere")

    def heard(self, news) -> None:
        """Another node's news (store.notices.News), told as the channels' events: mail
        filed there, and mailboxes changed there; or that such news may have been lost."""
        if news.missed:
            self.missed_elsewhere.fire()
            return
        if news.filed:
            self.filed_elsewhere.fire(news.filed, news.junk)
        if news.touched:
            self.touched_elsewhere.fire(news.touched)
        for address in sorted(news.changed):
            self.changed.fire(address)
