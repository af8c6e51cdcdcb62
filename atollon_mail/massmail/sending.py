"""Store operations of a running campaign: handing send-list rows to the delivery queue,
taking them back, and writing back what delivery and bounces found.

The send list and the delivery queue meet here. A row goes queued -> sending when its
message is put in the delivery queue (in the same transaction), and its queue recipient
carries the row's id, so every delivery outcome lands on the row in the transaction that
records it. A row whose address is a mailbox here goes straight to sent: the queue's
enqueue files its message at once, in that same transaction. Nothing here knows about
SMTP.
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Sequence

import attrs

from atollon_mail.store import identities
from atollon_mail.store.common import chunks, locked, placeholders, read_only
from atollon_mail.store.domains import domain_names
from atollon_mail.store.errors import Invalid, NotFound
from atollon_mail.store.filing import SEEN_FLAG
from atollon_mail.store.filing import execute_prepared as _execute
from atollon_mail.store.filing import file_sent_copy as _file_sent_copy
from atollon_mail.store.filing import lock_mailboxes as _lock_mailboxes
from atollon_mail.store.models import (
    Campaign,
    CampaignRecipient,
    Mailbox,
    Message,
    database_proxy,
)
from atollon_mail.store.queue import Routed, enqueue, route_addresses
from atollon_mail.store.records import DeliveryResult, OutgoingMessage, Recipient, Rejection

# How many rows one handoff takes at most (one transaction).
HANDOFF_BATCH = 500
TAKEN_BACK_REPLY = "taken back from the delivery queue when the campaign was paused"
LOCAL_REPLY = "250 delivered locally: filed into a mailbox of this server"


@attrs.frozen
class CampaignSending:
    """What the sender needs to build a campaign's messages."""

    campaign_id: int
    name: str
    mailbox_id: int
    mailbox_domain: str  # where its bounces and unsubscribe mails come back to
    identity: str  # the From: address
    sender_name: str  # the From: display name (the mailbox owner's name)
    signature: str
    type_id: int | None
    variants: dict[str, tuple[str, str]]  # language -> (subject, body)
    outstanding: int  # rows handed to the queue and not finished (state sending)


@attrs.frozen
class HandoffCandidate:
    """A send-list row about to be handed to the delivery queue, with its merge fields."""

    recipient_id: int
    address: str
    language: str
    first_name: str
    last_name: str
    name: str
    company: str | None


@attrs.frozen
class CampaignMessage:
    """A built message for one row, ready for the queue."""

    recipient_id: int
    address: str
    domain: str
    envelope_sender: str  # the row's VERP address
    raw: bytes
    message_id: str
    subject: str
    from_header: str
    # As the queue's other messages have them: no Date: summary kept, the campaign's type.
    date_header: str | None = None
    type_id: int | None = None


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
    "record_result": """
        UPDATE campaign_recipient
        SET state = {p}, last_reply = {p}, attempts = attempts + 1,
            sent_at = COALESCE({p}, sent_at), updated_at = {p}
        WHERE id = {p} AND state IN ('sending', 'deferred')""",
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
    _lock_mailboxes(
        [recipient.mailbox_id for _, routed in routes for recipient in routed.local]
        + [campaign.mailbox_id]
    )
    stamp = Message.received_at.db_value(now)
    type_id = Campaign.get_by_id(campaign_id).type_id
    handed = 0
    delivered: list[int] = []
    for message, routed in routes:
        # The message stored, filed or queued as any sent message is (the queue's own
        # enqueue); only the queue recipient differs: it names its send-list row.
        enqueued = enqueue(
            _outgoing(message),
            routed,
            stamp,
            type_id,
            origin_mailbox_id=campaign.mailbox_id,
            campaign_recipient_id=message.recipient_id,
        )
        queue_recipient = enqueued.queue_recipient_ids[0] if routed.remote else None
        database_proxy.execute_sql(
            _sql("mark_sending"), (queue_recipient, enqueued.id, message.recipient_id)
        )
        if not routed.remote:
            delivered.append(message.recipient_id)
        handed += 1
    if delivered:
        _delivered_locally(delivered, now)
    if refused:
        _refuse_rows(refused, now)
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
    built_as = {email.utils.parseaddr(message.from_header)[1].lower() for message in messages}
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


