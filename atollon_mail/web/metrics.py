"""GET /metrics: the appliance's metrics (atollon_mail.metrics) in Prometheus's text
format, or OpenMetrics when the scraper asks for it.

Served to a client whose own TCP address is in [web] metrics_networks, or that sends
"Authorization: Bearer" (the scheme in any case, RFC 7235) with [web] metrics_token;
anyone else gets 403. The address is the TCP peer's, never a header's: a request that
carries any header a proxy adds (X-Forwarded-*, Forwarded, X-Real-IP, Via, ...) is not
taken as coming from the proxy's network either, so a reverse proxy on this host does
not open /metrics to everyone behind it; through a proxy, the token is the way. A proxy
on this host that adds none of them (a TCP proxy, a bare proxy_pass) cannot be told from
a local scraper: the README says a proxy on this host must set X-Forwarded-For (the
login throttle needs it too), and the start-up log warns when metrics_networks and [web]
trusted_proxies share other than loopback addresses (a proxy on another machine). The
defaults share loopback: a warning at every start of a default install would teach
people to ignore the log. 403 rather than 404: /metrics is no secret (the README documents it),
and a scraper's operator reading "403" knows at once that access, not the path, is
wrong.

A scrape takes the queue and campaign gauges from the store (store.run, off the reactor
thread) at most once per GAUGES_INTERVAL, scrapes meanwhile sharing that answer or the
question still under way, then renders the registry in the CPU workers (the process
collector reads /proc).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress

import attrs
from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from atollon_mail.config import WebConfig
from atollon_mail.metrics import Metrics
from atollon_mail.store import monitoring

log = Logger()

FORBIDDEN = (
    b"Metrics are served to [web] metrics_networks, or with the bearer token of "
    b"[web] metrics_token.\n"
)
# Headers a proxy adds: a request with one of them came through a proxy, whatever its
# TCP peer (besides any header named X-Forwarded-*).
PROXY_HEADERS = frozenset(
    {
        b"forwarded",
        b"via",
        b"x-real-ip",
        b"x-client-ip",
        b"client-ip",
        b"true-client-ip",
        b"x-cluster-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-original-forwarded-for",
        b"x-proxyuser-ip",
    }
)
# The store's gauges are read at most this often (seconds on the injected clock):
# Prometheus scrapes every 15 s by default, and several scrapers (HA pairs, a person
# with curl) must not multiply the queries on the store's single SQLite thread.
GAUGES_INTERVAL = 15.0


def came_through_a_proxy(request) -> bool:
    return any(
        name.lower() in PROXY_HEADERS or name.lower().startswith(b"x-forwarded-")
        for name, _ in request.requestHeaders.getAllRawHeaders()
    )


def overlapping(networks, proxies) -> list[str]:
    """The networks of `networks` that overlap one of `proxies` (ip_network objects)."""
    return [
        str(network)
        for network in networks
        if any(network.version == proxy.version and network.overlaps(proxy) for proxy in proxies)
    ]


def _digest(value: bytes) -> bytes:
    # Compared as digests: equal lengths, so compare_digest's time tells nothing either.
    return hashlib.sha256(value).digest()


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics, store, settings: WebConfig, clock, in_cpu):
        """`in_cpu(function, *args)` runs the rendering off the reactor thread (the
        workers' CPU pool); `clock` gives the time the queue's age is measured at."""
        super().__init__()
        self._metrics = metrics
        self._store = store
        self._clock = clock
        self._in_cpu = in_cpu
        self._networks = tuple(
            ipaddress.ip_network(network, strict=False) for network in settings.metrics_networks
        )
        proxies = tuple(
            ipaddress.ip_network(network, strict=False) for network in settings.trusted_proxies
        )
        shared = [
            network
            for network in overlapping(self._networks, proxies)
            if not ipaddress.ip_network(network).is_loopback
        ]
        if shared:
            log.warn(
                "[web] metrics_networks ({shared}) overlaps [web] trusted_proxies: a proxy "
                "there that passes /metrics adding no proxy header (X-Forwarded-For, "
                "Forwarded, X-Real-IP, Via...) opens it to everyone behind it; have it set "
                "X-Forwarded-For, or not pass /metrics",
                shared=" ".join(shared),
            )
        token = settings.metrics_token
        self._token = None if not token else _digest(token.encode("utf-8"))
        # The store's gauges as last read, when (clock seconds), and the read under way.
        self._gauges = None
        self._gauges_at: float | None = None
        self._reading: list[Deferred] | None = None

    def render(self, request):
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"/metrics is read with GET.\n"
        if not self.allowed(request):
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return FORBIDDEN
        finished = request.notifyFinish()
        finished.addErrback(lambda _: None)  # the scraper went away; nothing to answer
        answer = Deferred.fromCoroutine(self._answer(request))
        answer.addErrback(self._failed, request)
        return NOT_DONE_YET

    def allowed(self, request) -> bool:
        if self._token is not None:
            scheme, _, credentials = (request.getHeader(b"authorization") or b"").partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(
                _digest(credentials.strip()), self._token
            ):
                return True
        if came_through_a_proxy(request):
            return False
        host = getattr(request.getClientAddress(), "host", None)
        try:
            address = ipaddress.ip_address((host or "").split("%")[0])
        except ValueError:
            return False  # a UNIX socket or an unknown peer: not in any network
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def store_gauges(self) -> Deferred:
        """The store's gauges (None: the store failed): as read less than
        GAUGES_INTERVAL ago, with the oldest message's age brought to now; else from
        the read under way, or a new one."""
        now = self._clock.seconds()
        if self._gauges_at is not None and now - self._gauges_at < GAUGES_INTERVAL:
            gauges = self._gauges
            if gauges.oldest_waiting_seconds is not None:
                gauges = attrs.evolve(
                    gauges,
                    oldest_waiting_seconds=gauges.oldest_waiting_seconds + now - self._gauges_at,
                )
            return succeed(gauges)
        waiter: Deferred = Deferred()
        if self._reading is not None:
            self._reading.append(waiter)
            return waiter
        self._reading = [waiter]
        at = datetime.datetime.fromtimestamp(now, datetime.UTC).replace(tzinfo=None)
        reading = self._store.run(monitoring.gauges, at)
        reading.addCallbacks(self._read, self._not_read, (now,))
        return waiter

    def _read(self, gauges, at: float) -> None:
        self._gauges, self._gauges_at = gauges, at
        self._tell_readers(gauges)

    def _not_read(self, failure) -> None:
        # The other metrics still tell what the process sees; the store's are left out
        # rather than shown stale, and the next scrape asks again.
        log.failure("metrics: the store did not answer", failure)
        self._gauges, self._gauges_at = None, None
        self._tell_readers(None)

    def _tell_readers(self, gauges) -> None:
        waiters, self._reading = self._reading or [], None
        for waiter in waiters:
            waiter.callback(gauges)

    async def _answer(self, request) -> None:
        gauges = await self.store_gauges()
        self._metrics.store_gauges.update(gauges)
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else None)
        body = await self._in_cpu(encoder, self._metrics.registry)
        if request.finished or request._disconnected:
            return
        request.setHeader(b"content-type", content_type.encode("ascii"))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _failed(self, failure, request) -> None:
        log.failure("metrics: rendering failed", failure)
        if request.finished or request._disconnected:
            return
        request.setResponseCode(500)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.write(b"The metrics could not be rendered; see the appliance's log.\n")
        request.finish()
