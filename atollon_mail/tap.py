"""`twistd atollon-mail`: command-line options and the service tree of the appliance."""

from __future__ import annotations

import functools
import gc
import os
import resource
import time
from collections.abc import Callable

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from atollon_mail import affinity
from atollon_mail.auth import build_authenticator
from atollon_mail.backup import build as backup_build
from atollon_mail.certificates import build as certificates_build
from atollon_mail.certificates.challenges import ChallengeAnswers
from atollon_mail.certificates.renewal import load_kept
from atollon_mail.cluster import ClaimKeeper
from atollon_mail.config import (
    Config,
    ConfigError,
    default_config_path,
    hostname_problem,
    load_config,
)
from atollon_mail.connections import descriptor_shortfall
from atollon_mail.delivery import build as delivery_build
from atollon_mail.dns import build as dns_build
from atollon_mail.events import Events
from atollon_mail.imap import build as imap_build
from atollon_mail.inbound.rspamd import build_spam_filter
from atollon_mail.massmail import build as massmail_build
from atollon_mail.metrics import Metrics
from atollon_mail.passwords import generate_password, hash_password
from atollon_mail.selfsigned import load_or_create_self_signed
from atollon_mail.smtp import build as smtp_build
from atollon_mail.store import accounts
from atollon_mail.store.leases import node_lock_name
from atollon_mail.store.pool import Store
from atollon_mail.tlscontext import ReloadableTLSOptions, load_files
from atollon_mail.web import build as web_build
from atollon_mail.workers import Workers

INITIAL_ADMIN_LOGIN = "admin"
INITIAL_ADMIN_PASSWORD_FILE = "initial-admin-password"
# How long a starting node asks again for its node lock before it refuses to start (its
# name is taken by a running node).
NODE_LOCK_WAIT = 5.0

log = Logger()


class Options(usage.Options):
    synopsis = (
        "[--config FILE] [--smtp ENDPOINT] [--submission ENDPOINT] [--imap ENDPOINT] "
        "[--web ENDPOINT]"
    )
    longdesc = (
        "Runs the atollon-mail appliance: inbound SMTP, submission, IMAP and the web "
        "service in one process. "
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
        ["imap", None, None, "endpoint for IMAP, overriding [imap] listen"],
    ]

    def postOptions(self) -> None:
        # A configuration error is one line and exit status 1: raising UsageError here
        # would have twistd print its whole usage text above it.
        path = self["config"] or default_config_path()
        try:
            self.config = load_config(path).replace_listen(
                smtp=self["smtp"],
                web=self["web"],
                submission=self["submission"],
                imap=self["imap"],
            )
            check_endpoints(self.config, self._reactor(), self)
        except ConfigError as problem:
            raise SystemExit(f"atollon-mail: {problem}") from None

    def _reactor(self):
        # Only to parse the endpoint descriptions: nothing is bound or run here.
        from twisted.internet import reactor

        return reactor


# (service name, section, key) of each listener; the service names are build_appliance's.
LISTENERS = (
    ("smtp", "smtp", "listen"),
    ("submission", "submission", "listen"),
    ("submission-tls", "submission", "tls_listen"),
    ("imap", "imap", "listen"),
    ("imap-tls", "imap", "tls_listen"),
    ("web", "web", "listen"),
    ("web-tls", "web", "tls_listen"),
)


def listener_settings(config: Config) -> dict[str, tuple[str, str, str]]:
    """Service name -> (section, key, endpoint description) of each configured listener."""
    settings = {}
    for name, section, key in LISTENERS:
        description = getattr(getattr(config, section), key)
        if description:
            settings[name] = (section, key, description)
    return settings


def check_endpoints(config: Config, reactor, options=None) -> None:
    """Raise ConfigError naming the setting (or the command-line option) whose endpoint
    description Twisted cannot parse."""
    for name, (section, key, description) in listener_settings(config).items():
        try:
            endpoints.serverFromString(reactor, description)
        except Exception as problem:  # each endpoint parser fails its own way
            reason = str(problem) or type(problem).__name__
            text = (
                f"{description!r} is not a usable Twisted endpoint ({reason}); "
                "e.g. tcp:2525 or tcp:2525:interface=127.0.0.1"
            )
            option = name if options is not None and key == "listen" else None
            if option and options.get(option):
                raise ConfigError(f"--{option}", None, None, text) from None
            raise ConfigError(config.path, section, key, text) from None


