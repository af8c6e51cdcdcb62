"""The certificates subsystem: with [tls] acme = yes, the service that gets and renews the
host name's certificate from the ACME CA."""

from __future__ import annotations

from twisted.application.service import IService

from atollon_mail.certificates.challenges import ChallengeAnswers
from atollon_mail.certificates.issuer import AcmeIssuer
from atollon_mail.certificates.renewal import CertificateRenewal, ExchangeThread
from atollon_mail.config import Config
from atollon_mail.events import Events
from atollon_mail.tlscontext import ReloadableTLSOptions
from atollon_mail.workers import Workers


def build(
    config: Config,
    store,
    events: Events,
    workers: Workers,
    reactor,
    tls_options: ReloadableTLSOptions,
    answers: ChallengeAnswers,
    clock=None,
) -> tuple[IService, ...]:
    """The "certificates" service when [tls] acme is on (else none): it puts each new
    certificate into `tls_options` (the listeners' one object) and answers the CA's
    challenges through `answers`, which the web service serves. The exchange with the CA
    runs in a daemon thread of the service's own (ExchangeThread): it can take minutes,
    shutdown does not wait for it, and the DNS pool's threads stay free for MX lookups."""
    tls = config.tls
    if not tls.acme:
        return ()
    issuer = AcmeIssuer(
        tls.acme_directory,
        config.appliance.data_dir,
        answers,
        email=tls.acme_email,
        ca_bundle=tls.acme_ca_bundle,
    )
    return (
        CertificateRenewal(
            config.appliance.hostname,
            config.appliance.data_dir,
            tls_options,
            issuer.issue,
            ExchangeThread(reactor).run,
            clock or reactor,
            directory=tls.acme_directory,
        ),
    )
