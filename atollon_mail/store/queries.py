"""Store operations. Each runs inside one transaction opened by `Store.run` (or `run_sync`)
and returns frozen records; none knows about SMTP or HTTP.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Callable, Iterable, Sequence

import attrs
import peewee

from atollon_mail.store import identities, returnpath
from atollon_mail.store.common import (
    RECIPIENT_DELIMITER,
    chunks,
    create,
    limited,
    locked,
    normalize_address,
    normalize_domain_name,
    normalize_identity,
    normalize_mailbox_name,
    placeholders,
    read_only,
    strip_root_dot,
    timestamp,
    validate_login,
)
from atollon_mail.store.errors import Conflict, Invalid, NotFound, StoreError
from atollon_mail.store.models import (
    CONTEXT_KINDS,
    DKIM_ALGORITHMS,
    DOMAIN_MODES,
    QUEUE_STATES,
    Alias,
    CampaignRecipient,
    Context,
    DkimKey,
    Domain,
    Filing,
    Mailbox,
    MailboxAccess,
    Message,
    QueueEvent,
    QueueMessage,
    QueueRecipient,
    User,
    database_proxy,
    utc_now,
)
from atollon_mail.store.records import (
    AliasRecord,
    ContextRecord,
    Delivery,
    DeliveryResult,
    DkimKeyRecord,
    DomainRecord,
    FilingRecord,
    IncomingMessage,
    MailboxRecord,
    MessageSummary,
    OutgoingMessage,
    QueueEntry,
    QueueEventRecord,
    QueueMessageDetail,
    QueueRecipientDetail,
    Recipient,
    Rejection,
    RequeuedDeliveries,
    SendingIdentity,
    StoredMessage,
    SubmittedMessage,
    UserRecord,
)

# --- records --------------------------------------------------------------------------


def _domain_record(domain: Domain) -> DomainRecord:
    primary = domain.primary_domain.name if domain.primary_domain_id is not None else None
    return DomainRecord(
        id=domain.id,
        name=domain.name,
        mode=domain.mode,
        active=domain.active,
        primary_domain=primary,
    )


def _user_record(user: User) -> UserRecord:
    return UserRecord(id=user.id, login=user.login, name=user.name, is_admin=user.is_admin)


def _context_record(context: Context) -> ContextRecord:
    owner = context.owner.login if context.owner_id is not None else None
    return ContextRecord(id=context.id, kind=context.kind, name=context.name, owner_login=owner)


def _todo_context(user_id: int) -> Context:
    return Context.get((Context.owner == user_id) & (Context.kind == "todo"))


def _mailbox_store_to(mailbox: Mailbox) -> Context:
    if mailbox.store_to_id is not None:
        return mailbox.store_to
    return _todo_context(mailbox.owner_id)


def _mailbox_record(mailbox: Mailbox) -> MailboxRecord:
    domain = mailbox.domain.name
    aliases = tuple(
        f"{alias.name}@{domain}"
        for alias in Alias.select(Alias.name)
        .where(Alias.mailbox == mailbox.id)
        .order_by(Alias.name)
    )
    return MailboxRecord(
        id=mailbox.id,
        address=f"{mailbox.local_part}@{domain}",
        local_part=mailbox.local_part,
        domain=domain,
        owner_login=mailbox.owner.login,
        identity=mailbox.identity,
        store_to=_context_record(_mailbox_store_to(mailbox)),
        active=mailbox.active,
        is_default=mailbox.is_default,
        signature=mailbox.signature,
        aliases=aliases,
    )


def _message_summary(message: Message) -> MessageSummary:
    return MessageSummary(
        id=message.id,
        size=message.size,
        message_id=message.message_id,
        subject=message.subject,
        from_header=message.from_header,
        date_header=message.date_header,
        envelope_sender=message.envelope_sender,
        received_at=message.received_at,
    )


# --- domains --------------------------------------------------------------------------


def _get_domain(name: str) -> Domain:
    domain_name = normalize_domain_name(name)
    try:
        return Domain.get(Domain.name == domain_name)
    except Domain.DoesNotExist:
        raise NotFound(f"no domain {domain_name}; add it with: domain add {domain_name}") from None


def _hosted_primary(domain: Domain) -> bool:
    """A primary domain whose mail this server receives (active, or paused), not one kept
    only as the anchor of secondary domains (inactive, with secondaries below it)."""
    if domain.mode != "primary":
        return False
    if domain.active:
        return True
    return not Domain.select().where(Domain.primary_domain == domain.id).exists()


def add_domain(name: str, mode: str = "primary", primary_domain: str | None = None) -> DomainRecord:
    """A domain this server receives for.

    A secondary domain (company.atollon.com, crm.acme.com: below the primary or not) gets
    the mail the company's own server forwards for chosen mailboxes of its own domain
    (company.com), whose MX stays with that other provider; its mailboxes send as
    name@company.com. That primary domain is recorded as a row of its own, inactive (mail
    for it is not received here), so its DKIM keys have a home. A domain hosted here
    already needs no secondary: its mailboxes are made in it.
    """
    domain_name = normalize_domain_name(name)
    if mode not in DOMAIN_MODES:
        raise Invalid(f"mode must be one of {', '.join(DOMAIN_MODES)}, got {mode!r}")
    if Domain.select().where(Domain.name == domain_name).exists():
        raise Conflict(f"domain {domain_name} exists already")
    primary = None
    if mode == "secondary":
        if primary_domain is None:
            raise Invalid(
                "a secondary domain needs the company's own domain, whose mail provider "
                "forwards to it: give --primary-domain (such as company.com)"
            )
        primary_name = normalize_domain_name(primary_domain)
        if primary_name == domain_name:
            raise Invalid(
                f"{domain_name} cannot be its own primary domain: give the company's own "
                "domain, whose mail stays with its other provider"
            )
        primary = Domain.get_or_none(Domain.name == primary_name)
        if primary is not None and primary.mode == "secondary":
            raise Invalid(
                f"{primary_name} is a secondary domain itself; name the company's own "
                "domain as the primary domain"
            )
        if primary is not None and _hosted_primary(primary):
            raise Invalid(
                f"{primary_name} is hosted here as a primary domain already, so it needs no "
                f"secondary domain: add its mailboxes to {primary_name} itself"
            )
        if primary is None:
            primary = create(
                Domain,
                f"domain {primary_name} exists already",
                name=primary_name,
                mode="primary",
                active=False,
                created_at=utc_now(),
            )
    elif primary_domain is not None:
        raise Invalid(
            f"only a secondary domain has a primary domain: add {domain_name} with "
            "--mode secondary, or without --primary-domain"
        )
    domain = create(
        Domain,
        f"domain {domain_name} exists already",
        name=domain_name,
        mode=mode,
        active=True,
        created_at=utc_now(),
        primary_domain=primary,
    )
    return _domain_record(domain)


@read_only
def domain_names() -> frozenset[str]:
    """Every domain this server receives for or refuses as its own (active or not); not
    a primary domain kept only as the anchor of secondary ones."""
    return frozenset(name for (name,) in _execute("domain_names", ()).fetchall())


@read_only
def list_domains() -> list[DomainRecord]:
    return [_domain_record(domain) for domain in Domain.select().order_by(Domain.name)]


# --- users ----------------------------------------------------------------------------


def _get_user(login: str) -> User:
    try:
        return User.get(User.login == login.strip().lower())
    except User.DoesNotExist:
        raise NotFound(f"no user {login}; add one with: user add {login}") from None


def add_user(login: str, password_hash: str, name: str = "", is_admin: bool = False) -> UserRecord:
    """A new user, with the To Do context their mail is filed into by default."""
    login = validate_login(login)
    if User.select().where(User.login == login).exists():
        raise Conflict(f"user {login} exists already")
    user = create(
        User,
        f"user {login} exists already",
        login=login,
        name=limited(name, 200, "name") or login,
        password_hash=password_hash,
        is_admin=is_admin,
        created_at=utc_now(),
    )
    Context.create(kind="todo", name=f"To Do ({login})", owner=user, created_at=utc_now())
    return _user_record(user)


@read_only
def list_users() -> list[UserRecord]:
    return [_user_record(user) for user in User.select().order_by(User.login)]


@read_only
def user_password_hash(login: str) -> str:
    return _get_user(login).password_hash


@read_only
def has_admin() -> bool:
    return User.select().where(User.is_admin == True).exists()  # noqa: E712 (peewee expression)


# --- contexts -------------------------------------------------------------------------


def add_context(kind: str, name: str, owner_login: str | None = None) -> ContextRecord:
    if kind not in CONTEXT_KINDS or kind == "todo":
        raise Invalid(f"kind must be folder or project, got {kind!r} (each user has one To Do)")
    name = limited(name, 200, "name")
    if not name:
        raise Invalid("a folder or project needs a name")
    owner = _get_user(owner_login) if owner_login else None
    context = Context.create(kind=kind, name=name, owner=owner, created_at=utc_now())
    return _context_record(context)


@read_only
def list_contexts() -> list[ContextRecord]:
    query = Context.select(Context, User).join(User, peewee.JOIN.LEFT_OUTER).order_by(Context.id)
    return [_context_record(context) for context in query]


def _get_context(context_id: int) -> Context:
    try:
        return Context.get_by_id(context_id)
    except Context.DoesNotExist:
        raise NotFound(f"no folder or project with id {context_id}; see: context list") from None


def _store_targets(owner_id: int) -> peewee.ModelSelect:
    """The folders and projects the mail of `owner_id`'s mailboxes may be filed into: the
    owner's own and those no user owns (the organizations'); never another user's (a
    private folder, the Sent folder of a mailbox of theirs)."""
    return (
        Context.select(Context, User)
        .join(User, peewee.JOIN.LEFT_OUTER)
        .where(
            Context.kind.in_(("folder", "project"))
            & (Context.owner.is_null() | (Context.owner == owner_id))
        )
    )


def _store_target(owner_id: int, context_id: int) -> Context | None:
    """The folder or project `context_id` if `_store_targets` holds it (None: the owner's
    To Do); another user's context is Invalid."""
    context = _get_context(context_id)
    if context.kind == "todo" and context.owner_id == owner_id:
        return None
    found = _store_targets(owner_id).where(Context.id == context.id).first()
    if found is None:
        raise Invalid(
            f"{context.kind} {context.id} ({context.name}) belongs to another user; give a "
            "folder or project of the mailbox's owner or of no user; see: context list"
        )
    return found


