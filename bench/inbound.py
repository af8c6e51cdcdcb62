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
import re
import shutil
import statistics
import sys
import tempfile

from common import Appliance, RssSampler, machine, peer, rate_from


def stored_count(appliance: Appliance) -> int:
    """The newest uid of the bench mailbox: uids have no gaps, so it is the count."""
    lines = appliance.cli("messages", "list", "user@bench.test", "--limit", "1").splitlines()
    match = re.search(r"^\s*(\d+)\s", lines[1]) if len(lines) > 1 else None
    return int(match.group(1)) if match else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    peer("start")
    workdir = tempfile.mkdtemp(prefix="atollon-bench-")
    appliance = Appliance(workdir)
    ours, postfix, peaks = [], [], []
    try:
        appliance.start()
        appliance.cli("domain", "add", "bench.test")
        appliance.cli("user", "add", "user", "--password-stdin", stdin="bench-password\n")
        appliance.cli("mailbox", "add", "user@bench.test", "--owner", "user")
        for _ in range(arguments.rounds):
            postfix.append(
                rate_from(peer("inbound", str(arguments.messages), str(arguments.sessions)))
            )
            with RssSampler(appliance) as sampler:
                output = peer(
                    "load",
                    str(appliance.smtp_port),
                    str(arguments.messages),
                    str(arguments.sessions),
                    "user@bench.test",
                )
            ours.append(rate_from(output))
            peaks.append(sampler.peak_mib)
        stored = stored_count(appliance)
    finally:
        appliance.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    expected = arguments.messages * arguments.rounds
    result = {
        "benchmark": "inbound",
        "messages": arguments.messages,
        "sessions": arguments.sessions,
        "rounds": arguments.rounds,
        "ours_msg_per_s": ours,
        "postfix_msg_per_s": postfix,
        "ours_median": statistics.median(ours),
        "postfix_median": statistics.median(postfix),
        "ratio": round(statistics.median(ours) / statistics.median(postfix), 2),
        "peak_rss_mib": max(peaks),
        "stored_messages": stored,
        "expected_messages": expected,
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))
    if stored != expected:
        print(f"FAILED: {stored} messages stored, expected {expected}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
