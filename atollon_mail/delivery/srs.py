"""The Sender Rewriting Scheme: the envelope sender of mail we forward elsewhere.

A message forwarded from one of our mailboxes to another provider keeps its original
envelope sender only at the cost of failing that provider's SPF check (our address is
not in the sender domain's SPF record). So the forwarded copy is sent from

    SRS0=HHHH=TT=orig.example=user@our.domain

where TT is the day it was made and HHHH a keyed hash of the rest: a bounce to that
address comes back to us, and we queue it on to user@orig.example only while the hash
matches and the address is at most `max_age_days` old, so nobody can use the scheme to
relay mail through us. A sender that is already SRS0 of another forwarder is re-wrapped
as SRS1 (bounces go back to that first forwarder), an SRS1 sender keeps its first hop:
the "Guarded" scheme of the SRS paper, as libsrs2, Mail::SRS and postsrsd do it.

Written here rather than taken from srslib: srslib checks a hash of whatever length the
address brings, so a forged address with a one-character hash passes about once in
forty tries. The hash here is HMAC-SHA1 in base32 (case-insensitive by nature, since
MTAs may fold the case of local parts) and must have its full length.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Sequence

from atollon_mail.secretfile import load_or_create_secret

__all__ = [
    "DEFAULT_MAX_AGE_DAYS",
    "SECRET_FILE",
    "SRS",
    "SRSError",
    "ExpiredAddress",
    "ForgedAddress",
    "is_srs",
    "load_or_create_srs_secret",
]

DEFAULT_MAX_AGE_DAYS = 21
HASH_LENGTH = 4
SECRET_FILE = "srs-secret"

# Timestamps: days since the epoch modulo 2**10, as two characters of this alphabet.
_TIME_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TIME_SLOTS = len(_TIME_ALPHABET) ** 2
_DAY = 86400

# The first separator after the tag may be any of = + - (the paper); we write "=".
_SRS0 = re.compile(r"^SRS0[=+-]([^=]+)=([^=]+)=([^=]+)=(.+)$", re.IGNORECASE | re.DOTALL)
_SRS0_OPAQUE = re.compile(r"^SRS0([=+-].+)$", re.IGNORECASE | re.DOTALL)
_SRS1 = re.compile(r"^SRS1[=+-]([^=]+)=([^=]+)=([=+-].+)$", re.IGNORECASE | re.DOTALL)
_LOOKS_SRS = re.compile(r"^SRS[01][=+-]", re.IGNORECASE)
# What a rewritten local part may hold: a dot-atom (quoted local parts are not rewritten).
_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")


class SRSError(ValueError):
    """An address that cannot be rewritten or reversed; str() says why, in one line."""


class ForgedAddress(SRSError):
    pass


class ExpiredAddress(SRSError):
    pass


def is_srs(local_part: str) -> bool:
    """Whether a local part (or an address) has the form of an SRS0 or SRS1 address."""
    return bool(_LOOKS_SRS.match(local_part))


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise SRSError(f"{address!r} is not an address")
    return local, domain


class SRS:
    """Rewrites senders for forwarding and reverses the bounces that come back.

    `secret` keys the hash; `previous_secrets` are still accepted when reversing (so a
    changed secret does not strand the bounces of mail forwarded before the change).
    `clock` gives the time in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        secret: bytes,
        max_age_days: int = DEFAULT_MAX_AGE_DAYS,
        previous_secrets: Sequence[bytes] = (),
        clock: Callable[[], float] = time.time,
    ):
        if not secret:
            raise ValueError("an SRS secret must not be empty")
        if not 1 <= max_age_days < _TIME_SLOTS // 2:
            raise ValueError(f"max_age_days must be 1..{_TIME_SLOTS // 2 - 1}")
        self._secrets = (bytes(secret), *(bytes(s) for s in previous_secrets))
        self.max_age_days = max_age_days
        self._clock = clock

    # -- the parts ------------------------------------------------------------------------

    def _hash(self, secret: bytes, *parts: str) -> str:
        # Lower-cased: an MTA that folds the case of the address must not break it.
        data = "".join(parts).lower().encode("utf-8")
        digest = hmac.new(secret, data, hashlib.sha1).digest()
        return base64.b32encode(digest).decode("ascii")[:HASH_LENGTH]

    def _check_hash(self, given: str, *parts: str) -> None:
        given = given.upper()
        if len(given) == HASH_LENGTH and any(
            hmac.compare_digest(given, self._hash(secret, *parts)) for secret in self._secrets
        ):
            return
        raise ForgedAddress("the SRS signature of this bounce address does not match (forged?)")

    def _today(self) -> int:
        return int(self._clock() // _DAY)

    def _timestamp(self) -> str:
        day = self._today() % _TIME_SLOTS
        return _TIME_ALPHABET[day >> 5] + _TIME_ALPHABET[day & 31]

    def _check_timestamp(self, stamp: str) -> None:
        stamp = stamp.upper()
        if len(stamp) != 2 or any(character not in _TIME_ALPHABET for character in stamp):
            raise ForgedAddress("the date in this SRS bounce address is malformed")
        then = _TIME_ALPHABET.index(stamp[0]) * 32 + _TIME_ALPHABET.index(stamp[1])
        # Modular: a stamp from the "future" counts as about 1024 days old.
        age = (self._today() - then) % _TIME_SLOTS
        if age > self.max_age_days:
            raise ExpiredAddress(
                f"this SRS bounce address expired (it is over {self.max_age_days} days old)"
            )

    # -- rewriting ------------------------------------------------------------------------

    def forward(self, sender: str, our_domain: str) -> str:
        """The envelope sender for a copy of mail from `sender` forwarded by `our_domain`.

        The null sender stays null, and a sender in `our_domain` itself stays as it is
        (our SPF covers it, and bounces reach us anyway).
        """
        if sender in ("", "<>"):
            return sender
        local, domain = _split(sender)
        our_domain = our_domain.lower().rstrip(".")
        if domain.lower().rstrip(".") == our_domain:
            return sender
        srs1 = _SRS1.match(local)
        if srs1:  # we are a later hop: bounces still go back to the first one
            _, first_hop, opaque = srs1.groups()
            rewritten = self._srs1(first_hop, opaque)
        else:
            srs0 = _SRS0_OPAQUE.match(local)
            if srs0:  # the first forwarder wrote SRS0: wrap it, pointing back at them
                rewritten = self._srs1(domain, srs0.group(1))
            else:
                if not _ATEXT.match(local):
                    raise SRSError(f"{sender!r}: a quoted local part cannot be rewritten")
                stamp = self._timestamp()
                signature = self._hash(self._secrets[0], stamp, domain, local)
                rewritten = f"SRS0={signature}={stamp}={domain}={local}"
        return f"{rewritten}@{our_domain}"

    def _srs1(self, first_hop: str, opaque: str) -> str:
        return f"SRS1={self._hash(self._secrets[0], first_hop, opaque)}={first_hop}={opaque}"

    def reverse(self, address: str) -> str:
        """Where a bounce to one of our SRS addresses goes: the original sender (SRS0),
        or the first forwarder's SRS0 address (SRS1). Raises ForgedAddress, ExpiredAddress
        or SRSError (not an SRS address)."""
        local, _ = _split(address)
        srs1 = _SRS1.match(local)
        if srs1:
            signature, first_hop, opaque = srs1.groups()
            self._check_hash(signature, first_hop, opaque)
            return f"SRS0{opaque}@{first_hop}"
        srs0 = _SRS0.match(local)
        if srs0:
            signature, stamp, domain, original_local = srs0.groups()
            self._check_hash(signature, stamp, domain, original_local)
            self._check_timestamp(stamp)
            return f"{original_local}@{domain}"
        raise SRSError(f"{address} is not an SRS address")


def load_or_create_srs_secret(configured: str | None, data_dir: str) -> bytes:
    """The SRS secret: the configured one, else the one kept in <data_dir>/srs-secret.
    It must outlive restarts: bounces to mail forwarded before a restart must still be
    recognised."""
    return load_or_create_secret(configured, data_dir, SECRET_FILE)
