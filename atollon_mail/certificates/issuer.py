"""One certificate from an ACME CA (RFC 8555) for the host name, with the `acme` library.

Synchronous (the library speaks HTTPS through requests and sleeps while it polls): run
AcmeIssuer.issue in a worker thread, never on the reactor thread. The account key and the
account's registration are kept in the data directory (mode 0600), so the account is
registered once; every certificate gets a new key of its own.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import os

import josepy
import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.logger import Logger

from atollon_mail import __version__
from atollon_mail.selfsigned import write_private

log = Logger()

ACCOUNT_KEY_FILE = "acme-account.key"
ACCOUNT_FILE = "acme-account.json"
RSA_BITS = 2048  # RSA, as selfsigned.py: every mail client and server can use it
# How long the CA has to check the challenge and sign (Let's Encrypt: seconds).
ORDER_DEADLINE = datetime.timedelta(seconds=90)
NETWORK_TIMEOUT = 30  # seconds for each HTTPS request to the CA


class CertificateError(Exception):
    """Getting a certificate failed; str() is one line saying why and what to do.
    `retry_after`: seconds the CA asked us to wait (its Retry-After), or None."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


# The CA's problems that mean the kept account is of no use any more: the CA forgot or
# deactivated it, or the key in use is not the account's.
ACCOUNT_GONE = ("accountDoesNotExist", "unauthorized")


