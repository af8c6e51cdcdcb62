"""Opening SQLite: two connections opening a brand-new database file at once (the
service and the admin command started together) both get it in WAL mode; SQLite answers
the second switch to WAL "database is locked" at once, without its busy timeout."""

from __future__ import annotations

import os
import threading

from twisted.trial import unittest

from atollon_mail.store.database import open_database

TRIALS = 100  # without the wait, about one pair in six failed


class FreshFileTests(unittest.TestCase):
    def test_two_connections_open_a_new_file_together(self):
        failures = []
        for _trial in range(TRIALS):
            directory = self.mktemp()
            os.makedirs(directory)
            url = f"sqlite:///{os.path.abspath(directory)}/new.sqlite"
            together = threading.Barrier(2)

            def open_and_write(url=url, together=together):
                database = open_database(url)
                try:
                    together.wait(timeout=10)
                    database.connect()
                    with database.atomic("IMMEDIATE"):
                        database.execute_sql("CREATE TABLE IF NOT EXISTS t (a INTEGER)")
                    mode = database.execute_sql("PRAGMA journal_mode").fetchone()[0]
                    if mode != "wal":
                        failures.append(f"journal mode {mode}")
                except Exception as problem:
                    failures.append(repr(problem))
                finally:
                    database.close()

            threads = [threading.Thread(target=open_and_write) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
        self.assertEqual(failures, [])
