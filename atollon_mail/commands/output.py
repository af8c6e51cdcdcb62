"""What the admin command shows: aligned tables, one-line confirmations and refusals, and the
exit statuses.

Everything printed passes through `clean`: stored values (subjects, senders, identities)
come from strangers and reach a terminal.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from atollon_mail.store.records import ContextRecord

PROGRAM = "atollon-mail"

# Exit statuses: done; refused (one line on stderr); bad usage (argparse's own).
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


class Refused(Exception):
    """A request the command refuses; str() is the one line shown on stderr."""


# Bidirectional overrides can make a listed subject or sender read differently from what
# it is, so they are shown like the other control characters.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean(value: object) -> str:
    """One line of printable text: header values come from strangers and reach a terminal."""
    text = str(value)
    characters = []
    for character in text:
        if character in "\r\n\t":
            characters.append(" ")
        elif character in _BIDI_CONTROLS or unicodedata.category(character) in ("Cc", "Cs"):
            characters.append("\ufffd")
        else:
            characters.append(character)
    return "".join(characters)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()):
    """Aligned columns with a header row; the columns listed in `right` are numbers."""
    cells = [[clean(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row)]
    lines = []
    for row in [list(headers), *cells]:
        parts = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def out(text: str = "") -> None:
    """Print to standard output, line by line, cleaned."""
    # Confirmations echo stored values too (an identity may hold any character).
    for line in text.split("\n"):
        print(clean(line), file=sys.stdout)


def one_line(problem: BaseException) -> str:
    """An exception as one cleaned line (its class name if it says nothing)."""
    lines = [line.strip() for line in str(problem).splitlines() if line.strip()]
    return clean(" ".join(lines)) or type(problem).__name__


def refusal(problem: BaseException) -> None:
    """Print the one line on stderr that says why a request was refused."""
    print(f"{PROGRAM}: {one_line(problem)}", file=sys.stderr)


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def context_label(context: ContextRecord) -> str:
    return f"{context.kind} #{context.id} {context.name}"


def when(moment) -> str:
    """A stored time (naive UTC) as shown in listings."""
    if moment is None:
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%S") if hasattr(moment, "strftime") else str(moment)


def shortened(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def display_url(url: str) -> str:
    """The database URL without its password, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
