"""The submission server (port 587 with STARTTLS, port 465 with implicit TLS).

The inbound server's strict protocol with these differences: no greet pause (the clients
are people's mail programs); AUTH PLAIN and LOGIN only once TLS is active, checked by the
appliance's one IAuthenticator (throttled per client address and per login); MAIL only
after AUTH, and the envelope sender and the From: and Sender: headers must each be one of
the user's sending identities (read again at every MAIL); authenticated users may send
anywhere; at end of data a missing
Message-ID or Date is added (RFC 6409 section 8) and the message goes to policy.submit.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import secrets
from collections.abc import Callable
from email.utils import format_datetime, getaddresses
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from atollon_mail.auth import Throttled
from atollon_mail.config import SmtpConfig
from atollon_mail.smtp.address import Path, is_relay_attempt
from atollon_mail.smtp.server import (
    LOCAL_ERROR,
    Reply,
    SMTPServerFactory,
    SMTPServerProtocol,
    _client_ip,
)
from atollon_mail.store.records import Recipient, SendingIdentity, UserRecord

__all__ = ["SubmissionFactory", "SubmissionProtocol", "SubmissionRefused"]

log = Logger()

# A SASL response after a 334 may exceed a command line's 512 octets; bound it all the same.
MAX_AUTH_RESPONSE = 12288

USERNAME_PROMPT = base64.b64encode(b"Username:").decode("ascii")
PASSWORD_PROMPT = base64.b64encode(b"Password:").decode("ascii")

STARTTLS_FIRST = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_MALFORMED = Reply(501, "5.5.2", "Error: cannot decode the authentication response")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure, try again later")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
TOO_MANY_FAILURES = Reply(421, "4.7.0", "Too many failed authentications, try again later")
SENDER_UNCHECKED = Reply(451, "4.3.0", "Error: cannot check the sender now, try again later")


class SubmissionRefused(Exception):
    """A message refused at end of data; `reply` is what the client is told."""

    def __init__(self, reply: Reply):
        super().__init__(reply.text)
        self.reply = reply


def _decode_response(text: bytes) -> bytes | None:
    """A base64 SASL response; "=" is the empty one (RFC 4954 section 4)."""
    if text == b"=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return None


def _mailbox_key(local_part: str, domain: str) -> tuple[str, str]:
    domain = domain.lower()
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return local_part.lower(), domain


def _address_key(address: str) -> tuple[str, str] | None:
    local_part, at, domain = address.rpartition("@")
    if not at or not local_part or not domain:
        return None
    return _mailbox_key(local_part, domain)


def _header_end(raw: bytes) -> int:
    """Where the header section ends (after its last CRLF, before the empty line)."""
    found = raw.find(b"\r\n\r\n")
    return len(raw) if found < 0 else found + 2


def _header_fields(section: bytes) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) of every header line, in order.

    A line that is not a header keeps its place under an empty name, so a later field is
    still seen and a continuation never joins the wrong field.
    """
    fields: list[tuple[str, str]] = []
    for line in section.decode("utf-8", "replace").split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        name, colon, value = line.partition(":")
        fields.append((name.rstrip(" \t").lower(), value) if colon else ("", line))
    return fields


