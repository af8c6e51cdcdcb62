"""The README's configuration table names every key the configuration accepts."""

from __future__ import annotations

import re

from twisted.trial import unittest

from atollon_mail.config import _SCHEMA
from tests.conftest import ROOT


def configuration_table() -> dict[str, set[str]]:
    """Section -> the `quoted` words of its row in the "## Configuration" table."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for match in re.finditer(r"^\| `\[(\w+)\]` \| (.*) \|$", section, re.M):
        rows[match.group(1)] = set(re.findall(r"`([^`]+)`", match.group(2)))
    return rows


class ReadmeTests(unittest.TestCase):
    def test_the_configuration_table_lists_every_key(self):
        table = configuration_table()
        missing = [
            f"[{section}] {key}"
            for section, keys in _SCHEMA.items()
            for key in keys
            if key not in table.get(section, set())
        ]
        self.assertEqual(missing, [], "add them to the README's configuration table")
        self.assertEqual(sorted(table), sorted(_SCHEMA))
