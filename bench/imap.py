"""IMAP benchmark: the appliance and Dovecot side by side, serving the same 10 000 messages.

Dovecot (Debian's dovecot-imapd, started here with a configuration of its own in a
temporary directory, never the system service) serves a Maildir holding the messages;
the appliance (under twistd, as the other benchmarks run it) serves the same messages,
filed into one mailbox's Inbox by the store's own operation for received mail
(filing.store_messages, 500 a transaction) before it starts. Both listen on loopback and
both are reached the same way: STARTTLS, then LOGIN (the appliance allows LOGIN only
after TLS; Dovecot is configured alike, with a certificate made here), by the same client,
Python's imaplib; both hash the password with Argon2id at 64 MiB and three passes, so a
LOGIN costs them alike (the table shows it apart). Durability is comparable: Dovecot
with mail_fsync = always, the appliance's SQLite with synchronous=FULL (it matters little
here: the steps read).

Each round, on a new connection to each server in turn:
  open     connect + STARTTLS + LOGIN + SELECT INBOX + UID FETCH 1:* (UID FLAGS
           RFC822.SIZE ENVELOPE)
  bodies   UID FETCH of 1000 whole messages (BODY.PEEK[])
  search   UID SEARCH HEADER Subject <word>, and UID SEARCH FROM <address>
A first round warms both up (Dovecot builds its index and cache then) and is not counted;
the figures are the medians of the rounds after it. The answers are checked: every
message listed, the bodies as long as their RFC822.SIZE said, both servers finding the
same messages (the appliance's messages are 37 bytes longer: the store adds Return-Path).
Target: each step at most 2x Dovecot's time.

Memory: the appliance's resident set (VmRSS) before and after each step, its highest
during each step (sampled every 20 ms) and over the run, and what 50 connections idling
(IDLE) at once add to it: target < 20 MB for the 50. Dovecot's figures beside it are the
proportional set sizes (Pss) of all its processes added up.

    python bench/imap.py [--messages 10000] [--rounds 5] [--fetch 1000] [--idlers 50]
"""

from __future__ import annotations

import argparse
import configparser
import imaplib
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import Appliance, RssSampler, free_port, machine

from atollon_mail.passwords import hash_password
from atollon_mail.selfsigned import make_self_signed
from atollon_mail.store import accounts, domains, filing
from atollon_mail.store import mailboxes as mailbox_ops
from atollon_mail.store.pool import Store
from atollon_mail.store.records import IncomingMessage

DOVECOT = "/usr/sbin/dovecot"
LOGIN = "bench"
PASSWORD = "bench-password"
ADDRESS = "bench@bench.test"
BATCH = 500
RATIO_TARGET = 2.0
IDLE_TARGET_MIB = 20.0
STEPS = ("open", "bodies", "search_subject", "search_from")
# The open step's two parts, shown beside it (the targets are the steps').
PARTS = ("login", "select_fetch")
WORDS = (
    "invoice order meeting report budget launch contract offer review agenda update"
    " delivery payment schedule proposal minutes project quarter shipment renewal"
    " estimate design feedback summary training travel workshop audit forecast"
).split()


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after a warm-up")
    parser.add_argument("--fetch", type=int, default=1000, help="whole messages fetched")
    parser.add_argument("--idlers", type=int, default=50, help="connections idling at once")
    parser.add_argument("--seed", type=int, default=16)
    return parser.parse_args()


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the messages -------------------------------------------------------------------------


