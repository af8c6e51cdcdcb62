"""Store operations for sending: routing a message's addresses (local ones filed at once,
remote ones queued), the one entrance of outgoing mail (`enqueue`), and the outbound
queue the delivery runner claims, records results on and the admin lists and edits.

Each runs inside one transaction opened by `Store.run` (or `run_sync`) and returns frozen
records; none knows about SMTP or HTTP.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterable, Sequence

import attrs
import peewee
from twisted.logger import Logger

from atollon_mail.store import origins, returnpath, traffic
from atollon_mail.store.common import (
    chunks,
    locked,
    placeholders,
    read_only,
    strip_root_dot,
    timestamp,
)
from atollon_mail.store.domains import domain_names
from atollon_mail.store.errors import Conflict, Invalid, NotFound, StoreError
from atollon_mail.store.filing import (
    count_received,
    default_type_ids,
    execute_prepared,
    file_for_recipients,
    file_sent_copy,
    group_commit,
    insert_message,
    lock_mailboxes,
    messages_raw,
    prepared_sql,
    resolve_recipient,
)
from atollon_mail.store.leases import DEFAULT_SCHEMA, lock_key, node_lock_name
from atollon_mail.store.models import (
    QUEUE_STATES,
    Filing,
    Message,
    QueueEvent,
    QueueMessage,
    QueueRecipient,
    database_proxy,
    utc_now,
)
from atollon_mail.store.records import (
    NOTIFICATION_KINDS,
    Delivery,
    DeliveryResult,
    Origin,
    OutgoingMessage,
    QueueEntry,
    QueueEventRecord,
    QueueMessageDetail,
    QueueRecipientDetail,
    Recipient,
    Rejection,
    RequeuedDeliveries,
    SubmittedMessage,
)

log = Logger()

# --- sending --------------------------------------------------------------------------


def _remote_recipients(addresses: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Distinct remote addresses: {key: (address, domain)}; the domain part is compared
    without case, the local part as given (it is the remote server's to interpret)."""
    found: dict[str, tuple[str, str]] = {}
    for address in addresses:
        local, at, domain = address.strip().rpartition("@")
        domain = strip_root_dot(domain.lower())
        if not at or not local or not domain:
            raise Invalid(f"{address!r} is not an address; give one such as name@example.org")
        found.setdefault(f"{local}@{domain}", (f"{local}@{domain}", domain))
    return found


@attrs.frozen
class Routed:
    """Where the addresses of a message go: the local ones (in a domain of this server)
    resolved to their mailboxes, the rest to the queue, and the local ones that receive
    nothing with why."""

    local: tuple[Recipient, ...]
    remote: dict[str, tuple[str, str]]  # {key: (address, domain)}, as _remote_recipients
    refused: tuple[tuple[str, Rejection], ...]


def route_addresses(addresses: Sequence[str], ours: frozenset[str] | None = None) -> Routed:
    """Split addresses into local recipients and remote ones, in the caller's transaction.

    Every producer of outgoing mail passes here (through enqueue), so an address in one of
    our domains is filed at once and never reaches the queue, however the producer came
    by it. `ours`: the names of our domains (`domain_names()`), read once per batch by a
    caller routing many messages; only addresses in them cost a lookup.

    A limit for now: the local recipients found here are filed as they are. Their
    forwarding is not expanded (the intake expands only those the producer named), and
    filing listeners (the auto-responder) hear of them only through the intake, so never
    for mail that enters the queue by another way.
    """
    candidates = _remote_recipients(addresses)
    if ours is None and candidates:
        ours = domain_names()
    local: list[Recipient] = []
    remote: dict[str, tuple[str, str]] = {}
    refused: list[tuple[str, Rejection]] = []
    for key, (address, domain) in candidates.items():
        if domain not in ours:
            remote[key] = (address, domain)
            continue
        found = resolve_recipient(address.rpartition("@")[0], domain)
        if isinstance(found, Recipient):
            local.append(found)
        elif found.reason == "unknown-domain":  # removed since `ours` was read
            remote[key] = (address, domain)
        else:
            refused.append((address, found))
    return Routed(local=tuple(local), remote=remote, refused=tuple(refused))


