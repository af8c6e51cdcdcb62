"""The appliance's threads on one CPU (`[appliance] cpu`), and the processes it starts
not held to it. Pinning changes the process it runs in, so each pinning test runs in a
Python process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from twisted.trial import unittest

from atollon_mail import affinity
from atollon_mail.config import ConfigError, parse_config
from atollon_mail.tap import build_appliance
from tests.conftest import ROOT

BASE = "[appliance]\nhostname = mx.acme.test\n"

ALLOWED = frozenset(os.sched_getaffinity(0)) if affinity.supported() else frozenset()

# Pins itself as asked (argv[1]), with threads started before and after, and reports
# every thread's CPUs, a child started inside `unpinned` and one outside it.
CHILD = textwrap.dedent(
    """
    import json, os, subprocess, sys, threading
    from atollon_mail import affinity

    setting = sys.argv[1]
    setting = int(setting) if setting.isdigit() else setting
    stop = threading.Event()
    before = [threading.Thread(target=stop.wait) for _ in range(2)]
    for thread in before:
        thread.start()
    cpu = affinity.pin_process(setting)
    seen = {}
    def look():
        seen["later"] = sorted(os.sched_getaffinity(0))
    later = threading.Thread(target=look)
    later.start()
    later.join()
    threads = {
        name: sorted(os.sched_getaffinity(int(name))) for name in os.listdir("/proc/self/task")
    }
    # Listed after the others: a joined thread can still be in /proc for a moment.
    def look_free():
        seen["free"] = sorted(os.sched_getaffinity(0))
    free = affinity.UnpinnedThread(target=look_free)
    free.start()
    free.join()
    ask = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
    with affinity.unpinned():
        inside = sorted(os.sched_getaffinity(0))
        unpinned_child = json.loads(subprocess.run(ask, capture_output=True).stdout)
    after = sorted(os.sched_getaffinity(0))
    pinned_child = json.loads(subprocess.run(ask, capture_output=True).stdout)
    stop.set()
    print(json.dumps(dict(
        cpu=cpu, threads=threads, later=seen["later"], free=seen["free"], inside=inside,
        after=after,
        unpinned_child=unpinned_child, pinned_child=pinned_child,
    )))
    """
)


def run_child(setting: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, setting],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=60,
        check=False,
    )
    if done.returncode:
        raise AssertionError(done.stderr)
    return json.loads(done.stdout)


class ChooseTests(unittest.TestCase):
    def test_off_and_a_single_cpu_leave_the_threads_free(self):
        self.assertIsNone(affinity.choose_cpu(affinity.OFF, frozenset({0, 1})))
        self.assertIsNone(affinity.choose_cpu(affinity.AUTO, frozenset({3})))

    def test_auto_takes_an_allowed_cpu_and_a_number_must_be_allowed(self):
        self.assertIn(affinity.choose_cpu(affinity.AUTO, frozenset({0, 1})), {0, 1})
        # The caller runs on none of these: the highest is taken.
        self.assertEqual(affinity.choose_cpu(affinity.AUTO, frozenset({4096, 4097})), 4097)
        self.assertEqual(affinity.choose_cpu(1, frozenset({0, 1})), 1)
        with self.assertRaises(ValueError) as caught:
            affinity.choose_cpu(5, frozenset({0, 1}))
        self.assertEqual(str(caught.exception), "CPU 5 is not one this process may run on (0, 1)")


class PinTests(unittest.TestCase):
    def setUp(self):
        if not affinity.supported():
            raise unittest.SkipTest("no sched_setaffinity and /proc here (Linux only)")
        if len(ALLOWED) < 2:
            raise unittest.SkipTest("this machine lets the tests run on one CPU only")

    def test_every_thread_is_pinned_and_started_processes_are_not(self):
        seen = run_child("auto")
        cpu = seen["cpu"]
        self.assertIn(cpu, ALLOWED)
        self.assertGreaterEqual(len(seen["threads"]), 3)
        self.assertEqual(set(map(tuple, seen["threads"].values())), {(cpu,)})
        self.assertEqual(seen["later"], [cpu])
        # The CPU pool's kind of thread runs where the machine lets it.
        self.assertEqual(seen["free"], sorted(ALLOWED))
        self.assertEqual(seen["inside"], sorted(ALLOWED))
        self.assertEqual(seen["unpinned_child"], sorted(ALLOWED))
        self.assertEqual(seen["after"], [cpu], "the thread is pinned again after the block")
        # What unpinned prevents: a child inherits the CPU of the thread that forks it.
        self.assertEqual(seen["pinned_child"], [cpu])

    def test_a_cpu_by_number(self):
        cpu = max(ALLOWED)
        seen = run_child(str(cpu))
        self.assertEqual(seen["cpu"], cpu)
        self.assertEqual(set(map(tuple, seen["threads"].values())), {(cpu,)})

    def test_off_pins_nothing(self):
        seen = run_child("off")
        self.assertIsNone(seen["cpu"])
        self.assertEqual(set(map(tuple, seen["threads"].values())), {tuple(sorted(ALLOWED))})
        self.assertEqual(seen["pinned_child"], sorted(ALLOWED))
        self.assertEqual(seen["free"], sorted(ALLOWED))

    def test_a_process_is_still_started_when_the_cpus_before_are_gone(self):
        script = textwrap.dedent(
            """
            import os, subprocess, sys
            from atollon_mail import affinity
            cpu = affinity.pin_process("auto")
            affinity._allowed_before = frozenset({4096})  # no such CPU here
            with affinity.unpinned():
                done = subprocess.run([sys.executable, "-c", "print('started')"],
                                      capture_output=True, text=True)
            print(done.stdout.strip(), sorted(os.sched_getaffinity(0)) == [cpu])
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=str(ROOT)
        )
        self.assertEqual((done.stdout.strip(), done.stderr), ("started True", ""))

    def test_unpinned_without_pinning_changes_nothing(self):
        self.assertIsNone(affinity.allowed_before(), "the test process never pins itself")
        before = os.sched_getaffinity(0)
        with affinity.unpinned():
            self.assertEqual(os.sched_getaffinity(0), before)
        self.assertEqual(os.sched_getaffinity(0), before)


