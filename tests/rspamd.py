"""A private rspamd on loopback for tests, with a minimal configuration of its own.

Tests never use a system rspamd: they start this one, which reads only the configuration
written here into a temporary directory (its own worker ports on 127.0.0.1, pid file,
databases, log) and loads no plugin (nothing asks DNS or the network). Its Bayes
statistics live in a redis-server of its own (another free loopback port, nothing saved
to disk), never the system's, so `/learnham` and `/learnspam` work.

    rspamd = start_rspamd()          # blocks until both workers answer (about 0.3 s)
    self.addCleanup(rspamd.stop)      # or once per class in setUpClass/tearDownClass
    rspamd.scanner_url                # the normal worker: /checkv2
    rspamd.controller_url             # the controller: /learnham, /learnspam, /stat
    rspamd.require_learning()         # SkipTest when there is no redis-server to learn in

Without the rspamd binary, start_rspamd raises SkipTest with the reason; without
redis-server it starts without a Bayes classifier (scanning works, learning is skipped).
`start_redis` and `stop_process` serve other private servers too (the inbound benchmark's
rspamd with Debian's rules).

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

from tests.support import free_port

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

-- "[test-envelope]": what rspamd understood of the envelope headers, as options.
rspamd_config:register_symbol({
  name = 'TEST_ENVELOPE',
  score = 0.0,
  group = 'test',
  description = 'The envelope as rspamd read it',
  callback = function(task)
    local subject = task:get_subject()
    if not subject or not subject:find('[test-envelope]', 1, true) then return false end
    local from = task:get_from('smtp')
    local rcpts = {}
    for _, rcpt in ipairs(task:get_recipients('smtp') or {}) do
      table.insert(rcpts, rcpt.addr)
    end
    local ip = task:get_from_ip()
    return true, 1.0, {
      'from=' .. ((from and from[1] and from[1].addr) or '<none>'),
      'rcpt=' .. table.concat(rcpts, ','),
      'ip=' .. ((ip and ip:is_valid() and ip:to_string()) or '<none>'),
      'helo=' .. (task:get_helo() or '<none>'),
      'hostname=' .. (task:get_hostname() or '<none>'),
      'user=' .. (task:get_user() or '<none>'),
      'qid=' .. (task:get_queue_id() or '<none>'),
    }
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
# no language models: loading rspamd's 46 takes a second or more at every start
lang_detection {{ languages = "{dir}/languages"; }}
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
{classifier}"""

# Bayes in the test's own redis-server (rspamd's supported backend; its SQLite backend
# fails learns with "database is locked" while the normal worker is scanning).
_CLASSIFIER = """
classifier "bayes" {{
  tokenizer {{ name = "osb"; }}
  backend = "redis";
  servers = "127.0.0.1:{redis_port}";
  new_schema = true;
  min_tokens = 11;
  min_learns = 200;
  statfile {{ symbol = "BAYES_HAM"; spam = false; }}
  statfile {{ symbol = "BAYES_SPAM"; spam = true; }}
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
    return [free_port() for _ in range(count)]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ping", timeout=1) as response:
            return response.read().strip() == b"pong"
    except (OSError, urllib.error.URLError):
        return False


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _spawn(command: list[str], directory: str, output_name: str) -> subprocess.Popen:
    with open(os.path.join(directory, output_name), "wb") as output:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,  # its own process group: stopping reaches its children
        )


def stop_process(process: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL to its process group after 10 s; also a child left behind."""
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as text:
            return text.read()
    except OSError:
        return ""


