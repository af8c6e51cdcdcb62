"""Inbound benchmark: N messages of 2 KiB over S parallel sessions into one mailbox.

Our appliance and Postfix (the reference peer, delivering into a Maildir with the same
fsync-before-250 promise) get the same load from Postfix's smtp-source, in the same run,
interleaved round by round, so the ratios hold even on a noisy shared machine. Postfix
runs plain (no checks) in every round. Our appliance runs three ways, each its own
twistd on a fresh SQLite store, one after the other in each round after Postfix:

- plain: `[inbound] checks = off`, smtp-source's own 2 KiB messages. The keys of this
  way are the ones of earlier runs (ours_msg_per_s, ours_median, ratio, peak_rss_mib).
- checks: the built-in checks on (SPF of HELO and MAIL FROM, DKIM, DMARC, ARC, the
  built-in score), asking a DNS server on loopback that the benchmark starts
  (loopback_dns.py) through `[delivery] nameservers`. There sender.test publishes SPF
  allowing 127.0.0.1, a DKIM key and DMARC p=reject. One message of 2 KiB of text,
  DKIM-signed once by sender.test, is sent from a file (smtp-source -F) with HELO
  mail.sender.test, so every message passes SPF, DKIM and DMARC. Keys checks_*.
- rspamd: the same, each message also asked of a private rspamd before its 250
  (`[spam] rspamd_url`; see spamfilter.py: Debian's shipped rules by default, less
  those asking the internet, with the same loopback DNS; `--rspamd-rules minimal` for
  the tests' rule-less rspamd). Keys rspamd_*.

For each way: the rate of each round, their median, the ratio of medians to Postfix's
(and per round, to Postfix in the same round), the appliance's peak RSS (sampled every
50 ms) and its CPU time per message; for checks and rspamd the DNS queries per message
and the CPU time the loopback DNS server (Python, no cache in front) spent on them;
the CPU time of the appliance's check processes per message
({way}_check_process_cpu_ms_per_message, beside its own {way}_cpu_ms_per_message);
checks_meets_target says whether checks reached 1.5x Postfix; for rspamd also rspamd's
own CPU time per message (rspamd_filter_cpu_ms_per_message). Every message must be
stored in the Inbox, for checks and rspamd with spf=pass, dkim=pass and dmarc=pass in
its verdict, and for rspamd scanned; otherwise the run fails.

After the rounds, per way: the latency of L messages (--latency-messages) sent one
after the other over one session (smtplib), each timed from its final dot to the 250,
after 20 not counted; p50 and p95 ({way}_latency_ms, ours_latency_ms for plain), and
what rspamd adds (rspamd_added_latency_ms: rspamd less checks), beside
rspamd's own time over those messages by its log (rspamd_scan_ms, Debian's rules). Then
whether the reactor stays free while rspamd works: the rspamd way once more over one
session (smtp-source -s 1, L messages). `rspamd_concurrency_gain` is the S-session
rate over that one-session rate; a server waiting on rspamd for each message would
serve its sessions one at a time, a gain near 1. Where the S sessions already keep
every core busy (the appliance, rspamd and the DNS server share them) the gain is
bounded by the CPU instead, so the run also reports how many messages rspamd was
scanning at once on average (Debian's rules: the sum of its own times by its log over
the time of the run): rspamd_scans_in_flight per round with S sessions, and
rspamd_one_session_scans_in_flight. A server that waited would never keep more than
one scan going. smtp-source opens a connection per message.

    python bench/inbound.py [--messages 5000] [--sessions 20] [--rounds 2]
                            [--latency-messages 500] [--rspamd-rules debian|minimal]
                            [--ways plain,checks,checks_threads,rspamd]
                            [--check-processes N]

--ways runs only some ways (plain always, first), or one more: checks_threads, the
checks way with `[inbound] check_processes = 0` (the checks in the appliance's DNS
worker threads), keys checks_threads_*. --check-processes sets check_processes for the
checks and rspamd ways.
    python bench/inbound.py --nodes POSTGRESQL_URL [--messages ...] [--sessions ...]

With --nodes, only the throughput of one node and of two nodes on one PostgreSQL
database at that server, from one generator (see nodes.py); Postfix is not asked.

`make bench` runs it with these defaults. It needs Postfix's smtp-source (peer-postfix
installs Postfix), rspamd and redis-server (make bench installs both as root; without
them the rspamd way is skipped and the output says why, under rspamd_skipped).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import re
import shutil
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from common import (
    HERE,
    Appliance,
    RssSampler,
    children_cpu_seconds,
    cpu_seconds,
    parse_arguments,
    peer,
    rate_from,
    summary,
)
from spamfilter import start_rspamd
from twisted.trial.unittest import SkipTest

from atollon_mail.delivery import dkim
from atollon_mail.store.filing import verdict_from_json

RECIPIENT = "user@bench.test"
SENDER_DOMAIN = "sender.test"
SENDER = f"alice@{SENDER_DOMAIN}"
HELO = f"mail.{SENDER_DOMAIN}"
SELECTOR = "sel"
BODY_BYTES = 2048
WARMUP_MESSAGES = 20  # sent before the timed ones of a latency run, not counted
CHECKS_TARGET = 1.5  # built-in checks: at least this times Postfix's plain rate
PASSED = ("spf=pass", "dkim=pass", "dmarc=pass")


def zones(public_key: str) -> dict:
    """The loopback DNS: the sender's SPF, DKIM key and DMARC p=reject, its HELO name
    and the reverse name of 127.0.0.1 (rspamd checks both)."""
    spf = "v=spf1 ip4:127.0.0.1 -all"
    return {
        SENDER_DOMAIN: {
            "@": [["TXT", spf], ["MX", 10, HELO]],
            "_dmarc": [["TXT", "v=DMARC1; p=reject"]],
            f"{SELECTOR}._domainkey": [["TXT", dkim.txt_value("rsa", public_key)]],
            "mail": [["A", "127.0.0.1"], ["TXT", spf]],
        },
        "bench.test": {"@": [["MX", 10, "mx.bench.test"]], "mx": [["A", "127.0.0.1"]]},
        "127.in-addr.arpa": {"1.0.0": [["PTR", HELO]]},
    }


def signed_message(private_key: str) -> bytes:
    """The message of the checks and rspamd ways, LF line ends (smtp-source -F sends
    each line with CRLF): plain text of BODY_BYTES, signed by the sender's domain."""
    line = "The figures for the quarter are below, with the notes of Tuesday's meeting.\n"
    body = line * (BODY_BYTES // len(line))
    head = (
        f"From: Alice Sender <{SENDER}>\nTo: <{RECIPIENT}>\nSubject: Quarterly figures\n"
        f"Date: {email.utils.formatdate()}\nMessage-ID: <{uuid.uuid4().hex}@{SENDER_DOMAIN}>\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
    )
    return dkim.sign((head + body).encode(), SENDER_DOMAIN, SELECTOR, "rsa", private_key)


class LoopbackDNS:
    """loopback_dns.py in a process of its own, serving `zones`."""

    def __init__(self, workdir: str, zones: dict):
        path = os.path.join(workdir, "zones.json")
        with open(path, "w") as zones_file:
            json.dump(zones, zones_file)
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "loopback_dns.py"), path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        first = self.process.stdout.readline()
        if not first.startswith("port "):
            self.stop()
            raise RuntimeError(f"the loopback DNS server did not start: {first!r}")
        self.port = int(first.split()[1])

    def queries(self) -> int:
        self.process.stdin.write("queries\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


def smtp_source_binary() -> str:
    return shutil.which("smtp-source") or "/usr/sbin/smtp-source"


def smtp_source(port: int, messages: int, sessions: int, message_file: str) -> float:
    """Send the prepared message `messages` times over `sessions` sessions; msg/s."""
    command = [
        smtp_source_binary(),
        "-s", str(sessions),
        "-m", str(messages),
        "-M", HELO,
        "-F", message_file,
        "-f", SENDER,
        "-t", RECIPIENT,
        f"127.0.0.1:{port}",
    ]  # fmt: skip
    started = time.monotonic()
    sent = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if sent.returncode != 0:
        raise RuntimeError(f"smtp-source failed against port {port}: {sent.stderr.strip()}")
    return round(messages / elapsed, 1)


def latencies_ms(port: int, message: bytes, count: int) -> list[float]:
    """Milliseconds from each message's final dot to its 250, `count` messages one after
    the other over one session (after WARMUP_MESSAGES not counted)."""
    crlf = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    stuffed = re.sub(rb"(?m)^\.", b"..", crlf)
    timed = []
    with smtplib.SMTP("127.0.0.1", port, local_hostname=HELO, timeout=60) as client:
        # the final dot goes out at once, not held back (Nagle) for the body's ACK
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.ehlo()
        for index in range(WARMUP_MESSAGES + count):
            for reply, expected in (
                (client.mail(SENDER), 250),
                (client.rcpt(RECIPIENT), 250),
                (client.docmd("DATA"), 354),
            ):
                if reply[0] != expected:
                    raise RuntimeError(f"port {port} answered {reply} (expected {expected})")
            client.send(stuffed)
            started = time.perf_counter()
            client.send(b".\r\n")
            code, text = client.getreply()
            elapsed = time.perf_counter() - started
            if code != 250:
                raise RuntimeError(f"port {port} answered {code} {text!r} to a message")
            if index >= WARMUP_MESSAGES:
                timed.append(elapsed * 1000)
    return timed


def percentiles(timed: list[float]) -> dict:
    cuts = statistics.quantiles(timed, n=20)
    return {"p50": round(cuts[9], 2), "p95": round(cuts[18], 2), "messages": len(timed)}


def sent_with_scans(send, rspamd, messages: int, sessions: int) -> tuple[float, float | None]:
    """send(messages, sessions) -> msg/s, and how many messages rspamd was scanning at once
    on average meanwhile: the sum of its own times over them (by its log) over the time
    the sending took. None without a log to read it from."""
    logged = rspamd is not None and rspamd.log is not None
    before = len(rspamd.scan_times_ms()) if logged else 0
    started = time.monotonic()
    rate = send(messages, sessions)
    elapsed = time.monotonic() - started
    if not logged:
        return rate, None
    scanned = rspamd.scan_times_ms()[before:]
    return rate, round(sum(scanned) / 1000 / elapsed, 2)


class Way:
    """One way of running our appliance, and what was measured of it."""

    def __init__(self, name: str, appliance: Appliance, send, rspamd=None):
        self.name = name
        self.appliance = appliance
        self.send = send  # (messages, sessions) -> msg/s
        self.rspamd = rspamd  # the spam filter this way's appliance asks, if any
        self.scans_in_flight: list[float] = []
        self.rates: list[float] = []
        self.round_ratios: list[float] = []
        self.peaks: list[float] = []
        self.cpu = 0.0
        self.children_cpu = 0.0  # the appliance's child processes (the check processes)
        self.loaded = 0  # messages sent in the rounds
        self.dns_queries = 0
        self.dns_cpu = 0.0
        self.sent = 0  # every message sent, rounds and latency runs
        self.latency: dict = {}
        self.checked: dict = {}

    def add_mailbox(self) -> None:
        self.appliance.cli("domain", "add", "bench.test")
        self.appliance.cli("user", "add", "user", "--password-stdin", stdin="bench-password\n")
        self.appliance.cli("mailbox", "add", RECIPIENT, "--owner", "user")

    def load(self, messages: int, sessions: int, postfix_rate: float, dns: LoopbackDNS):
        queries, dns_cpu = dns.queries(), cpu_seconds(dns.process.pid)
        cpu = cpu_seconds(self.appliance.process.pid)
        children_cpu = children_cpu_seconds(self.appliance.process.pid)
        with RssSampler(self.appliance) as sampler:
            rate, in_flight = sent_with_scans(self.send, self.rspamd, messages, sessions)
        if in_flight is not None:
            self.scans_in_flight.append(in_flight)
        self.cpu += cpu_seconds(self.appliance.process.pid) - cpu
        self.children_cpu += children_cpu_seconds(self.appliance.process.pid) - children_cpu
        self.dns_queries += dns.queries() - queries
        self.dns_cpu += cpu_seconds(dns.process.pid) - dns_cpu
        self.loaded += messages
        self.sent += messages
        self.rates.append(rate)
        self.round_ratios.append(round(rate / postfix_rate, 2))
        self.peaks.append(sampler.peak_mib)

    def measure_latency(self, message: bytes, count: int) -> None:
        timed = latencies_ms(self.appliance.smtp_port, message, count)
        self.sent += WARMUP_MESSAGES + count
        self.latency = percentiles(timed)

    def keys(self, prefix: str, postfix_median: float) -> dict:
        median = statistics.median(self.rates)
        loaded = max(self.loaded, 1)
        return {
            f"{prefix}_msg_per_s": self.rates,
            f"{prefix}_median": median,
            f"{prefix}_ratio": round(median / postfix_median, 2),
            f"{prefix}_round_ratios": self.round_ratios,
            f"{prefix}_peak_rss_mib": max(self.peaks),
            f"{prefix}_cpu_ms_per_message": round(self.cpu * 1000 / loaded, 3),
            f"{prefix}_check_process_cpu_ms_per_message": round(
                self.children_cpu * 1000 / loaded, 3
            ),
            f"{prefix}_dns_queries_per_message": round(self.dns_queries / loaded, 3),
            f"{prefix}_dns_server_cpu_ms_per_message": round(self.dns_cpu * 1000 / loaded, 3),
            f"{prefix}_latency_ms": self.latency,
        }


def check_stored(way: Way, authenticated: bool, scanned: bool) -> list[str]:
    """What is wrong with the messages way's appliance stored (empty: nothing); its
    counts in way.checked. Read from its store (SQLite) once it has stopped."""
    database = os.path.join(way.appliance.workdir, "data", "store.sqlite")
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT filing.folder, message.verdict FROM filing "
            "JOIN message ON message.id = filing.message_id"
        ).fetchall()
    junk = unauthenticated = unscanned = 0
    for folder, stored_verdict in rows:
        junk += folder != "inbox"
        verdict = verdict_from_json(stored_verdict)
        if authenticated and (
            verdict is None or not all(result in verdict.authentication for result in PASSED)
        ):
            unauthenticated += 1
        if scanned and (verdict is None or not verdict.scanned or verdict.spam_score is None):
            unscanned += 1
    way.checked = {"stored": len(rows), "expected": way.sent}
    problems = []
    if len(rows) != way.sent:
        problems.append(f"{way.name}: {len(rows)} messages stored, expected {way.sent}")
    if junk:
        problems.append(f"{way.name}: {junk} messages filed into Junk")
    if unauthenticated:
        problems.append(f"{way.name}: {unauthenticated} messages without {', '.join(PASSED)}")
    if unscanned:
        problems.append(f"{way.name}: {unscanned} messages not scanned by rspamd")
    return problems