class SubmissionProtocol(SMTPServerProtocol):
    """One session of an authenticated user's mail program."""

    factory: SubmissionFactory

    def __init__(self, factory: SubmissionFactory):
        super().__init__(factory)
        self.policy = factory.policy
        self.identities: tuple[SendingIdentity, ...] = ()
        self.authenticator = factory.authenticator
        # The next line answers a 334 challenge instead of being a command.
        self._auth_step: Callable[[bytes], Reply | Deferred | None] | None = None
        self._message_identity: SendingIdentity | None = None

    # --- connection ---

    def connectionMade(self) -> None:
        client_ip = _client_ip(getattr(self.transport.getPeer(), "host", None))
        if self.authenticator.blocked(client_ip):
            self.client_ip = client_ip
            self._refuse_throttled()
            return
        super().connectionMade()
        if self.factory.implicit_tls:
            self.tls_active = True

    def _refuse_throttled(self) -> None:
        self.send_reply(TOO_MANY_FAILURES)
        self.close()

    # --- state ---

    def reset_transaction(self) -> None:
        super().reset_transaction()
        self.sending_identity: SendingIdentity | None = None

    def reset_session(self) -> None:
        super().reset_session()
        self.identities = ()
        self._auth_step = None

    @property
    def login(self) -> str | None:
        user = self.authenticated_user
        return user.login if user is not None else None

    def ehlo_keywords(self) -> list[str]:
        keywords = super().ehlo_keywords()
        if self.tls_active:
            keywords.append("AUTH PLAIN LOGIN")
        return keywords

    # --- AUTH ---

    def _line_received(self, line: bytes) -> None:
        # While a 334 awaits its answer the line is that answer, never a command.
        step, self._auth_step = self._auth_step, None
        if step is None:
            super()._line_received(line)
            return
        if len(line) > MAX_AUTH_RESPONSE:
            result: Reply | Deferred | None = AUTH_LINE_TOO_LONG
        elif line == b"*":
            result = AUTH_CANCELLED
        else:
            try:
                result = step(line)
            except Exception:
                log.failure("AUTH step failed")
                result = LOCAL_ERROR
        if isinstance(result, Deferred):
            self._wait_for(result)
        elif result is not None:
            self.send_reply(result)

    def _challenge(self, text: str, step: Callable[[bytes], Reply | Deferred | None]) -> Reply:
        self._auth_step = step
        return Reply(334, None, text)

    def smtp_AUTH(self, argument: bytes) -> Reply | Deferred | None:
        if not self.tls_active:
            return STARTTLS_FIRST
        if not self.esmtp:
            return Reply(503, "5.5.1", "Error: send EHLO first")
        if self.authenticated_user is not None:
            return Reply(503, "5.5.1", "Error: already authenticated")
        if self.envelope_sender is not None:
            return Reply(503, "5.5.1", "Error: AUTH not allowed during a mail transaction")
        if self.authenticator.blocked(self.client_ip):
            self._refuse_throttled()
            return None
        words = argument.split()
        if not words or len(words) > 2:
            return Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        mechanism = words[0].upper()
        initial = words[1] if len(words) == 2 else None
        if mechanism == b"PLAIN":
            if initial is None:
                return self._challenge("", self._plain_response)
            return self._plain_response(initial)
        if mechanism == b"LOGIN":
            if initial is None:
                return self._challenge(USERNAME_PROMPT, self._login_username)
            return self._login_username(initial)
        return Reply(504, "5.5.4", "Error: unsupported authentication mechanism")

    def _plain_response(self, response: bytes) -> Reply | Deferred:
        decoded = _decode_response(response)
        parts = decoded.split(b"\0") if decoded is not None else []
        if len(parts) != 3:
            return AUTH_MALFORMED
        try:
            authzid, login, password = (part.decode("utf-8") for part in parts)
        except UnicodeDecodeError:
            return AUTH_MALFORMED
        if authzid and authzid != login:
            return AUTH_FAILED  # acting for another user is not offered
        return self._check_credentials(login, password)

    def _login_username(self, response: bytes) -> Reply:
        decoded = _decode_response(response)
        try:
            login = decoded.decode("utf-8") if decoded is not None else None
        except UnicodeDecodeError:
            login = None
        if login is None:
            return AUTH_MALFORMED
        return self._challenge(PASSWORD_PROMPT, functools.partial(self._login_password, login))

    def _login_password(self, login: str, response: bytes) -> Reply | Deferred:
        decoded = _decode_response(response)
        try:
            password = decoded.decode("utf-8") if decoded is not None else None
        except UnicodeDecodeError:
            password = None
        if password is None:
            return AUTH_MALFORMED
        return self._check_credentials(login, password)

    def _check_credentials(self, login: str, password: str) -> Deferred:
        deferred = self.authenticator.authenticate(self.client_ip, login, password)
        deferred.addCallbacks(
            self._credentials_checked,
            self._credentials_unchecked,
            callbackArgs=(login,),
        )
        return deferred

    def _credentials_checked(self, user: UserRecord | None, login: str) -> Reply | Deferred | None:
        if user is None:
            # The guess that used up a limit ends the session: the client must reconnect
            # (and may try another login, unless its address is blocked as a whole).
            authenticator = self.authenticator
            if authenticator.login_blocked(self.client_ip, login) or authenticator.blocked(
                self.client_ip
            ):
                self.send_reply(AUTH_FAILED)
                self._refuse_throttled()
                return None
            return AUTH_FAILED
        deferred = maybeDeferred(self.policy.sending_identities, user.login)
        deferred.addCallbacks(
            self._identities_loaded, self._identities_unavailable, callbackArgs=(user,)
        )
        return deferred

    def _credentials_unchecked(self, failure: Failure) -> Reply | None:
        if failure.check(Throttled):
            self._refuse_throttled()
            return None
        log.failure("Checking credentials failed", failure)
        return AUTH_TEMPORARY

    def _identities_loaded(self, identities: Any, user: UserRecord) -> Reply:
        self.authenticated_user = user
        self.identities = tuple(identities)
        return AUTH_OK

    def _identities_unavailable(self, failure: Failure) -> Reply:
        log.failure("Loading sending identities failed", failure)
        return AUTH_TEMPORARY

    # --- identities ---

    def owned_identity(self, key: tuple[str, str] | None) -> SendingIdentity | None:
        """The user's identity for a (local part, domain) key, or None."""
        if key is None:
            return None
        for identity in self.identities:
            if _address_key(identity.identity) == key:
                return identity
        return None

    def not_owned(self, what: str) -> Reply:
        return Reply(553, "5.7.1", f"{what} not owned by user {self.login}")

    # --- commands ---

    def smtp_MAIL(self, argument: bytes) -> Reply | Deferred:
        if self.authenticated_user is None:
            return AUTH_REQUIRED
        reply = super().smtp_MAIL(argument)
        sender = self.envelope_sender
        if reply.code != 250 or sender is None:
            return reply
        # The identities as the store has them now, not as at login: one changed since, or
        # become another mailbox's address, alias or identity, is refused from now on.
        deferred = maybeDeferred(self.policy.sending_identities, self.login)
        deferred.addCallbacks(
            self._sender_checked, self._sender_unchecked, callbackArgs=(sender, reply)
        )
        return deferred

    def _sender_checked(self, identities: Any, sender: Path, reply: Reply) -> Reply:
        self.identities = tuple(identities)
        # <> is no identity's address: a user's program never sends bounces.
        identity = self.owned_identity(_mailbox_key(sender.local_part, sender.domain))
        if identity is None:
            self.reset_transaction()
            return self.not_owned(f"<{sender.address}>: Sender address rejected:")
        self.sending_identity = identity
        return reply

    def _sender_unchecked(self, failure: Failure) -> Reply:
        log.failure("Loading sending identities failed", failure)
        self.reset_transaction()
        return SENDER_UNCHECKED

    def relay_allowed(self) -> bool:
        return self.authenticated_user is not None

    def check_recipient(self, path: Path) -> Reply | Deferred:
        # Routing tricks and address literals stay refused even for a logged-in user:
        # they would let the account reach hosts the MX records do not name.
        if is_relay_attempt(path) or path.is_address_literal:
            return self.relay_denied(path)
        return super().check_recipient(path)

    def accept_remote_recipient(self, path: Path) -> Reply:
        if not path.domain:  # a bare <Postmaster> when our hostname is no mail domain
            return Reply(550, "5.1.1", f"<{path.address}>: Recipient address rejected")
        self.add_recipient(attrs.evolve(path, domain=path.domain.lower()).address, path)
        return Reply(250, "2.1.5", "Ok")

    def smtp_DATA(self, argument: bytes) -> Reply:
        reply = super().smtp_DATA(argument)
        if reply.code == 354:
            # reset_transaction() runs before deliver(): keep who this message is from.
            self._message_identity = self.sending_identity
        return reply

    def smtp_HELP(self, argument: bytes) -> Reply:
        return Reply(
            214,
            "2.0.0",
            "Commands: EHLO HELO AUTH MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS",
        )

    # --- end of data ---

    def deliver(self, envelope_sender: str, recipients: tuple, raw: bytes) -> Deferred:
        identity, self._message_identity = self._message_identity, None
        user = self.authenticated_user
        end = _header_end(raw)
        fields = _header_fields(raw[:end])
        # Who the message says wrote it, and who sent it for them: both must be the user's.
        for header in ("From", "Sender"):
            values = [value for name, value in fields if name == header.lower()]
            if not values:  # a message without From: is accepted as written
                continue
            for address in [address for _, address in getaddresses(values)] or [""]:
                if self.owned_identity(_address_key(address)) is None:
                    shown = address[:256]
                    raise SubmissionRefused(self.not_owned(f"{header}: header address <{shown}>"))
        names = {name for name, _ in fields}
        added = b""
        if "message-id" not in names:
            added += f"Message-ID: <{secrets.token_hex(16)}@{self.hostname}>\r\n".encode()
        if "date" not in names:
            now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
            added += f"Date: {format_datetime(now)}\r\n".encode()
        if added:
            raw = raw[:end] + added + raw[end:]
        local = tuple(r for r in recipients if isinstance(r, Recipient))
        remote = tuple(r for r in recipients if isinstance(r, str))
        return self.policy.submit(user.login, identity, envelope_sender, local, remote, raw)

    def _queue_failed(self, failure: Failure) -> Reply:
        # A refusal decided at end of data is the client's fault: 5xx, not the base's 451.
        if failure.check(SubmissionRefused):
            return failure.value.reply
        return super()._queue_failed(failure)


class SubmissionFactory(SMTPServerFactory):
    """Builds SubmissionProtocol; its sessions check passwords with `authenticator`.

    With implicit_tls the caller wraps this factory in TLS (port 465): sessions start
    with TLS active and STARTTLS is not offered. Give the 587 and 465 factories (and the
    web) the same authenticator so that a client cannot multiply its guesses by
    switching ports.
    """

    protocol = SubmissionProtocol

    def __init__(
        self,
        policy: Any,
        hostname: str,
        settings: SmtpConfig,
        clock: Any,
        tls_options: Any,
        implicit_tls: bool = False,
        *,
        authenticator: Any,
    ):
        # Clients are people's mail programs, not spam engines: greet at once.
        super().__init__(
            policy, hostname, attrs.evolve(settings, greet_pause=0.0), clock, tls_options
        )
        self.policy = policy
        self.implicit_tls = implicit_tls
        self.authenticator = authenticator