def messages(count: int, seed: int) -> list[bytes]:
    """`count` messages, the same for the same seed: mostly plain text of 1 to 6 KiB, a
    fifth multipart/alternative with HTML, a tenth with an attachment of 5 to 40 KiB,
    some with 8-bit UTF-8 text and RFC 2047 subjects, from 200 correspondents."""
    chooser = random.Random(seed)
    found = []
    for number in range(count):
        sender = f"Sender {number % 200} <sender{number % 200}@corr{number % 13}.example>"
        subject = " ".join(chooser.choice(WORDS) for _ in range(chooser.randint(2, 5)))
        if number % 17 == 0:
            subject = f"=?utf-8?q?P=C5=99=C3=ADloha?= {subject}"
        head = (
            f"From: {sender}\r\nTo: Bench <{ADDRESS}>\r\nSubject: {subject.capitalize()}\r\n"
            f"Date: Mon, 7 Dec 2026 10:{number % 60:02d}:00 +0000\r\n"
            f"Message-ID: <{number}.{seed}@bench.example>\r\nMIME-Version: 1.0\r\n"
        )
        lines = [
            " ".join(chooser.choice(WORDS) for _ in range(12)).capitalize() + "."
            for _ in range(chooser.randint(15, 90))
        ]
        if number % 11 == 0:
            lines.append("Příliš žluťoučký kůň úpěl ďábelské ódy.")
        text = "\r\n".join(lines) + "\r\n"
        pick = number % 10
        if pick in (1, 2):
            html = "".join(f"<p>{line}</p>\r\n" for line in lines)
            raw = (
                f"{head}Content-Type: multipart/alternative; boundary=ALT{number}\r\n\r\n"
                f"--ALT{number}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\n{text}"
                f"--ALT{number}\r\nContent-Type: text/html; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\n<html><body>{html}</body></html>\r\n"
                f"--ALT{number}--\r\n"
            )
        elif pick == 3:
            data = chooser.randbytes(chooser.randint(5000, 40000))
            encoded = "\r\n".join(
                data.hex()[i : i + 76] for i in range(0, len(data.hex()), 76)
            )  # hex, not base64: the same bytes either way for what is measured
            raw = (
                f"{head}Content-Type: multipart/mixed; boundary=MIX{number}\r\n\r\n"
                f"--MIX{number}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\n{text}"
                f"--MIX{number}\r\nContent-Type: application/octet-stream\r\n"
                f'Content-Disposition: attachment; filename="data-{number}.hex"\r\n\r\n'
                f"{encoded}\r\n--MIX{number}--\r\n"
            )
        else:
            raw = (
                f"{head}Content-Type: text/plain; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\n{text}"
            )
        found.append(raw.encode())
    return found


# --- Dovecot ------------------------------------------------------------------------------


