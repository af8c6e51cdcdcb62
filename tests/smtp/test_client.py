"""The outbound SMTP client.

Most tests run deliver() on a MemoryReactorClock whose connection is wired, in memory, to
tests.remote_mta (Link); a few feed the client scripted replies byte by byte (Scripted);
the TLS and AUTH tests use real loopback sockets.
"""

from __future__ import annotations

import inspect
import os

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from atollon_mail.smtp import client
from atollon_mail.smtp.client import (
    QUIT_GRACE,
    DotPending,
    Envelope,
    Extensions,
    RecipientOutcome,
    SessionFailure,
    deliver,
    dot_stuff,
    normalize_line_endings,
    parse_ehlo,
)
from tests.remote_mta import DROP, Delayed, RemoteMTA, self_signed_tls_options

HELO = "out.example.net"
MESSAGE = b"From: a@example.net\r\nTo: b@remote.test\r\nSubject: hi\r\n\r\nHello.\r\n"


def envelope(*recipients: str, sender: str = "a@example.net", raw: bytes = MESSAGE, key=None):
    return Envelope(sender, recipients or ("b@remote.test",), raw, key)


class RecordingTransport(StringTransport):
    """A StringTransport that keeps each write apart."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.writes: list[bytes] = []

    def write(self, data):
        self.writes.append(data)
        super().write(data)


@implementer(ITLSTransport)
class FakeTLSTransport(RecordingTransport):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tls_starts: list[object] = []

    def startTLS(self, contextFactory, normal=True):
        self.tls_starts.append(contextFactory)


class Link:
    """deliver() on a MemoryReactorClock, its connection wired in memory to a RemoteMTA."""

    def __init__(self, envelopes, mta: RemoteMTA | None = None, connect=True, **options):
        self.reactor = MemoryReactorClock()
        self.mta = mta if mta is not None else RemoteMTA()
        self.mta._clock = self.reactor
        self.results: list = []
        self.sessions = 0
        deferred = deliver(self.reactor, "192.0.2.25", 25, envelopes, helo_name=HELO, **options)
        deferred.addBoth(self.results.append)
        if connect:
            self.connect()

    def connect(self) -> None:
        host, port, factory, _, _ = self.reactor.tcpClients[self.sessions]
        self.sessions += 1
        self.client = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.server = self.mta.buildProtocol(None)
        self.client_transport = RecordingTransport()
        self.server_transport = StringTransport()
        self.server.makeConnection(self.server_transport)
        self.client.makeConnection(self.client_transport)
        self.open = True
        self.pump()

    def pump(self) -> None:
        while self.open:
            moved = False
            for source, target in (
                (self.server_transport, self.client),
                (self.client_transport, self.server),
            ):
                data = source.value()
                if data:
                    source.clear()
                    target.dataReceived(data)
                    moved = True
            if not moved:
                break
        if self.open and (
            self.client_transport.disconnecting or self.server_transport.disconnecting
        ):
            self.open = False
            self.server.connectionLost(Failure(ConnectionDone()))
            self.client.connectionLost(Failure(ConnectionDone()))

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.pump()

    @property
    def commands(self) -> list[str]:
        return [command for session in self.mta.sessions for command in session.commands]

    def outcomes(self):
        (result,) = self.results
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def failure(self) -> SessionFailure:
        (result,) = self.results
        assert isinstance(result, Failure), result
        return result.trap(SessionFailure) and result.value


class Scripted:
    """The client on a StringTransport; the test plays the server line by line."""

    def __init__(self, envelopes, **options):
        self.reactor = MemoryReactorClock()
        self.results: list = []
        deferred = deliver(self.reactor, "192.0.2.25", 25, envelopes, helo_name=HELO, **options)
        deferred.addBoth(self.results.append)
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        wrapper = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = FakeTLSTransport()
        wrapper.makeConnection(self.transport)
        self.protocol = wrapper._wrappedProtocol

    def reply(self, data: str) -> str:
        """Feed the server's bytes; return what the client wrote in answer."""
        self.transport.clear()
        self.transport.writes.clear()
        self.protocol.dataReceived(data.encode("utf-8"))
        return self.transport.value().decode("utf-8")

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def codes(outcome):
    return [recipient.code for recipient in outcome.recipients]


def codes_uncertain(outcome):
    return [int(recipient.uncertain) for recipient in outcome.recipients]


