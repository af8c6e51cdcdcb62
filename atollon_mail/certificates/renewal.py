"""The service that keeps a CA's certificate for the host name in the listeners' TLS
options: got at start when the one in use is not one (the self-signed one, a certificate
for another name, or one from another ACME directory than [tls] acme_directory), renewed
when fewer than RENEW_BEFORE are left (a third of its lifetime for a shorter-lived one),
checked every CHECK_INTERVAL on the injected clock.

The ACME exchange runs in a daemon thread of its own (ExchangeThread), one at a time:
stopping the service does not wait for it, so shutdown never waits on the CA, and it
takes no thread the MX lookups need. A failure is logged as one line and retried with
back-off (or after the CA's Retry-After) while the certificate in use stays. The last
attempt and the back-off are kept in the data directory (STATE_FILE), so a process
restarted in a loop does not ask the CA at every start.
"""

from __future__ import annotations

import datetime
import json
import os
import threading

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from atollon_mail.certificates.issuer import CertificateError
from atollon_mail.selfsigned import write_private
from atollon_mail.tlscontext import LoadedCertificate, ReloadableTLSOptions, load_pem

ACME_CERTIFICATE_FILE = "tls-acme.pem"  # key and chain in one file: replaced in one step
# Beside it: the ACME directory it came from, when, and its SHA-256 fingerprint.
ACME_ORIGIN_FILE = "tls-acme.json"
# The last attempt: {"attempted": time, "failures": n, "retry_at": time or null}.
STATE_FILE = "acme-state.json"
RENEW_BEFORE = datetime.timedelta(days=30)
CHECK_INTERVAL = 12 * 3600.0  # twice a day
FIRST_RETRY = 600.0  # after a failure; doubled after each one, up to CHECK_INTERVAL
# A CA's Retry-After is honoured up to this (Let's Encrypt's longest limit is a week).
LONGEST_RETRY_AFTER = 8 * 86400.0

log = Logger()


