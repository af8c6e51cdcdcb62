"""Who a stored message is from and to: its senders' and recipients' addresses, one row
each in message_address (migration 11), so a contact's mail is found by an index instead
of by reading every message.

The rows come from the header section as it was stored: From and Sender are "from",
To and Cc are "to" (Bcc is never in a delivered header; the envelope's recipients are
left out too, as they are not what the message says and forwarded mail would name the
forwarding target as its recipient). Addresses are kept lower-cased, as Contact.email is.
They are written with the Message row (`insert_message`; not for mail only relayed for
a relay host, which is filed nowhere here, see queue.enqueue), by the migration for the
messages stored before it, and removed with the message (ON DELETE CASCADE).
"""

from __future__ import annotations

import re
from email.utils import getaddresses

from atollon_mail.store.models import database_proxy

FROM, TO = "from", "to"
ROLES = (FROM, TO)
_ROLE_OF = {b"from": FROM, b"sender": FROM, b"to": TO, b"cc": TO}
# A column holds up to 320 characters; longer is no address anyone has.
_LONGEST = 320
# At most this many addresses of one message are kept (a list mailed openly to
# thousands is found by its first ones; the rest would only fill the table).
MOST_ADDRESSES = 500


# One plain address, bare or in angle brackets after a display name of plain words: what
# most From, To and Cc fields hold. Such a value is read here; anything else (quotes,
# comments, groups, several addresses, non-ASCII) goes to the email package's
# getaddresses, which gives the same address for these (checked against it in
# tests/store/test_crm_mail.py) at about ten times the cost, and this runs for every
# message stored (receiving and relaying).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDRESS = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_NAME = rf"(?:{_ATOM}[ \t]+)*(?:{_ATOM}[ \t]*)?"
_PLAIN = re.compile(rf"[ \t]*(?:{_NAME}<({_ADDRESS})>|({_ADDRESS}))[ \t]*")


def _addresses(values: list[str]) -> list[str]:
    """The addresses of a role's field values, as getaddresses(values) reads them."""
    found = []
    for value in values:
        plain = _PLAIN.fullmatch(value)
        if plain is None:
            return [address for _, address in getaddresses(values)]
        found.append(plain.group(1) or plain.group(2))
    return found


def _fields(raw: bytes) -> dict[str, list[str]]:
    """The values of From, Sender, To and Cc (every occurrence, unfolded) by role.

    Scanned by hand as intake.summarize_headers does: the email package's parser would
    cost more than storing the message, and this runs for every message stored."""
    if raw.startswith(b"\r\n") or raw.startswith(b"\n"):
        return {}
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    block = raw if end < 0 else raw[:end]
    found: dict[str, list[str]] = {}
    current: list[bytes] | None = None
    lines: list[tuple[str, list[bytes]]] = []
    for line in block.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line.strip())
            continue
        name, colon, value = line.partition(b":")
        role = _ROLE_OF.get(name.strip().lower()) if colon else None
        current = None
        if role is not None:
            current = [value.strip()]
            lines.append((role, current))
    for role, parts in lines:
        found.setdefault(role, []).append(b" ".join(parts).decode("utf-8", errors="replace"))
    return found


def header_addresses(raw: bytes) -> list[tuple[str, str]]:
    """(role, address) of a message, each pair once, in the order they appear; the
    addresses lower-cased, what is no address (no "@") left out."""
    pairs: dict[tuple[str, str], None] = {}
    for role, values in _fields(raw).items():
        for address in _addresses(values):
            address = address.strip().lower()
            if (
                "@" in address
                and len(address) <= _LONGEST
                and " " not in address
                and "\x00" not in address  # PostgreSQL takes no NUL in text
            ):
                pairs[(role, address)] = None
            if len(pairs) >= MOST_ADDRESSES:
                return list(pairs)
    return list(pairs)


def _insert_sql(param: str) -> str:
    return (
        "INSERT INTO message_address (message_id, address, role) "
        f"VALUES ({param}, {param}, {param})"
    )


def record_addresses(
    message_id: int, raw: bytes, pairs: tuple[tuple[str, str], ...] | None = None
) -> None:
    """The rows of a message just stored (inside the transaction that stores it): `pairs`
    when they were read before (searchtext.extract), else read from `raw` here.

    One prepared statement run for every row: on the hot path of receiving, peewee's
    query builder cost several times the insert itself (as filing's _HOT_SQL notes)."""
    if pairs is None:
        pairs = tuple(header_addresses(raw))
    rows = [(message_id, address, role) for role, address in pairs]
    if rows:
        database_proxy.cursor().executemany(_insert_sql(database_proxy.param), rows)


# Back-filling migration 11 reads this many messages at a time (their bytes in memory).
BACKFILL_BATCH = 200


def backfill(database, dialect: str = "") -> int:
    """The rows of every message stored before migration 11, in plain SQL (a migration
    must not depend on the models of a later program); how many messages were read."""
    param = database.param
    select = f"SELECT id, raw FROM message WHERE id > {param} ORDER BY id LIMIT {BACKFILL_BATCH}"
    insert = (
        "INSERT INTO message_address (message_id, address, role) "
        f"VALUES ({param}, {param}, {param})"
    )
    last, read = 0, 0
    while True:
        batch = database.execute_sql(select, (last,)).fetchall()
        if not batch:
            return read
        rows = [
            (message_id, address, role)
            for message_id, raw in batch
            for role, address in header_addresses(bytes(raw))
        ]
        if rows:
            database.cursor().executemany(insert, rows)
        last = batch[-1][0]
        read += len(batch)