@attrs.define(eq=False)
class RunningRspamd:
    """A started rspamd (and its redis-server): where its workers listen, its log, how to
    stop it."""

    directory: str
    process: subprocess.Popen
    scanner_port: int
    controller_port: int
    password: str
    redis: subprocess.Popen | None  # None: no redis-server, so no Bayes classifier
    redis_port: int
    started_in: float = 0.0  # seconds from exec to both workers answering

    @property
    def scanner_url(self) -> str:
        return f"http://127.0.0.1:{self.scanner_port}"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def can_learn(self) -> bool:
        return self.redis is not None

    def require_learning(self) -> None:
        if not self.can_learn:
            raise SkipTest(
                "redis-server is not installed: rspamd keeps its Bayes statistics there "
                "(make test installs Debian's redis-server as root)"
            )

    def log(self) -> str:
        return _read(os.path.join(self.directory, "rspamd.log"))

    def learns(self, spam: bool) -> int:
        """Messages learned as spam (or ham), as rspamd counts them in its redis-server
        (its /stat counts per class only every so often). Blocks for a local round trip."""
        self.require_learning()
        field = b"learns_spam" if spam else b"learns_ham"
        with socket.create_connection(("127.0.0.1", self.redis_port), timeout=5) as sock:
            sock.sendall(b"HGET RS " + field + b"\r\n")
            with sock.makefile("rb") as reply:
                header = reply.readline()
                if header.startswith(b"$-1"):
                    return 0  # nothing learned yet
                if not header.startswith(b"$"):
                    raise RuntimeError(f"redis-server answered {header!r}")
                return int(reply.read(int(header[1:])))

    def terminate(self) -> None:
        """Ask rspamd to stop (SIGTERM to its main process) and return at once: it finishes
        the messages it is scanning, and takes no more."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill rspamd's main process and its workers (its process group) at once."""
        if self.running:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """Stop rspamd and its redis-server, and remove their files."""
        stop_process(self.process)
        stop_process(self.redis)
        shutil.rmtree(self.directory, ignore_errors=True)


def _write(path: str, text: str) -> None:
    with open(path, "w") as written:
        written.write(text)


def start_redis(directory: str, port: int, deadline: float) -> subprocess.Popen | None:
    """A redis-server on 127.0.0.1:port that saves nothing; None if it would not start."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    os.makedirs(os.path.join(directory, "redis"))
    process = _spawn(
        [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", os.path.join(directory, "redis"),
            "--daemonize", "no",
        ],
        directory,
        "redis.log",
    )  # fmt: skip
    while time.monotonic() < deadline and process.poll() is None:
        if _redis_answers(port):
            return process
        time.sleep(0.01)
    stop_process(process)
    return None


def _start_once(binary: str, directory: str, deadline: float) -> RunningRspamd | None:
    scanner_port, controller_port, redis_port = _free_ports(3)
    password = "test-controller-password"
    redis = start_redis(directory, redis_port, deadline)
    if redis is None and shutil.which("redis-server") is not None:
        return None  # its port was taken meanwhile
    _write(
        os.path.join(directory, "rspamd.conf"),
        _CONFIG.format(
            dir=directory,
            scanner_port=scanner_port,
            controller_port=controller_port,
            password=password,
            subject=SUBJECT_REWRITE,
            classifier=_CLASSIFIER.format(redis_port=redis_port) if redis else "",
            **ACTIONS,
        ),
    )
    started = time.monotonic()
    # -f: stay in the foreground; -i: run the workers even as root (tests only)
    command = [binary, "-f", "-i", "-c", os.path.join(directory, "rspamd.conf")]
    process = _spawn(command, directory, "stdout.log")
    running = RunningRspamd(
        directory, process, scanner_port, controller_port, password, redis, redis_port
    )
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop_process(redis)
            return None  # a port was taken meanwhile, or the configuration was refused
        if _answers(running.scanner_url) and _answers(running.controller_url):
            running.started_in = time.monotonic() - started
            return running
        time.sleep(0.02)
    log = running.log()
    running.stop()
    raise RuntimeError(f"rspamd did not answer within its start-up time; log:\n{log}")


def start_rspamd(startup_timeout: float = 30.0) -> RunningRspamd:
    """Start a private rspamd on free loopback ports; return once both workers answer.
    Blocks (call it from setUpClass, or from a test before the reactor has work)."""
    binary = rspamd_binary()
    deadline = time.monotonic() + startup_timeout
    log = ""
    for _ in range(_START_ATTEMPTS):
        directory = tempfile.mkdtemp(prefix="rspamd-test-")
        _write(os.path.join(directory, "rules.lua"), _RULES)
        _write(os.path.join(directory, "tld.dat"), _TLDS)
        os.makedirs(os.path.join(directory, "languages"))
        running = _start_once(binary, directory, deadline)
        if running is not None:
            return running
        log = "".join(
            _read(os.path.join(directory, name))
            for name in ("redis.log", "stdout.log", "rspamd.log")
        )
        shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError(f"rspamd exited at start-up {_START_ATTEMPTS} times; last log:\n{log}")
