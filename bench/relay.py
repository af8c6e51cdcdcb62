"""Relay benchmark: N messages of 2 KiB over S sessions for user@sink.test, queued and
delivered to the smtp-sink of peer-postfix (127.0.0.1:2700); the rate counts until the
queue is empty. Postfix relays the same load to the same sink in the same run.

    python bench/relay.py [--messages 5000] [--sessions 20] [--rounds 2]
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from common import (
    Appliance,
    RssSampler,
    cpu_seconds,
    parse_arguments,
    peer,
    rate_from,
    summary,
)

SINK = "127.0.0.1:2700"


def undelivered(database: str) -> tuple[int, int]:
    """(recipients not yet delivered, recipients delivered), read straight from SQLite."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
        rows = dict(
            connection.execute(
                "SELECT state = 'delivered', count(*) FROM queue_recipient GROUP BY 1"
            ).fetchall()
        )
    return rows.get(0, 0), rows.get(1, 0)


def run_ours(appliance: Appliance, messages: int, sessions: int) -> tuple[float, float, float]:
    """(msg/s, peak MiB, CPU ms per message): the CPU is the appliance's, all its threads."""
    database = os.path.join(appliance.workdir, "data", "store.sqlite")
    _, delivered_before = undelivered(database)
    with RssSampler(appliance) as sampler:
        started = time.monotonic()
        cpu_before = cpu_seconds(appliance.process.pid)
        subprocess.run(
            [
                "smtp-source",
                "-s",
                str(sessions),
                "-m",
                str(messages),
                "-l",
                "2048",
                "-f",
                "sender@peer.test",
                "-t",
                "user@sink.test",
                f"127.0.0.1:{appliance.smtp_port}",
            ],
            check=True,
            capture_output=True,
        )
        while True:
            waiting, delivered = undelivered(database)
            if not waiting and delivered - delivered_before >= messages:
                break
            if time.monotonic() - started > 600:
                raise RuntimeError(f"the queue did not drain: {waiting} waiting")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu_ms = (cpu_seconds(appliance.process.pid) - cpu_before) * 1000 / messages
    return round(messages / elapsed, 1), sampler.peak_mib, round(cpu_ms, 3)


def main() -> int:
    arguments = parse_arguments(__doc__)
    peer("start")
    workdir = tempfile.mkdtemp(prefix="atollon-bench-")
    appliance = Appliance(
        workdir,
        "[delivery]\nsmarthost = " + SINK + "\n",
        smtp_extra="relay_networks = 127.0.0.0/8\n",
    )
    ours, postfix, peaks, cpu = [], [], [], []
    try:
        appliance.start()
        for _ in range(arguments.rounds):
            postfix.append(
                rate_from(peer("relay", str(arguments.messages), str(arguments.sessions)))
            )
            rate, peak, cpu_ms = run_ours(appliance, arguments.messages, arguments.sessions)
            ours.append(rate)
            peaks.append(peak)
            cpu.append(cpu_ms)
    finally:
        appliance.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result = summary("relay", arguments, ours, postfix, peaks)
    result["ours_cpu_ms_per_msg"] = cpu
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
