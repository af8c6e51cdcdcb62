"""The twistd plugin: options, configuration errors, and the service tree it builds."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from atollon_mail import tap
from atollon_mail.config import load_config
from atollon_mail.interfaces import IAuthenticator
from atollon_mail.passwords import verify_password
from atollon_mail.store import queries
from atollon_mail.web.bodylimit import BodyLimitedRequest


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

    def test_submission_and_web_share_one_authenticator(self):
        self.start(MINIMAL + "[web]\nlisten = tcp:8181\n[submission]\nlisten = tcp:2627\n")
        factories = {port: factory for port, factory, _, _ in self.reactor.tcpServers}
        submission, site = factories[2627], factories[8181]
        self.assertTrue(verifyObject(IAuthenticator, submission.authenticator))
        self.assertIs(site.resource.app.authenticator, submission.authenticator)
        self.assertIs(site.requestFactory, BodyLimitedRequest)

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
