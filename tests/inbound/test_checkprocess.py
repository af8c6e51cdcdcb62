"""The inbound checks in a process of their own (inbound.checkprocess): the same findings
as in a worker thread, for real check processes asking the loopback DNS; and what
happens when a check process dies, misbehaves, stalls or is stopped."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.inbound.authentication import Forwarder, SpfResults
from atollon_mail.inbound.checkprocess import HEAD, CheckProcesses, CheckUnavailable, _finding
from atollon_mail.inbound.checks import Found, InboundChecks, find
from atollon_mail.inbound.resolver import inbound_resolver
from atollon_mail.smtp.address import Path
from atollon_mail.smtp.session import Envelope, Session
from tests import builders
from tests.inbound import fixtures, oddchild
from tests.inbound.fixtures import FORWARDER_IP, HOSTNAME, LISTED_IP, SENDER_IP
from tests.support import SqliteStoreMixin, StoreFixtureMixin

ODD_CHILD = (sys.executable, "-m", "tests.inbound.oddchild")


def config_for(dns_port: int, inbound: str = ""):
    return parse_config(
        f"[appliance]\nhostname = {HOSTNAME}\n"
        f"[delivery]\nnameservers = 127.0.0.1:{dns_port}\n"
        f"[inbound]\n{inbound}"
    )


def refused():
    return defer.fail(AssertionError("the in-thread way was asked"))


@defer.inlineCallbacks
def until(predicate, seconds: float = 20.0):
    """Wait (with the reactor running) until predicate() is true."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("waited in vain")
        yield task.deferLater(reactor, 0.01, lambda: None)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class ProcessTestsMixin:
    def start_pool(self, argv=None, **options) -> CheckProcesses:
        config = config_for(self.dns.port)
        settings = {"nameservers": config.delivery.nameservers, "hostname": HOSTNAME}
        pool = CheckProcesses(settings, 1, reactor, argv=argv, **options)
        pool.startService()
        self.addCleanup(lambda: pool.stopService() if pool.running else None)
        return pool

    def child_pid(self, pool: CheckProcesses) -> int:
        return pool.children[0].transport.pid

    @defer.inlineCallbacks
    def asked_what_hangs(self, **options):
        """A pool of one odd child, ready, asked about a message it never answers:
        (the pool, the child's pid, the message, when it was asked, the Deferred)."""
        pool = self.start_pool(argv=ODD_CHILD, **options)
        yield until(lambda: pool.children[0] is not None and pool.children[0].ready)
        data = fixtures.received(fixtures.message())
        asked = time.monotonic()
        stuck = pool.find((data, SENDER_IP, "h.test", "hangs@odd.test", None, ()), self.in_thread)
        return pool, self.child_pid(pool), data, asked, stuck


# The messages compared: (data, client, HELO, sender, forwarder, blocklist zones).
def cases():
    signed = fixtures.signed(fixtures.message())
    forwarded = fixtures.arc_sealed(fixtures.message(), "dmarc=pass header.from=sender.test")
    return {
        "signed": (fixtures.received(signed), SENDER_IP, "mx.client.test", "b@sender.test"),
        "unsigned": (
            fixtures.received(fixtures.message()),
            SENDER_IP,
            "mx.client.test",
            "b@sender.test",
        ),
        "signed with another key": (
            fixtures.received(fixtures.signed(fixtures.message(), name="partner")),
            SENDER_IP,
            "mx.client.test",
            "b@sender.test",
        ),
        "forged p=reject domain from a listed client": (
            fixtures.received(fixtures.message("Bob <bob@bank.test>"), ip=LISTED_IP),
            LISTED_IP,
            "mx.client.test",
            "bob@bank.test",
        ),
        "through a trusted forwarder with its ARC seal": (
            fixtures.received(forwarded, "mx.partner.test", FORWARDER_IP),
            FORWARDER_IP,
            "mx.partner.test",
            "b@sender.test",
        ),
    }


