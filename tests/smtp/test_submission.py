"""The submission server (587/465), driven over StringTransport with a Clock."""

from __future__ import annotations

import base64
import inspect
import re

from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from atollon_mail.auth import ADDRESS_LIMIT, LOGIN_LIMIT, Authenticator
from atollon_mail.interfaces import ISMTPAuthPolicy, ISMTPPolicy, ISubmissionIntake
from atollon_mail.smtp import policies, server
from atollon_mail.smtp.policies import SubmissionPolicy
from atollon_mail.smtp.server import SMTPServerFactory, SMTPServerProtocol
from atollon_mail.smtp.session import IMPLICIT_TLS_LISTENER, SUBMISSION_LISTENER
from atollon_mail.store.records import SendingIdentity

from .fakes import (
    HOSTNAME,
    UNTRUSTED_PEER,
    FakeSubmissionIntake,
    LookupUnavailable,
    StorageFailed,
    SubmissionSession,
    make_settings,
)

TLS_OPTIONS = object()  # the protocol only hands it to transport.startTLS
OTHER_PEER = "203.0.113.9"
GREETING = f"220 {HOSTNAME} ESMTP atollon-mail"
THROTTLED = "421 4.7.0 Too many failed authentications, try again later"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
BODY = b"From: Alice <alice@example.com>\r\nSubject: test\r\n\r\nHello.\r\n"


def codes(lines):
    return [line[:3] for line in lines]


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def plain(login: str, password: str, authzid: str = "") -> str:
    return b64(f"{authzid}\0{login}\0{password}")


def make_factory(
    intake=None, implicit_tls=False, settings=None, tls_options=TLS_OPTIONS, authenticator=None
):
    """A submission listener's factory; factory.policy.intake is the FakeSubmissionIntake."""
    intake = intake if intake is not None else FakeSubmissionIntake()
    clock = Clock()
    if authenticator is None:
        # The fake's authenticate stands for the argon2 check; the throttle is the real one.
        authenticator = Authenticator(intake.authenticate, clock)
    return SMTPServerFactory(
        SubmissionPolicy(intake, authenticator, HOSTNAME, clock),
        HOSTNAME,
        settings or make_settings(),
        clock,
        tls_options,
        listener=IMPLICIT_TLS_LISTENER if implicit_tls else SUBMISSION_LISTENER,
    )


def connect(factory, peer=UNTRUSTED_PEER) -> SubmissionSession:
    return SubmissionSession(factory, peer=peer)


def secured(factory=None, peer=UNTRUSTED_PEER) -> SubmissionSession:
    """A session after EHLO, STARTTLS and EHLO again; its output so far is read."""
    session = connect(factory if factory is not None else make_factory(), peer)
    session.ehlo()
    assert session.command("STARTTLS") == ["220 2.0.0 Ready to start TLS"]
    assert session.protocol.tls_active
    session.ehlo()
    return session


def logged_in(factory=None, peer=UNTRUSTED_PEER) -> SubmissionSession:
    session = secured(factory, peer)
    assert session.command(f"AUTH PLAIN {plain('alice', 'secret')}") == [
        "235 2.7.0 Authentication successful"
    ]
    return session


def fail_login(factory, peer=UNTRUSTED_PEER, login="alice") -> list[str]:
    """One connection with one wrong password; the replies to the AUTH."""
    session = connect(factory, peer)
    if session.closed:
        return session.replies()
    session.ehlo()
    session.command("STARTTLS")
    session.ehlo()
    return session.command(f"AUTH PLAIN {plain(login, 'wrong')}")


class FactoryTests(unittest.TestCase):
    def test_fake_intake_provides_the_interface(self):
        self.assertTrue(verifyObject(ISubmissionIntake, FakeSubmissionIntake()))

    def test_submission_policy_provides_the_interfaces(self):
        policy = make_factory().policy
        self.assertTrue(verifyObject(ISMTPPolicy, policy))
        self.assertTrue(verifyObject(ISMTPAuthPolicy, policy))

    def test_factory_builds_the_one_protocol(self):
        factory = make_factory()
        self.assertIsInstance(factory, SMTPServerFactory)
        protocol = factory.buildProtocol(None)
        self.assertIs(type(protocol), SMTPServerProtocol)
        self.assertIs(protocol.policy, factory.policy)
        self.assertFalse(factory.listener.implicit_tls)

    def test_module_never_imports_the_global_reactor(self):
        for module in (policies, server):
            source = inspect.getsource(module)
            self.assertNotIn("import reactor", source)
            self.assertNotIn("internet.reactor", source)

    def test_greeting_at_once_despite_a_greet_pause(self):
        settings = make_settings(greet_pause=5.0)
        session = connect(make_factory(settings=settings))
        self.assertEqual(session.replies(), [GREETING])
        self.assertEqual(settings.greet_pause, 5.0)  # the caller's settings are untouched

    def test_idle_timeout_as_inbound(self):
        session = connect(make_factory())
        session.replies()
        session.clock.advance(299)
        self.assertFalse(session.closed)
        session.clock.advance(1)
        self.assertTrue(session.replies()[0].startswith("421 4.4.2"))
        self.assertTrue(session.closed)

    def test_error_limit_as_inbound(self):
        session = connect(make_factory())
        session.replies()
        replies = session.send(b"FROB\r\n" * 30)
        self.assertEqual(len(replies), 22)
        self.assertTrue(replies[-1].startswith("421 4.7.0"))
        self.assertTrue(session.closed)


