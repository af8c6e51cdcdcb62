"""What the SMTP listeners accept: the inbound MX policy (port 25) and the submission
policy (587 and 465), each an ISMTPPolicy for the one protocol in smtp.server.

MX: mail for our domains from anyone, mail to other domains only from hosts of [smtp]
relay_networks; at end of data the inbound checks (IInboundChecks: sender
authentication, spam) decide, except for relay hosts, and the message goes to the intake
with their verdict, or is refused with their reply.

Submission: AUTH PLAIN and LOGIN (offered by the protocol only once TLS is active) are
checked by the appliance's one IAuthenticator (throttled per client address and per
login); MAIL only after AUTH, and the envelope sender and the From: and Sender: headers
must each be one of the user's sending identities (read again at every MAIL);
authenticated users may send anywhere; at end of data a missing Message-ID or Date is
added (RFC 6409 section 8) and the message is submitted through the intake.
"""

from __future__ import annotations

import datetime
import secrets
from email.utils import format_datetime, getaddresses
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from atollon_mail.auth import Throttled
from atollon_mail.interfaces import (
    IInboundChecks,
    IMailIntake,
    ISMTPAuthPolicy,
    ISMTPPolicy,
    ISubmissionIntake,
)
from atollon_mail.smtp.address import Path, is_relay_attempt
from atollon_mail.smtp.session import Accept, Envelope, Reply, Session, networks, within
from atollon_mail.store.records import (
    Recipient,
    Resolution,
    SendingIdentity,
    UserRecord,
)

__all__ = ["MXPolicy", "SubmissionPolicy"]

log = Logger()

ACCEPT = Accept()
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure, try again later")
TOO_MANY_FAILURES = Reply(421, "4.7.0", "Too many failed authentications, try again later")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
SENDER_UNCHECKED = Reply(451, "4.3.0", "Error: cannot check the sender now, try again later")
MESSAGE_UNCHECKED = Reply(451, "4.3.0", "Error: cannot check the message now, try again later")


def relay_denied(path: Path) -> Reply:
    return Reply(554, "5.7.1", f"<{path.address}>: Relay access denied")


def lookup_failed(failure: Failure, path: Path) -> Reply:
    log.failure("Recipient lookup for {address} failed", failure, address=path.address)
    return Reply(451, "4.3.0", f"<{path.address}>: temporary lookup failure")


def looked_up(intake: Any, path: Path, domain: str, resolved, *args) -> Any:
    """resolved(resolution, path, *args) once the intake classified the recipient: at
    once when it answered at once (a domain it knows is not ours, a relayed message's
    usual case), without a Deferred around it; a failed lookup is a 451."""
    try:
        found = intake.lookup_recipient(path.local_part, domain)
    except Exception:
        return lookup_failed(Failure(), path)
    if isinstance(found, Deferred):
        return found.addCallbacks(
            resolved, lookup_failed, callbackArgs=(path, *args), errbackArgs=(path,)
        )
    return resolved(found, path, *args)


def refused_recipient(path: Path, resolution: Resolution) -> Reply:
    detail = resolution.detail or "Recipient address rejected"
    return Reply(550, "5.1.1", f"<{path.address}>: {detail}")


def stored(message: Any) -> Accept:
    return Accept(message)


def not_stored(failure: Failure) -> Reply:
    """A refusal the intake decided (a forwarding loop, a line that cannot be re-encoded)
    carries its permanent reply; anything else is a 451: the client keeps the message."""
    code = getattr(failure.value, "smtp_code", None)
    status = getattr(failure.value, "enhanced_status", None)
    if isinstance(code, int) and 500 <= code < 600 and isinstance(status, str):
        log.info("Message refused: {reason}", reason=str(failure.value))
        return Reply(code, status, str(failure.value))
    log.failure("Storing a message failed", failure)
    return Reply(451, "4.3.0", "Requested action aborted: local error in processing")