class Dovecot:
    """Dovecot's master with a configuration of its own, serving one user's Maildir."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.config = os.path.join(workdir, "dovecot.conf")
        self.home = os.path.join(workdir, "home", LOGIN)
        self.maildir = os.path.join(self.home, "Maildir")

    def write_maildir(self, raws: list[bytes]) -> None:
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.maildir, sub), exist_ok=True)
        stamp = int(time.time()) - len(raws)
        for number, raw in enumerate(raws):
            # S= and W= (the size as stored, and with CRLF line ends: the same here) spare
            # Dovecot reading a file for its RFC822.SIZE, as its own deliveries do.
            name = f"{stamp + number}.M{number}P1.bench,S={len(raw)},W={len(raw)}:2,"
            path = os.path.join(self.maildir, "cur", name)
            with open(path, "wb") as out:
                out.write(raw)
            os.utime(path, (stamp + number, stamp + number))

    def password_hash(self) -> str:
        """The password hashed as the appliance hashes it, with Argon2id at 64 MiB and
        three passes (libsodium's, one lane where argon2-cffi uses four), so that a LOGIN
        costs both servers alike; PLAIN where this Dovecot lacks the scheme."""
        made = subprocess.run(
            ["doveadm", "pw", "-s", "ARGON2ID", "-p", PASSWORD], capture_output=True, text=True
        )
        if made.returncode == 0 and made.stdout.startswith("{ARGON2ID}$argon2id$"):
            self.scheme = made.stdout.strip().split("$")[3]
            return made.stdout.strip()
        self.scheme = "PLAIN (doveadm pw -s ARGON2ID failed)"
        return f"{{PLAIN}}{PASSWORD}"

    def configure(self) -> None:
        certificate, key = make_self_signed("imap.bench.test")
        for name, data in (("cert.pem", certificate), ("key.pem", key)):
            with open(os.path.join(self.workdir, name), "wb") as out:
                out.write(data)
        os.chmod(os.path.join(self.workdir, "key.pem"), 0o600)
        with open(os.path.join(self.workdir, "passwd"), "w") as out:
            out.write(f"{LOGIN}:{self.password_hash()}::::::\n")
        if os.geteuid() == 0:
            # The mail is read as an unprivileged user; the services run as Debian's.
            mail_uid = mail_gid = 65534
            users = "default_internal_user = dovecot\ndefault_login_user = dovenull\n"
            for directory, _dirs, files in os.walk(os.path.join(self.workdir, "home")):
                os.chown(directory, mail_uid, mail_gid)
                for name in files:
                    os.chown(os.path.join(directory, name), mail_uid, mail_gid)
        else:
            # Everything as the user running the benchmark (Dovecot's "non-root" setup).
            mail_uid, mail_gid = os.getuid(), os.getgid()
            user = __import__("pwd").getpwuid(mail_uid).pw_name
            users = (
                f"default_internal_user = {user}\ndefault_login_user = {user}\n"
                "service anvil {\n  chroot =\n}\nservice imap-login {\n  chroot =\n}\n"
            )
        with open(self.config, "w") as out:
            out.write(
                f"base_dir = {self.workdir}/run\nstate_dir = {self.workdir}/state\n"
                f"instance_name = atollon-bench-dovecot-{self.port}\n"
                f"log_path = {self.workdir}/dovecot.log\n"
                "protocols = imap\nlisten = 127.0.0.1\n"
                f"ssl = yes\nssl_cert = <{self.workdir}/cert.pem\n"
                f"ssl_key = <{self.workdir}/key.pem\n"
                "disable_plaintext_auth = yes\nauth_mechanisms = plain login\n"
                f"first_valid_uid = {min(mail_uid, 500)}\nfirst_valid_gid = 0\n"
                f"{users}"
                "passdb {\n  driver = passwd-file\n"
                f"  args = scheme=PLAIN username_format=%u {self.workdir}/passwd\n}}\n"
                "userdb {\n  driver = static\n"
                f"  args = uid={mail_uid} gid={mail_gid} home={self.workdir}/home/%u\n}}\n"
                "mail_location = maildir:~/Maildir\nmail_fsync = always\n"
                # The idling connections come from one user and address.
                "protocol imap {\n  mail_max_userip_connections = 200\n}\n"
                "service imap-login {\n  inet_listener imap {\n"
                f"    address = 127.0.0.1\n    port = {self.port}\n  }}\n"
                "  inet_listener imaps {\n    port = 0\n  }\n}\n"
            )

    def start(self) -> None:
        for sub in ("run", "state"):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
        with open(os.path.join(self.workdir, "dovecot.stderr"), "wb") as errors:
            self.process = subprocess.Popen(
                [DOVECOT, "-F", "-c", self.config], stdout=subprocess.DEVNULL, stderr=errors
            )
        wait_for_port(self.port, self.process, self.log)

    def log(self) -> str:
        text = ""
        for name in ("dovecot.stderr", "dovecot.log"):
            try:
                with open(os.path.join(self.workdir, name), errors="replace") as log_file:
                    text += log_file.read()[-2000:]
            except OSError:
                pass
        return text

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    def memory_kib(self) -> int:
        """Pss of the master and every process under it, added up."""
        return sum(pss_kib(pid) for pid in process_tree(self.process.pid))


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_for_port(port: int, process: subprocess.Popen, log, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}): {log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}: {log()}")


# --- the appliance ------------------------------------------------------------------------


def populate_appliance(appliance: Appliance, raws: list[bytes]) -> float:
    """The messages filed into the bench mailbox's Inbox by the store's operation for
    received mail; the seconds it took."""
    os.makedirs(os.path.join(appliance.workdir, "data"), exist_ok=True)
    store = Store.from_url(f"sqlite:///{appliance.workdir}/data/store.sqlite", None)
    store.migrate()
    try:
        store.run_sync(domains.add_domain, "bench.test")
        store.run_sync(accounts.add_user, LOGIN, hash_password(PASSWORD))
        store.run_sync(mailbox_ops.add_mailbox, ADDRESS, LOGIN)
        recipient = store.run_sync(filing.resolve_recipient, *ADDRESS.split("@"))
        started = time.monotonic()
        for start in range(0, len(raws), BATCH):
            batch = [
                IncomingMessage(
                    envelope_sender="sender@bench.example", recipients=(recipient,), raw=raw
                )
                for raw in raws[start : start + BATCH]
            ]
            failed = [
                r for r in store.run_sync(filing.store_messages, batch) if isinstance(r, Exception)
            ]
            if failed:
                raise RuntimeError(f"storing failed: {failed[0]!r}")
        return time.monotonic() - started
    finally:
        store.stop()


def imap_settings(appliance: Appliance) -> int:
    """The appliance's [imap] section set for the benchmark (listening on a loopback port,
    the idling connections allowed from one address); its port."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(appliance.config)
    if not parser.has_section("imap"):
        parser.add_section("imap")
        parser.set("imap", "listen", f"tcp:{free_port()}:interface=127.0.0.1")
    parser.set("imap", "max_connections_per_client", "200")
    with open(appliance.config, "w") as config_file:
        parser.write(config_file)
    return int(re.match(r"tcp:(\d+)", parser.get("imap", "listen")).group(1))


