"""The web subsystem: the site on its listener."""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import IService
from twisted.protocols.tls import TLSMemoryBIOFactory

from atollon_mail.config import Config
from atollon_mail.events import Events
from atollon_mail.listening import limited
from atollon_mail.web import build_web_root
from atollon_mail.web.bodylimit import BodyLimitedRequest
from atollon_mail.web.https import HstsRequest, PlainHttpRoot, https_port
from atollon_mail.web.limits import DeadlineSite
from atollon_mail.web.mailevents import (
    MAX_STREAMS,
    MAX_STREAMS_PER_USER,
    MailEventsService,
    MailEventStreams,
)
from atollon_mail.workers import Workers


def build(
    config: Config,
    store,
    events: Events,
    workers: Workers,
    reactor,
    intake,
    authenticator,
    recipient_tokens,
    learner=None,
    metrics=None,
    tls_options=None,
    challenge_answers=None,
) -> tuple[IService, ...]:
    """The "web" listener: mail composed in the browser goes to `intake`, logins are
    checked by `authenticator` (the one SMTP AUTH uses); what users move to Junk and back
    teaches `learner` (an ISpamLearner; None: no spam filter); the open mailbox pages
    hear of mail `events.filed` tells of; `metrics` are served at /metrics. With [web]
    tls_listen, "web-tls" serves the same site over HTTPS with `tls_options` (the mail
    listeners' certificate, required then) and "web" answers only the ACME challenge,
    /health and /metrics over plain HTTP, redirecting the rest (web.https);
    `challenge_answers` (certificates.challenges.ChallengeAnswers) are served at
    /.well-known/acme-challenge/ on both."""
    # Each open mailbox page holds a connection: at most half the listener's, so that
    # pages still load when many are open.
    mail_events = MailEventStreams(
        store,
        events,
        reactor,
        max_streams=min(MAX_STREAMS, max(1, config.web.max_connections // 2)),
        max_per_user=MAX_STREAMS_PER_USER,
    )
    web_root = build_web_root(
        store,
        config,
        reactor,
        intake,
        workers,
        authenticator,
        recipient_tokens=recipient_tokens,
        learner=learner,
        mail_events=mail_events,
        metrics=metrics,
        challenge_answers=challenge_answers,
    )
    if config.web.tls_listen and tls_options is None:
        raise ValueError("[web] tls_listen needs the listeners' TLS options (tls_options)")

    def site(root, request_factory=BodyLimitedRequest):
        # BodyLimitedRequest refuses a body over its route's limit before reading it.
        return DeadlineSite(
            root,
            reactor,
            header_timeout=config.web.header_timeout,
            body_timeout=config.web.body_timeout,
            requestFactory=request_factory,
        )

    if config.web.tls_listen:
        # The site is served over HTTPS: plain HTTP keeps only what needs no TLS.
        plain_root = PlainHttpRoot(
            web_root, config.appliance.hostname, https_port(config.web.tls_listen)
        )
        plain = limited(
            site(plain_root), "web", config.web, config, reactor, web=True, metrics=metrics
        )
    else:
        # TLS, if any, ends in a reverse proxy in front.
        plain = limited(
            site(web_root), "web", config.web, config, reactor, web=True, metrics=metrics
        )
    web = strports.service(config.web.listen, plain, reactor=reactor)
    web.setName("web")
    # Stopped after the listeners (a MultiService stops its children last to first).
    services: list[IService] = [MailEventsService(mail_events), web]
    if config.web.tls_listen:
        # Counted inside TLS, as the other implicit-TLS listeners: a refused client
        # reads its 503 once the handshake is done.
        secure = limited(
            site(web_root, HstsRequest),
            "web-tls",
            config.web,
            config,
            reactor,
            web=True,
            metrics=metrics,
        )
        wrapped = TLSMemoryBIOFactory(tls_options, False, secure)
        web_tls = strports.service(config.web.tls_listen, wrapped, reactor=reactor)
        web_tls.setName("web-tls")
        services.append(web_tls)
    return tuple(services)
