"""Whole numbers from query strings and forms (ids, page numbers): a bad one is a 404 or a
400, never a 500.

`str.isdigit` is not enough: it accepts "²", which int() refuses, and a number of any
length, which the database refuses (SQLite raises OverflowError past 2**63 - 1).
"""

from __future__ import annotations

import re

from atollon_mail.web.app import HttpError

MAX_ID = 2**63 - 1  # the largest integer SQLite and PostgreSQL's bigint hold
# Far beyond any listing here, and small enough that no page's offset nears MAX_ID.
MAX_PAGE = 10**9
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII digits only


def parse_count(text: str | None) -> int | None:
    """A whole number from 0 the database can hold, or None."""
    text = (text or "").strip()
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_id(text: str | None) -> int | None:
    """A positive id the database can hold, or None (the caller answers 404 or ignores it)."""
    value = parse_count(text)
    return value if value else None


def page_number(text: str | None) -> int:
    """A page number: none given is 1; one that is no page at all is a 400."""
    text = (text or "").strip()
    if not text:
        return 1
    number = parse_id(text)
    if number is None or number > MAX_PAGE:
        raise HttpError(400, "The page number must be a whole number from 1; use the page links.")
    return number