class RecordTests(unittest.TestCase):
    def test_recipient_outcome_properties(self):
        self.assertTrue(RecipientOutcome("a@b", 250, "250 ok").delivered)
        self.assertFalse(RecipientOutcome("a@b", 250, "250 ok").permanent)
        self.assertTrue(RecipientOutcome("a@b", 550, "550 no").permanent)
        for code in (0, 421, 451):
            outcome = RecipientOutcome("a@b", code, "later")
            self.assertFalse(outcome.permanent)
            self.assertFalse(outcome.delivered)

    def test_session_failure(self):
        self.assertTrue(SessionFailure(554, "554 no").permanent)
        self.assertFalse(SessionFailure(0, "lost").permanent)
        self.assertFalse(SessionFailure(535, "x", permanent=False).permanent)
        self.assertEqual(str(SessionFailure(421, "421 bye")), "421 bye")

    def test_parse_ehlo(self):
        extensions = parse_ehlo(
            ["PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8", "STARTTLS", "AUTH PLAIN LOGIN"]
        )
        self.assertEqual(
            extensions,
            Extensions(True, 10240000, True, True, True, frozenset({"PLAIN", "LOGIN"})),
        )
        self.assertEqual(parse_ehlo(["size", "AUTH=PLAIN"]).size, 0)
        self.assertEqual(parse_ehlo(["AUTH=PLAIN"]).auth, frozenset({"PLAIN"}))
        self.assertEqual(parse_ehlo(["ENHANCEDSTATUSCODES", ""]), Extensions())

    def test_dot_stuff(self):
        self.assertEqual(dot_stuff(b".a\r\n.\r\nb\r\n"), b"..a\r\n..\r\nb\r\n.\r\n")
        self.assertEqual(dot_stuff(b"no line end"), b"no line end\r\n.\r\n")
        self.assertEqual(dot_stuff(b""), b".\r\n")

    def test_normalize_line_endings(self):
        raw = b"a\r\nb\r\n"
        self.assertIs(normalize_line_endings(raw), raw)
        self.assertEqual(normalize_line_endings(b"a\nb\r\nc\rd\n"), b"a\r\nb\r\nc\r\nd\r\n")

    def test_client_never_imports_the_global_reactor(self):
        source = inspect.getsource(client)
        self.assertNotIn("import reactor", source)
        self.assertNotIn("internet.reactor", source)

    def test_unknown_tls_mode(self):
        self.assertRaises(
            ValueError, deliver, MemoryReactorClock(), "192.0.2.1", 25, [], helo_name=HELO, tls="x"
        )

    def test_nothing_to_deliver_does_not_connect(self):
        memory = MemoryReactorClock()
        results = []
        deliver(memory, "192.0.2.1", 25, [], helo_name=HELO).addCallback(results.append)
        self.assertEqual(results, [[]])
        self.assertEqual(memory.tcpClients, [])


