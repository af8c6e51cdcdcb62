"""The twistd plugin: options, configuration errors, and the service tree it builds."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial import unittest

from atollon_mail import tap
from atollon_mail.config import ConfigError, load_config
from atollon_mail.passwords import verify_password
from atollon_mail.store import queries
from atollon_mail.web.limits import DeadlineSite


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
        for option in ("--config", "--smtp", "--web"):
            self.assertIn(option, text)

    def test_endpoint_overrides_replace_the_configured_listeners(self):
        options = tap.Options()
        options.parseOptions(
            ["--config", write_config(self, MINIMAL), "--smtp", "tcp:2600", "--web", "tcp:2601"]
        )
        self.assertEqual(options.config.smtp.listen, "tcp:2600")
        self.assertEqual(options.config.web.listen, "tcp:2601")

    def test_bad_value_is_one_line_naming_file_section_and_key(self):
        path = write_config(self, MINIMAL + "[smtp]\nmax_recipients = 10\n")
        with self.assertRaises(usage.UsageError) as raised:
            tap.Options().parseOptions(["--config", path])
        message = str(raised.exception)
        self.assertEqual(len(message.splitlines()), 1)
        for part in (path, "[smtp]", "max_recipients", "at least 100"):
            self.assertIn(part, message)

    def test_missing_config_file_is_named(self):
        with self.assertRaises(usage.UsageError) as raised:
            tap.Options().parseOptions(["--config", "no/such/file.ini"])
        self.assertIn("no/such/file.ini", str(raised.exception))


class SpyReactor(MemoryReactorClock):
    """Records listening ports; work handed back from threads runs on the real reactor."""

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

    def test_listens_on_the_configured_endpoints(self):
        self.start(
            MINIMAL
            + "[smtp]\nlisten = tcp:2626\n[web]\nlisten = tcp:8181:interface=127.0.0.1\n"
            + "[submission]\nlisten = tcp:2627\n"
        )
        listening = sorted((port, interface) for port, _, _, interface in self.reactor.tcpServers)
        self.assertEqual(listening, [(2626, ""), (2627, ""), (8181, "127.0.0.1")])

    def test_every_listener_has_its_connection_caps(self):
        self.start(
            MINIMAL
            + "[smtp]\nlisten = tcp:2626\nmax_connections = 70\nmax_connections_per_client = 7\n"
            + "[web]\nlisten = tcp:8181\nmax_connections = 30\nmax_connections_per_client = 3\n"
            + "header_timeout = 11\nbody_timeout = 22\n"
            + "[submission]\nlisten = tcp:2627\nmax_connections = 20\n"
            + "max_connections_per_client = 2\n"
        )
        factories = {port: factory for port, factory, _, _ in self.reactor.tcpServers}
        caps = {
            port: (factory.max_connections, factory.max_per_client)
            for port, factory in factories.items()
        }
        self.assertEqual(caps, {2626: (70, 7), 8181: (30, 3), 2627: (20, 2)})
        site = factories[8181].wrappedFactory
        self.assertIsInstance(site, DeadlineSite)
        self.assertEqual((site.header_timeout, site.body_timeout), (11, 22))
        self.assertIsNone(site.timeOut, "twisted.web's byte-resettable timeout is off")
        self.assertTrue(factories[2626].is_exempt("127.0.0.1"))
        self.assertFalse(factories[2626].is_exempt("198.51.100.7"))

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

    def test_first_start_creates_the_admin_once_with_a_private_password_file(self):
        appliance = self.start()
        store = appliance.getServiceNamed("store").store
        path = os.path.join(self.config.appliance.data_dir, tap.INITIAL_ADMIN_PASSWORD_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as password_file:
            password = password_file.read().strip()
        self.assertTrue(
            verify_password(store.run_sync(queries.user_password_hash, "admin"), password)
        )
        self.assertEqual([user.login for user in store.run_sync(queries.list_users)], ["admin"])
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
        self.assertEqual(ready_when_bound, [True, True, True])

    def test_the_first_dns_round_waits_after_start(self):
        appliance = self.start()
        watcher = appliance.getServiceNamed("dns-watcher")
        self.assertIsNone(watcher.round, "no DNS round at start")
        self.reactor.advance(tap.DNS_FIRST_CHECK_DELAY - 1)
        self.assertIsNone(watcher.round)

    def test_second_start_keeps_the_admin(self):
        path = write_config(self, MINIMAL)
        for _ in range(2):
            appliance = tap.build_appliance(load_config(path), SpyReactor())
            appliance.startService()
            store = appliance.getServiceNamed("store").store
            users = store.run_sync(queries.list_users)
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