# --- mailboxes and aliases ------------------------------------------------------------


def _name_taken(domain: Domain, name: str) -> str | None:
    """What already answers to name@domain (a mailbox or an alias), if anything."""
    if Mailbox.select().where((Mailbox.domain == domain) & (Mailbox.local_part == name)).exists():
        return "a mailbox"
    if Alias.select().where((Alias.domain == domain) & (Alias.name == name)).exists():
        return "an alias"
    return None


def _get_mailbox(address: str) -> Mailbox:
    local, domain_name = normalize_address(address)
    query = (
        Mailbox.select(Mailbox, Domain)
        .join(Domain)
        .where((Domain.name == domain_name) & (Mailbox.local_part == local))
    )
    mailbox = query.first()
    if mailbox is None:
        raise NotFound(f"no mailbox {local}@{domain_name}; see: mailbox list")
    return mailbox


def add_mailbox(
    address: str,
    owner_login: str,
    identity: str | None = None,
    active: bool = True,
    store_to_context_id: int | None = None,
    actor: str | None = None,
) -> MailboxRecord:
    """A new mailbox. Its identity is by default its own address, in secondary mode the
    same name at the primary domain; another one is checked by `identities.approve` as set
    by `actor` (a login; None is the appliance's administrator at the command line)."""
    local, domain_name = normalize_address(address)
    domain = _get_domain(domain_name)
    owner = _get_user(owner_login)
    # Locked: a concurrent mailbox or alias of this name, or another first mailbox of this
    # owner, waits for this one and then sees it.
    locked(Domain.select(Domain.id).where(Domain.id == domain.id)).execute()
    locked(User.select(User.id).where(User.id == owner.id)).execute()
    taken = _name_taken(domain, local)
    if taken:
        raise Conflict(f"{local}@{domain_name} is {taken} already")
    if identity is None:
        # Secondary mode: mail is forwarded here from name@acme.com, and sent as it.
        primary = domain.primary_domain if domain.mode == "secondary" else None
        identity = f"{local}@{primary.name if primary is not None else domain_name}"
    else:
        identity = normalize_identity(identity)
    store_to = None
    if store_to_context_id is not None:
        store_to = _store_target(owner.id, store_to_context_id)
    # The owner's first mailbox is their default box (the one used first when sending).
    has_default = (
        Mailbox.select().where((Mailbox.owner == owner) & (Mailbox.is_default == True)).exists()  # noqa: E712
    )
    mailbox = create(
        Mailbox,
        f"{local}@{domain_name} is a mailbox already",
        local_part=local,
        domain=domain,
        owner=owner,
        identity=identity,
        store_to=store_to,
        active=active,
        is_default=not has_default,
        signature="",
        next_uid=1,
        created_at=utc_now(),
    )
    # Checked on the new row (its own addresses are known then); a refusal rolls it back.
    approved = identities.approve(mailbox, identity, identities.is_admin(actor))
    if approved:
        Mailbox.update(identity_approved=True).where(Mailbox.id == mailbox.id).execute()
    return _mailbox_record(mailbox)


