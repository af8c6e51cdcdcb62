"""Store operation for the address suggestions of the web client's compose form: the
mailboxes the user may view and the CRM contacts the user may see whose address or name
starts with what was typed.

Who sees which contacts: the CRM's contacts are the organization's shared address book,
which every user who logs in may list and open in the web (web.pages_contacts), so every
contact with an address is offered to every user, beside the mailboxes they may view.
"""

from __future__ import annotations

import attrs
import peewee

from atollon_mail.store import mailboxes
from atollon_mail.store.accounts import get_user_row
from atollon_mail.store.common import folded, read_only
from atollon_mail.store.database import is_sqlite
from atollon_mail.store.mailboxes import list_mailboxes
from atollon_mail.store.models import Contact, User, database_proxy

MOST_SUGGESTIONS = 10
_LONGEST_PREFIX = 100


@attrs.frozen
class AddressSuggestion:
    name: str  # "" when none is known
    address: str
    kind: str  # "mailbox" or "contact"

    @property
    def label(self) -> str:
        """As the form's address fields take it (a name that holds a comma, quote or
        angle bracket would be split there: the address alone)."""
        awkward = any(c in self.name for c in ',;:"<>()[]\\@')
        return f"{self.name} <{self.address}>" if self.name and not awkward else self.address


def _starts(text: str, prefix: str) -> bool:
    return text.casefold().startswith(prefix)


def _starts_with(column, prefix: str):
    """The column starts with prefix, ignoring case; % and _ are plain characters."""
    position = peewee.fn.INSTR if is_sqlite(database_proxy.obj) else peewee.fn.STRPOS
    return position(folded(column), folded(prefix)) == 1


@read_only
def suggest_addresses(
    login: str, prefix: str, limit: int = MOST_SUGGESTIONS
) -> list[AddressSuggestion]:
    """At most `limit` addresses for `prefix` (the start of an address, of a name or of a
    word of a name): the user's viewable mailboxes first (a user's default mailbox named
    and found by the user's name too), then CRM contacts."""
    prefix = " ".join(prefix.split())[:_LONGEST_PREFIX]
    if not prefix:
        return []
    wanted = prefix.casefold()
    get_user_row(login)  # NotFound for a user that is gone
    names = dict(User.select(User.login, User.name).tuples())
    found: dict[str, AddressSuggestion] = {}
    for mailbox in list_mailboxes():
        if len(found) >= limit:
            break
        # The owner's name belongs to their default mailbox; a shared one such as
        # sales@ is not theirs to be named by, and is found by its address.
        name = names.get(mailbox.owner_login, "") if mailbox.is_default else ""
        words = [name, *name.split()] if name else []
        addresses = dict.fromkeys([mailbox.identity, mailbox.address])
        matching = [a for a in addresses if _starts(a, wanted)]
        if not matching and any(_starts(word, wanted) for word in words):
            matching = [mailbox.identity]
        if not matching or not mailboxes.user_rights(login, mailbox.address).view:
            continue
        for address in matching:
            found.setdefault(address.lower(), AddressSuggestion(name, address, "mailbox"))
    if len(found) < limit:
        condition = (
            _starts_with(Contact.email, prefix)
            | _starts_with(Contact.name, prefix)
            | _starts_with(Contact.first_name, prefix)
            | _starts_with(Contact.last_name, prefix)
        )
        query = (
            Contact.select(Contact.name, Contact.email)
            .where((Contact.email != "") & condition)
            .order_by(Contact.name, Contact.id)
            .limit(limit * 2)
            .tuples()
        )
        for name, address in query:
            if len(found) >= limit:
                break
            found.setdefault(address.lower(), AddressSuggestion(name, address, "contact"))
    return list(found.values())[:limit]