WAYS = ("plain", "checks", "checks_threads", "rspamd")
DEFAULT_WAYS = ("plain", "checks", "rspamd")


def ways_list(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(way.strip() for way in text.split(",") if way.strip()))
    if not chosen or chosen[0] != "plain" or any(way not in WAYS for way in chosen):
        raise ValueError(text)
    return tuple(way for way in WAYS if way in chosen)


def more_options(parser) -> None:
    parser.add_argument(
        "--ways",
        type=ways_list,
        default=DEFAULT_WAYS,
        help="the ways to run, plain first (the report is built on it): plain,checks "
        "leaves rspamd out; checks_threads is the checks way with check_processes = 0 "
        "(default plain,checks,rspamd)",
    )
    parser.add_argument(
        "--check-processes",
        type=int,
        default=None,
        help="[inbound] check_processes for the checks and rspamd ways (default: the "
        "appliance's default)",
    )
    parser.add_argument(
        "--latency-messages",
        type=int,
        default=500,
        help="messages timed one by one over one session, per way (default 500)",
    )
    parser.add_argument(
        "--nodes",
        metavar="POSTGRESQL_URL",
        help="report inbound throughput with one and with two nodes on fresh databases "
        "of this PostgreSQL server (nothing else)",
    )
    parser.add_argument(
        "--rspamd-rules",
        choices=("debian", "minimal"),
        default="debian",
        help="rspamd's rules: Debian's shipped configuration, or the tests' minimal one",
    )


