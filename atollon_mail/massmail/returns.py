"""Mail that comes back to a campaign: bounces to the VERP return path and unsubscribe
requests to the List-Unsubscribe mailto address.

Both addresses carry a signed token naming the send-list row. The SMTP server accepts
mail to them like mail to the campaign's sending mailbox (it is filed there, so a person
can read what came back); once it is stored, the row is updated: a permanent bounce marks
it bounced and suppresses the address, an unsubscribe suppresses it.
"""

from __future__ import annotations

import datetime

from twisted.logger import Logger

from atollon_mail.events import Events
from atollon_mail.massmail.bounces import read_bounce
from atollon_mail.massmail.tokens import RecipientTokens
from atollon_mail.store import campaign_recipients
from atollon_mail.store.records import Rejection

log = Logger()


class CampaignReturns:
    """Resolves the campaign addresses for the intake (`resolve`) and hears of mail filed
    to them (`filed`, subscribed to `events.filed`)."""

    def __init__(self, store, tokens: RecipientTokens, clock, events: Events):
        self._store = store
        self._tokens = tokens
        self._clock = clock
        events.filed.subscribe(self.filed)

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC).replace(
            tzinfo=None
        )

    def resolve(self, local_part: str, domain: str):
        """A Deferred with the Recipient (the campaign's mailbox) for one of our bounce or
        unsubscribe addresses, or None when local_part is not one (then the ordinary
        lookup runs)."""
        found = self._tokens.read_local_part(local_part)
        if found is None:
            return None
        purpose, recipient_id = found
        address = f"{local_part.lower()}@{domain.lower().rstrip('.')}"
        resolved = self._store.run(
            campaign_recipients.campaign_address_recipient, purpose, recipient_id, address
        )
        return resolved.addCallback(
            lambda recipient: (
                recipient
                if recipient is not None
                else Rejection("unknown-address", f"{address} is no longer an address here")
            )
        )

    def filed(self, envelope_sender: str, recipients, raw: bytes, junk=frozenset()) -> None:
        """Subscriber of events.filed: mail to our addresses has been stored (bounces and
        unsubscribe replies count wherever they were filed, Junk too)."""
        for recipient in recipients:
            found = self._tokens.read_local_part(recipient.address.rpartition("@")[0])
            if found is None:
                continue
            purpose, recipient_id = found
            if purpose == "bounce":
                reading = read_bounce(raw)
                if reading.kind == "none":
                    continue
                done = self._store.run(
                    campaign_recipients.record_bounce,
                    recipient_id,
                    reading.kind == "permanent",
                    reading.reply,
                    self._now(),
                )
            else:
                done = self._store.run(
                    campaign_recipients.unsubscribe_row, recipient_id, "mail", self._now()
                )
            done.addErrback(
                lambda failure, row=recipient_id: log.failure(
                    "recording what came back for send-list row {row} failed", failure, row=row
                )
            )
