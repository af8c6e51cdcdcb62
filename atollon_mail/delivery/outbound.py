"""The submission policy: whom a logged-in user may send as, and where their mail goes."""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from atollon_mail.delivery.intake import Intake, summarize_headers
from atollon_mail.interfaces import ISubmissionPolicy
from atollon_mail.store import queries
from atollon_mail.store.records import OutgoingMessage, SendingIdentity


@implementer(ISubmissionPolicy)
class SubmissionPolicy:
    """Passwords are not checked here: the appliance's one authenticator (auth.py) does."""

    def __init__(self, store, intake: Intake):
        self._store = store
        self._intake = intake

    def resolve_recipient(self, local_part: str, domain: str) -> defer.Deferred:
        return self._intake.resolve_recipient(local_part, domain)

    def accept(self, envelope_sender, recipients, raw) -> defer.Deferred:
        return self._intake.accept(envelope_sender, recipients, raw)

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
