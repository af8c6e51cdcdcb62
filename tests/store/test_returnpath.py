"""The Return-Path field: written by the final delivery, dropped from anything else."""

from __future__ import annotations

from twisted.trial import unittest

from atollon_mail.store.returnpath import delivered, without_return_path


class ReturnPathTests(unittest.TestCase):
    def test_delivered_puts_one_on_top(self):
        self.assertEqual(
            delivered(b"Subject: x\r\n\r\nbody", "a@example.org"),
            b"Return-Path: <a@example.org>\r\nSubject: x\r\n\r\nbody",
        )
        self.assertEqual(
            delivered(b"Subject: x\r\n\r\n", ""), b"Return-Path: <>\r\nSubject: x\r\n\r\n"
        )

    def test_fields_of_any_case_and_their_folded_lines_are_dropped(self):
        raw = (
            b"RETURN-PATH: <a@x>\r\nSubject: s\r\nReturn-Path :\r\n\t<b@y>\r\n"
            b"X-Return-Path: kept\r\n\r\nReturn-Path: in the body\r\n"
        )
        self.assertEqual(
            without_return_path(raw),
            b"Subject: s\r\nX-Return-Path: kept\r\n\r\nReturn-Path: in the body\r\n",
        )

    def test_a_header_section_of_only_return_path(self):
        self.assertEqual(without_return_path(b"Return-Path: <a@x>\r\n\r\nbody"), b"\r\nbody")
        self.assertEqual(without_return_path(b"Return-Path: <a@x>\r\n"), b"")
        self.assertEqual(
            delivered(b"Return-Path: <a@x>\r\n\r\nbody", "b@y"), b"Return-Path: <b@y>\r\n\r\nbody"
        )

    def test_messages_without_one_are_left_as_they_are(self):
        for raw in (b"", b"\r\nReturn-Path: body only", b"Subject: x", b"Subject: x\r\n\r\n"):
            self.assertIs(without_return_path(raw), raw)
