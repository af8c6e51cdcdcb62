"""`atollon-mail backup FILE` and `restore FILE`: what they print, the passphrase from a
file or the environment, and their one-line refusals (the archive and the restore
themselves: tests/backup)."""

from __future__ import annotations

import os
import stat

from twisted.trial import unittest

from atollon_mail.backup.operations import PASSPHRASE_VARIABLE
from atollon_mail.config import CONFIG_ENVIRONMENT_VARIABLE
from atollon_mail.store import migrations
from tests.support import SqliteStoreMixin
from tests.test_cli import CliHarness


class BackupCommandTests(SqliteStoreMixin, CliHarness, unittest.TestCase):
    def setUp(self):
        self.set_environment(CONFIG_ENVIRONMENT_VARIABLE, None)
        self.set_environment(PASSPHRASE_VARIABLE, None)
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.source = self.config("source")
        self.target = self.config("target")
        self.archive = os.path.join(self.base, "archives", "b.tar")
        self.passphrase_file = os.path.join(self.base, "passphrase")
        with open(self.passphrase_file, "w") as out:
            out.write("correct horse\nsecond line is not part of it\n")
        self.ok(self.source, "db", "migrate")
        self.ok(self.source, "domain", "add", "acme.com")

    def config(self, name: str) -> str:
        directory = os.path.join(self.base, name)
        os.makedirs(directory)
        path = os.path.join(directory, "atollon-mail.ini")
        with open(path, "w") as config_file:
            config_file.write(
                f"[appliance]\nhostname = mx.test.example\ndata_dir = {directory}/data\n"
                f"[database]\nurl = sqlite:///{directory}/data/store.sqlite\n"
            )
        return path

    def ok(self, config: str, *argv: str):
        outcome = self.main("--config", config, *argv)
        self.assertEqual((outcome.code, outcome.err), (0, ""), outcome)
        return outcome

    def test_backup_and_restore_with_a_passphrase_file(self):
        made = self.ok(
            self.source, "backup", self.archive, "--passphrase-file", self.passphrase_file
        )
        self.assertEqual(
            made.lines,
            [
                f"backup written to {self.archive} (encrypted, sqlite database at schema "
                f"version {migrations.LATEST_VERSION}, 0 data files)"
            ],
        )
        self.assertEqual(stat.S_IMODE(os.stat(self.archive).st_mode), 0o600)
        restored = self.ok(
            self.target, "restore", self.archive, "--passphrase-file", self.passphrase_file
        )
        self.assertEqual(restored.lines[-1], "start the appliance now")
        self.assertTrue(restored.lines[0].startswith("restored the backup of "), restored.lines)
        self.assertEqual(self.ok(self.target, "domain", "list").lines[1].split()[0], "acme.com")

    def test_the_passphrase_from_the_environment(self):
        self.set_environment(PASSPHRASE_VARIABLE, "from the environment")
        self.ok(self.source, "backup", self.archive)
        self.set_environment(PASSPHRASE_VARIABLE, "another")
        self.assertRefused(
            self.main("--config", self.target, "restore", self.archive),
            "not restored: wrong passphrase for this backup",
        )
        self.set_environment(PASSPHRASE_VARIABLE, None)
        self.assertRefused(
            self.main("--config", self.target, "restore", self.archive),
            f"is encrypted: give its passphrase (--passphrase-file or {PASSPHRASE_VARIABLE})",
        )
        self.set_environment(PASSPHRASE_VARIABLE, "from the environment")
        self.ok(self.target, "restore", self.archive)

    def test_refusals_are_one_line(self):
        self.ok(self.source, "backup", self.archive)
        self.assertRefused(
            self.main("--config", self.source, "restore", self.archive),
            "not restored: the instance is not empty (1 domain)",
        )
        self.assertRefused(
            self.main("--config", self.target, "restore", os.path.join(self.base, "none")),
            "not restored: cannot read",
        )
        self.assertRefused(
            self.main(
                "--config", self.source, "backup", self.archive, "--passphrase-file", "/nonexistent"
            ),
            "cannot read the passphrase file /nonexistent",
        )
        self.assertUsageError(self.main("--config", self.source, "backup"))

    def test_restore_force_replaces_a_non_empty_instance(self):
        self.ok(self.source, "backup", self.archive)
        self.ok(self.target, "db", "migrate")
        self.ok(self.target, "domain", "add", "other.example")
        self.ok(self.target, "restore", self.archive, "--force")
        self.assertEqual(
            [line.split()[0] for line in self.ok(self.target, "domain", "list").lines[1:]],
            ["acme.com"],
        )
