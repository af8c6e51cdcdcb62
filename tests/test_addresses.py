"""Client addresses: the keys clients are counted by, and the client behind a proxy."""

from __future__ import annotations

import ipaddress

from twisted.trial import unittest

from atollon_mail.addresses import client_ip, client_key, forwarded_client, in_networks

LOCAL = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class ClientIpTests(unittest.TestCase):
    def test_the_peer_address_as_the_servers_keep_it(self):
        self.assertEqual(client_ip("192.0.2.7"), "192.0.2.7")
        self.assertEqual(client_ip("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(client_ip("2001:DB8::1"), "2001:db8::1")
        for host in (None, 3232235777, "mail.example.test", "/run/socket"):
            self.assertIsNone(client_ip(host))


class ClientKeyTests(unittest.TestCase):
    def test_keys(self):
        self.assertEqual(client_key("192.0.2.7"), "192.0.2.7")
        self.assertEqual(client_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(client_key("2001:db8::1"), "2001:db8::/64")
        self.assertEqual(client_key(None), "unknown")
        self.assertEqual(client_key("x" * 1000), "x" * 256)

    def test_an_ipv4_mapped_peer_is_in_an_ipv4_network(self):
        self.assertTrue(in_networks("::ffff:127.0.0.1", LOCAL))
        self.assertFalse(in_networks("192.0.2.7", LOCAL))
        self.assertFalse(in_networks("not an address", LOCAL))


class ForwardedClientTests(unittest.TestCase):
    def test_the_right_most_address_not_a_trusted_proxy(self):
        chain = ["10.0.0.1, 203.0.113.9", "127.0.0.2"]  # two headers, two proxies
        self.assertEqual(forwarded_client("127.0.0.1", chain, LOCAL), "203.0.113.9")
        self.assertEqual(forwarded_client("::1", ["2001:db8::5"], LOCAL), "2001:db8::5")

    def test_an_untrusted_peer_is_the_client_whatever_it_says(self):
        self.assertEqual(forwarded_client("192.0.2.7", ["203.0.113.9"], LOCAL), "192.0.2.7")
        self.assertEqual(forwarded_client("127.0.0.1", ["203.0.113.9"], ()), "127.0.0.1")

    def test_without_a_header_or_past_garbage_the_last_trusted_hop(self):
        self.assertEqual(forwarded_client("127.0.0.1", [], LOCAL), "127.0.0.1")
        self.assertEqual(forwarded_client("127.0.0.1", ["junk, 127.0.0.3"], LOCAL), "127.0.0.3")
        # Everything trusted (a client on the proxy's host): the left-most hop.
        self.assertEqual(forwarded_client("127.0.0.1", ["127.0.0.5, ::1"], LOCAL), "127.0.0.5")
