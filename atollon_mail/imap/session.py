"""What one IMAP session holds besides its input: the selected folder's sequence numbers,
and the helpers that turn names, flags and sets into wire text and back (pure code).

The selected folder's messages are an `array('q')` of uids, ascending: message n is
uids[n - 1]. A folder of 100 000 messages costs 800 KB this way, not 100 000 objects; a
uid's sequence number is found by bisection.
"""

from __future__ import annotations

import array
import bisect
import re
from collections.abc import Iterable, Iterator

import attrs

# Registers the "imap4-utf-7" codec (modified UTF-7, RFC 3501 section 5.1.3).
import twisted.mail.imap4  # noqa: F401

from atollon_mail.imap.parser import MAX_NUMBER, ParseError, merge_ranges, parse_sequence_set

INBOX = "INBOX"
DELIMITER = "/"
SHARED_PREFIX = "Shared/"
# The flags every folder offers (RFC 3501 2.3.2); keywords in use are added per folder.
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
# Characters that make a name or string unsafe as a quoted string on the wire.
_NEEDS_LITERAL = re.compile(rb"[\x00\r\n\x80-\xff]")


class BadName(Exception):
    """A mailbox name that is not valid modified UTF-7."""


def decode_name(raw: bytes | str) -> str:
    """A mailbox name from the wire (modified UTF-7) as the store names it; INBOX in any
    case is INBOX. Raw 8-bit names (some clients send UTF-8) are taken as UTF-8."""
    if isinstance(raw, str):
        raw = raw.encode("ascii")
    try:
        if raw.isascii():
            name = raw.decode("imap4-utf-7")
            # Twisted's decoder is lenient: take only the one spelling of each name, so
            # that no two names on the wire stand for one folder ("&AGQAbwB0-" is "dot").
            if name.encode("imap4-utf-7") != raw:
                raise ValueError("not in canonical form")
        else:
            name = raw.decode("utf-8")
    except (UnicodeError, ValueError):
        raise BadName("the mailbox name is not valid modified UTF-7") from None
    if name.upper() == INBOX:
        return INBOX
    return name


def encode_name(name: str) -> bytes:
    """A mailbox name as the wire has it: modified UTF-7, quoted."""
    return quoted(name.encode("imap4-utf-7"))


def quoted(text: bytes) -> bytes:
    """A string as IMAP wire text: quoted, or a literal when it holds 8-bit or CR/LF."""
    if _NEEDS_LITERAL.search(text):
        return b"{%d}\r\n%s" % (len(text), text)
    return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def flag_list(flags: Iterable[str]) -> bytes:
    """(\\Seen $Forwarded): flags as a parenthesised list; \\Recent never."""
    return ("(" + " ".join(flag for flag in flags if flag != "\\Recent") + ")").encode("ascii")


class Pattern:
    """LIST's reference and pattern, matched against folder names: `*` matches any
    characters, `%` any but the delimiter, every other character itself.

    Matched in time linear in the name, whatever the pattern (a client's pattern must
    not make the reactor thread backtrack: `*a*a*a*...b` would with a regular
    expression): a bit-parallel automaton (shift-and), one bit per pattern position."""

    def __init__(self, reference: str, pattern: str):
        full = reference + pattern  # RFC 3501 6.3.8: interpreted together
        if full.upper() == INBOX:  # INBOX is named in any case
            full = INBOX
        tokens: list[str] = []
        for char in full:
            if char in "*%" and tokens and tokens[-1] in ("*", "%"):
                # Runs of wildcards are one: "*" if any of them is.
                tokens[-1] = "*" if "*" in (char, tokens[-1]) else "%"
            else:
                tokens.append(char)
        self.length = len(tokens)
        self.literal: dict[str, int] = {}
        self.any = 0  # positions of "*"
        self.but_delimiter = 0  # positions of "%"
        for position, token in enumerate(tokens):
            bit = 1 << position
            if token == "*":
                self.any |= bit
            elif token == "%":
                self.but_delimiter |= bit
            else:
                self.literal[token] = self.literal.get(token, 0) | bit
        self.wild = self.any | self.but_delimiter

    def _closed(self, state: int) -> int:
        # A wildcard matches nothing too: being before it is being after it.
        return state | ((state & self.wild) << 1)

    def match(self, name: str) -> bool:
        state = self._closed(1)
        for char in name:
            moved = (state & self.literal.get(char, 0)) << 1
            stay = self.any if char == DELIMITER else self.wild
            state = self._closed(moved | (state & stay))
            if not state:
                return False
        return bool(state >> self.length & 1)


