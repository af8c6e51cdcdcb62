"""Re-checks the DNS of every domain on a timer and mails the admins what changed.

Each round checks the active domains one after another in the workers' DNS thread pool
(the checks block on DNS), keeps each domain's results in the store, and compares them with the
results kept from the round before: a check that started failing is mailed as broken, one
that stopped failing as fixed. A domain's first round mails only its failures. A lookup
that got no answer changes nothing (the store keeps the outcome known before it).
"""

from __future__ import annotations

import datetime
import email.message
import email.policy
import email.utils
from collections.abc import Callable, Sequence

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from atollon_mail.config import Config
from atollon_mail.dns.checks import FAIL, run_checks
from atollon_mail.dns.lookup import Lookups
from atollon_mail.store import domains
from atollon_mail.store.records import DnsCheckRecord, DnsCheckResult, DnsSubject

log = Logger()


@attrs.frozen
class Change:
    domain: str
    kind: str  # "broken", "fixed", or "failing" (found on a domain's first check)
    result: DnsCheckResult


def changes_between(
    domain: str, previous: DnsCheckRecord | None, results: Sequence[DnsCheckResult]
) -> list[Change]:
    """What to tell the admins about one domain's new results."""
    if previous is None:
        return [
            Change(domain, "failing", result)
            for result in results
            if result.status == FAIL and not result.temporary
        ]
    before = {result.check: result for result in previous.results}
    changes = []
    for result in results:
        if result.temporary:
            continue
        old = before.get(result.check)
        failed_before = old is not None and old.status == FAIL and not old.temporary
        if result.status == FAIL and not failed_before:
            changes.append(Change(domain, "broken", result))
        elif result.status != FAIL and failed_before:
            changes.append(Change(domain, "fixed", result))
    return changes


_HEADINGS = (
    ("broken", "Broken since the last check:"),
    ("failing", "Failing (first check of the domain):"),
    ("fixed", "Fixed since the last check:"),
)


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def notification(
    hostname: str, recipient: str, changes: Sequence[Change], now: datetime.datetime
) -> bytes:
    """The message telling one admin what changed."""
    problems = sum(1 for change in changes if change.kind != "fixed")
    fixed = len(changes) - problems
    summary = []
    if problems:
        summary.append(_counted(problems, "problem"))
    if fixed:
        summary.append(f"{fixed} fixed")
    names = sorted({change.domain for change in changes})
    lines = [
        f"The DNS check of {', '.join(names)} found changes.",
        "",
    ]
    for kind, heading in _HEADINGS:
        chosen = [change for change in changes if change.kind == kind]
        if not chosen:
            continue
        lines.append(heading)
        for change in chosen:
            lines.append(f"  {change.domain}: {change.result.check}")
            lines.append(f"    {change.result.status}: {change.result.reason}")
        lines.append("")
    lines.append("The records to publish: atollon-mail dns records DOMAIN")
    lines.append("Every check, now: atollon-mail dns check DOMAIN")
    message = email.message.EmailMessage(policy=email.policy.SMTP)
    message["From"] = f"postmaster@{hostname}"
    message["To"] = recipient
    message["Subject"] = f"DNS check: {', '.join(summary)} ({', '.join(names)})"
    message["Date"] = email.utils.format_datetime(now.replace(tzinfo=datetime.UTC))
    message["Message-ID"] = email.utils.make_msgid("dns-check", domain=hostname)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content("\n".join(lines) + "\n")
    return message.as_bytes()


class DnsWatcher(service.Service):
    """Checks every active domain every [dns] check_interval seconds, the first at start.

    `send(address, raw) -> Deferred` delivers a notification (send_notification bound to
    the intake); `reactor` runs the thread pool's results back, `clock` (default: the
    reactor) times the rounds. `round` is the Deferred of the round last started.
    """

    name = "dns-watcher"

    def __init__(
        self,
        store,
        config: Config,
        reactor,
        send: Callable[[str, bytes], defer.Deferred],
        threadpool: ThreadPool,  # the workers' DNS pool, started and stopped by its owner
        clock=None,
        first_check_delay: float = 0,
    ):
        self._store = store
        self._config = config
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self._send = send
        self._pool = threadpool
        self._loop: task.LoopingCall | None = None
        self.round: defer.Deferred | None = None
        # The appliance waits a little before its first round: start-up stays quick, and a
        # process that only runs briefly never waits on DNS when it stops.
        self._first_check_delay = first_check_delay
        self._first_call = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.check_all)
        self._loop.clock = self._clock
        if self._first_check_delay > 0:
            self._first_call = self._clock.callLater(self._first_check_delay, self._start_loop)
        else:
            self._start_loop()

    def _start_loop(self) -> None:
        self._first_call = None
        if self.running:
            self._loop.start(self._config.dns.check_interval, now=True)

    def stopService(self):
        if not self.running:
            return defer.succeed(None)
        super().stopService()
        if self._first_call is not None and self._first_call.active():
            self._first_call.cancel()
        self._first_call = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        # Stopped once the round under way has finished (the domains are checked one
        # after another, gently on the DNS).
        finished = defer.Deferred()

        def finish(result):
            finished.callback(None)
            return result

        if self.round is None or self.round.called:
            finished.callback(None)
        else:
            self.round.addBoth(finish)
        return finished

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC).replace(
            tzinfo=None
        )

    def _check(self, subject: DnsSubject) -> list[DnsCheckResult]:
        # In the pool: dnspython and pyspf block.
        lookups = Lookups.using(self._config.delivery.nameservers)
        return run_checks(subject, self._config, lookups)

    def check_all(self) -> defer.Deferred:
        """One round over every active domain; never fails (trouble is logged)."""
        self.round = self._round()
        return self.round

    @defer.inlineCallbacks
    def _round(self):
        try:
            subjects = yield self._store.run(domains.dns_subjects)
            changes: list[Change] = []
            for subject in subjects:
                if not self.running:
                    return
                name = subject.domain.name
                results = yield deferToThreadPool(self._reactor, self._pool, self._check, subject)
                previous = yield self._store.run(
                    domains.record_dns_check, name, results, self._now()
                )
                changes.extend(changes_between(name, previous, results))
            if changes:
                yield self._notify(changes)
        except Exception:
            log.failure("the DNS check of the domains failed")

    @defer.inlineCallbacks
    def _notify(self, changes: list[Change]):
        addresses = yield self._store.run(domains.admin_addresses)
        if not addresses:
            log.warn(
                "DNS check changes for nobody: no admin user has a mailbox ({count} changes)",
                count=len(changes),
            )
            return
        now = self._now()
        for address in addresses:
            raw = notification(self._config.appliance.hostname, address, changes, now)
            try:
                yield self._send(address, raw)
            except Exception:
                log.failure("mailing the DNS check to {address} failed", address=address)
