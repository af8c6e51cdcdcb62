"""The twistd plugin: options, configuration errors, and the service tree it builds."""

from __future__ import annotations

import gc
import os
import re
import smtplib
import ssl as ssl_module
import stat
import subprocess
import sys
import time

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from atollon_mail import affinity, selfsigned, tap
from atollon_mail.config import CONFIG_ENVIRONMENT_VARIABLE as CONFIG_VARIABLE
from atollon_mail.config import ConfigError, load_config
from atollon_mail.delivery import junkpurge
from atollon_mail.dns import build as dns_build
from atollon_mail.interfaces import IAuthenticator
from atollon_mail.passwords import verify_password
from atollon_mail.store import accounts
from atollon_mail.web.bodylimit import BodyLimitedRequest
from atollon_mail.web.limits import DeadlineSite
from atollon_mail.web.mailevents import StreamsFull
from atollon_mail.workers import CPU_THREADS
from tests.support import free_port


def write_config(testcase, text: str) -> str:
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    path = os.path.join(directory, "atollon-mail.ini")
    with open(path, "w") as config_file:
        config_file.write(text.replace("{dir}", directory))
    return path


MINIMAL = """
[appliance]
hostname = mx.acme.test
data_dir = {dir}/data
[database]
url = sqlite:///{dir}/data/store.sqlite
"""


class OptionsTests(unittest.TestCase):
    def test_help_documents_config_and_endpoint_overrides(self):
        text = str(tap.Options())
        for option in ("--config", "--smtp", "--web", "--imap"):
            self.assertIn(option, text)

    def test_endpoint_overrides_replace_the_configured_listeners(self):
        options = tap.Options()
        options.parseOptions(
            ["--config", write_config(self, MINIMAL), "--smtp", "tcp:2600", "--web", "tcp:2601"]
            + ["--imap", "tcp:2602"]
        )
        self.assertEqual(options.config.smtp.listen, "tcp:2600")
        self.assertEqual(options.config.web.listen, "tcp:2601")
        self.assertEqual(options.config.imap.listen, "tcp:2602")

    def test_imap_defaults_and_an_autologout_under_thirty_minutes(self):
        imap = load_config(write_config(self, MINIMAL)).imap
        self.assertEqual((imap.listen, imap.tls_listen), ("tcp:2143", None))
        self.assertEqual((imap.max_connections, imap.max_idle_connections), (100, 200))
        self.assertEqual((imap.idle_timeout, imap.login_timeout), (1800, 60))
        message = self.config_error(
            "--config", write_config(self, MINIMAL + "[imap]\nidle_timeout = 10m\n")
        )
        self.assertIn("[imap] idle_timeout: must be at least 30m", message)

    def config_error(self, *argv: str) -> str:
        """The one line a configuration error exits with (status 1, no usage text)."""
        with self.assertRaises(SystemExit) as raised:
            tap.Options().parseOptions(list(argv))
        message = raised.exception.code
        self.assertIsInstance(message, str)  # printed to stderr by Python; exit status 1
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertTrue(message.startswith("atollon-mail: "), message)
        return message

    def test_bad_value_is_one_line_naming_file_section_and_key(self):
        path = write_config(self, MINIMAL + "[smtp]\nmax_recipients = 10\n")
        message = self.config_error("--config", path)
        for part in (path, "[smtp]", "max_recipients", "at least 100"):
            self.assertIn(part, message)

    def test_missing_config_file_is_named(self):
        self.assertIn("no/such/file.ini", self.config_error("--config", "no/such/file.ini"))

    def test_missing_default_config_file_says_how_to_name_one(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(directory)
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != CONFIG_VARIABLE})
        message = self.config_error()
        self.assertIn("etc/atollon-mail.ini: cannot read the file", message)
        self.assertIn("use --config or ATOLLON_MAIL_CONFIG", message)

    def test_bad_endpoint_option_is_one_line_naming_the_option(self):
        path = write_config(self, MINIMAL)
        message = self.config_error("--config", path, "--smtp", "tcp:notaport")
        self.assertIn("--smtp: 'tcp:notaport' is not a usable Twisted endpoint", message)
        message = self.config_error("--config", path, "--web", "nonsense:1")
        self.assertIn("--web: 'nonsense:1'", message)

    def test_bad_endpoint_in_the_file_names_section_and_key(self):
        path = write_config(self, MINIMAL + "[submission]\ntls_listen = tcp:notaport\n")
        message = self.config_error("--config", path)
        self.assertIn(f"{path}: [submission] tls_listen: 'tcp:notaport'", message)


