"""Store operations for contexts (each user's To Do, folders and projects mail is filed
into), and the "store to" targets a mailbox's mail may be filed into.

Each runs inside the one transaction `Store.run` opens and returns frozen records.
"""

from __future__ import annotations

import peewee

from atollon_mail.store.accounts import get_user_row
from atollon_mail.store.common import limited, read_only
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.models import CONTEXT_KINDS, Context, Mailbox, User, utc_now
from atollon_mail.store.records import ContextRecord


def context_record(context: Context) -> ContextRecord:
    owner = context.owner.login if context.owner_id is not None else None
    return ContextRecord(id=context.id, kind=context.kind, name=context.name, owner_login=owner)


def _todo_context(user_id: int) -> Context:
    return Context.get((Context.owner == user_id) & (Context.kind == "todo"))


def mailbox_store_to(mailbox: Mailbox) -> Context:
    if mailbox.store_to_id is not None:
        return mailbox.store_to
    return _todo_context(mailbox.owner_id)


def add_context(kind: str, name: str, owner_login: str | None = None) -> ContextRecord:
    if kind not in CONTEXT_KINDS or kind == "todo":
        raise Invalid(f"kind must be folder or project, got {kind!r} (each user has one To Do)")
    name = limited(name, 200, "name")
    if not name:
        raise Invalid("a folder or project needs a name")
    owner = get_user_row(owner_login) if owner_login else None
    context = Context.create(kind=kind, name=name, owner=owner, created_at=utc_now())
    return context_record(context)


@read_only
def list_contexts() -> list[ContextRecord]:
    query = Context.select(Context, User).join(User, peewee.JOIN.LEFT_OUTER).order_by(Context.id)
    return [context_record(context) for context in query]


def get_context_row(context_id: int) -> Context:
    try:
        return Context.get_by_id(context_id)
    except Context.DoesNotExist:
        raise NotFound(f"no folder or project with id {context_id}; see: context list") from None


def store_targets_for(owner_id: int) -> peewee.ModelSelect:
    """The folders and projects the mail of `owner_id`'s mailboxes may be filed into: the
    owner's own and those no user owns (the organizations'); never another user's (a
    private folder, the Sent folder of a mailbox of theirs)."""
    return (
        Context.select(Context, User)
        .join(User, peewee.JOIN.LEFT_OUTER)
        .where(
            Context.kind.in_(("folder", "project"))
            & (Context.owner.is_null() | (Context.owner == owner_id))
        )
    )


def store_target(owner_id: int, context_id: int) -> Context | None:
    """The folder or project `context_id` if `store_targets_for` holds it (None: the owner's
    To Do); another user's context is Invalid."""
    context = get_context_row(context_id)
    if context.kind == "todo" and context.owner_id == owner_id:
        return None
    found = store_targets_for(owner_id).where(Context.id == context.id).first()
    if found is None:
        raise Invalid(
            f"{context.kind} {context.id} ({context.name}) belongs to another user; give a "
            "folder or project of the mailbox's owner or of no user; see: context list"
        )
    return found