class SameFindingsTests(ProcessTestsMixin, unittest.TestCase):
    def setUp(self):
        self.dns = fixtures.start_zones(self, reactor)
        self.workers = builders.started_workers(self)

    @defer.inlineCallbacks
    def test_the_same_authentication_in_a_process_as_in_a_thread(self):
        pool = self.start_pool()
        resolver = inbound_resolver(config_for(self.dns.port))
        spf_results = SpfResults(reactor)
        forwarder = Forwarder("mx.partner.test", ("partner.test",))
        results = {}
        for name, (data, client, helo, sender) in cases().items():
            through = forwarder if client == FORWARDER_IP else None
            zones = ("bl.test",)
            arguments = (client, helo, sender, through, zones)
            in_thread = yield self.workers.in_dns(
                find, resolver, HOSTNAME, spf_results, data, None, *arguments
            )
            in_process = yield pool.find((data, *arguments), refused)
            self.assertIsInstance(in_process, Found)
            self.assertIsNotNone(in_process.authentication, name)
            self.assertEqual(in_process, in_thread, name)
            authentication = in_process.authentication
            results[name] = (
                authentication.mailfrom.result,
                tuple(check.result for check in authentication.dkim),
                authentication.arc.result,
                authentication.dmarc.result,
                len(in_process.listings),
            )
            self.assertTrue(authentication.header.startswith(HOSTNAME + "; spf="), name)
        self.assertEqual(
            results,
            {
                "signed": ("pass", ("pass",), "none", "pass", 0),
                "unsigned": ("pass", (), "none", "pass", 0),
                "signed with another key": ("pass", ("fail",), "none", "pass", 0),
                "forged p=reject domain from a listed client": ("fail", (), "none", "fail", 1),
                # SPF of the hop not counted; the forwarder's seal vouches for DMARC
                "through a trusted forwarder with its ARC seal": ("fail", (), "pass", "pass", 0),
            },
        )

    @defer.inlineCallbacks
    def test_many_messages_in_flight_at_once(self):
        pool = self.start_pool()
        data, client, helo, sender = cases()["signed"]
        asked = [pool.find((data, client, helo, sender, None, ()), refused) for _ in range(30)]
        self.assertEqual(len(pool.children[0].pending), 30)
        found = yield defer.gatherResults(asked)
        self.assertEqual({item.authentication.dmarc.result for item in found}, {"pass"})
        self.assertEqual(pool.children[0].pending, {})


def path(address: str) -> Path:
    local, _, domain = address.rpartition("@")
    return Path(local, domain)


class DecisionsTests(ProcessTestsMixin, StoreFixtureMixin, SqliteStoreMixin, unittest.TestCase):
    """The decision (headers, verdict, refusal) of InboundChecks with a check process is
    the one it makes with the checks in a thread."""

    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(self.store)  # acme.test, jane@acme.test
        self.dns = fixtures.start_zones(self, reactor)
        self.workers = builders.started_workers(self)

    def checks(self, processes) -> InboundChecks:
        config = config_for(self.dns.port, "dnsbl_zones = bl.test\n")
        return InboundChecks(
            config.inbound,
            HOSTNAME,
            inbound_resolver(config),
            self.workers,
            self.store,
            reactor,
            processes=processes,
        )

    @defer.inlineCallbacks
    def test_the_same_decisions(self):
        pool = self.start_pool()
        with_process, in_thread = self.checks(pool), self.checks(None)
        asked = []
        original = pool.find

        def counted(arguments, fallback):
            asked.append(arguments[3])
            return original(arguments, refused)

        pool.find = counted
        for name, (data, client, helo, sender) in cases().items():
            if client == FORWARDER_IP:
                continue
            session = Session("smtp", peer=client, helo=helo, esmtp=True)
            envelope = Envelope(
                sender=path(sender), paths=[path("jane@acme.test")], recipients=["jane@acme.test"]
            )
            one = yield with_process.check(session, envelope, data)
            other = yield in_thread.check(session, envelope, data)
            self.assertEqual(one, other, name)
        self.assertEqual(len(asked), 4)


