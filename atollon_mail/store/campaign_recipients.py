"""Store operations on a campaign's recipients (the rows of its send list): progress
(counts per state, rate, time left), the send list as shown, what delivery, bounces and
unsubscribes write back to the rows, and the suppression list.

Every delivery outcome of a campaign message lands on its row in the transaction that
records it: a campaign message enters the queue with its row as its origin, and the
"campaign" hooks registered here (store.origins) are what the queue calls. A hard bounce
or an unsubscribe puts the row's address on the suppression list, which no later send
list sends to.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from peewee import JOIN, fn

from atollon_mail.store import origins
from atollon_mail.store.campaign_records import (
    CampaignStatus,
    SendListEntry,
    SuppressionRecord,
    Unsubscribed,
)
from atollon_mail.store.campaigns import (
    PENDING_STATES,
    campaign_record,
    get_campaign_row,
    identity_refusal,
    list_campaigns,
)
from atollon_mail.store.common import (
    chunks,
    limited,
    normalize_identity,
    placeholders,
    read_only,
)
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.filing import SEEN_FLAG, execute_prepared, file_sent_copy
from atollon_mail.store.models import (
    FINAL_RECIPIENT_STATES,
    RECIPIENT_STATES,
    SUPPRESSION_REASONS,
    Campaign,
    CampaignRecipient,
    Contact,
    Mailbox,
    Message,
    Suppression,
    database_proxy,
    utc_now,
)
from atollon_mail.store.queue import QUEUE_DELETED_REPLY
from atollon_mail.store.records import DeliveryResult, Recipient

_DETAIL_LIMIT = 4000
# The rate is measured over this many seconds before `now`.
RATE_WINDOW_SECONDS = 60
LOCAL_REPLY = "250 delivered locally: filed into a mailbox of this server"

_RECORD_RESULT_SQL = """
        UPDATE campaign_recipient
        SET state = {p}, last_reply = {p}, attempts = attempts + 1,
            sent_at = COALESCE({p}, sent_at), updated_at = {p}
        WHERE id = {p} AND state IN ('sending', 'deferred')"""


def _record_result_sql() -> str:
    return _RECORD_RESULT_SQL.format(p=database_proxy.param)


def normalize_suppressed_address(address: str) -> str:
    """An address as the send list holds it: lower-cased, like every contact's e-mail."""
    try:
        return normalize_identity(address).lower()
    except Invalid:
        raise Invalid(
            f"{address.strip()!r} is not an e-mail address; give one such as name@example.com"
        ) from None


def _suppression_record(suppression: Suppression) -> SuppressionRecord:
    return SuppressionRecord(
        address=suppression.address,
        reason=suppression.reason,
        detail=suppression.detail,
        campaign_id=suppression.campaign_id,
        created_at=suppression.created_at,
    )


# --- progress -------------------------------------------------------------------------


def _rate(campaign: Campaign, now: datetime.datetime) -> float | None:
    """Recipients finished per second over the last minute (None: none finished in it).

    Suppressed rows are left out: they were decided when the list was made, not sent."""
    if campaign.started_at is None:
        return None
    covered = min(RATE_WINDOW_SECONDS, (now - campaign.started_at).total_seconds())
    since = now - datetime.timedelta(seconds=covered)
    # A row's updated_at is when it reached its state (sent_at too, for sent rows), so
    # one range per state on the (campaign, state, updated_at) index counts them.
    finished = (
        CampaignRecipient.select()
        .where(
            (CampaignRecipient.campaign == campaign.id)
            & CampaignRecipient.state.in_(("sent", "bounced", "failed"))
            & (CampaignRecipient.updated_at >= since)
            & (CampaignRecipient.updated_at <= now)
        )
        .count()
    )
    if not finished:
        return None
    # Less than a second since the start still counts as one second.
    return finished / max(covered, 1.0)