@read_only
def get_mailbox(address: str) -> MailboxRecord:
    return _mailbox_record(_get_mailbox(address))


@read_only
def list_mailboxes() -> list[MailboxRecord]:
    query = (
        Mailbox.select(Mailbox, Domain, User)
        .join(Domain)
        .switch(Mailbox)
        .join(User)
        .order_by(Domain.name, Mailbox.local_part)
    )
    return [_mailbox_record(mailbox) for mailbox in query]


def set_mailbox_store_to(address: str, context_id: int | None) -> MailboxRecord:
    mailbox = _get_mailbox(address)
    mailbox.store_to = _get_context(context_id) if context_id is not None else None
    # Only this column: save() would write back every column, next_uid included, over
    # a concurrent delivery's increment.
    Mailbox.update(store_to=mailbox.store_to).where(Mailbox.id == mailbox.id).execute()
    return _mailbox_record(mailbox)


def set_mailbox_active(address: str, active: bool) -> MailboxRecord:
    mailbox = _get_mailbox(address)
    mailbox.active = active
    Mailbox.update(active=active).where(Mailbox.id == mailbox.id).execute()  # see above
    return _mailbox_record(mailbox)


def _alias_name(name: str, mailbox: Mailbox) -> str:
    """The alias's name in the mailbox's domain: a bare name, or name@ that domain."""
    if "@" not in name:
        return normalize_mailbox_name(name)
    local, domain_name = normalize_address(name)
    if domain_name != mailbox.domain.name:
        raise Invalid(
            f"{local}@{domain_name}: aliases are always in the mailbox's domain; "
            f"give just the name: {local} (to use {local}@{mailbox.domain.name})"
        )
    return local


def add_alias(name: str, mailbox_address: str) -> AliasRecord:
    """Another name mailbox_address receives mail at (aliases only receive, never send)."""
    mailbox = _get_mailbox(mailbox_address)
    local = _alias_name(name, mailbox)
    domain_name = mailbox.domain.name
    locked(Domain.select(Domain.id).where(Domain.id == mailbox.domain_id)).execute()
    taken = _name_taken(mailbox.domain, local)
    if taken:
        raise Conflict(f"{local}@{domain_name} is {taken} already")
    alias = create(
        Alias,
        f"{local}@{domain_name} is an alias already",
        name=local,
        domain=mailbox.domain,
        mailbox=mailbox,
        created_at=utc_now(),
    )
    return AliasRecord(
        id=alias.id,
        address=f"{local}@{domain_name}",
        mailbox_address=f"{mailbox.local_part}@{domain_name}",
    )


@read_only
def list_aliases() -> list[AliasRecord]:
    query = (
        Alias.select(Alias, Domain, Mailbox)
        .join(Domain)
        .switch(Alias)
        .join(Mailbox)
        .order_by(Domain.name, Alias.name)
    )
    return [
        AliasRecord(
            id=alias.id,
            address=f"{alias.name}@{alias.domain.name}",
            mailbox_address=f"{alias.mailbox.local_part}@{alias.domain.name}",
        )
        for alias in query
    ]


# --- receiving ------------------------------------------------------------------------


# --- receiving: the hot path ------------------------------------------------------------
# Every RCPT and every stored message passes here, on the store's single SQLite thread.
# Building these statements with peewee's query builder cost more than running them, so
# they are written out once per dialect and executed with parameters.

