"""The inbound checks of port 25, built from the configuration ([inbound])."""

from __future__ import annotations

from atollon_mail.config import Config
from atollon_mail.inbound.checkprocess import CheckProcesses
from atollon_mail.inbound.checks import InboundChecks
from atollon_mail.inbound.resolver import inbound_resolver


def build(
    config: Config, store, workers, reactor, spam_filter=None, metrics=None
) -> InboundChecks | None:
    """The checks of [inbound] (None when `checks = off`), asking `spam_filter` when one
    is given (see inbound.checks.InboundChecks); their verdicts counted on `metrics`.
    With [inbound] check_processes, the checks' `processes` is a service of its own
    (inbound.checkprocess.CheckProcesses) for the caller to start and stop."""
    if not config.inbound.checks:
        return None
    processes = None
    if config.inbound.check_processes:
        settings = {
            "nameservers": config.delivery.nameservers,
            "hostname": config.appliance.hostname.lower().rstrip("."),
        }
        processes = CheckProcesses(settings, config.inbound.check_processes, reactor)
    return InboundChecks(
        config.inbound,
        config.appliance.hostname,
        inbound_resolver(config),
        workers,
        store,
        reactor,
        spam_filter=spam_filter,
        metrics=metrics,
        processes=processes,
    )