# --- the client ---------------------------------------------------------------------------


def argon2_parameters() -> str:
    """m=...,t=...,p=... of the appliance's password hashes."""
    return hash_password(PASSWORD).split("$")[3]


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # both certificates are self-signed, made here
    return context


def connect(port: int) -> imaplib.IMAP4:
    connection = imaplib.IMAP4("127.0.0.1", port, timeout=120)
    connection.starttls(client_context())
    connection.login(LOGIN, PASSWORD)
    return connection


def check(answer: tuple, what: str) -> list:
    kind, data = answer
    if kind != "OK":
        raise RuntimeError(f"{what}: {kind} {data!r}")
    return data


FETCH_UID = re.compile(rb"UID (\d+)")
FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


def fetched_uids(data: list) -> list[tuple[int, int]]:
    """(uid, size) of each message of an imaplib FETCH answer."""
    found = []
    for item in data:
        line = item[0] if isinstance(item, tuple) else item
        if not line:
            continue
        uid, size = FETCH_UID.search(line), FETCH_SIZE.search(line)
        if uid and size:
            found.append((int(uid.group(1)), int(size.group(1))))
    return found


class StepPeaks:
    """The highest of a process's resident set sizes sampled every 20 ms since the last
    `take()`, in KiB (to see what one step costs at its worst, not only after it)."""

    def __init__(self, rss):
        self.rss = rss
        self.peak = rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, self.rss())

    def take(self) -> int:
        peak, self.peak = max(self.peak, self.rss()), self.rss()
        return peak

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def one_round(port: int, fetch: int, subject_word: str, sender: str, rss=None, peaks=None) -> dict:
    """One round's timings (seconds), answers and, with `rss` (a callable giving KiB),
    the server's memory before and after each step (and with `peaks`, a StepPeaks, the
    highest during each step)."""
    memory: dict[str, int] = {}

    def note(name: str) -> None:
        if rss is not None:
            memory[name] = rss()
        if peaks is not None:
            peak = peaks.take()
            if name != "before_open":
                memory[name.replace("after_", "peak_during_")] = peak

    note("before_open")
    started = time.perf_counter()
    connection = connect(port)
    logged_in = time.perf_counter()
    check(connection.select("INBOX"), "SELECT")
    listing = fetched_uids(
        check(connection.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE ENVELOPE)"), "FETCH 1:*")
    )
    timings = {
        "open": time.perf_counter() - started,
        "login": logged_in - started,
        "select_fetch": time.perf_counter() - logged_in,
    }
    note("after_open")
    middle = len(listing) // 2 - fetch // 2
    chosen = listing[max(middle, 0) : max(middle, 0) + fetch]
    started = time.perf_counter()
    data = check(
        connection.uid("FETCH", f"{chosen[0][0]}:{chosen[-1][0]}", "(BODY.PEEK[])"),
        "FETCH BODY.PEEK[]",
    )
    timings["bodies"] = time.perf_counter() - started
    note("after_bodies")
    bodies = [item[1] for item in data if isinstance(item, tuple)]
    started = time.perf_counter()
    by_subject = check(connection.uid("SEARCH", "HEADER", "Subject", subject_word), "SEARCH HEADER")
    timings["search_subject"] = time.perf_counter() - started
    started = time.perf_counter()
    by_sender = check(connection.uid("SEARCH", "FROM", sender), "SEARCH FROM")
    timings["search_from"] = time.perf_counter() - started
    note("after_search")
    connection.logout()
    return {
        "timings": timings,
        "memory": memory,
        "listed": len(listing),
        "fetched": len(bodies),
        "fetched_bytes": sum(len(body) for body in bodies),
        "expected_bytes": sum(size for _uid, size in chosen),
        "subject_hits": len(by_subject[0].split()),
        "from_hits": len(by_sender[0].split()),
    }


