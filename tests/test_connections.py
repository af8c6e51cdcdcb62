"""Connection caps per listener, over StringTransport with a Clock."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from atollon_mail.addresses import client_key
from atollon_mail.config import parse_config
from atollon_mail.connections import (
    CLIENT,
    HEAD_WAIT,
    MAX_PENDING_REFUSALS,
    REFUSAL_GRACE,
    STRESS_HOLD,
    TOTAL,
    TRUSTED_RESERVE,
    LimitedFactory,
    descriptor_shortfall,
)
from atollon_mail.imap.server import connection_refusal as imap_refusal
from atollon_mail.interfaces import ICountedConnection
from atollon_mail.listening import limited
from atollon_mail.metrics import Metrics
from atollon_mail.smtp.policies import MXPolicy
from atollon_mail.smtp.server import SMTPServerFactory, connection_refusal
from tests.smtp.fakes import HOSTNAME, FakeIntake, make_settings


class Hello(Protocol):
    def connectionMade(self):
        self.transport.write(b"hello\r\n")


def refusal(reason: str) -> bytes:
    return f"no: {reason}\r\n".encode()


class AbortRecordingTransport(StringTransport):
    aborted = False

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()


class Listener:
    def __init__(self, total=4, per_client=2, exempt=(), wait_for_head=False, wrapped=None):
        self.clock = Clock()
        self.factory = LimitedFactory(
            wrapped or Factory.forProtocol(Hello),
            total,
            per_client,
            refusal,
            self.clock,
            exempt=exempt,
            wait_for_head=wait_for_head,
        )

    def connect(self, host: str):
        address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
        protocol = self.factory.buildProtocol(address)
        transport = AbortRecordingTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def lose(self, protocol) -> None:
        protocol.connectionLost(Failure(ConnectionDone()))


class CapTests(unittest.TestCase):
    def test_per_client_cap(self):
        listener = Listener(total=10, per_client=2)
        for _ in range(2):
            _, transport = listener.connect("198.51.100.7")
            self.assertEqual(transport.value(), b"hello\r\n")
        _, transport = listener.connect("198.51.100.7")
        self.assertEqual(transport.value(), b"no: client\r\n")
        self.assertTrue(transport.disconnecting)
        _, transport = listener.connect("198.51.100.8")
        self.assertEqual(transport.value(), b"hello\r\n")
        self.assertEqual(listener.factory.total, 3)
        self.assertEqual(listener.factory.refused, {CLIENT: 1, TOTAL: 0})

    def test_total_cap(self):
        listener = Listener(total=3, per_client=2)
        for host in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
            self.assertEqual(listener.connect(host)[1].value(), b"hello\r\n")
        _, transport = listener.connect("198.51.100.4")
        self.assertEqual(transport.value(), b"no: total\r\n")
        self.assertTrue(transport.disconnecting)

    def test_a_lost_connection_frees_its_place(self):
        listener = Listener(total=2, per_client=1)
        first, _ = listener.connect("198.51.100.1")
        listener.connect("198.51.100.2")
        self.assertEqual(listener.connect("198.51.100.1")[1].value(), b"no: total\r\n")
        listener.lose(first)
        self.assertEqual(listener.factory.total, 1)
        self.assertEqual(listener.connect("198.51.100.1")[1].value(), b"hello\r\n")
        self.assertEqual(dict(listener.factory.per_client), {"198.51.100.1": 1, "198.51.100.2": 1})

    def test_refused_connections_are_not_counted(self):
        listener = Listener(total=2, per_client=1)
        listener.connect("198.51.100.1")
        refused, _ = listener.connect("198.51.100.1")
        refused.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(listener.factory.total, 1)

    def test_ipv6_clients_are_counted_by_their_64(self):
        listener = Listener(total=10, per_client=2)
        listener.connect("2001:db8:1:2::1")
        listener.connect("2001:db8:1:2::ffff")
        self.assertEqual(listener.connect("2001:db8:1:2:abcd::1")[1].value(), b"no: client\r\n")
        self.assertEqual(listener.connect("2001:db8:1:3::1")[1].value(), b"hello\r\n")
        self.assertEqual(client_key("::ffff:192.0.2.1"), "192.0.2.1")

    def test_trusted_hosts_skip_the_client_cap_and_have_a_reserve(self):
        listener = Listener(total=3, per_client=1, exempt=("127.0.0.0/8",))
        for _ in range(3):
            listener.connect("198.51.100.1" if _ == 0 else f"198.51.100.{_ + 1}")
        self.assertEqual(listener.connect("198.51.100.9")[1].value(), b"no: total\r\n")
        for _ in range(TRUSTED_RESERVE):
            self.assertEqual(listener.connect("127.0.0.1")[1].value(), b"hello\r\n")
        self.assertEqual(listener.connect("127.0.0.1")[1].value(), b"no: total\r\n")


class Stressable(Protocol):
    stressed = 0

    def under_stress(self):
        self.stressed += 1


class StressTests(unittest.TestCase):
    def test_a_full_listener_tells_its_sessions_and_newcomers_for_a_while(self):
        listener = Listener(total=2, per_client=2, wrapped=Factory.forProtocol(Stressable))
        first, _ = listener.connect("198.51.100.1")
        second, _ = listener.connect("198.51.100.2")
        self.assertFalse(listener.factory.under_stress)
        self.assertEqual(first.wrappedProtocol.stressed, 0)
        listener.connect("198.51.100.3")  # refused: full
        self.assertTrue(listener.factory.under_stress)
        self.assertEqual((first.wrappedProtocol.stressed, second.wrappedProtocol.stressed), (1, 1))
        listener.connect("198.51.100.3")  # told again only after a second
        self.assertEqual(first.wrappedProtocol.stressed, 1)
        listener.lose(second)
        newcomer, _ = listener.connect("198.51.100.4")
        self.assertEqual(newcomer.wrappedProtocol.stressed, 1)
        listener.lose(newcomer)
        listener.clock.advance(STRESS_HOLD)
        self.assertFalse(listener.factory.under_stress)
        later, _ = listener.connect("198.51.100.5")
        self.assertEqual(later.wrappedProtocol.stressed, 0)

    def test_refusals_from_one_client_are_no_stress(self):
        listener = Listener(total=5, per_client=1, wrapped=Factory.forProtocol(Stressable))
        first, _ = listener.connect("198.51.100.1")
        listener.connect("198.51.100.1")
        self.assertFalse(listener.factory.under_stress)
        self.assertEqual(first.wrappedProtocol.stressed, 0)


class RefusalTimingTests(unittest.TestCase):
    def test_lingering_refused_connection_is_cut(self):
        listener = Listener(total=1, per_client=1)
        listener.connect("198.51.100.1")
        _, transport = listener.connect("198.51.100.2")
        self.assertFalse(transport.aborted)
        listener.clock.advance(REFUSAL_GRACE)
        self.assertTrue(transport.aborted)

    def test_gone_refused_connection_leaves_no_timer(self):
        listener = Listener(total=1, per_client=1)
        listener.connect("198.51.100.1")
        refused, _ = listener.connect("198.51.100.2")
        refused.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(listener.clock.getDelayedCalls(), [])

    def test_http_refusal_waits_for_the_request_head(self):
        listener = Listener(total=1, per_client=1, wait_for_head=True)
        listener.connect("198.51.100.1")
        refused, transport = listener.connect("198.51.100.2")
        refused.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.assertEqual(transport.value(), b"")
        refused.dataReceived(b"\r\n")
        self.assertEqual(transport.value(), b"no: total\r\n")
        self.assertTrue(transport.disconnecting)

    def test_refusals_waiting_to_be_answered_are_bounded(self):
        # Each one holds a descriptor for a moment: past a few dozen, close at once.
        listener = Listener(total=1, per_client=1, wait_for_head=True)
        listener.connect("198.51.100.1")
        waiting = [listener.connect("198.51.100.2") for _ in range(MAX_PENDING_REFUSALS)]
        address = IPv4Address("TCP", "198.51.100.2", 40000)
        self.assertIsNone(listener.factory.buildProtocol(address))
        # One that goes frees its slot for the next refusal, which takes it.
        listener.lose(waiting.pop(0)[0])
        waiting.append(listener.connect("198.51.100.2"))
        self.assertEqual(listener.factory.pending_refusals, MAX_PENDING_REFUSALS)
        self.assertIsNone(listener.factory.buildProtocol(address))
        # None goes by itself: each is cut after REFUSAL_GRACE, and as the reactor then
        # tells it that its connection is lost, the slots free up.
        listener.clock.advance(REFUSAL_GRACE - 0.1)
        self.assertFalse(any(transport.aborted for _, transport in waiting))
        listener.clock.advance(0.1)
        for protocol, transport in waiting:
            self.assertTrue(transport.aborted)
            protocol.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual(listener.factory.pending_refusals, 0)
        _, transport = listener.connect("198.51.100.2")
        listener.clock.advance(HEAD_WAIT)
        self.assertEqual(transport.value(), b"no: total\r\n")

    def test_http_refusal_answers_a_silent_client_after_a_moment(self):
        listener = Listener(total=1, per_client=1, wait_for_head=True)
        listener.connect("198.51.100.1")
        _, transport = listener.connect("198.51.100.2")
        listener.clock.advance(HEAD_WAIT)
        self.assertEqual(transport.value(), b"no: total\r\n")


@implementer(ICountedConnection)
class Counted(Stressable):
    def __init__(self):
        self.lost_callbacks = []

    def when_lost(self, callback):
        self.lost_callbacks.append(callback)

    def connectionLost(self, reason=None):
        for callback in self.lost_callbacks:
            callback()


class UnwrappedTests(unittest.TestCase):
    def test_a_protocol_that_tells_when_it_is_lost_is_counted_without_a_wrapper(self):
        listener = Listener(total=2, per_client=1, wrapped=Factory.forProtocol(Counted))
        first, _ = listener.connect("198.51.100.1")
        self.assertIsInstance(first, Counted)
        verifyObject(ICountedConnection, first)
        self.assertEqual(listener.connect("198.51.100.1")[1].value(), b"no: client\r\n")
        second, _ = listener.connect("198.51.100.2")
        self.assertEqual(listener.factory.total, 2)
        listener.connect("198.51.100.3")  # refused: full, and the sessions are told
        self.assertEqual((first.stressed, second.stressed), (1, 1))
        listener.lose(first)
        self.assertEqual(listener.factory.total, 1)
        self.assertEqual(listener.factory.counted, {second})
        self.assertIsInstance(listener.connect("198.51.100.1")[0], Counted)


class Idler(Counted):
    """A counted protocol that may say it only waits for news (IMAP IDLE)."""

    counter = None

    def set_counter(self, counter):
        self.counter = counter


class IdleTests(unittest.TestCase):
    def listener(self, total=2, max_idle=2):
        listener = Listener(total=total, per_client=10, wrapped=Factory.forProtocol(Idler))
        listener.factory.max_idle = max_idle
        return listener

    def test_idle_connections_leave_room_for_active_ones(self):
        listener = self.listener()
        first, _ = listener.connect("198.51.100.1")
        second, _ = listener.connect("198.51.100.1")
        self.assertIs(first.counter, listener.factory)
        self.assertEqual(listener.connect("198.51.100.1")[1].value(), b"no: total\r\n")
        first.counter.idle_started()
        second.counter.idle_started()
        third, _ = listener.connect("198.51.100.1")
        fourth, _ = listener.connect("198.51.100.1")
        self.assertIsInstance(fourth, Idler)
        self.assertEqual(
            listener.connect("198.51.100.1")[1].value(),
            b"no: total\r\n",
            "active and idle caps both full",
        )
        first.counter.idle_ended()  # back to work: counted as active again
        listener.lose(third)
        listener.lose(fourth)
        self.assertEqual((listener.factory.total, listener.factory.idle), (2, 1))
        self.assertIsInstance(listener.connect("198.51.100.1")[0], Idler)
        self.assertEqual(listener.connect("198.51.100.1")[1].value(), b"no: total\r\n")

    def test_without_an_idle_cap_nothing_changes(self):
        listener = self.listener(total=1, max_idle=0)
        first, _ = listener.connect("198.51.100.1")
        first.counter.idle_started()
        self.assertEqual(listener.connect("198.51.100.1")[1].value(), b"no: total\r\n")


class SMTPListenerTests(unittest.TestCase):
    def test_smtp_sessions_are_counted_and_the_excess_gets_421(self):
        clock = Clock()
        settings = make_settings(greet_pause=0)
        smtp = SMTPServerFactory(MXPolicy(FakeIntake(), HOSTNAME), HOSTNAME, settings, clock)
        listener = Listener(total=5, per_client=1, wrapped=smtp)
        listener.factory.refusal = lambda reason: connection_refusal(HOSTNAME, reason)
        session, transport = listener.connect("198.51.100.1")
        self.assertEqual(transport.value(), f"220 {HOSTNAME} ESMTP atollon-mail\r\n".encode())
        session.dataReceived(b"EHLO client.example.org\r\n")
        self.assertIn(b"250-PIPELINING", transport.value())
        _, refused = listener.connect("198.51.100.1")
        self.assertEqual(
            refused.value(),
            f"421 4.7.0 {HOSTNAME} Error: too many connections from your address, "
            "try again later\r\n".encode(),
        )
        self.assertTrue(refused.disconnecting)
        self.assertIs(session.factory, smtp)  # not wrapped: it tells when it is lost
        verifyObject(ICountedConnection, session)
        self.assertEqual(listener.factory.total, 1)
        session.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(listener.factory.total, 0)
        self.assertEqual(listener.factory.per_client, {})


class RefusalCountTests(unittest.TestCase):
    """The listeners' factories as the builders make them (listening.limited) count the
    connections their caps refuse, by listener and why."""

    config = parse_config(
        "[smtp]\nmax_connections = 2\nmax_connections_per_client = 1\n"
        "[imap]\nmax_connections = 1\nmax_connections_per_client = 1\n"
        "max_idle_connections = 0\n"
    )

    def connect(self, factory, host: str) -> StringTransport:
        address = IPv4Address("TCP", host, 40000)
        transport = StringTransport(peerAddress=address)
        factory.buildProtocol(address).makeConnection(transport)
        return transport

    def refused(self, metrics: Metrics, listener: str, reason: str) -> float | None:
        return metrics.registry.get_sample_value(
            "atollon_mail_refused_connections_total", {"listener": listener, "reason": reason}
        )

    def test_smtp_refusals_per_client_and_for_a_full_listener(self):
        metrics = Metrics()
        clock = Clock()
        smtp = SMTPServerFactory(
            MXPolicy(FakeIntake(), HOSTNAME), HOSTNAME, make_settings(greet_pause=0), clock
        )
        factory = limited(smtp, "smtp", self.config.smtp, self.config, clock, metrics=metrics)
        self.connect(factory, "198.51.100.1")
        self.assertTrue(self.connect(factory, "198.51.100.1").value().startswith(b"421 4.7.0"))
        self.connect(factory, "198.51.100.2")
        self.assertTrue(self.connect(factory, "198.51.100.3").value().startswith(b"421 4.7.0"))
        self.assertEqual(self.refused(metrics, "smtp", "per_client"), 1)
        self.assertEqual(self.refused(metrics, "smtp", "total"), 1)

    def test_imap_refusals(self):
        metrics = Metrics()
        clock = Clock()
        factory = limited(
            Factory.forProtocol(Hello),
            "imap",
            self.config.imap,
            self.config,
            clock,
            refusal=imap_refusal,
            metrics=metrics,
        )
        self.connect(factory, "198.51.100.1")
        self.assertTrue(self.connect(factory, "198.51.100.2").value().startswith(b"* BYE"))
        self.assertEqual(self.refused(metrics, "imap", "total"), 1)
        self.assertIsNone(self.refused(metrics, "imap", "per_client"))


class DescriptorBudgetTests(unittest.TestCase):
    def test_defaults_fit_systemds_default_limit(self):
        # 25, 587, 465 and the web at 100 each, delivery at 100: room left under 1024.
        self.assertIsNone(descriptor_shortfall([100, 100, 100, 100], 100, 1024))

    def test_caps_beyond_the_limit_are_named(self):
        problem = descriptor_shortfall([1000, 100, 100], 100, 1024)
        self.assertIn("open-file limit is 1024", problem)
        self.assertIn("LimitNOFILE", problem)

    def test_unlimited(self):
        self.assertIsNone(descriptor_shortfall([10**6], 100, -1))