def _delivered_locally(recipient_ids: Sequence[int], now: datetime.datetime) -> None:
    """Rows whose message was filed into a mailbox here: sent (the filing was the
    delivery), never suppressed, and filed for the CRM like every delivered row."""
    at = CampaignRecipient.updated_at.db_value(now)
    update = _sql("record_result")
    for recipient_id in recipient_ids:
        database_proxy.execute_sql(update, ("sent", LOCAL_REPLY, at, at, recipient_id))
    _file_sent(recipient_ids, now)


def _refuse_rows(refused: Sequence[tuple[int, str]], now: datetime.datetime) -> None:
    """Rows for an address of our own domains that receives nothing: failed with why
    (not suppressed: it is ours to fix, and "retry failed" sends them once it is)."""
    at = CampaignRecipient.updated_at.db_value(now)
    update = _sql("record_result")
    for recipient_id, reply in refused:
        database_proxy.execute_sql(update, ("failed", reply[:4000], None, at, recipient_id))


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


# --- what delivery found -------------------------------------------------------------

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
    campaign_results = [result for result in results if result.campaign_recipient_id]
    if not campaign_results:
        return
    update = _sql("record_result")
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
        changed = database_proxy.execute_sql(
            update, (state, reply, sent_at, at, result.campaign_recipient_id)
        ).rowcount
        if not changed:
            continue
        if state == "sent":
            delivered.append(result.campaign_recipient_id)
        elif state == "bounced":
            hard_bounced.append((result.campaign_recipient_id, reply or ""))
    if delivered:
        _file_sent(delivered, campaign_results[0].at)
    for recipient_id, reply in hard_bounced:
        _suppress_for_row(recipient_id, "hard-bounce", reply, campaign_results[0].at)


def _file_sent(recipient_ids: Sequence[int], at: datetime.datetime) -> None:
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
            _file_sent_copy(message_id, mailbox_id, stamp)
            continue
        row = _execute("next_uid", (mailbox_id,)).fetchone()
        if row is None:
            raise NotFound(f"mailbox {mailbox_id} was removed")
        _execute(
            "insert_flagged_filing",
            (message_id, mailbox_id, context_id, row[0] - 1, SEEN_FLAG, stamp),
        )


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


def mark_uncertain(queue_recipient_ids: Sequence[int]) -> int:
    """Rows whose message's final dot was sent without its reply being recorded (the
    appliance stopped, or the connection broke, in between): the remote server may have
    taken it, so the next attempt may be a second copy. They are marked uncertain (and
    sent again). Rows whose message never left are not: see queue.requeue_in_flight."""
    marked = 0
    for chunk in chunks(sorted(queue_recipient_ids)):
        marked += database_proxy.execute_sql(
            "UPDATE campaign_recipient SET uncertain = TRUE WHERE id IN"
            " (SELECT campaign_recipient_id FROM queue_recipient"
            f" WHERE id IN ({placeholders(len(chunk))}) AND campaign_recipient_id IS NOT NULL)",
            tuple(chunk),
        ).rowcount
    return marked


# --- what came back: bounces and unsubscribes ------------------------------------------


@read_only
def campaign_address_recipient(purpose: str, recipient_id: int, address: str):
    """Where mail to one of a row's own addresses (VERP bounce, mailto unsubscribe) is
    filed: the campaign's sending mailbox, so a person can still read it. None when the
    row is gone."""
    param = database_proxy.param
    found = database_proxy.execute_sql(
        "SELECT m.id, m.local_part, d.name, COALESCE(m.store_to_id, t.id)"
        " FROM campaign_recipient r JOIN campaign c ON c.id = r.campaign_id"
        " JOIN mailbox m ON m.id = c.mailbox_id JOIN domain d ON d.id = m.domain_id"
        " LEFT JOIN context t ON t.owner_id = m.owner_id AND t.kind = 'todo'"
        f" WHERE r.id = {param}",
        (recipient_id,),
    ).fetchone()
    if found is None:
        return None
    mailbox_id, local_part, domain, context_id = found
    return Recipient(
        address=address,
        mailbox_id=mailbox_id,
        mailbox_address=f"{local_part}@{domain}",
        context_id=context_id,
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


@attrs.frozen
class Unsubscribed:
    address: str
    already: bool  # the address was suppressed before


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