class TlsTests(unittest.TestCase):
    def test_before_tls_starttls_is_offered_and_auth_is_not(self):
        session = connect(make_factory())
        session.replies()
        ehlo = session.ehlo()
        self.assertEqual(ehlo[-1], "250 STARTTLS")
        self.assertFalse([line for line in ehlo if "AUTH" in line], ehlo)

    def test_auth_before_tls_is_refused(self):
        session = connect(make_factory())
        session.ehlo()
        for command in (f"AUTH PLAIN {plain('alice', 'secret')}", "AUTH LOGIN", "AUTH PLAIN"):
            self.assertEqual(
                session.command(command), ["530 5.7.0 Must issue a STARTTLS command first"]
            )
        self.assertEqual(session.intake.auth_calls, [])
        # no 334 was sent, so the next line is a command again
        self.assertEqual(session.command("NOOP"), ["250 2.0.0 Ok"])

    def test_after_starttls_auth_is_offered_and_starttls_is_not(self):
        session = connect(make_factory())
        session.ehlo()
        session.command("STARTTLS")
        ehlo = session.ehlo()
        self.assertEqual(ehlo[-1], "250 AUTH PLAIN LOGIN")
        self.assertNotIn("250-STARTTLS", ehlo)
        self.assertEqual(
            session.command(f"AUTH PLAIN {plain('alice', 'secret')}"),
            ["235 2.7.0 Authentication successful"],
        )

    def test_mail_before_auth_is_refused(self):
        session = connect(make_factory())
        session.ehlo()
        self.assertEqual(
            session.command("MAIL FROM:<alice@example.com>"),
            ["530 5.7.0 Authentication required"],
        )
        session.command("STARTTLS")
        session.ehlo()
        self.assertEqual(
            session.command("MAIL FROM:<alice@example.com>"),
            ["530 5.7.0 Authentication required"],
        )
        self.assertTrue(session.command("RCPT TO:<bob@example.com>")[0].startswith("503"))
        self.assertEqual(session.intake.lookups, [])

    def test_implicit_tls(self):
        session = connect(make_factory(implicit_tls=True))
        self.assertEqual(session.replies(), [GREETING])
        self.assertTrue(session.protocol.tls_active)
        ehlo = session.ehlo()
        self.assertEqual(ehlo[-1], "250 AUTH PLAIN LOGIN")
        self.assertFalse([line for line in ehlo if "STARTTLS" in line], ehlo)
        self.assertTrue(session.command("STARTTLS")[0].startswith("503 5.5.1"))
        self.assertEqual(session.transport.tls_starts, [])
        self.assertEqual(codes(session.command(f"AUTH PLAIN {plain('alice', 'secret')}")), ["235"])
        session.command("MAIL FROM:<alice@example.com>")
        session.command("RCPT TO:<bob@example.com>")
        session.command("DATA")
        self.assertEqual(session.send(BODY + b".\r\n"), ["250 2.0.0 Ok: queued as 1"])
        self.assertIn(b" with ESMTPSA id ", session.intake.submit_calls[0].raw)


