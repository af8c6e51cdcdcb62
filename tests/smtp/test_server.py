"""The inbound SMTP server protocol, driven over StringTransport with a Clock."""

from __future__ import annotations

import base64
import inspect
import re

from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from atollon_mail.interfaces import IMailIntake, ISMTPAuthPolicy, ISMTPPolicy
from atollon_mail.smtp import server
from atollon_mail.smtp.policies import MXPolicy
from atollon_mail.smtp.server import (
    HARD_BUFFER,
    MAX_PARTIAL_LINE,
    SMTPServerFactory,
    SMTPServerProtocol,
)
from atollon_mail.smtp.session import IMPLICIT_TLS_LISTENER, Accept, Reply
from atollon_mail.store.records import Recipient, StoredMessage

from .fakes import (
    HOSTNAME,
    UNTRUSTED_PEER,
    FakeIntake,
    LookupUnavailable,
    Session,
    StorageFailed,
    TLSRecordingTransport,
    make_settings,
)

ENHANCED = re.compile(r"^[245]\d\d [245]\.\d{1,3}\.\d{1,3} ")
BODY = b"From: a@example.org\r\nSubject: test\r\n\r\nHello.\r\n"
TLS_OPTIONS = object()  # the protocol only hands it to transport.startTLS


def codes(lines):
    return [line[:3] for line in lines]


class FakesTests(unittest.TestCase):
    def test_fake_intake_provides_the_interface(self):
        self.assertTrue(verifyObject(IMailIntake, FakeIntake()))

    def test_mx_policy_provides_the_interface(self):
        self.assertTrue(verifyObject(ISMTPPolicy, MXPolicy(FakeIntake(), HOSTNAME)))

    def test_factory_builds_the_protocol(self):
        factory = SMTPServerFactory(
            MXPolicy(FakeIntake(), HOSTNAME), HOSTNAME, make_settings(), None
        )
        protocol = factory.buildProtocol(None)
        self.assertIsInstance(protocol, SMTPServerProtocol)
        self.assertIsNone(protocol.authenticated_user)
        self.assertIs(protocol.factory, factory)

    def test_factory_uses_its_protocol_attribute(self):
        class Submission(SMTPServerProtocol):
            pass

        class SubmissionFactory(SMTPServerFactory):
            protocol = Submission

        factory = SubmissionFactory(
            MXPolicy(FakeIntake(), HOSTNAME), HOSTNAME, make_settings(), None
        )
        self.assertIsInstance(factory.buildProtocol(None), Submission)

    def test_trusted_networks(self):
        factory = SMTPServerFactory(
            MXPolicy(FakeIntake(), HOSTNAME), HOSTNAME, make_settings(), None
        )
        self.assertTrue(factory.is_trusted("127.0.0.5"))
        self.assertTrue(factory.is_trusted("::1"))
        self.assertFalse(factory.is_trusted("198.51.100.7"))
        self.assertFalse(factory.is_trusted(None))

    def test_server_never_imports_the_global_reactor(self):
        source = inspect.getsource(server)
        self.assertNotIn("import reactor", source)
        self.assertNotIn("internet.reactor", source)


class GreetingTests(unittest.TestCase):
    def test_greeting_waits_for_the_greet_pause(self):
        session = Session(wait_for_greeting=False)
        self.assertEqual(session.output(), "")
        session.clock.advance(0.9)
        self.assertEqual(session.output(), "")
        session.clock.advance(0.1)
        self.assertEqual(session.replies(), [f"220 {HOSTNAME} ESMTP atollon-mail"])

    def test_trusted_network_is_greeted_at_once(self):
        for peer in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            session = Session(peer=peer, wait_for_greeting=False)
            self.assertEqual(session.replies(), [f"220 {HOSTNAME} ESMTP atollon-mail"], peer)

    def test_no_pause_configured(self):
        session = Session(settings=make_settings(greet_pause=0), wait_for_greeting=False)
        self.assertEqual(codes(session.replies()), ["220"])

    def test_pregreet_talker_is_refused_and_nothing_runs(self):
        session = Session(wait_for_greeting=False)
        replies = session.send(
            b"EHLO spam.example\r\nMAIL FROM:<a@spam.example>\r\nRCPT TO:<alice@example.com>\r\n"
        )
        self.assertEqual(len(replies), 1)
        self.assertTrue(replies[0].startswith("554 5.5.0 "), replies)
        self.assertTrue(session.closed)
        session.clock.advance(10)
        self.assertEqual(session.replies(), [])  # no greeting after all
        session.send(b"DATA\r\n")
        self.assertEqual(session.replies(), [])
        self.assertEqual(session.intake.lookups, [])
        self.assertEqual(session.clock.getDelayedCalls(), [])

    def test_pregreet_partial_line_is_refused_too(self):
        session = Session(wait_for_greeting=False)
        self.assertTrue(session.send(b"E")[0].startswith("554 5.5.0"))
        self.assertTrue(session.closed)


