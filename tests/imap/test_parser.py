"""The IMAP command parser: tags, atoms, strings, literals (synchronizing and LITERAL+),
lists, fetch attributes with sections and partials, sequence sets, and malformed input."""

from twisted.trial.unittest import TestCase

from atollon_mail.imap.parser import (
    Atom,
    Command,
    FetchAtt,
    ParseError,
    in_sequence_set,
    literal_marker,
    merge_ranges,
    parse_command,
    parse_sequence_set,
    sequence_numbers,
)


def parse(line: bytes) -> Command:
    return parse_command([line])


class CommandTests(TestCase):
    def test_simple(self) -> None:
        self.assertEqual(parse(b"a1 noop"), Command("a1", "NOOP", [], False))
        self.assertEqual(parse(b"A.2 CAPABILITY").tag, "A.2")

    def test_uid_commands(self) -> None:
        command = parse(b"7 uid fetch 1:* (FLAGS)")
        self.assertEqual((command.name, command.uid), ("FETCH", True))
        self.assertEqual(command.args, [Atom("1:*"), [Atom("FLAGS")]])
        self.assertEqual(parse(b"8 UID EXPUNGE 3:4").args, [Atom("3:4")])

    def test_atoms_and_strings(self) -> None:
        command = parse(b'a LOGIN bob "p\\"a\\\\ss"')
        self.assertEqual(command.args, [Atom("bob"), b'p"a\\ss'])
        self.assertIsInstance(command.args[0], Atom)
        self.assertNotIsInstance(command.args[1], str)

    def test_list_patterns_and_brackets(self) -> None:
        command = parse(b'a LIST "" %/CRM*')
        self.assertEqual(command.args, [b"", Atom("%/CRM*")])
        self.assertEqual(parse(b"a SELECT foo]").args, [Atom("foo]")])

    def test_flags(self) -> None:
        command = parse(b"a STORE 1,3 +FLAGS.SILENT (\\Seen $Forwarded)")
        self.assertEqual(
            command.args, [Atom("1,3"), Atom("+FLAGS.SILENT"), [Atom("\\Seen"), Atom("$Forwarded")]]
        )

    def test_nested_lists_without_space_after_a_list(self) -> None:
        command = parse(b"a SEARCH OR (SEEN)(FLAGGED) (UNSEEN (DELETED))")
        self.assertEqual(
            command.args,
            [Atom("OR"), [Atom("SEEN")], [Atom("FLAGGED")], [Atom("UNSEEN"), [Atom("DELETED")]]],
        )

    def test_extra_spaces_are_tolerated(self) -> None:
        self.assertEqual(parse(b"a  LOGIN  bob   x").args, [Atom("bob"), Atom("x")])

    def test_empty_list_and_trailing_space(self) -> None:
        self.assertEqual(parse(b"a STORE 1 FLAGS () ").args, [Atom("1"), Atom("FLAGS"), []])

    def test_eight_bit_quoted_string(self) -> None:
        command = parse('a SEARCH CHARSET UTF-8 SUBJECT "Žluť"'.encode())
        self.assertEqual(command.args[-1], "Žluť".encode())


class LiteralTests(TestCase):
    def test_marker(self) -> None:
        self.assertEqual(literal_marker(b"a LOGIN {3}"), (3, True))
        self.assertEqual(literal_marker(b"a APPEND INBOX {1200+}"), (1200, False))
        self.assertIsNone(literal_marker(b"a LOGIN bob pass"))
        self.assertIsNone(literal_marker(b'a LOGIN "{3}"'))
        self.assertIsNone(literal_marker(b"a LOGIN {x}"))
        self.assertIsNone(literal_marker(b"a LOGIN {12345678901}"))

    def test_literals(self) -> None:
        command = parse_command([b"a LOGIN {3}", b"b\r\n", b" {5+}", b'p"s)(', b""])
        self.assertEqual(command.args, [b"b\r\n", b'p"s)('])

    def test_literal_in_a_list_and_empty(self) -> None:
        command = parse_command([b"a FETCH 1 (BODY[HEADER.FIELDS ({7}", b"Subject", b")])"])
        self.assertEqual(command.args[1], [FetchAtt("BODY", "HEADER.FIELDS", ("Subject",))])
        self.assertEqual(parse_command([b"a LOGIN {0}", b"", b" x"]).args, [b"", Atom("x")])

    def test_append(self) -> None:
        message = b"Subject: hi\r\n\r\nbody\r\n"
        command = parse_command(
            [
                b'a APPEND Sent (\\Seen) "07-Dec-2026 10:00:00 +0000" {%d+}' % len(message),
                message,
                b"",
            ]
        )
        self.assertEqual(
            command.args,
            [Atom("Sent"), [Atom("\\Seen")], b"07-Dec-2026 10:00:00 +0000", message],
        )

    def test_bad_literals(self) -> None:
        for pieces in (
            [b"a LOGIN {3}"],  # no octets
            [b"a LOGIN {3}", b"ab", b" x"],  # size differs
            [b"a LOGIN {3} x", b"abc", b""],  # marker not at the end of its line
            [b"a LOGIN x", b"abc", b""],  # octets without a marker
            [b"a LOGIN {3}", b"abc"],  # no line after the literal
        ):
            self.assertRaises(ParseError, parse_command, pieces)


