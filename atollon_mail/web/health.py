"""GET /health: whether the appliance can reach its store, for monitoring and load checks."""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from atollon_mail import __version__
from atollon_mail.store import filing

log = Logger()


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, store):
        super().__init__()
        self._store = store

    def render(self, request):
        # Like every page, whatever the method (a refused one too).
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        return super().render(request)

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        finished = request.notifyFinish()
        finished.addErrback(lambda _: None)  # the client went away; nothing to answer

        def answer(status: int, body: dict) -> None:
            if request.finished or request._disconnected:
                return
            request.setResponseCode(status)
            request.write(json.dumps(body).encode() + b"\n")
            request.finish()

        def healthy(messages: int) -> None:
            answer(200, {"status": "ok", "version": __version__, "messages_stored": messages})

        def unhealthy(failure) -> None:
            log.failure("health check: the store did not answer", failure)
            answer(503, {"status": "unavailable", "problem": "the store did not answer"})

        self._store.run(filing.count_messages).addCallbacks(healthy, unhealthy)
        return NOT_DONE_YET
