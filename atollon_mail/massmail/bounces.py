"""Reading a bounce that came back to a campaign's VERP address.

flufl.bounce recognises the many formats of bounces (RFC 3464 DSNs and the older
vendor ones) and says which addresses failed for good and which only for now. The VERP
address already says which send-list row it was about, so all we need is: permanent,
temporary, or not a bounce at all (an auto-reply to the return path, say).
"""

from __future__ import annotations

import email
import email.policy

import attrs
from flufl.bounce import all_failures


@attrs.frozen
class BounceReading:
    kind: str  # "permanent" | "temporary" | "none"
    reply: str  # the remote server's words (Diagnostic-Code), else what was found


def _diagnostic(message) -> str | None:
    """The first Diagnostic-Code (or Status) of a DSN's per-recipient fields."""
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        for block in part.get_payload() or ():
            for field in ("Diagnostic-Code", "Status"):
                value = block.get(field) if hasattr(block, "get") else None
                if value:
                    text = " ".join(str(value).split())
                    return text.split(";", 1)[1].strip() if ";" in text[:12] else text
    return None


def read_bounce(raw: bytes) -> BounceReading:
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a malformed message is "not a bounce", never a crash at intake
        temporary, permanent = set(), set()
    diagnostic = _diagnostic(message)
    if permanent:
        return BounceReading("permanent", diagnostic or "the remote server gave up (bounce)")
    if temporary:
        return BounceReading("temporary", diagnostic or "the remote server is still trying")
    return BounceReading("none", diagnostic or "not a bounce")
