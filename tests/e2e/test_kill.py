"""End to end: kill -9 in the middle of relaying, restart, and count the copies.

The appliance runs under twistd and relays for the loopback network through its
smarthost setting to a scripted SMTP server in this test process, which counts each
message it accepted by Message-ID. Senders in threads hand it a few thousand small
messages while the remote server holds its first greetings back, so the queue fills and
each later connection carries many messages, as under a real load; once the remote
server has received a part of them, the appliance is killed with SIGKILL, started again
and left to drain its queue. Then: every message the appliance acknowledged arrived at
least once; every message that arrived twice is listed by `queue list --uncertain`; that
list holds exactly the recipients whose final dot had been written down as sent (in the
store or the dot journal) without a recorded reply, no recipient whose reply was
recorded, and no more than the replies of the last moments before the kill plus one
message per open connection.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import smtplib
import threading
import time

from twisted.internet import defer, reactor, task, threads
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.delivery.dotjournal import JOURNAL_DIRECTORY, read_marks
from atollon_mail.store import queue
from atollon_mail.store.models import QueueRecipient
from tests.builders import started_appliance
from tests.remote_mta import Delayed, RemoteMTA

MESSAGES = 3000
SESSIONS = 8
KILL_AFTER = 1200  # messages accepted by the remote server before the kill
CONCURRENCY = 20  # [delivery] per_destination_concurrency (the default): connections
# The replies that may have arrived without being committed yet: everything the remote
# server answered this long before the kill (the appliance commits far more often).
LAST_MOMENTS = 0.5
BOUND = 150  # the figure for today's relay rate

_MESSAGE_ID = re.compile(rb"^Message-ID: <(kill-\d+)@relay\.test>", re.MULTILINE | re.IGNORECASE)


def message(number: int) -> bytes:
    return (
        f"From: <sender@relay.test>\r\nTo: <m{number}@sink.test>\r\n"
        f"Subject: kill test {number}\r\nMessage-ID: <kill-{number}@relay.test>\r\n\r\n"
        f"Message {number}.\r\n"
    ).encode()


class TimedEnvelopes(list):
    """The remote server's list of received envelopes, with when each was answered."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def append(self, envelope) -> None:
        super().append(envelope)
        self.times.append(time.monotonic())


