"""Store operations for drafts: messages written in the web client and not sent yet.

A draft is a message filed into its mailbox's Drafts folder (values.DRAFTS), in the
mailbox's "store messages to" context, flagged \\Draft and \\Seen. Saving it again
replaces it as an IMAP client does (APPEND the new, expunge the old): the old filing goes,
and with it the message when nothing else holds it; the new one gets the mailbox's next
uid. Sending a draft removes it the same way.
"""

from __future__ import annotations

import attrs

from atollon_mail.store.common import changes_mailbox
from atollon_mail.store.errors import NotFound
from atollon_mail.store.filing import (
    default_type_ids,
    execute_prepared,
    insert_message,
    lock_mailboxes,
    remove_unused_messages,
)
from atollon_mail.store.mailboxes import get_mailbox_row
from atollon_mail.store.models import Filing, utc_now
from atollon_mail.store.records import OutgoingMessage
from atollon_mail.store.values import DRAFTS

DRAFT_FLAGS = "\\Draft \\Seen"


@attrs.frozen
class SavedDraft:
    """A draft as saved: its message's id and uid in the mailbox; `replaced`: the id of
    the draft it replaced (None: none, or that one was gone already)."""

    message_id: int
    uid: int
    replaced: int | None


def _remove(mailbox_id: int, message_id: int) -> bool:
    """The draft's filing gone, and its message when nothing else needs it (a draft's
    message is its own, but a copy could have been filed elsewhere over IMAP)."""
    filing_ids = [
        row[0]
        for row in Filing.select(Filing.id)
        .where(
            (Filing.mailbox == mailbox_id)
            & (Filing.message == message_id)
            & (Filing.folder == DRAFTS)
        )
        .tuples()
    ]
    if not filing_ids:
        return False
    Filing.delete().where(Filing.id.in_(filing_ids)).execute()
    remove_unused_messages([message_id])
    return True


@changes_mailbox
def save_draft(
    mailbox_address: str, draft: OutgoingMessage, replaces: int | None = None
) -> SavedDraft:
    """File `draft` (its bytes and summary headers; recipients are not looked at) into the
    mailbox's Drafts; the draft `replaces` (a message id) goes, if it is still one of
    this mailbox's drafts."""
    mailbox = get_mailbox_row(mailbox_address)
    lock_mailboxes([mailbox.id])
    now = utc_now()
    stamp = Filing.filed_at.db_value(now)
    replaced = replaces if replaces is not None and _remove(mailbox.id, replaces) else None
    _, outgoing_type = default_type_ids()
    message_id = insert_message(draft, stamp, outgoing_type, delivered=False)
    (next_uid,) = execute_prepared("next_uid", (mailbox.id,)).fetchone()
    (context_id,) = execute_prepared("store_to", (mailbox.id,)).fetchone()
    Filing.insert(
        message=message_id,
        mailbox=mailbox.id,
        context=context_id,
        uid=next_uid - 1,
        flags=DRAFT_FLAGS,
        filed_at=now,
        folder=DRAFTS,
    ).execute()
    return SavedDraft(message_id=message_id, uid=next_uid - 1, replaced=replaced)


@changes_mailbox
def delete_draft(mailbox_address: str, message_id: int) -> None:
    """Remove a draft of this mailbox (sent, or thrown away); NotFound when the message is
    no draft here."""
    mailbox = get_mailbox_row(mailbox_address)
    lock_mailboxes([mailbox.id])
    if not _remove(mailbox.id, message_id):
        raise NotFound(
            f"no draft {message_id} in {mailbox.local_part}@{mailbox.domain.name}; "
            "it was sent or removed already"
        )
