"""An authoritative DNS server on loopback for tests, built on twisted.names.

Tests never ask the internet: they start this server with the zones they need and point
the code under test at `running.nameserver`.

    running = yield start_dns_server(reactor, {
        "example.test": {
            "@": [("MX", 10, "mx1.example.test"), ("TXT", "v=spf1 -all")],
            "mx1": [("A", "127.0.0.2"), ("AAAA", "::2")],
            "sel._domainkey": [("TXT", "v=DKIM1; k=rsa; p=...")],
        },
    })
    self.addCleanup(running.stop)

Zone data: zone name -> owner name -> list of records. An owner name is relative to the
zone ("@" is the apex; a name ending in "." is absolute). A record is a tuple
(TYPE, data...), optionally led by its TTL: (60, "A", "127.0.0.2"). Types:

    ("A", "127.0.0.2")            ("AAAA", "::2")
    ("MX", 10, "mx1.example.test")  ("MX", 0, ".")  (null MX, RFC 7505)
    ("TXT", "text")               a long text is split into 255-byte strings
    ("TXT", "one", "two")         several strings given explicitly
    ("CNAME", "target.test")      ("PTR", "host.test")      ("NS", "ns.test")

Target names are absolute, with or without the final dot. Each zone gets an SOA and an
NS record made up for it. Names inside a zone that have no records answer NXDOMAIN;
names outside every zone answer REFUSED. `fail(name, "SERVFAIL")` (or "REFUSED",
"TIMEOUT": no answer at all) simulates a broken server for one name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs
from twisted.internet import defer
from twisted.names import authority, dns, server

from atollon_mail.config import HostPort

DEFAULT_TTL = 300
_LISTEN_ATTEMPTS = 20

Record = tuple
ZoneData = Mapping[str, Sequence[Record]]


def _absolute(name: str) -> str:
    """Lowercased, without the final dot ("." itself becomes "")."""
    return name.strip().rstrip(".").lower()


def _owner(zone: str, relative: str) -> str:
    if relative == "@":
        return zone
    if relative.endswith("."):
        return _absolute(relative)
    return f"{_absolute(relative)}.{zone}"


def _txt_strings(values: Sequence[str | bytes]) -> list[bytes]:
    encoded = [value.encode() if isinstance(value, str) else bytes(value) for value in values]
    if len(encoded) == 1:
        # One value: split like a zone file author would, into <=255-byte strings.
        value = encoded[0]
        return [value[i : i + 255] for i in range(0, len(value), 255)] or [b""]
    for string in encoded:
        if len(string) > 255:
            raise ValueError(f"a TXT string given explicitly is over 255 bytes: {string[:40]!r}")
    return encoded


def _make_record(record: Record) -> dns.IEncodableRecord:
    ttl = DEFAULT_TTL
    if record and isinstance(record[0], int):
        ttl, record = record[0], record[1:]
    kind, *data = record
    kind = kind.upper()
    if kind == "A":
        return dns.Record_A(data[0], ttl=ttl)
    if kind == "AAAA":
        return dns.Record_AAAA(data[0], ttl=ttl)
    if kind == "MX":
        preference, exchange = data
        return dns.Record_MX(int(preference), _absolute(exchange).encode(), ttl=ttl)
    if kind == "TXT":
        return dns.Record_TXT(*_txt_strings(data), ttl=ttl)
    if kind in ("CNAME", "PTR", "NS"):
        record_class = {"CNAME": dns.Record_CNAME, "PTR": dns.Record_PTR, "NS": dns.Record_NS}
        return record_class[kind](_absolute(data[0]).encode(), ttl=ttl)
    raise ValueError(f"record type {kind!r} is not supported by the test DNS server")


class _Zone(authority.FileAuthority):
    """One zone, answered by twisted.names' authority logic from records set in memory."""

    def __init__(self, zone: str, records: ZoneData):
        self.zone = _absolute(zone)
        super().__init__(records)

    def loadFile(self, records: ZoneData) -> None:  # noqa: N802 (twisted's name)
        name = self.zone.encode()
        self.soa = (
            name,
            dns.Record_SOA(
                mname=b"ns." + name,
                rname=b"hostmaster." + name,
                serial=1,
                refresh=3600,
                retry=600,
                expire=86400,
                minimum=60,
                ttl=DEFAULT_TTL,
            ),
        )
        self.records = {}
        self.set_records(self.zone, ())
        for relative, entries in records.items():
            self.set_records(_owner(self.zone, relative), entries)

    def set_records(self, owner: str, entries: Iterable[Record]) -> None:
        key = _absolute(owner).encode()
        made = [_make_record(entry) for entry in entries]
        if key == self.soa[0]:  # the apex keeps the SOA and NS made up for the zone
            made = [self.soa[1], dns.Record_NS(b"ns." + key, ttl=DEFAULT_TTL), *made]
        if made:
            self.records[key] = made
        else:
            self.records.pop(key, None)

    def contains(self, name: str) -> bool:
        return name == self.zone or name.endswith("." + self.zone)


