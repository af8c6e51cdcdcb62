"""The delivery runner against a real store: outcomes, retries, bounces, limits, restarts.

Time comes from a task.Clock; remote servers are scripted by a fake `deliver` that
answers per recipient, so each rule is shown without sockets. Every rule is shown twice:
with outcomes handed back when the connection is done, and with the client's `progress`
dialogue (each dot asked for, each reply reported as it comes). The real client and DNS
are exercised end to end in tests/e2e/test_sending.py and tests/e2e/test_kill.py.
"""

from __future__ import annotations

import email
import email.policy
import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.delivery.dotjournal import DotJournal, read_marks
from atollon_mail.delivery.intake import Intake
from atollon_mail.delivery.mx import Destination, NullMX, TemporaryDNSError
from atollon_mail.delivery.progress import MAX_AHEAD
from atollon_mail.delivery.runner import DeliveryRunner
from atollon_mail.events import Events
from atollon_mail.metrics import Metrics
from atollon_mail.passwords import hash_password
from atollon_mail.smtp import client
from atollon_mail.store import filing as filing_ops
from atollon_mail.store import queue
from atollon_mail.store.models import QueueRecipient
from atollon_mail.store.records import Origin, OutgoingMessage
from tests import builders
from tests.support import (
    BrokenCounting,
    PostgresStoreMixin,
    SqliteStoreMixin,
    StoreFixtureMixin,
    broken_metrics,
)


def raw_message(subject: str = "hello", sender: str = "jane@acme.test") -> bytes:
    return (
        f"From: {sender}\r\nTo: someone\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@acme.test>\r\n\r\nbody\r\n"
    ).encode()


class ScriptedRemote:
    """Stands in for client.deliver: answers each recipient with a scripted reply."""

    def __init__(self):
        self.replies: dict[str, str] = {}  # address -> "250 ok" / "451 later" / "550 no"
        self.default = "250 2.0.0 Ok"
        # Addresses whose message went out but whose reply never came (connection lost).
        self.unanswered: set[str] = set()
        self.session_failures: dict[str, client.SessionFailure] = {}  # by address
        self.calls: list[tuple[str, tuple[client.Envelope, ...]]] = []
        self.options: list[dict] = []
        self.hold: list[defer.Deferred] | None = None  # when set, calls wait until released
        self.active = 0
        self.most_active = 0

    def __call__(self, _reactor, address, port, envelopes, **options):
        self.calls.append((address, tuple(envelopes)))
        self.options.append(options)
        if address in self.session_failures:
            return defer.fail(self.session_failures[address])
        outcomes = [
            client.EnvelopeOutcome(
                envelope,
                tuple(
                    client.RecipientOutcome(recipient, 0, "connection lost after the dot", True)
                    if recipient in self.unanswered
                    else client.RecipientOutcome(
                        recipient,
                        int(self.replies.get(recipient, self.default)[:3]),
                        self.replies.get(recipient, self.default),
                    )
                    for recipient in envelope.recipients
                ),
            )
            for envelope in envelopes
        ]
        if self.hold is None:
            return defer.succeed(outcomes)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        waiting: defer.Deferred = defer.Deferred()

        def release(_):
            self.active -= 1
            return outcomes

        waiting.addCallback(release)
        self.hold.append(waiting)
        return waiting


class StepwiseRemote(ScriptedRemote):
    """ScriptedRemote speaking the client's `progress` dialogue: each message's dot waits
    for the runner's answer, each reply is reported with the next dot's request.
    stall_after=n: the connection hangs after the n-th dot (the appliance is killed)."""

    def __init__(self):
        super().__init__()
        self.dots: list[object] = []  # keys of the envelopes whose dot went out
        self.stall_after: int | None = None

    def __call__(self, _reactor, address, port, envelopes, progress=None, **options):
        answer = super().__call__(_reactor, address, port, envelopes, **options)
        if progress is None:
            return answer
        return answer.addCallback(self._converse, progress)

    @defer.inlineCallbacks
    def _converse(self, outcomes, progress):
        finished: list[client.EnvelopeOutcome] = []
        for outcome in outcomes:
            every = tuple(range(len(outcome.recipients)))
            gate = progress(finished, client.DotPending(outcome.envelope, every))
            if gate is not None:
                yield gate
            self.dots.append(outcome.envelope.key)
            if self.stall_after is not None and len(self.dots) >= self.stall_after:
                yield defer.Deferred()  # never answers
            finished = [outcome]
        progress(finished, None)
        return outcomes