def idle_cost(port: int, count: int, rss) -> dict:
    """Memory (KiB, from `rss`) before and with `count` connections idling at once."""
    before = rss()
    connections = []
    try:
        for number in range(count):
            connection = connect(port)
            check(connection.select("INBOX"), "SELECT")
            connection.send(f"I{number} IDLE\r\n".encode())
            answer = connection.readline()
            if not answer.startswith(b"+"):
                raise RuntimeError(f"IDLE refused: {answer!r}")
            connections.append((number, connection))
        time.sleep(1)
        during = rss()
    finally:
        for number, connection in connections:
            try:
                connection.send(b"DONE\r\n")
                while not connection.readline().startswith(f"I{number} ".encode()):
                    pass
                connection.logout()
            except (OSError, imaplib.IMAP4.error):
                pass
    return {"before_kib": before, "during_kib": during, "cost_kib": during - before}


# --- the run ------------------------------------------------------------------------------


def measure(
    name: str, port: int, arguments, subject_word: str, sender: str, rss, peaks=None
) -> dict:
    progress(f"{name}: warm-up round")
    warm = one_round(port, arguments.fetch, subject_word, sender, rss)
    rounds = []
    for number in range(arguments.rounds):
        rounds.append(one_round(port, arguments.fetch, subject_word, sender, rss, peaks))
        progress(f"{name}: round {number + 1}: {rounds[-1]['timings']}")
    progress(f"{name}: {arguments.idlers} connections idling")
    idle = idle_cost(port, arguments.idlers, rss)
    return {
        "warm_up_seconds": {step: round(value, 3) for step, value in warm["timings"].items()},
        "median_seconds": {
            step: round(statistics.median(r["timings"][step] for r in rounds), 4)
            for step in STEPS + PARTS
        },
        "round_seconds": [{s: round(v, 4) for s, v in r["timings"].items()} for r in rounds],
        "answers": {
            key: rounds[-1][key]
            for key in (
                "listed",
                "fetched",
                "fetched_bytes",
                "expected_bytes",
                "subject_hits",
                "from_hits",
            )
        },
        "memory_kib_last_round": rounds[-1]["memory"],
        "idle": idle,
    }


def table(result: dict) -> str:
    ours, theirs = result.get("appliance", {}), result["dovecot"]
    lines = [
        f"IMAP, {result['messages']} messages, {result['rounds']} rounds (medians), "
        f"{result['fetch']} bodies fetched",
        f"{'step':<16}{'appliance s':>13}{'dovecot s':>12}{'ratio':>8}{'target':>9}",
    ]
    for step in STEPS[:1] + PARTS + STEPS[1:]:
        mine = ours.get("median_seconds", {}).get(step)
        reference = theirs["median_seconds"][step]
        ratio = result["ratios"].get(step)
        lines.append(
            f"{step if step in STEPS else '  ' + step:<16}"
            f"{'-' if mine is None else f'{mine:.4f}':>13}{reference:>12.4f}"
            f"{'-' if ratio is None else f'{ratio:.2f}':>8}"
            f"{'<= 2.00' if step in STEPS else '':>9}"
        )
    lines.append(f"password hashes: {result['password_hashes']}")
    if "memory_kib_last_round" in ours:
        memory = ours["memory_kib_last_round"]
        lines.append(
            "appliance RSS MiB: "
            + ", ".join(f"{k} {v / 1024:.1f}" for k, v in memory.items())
            + f", peak {ours['peak_rss_mib']}"
        )
        lines.append(
            f"{result['idlers']} idling: appliance +{ours['idle']['cost_kib'] / 1024:.1f} MiB"
            f" (target < {IDLE_TARGET_MIB:.0f}), Dovecot +{theirs['idle']['cost_kib'] / 1024:.1f}"
            " MiB (Pss of all its processes)"
        )
    if "skipped" in ours:
        lines.append(f"appliance: {ours['skipped']}")
    lines.append(f"machine: {result['machine']}")
    return "\n".join(lines)


