"""/unsubscribe/<token>: a recipient's own unsubscribe link from a campaign.

GET shows the address and one button; POST unsubscribes. The POST is also RFC 8058's
one-click unsubscribe, which mail providers send with the body
"List-Unsubscribe=One-Click" and no cookies: the signed token is the only credential, so
there is no session and no CSRF token here, and the answer is the same however often it
is repeated. A GET never unsubscribes (link scanners follow links).
"""

from __future__ import annotations

import datetime

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from atollon_mail.massmail.tokens import BadToken, RecipientTokens
from atollon_mail.store import campaign_recipients
from atollon_mail.store.errors import NotFound

log = Logger()

_UNKNOWN = "This unsubscribe link is not valid. Use the link from the message itself."


class UnsubscribeResource(Resource):
    def __init__(self, app, store, tokens: RecipientTokens, clock):
        super().__init__()
        self._app = app
        self._store = store
        self._tokens = tokens
        self._clock = clock

    def getChild(self, path: bytes, request):
        if request.postpath:  # /unsubscribe/<token>/more is not ours
            return _Unknown(self._app)
        return _UnsubscribeLink(self, path.decode("ascii", "replace"))

    def render_GET(self, request):
        return _Unknown(self._app).render(request)

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC).replace(
            tzinfo=None
        )


class _Unknown(Resource):
    isLeaf = True

    def __init__(self, app):
        super().__init__()
        self._app = app

    def render(self, request):
        self._app.write_page(
            request, 404, "error.html", status=404, title="Not found", message=_UNKNOWN
        )
        return NOT_DONE_YET


class _UnsubscribeLink(Resource):
    isLeaf = True

    def __init__(self, parent: UnsubscribeResource, token: str):
        super().__init__()
        self._parent = parent
        self._token = token

    def _row(self, request) -> int | None:
        try:
            return self._parent._tokens.read("unsubscribe", self._token)
        except BadToken:
            _Unknown(self._parent._app).render(request)
            return None

    def _answer(self, request, response_code: int, template: str, **context) -> None:
        if request.finished or request._disconnected:
            return
        self._parent._app.write_page(request, response_code, template, **context)

    def _failed(self, failure, request) -> None:
        if failure.check(NotFound):
            self._answer(
                request, 404, "error.html", status=404, title="Not found", message=_UNKNOWN
            )
            return
        log.failure("unsubscribing failed", failure)
        self._answer(
            request,
            503,
            "error.html",
            status=503,
            title="Try again",
            message="Your request could not be saved just now; try again in a minute.",
        )

    def render_GET(self, request):
        row = self._row(request)
        if row is None:
            return NOT_DONE_YET
        looked_up = self._parent._store.run(campaign_recipients.row_address, row)

        def show(address):
            if address is None:
                self._answer(
                    request, 404, "error.html", status=404, title="Not found", message=_UNKNOWN
                )
                return
            self._answer(request, 200, "unsubscribe.html", address=address, done=False)

        looked_up.addCallbacks(show, self._failed, errbackArgs=(request,))
        request.notifyFinish().addErrback(lambda _: None)
        return NOT_DONE_YET

    def render_POST(self, request):
        row = self._row(request)
        if row is None:
            return NOT_DONE_YET
        done = self._parent._store.run(
            campaign_recipients.unsubscribe_row, row, "web", self._parent.now()
        )

        def unsubscribed(result):
            self._answer(request, 200, "unsubscribe.html", address=result.address, done=True)

        done.addCallbacks(unsubscribed, self._failed, errbackArgs=(request,))
        request.notifyFinish().addErrback(lambda _: None)
        return NOT_DONE_YET