def sequence_text(numbers: Iterable[int]) -> str:
    """Numbers as a compact sequence set: 1:3,7,9:10 (for COPYUID and MODIFIED)."""
    out: list[str] = []
    start = previous = None
    for number in numbers:
        if previous is not None and number == previous + 1:
            previous = number
            continue
        if start is not None:
            out.append(str(start) if start == previous else f"{start}:{previous}")
        start = previous = number
    if start is not None:
        out.append(str(start) if start == previous else f"{start}:{previous}")
    return ",".join(out)


@attrs.define
class Selected:
    """The folder a session has selected: its name, what it may do, its uids (ascending,
    sequence number n is uids[n - 1]) and how far it has told the client of changes."""

    name: str
    mailbox_id: int
    writable: bool
    uidvalidity: int
    uids: array.array
    uidnext: int
    highestmodseq: int  # changes up to here were told (or seen at SELECT)
    mailbox_address: str = ""  # the mailbox the folder is of
    # (uid, modseq) of the changes this session made itself and reported already
    own_changes: set = attrs.field(factory=set)

    def __len__(self) -> int:
        return len(self.uids)

    def uid_of(self, seq: int) -> int:
        return self.uids[seq - 1]

    def seq_of(self, uid: int) -> int | None:
        index = bisect.bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            return index + 1
        return None

    @property
    def largest_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def resolve(self, text: str, by_uid: bool) -> list[int]:
        """The uids a sequence set names, ascending and each once. By sequence number a
        number past the last message is an error (ParseError); by uid, uids that do not
        exist are ignored (RFC 3501 6.4.8)."""
        if by_uid:
            # "*" is the largest uid; an empty folder has none, so n:* is just n.
            ranges = merge_ranges(parse_sequence_set(text, self.largest_uid or MAX_NUMBER))
            found: list[int] = []
            uids = self.uids
            for low, high in ranges:  # sorted and disjoint: so are their slices
                start = bisect.bisect_left(uids, low)
                end = bisect.bisect_right(uids, high)
                found.extend(uids[start:end])
            return found
        ranges = merge_ranges(parse_sequence_set(text, len(self.uids)))
        if not self.uids:
            raise ParseError(None, "No messages in this folder")
        if ranges[-1][1] > len(self.uids):
            raise ParseError(None, "Invalid message sequence number")
        seqs: list[int] = []
        for low, high in ranges:
            seqs.extend(self.uids[low - 1 : high])
        return seqs

    def remove(self, gone: Iterable[int]) -> list[int]:
        """Take uids out; their sequence numbers as EXPUNGE responses give them: each
        as it is at its turn, highest first, so that none shifts the next."""
        seqs = sorted((seq for seq in map(self.seq_of, set(gone)) if seq is not None), reverse=True)
        if seqs:
            keep = set(self.uids) - {self.uids[seq - 1] for seq in seqs}
            self.uids = array.array("q", sorted(keep))
        return seqs

    def add(self, uids: Iterable[int]) -> int:
        """Append new uids (only those above the largest known: a message must never get
        a number before one the client has seen); how many were added."""
        largest = self.largest_uid
        new = sorted(uid for uid in set(uids) if uid > largest)
        self.uids.extend(new)
        return len(new)


def batches(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
