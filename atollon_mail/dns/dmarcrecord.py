"""DMARC records (RFC 7489 section 6.3): reading a record's tags. A pure function, shared
by the DNS advice and checks and by the inbound checks that apply the policies."""

from __future__ import annotations

POLICIES = ("none", "quarantine", "reject")


def dmarc_tags(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record, or None when it is not one (RFC 7489 section 6.4)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, equals, value = part.partition("=")
        if not equals:
            return None
        tags.setdefault(name.strip().lower(), value.strip())
    first = text.split(";", 1)[0].replace(" ", "").lower()
    if first != "v=dmarc1" or tags.get("p", "").lower() not in POLICIES:
        return None
    return tags
