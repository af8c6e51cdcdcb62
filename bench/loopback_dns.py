"""The inbound benchmark's DNS server: the tests' loopback server (tests/dnsserver.py) in a
process of its own, so its work is neither charged to the benchmark's own clients nor
slowed by them.

    python loopback_dns.py ZONES.json

ZONES.json holds the zones as tests/dnsserver.py takes them (records as lists). The
first line written is "port N" (UDP and TCP on 127.0.0.1); then each line "queries" on
standard input is answered with the number of queries received so far. The server
stops when standard input closes.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import reactor, stdio
from twisted.protocols.basic import LineReceiver

from tests.dnsserver import start_dns_server


class Control(LineReceiver):
    delimiter = b"\n"

    def __init__(self, running):
        self.running = running

    def connectionMade(self):  # noqa: N802 (twisted's name)
        self.sendLine(f"port {self.running.port}".encode())

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 (twisted's name)
        if line.strip() == b"queries":
            self.sendLine(str(len(self.running.queries)).encode())
        else:
            self.sendLine(b"error: the only command is 'queries'")

    def connectionLost(self, reason=None):  # noqa: N802 (twisted's name)
        if reactor.running:
            reactor.stop()


def main() -> int:
    with open(sys.argv[1]) as zones_file:
        zones = json.load(zones_file)
    running = start_dns_server(reactor, zones)
    stdio.StandardIO(Control(running))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