class AuthTests(unittest.TestCase):
    def setUp(self):
        self.session = secured()
        self.policy = self.session.intake

    def assert_logged_in(self):
        self.assertEqual(self.session.protocol.authenticated_user, self.policy.users["alice"][1])
        self.assertEqual(codes(self.session.command("MAIL FROM:<alice@example.com>")), ["250"])

    def assert_not_logged_in(self):
        self.assertIsNone(self.session.protocol.authenticated_user)
        self.assertEqual(
            self.session.command("MAIL FROM:<alice@example.com>"),
            ["530 5.7.0 Authentication required"],
        )

    def test_plain_with_initial_response(self):
        self.assertEqual(
            self.session.command(f"AUTH PLAIN {plain('alice', 'secret')}"),
            ["235 2.7.0 Authentication successful"],
        )
        self.assertEqual(self.policy.auth_calls, [("alice", "secret")])
        self.assert_logged_in()

    def test_plain_with_continuation(self):
        self.assertEqual(self.session.command("AUTH PLAIN"), ["334 "])
        self.assertEqual(
            self.session.command(plain("alice", "secret")), ["235 2.7.0 Authentication successful"]
        )
        self.assert_logged_in()

    def test_plain_mechanism_name_is_case_insensitive(self):
        self.assertEqual(
            codes(self.session.command(f"auth plain {plain('alice', 'secret')}")), ["235"]
        )

    def test_plain_with_the_same_authorization_identity(self):
        reply = self.session.command(f"AUTH PLAIN {plain('alice', 'secret', authzid='alice')}")
        self.assertEqual(codes(reply), ["235"])

    def test_plain_acting_for_another_user_is_refused(self):
        reply = self.session.command(f"AUTH PLAIN {plain('alice', 'secret', authzid='bob')}")
        self.assertEqual(reply, ["535 5.7.8 Authentication credentials invalid"])
        self.assertEqual(self.policy.auth_calls, [])
        self.assert_not_logged_in()

    def test_login(self):
        self.assertEqual(self.session.command("AUTH LOGIN"), ["334 VXNlcm5hbWU6"])
        self.assertEqual(self.session.command(b64("alice")), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(
            self.session.command(b64("secret")), ["235 2.7.0 Authentication successful"]
        )
        self.assertEqual(self.policy.auth_calls, [("alice", "secret")])
        self.assert_logged_in()

    def test_login_with_the_username_on_the_command_line(self):
        self.assertEqual(self.session.command(f"AUTH LOGIN {b64('alice')}"), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(codes(self.session.command(b64("secret"))), ["235"])

    def test_login_exchange_pipelined(self):
        replies = self.session.send(
            f"AUTH LOGIN\r\n{b64('alice')}\r\n{b64('secret')}\r\n"
            "MAIL FROM:<alice@example.com>\r\nNOOP\r\n"
        )
        self.assertEqual(
            replies,
            [
                "334 VXNlcm5hbWU6",
                "334 UGFzc3dvcmQ6",
                "235 2.7.0 Authentication successful",
                "250 2.1.0 Ok",
                "250 2.0.0 Ok",
            ],
        )

    def test_cancel(self):
        self.assertEqual(self.session.command("AUTH PLAIN"), ["334 "])
        self.assertEqual(self.session.command("*"), ["501 5.7.0 Authentication cancelled"])
        self.assertEqual(self.session.command("NOOP"), ["250 2.0.0 Ok"])  # a command again
        self.session.command("AUTH LOGIN")
        self.session.command(b64("alice"))
        self.assertEqual(self.session.command("*"), ["501 5.7.0 Authentication cancelled"])
        self.assertEqual(self.policy.auth_calls, [])
        self.assert_not_logged_in()

    def test_malformed_base64(self):
        malformed = "501 5.5.2 Error: cannot decode the authentication response"
        self.assertEqual(self.session.command("AUTH PLAIN not*base64"), [malformed])
        self.assertEqual(self.session.command("AUTH PLAIN YWxp"[:-1]), [malformed])  # padding
        self.session.command("AUTH PLAIN")
        self.assertEqual(self.session.command("%%%"), [malformed])
        self.assertEqual(self.session.command("AUTH LOGIN !"), [malformed])
        self.session.command("AUTH LOGIN")
        self.session.command(b64("alice"))
        self.assertEqual(self.session.command("@@@@"), [malformed])
        self.assertEqual(self.policy.auth_calls, [])
        self.assert_not_logged_in()

    def test_malformed_plain_message(self):
        malformed = "501 5.5.2 Error: cannot decode the authentication response"
        for response in (
            b64("alice\0secret"),
            b64("\0alice\0se\0cret"),
            "=",
            b64(b"\0al\xffce\0x"),
        ):
            self.assertEqual(self.session.command(f"AUTH PLAIN {response}"), [malformed], response)
        self.assertEqual(self.policy.auth_calls, [])

    def test_wrong_password(self):
        self.assertEqual(
            self.session.command(f"AUTH PLAIN {plain('alice', 'wrong')}"),
            ["535 5.7.8 Authentication credentials invalid"],
        )
        self.assert_not_logged_in()
        # a further attempt on the same connection may succeed
        self.assertEqual(
            codes(self.session.command(f"AUTH PLAIN {plain('alice', 'secret')}")), ["235"]
        )

    def test_unknown_user(self):
        self.session.command("AUTH LOGIN")
        self.session.command(b64("mallory"))
        self.assertEqual(
            self.session.command(b64("secret")), ["535 5.7.8 Authentication credentials invalid"]
        )
        self.assert_not_logged_in()

    def test_already_authenticated(self):
        self.session.command(f"AUTH PLAIN {plain('alice', 'secret')}")
        self.assertEqual(
            self.session.command(f"AUTH PLAIN {plain('alice', 'secret')}"),
            ["503 5.5.1 Error: already authenticated"],
        )
        self.assertEqual(len(self.policy.auth_calls), 1)

    def test_auth_needs_ehlo(self):
        session = connect(make_factory(implicit_tls=True))
        session.replies()
        self.assertTrue(session.command("AUTH LOGIN")[0].startswith("503 5.5.1"))
        session.command("HELO client.example.org")
        self.assertTrue(session.command("AUTH LOGIN")[0].startswith("503 5.5.1"))

    def test_syntax_and_unknown_mechanisms(self):
        self.assertTrue(self.session.command("AUTH")[0].startswith("501 5.5.4"))
        self.assertTrue(self.session.command("AUTH PLAIN a b")[0].startswith("501 5.5.4"))
        self.assertTrue(self.session.command("AUTH CRAM-MD5")[0].startswith("504 5.5.4"))
        self.assertEqual(self.session.command("NOOP"), ["250 2.0.0 Ok"])

    def test_overlong_response_line(self):
        self.session.command("AUTH PLAIN")
        reply = self.session.command("A" * (server.MAX_AUTH_RESPONSE + 4))
        self.assertEqual(reply, ["500 5.5.6 Authentication exchange line is too long"])
        self.assertEqual(self.session.command("NOOP"), ["250 2.0.0 Ok"])

    def test_store_failure_is_temporary_and_not_counted(self):
        self.policy.fail_auth = True
        self.assertEqual(
            self.session.command(f"AUTH PLAIN {plain('alice', 'secret')}"),
            ["454 4.7.0 Temporary authentication failure, try again later"],
        )
        self.assertEqual(len(self.session.factory.policy.authenticator.by_address), 0)
        self.assertEqual(len(self.session.factory.policy.authenticator.by_login), 0)
        self.assert_not_logged_in()
        self.flushLoggedErrors(LookupUnavailable)

    def test_identities_unavailable(self):
        self.policy.fail_identities = True
        self.assertEqual(
            codes(self.session.command(f"AUTH PLAIN {plain('alice', 'secret')}")), ["454"]
        )
        self.assert_not_logged_in()
        self.flushLoggedErrors(LookupUnavailable)

    def test_rset_and_ehlo_keep_the_login(self):
        self.session.command(f"AUTH PLAIN {plain('alice', 'secret')}")
        self.session.command("RSET")
        self.session.ehlo()
        self.assert_logged_in()

    def test_pipelined_auth_then_mail_in_order(self):
        self.policy.hold_auth = True
        replies = self.session.send(
            f"AUTH PLAIN {plain('alice', 'secret')}\r\n"
            "MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
        )
        self.assertEqual(replies, [])  # MAIL waits for the login
        self.assertEqual(self.policy.lookups, [])
        self.policy.pending_auths[0].fire()
        self.assertEqual(
            self.session.replies(),
            [
                "235 2.7.0 Authentication successful",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
            ],
        )

    def test_pipelined_failed_auth_then_mail(self):
        self.policy.hold_auth = True
        self.session.send(
            f"AUTH PLAIN {plain('alice', 'wrong')}\r\nMAIL FROM:<alice@example.com>\r\n"
        )
        self.policy.pending_auths[0].fire()
        self.assertEqual(
            self.session.replies(),
            ["535 5.7.8 Authentication credentials invalid", "530 5.7.0 Authentication required"],
        )

    def test_starttls_discards_a_pipelined_auth(self):
        session = connect(make_factory())
        session.ehlo()
        replies = session.send(f"STARTTLS\r\nAUTH PLAIN {plain('alice', 'secret')}\r\n")
        self.assertEqual(replies, ["220 2.0.0 Ready to start TLS"])
        self.assertEqual(session.intake.auth_calls, [])


class ThrottleTests(unittest.TestCase):
    """LOGIN_LIMIT (5) attempts at one login from one address block that login from that
    address; ADDRESS_LIMIT (20) attempts from one address block the address."""

    def setUp(self):
        self.factory = make_factory()
        self.clock = self.factory.clock
        self.policy = self.factory.policy.intake
        self.policy.add_user("bob", "hunter2", ("bob@example.com",))

    def block_login(self, peer=UNTRUSTED_PEER, login="alice"):
        for _ in range(LOGIN_LIMIT - 1):
            self.assertEqual(fail_login(self.factory, peer, login), [AUTH_FAILED])
        return fail_login(self.factory, peer, login)

    def block_address(self, peer=UNTRUSTED_PEER):
        """ADDRESS_LIMIT failures, each at another login (no login is blocked by itself)."""
        for number in range(ADDRESS_LIMIT - 1):
            self.assertEqual(fail_login(self.factory, peer, f"user{number}"), [AUTH_FAILED])
        return fail_login(self.factory, peer, "last")

    def auth(self, peer=UNTRUSTED_PEER, login="alice", password="secret", factory=None):
        session = secured(factory or self.factory, peer)
        return session.command(f"AUTH PLAIN {plain(login, password)}")

    def test_fifth_failure_disconnects(self):
        session = secured(self.factory)
        for _ in range(4):
            self.assertEqual(codes(session.command(f"AUTH PLAIN {plain('alice', 'x')}")), ["535"])
        self.assertEqual(
            session.command(f"AUTH PLAIN {plain('alice', 'x')}"), [AUTH_FAILED, THROTTLED]
        )
        self.assertTrue(session.closed)

    def test_failures_count_across_connections(self):
        self.assertEqual(self.block_login(), [AUTH_FAILED, THROTTLED])
        calls = len(self.policy.auth_calls)
        self.assertEqual(self.auth(), [THROTTLED])  # not even the right password
        self.assertEqual(len(self.policy.auth_calls), calls)

    def test_a_blocked_login_leaves_other_logins_from_the_same_address(self):
        # Behind one NAT or proxy, an attacker guessing alice does not lock out bob.
        self.block_login()
        self.assertEqual(connect(self.factory).replies(), [GREETING])
        self.assertEqual(codes(self.auth(login="bob", password="hunter2")), ["235"])
        self.assertEqual(codes(self.auth(OTHER_PEER)), ["235"])  # nor alice elsewhere

    def test_twentieth_failure_blocks_the_address(self):
        self.assertEqual(self.block_address(), [AUTH_FAILED, THROTTLED])

    def test_new_connection_from_a_blocked_address_is_refused(self):
        self.block_address()
        timers = len(self.clock.getDelayedCalls())
        session = connect(self.factory)
        self.assertEqual(session.replies(), [THROTTLED])  # no greeting
        self.assertTrue(session.closed)
        self.assertEqual(len(self.clock.getDelayedCalls()), timers)  # no idle timer either
        self.assertEqual(session.send(b"EHLO x\r\n"), [])

    def test_other_address_is_not_affected(self):
        self.block_address()
        session = connect(self.factory, OTHER_PEER)
        self.assertEqual(session.replies(), [GREETING])
        logged_in(self.factory, OTHER_PEER)

    def test_open_connection_is_refused_at_auth(self):
        early = secured(self.factory)
        self.block_address()
        calls = len(self.policy.auth_calls)
        self.assertEqual(early.command(f"AUTH PLAIN {plain('bob', 'hunter2')}"), [THROTTLED])
        self.assertTrue(early.closed)
        self.assertEqual(len(self.policy.auth_calls), calls)  # not even the right password

    def test_released_ten_minutes_after_the_last_failure(self):
        for _ in range(4):
            fail_login(self.factory)
            self.clock.advance(100)
        fail_login(self.factory)  # at t=400
        self.clock.advance(599)
        self.assertEqual(self.auth(), [THROTTLED])
        self.clock.advance(1)
        logged_in(self.factory)

    def test_blocked_address_released_ten_minutes_after_its_last_failure(self):
        self.block_address()
        self.clock.advance(599)
        self.assertEqual(connect(self.factory).replies(), [THROTTLED])
        self.clock.advance(1)
        self.assertEqual(connect(self.factory).replies(), [GREETING])
        logged_in(self.factory)

    def test_failures_spread_over_more_than_ten_minutes_do_not_block(self):
        for _ in range(6):
            self.assertEqual(codes(fail_login(self.factory)), ["535"])
            self.clock.advance(150)
        logged_in(self.factory)

    def test_a_successful_login_resets_that_login_but_not_the_address(self):
        for _ in range(4):
            fail_login(self.factory)
        logged_in(self.factory)  # the right password: alice starts afresh from here
        for _ in range(4):
            self.assertEqual(fail_login(self.factory), [AUTH_FAILED])
        # The address keeps all 8 failures: an attacker logging in to an account of its
        # own between guesses does not get a fresh allowance.
        for number in range(ADDRESS_LIMIT - 9):
            self.assertEqual(fail_login(self.factory, login=f"user{number}"), [AUTH_FAILED])
        self.assertEqual(fail_login(self.factory, login="last"), [AUTH_FAILED, THROTTLED])
        self.assertEqual(connect(self.factory).replies(), [THROTTLED])

    def test_parallel_attempts_count_against_the_limit(self):
        self.policy.hold_auth = True
        sessions = [secured(self.factory) for _ in range(5)]
        for session in sessions:
            self.assertEqual(session.command(f"AUTH PLAIN {plain('alice', 'x')}"), [])
        self.assertEqual(self.auth(), [THROTTLED])  # the right password, in the same burst
        self.assertEqual(len(self.policy.auth_calls), 5)
        # another address still gets its turn, and so does another login from this one
        self.assertEqual(self.auth(OTHER_PEER), [])
        self.assertEqual(self.auth(login="bob", password="hunter2"), [])
        for pending in self.policy.pending_auths[:5]:
            pending.fire()
        self.assertEqual(sessions[-1].replies()[-1], THROTTLED)
        self.assertEqual(self.auth(), [THROTTLED])

    def test_parallel_attempts_at_many_logins_count_against_the_address(self):
        self.policy.hold_auth = True
        for number in range(ADDRESS_LIMIT):
            self.assertEqual(self.auth(login=f"user{number}", password="x"), [])
        self.assertEqual(self.auth(login="bob", password="hunter2"), [THROTTLED])
        self.assertEqual(len(self.policy.auth_calls), ADDRESS_LIMIT)

    def test_a_disconnected_attempt_still_counts(self):
        self.policy.hold_auth = True
        session = secured(self.factory)
        session.command(f"AUTH PLAIN {plain('alice', 'x')}")
        session.protocol.connectionLost(None)
        self.policy.pending_auths[0].fire()
        self.assertEqual(len(self.factory.policy.authenticator.by_address), 1)
        self.assertEqual(len(self.factory.policy.authenticator.by_login), 1)

    def test_factories_can_share_the_authenticator(self):
        starttls = make_factory()
        implicit = make_factory(
            starttls.policy.intake,
            implicit_tls=True,
            authenticator=starttls.policy.authenticator,
        )
        for _ in range(5):
            fail_login(starttls)
        session = connect(implicit)
        session.ehlo()
        self.assertEqual(session.command(f"AUTH PLAIN {plain('alice', 'secret')}"), [THROTTLED])

    def test_ipv6_is_counted_per_64(self):
        self.block_address("2001:db8::1")
        self.assertEqual(connect(self.factory, "2001:db8::ffff").replies(), [THROTTLED])
        self.assertEqual(connect(self.factory, "2001:db8:0:1::1").replies(), [GREETING])

    def test_tables_are_bounded(self):
        authenticator = self.factory.policy.authenticator
        authenticator.by_address.max_keys = authenticator.by_login.max_keys = 3
        peers = [f"192.0.2.{number}" for number in range(1, 6)]
        for peer in peers:
            for _ in range(4):
                fail_login(self.factory, peer)
        self.assertEqual(len(authenticator.by_address), 3)
        self.assertEqual(len(authenticator.by_login), 3)
        # the oldest entries went first: 192.0.2.1 starts afresh, 192.0.2.5 does not
        self.assertEqual(codes(fail_login(self.factory, peers[0])), ["535"])
        self.assertEqual(fail_login(self.factory, peers[4])[-1], THROTTLED)
        self.assertEqual(len(authenticator.by_address), 3)

    def test_expired_entries_are_dropped(self):
        for number in range(1, 50):
            fail_login(self.factory, f"192.0.2.{number}")
        self.assertEqual(len(self.factory.policy.authenticator.by_address), 49)
        self.clock.advance(600)
        fail_login(self.factory, OTHER_PEER)
        self.assertEqual(len(self.factory.policy.authenticator.by_address), 1)


class SenderTests(unittest.TestCase):
    def setUp(self):
        self.session = logged_in()

    def test_owned_address(self):
        self.assertEqual(self.session.command("MAIL FROM:<alice@example.com>"), ["250 2.1.0 Ok"])

    def test_case_is_ignored(self):
        for sender in ("<ALICE@Example.Com>", "<alice.sales@example.com>"):
            self.assertEqual(self.session.command(f"MAIL FROM:{sender}"), ["250 2.1.0 Ok"])
            self.session.command("RSET")

    def test_address_not_owned(self):
        self.assertEqual(
            self.session.command("MAIL FROM:<bob@example.com>"),
            ["553 5.7.1 <bob@example.com>: Sender address rejected: not owned by user alice"],
        )
        self.assertTrue(self.session.command("RCPT TO:<bob@example.com>")[0].startswith("503"))
        for sender in (
            "<alice@example.com.evil.example>",
            "<alice@examplecom>",
            "<xalice@example.com>",
        ):
            self.assertEqual(codes(self.session.command(f"MAIL FROM:{sender}")), ["553"], sender)

    def test_null_sender_refused(self):
        self.assertEqual(
            self.session.command("MAIL FROM:<>"),
            ["553 5.7.1 <>: Sender address rejected: not owned by user alice"],
        )

    def test_syntax_errors_come_first(self):
        self.assertTrue(self.session.command("MAIL FROM:bob")[0].startswith("501"))

    def test_identities_are_read_again_at_every_mail(self):
        policy = self.session.intake
        self.assertEqual(self.session.command("MAIL FROM:<alice@example.com>"), ["250 2.1.0 Ok"])
        self.session.command("RSET")
        # Changed in the store since the login (say, become another mailbox's address).
        policy.identities["alice"] = policy.identities["alice"][1:]
        self.assertEqual(
            self.session.command("MAIL FROM:<alice@example.com>"),
            ["553 5.7.1 <alice@example.com>: Sender address rejected: not owned by user alice"],
        )
        self.assertEqual(
            self.session.command("MAIL FROM:<alice.sales@example.com>"), ["250 2.1.0 Ok"]
        )

    def test_identities_unavailable_at_mail_is_temporary(self):
        self.session.intake.fail_identities = True
        self.assertEqual(
            self.session.command("MAIL FROM:<alice@example.com>"),
            ["451 4.3.0 Error: cannot check the sender now, try again later"],
        )
        self.flushLoggedErrors(LookupUnavailable)
        self.assertTrue(self.session.command("RCPT TO:<bob@example.com>")[0].startswith("503"))
        self.session.intake.fail_identities = False
        self.assertEqual(self.session.command("MAIL FROM:<alice@example.com>"), ["250 2.1.0 Ok"])

    def test_international_domain_matches_its_ascii_form(self):
        policy = FakeSubmissionIntake()
        policy.add_user("alice", "secret", ("alice@bücher.example",))
        session = logged_in(make_factory(policy))
        self.assertEqual(
            session.command("MAIL FROM:<alice@xn--bcher-kva.example>"), ["250 2.1.0 Ok"]
        )


class RecipientTests(unittest.TestCase):
    def setUp(self):
        self.session = logged_in()
        self.policy = self.session.intake
        self.session.command("MAIL FROM:<alice@example.com>")

    def test_local_and_remote_recipients_are_split(self):
        for recipient in (
            "<bob@example.com>",
            "<carol@Remote.Example>",
            "<alice@EXAMPLE.com>",
            "<dave@elsewhere.example>",
            "<carol@remote.example>",  # the same remote recipient again
        ):
            self.assertEqual(self.session.command(f"RCPT TO:{recipient}"), ["250 2.1.5 Ok"])
        self.session.command("DATA")
        self.assertEqual(self.session.send(BODY + b".\r\n"), ["250 2.0.0 Ok: queued as 1"])
        (call,) = self.policy.submit_calls
        self.assertEqual(call.login, "alice")
        self.assertEqual(call.envelope_sender, "alice@example.com")
        self.assertEqual(
            call.identity,
            SendingIdentity(
                mailbox_id=1, mailbox_address="alice@example.com", identity="alice@example.com"
            ),
        )
        self.assertEqual(
            call.local_recipients,
            (self.policy.mailboxes["bob@example.com"], self.policy.mailboxes["alice@example.com"]),
        )
        self.assertEqual(call.remote_recipients, ("carol@remote.example", "dave@elsewhere.example"))
        self.assertEqual(self.policy.accept_calls, [])  # the inbound path is not used

    def test_identity_of_the_envelope_sender_is_submitted(self):
        self.session.command("RSET")
        self.session.command("MAIL FROM:<alice.sales@example.com>")
        self.session.command("RCPT TO:<bob@example.com>")
        self.session.command("DATA")
        self.session.send(b"From: alice.sales@example.com\r\n\r\nx\r\n.\r\n")
        self.assertEqual(self.policy.submit_calls[0].identity.identity, "Alice.Sales@Example.COM")

    def test_our_domains_still_refuse_unknown_and_inactive(self):
        self.policy.add_mailbox("gone@example.com")
        self.policy.inactive_mailboxes.add("gone@example.com")
        self.policy.add_mailbox("x@closed.example")
        self.policy.inactive_domains.add("closed.example")
        for recipient in ("<nobody@example.com>", "<gone@example.com>", "<x@closed.example>"):
            reply = self.session.command(f"RCPT TO:{recipient}")
            self.assertTrue(reply[0].startswith("550 5.1.1"), (recipient, reply))

    def test_relay_disguises_are_refused_even_when_authenticated(self):
        for recipient in (
            "<carol%other.example@example.com>",
            '<"carol@other.example"@example.com>',
            "<other.example!carol@example.com>",
            "<@relay.example:carol@other.example>",
            "<carol@[192.0.2.1]>",
        ):
            reply = self.session.command(f"RCPT TO:{recipient}")
            self.assertTrue(reply[0].startswith("554 5.7.1"), (recipient, reply))
        self.assertEqual(self.policy.lookups, [])

    def test_lookup_failure_is_temporary(self):
        self.policy.fail_lookups = True
        self.assertTrue(
            self.session.command("RCPT TO:<bob@example.com>")[0].startswith("451 4.3.0")
        )
        self.flushLoggedErrors(LookupUnavailable)


class DataTests(unittest.TestCase):
    def setUp(self):
        self.session = logged_in()
        self.policy = self.session.intake

    def send(self, message: bytes, sender="<alice@example.com>") -> list[str]:
        self.session.command(f"MAIL FROM:{sender}")
        self.session.command("RCPT TO:<bob@example.com>")
        self.session.command("DATA")
        return self.session.send(message + b".\r\n")

    def header_section(self, raw: bytes) -> bytes:
        return raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"

    def test_received_header_says_esmtpsa(self):
        self.assertEqual(self.send(BODY), ["250 2.0.0 Ok: queued as 1"])
        raw = self.policy.submit_calls[0].raw
        self.assertTrue(raw.startswith(b"Received: from client.example.org ([198.51.100.7])"))
        self.assertIn(f"by {HOSTNAME} (atollon-mail) with ESMTPSA id ".encode(), raw)
        self.assertTrue(raw.endswith(b"\r\n\r\nHello.\r\n"))

    def test_message_id_and_date_added_when_missing(self):
        factory = make_factory()
        factory.clock.advance(86400)
        self.session = logged_in(factory)
        self.policy = factory.policy.intake
        self.send(BODY)
        header = self.header_section(self.policy.submit_calls[0].raw)
        self.assertRegex(
            header, rb"\r\nMessage-ID: <[0-9a-f]{32}@" + re.escape(HOSTNAME.encode()) + rb">\r\n"
        )
        self.assertIn(b"\r\nDate: Fri, 02 Jan 1970 00:00:00 +0000\r\n", header)
        self.send(BODY)
        first, second = (call.raw for call in self.policy.submit_calls)
        message_id = re.compile(rb"Message-ID: (<[^>]+>)")
        self.assertNotEqual(message_id.search(first)[1], message_id.search(second)[1])

    def test_message_id_and_date_kept_when_present(self):
        message = (
            b"message-id: <own@client.example>\r\nDATE: Mon, 1 Jan 2024 10:00:00 +0100\r\n" + BODY
        )
        self.assertEqual(codes(self.send(message)), ["250"])
        raw = self.policy.submit_calls[0].raw
        self.assertEqual(raw.lower().count(b"message-id:"), 1)
        self.assertEqual(raw.lower().count(b"\r\ndate:"), 1)
        self.assertTrue(raw.endswith(message))

    def test_headers_only_message_gets_its_headers_too(self):
        self.assertEqual(codes(self.send(b"From: alice@example.com\r\nSubject: x\r\n")), ["250"])
        raw = self.policy.submit_calls[0].raw
        self.assertTrue(raw.endswith(b"Subject: x\r\nMessage-ID: " + raw.split(b"Message-ID: ")[1]))
        self.assertIn(b"\r\nDate: ", raw)

    def test_from_header_owned(self):
        for from_header in (
            b"Alice <ALICE@example.COM>",
            b'"Sales" <alice.sales@example.com>, alice@example.com',
            b"=?utf-8?q?Al=C3=AFce?= <alice@example.com>",
        ):
            reply = self.send(b"From: " + from_header + b"\r\n\r\nx\r\n")
            self.assertEqual(codes(reply), ["250"], from_header)

    def test_from_header_not_owned(self):
        messages = [
            b"From: Bob <bob@example.com>\r\n\r\nx\r\n",
            b"From: alice@example.com, bob@example.com\r\n\r\nx\r\n",
            b'From: "alice@example.com" <bob@example.com>\r\n\r\nx\r\n',
            b"From: alice@example.com\r\nfrom: bob@example.com\r\n\r\nx\r\n",
            b"From: Alice <alice@example.com>,\r\n\tBob <bob@example.com>\r\n\r\nx\r\n",
            b"Subject: hello\r\nnot a header line\r\nFrom: bob@example.com\r\n\r\nx\r\n",
            b"From : bob@example.com\r\n\r\nx\r\n",
            b"From: undisclosed\r\n\r\nx\r\n",
            b"From:\r\n\r\nx\r\n",
            b"From: alice@example.com@evil.example\r\n\r\nx\r\n",
        ]
        for message in messages:
            reply = self.send(message)
            self.assertEqual(len(reply), 1, message)
            self.assertTrue(reply[0].startswith("553 5.7.1 From: header address <"), reply)
            self.assertTrue(reply[0].endswith("> not owned by user alice"), reply)
        self.assertEqual(self.policy.submit_calls, [])
        self.assertEqual(
            self.send(b"From: Bob <bob@example.com>\r\n\r\nx\r\n"),
            ["553 5.7.1 From: header address <bob@example.com> not owned by user alice"],
        )
        # the session goes on
        self.assertEqual(codes(self.send(BODY)), ["250"])

    def test_sender_header_checked_like_from(self):
        self.assertEqual(
            codes(
                self.send(
                    b"From: alice@example.com\r\nSender: Alice.Sales@example.com\r\n\r\nx\r\n"
                )
            ),
            ["250"],
        )
        for message in (
            b"From: alice@example.com\r\nSender: Bob <bob@example.com>\r\n\r\nx\r\n",
            b"Sender: ceo@bank.example\r\n\r\nx\r\n",
            b"From: alice@example.com\r\nSENDER:\r\n bob@example.com\r\n\r\nx\r\n",
        ):
            reply = self.send(message)
            self.assertEqual(len(reply), 1, message)
            self.assertTrue(reply[0].startswith("553 5.7.1 Sender: header address <"), reply)
        self.assertEqual(len(self.policy.submit_calls), 1)
        self.assertEqual(
            self.send(b"From: alice@example.com\r\nSender: ceo@bank.example\r\n\r\nx\r\n"),
            ["553 5.7.1 Sender: header address <ceo@bank.example> not owned by user alice"],
        )

    def test_from_in_the_body_is_not_a_header(self):
        message = b"From: alice@example.com\r\n\r\nFrom: bob@example.com\r\n"
        self.assertEqual(codes(self.send(message)), ["250"])

    def test_missing_from_header_is_accepted_as_written(self):
        self.assertEqual(codes(self.send(b"Subject: no sender\r\n\r\nx\r\n")), ["250"])
        raw = self.policy.submit_calls[0].raw
        self.assertNotIn(b"\r\nFrom:", raw)

    def test_submit_failure_is_temporary(self):
        self.policy.fail_submit = True
        self.assertEqual(
            self.send(BODY), ["451 4.3.0 Requested action aborted: local error in processing"]
        )
        self.flushLoggedErrors(StorageFailed)

    def test_smtputf8_message(self):
        policy = FakeSubmissionIntake()
        policy.add_user("alice", "secret", ("jöran@example.com",))
        session = logged_in(make_factory(policy))
        session.command("MAIL FROM:<jöran@example.com> SMTPUTF8")
        session.command("RCPT TO:<bob@example.com>")
        session.command("DATA")
        reply = session.send("From: Jöran <jöran@example.com>\r\n\r\nHej\r\n.\r\n".encode())
        self.assertEqual(codes(reply), ["250"])
        self.assertIn(b" with UTF8SMTPSA id ", policy.submit_calls[0].raw)