def main() -> int:
    arguments = parse_arguments(__doc__, more_options)
    if arguments.nodes:
        import nodes

        workdir = tempfile.mkdtemp(prefix="atollon-bench-")
        try:
            report = nodes.run(
                arguments.nodes, workdir, arguments.messages, arguments.sessions, arguments.rounds
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(json.dumps(report, indent=2))
        expected = report["one_node_expected_messages"]
        stored = (report["one_node_stored_messages"], report["two_nodes_stored_messages"])
        return 0 if stored == (expected, expected) else 1
    peer("start")
    workdir = tempfile.mkdtemp(prefix="atollon-bench-")
    private_key, public_key = dkim.generate_key("rsa")
    message = signed_message(private_key)
    message_file = os.path.join(workdir, "signed.eml")
    with open(message_file, "wb") as prepared:
        prepared.write(message)
    postfix: list[float] = []
    ways: list[Way] = []
    result: dict = {}
    problems: list[str] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        dns = LoopbackDNS(workdir, zones(public_key))
        cleanup.callback(dns.stop)
        nameserver = f"127.0.0.1:{dns.port}"
        processes = arguments.check_processes

        def checks_config_with(processes):
            return (
                "[inbound]\nchecks = on\n"
                + (f"check_processes = {processes}\n" if processes is not None else "")
                + f"[delivery]\nnameservers = {nameserver}\n"
            )

        checks_config = checks_config_with(processes)
        if processes is not None:
            result["check_processes"] = processes
        configs = {
            "plain": "[inbound]\nchecks = off\n",
            "checks": checks_config,
            "checks_threads": checks_config_with(0),
        }
        configs = {name: config for name, config in configs.items() if name in arguments.ways}
        rspamd = None
        if "rspamd" not in arguments.ways:
            result["rspamd_skipped"] = "not asked for (--ways)"
        else:
            try:
                rspamd = start_rspamd(arguments.rspamd_rules, nameserver)
                cleanup.callback(rspamd.stop)
                configs["rspamd"] = checks_config + f"[spam]\nrspamd_url = {rspamd.scanner_url}\n"
                result["rspamd_rules"] = rspamd.rules
            except SkipTest as reason:
                result["rspamd_skipped"] = str(reason)
                print(f"the rspamd way is skipped: {reason}", file=sys.stderr)
        for name, config in configs.items():
            directory = os.path.join(workdir, name)
            os.makedirs(directory)
            appliance = Appliance(directory, extra_config=config)
            if name == "plain":

                def send(messages, sessions, port=appliance.smtp_port):
                    return rate_from(
                        peer("load", str(port), str(messages), str(sessions), RECIPIENT)
                    )
            else:

                def send(messages, sessions, port=appliance.smtp_port):
                    return smtp_source(port, messages, sessions, message_file)

            way = Way(name, appliance, send, rspamd if name == "rspamd" else None)
            appliance.start()
            cleanup.callback(appliance.stop)
            way.add_mailbox()
            ways.append(way)
        rspamd_cpu = rspamd.cpu_seconds() if rspamd else 0.0
        for _ in range(arguments.rounds):
            postfix_rate = rate_from(
                peer("inbound", str(arguments.messages), str(arguments.sessions))
            )
            postfix.append(postfix_rate)
            for way in ways:
                way.load(arguments.messages, arguments.sessions, postfix_rate, dns)
        rspamd_cpu = (rspamd.cpu_seconds() - rspamd_cpu) if rspamd else 0.0
        for way in ways:
            way.measure_latency(message, arguments.latency_messages)
        if rspamd is not None:
            rspamd_way = ways[-1]
            # rspamd's own time over the messages of the latency run, by its log
            scans = rspamd.scan_times_ms()[-arguments.latency_messages :]
            if len(scans) > 1:
                result["rspamd_scan_ms"] = percentiles(scans)
            one_session, in_flight = sent_with_scans(
                rspamd_way.send, rspamd, arguments.latency_messages, 1
            )
            rspamd_way.sent += arguments.latency_messages
            result["rspamd_one_session_msg_per_s"] = one_session
            if in_flight is not None:
                result["rspamd_scans_in_flight"] = rspamd_way.scans_in_flight
                result["rspamd_one_session_scans_in_flight"] = in_flight
            result["rspamd_concurrency_gain"] = round(
                statistics.median(rspamd_way.rates) / one_session, 2
            )
        for way in ways:
            way.appliance.stop()
            problems += check_stored(way, way.name != "plain", way.name == "rspamd")
        plain = ways[0]
        report = summary("inbound", arguments, plain.rates, postfix, plain.peaks)
        report.update(
            stored_messages=plain.checked["stored"], expected_messages=plain.checked["expected"]
        )
        postfix_median = report["postfix_median"]
        extra = plain.keys("ours", postfix_median)
        for key in ("ours_msg_per_s", "ours_median", "ours_ratio", "ours_peak_rss_mib"):
            del extra[key]  # the plain way's figures keep the keys of earlier runs
        for key in (
            "ours_dns_queries_per_message",
            "ours_dns_server_cpu_ms_per_message",
            "ours_check_process_cpu_ms_per_message",
        ):
            del extra[key]  # it asks no DNS and has no check process
        report.update(extra)
        report["latency_messages"] = arguments.latency_messages
        for way in ways[1:]:
            report.update(way.keys(way.name, postfix_median))
            report[f"{way.name}_stored_messages"] = way.checked["stored"]
        if "checks_ratio" in report:
            report["checks_target_ratio"] = CHECKS_TARGET
            report["checks_meets_target"] = report["checks_ratio"] >= CHECKS_TARGET
        if rspamd is not None:
            rspamd_way = ways[-1]
            if "checks" in configs:
                report["rspamd_added_latency_ms"] = {
                    quantile: round(rspamd_way.latency[quantile] - ways[1].latency[quantile], 2)
                    for quantile in ("p50", "p95")
                }
            # rspamd's own processes, over the rounds (where its way sent `loaded`)
            report["rspamd_filter_cpu_ms_per_message"] = round(
                rspamd_cpu * 1000 / max(rspamd_way.loaded, 1), 3
            )
        report.update(result)
    print(json.dumps(report, indent=2))
    if problems:
        for problem in problems:
            print(f"FAILED: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
