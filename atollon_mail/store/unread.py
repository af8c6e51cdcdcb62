"""Store operations that count a mailbox's unread mail (what the open mailbox pages show
in their title when new mail is filed) and say who may still hear of it.

Each runs inside the one transaction `Store.run` opens and returns plain values.
"""

from __future__ import annotations

import attrs

from atollon_mail.store import mailboxes
from atollon_mail.store.common import read_only
from atollon_mail.store.errors import Invalid
from atollon_mail.store.filing import FILED_COPY_FLAG, SEEN_FLAG, has_flag
from atollon_mail.store.models import Filing
from atollon_mail.store.values import FOLDERS, INBOX


@read_only
def count_unread(mailbox_id: int, folder: str = INBOX) -> int:
    """How many filings in a folder (values.FOLDERS) of the mailbox lack \\Seen; a mailbox
    that is gone has none."""
    if folder not in FOLDERS:
        raise Invalid(f"{folder!r} is not a folder; one of {', '.join(FOLDERS)}")
    return (
        Filing.select()
        .where(
            (Filing.mailbox == mailbox_id)
            & (Filing.folder == folder)
            # The flags are a space-separated list: whole words matched.
            & ~has_flag(SEEN_FLAG)
            & ~has_flag(FILED_COPY_FLAG)
        )
        .count()
    )


@attrs.frozen
class MailboxNews:
    """What the open pages of a mailbox are told after mail was filed into it."""

    unread: int  # in its inbox
    viewers: frozenset[str]  # the logins asked about that may still view it


@read_only
def mailbox_news(mailbox_id: int, logins: tuple[str, ...]) -> MailboxNews:
    """The inbox's unread count and which of `logins` (those whose pages listen) may
    still view the mailbox: one query per piece of news, however many pages listen."""
    return MailboxNews(
        unread=count_unread(mailbox_id),
        viewers=mailboxes.viewers(mailbox_id, tuple(logins)),
    )
