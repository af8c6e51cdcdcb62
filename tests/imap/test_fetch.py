"""FETCH requests (macros, items, sections) and the untagged answers rendered for them."""

import datetime

import attrs
from twisted.trial.unittest import TestCase

from atollon_mail.imap.fetch import (
    MAX_SECTIONS,
    FetchRequest,
    UnknownEncoding,
    internaldate,
    parse_fetch,
    render,
    render_chunks,
)
from atollon_mail.imap.message import bodystructure, envelope
from atollon_mail.imap.parser import Atom, FetchAtt, ParseError, parse_command

from .test_message import MULTIPART, RFC3501


@attrs.frozen
class Item:
    uid: int = 7
    modseq: int = 42
    flags: tuple[str, ...] = ("\\Seen", "\\Recent", "$Forwarded")
    size: int = len(RFC3501)
    internaldate: datetime.datetime = datetime.datetime(2026, 12, 7, 9, 5, 3, tzinfo=datetime.UTC)


def request(text: bytes, **options: bool) -> FetchRequest:
    return parse_fetch(parse_command([b"a FETCH 1 " + text]).args[1], **options)


class ParseFetchTests(TestCase):
    def test_macros(self) -> None:
        self.assertEqual(
            request(b"ALL").items, ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")
        )
        self.assertEqual(request(b"fast").items, ("FLAGS", "INTERNALDATE", "RFC822.SIZE"))
        self.assertEqual(request(b"FULL").items[-1], "BODY")

    def test_items_uid_and_modseq(self) -> None:
        self.assertEqual(request(b"flags").items, ("FLAGS",))
        self.assertEqual(
            request(b"(FLAGS envelope flags)", uid=True, modseq=True).items,
            ("UID", "FLAGS", "ENVELOPE", "MODSEQ"),
        )
        self.assertEqual(request(b"(UID FLAGS)", uid=True).items, ("UID", "FLAGS"))

    def test_unknown_items(self) -> None:
        for text in (b"(FLAGS FOO)", b"ALLX", b"()", b'"FLAGS"', b"(ALL)", b"(FLAGS (UID))"):
            with self.subTest(text):
                self.assertRaises(ParseError, request, text)

    def test_needs(self) -> None:
        cases = {
            b"(UID FLAGS RFC822.SIZE INTERNALDATE MODSEQ)": "none",
            b"(UID FLAGS RFC822.SIZE ENVELOPE)": "headers",
            b"(BODY.PEEK[HEADER.FIELDS (From)])": "headers",
            b"(RFC822.HEADER BODY[HEADER])": "headers",
            b"(BODY.PEEK[1.HEADER])": "full",
            b"(ENVELOPE BODYSTRUCTURE)": "full",
            b"BODY": "full",
            b"BODY.PEEK[]<0.100>": "full",
            b"RFC822.TEXT": "full",
            b"BINARY.SIZE[1]": "full",
        }
        for text, needs in cases.items():
            with self.subTest(text):
                self.assertEqual(request(text).needs, needs)

    def test_sets_seen(self) -> None:
        for text in (b"BODY[]", b"(UID BODY[TEXT])", b"RFC822", b"RFC822.TEXT", b"BINARY[1]"):
            self.assertTrue(request(text).sets_seen, text)
        for text in (
            b"BODY.PEEK[]",
            b"RFC822.HEADER",
            b"(FLAGS ENVELOPE BODYSTRUCTURE BODY)",
            b"BINARY.PEEK[1]",
            b"BINARY.SIZE[1]",
        ):
            self.assertFalse(request(text).sets_seen, text)