class Appliance(service.MultiService):
    """The service tree; a port that cannot be bound stops start-up with one line."""

    def __init__(
        self,
        listeners: dict[str, tuple[str, str, str]],
        on_start_failure: Callable[[str], None] | None = None,
        tune_gc_at_start: bool = False,
        cpu: str | int = affinity.OFF,
    ):
        super().__init__()
        self.listeners = listeners
        # Told the line before start-up ends (twistd's waiting parent, when daemonized).
        self.on_start_failure = on_start_failure
        self.tune_gc_at_start = tune_gc_at_start
        self.cpu = cpu

    def startService(self) -> None:
        # Pinned first: the threads the services start inherit the CPU, the processes
        # they start are given the machine's (affinity.unpinned).
        if self.cpu != affinity.OFF:
            try:
                affinity.pin_process(self.cpu)
            except (OSError, ValueError) as problem:
                log.error("the appliance's threads are not pinned: {problem}", problem=problem)
        super().startService()
        if self.tune_gc_at_start:
            tune_garbage_collector()

    def privilegedStartService(self) -> None:
        # twistd binds the listeners here, before the reactor runs. A port in use would
        # otherwise end in a traceback with the store's threads keeping the process alive.
        service.Service.privilegedStartService(self)
        started = []
        for child in self:
            try:
                child.privilegedStartService()
            except CannotListenError as problem:
                for done in reversed(started):
                    done.stopService()
                message = self._cannot_listen(child.name, problem)
                if self.on_start_failure is not None:
                    self.on_start_failure(message)
                raise SystemExit(message) from None
            started.append(child)

    def _cannot_listen(self, name: str, problem: CannotListenError) -> str:
        section, key, description = self.listeners.get(name, (None, None, "?"))
        reason = problem.socketError
        reason = getattr(reason, "strerror", None) or str(reason)
        return (
            f"atollon-mail: cannot listen for {name} on {description}: {reason}; "
            f"stop whatever uses it or change [{section}] {key}"
        )