class FakeResolver:
    def __init__(self):
        self.answers: dict[str, object] = {}

    def resolve(self, domain):
        answer = self.answers.get(domain, [Destination(f"mx.{domain}", "192.0.2.1", 10)])
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


class RunnerTests(StoreFixtureMixin):
    config_text = ""
    remote_class = ScriptedRemote

    def setUp(self):
        self.store = self.make_store()
        self.jane = builders.hosted_mailbox(self.store, password_hash=hash_password("pw")).mailbox
        self.journal_directory = self.mktemp()
        # The clock starts a little after the wall clock: the store stamps new queue rows
        # with the wall clock, and they must be due at the runner's "now".
        self.start_time = float(int(time.time()) + 2)
        self.clock = task.Clock()
        self.clock.advance(self.start_time)
        self.remote = self.remote_class()
        self.resolver = FakeResolver()
        self.runner = self.make_runner()

    def make_runner(
        self, text: str | None = None, progress_delay: float = 0, metrics=None
    ) -> DeliveryRunner:
        settings = parse_config(text if text is not None else self.config_text).delivery
        # A new runner has an intake of its own: its queued mail wakes this runner only.
        self.events = Events()
        self.intake = Intake(self.store, self.events, metrics=metrics)
        runner = DeliveryRunner(
            self.store,
            self.intake,
            self.resolver,
            settings,
            "mx.acme.test",
            self.clock,
            deliver=self.remote,
            events=self.events,
            journal=DotJournal(self.journal_directory),
            progress_delay=progress_delay,
            metrics=metrics,
        )
        return runner

    def catch_up(self) -> None:
        """Bring the clock level with the wall clock when the test's own work (slow on a
        loaded machine) let the store stamp rows later than the clock's "now"."""
        behind = time.time() + 1 - self.clock.seconds()
        if behind > 0:
            self.clock.advance(behind)

    @defer.inlineCallbacks
    def start(self, runner: DeliveryRunner | None = None):
        self.catch_up()
        self.start_time = self.clock.seconds()  # offsets in the tests count from here
        runner = runner or self.runner
        runner.startService()
        self.addCleanup(runner.stopService)
        yield runner.when_idle()

    def send(self, *recipients: str, subject: str = "hello", sender: str = "jane@acme.test"):
        return self.intake.submit(
            OutgoingMessage(
                envelope_sender=sender,
                raw=raw_message(subject, sender),
                remote_recipients=tuple(recipients),
                sent_mailbox_id=self.jane.id,
                subject=subject,
            ),
            Origin("submission", mailbox_id=self.jane.id),
        )

    @defer.inlineCallbacks
    def settle(self):
        """Let the runner claim and finish everything due now."""
        for _ in range(3):
            self.runner.wake()
            yield self.runner.when_idle()

    @defer.inlineCallbacks
    def states(self):
        entries = yield self.store.run(queue.queue_list, None, 1000)
        return {entry.address: entry.state for entry in entries}

    @defer.inlineCallbacks
    def jane_mail(self):
        filings = yield self.store.run(filing_ops.list_filings, "jane@acme.test", 100)
        raws = []
        for filing in filings:
            raw = yield self.store.run(filing_ops.message_raw, filing.message.id)
            raws.append(raw)
        return raws

    # -- outcomes ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_delivered_with_timeline(self):
        yield self.start()
        submitted = yield self.send("bob@remote.test")
        yield self.settle()
        self.assertEqual((yield self.states()), {"bob@remote.test": "delivered"})
        [(address, envelopes)] = self.remote.calls
        self.assertEqual(address, "192.0.2.1")
        self.assertEqual(envelopes[0].sender, "jane@acme.test")
        self.assertEqual(envelopes[0].raw, raw_message())
        detail = yield self.store.run(queue.queue_show, submitted.queue_message_id)
        [event] = detail.recipients[0].events
        self.assertEqual(event.outcome, "delivered")
        self.assertEqual(event.server, "mx.remote.test [192.0.2.1]:25")

    @defer.inlineCallbacks
    def test_committed_outcomes_reach_the_outcome_subscribers(self):
        self.remote.replies["carol@remote.test"] = "550 5.1.1 no such user"
        heard = []
        self.events.outcome.subscribe(heard.append)
        yield self.start()
        yield self.send("bob@remote.test", "carol@remote.test")
        yield self.settle()
        states = yield self.states()
        self.assertEqual(states, {"bob@remote.test": "delivered", "carol@remote.test": "bounced"})
        outcomes = sorted(result.outcome for results in heard for result in results)
        self.assertEqual(outcomes, ["bounced", "delivered"])

    @defer.inlineCallbacks
    def test_outcomes_are_counted_by_class_and_the_first_domains_seen(self):
        metrics = Metrics(top_domains=2)
        self.runner = self.make_runner(metrics=metrics)
        self.remote.replies["carol@b.test"] = "550 5.1.1 no such user"
        self.remote.replies["dave@c.test"] = "451 4.3.0 try later"
        yield self.start()
        # One domain at a time, so which two are seen first is known.
        for address in ("bob@a.test", "carol@b.test", "dave@c.test", "erin@a.test"):
            yield self.send(address)
            yield self.settle()
        counted = {
            (sample.labels["outcome"], sample.labels["domain"]): sample.value
            for family in metrics.registry.collect()
            if family.name == "atollon_mail_delivery_outcomes"
            for sample in family.samples
            if sample.name.endswith("_total")
        }
        self.assertEqual(
            counted,
            {("delivered", "a.test"): 2, ("bounced", "b.test"): 1, ("deferred", "other"): 1},
        )
        # The submissions and the outcomes went through group commits.
        size = metrics.registry.get_sample_value
        self.assertEqual(
            size("atollon_mail_group_commit_batch_size_sum", {"writer": "submit_messages"}), 4
        )
        self.assertGreaterEqual(
            size("atollon_mail_group_commit_batch_size_count", {"writer": "record_progress"}), 4
        )

    @defer.inlineCallbacks
    def test_temporary_failure_defers_with_doubling_backoff(self):
        self.remote.default = "451 4.3.0 try later"
        yield self.start()
        yield self.send("bob@remote.test")
        yield self.settle()
        self.assertEqual((yield self.states()), {"bob@remote.test": "deferred"})
        due = yield self.store.run(queue.next_due_at)
        self.assertEqual((due.timestamp() - self.start_time), 300)  # first retry after 5 minutes
        self.clock.advance(299)
        yield self.settle()
        self.assertEqual(len(self.remote.calls), 1, "not retried before it is due")
        self.clock.advance(1)
        yield self.settle()
        self.assertEqual(len(self.remote.calls), 2)
        due = yield self.store.run(queue.next_due_at)
        self.assertEqual(due.timestamp() - (self.start_time + 300), 600)  # then doubling
        self.remote.default = "250 2.0.0 Ok"
        self.clock.advance(600)
        yield self.settle()
        self.assertEqual((yield self.states()), {"bob@remote.test": "delivered"})

    @defer.inlineCallbacks
    def test_backoff_is_capped(self):
        self.remote.default = "421 4.7.0 busy"
        yield self.start()
        yield self.send("bob@remote.test")
        delays = []
        previous = self.start_time
        for _ in range(7):
            yield self.settle()
            due = yield self.store.run(queue.next_due_at)
            delays.append(round(due.timestamp() - previous))
            previous = due.timestamp()
            self.clock.advance(due.timestamp() - self.clock.seconds())
        self.assertEqual(delays, [300, 600, 1200, 2400, 4000, 4000, 4000])

    @defer.inlineCallbacks
    def test_an_address_here_is_filed_and_the_remote_copy_goes_without_return_path(self):
        yield self.start()
        submitted = yield self.send("bob@remote.test", "Jane@acme.test")
        yield self.settle()
        self.assertEqual((yield self.states()), {"bob@remote.test": "delivered"})
        [(_, [envelope])] = self.remote.calls
        self.assertEqual(envelope.recipients, ("bob@remote.test",))
        self.assertEqual(envelope.raw, raw_message(), "sent on as submitted")
        filed = yield self.jane_mail()
        self.assertIn(b"Return-Path: <jane@acme.test>\r\n" + raw_message(), filed)
        self.assertEqual(submitted.queued_recipients, 1)

    @defer.inlineCallbacks
    def test_permanent_failure_bounces_with_a_dsn_to_the_local_sender(self):
        self.remote.replies["bob@remote.test"] = "550 5.1.1 <bob@remote.test>: no such user"
        yield self.start()
        yield self.send("bob@remote.test", "carol@remote.test")
        yield self.settle()
        self.assertEqual(
            (yield self.states()),
            {"bob@remote.test": "bounced", "carol@remote.test": "delivered"},
        )
        dsns = [raw for raw in (yield self.jane_mail()) if b"multipart/report" in raw]
        self.assertEqual(len(dsns), 1)
        # Filed at once, never queued, under the null Return-Path of a bounce.
        self.assertTrue(dsns[0].startswith(b"Return-Path: <>\r\n"), dsns[0][:80])
        self.assertEqual(dsns[0].count(b"Return-Path:"), 1)
        report = email.message_from_bytes(dsns[0], policy=email.policy.default)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report["To"], "jane@acme.test")
        status = list(report.iter_parts())[1].get_payload()
        self.assertEqual(status[1]["Final-Recipient"], "rfc822; bob@remote.test")
        self.assertEqual(status[1]["Action"], "failed")
        self.assertEqual(status[1]["Status"], "5.1.1")
        self.assertIn("no such user", status[1]["Diagnostic-Code"])

    @defer.inlineCallbacks
    def test_counting_that_fails_costs_no_outcome_and_no_dsn(self):
        self.runner = self.make_runner(metrics=broken_metrics())
        heard = []
        self.events.outcome.subscribe(heard.append)
        self.remote.replies["bob@remote.test"] = "550 5.1.1 <bob@remote.test>: no such user"
        yield self.start()
        yield self.send("bob@remote.test", "carol@remote.test")
        yield self.settle()
        self.assertEqual(
            (yield self.states()),
            {"bob@remote.test": "bounced", "carol@remote.test": "delivered"},
        )
        self.assertEqual(
            sorted(result.outcome for results in heard for result in results),
            ["bounced", "delivered"],
        )
        dsns = [raw for raw in (yield self.jane_mail()) if b"multipart/report" in raw]
        self.assertEqual(len(dsns), 1)
        self.assertIn(b"Final-Recipient: rfc822; bob@remote.test", dsns[0])
        self.assertEqual(len(self.remote.calls), 1, "delivered once, not retried")
        self.assertTrue(self.flushLoggedErrors(BrokenCounting))

    @defer.inlineCallbacks
    def test_dsn_to_a_remote_sender_is_queued_from_the_null_sender(self):
        self.remote.replies["bob@remote.test"] = "554 5.7.1 rejected"
        yield self.start()
        yield self.send("bob@remote.test", sender="someone@elsewhere.test")
        yield self.settle()
        bounce_calls = [
            envelopes for _, envelopes in self.remote.calls if envelopes[0].sender == ""
        ]
        self.assertEqual(len(bounce_calls), 1)
        self.assertEqual(bounce_calls[0][0].recipients, ("someone@elsewhere.test",))

    @defer.inlineCallbacks
    def test_a_bounce_is_never_bounced(self):
        self.remote.default = "550 5.1.1 nobody here"
        yield self.start()
        yield self.send("bob@remote.test", sender="someone@elsewhere.test")
        yield self.settle()
        states = yield self.states()
        self.assertEqual(
            states, {"bob@remote.test": "bounced", "someone@elsewhere.test": "bounced"}
        )
        senders = [envelopes[0].sender for _, envelopes in self.remote.calls]
        self.assertEqual(senders, ["someone@elsewhere.test", ""], "no third message")

    @defer.inlineCallbacks
    def test_expired_recipient_bounces(self):
        self.remote.default = "451 4.3.0 later"
        yield self.start()
        yield self.send("bob@remote.test")
        yield self.settle()
        self.clock.advance(5 * 86400 + 1)
        yield self.settle()
        self.assertEqual((yield self.states()), {"bob@remote.test": "bounced"})
        [dsn] = [raw for raw in (yield self.jane_mail()) if b"multipart/report" in raw]
        self.assertIn(b"gave up after 5 days", dsn)

    @defer.inlineCallbacks
    def test_null_mx_bounces_at_once(self):
        self.resolver.answers["nomail.test"] = NullMX(
            "nomail.test", "nomail.test publishes a null MX"
        )
        yield self.start()
        yield self.send("bob@nomail.test")
        yield self.settle()
        self.assertEqual((yield self.states()), {"bob@nomail.test": "bounced"})
        self.assertEqual(self.remote.calls, [])

    @defer.inlineCallbacks
    def test_dns_trouble_defers(self):
        self.resolver.answers["flaky.test"] = TemporaryDNSError("flaky.test", "SERVFAIL")
        yield self.start()
        yield self.send("bob@flaky.test")
        yield self.settle()
        self.assertEqual((yield self.states()), {"bob@flaky.test": "deferred"})

    @defer.inlineCallbacks
    def test_next_mx_is_tried_when_the_first_fails(self):
        self.resolver.answers["remote.test"] = [
            Destination("mx1.remote.test", "192.0.2.1", 10),
            Destination("mx2.remote.test", "192.0.2.2", 20),
        ]
        self.remote.session_failures["192.0.2.1"] = client.SessionFailure(0, "refused", False)
        yield self.start()
        yield self.send("bob@remote.test")
        yield self.settle()
        self.assertEqual([address for address, _ in self.remote.calls], ["192.0.2.1", "192.0.2.2"])
        self.assertEqual((yield self.states()), {"bob@remote.test": "delivered"})

    @defer.inlineCallbacks
    def test_tls_is_required_only_for_listed_domains(self):
        self.runner = self.make_runner("[delivery]\nrequire_tls_domains = Bank.test\n")
        yield self.start()
        yield self.send("a@bank.test")
        yield self.send("b@remote.test")
        yield self.settle()
        modes = {
            envelopes[0].recipients[0]: options["tls"]
            for (_, envelopes), options in zip(self.remote.calls, self.remote.options)
        }
        self.assertEqual(modes, {"a@bank.test": "required", "b@remote.test": "opportunistic"})

    @defer.inlineCallbacks
    def test_smarthost_takes_everything_with_its_credentials(self):
        self.runner = self.make_runner(
            "[delivery]\nsmarthost = 192.0.2.99:587\nsmarthost_username = relay\n"
            "smarthost_password = secret\n"
        )
        yield self.start()
        yield self.send("a@one.test", "b@two.test")
        yield self.settle()
        [(address, envelopes)] = self.remote.calls
        self.assertEqual(address, "192.0.2.99")
        self.assertEqual(envelopes[0].recipients, ("a@one.test", "b@two.test"))
        self.assertEqual(self.remote.options[0]["auth"], ("relay", "secret"))

    @defer.inlineCallbacks
    def test_a_smarthost_refusing_us_defers_rather_than_bounces(self):
        self.runner = self.make_runner("[delivery]\nsmarthost = 192.0.2.99:587\n")
        self.remote.session_failures["192.0.2.99"] = client.SessionFailure(
            535, "535 5.7.8 authentication failed", True
        )
        yield self.start()
        yield self.send("a@one.test")
        yield self.settle()
        self.assertEqual((yield self.states()), {"a@one.test": "deferred"})

    # -- grouping and limits ----------------------------------------------------------

    @defer.inlineCallbacks
    def test_messages_for_one_domain_share_a_connection(self):
        yield self.start()
        self.runner.stopService()  # queue three first, then let the runner see them together
        for number in range(3):
            yield self.send(f"user{number}@remote.test", "x@remote.test", subject=f"m{number}")
        self.runner.startService()
        yield self.settle()
        [(_, envelopes)] = self.remote.calls
        self.assertEqual(len(envelopes), 3)
        self.assertEqual(envelopes[0].recipients, ("user0@remote.test", "x@remote.test"))

    @defer.inlineCallbacks
    def test_per_destination_concurrency_is_bounded(self):
        runner = self.make_runner("[delivery]\nper_destination_concurrency = 2\n")
        self.runner = runner
        self.remote.hold = []
        yield self.send(*(f"u{n}@remote.test" for n in range(3)), subject="first")
        for number in range(300):  # 301 messages: more than one connection's worth
            yield self.send(f"v{number}@remote.test", subject=f"m{number}")
        self.catch_up()
        runner.startService()
        self.addCleanup(runner.stopService)
        # Generous deadlines: on a loaded machine the first claim can take a while.
        deadline = time.monotonic() + 30
        while len(self.remote.hold) < 2 and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.02, lambda: None)
        yield task.deferLater(reactor, 0.1, lambda: None)  # a third would start now if allowed
        self.assertEqual(self.remote.active, 2)
        # Release connections one at a time until every recipient is delivered; new
        # connections start as earlier ones finish, and are held in their turn.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.remote.hold:
                self.remote.hold.pop(0).callback(None)
            yield task.deferLater(reactor, 0.02, lambda: None)
            if not self.remote.hold and not self.remote.active:
                counts = yield self.store.run(queue.queue_counts)
                if counts["delivered"] == 303:
                    break
        yield runner.when_idle()
        self.assertEqual(self.remote.most_active, 2)
        states = yield self.states()
        self.assertEqual(set(states.values()), {"delivered"})
        self.assertEqual(len(states), 303)

    # -- restarts ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_in_flight_recipients_are_retried_after_a_restart(self):
        yield self.send("bob@remote.test")
        claimed = yield self.store.run(queue.claim_due_deliveries, self.runner._now(), 10)
        self.assertEqual(len(claimed), 1)  # in flight, as when the process was killed
        self.assertEqual((yield self.states()), {"bob@remote.test": "in-flight"})
        yield self.start()  # a new start requeues it
        yield self.settle()
        self.assertEqual((yield self.states()), {"bob@remote.test": "delivered"})

    @defer.inlineCallbacks
    def test_no_reply_after_the_dot_defers_and_marks_uncertain(self):
        self.remote.unanswered.add("bob@remote.test")
        yield self.start()
        submitted = yield self.send("bob@remote.test", "carol@remote.test")
        yield self.settle()
        self.assertEqual(
            (yield self.states()), {"bob@remote.test": "deferred", "carol@remote.test": "delivered"}
        )
        detail = yield self.store.run(queue.queue_show, submitted.queue_message_id)
        bob = detail.recipients[0]
        self.assertEqual([e.outcome for e in bob.events], ["uncertain"])
        listed = yield self.store.run(queue.queue_list, None, 100, 0, True)
        self.assertEqual([e.address for e in listed], ["bob@remote.test"])

    @defer.inlineCallbacks
    def test_delay_warning_is_sent_once(self):
        self.runner = self.make_runner("[delivery]\ndelay_warning = 4h\n")
        self.remote.default = "451 4.3.0 later"
        yield self.start()
        yield self.send("bob@remote.test")
        for _ in range(8):
            yield self.settle()
            due = yield self.store.run(queue.next_due_at)
            self.clock.advance(due.timestamp() - self.clock.seconds())
        warnings = [raw for raw in (yield self.jane_mail()) if b"Action: delayed" in raw]
        self.assertEqual(len(warnings), 1)


