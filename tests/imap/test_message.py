"""ENVELOPE, BODYSTRUCTURE and BODY[...] sections of raw messages, compared with RFC 3501's
examples and with what Dovecot answers for the same messages."""

from twisted.trial.unittest import TestCase

from atollon_mail.imap.message import (
    Message,
    bodystructure,
    envelope,
    nstring,
    parse_addresses,
    partial,
    section,
    string,
)

RFC3501 = (
    b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
    b"From: Terry Gray <gray@cac.washington.edu>\r\n"
    b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
    b"To: imap@cac.washington.edu\r\n"
    b"cc: minutes@CNRI.Reston.VA.US,\r\n John Klensin <KLENSIN@MIT.EDU>\r\n"
    b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
    b"Hello\r\nworld\r\n"
)

MULTIPART = (
    b"From: =?utf-8?q?J=C3=B6rg?= <j@example.de>\r\n"
    b'To: friends: a@example.com, "Smith, J" <j@example.com>;, bob\r\n'
    b"Subject: =?utf-8?b?w6Rw?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--outer\r\n"
    b"Content-Type: multipart/alternative; boundary=inner\r\n"
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"\xc3\xa4h\r\n"
    b"zwei\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"<p>=C3=A4h</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b'Content-Disposition: attachment; filename="fw.eml"\r\n'
    b"Content-Language: en, de\r\n"
    b"\r\n"
    b"Subject: inner\r\n"
    b"From: a@example.org\r\n"
    b"Content-Type: multipart/mixed; boundary=x\r\n"
    b"\r\n"
    b"--x\r\n"
    b"\r\n"
    b"one\r\n"
    b"--x\r\n"
    b"Content-Type: application/pdf; name=a.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-ID: <part@x>\r\n"
    b"Content-Description: the report\r\n"
    b"Content-Location: http://example.com/a.pdf\r\n"
    b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
    b"\r\n"
    b"JVBERi0=\r\n"
    b"--x--\r\n"
    b"--outer--\r\n"
    b"epilogue\r\n"
)


class StringTests(TestCase):
    def test_quoted_and_literal(self) -> None:
        self.assertEqual(string(b'a "b" \\c'), b'"a \\"b\\" \\\\c"')
        self.assertEqual(string("ä".encode()), b"{2}\r\n\xc3\xa4")
        self.assertEqual(string(b"a\r\nb"), b"{4}\r\na\r\nb")
        self.assertEqual(nstring(None), b"NIL")
        self.assertEqual(string(b""), b'""')


