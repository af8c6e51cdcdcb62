"""Web pages: what the compose form asks while it is being written (address suggestions).

The compose page itself, with its drafts and attachments, is in pages_mail."""

from __future__ import annotations

from atollon_mail.store import addressbook
from atollon_mail.web.app import PageRequest, WebApp
from atollon_mail.web.compose import write_json


def register(app: WebApp) -> None:
    @app.route("/mail/addresses")
    async def addresses(page: PageRequest):
        """JSON: {"matches": [{"name", "address", "label"}]}, at most 10, for the prefix
        `q` of an address or name; only mailboxes and contacts the user may see."""
        found = await page.store.run(addressbook.suggest_addresses, page.user.login, page.arg("q"))
        matches = [
            {"name": item.name, "address": item.address, "label": item.label} for item in found
        ]
        return write_json(page.request, {"matches": matches})