class SpyReactor(MemoryReactorClock):
    """Records listening ports and the processes it is asked to start (starting none);
    work handed back from threads runs on the real reactor."""

    def __init__(self):
        super().__init__()
        self.processes: list[tuple[str, tuple[str, ...]]] = []

    def spawnProcess(self, protocol, executable, args=(), env=None, *rest, **options):  # noqa: N802
        self.processes.append((executable, tuple(args)))

    def callFromThread(self, function, *args, **kwargs):
        from twisted.internet import reactor

        reactor.callFromThread(function, *args, **kwargs)


class ServiceTreeTests(unittest.TestCase):
    def start(self, config_text: str = MINIMAL):
        self.config = load_config(write_config(self, config_text))
        self.reactor = SpyReactor()
        appliance = tap.build_appliance(self.config, self.reactor)
        appliance.startService()
        self.addCleanup(appliance.stopService)
        return appliance

    def test_twistd_tunes_the_garbage_collector_a_test_run_does_not(self):
        thresholds = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *thresholds)
        self.addCleanup(gc.unfreeze)
        gc.unfreeze()
        self.assertFalse(self.start().tune_gc_at_start)
        self.assertEqual((gc.get_freeze_count(), gc.get_threshold()), (0, thresholds))
        options = tap.Options()
        # cpu = off: started here, it would pin this test process's threads.
        own = MINIMAL.replace("[appliance]\n", "[appliance]\ncpu = off\n")
        options.parseOptions(["--config", write_config(self, own)])
        appliance = tap.makeService(options, SpyReactor())
        self.assertTrue(appliance.tune_gc_at_start)
        self.assertEqual(appliance.cpu, "off")
        appliance.startService()
        self.addCleanup(appliance.stopService)
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertEqual(gc.get_threshold()[0], tap.YOUNG_COLLECTION_THRESHOLD)

    def test_listens_on_the_configured_endpoints(self):
        self.start(
            MINIMAL
            + "[smtp]\nlisten = tcp:2626\n[web]\nlisten = tcp:8181:interface=127.0.0.1\n"
            + "[submission]\nlisten = tcp:2627\n[imap]\nlisten = tcp:2628\n"
        )
        listening = sorted((port, interface) for port, _, _, interface in self.reactor.tcpServers)
        self.assertEqual(listening, [(2626, ""), (2627, ""), (2628, ""), (8181, "127.0.0.1")])

    def test_every_listener_has_its_connection_caps(self):
        self.start(
            MINIMAL
            + "[smtp]\nlisten = tcp:2626\nmax_connections = 70\nmax_connections_per_client = 7\n"
            + "[web]\nlisten = tcp:8181\nmax_connections = 30\nmax_connections_per_client = 3\n"
            + "header_timeout = 11\nbody_timeout = 22\n"
            + "[submission]\nlisten = tcp:2627\nmax_connections = 20\n"
            + "max_connections_per_client = 2\n"
            + "[imap]\nlisten = tcp:2628\nmax_connections = 10\nmax_connections_per_client = 4\n"
            + "max_idle_connections = 5\n"
        )
        factories = {port: factory for port, factory, _, _ in self.reactor.tcpServers}
        caps = {
            port: (factory.max_connections, factory.max_per_client)
            for port, factory in factories.items()
        }
        self.assertEqual(caps, {2626: (70, 7), 8181: (30, 3), 2627: (20, 2), 2628: (10, 4)})
        self.assertEqual(factories[2628].max_idle, 5)
        self.assertEqual(factories[2626].max_idle, 0)
        site = factories[8181].wrappedFactory
        self.assertIsInstance(site, DeadlineSite)
        self.assertEqual((site.header_timeout, site.body_timeout), (11, 22))
        self.assertIsNone(site.timeOut, "twisted.web's byte-resettable timeout is off")
        self.assertTrue(factories[2626].is_exempt("127.0.0.1"))
        self.assertFalse(factories[2626].is_exempt("198.51.100.7"))

    def test_each_appliance_counts_on_a_registry_of_its_own_served_at_metrics(self):
        ports = "[smtp]\nlisten = tcp:2626\n[web]\nlisten = tcp:8181\n[imap]\nlisten = tcp:2628\n"
        seen = []
        for _ in range(2):  # two appliances in one process: no registry clash
            appliance = self.start(MINIMAL + ports)
            factories = {port: factory for port, factory, _, _ in self.reactor.tcpServers}
            metrics = factories[2626].wrappedFactory.metrics
            self.assertIs(factories[2628].wrappedFactory.metrics, metrics)
            served = factories[8181].wrappedFactory.resource.children[b"metrics"]
            self.assertIs(served._metrics, metrics)
            store = appliance.getServiceNamed("store").store
            self.assertIs(store._operation_seconds, metrics.store_operation_seconds)
            seen.append(metrics.registry)
        self.assertIsNot(seen[0], seen[1])

    def test_imap_with_implicit_tls(self):
        appliance = self.start(MINIMAL + "[imap]\nlisten = tcp:2628\ntls_listen = tcp:2629\n")
        factories = {port: factory for port, factory, _, _ in self.reactor.tcpServers}
        implicit = factories[2629].wrappedFactory  # inside TLS: the capped IMAP factory
        self.assertTrue(implicit.wrappedFactory.implicit_tls)
        self.assertFalse(factories[2628].wrappedFactory.implicit_tls)
        self.assertIs(implicit.wrappedFactory.watchers, factories[2628].wrappedFactory.watchers)
        self.assertEqual(appliance.listeners["imap-tls"], ("imap", "tls_listen", "tcp:2629"))

    def test_connection_defaults_are_postfix_like(self):
        config = load_config(write_config(self, MINIMAL))
        for section in (config.smtp, config.submission, config.web):
            self.assertEqual(
                (section.max_connections, section.max_connections_per_client), (100, 50)
            )
        self.assertEqual((config.web.header_timeout, config.web.body_timeout), (30, 60))

    def test_a_zero_cap_is_refused_with_its_key(self):
        with self.assertRaises(ConfigError) as raised:
            load_config(write_config(self, MINIMAL + "[web]\nmax_connections = 0\n"))
        self.assertIn(
            "[web] max_connections: must be a whole number of at least 1", str(raised.exception)
        )

    def test_submission_imap_and_web_share_one_authenticator(self):
        self.start(
            MINIMAL
            + "[web]\nlisten = tcp:8181\n[submission]\nlisten = tcp:2627\n"
            + "[imap]\nlisten = tcp:2628\n"
        )
        factories = {port: factory for port, factory, _, _ in self.reactor.tcpServers}
        submission, site = factories[2627].wrappedFactory, factories[8181].wrappedFactory
        self.assertTrue(verifyObject(IAuthenticator, submission.policy.authenticator))
        self.assertIs(site.resource.app.authenticator, submission.policy.authenticator)
        imap = factories[2628].wrappedFactory
        self.assertIs(imap.authenticator, submission.policy.authenticator)
        self.assertIs(site.requestFactory, BodyLimitedRequest)

    def test_the_web_clients_changes_reach_the_imap_sessions(self):
        # The store tells events.changed of what operations marked changes_mailbox did
        # (the web client's), and the IMAP sessions' watchers listen to that channel.
        self.start(MINIMAL + "[imap]\nlisten = tcp:2628\n")
        factories = {port: factory for port, factory, _, _ in self.reactor.tcpServers}
        imap = factories[2628].wrappedFactory
        channel = imap.store._changed.__self__
        self.assertEqual(channel.name, "changed")
        self.assertIn(imap.watchers._changed_elsewhere, channel._subscribers)

    def test_the_mailbox_pages_event_streams_are_in_the_tree(self):
        appliance = self.start(MINIMAL + "[web]\nlisten = tcp:8181\nmax_connections = 40\n")
        factories = {port: factory for port, factory, _, _ in self.reactor.tcpServers}
        streams = factories[8181].wrappedFactory.resource.app.mail_events
        service = appliance.getServiceNamed("web-events")
        self.assertIs(service.streams, streams)
        self.assertEqual(streams.max_streams, 20, "half the listener's connections")
        service.stopService()  # as the tree's stop does
        with self.assertRaises(StreamsFull):
            streams.open(None, "admin", 1)

    def test_first_start_creates_the_admin_once_with_a_private_password_file(self):
        appliance = self.start()
        store = appliance.getServiceNamed("store").store
        path = os.path.join(self.config.appliance.data_dir, tap.INITIAL_ADMIN_PASSWORD_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as password_file:
            password = password_file.read().strip()
        self.assertTrue(
            verify_password(store.run_sync(accounts.user_password_hash, "admin"), password)
        )
        self.assertEqual([user.login for user in store.run_sync(accounts.list_users)], ["admin"])
        self.assertTrue(self.flushLoggedErrors() == [])

    def test_nothing_listens_before_the_store_is_ready(self):
        # twistd binds ports in the privileged phase, before any startService.
        self.config = load_config(write_config(self, MINIMAL))
        password_file = os.path.join(
            self.config.appliance.data_dir, tap.INITIAL_ADMIN_PASSWORD_FILE
        )
        ready_when_bound = []

        class OrderSpy(SpyReactor):
            def listenTCP(self, port, factory, backlog=50, interface=""):
                ready_when_bound.append(os.path.exists(password_file))
                return super().listenTCP(port, factory, backlog, interface)

        appliance = tap.build_appliance(self.config, OrderSpy())
        appliance.privilegedStartService()
        appliance.startService()
        self.addCleanup(appliance.stopService)
        self.assertEqual(ready_when_bound, [True, True, True, True])

    def test_the_first_dns_round_waits_after_start(self):
        appliance = self.start()
        watcher = appliance.getServiceNamed("dns-watcher").job
        self.assertIsNone(watcher.round, "no DNS round at start")
        self.reactor.advance(dns_build.FIRST_CHECK_DELAY - 1)
        self.assertIsNone(watcher.round)

    def test_the_inbound_checks_have_their_process_beside_the_listener(self):
        appliance = self.start()
        self.assertTrue(appliance.getServiceNamed("inbound-checks").running)
        command = (sys.executable, "-m", "atollon_mail.inbound.checkprocess")
        self.assertEqual(self.reactor.processes, [(sys.executable, command)])

    def test_without_check_processes_none_is_started(self):
        appliance = self.start(MINIMAL + "[inbound]\ncheck_processes = 0\n")
        with self.assertRaises(KeyError):
            appliance.getServiceNamed("inbound-checks")
        self.assertEqual(self.reactor.processes, [])

    def test_the_junk_purge_runs_in_the_tree_with_the_configured_retention(self):
        appliance = self.start(MINIMAL + "[spam]\njunk_retention_days = 9\n")
        purger = appliance.getServiceNamed("junk-purger").job
        self.assertEqual(purger.retention_days, 9)
        self.assertIsNone(purger.round, "no purge at start")
        self.reactor.advance(junkpurge.FIRST_PURGE_DELAY - 1)
        self.assertIsNone(purger.round)

    def test_second_start_keeps_the_admin(self):
        path = write_config(self, MINIMAL)
        for _ in range(2):
            appliance = tap.build_appliance(load_config(path), SpyReactor())
            appliance.startService()
            store = appliance.getServiceNamed("store").store
            users = store.run_sync(accounts.list_users)
            appliance.stopService()
        self.assertEqual([user.login for user in users], ["admin"])


class PluginTests(unittest.TestCase):
    def test_twistd_finds_the_plugin(self):
        output = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        self.assertIn("atollon-mail", output)


# twistd in a child process, as `make run` starts it. The child refuses to write Twisted's
# plugin caches, as a service user who may not write the plugins directory would (the
# tests run as root, which permissions do not stop).
TWISTD_PRELUDE = """
from twisted.python import filepath
_write = filepath.FilePath.setContent
def _refuse_plugin_cache(self, content, ext=b".new"):
    if self.basename() == "dropin.cache":
        raise PermissionError(13, "Permission denied", self.path)
    return _write(self, content, ext)
filepath.FilePath.setContent = _refuse_plugin_cache
from twisted.scripts.twistd import run
run()
"""
TWISTD = [sys.executable, "-c", TWISTD_PRELUDE, "--nodaemon", "--pidfile=", "atollon-mail"]
STARTED = "Site starting on"  # logged when the last listener is bound
START_TIMEOUT = 60.0  # seconds; the machine running the tests may be busy


class TwistdTests(unittest.TestCase):
    """The real `twistd atollon-mail`: start-up, busy ports, errors a person sees."""

    def setUp(self):
        self.smtp_port, self.submission_port, self.web_port, self.imap_port = (
            free_port() for _ in range(4)
        )
        self.smtp_endpoint = f"tcp:{self.smtp_port}:interface=127.0.0.1"
        self.config_path = write_config(
            self,
            MINIMAL
            + f"[smtp]\nlisten = {self.smtp_endpoint}\n"
            + f"[submission]\nlisten = tcp:{self.submission_port}:interface=127.0.0.1\n"
            + f"[web]\nlisten = tcp:{self.web_port}:interface=127.0.0.1\n"
            + f"[imap]\nlisten = tcp:{self.imap_port}:interface=127.0.0.1\n",
        )
        self.data_dir = load_config(self.config_path).appliance.data_dir

    def start_server(self) -> str:
        """Start the appliance in a child process; its log once every port is bound."""
        log_path = os.path.abspath(self.mktemp())
        log_file = open(log_path, "w")
        self.addCleanup(log_file.close)
        server = subprocess.Popen(
            [*TWISTD, "--config", self.config_path], stdout=log_file, stderr=subprocess.STDOUT
        )
        self.server = server

        def stop():
            server.terminate()
            server.wait(START_TIMEOUT)

        self.addCleanup(stop)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with open(log_path) as log:
                text = log.read()
            if STARTED in text:
                return text
            if server.poll() is not None:
                self.fail(f"the server exited with {server.returncode}:\n{text}")
            time.sleep(0.1)
        self.fail(f"the server did not start in {START_TIMEOUT} s:\n{text}")

    def twistd(self, *argv: str) -> subprocess.CompletedProcess:
        """Run twistd to its end; a start that hangs fails the test at the timeout."""
        return subprocess.run(
            [*TWISTD, *argv], capture_output=True, text=True, timeout=START_TIMEOUT
        )

    def assertOneLineError(self, result: subprocess.CompletedProcess, *parts: str) -> str:
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Usage:", output)
        lines = [line for line in output.splitlines() if "atollon-mail: " in line]
        self.assertEqual(len(lines), 1, output)
        for part in parts:
            self.assertIn(part, lines[0])
        return lines[0]

    def test_the_threads_are_on_one_cpu_and_the_check_process_is_not(self):
        allowed = sorted(os.sched_getaffinity(0)) if affinity.supported() else []
        if len(allowed) < 2:
            raise unittest.SkipTest("needs Linux and two CPUs the tests may run on")
        text = self.start_server()
        found = re.search(r"the appliance's threads run on CPU (\d+)", text)
        self.assertIsNotNone(found, text)
        cpu = int(found.group(1))
        pid = self.server.pid
        threads = os.listdir(f"/proc/{pid}/task")
        cpus = [os.sched_getaffinity(int(thread)) for thread in threads]
        self.assertEqual(os.sched_getaffinity(pid), {cpu}, "the reactor's thread")
        # The reactor's and the store's threads and the DNS pool's are pinned; only the
        # CPU pool's threads (workers.CPU_THREADS at most) run anywhere.
        self.assertGreaterEqual(cpus.count({cpu}), 2)
        free = [found for found in cpus if found != {cpu}]
        self.assertEqual(free, [set(allowed)] * len(free))
        self.assertLessEqual(len(free), CPU_THREADS)
        children = []
        deadline = time.monotonic() + START_TIMEOUT
        while not children and time.monotonic() < deadline:
            for thread in threads:
                with open(f"/proc/{pid}/task/{thread}/children") as listed:
                    children += [int(child) for child in listed.read().split()]
            time.sleep(0.05)
        self.assertEqual(len(children), 1, "the one check process")
        self.assertEqual(sorted(os.sched_getaffinity(children[0])), allowed)

    def test_second_start_on_busy_ports_exits_at_once_with_one_line(self):
        self.start_server()
        began = time.monotonic()
        result = self.twistd("--config", self.config_path)
        self.assertOneLineError(
            result, f"cannot listen for smtp on {self.smtp_endpoint}", "[smtp] listen"
        )
        self.assertEqual(result.returncode, 1)
        self.assertLess(time.monotonic() - began, START_TIMEOUT)

    def test_daemonized_second_start_on_busy_ports_tells_the_waiting_parent(self):
        # Without --nodaemon, twistd's first process waits on a pipe for the daemon's word.
        self.start_server()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        result = subprocess.run(
            [*TWISTD[:3], f"--pidfile={directory}/twistd.pid", f"--logfile={directory}/log"]
            + ["atollon-mail", "--config", self.config_path],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(f"cannot listen for smtp on {self.smtp_endpoint}", result.stderr)
        # The parent is told first; the daemon writes its log line as it exits, which on
        # a busy machine can be a moment after the parent returned.
        line = f"atollon-mail: cannot listen for smtp on {self.smtp_endpoint}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with open(os.path.join(directory, "log")) as log:
                text = log.read()
            if line in text or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertNotIn("Traceback", text)
        self.assertIn(line, text)

    def test_bad_endpoint_is_one_line(self):
        result = self.twistd("--config", self.config_path, "--smtp", "tcp:notaport")
        self.assertOneLineError(result, "--smtp: 'tcp:notaport' is not a usable")
        self.assertEqual(result.returncode, 1)

    def test_config_error_is_one_line_without_usage_text(self):
        path = write_config(self, MINIMAL + "[smtp]\nmax_recipients = 10\n")
        result = self.twistd("--config", path)
        self.assertOneLineError(result, f"{path}: [smtp] max_recipients: must be")
        self.assertEqual((result.returncode, result.stdout), (1, ""))

    def test_the_tac_file_tells_a_config_error_in_one_line(self):
        tac = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tap", "atollon-mail.tac")
        for text, expected in (
            ("[smtp]\nlisten = tcp:notaport\n", "[smtp] listen: 'tcp:notaport' is not a usable"),
            ("[smtp]\nmax_recipients = 10\n", "[smtp] max_recipients: must be"),
        ):
            path = write_config(self, MINIMAL + text)
            result = subprocess.run(
                [sys.executable, "-c", TWISTD_PRELUDE, "--nodaemon", "--pidfile=", "-ny", tac],
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT,
                env={**os.environ, "ATOLLON_MAIL_CONFIG": path},
            )
            self.assertOneLineError(result, expected)
            self.assertEqual(result.returncode, 1)

    def test_first_start_offers_starttls_then_auth_on_submission(self):
        log = self.start_server()
        self.assertNotIn("Unable to write to plugin cache", log)
        self.assertNotIn("Traceback", log)
        created = [line for line in log.splitlines() if "created a self-signed certificate" in line]
        self.assertEqual(len(created), 1, log)
        with smtplib.SMTP("127.0.0.1", self.submission_port, timeout=START_TIMEOUT) as client:
            client.ehlo("client.test")
            self.assertTrue(client.has_extn("starttls"))
            self.assertFalse(client.has_extn("auth"))  # never before TLS
            context = ssl_module.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl_module.CERT_NONE
            client.starttls(context=context)
            client.ehlo("client.test")
            self.assertIn("PLAIN", client.esmtp_features.get("auth", "").upper())
            der = client.sock.getpeercert(binary_form=True)
        certificate = x509.load_der_x509_certificate(der)
        with open(os.path.join(self.data_dir, selfsigned.CERTIFICATE_FILE), "rb") as kept:
            self.assertEqual(x509.load_pem_x509_certificate(kept.read()), certificate)
        subject = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertEqual(subject[0].value, "mx.acme.test")