# Young objects collected after this many more allocations than deallocations (Python's
# default is 700). A relayed message's objects (its session, records, Deferreds) live
# until its commit, tens of milliseconds: at 700 about 30 young collections ran per
# second at a thousand messages per second, walking objects about to die anyway
# (bench/relay.py: 19 us of collector CPU per message with start-up frozen, 6 us with
# this). Cyclic garbage waits a little longer for its collection; nothing else changes.
YOUNG_COLLECTION_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """What start-up made (modules, configuration, the service tree) lives as long as the
    process: moved out of the garbage collector's sight (gc.freeze), so its full
    collections walk only what came after. Each took about 55 ms with start-up's objects
    in it and 8 to 15 ms without; relaying (bench/relay.py) spent 23 us of CPU per message
    in them before, 3 to 6 us after. Frozen objects are still freed when nothing refers
    to them; only a reference cycle among them would stay. Young collections are made
    rarer too (YOUNG_COLLECTION_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


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
        self._take_node_lock()
        self.store.start()
        self._prepared = True

    def _take_node_lock(self) -> None:
        """Several nodes on one PostgreSQL database: this node's own lock, held while it
        runs, taken before its runner claims anything (cluster.ClaimKeeper keeps it)."""
        node = self.store.node
        if node is None or self.store.leases.always_held:
            return
        # A peer's release transaction (queue.release_dead_claims) holds the lock for a
        # moment: asked again for a few seconds before another node is taken to run. This
        # runs in start-up's privileged phase, before the reactor runs and before anything
        # listens, so the sleep below holds up no one but this start.
        deadline = time.monotonic() + NODE_LOCK_WAIT
        while not self.store.leases.take_now(node_lock_name(node)):
            if time.monotonic() >= deadline:
                raise SystemExit(
                    f"atollon-mail: another running node is named {node!r}: give each node "
                    "its own [cluster] node_name"
                )
            time.sleep(0.5)

    def stopService(self) -> None:
        super().stopService()
        self.store.stop()
        self._prepared = False

    def _create_first_admin(self) -> None:
        if self.store.run_sync(accounts.has_admin):
            return
        password = generate_password()
        self.store.run_sync(
            accounts.add_user,
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


def load_tls_options(config: Config) -> ReloadableTLSOptions:
    """The TLS options for STARTTLS and implicit TLS: the configured certificate; with
    [tls] acme, the CA's certificate kept in the data directory; else the self-signed
    one kept there (made on the first start). With acme the certificates service
    replaces it inside the returned object as new ones arrive."""
    smtp = config.smtp
    if config.tls.acme:
        kept = load_kept(config.appliance.data_dir)
        if kept is not None:
            return ReloadableTLSOptions(kept)
    if smtp.tls_enabled:
        certificate_path, key_path = smtp.tls_certificate, smtp.tls_key
        advice = ""
    else:
        certificate_path, key_path = load_or_create_self_signed(
            config.appliance.data_dir, config.appliance.hostname
        )
        advice = f"; remove {certificate_path} and {key_path} to have new ones made"
    try:
        return ReloadableTLSOptions(load_files(certificate_path, key_path))
    except Exception as problem:  # OpenSSL errors have no common base worth naming
        raise ConfigError(
            config.path,
            "smtp",
            "tls_certificate",
            f"cannot load {certificate_path} and {key_path} as PEM: {problem}{advice}",
        ) from None


def check_descriptor_limit(config: Config) -> None:
    caps = [config.smtp.max_connections, config.submission.max_connections]
    caps.append(config.web.max_connections)
    if config.web.tls_listen:
        caps.append(config.web.max_connections)
    if config.submission.tls_listen:
        caps.append(config.submission.max_connections)
    imap_cap = config.imap.max_connections + config.imap.max_idle_connections
    caps.append(imap_cap)
    if config.imap.tls_listen:
        caps.append(imap_cap)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    problem = descriptor_shortfall(caps, config.delivery.max_concurrency, soft)
    if problem is not None:
        log.warn("{problem}", problem=problem)


def warn_about_hostname(config: Config) -> None:
    problem = hostname_problem(config.appliance)
    if problem:
        log.warn("{problem}", problem=problem)


def warn_about_node_secrets(config: Config) -> None:
    """On PostgreSQL (several nodes may share it) the secrets every node must share are
    best set in the configuration: one kept in the data directory is this node's own,
    made at random on its first start, and must be copied to the others."""
    if config.database.url.startswith("sqlite:"):
        return
    unset = [
        name
        for name, value in (
            ("[delivery] srs_secret", config.delivery.srs_secret),
            ("[massmail] secret", config.massmail.secret),
        )
        if not value
    ]
    if unset:
        log.info(
            "node {node!r}: {unset} come from the data directory; with more than one node "
            "set them alike on every node (README: More than one box)",
            node=config.cluster.node_name,
            unset=" and ".join(unset),
        )


def build_appliance(
    config: Config,
    reactor,
    on_start_failure: Callable[[str], None] | None = None,
    tune_gc_at_start: bool = False,
) -> service.MultiService:
    """The whole service tree; nothing is started or bound until it is started.
    `tune_gc_at_start`: the process is the appliance's own (twistd), so its garbage
    collector is tuned once started (tune_garbage_collector) and its threads are put on
    one CPU as `[appliance] cpu` says (affinity.pin_process); not for a test run.

    Each subsystem's builder takes what it needs and returns its services; the events
    object and the worker pools are made first and passed in, so nothing is wired by
    patching an object after it was built."""
    warn_about_hostname(config)
    warn_about_node_secrets(config)
    appliance = Appliance(
        listener_settings(config),
        on_start_failure,
        tune_gc_at_start,
        cpu=config.appliance.cpu if tune_gc_at_start else affinity.OFF,
    )
    events = Events()
    # One registry per appliance, served at /metrics; what counts is given it.
    metrics = Metrics()
    # The node's name goes with its delivery claims and the news it tells the other
    # nodes on the same PostgreSQL database; theirs reaches the events (events.heard).
    store = Store.from_url(
        config.database.url,
        reactor,
        changed=events.changed.fire,
        operation_seconds=metrics.store_operation_seconds,
        # Unnamed: one box; no notices, no named claims, no node lock.
        node=config.cluster.node_name or None,
        news=events.heard,
    )
    workers = Workers(reactor)
    # The store first: it is ready before anything listens (StoreService).
    services = [StoreService(store, config), workers]
    keeper = None
    if config.cluster.node_name and not store.is_sqlite:
        keeper = ClaimKeeper(
            store,
            config.cluster.node_name,
            reactor,
            released=events.queued.fire,
            interval=config.cluster.check_interval,
        )
        services.append(keeper)
    massmail = massmail_build.build(config, store, events, workers, reactor)
    delivery = delivery_build.build(
        config,
        store,
        events,
        workers,
        reactor,
        return_addresses=massmail.returns,
        metrics=metrics,
        dots_allowed=None if keeper is None else keeper.confirmed,
    )
    intake = delivery.intake
    services += [*delivery.services, *massmail.services]
    services += dns_build.build(config, store, events, workers, reactor, intake)
    services += backup_build.build(config, store, events, workers, reactor)
    tls_options = load_tls_options(config)
    # The CA's HTTP-01 challenges: answered by the web service, set by the certificates
    # service's thread.
    challenge_answers = ChallengeAnswers()
    services += certificates_build.build(
        config, store, events, workers, reactor, tls_options, challenge_answers
    )
    check_descriptor_limit(config)
    # One password check and one throttle for 587, 465, IMAP and the web login, so a client gets
    # the same few guesses on all of them; argon2 runs in the CPU workers.
    authenticator = build_authenticator(store, reactor, workers.cpu)
    # The spam filter ([spam] rspamd_url, or None): asked on port 25 before the 250.
    spam_filter = build_spam_filter(config, reactor)
    services += smtp_build.build(
        config,
        store,
        events,
        workers,
        reactor,
        intake,
        delivery.submission_intake,
        authenticator,
        tls_options,
        spam_filter=spam_filter,
        metrics=metrics,
    )
    services += imap_build.build(
        config,
        store,
        events,
        workers,
        reactor,
        authenticator,
        tls_options,
        spam_filter=spam_filter,  # moves into Junk and out of it teach it
        metrics=metrics,
    )
    services += web_build.build(
        config,
        store,
        events,
        workers,
        reactor,
        intake,
        authenticator,
        massmail.tokens,
        learner=spam_filter,  # "Junk" and "Not junk" teach it
        metrics=metrics,
        tls_options=tls_options,
        challenge_answers=challenge_answers,
    )
    for child in services:
        child.setServiceParent(appliance)
    return appliance


def tac_application(path: str, reactor) -> service.Application:
    """The application of `twistd -ny tap/atollon-mail.tac`: a configuration error is
    one line and exit status 1 there too, not twistd's traceback."""
    try:
        config = load_config(path)
        check_endpoints(config, reactor)
    except ConfigError as problem:
        raise SystemExit(f"atollon-mail: {problem}") from None
    application = service.Application("atollon-mail")
    build_appliance(config, reactor, tune_gc_at_start=True).setServiceParent(application)
    return application


def makeService(options: Options, reactor=None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    return build_appliance(
        options.config,
        reactor,
        functools.partial(tell_daemon_parent, options),
        tune_gc_at_start=True,
    )


def tell_daemon_parent(options: Options, message: str) -> None:
    """When twistd daemonized, its first process waits for a status on a pipe and never
    sees it close: write the failure there as twistd's own format has it ("1 " and at
    most 100 bytes), so that it prints the line and exits 1 instead of waiting forever."""
    server_options = getattr(options, "parent", None)
    pipe = server_options.get("statusPipe") if server_options is not None else None
    if pipe is None:
        return
    os.write(pipe, b"1 " + message.removeprefix("atollon-mail: ").encode()[:98])
    os.close(pipe)
    server_options["statusPipe"] = None
