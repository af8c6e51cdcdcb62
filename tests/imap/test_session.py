"""The pure parts of an IMAP session: LIST patterns, mailbox names in modified UTF-7,
sequence sets over the selected folder's uids."""

from __future__ import annotations

import array
import time

from twisted.trial import unittest

from atollon_mail.imap.parser import ParseError
from atollon_mail.imap.session import BadName, Pattern, Selected, decode_name, sequence_text


class PatternTests(unittest.TestCase):
    def test_wildcards(self):
        cases = [
            ("", "*", "a/b", True),
            ("", "%", "a/b", False),
            ("", "%", "INBOX", True),
            ("", "inbox", "INBOX", True),
            ("CRM/", "%", "CRM/x", True),
            ("CRM/", "%", "CRM/x/y", False),
            ("", "C%/*", "CRM/x/y", True),
            ("", "I.BOX", "INBOX", False),
            ("", "*bob*", "Shared/bob@x.test/INBOX", True),
            ("", "Sent", "Sentx", False),
            ("", "%/%", "a/b", True),
            ("", "%%*", "a/b", True),
            ("CRM", "*", "CRM/a", True),
            ("", "[a]", "a", False),
        ]
        for reference, pattern, name, expected in cases:
            self.assertEqual(Pattern(reference, pattern).match(name), expected, (pattern, name))

    def test_a_pathological_pattern_takes_linear_time(self):
        pattern = Pattern("", "*a" * 20000 + "b")
        started = time.monotonic()
        for _ in range(1000):
            self.assertFalse(pattern.match("a" * 250))
        self.assertLess(time.monotonic() - started, 2.0)


class NameTests(unittest.TestCase):
    def test_modified_utf7(self):
        self.assertEqual(decode_name(b"CRM/P&AVk-ehled"), "CRM/Přehled")
        self.assertEqual(decode_name(b"inbox"), "INBOX")
        self.assertEqual(decode_name("CRM/Přehled".encode()), "CRM/Přehled")  # raw UTF-8
        self.assertEqual(decode_name(b"A &- B"), "A & B")
        for bad in (b"&AGQAbwB0-", b"&Jjo!", b"&abc", b"\xff\xfe"):
            with self.assertRaises(BadName):
                decode_name(bad)


class SelectedTests(unittest.TestCase):
    def selected(self, *uids):
        return Selected("INBOX", 1, True, 1, array.array("q", uids), 100, 1)

    def test_sequence_sets(self):
        selected = self.selected(3, 5, 9, 12)
        self.assertEqual(selected.resolve("2:3", False), [5, 9])
        self.assertEqual(selected.resolve("*", False), [12])
        self.assertEqual(selected.resolve("4:5,1", True), [5])
        self.assertEqual(selected.resolve("10:*", True), [12])
        self.assertEqual(selected.resolve("20:*", True), [12], "n:* always has the last")
        with self.assertRaises(ParseError):
            selected.resolve("5", False)
        self.assertEqual(self.selected().resolve("1:*", True), [])
        self.assertEqual(selected.seq_of(9), 3)
        self.assertIsNone(selected.seq_of(4))

    def test_a_set_of_many_repeated_ranges_resolves_at_once(self):
        """A 64 KB line of "1:*" over 20 000 messages: merged first, then sliced."""
        selected = self.selected(*range(2, 40_002, 2))
        text = ",".join(["1:*"] * 16_000)
        started = time.perf_counter()
        for by_uid in (False, True):
            self.assertEqual(selected.resolve(text, by_uid), list(selected.uids))
        self.assertEqual(selected.resolve("3:4,1,2,20000", False), [2, 4, 6, 8, 40_000])
        self.assertEqual(selected.resolve("3:4,1,2,8:7,40000:*", True), [2, 4, 8, 40_000])
        self.assertLess(time.perf_counter() - started, 0.5)

    def test_remove_answers_highest_first(self):
        selected = self.selected(3, 5, 9, 12)
        self.assertEqual(selected.remove([3, 9, 77]), [3, 1])
        self.assertEqual(list(selected.uids), [5, 12])
        self.assertEqual(selected.add([4, 13, 14]), 2, "never before a known message")
        self.assertEqual(list(selected.uids), [5, 12, 13, 14])

    def test_sequence_text(self):
        self.assertEqual(sequence_text([1, 2, 3, 7, 9, 10]), "1:3,7,9:10")
        self.assertEqual(sequence_text([]), "")
