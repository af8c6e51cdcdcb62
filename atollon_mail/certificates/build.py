"""The certificates subsystem: with [tls] acme = yes, the service that gets and renews the
host name's certificate from the ACME CA."""

from __future__ import annotations

import ipaddress
import re

from twisted.application.service import IService
from twisted.logger import Logger

from atollon_mail.certificates.challenges import ChallengeAnswers
from atollon_mail.certificates.issuer import AcmeIssuer
from atollon_mail.certificates.renewal import CertificateRenewal, ExchangeThread
from atollon_mail.config import Config
from atollon_mail.events import Events
from atollon_mail.tlscontext import ReloadableTLSOptions
from atollon_mail.workers import Workers

log = Logger()


def listen_problem(config: Config) -> str | None:
    """With [tls] acme, why the CA cannot reach the HTTP-01 answers, when [web] listen
    is loopback-only (the default configuration's): one line saying what to set."""
    listen = config.web.listen
    fields = re.split(r"(?<!\\):", listen)
    named = dict(field.split("=", 1) for field in fields[1:] if "=" in field)
    interface = named.get("interface", "").replace("\\:", ":").strip("[]")
    try:
        loopback = interface == "localhost" or ipaddress.ip_address(interface).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return None
    return (
        f"[tls] acme = yes but [web] listen = {listen} takes connections from this machine "
        "only, so the CA cannot check the HTTP-01 challenge unless a proxy on this host "
        "passes port 80 to it: set [web] listen = tcp:80 (and tls_listen = tcp:443)"
    )


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
    problem = listen_problem(config)
    if problem is not None:
        log.warn("{problem}", problem=problem)
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