class RenderTests(TestCase):
    def test_simple_items_never_recent(self) -> None:
        self.assertEqual(
            render(request(b"(UID FLAGS INTERNALDATE RFC822.SIZE MODSEQ)"), Item(), 3, None),
            b'* 3 FETCH (UID 7 FLAGS (\\Seen $Forwarded) INTERNALDATE "07-Dec-2026 09:05:03'
            b' +0000" RFC822.SIZE %d MODSEQ (42))\r\n' % len(RFC3501),
        )

    def test_internaldate_offsets(self) -> None:
        zone = datetime.timezone(-datetime.timedelta(hours=7, minutes=30))
        moment = datetime.datetime(1996, 7, 1, 2, 3, 4, tzinfo=zone)
        self.assertEqual(internaldate(moment), b'"01-Jul-1996 02:03:04 -0730"')

    def test_envelope_from_headers_or_whole(self) -> None:
        header = RFC3501[: RFC3501.index(b"\r\n\r\n")]
        wanted = b"* 1 FETCH (UID 7 ENVELOPE " + envelope(RFC3501) + b")\r\n"
        self.assertEqual(render(request(b"ENVELOPE", uid=True), Item(), 1, header), wanted)
        self.assertEqual(render(request(b"ENVELOPE", uid=True), Item(), 1, RFC3501), wanted)

    def test_structures(self) -> None:
        self.assertEqual(
            render(request(b"(BODY BODYSTRUCTURE)"), Item(), 2, MULTIPART),
            b"* 2 FETCH (BODY "
            + bodystructure(MULTIPART, False)
            + b" BODYSTRUCTURE "
            + bodystructure(MULTIPART)
            + b")\r\n",
        )

    def test_whole_and_partial_bodies(self) -> None:
        size = len(RFC3501)
        self.assertEqual(
            render(request(b"BODY[]"), Item(), 1, RFC3501),
            b"* 1 FETCH (BODY[] {%d}\r\n" % size + RFC3501 + b")\r\n",
        )
        self.assertEqual(
            render(request(b"BODY.PEEK[]<0.4>"), Item(), 1, RFC3501),
            b"* 1 FETCH (BODY[]<0> {4}\r\nDate)\r\n",
        )
        self.assertEqual(
            render(request(b"BODY.PEEK[]<%d.10>" % (size - 3)), Item(), 1, RFC3501),
            b"* 1 FETCH (BODY[]<%d> {3}\r\nd\r\n)\r\n" % (size - 3),
        )
        self.assertEqual(
            render(request(b"BODY.PEEK[]<%d.10>" % size), Item(), 1, RFC3501),
            b"* 1 FETCH (BODY[]<%d> {0}\r\n)\r\n" % size,
        )

    def test_rfc822_items(self) -> None:
        header_end = RFC3501.index(b"\r\n\r\n") + 4
        self.assertEqual(
            render(request(b"(RFC822.HEADER RFC822.TEXT)"), Item(), 1, RFC3501),
            b"* 1 FETCH (RFC822.HEADER {%d}\r\n" % header_end
            + RFC3501[:header_end]
            + b" RFC822.TEXT {14}\r\nHello\r\nworld\r\n)\r\n",
        )
        self.assertEqual(
            render(request(b"RFC822"), Item(), 1, RFC3501),
            b"* 1 FETCH (RFC822 {%d}\r\n" % len(RFC3501) + RFC3501 + b")\r\n",
        )

    def test_header_fields_echoed_and_from_a_header_block(self) -> None:
        header = RFC3501[: RFC3501.index(b"\r\n\r\n") + 2]  # without the blank line
        fetch = request(b"(UID BODY.PEEK[HEADER.FIELDS (SUBJECT message-id)])")
        self.assertEqual(fetch.needs, "headers")
        wanted = (
            b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
            b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n\r\n"
        )
        answer = b"* 4 FETCH (UID 7 BODY[HEADER.FIELDS (SUBJECT message-id)] {%d}\r\n%s)\r\n" % (
            len(wanted),
            wanted,
        )
        self.assertEqual(render(fetch, Item(), 4, header), answer)
        self.assertEqual(render(fetch, Item(), 4, RFC3501), answer)

    def test_parts_and_missing_part(self) -> None:
        self.assertEqual(
            render(request(b"(BODY[1.1] BODY[9])"), Item(), 1, MULTIPART),
            b"* 1 FETCH (BODY[1.1] {9}\r\n\xc3\xa4h\r\nzwei BODY[9] NIL)\r\n",
        )

    def test_flags_added_after_seen(self) -> None:
        self.assertEqual(
            render(request(b"BODY[TEXT]<0.5>"), Item(), 1, RFC3501, flags=True),
            b"* 1 FETCH (BODY[TEXT]<0> {5}\r\nHello FLAGS (\\Seen $Forwarded))\r\n",
        )

    def test_binary(self) -> None:
        self.assertEqual(
            render(
                request(b"(BINARY.PEEK[2.2] BINARY.SIZE[2.2] BINARY[1.2])"), Item(), 1, MULTIPART
            ),
            b"* 1 FETCH (BINARY[2.2] {5}\r\n%PDF- BINARY.SIZE[2.2] 5"
            b" BINARY[1.2] {10}\r\n<p>\xc3\xa4h</p>)\r\n",
        )
        raw = b"Content-Transfer-Encoding: base64\r\n\r\nAAE=\r\n"
        self.assertEqual(
            render(request(b"BINARY[1]"), Item(), 1, raw),
            b"* 1 FETCH (BINARY[1] ~{2}\r\n\x00\x01)\r\n",
        )
        raw = b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n"
        self.assertRaises(UnknownEncoding, render, request(b"BINARY[1]"), Item(), 1, raw)

    def test_parse_rejects_a_fetch_att_name_without_section(self) -> None:
        self.assertRaises(ParseError, parse_fetch, [Atom("BODY.PEEK")])
        self.assertEqual(parse_fetch(FetchAtt("BODY", "TEXT")).items, (FetchAtt("BODY", "TEXT"),))


