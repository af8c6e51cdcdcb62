"""SEARCH programs: parsing the keys and matching them against messages."""

import datetime
import time

import attrs
from twisted.trial.unittest import TestCase

from atollon_mail.imap.parser import ParseError, parse_command
from atollon_mail.imap.search import (
    KEPT_FIELDS,
    BadCharset,
    SearchProgram,
    decode_header_value,
    kept_fields,
    parse_search,
)

from .test_message import MULTIPART

ENCODED = (
    b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@example.de>\r\n"
    b"To: Team: alice@example.com, bob@example.com;\r\n"
    b"Subject: =?iso-8859-1?q?Gr=FC=DFe?= =?utf-8?b?YXVz?= Prag\r\n"
    b"Date: Sun, 6 Dec 2026 23:30:00 -0800\r\n"
    b"X-Ticket: ABC-42\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Sch=F6ne Gr=FC=DFe,\r\nund ein lange=\r\ns Wort\r\n"
)


@attrs.frozen
class Item:
    uid: int = 10
    modseq: int = 50
    flags: tuple[str, ...] = ("\\Seen", "$Filed")
    size: int = 3000
    internaldate: datetime.datetime = datetime.datetime(2026, 12, 7, 0, 30, tzinfo=datetime.UTC)


def program(text: bytes, *literals: bytes, **options) -> SearchProgram:
    pieces = [b"a SEARCH " + text]
    for octets in literals:
        pieces += [octets, b""]
    return parse_search(parse_command(pieces).args, **options)


def matches(
    text: bytes,
    *literals: bytes,
    raw: bytes = ENCODED,
    item: Item = Item(),
    seq: int = 3,
    **options,
) -> bool:
    return program(text, *literals, **options).matches(item, seq, raw)


class SequenceSetSearchTests(TestCase):
    def test_many_ranges_are_matched_by_bisection(self) -> None:
        """SEARCH UID and sequence sets of thousands of ranges over 20 000 messages."""
        ranges = b",".join(b"%d:%d" % (n, n + 1) for n in range(1, 40_000, 4))
        started = time.perf_counter()
        for text in (b"UID " + ranges, ranges):
            found = program(text, last_seq=20_000, last_uid=20_000)
            hits = [n for n in range(1, 20_001) if found.matches(Item(uid=n), n, None)]
            self.assertEqual(hits, [n for n in range(1, 20_001) if n % 4 in (1, 2)])
        self.assertLess(time.perf_counter() - started, 1.0)


class FlagAndSizeTests(TestCase):
    def test_flags(self) -> None:
        self.assertTrue(matches(b"SEEN"))
        self.assertFalse(matches(b"UNSEEN"))
        self.assertTrue(matches(b"UNFLAGGED UNDELETED UNANSWERED UNDRAFT"))
        self.assertTrue(matches(b"KEYWORD $filed"))
        self.assertTrue(matches(b"UNKEYWORD $Forwarded"))
        self.assertFalse(matches(b"RECENT"))
        self.assertFalse(matches(b"NEW"))
        self.assertTrue(matches(b"OLD ALL"))

    def test_sizes_uids_and_sequence_numbers(self) -> None:
        self.assertTrue(matches(b"LARGER 2999 SMALLER 3001"))
        self.assertFalse(matches(b"LARGER 3000"))
        self.assertTrue(matches(b"UID 1:5,10"))
        self.assertFalse(matches(b"UID 11:*", last_uid=20))
        self.assertTrue(matches(b"UID *", last_uid=10))
        self.assertTrue(matches(b"2:4"))
        self.assertTrue(matches(b"*", last_seq=3))
        self.assertFalse(matches(b"1,2"))
        self.assertTrue(matches(b"MODSEQ 50"))
        self.assertFalse(matches(b"MODSEQ 51"))
        self.assertTrue(matches(b'MODSEQ "/flags/\\\\seen" all 40'))

    def test_uses_modseq(self) -> None:
        self.assertTrue(program(b"OR SEEN (NOT MODSEQ 4)").uses_modseq)
        self.assertFalse(program(b"SEEN UID 1:*").uses_modseq)

    def test_needs(self) -> None:
        self.assertEqual(program(b"UNSEEN UID 1:* LARGER 4").needs, "none")
        self.assertEqual(program(b"FROM x (SEEN)").needs, "headers")
        self.assertEqual(program(b"SENTON 1-Jan-2026").needs, "headers")
        self.assertEqual(program(b"OR SEEN (NOT BODY x)").needs, "full")
        self.assertEqual(program(b"TEXT x").needs, "full")