class EnvelopeTests(TestCase):
    def test_rfc3501_example(self) -> None:
        # RFC 3501 section 8's example, as Dovecot answers it (cc unfolded).
        self.assertEqual(
            envelope(RFC3501),
            b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes"'
            b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
            b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
            b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
            b' ((NIL NIL "imap" "cac.washington.edu"))'
            b' ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU"))'
            b' NIL NIL "<B27397-0100000@cac.washington.edu>")',
        )

    def test_header_block_alone_gives_the_same(self) -> None:
        header = RFC3501[: RFC3501.index(b"\r\n\r\n") + 4]
        self.assertEqual(envelope(header), envelope(RFC3501))
        self.assertEqual(envelope(header[:-2]), envelope(RFC3501))

    def test_missing_headers_are_nil(self) -> None:
        self.assertEqual(
            envelope(b"X-Other: 1\r\n\r\nbody\r\n"), b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
        )
        self.assertEqual(envelope(b""), b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)")
        self.assertEqual(
            envelope(b"\r\nSubject: body\r\n"), b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
        )

    def test_empty_values(self) -> None:
        self.assertEqual(
            envelope(b"Subject:\r\nTo: \r\nFrom: a@b.c\r\n\r\n"),
            b'(NIL "" ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c"))'
            b" NIL NIL NIL NIL NIL)",
        )

    def test_encoded_words_stay_encoded_and_groups(self) -> None:
        self.assertEqual(
            envelope(MULTIPART),
            b'(NIL "=?utf-8?b?w6Rw?="'
            b' (("=?utf-8?q?J=C3=B6rg?=" NIL "j" "example.de"))'
            * 1
            + b' (("=?utf-8?q?J=C3=B6rg?=" NIL "j" "example.de"))'
            b' (("=?utf-8?q?J=C3=B6rg?=" NIL "j" "example.de"))'
            b' ((NIL NIL "friends" NIL)(NIL NIL "a" "example.com")'
            b'("Smith, J" NIL "j" "example.com")'
            b'(NIL NIL NIL NIL)(NIL NIL "bob" "MISSING_DOMAIN")) NIL NIL NIL NIL)',
        )

    def test_sender_reply_to_and_first_of_repeated(self) -> None:
        raw = (
            b"From: a@example.com\r\nSender: s@example.com\r\nReply-To: r@example.com\r\n"
            b"Subject: first\r\nsubject: second\r\nIn-Reply-To: <x@y>\r\n"
            b"BCC: hidden@example.com\r\n\r\n"
        )
        self.assertEqual(
            envelope(raw),
            b'(NIL "first" ((NIL NIL "a" "example.com")) ((NIL NIL "s" "example.com"))'
            b' ((NIL NIL "r" "example.com")) NIL NIL ((NIL NIL "hidden" "example.com"))'
            b' "<x@y>" NIL)',
        )

    def test_eight_bit_header_is_a_literal(self) -> None:
        raw = "Subject: Grüße\r\nFrom: Jörg <j@example.de>\r\n\r\n".encode()
        self.assertEqual(
            envelope(raw),
            b"(NIL {7}\r\nGr\xc3\xbc\xc3\x9fe ((" + b"{5}\r\nJ\xc3\xb6rg"
            b' NIL "j" "example.de")) (({5}\r\nJ\xc3\xb6rg NIL "j" "example.de"))'
            b' (({5}\r\nJ\xc3\xb6rg NIL "j" "example.de")) NIL NIL NIL NIL NIL)',
        )

    def test_folded_subject_and_quotes(self) -> None:
        raw = b'Subject: a "quoted"\r\n\tword\r\nMessage-ID:\r\n <id@x>\r\n\r\n'
        self.assertEqual(
            envelope(raw), b'(NIL "a \\"quoted\\"\tword" NIL NIL NIL NIL NIL NIL NIL "<id@x>")'
        )

    def test_bare_lf_message(self) -> None:
        self.assertEqual(envelope(RFC3501.replace(b"\r\n", b"\n")), envelope(RFC3501))


class AddressTests(TestCase):
    def test_shapes(self) -> None:
        cases = {
            b"a@b.c": [(None, None, b"a", b"b.c")],
            b"  Alice  Example <a@b.c> ": [(b"Alice Example", None, b"a", b"b.c")],
            b'"Smith, J. \\"Q\\"" <j@s.c>': [(b'Smith, J. "Q"', None, b"j", b"s.c")],
            b"John Q. Public <jqp@x.y>": [(b"John Q. Public", None, b"jqp", b"x.y")],
            b"a@b.c (Alice A)": [(b"Alice A", None, b"a", b"b.c")],
            b"<@r1.x,@r2.y:bob@c.d>": [(None, b"@r1.x,@r2.y", b"bob", b"c.d")],
            b'"john doe"@x.y': [(None, None, b"john doe", b"x.y")],
            b"<>": [(None, None, b"MISSING_MAILBOX", b"MISSING_DOMAIN")],
            b"undisclosed-recipients:;": [
                (None, None, b"undisclosed-recipients", None),
                (None, None, None, None),
            ],
            b"a@b.c,, d@e.f": [(None, None, b"a", b"b.c"), (None, None, b"d", b"e.f")],
            b"Name <a@[192.0.2.1]>": [(b"Name", None, b"a", b"[192.0.2.1]")],
            b"=?utf-8?q?J=C3=B6rg?= <j@x>": [(b"=?utf-8?q?J=C3=B6rg?=", None, b"j", b"x")],
            b"g: a@b;, c@d": [
                (None, None, b"g", None),
                (None, None, b"a", b"b"),
                (None, None, None, None),
                (None, None, b"c", b"d"),
            ],
            b"unclosed <a@b": [(b"unclosed", None, b"a", b"b")],
        }
        for value, expected in cases.items():
            with self.subTest(value):
                self.assertEqual(parse_addresses(value), expected)

    def test_envelope_uses_the_general_parser_the_same_way(self) -> None:
        # The fast path and the general parser agree on the common shapes.
        for value in (b"Alice <a@b.c>, b@c.d", b'"Q, R" <q@r.s>'):
            raw = b"To: " + value + b"\r\n\r\n"
            fast = envelope(raw)
            slow = envelope(b"To: (c) " + value + b"\r\n\r\n")
            self.assertEqual(fast, slow)


