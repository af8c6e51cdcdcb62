"""DKIM signing of outbound mail with the keys in the store.

A message is signed with the active key of the domain in its From: header, at delivery
time (so a key added later covers mail already queued). Signing runs in a thread pool:
RSA signing is CPU work that must not stall the reactor.
"""

from __future__ import annotations

import email.utils

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from atollon_mail.delivery import dkim
from atollon_mail.delivery.intake import summarize_headers
from atollon_mail.store import queries

log = Logger()

KEY_REFRESH_SECONDS = 60


def from_domain(raw: bytes) -> str | None:
    header = summarize_headers(raw)["from_header"]
    if not header:
        return None
    addresses = [address for _, address in email.utils.getaddresses([header]) if "@" in address]
    if len(addresses) != 1:
        return None
    return addresses[0].rpartition("@")[2].lower().rstrip(".")


class DkimSigner:
    def __init__(self, store, reactor, threadpool):
        self._store = store
        self._reactor = reactor
        self._threadpool = threadpool
        self._keys: dict[str, object] = {}
        self._loaded_at: float | None = None

    @defer.inlineCallbacks
    def _current_keys(self):
        now = self._reactor.seconds()
        if self._loaded_at is None or now - self._loaded_at >= KEY_REFRESH_SECONDS:
            keys = yield self._store.run(queries.dkim_keys)
            newest: dict[str, object] = {}
            for key in keys:  # newest first: the first key of a domain is the one used
                newest.setdefault(key.domain, key)
            self._keys, self._loaded_at = newest, now
        return self._keys

    @defer.inlineCallbacks
    def sign_all(self, raws: dict[int, bytes]):
        """The same mapping, each message signed if its From: domain has a key."""
        keys = yield self._current_keys()
        if not keys:
            return raws
        work = {
            message_id: keys[domain]
            for message_id, raw in raws.items()
            if (domain := from_domain(raw)) in keys
        }
        if not work:
            return raws

        def sign_in_thread():
            signed = dict(raws)
            for message_id, key in work.items():
                try:
                    signed[message_id] = dkim.sign(
                        raws[message_id], key.domain, key.selector, key.algorithm, key.private_key
                    )
                except Exception:  # an unsignable message still goes out, unsigned
                    log.failure("DKIM signing of message {id} failed", id=message_id)
            return signed

        signed = yield deferToThreadPool(self._reactor, self._threadpool, sign_in_thread)
        return signed
