"""End to end: port 25 of the appliance under twistd asking a private rspamd, over real
SMTP sessions; the Junk folder and its buttons over HTTP; rspamd down before and during
a load, with nothing lost either way.

rspamd (tests/rspamd.py) runs on loopback with its own configuration: a Subject holding
`[test-score N]` scores N (+0.5), GTUBE is rejected. DNS is the loopback server with the
inbound fixtures' zones: sender.test's SPF allows 127.0.0.1 and its DKIM key is published,
so mail from alice@sender.test passes SPF, DKIM and DMARC and only the filter decides.
"""

from __future__ import annotations

import itertools
import re
import smtplib
import threading
import time

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from atollon_mail.store import filing
from tests.builders import commands_succeed, mailbox_commands, started_appliance
from tests.inbound import fixtures
from tests.rspamd import GTUBE, rspamd_binary, start_rspamd
from tests.web.support import Browser

ADDRESS = "jane@acme.test"
PASSWORD = "jane-password"
SENDER = "bounces@sender.test"
HELO = "mx.client.test"
# Enough words for rspamd to learn from (it wants at least 11 tokens).
BODY = (
    "The minutes of the board meeting are attached, with the figures for the quarter "
    "and the plan for the next one. Please read them before Thursday.\r\n"
)
_numbers = itertools.count(1)


def message(subject: str, body: str = BODY) -> tuple[str, bytes]:
    """(its Message-ID, a message from alice@sender.test to jane with this subject)."""
    message_id = f"<{next(_numbers)}.{time.monotonic_ns()}@sender.test>"
    raw = (
        f"From: Alice <alice@sender.test>\r\nTo: {ADDRESS}\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n\r\n{body}"
    ).encode()
    return message_id, raw


def send(port: int, raw: bytes) -> tuple[int, str]:
    """One SMTP session to port 25: the reply to the end of DATA (blocking)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname=HELO, timeout=120) as client:
        client.ehlo(HELO)
        code, reply = client.mail(SENDER)
        assert code == 250, (code, reply)
        code, reply = client.rcpt(ADDRESS)
        assert code == 250, (code, reply)
        code, reply = client.data(raw)
        return code, reply.decode()


class InboundTestCase(unittest.TestCase):
    """A private rspamd, the loopback DNS, and the appliance (jane@acme.test) asking the
    rspamd per `spam` ([spam] settings besides its URL)."""

    timeout = 300

    @defer.inlineCallbacks
    def setUp(self):
        rspamd_binary()  # SkipTest with the reason when rspamd is not installed
        self.rspamd = yield threads.deferToThread(start_rspamd)
        self.addCleanup(self.rspamd.stop)
        self.dns = fixtures.start_zones(self, reactor)

    @defer.inlineCallbacks
    def start_appliance(self, spam: str = "timeout = 60\n"):
        self.appliance = yield started_appliance(
            self,
            extra="greet_pause = 0\n",
            delivery_config=(
                f"[delivery]\nnameservers = 127.0.0.1:{self.dns.port}\n"
                f"[spam]\nrspamd_url = {self.rspamd.scanner_url}\n"
                f"controller_url = {self.rspamd.controller_url}\n"
                f"controller_password = {self.rspamd.password}\n{spam}"
            ),
        )
        yield threads.deferToThread(
            commands_succeed,
            self,
            self.appliance,
            mailbox_commands(ADDRESS, "jane"),
            PASSWORD + "\n",
        )

    def send(self, raw: bytes):
        return threads.deferToThread(send, self.appliance.smtp_port, raw)

    def filings(self, folder: str | None = None):
        return self.appliance.run_sync(filing.list_filings, ADDRESS, 1000, folder=folder)

    def count_messages(self) -> int:
        return self.appliance.run_sync(filing.count_messages)

    @defer.inlineCallbacks
    def wait_for(self, predicate, what: str, seconds: float = 60):
        """Poll `predicate` (blocking, in a thread) until it is true; its value."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = yield threads.deferToThread(predicate)
            if result:
                return result
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what}\n{self.appliance.log()[-3000:]}")

    @defer.inlineCallbacks
    def logged_in(self):
        browser = Browser(self.appliance.web_port)
        response = yield browser.login("jane", PASSWORD)
        self.assertEqual(response.status, 303, response.text[:500])
        return browser

    def message_page(self, browser, message_id: int):
        return browser.get(f"/mail/message?address={ADDRESS}&id={message_id}")

    @defer.inlineCallbacks
    def move(self, browser, message_id: int, to: str):
        """The page's Junk / Not junk button: POST /mail/move with its CSRF token."""
        page = yield self.message_page(browser, message_id)
        self.assertEqual(page.status, 200)
        button = "Not junk" if to == "inbox" else "Junk"
        self.assertIn(f">{button}</button>", page.text)
        form = {"address": ADDRESS, "id": str(message_id), "to": to, "csrf_token": page.csrf()}
        response = yield browser.post("/mail/move", form)
        self.assertEqual(response.status, 303, response.text[:500])
        self.assertIn(f"moved={to}", response.header("location"))
        self.assertNotIn("learned=0", response.header("location"))
        return response


