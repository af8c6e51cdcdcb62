"""The DNS subsystem: the watcher that re-checks the domains and mails the admins."""

from __future__ import annotations

import functools

from twisted.application.service import IService

from atollon_mail.cluster import OneNodeAtATime
from atollon_mail.config import Config
from atollon_mail.delivery.runner import send_notification
from atollon_mail.dns.watcher import DnsWatcher
from atollon_mail.events import Events
from atollon_mail.store.records import Origin
from atollon_mail.workers import Workers

FIRST_CHECK_DELAY = 60.0  # seconds after start before the first DNS round


def build(
    config: Config, store, events: Events, workers: Workers, reactor, intake
) -> tuple[IService, ...]:
    """The watcher's checks run in the workers' DNS pool; its notices go to the admins
    through `intake`."""
    watcher = DnsWatcher(
        store,
        config,
        reactor,
        functools.partial(send_notification, intake, origin=Origin("notice")),
        workers.dns,
        first_check_delay=FIRST_CHECK_DELAY,
    )
    # One node at a time re-checks the domains and mails the admins (several nodes on one
    # PostgreSQL database would each send the same notices).
    return (
        OneNodeAtATime(
            "dns-watcher", watcher, store.leases, reactor, config.cluster.check_interval
        ),
    )
