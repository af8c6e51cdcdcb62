"""When the certificates service asks the CA, on task.Clock: at start for a self-signed
certificate or one for another name, again only once fewer than 30 days are left, checked
twice a day; a failure keeps the certificate in use and is retried with back-off."""

from __future__ import annotations

import datetime
import os
import stat
import threading
import time

from twisted.application.service import MultiService
from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from atollon_mail.certificates.challenges import ChallengeAnswers
from atollon_mail.certificates.issuer import AcmeIssuer, CertificateError
from atollon_mail.certificates.renewal import (
    ACME_CERTIFICATE_FILE,
    ACME_ORIGIN_FILE,
    CHECK_INTERVAL,
    FIRST_RETRY,
    STATE_FILE,
    CertificateRenewal,
    ExchangeThread,
    fingerprint,
    load_kept,
    read_json,
)
from atollon_mail.selfsigned import make_self_signed
from atollon_mail.tlscontext import ReloadableTLSOptions, load_pem
from tests.certificates.localca import LocalCA
from tests.e2e.appliance import free_port

HOSTNAME = "mx.acme.test"
DAY = 86400.0
START = datetime.datetime(2027, 3, 1, tzinfo=datetime.UTC).timestamp()


def self_signed() -> ReloadableTLSOptions:
    certificate, key = make_self_signed(HOSTNAME)
    return ReloadableTLSOptions(load_pem(key + certificate))


class RenewalTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(START)
        self.ca = LocalCA(self.clock)
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.lines: list[str] = []

        def observe(event):
            if event.get("log_namespace", "").startswith("atollon_mail.certificates"):
                self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def service(self, tls_options, issue=None, run_in_thread=defer.maybeDeferred, directory=None):
        # run_in_thread: the appliance's is ExchangeThread.run; here the exchange runs at
        # once so that only the clock decides when (ThreadTests use the real thread).
        service = CertificateRenewal(
            HOSTNAME,
            self.data_dir,
            tls_options,
            issue or self.ca.issue,
            run_in_thread,
            self.clock,
            directory=directory,
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def issue_times(self) -> list[float]:
        return [round((when - START) / DAY, 2) for when, _ in self.ca.issued]

    def test_a_self_signed_certificate_is_replaced_at_start(self):
        tls_options = self_signed()
        self.service(tls_options)
        self.assertEqual(self.issue_times(), [])  # nothing before the reactor runs
        self.clock.advance(0)
        self.assertEqual(self.issue_times(), [0])
        self.assertEqual(tls_options.certificate.issuer, self.ca.name)
        path = os.path.join(self.data_dir, ACME_CERTIFICATE_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as kept:
            self.assertEqual(load_pem(kept.read()).certificate, tls_options.certificate)

    def test_renewed_once_fewer_than_30_days_are_left_not_before(self):
        tls_options = ReloadableTLSOptions(load_pem(self.ca.certificate(HOSTNAME, 40)))
        self.service(tls_options)
        self.clock.advance(0)
        # 40 days left: checked twice a day, left alone while 30 or more remain.
        for _ in range(20):
            self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.issue_times(), [], "10 days in, 30 left: not yet")
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.issue_times(), [10.5])
        renewed = tls_options.certificate
        self.assertEqual(renewed.not_valid_after_utc - self.ca.now(), datetime.timedelta(days=90))
        # The new one (90 days) is next renewed 60.5 days later.
        for _ in range(120):
            self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.issue_times(), [10.5])
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.issue_times(), [10.5, 71.0])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "one check scheduled")

    def test_a_short_lived_certificate_is_renewed_when_a_third_is_left(self):
        self.ca.valid_days = 6
        tls_options = ReloadableTLSOptions(load_pem(self.ca.certificate(HOSTNAME)))
        self.service(tls_options)
        self.clock.advance(0)
        for _ in range(16):
            self.clock.advance(CHECK_INTERVAL)
        # Each lasts 6 days (and the 5 minutes before its start): renewed on the first
        # check with less than a third of that left, not at every check.
        self.assertEqual(self.issue_times(), [4.0, 8.0])

    def test_a_certificate_for_another_name_is_replaced(self):
        tls_options = ReloadableTLSOptions(load_pem(self.ca.certificate("old.acme.test", 80)))
        self.service(tls_options)
        self.clock.advance(0)
        self.assertEqual(self.issue_times(), [0])
        self.assertIn("the certificate in use is not for mx.acme.test", "\n".join(self.lines))

    def test_a_failure_keeps_the_certificate_and_is_retried_with_back_off(self):
        # A real ACME client and a directory nobody listens at: refused at once.
        directory = f"https://127.0.0.1:{free_port()}/directory"
        issuer = AcmeIssuer(directory, self.data_dir, ChallengeAnswers())
        tls_options = self_signed()
        before = tls_options.certificate
        self.service(tls_options, issue=issuer.issue)
        self.clock.advance(0)
        delays = []
        for _ in range(8):
            (call,) = self.clock.getDelayedCalls()
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [FIRST_RETRY * 2**n for n in range(7)] + [CHECK_INTERVAL])
        self.assertIs(tls_options.certificate, before)
        failures = [line for line in self.lines if "not renewed" in line]
        self.assertEqual(len(failures), 9)
        self.assertEqual(failures[0].count("\n"), 0, "one line")
        self.assertIn(f"cannot reach the ACME CA at {directory}", failures[0])
        self.assertIn("check [tls] acme_directory", failures[0])
        self.assertIn("the current one stays in use, next try in 10 minutes", failures[0])
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, ACME_CERTIFICATE_FILE)))

    def test_after_a_failure_the_next_success_resets_the_back_off(self):
        # The CA's certificate is unusable (its key is not the certificate's): a failure
        # of its own, found before anything is written or served.
        def mismatched(hostname: str) -> bytes:
            self.ca.issued.append((self.clock.seconds(), "mismatched"))
            key, _ = self.ca.certificate(hostname).split(b"-----BEGIN CERTIFICATE")
            _, certificate = self.ca.certificate(hostname).split(b"-----END PRIVATE KEY-----")
            return key + certificate

        issuers = [mismatched, self.ca.issue]
        tls_options = self_signed()
        self.service(tls_options, issue=lambda hostname: issuers[0](hostname))
        self.clock.advance(0)
        self.assertIn("the CA's certificate cannot be used", self.lines[-1])
        issuers.pop(0)
        self.clock.advance(FIRST_RETRY)
        self.assertEqual(self.issue_times(), [0, round(FIRST_RETRY / DAY, 2)])
        self.assertEqual(tls_options.certificate.issuer, self.ca.name)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), CHECK_INTERVAL)

    def test_a_certificate_from_another_directory_is_replaced(self):
        staging = "https://staging.ca.test/directory"
        production = "https://ca.test/directory"
        first = self.service(self_signed(), directory=staging)
        self.clock.advance(0)
        self.assertEqual(self.issue_times(), [0])
        origin = read_json(os.path.join(self.data_dir, ACME_ORIGIN_FILE))
        self.assertEqual(origin["directory"], staging)
        self.assertEqual(stat.S_IMODE(os.stat(self.path(ACME_ORIGIN_FILE)).st_mode), 0o600)
        first.stopService()

        # Started again with the same directory: the kept certificate stays.
        self.clock.advance(DAY)
        again = self.service(ReloadableTLSOptions(load_kept(self.data_dir)), directory=staging)
        self.clock.advance(0)
        self.assertEqual(self.issue_times(), [0])
        again.stopService()

        # acme_directory changed to production: replaced at once.
        self.clock.advance(DAY)
        kept = load_kept(self.data_dir)
        tls_options = ReloadableTLSOptions(kept)
        self.service(tls_options, directory=production)
        self.clock.advance(0)
        self.assertEqual(self.issue_times(), [0, 2])
        self.assertNotEqual(tls_options.certificate, kept.certificate)
        self.assertIn(
            f"the certificate in use came from another ACME directory ({staging})",
            "\n".join(self.lines),
        )
        origin = read_json(self.path(ACME_ORIGIN_FILE))
        self.assertEqual(origin["directory"], production)
        self.assertEqual(origin["sha256"], fingerprint(tls_options.certificate))

    def path(self, name: str) -> str:
        return os.path.join(self.data_dir, name)

    def test_the_back_off_is_kept_across_restarts(self):
        def refused(hostname: str) -> bytes:
            self.ca.issued.append((self.clock.seconds(), "refused"))
            raise CertificateError("the ACME CA refused")

        first = self.service(self_signed(), issue=refused)
        self.clock.advance(0)
        first.stopService()
        self.assertEqual(stat.S_IMODE(os.stat(self.path(STATE_FILE)).st_mode), 0o600)
        # A restart a minute later (a crash loop) does not ask the CA at once.
        self.clock.advance(60)
        second = self.service(self_signed(), issue=refused)
        self.clock.advance(0)
        self.assertEqual(len(self.ca.issued), 1)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), FIRST_RETRY - 60)
        self.clock.advance(FIRST_RETRY - 60)
        self.assertEqual(len(self.ca.issued), 2)
        second.stopService()
        # The second failure doubled the wait, for the next start too.
        third = self.service(self_signed())
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), 2 * FIRST_RETRY)
        self.clock.advance(2 * FIRST_RETRY)
        self.assertEqual(self.issue_times()[-1], round((2 * FIRST_RETRY + FIRST_RETRY) / DAY, 2))
        self.assertEqual(third.tls_options.certificate.issuer, self.ca.name)
        self.assertEqual(read_json(self.path(STATE_FILE))["failures"], 0)
        self.assertIsNone(read_json(self.path(STATE_FILE))["retry_at"])

    def test_the_cas_retry_after_is_honoured(self):
        def rate_limited(hostname: str) -> bytes:
            self.ca.issued.append((self.clock.seconds(), "limited"))
            raise CertificateError("the ACME CA refused: too many", retry_after=5 * 3600.0)

        self.service(self_signed(), issue=rate_limited)
        self.clock.advance(0)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), 5 * 3600.0)
        self.assertIn("next try in 300 minutes", self.lines[-1])
        self.assertEqual(read_json(self.path(STATE_FILE))["retry_at"], START + 5 * 3600.0)

    def test_a_failed_write_keeps_the_new_certificate_and_retries_only_the_write(self):
        # A directory where the partial file goes: writing fails (as on a full disk).
        blocker = self.path(ACME_CERTIFICATE_FILE) + ".new"
        os.makedirs(os.path.join(blocker, "inside"))
        tls_options = self_signed()
        self.service(tls_options)
        self.clock.advance(0)
        self.assertEqual(self.issue_times(), [0])
        self.assertEqual(tls_options.certificate.issuer, self.ca.name)
        self.assertIn("in use but cannot be written", self.lines[-1])
        self.assertFalse(os.path.exists(self.path(ACME_CERTIFICATE_FILE)))
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), FIRST_RETRY)
        os.rmdir(os.path.join(blocker, "inside"))
        os.rmdir(blocker)
        self.clock.advance(FIRST_RETRY)
        self.assertEqual(self.issue_times(), [0], "not asked again")
        self.assertEqual(load_kept(self.data_dir).certificate, tls_options.certificate)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), CHECK_INTERVAL)


