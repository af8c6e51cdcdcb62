"""When the certificates service asks the CA, on task.Clock: at start for a self-signed
certificate or one for another name, again only once fewer than 30 days are left, checked
twice a day; a failure keeps the certificate in use and is retried with back-off."""

from __future__ import annotations

import datetime
import os
import stat
import threading

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from atollon_mail.certificates.challenges import ChallengeAnswers
from atollon_mail.certificates.issuer import AcmeIssuer
from atollon_mail.certificates.renewal import (
    ACME_CERTIFICATE_FILE,
    CHECK_INTERVAL,
    FIRST_RETRY,
    CertificateRenewal,
)
from atollon_mail.selfsigned import make_self_signed
from atollon_mail.tlscontext import ReloadableTLSOptions, load_pem
from tests.builders import started_workers
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

    def service(self, tls_options, issue=None, run_in_thread=defer.maybeDeferred):
        # run_in_thread: the appliance's is Workers.in_dns; here the exchange runs at
        # once so that only the clock decides when (test_the_exchange_runs_in_a_worker_
        # thread uses the real pool).
        service = CertificateRenewal(
            HOSTNAME,
            self.data_dir,
            tls_options,
            issue or self.ca.issue,
            run_in_thread,
            self.clock,
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

    @defer.inlineCallbacks
    def test_the_exchange_runs_in_a_worker_thread(self):
        workers = started_workers(self)
        tls_options = self_signed()
        service = self.service(tls_options, run_in_thread=workers.in_dns)
        self.clock.advance(0)
        yield service.busy
        ((_, thread_name),) = self.ca.issued
        self.assertNotEqual(thread_name, threading.main_thread().name)
        self.assertIn("atollon-mail-dns", thread_name)
        self.assertEqual(tls_options.certificate.issuer, self.ca.name)
