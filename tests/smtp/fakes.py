"""Test doubles for the SMTP server: an intake with a directory, and a session driver."""

from __future__ import annotations

import attrs
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from atollon_mail.config import SmtpConfig
from atollon_mail.interfaces import IMailIntake, ISubmissionIntake
from atollon_mail.smtp.policies import MXPolicy
from atollon_mail.smtp.server import SMTPServerFactory
from atollon_mail.store.records import (
    Recipient,
    Rejection,
    Resolution,
    SendingIdentity,
    StoredMessage,
    SubmittedMessage,
    UserRecord,
)

HOSTNAME = "mx.example.net"
UNTRUSTED_PEER = "198.51.100.7"


class LookupUnavailable(Exception):
    """What a store that cannot be reached raises."""


class StorageFailed(Exception):
    """What a store that could not commit the message raises."""


@attrs.define
class Pending:
    """A held Deferred and the result it would have had; the test decides when it fires."""

    deferred: defer.Deferred
    result: object

    def fire(self) -> None:
        self.deferred.callback(self.result)

    def fail(self, error: Exception | None = None) -> None:
        self.deferred.errback(error or LookupUnavailable("store unreachable"))


@attrs.frozen
class AcceptCall:
    envelope_sender: str
    recipients: tuple
    raw: bytes
    verdict: object = None


@implementer(IMailIntake)
class FakeIntake:
    """An IMailIntake over an in-memory directory of addresses.

    hold_lookups / hold_accepts keep the Deferreds unfired in `pending_lookups` /
    `pending_accepts`; fail_lookups / fail_accepts make them fail.
    """

    def __init__(self, addresses=("alice@example.com", "bob@example.com")):
        self.domains: set[str] = set()
        self.inactive_domains: set[str] = set()
        self.mailboxes: dict[str, Recipient] = {}
        self.inactive_mailboxes: set[str] = set()
        for address in addresses:
            self.add_mailbox(address)
        self.hold_lookups = False
        self.hold_accepts = False
        self.fail_lookups = False
        self.fail_accepts = False
        self.clock: Clock | None = None  # with delays: lookups answer after that many seconds
        self.delays: dict[str, float] = {}
        self.lookups: list[tuple[str, str]] = []
        self.pending_lookups: list[Pending] = []
        self.accept_calls: list[AcceptCall] = []
        self.pending_accepts: list[Pending] = []
        self._next_id = 1

    def add_mailbox(self, address: str) -> Recipient:
        local, _, domain = address.rpartition("@")
        self.domains.add(domain.lower())
        recipient = Recipient(
            address=address, mailbox_id=len(self.mailboxes) + 1, mailbox_address=address
        )
        self.mailboxes[f"{local}@{domain.lower()}"] = recipient
        return recipient

    def _resolve(self, local_part: str, domain: str) -> Recipient | Rejection:
        domain = domain.lower()
        if domain not in self.domains:
            return Rejection("unknown-domain", "Relay access denied")
        if domain in self.inactive_domains:
            return Rejection("inactive-domain", "Domain is not accepting mail")
        address = f"{local_part}@{domain}"
        if address not in self.mailboxes:
            return Rejection("unknown-address", "Recipient address rejected: User unknown")
        if address in self.inactive_mailboxes:
            return Rejection("inactive-mailbox", "Mailbox is inactive")
        return self.mailboxes[address]

    def resolve_recipient(self, local_part, domain):
        self.lookups.append((local_part, domain))
        if self.fail_lookups:
            return defer.fail(LookupUnavailable("store unreachable"))
        result = self._resolve(local_part, domain)
        delay = self.delays.get(f"{local_part}@{domain}")
        if delay is not None:
            return task.deferLater(self.clock, delay, lambda: result)
        if self.hold_lookups:
            pending = Pending(defer.Deferred(), result)
            self.pending_lookups.append(pending)
            return pending.deferred
        return defer.succeed(result)

    def lookup_recipient(self, local_part, domain):
        return self.resolve_recipient(local_part, domain).addCallback(Resolution.of)

    def accept(self, envelope_sender, recipients, raw, verdict=None, notification=False):
        self.accept_calls.append(AcceptCall(envelope_sender, tuple(recipients), raw, verdict))
        if self.fail_accepts:
            return defer.fail(StorageFailed("could not commit"))
        stored = StoredMessage(id=self._next_id, filings=len(recipients))
        self._next_id += 1
        if self.hold_accepts:
            pending = Pending(defer.Deferred(), stored)
            self.pending_accepts.append(pending)
            return pending.deferred
        return defer.succeed(stored)


