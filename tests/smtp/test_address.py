"""The MAIL FROM / RCPT TO argument parser."""

from __future__ import annotations

from twisted.trial import unittest

from atollon_mail.smtp.address import (
    AddressError,
    ArgumentSyntaxError,
    NonAsciiAddressError,
    ParameterError,
    Path,
    PathSyntaxError,
    is_relay_attempt,
    parse_forward_path,
    parse_reverse_path,
)


def rcpt(text, smtputf8=False):
    return parse_forward_path(text, smtputf8=smtputf8)


class ReversePathTests(unittest.TestCase):
    def test_plain_address(self):
        parsed = parse_reverse_path("<user@example.com>")
        self.assertEqual(parsed.path, Path("user", "example.com"))
        self.assertEqual(dict(parsed.params), {})
        self.assertEqual(parsed.path.address, "user@example.com")

    def test_bytes_are_accepted(self):
        self.assertEqual(parse_reverse_path(b"<a@b.example>").path.address, "a@b.example")

    def test_null_reverse_path(self):
        parsed = parse_reverse_path("<>")
        self.assertTrue(parsed.path.is_null)
        self.assertEqual(parsed.path.address, "")

    def test_null_reverse_path_with_parameters(self):
        parsed = parse_reverse_path("<> SIZE=100 BODY=8BITMIME")
        self.assertTrue(parsed.path.is_null)
        self.assertEqual(dict(parsed.params), {"SIZE": "100", "BODY": "8BITMIME"})

    def test_parameter_keywords_are_case_insensitive(self):
        parsed = parse_reverse_path("<a@b.example> size=10 Body=7BIT smtputf8")
        self.assertEqual(dict(parsed.params), {"SIZE": "10", "BODY": "7BIT", "SMTPUTF8": None})

    def test_malformed_parameters(self):
        for text in (
            "<a@b.example> =x",
            "<a@b.example> SIZE=",
            "<a@b.example> -X=1",
            "<a@b.example> X=a=b",
            "<a@b.example> SIZE=1 SIZE=2",
            "<a@b.example> K\u00e9Y=1",
        ):
            with self.assertRaises(ParameterError, msg=text) as caught:
                parse_reverse_path(text)
            self.assertEqual((caught.exception.code, caught.exception.status), (555, "5.5.4"))

    def test_missing_angle_brackets(self):
        for text in ("user@example.com", "", " <a@b.example>"):
            with self.assertRaises(ArgumentSyntaxError, msg=text) as caught:
                parse_reverse_path(text)
            self.assertTrue(caught.exception.reply.startswith("501 5.5.4 "))

    def test_bad_paths(self):
        for text in (
            "<user@example.com",
            "<user>",
            "<@example.com>",
            "<user@>",
            "<user@@example.com>",
            "<user..x@example.com>",
            "<.user@example.com>",
            "<user.@example.com>",
            "<user@-example.com>",
            "<user@example-.com>",
            "<user@exa_mple.com>",
            "<user@example..com>",
            "<us er@example.com>",
            '<"unterminated@example.com>',
            "<user@example.com>junk",
            "<user@[300.1.1.1]>",
            "<user@[IPv6:zz::1]>",
            "<user@[1.2.3]>",
            "<a@b\x00.example>",
        ):
            with self.assertRaises(PathSyntaxError, msg=text) as caught:
                parse_reverse_path(text)
            self.assertTrue(caught.exception.reply.startswith("501 5.1.3 "), text)

    def test_invalid_utf8_bytes(self):
        with self.assertRaises(AddressError):
            parse_reverse_path(b"<\xff@example.com>")

    def test_quoted_local_part(self):
        path = parse_reverse_path('<"john \\"jd\\" doe"@example.com>').path
        self.assertEqual(path.local_part, 'john "jd" doe')
        self.assertTrue(path.quoted)
        self.assertEqual(path.address, '"john \\"jd\\" doe"@example.com')

    def test_quoted_local_part_that_is_a_dot_atom_prints_plain(self):
        path = parse_reverse_path('<"john"@example.com>').path
        self.assertEqual(path.address, "john@example.com")

    def test_address_literals(self):
        self.assertEqual(parse_reverse_path("<u@[192.0.2.1]>").path.domain, "[192.0.2.1]")
        self.assertTrue(parse_reverse_path("<u@[IPv6:2001:db8::1]>").path.is_address_literal)
        self.assertTrue(parse_reverse_path("<u@[x-tag:stuff]>").path.is_address_literal)

    def test_source_route_is_recognised(self):
        path = parse_reverse_path("<@a.example,@b.example:user@d.example>").path
        self.assertEqual(path.source_route, ("a.example", "b.example"))
        self.assertEqual(path.address, "user@d.example")

    def test_utf8_needs_smtputf8_on_the_same_line(self):
        with self.assertRaises(NonAsciiAddressError) as caught:
            parse_reverse_path("<j\u00f6rg@example.com>")
        self.assertTrue(caught.exception.reply.startswith("553 5.6.7 "))
        path = parse_reverse_path("<j\u00f6rg@b\u00fccher.example> SMTPUTF8").path
        self.assertEqual((path.local_part, path.domain), ("j\u00f6rg", "b\u00fccher.example"))
        self.assertFalse(path.is_ascii)

    def test_utf8_bytes_decode(self):
        parsed = parse_reverse_path("<j\u00f6rg@example.com> SMTPUTF8".encode())
        self.assertEqual(parsed.path.local_part, "j\u00f6rg")


