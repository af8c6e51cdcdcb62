"""The delivery subsystem: the intake, the runner, the auto-responder, DKIM signing and
the purge of old Junk."""

from __future__ import annotations

import os

import attrs
from twisted.application.service import IService

from atollon_mail.cluster import OneNodeAtATime
from atollon_mail.config import Config
from atollon_mail.delivery.arc import ArcSealer
from atollon_mail.delivery.autoresponder import Autoresponder
from atollon_mail.delivery.dkim_signer import DkimSigner
from atollon_mail.delivery.dotjournal import JOURNAL_DIRECTORY, DotJournal
from atollon_mail.delivery.intake import Intake, SubmissionIntake
from atollon_mail.delivery.junkpurge import JunkPurger
from atollon_mail.delivery.mx import MXResolver
from atollon_mail.delivery.runner import DeliveryRunner
from atollon_mail.delivery.srs import SRS, load_or_create_srs_secret
from atollon_mail.events import Events
from atollon_mail.workers import Workers

# Where the runner writes down final dots before sending them, below data_dir.


@attrs.frozen
class Delivery:
    intake: Intake
    submission_intake: SubmissionIntake  # what the submission policy asks of the store
    runner: DeliveryRunner
    autoresponder: Autoresponder
    signer: DkimSigner
    services: tuple[IService, ...]


def build(
    config: Config,
    store,
    events: Events,
    workers: Workers,
    reactor,
    return_addresses=None,
    metrics=None,
    dots_allowed=None,
) -> Delivery:
    """The intake fires `queued` and `filed`; the runner wakes on `queued`, the
    auto-responder hears `filed`. `return_addresses` resolves the addresses producers
    hear back at (see Intake). Group commits and delivery outcomes are counted on
    `metrics`. `dots_allowed`: the runner's fence with several nodes (see
    cluster.ClaimKeeper.confirmed)."""
    writers = 1 if store.is_sqlite else 2
    srs = SRS(load_or_create_srs_secret(config.delivery.srs_secret, config.appliance.data_dir))
    sealer = ArcSealer(store, config.appliance.hostname, reactor, workers.cpu)
    intake = Intake(
        store,
        events,
        concurrent_batches=writers,
        clock=reactor,
        srs=srs,
        workers=workers.cpu,
        return_addresses=return_addresses,
        sealer=sealer,
        metrics=metrics,
    )
    resolver = MXResolver(reactor, workers.dns, nameservers=config.delivery.nameservers)
    signer = DkimSigner(store, reactor, workers.cpu, config.delivery.dkim_key_retention)
    hostname = config.appliance.hostname
    runner = DeliveryRunner(
        store,
        intake,
        resolver,
        config.delivery,
        hostname,
        reactor,
        signer=signer,
        events=events,
        journal=DotJournal(os.path.join(config.appliance.data_dir, JOURNAL_DIRECTORY)),
        metrics=metrics,
        dots_allowed=dots_allowed,
    )
    autoresponder = Autoresponder(store, intake, hostname, reactor, events)
    purger = JunkPurger(store, config.spam.junk_retention_days, reactor)
    return Delivery(
        intake,
        SubmissionIntake(store, intake),
        runner,
        autoresponder,
        signer,
        # One node at a time purges (several on one PostgreSQL database would race).
        services=(
            runner,
            OneNodeAtATime(
                "junk-purger", purger, store.leases, reactor, config.cluster.check_interval
            ),
        ),
    )