class BodystructureTests(TestCase):
    def test_single_part(self) -> None:
        # As RFC 3501's example, with Dovecot's default encoding "7bit" and extension data.
        self.assertEqual(
            bodystructure(RFC3501),
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7bit" 14 2 NIL NIL NIL NIL)',
        )
        self.assertEqual(
            bodystructure(RFC3501, extended=False),
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7bit" 14 2)',
        )

    def test_dovecot_defaults(self) -> None:
        # Dovecot's own test messages: a text part without charset gets us-ascii, a broken
        # transfer encoding is 7bit, one language is a list too.
        raw = (
            b"Content-Type: multipart/alternative; boundary=sub1\r\n\r\n"
            b"--sub1\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            b"<p>Hello world</p>\r\n\r\n"
            b"--sub1\r\nContent-Type: text/plain; format=flowed\r\n"
            b"Content-Transfer-Encoding: ?invalid\r\nContent-Language: la\r\n\r\n"
            b"Hello another world\r\n\r\n--sub1--\r\n"
        )
        self.assertEqual(
            bodystructure(raw),
            b'(("text" "html" ("charset" "us-ascii") NIL NIL "8bit" 20 1 NIL NIL NIL NIL)'
            b'("text" "plain" ("format" "flowed" "charset" "us-ascii") NIL NIL "7bit" 21 1'
            b' NIL NIL ("la") NIL) "alternative" ("boundary" "sub1") NIL NIL NIL)',
        )

    def test_rfc2231_continuations_joined(self) -> None:
        raw = (
            b'Content-Type: application/pdf; name*0="long "; name*1="name.pdf"\r\n'
            b"Content-Disposition: attachment;\r\n filename*0*=utf-8''%C3%A4;\r\n"
            b" filename*1*=.pdf; size=12\r\n\r\nx"
        )
        self.assertEqual(
            bodystructure(raw),
            b'("application" "pdf" ("name" "long name.pdf") NIL NIL "7bit" 1 NIL'
            b' ("attachment" ("filename*" "utf-8\'\'%C3%A4.pdf" "size" "12")) NIL NIL)',
        )

    def test_default_type(self) -> None:
        self.assertEqual(
            bodystructure(b"Subject: x\r\n\r\nhi\r\n", extended=False),
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 4 1)',
        )

    def test_nested_multipart_and_message_rfc822(self) -> None:
        inner_envelope = (
            b'(NIL "inner" ((NIL NIL "a" "example.org")) ((NIL NIL "a" "example.org"))'
            b' ((NIL NIL "a" "example.org")) NIL NIL NIL NIL NIL)'
        )
        self.assertEqual(
            bodystructure(MULTIPART),
            b'((("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 9 1 NIL NIL NIL NIL)'
            b'("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" 14 0 NIL NIL NIL NIL)'
            b' "alternative" ("boundary" "inner") NIL NIL NIL)'
            b'("message" "rfc822" NIL NIL NIL "7bit" 332 ' + inner_envelope + b" "
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL)'
            b'("application" "pdf" ("name" "a.pdf") "<part@x>" "the report" "base64" 8'
            b' "Q2hlY2sgSW50ZWdyaXR5IQ==" NIL NIL "http://example.com/a.pdf")'
            b' "mixed" ("boundary" "x") NIL NIL NIL) 16'
            b' NIL ("attachment" ("filename" "fw.eml")) ("en" "de") NIL)'
            b' "mixed" ("boundary" "outer") NIL NIL NIL)',
        )
        self.assertEqual(
            bodystructure(MULTIPART, extended=False),
            b'((("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 9 1)'
            b'("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" 14 0) "alternative")'
            b'("message" "rfc822" NIL NIL NIL "7bit" 332 ' + inner_envelope + b" "
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0)'
            b'("application" "pdf" ("name" "a.pdf") "<part@x>" "the report" "base64" 8)'
            b' "mixed") 16) "mixed")',
        )

    def test_message_rfc822_size_is_the_attached_message(self) -> None:
        message = Message(MULTIPART)
        attached = message.section("2")
        self.assertEqual(len(attached), 332)
        self.assertEqual(attached.count(b"\n"), 16)

    def test_multipart_without_parts_or_boundary(self) -> None:
        raw = b"Content-Type: multipart/mixed\r\n\r\njust text\r\n"
        self.assertEqual(
            bodystructure(raw, extended=False),
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")',
        )

    def test_digest_defaults_to_message_rfc822(self) -> None:
        raw = (
            b"Content-Type: multipart/digest; boundary=d\r\n\r\n"
            b"--d\r\n\r\nSubject: one\r\n\r\nbody\r\n--d--\r\n"
        )
        structure = bodystructure(raw, extended=False)
        self.assertTrue(
            structure.startswith(b'(("message" "rfc822" NIL NIL NIL "7bit" 20 (NIL "one"')
        )

    def test_empty_parts_and_unclosed_multipart(self) -> None:
        raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b\r\n\r\nlast"
        self.assertEqual(
            bodystructure(raw, extended=False),
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 4 0) "mixed")',
        )

    def test_hostile_nesting_stops(self) -> None:
        raw = b"Content-Type: message/rfc822\r\n\r\n" * 200 + b"end"
        self.assertTrue(bodystructure(raw).startswith(b'("message" "rfc822"'))


