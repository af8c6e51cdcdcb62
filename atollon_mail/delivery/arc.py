"""ARC sealing (RFC 8617) of mail the appliance forwards.

A message a mailbox forwards elsewhere leaves with its author's DKIM signature (kept: it
is forwarded as it came) but with our SRS envelope sender, so the next hop's SPF and
DMARC see a forwarder. The ARC set added here (dkimpy's arc_sign, with the forwarding
mailbox domain's RSA DKIM key: ARC knows only rsa-sha256) carries what our inbound
checks found (our Authentication-Results, whose authserv-id is the host name) under
our signature, so a receiver that trusts us can trust that.

Without our Authentication-Results (the inbound checks off) or without an RSA key of the
domain, the message goes on unsealed. Signing runs in the CPU pool.
"""

from __future__ import annotations

import dkim
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from atollon_mail.store import domains
from atollon_mail.store.records import DkimKeyRecord

log = Logger()

KEY_REFRESH_SECONDS = 60.0


def arc_seal(raw: bytes, key: DkimKeyRecord, authserv_id: str) -> bytes:
    """The ARC set for raw (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results,
    each ending in CRLF), or b"" when raw has no Authentication-Results of authserv_id
    (a chain cannot start without them). Blocks on the CPU."""
    lines = dkim.arc_sign(
        raw,
        key.selector.encode("ascii"),
        key.domain.encode("idna"),
        key.private_key.encode("ascii"),
        authserv_id.encode("idna"),
    )
    return b"".join(lines)


class ArcSealer:
    """Seals forwarded mail with the forwarding domain's newest active RSA key (keys
    read from the store at most every KEY_REFRESH_SECONDS per domain)."""

    def __init__(self, store, hostname: str, reactor, threadpool, clock=None):
        self._store = store
        self._hostname = hostname
        self._reactor = reactor
        self._threadpool = threadpool
        self._clock = clock if clock is not None else reactor
        self._keys: dict[str, tuple[DkimKeyRecord | None, float]] = {}

    @defer.inlineCallbacks
    def _key(self, domain: str):
        domain = domain.lower().rstrip(".")
        now = self._clock.seconds()
        cached = self._keys.get(domain)
        if cached is not None and now - cached[1] < KEY_REFRESH_SECONDS:
            return cached[0]
        keys = yield self._store.run(domains.dkim_keys, domain)
        key = next((key for key in keys if key.algorithm == "rsa"), None)
        self._keys[domain] = (key, now)
        return key

    @defer.inlineCallbacks
    def seal(self, raw: bytes, domain: str):
        """raw with an ARC set on top, sealed for domain; raw itself when it cannot be
        (logged): forwarding never waits on a seal."""
        try:
            key = yield self._key(domain)
            if key is None:
                log.info("forwarded mail of {domain} goes unsealed: no RSA DKIM key", domain=domain)
                return raw
            headers = yield deferToThreadPool(
                self._reactor, self._threadpool, arc_seal, raw, key, self._hostname
            )
        except Exception:
            log.failure("sealing forwarded mail of {domain} failed", domain=domain)
            return raw
        if not headers:
            log.info(
                "forwarded mail of {domain} goes unsealed: it has no Authentication-Results "
                "of {hostname}",
                domain=domain,
                hostname=self._hostname,
            )
        return headers + raw
