"""SRS: rewriting forwarded senders and reversing the bounces that come back."""

from __future__ import annotations

import os
import re
import stat

from twisted.trial import unittest

from atollon_mail.delivery.srs import (
    DEFAULT_MAX_AGE_DAYS,
    SECRET_FILE,
    SRS,
    ExpiredAddress,
    ForgedAddress,
    SRSError,
    is_srs,
    load_or_create_srs_secret,
)

DAY = 86400
NOW = 20_000 * DAY + 3600  # a fixed day, an hour after midnight UTC


class FakeTime:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


class SRSTests(unittest.TestCase):
    def setUp(self):
        self.time = FakeTime()
        self.srs = SRS(b"a secret", clock=self.time)

    def test_srs0_form_and_round_trip(self):
        rewritten = self.srs.forward("someone@elsewhere.test", "acme.test")
        self.assertRegex(
            rewritten, r"^SRS0=[A-Z2-7]{4}=[A-Z2-7]{2}=elsewhere\.test=someone@acme\.test$"
        )
        self.assertEqual(self.srs.reverse(rewritten), "someone@elsewhere.test")

    def test_local_part_keeps_its_case_and_specials(self):
        rewritten = self.srs.forward("John.Doe+news=x@Elsewhere.test", "acme.test")
        self.assertEqual(self.srs.reverse(rewritten), "John.Doe+news=x@Elsewhere.test")

    def test_reverse_ignores_case(self):
        rewritten = self.srs.forward("someone@elsewhere.test", "acme.test")
        self.assertEqual(self.srs.reverse(rewritten.lower()), "someone@elsewhere.test")
        self.assertEqual(self.srs.reverse(rewritten.upper()), "SOMEONE@ELSEWHERE.TEST")

    def test_a_forged_hash_is_refused(self):
        rewritten = self.srs.forward("someone@elsewhere.test", "acme.test")
        good = rewritten.split("=")[1]
        forged = "AAAA" if good != "AAAA" else "BBBB"
        with self.assertRaises(ForgedAddress):
            self.srs.reverse(rewritten.replace(f"={good}=", f"={forged}=", 1))
        with self.assertRaises(ForgedAddress):  # another original sender, same hash
            self.srs.reverse(rewritten.replace("=someone@", "=victim@"))
        with self.assertRaises(ForgedAddress):  # another key
            SRS(b"another secret", clock=self.time).reverse(rewritten)

    def test_a_short_hash_is_refused_whatever_it_matches(self):
        rewritten = self.srs.forward("someone@elsewhere.test", "acme.test")
        good = rewritten.split("=")[1]
        for length in (1, 2, 3):
            with self.assertRaises(ForgedAddress):
                self.srs.reverse(rewritten.replace(f"={good}=", f"={good[:length]}=", 1))

    def test_an_expired_address_is_refused(self):
        rewritten = self.srs.forward("someone@elsewhere.test", "acme.test")
        self.time.now = NOW + DEFAULT_MAX_AGE_DAYS * DAY
        self.assertEqual(self.srs.reverse(rewritten), "someone@elsewhere.test")
        self.time.now = NOW + (DEFAULT_MAX_AGE_DAYS + 1) * DAY
        with self.assertRaises(ExpiredAddress):
            self.srs.reverse(rewritten)

    def test_the_maximum_age_is_configurable(self):
        srs = SRS(b"a secret", max_age_days=3, clock=self.time)
        rewritten = srs.forward("someone@elsewhere.test", "acme.test")
        self.time.now = NOW + 4 * DAY
        with self.assertRaises(ExpiredAddress):
            srs.reverse(rewritten)

    def test_a_timestamp_from_the_future_is_refused(self):
        self.time.now = NOW + 5 * DAY
        rewritten = self.srs.forward("someone@elsewhere.test", "acme.test")
        self.time.now = NOW
        with self.assertRaises(ExpiredAddress):
            self.srs.reverse(rewritten)

    def test_null_sender_is_untouched(self):
        self.assertEqual(self.srs.forward("", "acme.test"), "")
        self.assertEqual(self.srs.forward("<>", "acme.test"), "<>")

    def test_a_sender_in_our_own_domain_is_untouched(self):
        self.assertEqual(self.srs.forward("jane@Acme.test", "acme.test"), "jane@Acme.test")

    def test_srs0_of_another_forwarder_is_rewrapped_as_srs1(self):
        first_hop = SRS(b"their secret", clock=self.time)
        theirs = first_hop.forward("someone@elsewhere.test", "forwarder.test")
        ours = self.srs.forward(theirs, "acme.test")
        opaque = theirs.split("@")[0][len("SRS0") :]  # "=HHHH=TT=elsewhere.test=someone"
        self.assertRegex(
            ours, rf"^SRS1=[A-Z2-7]{{4}}=forwarder\.test={re.escape(opaque)}@acme\.test$"
        )
        # A bounce to us goes back to the first forwarder, who reverses its own part.
        back = self.srs.reverse(ours)
        self.assertEqual(back, theirs)
        self.assertEqual(first_hop.reverse(back), "someone@elsewhere.test")
        with self.assertRaises(ForgedAddress):
            self.srs.reverse(ours.replace("=forwarder.test=", "=attacker.test="))

    def test_srs1_keeps_the_first_hop_through_further_forwarders(self):
        first_hop = SRS(b"first", clock=self.time)
        second_hop = SRS(b"second", clock=self.time)
        srs0 = first_hop.forward("someone@elsewhere.test", "forwarder.test")
        srs1 = second_hop.forward(srs0, "second.test")
        ours = self.srs.forward(srs1, "acme.test")
        self.assertTrue(ours.startswith("SRS1="))
        self.assertTrue(ours.endswith("@acme.test"))
        self.assertEqual(self.srs.reverse(ours), srs0, "straight back to the first hop")

    def test_previous_secrets_still_reverse(self):
        old = SRS(b"old secret", clock=self.time).forward("someone@elsewhere.test", "acme.test")
        rotated = SRS(b"new secret", previous_secrets=(b"old secret",), clock=self.time)
        self.assertEqual(rotated.reverse(old), "someone@elsewhere.test")

    def test_not_srs_addresses(self):
        self.assertTrue(is_srs("SRS0=abcd=AB=x.test=y"))
        self.assertTrue(is_srs("srs1+abcd=x.test==abcd=AB=y.test=z"))
        self.assertFalse(is_srs("srs0"))
        self.assertFalse(is_srs("someone"))
        with self.assertRaises(SRSError):
            self.srs.reverse("someone@acme.test")
        with self.assertRaises(SRSError):
            self.srs.reverse("SRS0=garbage@acme.test")
        with self.assertRaises(SRSError):
            self.srs.forward('"John Doe"@elsewhere.test', "acme.test")

    def test_an_empty_secret_is_refused(self):
        with self.assertRaises(ValueError):
            SRS(b"")


class SecretFileTests(unittest.TestCase):
    def test_a_configured_secret_is_used_as_given(self):
        directory = self.mktemp()
        self.assertEqual(load_or_create_srs_secret("configured", directory), b"configured")
        self.assertFalse(os.path.exists(directory), "nothing written")

    def test_generated_once_mode_0600_and_kept(self):
        directory = os.path.join(self.mktemp(), "data")
        first = load_or_create_srs_secret(None, directory)
        self.assertGreaterEqual(len(first), 32)
        path = os.path.join(directory, SECRET_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(load_or_create_srs_secret(None, directory), first)
        self.assertEqual(load_or_create_srs_secret("", directory), first, "empty: not set")
        other = os.path.join(self.mktemp(), "data")
        self.assertNotEqual(load_or_create_srs_secret(None, other), first)

    def test_an_emptied_file_is_refused_rather_than_used(self):
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, SECRET_FILE), "w"):
            pass
        with self.assertRaises(ValueError) as raised:
            load_or_create_srs_secret(None, directory)
        self.assertIn("is empty", str(raised.exception))
