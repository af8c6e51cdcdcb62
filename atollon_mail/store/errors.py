"""Refusals from store operations. str() is one line for a person: what is wrong, what to do."""


class StoreError(Exception):
    """A request the store refused; nothing was changed."""


class NotFound(StoreError):
    pass


class Ambiguous(StoreError):
    """A name that matches several things; str() lists the first candidates."""


class Conflict(StoreError):
    pass


class Invalid(StoreError):
    pass


class IdentityRefused(Invalid):
    """An address a mailbox may not send as (see `store.identities`)."""


class ReadOnly(StoreError):
    """A change asked of what the user may only view (a mailbox shared to view)."""
