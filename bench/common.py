"""Shared pieces of the benchmarks: the appliance under twistd, and the Postfix peer."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER = os.environ.get("PEER_POSTFIX", os.path.join(ROOT, "..", "shared", "bench", "peer-postfix"))
BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def peer(*args: str) -> str:
    if args[:1] == ("start",):
        ensure_bc()
    result = subprocess.run(["bash", PEER, *args], capture_output=True, text=True, check=True)
    return result.stdout


def rate_from(output: str) -> float:
    match = re.search(r"([\d.]+) msg/s", output)
    if not match:
        raise RuntimeError(f"no rate in peer-postfix output: {output!r}")
    return float(match.group(1))


class Appliance:
    """Our appliance under twistd, on a fresh SQLite store in a temporary directory."""

    def __init__(
        self,
        workdir: str,
        extra_config: str = "",
        smtp_extra: str = "",
        database_url: str | None = None,  # None: a fresh SQLite store in workdir
        appliance_extra: str = "",  # more of [appliance]
    ):
        self.workdir = workdir
        self.smtp_port = free_port()
        self.config = os.path.join(workdir, "bench.ini")
        database_url = database_url or f"sqlite:///{workdir}/data/store.sqlite"
        with open(self.config, "w") as config_file:
            config_file.write(
                f"[appliance]\nhostname = mx.bench.test\ndata_dir = {workdir}/data\n"
                + appliance_extra
                + f"[database]\nurl = {database_url}\n"
                f"[smtp]\nlisten = tcp:{self.smtp_port}:interface=127.0.0.1\n{smtp_extra}"
                f"[web]\nlisten = tcp:{free_port()}:interface=127.0.0.1\n"
                f"[imap]\nlisten = tcp:{free_port()}:interface=127.0.0.1\n"
                f"[submission]\nlisten = tcp:{free_port()}:interface=127.0.0.1\n" + extra_config
            )
        self.process: subprocess.Popen | None = None

    def cli(self, *args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            [os.path.join(BIN, "atollon-mail"), "--config", self.config, *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                os.path.join(BIN, "twistd"),
                "--nodaemon",
                "--pidfile=",
                "--logfile",
                os.path.join(self.workdir, "twistd.log"),
                "atollon-mail",
                "--config",
                self.config,
            ],
            cwd=self.workdir,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the appliance did not start listening; see twistd.log")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


class RssSampler:
    """Samples a process's resident memory every 50 ms while in a with-block."""

    def __init__(self, appliance: Appliance):
        self.appliance = appliance
        self.peak_kib = appliance.rss_kib()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            self.peak_kib = max(self.peak_kib, self.appliance.rss_kib())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return round(self.peak_kib / 1024, 1)


def machine() -> str:
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


def ensure_bc() -> None:
    """peer-postfix computes its rates with bc."""
    import shutil

    if not shutil.which("bc"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "bc"], check=False, capture_output=True)


def parse_arguments(doc: str, more=None):
    """--messages, --sessions, --rounds; `more(parser)` adds a benchmark's own options."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    if more is not None:
        more(parser)
    return parser.parse_args()


def summary(name: str, arguments, ours: list[float], postfix: list[float], peaks: list[float]):
    """The run's figures: per-round rates, medians, their ratio, peak memory."""
    import statistics

    return {
        "benchmark": name,
        "messages": arguments.messages,
        "sessions": arguments.sessions,
        "rounds": arguments.rounds,
        "ours_msg_per_s": ours,
        "postfix_msg_per_s": postfix,
        "ours_median": statistics.median(ours),
        "postfix_median": statistics.median(postfix),
        "ratio": round(statistics.median(ours) / statistics.median(postfix), 2),
        "peak_rss_mib": max(peaks),
        "machine": machine(),
    }


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it ("unknown" elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def proc_status_kib(pid: int | str, field: str) -> int:
    """A memory figure of /proc/PID/status in KiB (VmRSS, VmHWM); 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_stats():
    """The fields of /proc/PID/stat after the command's name, of every live process:
    state, ppid (1), pgrp (2), ..., utime (11), stime (12), cutime (13), cstime (14)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                yield stat.read().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue


def children_cpu_seconds(pid: int) -> float:
    """CPU time the child processes of pid have used, in seconds: the running ones' own
    and what the ended ones (waited for) left in pid's cutime and cstime."""
    total = 0
    for fields in process_stats():
        if int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    total += int(fields[13]) + int(fields[14])
    return total / os.sysconf("SC_CLK_TCK")
