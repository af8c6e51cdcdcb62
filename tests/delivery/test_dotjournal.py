"""The dot journal: marks written before a dot goes out, read back after a kill, and
removed once the store has them."""

from __future__ import annotations

import datetime
import os

from twisted.trial import unittest

from atollon_mail.delivery import dotjournal
from atollon_mail.delivery.dotjournal import DotJournal, read_marks, segments

T0 = datetime.datetime(2026, 12, 7, 10, 0, 0, 250000)


class DotJournalTests(unittest.TestCase):
    def setUp(self):
        self.directory = self.mktemp()

    def test_marks_are_read_back_by_a_new_journal_as_after_a_kill(self):
        journal = DotJournal(self.directory)
        journal.note([11, 12], T0)
        journal.note([13], T0 + datetime.timedelta(seconds=1))
        # No close, no settle: the process dies here.
        again = DotJournal(self.directory)
        self.assertEqual(again.recover(), {11: T0, 12: T0, 13: T0 + datetime.timedelta(seconds=1)})
        self.assertEqual(read_marks(self.directory), again.recover())

    def test_discard_removes_what_was_recovered_and_numbers_on_after_it(self):
        DotJournal(self.directory).note([1], T0)
        journal = DotJournal(self.directory)
        self.assertEqual(set(journal.recover()), {1})
        journal.discard()
        self.assertEqual(segments(self.directory), [])
        self.assertEqual(journal.note([2], T0), 1)
        self.assertEqual(read_marks(self.directory), {2: T0})

    def test_a_torn_last_line_is_skipped(self):
        DotJournal(self.directory).note([5], T0)
        path = os.path.join(self.directory, "000000000000.dots")
        with open(path, "r+b") as torn:  # a kill in the middle of a copy into the map
            end = torn.read().rfind(b"\n") + 1
            torn.seek(end)
            torn.write(b"6 17")
        self.assertEqual(read_marks(self.directory), {5: T0})

    def test_a_segment_is_allocated_whole_and_an_earlier_runs_marks_are_kept(self):
        DotJournal(self.directory).note([7], T0)
        path = os.path.join(self.directory, "000000000000.dots")
        self.assertEqual(os.path.getsize(path), dotjournal.SEGMENT_BYTES)
        self.assertGreaterEqual(os.stat(path).st_blocks * 512, dotjournal.SEGMENT_BYTES)
        # A journal that did not recover first writes after what it found.
        DotJournal(self.directory).note([8], T0)
        self.assertEqual(read_marks(self.directory), {7: T0, 8: T0})

    def test_marks_larger_than_a_segment_get_a_segment_of_their_own(self):
        self.patch(dotjournal, "SEGMENT_BYTES", 64)
        journal = DotJournal(self.directory)
        many = list(range(1000, 1020))  # about 400 bytes in one line batch
        self.assertEqual(journal.note(many, T0), 0)
        self.assertEqual(journal.note([5], T0), 1)
        self.assertEqual(read_marks(self.directory), {**dict.fromkeys(many, T0), 5: T0})

    def test_a_finished_segment_goes_once_the_store_has_all_its_marks(self):
        self.patch(dotjournal, "SEGMENT_BYTES", 30)
        journal = DotJournal(self.directory)
        first = journal.note([100, 101], T0)  # about 40 bytes: the next note starts anew
        second = journal.note([102, 103], T0)
        self.assertEqual((first, second), (0, 1))
        self.assertEqual(segments(self.directory), [0, 1])
        journal.settled(first, 1)
        self.assertEqual(segments(self.directory), [0, 1])  # one mark still outstanding
        journal.settled(first, 1)
        self.assertEqual(segments(self.directory), [1])
        journal.settled(second, 2)
        self.assertEqual(segments(self.directory), [1])  # still being written, emptied
        self.assertEqual(read_marks(self.directory), {})
        self.assertEqual(journal.note([104], T0), 1)  # on in the emptied one
        self.assertEqual(read_marks(self.directory), {104: T0})

    def test_a_journal_that_cannot_be_written_raises(self):
        with open(self.directory, "w") as blocker:  # a file where the directory goes
            blocker.write("not a directory")
        self.assertRaises(OSError, DotJournal(self.directory).note, [1], T0)
