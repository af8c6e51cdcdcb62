"""Reading and trimming the header section as bytes, and DNS blocklist names."""

from __future__ import annotations

from twisted.trial import unittest

from atollon_mail.inbound.dnsbl import query_name
from atollon_mail.inbound.headers import authserv_id, fields, from_domains, remove_fields

RAW = (
    b"Received: from a\r\n\tby b\r\n"
    b"Authentication-Results: (comment) MX.Acme.Test.; spf=pass\r\n"
    b"From: Alice <alice@Sender.Test>, bob@other.test, alice@sender.test\r\n"
    b"not a field\r\n"
    b" continued\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"From: body@not.header\r\n"
)


class HeaderTests(unittest.TestCase):
    def test_fields_in_order_with_their_places(self):
        found = list(fields(RAW))
        self.assertEqual(
            [field.name for field in found],
            ["received", "authentication-results", "from", "subject"],
        )
        self.assertEqual(found[0].text(), "from a by b")
        self.assertEqual(RAW[found[0].start : found[0].end], b"Received: from a\r\n\tby b\r\n")

    def test_authserv_id(self):
        self.assertEqual(authserv_id(" (comment) MX.Acme.Test.; spf=pass"), "mx.acme.test")
        self.assertEqual(authserv_id("mx.acme.test 1; none"), "mx.acme.test")
        self.assertIsNone(authserv_id("   "))

    def test_from_domains(self):
        self.assertEqual(from_domains(RAW), ("sender.test", "other.test"))
        # the fields read once serve every reader
        self.assertEqual(from_domains(RAW, tuple(fields(RAW))), ("sender.test", "other.test"))
        self.assertEqual(from_domains(b"From: undisclosed\r\n\r\n"), ())
        self.assertEqual(from_domains(b"\r\nFrom: a@b.test\r\n"), ())

    def test_remove_fields_keeps_everything_else_byte_for_byte(self):
        trimmed, removed = remove_fields(RAW, lambda field: field.name == "authentication-results")
        self.assertEqual(removed, 1)
        self.assertEqual(
            trimmed,
            RAW.replace(b"Authentication-Results: (comment) MX.Acme.Test.; spf=pass\r\n", b""),
        )
        self.assertEqual(
            remove_fields(RAW, lambda f: f.name == "subject", tuple(fields(RAW))),
            (RAW.replace(b"Subject: hi\r\n", b""), 1),
        )
        same, removed = remove_fields(RAW, lambda field: False)
        self.assertIs(same, RAW)
        self.assertEqual(removed, 0)

    def test_blocklist_names(self):
        self.assertEqual(query_name("192.0.2.7", "bl.test"), "7.2.0.192.bl.test")
        self.assertEqual(
            query_name("2001:db8::1", "bl.test."),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test",
        )