def enqueue(
    outgoing: OutgoingMessage,
    recipients: Routed,
    origin: Origin,
    *,
    stamp,
    type_id: int | None = None,
) -> SubmittedMessage:
    """The one entrance of outgoing mail, in the caller's transaction: the message stored
    once, filed at once for its local recipients (those given and those `recipients`
    routed here, with its Return-Path), into the Sent folder of its sending mailbox, and
    queued once for the remote addresses only, with its origin.

    The queue entry is charged to `origin.mailbox_id` (the sending mailbox when None),
    and the hooks of `origin.kind` hear of its outcomes (store.origins). `stamp`: the
    time of the caller's transaction as stored (one for every message of a batch);
    `type_id`: the message type when the message names none (read once per batch).
    Refused addresses in `recipients` are the caller's to handle: nothing goes to them.
    """
    local = outgoing.local_recipients + recipients.local
    remote = recipients.remote
    if not local and not remote:
        raise Invalid("a message needs at least one recipient; nothing was sent")
    filed = bool(local) or outgoing.sent_mailbox_id is not None
    # Mail relayed for a relay host and filed nowhere here is never filed later (unlike
    # a campaign's, filed once delivered): no contact's mail list can show it, so its
    # addresses are not recorded (rows and index entries on the relay's hot path).
    relayed_only = not filed and origin.kind == "relay"
    message_id = insert_message(
        outgoing,
        stamp,
        type_id,
        delivered=bool(local),
        indexed=filed,
        addressed=not relayed_only,
    )
    filings = file_for_recipients(message_id, local, stamp, outgoing.verdict)
    if outgoing.sent_mailbox_id is not None:
        file_sent_copy(message_id, outgoing.sent_mailbox_id, stamp)
        filings += 1
    queue_message_id = None
    queue_recipients: list[int] = []
    if remote:
        charged = outgoing.sent_mailbox_id if origin.mailbox_id is None else origin.mailbox_id
        row = (message_id, outgoing.envelope_sender, outgoing.is_bounce, charged, stamp)
        (queue_message_id,) = execute_prepared(
            "insert_queue_message", (*row, origin.kind, origin.id)
        ).fetchone()
        for address, domain in remote.values():
            (queue_recipient,) = execute_prepared(
                "insert_queue_recipient",
                (queue_message_id, address, domain, stamp, False, stamp, stamp),
            ).fetchone()
            queue_recipients.append(queue_recipient)
    return SubmittedMessage(
        id=message_id,
        queue_message_id=queue_message_id,
        filings=filings,
        queued_recipients=len(remote),
        filed_recipients=local,
        queue_recipient_ids=tuple(queue_recipients),
    )


def _submit_one(
    item: tuple[OutgoingMessage, Origin, Routed], now, type_id: int | None = None
) -> SubmittedMessage:
    outgoing, origin, routed = item
    if routed.refused:
        _, rejection = routed.refused[0]
        raise Invalid(f"{rejection.detail}; nothing was sent")
    return enqueue(
        outgoing, routed, origin, stamp=Message.received_at.db_value(now), type_id=type_id
    )


def submit_messages(
    submissions: Sequence[tuple[OutgoingMessage, Origin]], now: datetime.datetime | None = None
) -> list[SubmittedMessage | Exception]:
    """Store, file and queue several sent messages, each with its origin, in the caller's
    one transaction (the intake's group commit: each goes through `enqueue`).

    Each message is stored once, filed for its local recipients and into the Sent folder
    of its sending mailbox, and queued once for its distinct remote addresses (due at
    once). A "remote" address in one of our domains is filed as a local recipient; one
    that receives nothing here refuses the message. A message that fails is reported as
    its exception and leaves nothing behind.
    """
    messages = [outgoing for outgoing, _ in submissions]
    ours = domain_names() if any(m.remote_recipients for m in messages) else frozenset()
    routed: list[Routed | Exception] = []
    for outgoing in messages:
        try:
            routed.append(route_addresses(outgoing.remote_recipients, ours))
        except StoreError as problem:
            routed.append(problem)
    lock_mailboxes(
        [recipient.mailbox_id for outgoing in messages for recipient in outgoing.local_recipients]
        + [r.mailbox_id for found in routed if isinstance(found, Routed) for r in found.local]
        + [m.sent_mailbox_id for m in messages if m.sent_mailbox_id is not None]
    )
    _, outgoing_type = default_type_ids()
    items = [
        (outgoing, origin, found)
        for (outgoing, origin), found in zip(submissions, routed, strict=True)
        if isinstance(found, Routed)
    ]
    now = utc_now() if now is None else now
    results = group_commit(functools.partial(_submit_one, type_id=outgoing_type), items, now)
    # Local recipients' copies count as received mail (Sent copies do not).
    count_received(
        now,
        (
            (submitted.filed_recipients, outgoing.verdict)
            for (outgoing, origin, _), submitted in zip(items, results, strict=True)
            if not isinstance(submitted, Exception) and origin.kind not in NOTIFICATION_KINDS
        ),
    )
    stored = iter(results)
    return [next(stored) if isinstance(found, Routed) else found for found in routed]


