"""Shared fixtures: the appliance's pieces, built with what their builders give them."""

from __future__ import annotations

from twisted.internet import reactor

from atollon_mail.auth import build_authenticator
from atollon_mail.delivery.intake import Intake
from atollon_mail.events import Events
from atollon_mail.web import build_web_root
from atollon_mail.workers import Workers


def started_workers(test, reactor=reactor) -> Workers:
    """The worker pools, started for one test and stopped after it."""
    workers = Workers(reactor)
    workers.startService()
    test.addCleanup(workers.stopService)
    return workers


def web_root(
    test,
    store,
    config,
    reactor,
    clock=None,
    recipient_tokens=None,
    authenticator=None,
    intake=None,
):
    """The web root as the web builder makes it: a real intake on `store` (with events
    nobody listens to), started workers, and argon2 in their CPU pool unless the test
    brings its own `authenticator`."""
    workers = started_workers(test, reactor)
    if intake is None:
        intake = Intake(store, Events())
    if authenticator is None:
        authenticator = build_authenticator(store, reactor, workers.cpu, clock)
    return build_web_root(
        store,
        config,
        reactor,
        intake,
        workers,
        authenticator,
        recipient_tokens=recipient_tokens,
        clock=clock,
    )
