"""The stored values a person names outside the store, without the models: a domain's
modes, the states of a queue entry and of a campaign recipient, why an address is
suppressed, a mailbox's spam handling and folders, and utc_now, the clock every stored
timestamp is taken from. The models (`store.models`) use these same names; the web pages
and admin commands import them here.
"""

from __future__ import annotations

import datetime

DOMAIN_MODES = ("primary", "secondary")

QUEUE_STATES = ("queued", "in-flight", "deferred", "delivered", "bounced")

RECIPIENT_STATES = ("queued", "sending", "sent", "deferred", "bounced", "failed", "suppressed")
SUPPRESSION_REASONS = ("unsubscribed", "hard-bounce", "manual")

# A mailbox's spam handling: what happens to received mail the inbound checks call junk.
# "junk": filed into the mailbox's Junk; "tag": into the inbox, its verdict shown; "off":
# into the inbox like any other mail. The first is the default.
SPAM_HANDLINGS = ("junk", "tag", "off")
# Where a filing lies within its mailbox: the inbox (IMAP's INBOX, and every context the
# mailbox files into), the mailbox's Junk (IMAP's Junk, \Junk special use), its Drafts
# (\Drafts) or its Trash (\Trash; migration 10).
FOLDERS = ("inbox", "junk", "drafts", "trash")
INBOX, JUNK, DRAFTS, TRASH = FOLDERS
# The keyword of a filing that "File to..." added beside the message's first filing in a
# mailbox: it shows the message in that folder or project, never a second time in the
# mailbox's Inbox, Junk or Trash, nor in their counts (mailfolders, unread).
FILED_COPY_FLAG = "$Filed"


def utc_now() -> datetime.datetime:
    # Stored naive, always UTC: SQLite has no time zones and both backends then agree.
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
