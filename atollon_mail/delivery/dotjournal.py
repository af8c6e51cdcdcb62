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
"<queue recipient id> <seconds since the epoch>"; the rest of a segment is zero bytes. A
segment is removed once every mark in it reached the store (the runner's progress
commits say so with `settled`); at start `recover` reads what is left, the store takes
it, and `discard` removes it.

A segment is allocated on disk whole when it is opened and mapped into memory: a mark is
a copy into the mapping, in the operating system's page cache at once (so it survives a
kill as a write(2) does), and needs no system call. A write(2) per dot cost the reactor
85-98 us per relayed message under cProfile (bench/relay.py, side by side with the
code before), most of it waiting to take the interpreter lock back from the store's
thread after the call; the copy costs about a microsecond.
"""

from __future__ import annotations

import datetime
import errno
import mmap
import os
import re
from collections.abc import Sequence

from twisted.logger import Logger

log = Logger()

# The dot journal's folder in the data directory (the runner's; a restore empties it).
JOURNAL_DIRECTORY = "dot-journal"

_EPOCH = datetime.datetime(1970, 1, 1)
SEGMENT_BYTES = 1024 * 1024  # each segment's size (about 50 000 marks)
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
        self._map: mmap.mmap | None = None
        self._segment = 0  # the one being written
        self._size = 0  # what is used of it
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
        seconds = (at - _EPOCH).total_seconds()  # `at` is naive UTC
        line = b"".join(b"%d %.3f\n" % (recipient_id, seconds) for recipient_id in recipient_ids)
        if self._map is None or self._size + len(line) > len(self._map):
            self._open_next(len(line))
        end = self._size + len(line)
        self._map[self._size : end] = line
        self._size = end
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
        elif self._map is not None and self._size:
            # The one being written, with nothing outstanding: emptied, so no mark stays
            # behind once all is written (an id the store hands out again could meet it).
            self._map[: self._size] = bytes(self._size)
            self._size = 0

    def _open_next(self, needed: int) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
            previous = self._segment
            self._segment += 1
            if self._outstanding.get(previous, 0) <= 0:
                self._remove(previous)
        os.makedirs(self._directory, mode=0o700, exist_ok=True)
        size = max(SEGMENT_BYTES, needed)
        fd = os.open(self._path(self._segment), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            held = os.fstat(fd).st_size
            # Marks an earlier run left in a segment of this number (when nothing was
            # recovered first): kept, and written after.
            used = os.pread(fd, held, 0).rfind(b"\n") + 1 if held else 0
            size = max(size, held + needed)
            _allocate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._size = used

    def _remove(self, segment: int) -> None:
        self._outstanding.pop(segment, None)
        try:
            os.unlink(self._path(segment))
        except OSError as problem:
            log.warn(
                "could not remove {path}: {problem}", path=self._path(segment), problem=problem
            )

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def _allocate(fd: int, size: int) -> None:
    """Disk blocks for the whole file now: a mapped page with no block behind it would
    kill the process (SIGBUS) on a full disk instead of failing here."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as problem:
        if problem.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        held = os.fstat(fd).st_size
        if held < size:
            os.pwrite(fd, bytes(size - held), held)
