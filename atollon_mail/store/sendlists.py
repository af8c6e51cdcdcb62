"""Store operations of a campaign's send list: made when the campaign starts, handed to
the delivery queue batch by batch, taken back when it pauses or is cancelled, and the
campaign's state changes around it (start, finish, pause, resume, cancel, retry).

The send list is made in one INSERT ... SELECT from the group's query: the members never
pass through Python, so a million contacts take as little memory as ten. Each address
appears once (the contact with the lowest id wins); an address on the suppression list is
recorded as suppressed and never sent to.

The send list and the delivery queue meet here. A row goes queued -> sending when its
message is put in the delivery queue (in the same transaction), with the row as its
origin, so every delivery outcome lands on the row in the transaction that records it
(the "campaign" hooks of campaign_recipients.py). A row whose address is a mailbox here
goes straight to sent: the queue's enqueue files its message at once, in that same
transaction.
Nothing here knows about SMTP.
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Sequence

from peewee import Case, Value

from atollon_mail.massmail.templates import SAMPLE_FIELDS
from atollon_mail.store import identities, traffic
from atollon_mail.store.campaign_recipients import (
    record_local_deliveries,
    refuse_rows,
    status_record,
)
from atollon_mail.store.campaign_records import (
    CampaignMessage,
    CampaignSending,
    CampaignStatus,
    HandoffCandidate,
)
from atollon_mail.store.campaigns import (
    PENDING_STATES,
    campaign_variants,
    check_identity,
    check_startable,
    get_campaign_row,
    render_previews,
)
from atollon_mail.store.common import chunks, locked, placeholders, read_only
from atollon_mail.store.domains import domain_names
from atollon_mail.store.errors import Conflict, Invalid
from atollon_mail.store.filing import lock_mailboxes
from atollon_mail.store.groups import members_query
from atollon_mail.store.models import (
    Campaign,
    CampaignRecipient,
    Contact,
    Mailbox,
    Message,
    Suppression,
    database_proxy,
    utc_now,
)
from atollon_mail.store.queue import Routed, enqueue, route_addresses
from atollon_mail.store.records import Origin, OutgoingMessage, Rejection

TAKEN_BACK_REPLY = "taken back from the delivery queue when the campaign was paused"


# --- starting: the send list ----------------------------------------------------------


def _expand_send_list(
    campaign: Campaign, languages: list[str], today: datetime.date, now: datetime.datetime
) -> int:
    """The whole send list in one INSERT ... SELECT; how many rows it made.

    Ordered by contact id, so when two contacts share an address the lowest id is
    inserted first and the unique (campaign, address) index ignores the others."""
    language = Case(
        None, [(Contact.language.in_(languages), Contact.language)], campaign.fallback_language
    )
    suppressed = Contact.email.in_(Suppression.select(Suppression.address))
    state = Case(None, [(suppressed, "suppressed")], "queued")
    rows = (
        members_query(campaign.group, today)
        .select(
            Value(campaign.id),
            Contact.id,
            Contact.email,
            language,
            state,
            Value(False),
            Value(0),
            Value(now),
        )
        .where(Contact.email != "")
        .order_by(Contact.id)
    )
    insert = CampaignRecipient.insert_from(
        rows,
        fields=[
            CampaignRecipient.campaign,
            CampaignRecipient.contact,
            CampaignRecipient.address,
            CampaignRecipient.language,
            CampaignRecipient.state,
            CampaignRecipient.uncertain,
            CampaignRecipient.attempts,
            CampaignRecipient.updated_at,
        ],
    )
    return insert.on_conflict_ignore().as_rowcount().execute()


def _set_status(campaign: Campaign, status: str, now: datetime.datetime, **stamps) -> None:
    Campaign.update(status=status, updated_at=now, **stamps).where(
        Campaign.id == campaign.id
    ).execute()


def start_campaign(campaign_id: int, now: datetime.datetime | None = None) -> CampaignStatus:
    """Send a draft: check every variant (and render it for a real member), then make the
    send list and mark the campaign running, all in this one transaction."""
    now = now or utc_now()
    today = now.date()
    campaign = get_campaign_row(campaign_id, lock=True)
    variants = campaign_variants(campaign.id)
    check_startable(campaign, variants)
    # Rendered only to check it (never shown): any link does.
    for preview in render_previews(campaign, today, SAMPLE_FIELDS["unsubscribe_url"]):
        if preview.error is not None:
            whom = f" for {preview.address}" if preview.address else ""
            raise Invalid(
                f"the {preview.language} variant cannot be rendered{whom}: {preview.error}"
            )
    made = _expand_send_list(campaign, sorted(variants), today, now)
    if not made:
        raise Invalid(
            f"the group has no member with an address; add members to "
            f"{campaign.group.name!r} or choose another group"
        )
    _set_status(campaign, "running", now, started_at=now, finished_at=None)
    # Every address suppressed: nothing to send, so it is finished at once.
    finish_if_done(campaign.id, now)
    return status_record(campaign.id, now)


def finish_if_done(campaign_id: int, now: datetime.datetime | None = None) -> bool:
    """A running campaign with nobody left to send to becomes finished; True if it did."""
    now = now or utc_now()
    campaign = get_campaign_row(campaign_id, lock=True)
    if campaign.status != "running":
        return False
    pending = (
        CampaignRecipient.select(CampaignRecipient.id)
        .where(
            (CampaignRecipient.campaign == campaign.id)
            & CampaignRecipient.state.in_(PENDING_STATES)
        )
        .exists()
    )
    if pending:
        return False
    _set_status(campaign, "finished", now, finished_at=now)
    return True


# --- pause, resume, cancel, retry -----------------------------------------------------


def pause_campaign(campaign_id: int, now: datetime.datetime | None = None) -> CampaignStatus:
    now = now or utc_now()
    campaign = get_campaign_row(campaign_id, lock=True)
    if campaign.status != "running":
        raise Conflict(f"campaign {campaign.id} is {campaign.status}; only a running one pauses")
    take_back(campaign.id, now)
    _set_status(campaign, "paused", now)
    return status_record(campaign.id, now)


def resume_campaign(campaign_id: int, now: datetime.datetime | None = None) -> CampaignStatus:
    now = now or utc_now()
    campaign = get_campaign_row(campaign_id, lock=True)
    if campaign.status != "paused":
        raise Conflict(f"campaign {campaign.id} is {campaign.status}; only a paused one resumes")
    check_identity(campaign, Mailbox.get_by_id(campaign.mailbox_id))
    _set_status(campaign, "running", now)
    # Everything may have been delivered while it was paused.
    finish_if_done(campaign.id, now)
    return status_record(campaign.id, now)


def cancel_campaign(campaign_id: int, now: datetime.datetime | None = None) -> CampaignStatus:
    """Stop for good: what is still waiting in the delivery queue is taken back, and the
    recipients left "queued" stay so and are never sent to."""
    now = now or utc_now()
    campaign = get_campaign_row(campaign_id, lock=True)
    if campaign.status not in ("draft", "running", "paused"):
        raise Conflict(f"campaign {campaign.id} is {campaign.status} already; nothing to cancel")
    if campaign.status != "draft":  # a draft has nothing in the queue
        take_back(campaign.id, now)
    _set_status(campaign, "cancelled", now, finished_at=now)
    return status_record(campaign.id, now)


def retry_failed(campaign_id: int, now: datetime.datetime | None = None) -> int:
    """Queue the failed recipients again (their attempts and last reply kept); how many.
    Sent, bounced and suppressed recipients are never touched."""
    now = now or utc_now()
    campaign = get_campaign_row(campaign_id, lock=True)
    if campaign.status == "cancelled":
        raise Conflict(
            f"campaign {campaign.id} is cancelled; nothing more is sent for it "
            "(copy it into a new campaign instead)"
        )
    requeued = (
        CampaignRecipient.update(state="queued", updated_at=now)
        .where((CampaignRecipient.campaign == campaign.id) & (CampaignRecipient.state == "failed"))
        .execute()
    )
    if requeued and campaign.status == "finished":
        _set_status(campaign, "running", now, finished_at=None)
    return requeued


# --- handing rows to the delivery queue -----------------------------------------------


@read_only
def running_campaigns() -> list[int]:
    query = Campaign.select(Campaign.id).where(Campaign.status == "running")
    return [row[0] for row in query.order_by(Campaign.id).tuples()]


_CANDIDATES_SQL = """
    SELECT r.id, r.address, r.language, c.first_name, c.last_name, c.name,
           (SELECT co.name FROM employment e JOIN contact co ON co.id = e.company_id
            WHERE e.person_id = c.id AND e.is_primary
              AND (e.valid_from IS NULL OR e.valid_from <= {p})
              AND (e.valid_to IS NULL OR e.valid_to >= {p})
            ORDER BY e.id LIMIT 1)
    FROM campaign_recipient r LEFT JOIN contact c ON c.id = r.contact_id
    WHERE r.campaign_id = {p} AND r.state = 'queued'
    ORDER BY r.id LIMIT {p}"""


_SENDING_SQL = """
    SELECT c.id, c.name, c.status, m.id, d.name, m.identity, u.name, m.signature, c.type_id
    FROM campaign c JOIN mailbox m ON m.id = c.mailbox_id
    JOIN domain d ON d.id = m.domain_id JOIN "user" u ON u.id = m.owner_id
    WHERE c.id = {p}"""


@read_only
def handoff_batch(
    campaign_id: int, limit: int, window: int, today: datetime.date
) -> tuple[CampaignSending, list[HandoffCandidate]] | None:
    """The next queued rows of a running campaign with their merge fields: at most
    `limit`, and no more than keep `window` rows in `sending`. None when the campaign is
    not running."""
    param = database_proxy.param
    row = database_proxy.execute_sql(_SENDING_SQL.format(p=param), (campaign_id,)).fetchone()
    if row is None or row[2] != "running":
        return None
    variants = {
        language: (subject, body)
        for language, subject, body in database_proxy.execute_sql(
            f"SELECT language, subject, body FROM campaign_variant WHERE campaign_id = {param}",
            (campaign_id,),
        ).fetchall()
    }
    (outstanding,) = database_proxy.execute_sql(
        "SELECT COUNT(*) FROM campaign_recipient"
        f" WHERE campaign_id = {param} AND state = 'sending'",
        (campaign_id,),
    ).fetchone()
    sending = CampaignSending(
        campaign_id=row[0],
        name=row[1],
        mailbox_id=row[3],
        mailbox_domain=row[4],
        identity=row[5],
        sender_name=row[6],
        signature=row[7],
        type_id=row[8],
        variants=variants,
        outstanding=outstanding,
    )
    limit = min(limit, window - outstanding)
    if limit <= 0:
        return sending, []
    candidates = [
        HandoffCandidate(
            recipient_id=found[0],
            address=found[1],
            language=found[2],
            first_name=found[3] or "",
            last_name=found[4] or "",
            name=found[5] or "",
            company=found[6],
        )
        for found in database_proxy.execute_sql(
            _CANDIDATES_SQL.format(p=param),
            (today.isoformat(), today.isoformat(), campaign_id, limit),
        ).fetchall()
    ]
    return sending, candidates


_HANDOFF_SQL = {
    "mark_sending": """
        UPDATE campaign_recipient SET queue_recipient_id = {p}, message_id = {p}
        WHERE id = {p}""",
}


def _sql(name: str) -> str:
    return _HANDOFF_SQL[name].format(p=database_proxy.param)


def commit_handoff(
    campaign_id: int, messages: Sequence[CampaignMessage], now: datetime.datetime
) -> int:
    """Put built messages in the delivery queue and their rows in `sending`, in one
    transaction; how many went. A message for an address here is filed at once instead
    (its row `sent`); one for an address here that receives nothing fails its row.

    Rows that are no longer queued (taken by a pause, a cancel, another sender) and a
    campaign no longer running are skipped: the status is read under the campaign's row
    lock, so a pause that committed first wins."""
    campaign = locked(
        Campaign.select(Campaign.status, Campaign.mailbox).where(Campaign.id == campaign_id)
    ).first()
    if campaign is None or campaign.status != "running" or not messages:
        return 0
    if not _may_send_as(campaign_id, campaign.mailbox_id, messages, now):
        return 0
    param = database_proxy.param
    # The rows are claimed first, by one statement that only takes rows still queued: a
    # row suppressed, taken back or handed over meanwhile is left alone.
    still_queued: set[int] = set()
    ids = [message.recipient_id for message in messages]
    claimed_at = CampaignRecipient.updated_at.db_value(now)
    for chunk in chunks(ids):
        still_queued.update(
            row[0]
            for row in database_proxy.execute_sql(
                f"UPDATE campaign_recipient SET state = 'sending', updated_at = {param}"
                f" WHERE campaign_id = {param} AND state = 'queued'"
                f" AND id IN ({placeholders(len(chunk))}) RETURNING id",
                (claimed_at, campaign_id, *chunk),
            ).fetchall()
        )
    messages = [message for message in messages if message.recipient_id in still_queued]
    # Where each goes, decided in this transaction by the queue's own routing: an address
    # that is a mailbox (or alias) here is filed at once and never reaches the queue.
    refused: list[tuple[int, str]] = []
    routes: list[tuple[CampaignMessage, Routed]] = []
    ours = domain_names()
    for message in messages:
        try:
            routed = route_addresses([message.address], ours)
        except Invalid as problem:
            refused.append((message.recipient_id, f"not sent: {problem}"))
            continue
        if routed.refused:
            _, rejection = routed.refused[0]
            refused.append((message.recipient_id, _refused_reply(rejection)))
            continue
        routes.append((message, routed))
    lock_mailboxes(
        [recipient.mailbox_id for _, routed in routes for recipient in routed.local]
        + [campaign.mailbox_id]
    )
    stamp = Message.received_at.db_value(now)
    type_id = Campaign.get_by_id(campaign_id).type_id
    handed = 0
    delivered: list[int] = []
    for message, routed in routes:
        # The message stored, filed or queued as any sent message is (the queue's one
        # entrance), with its send-list row as its origin.
        enqueued = enqueue(
            _outgoing(message),
            routed,
            Origin("campaign", message.recipient_id, campaign.mailbox_id),
            stamp=stamp,
            type_id=type_id,
        )
        queue_recipient = enqueued.queue_recipient_ids[0] if routed.remote else None
        database_proxy.execute_sql(
            _sql("mark_sending"), (queue_recipient, enqueued.id, message.recipient_id)
        )
        if not routed.remote:
            delivered.append(message.recipient_id)
        handed += 1
    if delivered:
        record_local_deliveries(delivered, now)
        # Filed into mailboxes here: received mail, as any other local delivery.
        traffic.add(now, received=len(delivered))
    if refused:
        refuse_rows(refused, now)
    return handed


def _may_send_as(
    campaign_id: int, mailbox_id: int, messages: Sequence[CampaignMessage], now
) -> bool:
    """Whether the batch may go as it was built: sent as the mailbox's identity now, and
    the sending rule allows that identity now (once per batch, under the campaign's lock).

    An identity refused now (since the start it became another mailbox's address, alias
    or identity) pauses the campaign here; its status says why. A batch built just before
    the identity changed is not handed over; its rows stay queued for the next one."""
    mailbox = Mailbox.get_by_id(mailbox_id)
    if identities.refusal(mailbox, mailbox.identity, mailbox.identity_approved) is not None:
        take_back(campaign_id, now)
        Campaign.update(status="paused", updated_at=now).where(Campaign.id == campaign_id).execute()
        return False
    # A batch's messages share their From: read each distinct one once.
    headers = {message.from_header for message in messages}
    built_as = {email.utils.parseaddr(header)[1].lower() for header in headers}
    return built_as == {mailbox.identity.lower()}


def _outgoing(message: CampaignMessage) -> OutgoingMessage:
    return OutgoingMessage(
        envelope_sender=message.envelope_sender,
        raw=message.raw,
        remote_recipients=(message.address,),
        message_id=message.message_id,
        subject=message.subject,
        from_header=message.from_header,
        date_header=message.date_header,
        type_id=message.type_id,
    )


def _refused_reply(rejection: Rejection) -> str:
    return f"not sent: {rejection.detail} (a domain of this server)"


def fail_rows(campaign_id: int, failures: Sequence[tuple[int, str]], now) -> int:
    """Queued rows whose message could not be built: failed, with why (retry can send
    them once the variant is fixed)."""
    stamp = CampaignRecipient.updated_at.db_value(now)
    failed = 0
    for recipient_id, why in failures:
        failed += (
            CampaignRecipient.update(state="failed", last_reply=why[:4000], updated_at=stamp)
            .where(
                CampaignRecipient.id == recipient_id,
                CampaignRecipient.campaign == campaign_id,
                CampaignRecipient.state == "queued",
            )
            .execute()
        )
    return failed


def take_back(campaign_id: int, now: datetime.datetime) -> int:
    """Remove the campaign's messages still waiting in the delivery queue (queued or
    deferred, not being delivered) and put their rows back to queued; how many. Run in
    the transaction that pauses or cancels the campaign. Rows being delivered finish."""
    param = database_proxy.param
    rows = database_proxy.execute_sql(
        "SELECT r.id, q.id, q.queue_message_id FROM campaign_recipient r"
        " JOIN queue_recipient q ON q.id = r.queue_recipient_id"
        f" WHERE r.campaign_id = {param} AND r.state IN ('sending', 'deferred')"
        " AND q.state IN ('queued', 'deferred')",
        (campaign_id,),
    ).fetchall()
    if not rows:
        return 0
    stamp = CampaignRecipient.updated_at.db_value(now)
    queue_message_ids = sorted({row[2] for row in rows})
    message_ids: list[int] = []
    for chunk in chunks(queue_message_ids):
        message_ids.extend(
            row[0]
            for row in database_proxy.execute_sql(
                f"SELECT message_id FROM queue_message WHERE id IN ({placeholders(len(chunk))})",
                tuple(chunk),
            ).fetchall()
        )
    for chunk in chunks([row[0] for row in rows]):
        database_proxy.execute_sql(
            "UPDATE campaign_recipient SET state = 'queued', queue_recipient_id = NULL,"
            f" message_id = NULL, last_reply = {param}, updated_at = {param}"
            f" WHERE id IN ({placeholders(len(chunk))})",
            (TAKEN_BACK_REPLY, stamp, *chunk),
        )
    # A campaign message has one recipient: its queue rows and its bytes go with it (it
    # was never sent, so it is not filed anywhere).
    for chunk in chunks(queue_message_ids):
        database_proxy.execute_sql(
            f"DELETE FROM queue_message WHERE id IN ({placeholders(len(chunk))})", tuple(chunk)
        )
    for chunk in chunks(sorted(set(message_ids))):
        database_proxy.execute_sql(
            f"DELETE FROM message WHERE id IN ({placeholders(len(chunk))})"
            " AND NOT EXISTS (SELECT 1 FROM filing f WHERE f.message_id = message.id)",
            tuple(chunk),
        )
    return len(rows)
