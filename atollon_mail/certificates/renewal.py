"""The service that keeps a CA's certificate for the host name in the listeners' TLS
options: got at start when the one in use is not one (the self-signed one, or a
certificate for another name), renewed when fewer than RENEW_BEFORE are left (a third of
its lifetime for a shorter-lived one), checked
every CHECK_INTERVAL on the injected clock. The ACME exchange runs in a worker thread;
a failure is logged as one line and retried with back-off while the certificate in use
stays."""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from twisted.application import service
from twisted.logger import Logger

from atollon_mail.certificates.issuer import CertificateError
from atollon_mail.selfsigned import write_private
from atollon_mail.tlscontext import LoadedCertificate, ReloadableTLSOptions, load_pem

ACME_CERTIFICATE_FILE = "tls-acme.pem"  # key and chain in one file: replaced in one step
RENEW_BEFORE = datetime.timedelta(days=30)
CHECK_INTERVAL = 12 * 3600.0  # twice a day
FIRST_RETRY = 600.0  # after a failure; doubled after each one, up to CHECK_INTERVAL

log = Logger()


def acme_certificate_path(data_dir: str) -> str:
    return os.path.join(data_dir, ACME_CERTIFICATE_FILE)


def load_kept(data_dir: str) -> LoadedCertificate | None:
    """The certificate kept from the CA, when there is one that loads."""
    path = acme_certificate_path(data_dir)
    try:
        with open(path, "rb") as kept:
            return load_pem(kept.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as problem:
        log.warn(
            "cannot use the kept certificate {path} ({problem}); a new one is requested",
            path=path,
            problem=problem,
        )
        return None


def names_of(certificate: x509.Certificate) -> list[str]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in extension.value.get_values_for_type(x509.DNSName)]


def renewal_reason(
    certificate: x509.Certificate, hostname: str, now: datetime.datetime
) -> str | None:
    """Why a CA's certificate is needed instead of `certificate` (one phrase), or None
    while it can stay."""
    if certificate.issuer == certificate.subject:
        return "the certificate in use is self-signed"
    if hostname.lower() not in names_of(certificate):
        return f"the certificate in use is not for {hostname}"
    left = certificate.not_valid_after_utc - now
    # A certificate made to last 30 days or less (a CA's short-lived profile) would be
    # renewed at every check: such a one is renewed once a third of it is left.
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    threshold = RENEW_BEFORE if lifetime > RENEW_BEFORE else lifetime / 3
    if left < threshold:
        return f"the certificate in use expires in {max(left.days, 0)} days"
    return None


class CertificateRenewal(service.Service):
    """`issue(hostname) -> PEM` (the key and chain; blocking, e.g. AcmeIssuer.issue) is
    run through `run_in_thread(function, *args) -> Deferred` (Workers.in_dns); the new
    certificate is written to data_dir and put into `tls_options`."""

    name = "certificates"

    def __init__(
        self,
        hostname: str,
        data_dir: str,
        tls_options: ReloadableTLSOptions,
        issue,
        run_in_thread,
        clock,
    ):
        self.hostname = hostname
        self.data_dir = data_dir
        self.tls_options = tls_options
        self._issue = issue
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._call = None
        self._failures = 0
        self.busy = None  # the Deferred of an exchange under way

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        # A thread already talking to the CA finishes; what it got is saved but not
        # scheduled on (the next start checks again).
        return self.busy

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._call = self._clock.callLater(delay, self.check)

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)

    def check(self):
        """Get a certificate if one is needed; the next check is scheduled either way.
        Returns the Deferred of the exchange, or None when none was needed."""
        self._call = None
        reason = renewal_reason(self.tls_options.certificate, self.hostname, self._now())
        if reason is None:
            self._schedule(CHECK_INTERVAL)
            return None
        log.info(
            "{reason}: requesting a certificate for {hostname} from the ACME CA",
            reason=reason,
            hostname=self.hostname,
        )
        self.busy = self._run_in_thread(self._obtain)
        self.busy.addCallbacks(self._obtained, self._failed)
        self.busy.addBoth(self._done)
        return self.busy

    def _obtain(self) -> LoadedCertificate:
        """In the worker thread: the exchange with the CA, then the file, then the TLS
        context (so the reactor thread only swaps one reference)."""
        pem = self._issue(self.hostname)
        try:
            loaded = load_pem(pem)
        except ValueError as problem:
            raise CertificateError(f"the CA's certificate cannot be used: {problem}") from None
        write_private(acme_certificate_path(self.data_dir), pem)
        return loaded

    def _obtained(self, loaded: LoadedCertificate) -> None:
        self.tls_options.replace(loaded)
        self._failures = 0
        log.info(
            "new certificate for {hostname} in use, valid until {until} (issuer: {issuer})",
            hostname=self.hostname,
            until=loaded.certificate.not_valid_after_utc.isoformat(),
            issuer=loaded.certificate.issuer.rfc4514_string(),
        )
        self._schedule(CHECK_INTERVAL)

    def _failed(self, failure) -> None:
        delay = min(FIRST_RETRY * 2**self._failures, CHECK_INTERVAL)
        self._failures += 1
        if failure.check(CertificateError):
            problem = failure.getErrorMessage()
        else:  # a defect, not the CA: its traceback helps
            log.failure("certificate request failed unexpectedly", failure)
            problem = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        log.warn(
            "certificate for {hostname} not renewed: {problem}; the current one stays in "
            "use, next try in {minutes} minutes",
            hostname=self.hostname,
            problem=problem,
            minutes=round(delay / 60),
        )
        self._schedule(delay)

    def _done(self, result):
        self.busy = None
        return result
