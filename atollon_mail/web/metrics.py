"""GET /metrics: the appliance's metrics (atollon_mail.metrics) in Prometheus's text
format, or OpenMetrics when the scraper asks for it.

Served to a client whose own TCP address is in [web] metrics_networks, or that sends
"Authorization: Bearer" with [web] metrics_token; anyone else gets 403. The address is the
TCP peer's, never a header's: a request forwarded by a proxy (it has X-Forwarded-For or
Forwarded) is not taken as coming from the proxy's network either, so a reverse proxy on
this host does not open /metrics to everyone behind it; through a proxy, the token is
the way. 403 rather than 404: /metrics is no secret (the README documents it), and a
scraper's operator reading "403" knows at once that access, not the path, is wrong.

Each scrape first asks the store for the queue and campaign gauges (store.run, off the
reactor thread), then renders the registry in the CPU workers (the process collector
reads /proc).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress

from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import Deferred
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
FORWARDING_HEADERS = (b"x-forwarded-for", b"forwarded")


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
        token = settings.metrics_token
        self._token = None if not token else _digest(b"Bearer " + token.encode("utf-8"))

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
            sent = request.getHeader(b"authorization")
            if sent is not None and hmac.compare_digest(_digest(sent.strip()), self._token):
                return True
        if any(request.requestHeaders.hasHeader(name) for name in FORWARDING_HEADERS):
            return False
        host = getattr(request.getClientAddress(), "host", None)
        try:
            address = ipaddress.ip_address((host or "").split("%")[0])
        except ValueError:
            return False  # a UNIX socket or an unknown peer: not in any network
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    async def _answer(self, request) -> None:
        now = datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)
        try:
            gauges = await self._store.run(monitoring.gauges, now.replace(tzinfo=None))
        except Exception:
            # The other metrics still tell what the process sees; the store's are left
            # out rather than shown stale.
            log.failure("metrics: the store did not answer")
            gauges = None
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