class StepwiseRunnerTests(RunnerTests):
    """The same rules through the progress dialogue, and what a kill leaves behind."""

    remote_class = StepwiseRemote

    def dot_sent(self):
        """In-flight recipients: whether their dot is written down (in the store or, until
        the progress commit brings it there, in the dot journal)."""
        journal = read_marks(self.journal_directory)
        return self.store.run(
            lambda: {
                r.address: r.dot_sent_at is not None or r.id in journal
                for r in QueueRecipient.select().where(QueueRecipient.state == "in-flight")
            }
        )

    @defer.inlineCallbacks
    def wait_for_dots(self, count: int):
        deadline = time.monotonic() + 30
        while len(self.remote.dots) < count and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(self.remote.dots), count)

    @defer.inlineCallbacks
    def test_replies_are_recorded_before_the_connection_is_done(self):
        self.remote.replies["c@remote.test"] = "550 5.1.1 no such user"
        self.remote.stall_after = 4
        yield self.start()
        self.runner.stopService()  # queue four first: one connection takes them together
        for name in "abcd":
            yield self.send(f"{name}@remote.test", subject=f"to {name}")
        self.catch_up()
        self.runner.startService()
        yield self.wait_for_dots(4)
        # The connection is still open: the first three replies are in the store, the
        # bounce's DSN is on its way, and the fourth message's dot is noted as sent.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = yield self.states()
            dsns = [raw for raw in (yield self.jane_mail()) if b"multipart/report" in raw]
            if states["c@remote.test"] == "bounced" and dsns:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(
            states,
            {
                "a@remote.test": "delivered",
                "b@remote.test": "delivered",
                "c@remote.test": "bounced",
                "d@remote.test": "in-flight",
            },
        )
        self.assertEqual(len(dsns), 1)
        self.assertEqual((yield self.dot_sent()), {"d@remote.test": True})

    @defer.inlineCallbacks
    def test_dots_go_out_before_their_commit_until_a_connection_is_too_far_ahead(self):
        # Commits wait for the clock, which stands still: only the dot journal is written.
        self.runner = self.make_runner(progress_delay=1)
        yield self.start()
        self.runner.stopService()
        count = MAX_AHEAD + 2
        for number in range(count):
            yield self.send(f"r{number}@remote.test", subject=f"to r{number}")
        self.catch_up()
        self.runner.startService()
        yield self.wait_for_dots(MAX_AHEAD)
        for _ in range(20):  # the next dot waits for a commit
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(self.remote.dots), MAX_AHEAD)
        states = yield self.states()
        self.assertEqual(set(states.values()), {"in-flight"})
        marked = yield self.dot_sent()
        self.assertEqual(sum(marked.values()), MAX_AHEAD)  # those sent, and only those
        self.clock.advance(1)  # the commits run: the rest goes
        yield self.wait_for_dots(count)
        while set((yield self.states()).values()) != {"delivered"}:
            self.clock.advance(1)
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(read_marks(self.journal_directory), {})

    @defer.inlineCallbacks
    def test_after_a_kill_only_the_message_whose_dot_went_out_is_uncertain(self):
        self.remote.stall_after = 2  # the appliance dies after the second dot
        yield self.start()
        self.runner.stopService()
        for name in "abc":
            yield self.send(f"{name}@remote.test", subject=f"to {name}")
        self.catch_up()
        self.runner.startService()
        yield self.wait_for_dots(2)
        deadline = time.monotonic() + 30
        while (yield self.states())["a@remote.test"] != "delivered":
            self.assertLess(time.monotonic(), deadline)
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual((yield self.dot_sent()), {"b@remote.test": True, "c@remote.test": False})
        self.runner.stopService()
        # A new start: b may have its message (dot sent, no reply recorded); c never got
        # it; a's reply was recorded.
        self.remote.stall_after = None
        restarted = self.make_runner()
        yield self.start(restarted)
        for _ in range(3):
            restarted.wake()
            yield restarted.when_idle()
        self.assertEqual(set((yield self.states()).values()), {"delivered"})
        listed = yield self.store.run(queue.queue_list, None, 100, 0, True)
        self.assertEqual([e.address for e in listed], ["b@remote.test"])
        # b and c were sent again, a was not.
        first_a, first_b = self.remote.dots[:2]
        self.assertEqual(len(self.remote.dots), 4)
        self.assertIn(first_b, self.remote.dots[2:])
        self.assertNotIn(first_a, self.remote.dots[2:])


class SqliteRunnerTests(SqliteStoreMixin, RunnerTests, unittest.TestCase):
    pass


class PostgresRunnerTests(PostgresStoreMixin, RunnerTests, unittest.TestCase):
    pass


class SqliteStepwiseRunnerTests(SqliteStoreMixin, StepwiseRunnerTests, unittest.TestCase):
    pass


class PostgresStepwiseRunnerTests(PostgresStoreMixin, StepwiseRunnerTests, unittest.TestCase):
    pass