class ThreadTests(unittest.TestCase):
    """The exchange in its own daemon thread, with the real reactor."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(START)
        self.ca = LocalCA(self.clock)
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.addCleanup(self.release.set)

    def slow_issue(self, hostname: str) -> bytes:
        self.entered.set()
        self.release.wait(30)
        return self.ca.issue(hostname)

    def service(self, tls_options, issue):
        service = CertificateRenewal(
            HOSTNAME, self.data_dir, tls_options, issue, ExchangeThread(reactor).run, self.clock
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service

    @defer.inlineCallbacks
    def wait_for_the_exchange(self):
        for _ in range(500):
            if self.entered.is_set():
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail("the exchange did not start")

    @defer.inlineCallbacks
    def test_the_exchange_runs_in_its_own_thread(self):
        tls_options = self_signed()
        service = self.service(tls_options, self.ca.issue)
        self.clock.advance(0)
        yield service.busy
        ((_, thread_name),) = self.ca.issued
        self.assertEqual(thread_name, "atollon-mail-acme")
        self.assertEqual(tls_options.certificate.issuer, self.ca.name)

    @defer.inlineCallbacks
    def test_stopping_during_an_exchange_does_not_wait_for_it(self):
        tls_options = self_signed()
        service = self.service(tls_options, self.slow_issue)
        self.clock.advance(0)
        yield self.wait_for_the_exchange()
        (thread,) = [t for t in threading.enumerate() if t.name == "atollon-mail-acme"]
        self.assertTrue(thread.daemon, "nobody joins it: the process can exit")
        began = time.monotonic()
        parent = MultiService()
        service.setServiceParent(parent)
        parent.running = True
        stopped = parent.stopService()
        self.assertTrue(stopped.called, "the service tree does not wait for the CA")
        # The reactor keeps running while the exchange goes on.
        ticks = []
        for _ in range(5):
            yield task.deferLater(reactor, 0.01, ticks.append, time.monotonic())
        self.assertLess(time.monotonic() - began, 2.0)
        self.assertEqual(len(ticks), 5)
        self.assertTrue(thread.is_alive())
        # Once the CA answers, what it gave is kept for the next start.
        busy = service.busy
        self.release.set()
        yield busy
        self.assertIsNotNone(load_kept(self.data_dir))

    @defer.inlineCallbacks
    def test_a_process_killed_during_the_exchange_waits_at_its_next_start(self):
        self.service(self_signed(), self.slow_issue)
        self.clock.advance(0)
        yield self.wait_for_the_exchange()
        # As the process killed now and started again finds the data directory:
        restarted = CertificateRenewal(
            HOSTNAME, self.data_dir, self_signed(), self.ca.issue, defer.maybeDeferred, self.clock
        )
        restarted.startService()
        self.addCleanup(restarted.stopService)
        self.clock.advance(60)
        self.assertEqual(self.ca.issued, [])
        (call,) = [c for c in self.clock.getDelayedCalls() if c.func == restarted.check]
        self.assertEqual(call.getTime() - self.clock.seconds(), FIRST_RETRY - 60)