class LogicTests(TestCase):
    def test_not_or_groups(self) -> None:
        self.assertTrue(matches(b"NOT FLAGGED"))
        self.assertTrue(matches(b"OR FLAGGED SEEN"))
        self.assertFalse(matches(b"OR FLAGGED DELETED"))
        self.assertTrue(matches(b"(SEEN (KEYWORD $Filed)) NOT (DELETED)"))
        self.assertFalse(matches(b"SEEN DELETED"))
        self.assertTrue(matches(b"OR (FLAGGED)(SEEN)"))


class TextTests(TestCase):
    def test_headers_decoded_case_insensitive(self) -> None:
        self.assertTrue(matches(b'FROM "m\xc3\xbcller"', charset="UTF-8"))
        self.assertTrue(matches(b"FROM JOERG@EXAMPLE"))
        # The blank between two encoded words is not text (RFC 2047 6.2); case folds fully.
        self.assertTrue(matches(b'SUBJECT "gr\xc3\xbc\xc3\x9feaus prag"', charset="UTF-8"))
        self.assertTrue(matches(b'SUBJECT "GR\xc3\x9cSSEAUS"', charset="UTF-8"))
        self.assertFalse(matches(b'SUBJECT "gr\xc3\xbc\xc3\x9fe aus"', charset="UTF-8"))
        self.assertTrue(matches(b"TO bob"))
        self.assertTrue(matches(b"TO team"))
        self.assertFalse(matches(b"CC bob"))
        self.assertFalse(matches(b"BCC bob"))

    def test_header_key_and_presence(self) -> None:
        self.assertTrue(matches(b"HEADER x-ticket abc-4"))
        self.assertTrue(matches(b'HEADER X-TICKET ""'))
        self.assertFalse(matches(b'HEADER X-Missing ""'))

    def test_every_occurrence_of_a_field(self) -> None:
        raw = b"Received: from a\r\nReceived: from b\r\n by c\r\nX: 1\r\n\r\nbody received\r\n"
        self.assertTrue(matches(b'HEADER received "b by c"', raw=raw))
        self.assertTrue(matches(b"HEADER RECEIVED a", raw=raw))
        self.assertFalse(matches(b"HEADER received body", raw=raw))

    def test_header_block_alone(self) -> None:
        header = ENCODED[: ENCODED.index(b"\r\n\r\n") + 2]
        self.assertTrue(program(b"SUBJECT prag").matches(Item(), 1, header))

    def test_body_decoded(self) -> None:
        self.assertTrue(
            matches(b"BODY {15}", b"sch\xc3\xb6ne gr\xc3\xbc\xc3\x9fe", charset="UTF-8")
        )
        self.assertTrue(matches(b'BODY "langes Wort"'))
        self.assertFalse(matches(b"BODY Prag"))
        self.assertTrue(matches(b"TEXT Prag"))
        self.assertTrue(matches(b'TEXT "sch\xf6ne"', charset="ISO-8859-1"))

    def test_body_of_multipart_and_attached_message(self) -> None:
        self.assertTrue(matches(b"BODY zwei", raw=MULTIPART))
        self.assertTrue(matches(b'BODY "\xc3\xa4h"', raw=MULTIPART, charset="UTF-8"))  # 8bit + QP
        self.assertTrue(matches(b"BODY <p>", raw=MULTIPART))
        self.assertTrue(matches(b"BODY one", raw=MULTIPART))  # inside the message/rfc822
        self.assertFalse(matches(b"BODY JVBERi0", raw=MULTIPART))  # not a text part
        self.assertTrue(matches(b"TEXT inner", raw=MULTIPART))  # the attached message's subject


class DateTests(TestCase):
    def test_internal_date_in_utc(self) -> None:
        self.assertTrue(matches(b"ON 7-Dec-2026"))
        self.assertTrue(matches(b'SINCE "07-Dec-2026" BEFORE 8-Dec-2026'))
        self.assertFalse(matches(b"BEFORE 7-Dec-2026"))

    def test_sent_date_in_its_own_zone(self) -> None:
        self.assertTrue(matches(b"SENTON 6-Dec-2026"))
        self.assertTrue(matches(b"SENTBEFORE 7-Dec-2026 SENTSINCE 6-Dec-2026"))
        # No Date header: the internal date.
        self.assertTrue(matches(b"SENTON 7-Dec-2026", raw=b"Subject: x\r\n\r\n"))