class SpamFilterTests(InboundTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        yield self.start_appliance()

    @defer.inlineCallbacks
    def test_gtube_is_refused_with_550_and_nothing_is_stored(self):
        _, raw = message("Test", f"Body {GTUBE} end\r\n")
        code, reply = yield self.send(fixtures.signed(raw))
        self.assertEqual((code, reply), (550, "5.7.1 Message rejected as spam"))
        self.assertEqual(self.count_messages(), 0)
        self.assertEqual(self.filings(), [])

    @defer.inlineCallbacks
    def test_add_header_lands_in_junk_and_not_junk_teaches_ham(self):
        self.rspamd.require_learning()
        message_id, raw = message("Quarterly figures [test-score 7]")
        code, reply = yield self.send(fixtures.signed(raw))
        self.assertEqual(code, 250, reply)
        self.assertEqual(self.filings("inbox"), [])
        (junk,) = self.filings("junk")
        self.assertEqual(junk.message.message_id, message_id)
        verdict = junk.message.verdict
        self.assertTrue(verdict.scanned)
        self.assertTrue(verdict.junk)
        self.assertEqual(verdict.spam_action, "add header")
        self.assertEqual(verdict.spam_score, 7.5)
        self.assertEqual(verdict.spam_symbols, ("TEST_SCORE(7)", "TEST_MARKER(0.5)"))
        self.assertIn("dkim=pass header.d=sender.test", verdict.authentication)
        stored = self.appliance.run_sync(filing.message_raw, junk.message.id)
        self.assertIn(b"\r\nX-Spam-Status: Yes, score=7.5 ", stored)
        self.assertIn(b"tests=TEST_SCORE,TEST_MARKER\r\n", stored)

        jane = yield self.logged_in()
        page = yield self.message_page(jane, junk.message.id)
        self.assertEqual(page.status, 200)
        self.assertIn("In Junk: what the checks found", page.text)
        score = re.search(r'<p id="spam-score">([^<]*)</p>', page.text).group(1)
        # rspamd's required score (15) is where it rejects: not shown as where Junk begins.
        self.assertEqual(score, "Spam score 7.5, mainly: TEST_SCORE(7), TEST_MARKER(0.5).")
        self.assertIn("<li>signed by sender.test</li>", page.text)
        self.assertIn(
            "<li>filed as junk: the spam filter says add header at score 7.5</li>", page.text
        )
        box = yield jane.get(f"/mail/box?address={ADDRESS}&folder=junk")
        self.assertIn("Quarterly figures [test-score 7]", box.text)

        ham_before = self.rspamd.learns(spam=False)
        spam_before = self.rspamd.learns(spam=True)
        yield self.move(jane, junk.message.id, "inbox")
        self.assertEqual(self.filings("junk"), [])
        (inbox,) = self.filings("inbox")
        self.assertEqual(inbox.message.id, junk.message.id)
        self.assertEqual(self.rspamd.learns(spam=False), ham_before + 1)
        self.assertEqual(self.rspamd.learns(spam=True), spam_before)

    @defer.inlineCallbacks
    def test_junk_on_an_inbox_message_teaches_spam(self):
        self.rspamd.require_learning()
        _, raw = message("Lunch on Friday")
        code, reply = yield self.send(fixtures.signed(raw))
        self.assertEqual(code, 250, reply)
        self.assertEqual(self.filings("junk"), [])
        (inbox,) = self.filings("inbox")
        self.assertFalse(inbox.message.verdict.junk)
        self.assertEqual(inbox.message.verdict.spam_action, "no action")

        jane = yield self.logged_in()
        ham_before = self.rspamd.learns(spam=False)
        spam_before = self.rspamd.learns(spam=True)
        yield self.move(jane, inbox.message.id, "junk")
        self.assertEqual(self.filings("inbox"), [])
        self.assertEqual([f.message.id for f in self.filings("junk")], [inbox.message.id])
        self.assertEqual(self.rspamd.learns(spam=True), spam_before + 1)
        self.assertEqual(self.rspamd.learns(spam=False), ham_before)


class FilterDownTests(InboundTestCase):
    """rspamd stopped before anything is sent."""

    @defer.inlineCallbacks
    def stopped(self, on_failure: str):
        yield self.start_appliance(f"timeout = 30\non_failure = {on_failure}\n")
        yield threads.deferToThread(self.rspamd.stop)
        self.assertFalse(self.rspamd.running)

    @defer.inlineCallbacks
    def test_with_accept_the_message_is_stored_tagged_not_scanned(self):
        yield self.stopped("accept")
        message_id, raw = message("Figures while the filter is down")
        code, reply = yield self.send(fixtures.signed(raw))
        self.assertEqual(code, 250, reply)
        (inbox,) = self.filings("inbox")
        self.assertEqual(inbox.message.message_id, message_id)
        verdict = inbox.message.verdict
        self.assertFalse(verdict.scanned)
        self.assertFalse(verdict.junk)
        self.assertIn("not scanned for spam", verdict.notes)
        self.assertIn("dkim=pass header.d=sender.test", verdict.authentication)
        jane = yield self.logged_in()
        page = yield self.message_page(jane, inbox.message.id)
        self.assertIn('<p id="not-scanned">Not scanned:', page.text)
        self.assertNotIn('id="spam-score"', page.text)

    @defer.inlineCallbacks
    def test_with_tempfail_the_reply_is_451_and_nothing_is_stored(self):
        yield self.stopped("tempfail")
        _, raw = message("Figures while the filter is down")
        code, reply = yield self.send(fixtures.signed(raw))
        self.assertEqual(code, 451)
        self.assertTrue(reply.startswith("4.7.1 "), reply)
        self.assertEqual(self.count_messages(), 0)


class Load:
    """`sessions` SMTP sessions in threads sending `per_session` messages each; rspamd is
    killed by the sender whose reply is the `kill_after`-th. Every outcome is recorded:
    (Message-ID, reply code, reply text), or (Message-ID, None, what went wrong)."""

    def __init__(self, port: int, rspamd, sessions: int, per_session: int, kill_after: int):
        self.port, self.rspamd = port, rspamd
        self.sessions, self.per_session, self.kill_after = sessions, per_session, kill_after
        self.outcomes: list[tuple[str, int | None, str]] = []
        self.killed_at: int | None = None
        self.lock = threading.Lock()

    def record(self, message_id: str, code: int | None, text: str) -> None:
        with self.lock:
            self.outcomes.append((message_id, code, text))
            if len(self.outcomes) == self.kill_after:
                self.rspamd.kill()
                self.killed_at = len(self.outcomes)

    def session(self, number: int) -> None:
        # At most per_session (20) refusals in a row: the server closes a session only
        # after more than 20 errors, so every message gets its own reply here.
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname=HELO, timeout=120) as client:
            client.ehlo(HELO)
            for index in range(self.per_session):
                message_id, raw = message(f"Load {number}.{index}")
                try:
                    client.sendmail(SENDER, [ADDRESS], raw)
                except smtplib.SMTPResponseException as refused:
                    self.record(message_id, refused.smtp_code, refused.smtp_error.decode())
                except smtplib.SMTPRecipientsRefused as refused:
                    code, text = refused.recipients[ADDRESS]
                    self.record(message_id, code, text.decode())
                except (OSError, smtplib.SMTPException) as problem:
                    self.record(message_id, None, repr(problem))
                    raise
                else:
                    self.record(message_id, 250, "")

    def run(self) -> defer.Deferred:
        return defer.gatherResults(
            [threads.deferToThread(self.session, number) for number in range(self.sessions)],
            consumeErrors=True,
        )


