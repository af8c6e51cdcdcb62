"""The mass-mail subsystem: the sender, the recipient tokens and what comes back."""

from __future__ import annotations

import attrs
from twisted.application.service import IService

from atollon_mail.config import Config
from atollon_mail.events import Events
from atollon_mail.massmail.returns import CampaignReturns
from atollon_mail.massmail.sender import MassMailSender
from atollon_mail.massmail.tokens import RecipientTokens, unsubscribe_base
from atollon_mail.secretfile import load_or_create_secret
from atollon_mail.workers import Workers

SECRET_FILE = "massmail-secret"


@attrs.frozen
class MassMail:
    sender: MassMailSender
    returns: CampaignReturns  # the intake resolves campaign addresses through it
    tokens: RecipientTokens  # the web's unsubscribe pages read them
    services: tuple[IService, ...]


def build(config: Config, store, events: Events, workers: Workers, reactor) -> MassMail:
    """The sender fires `queued` after each hand-over; the returns hear `filed`."""
    tokens = RecipientTokens(
        load_or_create_secret(config.massmail.secret, config.appliance.data_dir, SECRET_FILE)
    )
    returns = CampaignReturns(store, tokens, reactor, events)
    sender = MassMailSender(
        store,
        tokens,
        config.massmail,
        config.appliance.hostname,
        unsubscribe_base(config),
        reactor,
        events=events,
        workers=workers.cpu,
    )
    return MassMail(sender, returns, tokens, services=(sender,))
