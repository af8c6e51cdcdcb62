"""Random and mangled input: the parser raises nothing but ParseError, and a broken
message still has an ENVELOPE, a BODYSTRUCTURE and sections (a client must never see
the connection fail over one bad message)."""

import datetime
import random

import attrs
from twisted.trial.unittest import TestCase

from atollon_mail.imap.message import Message, envelope
from atollon_mail.imap.parser import MAX_NESTING, ParseError, literal_marker, parse_command
from atollon_mail.imap.search import BadCharset, parse_search

from .test_message import MULTIPART, RFC3501

ALPHABET = b' ()[]<>{}"\\*%:,.+-~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz\r\n\x00\xc3'
WORDS = (
    b"FETCH", b"UID", b"BODY[", b"BODY.PEEK[", b"HEADER.FIELDS", b"(", b")", b"]", b"<0.5>",
    b"{3}", b"{2+}", b'"', b"SEARCH", b"OR", b"NOT", b"1:*", b" ", b"TEXT", b"1.2.MIME",
)  # fmt: skip
INSERTS = (
    b"\r\n", b"--outer", b"--inner--", b":", b'"', b"<", b"(", b"=?", b"\n\n", b"\x00",
    b"Content-Type: multipart/x; boundary=q\r\n", b"Content-Type: message/rfc822\r\n",
)  # fmt: skip


@attrs.frozen
class _Item:
    uid: int = 1
    modseq: int = 1
    flags: tuple[str, ...] = ()
    size: int = 100
    internaldate: datetime.datetime = datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)


class RandomInputTests(TestCase):
    def test_parser_raises_only_parse_errors(self) -> None:
        chance = random.Random(16)
        for _ in range(5000):
            if chance.random() < 0.5:
                line = bytes(chance.choice(ALPHABET) for _ in range(chance.randint(0, 30)))
            else:
                line = b"a " + b"".join(chance.choice(WORDS) for _ in range(chance.randint(0, 10)))
            pieces = [line]
            marker = literal_marker(line)
            if marker is not None and chance.random() < 0.8:
                pieces += [b"x" * marker[0], b")"]
            try:
                parse_command(pieces)
            except ParseError:
                pass

    def test_hostile_nesting_and_numbers_are_parse_errors(self) -> None:
        """Nothing a line can hold raises but ParseError (RecursionError or ValueError
        would escape dataReceived)."""
        deep = b"(" * 5000
        for line in (
            b"a1 ID " + deep,
            b"a1 ID " + deep + b")" * 5000,
            b"a1 FETCH 1 " + deep,
            b"a1 SEARCH " + deep + b"ALL" + b")" * 5000,
            b"a1 FETCH 1 BODY[]<" + b"9" * 5000 + b".1>",
        ):
            with self.subTest(line[:30]):
                self.assertRaises(ParseError, parse_command, [line])
        nested = b"(" * MAX_NESTING + b")" * MAX_NESTING
        self.assertEqual(len(parse_command([b"a1 ID " + nested]).args), 1)
        self.assertRaises(ParseError, parse_command, [b"a1 ID (" + nested + b")"])
        for text in (b"NOT " * 5000 + b"ALL", b"OR ALL " * 5000 + b"ALL"):
            with self.subTest(text[:20]):
                tokens = parse_command([b"a1 SEARCH " + text]).args
                self.assertRaises(ParseError, parse_search, tokens)
        program = parse_search(parse_command([b"a1 SEARCH " + b"NOT " * 99 + b"ALL"]).args)
        self.assertFalse(program.matches(None, 1, None))

    def test_a_charset_that_is_no_text_encoding_is_refused(self) -> None:
        for charset in (b"rot13", b"base64", b"zlib", b"hex", b"nope"):
            with self.subTest(charset):
                tokens = parse_command([b"a1 SEARCH CHARSET " + charset + b' SUBJECT "x"']).args
                self.assertRaises(BadCharset, parse_search, tokens[2:], tokens[1])
        raw = b"Subject: x\r\nContent-Type: text/plain; charset=rot13\r\n\r\nuryyb\r\n"
        program = parse_search(parse_command([b'a1 SEARCH BODY "uryyb"']).args)
        self.assertTrue(program.matches(_Item(), 1, raw))

    def test_mangled_messages_render(self) -> None:
        chance = random.Random(16)
        for _ in range(1000):
            octets = bytearray(chance.choice((MULTIPART, RFC3501)))
            for _ in range(chance.randint(1, 10)):
                position = chance.randrange(len(octets))
                if chance.random() < 0.4:
                    del octets[position : position + chance.randint(1, 40)]
                elif chance.random() < 0.7:
                    octets[position:position] = chance.choice(INSERTS)
                else:
                    octets[position:position] = bytes([chance.randrange(256)])
            raw = bytes(octets)
            message = Message(raw)
            self.assertTrue(message.bodystructure().startswith(b"("))
            self.assertTrue(message.bodystructure(False).startswith(b"("))
            self.assertTrue(envelope(raw).startswith(b"("))
            self.assertEqual(message.section(""), raw)
            for spec in ("1", "1.1", "2.HEADER", "2.1.MIME", "TEXT", "3"):
                message.section(spec, ("subject",))
