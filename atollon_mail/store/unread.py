"""Store operations that count a mailbox's unread mail (what the open mailbox pages show
in their title when new mail is filed).

Each runs inside the one transaction `Store.run` opens and returns plain values.
"""

from __future__ import annotations

from atollon_mail.store.common import read_only
from atollon_mail.store.errors import Invalid
from atollon_mail.store.models import Filing
from atollon_mail.store.values import FOLDERS, INBOX

SEEN_FLAG = "\\Seen"


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
            # The flags are a space-separated list; LIKE with its wildcards escaped.
            & ~Filing.flags.contains(SEEN_FLAG)
        )
        .count()
    )
