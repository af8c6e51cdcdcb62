"""`twistd atollon-mail`: command-line options and the service tree of the appliance."""

from __future__ import annotations

import functools
import os

from twisted.application import service, strports
from twisted.internet import ssl
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from atollon_mail.config import Config, ConfigError, default_config_path, load_config
from atollon_mail.delivery.autoresponder import Autoresponder
from atollon_mail.delivery.intake import Intake
from atollon_mail.delivery.mx import MXResolver
from atollon_mail.delivery.outbound import SubmissionPolicy
from atollon_mail.delivery.runner import DeliveryRunner, send_notification
from atollon_mail.delivery.signing import DkimSigner
from atollon_mail.delivery.srs import SRS, load_or_create_srs_secret
from atollon_mail.dns.watcher import DnsWatcher
from atollon_mail.massmail.returns import CampaignReturns
from atollon_mail.massmail.sender import MassMailSender
from atollon_mail.massmail.tokens import RecipientTokens
from atollon_mail.passwords import generate_password, hash_password
from atollon_mail.secretfile import load_or_create_secret
from atollon_mail.smtp.server import SMTPServerFactory
from atollon_mail.smtp.submission import AuthThrottle, SubmissionFactory
from atollon_mail.store import queries
from atollon_mail.store.database import is_sqlite
from atollon_mail.store.pool import Store
from atollon_mail.web import build_web_root

INITIAL_ADMIN_LOGIN = "admin"
DNS_FIRST_CHECK_DELAY = 60.0  # seconds after start before the first DNS round
INITIAL_ADMIN_PASSWORD_FILE = "initial-admin-password"

log = Logger()


class Options(usage.Options):
    synopsis = "[--config FILE] [--smtp ENDPOINT] [--submission ENDPOINT] [--web ENDPOINT]"
    longdesc = (
        "Runs the atollon-mail appliance: inbound SMTP and the web service in one process. "
        "Settings come from the INI file; the endpoint options override its listen keys "
        "(Twisted endpoint descriptions such as tcp:25 or tcp:8080:interface=127.0.0.1)."
    )
    optParameters = [
        [
            "config",
            "c",
            None,
            f"INI configuration file [default: ${{ATOLLON_MAIL_CONFIG}} "
            f"or {default_config_path()}]",
        ],
        ["smtp", None, None, "endpoint for inbound SMTP, overriding [smtp] listen"],
        ["web", None, None, "endpoint for the web service, overriding [web] listen"],
        ["submission", None, None, "endpoint for submission, overriding [submission] listen"],
    ]

    def postOptions(self) -> None:
        path = self["config"] or default_config_path()
        try:
            self.config = load_config(path).replace_listen(
                smtp=self["smtp"], web=self["web"], submission=self["submission"]
            )
        except ConfigError as problem:
            raise usage.UsageError(str(problem)) from None


class StoreService(service.Service):
    """Opens the store before anything listens and closes it after everything stopped."""

    name = "store"

    def __init__(self, store: Store, config: Config):
        self.store = store
        self.config = config
        self._prepared = False

    def privilegedStartService(self) -> None:
        # twistd binds every endpoint in the privileged phase, before any startService;
        # we are the first child, so preparing here means nothing listens until the
        # schema is current and the first admin exists.
        self._prepare()
        super().privilegedStartService()

    def startService(self) -> None:
        self._prepare()  # when started without the privileged phase (tests, embedding)
        super().startService()

    def _prepare(self) -> None:
        """Done synchronously at start-up, before the reactor runs; once."""
        if self._prepared:
            return
        os.makedirs(self.config.appliance.data_dir, mode=0o750, exist_ok=True)
        for migration in self.store.migrate():
            log.info(
                "applied migration {number}: {name}", number=migration.number, name=migration.name
            )
        self._create_first_admin()
        self.store.start()
        self._prepared = True

    def stopService(self) -> None:
        super().stopService()
        self.store.stop()
        self._prepared = False

    def _create_first_admin(self) -> None:
        if self.store.run_sync(queries.has_admin):
            return
        password = generate_password()
        self.store.run_sync(
            queries.add_user,
            INITIAL_ADMIN_LOGIN,
            hash_password(password),
            name="Administrator",
            is_admin=True,
        )
        path = os.path.join(self.config.appliance.data_dir, INITIAL_ADMIN_PASSWORD_FILE)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as password_file:
            password_file.write(password + "\n")
        log.warn(
            "first start: created user {login!r} with password {password!r} "
            "(also in {path}, mode 0600; change it after logging in)",
            login=INITIAL_ADMIN_LOGIN,
            password=password,
            path=path,
        )


def load_tls_options(config: Config):
    smtp = config.smtp
    if not smtp.tls_enabled:
        return None
    try:
        with open(smtp.tls_certificate, "rb") as certificate, open(smtp.tls_key, "rb") as key:
            pem = certificate.read() + b"\n" + key.read()
        return ssl.PrivateCertificate.loadPEM(pem).options()
    except Exception as problem:  # OpenSSL errors have no common base worth naming
        raise ConfigError(
            config.path,
            "smtp",
            "tls_certificate",
            f"cannot load the certificate and key as PEM: {problem}",
        ) from None


