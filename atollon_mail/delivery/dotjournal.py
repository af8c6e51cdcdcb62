"""The dot journal: which queue recipients' final dot is about to be sent, written to a
file before it is.

After a kill, a recipient still in flight whose dot was written down here (or in the
store) may have got its message; one without such a line cannot have. When each dot
waited for a store commit noting it instead, relaying (bench/relay.py) spent about two
thirds more CPU per message (0.86-0.93 ms before those commits, 1.50-1.65 ms with them,
measured side by side on one machine); a line appended to a file is one write(2) on the
reactor thread.

What is written survives the process being killed (it is in the operating system's
hands once write returns), not an operating system crash or a power cut: the same
promise as the store's lazily flushed progress (store.common.flushed_lazily), and what
it costs is a message sent once more, as before marks were written at all.

Lines go to numbered segment files ("<number>.dots") in one directory, each line
"<queue recipient id> <seconds since the epoch>". A segment is removed once every mark
in it reached the store (the runner's progress commits say so with `settled`); at start
`recover` reads what is left, the store takes it, and `discard` removes it.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Sequence

from twisted.logger import Logger

log = Logger()

SEGMENT_BYTES = 1024 * 1024  # a new segment after this much (about 50 000 marks)
_SEGMENT = re.compile(r"^(\d{1,12})\.dots$")


def segments(directory: str) -> list[int]:
    """The numbers of the segments in directory, in order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_SEGMENT.match, names) if m)


def read_marks(
    directory: str, numbers: Sequence[int] | None = None
) -> dict[int, datetime.datetime]:
    """{queue recipient id: when its dot was sent} from the segments in directory (those
    numbered, or all); a torn last line, cut by a crash mid-write, is skipped."""
    marks: dict[int, datetime.datetime] = {}
    for number in segments(directory) if numbers is None else numbers:
        with open(os.path.join(directory, f"{number:012d}.dots"), "rb") as journal:
            for line in journal:
                fields = line.split()
                if not line.endswith(b"\n") or len(fields) != 2:
                    continue
                try:
                    recipient_id, seconds = int(fields[0]), float(fields[1])
                except ValueError:
                    continue
                marks[recipient_id] = datetime.datetime.fromtimestamp(
                    seconds, datetime.UTC
                ).replace(tzinfo=None)
    return marks


class DotJournal:
    def __init__(self, directory: str):
        self._directory = directory
        self._fd: int | None = None
        self._segment = 0  # the one being written
        self._size = 0
        self._outstanding: dict[int, int] = {}  # segment -> marks not yet in the store
        self._recovered: list[int] = []

    def _path(self, segment: int) -> str:
        return os.path.join(self._directory, f"{segment:012d}.dots")

    def recover(self) -> dict[int, datetime.datetime]:
        """Every mark left by an earlier run (see read_marks); `discard` removes them."""
        self._recovered = segments(self._directory)
        return read_marks(self._directory, self._recovered)

    def discard(self) -> None:
        """Remove the segments `recover` read (the store has taken their marks); new marks
        go to segments numbered after them."""
        for segment in self._recovered:
            os.unlink(self._path(segment))
            self._outstanding.pop(segment, None)
        self._segment = max(self._recovered, default=-1) + 1
        self._recovered = []

    def note(self, recipient_ids: Sequence[int], at: datetime.datetime) -> int:
        """Write down that these recipients' dot is about to be sent; the segment they
        went to (for `settled`). Raises OSError when it could not be written: then the
        dot must not be sent."""
        if self._fd is None or self._size >= SEGMENT_BYTES:
            self._open_next()
        seconds = at.replace(tzinfo=datetime.UTC).timestamp()
        line = b"".join(b"%d %.3f\n" % (recipient_id, seconds) for recipient_id in recipient_ids)
        written = os.write(self._fd, line)
        if written != len(line):  # a full disk part way: the rest is not written down
            raise OSError(f"the dot journal took {written} of {len(line)} bytes")
        self._size += written
        self._outstanding[self._segment] = self._outstanding.get(self._segment, 0) + len(
            recipient_ids
        )
        return self._segment

    def settled(self, segment: int, count: int) -> None:
        """count marks of segment reached the store; a segment with none left outstanding
        is removed (emptied, if it is the one being written)."""
        left = self._outstanding.get(segment, 0) - count
        self._outstanding[segment] = left
        if left > 0:
            return
        if segment != self._segment:
            self._remove(segment)
        elif self._fd is not None:
            # The one being written, with nothing outstanding: emptied, so no mark stays
            # behind once all is written (an id the store hands out again could meet it).
            os.ftruncate(self._fd, 0)
            self._size = 0

    def _open_next(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            previous = self._segment
            self._segment += 1
            if self._outstanding.get(previous, 0) <= 0:
                self._remove(previous)
        os.makedirs(self._directory, mode=0o700, exist_ok=True)
        self._fd = os.open(self._path(self._segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _remove(self, segment: int) -> None:
        self._outstanding.pop(segment, None)
        try:
            os.unlink(self._path(segment))
        except OSError as problem:
            log.warn(
                "could not remove {path}: {problem}", path=self._path(segment), problem=problem
            )

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
