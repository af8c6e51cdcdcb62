"""The Return-Path: field (RFC 5321 4.4).

The final delivery adds it, on top, with the envelope sender (`<>` for a bounce). A
Return-Path the message arrived with is not ours to keep (whoever wrote it was not the
final delivery): it is dropped, so a filed message carries exactly one, and none leaves
with mail sent on.
"""

from __future__ import annotations

_FIELD = b"return-path"


def without_return_path(raw: bytes) -> bytes:
    """raw with every Return-Path field of its header section (folded lines too) removed."""
    if raw.startswith(b"\r\n"):
        return raw  # no header section
    end = raw.find(b"\r\n\r\n")
    header, rest = (raw, b"") if end < 0 else (raw[:end], raw[end:])
    if _FIELD not in header.lower():
        return raw
    kept: list[bytes] = []
    dropping = False
    for line in header.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):  # a folded continuation of the field above
            if not dropping:
                kept.append(line)
            continue
        name, colon, _ = line.partition(b":")
        dropping = bool(colon) and name.strip().lower() == _FIELD
        if not dropping:
            kept.append(line)
    if not kept:
        return rest[2:]  # the header section was nothing but Return-Path
    return b"\r\n".join(kept) + rest


def delivered(raw: bytes, envelope_sender: str) -> bytes:
    """raw as it is filed: one Return-Path, the envelope sender's, on top."""
    field = f"Return-Path: <{envelope_sender}>\r\n".encode()
    return field + without_return_path(raw)
