"""The appliance's Prometheus metrics: one registry per appliance, made by the builder and
passed into what counts (the SMTP and IMAP servers, the inbound checks, the intake and
the delivery runner, the store), and served at /metrics (web/metrics.py).

Every label takes values from a fixed set or from a set this module bounds: listener
names, outcomes, enhanced status codes of our own replies (a code that is not one is
"other"), RFC 8601 result words, store operation names (the functions of the store's
modules), and destination domains limited to the first TOP_DOMAINS seen (DomainLabels).
Nothing here reads the database: what the store knows (the queue by state, its oldest
message, campaign rows) is asked at scrape time by the /metrics page, through
`store.run`, and handed to StoreGauges.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.logger import Logger

PREFIX = "atollon_mail_"

log = Logger()

# Destination domains with a label of their own; the others are "other" (DomainLabels).
TOP_DOMAINS = 20
OTHER = "other"

# Store operations take from a fraction of a millisecond (a cached read) to seconds (a
# large batch on a busy disk).
STORE_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Items per group commit: 1 when traffic is light, up to the intake's MAX_BATCH_MESSAGES.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# An RFC 3463 enhanced status code, as our replies carry them.
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")

# RFC 8601 result words of the sender authentication methods; anything else is "other".
AUTH_RESULTS = frozenset(
    {"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"}
)
# What port 25's checks decided for a message: filed (accepted), filed into Junk, refused
# (5xx, whatever the reason: DMARC, a DNSBL, the spam filter), or told to try later (4xx).
INBOUND_DECISIONS = ("accepted", "junk", "rejected", "tempfailed")
# Why a listener's connection caps refused a connection (atollon_mail.connections).
REFUSAL_REASONS = {"total": "total", "client": "per_client"}


def counting(count, *args) -> None:
    """`count(*args)`, never raising: counting runs on the mail paths (SMTP replies, the
    intake's commits, delivery outcomes), and a metric that fails must not fail, repeat
    or lose the mail it counts. The failure is logged instead."""
    try:
        count(*args)
    except Exception:
        log.failure("metrics: counting failed; the work it counted went on")


def outcome_of(code: int) -> str:
    """An SMTP reply's outcome: accepted (2xx, 3xx), tempfailed (4xx), rejected (5xx)."""
    if code >= 500:
        return "rejected"
    if code >= 400:
        return "tempfailed"
    return "accepted"


def reason_of(code: int, status: str | None) -> str:
    """The reason label of a reply: its enhanced status code (5.1.1 unknown user, 5.7.1
    refused by policy, 4.7.1 greylisted...), or its class (5.0.0) when it has none."""
    if status is not None and _STATUS.fullmatch(status):
        return status
    return f"{code // 100}.0.0" if 200 <= code < 600 else OTHER


def auth_result(word: str | None) -> str:
    return word if word in AUTH_RESULTS else OTHER


class DomainLabels:
    """The domain label of a delivery: the first `limit` distinct domains seen since
    start each keep a label of their own for good, every later one is "other".

    A label once given is never taken back: a Prometheus counter must not move between
    series (a domain leaving the set would make its count jump into "other", which rate()
    reads as traffic that never was). The busiest destinations are among the first seen
    on any appliance that has them, which is what makes this a top list in practice; a
    restart learns the set anew. Called on the reactor thread only."""

    def __init__(self, limit: int = TOP_DOMAINS):
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, domain: str) -> str:
        domain = domain.lower().rstrip(".")
        if domain in self._known:
            return domain
        if domain and len(self._known) < self.limit:
            self._known.add(domain)
            return domain
        return OTHER


class StoreGauges:
    """What the store says at scrape time (set by the /metrics page before rendering):
    the delivery queue by state and the age of its oldest waiting message, and the rows
    of running campaigns by state. Nothing is exported before the first answer, and a
    store that did not answer clears it rather than leaving old figures as if current."""

    def __init__(self):
        self._gauges = None

    def update(self, gauges) -> None:
        """`gauges`: a store.monitoring.StoreGauges record, or None (the store failed)."""
        self._gauges = gauges

    def describe(self):
        return list(self._families())

    def collect(self):
        gauges = self._gauges
        families = self._families()
        if gauges is None:
            return []
        queue, oldest, campaign = families
        for state, count in gauges.queue:
            queue.add_metric([state], count)
        oldest.add_metric([], gauges.oldest_waiting_seconds or 0.0)
        for state, count in gauges.campaign_recipients:
            campaign.add_metric([state], count)
        return [queue, oldest, campaign]

    @staticmethod
    def _families():
        return (
            GaugeMetricFamily(
                PREFIX + "queue_recipients",
                "Recipients waiting in the delivery queue, by state.",
                labels=["state"],
            ),
            GaugeMetricFamily(
                PREFIX + "queue_oldest_age_seconds",
                "Age of the oldest message with a recipient still waiting (0: none).",
            ),
            GaugeMetricFamily(
                PREFIX + "campaign_recipients",
                "Rows of running campaigns' send lists, by state.",
                labels=["state"],
            ),
        )


