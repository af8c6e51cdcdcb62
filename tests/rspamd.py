"""A private rspamd on loopback for tests, with a minimal configuration of its own.

Tests never use a system rspamd: they start this one, which reads only the configuration
written here into a temporary directory (its own worker ports on 127.0.0.1, pid file,
databases, log), loads no plugin (nothing asks DNS or the network) and keeps its Bayes
statistics in SQLite files of that directory, so `/learnham` and `/learnspam` work without
Redis.

    rspamd = start_rspamd()          # blocks until both workers answer (about 0.5 s)
    self.addCleanup(rspamd.stop)      # or once per class in setUpClass/tearDownClass
    rspamd.scanner_url                # the normal worker: /checkv2
    rspamd.controller_url             # the controller: /learnham, /learnspam, /stat

Without the rspamd binary, start_rspamd raises SkipTest with the reason.

Scores are under the test's control: a Subject containing `[test-score 7.5]` gets the
symbol TEST_SCORE with that score (and TEST_MARKER, 0.5, beside it), so every action can
be reached: greylist from 4, add header from 6, rewrite subject from 8, soft reject from
11, reject from 15. rspamd's built-in GTUBE check rejects a message holding `GTUBE`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import attrs
from twisted.trial.unittest import SkipTest

# rspamd's own test string (its GTUBE check rejects a message holding it).
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

ACTIONS = {
    "greylist": 4.0,
    "add_header": 6.0,
    "rewrite_subject": 8.0,
    "soft_reject": 11.0,
    "reject": 15.0,
}
SUBJECT_REWRITE = "***SPAM*** %s"

_START_ATTEMPTS = 5

_RULES = r"""
-- Test rules: the score is named by the message's Subject, e.g. "[test-score 7.5]".
local function score_in_subject(task)
  local subject = task:get_subject()
  if not subject then return nil end
  return subject:match('%[test%-score (%-?[%d.]+)%]')
end

rspamd_config:register_symbol({
  name = 'TEST_SCORE',
  score = 1.0,
  group = 'test',
  description = 'Score named by the Subject',
  callback = function(task)
    local score = score_in_subject(task)
    if score then return true, tonumber(score) end
    return false
  end,
})