def acme_certificate_path(data_dir: str) -> str:
    return os.path.join(data_dir, ACME_CERTIFICATE_FILE)


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def read_json(path: str) -> dict:
    """A small JSON object kept in the data directory; {} when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as kept:
            value = json.load(kept)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_json(path: str, value: dict) -> None:
    write_private(path, json.dumps(value, indent=1, sort_keys=True).encode("utf-8") + b"\n")


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


def retry_delay(failures: int, retry_after: float | None = None) -> float:
    """Seconds to wait after `failures` failures in a row (the last one included in
    neither): doubling from FIRST_RETRY up to CHECK_INTERVAL, or longer when the CA said
    so (Retry-After)."""
    delay = min(FIRST_RETRY * 2 ** min(failures, 16), CHECK_INTERVAL)
    if retry_after is not None:
        delay = max(delay, min(retry_after, LONGEST_RETRY_AFTER))
    return delay


class ExchangeThread:
    """Runs one blocking call at a time in a daemon thread of its own: `run(function,
    *args) -> Deferred`, its result delivered on the reactor thread. Nobody joins the
    thread: a process stopping while the CA is slow to answer exits without waiting for
    it (what it was writing is written with one rename, so it is there whole or not at
    all)."""

    def __init__(self, reactor, name: str = "atollon-mail-acme"):
        self._reactor = reactor
        self._name = name

    def run(self, function, *args) -> defer.Deferred:
        result: defer.Deferred = defer.Deferred()

        def work():
            try:
                value = function(*args)
            except BaseException:
                self._reactor.callFromThread(result.errback, Failure())
            else:
                self._reactor.callFromThread(result.callback, value)

        threading.Thread(target=work, name=self._name, daemon=True).start()
        return result


@attrs.frozen
class Obtained:
    """What one exchange got, handed from its thread to the reactor thread."""

    loaded: LoadedCertificate
    pem: bytes
    origin: dict
    write_problem: str | None  # the certificate could not be written to the data dir


class CertificateRenewal(service.Service):
    """`issue(hostname) -> PEM` (the key and chain; blocking, e.g. AcmeIssuer.issue) is
    run through `run_in_thread(function, *args) -> Deferred` (ExchangeThread.run); the
    new certificate is written to data_dir and put into `tls_options`. `directory`: the
    ACME directory certificates come from now; a kept one from another is replaced."""

    name = "certificates"

    def __init__(
        self,
        hostname: str,
        data_dir: str,
        tls_options: ReloadableTLSOptions,
        issue,
        run_in_thread,
        clock,
        directory: str | None = None,
    ):
        self.hostname = hostname
        self.data_dir = data_dir
        self.tls_options = tls_options
        self.directory = directory
        self._issue = issue
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._call = None
        self.busy = None  # the Deferred of an exchange (or a write) under way
        self._state_path = os.path.join(data_dir, STATE_FILE)
        self._origin_path = os.path.join(data_dir, ACME_ORIGIN_FILE)
        # Read once here, while the appliance is built, before the reactor runs.
        state = read_json(self._state_path)
        failures = state.get("failures")
        retry_at = state.get("retry_at")
        self._failures = failures if isinstance(failures, int) and failures >= 0 else 0
        self._retry_at = float(retry_at) if isinstance(retry_at, int | float) else None
        self._origin = read_json(self._origin_path)
        self._unwritten: Obtained | None = None  # in use, not yet in the data directory

    def startService(self) -> None:
        super().startService()
        delay = 0.0
        if self._retry_at is not None:
            delay = max(0.0, self._retry_at - self._clock.seconds())
        if delay:
            log.info(
                "the last certificate request failed or was cut short; the next one for "
                "{hostname} in {minutes} minutes",
                hostname=self.hostname,
                minutes=round(delay / 60),
            )
        self._schedule(delay)

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        # An exchange under way is not waited for (ExchangeThread): what it gets is
        # written to the data directory, used by the next start; its back-off is kept.

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._call = self._clock.callLater(delay, self.check)

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)

    def reason(self) -> str | None:
        """Why a new certificate is needed now (one phrase), or None."""
        certificate = self.tls_options.certificate
        reason = renewal_reason(certificate, self.hostname, self._now())
        if reason is not None or self.directory is None:
            return reason
        came_from = self._origin.get("directory")
        if (
            came_from is not None
            and came_from != self.directory
            and self._origin.get("sha256") == fingerprint(certificate)
        ):
            return f"the certificate in use came from another ACME directory ({came_from})"
        return None

    def check(self):
        """Get a certificate if one is needed; the next check is scheduled either way.
        Returns the Deferred of the exchange, or None when none was needed."""
        self._call = None
        if self.busy is not None:  # one exchange at a time; it schedules the next check
            return self.busy
        if self._unwritten is not None:
            self.busy = self._run_in_thread(self._write_files, self._unwritten)
            self.busy.addCallbacks(self._written, self._not_written)
            self.busy.addBoth(self._done)
            return self.busy
        reason = self.reason()
        if reason is None:
            self._schedule(CHECK_INTERVAL)
            return None
        log.info(
            "{reason}: requesting a certificate for {hostname} from the ACME CA",
            reason=reason,
            hostname=self.hostname,
        )
        self.busy = self._run_in_thread(self._obtain, self._failures, self._clock.seconds())
        self.busy.addCallbacks(self._obtained, self._failed)
        self.busy.addBoth(self._done)
        return self.busy

    def _keep_state(self, state: dict) -> None:
        """In the worker thread: the attempt's state, for the next start."""
        try:
            write_json(self._state_path, state)
        except OSError as problem:
            log.warn(
                "cannot write {path} ({problem}); a restart may ask the CA again at once",
                path=self._state_path,
                problem=problem,
            )

    def _obtain(self, failures: int, now: float) -> Obtained:
        """In the worker thread: the exchange with the CA, then the TLS context (so the
        reactor thread only swaps one reference), then the files."""
        # Kept first as if it would fail: a process killed during the exchange waits
        # its back-off at the next start instead of asking again at once.
        self._keep_state(
            {"attempted": now, "failures": failures, "retry_at": now + retry_delay(failures)}
        )
        try:
            pem = self._issue(self.hostname)
            try:
                loaded = load_pem(pem)
            except ValueError as problem:
                raise CertificateError(f"the CA's certificate cannot be used: {problem}") from None
        except Exception as problem:
            delay = retry_delay(failures, getattr(problem, "retry_after", None))
            self._keep_state({"attempted": now, "failures": failures + 1, "retry_at": now + delay})
            raise
        origin = {
            "directory": self.directory,
            "issued": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(),
            "sha256": fingerprint(loaded.certificate),
        }
        obtained = Obtained(loaded, pem, origin, None)
        problem = self._write_files(obtained)
        self._keep_state({"attempted": now, "failures": 0, "retry_at": None})
        return attrs.evolve(obtained, write_problem=problem)

    def _write_files(self, obtained: Obtained) -> str | None:
        """In the worker thread: the certificate, then its origin; the problem or None."""
        try:
            write_private(acme_certificate_path(self.data_dir), obtained.pem)
            write_json(self._origin_path, obtained.origin)
        except OSError as problem:
            return str(problem)
        return None

    def _obtained(self, obtained: Obtained) -> None:
        self.tls_options.replace(obtained.loaded)
        self._origin = obtained.origin
        self._failures = 0
        self._retry_at = None
        log.info(
            "new certificate for {hostname} in use, valid until {until} (issuer: {issuer})",
            hostname=self.hostname,
            until=obtained.loaded.certificate.not_valid_after_utc.isoformat(),
            issuer=obtained.loaded.certificate.issuer.rfc4514_string(),
        )
        if obtained.write_problem is not None:
            self._unwritten = obtained
            self._not_written_log(obtained.write_problem)
            return
        self._schedule(CHECK_INTERVAL)

    def _not_written_log(self, problem: str) -> None:
        log.warn(
            "the new certificate is in use but cannot be written to {path} ({problem}); "
            "only the write is tried again, in {minutes} minutes",
            path=acme_certificate_path(self.data_dir),
            problem=problem,
            minutes=round(FIRST_RETRY / 60),
        )
        self._schedule(FIRST_RETRY)

    def _written(self, problem: str | None) -> None:
        if problem is not None:
            self._not_written_log(problem)
            return
        self._unwritten = None
        self._schedule(CHECK_INTERVAL)

    def _not_written(self, failure) -> None:
        log.failure("writing the certificate failed unexpectedly", failure)
        self._schedule(FIRST_RETRY)

    def _failed(self, failure) -> None:
        delay = retry_delay(self._failures, getattr(failure.value, "retry_after", None))
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
