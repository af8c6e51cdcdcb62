"""What delivery found about campaign messages, as the delivery queue reports it: the
queue's store module calls these two operations of the send list's rows, in the
transaction that records the outcomes (store/campaign_recipients.py holds them)."""

from __future__ import annotations

from atollon_mail.store.campaign_recipients import mark_uncertain, record_campaign_results

__all__ = ["mark_uncertain", "record_campaign_results"]
