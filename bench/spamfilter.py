"""A private rspamd for the inbound benchmark, on loopback ports of its own (never the
system's service), in one of two configurations:

- "debian": the configuration Debian's rspamd package ships (/etc/rspamd, read as is;
  only a local.d/override.d of the benchmark's own added), as a mail server runs it,
  less the checks that ask the internet (DNS blocklists, fuzzy hashes, ASN lookups) and
  DKIM signing. Its DNS is the benchmark's loopback server, so its own SPF, DKIM, DMARC,
  ARC, HELO and reverse DNS checks run against the same zones as ours; loopback clients
  are checked like any other (check_local). Bayes and its other statistics in a
  redis-server of its own. Starting takes 20 s or more (the public suffix list, then
  hyperscan compiling the rules' regular expressions in the background):
  `start_rspamd` returns once rspamd has answered and gone idle.
- "minimal": the tests' rspamd (tests/rspamd.py): no module, three Lua rules. What it
  costs is the HTTP round trip and rspamd's MIME parsing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from common import process_stats
from twisted.trial.unittest import SkipTest

from tests.rspamd import rspamd_binary, start_redis, stop_process

SHIPPED_CONFIG = "/etc/rspamd/rspamd.conf"
STARTUP_SECONDS = 180.0
# rspamd counts as settled when its processes used less than this share of one core
# over IDLE_WINDOW seconds (hyperscan's compiler runs for tens of seconds after start).
IDLE_SHARE = 0.05
IDLE_WINDOW = 2.0
# Modules of the shipped configuration that ask the internet, or sign outgoing mail.
MODULES_OFF = ("rbl", "surbl", "emails", "fuzzy_check", "asn", "dkim_signing")
# The checks that skip mail from loopback and local networks unless told otherwise.
CHECK_LOCAL = ("spf", "dkim", "dmarc", "arc", "hfilter", "once_received", "whitelist")

_TICKS = os.sysconf("SC_CLK_TCK")


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def pings(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ping", timeout=1) as response:
            return response.read().strip() == b"pong"
    except (OSError, urllib.error.URLError):
        return False


def group_cpu_seconds(group: int) -> float:
    """User and system CPU time of every live process in a process group, in seconds."""
    ticks = 0
    for fields in process_stats():
        if int(fields[2]) == group:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICKS


class PrivateRspamd:
    """A started rspamd: its scanner's URL, its CPU time, how to stop it; `log` is its
    log file when it logs each message (the "debian" one), else None."""

    def __init__(self, rules: str, scanner_url: str, group: int, stop, log: str | None = None):
        self.rules = rules
        self.scanner_url = scanner_url
        self.group = group
        self.log = log
        self._stop = stop

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.group)

    def scan_times_ms(self) -> list[float]:
        """The time rspamd took over each message so far, by its own log, in order."""
        if self.log is None:
            return []
        with open(self.log, errors="replace") as log:
            return [
                float(found.group(1))
                for line in log
                if "rspamd_task_write_log" in line
                and (found := re.search(r", time: ([\d.]+)ms,", line))
            ]

    def stop(self) -> None:
        self._stop()


def _write(path: str, text: str) -> None:
    with open(path, "w") as written:
        written.write(text)


def _local_configuration(directory: str, ports: dict[str, int], nameserver: str) -> None:
    """local.d and override.d for the shipped configuration: our ports, DNS, redis."""
    local = os.path.join(directory, "local.d")
    override = os.path.join(directory, "override.d")
    os.makedirs(local)
    os.makedirs(override)
    # override.d: the shipped rspamd.conf names fixed ports; ours replace them.
    _write(
        os.path.join(override, "worker-normal.inc"),
        f'bind_socket = "127.0.0.1:{ports["scanner"]}";\nmime = true;\n',
    )
    _write(
        os.path.join(override, "worker-controller.inc"),
        f'bind_socket = "127.0.0.1:{ports["controller"]}";\ncount = 1;\n'
        'password = "bench-controller";\nsecure_ip = "127.0.0.2";\n',
    )
    _write(
        os.path.join(override, "worker-proxy.inc"),
        f'bind_socket = "127.0.0.1:{ports["proxy"]}";\ncount = -1;\n',
    )
    _write(
        os.path.join(local, "options.inc"),
        f'dns {{ nameserver = ["{nameserver}"]; }}\ncheck_local = true;\n',
    )
    _write(os.path.join(local, "redis.conf"), f'servers = "127.0.0.1:{ports["redis"]}";\n')
    for module in MODULES_OFF:
        _write(os.path.join(override, f"{module}.conf"), "enabled = false;\n")
    for module in CHECK_LOCAL:
        _write(os.path.join(local, f"{module}.conf"), "check_local = true;\n")


def _wait_until_idle(group: int, deadline: float) -> bool:
    before = group_cpu_seconds(group)
    while time.monotonic() < deadline:
        time.sleep(IDLE_WINDOW)
        now = group_cpu_seconds(group)
        if now - before < IDLE_SHARE * IDLE_WINDOW:
            return True
        before = now
    return False


def _start_debian(nameserver: str) -> PrivateRspamd:
    if not os.path.exists(SHIPPED_CONFIG):
        raise SkipTest(
            f"{SHIPPED_CONFIG} is missing (Debian's rspamd package ships it): "
            "use --rspamd-rules minimal"
        )
    binary = rspamd_binary()
    directory = tempfile.mkdtemp(prefix="atollon-bench-rspamd-")
    deadline = time.monotonic() + STARTUP_SECONDS
    ports = dict(zip(("scanner", "controller", "proxy", "redis"), free_ports(4), strict=True))
    redis = start_redis(directory, ports["redis"], deadline)
    if redis is None:
        shutil.rmtree(directory, ignore_errors=True)
        raise SkipTest("redis-server is not installed or did not start (make bench installs it)")
    _local_configuration(directory, ports, nameserver)
    variables = [
        f"--var={name}={directory}" for name in ("LOCAL_CONFDIR", "DBDIR", "RUNDIR", "LOGDIR")
    ]
    with open(os.path.join(directory, "stdout.log"), "wb") as output:
        # -f: in the foreground; -i: run the workers even as root (a benchmark only)
        process = subprocess.Popen(
            [binary, "-f", "-i", "-c", SHIPPED_CONFIG, *variables],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,
        )

    def stop() -> None:
        stop_process(process)
        stop_process(redis)
        shutil.rmtree(directory, ignore_errors=True)

    scanner_url = f"http://127.0.0.1:{ports['scanner']}"
    while not pings(scanner_url):
        if process.poll() is not None or time.monotonic() > deadline:
            with open(os.path.join(directory, "stdout.log"), errors="replace") as log:
                tail = log.read()[-3000:]
            stop()
            raise RuntimeError(f"rspamd did not start; its output ends:\n{tail}")
        time.sleep(0.2)
    if not _wait_until_idle(process.pid, deadline):
        print("rspamd was still busy when its start-up time ran out", flush=True)
    log = os.path.join(directory, "rspamd.log")
    return PrivateRspamd("debian", scanner_url, process.pid, stop, log)


def _start_minimal() -> PrivateRspamd:
    from tests.rspamd import start_rspamd

    running = start_rspamd()
    return PrivateRspamd("minimal", running.scanner_url, running.process.pid, running.stop)


def start_rspamd(rules: str, nameserver: str) -> PrivateRspamd:
    """A private rspamd with `rules` ("debian" or "minimal"); `nameserver` (host:port) is
    the DNS server the "debian" one asks. SkipTest, saying why, where it cannot run
    (no rspamd, no redis-server, no shipped configuration)."""
    if rules == "debian":
        return _start_debian(nameserver)
    if rules == "minimal":
        return _start_minimal()
    raise ValueError(f"unknown rspamd rules {rules!r}: debian or minimal")
