"""The README's quick start, run as written: `make run` with ARGS, then each command of
the quick start with only what `make run` installed."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

from twisted.trial import unittest

from tests.conftest import ROOT
from tests.e2e.appliance import free_port

BIN = os.path.dirname(sys.executable)


def quick_start_commands() -> list[str]:
    """The shell commands of the README's "Two commands" section after `make run`,
    continuation lines joined."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    commands: list[str] = []
    for line in blocks[1].splitlines():
        if commands and (line.startswith(" ") or commands[-1].count("'") % 2):
            commands[-1] += "\n" + line
        elif line.strip():
            commands.append(line)
    return commands


class QuickStartTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        if shutil.which("make") is None:
            raise unittest.SkipTest("make is missing")
        venv = ROOT / ".venv" / "bin"
        if not venv.is_dir() or not os.path.samefile(BIN, venv):
            raise unittest.SkipTest("the tests do not run from the venv `make run` uses")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config = os.path.join(self.directory, "atollon-mail.ini")
        self.smtp_port, self.web_port, self.submission_port = (free_port() for _ in range(3))
        with open(self.config, "w", encoding="utf-8") as config_file:
            # The listen keys stay the defaults: ARGS must override them.
            config_file.write(
                f"[appliance]\nhostname = mx.acme.test\ndata_dir = {self.directory}/data\n"
                f"[database]\nurl = sqlite:///{self.directory}/data/store.sqlite\n"
            )

    def make_run(self, *args: str) -> subprocess.Popen:
        log = open(os.path.join(self.directory, "make-run.log"), "wb")  # noqa: SIM115
        self.addCleanup(log.close)
        process = subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(ROOT), "run", f"CONFIG={self.config}"]
            + [f"ARGS={' '.join(args)}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def stop():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)

        self.addCleanup(stop)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"make run exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1).close()
                return process
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"nothing listens on the ARGS port: {self.log()}")

    def log(self) -> str:
        with open(os.path.join(self.directory, "make-run.log"), encoding="utf-8") as log:
            return log.read()

    def test_the_quick_start_as_written(self):
        self.make_run(
            f"--smtp tcp:{self.smtp_port}:interface=127.0.0.1",
            f"--web tcp:{self.web_port}:interface=127.0.0.1",
            f"--submission tcp:{self.submission_port}:interface=127.0.0.1",
        )
        commands = quick_start_commands()
        self.assertGreaterEqual(len(commands), 5)
        environment = dict(os.environ, ATOLLON_MAIL_CONFIG=self.config)
        for command in commands:
            program = shlex.split(command, comments=True)[0]
            # Nothing the quick start needs beyond what make run installed.
            self.assertTrue(program.startswith(".venv/bin/"), command)
            command = command.replace(".venv/bin/", BIN + "/").replace("2525", str(self.smtp_port))
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=self.directory,
                env=environment,
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertEqual(result.returncode, 0, f"{command}: {result.stderr}")
        self.assertIn("Hello", result.stdout)
        self.assertIn("someone@example.org", result.stdout)