class ErrorTests(TestCase):
    def test_malformed(self) -> None:
        for text in (
            b"FOO",
            b"FROM",
            b"OR SEEN",
            b"NOT",
            b"LARGER x",
            b"BEFORE 32-Dec-2026",
            b"BEFORE 1-Foo-2026",
            b"UID x",
            b"0:3",
            b"()",
            b'"SEEN"',
            b"CHARSET",
        ):
            with self.subTest(text):
                self.assertRaises(ParseError, program, text)
        self.assertRaises(ParseError, parse_search, [])

    def test_charsets(self) -> None:
        self.assertTrue(matches(b'CHARSET UTF-8 FROM "m\xc3\xbcller"'))
        self.assertRaises(BadCharset, program, b"CHARSET X-NOPE FROM x")
        self.assertRaises(ParseError, program, b'FROM "m\xc3\xbcller"')  # not US-ASCII


class DecodeTests(TestCase):
    def test_encoded_words(self) -> None:
        self.assertEqual(decode_header_value(b"=?utf-8?q?a_b?= =?utf-8?b?Yw?= d"), "a bc d")
        self.assertEqual(decode_header_value(b"=?x-unknown?q?caf=E9?="), "café")
        self.assertEqual(decode_header_value("plain é".encode()), "plain é")
        self.assertEqual(decode_header_value(b"latin \xe9"), "latin é")
        self.assertEqual(decode_header_value(b"=?utf-8?b?!!!?="), "=?utf-8?b?!!!?=")


class KeptFieldsTests(TestCase):
    def test_header_terms_only_for_kept_header_keys(self) -> None:
        self.assertEqual(
            program(
                b"CHARSET UTF-8 SUBJECT {%d}" % len("Straße".encode()), "Straße".encode()
            ).header_terms,
            (("subject", "strasse"),),
        )
        self.assertEqual(
            program(b'FROM bob HEADER "CC" X TO y BCC z').header_terms,
            (("from", "bob"), ("cc", "x"), ("to", "y"), ("bcc", "z")),
        )
        self.assertEqual(
            program(
                b"CHARSET UTF-8 SUBJECT {%d}" % len("ΟΔΟΣ".encode()), "ΟΔΟΣ".encode()
            ).header_terms,
            (("subject", "οδοσ"),),
        )
        # A group of one key is that key.
        self.assertEqual(program(b"(SUBJECT x)").header_terms, (("subject", "x"),))
        for text in (
            b"SUBJECT x SEEN",  # a flag too
            b"OR SUBJECT x FROM y",
            b"NOT SUBJECT x",
            b"HEADER X-Ticket abc",  # a field not kept
            b'SUBJECT ""',  # presence, not a text
            b"SUBJECT x MODSEQ 5",
            b"TEXT x",
            b"1:3 SUBJECT x",
        ):
            with self.subTest(text=text):
                self.assertIsNone(program(text).header_terms)
        self.assertIsNone(program(b"SUBJECT {3}", b"a\nb").header_terms)

    def test_kept_fields_are_what_header_keys_match(self) -> None:
        header = ENCODED[: ENCODED.index(b"\r\n\r\n") + 2]
        fields = dict(zip(KEPT_FIELDS, kept_fields(header), strict=True))
        self.assertEqual(fields["subject"], "grüßeaus prag".casefold())
        self.assertEqual(fields["from"], "jörg müller <joerg@example.de>")
        self.assertEqual(fields["to"], "team: alice@example.com, bob@example.com;")
        self.assertIsNone(fields["cc"])
        twice = b"To: a@example.com\r\nCc: C\r\nTo: =?utf-8?q?B=C3=96B?= <b@example.com>\r\n"
        fields = dict(zip(KEPT_FIELDS, kept_fields(twice), strict=True))
        self.assertEqual(fields["to"], "a@example.com\nböb <b@example.com>")
        self.assertEqual(fields["cc"], "c")
        self.assertIsNone(fields["subject"])
