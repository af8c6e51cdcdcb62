"""The test run works in a temporary directory of its own, never in the checkout.

Trial's TestCase.mktemp() makes its directories relative to the current directory (one
per test module, named after it), so a run from the repository root used to leave
`tests.*` and `_trial_temp` directories there. The session now changes into a fresh
directory before the first test and removes it at the end (it is kept, and named, when
a test failed), and the run fails if such directories appear in the root anyway.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What trial leaves in the current directory: mktemp()'s per-module directories, and
# the working directory of `trial` itself.
LITTER_PATTERNS = ("tests.*", "_trial_temp*")

_BEFORE = pytest.StashKey[set]()
_OLD_DIRECTORY = pytest.StashKey[str]()
_DIRECTORY = pytest.StashKey[str]()


def litter(directory: Path = ROOT) -> set[str]:
    return {path.name for pattern in LITTER_PATTERNS for path in directory.glob(pattern)}


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_BEFORE] = litter()
    config.stash[_OLD_DIRECTORY] = os.getcwd()
    config.stash[_DIRECTORY] = tempfile.mkdtemp(prefix="atollon-mail-tests-")


@pytest.fixture(scope="session", autouse=True)
def _work_in_a_temporary_directory(pytestconfig: pytest.Config):
    # After collection (which resolves the paths given on the command line).
    os.chdir(pytestconfig.stash[_DIRECTORY])
    yield
    os.chdir(pytestconfig.stash[_OLD_DIRECTORY])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    directory = config.stash.get(_DIRECTORY, None)
    if directory is None:
        return
    os.chdir(config.stash[_OLD_DIRECTORY])
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
    if exitstatus == pytest.ExitCode.OK:
        shutil.rmtree(directory, ignore_errors=True)
    elif reporter is not None and os.listdir(directory):
        reporter.write_line(f"the tests' files are kept in {directory}")
    new = sorted(litter() - config.stash[_BEFORE])
    if new:
        if reporter is not None:
            reporter.write_line(
                f"the test run left {', '.join(new)} in {ROOT}: a test wrote into the "
                "current directory before the session's temporary one was entered",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