class StoppedMidLoadTests(InboundTestCase):
    """rspamd killed while 200 messages arrive over 10 parallel sessions: each message is
    stored, or was refused with a 4xx the sender retries; none was lost after its 250,
    none got a 5xx."""

    SESSIONS = 10
    PER_SESSION = 20
    KILL_AFTER = 50

    @defer.inlineCallbacks
    def load(self, on_failure: str):
        yield self.start_appliance(f"timeout = 30\non_failure = {on_failure}\n")
        load = Load(
            self.appliance.smtp_port, self.rspamd, self.SESSIONS, self.PER_SESSION, self.KILL_AFTER
        )
        yield load.run()
        total = self.SESSIONS * self.PER_SESSION
        self.assertEqual(len(load.outcomes), total)
        self.assertEqual(load.killed_at, self.KILL_AFTER)
        self.assertFalse(self.rspamd.running)
        problems = [outcome for outcome in load.outcomes if outcome[1] is None]
        self.assertEqual(problems, [])
        permanent = [outcome for outcome in load.outcomes if outcome[1] >= 500]
        self.assertEqual(permanent, [])
        accepted = {message_id for message_id, code, _ in load.outcomes if code == 250}
        deferred = [outcome for outcome in load.outcomes if outcome[1] != 250]
        for _, code, text in deferred:
            self.assertEqual((code, text[:6]), (451, "4.7.1 "))
        filings = yield threads.deferToThread(self.filings)
        stored = [f.message.message_id for f in filings]
        self.assertEqual(len(stored), len(set(stored)), "a message stored twice")
        # Every 250 is in the store, and nothing else is: a 451 left nothing behind
        # that the sender's retry would duplicate.
        self.assertEqual(set(stored), accepted)
        self.assertEqual(self.count_messages(), len(accepted))
        # Each message the filter could not scan is one warning line, not a traceback,
        # and no connection to rspamd is logged.
        log = self.appliance.log()
        self.assertIn("Spam filter unavailable", log)
        for needle in ("Traceback", "_HTTP11ClientFactory"):
            self.assertFalse(
                needle in log, f"{needle} in the log: {log[log.find(needle) - 300 :][:1500]}"
            )
        return load, filings

    @defer.inlineCallbacks
    def test_with_accept_every_message_is_stored(self):
        load, filings = yield self.load("accept")
        self.assertEqual(len(filings), self.SESSIONS * self.PER_SESSION)
        scanned = [f.message.verdict.scanned for f in filings]
        # Those before the kill were scanned; at most one per session was in flight when
        # it came, and all after it were stored unscanned.
        self.assertGreaterEqual(scanned.count(True), self.KILL_AFTER)
        self.assertGreaterEqual(
            scanned.count(False), len(filings) - self.KILL_AFTER - self.SESSIONS
        )

    @defer.inlineCallbacks
    def test_with_tempfail_every_message_is_stored_or_deferred(self):
        load, filings = yield self.load("tempfail")
        self.assertTrue(all(f.message.verdict.scanned for f in filings))
        self.assertGreaterEqual(len(filings), self.KILL_AFTER)
        self.assertLessEqual(len(filings), self.KILL_AFTER + self.SESSIONS)
