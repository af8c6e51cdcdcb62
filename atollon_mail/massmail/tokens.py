"""Signed per-recipient tokens: the VERP return path and the unsubscribe links.

A token names one send-list row and carries an HMAC over it, so a bounce or an
unsubscribe can only come for a row we made; rows are not guessable from each other.
Written by hand because it is a dozen lines of hmac and no library does exactly this:
tokens must stay short and lower-case (local parts are often case-folded on the way).
"""

from __future__ import annotations

import base64
import hmac
import re

BOUNCE_PREFIX = "bounce+"
UNSUBSCRIBE_PREFIX = "unsubscribe+"
# 80 bits of HMAC: forging one needs about 2**79 tries against a live server.
_MAC_BYTES = 10
_TOKEN = re.compile(r"^([0-9a-z]{1,13})-([a-z2-7]{16})$")


def unsubscribe_base(config) -> str:
    """Where unsubscribe links point: [massmail] unsubscribe_url, else https://hostname.

    The one place this is decided: the sender, the CLI's preview and the web's preview
    all call it."""
    return config.massmail.unsubscribe_url or f"https://{config.appliance.hostname}"


def unsubscribe_url(base: str, token: str) -> str:
    """The one-click unsubscribe link of `token` under `base` (see unsubscribe_base): the
    one place its path is written."""
    return f"{base}/unsubscribe/{token}"


def preview_unsubscribe_url(base: str) -> str:
    """What a preview shows where each recipient's own link will be."""
    return unsubscribe_url(base, "SAMPLE")


class BadToken(ValueError):
    """A token we did not make (or for another purpose)."""


class RecipientTokens:
    def __init__(self, secret: bytes):
        self._secret = secret

    def _mac(self, purpose: str, recipient_id: int) -> str:
        digest = hmac.digest(self._secret, f"{purpose}:{recipient_id}".encode(), "sha256")
        return base64.b32encode(digest[:_MAC_BYTES]).decode("ascii").lower()

    def make(self, purpose: str, recipient_id: int) -> str:
        return f"{_base36(recipient_id)}-{self._mac(purpose, recipient_id)}"

    def read(self, purpose: str, token: str) -> int:
        """The send-list row id a token names; BadToken when it is not ours."""
        match = _TOKEN.match(token.lower())
        if not match:
            raise BadToken("not a token of this server")
        recipient_id = int(match.group(1), 36)
        if not hmac.compare_digest(self._mac(purpose, recipient_id), match.group(2)):
            raise BadToken("not a token of this server")
        return recipient_id

    # -- the addresses and links built from them ---------------------------------------

    def bounce_address(self, recipient_id: int, domain: str) -> str:
        return f"{BOUNCE_PREFIX}{self.make('bounce', recipient_id)}@{domain}"

    def unsubscribe_targets(self, recipient_id: int, domain: str, base_url: str) -> tuple[str, str]:
        """(the https link, the mailto address) that unsubscribe the row."""
        token = self.make("unsubscribe", recipient_id)
        return unsubscribe_url(base_url, token), f"{UNSUBSCRIBE_PREFIX}{token}@{domain}"

    def read_local_part(self, local_part: str) -> tuple[str, int] | None:
        """("bounce" | "unsubscribe", row id) for one of our addresses' local parts, None
        when it is not one (or its token is forged)."""
        lowered = local_part.lower()
        for prefix, purpose in ((BOUNCE_PREFIX, "bounce"), (UNSUBSCRIBE_PREFIX, "unsubscribe")):
            if lowered.startswith(prefix):
                try:
                    return purpose, self.read(purpose, lowered[len(prefix) :])
                except BadToken:
                    return None
        return None


def _base36(number: int) -> str:
    if number < 0:
        raise ValueError("row ids are not negative")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if not number:
            return text