class StartStopService(service.Service):
    """Starts and stops a helper that has start() and stop() (thread pools, resolvers)."""

    def __init__(self, name: str, target):
        self.name = name
        self.target = target

    def startService(self) -> None:
        self.target.start()
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        self.target.stop()


MASSMAIL_SECRET = "massmail-secret"


def unsubscribe_base(config: Config) -> str:
    """Where unsubscribe links point: [massmail] unsubscribe_url, else https://hostname."""
    return config.massmail.unsubscribe_url or f"https://{config.appliance.hostname}"


def build_appliance(config: Config, reactor) -> service.MultiService:
    """The whole service tree; nothing is started or bound until it is started."""
    appliance = service.MultiService()
    store = Store.from_url(config.database.url, reactor)
    StoreService(store, config).setServiceParent(appliance)
    # CPU work kept off the reactor thread: password hashing checks and DKIM signing.
    workers = ThreadPool(minthreads=1, maxthreads=2, name="atollon-mail-workers")
    StartStopService("workers", workers).setServiceParent(appliance)
    resolver = MXResolver(reactor, nameservers=config.delivery.nameservers)
    StartStopService("resolver", resolver).setServiceParent(appliance)

    writers = 1 if is_sqlite(store.database) else 2
    srs = SRS(load_or_create_srs_secret(config.delivery.srs_secret, config.appliance.data_dir))
    intake = Intake(store, concurrent_batches=writers, clock=reactor, srs=srs, workers=workers)
    runner = DeliveryRunner(
        store,
        intake,
        resolver,
        config.delivery,
        config.appliance.hostname,
        reactor,
        signer=DkimSigner(store, reactor, workers, config.delivery.dkim_key_retention),
    )
    intake.on_queued = runner.queued
    runner.setServiceParent(appliance)
    intake.filed_listeners.append(Autoresponder(store, intake, config.appliance.hostname, reactor))
    recipient_tokens = RecipientTokens(
        load_or_create_secret(config.massmail.secret, config.appliance.data_dir, MASSMAIL_SECRET)
    )
    returns = CampaignReturns(store, recipient_tokens, reactor)
    intake.campaign_returns = returns
    intake.filed_listeners.append(returns.filed)
    MassMailSender(
        store,
        recipient_tokens,
        config.massmail,
        config.appliance.hostname,
        unsubscribe_base(config),
        reactor,
        on_queued=runner.queued,
        workers=workers,
    ).setServiceParent(appliance)
    DnsWatcher(
        store,
        config,
        reactor,
        functools.partial(send_notification, intake),
        first_check_delay=DNS_FIRST_CHECK_DELAY,
    ).setServiceParent(appliance)

    tls_options = load_tls_options(config)
    smtp_factory = SMTPServerFactory(
        intake, config.appliance.hostname, config.smtp, reactor, tls_options=tls_options
    )
    smtp = strports.service(config.smtp.listen, smtp_factory, reactor=reactor)
    smtp.setName("smtp")
    smtp.setServiceParent(appliance)

    policy = SubmissionPolicy(store, intake, reactor, workers)
    # One failure table for 587 and 465, so a client gets the same few guesses on both.
    throttle = AuthThrottle(reactor)
    submission_factory = SubmissionFactory(
        policy,
        config.appliance.hostname,
        config.smtp,
        reactor,
        tls_options=tls_options,
        auth_throttle=throttle,
    )
    submission = strports.service(config.submission.listen, submission_factory, reactor=reactor)
    submission.setName("submission")
    submission.setServiceParent(appliance)
    if config.submission.tls_listen:
        implicit_factory = SubmissionFactory(
            policy,
            config.appliance.hostname,
            config.smtp,
            reactor,
            tls_options=tls_options,
            implicit_tls=True,
            auth_throttle=throttle,
        )
        # Port 465: TLS from the first byte, then the same submission protocol.
        wrapped = TLSMemoryBIOFactory(tls_options, False, implicit_factory)
        implicit = strports.service(config.submission.tls_listen, wrapped, reactor=reactor)
        implicit.setName("submission-tls")
        implicit.setServiceParent(appliance)

    web_root = build_web_root(
        store, config, reactor, intake=intake, recipient_tokens=recipient_tokens
    )
    web = strports.service(config.web.listen, Site(web_root), reactor=reactor)
    web.setName("web")
    web.setServiceParent(appliance)
    return appliance


def makeService(options: Options, reactor=None) -> service.MultiService:
    import sys

    sys.setswitchinterval(float(__import__("os").environ.get("SWITCH", "0.005")))
    if reactor is None:
        from twisted.internet import reactor
    return build_appliance(options.config, reactor)
