"""The web service: resources served by twisted.web from the appliance process."""

import importlib

from twisted.web.resource import Resource

from atollon_mail.certificates.challenges import CHALLENGE_PATH, ChallengeResource
from atollon_mail.web.app import PageResource, StaticResource, WebApp
from atollon_mail.web.health import HealthResource
from atollon_mail.web.metrics import MetricsResource
from atollon_mail.web.unsubscribe import UnsubscribeResource


class WebRoot(Resource):
    """/health, /metrics, /static/ and /.well-known/acme-challenge/ are resources of their
    own; every other path is a page."""

    def __init__(self, app: WebApp, challenges: Resource | None = None):
        super().__init__()
        self.app = app
        self._pages = PageResource(app)
        self._challenges = challenges

    def getChild(self, path, request):
        # /.well-known/ holds pages too (autoconfig): only acme-challenge/ is not one.
        if (
            self._challenges is not None
            and path == CHALLENGE_PATH[0]
            and request.postpath[:1] == [CHALLENGE_PATH[1]]
        ):
            return self._challenges
        return self._pages

    def client_address(self, request) -> str:
        """The client of a request, behind a trusted proxy too (WebApp.client_address)."""
        return self.app.client_address(request)

    def body_limit(self, path: bytes, request=None) -> int:
        """Bytes of request body a path accepts: its route's max_body (bodylimit.py)."""
        return self.app.body_limit(path, request)


# Modules with more pages; each has register(app).
PAGE_MODULES: tuple[str, ...] = (
    "atollon_mail.web.pages_domains",
    "atollon_mail.web.pages_queue",
    "atollon_mail.web.pages_users",
    "atollon_mail.web.pages_mail",
    "atollon_mail.web.pages_folders",
    "atollon_mail.web.pages_compose",
    "atollon_mail.web.pages_mailboxes",
    "atollon_mail.web.pages_campaigns",
    "atollon_mail.web.pages_groups",
    "atollon_mail.web.pages_live",
    "atollon_mail.web.pages_contacts",
    "atollon_mail.web.pages_search",
    "atollon_mail.web.pages_autoconfig",
)


def build_web_app(
    store,
    config,
    reactor,
    intake,
    workers,
    authenticator,
    clock=None,
    learner=None,
    mail_events=None,
) -> WebApp:
    from atollon_mail.web import pages

    app = WebApp(
        store,
        reactor,
        config,
        intake,
        workers,
        authenticator,
        clock=clock,
        learner=learner,
        mail_events=mail_events,
    )
    pages.register(app)
    for module_name in PAGE_MODULES:
        importlib.import_module(module_name).register(app)
    return app


def build_web_root(
    store,
    config,
    reactor,
    intake,
    workers,
    authenticator,
    recipient_tokens=None,
    clock=None,
    learner=None,
    mail_events=None,
    metrics=None,
    challenge_answers=None,
) -> Resource:
    """The site's root resource. `intake` takes mail composed in the browser, `workers`
    (atollon_mail.workers.Workers) runs password hashing and DNS lookups, `authenticator`
    is the one SMTP AUTH uses; with `recipient_tokens`, campaign recipients' unsubscribe
    links are served; `learner` (an ISpamLearner, None without a spam filter) is taught
    what users move to Junk and back; `mail_events` (mailevents.MailEventStreams) tells
    the open mailbox pages of new mail; with `metrics` (atollon_mail.metrics.Metrics) they
    are served at /metrics; `challenge_answers`
    (certificates.challenges.ChallengeAnswers) are served, without login, at
    /.well-known/acme-challenge/<token> for the ACME CA."""
    app = build_web_app(
        store,
        config,
        reactor,
        intake,
        workers,
        authenticator,
        clock,
        learner=learner,
        mail_events=mail_events,
    )
    challenges = None if challenge_answers is None else ChallengeResource(challenge_answers)
    root = WebRoot(app, challenges)
    root.putChild(b"health", HealthResource(store))
    root.putChild(b"static", StaticResource(app))
    if metrics is not None:
        root.putChild(
            b"metrics",
            MetricsResource(metrics, store, config.web, clock or reactor, workers.in_cpu),
        )
    if recipient_tokens is not None:
        # Campaign recipients' own links: no login, the signed token is the credential.
        root.putChild(
            b"unsubscribe",
            UnsubscribeResource(app, store, recipient_tokens, clock or reactor),
        )
    return root
