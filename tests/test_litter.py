"""The test run leaves nothing in the repository (see tests/conftest.py)."""

from __future__ import annotations

import os

from twisted.trial import unittest

from tests.conftest import ROOT, litter


class LitterTests(unittest.TestCase):
    def test_mktemp_is_outside_the_checkout(self):
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        self.assertFalse(
            path.startswith(str(ROOT) + os.sep), f"{path} is inside the checkout {ROOT}"
        )

    def test_the_litter_check_sees_trials_directories(self):
        directory = os.path.abspath(self.mktemp())
        for name in ("tests.crm.test_csvimport", "_trial_temp", "tests", "docs"):
            os.makedirs(os.path.join(directory, name))
        self.assertEqual(litter(type(ROOT)(directory)), {"tests.crm.test_csvimport", "_trial_temp"})