def answers_differ(ours: dict, theirs: dict) -> list[str]:
    problems = []
    for key in ("listed", "fetched", "subject_hits", "from_hits"):
        if ours[key] != theirs[key]:
            problems.append(f"{key}: appliance {ours[key]}, Dovecot {theirs[key]}")
    for name, found in (("appliance", ours), ("Dovecot", theirs)):
        if found["fetched_bytes"] != found["expected_bytes"]:
            problems.append(
                f"{name}: {found['fetched_bytes']} bytes of bodies, RFC822.SIZE says"
                f" {found['expected_bytes']}"
            )
    return problems


def main() -> int:
    arguments = parse_arguments()
    if not os.path.exists(DOVECOT) or not os.path.exists("/usr/lib/dovecot/imap"):
        print("Dovecot is not installed (Debian's dovecot-imapd): nothing to compare with")
        return 1
    workdir = tempfile.mkdtemp(prefix="atollon-imap-bench-")
    os.chmod(workdir, 0o755)  # Dovecot's services, not root, read below it
    raws = messages(arguments.messages, arguments.seed)
    subject_word, sender = "shipment", "sender7@"
    result: dict = {
        "benchmark": "imap",
        "messages": arguments.messages,
        "rounds": arguments.rounds,
        "fetch": arguments.fetch,
        "idlers": arguments.idlers,
        "searches": {"subject": subject_word, "from": sender},
        "ratios": {},
    }
    problems: list[str] = []
    dovecot = Dovecot(os.path.join(workdir, "dovecot"))
    appliance_dir = os.path.join(workdir, "appliance")
    os.makedirs(dovecot.workdir)
    os.makedirs(appliance_dir)
    appliance = Appliance(appliance_dir)
    imap_port = imap_settings(appliance)
    try:
        progress(f"writing {len(raws)} messages into a Maildir")
        dovecot.write_maildir(raws)
        dovecot.configure()
        result["password_hashes"] = (
            f"appliance argon2id {argon2_parameters()}, Dovecot argon2id {dovecot.scheme}"
        )
        dovecot.start()
        result["dovecot"] = measure(
            "Dovecot", dovecot.port, arguments, subject_word, sender, dovecot.memory_kib
        )
        dovecot.stop()
        progress(f"filing {len(raws)} messages into the appliance's store")
        result["appliance_fill_seconds"] = round(populate_appliance(appliance, raws), 1)
        try:
            appliance.start()
            wait_for_port(imap_port, appliance.process, lambda: "see twistd.log", 30)
        except RuntimeError as problem:
            last = " ".join(_tail(appliance_dir).strip().splitlines()[-1:])
            result["appliance"] = {
                "skipped": f"the appliance serves no IMAP: {problem}; its log ends: {last}"
            }
        else:
            peaks = StepPeaks(appliance.rss_kib)
            try:
                with RssSampler(appliance) as sampler:
                    result["appliance"] = measure(
                        "appliance",
                        imap_port,
                        arguments,
                        subject_word,
                        sender,
                        appliance.rss_kib,
                        peaks,
                    )
            finally:
                peaks.stop()
            result["appliance"]["peak_rss_mib"] = sampler.peak_mib
    except Exception as problem:
        problems.append(f"{type(problem).__name__}: {problem}")
    finally:
        appliance.stop()
        dovecot.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    result["machine"] = machine()
    ours = result.get("appliance", {})
    if "median_seconds" in ours and "dovecot" in result:
        for step in STEPS + PARTS:
            result["ratios"][step] = round(
                ours["median_seconds"][step] / result["dovecot"]["median_seconds"][step], 2
            )
            if step in STEPS and result["ratios"][step] > RATIO_TARGET:
                problems.append(f"{step}: {result['ratios'][step]}x Dovecot's time")
        problems += answers_differ(ours["answers"], result["dovecot"]["answers"])
        if ours["idle"]["cost_kib"] / 1024 >= IDLE_TARGET_MIB:
            problems.append(
                f"{arguments.idlers} idling connections cost {ours['idle']['cost_kib'] / 1024:.1f}"
                f" MiB >= {IDLE_TARGET_MIB} MiB"
            )
    elif "dovecot" in result:
        problems.append(ours.get("skipped", "the appliance was not measured"))
    print(json.dumps(result, indent=2))
    if "dovecot" in result:
        print(table(result))
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _tail(directory: str) -> str:
    try:
        with open(os.path.join(directory, "twistd.log"), errors="replace") as log_file:
            return log_file.read()[-2000:]
    except OSError:
        return "(no twistd.log)"


if __name__ == "__main__":
    sys.exit(main())
