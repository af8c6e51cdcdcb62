"""What mail clients are told: the services offered, from the configuration."""

from __future__ import annotations

from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.discovery import ClientServices, client_services

HOSTNAME = "mail.example.test"


def ports(services: ClientServices, kind: str) -> list[tuple[int, str]]:
    return [(service.port, service.socket_type) for service in services.offered(kind)]


class ClientServicesTests(unittest.TestCase):
    def setUp(self):
        self.config = parse_config(f"[appliance]\nhostname = {HOSTNAME}\n")

    def test_the_standard_ports_implicit_tls_first(self):
        services = client_services(self.config)
        self.assertEqual(services.hostname, HOSTNAME)
        self.assertEqual(ports(services, "imap"), [(143, "STARTTLS")])
        self.assertEqual(ports(services, "smtp"), [(587, "STARTTLS")])
        self.assertEqual(
            [(s.srv, services.srv_value(s)) for s in services.services],
            [
                ("_imaps._tcp", "0 0 0 ."),
                ("_imap._tcp", f"10 1 143 {HOSTNAME}."),
                ("_submissions._tcp", "0 0 0 ."),
                ("_submission._tcp", f"10 1 587 {HOSTNAME}."),
            ],
        )

    def test_whatever_port_the_listeners_use(self):
        config = parse_config(
            f"[appliance]\nhostname = {HOSTNAME}\n"
            "[submission]\nlisten = tcp:2587\ntls_listen = tcp:2465\n"
        )
        self.assertEqual(ports(client_services(config), "smtp"), [(465, "SSL"), (587, "STARTTLS")])

    def test_imaps_once_its_listener_is_configured(self):
        without = client_services(self.config)
        self.assertEqual(ports(without, "imap"), [(143, "STARTTLS")])
        [imaps] = [s for s in without.services if s.srv == "_imaps._tcp"]
        self.assertEqual(without.srv_value(imaps), "0 0 0 .")
        self.assertIn("[imap] tls_listen", imaps.why_not)
        with_tls = client_services(
            parse_config(f"[appliance]\nhostname = {HOSTNAME}\n[imap]\ntls_listen = tcp:993\n")
        )
        self.assertEqual(ports(with_tls, "imap"), [(993, "SSL"), (143, "STARTTLS")])
