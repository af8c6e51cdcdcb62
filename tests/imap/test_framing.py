"""The IMAP server's framing and hardening: line and literal limits (a literal over its
limit is refused before it is read), LITERAL+, time limits on the injected clock, the
commands allowed before login, login only over TLS through the shared authenticator, and
IDLE sessions counted apart from the active ones."""

from __future__ import annotations

import base64

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.trial import unittest

from atollon_mail.connections import LimitedFactory
from atollon_mail.imap.server import (
    COMMAND_TIMEOUT,
    MAX_LINE,
    MAX_LITERAL,
    MAX_UNAUTHENTICATED_COMMANDS,
    OUTPUT_STALL,
    connection_refusal,
)
from tests.imap.support import MAX_MESSAGE_SIZE, PASSWORD, TLS_OPTIONS, ImapServerMixin
from tests.support import PostgresStoreMixin, SqliteStoreMixin


class FramingTests(ImapServerMixin, SqliteStoreMixin, unittest.TestCase):
    def test_greeting_names_the_capabilities(self):
        client = self.client()
        self.assertEqual(len(client.greeting), 1)
        self.assertTrue(client.greeting[0].startswith("* OK [CAPABILITY IMAP4rev1 "))
        for word in ("LITERAL+", "IDLE", "UIDPLUS", "MOVE", "CONDSTORE", "AUTH=PLAIN"):
            self.assertIn(word, client.greeting[0])

    @defer.inlineCallbacks
    def test_a_synchronizing_literal_over_the_limit_is_refused_before_it_is_read(self):
        client = self.client()
        lines = client.send(f"a1 LOGIN {{{MAX_LITERAL + 1}}}\r\n")
        self.assertEqual(lines, ["a1 BAD Literal too large"])  # no "+" continuation
        self.assertFalse(client.closed)
        # What the client sends next is a command again, not literal octets.
        lines = yield client.command("NOOP")
        self.assertEqual(lines, ["a1 OK NOOP completed"])

    def test_an_append_too_large_is_refused_with_toobig_before_it_is_read(self):
        client = self.client()
        client.protocol.state = "authenticated"  # as after LOGIN
        lines = client.send(f"a1 APPEND INBOX {{{MAX_MESSAGE_SIZE + 1}}}\r\n")
        self.assertEqual(lines, ["a1 NO [TOOBIG] Message too large"])
        self.assertFalse(client.closed)

    def test_an_append_literal_up_to_the_message_size_is_taken(self):
        client = self.client()
        client.protocol.state = "authenticated"
        lines = client.send(f"a1 APPEND INBOX {{{MAX_MESSAGE_SIZE}}}\r\n")
        self.assertEqual(lines, ["+ Ready for literal data"])

    def test_append_takes_one_large_literal_only(self):
        client = self.client()
        client.protocol.state = "authenticated"
        big = MAX_LITERAL + 1
        lines = client.send(f"a1 APPEND {{{big}+}}\r\n".encode() + b"x" * big)
        self.assertEqual(lines, [])
        lines = client.send(f" {{{big}}}\r\n")
        self.assertEqual(lines, ["a1 BAD Literal too large"])

    def test_a_large_literal_is_not_taken_before_login(self):
        client = self.client()
        lines = client.send(f"a1 APPEND INBOX {{{MAX_LITERAL + 1}}}\r\n")
        self.assertEqual(lines, ["a1 BAD Literal too large"])

    def test_a_non_synchronizing_literal_over_the_limit_closes_the_session(self):
        client = self.client()
        lines = client.send(f"a1 LOGIN {{{MAX_LITERAL + 1}+}}\r\nxxxx")
        self.assertEqual(lines, ["a1 BAD Literal too large", "* BYE Literal too large"])
        self.assertTrue(client.closed)

    @defer.inlineCallbacks
    def test_literals_synchronizing_and_literal_plus(self):
        client = self.client()
        lines = client.send("a1 LOGIN {4}\r\n")
        self.assertEqual(lines, ["+ Ready for literal data"])
        lines = client.send("jane {%d+}\r\n%s\r\n" % (len(PASSWORD), PASSWORD))
        lines += yield client.until(lambda lines: any("a1 " in line for line in lines), "login")
        self.assertTrue(lines[-1].startswith("a1 OK"), lines)

    def test_a_line_without_end_is_cut(self):
        client = self.client()
        lines = client.send(b"a1 NOOP " + b"x" * (MAX_LINE + 10))
        self.assertEqual(lines, ["* BYE Command line too long"])
        self.assertTrue(client.closed)

    def test_a_command_longer_than_the_limit_is_refused(self):
        client = self.client()
        lines = client.send(b"a1 NOOP " + b"x" * (MAX_LINE // 2) + b"\r\n" * 0)
        self.assertEqual(lines, [])
        lines = client.send(b"x" * (MAX_LINE // 2) + b"\r\n")
        self.assertEqual(lines, ["a1 BAD Command line too long"])

    def test_lines_of_one_command_count_together(self):
        client = self.client()
        chunk = b"x" * (MAX_LINE // 2)
        lines = client.send(b'a1 LOGIN "' + chunk + b'" {1+}\r\n' + b"y" + chunk + b"\r\n")
        self.assertEqual(lines, ["a1 BAD Command line too long"])

    def test_a_trickled_command_times_out_though_the_session_may_idle_longer(self):
        client = self.client()
        client.protocol.state = "authenticated"
        client.protocol._restart_timer()
        for _ in range(int(COMMAND_TIMEOUT // 10) - 1):
            client.send(b"a")
            self.clock.advance(10)
            self.assertFalse(client.closed)
        client.send(b"a")
        self.clock.advance(10)
        self.assertEqual(client.lines(), ["* BYE Autologout; idle for too long"])
        self.assertTrue(client.closed)

    @defer.inlineCallbacks
    def test_a_session_must_log_in_within_the_login_timeout(self):
        client = self.client()
        for _ in range(5):
            lines = yield client.command("NOOP")
            self.assertEqual(lines[-1][-14:], "NOOP completed")
            self.clock.advance(10)
        self.clock.advance(self.settings.login_timeout - 50)
        self.assertEqual(client.lines(), ["* BYE Login timeout"])
        self.assertTrue(client.closed)

    @defer.inlineCallbacks
    def test_commands_before_login_are_limited(self):
        client = self.client()
        for _ in range(MAX_UNAUTHENTICATED_COMMANDS):
            yield client.command("NOOP")
        lines = yield client.command("NOOP")
        self.assertEqual(lines, ["* BYE Too many commands before login"])
        self.assertTrue(client.closed)

    @defer.inlineCallbacks
    def test_autologout_after_thirty_minutes_of_silence(self):
        client = yield self.logged_in()
        self.clock.advance(29 * 60)
        self.assertFalse(client.closed)
        lines = yield client.command("NOOP")
        self.assertEqual(lines, ["a2 OK NOOP completed"])
        self.clock.advance(30 * 60 - 1)
        self.assertFalse(client.closed)
        self.clock.advance(1)
        self.assertEqual(client.lines(), ["* BYE Autologout; idle for too long"])
        self.assertTrue(client.closed)

    @defer.inlineCallbacks
    def test_an_idling_client_has_the_autologout_not_the_command_time(self):
        client = yield self.logged_in()
        self.assertEqual(client.send("a2 IDLE\r\n"), ["+ idling"])
        self.clock.advance(29 * 60)
        self.assertFalse(client.closed)
        client.send("DONE\r\n")
        lines = yield client.until_tagged("a2")
        self.assertEqual(lines, ["a2 OK IDLE terminated"])
        client.send("a3 IDLE\r\n")
        yield client.settle()
        self.clock.advance(30 * 60)
        self.assertEqual(client.lines()[-1], "* BYE Autologout; idle for too long")
        self.assertTrue(client.closed)

    @defer.inlineCallbacks
    def test_commands_of_the_wrong_state_are_refused(self):
        client = self.client()
        lines = yield client.command("SELECT INBOX")
        self.assertEqual(lines, ["a1 BAD Log in first"])
        yield client.login()
        lines = yield client.command("FETCH 1 FLAGS")
        self.assertEqual(lines, ["a3 BAD Select a mailbox first"])
        lines = yield client.command("LOGIN jane x")
        self.assertEqual(lines, ["a4 BAD Not allowed now"])

    @defer.inlineCallbacks
    def test_unknown_and_malformed_commands(self):
        client = self.client()
        lines = yield client.command("FROB")
        self.assertEqual(lines, ["a1 BAD Unknown command"])
        lines = client.send(b"\r\n")
        self.assertEqual(lines, ["* BAD Missing or bad tag"])
        lines = yield client.command('LOGIN "unterminated')
        self.assertEqual(lines, ["a2 BAD Unterminated quoted string"])

    @defer.inlineCallbacks
    def test_too_many_errors_close_the_session(self):
        client = yield self.logged_in()
        for _ in range(20):
            yield client.command("FROB")
        self.assertFalse(client.closed)
        lines = yield client.command("FROB")
        self.assertEqual(lines[-1], "* BYE Too many errors")
        self.assertTrue(client.closed)

    @defer.inlineCallbacks
    def test_logout(self):
        client = self.client()
        lines = yield client.command("LOGOUT")
        self.assertEqual(lines, ["* BYE mx.acme.test logging out", "a1 OK LOGOUT completed"])
        self.assertTrue(client.closed)
        # No longer the transport's producer: over TLS the connection closes only then.
        self.assertIsNone(client.transport.producer)

    @defer.inlineCallbacks
    def test_pipelined_commands_are_answered_in_order(self):
        client = self.client()
        client.send(f'a1 LOGIN jane "{PASSWORD}"\r\na2 CAPABILITY\r\na3 NOOP\r\n')
        lines = yield client.until_tagged("a3")
        tags = [line.split(" ")[0] for line in lines]
        self.assertEqual(tags, ["a1", "*", "a2", "a3"], lines)
        self.assertNotIn("AUTH=PLAIN", lines[1], "capabilities after login")

    @defer.inlineCallbacks
    def test_no_command_is_taken_while_the_client_reads_nothing(self):
        """The transport says its buffer is full: commands sent meanwhile wait (reading
        pauses once they pile up), are answered once it drains, and a client that never
        reads is closed after OUTPUT_STALL."""
        client = yield self.logged_in()
        client.protocol.pauseProducing()  # what the transport does when its buffer fills
        before = len(client.transport.value())
        client.send(b"b1 NOOP\r\n" * 20_000)
        self.assertEqual(len(client.transport.value()), before)
        self.assertEqual(client.transport.producerState, "paused")
        client.protocol.resumeProducing()
        lines = yield client.until_tagged("b1", 30)
        self.assertEqual(client.transport.value()[before:].count(b"b1 OK NOOP"), 20_000, lines[:3])
        self.assertEqual(client.transport.producerState, "producing")
        client.protocol.pauseProducing()
        client.send(b"c1 NOOP\r\n")
        self.clock.advance(OUTPUT_STALL - 1)
        self.assertFalse(client.closed)
        self.clock.advance(1)
        self.assertTrue(client.closed)
        self.assertNotIn(b"c1 OK", client.transport.value())

    @defer.inlineCallbacks
    def test_hostile_arguments_are_answered_not_raised(self):
        client = yield self.logged_in()
        lines = yield client.command(b"ID " + b"(" * 5000)
        self.assertRegex(lines[-1], r"^a2 BAD .*nested too deeply")
        lines = yield client.command("SELECT INBOX")
        self.assertIn(" OK ", lines[-1])
        lines = yield client.command("SEARCH " + "NOT " * 5000 + "ALL")
        self.assertRegex(lines[-1], r"^a4 BAD .*nested too deeply")
        lines = yield client.command("UID FETCH 1:" + "9" * 5000 + " FLAGS")
        self.assertRegex(lines[-1], r"^a5 BAD ")
        lines = yield client.command("SEARCH CHARSET rot13 SUBJECT x")
        self.assertRegex(lines[-1], r"^a6 NO \[BADCHARSET")
        lines = yield client.command("NOOP")
        self.assertEqual(lines, ["a7 OK NOOP completed"])


class LoginTests(ImapServerMixin, SqliteStoreMixin, unittest.TestCase):
    def test_before_tls_login_is_disabled_and_starttls_offered(self):
        client = self.starttls_client()
        [greeting] = client.greeting
        self.assertIn("STARTTLS", greeting)
        self.assertIn("LOGINDISABLED", greeting)
        self.assertNotIn("AUTH=", greeting)

    @defer.inlineCallbacks
    def test_login_before_tls_is_refused_without_checking_the_password(self):
        client = self.starttls_client()
        lines = yield client.command(f'LOGIN jane "{PASSWORD}"')
        self.assertEqual(lines, ["a1 NO [PRIVACYREQUIRED] Log in after STARTTLS (LOGINDISABLED)"])
        lines = yield client.command("AUTHENTICATE PLAIN")
        self.assertEqual(lines[-1][:22], "a2 NO [PRIVACYREQUIRED")
        self.assertEqual(self.authenticator.by_address.in_flight(PEER_KEY), 0)
        self.assertEqual(len(self.authenticator.by_address), 0)

    @defer.inlineCallbacks
    def test_starttls_then_login(self):
        client = self.starttls_client()
        lines = client.send("a1 STARTTLS\r\na2 LOGIN jane secret\r\n")
        self.assertEqual(lines, ["a1 OK Begin TLS negotiation now"])
        [(options, before)] = client.transport.tls_starts
        self.assertIs(options, TLS_OPTIONS)
        lines = yield client.command("NOOP")
        self.assertEqual(lines, ["a1 OK NOOP completed"], "the pipelined LOGIN was dropped")
        lines = yield client.command("CAPABILITY")
        self.assertIn("AUTH=PLAIN", lines[0])
        self.assertNotIn("STARTTLS", lines[0])
        self.assertNotIn("LOGINDISABLED", lines[0])
        yield client.login()
        lines = yield client.command("STARTTLS")
        self.assertEqual(lines[-1][:6], "a4 BAD")

    @defer.inlineCallbacks
    def test_a_wrong_password_fails_and_is_counted(self):
        client = self.client()
        lines = yield client.command("LOGIN jane wrong")
        self.assertEqual(lines, ["a1 NO [AUTHENTICATIONFAILED] Authentication failed"])
        self.assertEqual(len(self.authenticator.by_address), 1)
        lines = yield client.command("SELECT INBOX")
        self.assertEqual(lines, ["a2 BAD Log in first"])

    @defer.inlineCallbacks
    def test_the_shared_throttle_refuses_after_too_many_failures(self):
        client = self.client()
        for _ in range(5):
            yield client.command("LOGIN jane wrong")
        lines = yield client.command(f'LOGIN jane "{PASSWORD}"')
        self.assertEqual(lines, ["a6 NO [UNAVAILABLE] Too many failed logins, try again later"])
        # Another login from the same address still may.
        self.assertFalse(self.authenticator.login_blocked("192.0.2.7", "joe"))

    @defer.inlineCallbacks
    def test_authenticate_plain_with_an_initial_response(self):
        client = self.client()
        token = base64.b64encode(f"\0jane\0{PASSWORD}".encode()).decode()
        lines = yield client.command(f"AUTHENTICATE PLAIN {token}")
        self.assertTrue(lines[-1].startswith("a1 OK [CAPABILITY "), lines)
        self.assertEqual(client.protocol.login, "jane")

    @defer.inlineCallbacks
    def test_authenticate_plain_after_a_continuation(self):
        client = self.client()
        lines = client.send("a1 AUTHENTICATE PLAIN\r\n")
        self.assertEqual(lines, ["+ "])
        token = base64.b64encode(f"jane\0jane\0{PASSWORD}".encode())
        client.send(token + b"\r\n")
        lines = yield client.until_tagged("a1")
        self.assertTrue(lines[-1].startswith("a1 OK"), lines)

    @defer.inlineCallbacks
    def test_authenticate_cancelled_and_malformed(self):
        client = self.client()
        client.send("a1 AUTHENTICATE PLAIN\r\n")
        lines = client.send("*\r\n")
        self.assertEqual(lines, ["a1 BAD Authentication cancelled"])
        client.next_tag()
        lines = yield client.command("AUTHENTICATE PLAIN !!!")
        self.assertEqual(lines[-1], "a2 BAD Cannot decode the authentication response")
        lines = yield client.command("AUTHENTICATE CRAM-MD5")
        self.assertEqual(lines[-1][:12], "a3 NO [CANNO")
        other = base64.b64encode(f"joe\0jane\0{PASSWORD}".encode()).decode()
        lines = yield client.command(f"AUTHENTICATE PLAIN {other}")
        self.assertEqual(lines[-1], "a4 NO [AUTHENTICATIONFAILED] Authentication failed")

    @defer.inlineCallbacks
    def test_id_capability_noop_before_login(self):
        client = self.client()
        lines = yield client.command('ID ("name" "imaplib")')
        self.assertEqual(lines, ['* ID ("name" "atollon-mail")', "a1 OK ID completed"])
        lines = yield client.command("NAMESPACE")
        self.assertEqual(lines, ["a2 BAD Log in first"])


PEER_KEY = "192.0.2.7"


class IdleCapTests(ImapServerMixin, SqliteStoreMixin, unittest.TestCase):
    """IDLE sessions are counted against [imap] max_idle_connections, not the active cap."""

    def limited(self, max_connections=1, max_idle=1):
        return LimitedFactory(
            self.factory, max_connections, 10, connection_refusal, self.clock, max_idle=max_idle
        )

    def connect(self, limited, port):
        from twisted.internet.testing import StringTransport

        address = IPv4Address("TCP", "192.0.2.7", port)
        protocol = limited.buildProtocol(address)
        transport = StringTransport(address)
        protocol.makeConnection(transport)
        return protocol, transport

    @defer.inlineCallbacks
    def test_an_idling_session_leaves_room_for_an_active_one(self):
        limited = self.limited()
        first, transport = self.connect(limited, 1)
        self.assertIs(first.counter, limited)
        refused, refused_transport = self.connect(limited, 2)
        self.assertIn(b"* BYE [UNAVAILABLE] Too many connections", refused_transport.value())

        first.dataReceived(f'a1 LOGIN jane "{PASSWORD}"\r\n'.encode())
        client_lines = []

        def logged_in():
            client_lines[:] = transport.value().decode().splitlines()
            return any(line.startswith("a1 OK") for line in client_lines)

        from tests.web.test_live import eventually

        yield eventually(logged_in, "login")
        first.dataReceived(b"a2 IDLE\r\n")
        yield eventually(lambda: b"+ idling" in transport.value(), "idle")
        self.assertEqual((limited.total, limited.idle), (1, 1))

        second, second_transport = self.connect(limited, 3)
        self.assertTrue(second_transport.value().startswith(b"* OK [CAPABILITY"))
        third, third_transport = self.connect(limited, 4)
        self.assertIn(b"* BYE [UNAVAILABLE]", third_transport.value(), "the idle cap is full too")

        # Back from IDLE the first session counts as active again.
        first.dataReceived(b"DONE\r\n")
        yield eventually(lambda: b"a2 OK IDLE terminated" in transport.value(), "done")
        self.assertEqual((limited.total, limited.idle), (2, 0))
        second.connectionLost(None)
        first.dataReceived(b"a3 IDLE\r\n")
        yield eventually(lambda: limited.idle == 1, "idle again")
        first.connectionLost(None)
        self.assertEqual((limited.total, limited.idle), (0, 0))


class FramingPostgresTests(ImapServerMixin, PostgresStoreMixin, unittest.TestCase):
    """One login on PostgreSQL too (the rest of the framing does not touch the store)."""

    @defer.inlineCallbacks
    def test_login(self):
        client = self.client()
        yield client.login()
        self.assertEqual(client.protocol.state, "authenticated")
