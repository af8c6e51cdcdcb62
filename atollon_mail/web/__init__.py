"""The web service: resources served by twisted.web from the appliance process."""

from twisted.web.resource import Resource

from atollon_mail.web.health import HealthResource


def build_web_root(store) -> Resource:
    root = Resource()
    root.putChild(b"health", HealthResource(store))
    return root
