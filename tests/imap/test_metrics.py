"""The IMAP server's metrics: sessions open and opened, logins by outcome, counted on the
registry the factory is given, over real sessions into a real store on both backends."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from atollon_mail.metrics import Metrics
from tests.imap.support import ImapServerMixin
from tests.support import PostgresStoreMixin, SqliteStoreMixin


class ImapMetricsContract(ImapServerMixin):
    def value(self, name: str, **labels) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def setUp(self):
        super().setUp()
        self.metrics = Metrics()
        self.factory = self.make_factory(implicit_tls=True, metrics=self.metrics)
        self.plain = self.make_factory(implicit_tls=False, metrics=self.metrics)

    @defer.inlineCallbacks
    def test_sessions_and_logins_by_outcome(self):
        first = self.client()
        second = self.client()
        starttls = self.client(self.plain)
        self.assertEqual(self.value("atollon_mail_imap_sessions_open", listener="imap-tls"), 2)
        self.assertEqual(self.value("atollon_mail_imap_sessions_open", listener="imap"), 1)
        yield first.login()
        lines = yield second.command('LOGIN jane "wrong password"')
        self.assertIn("AUTHENTICATIONFAILED", lines[-1])
        logins = "atollon_mail_imap_logins_total"
        self.assertEqual(self.value(logins, outcome="success"), 1)
        self.assertEqual(self.value(logins, outcome="failure"), 1)
        for client in (first, second, starttls):
            client.protocol.connectionLost(None)
        self.assertEqual(self.value("atollon_mail_imap_sessions_open", listener="imap-tls"), 0)
        self.assertEqual(self.value("atollon_mail_imap_sessions_open", listener="imap"), 0)
        self.assertEqual(self.value("atollon_mail_imap_sessions_total", listener="imap-tls"), 2)
        self.assertEqual(self.value("atollon_mail_imap_sessions_total", listener="imap"), 1)


class SqliteImapMetricsTests(ImapMetricsContract, SqliteStoreMixin, unittest.TestCase):
    pass


class PostgresImapMetricsTests(ImapMetricsContract, PostgresStoreMixin, unittest.TestCase):
    pass
