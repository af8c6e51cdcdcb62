"""The rspamd client: against a private rspamd on loopback (tests/rspamd.py), and against
small twisted.web servers that answer wrongly, slowly or not at all."""

from __future__ import annotations

import json
import time

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web import resource, server
from zope.interface.verify import verifyObject

from atollon_mail.config import ConfigError, parse_config
from atollon_mail.inbound.rspamd import (
    ACTIONS,
    ADD_HEADER,
    GREYLIST,
    NO_ACTION,
    REJECT,
    REWRITE_SUBJECT,
    SOFT_REJECT,
    LearnResult,
    RspamdClient,
    SpamFilterUnavailable,
    SpamQuery,
    SpamResult,
    build_spam_filter,
    not_scanned,
    parse_check_response,
    parse_statistics,
    query_headers,
)
from atollon_mail.interfaces import ISpamFilter, ISpamLearner
from tests.rspamd import GTUBE, rspamd_version, start_rspamd


def message(subject: str = "Lunch", body: str = "") -> bytes:
    body = body or (
        "Shall we meet for lunch tomorrow at noon in the usual place near the office? "
        "I will bring the quarterly figures and the drafts for the new brochure."
    )
    return (
        "Received: from mx.sender.test ([192.0.2.7]) by mx.acme.test; "
        "Mon, 7 Dec 2026 05:00:00 +0000\r\n"
        "From: Alice <alice@sender.test>\r\n"
        "To: sales@acme.test\r\n"
        f"Subject: {subject}\r\n"
        "Date: Mon, 7 Dec 2026 05:00:00 +0000\r\n"
        f"Message-ID: <{abs(hash((subject, body)))}@sender.test>\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


def query(raw: bytes, **changes) -> SpamQuery:
    fields = dict(
        client_ip="192.0.2.7",
        helo="mx.sender.test",
        envelope_sender="alice@sender.test",
        recipients=("sales@acme.test", "info@acme.test"),
        raw=raw,
        user=None,
        hostname="mx.sender.test",
        queue_id="Q1",
    )
    fields.update(changes)
    return SpamQuery(**fields)


CONFIG = """
[appliance]
hostname = mx.acme.test
"""


class ParsingTests(unittest.TestCase):
    def test_an_answer_becomes_a_result_with_the_heaviest_symbols_first(self):
        body = json.dumps(
            {
                "is_skipped": False,
                "score": 7.2,
                "required_score": 15.0,
                "action": "rewrite subject",
                "subject": "***SPAM*** Hello",
                "symbols": {
                    "MIME_GOOD": {"name": "MIME_GOOD", "score": -0.1},
                    "BAYES_SPAM": {"name": "BAYES_SPAM", "score": 5.1, "options": ["99.9%"]},
                    "R_SPF_FAIL": {"name": "R_SPF_FAIL", "score": 2.2},
                    "ZERO": {"name": "ZERO", "score": 0},
                },
                "messages": {"smtp_message": "Go away"},
            }
        ).encode()
        result = parse_check_response(body)
        self.assertEqual(
            result,
            SpamResult(
                action=REWRITE_SUBJECT,
                score=7.2,
                required_score=15.0,
                symbols=(
                    ("BAYES_SPAM", 5.1),
                    ("R_SPF_FAIL", 2.2),
                    ("ZERO", 0.0),
                    ("MIME_GOOD", -0.1),
                ),
                symbol_options=(("BAYES_SPAM", ("99.9%",)),),
                message="Go away",
                subject="***SPAM*** Hello",
            ),
        )
        self.assertTrue(result.scanned)
        self.assertTrue(result.is_spam)
        self.assertEqual(result.options("BAYES_SPAM"), ("99.9%",))
        self.assertEqual(result.options("ZERO"), ())
        self.assertEqual(
            result.status_header(),
            "Yes, score=7.20 required=15.00 action=rewrite_subject "
            "tests=BAYES_SPAM(5.10),R_SPF_FAIL(2.20),ZERO(0.00),MIME_GOOD(-0.10)",
        )

    def test_every_action_of_rspamd_is_known_and_only_those(self):
        for action in ACTIONS:
            body = json.dumps({"action": action, "score": 1, "required_score": 15}).encode()
            self.assertEqual(parse_check_response(body).action, action)
        self.assertEqual(
            [
                action
                for action in ACTIONS
                if parse_check_response(
                    json.dumps({"action": action, "score": 1, "required_score": 15}).encode()
                ).is_spam
            ],
            [ADD_HEADER, REWRITE_SUBJECT, SOFT_REJECT, REJECT],
        )

    def test_answers_outside_the_protocol_are_refused_with_the_reason(self):
        cases = {
            b"<html>502 Bad Gateway</html>": "not JSON",
            b"[1, 2]": "not a JSON object",
            b'{"action": "delete", "score": 1, "required_score": 15}': "unknown action",
            b'{"score": 1, "required_score": 15}': "unknown action None",
            b'{"action": "reject", "score": "high", "required_score": 15}': "score",
            b'{"action": "reject", "score": 1}': "required_score",
            b'{"action": "reject", "score": true, "required_score": 15}': "score",
            b'{"action": "reject", "score": 1, "required_score": 15, "symbols": []}': "symbols",
            b'{"action": "reject", "score": 1, "required_score": 15, '
            b'"symbols": {"A": {"score": "x"}}}': "the score of A",
        }
        for body, reason in cases.items():
            with self.assertRaises(ValueError) as raised:
                parse_check_response(body)
            self.assertIn(reason, str(raised.exception), body)

    def test_not_scanned_is_no_action_tagged_with_the_reason(self):
        result = not_scanned("rspamd at http://127.0.0.1:1/checkv2: no answer within 10 s")
        self.assertEqual((result.action, result.scanned, result.is_spam), (NO_ACTION, False, False))
        self.assertEqual(
            result.status_header(),
            "No, not scanned (rspamd at http://127.0.0.1:1/checkv2: no answer within 10 s)",
        )

    def test_statistics_count_learns_per_statfile(self):
        statistics = parse_statistics(
            b'{"scanned": 4, "learned": 3, "statfiles": ['
            b'{"symbol": "BAYES_SPAM", "revision": 1}, {"symbol": "BAYES_HAM", "revision": 2}]}'
        )
        self.assertEqual((statistics.scanned, statistics.learned), (4, 3))
        self.assertEqual(statistics.learns("BAYES_HAM"), 2)
        self.assertEqual(statistics.learns("BAYES_SPAM"), 1)
        self.assertEqual(statistics.learns("OTHER"), 0)
        with self.assertRaises(ValueError):
            parse_statistics(b'{"statfiles": [{"revision": 1}]}')

    def test_the_envelope_goes_in_rspamd_headers(self):
        headers = query_headers(query(b"x", user="bob", queue_id="Q9"), password="s3cret")
        self.assertEqual(headers.getRawHeaders(b"From"), [b"alice@sender.test"])
        self.assertEqual(headers.getRawHeaders(b"Rcpt"), [b"sales@acme.test", b"info@acme.test"])
        self.assertEqual(headers.getRawHeaders(b"IP"), [b"192.0.2.7"])
        self.assertEqual(headers.getRawHeaders(b"Helo"), [b"mx.sender.test"])
        self.assertEqual(headers.getRawHeaders(b"Hostname"), [b"mx.sender.test"])
        self.assertEqual(headers.getRawHeaders(b"User"), [b"bob"])
        self.assertEqual(headers.getRawHeaders(b"Queue-Id"), [b"Q9"])
        self.assertEqual(headers.getRawHeaders(b"Password"), [b"s3cret"])
        bare = query_headers(
            query(b"x", envelope_sender="", helo=None, client_ip=None, hostname=None, queue_id=None)
        )
        self.assertEqual(bare.getRawHeaders(b"From"), [b"<>"])  # the null sender
        for absent in (b"IP", b"Helo", b"Hostname", b"User", b"Queue-Id", b"Password"):
            self.assertIsNone(bare.getRawHeaders(absent), absent)


class ConfigTests(unittest.TestCase):
    def test_no_spam_filter_by_default(self):
        config = parse_config(CONFIG)
        self.assertIsNone(config.spam.rspamd_url)
        self.assertEqual(config.spam.timeout, 10.0)
        self.assertEqual(config.spam.on_failure, "accept")
        self.assertIsNone(build_spam_filter(config, reactor))

    def test_the_configured_client(self):
        config = parse_config(
            CONFIG
            + "[spam]\nrspamd_url = http://127.0.0.1:11333/\n"
            + "controller_url = http://127.0.0.1:11334\ncontroller_password = q1\n"
            + "timeout = 3\non_failure = tempfail\n"
        )
        client = build_spam_filter(config, reactor)
        self.assertIsInstance(client, RspamdClient)
        self.assertTrue(verifyObject(ISpamFilter, client))
        self.assertTrue(verifyObject(ISpamLearner, client))  # the web client teaches it
        self.assertEqual(client.url, "http://127.0.0.1:11333")
        self.assertEqual(client.controller_url, "http://127.0.0.1:11334")
        self.assertEqual(
            (client.password, client.timeout, client.on_failure), ("q1", 3.0, "tempfail")
        )
        alone = build_spam_filter(
            parse_config(CONFIG + "[spam]\nrspamd_url = http://127.0.0.1:11334\n"), reactor
        )
        self.assertEqual(alone.controller_url, "http://127.0.0.1:11334")  # it scans too
        self.assertIsNone(alone.password)

    def test_bad_values_name_the_file_section_and_key(self):
        cases = {
            "on_failure = drop": ("on_failure", "must be accept or tempfail"),
            "rspamd_url = 127.0.0.1:11333": ("rspamd_url", "http://"),
            "rspamd_url = http://x\ntimeout = 0": ("timeout", "more than zero"),
            "controller_url = http://127.0.0.1:11334": ("controller_url", "rspamd_url is not"),
            "colour = red": ("colour", "unknown key"),
        }
        for line, (key, problem) in cases.items():
            with self.assertRaises(ConfigError) as raised:
                parse_config(CONFIG + "[spam]\n" + line + "\n", "mail.ini")
            text = str(raised.exception)
            self.assertTrue(text.startswith(f"mail.ini: [spam] {key}: "), text)
            self.assertIn(problem, text)

    def test_on_failure_is_checked_by_the_client_too(self):
        with self.assertRaises(ValueError):
            RspamdClient("http://127.0.0.1:1", reactor, on_failure="maybe")


class _Answer(resource.Resource):
    """Answers every request as told, and keeps what it was sent."""

    isLeaf = True

    def __init__(self, status: int = 200, body: bytes = b"", hang: bool | str = False):
        super().__init__()
        self.status, self.body, self.hang = status, body, hang
        self.requests: list[tuple[str, dict[bytes, list[bytes]], bytes]] = []
        self.arrived = defer.Deferred()
        self.closed: list[server.Request] = []

    def render(self, request):
        if self.hang == "body":  # the headers and a first part of the body, then nothing
            request.notifyFinish().addErrback(lambda _: self.closed.append(request))
            request.setHeader(b"content-length", b"100")
            request.write(b'{"action": ')
            self.arrived.callback(request)
            return server.NOT_DONE_YET
        headers = {
            name.lower(): values for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((request.path.decode(), headers, request.content.read()))
        if not self.arrived.called:
            self.arrived.callback(request)
        if self.hang:
            request.notifyFinish().addErrback(lambda _: self.closed.append(request))
            return server.NOT_DONE_YET
        request.setResponseCode(self.status)
        return self.body


class FakeServerTests(unittest.TestCase):
    """The client against twisted.web resources on loopback: what it sends, and how it
    copes with errors, nonsense and silence."""

    def serve(self, answer: _Answer) -> str:
        port = reactor.listenTCP(0, server.Site(answer), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def test_the_message_and_envelope_are_posted_to_checkv2(self):
        answer = _Answer(
            body=b'{"action": "add header", "score": 6.5, "required_score": 15, '
            b'"symbols": {"A": {"score": 6.5}}}'
        )
        client = RspamdClient(
            self.serve(answer), reactor, controller_url="http://127.0.0.1:1", password="pw"
        )
        raw = message("Hello")
        result = yield client.check(query(raw, user="bob"))
        self.assertEqual(
            result,
            SpamResult(action=ADD_HEADER, score=6.5, required_score=15.0, symbols=(("A", 6.5),)),
        )
        path, headers, body = answer.requests[0]
        self.assertEqual((path, body), ("/checkv2", raw))
        self.assertEqual(headers[b"rcpt"], [b"sales@acme.test", b"info@acme.test"])
        self.assertEqual(headers[b"from"], [b"alice@sender.test"])
        self.assertEqual(headers[b"user"], [b"bob"])
        self.assertEqual(headers[b"content-length"], [str(len(raw)).encode()])
        self.assertNotIn(b"password", headers)  # the controller's, not the scanner's

    @defer.inlineCallbacks
    def test_a_request_logs_nothing_of_its_connection(self):
        # A connection per message: Twisted's client factory would log two lines for each.
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        answer = _Answer(body=b'{"action": "no action", "score": 0, "required_score": 15}')
        client = RspamdClient(self.serve(answer), reactor)
        yield client.check(query(message()))
        yield client.learn(message(), spam=True)
        self.assertEqual(len(answer.requests), 2)
        client_events = [
            event
            for event in events
            if event.get("log_namespace", "").startswith("twisted.web.client")
        ]
        self.assertEqual(client_events, [])

    @defer.inlineCallbacks
    def test_a_host_name_or_an_ipv6_address_in_the_url(self):
        body = b'{"action": "no action", "score": 0, "required_score": 15}'
        answer = _Answer(body=body)
        port = int(self.serve(answer).rsplit(":", 1)[1])
        result = yield RspamdClient(f"http://localhost:{port}", reactor).check(query(b"x"))
        self.assertTrue(result.scanned, result.failure)
        try:
            listening = reactor.listenTCP(0, server.Site(answer), interface="::1")
        except Exception as problem:  # noqa: BLE001 (no IPv6 loopback on this machine)
            raise unittest.SkipTest(f"no IPv6 loopback: {problem}") from None
        self.addCleanup(listening.stopListening)
        url = f"http://[::1]:{listening.getHost().port}"
        result = yield RspamdClient(url, reactor).check(query(b"x"))
        self.assertTrue(result.scanned, result.failure)
        self.assertEqual(len(answer.requests), 2)

    @defer.inlineCallbacks
    def check_both_ways(self, answer: _Answer, reason: str):
        """With accept: not scanned, saying why; with tempfail: SpamFilterUnavailable."""
        url = self.serve(answer)
        accepted = yield RspamdClient(url, reactor, on_failure="accept").check(query(message()))
        self.assertEqual(
            (accepted.scanned, accepted.action, accepted.score), (False, NO_ACTION, 0.0)
        )
        self.assertIn(reason, accepted.failure)
        self.assertIn(f"rspamd at {url}/checkv2", accepted.failure)
        failure = yield self.assertFailure(
            RspamdClient(url, reactor, on_failure="tempfail").check(query(message())),
            SpamFilterUnavailable,
        )
        self.assertIn(reason, str(failure))
        self.assertEqual((failure.smtp_code, failure.enhanced_status), (451, "4.7.1"))

    def test_an_error_status(self):
        return self.check_both_ways(
            _Answer(500, b'{"error": "invalid command", "error_domain": "protocol-error"}'),
            "answered 500 invalid command",
        )

    def test_an_answer_that_is_not_json(self):
        return self.check_both_ways(_Answer(200, b"<html>hello</html>"), "not JSON")

    def test_an_answer_without_an_action(self):
        return self.check_both_ways(_Answer(200, b'{"score": 3}'), "unknown action")

    def test_an_endless_answer_is_cut_off(self):
        return self.check_both_ways(_Answer(200, b" " * (1024 * 1024 + 1)), "over 1048576 bytes")

    @defer.inlineCallbacks
    def test_nobody_listening(self):
        port = reactor.listenTCP(0, server.Site(_Answer()), interface="127.0.0.1")
        url = f"http://127.0.0.1:{port.getHost().port}"
        yield port.stopListening()
        started = time.monotonic()
        result = yield RspamdClient(url, reactor).check(query(message()))
        self.assertFalse(result.scanned)
        self.assertIn("the connection failed", result.failure)
        self.assertLess(time.monotonic() - started, 2)
        yield self.assertFailure(
            RspamdClient(url, reactor, on_failure="tempfail").check(query(message())),
            SpamFilterUnavailable,
        )

    @defer.inlineCallbacks
    def test_a_server_that_never_answers_is_given_up_on_the_clock(self):
        for on_failure in ("accept", "tempfail"):
            answer = _Answer(hang=True)
            clock = task.Clock()
            client = RspamdClient(
                self.serve(answer), reactor, timeout=10, on_failure=on_failure, clock=clock
            )
            outcome: list = []
            client.check(query(message())).addBoth(outcome.append)
            yield answer.arrived  # the request is being served, and will never be answered
            clock.advance(9.9)
            self.assertEqual(outcome, [])
            clock.advance(0.1)
            [result] = outcome
            if on_failure == "accept":
                self.assertFalse(result.scanned)
                self.assertIn("no answer within 10 s", result.failure)
            else:
                self.assertTrue(result.check(SpamFilterUnavailable))
                self.assertIn("no answer within 10 s", str(result.value))
            # The request was cancelled: its connection is closed, the server sees it go.
            while not answer.closed:
                yield task.deferLater(reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def test_an_answer_that_stops_halfway_is_given_up_on_the_clock(self):
        answer = _Answer(hang="body")
        clock = task.Clock()
        client = RspamdClient(self.serve(answer), reactor, timeout=10, clock=clock)
        outcome: list = []
        client.check(query(message())).addBoth(outcome.append)
        yield answer.arrived
        yield task.deferLater(reactor, 0.05, lambda: None)  # the first bytes are read
        self.assertEqual(outcome, [])
        clock.advance(10)
        [result] = outcome
        self.assertFalse(result.scanned)
        self.assertIn("no answer within 10 s", result.failure)
        while not answer.closed:
            yield task.deferLater(reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def test_a_short_real_timeout(self):
        answer = _Answer(hang=True)
        started = time.monotonic()
        result = yield RspamdClient(self.serve(answer), reactor, timeout=0.2).check(
            query(message())
        )
        self.assertLess(time.monotonic() - started, 2)
        self.assertIn("no answer within 0.2 s", result.failure)
        while not answer.closed:
            yield task.deferLater(reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def test_learning_answers(self):
        learned = _Answer(200, b'{"success": true}')
        client = RspamdClient("http://127.0.0.1:1", reactor, controller_url=self.serve(learned))
        self.assertEqual((yield client.learn(b"raw", spam=True)), LearnResult(True))
        self.assertEqual(learned.requests[0][0], "/learnspam")
        self.assertEqual(learned.requests[0][2], b"raw")
        again = _Answer(404, b'{"error": "<x> has been already learned as ham, ignore it"}')
        client = RspamdClient(self.serve(again), reactor, password="pw")
        self.assertEqual(
            (yield client.learn(b"raw", spam=False)),
            LearnResult(False, "<x> has been already learned as ham, ignore it"),
        )
        self.assertEqual(again.requests[0][0], "/learnham")
        self.assertEqual(again.requests[0][1][b"password"], [b"pw"])
        refused = _Answer(403, b'{"error": "Unauthorized"}')
        failure = yield self.assertFailure(
            RspamdClient(self.serve(refused), reactor).learn(b"raw", spam=False),
            SpamFilterUnavailable,
        )
        self.assertIn("controller_password", str(failure))


class RealRspamdTests(unittest.TestCase):
    """One private rspamd for the class (tests/rspamd.py starts it in about half a second)."""

    @classmethod
    def setUpClass(cls):
        cls.rspamd = start_rspamd()

    @classmethod
    def tearDownClass(cls):
        cls.rspamd.stop()

    def client(self, **options) -> RspamdClient:
        options.setdefault("controller_url", self.rspamd.controller_url)
        options.setdefault("password", self.rspamd.password)
        return RspamdClient(self.rspamd.scanner_url, reactor, timeout=10, **options)

    def test_the_installed_version(self):
        self.assertRegex(rspamd_version(), r"^\d+\.\d+")

    @defer.inlineCallbacks
    def test_gtube_is_rejected(self):
        result = yield self.client().check(query(message("Test", f"Body {GTUBE} end")))
        self.assertEqual(result.action, REJECT)
        self.assertTrue(result.scanned)
        self.assertIn("GTUBE", dict(result.symbols))
        self.assertEqual(result.message, "Gtube pattern")
        self.assertGreaterEqual(result.score, result.required_score)

    @defer.inlineCallbacks
    def test_a_plain_message_gets_no_action(self):
        result = yield self.client().check(query(message()))
        self.assertEqual((result.action, result.scanned, result.score), (NO_ACTION, True, 0.0))
        self.assertEqual(result.required_score, 15.0)
        self.assertEqual(result.symbols, ())

    @defer.inlineCallbacks
    def test_each_action_with_its_score_and_symbols(self):
        expected = {
            "4": GREYLIST,
            "6": ADD_HEADER,
            "9": REWRITE_SUBJECT,
            "12": SOFT_REJECT,
            "20": REJECT,
            "-3": NO_ACTION,
        }
        client = self.client()
        for score, action in expected.items():
            result = yield client.check(query(message(f"Offer [test-score {score}]")))
            self.assertEqual(result.action, action, score)
            self.assertEqual(
                result.symbols[0 if float(score) > 0 else -1], ("TEST_SCORE", float(score))
            )
        result = yield client.check(query(message("Offer [test-score 6]")))
        self.assertEqual(result.symbols, (("TEST_SCORE", 6.0), ("TEST_MARKER", 0.5)))
        self.assertEqual(result.score, 6.5)
        rewritten = yield client.check(query(message("Offer [test-score 9]")))
        self.assertEqual(rewritten.subject, "***SPAM*** Offer [test-score 9]")

    @defer.inlineCallbacks
    def test_rspamd_reads_the_envelope_from_the_headers(self):
        result = yield self.client().check(
            query(message("[test-envelope]"), user="bob@acme.test", queue_id="Q42")
        )
        self.assertEqual(
            result.options("TEST_ENVELOPE"),
            (
                "from=alice@sender.test",
                "rcpt=sales@acme.test,info@acme.test",
                "ip=192.0.2.7",
                "helo=mx.sender.test",
                "hostname=mx.sender.test",
                "user=bob@acme.test",
                "qid=Q42",
            ),
        )
        bounce = yield self.client().check(query(message("[test-envelope]"), envelope_sender=""))
        self.assertIn("from=", bounce.options("TEST_ENVELOPE"))

    @defer.inlineCallbacks
    def test_the_controller_scans_too_given_its_password(self):
        client = RspamdClient(self.rspamd.controller_url, reactor, password=self.rspamd.password)
        result = yield client.check(query(message("Test", GTUBE)))
        self.assertEqual(result.action, REJECT)
        without = RspamdClient(self.rspamd.controller_url, reactor, on_failure="tempfail")
        failure = yield self.assertFailure(
            without.check(query(message("Test", GTUBE))), SpamFilterUnavailable
        )
        self.assertIn("answered 401 Unauthorized", str(failure))

    @defer.inlineCallbacks
    def test_learning_raises_the_learn_counts(self):
        self.rspamd.require_learning()
        client = self.client()
        before = yield client.statistics()
        ham_before, spam_before = self.rspamd.learns(spam=False), self.rspamd.learns(spam=True)
        ham = message("Minutes", "The minutes of the board meeting are attached " * 5 + "ham")
        spam = message("Cheap watches", "Replica watches at unbeatable prices buy now " * 5)
        self.assertEqual((yield client.learn(ham, spam=False)), LearnResult(True))
        self.assertEqual(self.rspamd.learns(spam=False), ham_before + 1)
        self.assertEqual(self.rspamd.learns(spam=True), spam_before)
        self.assertEqual((yield client.learn(spam, spam=True)), LearnResult(True))
        self.assertEqual(self.rspamd.learns(spam=True), spam_before + 1)
        after = yield client.statistics()
        self.assertEqual(after.learned, before.learned + 2)
        self.assertEqual(
            sorted(symbol for symbol, _ in after.statfiles), ["BAYES_HAM", "BAYES_SPAM"]
        )
        repeated = yield client.learn(ham, spam=False)
        self.assertFalse(repeated.learned)
        self.assertIn("already learned as ham", repeated.detail)
        tiny = yield client.learn(b"Subject: hi\r\n\r\nhi\r\n", spam=True)
        self.assertFalse(tiny.learned)
        self.assertIn("less tokens than required", tiny.detail)
        self.assertEqual((yield client.statistics()).learned, after.learned)
        self.assertEqual(self.rspamd.learns(spam=False), ham_before + 1)

    @defer.inlineCallbacks
    def test_a_message_learned_as_spam_can_be_learned_as_ham(self):
        # "Not junk" after "Junk": rspamd moves the message from one class to the other.
        self.rspamd.require_learning()
        client = self.client()
        raw = message("Newsletter", "Our monthly newsletter with the latest product news " * 4)
        ham_before, spam_before = self.rspamd.learns(spam=False), self.rspamd.learns(spam=True)
        self.assertTrue((yield client.learn(raw, spam=True)).learned)
        self.assertTrue((yield client.learn(raw, spam=False)).learned)
        self.assertEqual(self.rspamd.learns(spam=False), ham_before + 1)
        self.assertEqual(self.rspamd.learns(spam=True), spam_before)

    @defer.inlineCallbacks
    def test_learning_while_messages_are_scanned(self):
        self.rspamd.require_learning()
        client = self.client()
        ham_before = self.rspamd.learns(spam=False)
        scans = [client.check(query(message(f"Scan {n}", f"Text {n} " * 30))) for n in range(30)]
        learns = [
            client.learn(message(f"Learn {n}", f"Words {n} of a message to learn " * 5), spam=False)
            for n in range(10)
        ]
        results = yield defer.gatherResults(scans + learns)
        self.assertTrue(all(result.scanned for result in results[:30]))
        self.assertEqual(results[30:], [LearnResult(True)] * 10)
        self.assertEqual(self.rspamd.learns(spam=False), ham_before + 10)

    @defer.inlineCallbacks
    def test_a_wrong_controller_password_is_said(self):
        client = self.client(password="wrong")
        failure = yield self.assertFailure(
            client.learn(message(), spam=True), SpamFilterUnavailable
        )
        self.assertIn("answered 401", str(failure))
        self.assertIn("controller_password", str(failure))
        yield self.assertFailure(client.statistics(), SpamFilterUnavailable)


class StoppedRspamdTests(unittest.TestCase):
    """rspamd goes away while messages are being checked (killed, or stopped with SIGTERM):
    every check answers (not scanned, or SpamFilterUnavailable), none waits past the
    timeout, and the checks after it answer at once."""

    TIMEOUT = 3.0

    @defer.inlineCallbacks
    def stop_mid_load(self, on_failure: str, stop: str):
        rspamd = start_rspamd()
        self.addCleanup(rspamd.stop)
        client = RspamdClient(
            rspamd.scanner_url, reactor, timeout=self.TIMEOUT, on_failure=on_failure
        )
        outcomes: list = []

        def record(result):
            outcomes.append(result)

        checks = []
        for number in range(60):
            checked = client.check(query(message(f"Note {number}", f"Body {number} " * 40)))
            checks.append(checked.addCallbacks(record, record))
        while not outcomes:  # the first answers are in, the rest still in flight
            yield task.deferLater(reactor, 0.001, lambda: None)
        getattr(rspamd, stop)()
        stopped = time.monotonic()
        yield defer.gatherResults(checks)
        self.assertLess(time.monotonic() - stopped, self.TIMEOUT + 1)  # none hung
        self.assertEqual(len(outcomes), 60)
        while rspamd.running:  # gone for good: the next checks find nobody listening
            yield task.deferLater(reactor, 0.01, lambda: None)
        asked = time.monotonic()
        later = [client.check(query(message(f"Later {n}"))) for n in range(5)]
        later_outcomes = yield defer.DeferredList(later, consumeErrors=True)
        self.assertLess(time.monotonic() - asked, 1)  # refused at once, no waiting
        return outcomes, [outcome for _, outcome in later_outcomes]

    @defer.inlineCallbacks
    def test_with_accept_every_message_is_answered_scanned_or_tagged(self):
        outcomes, later = yield self.stop_mid_load("accept", "kill")
        for outcome in outcomes + later:
            self.assertIsInstance(outcome, SpamResult)
            self.assertEqual(outcome.action, NO_ACTION)
        scanned = [outcome.scanned for outcome in outcomes]
        self.assertIn(True, scanned)  # answered before the stop
        self.assertIn(False, scanned)  # in flight when rspamd stopped: kept, tagged
        self.assertFalse(any(outcome.scanned for outcome in later))
        for outcome in later:
            self.assertIn("the connection failed", outcome.failure)

    @defer.inlineCallbacks
    def test_with_tempfail_the_unanswered_fail_with_spam_filter_unavailable(self):
        outcomes, later = yield self.stop_mid_load("tempfail", "terminate")
        answered = [outcome for outcome in outcomes if isinstance(outcome, SpamResult)]
        failed = [outcome for outcome in outcomes if not isinstance(outcome, SpamResult)]
        self.assertTrue(answered)
        self.assertTrue(all(outcome.scanned for outcome in answered))
        for outcome in failed + later:  # (a graceful stop may still answer all 60)
            outcome.trap(SpamFilterUnavailable)
            self.assertEqual(
                (outcome.value.smtp_code, outcome.value.enhanced_status), (451, "4.7.1")
            )
        for outcome in later:
            self.assertIn("the connection failed", str(outcome.value))
