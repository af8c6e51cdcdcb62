"""Inbound benchmark: N messages of 2 KiB over S parallel sessions into one mailbox.

Our appliance and Postfix (the reference peer, delivering into a Maildir with the same
fsync-before-250 promise) get the same load from Postfix's smtp-source, in the same run,
interleaved, so the ratio holds even on a noisy shared machine. The appliance's RSS is
sampled every 50 ms during its runs. Every message must be in the store at the end.

    python bench/inbound.py [--messages 5000] [--sessions 20] [--rounds 2]
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile

from common import Appliance, RssSampler, parse_arguments, peer, rate_from, summary


def stored_count(appliance: Appliance) -> int:
    """The newest uid of the bench mailbox: uids have no gaps, so it is the count."""
    lines = appliance.cli("messages", "list", "user@bench.test", "--limit", "1").splitlines()
    match = re.search(r"^\s*(\d+)\s", lines[1]) if len(lines) > 1 else None
    return int(match.group(1)) if match else 0


def main() -> int:
    arguments = parse_arguments(__doc__)
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
    result = summary("inbound", arguments, ours, postfix, peaks)
    result.update(stored_messages=stored, expected_messages=expected)
    print(json.dumps(result, indent=2))
    if stored != expected:
        print(f"FAILED: {stored} messages stored, expected {expected}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
