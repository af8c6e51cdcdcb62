"""The IMAP listeners: "imap" ([imap] listen, STARTTLS) and, when configured, "imap-tls"
([imap] tls_listen, TLS from the first byte; production port 993)."""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import IService
from twisted.protocols.tls import TLSMemoryBIOFactory

from atollon_mail.config import Config
from atollon_mail.events import Events
from atollon_mail.imap.server import IMAPServerFactory, Watchers, connection_refusal
from atollon_mail.listening import limited
from atollon_mail.workers import Workers


def build(
    config: Config,
    store,
    events: Events,
    workers: Workers,
    reactor,
    authenticator,
    tls_options,
    spam_filter=None,
    metrics=None,
) -> tuple[IService, ...]:
    """The IMAP listeners, each with its connection caps ([imap] max_connections for
    active sessions, max_idle_connections more for sessions in IDLE, and
    max_connections_per_client). Logins are checked by `authenticator` (the one SMTP AUTH
    and the web use); mail filed by `events` wakes idling sessions; what users move into
    Junk and out of it teaches `spam_filter` (an ISpamLearner; None: no spam filter).
    Sessions and logins are counted on `metrics`."""
    imap = config.imap
    watchers = Watchers(events)

    def factory(implicit_tls: bool, name: str):
        made = IMAPServerFactory(
            store,
            authenticator,
            config.appliance.hostname,
            imap,
            reactor,
            config.smtp.max_message_size,
            watchers,
            workers.in_cpu,
            tls_options=tls_options,
            implicit_tls=implicit_tls,
            learner=spam_filter,
            metrics=metrics,
        )
        return limited(
            made,
            name,
            imap,
            config,
            reactor,
            refusal=connection_refusal,
            max_idle=imap.max_idle_connections,
            metrics=metrics,
        )

    plain = strports.service(imap.listen, factory(False, "imap"), reactor=reactor)
    plain.setName("imap")
    services = [plain]
    if imap.tls_listen:
        # Counted inside TLS, so a refused client reads its BYE once the handshake is done.
        wrapped = TLSMemoryBIOFactory(tls_options, False, factory(True, "imap-tls"))
        implicit = strports.service(imap.tls_listen, wrapped, reactor=reactor)
        implicit.setName("imap-tls")
        services.append(implicit)
    return tuple(services)
