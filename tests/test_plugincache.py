"""Twisted's plugin caches are built at install time, so `twistd atollon-mail` never has
to write them when it starts (a service user who may not write there would see "Unable to
write to plugin cache" at every start)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import uuid

from twisted.python import filepath
from twisted.trial import unittest

from atollon_mail import plugincache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(ROOT, "twisted", "plugins", "atollon_mail_plugin.py")


class PluginCacheTests(unittest.TestCase):
    def plugin_package(self):
        """A package holding a copy of our plugin module, as a twisted/plugins directory."""
        base = os.path.abspath(self.mktemp())
        name = f"plugins_{uuid.uuid4().hex}"
        directory = os.path.join(base, name)
        os.makedirs(directory)
        open(os.path.join(directory, "__init__.py"), "w").close()
        shutil.copy(PLUGIN, directory)
        sys.path.insert(0, base)
        self.addCleanup(sys.path.remove, base)
        self.addCleanup(lambda: [sys.modules.pop(m) for m in list(sys.modules) if name in m])
        return importlib.import_module(name), directory

    def test_a_stale_cache_is_found_and_rebuilt(self):
        package, directory = self.plugin_package()
        cache = os.path.join(directory, plugincache.CACHE_NAME)
        self.assertEqual(plugincache.stale_caches(package), [cache])  # none yet
        self.assertEqual(plugincache.refresh(package), [])
        self.assertTrue(os.path.isfile(cache))
        # A module changed after the cache was written (an upgrade) makes it stale again.
        module = os.path.join(directory, "atollon_mail_plugin.py")
        earlier = os.stat(module).st_mtime - 10
        os.utime(cache, (earlier, earlier))
        self.assertEqual(plugincache.stale_caches(package), [cache])
        self.assertEqual(plugincache.refresh(package), [])
        # So does a module the cache does not know (a plugin installed beside others).
        shutil.copy(module, os.path.join(directory, "another_plugin.py"))
        os.utime(os.path.join(directory, "another_plugin.py"), (earlier, earlier))
        self.assertEqual(plugincache.stale_caches(package), [cache])

    def test_a_cache_that_cannot_be_written_is_reported(self):
        package, directory = self.plugin_package()

        def refuse(path, content, ext=b".new"):
            raise PermissionError(13, "Permission denied", path.path)

        self.patch(filepath.FilePath, "setContent", refuse)
        self.assertEqual(
            plugincache.refresh(package), [os.path.join(directory, plugincache.CACHE_NAME)]
        )

    def test_the_installed_caches_are_current(self):
        # What `make install` (or `python -m atollon_mail.plugincache` after `pip install`)
        # leaves behind: nothing for Twisted to write at the next start.
        self.assertEqual(plugincache.stale_caches(), [])

    def test_make_rebuilds_the_cache_when_the_plugin_changes(self):
        # A copy of the Makefile's world, every file dated so that only the plugin module
        # is newer than the cache (as after a `git pull` that changed it).
        if shutil.which("make") is None:
            self.skipTest("make is not installed")
        copy = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(copy, "twisted", "plugins"))
        os.makedirs(os.path.join(copy, ".venv", "bin"))
        dated = {}
        for name in ("Makefile", "setup.cfg", "pyproject.toml"):
            shutil.copy(os.path.join(ROOT, name), copy)
            dated[name] = 1000
        shutil.copy(PLUGIN, os.path.join(copy, "twisted", "plugins"))
        open(os.path.join(copy, "twisted", "plugins", "dropin.cache"), "w").close()
        open(os.path.join(copy, ".venv", "bin", "python"), "w").close()
        open(os.path.join(copy, ".venv", ".installed"), "w").close()
        dated.update(
            {
                ".venv/bin/python": 1000,
                ".venv/.installed": 2000,
                "twisted/plugins/dropin.cache": 3000,
                "twisted/plugins/atollon_mail_plugin.py": 4000,
            }
        )
        for name, when in dated.items():
            os.utime(os.path.join(copy, name), (when, when))

        # Run as a make of its own: under `make test` the inherited MAKELEVEL would make it
        # print "Entering directory" lines naming this test's directory.
        environment = {
            name: value
            for name, value in os.environ.items()
            if name not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")
        }

        def dry_run() -> str:
            return subprocess.run(
                ["make", "--no-print-directory", "-n", "install"],
                cwd=copy,
                env=environment,
                capture_output=True,
                text=True,
                check=True,
            ).stdout

        self.assertIn("-m atollon_mail.plugincache", dry_run())
        os.utime(os.path.join(copy, "twisted/plugins/dropin.cache"), (5000, 5000))
        self.assertNotIn("-m atollon_mail.plugincache", dry_run())