rspamd_config:register_symbol({
  name = 'TEST_MARKER',
  score = 0.5,
  group = 'test',
  description = 'The Subject names a test score',
  callback = function(task)
    return score_in_subject(task) ~= nil
  end,
})
"""

_CONFIG = """
lua = "{dir}/rules.lua";
options {{
  pidfile = "{dir}/rspamd.pid";
  filters = "";
  explicit_modules = [];
  dynamic_conf = "{dir}/rspamd_dynamic";
  history_file = "{dir}/rspamd.history";
  stats_file = "{dir}/stats.ucl";
  cache_file = "{dir}/symbols.cache";
  control_socket = "{dir}/rspamd.sock mode=0600";
  hs_cache_dir = "{dir}/";
  tempdir = "{dir}";
  # a few suffixes instead of the public suffix list: compiling that takes ~15 s
  url_tld = "{dir}/tld.dat";
  allow_raw_input = true;
  task_timeout = 8s;
  # nothing is looked up: the only nameserver is the discard port of loopback
  dns {{ nameserver = ["127.0.0.1:9"]; timeout = 0.1s; retransmits = 0; }}
}}
logging {{
  type = "file";
  filename = "{dir}/rspamd.log";
  level = "notice";
}}
worker "normal" {{
  bind_socket = "127.0.0.1:{scanner_port}";
  count = 1;
  mime = true;
}}
worker "controller" {{
  bind_socket = "127.0.0.1:{controller_port}";
  count = 1;
  password = "{password}";
  enable_password = "{password}";
  secure_ip = "127.0.0.2";
}}
actions {{
  greylist = {greylist};
  add_header = {add_header};
  rewrite_subject = {rewrite_subject};
  soft_reject = {soft_reject};
  reject = {reject};
  subject = "{subject}";
}}
classifier "bayes" {{
  tokenizer {{ name = "osb"; }}
  backend = "sqlite3";
  cache {{ path = "{dir}/learn_cache.sqlite"; }}
  min_tokens = 11;
  min_learns = 200;
  statfile {{ symbol = "BAYES_HAM"; spam = false; path = "{dir}/bayes.ham.sqlite"; }}
  statfile {{ symbol = "BAYES_SPAM"; spam = true; path = "{dir}/bayes.spam.sqlite"; }}
}}
"""

_TLDS = "com\nnet\norg\ntest\nexample\ninvalid\nlocalhost\n"


def rspamd_binary() -> str:
    """The rspamd program, or SkipTest saying why there is none."""
    path = shutil.which("rspamd")
    if path is None:
        raise SkipTest("rspamd is not installed (make test installs Debian's rspamd as root)")
    return path


def rspamd_version() -> str:
    """rspamd's version, e.g. "3.4"."""
    output = subprocess.run(
        [rspamd_binary(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return output.split()[-1]


def _free_ports(count: int) -> list[int]:
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


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ping", timeout=1) as response:
            return response.read().strip() == b"pong"
    except (OSError, urllib.error.URLError):
        return False


@attrs.define(eq=False)
class RunningRspamd:
    """A started rspamd: where its workers listen, its log, how to stop it."""

    directory: str
    process: subprocess.Popen
    scanner_port: int
    controller_port: int
    password: str
    started_in: float  # seconds from exec to both workers answering

    @property
    def scanner_url(self) -> str:
        return f"http://127.0.0.1:{self.scanner_port}"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            with open(os.path.join(self.directory, "rspamd.log"), errors="replace") as log:
                return log.read()
        except OSError:
            return ""

    def terminate(self) -> None:
        """Ask rspamd to stop (SIGTERM to its main process) and return at once."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the main process and its workers (the process group it leads) at once."""
        if self.running:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """Stop rspamd (SIGTERM, then SIGKILL to its group after 10 s), remove its files."""
        self.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
            self.process.wait(10)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # a worker left behind, if any
        except ProcessLookupError:
            pass
        shutil.rmtree(self.directory, ignore_errors=True)


def _write(path: str, text: str) -> None:
    with open(path, "w") as written:
        written.write(text)


def _start_once(binary: str, directory: str, deadline: float) -> RunningRspamd | None:
    scanner_port, controller_port = _free_ports(2)
    password = "test-controller-password"
    _write(
        os.path.join(directory, "rspamd.conf"),
        _CONFIG.format(
            dir=directory,
            scanner_port=scanner_port,
            controller_port=controller_port,
            password=password,
            subject=SUBJECT_REWRITE,
            **ACTIONS,
        ),
    )
    started = time.monotonic()
    with open(os.path.join(directory, "stdout.log"), "wb") as output:
        process = subprocess.Popen(
            # -f: stay in the foreground; -i: run the workers even as root (tests only)
            [binary, "-f", "-i", "-c", os.path.join(directory, "rspamd.conf")],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,  # its own process group: stop() reaches the workers
        )
    running = RunningRspamd(directory, process, scanner_port, controller_port, password, 0.0)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None  # a port was taken meanwhile, or the configuration was refused
        if _answers(running.scanner_url) and _answers(running.controller_url):
            running.started_in = time.monotonic() - started
            return running
        time.sleep(0.02)
    running.stop()
    raise RuntimeError(f"rspamd did not answer within its start-up time; log:\n{running.log()}")


def start_rspamd(startup_timeout: float = 30.0) -> RunningRspamd:
    """Start a private rspamd on two free loopback ports; return once both workers answer.
    Blocks (call it from setUpClass, or from a test before the reactor has work)."""
    binary = rspamd_binary()
    deadline = time.monotonic() + startup_timeout
    log = ""
    for _ in range(_START_ATTEMPTS):
        directory = tempfile.mkdtemp(prefix="rspamd-test-")
        _write(os.path.join(directory, "rules.lua"), _RULES)
        _write(os.path.join(directory, "tld.dat"), _TLDS)
        running = _start_once(binary, directory, deadline)
        if running is not None:
            return running
        with open(os.path.join(directory, "stdout.log"), errors="replace") as output:
            log = output.read()
        if os.path.exists(os.path.join(directory, "rspamd.log")):
            with open(os.path.join(directory, "rspamd.log"), errors="replace") as rspamd_log:
                log += rspamd_log.read()
        shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError(f"rspamd exited at start-up {_START_ATTEMPTS} times; last log:\n{log}")
