"""The submission policy: who may log in, whom they may send as, and where their mail goes."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from atollon_mail.delivery.intake import Intake, summarize_headers
from atollon_mail.interfaces import ISubmissionPolicy
from atollon_mail.passwords import hash_password, verify_password
from atollon_mail.store import queries
from atollon_mail.store.records import OutgoingMessage, SendingIdentity

# Verified against when the login does not exist, so a wrong login costs as long as a
# wrong password and the timing does not tell which logins exist.
_UNKNOWN_USER_HASH = hash_password("no such user: this hash never verifies a real password")


@implementer(ISubmissionPolicy)
class SubmissionPolicy:
    def __init__(self, store, intake: Intake, reactor, threadpool):
        self._store = store
        self._intake = intake
        self._reactor = reactor
        self._threadpool = threadpool  # argon2 verification is CPU work: never the reactor's

    def resolve_recipient(self, local_part: str, domain: str) -> defer.Deferred:
        return self._intake.resolve_recipient(local_part, domain)

    def accept(self, envelope_sender, recipients, raw) -> defer.Deferred:
        return self._intake.accept(envelope_sender, recipients, raw)

    @defer.inlineCallbacks
    def authenticate(self, login: str, password: str):
        found = yield self._store.run(queries.authenticate_lookup, login)
        user, password_hash = found if found is not None else (None, _UNKNOWN_USER_HASH)
        valid = yield deferToThreadPool(
            self._reactor, self._threadpool, verify_password, password_hash, password
        )
        return user if (valid and user is not None) else None

    def sending_identities(self, login: str) -> defer.Deferred:
        return self._store.run(queries.sending_identities, login)

    def submit(
        self,
        login: str,
        identity: SendingIdentity,
        envelope_sender: str,
        local_recipients,
        remote_recipients,
        raw: bytes,
    ) -> defer.Deferred:
        return self._intake.submit(
            OutgoingMessage(
                envelope_sender=envelope_sender,
                raw=raw,
                local_recipients=tuple(local_recipients),
                remote_recipients=tuple(remote_recipients),
                sent_mailbox_id=identity.mailbox_id,
                **summarize_headers(raw),
            )
        )