@implementer(ISMTPPolicy)
class MXPolicy:
    """Port 25: whom the Internet may send to here (IMailIntake answers who an address is)
    and, with `checks` (IInboundChecks; None: off), what is done with each message."""

    def __init__(
        self,
        intake: IMailIntake,
        hostname: str,
        relay_networks: tuple[str, ...] = (),
        checks: IInboundChecks | None = None,
    ):
        self.intake = intake
        self.hostname = hostname
        self.relay_networks = networks(relay_networks)
        self.checks = checks

    def may_relay(self, client_ip: str | None) -> bool:
        """Hosts of [smtp] relay_networks may send to any domain without logging in."""
        return within(client_ip, self.relay_networks)

    def check_connect(self, session: Session) -> Accept:
        return ACCEPT

    def check_helo(self, session: Session) -> Accept:
        return ACCEPT

    def check_mail(self, session: Session, envelope: Envelope) -> Accept:
        return ACCEPT

    def check_rcpt(self, session: Session, envelope: Envelope, path: Path) -> Any:
        relay = self.may_relay(session.peer)
        if path.is_address_literal or (not relay and is_relay_attempt(path)):
            return relay_denied(path)
        domain = (path.domain or self.hostname).lower()  # bare <Postmaster> is ours
        return looked_up(self.intake, path, domain, self._resolved, relay)

    def _resolved(self, resolution: Resolution, path: Path, relay: bool) -> Accept | Reply:
        if resolution.kind == "local":
            return Accept(resolution.recipient)
        if resolution.kind == "remote":
            # A bounce to one of our SRS addresses, which the intake decoded (its hash
            # vouches for it): it needs no relay rights.
            return Accept(resolution.address)
        if resolution.kind == "foreign":
            if not relay or is_relay_attempt(path):
                return relay_denied(path)
            # The intake takes a plain address string as a remote recipient.
            return Accept(f"{path.local_part}@{path.domain.lower()}")
        return refused_recipient(path, resolution)

    def deliver(self, session: Session, envelope: Envelope, data: bytes) -> Deferred:
        # Relay hosts are ours: their mail is not checked (nor is submitted mail).
        if self.checks is None or self.may_relay(session.peer):
            return self._store(envelope, data)
        deferred = maybeDeferred(self.checks.check, session, envelope, data)
        deferred.addCallbacks(self._checked, self._unchecked, callbackArgs=(envelope, data))
        return deferred

    def _checked(self, decision: Any, envelope: Envelope, data: bytes) -> Any:
        refusal = decision.refusal
        if refusal is not None:
            return Reply(refusal.code, refusal.status, refusal.text)
        return self._store(envelope, decision.prepared(data), decision.verdict)

    def _unchecked(self, failure: Failure) -> Reply:
        log.failure("Checking a received message failed", failure)
        return MESSAGE_UNCHECKED

    def _store(self, envelope: Envelope, data: bytes, verdict: Any = None) -> Deferred:
        recipients = tuple(envelope.recipients)
        if verdict is None:
            deferred = maybeDeferred(self.intake.accept, envelope.sender.address, recipients, data)
        else:
            deferred = maybeDeferred(
                self.intake.accept, envelope.sender.address, recipients, data, verdict=verdict
            )
        return deferred.addCallbacks(stored, not_stored)


@attrs.frozen
class Sender:
    """What a submission MAIL keeps: the identity sent as, and all the user's identities
    as the store had them then (the From:/Sender: check at end of data uses them)."""

    identity: SendingIdentity
    identities: tuple[SendingIdentity, ...]


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


def owned_identity(
    identities: tuple[SendingIdentity, ...], key: tuple[str, str] | None
) -> SendingIdentity | None:
    """The identity for a (local part, domain) key, or None."""
    if key is None:
        return None
    for identity in identities:
        if _address_key(identity.identity) == key:
            return identity
    return None


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