class ConfigTests(unittest.TestCase):
    def cpu(self, text: str):
        return parse_config(BASE + text, "atollon-mail.ini").appliance.cpu

    def test_the_default_is_auto(self):
        self.assertEqual(parse_config(BASE, "atollon-mail.ini").appliance.cpu, "auto")
        self.assertEqual(self.cpu("cpu = OFF\n"), "off")
        if ALLOWED:
            self.assertEqual(self.cpu(f"cpu = {min(ALLOWED)}\n"), min(ALLOWED))

    def test_bad_values_are_refused_with_what_is_allowed(self):
        with self.assertRaises(ConfigError) as caught:
            self.cpu("cpu = fast\n")
        self.assertIn(
            "[appliance] cpu: must be auto, off or a CPU number (0, 1, ...), got 'fast'",
            str(caught.exception),
        )
        if ALLOWED:
            with self.assertRaises(ConfigError) as caught:
                self.cpu(f"cpu = {max(ALLOWED) + 1}\n")
            self.assertIn(
                f"[appliance] cpu: CPU {max(ALLOWED) + 1} is not one this machine lets",
                str(caught.exception),
            )

    def test_only_the_appliance_s_own_process_pins_itself(self):
        from twisted.internet import reactor

        directory = os.path.abspath(self.mktemp())
        config = parse_config(
            BASE
            + f"cpu = auto\ndata_dir = {directory}\n"
            + f"[database]\nurl = sqlite:///{directory}/store.sqlite\n",
            "atollon-mail.ini",
        )
        self.assertEqual(build_appliance(config, reactor).cpu, affinity.OFF)
        own = build_appliance(config, reactor, tune_gc_at_start=True)
        self.assertEqual(own.cpu, "auto")
