"""Inbound benchmark: N messages of 2 KiB over S parallel sessions into one mailbox.

Our appliance and Postfix (the reference peer, delivering into a Maildir with the same
fsync-before-250 promise) get the same load from Postfix's smtp-source, in the same run,
interleaved, so the ratio holds even on a noisy shared machine. The appliance's RSS is
sampled every 50 ms during its runs. Every message must be in the store at the end.

    python bench/inbound.py [--messages 5000] [--sessions 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
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
    result = subprocess.run(["bash", PEER, *args], capture_output=True, text=True, check=True)
    return result.stdout


def rate_from(output: str) -> float:
    match = re.search(r"([\d.]+) msg/s", output)
    if not match:
        raise RuntimeError(f"no rate in peer-postfix output: {output!r}")
    return float(match.group(1))


class Appliance:
    """Our appliance under twistd, on a fresh SQLite store in a temporary directory."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.smtp_port = free_port()
        self.config = os.path.join(workdir, "bench.ini")
        with open(self.config, "w") as config_file:
            config_file.write(
                f"[appliance]\nhostname = mx.bench.test\ndata_dir = {workdir}/data\n"
                f"[database]\nurl = sqlite:///{workdir}/data/store.sqlite\n"
                f"[smtp]\nlisten = tcp:{self.smtp_port}:interface=127.0.0.1\n"
                f"[web]\nlisten = tcp:{free_port()}:interface=127.0.0.1\n"
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


def run_ours(appliance: Appliance, messages: int, sessions: int) -> dict:
    peak = [appliance.rss_kib()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak.append(appliance.rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        output = peer(
            "load", str(appliance.smtp_port), str(messages), str(sessions), "user@bench.test"
        )
    finally:
        done.set()
        sampler.join()
    return {"rate": rate_from(output), "peak_rss_mib": round(max(peak) / 1024, 1)}


def stored_count(appliance: Appliance) -> int:
    output = appliance.cli("messages", "list", "user@bench.test", "--limit", "1")
    match = (
        re.search(r"^\s*(\d+)\s", output.splitlines()[1]) if len(output.splitlines()) > 1 else None
    )
    return int(match.group(1)) if match else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    if not shutil.which("bc"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "bc"], check=False, capture_output=True)
    peer("start")
    workdir = tempfile.mkdtemp(prefix="atollon-bench-")
    appliance = Appliance(workdir)
    ours, postfix = [], []
    try:
        appliance.start()
        appliance.cli("domain", "add", "bench.test")
        appliance.cli("user", "add", "user", "--password-stdin", stdin="bench-password\n")
        appliance.cli("mailbox", "add", "user@bench.test", "--owner", "user")
        for _ in range(arguments.rounds):
            postfix.append(
                rate_from(peer("inbound", str(arguments.messages), str(arguments.sessions)))
            )
            ours.append(run_ours(appliance, arguments.messages, arguments.sessions))
        stored = stored_count(appliance)
    finally:
        appliance.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    expected_uids = arguments.messages * arguments.rounds
    result = {
        "benchmark": "inbound",
        "messages": arguments.messages,
        "sessions": arguments.sessions,
        "rounds": arguments.rounds,
        "ours_msg_per_s": [run["rate"] for run in ours],
        "postfix_msg_per_s": postfix,
        "ours_median": statistics.median(run["rate"] for run in ours),
        "postfix_median": statistics.median(postfix),
        "peak_rss_mib": max(run["peak_rss_mib"] for run in ours),
        "stored_messages_last_uid": stored,
        "expected_messages": expected_uids,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
    }
    result["ratio"] = round(result["ours_median"] / result["postfix_median"], 2)
    print(json.dumps(result, indent=2))
    if stored != expected_uids:
        print(f"FAILED: {stored} messages stored, expected {expected_uids}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