class _TestDNSServerFactory(server.DNSServerFactory):
    """Routes each query to the zone holding the name; records queries; injects failures."""

    _RCODES = {"SERVFAIL": dns.ESERVER, "REFUSED": dns.EREFUSED, "NXDOMAIN": dns.ENAME}

    def __init__(self):
        super().__init__()
        self.zones: dict[str, _Zone] = {}
        self.failures: dict[str, str] = {}
        self.queries: list[tuple[str, str]] = []

    def zone_for(self, name: str) -> _Zone | None:
        holding = [zone for zone in self.zones.values() if zone.contains(name)]
        return max(holding, key=lambda zone: len(zone.zone), default=None)

    def _reply_code(self, message, protocol, address, rcode: int) -> None:
        response = self._responseFromMessage(message=message, rCode=rcode)
        self.sendReply(protocol, response, address)

    def handleQuery(self, message, protocol, address):  # noqa: N802 (twisted's name)
        query = message.queries[0]
        name = _absolute(query.name.name.decode("ascii", "replace"))
        self.queries.append((name, dns.QUERY_TYPES.get(query.type, str(query.type))))
        failure = self.failures.get(name)
        if failure == "TIMEOUT":
            return defer.succeed(None)
        if failure is not None:
            self._reply_code(message, protocol, address, self._RCODES[failure])
            return defer.succeed(None)
        zone = self.zone_for(name)
        if zone is None:
            self._reply_code(message, protocol, address, dns.EREFUSED)
            return defer.succeed(None)
        return (
            zone.query(query)
            .addCallback(self.gotResolverResponse, protocol, message, address)
            .addErrback(self.gotResolverError, protocol, message, address)
        )


@attrs.define(eq=False)
class RunningDNS:
    """A started test DNS server: where it listens, what it was asked, how to change it."""

    port: int
    _factory: _TestDNSServerFactory
    _listeners: list

    @property
    def nameserver(self) -> HostPort:
        return HostPort("127.0.0.1", self.port)

    @property
    def queries(self) -> list[tuple[str, str]]:
        """Every query received, in order, as (name, type) such as ("example.test", "MX")."""
        return self._factory.queries

    def query_count(self, name: str | None = None, kind: str | None = None) -> int:
        return sum(
            1
            for asked_name, asked_kind in self.queries
            if (name is None or asked_name == _absolute(name))
            and (kind is None or asked_kind == kind.upper())
        )

    def replace_zone(self, zone: str, records: ZoneData) -> None:
        """Serve zone (new or existing) with exactly these records from now on."""
        self._factory.zones[_absolute(zone)] = _Zone(zone, records)

    def remove_zone(self, zone: str) -> None:
        self._factory.zones.pop(_absolute(zone), None)

    def set_records(self, name: str, records: Iterable[Record]) -> None:
        """Replace the records of one absolute name; an empty list removes the name."""
        zone = self._factory.zone_for(_absolute(name))
        if zone is None:
            raise ValueError(f"{name} is in none of the zones served: add the zone first")
        zone.set_records(name, records)

    def fail(self, name: str, how: str | None = "SERVFAIL") -> None:
        """Answer queries for name with SERVFAIL, REFUSED, NXDOMAIN or (TIMEOUT) nothing."""
        if how is None:
            self._factory.failures.pop(_absolute(name), None)
            return
        if how not in ("TIMEOUT", *_TestDNSServerFactory._RCODES):
            raise ValueError(f"unknown failure {how!r}: SERVFAIL, REFUSED, NXDOMAIN or TIMEOUT")
        self._factory.failures[_absolute(name)] = how

    def stop(self) -> defer.Deferred:
        return defer.gatherResults(
            [defer.maybeDeferred(listener.stopListening) for listener in self._listeners]
        )


def start_dns_server(reactor, zones: Mapping[str, ZoneData]) -> RunningDNS:
    """Listen on 127.0.0.1, UDP and TCP on the same free port, serving zones."""
    factory = _TestDNSServerFactory()
    for zone, records in zones.items():
        factory.zones[_absolute(zone)] = _Zone(zone, records)
    for _ in range(_LISTEN_ATTEMPTS):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        port = udp.getHost().port
        try:
            tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
        except Exception:  # the TCP side of this port is taken: try another port
            udp.stopListening()
            continue
        return RunningDNS(port, factory, [udp, tcp])
    raise RuntimeError("no free port on 127.0.0.1 for both UDP and TCP")
