"""How the admin command is put together: cli.py is main and the registry, the command
groups live in atollon_mail.commands, and nothing there imports cli.py back (no cycle) or
another module's private names."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

import atollon_mail.commands
from atollon_mail import cli

PACKAGE = "atollon_mail.commands"
DIRECTORY = Path(atollon_mail.commands.__file__).parent

# Imports each module in a clean slate (every atollon_mail module forgotten first), so
# each is the entry point once, as a cycle only shows from some entry points; prints which
# atollon_mail modules each one loaded.
IMPORT_EACH = """
import importlib, json, sys
loaded = {}
for name in sys.argv[1:]:
    for module in [m for m in sys.modules if m.split(".")[0] == "atollon_mail"]:
        del sys.modules[module]
    importlib.import_module(name)
    loaded[name] = sorted(m for m in sys.modules if m.split(".")[0] == "atollon_mail")
print(json.dumps(loaded))
"""


def command_modules() -> list[str]:
    return sorted(f"{PACKAGE}.{info.name}" for info in pkgutil.iter_modules([str(DIRECTORY)]))


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of each `from module import names` and `import module` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


class LayoutTests(unittest.TestCase):
    def test_every_command_module_imports_alone_without_cli(self):
        modules = command_modules()
        result = subprocess.run(
            [sys.executable, "-c", IMPORT_EACH, *modules],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        loaded = json.loads(result.stdout)
        self.assertEqual(sorted(loaded), modules)
        for name, names in loaded.items():
            self.assertIn(name, names)
            self.assertNotIn("atollon_mail.cli", names, f"{name} imports atollon_mail.cli")

    def test_no_command_module_names_cli_or_a_private_name(self):
        paths = sorted(DIRECTORY.glob("*.py")) + [Path(cli.__file__)]
        for path in paths:
            for module, names in imports(path):
                self.assertNotEqual(module, "atollon_mail.cli", f"{path.name} imports cli")
                if module.split(".")[0] == "atollon_mail":
                    private = [name for name in names if name.startswith("_")]
                    self.assertEqual(private, [], f"{path.name} imports {private} from {module}")

    def test_every_command_module_is_registered(self):
        shared = {f"{PACKAGE}.common", f"{PACKAGE}.output"}
        registered = set(cli.COMMAND_MODULES)
        self.assertEqual(registered, set(command_modules()) - shared)
        for name in registered:
            module = importlib.import_module(name)
            self.assertTrue(callable(getattr(module, "register", None)), name)
        for name in shared:
            self.assertFalse(hasattr(importlib.import_module(name), "register"), name)
