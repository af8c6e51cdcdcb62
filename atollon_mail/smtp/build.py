"""The SMTP listeners: inbound on port 25, submission on 587 and, when configured, 465."""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import IService
from twisted.protocols.tls import TLSMemoryBIOFactory

from atollon_mail.config import Config
from atollon_mail.events import Events
from atollon_mail.inbound import build as inbound_build
from atollon_mail.listening import limited
from atollon_mail.smtp.policies import MXPolicy, SubmissionPolicy
from atollon_mail.smtp.server import SMTPServerFactory
from atollon_mail.smtp.session import IMPLICIT_TLS_LISTENER, SUBMISSION_LISTENER
from atollon_mail.workers import Workers


def build(
    config: Config,
    store,
    events: Events,
    workers: Workers,
    reactor,
    intake,
    submission_intake,
    authenticator,
    tls_options,
    spam_filter=None,
    metrics=None,
) -> tuple[IService, ...]:
    """The "smtp", "submission" and "submission-tls" listeners, each with its connection
    caps: one protocol, the MX policy on port 25 (mail goes to `intake` once the inbound
    checks of [inbound], asking `spam_filter` when one is given, accept it) and the
    submission policy on 587 and 465 (`submission_intake`; AUTH checked by
    `authenticator`, the one the web uses); STARTTLS and implicit TLS use `tls_options`.
    Sessions, messages, recipients and the inbound verdicts are counted on `metrics`.
    With [inbound] check_processes the "inbound-checks" service (the check processes)
    comes first."""
    hostname = config.appliance.hostname
    services = []
    checks = inbound_build.build(
        config, store, workers, reactor, spam_filter=spam_filter, metrics=metrics
    )
    if checks is not None and checks.processes is not None:
        # Before the listener, so stopped after it; sessions still open then are told
        # 451 for a message whose check is not done (CheckProcesses.stopService).
        services.append(checks.processes)
    mx_policy = MXPolicy(intake, hostname, config.smtp.relay_networks, checks)
    smtp_factory = SMTPServerFactory(
        mx_policy, hostname, config.smtp, reactor, tls_options=tls_options, metrics=metrics
    )
    smtp_factory = limited(smtp_factory, "smtp", config.smtp, config, reactor, metrics=metrics)
    smtp = strports.service(config.smtp.listen, smtp_factory, reactor=reactor)
    smtp.setName("smtp")
    services.append(smtp)

    policy = SubmissionPolicy(submission_intake, authenticator, hostname, reactor)
    submission_factory = SMTPServerFactory(
        policy,
        hostname,
        config.smtp,
        reactor,
        tls_options=tls_options,
        listener=SUBMISSION_LISTENER,
        metrics=metrics,
    )
    submission_factory = limited(
        submission_factory, "submission", config.submission, config, reactor, metrics=metrics
    )
    submission = strports.service(config.submission.listen, submission_factory, reactor=reactor)
    submission.setName("submission")
    services.append(submission)
    if config.submission.tls_listen:
        implicit_factory = SMTPServerFactory(
            policy,
            hostname,
            config.smtp,
            reactor,
            tls_options=tls_options,
            listener=IMPLICIT_TLS_LISTENER,
            metrics=metrics,
        )
        # Port 465: TLS from the first byte, then the same submission protocol. Counted
        # inside TLS, so a refused client reads its 421 once the handshake is done.
        implicit_factory = limited(
            implicit_factory, "submission-tls", config.submission, config, reactor, metrics=metrics
        )
        wrapped = TLSMemoryBIOFactory(tls_options, False, implicit_factory)
        implicit = strports.service(config.submission.tls_listen, wrapped, reactor=reactor)
        implicit.setName("submission-tls")
        services.append(implicit)
    return tuple(services)