class ConnectTests(unittest.TestCase):
    def test_connects_to_the_address_with_the_connect_timeout(self):
        link = Link([envelope()], connect=False, connect_timeout=7)
        ((host, port, _, timeout, _),) = link.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("192.0.2.25", 25, 7))

    def test_connection_refused_is_a_temporary_session_failure(self):
        link = Link([envelope()], connect=False)
        factory = link.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(
            link.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        failure = link.failure()
        self.assertEqual(failure.code, 0)
        self.assertFalse(failure.permanent)
        self.assertIn("cannot connect to [192.0.2.25]:25", failure.reply)

    def test_connect_timeout_uses_the_injected_clock(self):
        link = Link([envelope()], connect=False, connect_timeout=30)
        link.reactor.advance(29)
        self.assertEqual(link.results, [])
        link.reactor.advance(1)
        failure = link.failure()
        self.assertEqual((failure.code, failure.permanent), (0, False))
        self.assertIn("timed out after 30s connecting", failure.reply)
        self.assertTrue(link.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(link.reactor.getDelayedCalls(), [])

    def test_server_name_appears_in_replies(self):
        link = Link([envelope()], connect=False, server_name="mx.remote.test")
        factory = link.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(
            link.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        self.assertIn("mx.remote.test [192.0.2.25]:25", link.failure().reply)


class GreetingTests(unittest.TestCase):
    def test_greeting_554_is_a_permanent_session_failure(self):
        link = Link([envelope()], RemoteMTA(greeting="554 5.7.1 no mail from you"))
        failure = link.failure()
        self.assertEqual(failure.code, 554)
        self.assertTrue(failure.permanent)
        self.assertEqual(failure.reply, "554 5.7.1 no mail from you ([192.0.2.25]:25, greeting)")
        self.assertEqual(link.commands, ["QUIT"])

    def test_greeting_421_is_temporary(self):
        link = Link([envelope()], RemoteMTA(greeting="421 4.3.2 busy"))
        failure = link.failure()
        self.assertEqual((failure.code, failure.permanent), (421, False))

    def test_no_greeting_times_out(self):
        link = Link([envelope()], RemoteMTA(greeting=Delayed(1000, 220)), timeout=60)
        link.advance(59)
        self.assertEqual(link.results, [])
        link.advance(1)
        failure = link.failure()
        self.assertEqual((failure.code, failure.permanent), (0, False))
        self.assertIn(
            "timed out after 60s waiting for [192.0.2.25]:25 to reply to the greeting",
            failure.reply,
        )

    def test_connection_lost_before_the_greeting(self):
        link = Link([envelope()], RemoteMTA(greeting=DROP))
        failure = link.failure()
        self.assertEqual((failure.code, failure.permanent), (0, False))
        self.assertIn("lost before the reply to the greeting", failure.reply)

    def test_ehlo_502_falls_back_to_helo(self):
        link = Link([envelope()], RemoteMTA(ehlo=502, size=1000))
        self.assertEqual(codes(link.outcomes()[0]), [250])
        self.assertEqual(
            link.commands[:3], [f"EHLO {HELO}", f"HELO {HELO}", "MAIL FROM:<a@example.net>"]
        )
        self.assertEqual(link.mta.envelopes[0].helo, HELO)

    def test_ehlo_and_helo_refused(self):
        link = Link([envelope()], RemoteMTA(ehlo=500, helo="550 5.7.1 go away"))
        failure = link.failure()
        self.assertEqual((failure.code, failure.permanent), (550, True))
        self.assertEqual(failure.reply, "550 5.7.1 go away ([192.0.2.25]:25, in reply to HELO)")

    def test_ehlo_4xx_is_temporary_without_helo(self):
        link = Link([envelope()], RemoteMTA(ehlo="451 4.3.0 later"))
        self.assertEqual(link.failure().code, 451)
        self.assertNotIn(f"HELO {HELO}", link.commands)

    def test_multiline_reply_is_one_line(self):
        mta = RemoteMTA(rcpt={"b@remote.test": "550-5.1.1 no such user\n550 5.1.1 go away"})
        link = Link([envelope()], mta)
        (outcome,) = link.outcomes()[0].recipients
        self.assertEqual(outcome.reply, "550 5.1.1 no such user 5.1.1 go away")

    def test_malformed_reply_ends_the_session(self):
        session = Scripted([envelope()])
        session.reply("220 hi\r\n")
        session.reply("garbage\r\n")
        self.assertTrue(session.transport.disconnecting)
        session.lose()
        self.assertIn("malformed reply", session.results[0].value.reply)


class PipeliningTests(unittest.TestCase):
    def test_mail_rcpt_and_data_go_in_one_write(self):
        link = Link([envelope("b@remote.test", "c@remote.test", "d@remote.test")])
        self.assertIn(
            b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@remote.test>\r\nRCPT TO:<c@remote.test>\r\n"
            b"RCPT TO:<d@remote.test>\r\nDATA\r\n",
            link.client_transport.writes,
        )
        self.assertEqual(codes(link.outcomes()[0]), [250, 250, 250])

    def test_replies_are_matched_in_order(self):
        session = Scripted([envelope("b@remote.test", "c@remote.test", "d@remote.test")])
        session.reply("220 hi\r\n")
        written = session.reply("250-mx\r\n250 PIPELINING\r\n")
        self.assertEqual(len(session.transport.writes), 1)
        self.assertTrue(written.endswith("DATA\r\n"))
        # replies may arrive split anywhere
        self.assertEqual(session.reply("250 ok\r\n250 ok\r\n45"), "")
        self.assertEqual(session.reply("1 4.2.1 busy\r\n550 5.1.1 unknown\r\n"), "")
        data = session.reply("354 go\r\n")
        self.assertTrue(data.endswith("\r\n.\r\n"))
        self.assertEqual(session.reply("250 2.0.0 queued\r\n"), "QUIT\r\n")
        session.reply("221 bye\r\n")
        session.lose()
        (outcome,) = session.results[0]
        self.assertEqual(
            [(r.code, r.reply) for r in outcome.recipients],
            [(250, "250 2.0.0 queued"), (451, "451 4.2.1 busy"), (550, "550 5.1.1 unknown")],
        )

    def test_without_pipelining_one_command_at_a_time(self):
        session = Scripted([envelope("b@remote.test", "c@remote.test")])
        self.assertEqual(session.reply("220 hi\r\n"), f"EHLO {HELO}\r\n")
        self.assertEqual(session.reply("250 mx\r\n"), "MAIL FROM:<a@example.net>\r\n")
        self.assertEqual(session.reply("250 ok\r\n"), "RCPT TO:<b@remote.test>\r\n")
        self.assertEqual(session.reply("250 ok\r\n"), "RCPT TO:<c@remote.test>\r\n")
        self.assertEqual(session.reply("550 no\r\n"), "DATA\r\n")
        self.assertEqual(session.reply("354 go\r\n"), MESSAGE.decode() + ".\r\n")
        self.assertEqual(session.reply("250 queued\r\n"), "QUIT\r\n")
        session.reply("221 bye\r\n")
        session.lose()
        self.assertEqual(codes(session.results[0][0]), [250, 550])

    def test_next_envelope_follows_the_final_dot_without_waiting(self):
        session = Scripted([envelope("b@remote.test", key=1), envelope("c@remote.test", key=2)])
        session.reply("220 hi\r\n")
        session.reply("250-mx\r\n250 PIPELINING\r\n")
        written = session.reply("250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(
            written,
            MESSAGE.decode() + ".\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<c@remote.test>\r\n"
            "DATA\r\n",
        )
        # The first message is refused at its dot; the second transaction is its own.
        self.assertEqual(session.reply("554 5.7.1 spam\r\n250 ok\r\n250 ok\r\n"), "")
        self.assertEqual(session.reply("354 go\r\n"), MESSAGE.decode() + ".\r\n")
        # No QUIT before the last message's reply: it would cut the reply off.
        self.assertEqual(session.reply("250 2.0.0 queued\r\n"), "QUIT\r\n")
        session.reply("221 bye\r\n")
        session.lose()
        first, second = session.results[0]
        self.assertEqual([r.reply for r in first.recipients], ["554 5.7.1 spam"])
        self.assertEqual([r.reply for r in second.recipients], ["250 2.0.0 queued"])

    def test_connection_lost_with_the_next_envelope_pipelined_behind_a_dot(self):
        session = Scripted([envelope("b@remote.test"), envelope("c@remote.test")])
        session.reply("220 hi\r\n")
        session.reply("250-mx\r\n250 PIPELINING\r\n")
        self.assertIn("MAIL FROM", session.reply("250 ok\r\n250 ok\r\n354 go\r\n"))
        session.lose()
        first, second = session.results[0]
        for outcome in (first, second):
            self.assertEqual(codes(outcome), [0])
            self.assertFalse(outcome.recipients[0].permanent)

    def test_many_envelopes_over_a_pipelining_server(self):
        mta = RemoteMTA(rcpt={"gone@remote.test": 550}, dot=[250, "452 4.3.1 full", 250])
        envelopes = [
            envelope("b@remote.test", key=1),
            envelope("c@remote.test", key=2),
            envelope("gone@remote.test", key=3),
            envelope("d@remote.test", key=4),
        ]
        link = Link(envelopes, mta)
        self.assertEqual(
            [codes(outcome) for outcome in link.outcomes()], [[250], [452], [550], [250]]
        )
        self.assertEqual(
            [(e.recipients, e.reply_code) for e in mta.envelopes],
            [(("b@remote.test",), 250), (("c@remote.test",), 452), (("d@remote.test",), 250)],
        )

    def test_354_with_no_accepted_recipient_sends_an_empty_message(self):
        session = Scripted([envelope("b@remote.test"), envelope("c@remote.test")])
        session.reply("220 hi\r\n")
        session.reply("250-mx\r\n250 PIPELINING\r\n")
        self.assertEqual(session.reply("250 ok\r\n550 no\r\n354 go\r\n"), ".\r\n")
        written = session.reply("554 no valid recipients\r\n")
        self.assertTrue(written.startswith("RSET\r\nMAIL FROM:<a@example.net>\r\n"))
        self.assertEqual(len(session.transport.writes), 1)


class TransactionTests(unittest.TestCase):
    def test_several_envelopes_over_one_connection_with_rset_after_an_aborted_one(self):
        for pipelining in (True, False):
            mta = RemoteMTA(
                pipelining=pipelining, rcpt={"gone@remote.test": "550 5.1.1 no such user"}
            )
            envelopes = [
                envelope("b@remote.test", key=1),
                envelope("gone@remote.test", key=2),
                envelope("c@remote.test", key=3),
            ]
            link = Link(envelopes, mta)
            outcomes = link.outcomes()
            self.assertEqual([outcome.envelope.key for outcome in outcomes], [1, 2, 3])
            self.assertEqual([codes(outcome) for outcome in outcomes], [[250], [550], [250]])
            self.assertEqual(len(mta.sessions), 1)
            verbs = [command.split(":")[0].split(" ")[0] for command in link.commands]
            # pipelined, DATA went out with the refused RCPT (and got 554)
            aborted = ["MAIL", "RCPT", "DATA"] if pipelining else ["MAIL", "RCPT"]
            self.assertEqual(
                verbs,
                ["EHLO", "MAIL", "RCPT", "DATA", *aborted, "RSET", "MAIL", "RCPT", "DATA", "QUIT"],
            )
            self.assertEqual(
                [(e.recipients, e.data) for e in mta.envelopes],
                [(("b@remote.test",), MESSAGE), (("c@remote.test",), MESSAGE)],
            )

    def test_mixed_recipient_results_and_the_data_reply(self):
        mta = RemoteMTA(
            rcpt={"busy@remote.test": "451 4.2.1 mailbox busy", "gone@remote.test": 550},
            dot="250 2.0.0 Ok: queued as 7F3A",
        )
        link = Link([envelope("b@remote.test", "busy@remote.test", "gone@remote.test")], mta)
        recipients = link.outcomes()[0].recipients
        self.assertEqual(
            [(r.recipient, r.code, r.delivered, r.permanent) for r in recipients],
            [
                ("b@remote.test", 250, True, False),
                ("busy@remote.test", 451, False, False),
                ("gone@remote.test", 550, False, True),
            ],
        )
        self.assertEqual(recipients[0].reply, "250 2.0.0 Ok: queued as 7F3A")
        self.assertEqual(recipients[1].reply, "451 4.2.1 mailbox busy")
        self.assertEqual(mta.envelopes[0].recipients, ("b@remote.test",))

    def test_refused_data_applies_to_accepted_recipients_only(self):
        for pipelining in (True, False):
            mta = RemoteMTA(
                pipelining=pipelining,
                rcpt={"gone@remote.test": 550},
                data="554 5.7.1 not today",
            )
            link = Link([envelope("b@remote.test", "gone@remote.test"), envelope()], mta)
            first, second = link.outcomes()
            self.assertEqual(
                [r.reply for r in first.recipients],
                ["554 5.7.1 not today", "550 5.0.0 remote_mta answers 550 to rcpt"],
            )
            self.assertEqual(codes(second), [554])
            self.assertIn("RSET", link.commands)

    def test_refused_end_of_data_applies_to_every_accepted_recipient(self):
        mta = RemoteMTA(dot="552 5.3.4 message too big")
        link = Link([envelope("b@remote.test", "c@remote.test")], mta)
        self.assertEqual(codes(link.outcomes()[0]), [552, 552])

    def test_mail_refused(self):
        for pipelining in (True, False):
            mta = RemoteMTA(pipelining=pipelining, mail=["550 5.7.1 sender blocked", 250])
            link = Link([envelope("b@remote.test", "c@remote.test"), envelope()], mta)
            first, second = link.outcomes()
            self.assertEqual(
                [(r.code, r.reply) for r in first.recipients],
                [(550, "550 5.7.1 sender blocked")] * 2,
            )
            self.assertEqual(codes(second), [250])
            if not pipelining:
                self.assertNotIn("RCPT TO:<c@remote.test>", link.commands)
            self.assertEqual(len(mta.envelopes), 1)

    def test_null_sender(self):
        link = Link([envelope(sender="")])
        self.assertIn("MAIL FROM:<>", link.commands)
        self.assertEqual(link.mta.envelopes[0].sender, "")

    def test_envelope_without_recipients_sends_nothing(self):
        link = Link([Envelope("a@example.net", (), MESSAGE), envelope()])
        first, second = link.outcomes()
        self.assertEqual(first.recipients, ())
        self.assertEqual(codes(second), [250])
        self.assertEqual(len(link.mta.envelopes), 1)

    def test_address_with_a_line_break_is_never_sent(self):
        link = Link([envelope("b@remote.test", "x@remote.test>\r\nRSET")])
        recipients = link.outcomes()[0].recipients
        self.assertEqual(codes(link.outcomes()[0]), [250, 553])
        self.assertTrue(recipients[1].permanent)
        self.assertNotIn("RSET", link.commands)

    def test_dot_stuffing_round_trip(self):
        bodies = [
            b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nno final line end",
            b".first line is a dot line\r\n",
            b"Subject: bare\n\nbare LF\nline ends\n",
            b"Subject: smuggling\r\n\r\na\n.\r\nMAIL FROM:<x@y>\r\n",
        ]
        link = Link([envelope(raw=body) for body in bodies])
        self.assertEqual([codes(outcome) for outcome in link.outcomes()], [[250]] * 4)
        self.assertEqual(
            [e.data for e in link.mta.envelopes],
            [
                bodies[0] + b"\r\n",
                bodies[1],
                b"Subject: bare\r\n\r\nbare LF\r\nline ends\r\n",
                b"Subject: smuggling\r\n\r\na\r\n.\r\nMAIL FROM:<x@y>\r\n",
            ],
        )

    def test_size_and_8bitmime_parameters(self):
        eight_bit = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode()
        mta = RemoteMTA(size=100000)
        link = Link([envelope(raw=eight_bit), envelope(raw=b"plain\nascii\n")], mta)
        self.assertEqual([codes(outcome) for outcome in link.outcomes()], [[250], [250]])
        self.assertEqual(
            [e.mail_parameters for e in mta.envelopes],
            [(f"SIZE={len(eight_bit)}", "BODY=8BITMIME"), ("SIZE=14",)],
        )

    def test_no_parameters_when_not_offered(self):
        mta = RemoteMTA(eightbitmime=False)
        link = Link([envelope(raw="caf\u00e9\r\n".encode())], mta)
        self.assertEqual(codes(link.outcomes()[0]), [250])
        self.assertEqual(mta.envelopes[0].mail_parameters, ())

    def test_message_over_the_announced_size(self):
        link = Link([envelope(raw=b"x" * 200 + b"\r\n")], RemoteMTA(size=100))
        (outcome,) = link.outcomes()[0].recipients
        self.assertEqual(outcome.code, 552)
        self.assertTrue(outcome.permanent)

    def test_non_ascii_address_without_smtputf8(self):
        link = Link([envelope("j\u00f6rg@remote.test", "b@remote.test")])
        recipients = link.outcomes()[0].recipients
        self.assertEqual([r.code for r in recipients], [553, 250])
        self.assertTrue(recipients[0].permanent)
        self.assertIn("SMTPUTF8", recipients[0].reply)
        self.assertEqual(link.mta.envelopes[0].recipients, ("b@remote.test",))
        self.assertEqual(link.mta.envelopes[0].mail_parameters, ())

    def test_non_ascii_sender_without_smtputf8(self):
        link = Link([envelope("b@remote.test", sender="r\u00e9my@example.net"), envelope()])
        first, second = link.outcomes()
        self.assertEqual(codes(first), [553])
        self.assertEqual(codes(second), [250])
        self.assertEqual(len(link.mta.envelopes), 1)

    def test_non_ascii_address_with_smtputf8(self):
        mta = RemoteMTA(smtputf8=True)
        link = Link([envelope("j\u00f6rg@remote.test")], mta)
        self.assertEqual(codes(link.outcomes()[0]), [250])
        self.assertEqual(mta.envelopes[0].recipients, ("j\u00f6rg@remote.test",))
        self.assertIn("SMTPUTF8", mta.envelopes[0].mail_parameters)


class Journal:
    """A `progress` callback: notes each call; the dot waits for the test to answer."""

    def __init__(self, mta: RemoteMTA | None = None):
        self.mta = mta
        self.calls: list[tuple[list, DotPending | None]] = []
        self.gates: list[defer.Deferred] = []
        self.received_at_dot: list[int] = []  # what the server had when a dot was asked for
        self.hold = True

    def __call__(self, finished, dot):
        self.calls.append((list(finished), dot))
        if dot is None:
            return None
        if self.mta is not None:
            self.received_at_dot.append(len(self.mta.envelopes))
        if not self.hold:
            return None
        gate: defer.Deferred = defer.Deferred()
        self.gates.append(gate)
        return gate

    def reported(self):
        """Per call: (keys and codes of the envelopes finished, the dot's key and indexes)."""
        return [
            (
                [(outcome.envelope.key, codes(outcome)) for outcome in finished],
                (dot.envelope.key, dot.recipients) if dot is not None else None,
            )
            for finished, dot in self.calls
        ]


class ProgressTests(unittest.TestCase):
    """The caller hears of each envelope as its reply arrives, and each final dot waits
    until the caller has written down that it is being sent."""

    def test_the_dot_waits_for_progress_and_replies_are_reported_as_they_come(self):
        journal = Journal()
        session = Scripted(
            [envelope("b@remote.test", "c@remote.test", key=1), envelope("d@remote.test", key=2)],
            progress=journal,
        )
        session.reply("220 hi\r\n")
        session.reply("250-mx\r\n250 PIPELINING\r\n")
        # c is refused at RCPT: the message goes to b only; nothing is sent yet.
        self.assertEqual(session.reply("250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n"), "")
        self.assertEqual(journal.reported(), [([], (1, (0,)))])
        session.transport.clear()
        journal.gates[0].callback(None)
        self.assertEqual(
            session.transport.value().decode(),
            MESSAGE.decode() + ".\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<d@remote.test>\r\n"
            "DATA\r\n",
        )
        # One read brings the first reply and the second 354: one report for both.
        self.assertEqual(session.reply("250 2.0.0 queued\r\n250 ok\r\n250 ok\r\n354 go\r\n"), "")
        self.assertEqual(journal.reported()[1:], [([(1, [250, 550])], (2, (0,)))])
        session.transport.clear()
        journal.gates[1].callback(None)
        self.assertEqual(session.transport.value().decode(), MESSAGE.decode() + ".\r\n")
        self.assertEqual(session.reply("250 2.0.0 queued\r\n"), "QUIT\r\n")
        self.assertEqual(journal.reported()[2:], [([(2, [250])], None)])
        session.reply("221 bye\r\n")
        session.lose()
        self.assertEqual([codes(outcome) for outcome in session.results[0]], [[250, 550], [250]])
        self.assertEqual(len(journal.calls), 3)

    def test_the_dot_waits_without_pipelining_too(self):
        journal = Journal()
        session = Scripted([envelope(key=1)], progress=journal)
        session.reply("220 hi\r\n")
        self.assertEqual(session.reply("250 mx\r\n"), "MAIL FROM:<a@example.net>\r\n")
        session.reply("250 ok\r\n")
        self.assertEqual(session.reply("250 ok\r\n"), "DATA\r\n")
        self.assertEqual(session.reply("354 go\r\n"), "")
        journal.gates[0].callback(None)
        self.assertTrue(session.transport.value().endswith(b"\r\n.\r\n"))

    def test_envelopes_decided_without_a_dot_are_reported_too(self):
        journal = Journal()
        session = Scripted([envelope("gone@remote.test", key=1)], progress=journal)
        session.reply("220 hi\r\n")
        session.reply("250-mx\r\n250 PIPELINING\r\n")
        session.reply("250 ok\r\n550 5.1.1 no such user\r\n554 no valid recipients\r\n")
        self.assertEqual(journal.reported(), [([(1, [550])], None)])

    def test_a_dot_that_could_not_be_recorded_is_never_sent(self):
        journal = Journal()
        mta = RemoteMTA()
        link = Link([envelope(key=1), envelope(key=2)], mta, progress=journal)
        self.assertEqual(len(journal.gates), 1)
        journal.gates[0].errback(RuntimeError("disk full"))
        link.pump()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        first, second = link.outcomes()
        self.assertEqual((codes(first), codes(second)), ([0], [0]))
        self.assertIn("recording it failed (disk full)", first.recipients[0].reply)
        # The server never saw the end of the data: it took nothing.
        self.assertEqual(mta.envelopes, [])
        self.assertFalse(first.recipients[0].uncertain)

    def test_connection_lost_while_the_dot_waits(self):
        journal = Journal()
        session = Scripted([envelope(key=1)], progress=journal)
        session.reply("220 hi\r\n")
        session.reply("250-mx\r\n250 PIPELINING\r\n")
        session.reply("250 ok\r\n250 ok\r\n354 go\r\n")
        session.lose()
        [outcome] = session.results[0]
        self.assertEqual(codes(outcome), [0])
        self.assertFalse(outcome.recipients[0].uncertain)  # the dot never left
        session.transport.clear()
        journal.gates[0].callback(None)
        self.assertEqual(session.transport.value(), b"")

    def test_each_dot_is_asked_for_after_the_previous_reply_over_a_real_dialogue(self):
        mta = RemoteMTA(dot=[250, "452 4.3.1 full", 250])
        journal = Journal(mta)
        journal.hold = False
        link = Link([envelope(key=key) for key in (1, 2, 3)], mta, progress=journal)
        self.assertEqual([codes(outcome) for outcome in link.outcomes()], [[250], [452], [250]])
        # When the dot of message n was asked for, the server had the n - 1 before it,
        # and their replies came in the same report: one commit per message at most.
        self.assertEqual(journal.received_at_dot, [0, 1, 2])
        self.assertEqual(
            journal.reported(),
            [
                ([], (1, (0,))),
                ([(1, [250])], (2, (0,))),
                ([(2, [452])], (3, (0,))),
                ([(3, [250])], None),
            ],
        )


class TLSNegotiationTests(unittest.TestCase):
    def test_required_tls_not_offered(self):
        link = Link([envelope()], tls="required")
        failure = link.failure()
        self.assertEqual((failure.code, failure.permanent), (0, False))
        self.assertIn("TLS is required", failure.reply)
        self.assertEqual(link.commands, [f"EHLO {HELO}", "QUIT"])

    def test_required_tls_refused(self):
        mta = RemoteMTA(tls_options=object(), starttls="454 4.7.0 TLS not available")
        link = Link([envelope()], mta, tls="required")
        failure = link.failure()
        self.assertEqual((failure.code, failure.permanent), (454, False))
        self.assertIn("TLS is required", failure.reply)

    def test_opportunistic_goes_on_in_plain_text_when_starttls_is_refused(self):
        mta = RemoteMTA(tls_options=object(), starttls="454 4.7.0 TLS not available")
        link = Link([envelope()], mta)
        self.assertEqual(codes(link.outcomes()[0]), [250])
        self.assertEqual(
            link.commands[:3], [f"EHLO {HELO}", "STARTTLS", "MAIL FROM:<a@example.net>"]
        )

    def test_tls_none_never_starts_tls(self):
        link = Link([envelope()], RemoteMTA(tls_options=object()), tls="none")
        self.assertEqual(codes(link.outcomes()[0]), [250])
        self.assertNotIn("STARTTLS", link.commands)

    def test_starttls_then_ehlo_again_and_clear_text_after_220_is_ignored(self):
        session = Scripted([envelope()], server_name="mx.remote.test")
        session.reply("220 hi\r\n")
        self.assertEqual(session.reply("250-mx\r\n250 STARTTLS\r\n"), "STARTTLS\r\n")
        # A man in the middle appends a reply after the 220: it must not answer our EHLO.
        self.assertEqual(
            session.reply("220 go ahead\r\n250-fake\r\n250 AUTH PLAIN\r\n"), f"EHLO {HELO}\r\n"
        )
        self.assertEqual(len(session.transport.tls_starts), 1)
        self.assertTrue(session.protocol.tls_active)
        self.assertEqual(
            session.reply("250-mx\r\n250 PIPELINING\r\n").split("\r\n")[0],
            "MAIL FROM:<a@example.net>",
        )

    def test_auth_is_never_sent_without_tls(self):
        mta = RemoteMTA(auth=("relay", "secret"), auth_without_tls=True)
        link = Link([envelope()], mta, auth=("relay", "secret"))
        failure = link.failure()
        self.assertEqual((failure.code, failure.permanent), (0, False))
        self.assertIn("without TLS", failure.reply)
        self.assertFalse([c for c in link.commands if c.startswith("AUTH")])
        self.assertEqual(mta.envelopes, [])


class BrokenSessionTests(unittest.TestCase):
    def test_connection_dropped_after_the_final_dot(self):
        mta = RemoteMTA(dot=[250, DROP])
        link = Link(
            [envelope(key=1), envelope("b@remote.test", "c@remote.test", key=2), envelope(key=3)],
            mta,
        )
        first, second, third = link.outcomes()
        self.assertEqual(codes(first), [250])
        self.assertEqual(codes(second), [0, 0])
        self.assertFalse(second.recipients[0].permanent)
        self.assertIn("lost before the reply to the end of data", second.recipients[0].reply)
        self.assertEqual(codes(third), [0])
        # the server had the whole message: a retry may deliver it twice
        self.assertEqual([e.reply_code for e in mta.envelopes], [250, 0])
        self.assertEqual(
            [[r.uncertain for r in o.recipients] for o in (first, second, third)],
            [[False], [True, True], [False]],
        )

    def test_only_recipients_the_message_went_to_are_uncertain(self):
        mta = RemoteMTA(rcpt={"c@remote.test": 550}, dot=DROP)
        link = Link([envelope("b@remote.test", "c@remote.test")], mta)
        [outcome] = link.outcomes()
        self.assertEqual(codes(outcome), [0, 550])
        self.assertEqual([r.uncertain for r in outcome.recipients], [True, False])

    def test_connection_dropped_after_mail_keeps_outcomes_not_session_failure(self):
        link = Link([envelope()], RemoteMTA(mail=DROP))
        (outcome,) = link.outcomes()
        self.assertEqual(codes(outcome), [0])
        self.assertIn("lost before the reply to MAIL FROM", outcome.recipients[0].reply)

    def test_421_mid_session(self):
        mta = RemoteMTA(rcpt={"c@remote.test": "421 4.3.2 shutting down"})
        link = Link(
            [
                envelope(key=1),
                envelope("b@remote.test", "c@remote.test", "d@remote.test", key=2),
                envelope(key=3),
            ],
            mta,
        )
        first, second, third = link.outcomes()
        self.assertEqual(codes(first), [250])
        self.assertEqual(codes(second), [421, 421, 421])
        self.assertEqual(codes(third), [421])
        self.assertEqual(third.recipients[0].reply, "421 4.3.2 shutting down")
        self.assertFalse(third.recipients[0].permanent)
        self.assertEqual(len(mta.envelopes), 1)

    def test_421_at_end_of_data(self):
        link = Link([envelope()], RemoteMTA(dot="421 4.4.2 timeout"))
        self.assertEqual(codes(link.outcomes()[0]), [421])

    def test_timeout_leaves_remaining_recipients_temporary(self):
        mta = RemoteMTA(dot=[250, Delayed(1000, 250)])
        link = Link([envelope(key=1), envelope(key=2), envelope(key=3)], mta, timeout=300)
        link.advance(299)
        self.assertEqual(link.results, [])
        link.advance(1)
        first, second, third = link.outcomes()
        self.assertEqual(codes(first), [250])
        self.assertEqual(codes(second), [0])
        self.assertEqual(codes(third), [0])
        self.assertIn("timed out after 300s", second.recipients[0].reply)
        self.assertEqual([codes_uncertain(o) for o in (first, second, third)], [[0], [1], [0]])
        self.assertTrue(link.client_transport.disconnected)
        self.assertEqual(link.reactor.getDelayedCalls(), [])

    def test_timer_counts_from_the_last_activity(self):
        mta = RemoteMTA(rcpt=[Delayed(200, 250), Delayed(200, 250)], pipelining=False)
        link = Link([envelope("b@remote.test", "c@remote.test")], mta, timeout=300)
        link.advance(200)
        link.advance(200)
        self.assertEqual(codes(link.outcomes()[0]), [250, 250])

    def test_quit_is_not_waited_for_long(self):
        link = Link([envelope()], RemoteMTA(quit=Delayed(1000, 221)))
        self.assertEqual(link.results, [])
        link.advance(QUIT_GRACE)
        self.assertEqual(codes(link.outcomes()[0]), [250])
        self.assertTrue(link.client_transport.disconnected)

    def test_reply_without_line_end_is_bounded(self):
        session = Scripted([envelope()])
        session.reply("220 hi\r\n")
        session.reply("250-" + "x" * (client.MAX_REPLY_LINE + 10))
        self.assertTrue(session.transport.disconnected)


class LoopbackTests(unittest.TestCase):
    """Real sockets on 127.0.0.1, real TLS."""

    def listen(self, mta: RemoteMTA) -> int:
        port = reactor.listenTCP(0, mta, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def tls_options(self):
        directory = self.mktemp()
        os.makedirs(directory)
        return self_signed_tls_options(directory)

    @defer.inlineCallbacks
    def deliver(self, mta: RemoteMTA, envelopes, **options):
        port = self.listen(mta)
        try:
            result = yield deliver(
                reactor, "127.0.0.1", port, envelopes, helo_name=HELO, timeout=10, **options
            )
        finally:
            yield mta.when_idle()
        return result

    @defer.inlineCallbacks
    def test_opportunistic_starttls(self):
        mta = RemoteMTA(tls_options=self.tls_options())
        bodies = [b".dot first\r\nline\r\n..\r\nend", b"second\r\n"]
        outcomes = yield self.deliver(
            mta, [envelope(raw=body) for body in bodies], server_name="mx.remote.test"
        )
        self.assertEqual([codes(outcome) for outcome in outcomes], [[250], [250]])
        self.assertEqual([e.tls for e in mta.envelopes], [True, True])
        self.assertEqual([e.data for e in mta.envelopes], [bodies[0] + b"\r\n", bodies[1]])
        self.assertEqual(len(mta.sessions), 1)
        self.assertEqual(mta.sessions[0].commands[:3], [f"EHLO {HELO}", "STARTTLS", f"EHLO {HELO}"])
        self.assertEqual(mta.sessions[0].server_name, "mx.remote.test")

    @defer.inlineCallbacks
    def test_auth_plain_over_tls(self):
        mta = RemoteMTA(tls_options=self.tls_options(), auth=("relay", "s3cret"))
        outcomes = yield self.deliver(mta, [envelope()], auth=("relay", "s3cret"), tls="required")
        self.assertEqual(codes(outcomes[0]), [250])
        self.assertEqual(mta.envelopes[0].auth_user, "relay")
        self.assertTrue(mta.envelopes[0].tls)

    @defer.inlineCallbacks
    def test_auth_refused(self):
        mta = RemoteMTA(tls_options=self.tls_options(), auth=("relay", "s3cret"))
        with self.assertRaises(SessionFailure) as caught:
            yield self.deliver(mta, [envelope()], auth=("relay", "wrong"))
        self.assertEqual(caught.exception.code, 535)
        self.assertTrue(caught.exception.permanent)
        self.assertEqual(mta.envelopes, [])

    @defer.inlineCallbacks
    def test_broken_tls_handshake_retries_in_plain_text(self):
        mta = RemoteMTA(break_tls=True)
        outcomes = yield self.deliver(mta, [envelope()])
        self.assertEqual(codes(outcomes[0]), [250])
        self.assertEqual(len(mta.sessions), 2)
        self.assertNotIn("STARTTLS", mta.sessions[1].commands)
        self.assertFalse(mta.envelopes[0].tls)

    @defer.inlineCallbacks
    def test_broken_tls_handshake_with_tls_required(self):
        mta = RemoteMTA(break_tls=True)
        with self.assertRaises(SessionFailure) as caught:
            yield self.deliver(mta, [envelope()], tls="required")
        self.assertEqual((caught.exception.code, caught.exception.permanent), (0, False))
        self.assertIn("TLS handshake failed", caught.exception.reply)
        self.assertEqual(len(mta.sessions), 1)

    @defer.inlineCallbacks
    def test_connection_refused(self):
        port = reactor.listenTCP(0, RemoteMTA(), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        with self.assertRaises(SessionFailure) as caught:
            yield deliver(reactor, "127.0.0.1", number, [envelope()], helo_name=HELO)
        self.assertEqual((caught.exception.code, caught.exception.permanent), (0, False))


class TLSFallbackTests(unittest.TestCase):
    """The plain retry after a failed handshake, without sockets."""

    def start_tls(self, **options):
        session = Scripted([envelope()], **options)
        session.reply("220 hi\r\n")
        session.reply("250-mx\r\n250 STARTTLS\r\n")
        self.assertEqual(session.reply("220 go ahead\r\n"), f"EHLO {HELO}\r\n")
        return session

    def test_silence_after_starttls_is_a_failed_handshake_and_retried_in_plain(self):
        session = self.start_tls(timeout=60)
        session.reactor.advance(60)
        self.assertTrue(session.transport.disconnected)
        session.lose()
        self.assertEqual(session.results, [])
        self.assertEqual(len(session.reactor.tcpClients), 2)

    def test_a_reply_through_tls_means_the_handshake_worked(self):
        session = self.start_tls()
        session.reply("421 4.3.2 going down\r\n")
        session.lose()
        failure = session.results[0].value
        self.assertEqual((failure.code, failure.permanent), (421, False))
        self.assertEqual(len(session.reactor.tcpClients), 1)

    def test_auth_needs_plain_offered(self):
        session = self.start_tls(auth=("relay", "secret"))
        self.assertEqual(session.reply("250-mx\r\n250 AUTH LOGIN CRAM-MD5\r\n"), "QUIT\r\n")
        session.lose()
        failure = session.results[0].value
        self.assertEqual((failure.code, failure.permanent), (0, False))
        self.assertIn("does not offer AUTH PLAIN (offers: CRAM-MD5 LOGIN)", failure.reply)