class LengthLimitTests(unittest.TestCase):
    def test_local_part_of_64_octets_is_allowed(self):
        self.assertEqual(len(rcpt(f"<{'a' * 64}@example.com>").path.local_part), 64)

    def test_local_part_of_65_octets_is_refused(self):
        with self.assertRaises(PathSyntaxError):
            rcpt(f"<{'a' * 65}@example.com>")

    def test_srs_local_parts_may_be_longer(self):
        srs = "SRS0=HHHH=TT=" + "d" * 60 + ".example=" + "u" * 40
        self.assertEqual(rcpt(f"<{srs}@example.com>").path.local_part, srs)
        with self.assertRaises(PathSyntaxError):
            rcpt(f"<SRS0={'x' * 200}@example.com>")

    def test_local_part_is_counted_in_octets(self):
        with self.assertRaises(PathSyntaxError):
            rcpt("<" + "\u00e9" * 33 + "@example.com>", smtputf8=True)

    def test_domain_label_of_64_octets_is_refused(self):
        with self.assertRaises(PathSyntaxError):
            rcpt(f"<a@{'b' * 64}.example>")

    def test_domain_over_255_octets_is_refused(self):
        domain = ".".join(["d" * 60] * 5)  # 304 octets
        with self.assertRaises(PathSyntaxError):
            rcpt(f"<a@{domain}>")

    def test_path_over_256_octets_is_refused(self):
        domain = ".".join(["d" * 60] * 4)  # 243 octets: fine alone
        self.assertEqual(rcpt(f"<a@{domain}>").path.domain, domain)
        with self.assertRaises(PathSyntaxError):
            rcpt(f"<{'a' * 20}@{domain}>")


class ForwardPathTests(unittest.TestCase):
    def test_null_path_is_refused(self):
        with self.assertRaises(PathSyntaxError):
            rcpt("<>")

    def test_postmaster_without_domain(self):
        path = rcpt("<Postmaster>").path
        self.assertEqual((path.local_part, path.domain), ("Postmaster", ""))

    def test_other_bare_local_part_is_refused(self):
        with self.assertRaises(PathSyntaxError):
            rcpt("<alice>")

    def test_utf8_follows_the_transaction(self):
        with self.assertRaises(NonAsciiAddressError):
            rcpt("<j\u00f6rg@example.com>")
        self.assertEqual(
            rcpt("<j\u00f6rg@example.com>", smtputf8=True).path.local_part, "j\u00f6rg"
        )

    def test_parameters_are_returned(self):
        self.assertEqual(dict(rcpt("<a@b.example> NOTIFY=NEVER").params), {"NOTIFY": "NEVER"})


class RelayAttemptTests(unittest.TestCase):
    def test_disguised_relays(self):
        for text in (
            "<user%other.example@ours.example>",
            '<"user@other.example"@ours.example>',
            "<user@other.example@ours.example>",
            "<@ours.example:user@other.example>",
            "<other.example!user@ours.example>",
            '<"other!user"@ours.example>',
            '<"user%other"@ours.example>',
        ):
            try:
                path = rcpt(text).path
            except PathSyntaxError:
                continue  # an unquoted second @ is not even syntax
            self.assertTrue(is_relay_attempt(path), text)

    def test_plain_local_addresses_are_not_relay_attempts(self):
        for text in (
            "<user@ours.example>",
            "<first.last+tag@ours.example>",
            '<"a b"@ours.example>',
        ):
            self.assertFalse(is_relay_attempt(rcpt(text).path), text)

    def test_unquoted_second_at_is_a_syntax_error(self):
        with self.assertRaises(PathSyntaxError):
            rcpt("<user@other.example@ours.example>")
