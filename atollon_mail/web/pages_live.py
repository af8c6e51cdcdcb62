"""Web pages: the mailbox page's live updates, GET /mail/events?address=... (an event
stream of the mailbox's new mail; see mailevents.py).

A person who is not logged in, or may not view the mailbox, gets 404 as on every page
of it (a login page would be no use to the page's script); over the caps, 503 with
Retry-After.
"""

from __future__ import annotations

from atollon_mail.store import mailboxes
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.web.app import HttpError, PageRequest, Streaming, WebApp, not_found
from atollon_mail.web.mailevents import RETRY_AFTER, StreamsFull
from atollon_mail.web.sessions import token_hash


def register(app: WebApp) -> None:
    if app.mail_events is None:
        return  # no stream to serve: /mail/events is not found, the pages stay as loaded

    @app.route("/mail/events", login=False)
    async def events(page: PageRequest):
        if page.user is None:
            raise not_found()
        await page.require_view(page.arg("address"))
        try:
            mailbox = await page.store.run(mailboxes.get_mailbox, page.arg("address"))
        except (NotFound, Invalid):
            raise not_found() from None
        request = page.request
        if request.finished or request._disconnected:
            return Streaming()  # the page was left while its rights were read
        if request.method == b"HEAD":
            request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            request.finish()
            return Streaming()
        try:
            session_id = page.session.id
            app.mail_events.open(
                request,
                page.user.login,
                mailbox.id,
                alive=lambda: app.sessions.alive(session_id),
                session=token_hash(session_id),
            )
        except StreamsFull as full:
            raise HttpError(503, str(full), {"Retry-After": str(RETRY_AFTER)}) from None
        return Streaming()