# --- the outbound queue -----------------------------------------------------------------

WAITING_STATES = ("queued", "deferred")
RESULT_OUTCOMES = ("delivered", "deferred", "bounced")
QUEUE_DELETED_REPLY = "removed from the delivery queue by an administrator"
UNCERTAIN_REPLY = (
    "the appliance stopped after the final dot of this attempt was sent and before the "
    "reply was recorded: the server may have the message, so the retry may be a second copy"
)
_REPLY_LIMIT = 4000
_SERVER_LIMIT = 300


def _skip_locked() -> str:
    # PostgreSQL: claimers on other store threads skip each other's rows instead of
    # waiting for them or claiming them twice. SQLite has one writer anyway.
    return " FOR NO KEY UPDATE OF r SKIP LOCKED" if database_proxy.for_update else ""


def _set_state(ids: Sequence[int], state: str, now, next_attempt_at=None, claimed_by=None) -> None:
    stamp = QueueRecipient.updated_at.db_value(now)
    for chunk in chunks(ids):
        if claimed_by is not None:
            sql = (
                "UPDATE queue_recipient SET state = {p}, updated_at = {p}, claimed_by = {p}"
                " WHERE id IN ({ids})"
            )
            params = (state, stamp, claimed_by, *chunk)
        elif next_attempt_at is None:
            sql = "UPDATE queue_recipient SET state = {p}, updated_at = {p} WHERE id IN ({ids})"
            params = (state, stamp, *chunk)
        else:
            sql = (
                "UPDATE queue_recipient SET state = {p}, updated_at = {p}, next_attempt_at = {p}"
                " WHERE id IN ({ids})"
            )
            params = (state, stamp, QueueRecipient.next_attempt_at.db_value(next_attempt_at))
            params += tuple(chunk)
        sql = sql.format(p=database_proxy.param, ids=placeholders(len(chunk)))
        database_proxy.execute_sql(sql, params)


def claim_due_deliveries(
    now: datetime.datetime, limit: int, node: str | None = None
) -> list[Delivery]:
    """Up to `limit` recipients due by `now`, oldest due first, now in-flight, claimed by
    `node` (several nodes on one database: see release_dead_claims)."""
    if limit <= 0:
        return []
    sql = prepared_sql("due") + _skip_locked()
    due_by = QueueRecipient.next_attempt_at.db_value(now)
    rows = []
    for state in WAITING_STATES:
        rows.extend(database_proxy.execute_sql(sql, (state, due_by, limit)).fetchall())
    # On PostgreSQL the rows past the limit stay locked (unclaimed) until commit.
    due = sorted(rows, key=lambda row: (timestamp(row[10]), row[0]))[:limit]
    deliveries = [
        Delivery(
            recipient_id=row[0],
            queue_message_id=row[1],
            message_id=row[2],
            envelope_sender=row[3],
            address=row[4],
            domain=row[5],
            attempts=row[6],
            created_at=timestamp(row[7]),
            is_bounce=bool(row[8]),
            delay_warned=bool(row[9]),
            origin=None if row[11] is None else Origin(row[11], row[12], row[13]),
            notify_sender=origins.notifies_sender(row[11]),
        )
        for row in due
    ]
    _set_state([d.recipient_id for d in deliveries], "in-flight", now, claimed_by=node)
    return deliveries