def status_record(campaign_id: int, now: datetime.datetime) -> CampaignStatus:
    campaign = get_campaign_row(campaign_id)
    counts = dict.fromkeys(RECIPIENT_STATES, 0)
    query = (
        CampaignRecipient.select(CampaignRecipient.state, fn.COUNT(CampaignRecipient.id))
        .where(CampaignRecipient.campaign == campaign.id)
        .group_by(CampaignRecipient.state)
        .tuples()
    )
    for state, count in query:
        counts[state] = count
    uncertain = (
        CampaignRecipient.select()
        .where(
            (CampaignRecipient.campaign == campaign.id) & (CampaignRecipient.uncertain == True)  # noqa: E712
        )
        .count()
    )
    # A campaign that is not sending has no rate and no time left (its last minute's
    # rate says nothing of when it ends).
    rate = _rate(campaign, now) if campaign.status in ("running", "finished") else None
    remaining = sum(counts[state] for state in PENDING_STATES)
    eta = remaining / rate if rate and remaining else None
    refused = None
    if campaign.status in ("draft", "running", "paused"):
        refused = identity_refusal(Mailbox.get_by_id(campaign.mailbox_id))
    return CampaignStatus(
        campaign=campaign_record(campaign),
        counts=counts,
        total=sum(counts.values()),
        done=sum(counts[state] for state in FINAL_RECIPIENT_STATES),
        uncertain=uncertain,
        rate=rate,
        eta_seconds=eta,
        identity_refusal=refused,
    )


@read_only
def campaign_status(campaign_id: int, now: datetime.datetime | None = None) -> CampaignStatus:
    """Counts per recipient state, how many are done, the rate and the time left."""
    return status_record(campaign_id, now or utc_now())


@read_only
def campaign_statuses(now) -> list[CampaignStatus]:
    """Store operation: every campaign with its progress, in one transaction."""
    return [campaign_status(campaign.id, now) for campaign in list_campaigns()]


# --- the send list --------------------------------------------------------------------