class FetchAttTests(TestCase):
    def items(self, text: bytes) -> list:
        return parse(b"a FETCH 1 (" + text + b")").args[1]

    def test_sections(self) -> None:
        self.assertEqual(
            self.items(b"BODY[] body.peek[1.2.mime] BINARY[2] BINARY.SIZE[3] BODY[TEXT]<10.20>"),
            [
                FetchAtt("BODY", ""),
                FetchAtt("BODY.PEEK", "1.2.MIME"),
                FetchAtt("BINARY", "2"),
                FetchAtt("BINARY.SIZE", "3"),
                FetchAtt("BODY", "TEXT", (), (10, 20)),
            ],
        )

    def test_header_fields(self) -> None:
        self.assertEqual(
            self.items(b'BODY.PEEK[header.fields.not (Subject "X-Mailer")]<0.100> UID'),
            [
                FetchAtt("BODY.PEEK", "HEADER.FIELDS.NOT", ("Subject", "X-Mailer"), (0, 100)),
                Atom("UID"),
            ],
        )
        self.assertEqual(
            parse(b"a FETCH 1 BODY[1.HEADER.FIELDS (From)]").args[1],
            FetchAtt("BODY", "1.HEADER.FIELDS", ("From",)),
        )

    def test_bad_sections(self) -> None:
        for text in (
            b"BODY[0]",
            b"BODY[1.0]",
            b"BODY[MIME]",
            b"BODY[1..2]",
            b"BODY[FOO]",
            b"BODY[HEADER.FIELDS]",
            b"BODY[HEADER.FIELDS ()]",
            b"BODY[HEADER.FIELDS (A:B)]",
            b"BODY[TEXT",
            b"BODY[]<0.0>",
            b"BODY[]<1>",
            b"BODY[]<a.1>",
            b"BINARY.SIZE[1]<0.10>",
        ):
            with self.subTest(text):
                self.assertRaises(ParseError, parse, b"a FETCH 1 (" + text + b")")


class MalformedTests(TestCase):
    def test_errors_carry_the_tag(self) -> None:
        cases = {
            b"": None,
            b"   ": None,
            b"* OK": None,
            b"+ go": None,
            b"a{1 NOOP": None,
            b"a": "a",
            b"a ": "a",
            b"a FROB": "a",
            b"a UID NOOP": "a",
            b"a UID": "a",
            b"a NOOP x": "a",
            b"a LOGIN bob": "a",
            b'a LOGIN "bob': "a",
            b'a LOGIN "b\\ob" x': "a",
            b"a FETCH 1 (UID": "a",
            b"a FETCH 1 (UID )": "a",
            b"a FETCH 1 UID)": "a",
            b"a LOGIN b\xc3\xa9 x": "a",
            b"a LOGIN bob\x01 x": "a",
        }
        for line, tag in cases.items():
            with self.subTest(line):
                error = self.assertRaises(ParseError, parse, line)
                self.assertEqual(error.tag, tag)
                self.assertTrue(str(error))

    def test_no_pieces(self) -> None:
        self.assertRaises(ParseError, parse_command, [])


class SequenceSetTests(TestCase):
    def test_ranges(self) -> None:
        self.assertEqual(parse_sequence_set("1:3,*,9:5", 20), [(1, 3), (20, 20), (5, 9)])
        self.assertEqual(parse_sequence_set("*:4", 2), [(2, 4)])
        self.assertEqual(parse_sequence_set("1:*", 0), [(0, 1)])

    def test_numbers(self) -> None:
        ranges = parse_sequence_set("5:3,1,4,10:*", 11)
        self.assertEqual(list(sequence_numbers(ranges, 10)), [1, 3, 4, 5, 10])
        merged = merge_ranges(ranges)
        self.assertEqual(merged, [(1, 1), (3, 5), (10, 11)])
        for number in range(13):
            self.assertEqual(in_sequence_set(merged, number), number in (1, 3, 4, 5, 10, 11))
        self.assertEqual(merge_ranges(parse_sequence_set(",".join(["1:*"] * 9000), 7)), [(1, 7)])

    def test_bad(self) -> None:
        for text in (
            "",
            "0",
            "1:0",
            "1,",
            ",1",
            "a",
            "1:2:3",
            "1 2",
            "99999999999",
            "-1",
            "00000000001",
            "1" * 5000,
            "1:" + "9" * 5000,
        ):
            with self.subTest(text):
                self.assertRaises(ParseError, parse_sequence_set, text, 10)