class ChunkTests(TestCase):
    def test_a_large_body_is_a_piece_of_its_own(self) -> None:
        raw = b"Subject: big\r\n\r\n" + b"x" * 100_000
        fetch = request(b"(UID RFC822.SIZE BODY.PEEK[])")
        chunks = render_chunks(fetch, Item(size=len(raw)), 9, raw)
        self.assertTrue(any(chunk is raw for chunk in chunks))
        self.assertEqual(
            b"".join(chunks),
            b"* 9 FETCH (UID 7 RFC822.SIZE %d BODY[] {%d}\r\n" % (len(raw), len(raw))
            + raw
            + b")\r\n",
        )
        self.assertEqual(b"".join(chunks), render(fetch, Item(size=len(raw)), 9, raw))

    def test_slices_of_a_large_section_are_views_of_it(self) -> None:
        """Many <origin.count> slices of one large section neither copy it each nor
        compute it again: each is a view of the message's bytes."""
        raw = b"Subject: big\r\n\r\n" + b"x" * 100_000
        items = b" ".join(b"BODY.PEEK[]<%d.60000>" % n for n in range(MAX_SECTIONS))
        chunks = render_chunks(request(b"(" + items + b")"), Item(size=len(raw)), 1, raw)
        views = [chunk for chunk in chunks if isinstance(chunk, memoryview)]
        self.assertEqual(len(views), MAX_SECTIONS)
        self.assertTrue(all(view.obj is raw for view in views))
        self.assertEqual(bytes(views[3]), raw[3:60003])

    def test_too_many_body_sections_are_refused(self) -> None:
        ok = b" ".join(b"BODY.PEEK[]<%d.10>" % n for n in range(MAX_SECTIONS))
        self.assertEqual(len(request(b"(UID " + ok + b" RFC822.SIZE)").items), MAX_SECTIONS + 2)
        for extra in (b"BODY.PEEK[]<99.10>", b"RFC822", b"BODY[1]"):
            with self.subTest(extra):
                with self.assertRaises(ParseError) as raised:
                    request(b"(" + ok + b" " + extra + b")")
                self.assertIn("Too many body sections", str(raised.exception))

    def test_small_answers_join(self) -> None:
        chunks = render_chunks(request(b"(UID RFC822)"), Item(), 1, RFC3501)
        self.assertEqual(
            b"".join(chunks),
            b"* 1 FETCH (UID 7 RFC822 {%d}\r\n" % len(RFC3501) + RFC3501 + b")\r\n",
        )
