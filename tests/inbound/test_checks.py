"""The inbound checks' decisions, each on both store backends (the store knows our
domains): DMARC policies and their configured actions, our own domains forged, trusted
forwarders, DNS blocklists and the built-in score, and a spam filter's answers (a small
object with the spam filter's one method; the rspamd client has its own tests)."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from atollon_mail.config import parse_config
from atollon_mail.inbound import rspamd
from atollon_mail.inbound.checks import InboundChecks
from atollon_mail.inbound.resolver import inbound_resolver
from atollon_mail.inbound.rspamd import SpamQuery
from atollon_mail.interfaces import IInboundChecks, ISpamFilter
from atollon_mail.smtp.address import Path
from atollon_mail.smtp.session import Envelope, Session
from tests import builders
from tests.inbound import fixtures
from tests.inbound.fixtures import (
    FORWARDER_IP,
    HOSTNAME,
    LISTED_IP,
    OUR_IP,
    SENDER_IP,
    STRANGER_IP,
)
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin


def SpamResult(  # noqa: N802 - builds the rspamd client's SpamResult
    action: str,
    score: float = 0.0,
    required_score: float = 15.0,
    symbols: tuple = (),
    scanned: bool = True,
) -> rspamd.SpamResult:
    return rspamd.SpamResult(
        action=action,
        score=score,
        required_score=required_score,
        symbols=symbols,
        scanned=scanned,
    )


@implementer(ISpamFilter)
class SpamFilter:
    """Answers every request with `result` (or fails), and keeps the requests."""

    def __init__(self, result: SpamResult | None = None, fails: bool = False):
        self.result = result or SpamResult("no action")
        self.fails = fails
        self.requests: list[SpamQuery] = []

    def check(self, request):
        self.requests.append(request)
        if self.fails:
            return defer.fail(ConnectionRefusedError("filter down"))
        return defer.succeed(self.result)

    def learn(self, raw, spam):
        return defer.succeed(None)


def path(address: str) -> Path:
    local, _, domain = address.rpartition("@")
    return Path(local, domain)


class ChecksTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(self.store)  # acme.test, jane@acme.test
        self.dns = fixtures.start_zones(self, reactor)
        self.workers = builders.started_workers(self)

    def checks(self, inbound: str = "", spam_filter=None) -> InboundChecks:
        config = parse_config(
            f"[appliance]\nhostname = {HOSTNAME}\n"
            f"[delivery]\nnameservers = 127.0.0.1:{self.dns.port}\n"
            f"[inbound]\n{inbound}"
        )
        checks = InboundChecks(
            config.inbound,
            HOSTNAME,
            inbound_resolver(config),
            self.workers,
            self.store,
            reactor,
            spam_filter=spam_filter,
        )
        verifyObject(IInboundChecks, checks)
        return checks

    def check(
        self,
        checks: InboundChecks,
        raw: bytes,
        client_ip: str = SENDER_IP,
        helo: str = "mx.client.test",
        sender: str = "bounces@sender.test",
        recipients=("jane@acme.test",),
    ) -> defer.Deferred:
        session = Session("smtp", peer=client_ip, helo=helo, esmtp=True)
        envelope = Envelope(
            sender=path(sender) if sender else Path("", ""),
            paths=[path(address) for address in recipients],
            recipients=list(recipients),
        )
        return checks.check(session, envelope, fixtures.received(raw, helo, client_ip))

    # --- authentication ---

    @defer.inlineCallbacks
    def test_a_signed_message_is_accepted_with_its_results_on_top(self):
        decision = yield self.check(self.checks(), fixtures.signed(fixtures.message()))
        self.assertIsNone(decision.refusal)
        verdict = decision.verdict
        self.assertFalse(verdict.junk)
        self.assertIn("dkim=pass", verdict.authentication)
        self.assertIn("dmarc=pass", verdict.authentication)
        self.assertIn("signed by sender.test", verdict.notes)
        stored = decision.prepared(b"Received: ...\r\n\r\nbody\r\n")
        self.assertTrue(stored.startswith(f"Authentication-Results: {HOSTNAME};\r\n\t".encode()))
        self.assertIn(b"\r\nX-Spam-Status: No, score=0.0 required=5.0 tests=none\r\n", stored)

    @defer.inlineCallbacks
    def test_a_forged_from_of_a_reject_domain_is_refused(self):
        decision = yield self.check(
            self.checks(),
            fixtures.message("service@bank.test"),
            client_ip=STRANGER_IP,
            sender="x@client.test",
        )
        self.assertIsNone(decision.verdict)
        self.assertEqual((decision.refusal.code, decision.refusal.status), (550, "5.7.1"))
        self.assertIn("bank.test publishes DMARC p=reject", decision.refusal.text)

    @defer.inlineCallbacks
    def test_the_reject_action_is_configurable(self):
        raw = fixtures.message("service@bank.test")
        decision = yield self.check(
            self.checks("dmarc_reject = junk\n"), raw, client_ip=STRANGER_IP
        )
        self.assertIsNone(decision.refusal)
        self.assertTrue(decision.verdict.junk)
        self.assertIn(
            "filed as junk: bank.test publishes DMARC p=reject and the message is not "
            "authenticated by it",
            decision.verdict.notes,
        )
        decision = yield self.check(self.checks("dmarc_reject = tag\n"), raw, client_ip=STRANGER_IP)
        self.assertIsNone(decision.refusal)
        self.assertIn("dmarc=fail", decision.verdict.authentication)
        self.assertIn("DMARC_FAIL(2)", decision.verdict.spam_symbols)

    @defer.inlineCallbacks
    def test_quarantine_goes_to_junk_unless_only_tagged(self):
        raw = fixtures.message("offers@shop.test")
        decision = yield self.check(self.checks(), raw, client_ip=STRANGER_IP)
        self.assertTrue(decision.verdict.junk)
        decision = yield self.check(
            self.checks("dmarc_quarantine = tag\n"), raw, client_ip=STRANGER_IP
        )
        self.assertFalse(decision.verdict.junk)

    @defer.inlineCallbacks
    def test_policy_none_is_only_told(self):
        raw = fixtures.message("hello@relaxed.test")
        decision = yield self.check(self.checks(), raw, client_ip=STRANGER_IP)
        self.assertIsNone(decision.refusal)
        self.assertFalse(decision.verdict.junk)
        self.assertIn("dmarc=fail", decision.verdict.authentication)

    @defer.inlineCallbacks
    def test_our_own_domain_from_outside_is_refused_unless_authenticated(self):
        checks = self.checks()
        forged = fixtures.message("Jane <jane@acme.test>")
        decision = yield self.check(checks, forged, client_ip=STRANGER_IP)
        self.assertEqual((decision.refusal.code, decision.refusal.status), (550, "5.7.1"))
        self.assertIn("acme.test is a domain of this server", decision.refusal.text)
        # Signed with our own key, or sent from an address our SPF names: accepted.
        signed = fixtures.signed(forged, "acme.test", "atollon", name="acme")
        decision = yield self.check(checks, signed, client_ip=STRANGER_IP)
        self.assertIsNone(decision.refusal)
        self.assertIn("signed by acme.test", decision.verdict.notes)
        decision = yield self.check(checks, forged, client_ip=OUR_IP, sender="jane@acme.test")
        self.assertIsNone(decision.refusal)
        # The configured action applies to it as to p=reject.
        decision = yield self.check(
            self.checks("dmarc_reject = junk\n"), forged, client_ip=STRANGER_IP
        )
        self.assertTrue(decision.verdict.junk)

    @defer.inlineCallbacks
    def test_our_own_domain_unverifiable_now_is_a_temporary_refusal(self):
        self.dns.fail("atollon._domainkey.acme.test", "SERVFAIL")
        signed = fixtures.signed(fixtures.message("jane@acme.test"), "acme.test", "atollon", "acme")
        decision = yield self.check(self.checks(), signed, client_ip=STRANGER_IP)
        self.assertEqual((decision.refusal.code, decision.refusal.status), (451, "4.4.3"))

    @defer.inlineCallbacks
    def test_results_claiming_our_name_are_removed_others_kept(self):
        raw = fixtures.signed(fixtures.message()).replace(
            b"Subject:",
            b"Authentication-Results: mx.ACME.test; dmarc=pass header.from=bank.test\r\n"
            b"Authentication-Results: mx.partner.test; spf=pass\r\n"
            b"X-Spam-Status: No, score=-100\r\n"
            b"Subject:",
        )
        decision = yield self.check(self.checks(), raw)
        stored = decision.prepared(fixtures.received(raw))
        self.assertNotIn(b"header.from=bank.test", stored)
        self.assertNotIn(b"score=-100", stored)
        self.assertIn(b"Authentication-Results: mx.partner.test; spf=pass\r\n", stored)
        self.assertEqual(stored.count(f"Authentication-Results: {HOSTNAME};".encode()), 1)
        self.assertEqual(stored.count(b"X-Spam-Status:"), 1)
        # What was signed is still there: the signature still verifies (checked before).
        self.assertIn("dkim=pass", decision.verdict.authentication)

    @defer.inlineCallbacks
    def test_nothing_removed_means_the_message_is_stored_as_it_came(self):
        decision = yield self.check(self.checks(), fixtures.message())
        self.assertIsNone(decision.message)

    # --- trusted forwarders ---

    @defer.inlineCallbacks
    def test_a_trusted_forwarder_by_network(self):
        checks = self.checks("trusted_forwarders = 192.0.2.16/28\n")
        raw = fixtures.message()  # its SPF fails from the forwarder's address
        decision = yield self.check(
            checks, raw, client_ip=FORWARDER_IP, helo="mx.partner.test", sender="a@sender.test"
        )
        self.assertIsNone(decision.refusal)  # p=reject, but a trusted forwarder is not refused
        verdict = decision.verdict
        self.assertTrue(verdict.junk)
        self.assertIn("forwarded by mx.partner.test, trusted", verdict.notes)
        self.assertIn("not counted: forwarded by mx.partner.test, trusted", verdict.authentication)

    @defer.inlineCallbacks
    def test_a_trusted_forwarder_by_name_with_its_arc_seal(self):
        checks = self.checks("trusted_forwarders = mx.partner.test\n")
        raw = fixtures.arc_sealed(fixtures.message(), "dmarc=pass header.from=sender.test")
        decision = yield self.check(
            checks, raw, client_ip=FORWARDER_IP, helo="forwarder", sender="a@sender.test"
        )
        verdict = decision.verdict
        self.assertFalse(verdict.junk)
        self.assertIn("dmarc=pass (forwarded by mx.partner.test, trusted", verdict.authentication)
        # HELO_NOT_FQDN is not held against a trusted forwarder.
        self.assertEqual(verdict.spam_symbols, ())
        # Another address is not the forwarder, whatever it says in HELO.
        decision = yield self.check(
            checks, raw, client_ip=STRANGER_IP, helo="mx.partner.test", sender="a@sender.test"
        )
        self.assertEqual(decision.refusal.code, 550)

    @defer.inlineCallbacks
    def test_a_forwarder_trusted_for_one_domain_only(self):
        checks = self.checks(
            "trusted_forwarders.other.test = 192.0.2.20\n"
            "trusted_forwarders.acme.test = 10.0.0.0/8\n"
        )
        raw = fixtures.message()
        decision = yield self.check(checks, raw, client_ip=FORWARDER_IP, sender="a@sender.test")
        self.assertEqual(decision.refusal.code, 550)
        checks = self.checks("trusted_forwarders.acme.test = 192.0.2.20\n")
        decision = yield self.check(checks, raw, client_ip=FORWARDER_IP, sender="a@sender.test")
        self.assertIsNone(decision.refusal)

    # --- the built-in score ---

    @defer.inlineCallbacks
    def test_a_listed_client_goes_to_junk(self):
        checks = self.checks("dnsbl_zones = bl.test\n")
        raw = fixtures.signed(fixtures.message())
        decision = yield self.check(checks, raw, client_ip=LISTED_IP, sender="x@client.test")
        verdict = decision.verdict
        self.assertTrue(verdict.junk)
        self.assertEqual(verdict.spam_symbols, ("DNSBL:bl.test(5)",))
        self.assertEqual((verdict.spam_score, verdict.spam_threshold), (5.0, 5.0))
        self.assertIn("the sending server is listed by bl.test", verdict.notes)
        self.assertIn(
            b"X-Spam-Status: Yes, score=5.0 required=5.0 tests=DNSBL:bl.test",
            decision.headers,
        )
        # The list's own error code (127.255.255.x) lists nobody.
        decision = yield self.check(checks, raw, client_ip=STRANGER_IP, sender="x@client.test")
        self.assertFalse(decision.verdict.junk)
        self.assertEqual(self.dns.query_count("7.100.51.198.bl.test", "A"), 1)

    @defer.inlineCallbacks
    def test_cheap_heuristics_add_up(self):
        recipients = tuple(f"r{n}@acme.test" for n in range(21))
        raw = fixtures.signed(fixtures.message())
        decision = yield self.check(self.checks(), raw, helo="localhost", recipients=recipients)
        verdict = decision.verdict
        self.assertEqual(verdict.spam_symbols, ("HELO_NOT_FQDN(2)", "MANY_RECIPIENTS(2)"))
        self.assertFalse(verdict.junk)
        decision = yield self.check(
            self.checks("junk_score = 4\n"), raw, helo="localhost", recipients=recipients
        )
        self.assertTrue(decision.verdict.junk)

    @defer.inlineCallbacks
    def test_our_domain_as_envelope_sender_from_outside_scores(self):
        decision = yield self.check(
            self.checks(), fixtures.signed(fixtures.message()), sender="jane@acme.test"
        )
        self.assertIn("FORGED_OWN_DOMAIN(6)", decision.verdict.spam_symbols)
        self.assertTrue(decision.verdict.junk)

    # --- a spam filter ---

    @defer.inlineCallbacks
    def test_the_spam_filter_is_asked_about_the_message(self):
        spam = SpamFilter()
        raw = fixtures.signed(fixtures.message())
        yield self.check(self.checks(spam_filter=spam), raw, recipients=("jane@acme.test",))
        (request,) = spam.requests
        self.assertEqual(
            (request.client_ip, request.helo, request.envelope_sender, request.recipients),
            (SENDER_IP, "mx.client.test", "bounces@sender.test", ("jane@acme.test",)),
        )
        # No verified reverse name of the client is known: rspamd is not told one.
        self.assertEqual((request.user, request.hostname), (None, None))
        self.assertTrue(request.raw.endswith(raw))

    @defer.inlineCallbacks
    def test_spam_filter_actions(self):
        raw = fixtures.signed(fixtures.message())
        answers = {
            "reject": (550, "5.7.1"),
            "soft reject": (451, "4.7.1"),
            "greylist": (451, "4.7.1"),
        }
        for action, expected in answers.items():
            checks = self.checks(spam_filter=SpamFilter(SpamResult(action, 20.0)))
            decision = yield self.check(checks, raw)
            self.assertEqual((decision.refusal.code, decision.refusal.status), expected, action)
        for action in ("add header", "rewrite subject"):
            result = SpamResult(
                action,
                7.5,
                15.0,
                (("BAYES_SPAM", 5.1), ("R_DKIM_ALLOW", -0.2), ("MISSING_TO", 2.0)),
            )
            checks = self.checks(spam_filter=SpamFilter(result))
            decision = yield self.check(checks, raw)
            verdict = decision.verdict
            self.assertTrue(verdict.junk, action)
            # rspamd's required_score (15) is where it rejects, not where Junk begins:
            # the verdict names no junk threshold rather than a wrong one.
            self.assertEqual((verdict.spam_score, verdict.spam_threshold), (7.5, None))
            self.assertIn(
                f"filed as junk: the spam filter says {action} at score 7.5", verdict.notes
            )
            self.assertEqual(
                verdict.spam_symbols, ("BAYES_SPAM(5.1)", "MISSING_TO(2)", "R_DKIM_ALLOW(-0.2)")
            )
            self.assertEqual(verdict.spam_action, action)
            self.assertIn(
                b"X-Spam-Status: Yes, score=7.5 required=15.0 "
                b"tests=BAYES_SPAM,MISSING_TO,R_DKIM_ALLOW\r\n",
                decision.headers,
            )
        checks = self.checks(spam_filter=SpamFilter(SpamResult("no action", 1.0)))
        decision = yield self.check(checks, raw)
        self.assertFalse(decision.verdict.junk)
        self.assertIn(b"X-Spam-Status: No, score=1.0", decision.headers)

    @defer.inlineCallbacks
    def test_a_message_the_filter_did_not_scan_is_tagged(self):
        spam = SpamFilter(SpamResult("no action", scanned=False))
        decision = yield self.check(self.checks(spam_filter=spam), fixtures.message())
        verdict = decision.verdict
        self.assertFalse(verdict.scanned)
        self.assertIsNone(verdict.spam_score)
        self.assertIn("not scanned for spam", verdict.notes)
        self.assertNotIn(b"X-Spam-Status", decision.headers)

    @defer.inlineCallbacks
    def test_a_failing_filter_is_a_temporary_refusal(self):
        checks = self.checks(spam_filter=SpamFilter(fails=True))
        decision = yield self.check(checks, fixtures.message())
        self.assertEqual((decision.refusal.code, decision.refusal.status), (451, "4.7.1"))
        self.flushLoggedErrors(ConnectionRefusedError)

    @defer.inlineCallbacks
    def test_an_unavailable_filter_is_a_temporary_refusal_without_a_traceback(self):
        # The client said why (a warning per message); an error logged here too would put
        # a traceback in the log for every message while rspamd is down.
        unavailable = rspamd.SpamFilterUnavailable("rspamd at http://127.0.0.1:1: refused")
        spam = SpamFilter()
        spam.check = lambda request: defer.fail(unavailable)
        decision = yield self.check(self.checks(spam_filter=spam), fixtures.message())
        self.assertEqual((decision.refusal.code, decision.refusal.status), (451, "4.7.1"))
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_with_a_spam_filter_the_blocklists_are_its_business(self):
        checks = self.checks("dnsbl_zones = bl.test\n", spam_filter=SpamFilter())
        decision = yield self.check(
            checks, fixtures.signed(fixtures.message()), client_ip=LISTED_IP
        )
        self.assertFalse(decision.verdict.junk)
        self.assertEqual(self.dns.query_count(kind="A", name="99.113.0.203.bl.test"), 0)

    @defer.inlineCallbacks
    def test_dmarc_reject_comes_before_the_filters_answer(self):
        checks = self.checks(spam_filter=SpamFilter(SpamResult("soft reject")))
        decision = yield self.check(
            checks, fixtures.message("service@bank.test"), client_ip=STRANGER_IP
        )
        self.assertEqual(decision.refusal.code, 550)

    def test_the_fake_filter_provides_the_interface(self):
        verifyObject(ISpamFilter, SpamFilter())


class SqliteChecksTests(ChecksTests, SqliteStoreMixin, unittest.TestCase):
    pass


class PostgresChecksTests(ChecksTests, PostgresStoreMixin, unittest.TestCase):
    pass