class SectionTests(TestCase):
    def setUp(self) -> None:
        self.message = Message(MULTIPART)

    def test_whole_header_and_text(self) -> None:
        header_end = MULTIPART.index(b"\r\n\r\n") + 4
        self.assertEqual(self.message.section(""), MULTIPART)
        self.assertEqual(self.message.section("HEADER"), MULTIPART[:header_end])
        self.assertEqual(self.message.section("TEXT"), MULTIPART[header_end:])

    def test_parts(self) -> None:
        section = self.message.section
        self.assertEqual(section("1.1"), b"\xc3\xa4h\r\nzwei")
        self.assertEqual(section("1.2"), b"<p>=C3=A4h</p>")
        self.assertTrue(section("1").startswith(b"--inner\r\n"))
        self.assertTrue(section("1").endswith(b"--inner--"))
        self.assertEqual(
            section("1.1.MIME"),
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        )
        self.assertTrue(section("2").startswith(b"Subject: inner\r\n"))
        self.assertEqual(
            section("2.HEADER"),
            b"Subject: inner\r\nFrom: a@example.org\r\n"
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n",
        )
        self.assertTrue(section("2.TEXT").startswith(b"--x\r\n"))
        self.assertEqual(section("2.1"), b"one")
        self.assertEqual(section("2.2"), b"JVBERi0=")
        self.assertTrue(section("2.2.MIME").startswith(b"Content-Type: application/pdf"))
        self.assertTrue(section("2.MIME").startswith(b"Content-Type: message/rfc822\r\n"))
        self.assertEqual(section("2.HEADER.FIELDS", ("subject",)), b"Subject: inner\r\n\r\n")

    def test_missing_parts(self) -> None:
        for spec in ("3", "1.3", "2.3", "1.1.1", "0"):
            self.assertIsNone(self.message.section(spec), spec)

    def test_single_part_message(self) -> None:
        message = Message(RFC3501)
        self.assertEqual(message.section("1"), b"Hello\r\nworld\r\n")
        self.assertEqual(message.section("TEXT"), b"Hello\r\nworld\r\n")
        self.assertIsNone(message.section("2"))

    def test_header_fields_case_insensitive_in_message_order(self) -> None:
        self.assertEqual(
            section(RFC3501, "HEADER.FIELDS", ("SUBJECT", "cC", "x-none")),
            b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
            b"cc: minutes@CNRI.Reston.VA.US,\r\n John Klensin <KLENSIN@MIT.EDU>\r\n\r\n",
        )
        self.assertEqual(section(RFC3501, "HEADER.FIELDS", ("X-None",)), b"\r\n")

    def test_header_fields_not(self) -> None:
        self.assertEqual(
            section(RFC3501, "HEADER.FIELDS.NOT", ("date", "FROM", "subject", "to", "cc")),
            b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n",
        )

    def test_header_only_message(self) -> None:
        raw = b"Subject: no body\r\n"
        self.assertEqual(section(raw, "HEADER"), raw)
        self.assertEqual(section(raw, "TEXT"), b"")
        self.assertEqual(section(raw, "HEADER.FIELDS", ("subject",)), raw + b"\r\n")

    def test_partial(self) -> None:
        self.assertEqual(partial(b"0123456789", 0, 4), b"0123")
        self.assertEqual(partial(b"0123456789", 8, 4), b"89")
        self.assertEqual(partial(b"0123456789", 10, 4), b"")
        self.assertEqual(partial(b"0123456789", 99, 4), b"")
