"""SQLite's online copy keeps one snapshot while another connection commits between its
steps: the copy is the database as it was when the copy began, and it never restarts
(SQLite restarts a copy at every commit of another connection unless the copying
connection holds a read transaction)."""

from __future__ import annotations

import os
import sqlite3

from twisted.trial import unittest

from atollon_mail.store import backup as store_backup

ROWS = 200


class CopySqliteTests(unittest.TestCase):
    def setUp(self):
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.source = os.path.join(base, "store.sqlite")
        self.target = os.path.join(base, "copy.sqlite")
        writer = sqlite3.connect(self.source, isolation_level=None)
        self.addCleanup(writer.close)
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("CREATE TABLE schema_migration (version integer)")
        writer.execute("INSERT INTO schema_migration VALUES (7)")
        writer.execute("CREATE TABLE item (id integer primary key, body text)")
        writer.executemany("INSERT INTO item (body) VALUES (?)", [("x" * 500,)] * ROWS)
        self.writer = writer

    def test_a_writer_committing_between_steps_neither_restarts_nor_changes_the_copy(self):
        steps = []

        def progress(status, remaining, total):
            steps.append((remaining, total))
            if len(steps) > 1000:  # restarting at every commit: it would never end
                raise RuntimeError("the copy restarted")
            self.writer.execute("INSERT INTO item (body) VALUES ('late')")

        version = store_backup.copy_sqlite(self.source, self.target, 1, progress)
        self.assertEqual(version, 7)
        total = steps[0][1]
        self.assertGreater(total, 20, "enough pages for many steps")
        self.assertEqual(len(steps), total, "one step a page, no restart")
        self.assertEqual([remaining for remaining, _ in steps], list(range(total - 1, -1, -1)))
        copy = sqlite3.connect(self.target)
        self.addCleanup(copy.close)
        self.assertEqual(copy.execute("SELECT count(*) FROM item").fetchone()[0], ROWS)
        self.assertEqual(copy.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        self.assertEqual(
            self.writer.execute("SELECT count(*) FROM item").fetchone()[0], ROWS + len(steps)
        )
