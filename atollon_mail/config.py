"""The appliance configuration: an INI file read into frozen attrs records.

Every value is checked at load time; a bad one raises ConfigError naming the file, the
section, the key and what is allowed, so start-up stops with one line a person can act on.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import socket
from collections.abc import Callable
from typing import Any

import attrs

DEFAULT_CONFIG_PATH = "etc/atollon-mail.ini"
CONFIG_ENVIRONMENT_VARIABLE = "ATOLLON_MAIL_CONFIG"

MIB = 1024 * 1024


class ConfigError(Exception):
    """A configuration value that cannot be used; str() is the one line to show."""

    def __init__(self, path: str, section: str | None, key: str | None, problem: str):
        self.path, self.section, self.key, self.problem = path, section, key, problem
        where = [f"[{section}]"] if section else []
        if key:
            where.append(key)
        super().__init__(": ".join([path, " ".join(where), problem] if where else [path, problem]))


@attrs.frozen
class ApplianceConfig:
    hostname: str
    data_dir: str
    public_ipv4: str | None = None  # the address the world reaches us at (DNS advice)
    public_ipv6: str | None = None
    hostname_from_machine: bool = False  # hostname unset: this machine's name was taken
    cpu: str | int = "auto"  # the CPU of the process's threads: auto, off or a number


@attrs.frozen
class DnsConfig:
    spf_include: str | None  # a domain to include: instead of our addresses
    check_interval: float  # seconds between re-checks of every domain
    dmarc_report_address: str | None  # rua= of the proposed DMARC record
    mta_sts: bool  # also propose MTA-STS and TLS-RPT records


@attrs.frozen
class MassmailConfig:
    rate: float  # messages per second per campaign; 0: as fast as delivery goes
    window: int  # messages of one campaign handed to the delivery queue and not yet done
    unsubscribe_url: str | None  # the public base of the unsubscribe links; None: https://hostname
    secret: str | None = None  # None: generated at first start, kept in data_dir


@attrs.frozen
class SpamConfig:
    """[spam]: the spam filter and the Junk folder."""

    rspamd_url: str | None = None  # rspamd's normal worker; None: no spam filter
    controller_url: str | None = None  # where /learnham and /learnspam go; None: rspamd_url
    controller_password: str | None = None  # the controller's (enable_)password, if any
    timeout: float = 10.0  # seconds for one answer
    on_failure: str = "accept"  # "accept" (kept, tagged not scanned) or "tempfail" (451)
    # --- the Junk folder ---------------------------------------------------------------
    junk_retention_days: int = 30  # Junk older than this many days is purged


@attrs.frozen
class DatabaseConfig:
    url: str


@attrs.frozen
class ClusterConfig:
    """[cluster]: this node among several on one PostgreSQL database."""

    # Names this node in the notices the others hear and on its delivery claims; unique
    # among the nodes. Empty (the default): one box, and none of the multi-node work
    # (notices, named claims, the node lock) is done: each costs PostgreSQL commits.
    node_name: str = ""
    # How often a node asks for the lock of a job run on one node at a time (and checks
    # it still holds one), and looks for deliveries a dead node left in flight.
    check_interval: float = 15.0


@attrs.frozen
class SmtpConfig:
    listen: str
    max_message_size: int
    max_recipients: int
    tls_certificate: str | None
    tls_key: str | None
    greet_pause: float
    trusted_networks: tuple[str, ...]
    idle_timeout: float
    relay_networks: tuple[str, ...] = ()
    max_connections: int = 100  # sessions at once on this listener (Postfix: 100 smtpd)
    max_connections_per_client: int = 50  # Postfix: smtpd_client_connection_count_limit
    stress_idle_timeout: float = 10.0  # idle_timeout once the listener was full (Postfix)

    @property
    def tls_enabled(self) -> bool:
        return self.tls_certificate is not None


@attrs.frozen
class WebConfig:
    listen: str
    session_idle_timeout: float = 1800.0  # seconds of inactivity before a new login
    max_connections: int = 100
    max_connections_per_client: int = 50
    header_timeout: float = 30.0  # seconds for a request's line and headers
    body_timeout: float = 60.0  # seconds of a request body arriving slower than 500 B/s
    # Reverse proxies whose X-Forwarded-For names the client (web/app.py client_address).
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Who may read /metrics (web/metrics.py): TCP peers in these networks, or anyone
    # sending this bearer token (None: no token access).
    metrics_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    metrics_token: str | None = None
    tls_listen: str | None = None  # HTTPS with the mail listeners' certificate (tcp:443)


@attrs.frozen
class SubmissionConfig:
    listen: str
    tls_listen: str | None
    max_connections: int = 100  # each of listen and tls_listen
    max_connections_per_client: int = 50


@attrs.frozen
class ImapConfig:
    """[imap]: the IMAP server (atollon_mail.imap)."""

    listen: str = "tcp:2143"
    tls_listen: str | None = None  # implicit TLS (production: tcp:993)
    max_connections: int = 100  # active sessions at once on each listener
    # Sessions in IDLE (waiting for news, often for hours) are counted apart, against
    # this larger cap, so that idling clients never keep active ones out.
    max_idle_connections: int = 200
    max_connections_per_client: int = 20
    idle_timeout: float = 1800.0  # autologout: RFC 3501 asks for at least 30 minutes
    login_timeout: float = 60.0  # a session must log in within this many seconds


LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"


@attrs.frozen
class TlsConfig:
    """[tls]: certificates from an ACME CA (atollon_mail.certificates)."""

    acme: bool = False
    acme_directory: str = LETS_ENCRYPT_DIRECTORY
    acme_email: str | None = None  # the account's contact for the CA's expiry notices
    acme_ca_bundle: str | None = None  # CA file trusted for the directory's HTTPS


@attrs.frozen
class HostPort:
    host: str
    port: int


@attrs.frozen
class DeliveryConfig:
    nameservers: tuple[HostPort, ...]  # empty: the system's resolvers
    mx_port: int
    smarthost: HostPort | None
    smarthost_username: str | None
    smarthost_password: str | None
    per_destination_concurrency: int
    max_concurrency: int
    retry_first: float
    retry_max: float
    max_queue_lifetime: float
    delay_warning: float | None
    require_tls_domains: tuple[str, ...]
    connect_timeout: float
    srs_secret: str | None = None  # None: generated at first start, kept in data_dir
    dkim_key_retention: float = 7 * 86400.0  # a replaced DKIM key is kept this long


DMARC_ACTIONS = ("reject", "junk", "tag")
QUARANTINE_ACTIONS = ("junk", "tag")


@attrs.frozen
class InboundConfig:
    """What the inbound checks of port 25 do (atollon_mail.inbound)."""

    checks: bool = True  # off: no sender authentication, scoring or spam filter
    dmarc_reject: str = "reject"  # failing p=reject (and forged own domains): DMARC_ACTIONS
    dmarc_quarantine: str = "junk"  # failing p=quarantine: QUARANTINE_ACTIONS
    # Networks (normalized) or host names whose forwarded mail is trusted, for every
    # domain, and per domain as (domain, entries) pairs (trusted_forwarders.DOMAIN).
    trusted_forwarders: tuple[str, ...] = ()
    domain_forwarders: tuple[tuple[str, tuple[str, ...]], ...] = ()
    dnsbl_zones: tuple[str, ...] = ()  # DNS blocklists asked for the client's address
    junk_score: float = 5.0  # the built-in score from which a message goes to Junk
    # Processes of their own the checks run in (inbound.checkprocess); 0: in the DNS
    # worker threads of the appliance's process.
    check_processes: int = 1

    def forwarders_for(self, domain: str) -> tuple[str, ...]:
        """The entries trusted for mail to domain: the global ones and its own."""
        own = dict(self.domain_forwarders).get(domain.lower().rstrip("."), ())
        return self.trusted_forwarders + own


@attrs.frozen
class BackupConfig:
    """[backup]: the scheduled backup (atollon_mail.backup)."""

    schedule: tuple[int, int] | None = None  # (hour, minute) UTC each day; None: off
    directory: str = "var/backups"
    keep: int = 7  # the newest this many scheduled backups are kept
    passphrase_file: str | None = None  # None: the archives are not encrypted


@attrs.frozen
class Config:
    path: str
    appliance: ApplianceConfig
    database: DatabaseConfig
    smtp: SmtpConfig
    web: WebConfig
    submission: SubmissionConfig
    delivery: DeliveryConfig
    dns: DnsConfig = DnsConfig(None, 86400.0, None, False)
    massmail: MassmailConfig = MassmailConfig(50.0, 1000, None)
    spam: SpamConfig = SpamConfig()
    inbound: InboundConfig = InboundConfig()
    imap: ImapConfig = ImapConfig()
    tls: TlsConfig = TlsConfig()
    cluster: ClusterConfig = attrs.field(factory=ClusterConfig)
    backup: BackupConfig = BackupConfig()

    def replace_listen(
        self,
        smtp: str | None = None,
        web: str | None = None,
        submission: str | None = None,
        imap: str | None = None,
    ) -> Config:
        """A copy with endpoint overrides from the command line applied."""
        config = self
        if smtp:
            config = attrs.evolve(config, smtp=attrs.evolve(config.smtp, listen=smtp))
        if web:
            config = attrs.evolve(config, web=attrs.evolve(config.web, listen=web))
        if submission:
            config = attrs.evolve(
                config, submission=attrs.evolve(config.submission, listen=submission)
            )
        if imap:
            config = attrs.evolve(config, imap=attrs.evolve(config.imap, listen=imap))
        return config


def hostname_problem(appliance: ApplianceConfig) -> str | None:
    """Why the host name cannot be this server's public name (localhost, or one label
    that no other server can look up), as one line saying what to do; None when fine."""
    name = appliance.hostname
    if "." in name and name != "localhost" and not name.startswith("localhost."):
        return None
    if appliance.hostname_from_machine:
        origin = f"[appliance] hostname is unset and this machine's name is {name!r}"
    else:
        origin = f"[appliance] hostname is {name!r}"
    return (
        f"{origin}, which other mail servers cannot reach: set [appliance] hostname to "
        "this server's public name (e.g. mail.example.com), the name your MX records "
        "point at"
    )


# --- value parsers: each returns the value or raises ValueError with what is allowed ---


def _text(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _optional_path(value: str) -> str | None:
    value = value.strip()
    return value or None


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def _hostname(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    if not _HOSTNAME.match(value):
        raise ValueError(f"must be a host name such as mail.example.com, got {value!r}")
    return value


_SIZE = re.compile(r"^(\d+)\s*(k|kb|kib|m|mb|mib|g|gb|gib)?$", re.IGNORECASE)
_SIZE_UNITS = {"k": 1024, "m": MIB, "g": 1024 * MIB}


def _size(value: str) -> int:
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(f"must be a size in bytes, or with K, M or G (e.g. 25M), got {value!r}")
    number = int(match.group(1))
    unit = (match.group(2) or "").lower()[:1]
    size = number * _SIZE_UNITS.get(unit, 1)
    if size < 1024:
        raise ValueError(f"must be at least 1K, got {value!r}")
    return size


def _whole_number(minimum: int, most: int | None = None) -> Callable[[str], int]:
    allowed = f"of at least {minimum}" if most is None else f"from {minimum} to {most}"

    def parse(value: str) -> int:
        try:
            number = int(value.strip())
        except ValueError:
            raise ValueError(f"must be a whole number {allowed}, got {value!r}") from None
        if number < minimum or (most is not None and number > most):
            raise ValueError(f"must be a whole number {allowed}, got {value!r}")
        return number

    return parse


def _seconds(value: str) -> float:
    try:
        seconds = float(value.strip())
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {value!r}") from None
    if seconds < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return seconds


def _networks(value: str) -> tuple[str, ...]:
    networks = []
    for item in value.replace(",", " ").split():
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(
                f"must be a list of networks such as 127.0.0.0/8 ::1/128, got {item!r}"
            ) from None
    return tuple(networks)


def _endpoint(value: str) -> str:
    value = value.strip()
    if not re.match(r"^[a-z0-9]+:", value):
        raise ValueError(f"must be a Twisted endpoint description such as tcp:2525, got {value!r}")
    return value


def _optional_endpoint(value: str) -> str | None:
    return _endpoint(value) if value.strip() else None


def _optional_text(value: str) -> str | None:
    return value.strip() or None


def _host_port(value: str, default_port: int) -> HostPort:
    value = value.strip()
    if value.startswith("["):  # [IPv6]:port
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        port = -1
    if not host or not 0 < port < 65536:
        raise ValueError(f"must be host or host:port, got {value!r}")
    return HostPort(host, port)


def _nameservers(value: str) -> tuple[HostPort, ...]:
    servers = tuple(_host_port(item, 53) for item in value.replace(",", " ").split())
    for server in servers:
        try:
            ipaddress.ip_address(server.host)
        except ValueError:
            raise ValueError(
                f"nameservers must be IP addresses (host[:port]), got {server.host!r}"
            ) from None
    return servers


def _optional_host_port(value: str) -> HostPort | None:
    return _host_port(value, 25) if value.strip() else None


def _port(value: str) -> int:
    try:
        port = int(value.strip())
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ValueError(f"must be a port number from 1 to 65535, got {value!r}")
    return port


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str) -> float:
    match = _DURATION.match(value.strip())
    if not match:
        raise ValueError(f"must be a duration such as 300, 5m, 4h or 5d, got {value!r}")
    return float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]


def _positive_duration(value: str) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise ValueError(f"must be more than zero, got {value!r}")
    return seconds


def _autologout(value: str) -> float:
    seconds = _duration(value)
    if seconds < 1800:
        raise ValueError(f"must be at least 30m (RFC 3501's autologout), got {value!r}")
    return seconds


def _optional_duration(value: str) -> float | None:
    return _positive_duration(value) if value.strip() else None


def _domains(value: str) -> tuple[str, ...]:
    return tuple(item.lower().rstrip(".") for item in value.replace(",", " ").split())


def _optional_ip(version: int) -> Callable[[str], str | None]:
    def parse(value: str) -> str | None:
        value = value.strip()
        if not value:
            return None
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            address = None
        if address is None or address.version != version:
            raise ValueError(f"must be an IPv{version} address, got {value!r}")
        return str(address)

    return parse


def _rate(value: str) -> float:
    try:
        rate = float(value.strip())
    except ValueError:
        raise ValueError(f"must be messages per second (0: unlimited), got {value!r}") from None
    if rate < 0 or rate != rate:
        raise ValueError(f"must be messages per second (0: unlimited), got {value!r}")
    return rate


def _optional_url(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    if not (value.startswith("https://") or value.startswith("http://")) or " " in value:
        raise ValueError(f"must be an http:// or https:// address, got {value!r}")
    return value.rstrip("/")


def _https_url(value: str) -> str:
    value = value.strip()
    if not value.startswith("https://") or " " in value or len(value) <= len("https://"):
        raise ValueError(f"must be an https:// address, got {value!r}")
    return value


def _optional_email(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    local, at, domain = value.rpartition("@")
    if not at or not local or " " in value or "." not in domain:
        raise ValueError(f"must be an address such as postmaster@example.com, got {value!r}")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be {' or '.join(allowed)}, got {value!r}")
        return value

    return parse


def _optional_domain(value: str) -> str | None:
    value = value.strip().lower().rstrip(".")
    if not value:
        return None
    return _hostname(value)


def _yes_no(value: str) -> bool:
    value = value.strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0", ""):
        return False
    raise ValueError(f"must be yes or no, got {value!r}")


def _on_off(value: str) -> bool:
    value = value.strip().lower()
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise ValueError(f"must be on or off, got {value!r}")


def _forwarders(value: str) -> tuple[str, ...]:
    """Networks (1.2.3.0/24, 2001:db8::/32, one address) or host names, in order."""
    entries: list[str] = []
    for item in value.replace(",", " ").split():
        try:
            entry = str(ipaddress.ip_network(item, strict=False))
        except ValueError:
            try:
                entry = _hostname(item)
            except ValueError:
                raise ValueError(
                    "must be a list of networks (192.0.2.0/24, 2001:db8::1) or host names "
                    f"(mx.partner.example), got {item!r}"
                ) from None
        if entry not in entries:
            entries.append(entry)
    return tuple(entries)


def _zones(value: str) -> tuple[str, ...]:
    zones = []
    for item in value.replace(",", " ").split():
        try:
            zones.append(_hostname(item))
        except ValueError:
            raise ValueError(
                f"must be a list of DNS blocklist zones such as zen.spamhaus.org, got {item!r}"
            ) from None
    return tuple(zones)


def _score(value: str) -> float:
    try:
        score = float(value.strip())
    except ValueError:
        raise ValueError(f"must be a number of points such as 5 or 7.5, got {value!r}") from None
    if not score > 0 or score == float("inf"):
        raise ValueError(f"must be more than zero, got {value!r}")
    return score


_TIME_OF_DAY = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def _schedule(value: str) -> tuple[int, int] | None:
    value = value.strip().lower()
    if value == "off":
        return None
    match = _TIME_OF_DAY.match(value)
    if not match:
        raise ValueError(f"must be off or a time of day HH:MM in UTC (e.g. 03:30), got {value!r}")
    return int(match.group(1)), int(match.group(2))


def _database_url(value: str) -> str:
    value = value.strip()
    if not (value.startswith("sqlite:///") or value.startswith("postgresql://")):
        raise ValueError(
            f"must be sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE, got {value!r}"
        )
    return value


def _cpu(value: str) -> str | int:
    text = value.strip().lower()
    if text in ("auto", "off"):
        return text
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise ValueError(f"must be auto, off or a CPU number (0, 1, ...), got {value!r}")
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if allowed is not None and number not in allowed:
        raise ValueError(
            f"CPU {number} is not one this machine lets the appliance run on "
            f"({', '.join(map(str, allowed))})"
        )
    return number


def _node_name(value: str) -> str:
    name = value.strip()
    if len(name) > 200 or not name.isprintable():
        raise ValueError(
            f"{value!r} is not a node name: give printable text of at most 200 characters"
        )
    return name


# section -> key -> (parser, default)
_SCHEMA: dict[str, dict[str, tuple[Callable[[str], Any], str]]] = {
    "appliance": {
        "hostname": (_hostname, ""),
        "data_dir": (_text, "var"),
        "public_ipv4": (_optional_ip(4), ""),
        "public_ipv6": (_optional_ip(6), ""),
        "cpu": (_cpu, "auto"),
    },
    "database": {
        "url": (_database_url, "sqlite:///var/atollon-mail.sqlite"),
    },
    "smtp": {
        "listen": (_endpoint, "tcp:2525"),
        "max_message_size": (_size, "25M"),
        "max_recipients": (_whole_number(100), "1000"),
        "tls_certificate": (_optional_path, ""),
        "tls_key": (_optional_path, ""),
        "greet_pause": (_seconds, "1"),
        "trusted_networks": (_networks, "127.0.0.0/8 ::1/128"),
        "idle_timeout": (_seconds, "300"),
        "relay_networks": (_networks, ""),
        "max_connections": (_whole_number(1), "100"),
        "max_connections_per_client": (_whole_number(1), "50"),
        "stress_idle_timeout": (_positive_duration, "10"),
    },
    "web": {
        "listen": (_endpoint, "tcp:8080:interface=127.0.0.1"),
        "session_idle_timeout": (_positive_duration, "30m"),
        "max_connections": (_whole_number(1), "100"),
        "max_connections_per_client": (_whole_number(1), "50"),
        "header_timeout": (_positive_duration, "30"),
        "body_timeout": (_positive_duration, "60"),
        "trusted_proxies": (_networks, "127.0.0.0/8 ::1/128"),
        "metrics_networks": (_networks, "127.0.0.0/8 ::1/128"),
        "metrics_token": (_optional_text, ""),
        "tls_listen": (_optional_endpoint, ""),
    },
    "submission": {
        "listen": (_endpoint, "tcp:2587"),
        "tls_listen": (_optional_endpoint, ""),
        "max_connections": (_whole_number(1), "100"),
        "max_connections_per_client": (_whole_number(1), "50"),
    },
    "imap": {
        "listen": (_endpoint, "tcp:2143"),
        "tls_listen": (_optional_endpoint, ""),
        "max_connections": (_whole_number(1), "100"),
        "max_idle_connections": (_whole_number(0), "200"),
        "max_connections_per_client": (_whole_number(1), "20"),
        "idle_timeout": (_autologout, "30m"),
        "login_timeout": (_positive_duration, "60"),
    },
    "delivery": {
        "nameservers": (_nameservers, ""),
        "mx_port": (_port, "25"),
        "smarthost": (_optional_host_port, ""),
        "smarthost_username": (_optional_text, ""),
        "smarthost_password": (_optional_text, ""),
        "per_destination_concurrency": (_whole_number(1), "20"),
        "max_concurrency": (_whole_number(1), "100"),
        "retry_first": (_positive_duration, "5m"),
        "retry_max": (_positive_duration, "4000"),
        "max_queue_lifetime": (_positive_duration, "5d"),
        "delay_warning": (_optional_duration, ""),
        "require_tls_domains": (_domains, ""),
        "connect_timeout": (_positive_duration, "30"),
        "srs_secret": (_optional_text, ""),
        "dkim_key_retention": (_positive_duration, "7d"),
    },
    "dns": {
        "spf_include": (_optional_domain, ""),
        "check_interval": (_positive_duration, "1d"),
        "dmarc_report_address": (_optional_text, ""),
        "mta_sts": (_yes_no, "no"),
    },
    "massmail": {
        "rate": (_rate, "50"),
        "window": (_whole_number(1), "1000"),
        "unsubscribe_url": (_optional_url, ""),
        "secret": (_optional_text, ""),
    },
    "spam": {
        "rspamd_url": (_optional_url, ""),
        "controller_url": (_optional_url, ""),
        "controller_password": (_optional_text, ""),
        "timeout": (_positive_duration, "10"),
        "on_failure": (_choice("accept", "tempfail"), "accept"),
        # --- the Junk folder ---
        "junk_retention_days": (_whole_number(1), "30"),
    },
    "inbound": {
        "checks": (_on_off, "on"),
        "dmarc_reject": (_choice(*DMARC_ACTIONS), "reject"),
        "dmarc_quarantine": (_choice(*QUARANTINE_ACTIONS), "junk"),
        "trusted_forwarders": (_forwarders, ""),
        "dnsbl_zones": (_zones, ""),
        "junk_score": (_score, "5"),
        # Each is a Python process of its own (70 MB resident at start, 45 MB of it not
        # shared) with 4 checking threads and caches of its own: more than a few only
        # divides the caches.
        "check_processes": (_whole_number(0, 8), "1"),
    },
    "tls": {
        "acme": (_yes_no, "no"),
        "acme_directory": (_https_url, LETS_ENCRYPT_DIRECTORY),
        "acme_email": (_optional_email, ""),
        "acme_ca_bundle": (_optional_path, ""),
    },
    "cluster": {
        "node_name": (_node_name, ""),
        "check_interval": (_positive_duration, "15s"),
    },
    "backup": {
        "schedule": (_schedule, "off"),
        "directory": (_text, "var/backups"),
        "keep": (_whole_number(1), "7"),
        "passphrase_file": (_optional_path, ""),
    },
}

# Keys named by a prefix and a domain: section -> prefix -> (parser, the key's attribute).
# [inbound] trusted_forwarders.company.com = ... trusts forwarders for company.com only.
_DOMAIN_KEYS: dict[str, dict[str, tuple[Callable[[str], Any], str]]] = {
    "inbound": {"trusted_forwarders.": (_forwarders, "domain_forwarders")},
}


def _domain_key(section: str, key: str) -> tuple[str, str] | None:
    """(prefix, domain) when key is a per-domain key of section, else None."""
    for prefix in _DOMAIN_KEYS.get(section, {}):
        if key.startswith(prefix):
            return prefix, key[len(prefix) :]
    return None


def _read_domain_keys(
    path: str, parser: configparser.ConfigParser, values: dict[str, dict[str, Any]]
) -> None:
    for section, prefixes in _DOMAIN_KEYS.items():
        found: dict[str, list[tuple[str, Any]]] = {
            attribute: [] for _, attribute in prefixes.values()
        }
        keys = parser[section] if parser.has_section(section) else ()
        for key in keys:
            named = _domain_key(section, key)
            if named is None:
                continue
            prefix, domain = named
            parse, attribute = prefixes[prefix]
            try:
                domain = _hostname(domain)
            except ValueError:
                raise ConfigError(
                    path,
                    section,
                    key,
                    f"must be {prefix}DOMAIN with a domain such as company.com, got {domain!r}",
                ) from None
            try:
                found[attribute].append((domain, parse(parser[section][key])))
            except ValueError as problem:
                raise ConfigError(path, section, key, str(problem)) from None
        for attribute, pairs in found.items():
            values[section][attribute] = tuple(sorted(pairs))


def _read_values(path: str, parser: configparser.ConfigParser) -> dict[str, dict[str, Any]]:
    for section in parser.sections():
        if section not in _SCHEMA:
            allowed = ", ".join(f"[{name}]" for name in _SCHEMA)
            raise ConfigError(path, section, None, f"unknown section; allowed: {allowed}")
        for key in parser[section]:
            if key not in _SCHEMA[section] and _domain_key(section, key) is None:
                allowed = ", ".join(
                    [*_SCHEMA[section], *(f"{p}DOMAIN" for p in _DOMAIN_KEYS.get(section, {}))]
                )
                raise ConfigError(path, section, key, f"unknown key; allowed: {allowed}")
    values: dict[str, dict[str, Any]] = {}
    for section, keys in _SCHEMA.items():
        values[section] = {}
        for key, (parse, default) in keys.items():
            raw = parser.get(section, key, fallback=default)
            if section == "appliance" and key == "hostname" and not raw.strip():
                raw = socket.getfqdn()
                values[section]["hostname_from_machine"] = True
            try:
                values[section][key] = parse(raw)
            except ValueError as problem:
                raise ConfigError(path, section, key, str(problem)) from None
    _read_domain_keys(path, parser, values)
    return values


def parse_config(text: str, path: str = "<config>") -> Config:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None)
    try:
        parser.read_string(text, source=path)
    except configparser.Error as problem:
        first_line = str(problem).splitlines()[0]
        raise ConfigError(path, None, None, f"not a valid INI file: {first_line}") from None
    values = _read_values(path, parser)
    smtp = values["smtp"]
    if (smtp["tls_certificate"] is None) != (smtp["tls_key"] is None):
        missing = "tls_key" if smtp["tls_key"] is None else "tls_certificate"
        raise ConfigError(path, "smtp", missing, "tls_certificate and tls_key must be set together")
    for key in ("tls_certificate", "tls_key"):
        if smtp[key] is not None and not os.path.isfile(smtp[key]):
            raise ConfigError(path, "smtp", key, f"no such file: {smtp[key]}")
    tls = values["tls"]
    if tls["acme"] and smtp["tls_certificate"] is not None:
        raise ConfigError(
            path,
            "tls",
            "acme",
            "acme = yes and [smtp] tls_certificate are both set: choose one (remove "
            "tls_certificate and tls_key to have certificates from the CA, or set acme = no)",
        )
    if tls["acme_ca_bundle"] is not None and not os.path.isfile(tls["acme_ca_bundle"]):
        raise ConfigError(path, "tls", "acme_ca_bundle", f"no such file: {tls['acme_ca_bundle']}")
    delivery = values["delivery"]
    if (delivery["smarthost_username"] is None) != (delivery["smarthost_password"] is None):
        raise ConfigError(
            path,
            "delivery",
            "smarthost_password",
            "smarthost_username and smarthost_password must be set together",
        )
    if delivery["smarthost_username"] and delivery["smarthost"] is None:
        raise ConfigError(path, "delivery", "smarthost", "credentials are set but no smarthost")
    spam = values["spam"]
    if spam["rspamd_url"] is None:
        for key in ("controller_url", "controller_password"):
            if spam[key] is not None:
                raise ConfigError(path, "spam", key, "is set but rspamd_url is not")
    return Config(
        path=path,
        appliance=ApplianceConfig(**values["appliance"]),
        database=DatabaseConfig(**values["database"]),
        smtp=SmtpConfig(**smtp),
        web=WebConfig(**values["web"]),
        submission=SubmissionConfig(**values["submission"]),
        delivery=DeliveryConfig(**delivery),
        dns=DnsConfig(**values["dns"]),
        massmail=MassmailConfig(**values["massmail"]),
        spam=SpamConfig(**spam),
        inbound=InboundConfig(**values["inbound"]),
        imap=ImapConfig(**values["imap"]),
        tls=TlsConfig(**tls),
        cluster=ClusterConfig(**values["cluster"]),
        backup=BackupConfig(**values["backup"]),
    )


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as config_file:
            text = config_file.read()
    except OSError as problem:
        text = f"cannot read the file: {problem.strerror}"
        if path == DEFAULT_CONFIG_PATH and isinstance(problem, FileNotFoundError):
            # The default is relative to the directory started from: say how to name one.
            text += f"; use --config or {CONFIG_ENVIRONMENT_VARIABLE}"
        raise ConfigError(path, None, None, text) from None
    return parse_config(text, path)


def default_config_path() -> str:
    return os.environ.get(CONFIG_ENVIRONMENT_VARIABLE) or DEFAULT_CONFIG_PATH