def retry_after_seconds(value: str | None, now: datetime.datetime) -> float | None:
    """A Retry-After header's delay in seconds (RFC 9110: seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - now).total_seconds())


class RetryAfterNetwork(client.ClientNetwork):
    """acme's ClientNetwork, keeping the Retry-After of the CA's last error response
    (the library raises the problem document and drops the header)."""

    retry_after: float | None = None

    def _check_response(self, response, content_type=None):  # type: ignore[override]
        if not response.ok:
            self.retry_after = retry_after_seconds(
                response.headers.get("Retry-After"), datetime.datetime.now(datetime.UTC)
            )
        return client.ClientNetwork._check_response(response, content_type=content_type)


def _new_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class AcmeIssuer:
    """Gets certificates from the CA whose ACME directory is `directory_url`, answering
    its HTTP-01 challenges through `answers` (challenges.ChallengeAnswers, served by the
    web service). `ca_bundle`: a CA file trusted for the directory's HTTPS instead of the
    system's (a test CA such as pebble); `email`: the account's contact."""

    def __init__(
        self,
        directory_url: str,
        data_dir: str,
        answers,
        email: str | None = None,
        ca_bundle: str | None = None,
    ):
        self.directory_url = directory_url
        self.data_dir = data_dir
        self.answers = answers
        self.email = email
        self.ca_bundle = ca_bundle
        self._network: RetryAfterNetwork | None = None

    def issue(self, hostname: str) -> bytes:
        """A new key and its certificate chain for hostname, as PEM (key first). Raises
        CertificateError with one line saying what went wrong and what to do."""
        try:
            return self._issue(hostname)
        except CertificateError:
            raise
        except requests.exceptions.RequestException as problem:
            raise CertificateError(
                f"cannot reach the ACME CA at {self.directory_url} ({_first_line(problem)}); "
                "check [tls] acme_directory (and acme_ca_bundle for a private CA) and that "
                "this server can make HTTPS connections out"
            ) from None
        except errors.ValidationError as problem:
            details = "; ".join(
                _first_line(challenge.error)
                for authorization in problem.failed_authzrs
                for challenge in authorization.body.challenges
                if challenge.error is not None
            )
            raise CertificateError(
                f"the CA could not check that {hostname} is ours ({details}); make sure its "
                "A/AAAA records point at this server and port 80 reaches [web] listen"
            ) from None
        except errors.TimeoutError:
            raise CertificateError(
                f"the CA did not finish the order for {hostname} within "
                f"{int(ORDER_DEADLINE.total_seconds())} s; it is retried later"
            ) from None
        except (messages.Error, errors.Error) as problem:
            retry_after = self._network.retry_after if self._network is not None else None
            raise CertificateError(
                f"the ACME CA at {self.directory_url} refused: {_first_line(problem)}",
                retry_after=retry_after,
            ) from None

    def _issue(self, hostname: str) -> bytes:
        account_key = josepy.JWKRSA(key=self._account_key())
        network = self._network = RetryAfterNetwork(
            account_key,
            user_agent=f"atollon-mail/{__version__}",
            # requests takes a CA file's path where it takes True (the system's CAs).
            verify_ssl=self.ca_bundle or True,  # type: ignore[arg-type]
            timeout=NETWORK_TIMEOUT,
        )
        directory = client.ClientV2.get_directory(self.directory_url, network)
        acme = client.ClientV2(directory, network)
        self._account(acme)
        key_pem = _new_key_pem()
        csr = crypto_util.make_csr(key_pem, [hostname])
        try:
            order = acme.new_order(csr)
        except messages.Error as problem:
            if problem.code not in ACCOUNT_GONE:
                raise
            # The kept account is of no use (deactivated, forgotten by the CA, or not
            # this key's): registered again, once.
            log.warn(
                "the ACME CA refused the kept account ({problem}); registering again",
                problem=_first_line(problem),
            )
            self._account(acme, fresh=True)
            account_key = acme.net.key
            order = acme.new_order(csr)
        tokens = []
        try:
            for authorization in order.authorizations:
                if authorization.body.status == messages.STATUS_VALID:
                    continue  # validated for this account not long ago
                challenge = self._http01(authorization, hostname)
                response, validation = challenge.response_and_validation(account_key)
                token = challenge.chall.encode("token")
                # Served before the CA is told to look.
                self.answers.add(token, validation)
                tokens.append(token)
                acme.answer_challenge(challenge, response)
            deadline = datetime.datetime.now() + ORDER_DEADLINE  # acme compares naive times
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for token in tokens:
                self.answers.remove(token)
        if not order.fullchain_pem:
            raise CertificateError(
                f"the CA finished the order for {hostname} without a certificate"
            )
        return key_pem + order.fullchain_pem.encode("ascii")

    @staticmethod
    def _http01(authorization, hostname: str):
        for challenge in authorization.body.challenges:
            if isinstance(challenge.chall, challenges.HTTP01):
                return challenge
        raise CertificateError(
            f"the CA offers no HTTP-01 challenge for {hostname}, the only kind answered here"
        )

    def _account_key(self):
        """The account's key, made (mode 0600) the first time."""
        path = os.path.join(self.data_dir, ACCOUNT_KEY_FILE)
        if not os.path.isfile(path):
            os.makedirs(self.data_dir, mode=0o750, exist_ok=True)
            write_private(path, _new_key_pem())
        with open(path, "rb") as key_file:
            return serialization.load_pem_private_key(key_file.read(), password=None)

    def _account(self, acme: client.ClientV2, fresh: bool = False) -> None:
        """Registers the account once per directory; later uses take the kept one
        (`fresh`: not the kept one, which the CA refused). A changed [tls] acme_email
        updates the kept account's contact."""
        path = os.path.join(self.data_dir, ACCOUNT_FILE)
        try:
            with open(path, encoding="utf-8") as account_file:
                kept = json.load(account_file)
        except (OSError, ValueError):
            kept = {}
        if not isinstance(kept, dict):
            kept = {}
        # The key's thumbprint is kept beside the account (files from before had none):
        # a key file replaced since is a new account's, not the kept one's.
        thumbprint = _thumbprint(acme.net.key)
        if (
            not fresh
            and kept.get("directory") == self.directory_url
            and kept.get("registration")
            and kept.get("key_thumbprint", thumbprint) == thumbprint
        ):
            account = messages.RegistrationResource.from_json(kept["registration"])
            acme.net.account = account
            if kept.get("email", self.email) != self.email:
                contact = (f"mailto:{self.email}",) if self.email else ()
                account = acme.update_registration(account, account.body.update(contact=contact))
                self._keep_account(path, account, acme.net.key)
            return
        if fresh:
            # A deactivated account's key cannot register again: a new key, new account.
            write_private(os.path.join(self.data_dir, ACCOUNT_KEY_FILE), _new_key_pem())
            acme.net.key = josepy.JWKRSA(key=self._account_key())
            acme.net.account = None  # a new account is asked for with its key, not an id
        registration = messages.NewRegistration.from_data(
            email=self.email, terms_of_service_agreed=True
        )
        try:
            account = acme.new_account(registration)
        except errors.ConflictError as existing:
            # The CA knows this key already (the kept file was lost): take that account.
            account = messages.RegistrationResource(
                uri=existing.location, body=messages.Registration()
            )
            acme.net.account = account
        self._keep_account(path, account, acme.net.key)

    def _keep_account(self, path: str, account, key) -> None:
        record = {
            "directory": self.directory_url,
            "email": self.email,
            "key_thumbprint": _thumbprint(key),
            "registration": json.loads(account.json_dumps()),
        }
        write_private(path, json.dumps(record, indent=1).encode("utf-8"))


def _thumbprint(key) -> str:
    return josepy.encode_b64jose(key.thumbprint())


def _first_line(problem) -> str:
    text = str(problem).strip() or type(problem).__name__
    return text.splitlines()[0]