_HOT_SQL = {
    # An inactive domain that only anchors secondary domains (the company's own domain,
    # whose mail is hosted elsewhere) is not ours to receive for: its users are remote.
    "domain": """
        SELECT id, active FROM domain d WHERE name = {p}
        AND (active OR NOT EXISTS (SELECT 1 FROM domain s WHERE s.primary_domain_id = d.id))""",
    "domain_names": """
        SELECT name FROM domain d
        WHERE active OR NOT EXISTS (SELECT 1 FROM domain s WHERE s.primary_domain_id = d.id)""",
    # The mailbox (or alias) for up to two candidate names, with the context its mail is
    # filed into: its "store messages to", else its owner's To Do.
    # The last columns say whether the row came through an alias, and the mailbox's
    # forwarding (on, keep a copy).
    "names": """
        SELECT m.local_part, m.id, m.local_part, m.active, COALESCE(m.store_to_id, c.id),
               0, m.forward_enabled, m.forward_keep_copy
        FROM mailbox m LEFT JOIN context c ON c.owner_id = m.owner_id AND c.kind = 'todo'
        WHERE m.domain_id = {p} AND m.local_part IN ({p}, {p})
        UNION ALL
        SELECT a.name, m.id, m.local_part, m.active, COALESCE(m.store_to_id, c.id),
               1, m.forward_enabled, m.forward_keep_copy
        FROM alias a JOIN mailbox m ON m.id = a.mailbox_id
        LEFT JOIN context c ON c.owner_id = m.owner_id AND c.kind = 'todo'
        WHERE a.domain_id = {p} AND a.name IN ({p}, {p})""",
    "default_types": """
        SELECT id, default_incoming, default_outgoing FROM message_type
        WHERE default_incoming OR default_outgoing""",
    "store_to": """
        SELECT COALESCE(m.store_to_id, c.id) FROM mailbox m
        LEFT JOIN context c ON c.owner_id = m.owner_id AND c.kind = 'todo'
        WHERE m.id = {p}""",
    "insert_message": """
        INSERT INTO message (raw, size, message_id, subject, from_header, date_header,
                             envelope_sender, received_at, type_id)
        VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) RETURNING id""",
    # The counter is bumped in the statement that reads it: no two writers share a uid.
    "next_uid": "UPDATE mailbox SET next_uid = next_uid + 1 WHERE id = {p} RETURNING next_uid",
    "insert_filing": """
        INSERT INTO filing (message_id, mailbox_id, context_id, uid, flags, filed_at)
        VALUES ({p}, {p}, {p}, {p}, '', {p})""",
    # Sending: the Sent copy, the queue rows (every submitted message passes here too).
    "next_uid_sent": """
        UPDATE mailbox SET next_uid = next_uid + 1 WHERE id = {p}
        RETURNING next_uid, sent_context_id""",
    "mailbox_owner_address": """
        SELECT m.owner_id, m.local_part, d.name
        FROM mailbox m JOIN domain d ON d.id = m.domain_id WHERE m.id = {p}""",
    "insert_folder": """
        INSERT INTO context (kind, name, owner_id, created_at)
        VALUES ('folder', {p}, {p}, {p}) RETURNING id""",
    "set_sent_context": "UPDATE mailbox SET sent_context_id = {p} WHERE id = {p}",
    "insert_flagged_filing": """
        INSERT INTO filing (message_id, mailbox_id, context_id, uid, flags, filed_at)
        VALUES ({p}, {p}, {p}, {p}, {p}, {p})""",
    "insert_queue_message": """
        INSERT INTO queue_message (message_id, envelope_sender, is_bounce, origin_mailbox_id,
                                   created_at)
        VALUES ({p}, {p}, {p}, {p}, {p}) RETURNING id""",
    # Campaign mail names its send-list row, so the row learns the outcome.
    "insert_queue_recipient": """
        INSERT INTO queue_recipient (queue_message_id, address, domain, state, attempts,
                                     next_attempt_at, delay_warned, created_at, updated_at,
                                     campaign_recipient_id)
        VALUES ({p}, {p}, {p}, 'queued', 0, {p}, {p}, {p}, {p}, {p}) RETURNING id""",
    # The queue runner: one query per waiting state, each walking the (state,
    # next_attempt_at) index in order, so a claim reads about `limit` rows however long
    # the queue (a single "state IN (...)" would have to sort every due row).
    "due": """
        SELECT r.id, r.queue_message_id, q.message_id, q.envelope_sender, r.address, r.domain,
               r.attempts, q.created_at, q.is_bounce, r.delay_warned, r.next_attempt_at,
               r.campaign_recipient_id
        FROM queue_recipient r JOIN queue_message q ON q.id = r.queue_message_id
        WHERE r.state = {p} AND r.next_attempt_at <= {p}
        ORDER BY r.next_attempt_at, r.id LIMIT {p}""",
    "record_result": """
        UPDATE queue_recipient
        SET attempts = attempts + 1, last_attempt_at = {p}, last_reply = {p}, state = {p},
            next_attempt_at = COALESCE({p}, next_attempt_at), updated_at = {p},
            dot_sent_at = NULL, uncertain = (uncertain OR {p})
        WHERE id = {p}""",
    "insert_event": """
        INSERT INTO queue_event (queue_recipient_id, at, server, reply, outcome, next_attempt_at)
        VALUES ({p}, {p}, {p}, {p}, {p}, {p})""",
}
_hot_sql_by_param: dict[str, dict[str, str]] = {}


def _hot(name: str) -> str:
    param = database_proxy.param
    statements = _hot_sql_by_param.get(param)
    if statements is None:
        statements = {key: sql.format(p=param) for key, sql in _HOT_SQL.items()}
        _hot_sql_by_param[param] = statements
    return statements[name]


def _execute(name: str, params: tuple):
    return database_proxy.execute_sql(_hot(name), params)