@implementer(ITLSTransport)
class TLSRecordingTransport(StringTransport):
    """A StringTransport that records startTLS calls and what had been written before."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tls_starts: list[tuple[object, bytes]] = []

    def startTLS(self, contextFactory, normal=True):
        self.tls_starts.append((contextFactory, self.value()))


def make_settings(**overrides) -> SmtpConfig:
    values = {
        "listen": "tcp:2525",
        "max_message_size": 64 * 1024,
        "max_recipients": 100,
        "tls_certificate": None,
        "tls_key": None,
        "greet_pause": 1.0,
        "trusted_networks": ("127.0.0.0/8", "::1/128"),
        "idle_timeout": 300.0,
    }
    values.update(overrides)
    return SmtpConfig(**values)


class Session:
    """One server protocol on a StringTransport with a Clock: send bytes, read replies."""

    def __init__(
        self,
        intake: FakeIntake | None = None,
        settings: SmtpConfig | None = None,
        tls_options: object = None,
        peer: str = UNTRUSTED_PEER,
        transport_class: type = StringTransport,
        wait_for_greeting: bool = True,
        policy: object = None,
    ):
        """policy: the ISMTPPolicy (by default the MX policy over `intake`)."""
        self.clock = Clock()
        self.intake = intake if intake is not None else FakeIntake()
        self.settings = settings or make_settings()
        if policy is None:
            policy = MXPolicy(self.intake, HOSTNAME, self.settings.relay_networks)
        self.factory = SMTPServerFactory(policy, HOSTNAME, self.settings, self.clock, tls_options)
        address_class = IPv6Address if ":" in peer else IPv4Address
        address = address_class("TCP", peer, 40000)
        self.protocol = self.factory.buildProtocol(address)
        self.transport = transport_class(peerAddress=address)
        self.protocol.makeConnection(self.transport)
        self._read = 0
        if wait_for_greeting:
            self.clock.advance(self.settings.greet_pause)

    def output(self) -> str:
        """Everything written since the last call."""
        value = self.transport.value()
        new, self._read = value[self._read :], len(value)
        return new.decode("utf-8")

    def replies(self) -> list[str]:
        return self.output().splitlines()

    def send(self, data: bytes | str) -> list[str]:
        """Feed raw bytes; return the reply lines they caused."""
        self.protocol.dataReceived(data.encode("utf-8") if isinstance(data, str) else data)
        return self.replies()

    def command(self, line: bytes | str) -> list[str]:
        line = line.encode("utf-8") if isinstance(line, str) else line
        return self.send(line + b"\r\n")

    def ehlo(self, name: str = "client.example.org") -> list[str]:
        return self.command(f"EHLO {name}")

    def start(self, sender: str = "<sender@example.org>", *recipients: str) -> None:
        """EHLO, MAIL and RCPT(s); each must succeed."""
        self.ehlo()
        assert self.command(f"MAIL FROM:{sender}")[0].startswith("250"), sender
        for recipient in recipients or ("<alice@example.com>",):
            reply = self.command(f"RCPT TO:{recipient}")
            assert reply and reply[0].startswith("250"), (recipient, reply)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


# --- submission (port 587/465) --------------------------------------------------------


@attrs.frozen
class SubmitCall:
    login: str
    identity: object
    envelope_sender: str
    local_recipients: tuple
    remote_recipients: tuple
    raw: bytes


@implementer(ISubmissionIntake)
class FakeSubmissionIntake(FakeIntake):
    """An ISubmissionIntake: FakeIntake's directory plus users, passwords and identities.

    By default user "alice" (password "secret") may send as alice@example.com and
    Alice.Sales@Example.COM. hold_auth keeps authenticate's Deferreds in `pending_auths`;
    fail_auth / fail_identities / fail_submit make them fail.
    """

    def __init__(self, addresses=("alice@example.com", "bob@example.com")):
        super().__init__(addresses)
        self.users: dict[str, tuple[str, UserRecord]] = {}
        self.identities: dict[str, tuple[SendingIdentity, ...]] = {}
        self.add_user("alice", "secret", ("alice@example.com", "Alice.Sales@Example.COM"))
        self.hold_auth = False
        self.fail_auth = False
        self.fail_identities = False
        self.fail_submit = False
        self.auth_calls: list[tuple[str, str]] = []
        self.pending_auths: list[Pending] = []
        self.submit_calls: list[SubmitCall] = []

    def add_user(self, login: str, password: str, identities=()) -> UserRecord:
        user = UserRecord(id=len(self.users) + 1, login=login, name=login.title(), is_admin=False)
        self.users[login] = (password, user)
        self.identities[login] = tuple(
            SendingIdentity(mailbox_id=number, mailbox_address=address.lower(), identity=address)
            for number, address in enumerate(identities, start=1)
        )
        return user

    def authenticate(self, login, password):
        self.auth_calls.append((login, password))
        if self.fail_auth:
            return defer.fail(LookupUnavailable("store unreachable"))
        known = self.users.get(login)
        result = known[1] if known is not None and known[0] == password else None
        if self.hold_auth:
            pending = Pending(defer.Deferred(), result)
            self.pending_auths.append(pending)
            return pending.deferred
        return defer.succeed(result)

    def sending_identities(self, login):
        if self.fail_identities:
            return defer.fail(LookupUnavailable("store unreachable"))
        return defer.succeed(self.identities.get(login, ()))

    def submit(self, login, identity, envelope_sender, local_recipients, remote_recipients, raw):
        call = SubmitCall(
            login, identity, envelope_sender, tuple(local_recipients), tuple(remote_recipients), raw
        )
        self.submit_calls.append(call)
        if self.fail_submit:
            return defer.fail(StorageFailed("could not commit"))
        submitted = SubmittedMessage(
            id=self._next_id,
            queue_message_id=self._next_id if remote_recipients else None,
            filings=len(local_recipients) + 1,
            queued_recipients=len(remote_recipients),
        )
        self._next_id += 1
        return defer.succeed(submitted)


class SubmissionSession(Session):
    """A Session on an existing factory, so several connections share its state."""

    def __init__(
        self,
        factory: SMTPServerFactory,
        peer: str = UNTRUSTED_PEER,
        transport_class: type = TLSRecordingTransport,
    ):
        self.factory = factory
        self.clock = factory.clock
        self.intake = factory.policy.intake
        self.settings = factory.settings
        address_class = IPv6Address if ":" in peer else IPv4Address
        address = address_class("TCP", peer, 40000)
        self.protocol = factory.buildProtocol(address)
        self.transport = transport_class(peerAddress=address)
        self.protocol.makeConnection(self.transport)
        self._read = 0
