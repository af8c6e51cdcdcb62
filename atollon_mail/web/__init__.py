"""The web service: resources served by twisted.web from the appliance process."""

import importlib

from twisted.web.resource import Resource

from atollon_mail.auth import build_authenticator
from atollon_mail.delivery.intake import Intake
from atollon_mail.web.app import PageResource, StaticResource, WebApp
from atollon_mail.web.health import HealthResource
from atollon_mail.web.unsubscribe import UnsubscribeResource


class WebRoot(Resource):
    """/health and /static/ are resources of their own; every other path is a page."""

    def __init__(self, app: WebApp):
        super().__init__()
        self.app = app
        self._pages = PageResource(app)

    def getChild(self, path, request):
        return self._pages

    def client_address(self, request) -> str:
        """The client of a request, behind a trusted proxy too (WebApp.client_address)."""
        return self.app.client_address(request)

    def body_limit(self, path: bytes) -> int:
        """Bytes of request body a path accepts: its route's max_body (bodylimit.py)."""
        return self.app.body_limit(path)


# Modules with more pages; each has register(app).
PAGE_MODULES: tuple[str, ...] = (
    "atollon_mail.web.pages_domains",
    "atollon_mail.web.pages_queue",
    "atollon_mail.web.pages_users",
    "atollon_mail.web.pages_mail",
    "atollon_mail.web.pages_mailboxes",
    "atollon_mail.web.pages_campaigns",
    "atollon_mail.web.pages_groups",
)


def build_web_app(store, config, reactor, clock=None, intake=None, authenticator=None) -> WebApp:
    from atollon_mail.web import pages

    if authenticator is None:  # the appliance passes the one SMTP AUTH uses
        authenticator = build_authenticator(store, reactor, reactor.getThreadPool(), clock)
    app = WebApp(
        store,
        reactor,
        clock=clock,
        appliance_name=config.appliance.hostname,
        session_idle_timeout=config.web.session_idle_timeout,
        authenticator=authenticator,
        trusted_proxies=config.web.trusted_proxies,
    )
    app.config = config  # pages that need settings (DNS lookups) read them here
    # Mail composed in the browser goes through the same intake as SMTP submission:
    # forwarding, group commit, the auto-responder and the delivery runner's wake-up.
    app.intake = intake if intake is not None else Intake(store)
    pages.register(app)
    for module_name in PAGE_MODULES:
        importlib.import_module(module_name).register(app)
    return app


def build_web_root(
    store, config, reactor, clock=None, intake=None, recipient_tokens=None, authenticator=None
) -> Resource:
    app = build_web_app(store, config, reactor, clock, intake, authenticator)
    root = WebRoot(app)
    root.putChild(b"health", HealthResource(store))
    root.putChild(b"static", StaticResource(app))
    if recipient_tokens is not None:
        # Campaign recipients' own links: no login, the signed token is the credential.
        root.putChild(
            b"unsubscribe",
            UnsubscribeResource(app, store, recipient_tokens, clock or reactor),
        )
    return root