@read_only
def resolve_recipient(local_part: str, domain_name: str) -> Recipient | Rejection:
    """Which mailbox receives local_part@domain_name, or why nothing does.

    Local parts match case-insensitively and `user+tag` reaches `user`.
    """
    domain_name = strip_root_dot(domain_name.lower())
    domain = _execute("domain", (domain_name,)).fetchone()
    if domain is None:
        return Rejection("unknown-domain", f"{domain_name} is not a domain of this server")
    domain_id, domain_active = domain
    if not domain_active:
        return Rejection("inactive-domain", f"{domain_name} does not accept mail at present")
    local = local_part.lower()
    base, _, _tag = local.partition(RECIPIENT_DELIMITER)
    names = [local] if base == local or not base else [local, base]
    found: dict[str, tuple] = {}
    for row in _execute("names", (domain_id, names[0], names[-1]) * 2).fetchall():
        # One name can be an inactive (redirected) mailbox and an alias of the mailbox it
        # was redirected to: an active mailbox wins, then an active alias, then the rest.
        rank = (not row[3], bool(row[5]))
        if row[0] not in found or rank < found[row[0]][0]:
            found[row[0]] = (rank, row[1:])
    for name in names:  # the whole name first, then the name without its +tag
        if name not in found:
            continue
        mailbox_id, mailbox_local_part, active, context_id, _, forwards, keep_copy = found[name][1]
        if not active:
            return Rejection("inactive-mailbox", f"{local}@{domain_name} does not receive mail")
        return Recipient(
            address=f"{local}@{domain_name}",
            mailbox_id=mailbox_id,
            mailbox_address=f"{mailbox_local_part}@{domain_name}",
            context_id=context_id,
            forwards=bool(forwards),
            keep_copy=bool(keep_copy),
        )
    return Rejection("unknown-address", f"{local}@{domain_name} is not an address here")


def default_type_ids() -> tuple[int | None, int | None]:
    """(incoming, outgoing): the message types new mail gets unless it names one."""
    incoming = outgoing = None
    for type_id, is_incoming, is_outgoing in _execute("default_types", ()).fetchall():
        if is_incoming and incoming is None:
            incoming = type_id
        if is_outgoing and outgoing is None:
            outgoing = type_id
    return incoming, outgoing


def _insert_message(
    message: IncomingMessage | OutgoingMessage, stamp, type_id, delivered: bool = True
) -> int:
    """The Message row: the raw bytes once, with the summary headers of the record.

    `delivered`: it is filed for a local recipient (a final delivery), so it is stored
    with its Return-Path on top (the envelope sender); a Return-Path it arrived with is
    dropped either way. Its size is that of the bytes stored."""
    if delivered:
        sender = getattr(message, "return_path", None)
        raw = returnpath.delivered(
            message.raw, message.envelope_sender if sender is None else sender
        )
    else:
        raw = returnpath.without_return_path(message.raw)
    (message_id,) = _execute(
        "insert_message",
        (
            Message.raw.db_value(raw),
            len(raw),
            message.message_id,
            message.subject,
            message.from_header,
            message.date_header,
            message.envelope_sender,
            stamp,
            message.type_id if message.type_id is not None else type_id,
        ),
    ).fetchone()
    return message_id


def _file_for_recipients(message_id: int, recipients: Sequence[Recipient], stamp) -> int:
    """File the message once per mailbox reached; how many filings that made."""
    contexts: dict[int, int | None] = {}
    for recipient in recipients:  # a mailbox reached twice gets one copy
        contexts.setdefault(recipient.mailbox_id, recipient.context_id)
    for mailbox_id, context_id in contexts.items():
        row = _execute("next_uid", (mailbox_id,)).fetchone()
        if row is None:
            raise NotFound(f"mailbox {mailbox_id} was removed")
        if context_id is None:
            (context_id,) = _execute("store_to", (mailbox_id,)).fetchone()
        _execute("insert_filing", (message_id, mailbox_id, context_id, row[0] - 1, stamp))
    return len(contexts)


def _store_one(incoming: IncomingMessage, now, type_id: int | None = None) -> StoredMessage:
    if not incoming.recipients:
        raise Invalid("a message needs at least one recipient; nothing was stored")
    stamp = Message.received_at.db_value(now)
    message_id = _insert_message(incoming, stamp, type_id)
    filings = _file_for_recipients(message_id, incoming.recipients, stamp)
    return StoredMessage(id=message_id, filings=filings)


def _lock_mailboxes(mailbox_ids: Iterable[int]) -> None:
    """Every mailbox a batch files into, locked up front in id order: concurrent batches
    filing into the same mailboxes in other orders would otherwise deadlock (PostgreSQL)."""
    ordered = sorted(set(mailbox_ids))
    if ordered and database_proxy.for_update:
        locked(
            Mailbox.select(Mailbox.id).where(Mailbox.id.in_(ordered)).order_by(Mailbox.id)
        ).execute()


def _group_commit(store_one: Callable, items: Sequence, now) -> list:
    """store_one(item, now) for each item in the caller's one transaction.

    An item that fails is reported as its exception and leaves nothing behind; the others
    are kept. The batch is first tried under one savepoint; only if something in it fails
    is it redone with a savepoint per item (savepoints cost statements).
    """
    try:
        with database_proxy.atomic():
            return [store_one(item, now) for item in items]
    except (peewee.DatabaseError, StoreError):
        pass
    results: list = []
    for item in items:
        try:
            with database_proxy.atomic():
                results.append(store_one(item, now))
        except (peewee.DatabaseError, StoreError) as problem:
            results.append(problem)
    return results


def store_messages(messages: Sequence[IncomingMessage]) -> list[StoredMessage | Exception]:
    """Store and file several messages in the caller's one transaction (group commit).

    A message that fails is reported as its exception and leaves nothing behind; the
    others are kept.
    """
    _lock_mailboxes(
        recipient.mailbox_id for incoming in messages for recipient in incoming.recipients
    )
    incoming_type, _ = default_type_ids()
    return _group_commit(functools.partial(_store_one, type_id=incoming_type), messages, utc_now())


