"""Read-only store operations for the mail client of the web admin."""

from __future__ import annotations

from atollon_mail.store import mailboxes
from atollon_mail.store.common import read_only
from atollon_mail.store.errors import NotFound
from atollon_mail.store.models import Filing, Message
from atollon_mail.store.queries import _get_mailbox, list_mailboxes
from atollon_mail.store.records import MailboxRecord


@read_only
def viewable_mailboxes(login: str) -> list[MailboxRecord]:
    """The mailboxes the user may view, by the same rule as every other page."""
    return [
        mailbox
        for mailbox in list_mailboxes()
        if mailboxes.user_rights(login, mailbox.address).view
    ]


@read_only
def mailbox_message_raw(mailbox_address: str, message_id: int) -> bytes:
    """A message's raw bytes, only if it is filed in this mailbox: an id alone shows
    nothing of another mailbox's mail."""
    mailbox = _get_mailbox(mailbox_address)
    filed = Filing.select(Filing.id).where(
        (Filing.mailbox == mailbox.id) & (Filing.message == message_id)
    )
    if not filed.exists():
        raise NotFound(f"no message {message_id} in {mailbox_address}")
    message = Message.get_or_none(Message.id == message_id)
    if message is None:
        raise NotFound(f"no message with id {message_id}")
    return bytes(message.raw)