class KillDuringRelayTests(unittest.TestCase):
    timeout = 120  # typically done in 15 s

    @defer.inlineCallbacks
    def setUp(self):
        # The first connections' greetings wait for this clock: the test lets them go
        # once every message is queued.
        self.greetings = Clock()
        self.remote = RemoteMTA(
            clock=self.greetings, greeting=[Delayed(1, 220)] * CONCURRENCY + [220]
        )
        self.remote.envelopes = TimedEnvelopes()
        self.remote_port = reactor.listenTCP(0, self.remote, interface="127.0.0.1")
        self.addCleanup(self.remote_port.stopListening)
        self.appliance = yield started_appliance(
            self,
            extra="relay_networks = 127.0.0.0/8\n",
            delivery_config=(
                f"[delivery]\nsmarthost = 127.0.0.1:{self.remote_port.getHost().port}\n"
                f"per_destination_concurrency = {CONCURRENCY}\n"
            ),
        )
        self.acknowledged: set[str] = set()
        self.lock = threading.Lock()

    def send(self, numbers: range) -> None:
        """One SMTP session sending messages until done or the appliance is gone."""
        try:
            with smtplib.SMTP("127.0.0.1", self.appliance.smtp_port, timeout=30) as session:
                for number in numbers:
                    session.sendmail("sender@relay.test", [f"m{number}@sink.test"], message(number))
                    with self.lock:
                        self.acknowledged.add(f"kill-{number}")
        except (OSError, smtplib.SMTPException):
            pass  # killed mid-session: what was not acknowledged is not promised

    @defer.inlineCallbacks
    def wait_for(self, predicate, what: str, seconds: float):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if (yield predicate()):
                return
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.fail(f"timed out waiting for {what}")

    @defer.inlineCallbacks
    def test_kill_9_mid_relay_duplicates_only_what_is_listed_uncertain(self):
        started = time.monotonic()
        per_session = MESSAGES // SESSIONS
        senders = defer.DeferredList(
            [
                threads.deferToThread(
                    self.send, range(index * per_session, (index + 1) * per_session)
                )
                for index in range(SESSIONS)
            ]
        )
        yield senders
        self.assertGreater(len(self.acknowledged), MESSAGES * 0.9)
        self.greetings.advance(1)
        yield self.wait_for(
            lambda: defer.succeed(len(self.remote.envelopes) >= KILL_AFTER),
            "the remote server to receive the first messages",
            30,
        )
        self.appliance.stop(signal.SIGKILL)
        killed_at = time.monotonic()

        # What was written down at the moment of the kill: the store, and the dots noted
        # in the dot journal that no progress commit brought to the store yet.
        journal = read_marks(os.path.join(self.appliance.directory, "data", JOURNAL_DIRECTORY))
        at_kill = self.appliance.run_sync(
            lambda: {
                row.address: (row.state, row.dot_sent_at is not None or row.id in journal)
                for row in QueueRecipient.select()
            }
        )
        recorded = {a for a, (state, _) in at_kill.items() if state != "in-flight"}
        dot_unanswered = {a for a, (state, dot) in at_kill.items() if state == "in-flight" and dot}
        last_moments = sum(1 for t in self.remote.envelopes.times if t >= killed_at - LAST_MOMENTS)

        yield threads.deferToThread(self.appliance.start)

        def drained():
            counts = self.appliance.run_sync(queue.queue_counts)
            waiting = counts["queued"] + counts["in-flight"] + counts["deferred"]
            return defer.succeed(waiting == 0 and counts["delivered"] >= len(self.acknowledged))

        yield self.wait_for(drained, "the queue to drain after the restart", 40)

        uncertain = {
            e.address for e in self.appliance.run_sync(queue.queue_list, None, 10_000, 0, True)
        }
        listed = yield threads.deferToThread(
            self.appliance.cli, "queue", "list", "--uncertain", "--limit", "10000"
        )
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertEqual({a for a in re.findall(r"\bm\d+@sink\.test\b", listed.stdout)}, uncertain)

        copies = collections.Counter()
        for envelope in self.remote.envelopes:
            if envelope.accepted:
                found = _MESSAGE_ID.search(envelope.data)
                self.assertIsNotNone(found, envelope.data[:200])
                copies[found.group(1).decode()] += 1
        missing = self.acknowledged - set(copies)
        self.assertEqual(missing, set(), "acknowledged messages that never arrived")
        duplicated = {f"m{mid.split('-')[1]}@sink.test" for mid, n in copies.items() if n > 1}
        self.assertEqual(max(copies.values()), 2 if duplicated else 1)

        self.assertLessEqual(duplicated, uncertain, "a second copy that nobody can see")
        self.assertEqual(uncertain, dot_unanswered, "uncertain exactly where the dot was sent")
        self.assertEqual(uncertain & recorded, set(), "a recorded reply listed as uncertain")
        self.assertLessEqual(len(uncertain), last_moments + CONCURRENCY)
        self.assertLessEqual(len(uncertain), BOUND)
        print(
            f"\nkill -9 after {KILL_AFTER} of {MESSAGES} relayed: "
            f"{len(self.acknowledged)} acknowledged, {len(duplicated)} delivered twice, "
            f"{len(uncertain)} listed uncertain, {last_moments} replies in the last "
            f"{LAST_MOMENTS}s, {len(at_kill) - len(recorded)} in flight at the kill, "
            f"{time.monotonic() - started:.1f}s"
        )
        yield self.remote.when_idle()
