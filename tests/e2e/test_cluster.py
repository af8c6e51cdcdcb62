"""End to end: two `twistd atollon-mail` nodes on one PostgreSQL database, one killed with
SIGKILL in the middle of the load.

A fresh database is made for the test (and dropped after). Nodes a and b, each with its
own directory, data dir and ports, relay through their smarthost setting to a scripted
SMTP server in this test process, which keeps every envelope. First an IMAP IDLE on node
b must see the mail delivered through node a. Then, together: inbound mail for a local
mailbox on port 25, relayed mail on port 25 and submitted mail (AUTH) on 587 go to both
nodes, while a campaign is sent by both nodes' senders. Once the remote server has
received a part of the mail, node a is killed with SIGKILL; node b must take over: the
jobs run on one node at a time, the deliveries a had in flight, the queue and the
campaign.

Then: every message a node acknowledged with 250 is filed (local) or reached the remote
server (relayed, submitted), and every campaign row is sent. Local mail is filed exactly
once. Duplicates are allowed only where the single-box rules allow them after a kill
(tests/e2e/test_kill.py), for the recipients node a had in flight when it died:
- one whose final dot node a had sent and whose reply it had not recorded (the store
  marks it uncertain when node b queues it again);
- one whose final dot node a had written down only in its own dot journal (its data dir,
  which node b cannot read): node b queues it again as if never sent.
No recipient node b claimed, and none node a had not claimed at the kill, arrives twice.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import smtplib
import socket
import ssl
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from atollon_mail.passwords import hash_password
from atollon_mail.store import campaigns, queue
from atollon_mail.store.models import CampaignRecipient, Message, QueueRecipient
from atollon_mail.store.pool import Store
from tests import builders
from tests.e2e.appliance import ClusterNode
from tests.remote_mta import RemoteMTA
from tests.support import POSTGRES_SKIP_REASON, POSTGRES_URL

LOCAL = 120  # inbound messages for the local mailbox, per node
RELAYED = 150  # relayed messages, per node
SUBMITTED = 40  # submitted messages, per node
CAMPAIGN = 120  # campaign recipients
KILL_AFTER = 150  # envelopes the remote server received before node a is killed

_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


def message(kind: str, node: str, number: int, recipient: str) -> bytes:
    return (
        f"From: <jane@acme.test>\r\nTo: <{recipient}>\r\n"
        f"Subject: cluster {kind} {number}\r\nMessage-ID: <{kind}-{node}-{number}@cluster.test>\r\n"
        f"\r\nMessage {number}.\r\n"
    ).encode()


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _url_of(database: str) -> str:
    parts = urlsplit(POSTGRES_URL)
    return urlunsplit(parts._replace(path="/" + database))


def _admin(sql: str, params: tuple = ()) -> None:
    import psycopg2

    connection = psycopg2.connect(POSTGRES_URL)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    finally:
        connection.close()


def _filed_message_ids() -> list[str]:
    """Store operation: the Message-ID of every message filed."""
    return [(row[0] or "").strip("<>") for row in Message.select(Message.message_id).tuples()]


def _in_flight_of(node: str) -> set[str]:
    query = QueueRecipient.select(QueueRecipient.address).where(
        (QueueRecipient.state == "in-flight") & (QueueRecipient.claimed_by == node)
    )
    return {row[0] for row in query.tuples()}


def _campaign_states(campaign_id: int) -> collections.Counter:
    query = CampaignRecipient.select(CampaignRecipient.state).where(
        CampaignRecipient.campaign == campaign_id
    )
    return collections.Counter(row[0] for row in query.tuples())


def _make_campaign(store) -> int:
    builders.organization(store, "Acme")
    people = [
        builders.person(store, "Acme", last_name=f"P{n}", email=f"p{n}@campaign.test")
        for n in range(CAMPAIGN)
    ]
    builders.group(store, "Everyone", "Acme", members=[p.id for p in people])
    record = builders.campaign(
        store,
        "Everyone",
        "news@acme.test",
        variants={"en": ("News", "Hello {{ name }}.\n{{ unsubscribe_url }}\n")},
        started=True,
    )
    return record.id


class IdleWatcher:
    """An IMAP session (blocking, run in a thread) IDLE on jane's INBOX."""

    def __init__(self, port: int):
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buffer = b""
        self.read_line()  # greeting
        self.command(b"s STARTTLS")
        self.socket = _unverified_context().wrap_socket(self.socket)
        self.command(b"a LOGIN jane jane-password")
        self.command(b"b SELECT INBOX")
        self.socket.sendall(b"c IDLE\r\n")
        while not self.read_line().startswith(b"+"):
            pass

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.socket.recv(4096)
            if not chunk:
                raise ConnectionError("the IMAP server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def command(self, line: bytes) -> None:
        tag = line.split(b" ", 1)[0]
        self.socket.sendall(line + b"\r\n")
        while True:
            answer = self.read_line()
            if answer.startswith(tag + b" "):
                if not answer.startswith(tag + b" OK"):
                    raise AssertionError(answer)
                return

    def wait_for_exists(self) -> bytes:
        while True:
            line = self.read_line()
            if line.endswith(b"EXISTS"):
                return line

    def close(self) -> None:
        self.socket.close()


class TwoNodesTests(unittest.TestCase):
    timeout = 150  # typically done in well under 90 s
    if POSTGRES_SKIP_REASON:
        skip = POSTGRES_SKIP_REASON

    @defer.inlineCallbacks
    def setUp(self):
        database = f"atollon_cluster_{uuid.uuid4().hex[:12]}"
        _admin(f'CREATE DATABASE "{database}"')
        self.addCleanup(self._drop, database)
        self.database_url = _url_of(database)
        self.remote = RemoteMTA()
        port = reactor.listenTCP(0, self.remote, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        smarthost = f"127.0.0.1:{port.getHost().port}"
        self.nodes = {}
        for name in ("a", "b"):
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            node = ClusterNode(
                directory, name, self.database_url, smarthost, massmail="rate = 10\n"
            )
            # a first: it applies the migrations; b finds them applied.
            yield threads.deferToThread(node.start)
            self.addCleanup(node.stop)
            self.nodes[name] = node
        self.store = Store.from_url(self.database_url, None)
        self.addCleanup(self.store.stop)
        builders.hosted_mailbox(
            self.store, "jane@acme.test", "jane", hash_password("jane-password")
        )
        builders.mailbox(self.store, "news@acme.test", "jane")
        self.acknowledged: dict[str, set[str]] = collections.defaultdict(set)
        self.lock = threading.Lock()

    def _drop(self, database: str) -> None:
        for node in self.nodes.values():
            node.stop()
        self.store.stop()
        _admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )
        _admin(f'DROP DATABASE IF EXISTS "{database}"')

    # -- load ------------------------------------------------------------------------------

    def send(self, kind: str, node: str, count: int, recipient, submission=False) -> None:
        """One SMTP session sending `count` messages until done or its node is gone."""
        appliance = self.nodes[node]
        port = appliance.submission_port if submission else appliance.smtp_port
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as session:
                if submission:
                    session.starttls(context=_unverified_context())
                    session.login("jane", "jane-password")
                for number in range(count):
                    to = recipient(number)
                    session.sendmail("jane@acme.test", [to], message(kind, node, number, to))
                    with self.lock:
                        self.acknowledged[kind].add(f"{kind}-{node}-{number}@cluster.test")
        except (OSError, smtplib.SMTPException):
            pass  # killed mid-session: what was not acknowledged is not promised

    @defer.inlineCallbacks
    def wait_for(self, predicate, what: str, seconds: float):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate():
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what}")

    def received(self) -> collections.Counter:
        """Copies the remote server accepted, by Message-ID (campaign mail: by address)."""
        copies = collections.Counter()
        for envelope in self.remote.envelopes:
            if envelope.accepted:
                found = _MESSAGE_ID.search(envelope.data)
                if envelope.recipients[0].endswith("@campaign.test"):
                    copies[envelope.recipients[0]] += 1
                else:
                    self.assertIsNotNone(found, envelope.data[:200])
                    copies[found.group(1).decode()] += 1
        return copies

    @defer.inlineCallbacks
    def test_two_nodes_share_the_load_and_the_survivor_finishes_after_a_kill_9(self):
        started = time.monotonic()
        a, b = self.nodes["a"], self.nodes["b"]

        # IMAP IDLE on node b hears of mail delivered through node a.
        watcher = yield threads.deferToThread(IdleWatcher, b.imap_port)
        self.addCleanup(watcher.close)
        exists = threads.deferToThread(watcher.wait_for_exists)
        yield threads.deferToThread(self.send, "idle", "a", 1, lambda n: "jane@acme.test")
        line = yield exists
        self.assertEqual(line, b"* 1 EXISTS")

        # Everything together, on both nodes.
        campaign_id = _make_campaign(self.store)
        senders = []
        for name in ("a", "b"):
            senders += [
                threads.deferToThread(self.send, "local", name, LOCAL, lambda n: "jane@acme.test"),
                threads.deferToThread(
                    self.send, "relay", name, RELAYED, lambda n, x=name: f"r{x}{n}@sink.test"
                ),
                threads.deferToThread(
                    self.send,
                    "submit",
                    name,
                    SUBMITTED,
                    lambda n, x=name: f"s{x}{n}@sink.test",
                    True,
                ),
            ]
        yield self.wait_for(
            lambda: len(self.remote.envelopes) >= KILL_AFTER, "the first deliveries", 40
        )
        # b held still for a moment so that what a had in flight is read before b can
        # take it back.
        b.process.send_signal(signal.SIGSTOP)
        a.stop(signal.SIGKILL)
        killed = time.monotonic()
        in_flight_of_a = self.store.run_sync(_in_flight_of, "a")
        b.process.send_signal(signal.SIGCONT)
        yield defer.DeferredList(senders)

        def finished():
            counts = self.store.run_sync(queue.queue_counts)
            waiting = counts["queued"] + counts["in-flight"] + counts["deferred"]
            states = self.store.run_sync(_campaign_states, campaign_id)
            status = self.store.run_sync(campaigns.get_campaign, campaign_id).status
            return waiting == 0 and set(states) == {"sent"} and status == "finished"

        yield self.wait_for(finished, "node b to finish the queue and the campaign", 60)
        self.assertEqual(self.store.run_sync(_campaign_states, campaign_id)["sent"], CAMPAIGN)

        # Local mail: every acknowledged message filed, each once.
        filed = collections.Counter(self.store.run_sync(_filed_message_ids))
        local = self.acknowledged["local"] | self.acknowledged["idle"]
        self.assertEqual(local - set(filed), set(), "acknowledged local mail not filed")
        self.assertEqual({mid for mid in local if filed[mid] > 1}, set())
        self.assertTrue(any("-a-" in mid for mid in self.acknowledged["local"]))

        # Remote mail and the campaign: every acknowledged message arrived; twice only
        # for a recipient node a had in flight when it died.
        copies = self.received()
        remote = self.acknowledged["relay"] | self.acknowledged["submit"]
        self.assertEqual(remote - set(copies), set(), "acknowledged mail that never arrived")
        campaign = {f"p{n}@campaign.test" for n in range(CAMPAIGN)}
        self.assertEqual(campaign - set(copies), set(), "campaign rows never delivered")
        twice = {key for key, count in copies.items() if count > 1}
        self.assertLessEqual(max(copies.values()), 2)
        twice_to = {key if key.endswith("@campaign.test") else _recipient_of(key) for key in twice}
        self.assertLessEqual(twice_to, in_flight_of_a, "a second copy of what a had not in flight")

        # b runs the jobs of one node at a time now (it took them over from a, or had them).
        log = b.log()
        self.assertIn("this node now runs dns-watcher", log + a.log())
        yield self.wait_for(
            lambda: (
                "this node now runs junk-purger" in b.log()
                and "this node now runs dns-watcher" in b.log()
            ),
            "node b to take the jobs over",
            10,
        )
        print(
            f"\ntwo nodes, kill -9 of a after {KILL_AFTER} remote deliveries: "
            f"{sum(len(v) for v in self.acknowledged.values())} acknowledged "
            f"({len(self.acknowledged['local'])} local), {len(in_flight_of_a)} in flight "
            f"of a at the kill, {len(twice)} delivered twice, "
            f"{time.monotonic() - killed:.1f}s to finish after the kill, "
            f"{time.monotonic() - started:.1f}s in all"
        )
        yield self.remote.when_idle()


def _recipient_of(message_id: str) -> str:
    """The recipient address the sender gave the message (see TwoNodesTests.send)."""
    kind, node, number = message_id.split("@")[0].split("-")
    letter = {"relay": "r", "submit": "s"}[kind]
    return f"{letter}{node}{number}@sink.test"
