"""etc/atollon-mail.service and etc/atollon-mail.sysusers, checked with systemd's own
tools: the unit verifies, its sandbox rates "OK" or better, the user it runs as is made
by the sysusers file, and it keeps what the appliance needs (ports below 1024, its state
directory, TLS)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from twisted.trial import unittest

from tests.conftest import ROOT

UNIT = ROOT / "etc" / "atollon-mail.service"
SYSUSERS = ROOT / "etc" / "atollon-mail.sysusers"
INSTALLED_TWISTD = "/opt/atollon-mail/.venv/bin/twistd"
# `systemd-analyze security`: 0 is best, 10 worst; up to 4.0 is "OK" (then MEDIUM,
# EXPOSED, UNSAFE).
HIGHEST_EXPOSURE = 4.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise unittest.SkipTest(f"{name} is missing (make test installs Debian's systemd)")
    return path


def _settings() -> list[tuple[str, str]]:
    """The unit's Key=Value lines, in order (keys such as SystemCallFilter repeat)."""
    found = []
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.append((key, value))
    return found


def _run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)


class SystemdUnitTests(unittest.TestCase):
    def test_the_unit_verifies(self):
        # verify needs ExecStart's program to exist: the same unit, run from this venv.
        analyze = _tool("systemd-analyze")
        text = UNIT.read_text(encoding="utf-8")
        self.assertEqual(text.count(f"ExecStart={INSTALLED_TWISTD} "), 1)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.assertTrue(os.access(twistd, os.X_OK), twistd)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        copy = os.path.join(directory, "atollon-mail.service")
        with open(copy, "w", encoding="utf-8") as unit_file:
            unit_file.write(text.replace(INSTALLED_TWISTD, twistd))
        result = _run(analyze, "verify", copy)
        # Unknown keys and bad values are only warnings (exit 0): none is allowed.
        self.assertEqual((result.returncode, result.stderr), (0, ""), result)

    def test_the_sandbox_rates_ok_or_better(self):
        analyze = _tool("systemd-analyze")
        result = _run(analyze, "security", "--offline=true", str(UNIT))
        if "--offline" in result.stderr and "unrecognized" in result.stderr:
            raise unittest.SkipTest(f"{analyze} cannot rate a unit file (systemd < 250)")
        match = re.search(r"Overall exposure level for [^:]+: (\d+\.\d) (\w+)", result.stdout)
        self.assertIsNotNone(match, result.stdout + result.stderr)
        exposure, rating = float(match.group(1)), match.group(2)
        self.assertLessEqual(exposure, HIGHEST_EXPOSURE, result.stdout)
        self.assertIn(rating, ("OK", "SAFE", "PERFECT"))

    def test_what_the_appliance_needs_is_kept(self):
        settings = _settings()
        for setting in [
            ("User", "atollon-mail"),
            ("Group", "atollon-mail"),
            ("StateDirectory", "atollon-mail"),  # /var/lib/atollon-mail, data_dir
            ("WorkingDirectory", "/var/lib/atollon-mail"),
            ("UMask", "0027"),
            ("LimitNOFILE", "65536"),
            ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),  # 25, 465, 587
            ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
            ("SystemCallFilter", "@system-service"),
            ("ProtectSystem", "strict"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ]:
            self.assertIn(setting, settings)
        keys = {key for key, _ in settings}
        # A user namespace would take the capability away from the host's ports, and a
        # private network away from the Internet.
        self.assertNotIn("PrivateUsers", keys)
        self.assertNotIn("PrivateNetwork", keys)
        config = [value for key, value in settings if key == "ExecStart"][0]
        self.assertIn("--config /etc/atollon-mail/atollon-mail.ini", config)

    def test_tls_needs_writable_executable_memory_so_the_unit_allows_it(self):
        # pyOpenSSL's callbacks are cffi closures; with MemoryDenyWriteExecute=yes
        # Twisted cannot make a TLS context. The kernel's own W^X switch (prctl
        # PR_SET_MDWE, Linux 6.3) applies the same rule to one process.
        probe = (
            "import ctypes, sys\n"
            "if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0: sys.exit(3)\n"
            "from twisted.internet import ssl\n"
            "try:\n"
            "    ssl.CertificateOptions().getContext()\n"
            "except MemoryError:\n"
            "    sys.exit(1)\n"
        )
        result = _run(sys.executable, "-c", probe)
        if result.returncode == 3:
            raise unittest.SkipTest("this kernel has no PR_SET_MDWE (Linux 6.3 and later)")
        self.assertIn(result.returncode, (0, 1), result.stderr)
        tls_works_without_wx = result.returncode == 0
        memory_rule = dict(_settings()).get("MemoryDenyWriteExecute", "no")
        denies_wx = memory_rule in ("yes", "true", "on", "1")
        self.assertEqual(
            denies_wx,
            tls_works_without_wx,
            "TLS works without writable executable memory now: set MemoryDenyWriteExecute=yes"
            if tls_works_without_wx
            else "MemoryDenyWriteExecute=yes would break STARTTLS and port 465",
        )

    def test_the_sysusers_file_makes_the_units_user(self):
        sysusers = _tool("systemd-sysusers")
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "etc"))
        text = SYSUSERS.read_text(encoding="utf-8")
        result = _run(sysusers, f"--root={root}", "-", stdin=text)
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(os.path.join(root, "etc", "passwd"), encoding="utf-8") as passwd:
            users = {line.split(":")[0]: line.rstrip("\n").split(":") for line in passwd}
        with open(os.path.join(root, "etc", "group"), encoding="utf-8") as group:
            groups = {line.split(":")[0] for line in group}
        settings = _settings()
        user = dict(settings)["User"]
        self.assertIn(user, users)
        self.assertIn(dict(settings)["Group"], groups)
        self.assertEqual(users[user][5:], ["/var/lib/atollon-mail", "/usr/sbin/nologin"])
        self.assertLess(int(users[user][2]), 1000, "a system user")