@read_only
def send_list(
    campaign_id: int,
    state: str | None = None,
    uncertain: bool | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[SendListEntry]:
    """Rows of a campaign's send list in the order they were made (by contact id)."""
    campaign = get_campaign_row(campaign_id)
    condition = CampaignRecipient.campaign == campaign.id
    if state is not None:
        if state not in RECIPIENT_STATES:
            raise Invalid(
                f"unknown recipient state {state!r}; use one of {', '.join(RECIPIENT_STATES)}"
            )
        condition &= CampaignRecipient.state == state
    if uncertain is not None:
        condition &= CampaignRecipient.uncertain == bool(uncertain)
    query = (
        CampaignRecipient.select(
            CampaignRecipient.id,
            CampaignRecipient.address,
            CampaignRecipient.language,
            CampaignRecipient.state,
            CampaignRecipient.uncertain,
            CampaignRecipient.attempts,
            CampaignRecipient.last_reply,
            CampaignRecipient.contact,
            Contact.name,
            Contact.first_name,
            Contact.last_name,
            CampaignRecipient.updated_at,
        )
        .join(Contact, JOIN.LEFT_OUTER, on=(CampaignRecipient.contact == Contact.id))
        .where(condition)
        .order_by(CampaignRecipient.id)
        .limit(limit)
        .offset(offset)
        .tuples()
    )
    entries = []
    for (
        row_id,
        address,
        language,
        row_state,
        row_uncertain,
        attempts,
        last_reply,
        contact_id,
        name,
        first_name,
        last_name,
        updated_at,
    ) in query:
        contact_name = None
        if contact_id is not None:
            contact_name = name or " ".join(part for part in (first_name, last_name) if part)
        entries.append(
            SendListEntry(
                id=row_id,
                address=address,
                language=language,
                state=row_state,
                uncertain=bool(row_uncertain),
                attempts=attempts,
                last_reply=last_reply,
                contact_id=contact_id,
                contact_name=contact_name,
                updated_at=updated_at,
            )
        )
    return entries


# --- what delivery found --------------------------------------------------------------


_FILING_SQL = """
    SELECT r.id, r.message_id, c.mailbox_id, COALESCE(cc.folder_id, cc.project_id)
    FROM campaign_recipient r JOIN campaign c ON c.id = r.campaign_id
    JOIN distribution_group g ON g.id = c.group_id
    LEFT JOIN contact_context cc ON cc.contact_id = r.contact_id
        AND cc.organization_id = COALESCE(c.organization_id, g.organization_id)
    WHERE r.id IN ({ids}) AND r.message_id IS NOT NULL"""


def _is_permanent(reply: str | None) -> bool:
    return bool(reply) and reply.lstrip()[:1] == "5"


def record_campaign_results(results: Sequence[DeliveryResult]) -> None:
    """The send-list side of delivery outcomes, in the transaction recording them.

    delivered -> sent, and the message is filed into the contact's default folder in the
    campaign's organization (the CRM archive), or the sending mailbox's Sent folder when
    the contact has none. deferred -> deferred. bounced with a 5xx reply -> bounced, and
    the address is suppressed as a hard bounce; bounced without one (the queue gave up
    after temporary failures) -> failed, which "retry failed" can send again.
    """
    campaign_results = [result for result in results if result.origin and result.origin.id]
    if not campaign_results:
        return
    update = _record_result_sql()
    delivered: list[int] = []
    hard_bounced: list[tuple[int, str]] = []
    for result in campaign_results:
        at = CampaignRecipient.updated_at.db_value(result.at)
        if result.outcome == "delivered":
            state, sent_at = "sent", at
        elif result.outcome == "deferred":
            state, sent_at = "deferred", None
        elif _is_permanent(result.reply):
            state, sent_at = "bounced", None
        else:
            state, sent_at = "failed", None
        reply = " ".join((result.reply or "").split())[:4000] or None
        row_id = result.origin.id
        changed = database_proxy.execute_sql(update, (state, reply, sent_at, at, row_id)).rowcount
        if not changed:
            continue
        if state == "sent":
            delivered.append(row_id)
        elif state == "bounced":
            hard_bounced.append((row_id, reply or ""))
    if delivered:
        file_sent(delivered, campaign_results[0].at)
    for recipient_id, reply in hard_bounced:
        _suppress_for_row(recipient_id, "hard-bounce", reply, campaign_results[0].at)


def file_sent(recipient_ids: Sequence[int], at: datetime.datetime) -> None:
    stamp = Message.received_at.db_value(at)
    rows = []
    for chunk in chunks(sorted(recipient_ids)):
        rows.extend(
            database_proxy.execute_sql(
                _FILING_SQL.format(ids=placeholders(len(chunk))), tuple(chunk)
            ).fetchall()
        )
    for _, message_id, mailbox_id, context_id in sorted(rows):
        if context_id is None:
            file_sent_copy(message_id, mailbox_id, stamp)
            continue
        row = execute_prepared("next_uid", (mailbox_id,)).fetchone()
        if row is None:
            raise NotFound(f"mailbox {mailbox_id} was removed")
        execute_prepared(
            "insert_flagged_filing",
            (message_id, mailbox_id, context_id, row[0] - 1, SEEN_FLAG, stamp),
        )


def record_local_deliveries(recipient_ids: Sequence[int], now: datetime.datetime) -> None:
    """Rows whose message was filed into a mailbox here: sent (the filing was the
    delivery), never suppressed, and filed for the CRM like every delivered row."""
    at = CampaignRecipient.updated_at.db_value(now)
    update = _record_result_sql()
    for recipient_id in recipient_ids:
        database_proxy.execute_sql(update, ("sent", LOCAL_REPLY, at, at, recipient_id))
    file_sent(recipient_ids, now)


def refuse_rows(refused: Sequence[tuple[int, str]], now: datetime.datetime) -> None:
    """Rows for an address of our own domains that receives nothing: failed with why
    (not suppressed: it is ours to fix, and "retry failed" sends them once it is)."""
    at = CampaignRecipient.updated_at.db_value(now)
    update = _record_result_sql()
    for recipient_id, reply in refused:
        database_proxy.execute_sql(update, ("failed", reply[:4000], None, at, recipient_id))


def _suppress_for_row(recipient_id: int, reason: str, detail: str, at) -> None:
    """The row's address is suppressed for later campaigns (the first reason is kept)."""
    param = database_proxy.param
    found = database_proxy.execute_sql(
        f"SELECT address, campaign_id FROM campaign_recipient WHERE id = {param}",
        (recipient_id,),
    ).fetchone()
    if found is None:
        return
    address, campaign_id = found
    if database_proxy.execute_sql(
        f"SELECT 1 FROM suppression WHERE address = {param}", (address,)
    ).fetchone():
        return
    database_proxy.execute_sql(
        "INSERT INTO suppression (address, reason, detail, campaign_id, created_at)"
        f" VALUES ({param}, {param}, {param}, {param}, {param})",
        (address, reason, detail[:4000] or None, campaign_id, Message.received_at.db_value(at)),
    )


def mark_uncertain(recipient_ids: Sequence[int]) -> int:
    """Rows whose message's final dot was sent without its reply being recorded (the
    appliance stopped, or the connection broke, in between): the remote server may have
    taken it, so the next attempt may be a second copy. They are marked uncertain (and
    sent again). Rows whose message never left are not: see queue.requeue_in_flight."""
    marked = 0
    for chunk in chunks(sorted(set(recipient_ids))):
        marked += database_proxy.execute_sql(
            "UPDATE campaign_recipient SET uncertain = TRUE"
            f" WHERE id IN ({placeholders(len(chunk))})",
            tuple(chunk),
        ).rowcount
    return marked


def fail_removed(queue_recipient_ids: Sequence[int]) -> None:
    """Campaign mail taken out of the queue by hand: its send-list row says so, and
    "retry failed" can send it again."""
    now = utc_now()
    for chunk in chunks(sorted(queue_recipient_ids)):
        CampaignRecipient.update(
            state="failed", last_reply=QUEUE_DELETED_REPLY, updated_at=now
        ).where(
            CampaignRecipient.queue_recipient_id.in_(chunk),
            CampaignRecipient.state.in_(("sending", "deferred")),
        ).execute()


# A campaign's rows hear of their mail; its bounces come back to the row's own VERP
# address (campaign_address_recipient), so its sender is never sent a DSN.
origins.register(
    "campaign",
    on_outcomes=record_campaign_results,
    on_uncertain=mark_uncertain,
    on_removed=fail_removed,
    notify_sender=False,
)


# --- what came back: bounces and unsubscribes -----------------------------------------


@read_only
def campaign_address_recipient(purpose: str, recipient_id: int, address: str):
    """Where mail to one of a row's own addresses (VERP bounce, mailto unsubscribe) is
    filed: the campaign's sending mailbox, so a person can still read it. None when the
    row is gone."""
    param = database_proxy.param
    found = database_proxy.execute_sql(
        "SELECT m.id, m.local_part, d.name, COALESCE(m.store_to_id, t.id), m.spam_handling"
        " FROM campaign_recipient r JOIN campaign c ON c.id = r.campaign_id"
        " JOIN mailbox m ON m.id = c.mailbox_id JOIN domain d ON d.id = m.domain_id"
        " LEFT JOIN context t ON t.owner_id = m.owner_id AND t.kind = 'todo'"
        f" WHERE r.id = {param}",
        (recipient_id,),
    ).fetchone()
    if found is None:
        return None
    mailbox_id, local_part, domain, context_id, spam_handling = found
    return Recipient(
        address=address,
        mailbox_id=mailbox_id,
        mailbox_address=f"{local_part}@{domain}",
        context_id=context_id,
        spam_handling=spam_handling,
    )


def record_bounce(recipient_id: int, permanent: bool, reply: str, now: datetime.datetime) -> bool:
    """A bounce that came back to a row's VERP address. Permanent: the row is bounced
    (even if delivery had said sent: the remote server accepted it, then gave up) and
    the address suppressed as a hard bounce. Temporary: only the reply is noted. False
    when the row is gone."""
    row = CampaignRecipient.get_or_none(CampaignRecipient.id == recipient_id)
    if row is None:
        return False
    stamp = now
    if permanent:
        CampaignRecipient.update(state="bounced", last_reply=reply[:4000], updated_at=stamp).where(
            CampaignRecipient.id == recipient_id
        ).execute()
        _suppress_for_row(recipient_id, "hard-bounce", reply, now)
    else:
        CampaignRecipient.update(last_reply=reply[:4000], updated_at=stamp).where(
            CampaignRecipient.id == recipient_id
        ).execute()
    return True


def unsubscribe_row(recipient_id: int, how: str, now: datetime.datetime) -> Unsubscribed:
    """The row's address unsubscribed from every later campaign (idempotent)."""
    row = CampaignRecipient.get_or_none(CampaignRecipient.id == recipient_id)
    if row is None:
        raise NotFound("this unsubscribe link is no longer valid")
    param = database_proxy.param
    already = (
        database_proxy.execute_sql(
            f"SELECT 1 FROM suppression WHERE address = {param}", (row.address,)
        ).fetchone()
        is not None
    )
    if not already:
        _suppress_for_row(recipient_id, "unsubscribed", f"unsubscribed by {how}", now)
    return Unsubscribed(address=row.address, already=already)


@read_only
def row_address(recipient_id: int) -> str | None:
    row = CampaignRecipient.get_or_none(CampaignRecipient.id == recipient_id)
    return None if row is None else row.address


# --- suppressions ---------------------------------------------------------------------


def suppress_address(
    address: str,
    reason: str = "manual",
    detail: str | None = None,
    campaign_id: int | None = None,
    now: datetime.datetime | None = None,
) -> SuppressionRecord:
    """No campaign sends to this address any more. An address suppressed already keeps its
    first reason. Recipients of running or paused campaigns still waiting to be handed to
    the delivery queue are marked suppressed at once."""
    now = now or utc_now()
    normalized = normalize_suppressed_address(address)
    if reason not in SUPPRESSION_REASONS:
        raise Invalid(f"unknown reason {reason!r}; use one of {', '.join(SUPPRESSION_REASONS)}")
    if detail is not None:
        detail = limited(detail, _DETAIL_LIMIT, "detail") or None
    if campaign_id is not None:
        get_campaign_row(campaign_id)
    # Ignored when it exists: a concurrent suppression of the same address is no error.
    Suppression.insert(
        address=normalized,
        reason=reason,
        detail=detail,
        campaign=campaign_id,
        created_at=now,
    ).on_conflict_ignore().as_rowcount().execute()
    active = Campaign.select(Campaign.id).where(Campaign.status.in_(("running", "paused")))
    CampaignRecipient.update(state="suppressed", updated_at=now).where(
        CampaignRecipient.campaign.in_(active)
        & (CampaignRecipient.address == normalized)
        & (CampaignRecipient.state == "queued")
    ).execute()
    return _suppression_record(Suppression.get(Suppression.address == normalized))


def unsuppress_address(address: str) -> bool:
    """Campaigns may send to this address again (from their next send list); True if it
    was suppressed."""
    normalized = normalize_suppressed_address(address)
    return bool(Suppression.delete().where(Suppression.address == normalized).execute())


@read_only
def list_suppressions(limit: int = 100, offset: int = 0) -> list[SuppressionRecord]:
    """The suppressed addresses, the latest first."""
    query = (
        Suppression.select()
        .order_by(Suppression.created_at.desc(), Suppression.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [_suppression_record(row) for row in query]