@read_only
def list_filings(mailbox_address: str, limit: int = 100, offset: int = 0) -> list[FilingRecord]:
    mailbox = _get_mailbox(mailbox_address)
    # The context's owner is joined too: a lazy load per filing doubled the queries.
    query = (
        Filing.select(Filing, Message, Context, User)
        .join(Message)
        .switch(Filing)
        .join(Context)
        .join(User, peewee.JOIN.LEFT_OUTER, on=(Context.owner == User.id))
        .where(Filing.mailbox == mailbox.id)
        .order_by(Filing.uid.desc())
        .limit(limit)
        .offset(offset)
    )
    address = f"{mailbox.local_part}@{mailbox.domain.name}"
    return [
        FilingRecord(
            uid=filing.uid,
            mailbox_address=address,
            context=_context_record(filing.context),
            flags=tuple(filing.flags.split()),
            message=_message_summary(filing.message),
        )
        for filing in query
    ]


@read_only
def message_raw(message_id: int) -> bytes:
    message = Message.get_or_none(Message.id == message_id)
    if message is None:
        raise NotFound(f"no message with id {message_id}; see: messages list ADDRESS")
    return bytes(message.raw)


@read_only
def count_messages() -> int:
    return Message.select().count()


# --- sending --------------------------------------------------------------------------

SEEN_FLAG = "\\Seen"
_CONTEXT_NAME_LIMIT = 200


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


def _file_sent_copy(message_id: int, mailbox_id: int, stamp) -> None:
    """A copy in the mailbox's Sent folder (made on first use), already seen."""
    row = _execute("next_uid_sent", (mailbox_id,)).fetchone()
    if row is None:
        raise NotFound(f"mailbox {mailbox_id} was removed; nothing was sent")
    uid, context_id = row[0] - 1, row[1]
    if context_id is None:
        # The mailbox row is locked (next_uid above): no second Sent folder can appear.
        owner_id, local_part, domain = _execute("mailbox_owner_address", (mailbox_id,)).fetchone()
        name = f"Sent ({local_part}@{domain})"[:_CONTEXT_NAME_LIMIT]
        (context_id,) = _execute("insert_folder", (name, owner_id, stamp)).fetchone()
        _execute("set_sent_context", (context_id, mailbox_id))
    _execute("insert_flagged_filing", (message_id, mailbox_id, context_id, uid, SEEN_FLAG, stamp))


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
    for campaign rows.
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
    routed: Routed,
    stamp,
    type_id: int | None = None,
    origin_mailbox_id: int | None = None,
    campaign_recipient_id: int | None = None,
) -> SubmittedMessage:
    """The one entrance of outgoing mail, in the caller's transaction: the message stored
    once, filed at once for its local recipients (those given and those `routed` found,
    with its Return-Path), into the Sent folder of its sending mailbox, and queued once
    for the remote addresses only.

    `origin_mailbox_id` is the mailbox the queue entry is charged to (the sending one by
    default); `campaign_recipient_id` names the send-list row its queue recipient reports
    to. Refused addresses in `routed` are the caller's to handle: nothing goes to them.
    """
    local = outgoing.local_recipients + routed.local
    remote = routed.remote
    if not local and not remote:
        raise Invalid("a message needs at least one recipient; nothing was sent")
    message_id = _insert_message(outgoing, stamp, type_id, delivered=bool(local))
    filings = _file_for_recipients(message_id, local, stamp)
    if outgoing.sent_mailbox_id is not None:
        _file_sent_copy(message_id, outgoing.sent_mailbox_id, stamp)
        filings += 1
    queue_message_id = None
    queue_recipients: list[int] = []
    if remote:
        if origin_mailbox_id is None:
            origin_mailbox_id = outgoing.sent_mailbox_id
        (queue_message_id,) = _execute(
            "insert_queue_message",
            (message_id, outgoing.envelope_sender, outgoing.is_bounce, origin_mailbox_id, stamp),
        ).fetchone()
        for address, domain in remote.values():
            (queue_recipient,) = _execute(
                "insert_queue_recipient",
                (
                    queue_message_id,
                    address,
                    domain,
                    stamp,
                    False,
                    stamp,
                    stamp,
                    campaign_recipient_id,
                ),
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
    item: tuple[OutgoingMessage, Routed], now, type_id: int | None = None
) -> SubmittedMessage:
    outgoing, routed = item
    if routed.refused:
        _, rejection = routed.refused[0]
        raise Invalid(f"{rejection.detail}; nothing was sent")
    return enqueue(outgoing, routed, Message.received_at.db_value(now), type_id)


def submit_messages(
    messages: Sequence[OutgoingMessage], now: datetime.datetime | None = None
) -> list[SubmittedMessage | Exception]:
    """Store, file and queue several sent messages in the caller's one transaction.

    Each message is stored once, filed for its local recipients and into the Sent folder
    of its sending mailbox, and queued once for its distinct remote addresses (due at
    once). A "remote" address in one of our domains is filed as a local recipient; one
    that receives nothing here refuses the message. A message that fails is reported as
    its exception and leaves nothing behind.
    """
    ours = domain_names() if any(m.remote_recipients for m in messages) else frozenset()
    routed: list[Routed | Exception] = []
    for outgoing in messages:
        try:
            routed.append(route_addresses(outgoing.remote_recipients, ours))
        except StoreError as problem:
            routed.append(problem)
    _lock_mailboxes(
        [recipient.mailbox_id for outgoing in messages for recipient in outgoing.local_recipients]
        + [r.mailbox_id for found in routed if isinstance(found, Routed) for r in found.local]
        + [m.sent_mailbox_id for m in messages if m.sent_mailbox_id is not None]
    )
    _, outgoing_type = default_type_ids()
    items = [
        (outgoing, found)
        for outgoing, found in zip(messages, routed, strict=True)
        if isinstance(found, Routed)
    ]
    stored = iter(
        _group_commit(
            functools.partial(_submit_one, type_id=outgoing_type),
            items,
            utc_now() if now is None else now,
        )
    )
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


