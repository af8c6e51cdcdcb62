"""The appliance's threads on one CPU (`[appliance] cpu`).

The reactor thread and the store's thread take turns at one interpreter lock. On two
CPUs every hand-over of that lock wakes the other thread on the other CPU, and each
side spends its time waiting for the lock to come back after every system call (a send,
an epoll_ctl, an SQLite statement): on the project's 2-core machine (bench/inbound.py,
plain, 20 sessions, alternating runs) the process used 1.36-1.48 ms of CPU per
message and stored 650-810 messages a second with its threads free to move, 0.90-1.06
ms and 860-1140 a second with all of them on one CPU (`taskset -a`), Postfix in the
same runs 505-700. Python has no lighter remedy: the hand-over is the interpreter's own.

Only the threads that take turns at the lock are pinned. The CPU pool's threads
(`UnpinnedThread`) are not: DKIM signing's RSA and argon2 run in OpenSSL and libargon2
outside the lock, on another CPU (campaign delivery, bench/massmail.py: 1117 messages a
second with them pinned too, 1166 without). The processes the appliance starts (the
check process, pg_dump, psql) run where the machine lets them: each is started from a
thread whose own affinity is given back for the moment of the fork (`unpinned`), since
a child inherits the affinity of the thread that forks it. Linux only; elsewhere, or
with one CPU allowed, nothing is done.
"""

from __future__ import annotations

import contextlib
import os
import threading

from twisted.logger import Logger

log = Logger()

AUTO = "auto"
OFF = "off"

# The CPUs this process was allowed before it pinned itself; None while not pinned.
_allowed_before: frozenset[int] | None = None
_lock = threading.Lock()


def supported() -> bool:
    return hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task")


def current_cpu() -> int | None:
    """The CPU the calling thread last ran on (field 39 of its /proc stat line)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/stat", "rb") as stat:
            line = stat.read()
    except OSError:
        return None
    fields = line[line.rfind(b")") + 2 :].split()
    try:
        return int(fields[36])
    except (IndexError, ValueError):
        return None


def choose_cpu(setting: str | int, allowed: frozenset[int]) -> int | None:
    """The CPU to pin to for the setting, or None to leave the threads free: `off`;
    `auto` with fewer than two CPUs allowed; `auto` pins to the CPU the caller runs on
    (the scheduler spread what else runs on the machine), a number to that CPU, which
    must be one of the allowed."""
    if setting == OFF:
        return None
    if setting == AUTO:
        if len(allowed) < 2:
            return None
        cpu = current_cpu()
        return cpu if cpu in allowed else max(allowed)
    if setting not in allowed:
        listed = ", ".join(map(str, sorted(allowed)))
        raise ValueError(f"CPU {setting} is not one this process may run on ({listed})")
    return int(setting)


def pin_process(setting: str | int) -> int | None:
    """Every thread of this process (and every thread they start later) onto the CPU
    the setting chooses; which one, or None when nothing was pinned."""
    global _allowed_before
    if not supported():
        return None
    allowed = frozenset(os.sched_getaffinity(0))
    cpu = choose_cpu(setting, allowed)
    if cpu is None:
        return None
    with _lock:
        if _allowed_before is None:
            _allowed_before = allowed
        for name in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(name), {cpu})
            except (ProcessLookupError, ValueError):
                pass  # a thread that ended meanwhile
    log.info("the appliance's threads run on CPU {cpu}", cpu=cpu)
    return cpu


def allowed_before() -> frozenset[int] | None:
    return _allowed_before


class UnpinnedThread(threading.Thread):
    """A thread that runs on the CPUs the process had before pin_process, for work done
    mostly outside the interpreter lock (OpenSSL's RSA in DKIM signing, argon2), which
    another CPU can do beside the pinned threads (a ThreadPool's threadFactory)."""

    def run(self) -> None:
        before = _allowed_before
        if before is not None:
            os.sched_setaffinity(0, before)
        super().run()


@contextlib.contextmanager
def unpinned():
    """The calling thread's CPUs as they were before pin_process, for as long as the
    block runs: a process started inside it (fork, spawnProcess, subprocess.run) is not
    held to the appliance's CPU."""
    before = _allowed_before
    if before is None:
        yield
        return
    mine = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, before)
    except OSError:
        # None of those CPUs is the process's any more (its cpuset shrank): the child
        # starts on the appliance's CPU rather than not at all.
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)
