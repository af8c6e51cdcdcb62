"""What every listener of the appliance shares: its connection caps."""

from __future__ import annotations

import functools

from atollon_mail.config import Config
from atollon_mail.connections import LimitedFactory
from atollon_mail.metrics import counting
from atollon_mail.smtp.server import connection_refusal
from atollon_mail.web.limits import connection_refusal as web_refusal


def limited(
    factory,
    name: str,
    limits,
    config: Config,
    reactor,
    web: bool = False,
    refusal=None,
    max_idle: int = 0,
    metrics=None,
) -> LimitedFactory:
    """A listener's factory with its [section] max_connections caps; trusted and relay
    networks are exempt from the per-client cap. `refusal(reason)` answers a connection
    over a cap (default: SMTP's 421, or HTTP's 503 for the web); `max_idle` connections
    waiting for news may go past max_connections (LimitedFactory). Refused connections
    are counted on `metrics` (atollon_mail.metrics.Metrics; None: not counted)."""
    if refusal is not None:
        pass
    elif web:
        refusal = web_refusal
    else:
        refusal = functools.partial(connection_refusal, config.appliance.hostname)
    return LimitedFactory(
        factory,
        limits.max_connections,
        limits.max_connections_per_client,
        refusal,
        reactor,
        exempt=config.smtp.trusted_networks + config.smtp.relay_networks,
        name=name,
        wait_for_head=web,
        max_idle=max_idle,
        count_refusal=(
            None
            if metrics is None
            else functools.partial(counting, metrics.refused_connection, name)
        ),
    )