class RobustnessTests(ProcessTestsMixin, unittest.TestCase):
    def setUp(self):
        self.dns = fixtures.start_zones(self, reactor)
        self.workers = builders.started_workers(self)

    def in_thread(self):
        return defer.succeed("in thread")

    @defer.inlineCallbacks
    def test_a_killed_process_loses_nothing_and_is_restarted(self):
        pool = self.start_pool(restart_delay=0.3)
        data, client, helo, sender = cases()["signed"]
        arguments = (data, client, helo, sender, None, ())
        first = yield pool.find(arguments, refused)  # it answers
        pid = self.child_pid(pool)
        os.kill(pid, signal.SIGSTOP)  # the next ones stay in flight
        waiting = [pool.find(arguments, self.in_thread) for _ in range(3)]
        os.kill(pid, signal.SIGKILL)
        found = yield defer.gatherResults(waiting)
        self.assertEqual(found, ["in thread"] * 3)  # each one checked the other way
        # While it is down the checks run in the thread; then a new process answers.
        self.assertEqual((yield pool.find(arguments, self.in_thread)), "in thread")
        yield until(lambda: pool.children[0] is not None and pool.children[0].ready)
        self.assertNotEqual(self.child_pid(pool), pid)
        self.assertEqual((yield pool.find(arguments, refused)), first)

    @defer.inlineCallbacks
    def test_restarts_wait_longer_each_time_it_dies_early(self):
        pool = self.start_pool(restart_delay=0.2, restart_most=0.5)
        waits = []
        for _ in range(4):
            yield until(lambda: pool.children[0] is not None)
            pid = self.child_pid(pool)
            os.kill(pid, signal.SIGKILL)
            yield until(lambda: pool.children[0] is None)
            died = time.monotonic()
            yield until(lambda: pool.children[0] is not None)
            waits.append(time.monotonic() - died)
        for wait, least in zip(waits, (0.2, 0.4, 0.5, 0.5)):
            self.assertGreaterEqual(wait, least - 0.02, waits)
        self.assertLess(waits[3], 1.5, waits)  # no more than restart_most

    @defer.inlineCallbacks
    def test_an_error_or_a_bad_answer_fails_that_message_only(self):
        pool = self.start_pool(argv=ODD_CHILD)
        data = fixtures.received(fixtures.message())
        answers = {}
        for sender in ("raises", "nonsense", "unreadable", "evil", "noisy", "fine"):
            asked = pool.find(
                (data, SENDER_IP, "mx.client.test", f"{sender}@odd.test", None, ()), refused
            )
            asked.addErrback(lambda failure: failure.trap(CheckUnavailable) and "451")
            answers[sender] = yield asked
        self.assertEqual(
            answers,
            {
                "raises": "451",
                "nonsense": "451",
                "unreadable": "451",
                "evil": "451",  # os.system is no part of a finding: never unpickled
                "noisy": oddchild.LISTED,  # what it printed went to its stderr
                "fine": oddchild.LISTED,
            },
        )

    @defer.inlineCallbacks
    def test_an_oversized_answer_restarts_the_process(self):
        pool = self.start_pool(argv=ODD_CHILD, restart_delay=0.1)
        yield until(lambda: pool.children[0] is not None)
        pid = self.child_pid(pool)
        data = fixtures.received(fixtures.message())
        found = yield pool.find(
            (data, SENDER_IP, "h.test", "huge@odd.test", None, ()), self.in_thread
        )
        self.assertEqual(found, "in thread")
        yield until(lambda: pool.children[0] is not None and pool.children[0].ready)
        self.assertNotEqual(self.child_pid(pool), pid)
        found = yield pool.find((data, SENDER_IP, "h.test", "fine@odd.test", None, ()), refused)
        self.assertEqual(found, oddchild.LISTED)

    @defer.inlineCallbacks
    def test_a_process_silent_while_it_has_work_is_replaced_its_messages_checked_here(self):
        pool, pid, data, started, stuck = yield self.asked_what_hangs(
            restart_delay=0.1, silent_seconds=1.0
        )
        # While it answers others, one slow message does not make it stuck.
        for _ in range(3):
            yield task.deferLater(reactor, 0.5, lambda: None)
            fine = yield pool.find((data, SENDER_IP, "h.test", "fine@odd.test", None, ()), refused)
            self.assertEqual(fine, oddchild.LISTED)
        self.assertFalse(stuck.called)
        self.assertEqual(self.child_pid(pool), pid)
        # Then silence with work in hand: killed; its message is told 451 (what held the
        # child could hold the appliance's threads too).
        yield self.assertFailure(stuck, CheckUnavailable)
        self.assertGreaterEqual(time.monotonic() - started, 2.5)
        yield until(lambda: pool.children[0] is not None and pool.children[0].ready)
        self.assertNotEqual(self.child_pid(pool), pid)
        found = yield pool.find((data, SENDER_IP, "h.test", "fine@odd.test", None, ()), refused)
        self.assertEqual(found, oddchild.LISTED)

    @defer.inlineCallbacks
    def test_a_stalled_process_never_blocks_the_reactor(self):
        pool = self.start_pool()
        yield pool.find(
            (b"From: a@sender.test\r\n\r\n", SENDER_IP, "h.test", "a@sender.test", None, ()),
            refused,
        )
        pid = self.child_pid(pool)
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(lambda: gone(pid) or os.kill(pid, signal.SIGCONT))
        big = fixtures.received(fixtures.message(body=b"0123456789abcdef" * 65536))  # 1 MiB
        started = time.monotonic()
        waiting = [
            pool.find((big, SENDER_IP, "mx.client.test", "b@sender.test", None, ()), refused)
            for _ in range(16)
        ]
        handed_over = time.monotonic() - started
        ticked = yield task.deferLater(reactor, 0, time.monotonic)
        self.assertLess(handed_over, 1.0)  # 16 MiB into a pipe nobody reads
        self.assertLess(ticked - started, 1.5)
        self.assertFalse(any(asked.called for asked in waiting))
        os.kill(pid, signal.SIGCONT)
        found = yield defer.gatherResults(waiting)
        self.assertEqual({item.authentication.spf[0].result for item in found}, {"pass"})

    @defer.inlineCallbacks
    def test_stopping_leaves_no_process_behind(self):
        pool = self.start_pool()
        yield until(lambda: pool.children[0] is not None)
        pid = self.child_pid(pool)
        yield pool.stopService()
        self.assertTrue(gone(pid))
        self.assertEqual(pool.children, [None])
        # A request after the stop fails (451): the DNS pool stops with the appliance.
        yield self.assertFailure(
            pool.find((b"", SENDER_IP, "h.test", "a@sender.test", None, ()), self.in_thread),
            CheckUnavailable,
        )

    @defer.inlineCallbacks
    def test_one_message_left_unanswered_while_others_are_fails_alone(self):
        pool, pid, data, _, stuck = yield self.asked_what_hangs(request_most=1.0)
        fine = yield pool.find((data, SENDER_IP, "h.test", "fine@odd.test", None, ()), refused)
        self.assertEqual(fine, oddchild.LISTED)
        yield self.assertFailure(stuck, CheckUnavailable)
        self.assertEqual(self.child_pid(pool), pid)  # the child goes on
        fine = yield pool.find((data, SENDER_IP, "h.test", "fine@odd.test", None, ()), refused)
        self.assertEqual(fine, oddchild.LISTED)

    def test_only_the_classes_of_a_finding_are_unpickled(self):
        # (Every kind of finding is read back whole in SameFindingsTests.)
        for reference in (
            ("atollon_mail.inbound.authentication", "logging.FileHandler"),
            ("atollon_mail.inbound.checks", "Found.__class__"),
            ("atollon_mail.inbound.checks", "InboundChecks"),
            ("builtins", "eval"),
        ):
            payload = (
                b"\x80\x04\x8c"
                + bytes([len(reference[0])])
                + reference[0].encode()
                + b"\x8c"
                + bytes([len(reference[1])])
                + reference[1].encode()
                + b"\x93."
            )
            with self.assertRaises(pickle.UnpicklingError, msg=reference):
                _finding(payload)

    @defer.inlineCallbacks
    def test_stopping_fails_what_the_process_still_has(self):
        pool, pid, _, _, stuck = yield self.asked_what_hangs(stop_grace=10)
        started = time.monotonic()
        yield pool.stopService()
        # 451, not the stopped DNS pool (whose Deferred would never fire), at once.
        yield self.assertFailure(stuck, CheckUnavailable)
        self.assertLess(time.monotonic() - started, 5)
        self.assertTrue(gone(pid))

    @defer.inlineCallbacks
    def test_a_process_that_does_not_stop_is_killed(self):
        pool = self.start_pool(stop_grace=0.3)
        yield until(lambda: pool.children[0] is not None)
        pid = self.child_pid(pool)
        os.kill(pid, signal.SIGSTOP)  # it cannot read the end of its input
        started = time.monotonic()
        yield pool.stopService()
        self.assertTrue(gone(pid))
        self.assertGreaterEqual(time.monotonic() - started, 0.3)

    def test_the_process_ends_at_the_end_of_its_input(self):
        # As when the appliance itself is killed: its end of the pipe closes.
        child = subprocess.Popen(
            [sys.executable, "-m", "atollon_mail.inbound.checkprocess"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        settings = pickle.dumps({"nameservers": (), "hostname": HOSTNAME, "threads": 2})
        child.stdin.write(HEAD.pack(len(settings), 0) + settings)
        child.stdin.close()
        self.assertEqual(child.wait(timeout=30), 0)
        child.stdout.close()
