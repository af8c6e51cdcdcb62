"""DKIM signing of outbound mail with the keys in the store.

A message is signed with the active keys of the domain in its From: header, at delivery
time (so a key added later covers mail already queued): one signature per algorithm,
so a domain with an RSA and an Ed25519 key gets both (RFC 8463 section 4 recommends it:
verifiers that know only RSA, such as Debian 12's Mail::DKIM, still find one they can
check). The RSA signature is the first header, for verifiers that look at the first only.

Signing runs in a thread pool: RSA signing is CPU work that must not stall the reactor.
Before signing, a message with a line over 998 octets that escaped re-encoding at
submission (queued before, or a notification) is re-encoded, so that the next hop does
not fold the line and break the signature.

Keys replaced by `dkim activate` more than `retention` seconds ago are removed from the
store when the keys are next loaded (at most every KEY_REFRESH_SECONDS, when mail is
signed).
"""

from __future__ import annotations

import datetime
import email.utils

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from atollon_mail.delivery import dkim
from atollon_mail.delivery.intake import summarize_headers
from atollon_mail.delivery.reencode import UnencodableMessage, fit_line_length
from atollon_mail.store import domains

log = Logger()

KEY_REFRESH_SECONDS = 60
DEFAULT_RETENTION = 7 * 86400.0
# The order signatures are added in: the last one added is the first header.
_SIGNING_ORDER = ("ed25519", "rsa")


def from_domain(raw: bytes) -> str | None:
    header = summarize_headers(raw)["from_header"]
    if not header:
        return None
    addresses = [address for _, address in email.utils.getaddresses([header]) if "@" in address]
    if len(addresses) != 1:
        return None
    return addresses[0].rpartition("@")[2].lower().rstrip(".")


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(tzinfo=None)


def _fitted(raw: bytes, message_id: int) -> bytes:
    try:
        return fit_line_length(raw)
    except UnencodableMessage as problem:
        log.warn(
            "message {id} goes out with a long line: {problem}", id=message_id, problem=problem
        )
        return raw


class DkimSigner:
    def __init__(
        self, store, reactor, threadpool, retention: float = DEFAULT_RETENTION, clock=None
    ):
        self._store = store
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._threadpool = threadpool
        self._retention = retention
        self._keys: dict[str, tuple] = {}
        self._loaded_at: float | None = None

    @defer.inlineCallbacks
    def _current_keys(self):
        now = self._clock.seconds()
        if self._loaded_at is None or now - self._loaded_at >= KEY_REFRESH_SECONDS:
            removed = yield self._store.run(
                domains.remove_retired_dkim_keys, _utc(now - self._retention)
            )
            for key in removed:
                log.info(
                    "removed the DKIM key {selector} of {domain}, retired at {retired_at}",
                    selector=key.selector,
                    domain=key.domain,
                    retired_at=key.retired_at,
                )
            keys = yield self._store.run(domains.dkim_keys)
            newest: dict[str, dict[str, object]] = {}
            for key in keys:  # newest first: the newest key of each algorithm signs
                newest.setdefault(key.domain, {}).setdefault(key.algorithm, key)
            self._keys = {
                domain: tuple(found[name] for name in _SIGNING_ORDER if name in found)
                for domain, found in newest.items()
            }
            self._loaded_at = now
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
            for message_id, domain_keys in work.items():
                raw = _fitted(raws[message_id], message_id)
                signed[message_id] = raw
                try:
                    for key in domain_keys:
                        raw = dkim.sign(
                            raw, key.domain, key.selector, key.algorithm, key.private_key
                        )
                except Exception:  # an unsignable message still goes out, unsigned
                    log.failure("DKIM signing of message {id} failed", id=message_id)
                    continue
                signed[message_id] = raw
            return signed

        signed = yield deferToThreadPool(self._reactor, self._threadpool, sign_in_thread)
        return signed