@implementer(ISMTPAuthPolicy)
class SubmissionPolicy:
    """Ports 587 and 465: an authenticated user's mail program.

    `intake` is an ISubmissionIntake, `authenticator` the appliance's one IAuthenticator
    (give the 587 and 465 policies and the web the same one).
    """

    def __init__(self, intake: ISubmissionIntake, authenticator: Any, hostname: str, clock: Any):
        self.intake = intake
        self.authenticator = authenticator
        self.hostname = hostname
        self.clock = clock

    # --- connection and AUTH ---

    def check_connect(self, session: Session) -> Accept | Reply:
        if self.authenticator.blocked(session.peer):
            return TOO_MANY_FAILURES
        return ACCEPT

    def check_helo(self, session: Session) -> Accept:
        return ACCEPT

    def check_auth(self, session: Session) -> Accept | Reply:
        return self.check_connect(session)

    def authenticate(self, session: Session, login: str, password: str) -> Deferred:
        deferred = self.authenticator.authenticate(session.peer, login, password)
        deferred.addCallbacks(
            self._credentials_checked,
            self._credentials_unchecked,
            callbackArgs=(session, login),
        )
        return deferred

    def _credentials_checked(self, user: UserRecord | None, session: Session, login: str) -> Any:
        if user is None:
            # The guess that used up a limit ends the session: the client must reconnect
            # (and may try another login, unless its address is blocked as a whole).
            authenticator = self.authenticator
            if authenticator.login_blocked(session.peer, login) or authenticator.blocked(
                session.peer
            ):
                return (AUTH_FAILED, TOO_MANY_FAILURES)
            return AUTH_FAILED
        deferred = maybeDeferred(self.intake.sending_identities, user.login)
        deferred.addCallbacks(lambda identities: Accept(user), self._identities_unavailable)
        return deferred

    def _credentials_unchecked(self, failure: Failure) -> Reply:
        if failure.check(Throttled):
            return TOO_MANY_FAILURES
        log.failure("Checking credentials failed", failure)
        return AUTH_TEMPORARY

    def _identities_unavailable(self, failure: Failure) -> Reply:
        log.failure("Loading sending identities failed", failure)
        return AUTH_TEMPORARY

    # --- the envelope ---

    def not_owned(self, session: Session, what: str) -> Reply:
        user = session.authenticated_user
        login = user.login if user is not None else None
        return Reply(553, "5.7.1", f"{what} not owned by user {login}")

    def check_mail(self, session: Session, envelope: Envelope) -> Any:
        user = session.authenticated_user
        if user is None:
            return AUTH_REQUIRED
        # The identities as the store has them now, not as at login: one changed since, or
        # become another mailbox's address, alias or identity, is refused from now on.
        deferred = maybeDeferred(self.intake.sending_identities, user.login)
        deferred.addCallbacks(
            self._sender_checked, self._sender_unchecked, callbackArgs=(session, envelope)
        )
        return deferred

    def _sender_checked(self, identities: Any, session: Session, envelope: Envelope) -> Any:
        identities = tuple(identities)
        sender = envelope.sender
        # <> is no identity's address: a user's program never sends bounces.
        identity = owned_identity(identities, _mailbox_key(sender.local_part, sender.domain))
        if identity is None:
            return self.not_owned(session, f"<{sender.address}>: Sender address rejected:")
        return Accept(Sender(identity, identities))

    def _sender_unchecked(self, failure: Failure) -> Reply:
        log.failure("Loading sending identities failed", failure)
        return SENDER_UNCHECKED

    def check_rcpt(self, session: Session, envelope: Envelope, path: Path) -> Any:
        # Routing tricks and address literals stay refused even for a logged-in user:
        # they would let the account reach hosts the MX records do not name.
        if is_relay_attempt(path) or path.is_address_literal:
            return relay_denied(path)
        domain = (path.domain or self.hostname).lower()  # bare <Postmaster> is ours
        return looked_up(self.intake, path, domain, self._resolved)

    def _resolved(self, resolution: Resolution, path: Path) -> Accept | Reply:
        if resolution.kind == "local":
            return Accept(resolution.recipient)
        if resolution.kind == "remote":
            return Accept(resolution.address)
        if resolution.kind == "foreign":  # an authenticated user may send anywhere
            if not path.domain:  # a bare <Postmaster> when our hostname is no mail domain
                return Reply(550, "5.1.1", f"<{path.address}>: Recipient address rejected")
            return Accept(attrs.evolve(path, domain=path.domain.lower()).address)
        return refused_recipient(path, resolution)

    # --- end of data ---

    def deliver(self, session: Session, envelope: Envelope, data: bytes) -> Any:
        sender: Sender = envelope.note
        end = _header_end(data)
        fields = _header_fields(data[:end])
        # Who the message says wrote it, and who sent it for them: both must be the user's.
        for header in ("From", "Sender"):
            values = [value for name, value in fields if name == header.lower()]
            if not values:  # a message without From: is accepted as written
                continue
            for address in [address for _, address in getaddresses(values)] or [""]:
                if owned_identity(sender.identities, _address_key(address)) is None:
                    shown = address[:256]
                    return self.not_owned(session, f"{header}: header address <{shown}>")
        names = {name for name, _ in fields}
        added = b""
        if "message-id" not in names:
            added += f"Message-ID: <{secrets.token_hex(16)}@{self.hostname}>\r\n".encode()
        if "date" not in names:
            now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
            added += f"Date: {format_datetime(now)}\r\n".encode()
        if added:
            data = data[:end] + added + data[end:]
        recipients = envelope.recipients
        local = tuple(r for r in recipients if isinstance(r, Recipient))
        remote = tuple(r for r in recipients if isinstance(r, str))
        deferred = maybeDeferred(
            self.intake.submit,
            session.authenticated_user.login,
            sender.identity,
            envelope.sender.address,
            local,
            remote,
            data,
        )
        return deferred.addCallbacks(stored, not_stored)
