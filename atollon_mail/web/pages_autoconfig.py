"""Thunderbird's autoconfig: the settings of an address, so that a mail client sets itself
up from the address and a password alone (the password of the mailbox's owner: a mailbox's
address is accepted as the login, see atollon_mail.auth).

Thunderbird asks https://autoconfig.DOMAIN/mail/config-v1.1.xml?emailaddress=ADDRESS (the
autoconfig host name `dns records` proposes), then
https://DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml; both are answered here, with
no login. The domain is the address's or, without an address, the host the request was
sent to, less "autoconfig.". A domain not hosted here is answered 404. Whether an address
exists is never told: every address of a hosted domain gets the same answer.

The answer names the domain asked about, not every domain hosted here: which domains an
appliance serves is not for anyone who asks. The servers and ports are those of
atollon_mail.discovery, the same the SRV records name.
"""

from __future__ import annotations

from atollon_mail.discovery import client_services
from atollon_mail.store import domains
from atollon_mail.web.app import HttpError, Page, PageRequest, WebApp, not_found

AUTOCONFIG_PATHS = (
    "/.well-known/autoconfig/mail/config-v1.1.xml",
    "/mail/config-v1.1.xml",
)
XML = "text/xml; charset=utf-8"
MAX_ADDRESS = 320  # characters: a local part of 64, "@", a domain of 253, and some slack


def asked_domain(page: PageRequest) -> str:
    """The domain a request asks the settings of (not yet checked to be one)."""
    address = page.arg("emailaddress").strip()
    if address:
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or len(address) > MAX_ADDRESS:
            raise HttpError(400, "Give the address to set up as emailaddress=name@example.com.")
        return domain
    host = page.request.getRequestHostname().decode("ascii", "replace").lower()
    return host.removeprefix("autoconfig.")


def register(app: WebApp) -> None:
    services = client_services(app.config)

    async def autoconfig(page: PageRequest):
        domain = await page.store.run(domains.hosted_domain, asked_domain(page))
        if domain is None:
            raise not_found()
        context = {
            "domain": domain,
            "hostname": services.hostname,
            "incoming": services.offered("imap"),
            "outgoing": services.offered("smtp"),
        }
        return Page("autoconfig.xml", context, content_type=XML)

    for path in AUTOCONFIG_PATHS:
        app.route(path, login=False)(autoconfig)