class CommandTests(unittest.TestCase):
    def setUp(self):
        self.session = Session()
        self.session.replies()

    def test_ehlo_keywords(self):
        self.assertEqual(
            self.session.ehlo(),
            [
                f"250-{HOSTNAME}",
                "250-PIPELINING",
                "250-SIZE 65536",
                "250-8BITMIME",
                "250-SMTPUTF8",
                "250 ENHANCEDSTATUSCODES",
            ],
        )

    def test_ehlo_and_helo_need_an_argument(self):
        self.assertTrue(self.session.command("EHLO")[0].startswith("501 5.5.4"))
        self.assertTrue(self.session.command("HELO ")[0].startswith("501 5.5.4"))

    def test_helo(self):
        self.assertEqual(self.session.command("HELO client.example.org"), [f"250 {HOSTNAME}"])
        self.assertEqual(codes(self.session.command("MAIL FROM:<a@example.org>")), ["250"])

    def test_commands_are_case_insensitive(self):
        session = self.session
        self.assertEqual(codes(session.command("ehlo client.example.org"))[-1], "250")
        self.assertEqual(session.command("mail from:<a@example.org>"), ["250 2.1.0 Ok"])
        self.assertEqual(session.command("Rcpt To:<alice@example.com>"), ["250 2.1.5 Ok"])
        self.assertEqual(codes(session.command("DaTa")), ["354"])
        self.assertTrue(session.send(BODY + b".\r\n")[0].startswith("250 2.0.0"))
        self.assertEqual(session.command("nOoP"), ["250 2.0.0 Ok"])
        self.assertEqual(session.command("quit"), ["221 2.0.0 Bye"])

    def test_noop_rset_quit(self):
        session = self.session
        self.assertEqual(session.command("NOOP"), ["250 2.0.0 Ok"])
        session.start()
        self.assertEqual(session.command("RSET"), ["250 2.0.0 Ok"])
        self.assertTrue(session.command("RCPT TO:<alice@example.com>")[0].startswith("503 5.5.1"))
        self.assertTrue(session.command("RSET now")[0].startswith("501 5.5.4"))
        self.assertFalse(session.closed)
        self.assertEqual(session.command("QUIT"), ["221 2.0.0 Bye"])
        self.assertTrue(session.closed)
        self.assertEqual(session.command("NOOP"), [])

    def test_vrfy_does_not_reveal_addresses(self):
        reply = self.session.command("VRFY alice@example.com")
        self.assertEqual(len(reply), 1)
        self.assertTrue(reply[0].startswith("252 2.5.2 "))
        self.assertNotIn("alice", reply[0])
        self.assertEqual(self.session.intake.lookups, [])
        self.assertTrue(self.session.command("VRFY")[0].startswith("501 5.5.4"))

    def test_expn_and_help(self):
        self.assertTrue(self.session.command("EXPN staff")[0].startswith("502 5.5.1"))
        self.assertTrue(self.session.command("HELP")[0].startswith("214 2.0.0"))

    def test_unknown_and_empty_commands(self):
        for line in ("FROB", "", "MAIL\tFROM:<a@example.org>", "X" * 40, "\u00c9HLO x"):
            self.assertTrue(self.session.command(line)[0].startswith("500 5.5.2"), line)

    def test_every_reply_carries_an_enhanced_status_code(self):
        session = self.session
        session.ehlo()
        lines = []
        for line in (
            "NOOP",
            "MAIL FROM:<a@example.org>",
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<nobody@example.com>",
            "RCPT TO:<alice@example.com>",
            "RCPT TO:<x@elsewhere.example>",
            "RCPT TO:bad",
            "VRFY x",
            "EXPN x",
            "HELP",
            "FROB",
            "STARTTLS",
            "RSET",
            "DATA",
        ):
            lines += session.command(line)
        for line in lines:
            self.assertRegex(line, ENHANCED)

    def test_http_verbs_are_hung_up_on(self):
        for verb in ("GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE", "PATCH", "get"):
            session = Session()
            session.replies()
            replies = session.send(f"{verb} / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(len(replies), 1, verb)
            self.assertTrue(replies[0].startswith("221 2.7.0 "), replies)
            self.assertTrue(session.closed, verb)


class OrderTests(unittest.TestCase):
    def setUp(self):
        self.session = Session()
        self.session.replies()

    def test_mail_before_helo(self):
        self.assertTrue(
            self.session.command("MAIL FROM:<a@example.org>")[0].startswith("503 5.5.1")
        )

    def test_rcpt_before_mail(self):
        self.session.ehlo()
        self.assertTrue(
            self.session.command("RCPT TO:<alice@example.com>")[0].startswith("503 5.5.1")
        )
        self.assertEqual(self.session.intake.lookups, [])

    def test_data_before_mail(self):
        self.session.ehlo()
        self.assertTrue(self.session.command("DATA")[0].startswith("503 5.5.1"))

    def test_data_without_a_valid_recipient(self):
        self.session.ehlo()
        self.session.command("MAIL FROM:<a@example.org>")
        self.assertTrue(self.session.command("RCPT TO:<nobody@example.com>")[0].startswith("550"))
        reply = self.session.command("DATA")
        self.assertTrue(reply[0].startswith("554 5.5.1 "), reply)
        self.assertIn("no valid recipients", reply[0])
        # still in command mode: the next line is a command
        self.assertEqual(self.session.command("NOOP"), ["250 2.0.0 Ok"])

    def test_nested_mail(self):
        self.session.ehlo()
        self.session.command("MAIL FROM:<a@example.org>")
        self.assertTrue(
            self.session.command("MAIL FROM:<b@example.org>")[0].startswith("503 5.5.1")
        )

    def test_ehlo_resets_the_transaction(self):
        self.session.start()
        self.session.ehlo()
        self.assertTrue(self.session.command("DATA")[0].startswith("503 5.5.1"))
        self.assertEqual(codes(self.session.command("MAIL FROM:<a@example.org>")), ["250"])


class MailTests(unittest.TestCase):
    def setUp(self):
        self.session = Session()
        self.session.ehlo()

    def mail(self, argument):
        reply = self.session.command(f"MAIL FROM:{argument}")
        self.assertEqual(len(reply), 1)
        return reply[0]

    def test_accepted_parameters(self):
        for argument in (
            "<a@example.org> SIZE=1000",
            "<a@example.org> size=65536 BODY=8BITMIME",
            "<a@example.org> BODY=7bit",
            "<a@example.org> SMTPUTF8",
            "<>",
            "<> SIZE=10",
        ):
            self.assertEqual(self.mail(argument), "250 2.1.0 Ok", argument)
            self.session.command("RSET")

    def test_size_over_the_limit(self):
        self.assertTrue(self.mail("<a@example.org> SIZE=65537").startswith("552 5.3.4 "))
        self.assertTrue(self.session.command("RCPT TO:<alice@example.com>")[0].startswith("503"))

    def test_bad_parameters(self):
        for argument in (
            "<a@example.org> SIZE=abc",
            "<a@example.org> SIZE",
            "<a@example.org> SIZE=",
            "<a@example.org> BODY=BINARYMIME",
            "<a@example.org> SMTPUTF8=yes",
            "<a@example.org> AUTH=<>",
            "<a@example.org> RET=FULL",
            "<a@example.org> =x",
        ):
            self.assertTrue(self.mail(argument).startswith("555 5.5.4 "), argument)

    def test_parameters_need_ehlo(self):
        self.session.command("HELO client.example.org")
        self.assertTrue(self.mail("<a@example.org> SIZE=10").startswith("555 5.5.4"))

    def test_syntax_errors(self):
        self.assertTrue(self.mail("a@example.org").startswith("501 5.5.4 "))
        self.assertTrue(self.mail("<a..b@example.org>").startswith("501 5.1.3 "))
        self.assertTrue(self.session.command("MAIL TO:<a@example.org>")[0].startswith("501 5.5.4"))
        self.assertTrue(self.session.command("MAIL")[0].startswith("501 5.5.4"))

    def test_space_after_colon_is_tolerated(self):
        self.assertEqual(self.mail(" <a@example.org>"), "250 2.1.0 Ok")

    def test_non_ascii_sender_needs_smtputf8(self):
        self.assertTrue(self.mail("<j\u00f6rg@example.org>").startswith("553 5.6.7 "))
        self.assertEqual(self.mail("<j\u00f6rg@example.org> SMTPUTF8"), "250 2.1.0 Ok")


class RcptTests(unittest.TestCase):
    def setUp(self):
        self.session = Session()
        self.session.ehlo()
        self.session.command("MAIL FROM:<sender@example.org>")

    def rcpt(self, argument):
        reply = self.session.command(f"RCPT TO:{argument}")
        self.assertEqual(len(reply), 1, reply)
        return reply[0]

    def test_local_recipient(self):
        self.assertEqual(self.rcpt("<alice@example.com>"), "250 2.1.5 Ok")
        self.assertEqual(self.session.intake.lookups, [("alice", "example.com")])

    def test_domain_is_looked_up_in_lower_case(self):
        self.assertEqual(self.rcpt("<alice@EXAMPLE.Com>"), "250 2.1.5 Ok")
        self.assertEqual(self.session.intake.lookups, [("alice", "example.com")])

    def test_relay_forms_are_denied(self):
        for argument in (
            "<user%other.example@example.com>",
            '<"user@other.example"@example.com>',
            "<@example.com:user@other.example>",
            "<@example.com,@example.com:alice@example.com>",
            "<other.example!user@example.com>",
            "<alice@[127.0.0.1]>",
            "<alice@[IPv6:::1]>",
        ):
            reply = self.rcpt(argument)
            self.assertTrue(reply.startswith("554 5.7.1 "), (argument, reply))
            self.assertIn("Relay access denied", reply)
        self.assertEqual(self.session.intake.lookups, [])  # refused before any lookup

    def test_foreign_domain_is_denied(self):
        reply = self.rcpt("<user@other.example>")
        self.assertEqual(reply, "554 5.7.1 <user@other.example>: Relay access denied")
        self.assertEqual(self.session.intake.lookups, [("user", "other.example")])

    def test_unknown_and_inactive_recipients(self):
        intake = self.session.intake
        intake.add_mailbox("carol@example.com")
        intake.inactive_mailboxes.add("carol@example.com")
        intake.add_mailbox("dave@closed.example")
        intake.inactive_domains.add("closed.example")
        self.assertEqual(
            self.rcpt("<nobody@example.com>"),
            "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown",
        )
        self.assertEqual(
            self.rcpt("<carol@example.com>"), "550 5.1.1 <carol@example.com>: Mailbox is inactive"
        )
        self.assertTrue(self.rcpt("<dave@closed.example>").startswith("550 5.1.1 <dave@"))
        self.assertTrue(self.session.command("DATA")[0].startswith("554 5.5.1"))

    def test_lookup_failure_is_temporary(self):
        self.session.intake.fail_lookups = True
        self.assertEqual(
            self.rcpt("<alice@example.com>"),
            "451 4.3.0 <alice@example.com>: temporary lookup failure",
        )
        self.assertEqual(len(self.flushLoggedErrors(LookupUnavailable)), 1)

    def test_rcpt_parameters_are_refused(self):
        self.assertTrue(self.rcpt("<alice@example.com> NOTIFY=NEVER").startswith("555 5.5.4 "))
        self.assertEqual(self.session.intake.lookups, [])

    def test_syntax_errors(self):
        self.assertTrue(self.rcpt("alice@example.com").startswith("501 5.5.4 "))
        self.assertTrue(self.rcpt("<>").startswith("501 5.1.3 "))
        self.assertTrue(self.rcpt("<alice@@example.com>").startswith("501 5.1.3 "))
        self.assertTrue(self.session.command("RCPT FROM:<a@b.example>")[0].startswith("501 5.5.4"))

    def test_postmaster_without_domain_is_resolved_on_our_hostname(self):
        self.rcpt("<Postmaster>")
        self.assertEqual(self.session.intake.lookups, [("Postmaster", HOSTNAME)])

    def test_non_ascii_recipient_without_smtputf8(self):
        self.session.intake.add_mailbox("j\u00f6rg@example.com")
        self.assertTrue(self.rcpt("<j\u00f6rg@example.com>").startswith("553 5.6.7 "))
        self.assertEqual(self.session.intake.lookups, [])

    def test_non_ascii_recipient_with_smtputf8(self):
        session = self.session
        session.intake.add_mailbox("j\u00f6rg@example.com")
        session.command("RSET")
        self.assertEqual(session.command("MAIL FROM:<s@example.org> SMTPUTF8"), ["250 2.1.0 Ok"])
        self.assertEqual(self.rcpt("<j\u00f6rg@example.com>"), "250 2.1.5 Ok")
        session.command("DATA")
        self.assertTrue(session.send(BODY + b".\r\n")[0].startswith("250 2.0.0"))
        (call,) = session.intake.accept_calls
        self.assertEqual(call.recipients[0].address, "j\u00f6rg@example.com")
        self.assertIn(" with UTF8SMTP id ", call.raw.decode("utf-8"))
        self.assertIn("for <j\u00f6rg@example.com>;", call.raw.decode("utf-8"))

    def test_duplicate_recipient_is_kept_once(self):
        self.assertEqual(self.rcpt("<alice@example.com>"), "250 2.1.5 Ok")
        self.assertEqual(self.rcpt("<alice@example.com>"), "250 2.1.5 Ok")
        self.session.command("DATA")
        self.session.send(BODY + b".\r\n")
        self.assertEqual(len(self.session.intake.accept_calls[0].recipients), 1)


class RelayNetworkTests(unittest.TestCase):
    """Hosts of [smtp] relay_networks may send anywhere without logging in (an office
    scanner, the CRM itself); every other host is refused at RCPT as before."""

    def session(self, peer: str) -> Session:
        session = Session(settings=make_settings(relay_networks=("192.0.2.0/24",)), peer=peer)
        session.ehlo()
        session.command("MAIL FROM:<app@example.com>")
        return session

    def test_relay_network_host_reaches_remote_domains(self):
        session = self.session("192.0.2.10")
        self.assertEqual(session.command("RCPT TO:<Bob@Remote.EXAMPLE>"), ["250 2.1.5 Ok"])
        self.assertEqual(session.command("RCPT TO:<alice@example.com>"), ["250 2.1.5 Ok"])
        session.command("DATA")
        self.assertTrue(session.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")[0].startswith("250"))
        [call] = session.intake.accept_calls
        self.assertEqual(call.recipients[0], "Bob@remote.example")
        self.assertEqual(call.recipients[1].mailbox_address, "alice@example.com")

    def test_disguised_forms_stay_refused_for_relay_hosts(self):
        session = self.session("192.0.2.10")
        for argument in ("<alice@[127.0.0.1]>", "<@a.example:bob@remote.example>"):
            self.assertTrue(session.command(f"RCPT TO:{argument}")[0].startswith("554 5.7.1"))

    def test_other_hosts_are_still_refused(self):
        session = self.session(UNTRUSTED_PEER)
        self.assertTrue(session.command("RCPT TO:<bob@remote.example>")[0].startswith("554 5.7.1"))


class RecipientLimitTests(unittest.TestCase):
    def test_the_101st_recipient_is_refused(self):
        addresses = [f"user{number}@example.com" for number in range(130)]
        session = Session(intake=FakeIntake(addresses), settings=make_settings(max_recipients=100))
        session.ehlo()
        session.command("MAIL FROM:<sender@example.org>")
        for address in addresses[:100]:
            self.assertEqual(session.command(f"RCPT TO:<{address}>"), ["250 2.1.5 Ok"])
        self.assertEqual(
            session.command(f"RCPT TO:<{addresses[100]}>"), ["452 4.5.3 Error: too many recipients"]
        )
        # a client told "too many" goes on sending: that is no reason to hang up on it
        for address in addresses[101:]:
            self.assertTrue(session.command(f"RCPT TO:<{address}>")[0].startswith("452 4.5.3"))
        self.assertFalse(session.closed)
        self.assertEqual(len(session.intake.lookups), 100)
        self.assertEqual(codes(session.command("DATA")), ["354"])
        self.assertTrue(session.send(BODY + b".\r\n")[0].startswith("250 2.0.0"))
        self.assertEqual(len(session.intake.accept_calls[0].recipients), 100)


class PipeliningTests(unittest.TestCase):
    def test_replies_stay_in_order_when_lookups_answer_out_of_order(self):
        session = Session()
        session.ehlo()
        intake = session.intake
        intake.clock = session.clock
        intake.delays = {
            "alice@example.com": 5.0,
            "bob@example.com": 1.0,
            "nobody@example.com": 0.5,
        }
        replies = session.send(
            b"MAIL FROM:<s@example.org>\r\n"
            b"RCPT TO:<alice@example.com>\r\n"
            b"RCPT TO:<nobody@example.com>\r\n"
            b"RCPT TO:<bob@example.com>\r\n"
            b"DATA\r\n"
        )
        self.assertEqual(replies, ["250 2.1.0 Ok"])
        # one lookup at a time: the quicker ones have not even started
        self.assertEqual(intake.lookups, [("alice", "example.com")])
        session.clock.advance(1)
        self.assertEqual(session.replies(), [])
        session.clock.advance(4)
        self.assertEqual(session.replies(), ["250 2.1.5 Ok"])
        session.clock.advance(0.5)
        self.assertEqual(codes(session.replies()), ["550"])
        session.clock.advance(1)
        self.assertEqual(session.replies(), ["250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"])

    def test_held_lookups_fired_in_any_order_answer_in_command_order(self):
        session = Session()
        session.ehlo()
        intake = session.intake
        intake.hold_lookups = True
        session.send(
            b"MAIL FROM:<s@example.org>\r\nRCPT TO:<nobody@example.com>\r\n"
            b"RCPT TO:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
        )
        self.assertEqual(len(intake.pending_lookups), 1)
        answered = []
        while intake.pending_lookups:
            # fire whichever is newest first; only one exists at a time
            intake.pending_lookups.pop().fire()
            answered += session.replies()
        self.assertEqual(codes(answered), ["550", "250", "250", "354"])

    def test_commands_after_end_of_data_wait_for_the_storage_answer(self):
        session = Session()
        session.start()
        session.intake.hold_accepts = True
        session.command("DATA")
        replies = session.send(BODY + b".\r\nMAIL FROM:<next@example.org>\r\nNOOP\r\n")
        self.assertEqual(replies, [])
        session.intake.pending_accepts[0].fire()
        self.assertEqual(
            session.replies(), ["250 2.0.0 Ok: queued as 1", "250 2.1.0 Ok", "250 2.0.0 Ok"]
        )

    def test_pipelined_input_is_bounded_while_waiting(self):
        session = Session()
        session.ehlo()
        session.command("MAIL FROM:<s@example.org>")
        session.intake.hold_lookups = True
        session.command("RCPT TO:<alice@example.com>")
        noops = b"NOOP\r\n" * 20000  # 120 000 octets
        for start in range(0, len(noops), 4096):
            session.send(noops[start : start + 4096])
            self.assertLessEqual(session.protocol.held_bytes, 64 * 1024 + 4096 + 8)
            if session.transport.producerState == "paused":
                break
        self.assertEqual(session.transport.producerState, "paused")
        self.assertGreater(session.protocol.held_bytes, 64 * 1024)
        session.intake.pending_lookups[0].fire()
        replies = session.replies()
        self.assertEqual(replies[0], "250 2.1.5 Ok")
        self.assertTrue(all(reply == "250 2.0.0 Ok" for reply in replies[1:]))
        self.assertEqual(session.transport.producerState, "producing")
        self.assertLess(session.protocol.held_bytes, 6)  # at most the start of one NOOP

    def test_input_beyond_the_hard_bound_is_dropped_and_the_session_ends(self):
        session = Session()
        session.ehlo()
        session.command("MAIL FROM:<s@example.org>")
        session.intake.hold_lookups = True
        session.command("RCPT TO:<alice@example.com>")
        chunk = b"NOOP\r\n" * 10000
        for _ in range(170):  # about 10 MiB, with the transport told to pause
            session.send(chunk)
            self.assertLessEqual(session.protocol.held_bytes, HARD_BUFFER + len(chunk) + 2)
        session.intake.pending_lookups[0].fire()
        replies = session.replies()
        self.assertEqual(replies[0], "250 2.1.5 Ok")
        self.assertTrue(replies[-1].startswith("421 4.7.0 "), replies[-1])
        self.assertTrue(session.closed)

    def test_synchronous_intake_in_one_chunk(self):
        session = Session()
        replies = session.send(
            b"EHLO c.example\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.com>\r\n"
            b"RCPT TO:<bob@example.com>\r\nDATA\r\n" + BODY + b".\r\nQUIT\r\n"
        )
        # after the 220 and the six EHLO lines
        self.assertEqual(codes(replies[7:]), ["250", "250", "250", "354", "250", "221"])
        self.assertEqual(len(session.intake.accept_calls), 1)


class CommandLineLimitTests(unittest.TestCase):
    def setUp(self):
        self.session = Session()
        self.session.ehlo()

    def test_512_octets_with_crlf_is_allowed(self):
        line = b"NOOP " + b"x" * 505
        self.assertEqual(len(line) + 2, 512)
        self.assertEqual(self.session.command(line), ["250 2.0.0 Ok"])

    def test_513_octets_is_too_long_and_the_session_goes_on(self):
        line = b"NOOP " + b"x" * 506
        self.assertEqual(self.session.command(line), ["500 5.5.2 Error: line too long"])
        self.assertEqual(self.session.command("NOOP"), ["250 2.0.0 Ok"])

    def test_long_line_that_looks_like_a_command_is_not_run(self):
        line = b"MAIL FROM:<" + b"a" * 600 + b"@example.org>"
        self.assertTrue(self.session.command(line)[0].startswith("500 5.5.2"))
        self.assertTrue(self.session.command("RCPT TO:<alice@example.com>")[0].startswith("503"))

    def test_no_crlf_past_64_kib_disconnects_and_memory_stays_bounded(self):
        session = self.session
        chunk = b"A" * 4096
        largest = 0
        replies = []
        for _ in range(10 * 256):  # 10 MiB
            replies += session.send(chunk)
            largest = max(largest, session.protocol.held_bytes)
        self.assertEqual(len(replies), 1)
        self.assertTrue(replies[0].startswith("500 5.5.2 "), replies)
        self.assertTrue(session.closed)
        self.assertLessEqual(largest, MAX_PARTIAL_LINE + len(chunk) + 2)

    def test_bytes_trickled_one_at_a_time_without_crlf(self):
        session = self.session
        replies = []
        for _ in range(MAX_PARTIAL_LINE + 10):
            replies += session.send(b"B")
        self.assertEqual(codes(replies), ["500"])
        self.assertTrue(session.closed)
        self.assertEqual(session.protocol.held_bytes, 0)

    def test_bare_lf_in_a_command_line(self):
        replies = self.session.send(b"NOOP\nMAIL FROM:<a@example.org>\r\n")
        self.assertEqual(len(replies), 1)
        self.assertTrue(replies[0].startswith("500 5.5.2 "))
        self.assertIn("bare LF/CR not allowed", replies[0])
        self.assertTrue(self.session.command("RCPT TO:<alice@example.com>")[0].startswith("503"))

    def test_bare_cr_in_a_command_line(self):
        replies = self.session.send(b"MAIL FROM:<a@example.org>\rRCPT TO:<alice@example.com>\r\n")
        self.assertEqual(len(replies), 1)
        self.assertIn("bare LF/CR not allowed", replies[0])
        self.assertEqual(self.session.intake.lookups, [])

    def test_crlf_split_across_reads(self):
        self.assertEqual(self.session.send(b"NOOP\r"), [])
        self.assertEqual(self.session.send(b"\n"), ["250 2.0.0 Ok"])


class DataTests(unittest.TestCase):
    def setUp(self):
        self.session = Session()
        self.session.start()
        self.assertEqual(self.session.command("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])

    def accepted_body(self):
        (call,) = self.session.intake.accept_calls
        header, _, rest = call.raw.partition(b"\r\n\t")
        self.assertTrue(header.startswith(b"Received: from "))
        return call.raw.split(b"\r\n", 3)[3]  # what follows the three-line Received header

    def test_message_is_accepted_and_handed_over(self):
        self.assertEqual(self.session.send(BODY + b".\r\n"), ["250 2.0.0 Ok: queued as 1"])
        (call,) = self.session.intake.accept_calls
        self.assertEqual(call.envelope_sender, "sender@example.org")
        self.assertEqual(call.recipients, (self.session.intake.mailboxes["alice@example.com"],))
        self.assertIsInstance(call.recipients[0], Recipient)
        self.assertEqual(self.accepted_body(), BODY)

    def test_received_header(self):
        session = Session(settings=make_settings(idle_timeout=0))  # 0: no idle limit
        session.clock.advance(86400 * 365)
        session.start()
        session.command("DATA")
        session.send(BODY + b".\r\n")
        raw = session.intake.accept_calls[0].raw
        self.assertRegex(
            raw.decode(),
            r"^Received: from client\.example\.org \(\[198\.51\.100\.7\]\)\r\n"
            rf"\tby {re.escape(HOSTNAME)} \(atollon-mail\) with ESMTP id [0-9A-F]+\r\n"
            r"\tfor <alice@example\.com>; Fri, 01 Jan 1971 00:00:01 \+0000\r\n"
            r"From: a@example\.org\r\n",
        )

    def test_received_header_names_no_recipient_when_there_are_several(self):
        session = Session()
        session.start("<s@example.org>", "<alice@example.com>", "<bob@example.com>")
        session.command("DATA")
        session.send(BODY + b".\r\n")
        (call,) = session.intake.accept_calls
        self.assertEqual(len(call.recipients), 2)
        header = call.raw.split(b"\r\nFrom: ")[0].decode()
        self.assertNotIn("for <", header)
        self.assertRegex(header, r"with ESMTP id [0-9A-F]+; \w{3}, ")

    def test_received_header_after_helo_and_from_ipv6(self):
        session = Session(peer="2001:db8::25")
        session.command("HELO old.example")
        session.command("MAIL FROM:<>")
        session.command("RCPT TO:<alice@example.com>")
        session.command("DATA")
        session.send(BODY + b".\r\n")
        (call,) = session.intake.accept_calls
        self.assertEqual(call.envelope_sender, "")
        self.assertTrue(
            call.raw.startswith(b"Received: from old.example ([IPv6:2001:db8::25])\r\n")
        )
        self.assertIn(b" with SMTP id ", call.raw)

    def test_helo_name_is_made_harmless_in_the_header(self):
        session = Session()
        session.command("EHLO evil(x);name")
        session.command("MAIL FROM:<s@example.org>")
        session.command("RCPT TO:<alice@example.com>")
        session.command("DATA")
        session.send(BODY + b".\r\n")
        self.assertTrue(
            session.intake.accept_calls[0].raw.startswith(b"Received: from evil?x??name (")
        )

    def test_transaction_resets_after_the_message_and_helo_stays(self):
        self.session.send(BODY + b".\r\n")
        self.assertTrue(self.session.command("RCPT TO:<bob@example.com>")[0].startswith("503"))
        self.assertEqual(self.session.command("MAIL FROM:<s2@example.org>"), ["250 2.1.0 Ok"])

    def test_dot_unstuffing(self):
        self.session.send(b".leading\r\n..two\r\n...three\r\nmid.dle\r\n. \r\n.\r\n")
        self.assertEqual(self.accepted_body(), b"leading\r\n.two\r\n..three\r\nmid.dle\r\n \r\n")

    def test_empty_message(self):
        self.assertTrue(self.session.send(b".\r\n")[0].startswith("250 2.0.0"))
        self.assertEqual(self.accepted_body(), b"")

    def test_reply_text_cannot_break_the_reply_line(self):
        reply = server.Reply(550, "5.1.1", "first\r\n250 forged")
        self.assertEqual(reply.encode(), b"550 5.1.1 first  250 forged\r\n")

    def test_one_byte_at_a_time(self):
        data = b"Subject: x\r\n\r\n..a\r\nb\r\n.\r\nNOOP\r\n"
        replies = []
        for index in range(len(data)):
            replies += self.session.send(data[index : index + 1])
        self.assertEqual(replies, ["250 2.0.0 Ok: queued as 1", "250 2.0.0 Ok"])
        self.assertEqual(self.accepted_body(), b"Subject: x\r\n\r\n.a\r\nb\r\n")

    def test_line_of_2000_octets_is_accepted(self):
        line = b"x" * 2000 + b"\r\n"
        self.assertTrue(self.session.send(b"\r\n" + line + b".\r\n")[0].startswith("250 2.0.0"))
        self.assertEqual(self.accepted_body(), b"\r\n" + line)

    def test_line_of_2001_octets_is_refused(self):
        replies = self.session.send(b"\r\n" + b"x" * 2001 + b"\r\nshort\r\n.\r\n")
        self.assertEqual(len(replies), 1)
        self.assertTrue(replies[0].startswith("550 5.5.2 "), replies)
        self.assertEqual(self.session.intake.accept_calls, [])
        self.assertEqual(self.session.command("NOOP"), ["250 2.0.0 Ok"])

    def test_long_line_split_across_reads_is_refused(self):
        for _ in range(3):
            self.assertEqual(self.session.send(b"y" * 1000), [])
        replies = self.session.send(b"\r\n.\r\n")
        self.assertTrue(replies[0].startswith("550 5.5.2 "), replies)
        self.assertEqual(self.session.intake.accept_calls, [])

    def test_body_after_an_over_long_line_never_runs_as_commands(self):
        replies = self.session.send(
            b"Subject: x\r\n\r\n"
            + b"z" * 20000
            + b"\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
            b"evil\r\n.\r\n"
        )
        self.assertEqual(len(replies), 1)
        self.assertTrue(replies[0].startswith("550 "), replies)
        self.assertEqual(self.session.intake.accept_calls, [])
        self.assertEqual(self.session.intake.lookups, [("alice", "example.com")])
        self.assertTrue(self.session.command("RCPT TO:<bob@example.com>")[0].startswith("503"))

    def test_endless_line_in_data_keeps_memory_flat(self):
        chunk = b"w" * 65536
        for _ in range(160):  # 10 MiB without a line end
            self.assertEqual(self.session.send(chunk), [])
            self.assertLessEqual(self.session.protocol.held_bytes, len(chunk) + 2100)
        self.assertTrue(self.session.send(b"\r\n.\r\n")[0].startswith("550 "))
        self.assertEqual(self.session.intake.accept_calls, [])

    def test_nul_is_refused(self):
        replies = self.session.send(b"Subject: x\r\n\r\na\x00b\r\n.\r\n")
        self.assertEqual(len(replies), 1)
        self.assertTrue(replies[0].startswith("550 5.6.0 "), replies)
        self.assertEqual(self.session.intake.accept_calls, [])

    def test_storage_failure_is_temporary(self):
        self.session.intake.fail_accepts = True
        replies = self.session.send(BODY + b".\r\n")
        self.assertEqual(replies, ["451 4.3.0 Requested action aborted: local error in processing"])
        self.assertEqual(len(self.flushLoggedErrors(StorageFailed)), 1)
        self.assertEqual(self.session.command("NOOP"), ["250 2.0.0 Ok"])

    def test_late_storage_failure_is_temporary(self):
        self.session.intake.hold_accepts = True
        self.assertEqual(self.session.send(BODY + b".\r\n"), [])
        self.session.intake.pending_accepts[0].fail(StorageFailed("disk full"))
        self.assertEqual(codes(self.session.replies()), ["451"])
        self.assertEqual(len(self.flushLoggedErrors(StorageFailed)), 1)

    def test_intake_raising_synchronously_is_temporary(self):
        def broken(*args):
            raise StorageFailed("bug")

        self.session.intake.accept = broken
        self.assertEqual(codes(self.session.send(BODY + b".\r\n")), ["451"])
        self.assertEqual(len(self.flushLoggedErrors(StorageFailed)), 1)


class MessageSizeTests(unittest.TestCase):
    def setUp(self):
        self.session = Session(settings=make_settings(max_message_size=4096))
        self.session.start()
        self.session.command("DATA")

    def test_message_at_the_limit_is_accepted(self):
        body = (b"x" * 62 + b"\r\n") * 64  # 4096 octets
        self.assertTrue(self.session.send(body + b".\r\n")[0].startswith("250 2.0.0"))

    def test_oversized_message_is_read_to_its_end_and_refused(self):
        line = b"x" * 62 + b"\r\n"
        largest = 0
        for _ in range(20000):  # about 1.2 MiB against a 4 KiB limit
            self.assertEqual(self.session.send(line * 1), [])
            largest = max(largest, self.session.protocol.held_bytes)
        replies = self.session.send(b"MAIL FROM:<looks@like.a.command>\r\n.\r\n")
        self.assertEqual(len(replies), 1)
        self.assertTrue(replies[0].startswith("552 5.3.4 "), replies)
        self.assertEqual(self.session.intake.accept_calls, [])
        self.assertLessEqual(largest, 4096 + 200)
        self.assertEqual(self.session.command("NOOP"), ["250 2.0.0 Ok"])


class HopCountTests(unittest.TestCase):
    def send_message(self, received_headers, body_received=0):
        session = Session()
        session.start()
        session.command("DATA")
        header = b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * received_headers
        body = b"\r\n" + b"Received: in the body\r\n" * body_received
        return session, session.send(header + b"Subject: loop\r\n" + body + b".\r\n")

    def test_51_received_headers_is_a_loop(self):
        session, replies = self.send_message(51)
        self.assertEqual(replies, ["554 5.4.6 Too many hops (mail loop)"])
        self.assertEqual(session.intake.accept_calls, [])

    def test_lower_case_headers_count_too(self):
        session = Session()
        session.start()
        session.command("DATA")
        replies = session.send(b"received: x\r\n" * 51 + b"\r\n.\r\n")
        self.assertTrue(replies[0].startswith("554 5.4.6"))

    def test_50_received_headers_pass(self):
        session, replies = self.send_message(50)
        self.assertTrue(replies[0].startswith("250 2.0.0"), replies)

    def test_received_lines_in_the_body_do_not_count(self):
        session, replies = self.send_message(10, body_received=100)
        self.assertTrue(replies[0].startswith("250 2.0.0"), replies)


class SmugglingTests(unittest.TestCase):
    """A bare CR or LF never ends a line, so it can never end the data early."""

    SMUGGLED = (
        b"MAIL FROM:<evil@example.org>\r\n"
        b"RCPT TO:<bob@example.com>\r\n"
        b"DATA\r\n"
        b"Subject: smuggled\r\n\r\nsmuggled\r\n"
    )
    ENDINGS = (
        b"\n.\n",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n.\r\r\n",
        b"\n.\r",
        b"\r\n\x00.\r\n",
    )

    def run_smuggling(self, ending, chunked=False):
        session = Session()
        session.start()
        session.command("DATA")
        data = b"Subject: real\r\n\r\nreal body" + ending + self.SMUGGLED + b".\r\n"
        if chunked:
            replies = []
            for index in range(0, len(data), 3):
                replies += session.send(data[index : index + 3])
        else:
            replies = session.send(data)
        return session, replies

    def check_refused(self, session, replies, ending):
        self.assertEqual(len(replies), 1, (ending, replies))
        self.assertTrue(replies[0].startswith("550 5.6."), (ending, replies))
        self.assertEqual(session.intake.accept_calls, [], ending)
        self.assertEqual(session.intake.lookups, [("alice", "example.com")], ending)
        # the smuggled MAIL did not run: there is no transaction now
        self.assertTrue(session.command("RCPT TO:<bob@example.com>")[0].startswith("503"))

    def test_each_smuggling_ending_is_refused(self):
        for ending in self.ENDINGS:
            session, replies = self.run_smuggling(ending)
            self.check_refused(session, replies, ending)
            if b"\x00" not in ending:
                self.assertEqual(
                    replies, ["550 5.6.11 Error: bare CR or LF not allowed in message data"]
                )

    def test_each_smuggling_ending_is_refused_across_reads(self):
        for ending in self.ENDINGS:
            session, replies = self.run_smuggling(ending, chunked=True)
            self.check_refused(session, replies, ending)

    def test_the_same_message_with_crlf_is_one_message(self):
        session, replies = self.run_smuggling(b"\r\n")
        self.assertEqual(replies, ["250 2.0.0 Ok: queued as 1"])
        self.assertEqual(len(session.intake.accept_calls), 1)
        self.assertEqual(session.intake.lookups, [("alice", "example.com")])

    def test_bare_lf_in_headers(self):
        session = Session()
        session.start()
        session.command("DATA")
        replies = session.send(b"Subject: a\nX-Other: b\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(codes(replies), ["550"])


class StartTlsTests(unittest.TestCase):
    def tls_session(self, **kwargs):
        session = Session(tls_options=TLS_OPTIONS, transport_class=TLSRecordingTransport, **kwargs)
        session.replies()
        return session

    def test_not_offered_without_tls_options(self):
        session = Session()
        self.assertNotIn("250 STARTTLS", session.ehlo())
        self.assertTrue(session.command("STARTTLS")[0].startswith("502 5.5.1"))

    def test_offered_with_tls_options(self):
        self.assertEqual(self.tls_session().ehlo()[-1], "250 STARTTLS")

    def test_starttls_discards_pipelined_input_and_resets_the_session(self):
        session = self.tls_session()
        session.ehlo()
        session.command("MAIL FROM:<before@example.org>")
        replies = session.send(
            b"STARTTLS\r\nEHLO injected.example\r\nMAIL FROM:<evil@example.org>\r\n"
            b"RCPT TO:<alice@example.com>\r\n"
        )
        self.assertEqual(replies, ["220 2.0.0 Ready to start TLS"])
        ((options, written),) = session.transport.tls_starts
        self.assertIs(options, TLS_OPTIONS)
        self.assertTrue(written.endswith(b"220 2.0.0 Ready to start TLS\r\n"))
        self.assertEqual(session.intake.lookups, [])
        self.assertTrue(session.protocol.tls_active)
        # nothing survived: neither the earlier MAIL nor the HELO name
        self.assertTrue(session.command("MAIL FROM:<a@example.org>")[0].startswith("503 5.5.1"))
        ehlo = session.ehlo()
        self.assertNotIn("250 STARTTLS", ehlo)
        self.assertNotIn("250-STARTTLS", ehlo)
        self.assertTrue(session.command("RCPT TO:<alice@example.com>")[0].startswith("503"))
        self.assertTrue(session.command("STARTTLS")[0].startswith("503 5.5.1"))
        session.command("MAIL FROM:<a@example.org>")
        session.command("RCPT TO:<alice@example.com>")
        session.command("DATA")
        session.send(BODY + b".\r\n")
        self.assertIn(b" with ESMTPS id ", session.intake.accept_calls[0].raw)

    def test_starttls_with_an_argument(self):
        session = self.tls_session()
        session.ehlo()
        self.assertTrue(session.command("STARTTLS now")[0].startswith("501 5.5.4"))
        self.assertEqual(session.transport.tls_starts, [])

    def test_transport_without_tls(self):
        session = Session(tls_options=TLS_OPTIONS)
        session.ehlo()
        self.assertTrue(session.command("STARTTLS")[0].startswith("454 4.7.0"))


class TimeoutTests(unittest.TestCase):
    def test_idle_session_is_closed(self):
        session = Session()
        session.replies()
        session.clock.advance(299)
        self.assertFalse(session.closed)
        session.clock.advance(1)
        self.assertEqual(session.replies(), [f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"])
        self.assertTrue(session.closed)
        self.assertEqual(session.clock.getDelayedCalls(), [])

    def test_activity_keeps_the_session_open(self):
        session = Session()
        session.replies()
        session.clock.advance(200)
        session.command("NOOP")
        session.clock.advance(200)
        self.assertFalse(session.closed)
        session.clock.advance(100)
        self.assertTrue(session.closed)

    def test_idle_inside_data(self):
        session = Session()
        session.start()
        session.command("DATA")
        session.send(b"Subject: x\r\n")
        session.clock.advance(300)
        self.assertTrue(session.replies()[0].startswith("421 4.4.2"))
        self.assertEqual(session.intake.accept_calls, [])

    def test_trickled_bytes_do_not_reset_the_timeout(self):
        # One byte of a command every 10 s: the whole line never arrives in time.
        session = Session()
        session.replies()
        for byte in b"NOOP":
            session.clock.advance(10)
            session.send(bytes([byte]))
        session.clock.advance(259)
        self.assertFalse(session.closed)
        session.clock.advance(1)
        self.assertEqual(session.replies(), [f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"])
        self.assertTrue(session.closed)

    def test_trickled_command_line_ends_the_session_at_the_deadline(self):
        session = Session()
        session.ehlo()
        for _ in range(400):  # a byte a second, for longer than the timeout
            session.clock.advance(1)
            if session.closed:
                break
            session.send(b"X")
        self.assertTrue(session.closed)
        self.assertEqual(session.replies(), [f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"])
        self.assertEqual(session.clock.seconds(), 301)

    def test_whole_line_within_the_timeout_resets_it(self):
        session = Session()
        session.ehlo()
        session.clock.advance(290)
        session.send(b"NO")
        session.clock.advance(9)
        self.assertEqual(session.send(b"OP\r\n"), ["250 2.0.0 Ok"])
        session.clock.advance(299)
        self.assertFalse(session.closed)
        session.clock.advance(1)
        self.assertTrue(session.closed)

    def test_trickled_message_data_is_cut_off(self):
        # In DATA every byte buys 1/MIN_DATA_RATE s: a byte a second loses ground fast.
        session = Session()
        session.start()
        session.command("DATA")
        session.replies()
        started = session.clock.seconds()
        for _ in range(400):
            session.clock.advance(1)
            if session.closed:
                break
            session.send(b"x\r\n" if session.clock.seconds() % 2 else b"y")
        self.assertTrue(session.closed)
        self.assertTrue(session.replies()[-1].startswith("421 4.4.2"))
        # 300 s plus the second or so that 450 trickled bytes bought, no more
        self.assertLessEqual(session.clock.seconds(), started + 302)
        self.assertEqual(session.intake.accept_calls, [])

    def test_message_data_at_the_minimum_rate_keeps_going(self):
        # 500 bytes a second (MIN_DATA_RATE) for longer than the timeout: accepted.
        session = Session(settings=make_settings(max_message_size=1024 * 1024))
        session.start()
        session.command("DATA")
        session.send(b"Subject: slow but steady\r\n\r\n")
        line = b"z" * (server.MIN_DATA_RATE - 2) + b"\r\n"
        for _ in range(600):
            session.clock.advance(1)
            session.send(line)
        self.assertFalse(session.closed)
        self.assertEqual(session.send(b".\r\n")[0][:3], "250")

    def test_under_stress_the_timeout_shrinks_at_once(self):
        session = Session()
        session.ehlo()
        session.clock.advance(100)
        session.protocol.under_stress()  # the listener is full
        session.clock.advance(9.9)
        self.assertFalse(session.closed)
        session.clock.advance(0.1)
        self.assertEqual(session.replies(), [f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"])

    def test_under_stress_each_command_has_the_short_timeout(self):
        session = Session(settings=make_settings(stress_idle_timeout=5))
        session.ehlo()
        session.protocol.under_stress()
        for _ in range(3):
            session.clock.advance(4)
            self.assertEqual(session.command("NOOP"), ["250 2.0.0 Ok"])
        session.clock.advance(5)
        self.assertTrue(session.closed)

    def test_under_stress_a_slow_store_does_not_time_the_client_out(self):
        # The deadline is about the client's silence: waiting for our own commit is not.
        session = Session()
        session.start()
        session.intake.hold_accepts = True
        session.command("DATA")
        self.assertEqual(session.send(BODY + b".\r\n"), [])
        session.protocol.under_stress()
        session.clock.advance(60)
        self.assertEqual(session.replies(), [])
        self.assertFalse(session.closed)
        session.intake.pending_accepts[0].fire()
        self.assertEqual(codes(session.replies()), ["250"])
        # From our reply on, the client has the short timeout again.
        session.clock.advance(9.9)
        self.assertFalse(session.closed)
        session.clock.advance(0.1)
        self.assertEqual(session.replies(), [f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"])

    def test_under_stress_a_stuck_store_frees_the_session_after_the_idle_timeout(self):
        session = Session()
        session.start()
        session.intake.hold_accepts = True
        session.command("DATA")
        session.send(BODY + b".\r\n")
        session.protocol.under_stress()
        session.clock.advance(299)
        self.assertFalse(session.closed)
        session.clock.advance(1)
        self.assertEqual(session.replies(), [f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"])
        self.assertTrue(session.closed)

    def test_stress_before_the_connection_is_made(self):
        # A session admitted while its listener is under stress is told before it starts.
        session = Session(wait_for_greeting=False, settings=make_settings(greet_pause=0))
        fresh = session.factory.buildProtocol(session.transport.getPeer())
        fresh.under_stress()
        transport = session.transport.__class__(peerAddress=session.transport.getPeer())
        fresh.makeConnection(transport)
        session.clock.advance(10)
        self.assertTrue(transport.disconnecting)

    def test_stress_never_lengthens_a_short_timeout(self):
        session = Session(settings=make_settings(idle_timeout=3))
        session.protocol.under_stress()
        session.clock.advance(3)
        self.assertTrue(session.closed)

    def test_zero_means_no_idle_limit(self):
        session = Session(settings=make_settings(idle_timeout=0))
        session.clock.advance(86400)
        self.assertFalse(session.closed)
        self.assertEqual(session.clock.getDelayedCalls(), [])

    def test_configured_timeout(self):
        session = Session(settings=make_settings(idle_timeout=30))
        session.clock.advance(30)
        self.assertTrue(session.closed)

    def test_quit_cancels_timers(self):
        session = Session()
        session.command("QUIT")
        self.assertEqual(session.clock.getDelayedCalls(), [])

    def test_connection_lost_cancels_timers(self):
        session = Session(wait_for_greeting=False)
        session.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(session.clock.getDelayedCalls(), [])
        session.clock.advance(1000)
        self.assertEqual(session.output(), "")


class LateAnswerTests(unittest.TestCase):
    def test_lookup_answering_after_disconnect_is_harmless(self):
        session = Session()
        session.ehlo()
        session.command("MAIL FROM:<s@example.org>")
        session.intake.hold_lookups = True
        session.send(b"RCPT TO:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\n")
        session.protocol.connectionLost(Failure(ConnectionDone()))
        written = session.transport.value()
        session.intake.pending_lookups[0].fire()
        self.assertEqual(session.transport.value(), written)
        self.assertEqual(len(session.intake.lookups), 1)

    def test_failing_lookup_after_disconnect_is_harmless(self):
        session = Session()
        session.ehlo()
        session.command("MAIL FROM:<s@example.org>")
        session.intake.hold_lookups = True
        session.command("RCPT TO:<alice@example.com>")
        session.protocol.connectionLost(Failure(ConnectionDone()))
        written = session.transport.value()
        session.intake.pending_lookups[0].fail()
        self.assertEqual(session.transport.value(), written)
        self.flushLoggedErrors(LookupUnavailable)

    def test_storage_answering_after_timeout_is_harmless(self):
        session = Session()
        session.start()
        session.intake.hold_accepts = True
        session.command("DATA")
        session.send(BODY + b".\r\n")
        session.clock.advance(300)
        self.assertTrue(session.replies()[0].startswith("421 4.4.2"))
        session.intake.pending_accepts[0].fire()
        self.assertEqual(session.replies(), [])


class ErrorLimitTests(unittest.TestCase):
    def test_twenty_errors_are_tolerated(self):
        session = Session()
        session.replies()
        for _ in range(20):
            session.command("FROB")
        self.assertFalse(session.closed)
        self.assertEqual(session.command("NOOP"), ["250 2.0.0 Ok"])

    def test_the_21st_error_ends_the_session(self):
        session = Session()
        session.replies()
        replies = []
        for _ in range(21):
            replies += session.command("FROB")
        self.assertEqual(len(replies), 22)
        self.assertEqual(replies[-1], f"421 4.7.0 {HOSTNAME} Error: too many errors")
        self.assertTrue(session.closed)
        self.assertEqual(session.command("NOOP"), [])

    def test_pipelined_errors_stop_at_the_limit(self):
        session = Session()
        session.replies()
        replies = session.send(b"FROB\r\n" * 50 + b"EHLO x\r\n")
        self.assertEqual(len(replies), 22)
        self.assertTrue(replies[-1].startswith("421 4.7.0"))

    def test_rejected_recipients_count(self):
        session = Session()
        session.ehlo()
        session.command("MAIL FROM:<s@example.org>")
        for number in range(21):
            session.command(f"RCPT TO:<nobody{number}@example.com>")
        self.assertTrue(session.closed)


@implementer(ISMTPAuthPolicy)
class ToyPolicy:
    """A policy of a few lines: what the next checks (SPF, DKIM, spam) plug in as."""

    def __init__(self, clock):
        self.clock = clock
        self.delivered = []

    def check_connect(self, session):
        return Accept()

    def check_helo(self, session):
        if session.helo == "spam.example":
            return Reply(550, "5.7.1", "Go away")
        return Accept()

    def check_mail(self, session, envelope):
        if envelope.sender.domain == "slow.example":  # a decision that takes a while
            return task.deferLater(self.clock, 5, lambda: Reply(450, "4.7.1", "Try later"))
        return Accept(f"noted {envelope.sender.address}")

    def check_rcpt(self, session, envelope, path):
        if session.authenticated_user is None and path.domain != "example.com":
            return defer.succeed(Reply(554, "5.7.1", f"<{path.address}>: Relay access denied"))
        return Accept(path.address.upper(), Reply(250, "2.1.5", "Fine"))

    def check_auth(self, session):
        return Accept()

    def authenticate(self, session, login, password):
        return Accept(login) if password == "pw" else Reply(535, "5.7.8", "No")

    def deliver(self, session, envelope, data):
        self.delivered.append((session.helo, envelope.note, tuple(envelope.recipients), data))
        if b"reject me" in data:
            return Reply(554, "5.7.1", "Spam")
        return defer.succeed(Accept(StoredMessage(id=77, filings=1)))


class PolicySeamTests(unittest.TestCase):
    """The protocol asks its policy at every step and sends what the policy decides."""

    def test_policies_provide_the_interface(self):
        self.assertTrue(verifyObject(ISMTPPolicy, MXPolicy(FakeIntake(), HOSTNAME)))
        self.assertTrue(verifyObject(ISMTPAuthPolicy, ToyPolicy(None)))

    def test_relay_decided_by_the_policy(self):
        session = Session(policy=ToyPolicy(None))
        session.ehlo()
        session.command("MAIL FROM:<s@example.org>")
        self.assertTrue(session.command("RCPT TO:<x@other.example>")[0].startswith("554 5.7.1"))
        session.protocol.session.authenticated_user = "alice"
        self.assertEqual(session.command("RCPT TO:<x@other.example>"), ["250 2.1.5 Fine"])
        self.assertEqual(session.protocol.envelope.recipients, ["X@OTHER.EXAMPLE"])
        self.assertEqual(session.protocol.received_protocol(False), "ESMTPA")

    def test_the_policy_decides_every_reply(self):
        session = Session(policy=ToyPolicy(None))
        policy = session.factory.policy
        policy.clock = session.clock
        session.replies()
        self.assertEqual(session.command("HELO spam.example"), ["550 5.7.1 Go away"])
        self.assertEqual(codes(session.command("MAIL FROM:<s@example.org>")), ["503"])
        self.assertEqual(session.command("HELO client.example.org"), [f"250 {HOSTNAME}"])
        # A pending decision holds back what was pipelined after it, in order.
        replies = session.send(
            b"MAIL FROM:<s@slow.example>\r\nMAIL FROM:<s@example.org>\r\n"
            b"RCPT TO:<alice@example.com>\r\nRCPT TO:<Alice@example.com>\r\nDATA\r\n"
        )
        self.assertEqual(replies, [])
        session.clock.advance(5)
        self.assertEqual(
            session.replies(),
            ["450 4.7.1 Try later", "250 2.1.0 Ok", "250 2.1.5 Fine", "250 2.1.5 Fine"]
            + ["354 End data with <CR><LF>.<CR><LF>"],
        )
        self.assertEqual(
            session.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n"), ["250 2.0.0 Ok: queued as 77"]
        )
        helo, note, recipients, data = policy.delivered[0]
        self.assertEqual((helo, note), ("client.example.org", "noted s@example.org"))
        self.assertEqual(recipients, ("ALICE@EXAMPLE.COM",))  # a repeated one is kept once
        self.assertTrue(data.startswith(b"Received: from client.example.org "))
        self.assertTrue(data.endswith(b"Subject: hi\r\n\r\nhello\r\n"))
        session.command("MAIL FROM:<s@example.org>")
        session.command("RCPT TO:<alice@example.com>")
        session.command("DATA")
        self.assertEqual(session.send(b"reject me\r\n.\r\n"), ["554 5.7.1 Spam"])

    def test_auth_on_a_listener_that_offers_it(self):
        clock = Clock()
        factory = SMTPServerFactory(
            ToyPolicy(clock), HOSTNAME, make_settings(), clock, listener=IMPLICIT_TLS_LISTENER
        )
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"EHLO client.example.org\r\nMAIL FROM:<s@example.org>\r\n")
        lines = transport.value().decode().splitlines()
        self.assertEqual(lines[0], f"220 {HOSTNAME} ESMTP atollon-mail")  # no greet pause
        self.assertEqual(lines[-2:], ["250 AUTH PLAIN LOGIN", "530 5.7.0 Authentication required"])
        transport.clear()
        protocol.dataReceived(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0no") + b"\r\n")
        protocol.dataReceived(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0pw") + b"\r\n")
        self.assertEqual(
            transport.value().decode().splitlines(),
            ["535 5.7.8 No", "235 2.7.0 Authentication successful"],
        )
        self.assertEqual(protocol.session.authenticated_user, "alice")

    def test_a_policy_failure_is_temporary(self):
        policy = ToyPolicy(None)
        policy.check_mail = lambda session, envelope: defer.fail(LookupUnavailable("down"))
        session = Session(policy=policy)
        session.ehlo()
        self.assertEqual(
            session.command("MAIL FROM:<s@example.org>"),
            ["451 4.3.0 Requested action aborted: local error in processing"],
        )
        self.flushLoggedErrors(LookupUnavailable)


class ThroughputTests(unittest.TestCase):
    def test_many_messages_in_one_session(self):
        session = Session()
        session.ehlo()
        body = (b"x" * 70 + b"\r\n") * 28
        message = (
            b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n"
            + body
            + b".\r\n"
        )
        session.send(message * 200)
        self.assertEqual(len(session.intake.accept_calls), 200)
        self.assertTrue(all(call.raw.endswith(body) for call in session.intake.accept_calls))