def _one_line_limited(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return " ".join(text.split())[:limit]


def mark_dots_sent(
    recipient_ids: Sequence[int],
    at: datetime.datetime,
    node: str | None = None,
    or_unclaimed: bool = True,
) -> int:
    """Note that the final dot of these in-flight recipients' message is about to be sent
    (committed before it is: after a kill, `requeue_in_flight` tells them apart from
    recipients whose message never left); how many were marked."""
    stamp = QueueRecipient.dot_sent_at.db_value(at)
    param = database_proxy.param
    # Given a node on PostgreSQL (several nodes): only its own claims (a journal read at
    # start, or a late mark of a node whose claims were released meanwhile, must not mark
    # a recipient another node claimed since); `or_unclaimed` also those of no node
    # (claimed before claims were named: the start-up requeue). On SQLite every claim is
    # this box's, under whatever name it was made (a renamed box keeps its marks).
    if not database_proxy.for_update:
        node = None
    if node is None:
        mine = ""
    elif or_unclaimed:
        mine = f" AND (claimed_by = {param} OR claimed_by IS NULL)"
    else:
        mine = f" AND claimed_by = {param}"
    marked = 0
    for chunk in chunks(recipient_ids):
        sql = (
            f"UPDATE queue_recipient SET dot_sent_at = {param}"
            f" WHERE id IN ({placeholders(len(chunk))}) AND state = 'in-flight'{mine}"
        )
        params = (stamp, *chunk) if node is None else (stamp, *chunk, node)
        marked += database_proxy.execute_sql(sql, params).rowcount
    return marked


def _still_claimed(recipient_ids: set[int], node: str) -> set[int]:
    """Those of these recipients still in flight under `node`'s claim, locked until
    commit (so a release by another node waits for this transaction, or this for it)."""
    param = database_proxy.param
    mine: set[int] = set()
    for chunk in chunks(sorted(recipient_ids)):
        sql = (
            f"SELECT id FROM queue_recipient WHERE id IN ({placeholders(len(chunk))})"
            f" AND state = 'in-flight' AND claimed_by = {param} FOR NO KEY UPDATE"
        )
        mine.update(row[0] for row in database_proxy.execute_sql(sql, (*chunk, node)))
    return mine


def record_delivery_results(results: Sequence[DeliveryResult], node: str | None = None) -> None:
    """Each attempt's outcome on its recipient, and a line in its timeline.

    A deferred result that is `uncertain` (the final dot went out, no reply came back)
    shows as "uncertain" in the timeline and keeps the recipient listed as uncertain.
    The hooks of each result's origin kind hear of it in this transaction.

    Given `node` on PostgreSQL (several nodes): only the outcomes of recipients still in
    flight under its claim; a late outcome of a claim another node released (and may
    have claimed again since) is dropped, not written over the newer state."""
    if node is not None and database_proxy.for_update and results:
        mine = _still_claimed({result.recipient_id for result in results}, node)
        dropped = len(results) - sum(1 for result in results if result.recipient_id in mine)
        if dropped:
            log.warn(
                "{count} delivery outcome(s) dropped: their claim by node {node!r} was "
                "released meanwhile",
                count=dropped,
                node=node,
            )
            results = [result for result in results if result.recipient_id in mine]
    for result in results:
        if result.outcome not in RESULT_OUTCOMES:
            raise Invalid(
                f"an outcome is one of {', '.join(RESULT_OUTCOMES)}, got {result.outcome!r}"
            )
        if result.outcome == "deferred" and result.next_attempt_at is None:
            raise Invalid("a deferred delivery needs the time of its next attempt")
    # Rows written with one executemany per statement: per result, a statement through
    # peewee cost more than the row itself on the relay's hot path.
    date = QueueRecipient.updated_at.db_value
    updates, events = [], []
    for result in results:
        at = date(result.at)
        next_attempt_at = date(result.next_attempt_at) if result.outcome == "deferred" else None
        reply = _one_line_limited(result.reply, _REPLY_LIMIT)
        server = _one_line_limited(result.server, _SERVER_LIMIT)
        uncertain = bool(result.uncertain)
        updates.append(
            (at, reply, result.outcome, next_attempt_at, at, uncertain, result.recipient_id)
        )
        shown = "uncertain" if uncertain and result.outcome == "deferred" else result.outcome
        events.append((result.recipient_id, at, server, reply, shown, next_attempt_at))
    if updates:
        cursor = database_proxy.cursor()
        cursor.executemany(prepared_sql("record_result"), updates)
        if cursor.rowcount != len(updates):
            # Some recipient was deleted meanwhile: it has no timeline left to extend.
            present = _present({event[0] for event in events})
            events = [event for event in events if event[0] in present]
        if events:
            cursor.executemany(prepared_sql("insert_event"), events)
        # Those of recipients deleted meanwhile too: the attempt happened.
        # Not those of the notifications this server wrote (DSNs, auto-replies): neither
        # sent nor bounced mail of the users'.
        traffic.add_outcomes(
            (result.at, result.outcome)
            for result in results
            if result.origin is None or result.origin.kind not in NOTIFICATION_KINDS
        )
    origins.report_outcomes(results)


def _present(recipient_ids: set[int]) -> set[int]:
    """Those of these queue recipients that still exist."""
    present: set[int] = set()
    for chunk in chunks(sorted(recipient_ids)):
        sql = f"SELECT id FROM queue_recipient WHERE id IN ({placeholders(len(chunk))})"
        present.update(row[0] for row in database_proxy.execute_sql(sql, tuple(chunk)))
    return present


def mark_delay_warned(recipient_ids: Sequence[int]) -> int:
    """Note that the sender was told these recipients are delayed; how many were marked."""
    marked = 0
    for chunk in chunks(sorted(set(recipient_ids))):
        marked += (
            QueueRecipient.update(delay_warned=True).where(QueueRecipient.id.in_(chunk)).execute()
        )
    return marked


def requeue_in_flight(
    now: datetime.datetime, node: str | None = None, only_node: bool = False
) -> RequeuedDeliveries:
    """Every in-flight recipient queued again, due now (run at start: an attempt the
    appliance was making when it stopped is made again, nothing accepted is lost).

    With several nodes on one PostgreSQL database (`node` given there), only the claims
    of `node` and those of no node (claimed before claims were named); `only_node`:
    only those of `node` (another node's, found dead: release_dead_claims). On SQLite
    every claim is this box's, whatever name it was made under.

    A recipient whose final dot was not sent yet cannot have got the message: it goes
    back quietly, as if never claimed. One whose dot was sent (its reply was never
    recorded) may have: it is marked uncertain, with a line in its timeline saying so,
    and counts as an attempt; the hooks of its origin's kind hear of it."""
    query = QueueRecipient.select(QueueRecipient.id, QueueRecipient.dot_sent_at).where(
        QueueRecipient.state == "in-flight"
    )
    if node is not None and database_proxy.for_update:
        mine = QueueRecipient.claimed_by == node
        if not only_node:
            mine = mine | QueueRecipient.claimed_by.is_null()
        query = query.where(mine)
    rows = list(locked(query.order_by(QueueRecipient.id)).tuples())
    if not rows:
        return RequeuedDeliveries(0, ())
    quiet = [recipient_id for recipient_id, dot_sent_at in rows if dot_sent_at is None]
    uncertain = [recipient_id for recipient_id, dot_sent_at in rows if dot_sent_at is not None]
    at = QueueEvent.at.db_value(now)
    for recipient_id in uncertain:
        execute_prepared("insert_event", (recipient_id, at, None, UNCERTAIN_REPLY, "uncertain", at))
    _set_state(quiet, "queued", now, next_attempt_at=now)
    param = database_proxy.param
    for chunk in chunks(uncertain):
        database_proxy.execute_sql(
            f"UPDATE queue_recipient SET state = 'queued', next_attempt_at = {param},"
            f" updated_at = {param}, attempts = attempts + 1, last_attempt_at = dot_sent_at,"
            f" last_reply = {param}, dot_sent_at = NULL, uncertain = {param}"
            f" WHERE id IN ({placeholders(len(chunk))})",
            (at, at, UNCERTAIN_REPLY, True, *chunk),
        )
    if uncertain:
        origins.report_uncertain(_origins_of(uncertain))
    return RequeuedDeliveries(len(quiet), tuple(uncertain))


def dead_claimers(node: str) -> list[str]:
    """The other nodes with deliveries in flight whose node lock is free right now (their
    session ended: the node died, or only its connection did; see cluster.ClaimKeeper,
    which releases only after seeing it free for long enough). PostgreSQL only."""
    if not database_proxy.for_update:
        return []
    return _free_node_locks(_claimers(node))


def _free_node_locks(names: Sequence[str]) -> list[str]:
    """Those of these nodes whose node lock this transaction could take (held to its
    end): no node of that name runs. The keys are those of the store's schema."""
    if not names:
        return []
    schema = database_proxy.execute_sql("SELECT current_schema()").fetchone()[0]
    free = []
    for name in names:
        (taken,) = database_proxy.execute_sql(
            f"SELECT pg_try_advisory_xact_lock({database_proxy.param})",
            (lock_key(node_lock_name(name), schema or DEFAULT_SCHEMA),),
        ).fetchone()
        if taken:
            free.append(name)
    return free


def _claimers(node: str) -> list[str]:
    param = database_proxy.param
    return sorted(
        row[0]
        for row in database_proxy.execute_sql(
            "SELECT DISTINCT claimed_by FROM queue_recipient"
            f" WHERE state = 'in-flight' AND claimed_by IS NOT NULL AND claimed_by <> {param}",
            (node,),
        ).fetchall()
    )


def release_dead_claims(
    now: datetime.datetime, node: str, names: Sequence[str] | None = None
) -> dict[str, RequeuedDeliveries]:
    """The in-flight claims of every other node that no longer runs, queued again as at a
    start (requeue_in_flight); by node name. PostgreSQL only (SQLite: one box, nothing).

    A node holds its own advisory lock as long as it runs (store.leases): when this
    transaction can take it, the node is gone (its session ended with its process). It is
    held until commit, so a node of that name starting meanwhile gets it only after the
    rows are released (and its own start-up requeue waits on their row locks). `names`:
    only those of these nodes (the ones cluster.ClaimKeeper saw free long enough)."""
    if not database_proxy.for_update:
        return {}
    claimers = _claimers(node)
    if names is not None:
        claimers = [name for name in claimers if name in names]
    return {
        name: requeue_in_flight(now, name, only_node=True) for name in _free_node_locks(claimers)
    }


def _origins_of(recipient_ids: Sequence[int]) -> list[tuple[str | None, int | None]]:
    """(origin kind, origin id) of each of these queue recipients."""
    query = QueueRecipient.select(QueueMessage.origin_kind, QueueMessage.origin_id)
    query = query.join(QueueMessage).order_by(QueueRecipient.id)
    return [
        row
        for part in chunks(recipient_ids)
        for row in query.where(QueueRecipient.id.in_(part)).tuples()
    ]


@read_only
def next_due_at() -> datetime.datetime | None:
    """When the earliest waiting recipient is due (None: nothing waits)."""
    # Prepared SQL: the runner asks after every claim, and peewee's query builder cost
    # several times the query.
    earliest = [execute_prepared("next_due", (state,)).fetchone()[0] for state in WAITING_STATES]
    found = [timestamp(value) for value in earliest if value is not None]
    return min(found, default=None)


@read_only
def queue_counts() -> dict[str, int]:
    counts = dict.fromkeys(QUEUE_STATES, 0)
    query = QueueRecipient.select(QueueRecipient.state, peewee.fn.COUNT(QueueRecipient.id))
    for state, count in query.group_by(QueueRecipient.state).tuples():
        counts[state] = count
    return counts


def _queue_entry(recipient: QueueRecipient) -> QueueEntry:
    queued = recipient.queue_message
    return QueueEntry(
        queue_message_id=queued.id,
        recipient_id=recipient.id,
        address=recipient.address,
        state=recipient.state,
        attempts=recipient.attempts,
        next_attempt_at=recipient.next_attempt_at,
        last_reply=recipient.last_reply,
        envelope_sender=queued.envelope_sender,
        created_at=queued.created_at,
        subject=queued.message.subject,
        uncertain=bool(recipient.uncertain),
    )


def _queue_rows():
    # Only the summary of the message: never its raw bytes.
    return (
        QueueRecipient.select(QueueRecipient, QueueMessage, Message.id, Message.subject)
        .join(QueueMessage)
        .join(Message)
    )


@read_only
def queue_list(
    state: str | None = None, limit: int = 100, offset: int = 0, uncertain: bool = False
) -> list[QueueEntry]:
    """The queue's recipients, newest message first; with `uncertain`, only those that
    may have got two copies (see `requeue_in_flight`)."""
    query = _queue_rows()
    if state is not None:
        if state not in QUEUE_STATES:
            raise Invalid(f"a queue state is one of {', '.join(QUEUE_STATES)}, got {state!r}")
        query = query.where(QueueRecipient.state == state)
    if uncertain:
        query = query.where(QueueRecipient.uncertain)
    query = query.order_by(
        QueueMessage.created_at.desc(), QueueMessage.id.desc(), QueueRecipient.id
    )
    return [_queue_entry(recipient) for recipient in query.limit(limit).offset(offset)]


def _get_queue_message(queue_message_id: int, lock: bool = False) -> QueueMessage:
    query = QueueMessage.select().where(QueueMessage.id == queue_message_id)
    found = (locked(query) if lock else query).first()
    if found is None:
        raise NotFound(f"no queued message with id {queue_message_id}; see: queue list")
    return found


@read_only
def queue_show(queue_message_id: int) -> QueueMessageDetail:
    """A queued message with every recipient and its timeline, in time order."""
    _get_queue_message(queue_message_id)
    recipients = list(
        _queue_rows()
        .where(QueueRecipient.queue_message == queue_message_id)
        .order_by(QueueRecipient.id)
    )
    events: dict[int, list[QueueEventRecord]] = {r.id: [] for r in recipients}
    query = (
        QueueEvent.select()
        .join(QueueRecipient)
        .where(QueueRecipient.queue_message == queue_message_id)
        .order_by(QueueEvent.at, QueueEvent.id)
    )
    for event in query:
        events[event.queue_recipient_id].append(
            QueueEventRecord(
                at=event.at,
                server=event.server,
                reply=event.reply,
                outcome=event.outcome,
                next_attempt_at=event.next_attempt_at,
            )
        )
    queued = (
        QueueMessage.select(QueueMessage, Message.id, Message.subject, Message.message_id)
        .join(Message)
        .where(QueueMessage.id == queue_message_id)
        .get()
    )
    return QueueMessageDetail(
        id=queued.id,
        message_id=queued.message.id,
        envelope_sender=queued.envelope_sender,
        is_bounce=queued.is_bounce,
        created_at=queued.created_at,
        subject=queued.message.subject,
        message_id_header=queued.message.message_id,
        recipients=tuple(
            QueueRecipientDetail(entry=_queue_entry(r), events=tuple(events[r.id]))
            for r in recipients
        ),
    )


def queue_retry(queue_message_id: int, now: datetime.datetime) -> int:
    """The message's waiting recipients due now; how many. Delivered, bounced and
    in-flight ones are left as they are."""
    _get_queue_message(queue_message_id)
    return (
        QueueRecipient.update(state="queued", next_attempt_at=now, updated_at=now)
        .where(
            (QueueRecipient.queue_message == queue_message_id)
            & QueueRecipient.state.in_(WAITING_STATES)
        )
        .execute()
    )


def queue_delete(queue_message_id: int) -> int:
    """The message's queue rows removed (how many recipients); the message itself too
    unless it is filed somewhere. Refused while one of its deliveries is under way."""
    queued = _get_queue_message(queue_message_id, lock=True)
    query = QueueRecipient.select(QueueRecipient.id, QueueRecipient.state).where(
        QueueRecipient.queue_message == queue_message_id
    )
    if database_proxy.for_update:
        query = query.for_update()  # a claim in progress is waited for, then seen
    rows = list(query.order_by(QueueRecipient.id).tuples())
    if any(state == "in-flight" for _, state in rows):
        raise Conflict(
            f"queued message {queue_message_id} is being delivered right now; "
            "try again when the attempt is over"
        )
    ids = [recipient_id for recipient_id, _ in rows]
    # Mail taken out of the queue by hand: the hooks of its origin's kind hear of it.
    origins.report_removed((queued.origin_kind, recipient_id) for recipient_id in ids)
    for chunk in chunks(ids):
        QueueEvent.delete().where(QueueEvent.queue_recipient.in_(chunk)).execute()
        QueueRecipient.delete().where(QueueRecipient.id.in_(chunk)).execute()
    QueueMessage.delete().where(QueueMessage.id == queue_message_id).execute()
    message_id = queued.message_id
    still_used = (
        Filing.select().where(Filing.message == message_id).exists()
        or QueueMessage.select().where(QueueMessage.message == message_id).exists()
    )
    if not still_used:
        Message.delete().where(Message.id == message_id).execute()
    return len(ids)


@read_only
def outgoing_raw(message_ids: Iterable[int]) -> dict[int, bytes]:
    """The bytes of several messages as they are sent on: without the Return-Path their
    filing for a local recipient added (only the final delivery writes one)."""
    return {
        message_id: returnpath.without_return_path(raw)
        for message_id, raw in messages_raw(message_ids).items()
    }