class Metrics:
    """The appliance's metrics on a registry of its own (several appliances can live in
    one process, as in the tests); the process's own figures are on it too."""

    def __init__(self, registry: CollectorRegistry | None = None, top_domains: int = TOP_DOMAINS):
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        self.store_gauges = StoreGauges()
        registry.register(self.store_gauges)

        # --- SMTP (smtp/server.py) ---
        self.smtp_sessions = Counter(
            PREFIX + "smtp_sessions",
            "SMTP sessions by listener and how the connection was answered.",
            ["listener", "outcome"],
            registry=registry,
        )
        self.smtp_sessions_open = Gauge(
            PREFIX + "smtp_sessions_open",
            "SMTP sessions open now, by listener.",
            ["listener"],
            registry=registry,
        )
        self.smtp_messages = Counter(
            PREFIX + "smtp_messages",
            "Messages at the end of DATA by listener and outcome; reason is the enhanced "
            "status code of the reply.",
            ["listener", "outcome", "reason"],
            registry=registry,
        )
        self.smtp_recipients = Counter(
            PREFIX + "smtp_recipients",
            "RCPT TO answers by listener and outcome; reason is the enhanced status code "
            "of the reply.",
            ["listener", "outcome", "reason"],
            registry=registry,
        )

        # --- inbound checks (inbound/checks.py) ---
        self.auth_results = Counter(
            PREFIX + "inbound_auth_results",
            "Sender authentication results of messages on port 25, by method and result.",
            ["method", "result"],
            registry=registry,
        )
        self.inbound_decisions = Counter(
            PREFIX + "inbound_decisions",
            "What port 25's checks decided for a message: accepted, junk (filed into "
            "Junk), rejected (5xx, for any reason), tempfailed (4xx).",
            ["decision"],
            registry=registry,
        )

        # --- connection caps (connections.LimitedFactory) ---
        self.refused_connections = Counter(
            PREFIX + "refused_connections",
            "Connections refused by a listener's caps: total (the listener is full), "
            "per_client (too many from that client).",
            ["listener", "reason"],
            registry=registry,
        )

        # --- delivery (delivery/runner.py) ---
        self.domain_label = DomainLabels(top_domains)
        self.delivery_outcomes = Counter(
            PREFIX + "delivery_outcomes",
            f"Delivery attempts' outcomes by class and destination domain (the first "
            f"{top_domains} domains seen, the rest as other).",
            ["outcome", "domain"],
            registry=registry,
        )

        # --- IMAP (imap/server.py) ---
        self.imap_sessions = Counter(
            PREFIX + "imap_sessions",
            "IMAP sessions opened, by listener.",
            ["listener"],
            registry=registry,
        )
        self.imap_sessions_open = Gauge(
            PREFIX + "imap_sessions_open",
            "IMAP sessions open now, by listener.",
            ["listener"],
            registry=registry,
        )
        self.imap_logins = Counter(
            PREFIX + "imap_logins",
            "IMAP logins by outcome: success, failure, throttled, error.",
            ["outcome"],
            registry=registry,
        )

        # --- the store (store/pool.py, delivery/intake.py) ---
        self.store_operation_seconds = Histogram(
            PREFIX + "store_operation_seconds",
            "Store operations from the call to the commit (waiting for a store thread "
            "included), by operation.",
            ["operation"],
            buckets=STORE_SECONDS_BUCKETS,
            registry=registry,
        )
        self.group_commit_batch_size = Histogram(
            PREFIX + "group_commit_batch_size",
            "Items written per group commit, by writer.",
            ["writer"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )

    # --- what the counting code calls -------------------------------------------------

    def delivery_results(self, results) -> None:
        """Committed DeliveryResults, by outcome and their recipients' domains."""
        for result in results:
            domain = self.domain_label(result.domain)
            self.delivery_outcomes.labels(result.outcome, domain).inc()

    def inbound_decision(self, authentication, refused_code: int | None, junk: bool) -> None:
        """One message's checks: its authentication (None: not checked) and verdict."""
        if authentication is not None:
            spf = authentication.spf[0].result if authentication.spf else "none"
            dkim = [check.result for check in authentication.dkim]
            # A message's DKIM result: pass when one signature passes, else the first's.
            dkim_result = "pass" if "pass" in dkim else (dkim[0] if dkim else "none")
            for method, result in (
                ("spf", spf),
                ("dkim", dkim_result),
                ("dmarc", authentication.dmarc.result),
                ("arc", authentication.arc.result),
            ):
                self.auth_results.labels(method, auth_result(result)).inc()
        if refused_code is not None:
            decision = "rejected" if refused_code >= 500 else "tempfailed"
        else:
            decision = "junk" if junk else "accepted"
        self.inbound_decisions.labels(decision).inc()

    def refused_connection(self, listener: str, reason: str) -> None:
        """A connection the caps of `listener` refused (reason: connections.TOTAL or
        CLIENT)."""
        self.refused_connections.labels(listener, REFUSAL_REASONS.get(reason, OTHER)).inc()