def _set_state(ids: Sequence[int], state: str, now, next_attempt_at=None) -> None:
    stamp = QueueRecipient.updated_at.db_value(now)
    for chunk in chunks(ids):
        if next_attempt_at is None:
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


def claim_due_deliveries(now: datetime.datetime, limit: int) -> list[Delivery]:
    """Up to `limit` recipients due by `now`, oldest due first, now in-flight."""
    if limit <= 0:
        return []
    sql = _hot("due") + _skip_locked()
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
            campaign_recipient_id=row[11],
        )
        for row in due
    ]
    _set_state([d.recipient_id for d in deliveries], "in-flight", now)
    return deliveries


def _one_line_limited(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return " ".join(text.split())[:limit]


def mark_dots_sent(recipient_ids: Sequence[int], at: datetime.datetime) -> int:
    """Note that the final dot of these in-flight recipients' message is about to be sent
    (committed before it is: after a kill, `requeue_in_flight` tells them apart from
    recipients whose message never left); how many were marked."""
    stamp = QueueRecipient.dot_sent_at.db_value(at)
    marked = 0
    for chunk in chunks(recipient_ids):
        sql = (
            f"UPDATE queue_recipient SET dot_sent_at = {database_proxy.param}"
            f" WHERE id IN ({placeholders(len(chunk))}) AND state = 'in-flight'"
        )
        marked += database_proxy.execute_sql(sql, (stamp, *chunk)).rowcount
    return marked


def record_delivery_results(results: Sequence[DeliveryResult]) -> None:
    """Each attempt's outcome on its recipient, and a line in its timeline.

    A deferred result that is `uncertain` (the final dot went out, no reply came back)
    shows as "uncertain" in the timeline and keeps the recipient listed as uncertain."""
    for result in results:
        if result.outcome not in RESULT_OUTCOMES:
            raise Invalid(
                f"an outcome is one of {', '.join(RESULT_OUTCOMES)}, got {result.outcome!r}"
            )
        if result.outcome == "deferred" and result.next_attempt_at is None:
            raise Invalid("a deferred delivery needs the time of its next attempt")
    date = QueueRecipient.updated_at.db_value
    for result in results:
        at = date(result.at)
        next_attempt_at = date(result.next_attempt_at) if result.outcome == "deferred" else None
        reply = _one_line_limited(result.reply, _REPLY_LIMIT)
        server = _one_line_limited(result.server, _SERVER_LIMIT)
        updated = _execute(
            "record_result",
            (
                at,
                reply,
                result.outcome,
                next_attempt_at,
                at,
                bool(result.uncertain),
                result.recipient_id,
            ),
        ).rowcount
        if updated:  # a recipient deleted meanwhile has no timeline left to extend
            shown = "uncertain" if result.uncertain and result.outcome == "deferred" else None
            _execute(
                "insert_event",
                (result.recipient_id, at, server, reply, shown or result.outcome, next_attempt_at),
            )
    if any(result.campaign_recipient_id for result in results):
        from atollon_mail.massmail import sending  # the send list builds on this module

        sending.record_campaign_results(results)
        uncertain = [result.recipient_id for result in results if result.uncertain]
        if uncertain:
            sending.mark_uncertain(uncertain)


def mark_delay_warned(recipient_ids: Sequence[int]) -> int:
    """Note that the sender was told these recipients are delayed; how many were marked."""
    marked = 0
    for chunk in chunks(sorted(set(recipient_ids))):
        marked += (
            QueueRecipient.update(delay_warned=True).where(QueueRecipient.id.in_(chunk)).execute()
        )
    return marked


def requeue_in_flight(now: datetime.datetime) -> RequeuedDeliveries:
    """Every in-flight recipient queued again, due now (run at start: an attempt the
    appliance was making when it stopped is made again, nothing accepted is lost).

    A recipient whose final dot was not sent yet cannot have got the message: it goes
    back quietly, as if never claimed. One whose dot was sent (its reply was never
    recorded) may have: it is marked uncertain, with a line in its timeline saying so,
    and counts as an attempt."""
    query = QueueRecipient.select(QueueRecipient.id, QueueRecipient.dot_sent_at).where(
        QueueRecipient.state == "in-flight"
    )
    rows = list(locked(query.order_by(QueueRecipient.id)).tuples())
    if not rows:
        return RequeuedDeliveries(0, ())
    quiet = [recipient_id for recipient_id, dot_sent_at in rows if dot_sent_at is None]
    uncertain = [recipient_id for recipient_id, dot_sent_at in rows if dot_sent_at is not None]
    at = QueueEvent.at.db_value(now)
    for recipient_id in uncertain:
        _execute("insert_event", (recipient_id, at, None, UNCERTAIN_REPLY, "uncertain", at))
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
        from atollon_mail.massmail import sending  # the send list builds on this module

        sending.mark_uncertain(uncertain)
    return RequeuedDeliveries(len(quiet), tuple(uncertain))


@read_only
def next_due_at() -> datetime.datetime | None:
    """When the earliest waiting recipient is due (None: nothing waits)."""
    earliest = [
        QueueRecipient.select(peewee.fn.MIN(QueueRecipient.next_attempt_at))
        .where(QueueRecipient.state == state)
        .scalar()
        for state in WAITING_STATES
    ]
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
    # Campaign mail taken out of the queue by hand: its send-list row says so, and
    # "retry failed" can send it again.
    CampaignRecipient.update(
        state="failed", last_reply=QUEUE_DELETED_REPLY, updated_at=utc_now()
    ).where(
        CampaignRecipient.queue_recipient_id.in_(ids),
        CampaignRecipient.state.in_(("sending", "deferred")),
    ).execute()
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
def messages_raw(message_ids: Iterable[int]) -> dict[int, bytes]:
    """The raw bytes of several messages at once; ids not found are left out."""
    found: dict[int, bytes] = {}
    for chunk in chunks(sorted(set(message_ids))):
        query = Message.select(Message.id, Message.raw).where(Message.id.in_(chunk)).tuples()
        found.update((message_id, bytes(raw)) for message_id, raw in query)
    return found


@read_only
def outgoing_raw(message_ids: Iterable[int]) -> dict[int, bytes]:
    """The bytes of several messages as they are sent on: without the Return-Path their
    filing for a local recipient added (only the final delivery writes one)."""
    return {
        message_id: returnpath.without_return_path(raw)
        for message_id, raw in messages_raw(message_ids).items()
    }


# --- DKIM keys --------------------------------------------------------------------------

_SELECTOR = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def dkim_key_state(key: DkimKey) -> str:
    if key.active:
        return "active"
    return "pending" if key.retired_at is None else "retired"


def _dkim_key_record(key: DkimKey, domain: str) -> DkimKeyRecord:
    return DkimKeyRecord(
        domain=domain,
        selector=key.selector,
        algorithm=key.algorithm,
        private_key=key.private_key,
        public_key=key.public_key,
        active=key.active,
        state=dkim_key_state(key),
        retired_at=key.retired_at,
    )


def add_dkim_key(
    domain: str, selector: str, algorithm: str, private_key: str, public_key: str
) -> DkimKeyRecord:
    """A new key: it signs at once when the domain has no signing key of its algorithm,
    else it is pending until `domains.activate_dkim_key` (key rotation)."""
    found = _get_domain(domain)
    selector = selector.strip().lower()
    if not _SELECTOR.match(selector):
        raise Invalid(
            f"{selector!r} is not a DKIM selector; use one DNS label of letters, digits and -"
        )
    if algorithm not in DKIM_ALGORITHMS:
        raise Invalid(f"algorithm must be one of {', '.join(DKIM_ALGORITHMS)}, got {algorithm!r}")
    if not private_key or not public_key:
        raise Invalid("a DKIM key needs both its private and its public part")
    conflict = (
        f"{found.name} has a DKIM key with selector {selector} already; choose another selector"
    )
    exists = DkimKey.select().where((DkimKey.domain == found.id) & (DkimKey.selector == selector))
    if exists.exists():
        raise Conflict(conflict)
    signing = DkimKey.select().where(
        (DkimKey.domain == found.id) & (DkimKey.algorithm == algorithm),
        DkimKey.active == True,  # noqa: E712 (peewee expression)
    )
    key = create(
        DkimKey,
        conflict,
        domain=found.id,
        selector=selector,
        algorithm=algorithm,
        private_key=private_key,
        public_key=public_key,
        active=not signing.exists(),
        created_at=utc_now(),
    )
    return _dkim_key_record(key, found.name)


@read_only
def dkim_keys(domain: str | None = None) -> list[DkimKeyRecord]:
    """The signing (active) DKIM keys, newest first: of one domain (none if it is not
    ours), or all. domains.all_dkim_keys lists the pending and retired ones too."""
    query = (
        DkimKey.select(DkimKey, Domain.name)
        .join(Domain)
        .where(DkimKey.active == True)  # noqa: E712 (peewee expression)
        .order_by(DkimKey.created_at.desc(), DkimKey.id.desc())
    )
    if domain is not None:
        query = query.where(Domain.name == strip_root_dot(domain.strip().lower()))
    return [_dkim_key_record(key, key.domain.name) for key in query]


# --- submission: who may send as whom ----------------------------------------------------


def _sendable_mailboxes(user_id: int):
    """The mailboxes a user may send from: the active ones they own or hold an edit right on.

    Only mailboxes: an alias receives, it is never an identity to send as.
    """
    may_send = (Mailbox.owner == user_id) | (MailboxAccess.can_edit == True)  # noqa: E712
    granted = (MailboxAccess.mailbox == Mailbox.id) & (MailboxAccess.user == user_id)
    return (
        Mailbox.select(Mailbox, Domain)
        .join(Domain)
        .switch(Mailbox)
        .join(MailboxAccess, peewee.JOIN.LEFT_OUTER, on=granted)
        .where(may_send & (Mailbox.active == True))  # noqa: E712 (peewee expression)
    )


@read_only
def sending_identities(login: str) -> tuple[SendingIdentity, ...]:
    """The addresses the user may send as, their own default mailbox first.

    A mailbox whose stored identity the rule of `identities` refuses now (another
    mailbox's address, alias or identity; not its own and not set by an administrator)
    offers none: old or since-overtaken data is no way to send as someone else.
    """
    user = User.get_or_none(User.login == login.strip().lower())
    if user is None:
        return ()
    # Another owner's default box is not this user's default.
    own_default = (Mailbox.owner == user.id) & (Mailbox.is_default == True)  # noqa: E712
    query = _sendable_mailboxes(user.id).order_by(
        peewee.Case(None, [(own_default, 0)], 1), Domain.name, Mailbox.local_part
    )
    return tuple(
        SendingIdentity(
            mailbox_id=mailbox.id,
            mailbox_address=f"{mailbox.local_part}@{mailbox.domain.name}",
            identity=mailbox.identity,
        )
        for mailbox in query
        if identities.refusal(mailbox, mailbox.identity, mailbox.identity_approved) is None
    )


@read_only
def identity_refusal(mailbox_address: str) -> str | None:
    """Why the mailbox may not send as its stored identity now (one line), or None."""
    mailbox = _get_mailbox(mailbox_address)
    return identities.refusal(mailbox, mailbox.identity, mailbox.identity_approved)


@read_only
def authenticate_lookup(login: str) -> tuple[UserRecord, str] | None:
    """The user and their password hash, to be checked off the store's thread."""
    user = User.get_or_none(User.login == login.strip().lower())
    if user is None:
        return None
    return _user_record(user), user.password_hash
