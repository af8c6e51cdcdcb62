"""Store operations. Each runs inside one transaction opened by `Store.run` (or `run_sync`)
and returns frozen records; none knows about SMTP or HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import peewee

from atollon_mail.store.errors import Conflict, Invalid, NotFound, StoreError
from atollon_mail.store.models import (
    CONTEXT_KINDS,
    DOMAIN_MODES,
    Alias,
    Context,
    Domain,
    Filing,
    Mailbox,
    Message,
    User,
    database_proxy,
    utc_now,
)
from atollon_mail.store.records import (
    AliasRecord,
    ContextRecord,
    DomainRecord,
    FilingRecord,
    IncomingMessage,
    MailboxRecord,
    MessageSummary,
    Recipient,
    Rejection,
    StoredMessage,
    UserRecord,
)

# Everything after the first "+" of a local part is the user's tag (user+tag@domain).
RECIPIENT_DELIMITER = "+"

_DOMAIN_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"
)
# Mailbox and alias names: letters (any script), digits, and . _ - inside; no "+" (the tag
# delimiter) and none of the characters that once meant routing (% ! @).
_MAILBOX_NAME = re.compile(r"^\w(?:[\w.-]{0,62}\w)?$")
_LOGIN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def read_only(operation):
    """Mark an operation that only reads: the store runs it without taking the write lock."""
    operation.read_only = True
    return operation


# --- validation helpers ---------------------------------------------------------------


def _strip_root_dot(domain: str) -> str:
    # One trailing dot is the DNS root ("example.com."); more is not a name.
    return domain[:-1] if domain.endswith(".") else domain


def normalize_domain_name(name: str) -> str:
    domain = _strip_root_dot(name.strip().lower())
    if not _DOMAIN_NAME.match(domain):
        raise Invalid(f"{name!r} is not a domain name; give one such as example.com")
    return domain


def normalize_mailbox_name(name: str) -> str:
    local = name.strip().lower()
    if "@" in local:
        raise Invalid(f"{name!r}: give the name without @domain")
    if not _MAILBOX_NAME.match(local) or ".." in local:
        raise Invalid(
            f"{name!r} is not a valid mailbox name; use letters, digits and . _ - "
            "(not at the start or end), at most 64 characters"
        )
    return local


def split_address(address: str) -> tuple[str, str]:
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        raise Invalid(f"{address!r} is not an address; give one such as name@example.com")
    return local, domain


_IDENTITY_LOCAL_PART = re.compile(r"^[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*$")


def normalize_identity(identity: str) -> str:
    """A sending identity: a plain address (dot-atom local part, a real domain)."""
    local, domain = split_address(identity)
    if len(local) > 64 or not _IDENTITY_LOCAL_PART.match(local):
        raise Invalid(f"{identity!r} is not a valid sending address; use name@domain")
    return f"{local}@{normalize_domain_name(domain)}"


def _limited(value: str, limit: int, what: str) -> str:
    value = value.strip()
    if len(value) > limit:
        raise Invalid(f"the {what} is longer than {limit} characters")
    return value


def normalize_address(address: str) -> tuple[str, str]:
    local, domain = split_address(address)
    return normalize_mailbox_name(local), normalize_domain_name(domain)


def _validate_login(login: str) -> str:
    login = login.strip().lower()
    if not _LOGIN.match(login):
        raise Invalid(
            f"{login!r} is not a valid login; use lowercase letters, digits and . _ -, "
            "starting with a letter or digit"
        )
    return login


def _create(model, conflict: str, **fields):
    """model.create(**fields); a unique index refusing it (a concurrent writer got there
    first) is the same Conflict the check before it would have raised."""
    try:
        with database_proxy.atomic():  # a savepoint keeps the transaction usable
            return model.create(**fields)
    except peewee.IntegrityError:
        raise Conflict(conflict) from None


def _locked(query):
    """The query's rows locked until commit (PostgreSQL); SQLite has one writer anyway.

    NO KEY UPDATE: writers of the same rows wait, inserts merely referencing them do not.
    """
    return query.for_update("FOR NO KEY UPDATE") if database_proxy.for_update else query


# --- records --------------------------------------------------------------------------


def _domain_record(domain: Domain) -> DomainRecord:
    return DomainRecord(id=domain.id, name=domain.name, mode=domain.mode, active=domain.active)


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


def add_domain(name: str, mode: str = "primary") -> DomainRecord:
    domain_name = normalize_domain_name(name)
    if mode not in DOMAIN_MODES:
        raise Invalid(f"mode must be one of {', '.join(DOMAIN_MODES)}, got {mode!r}")
    if Domain.select().where(Domain.name == domain_name).exists():
        raise Conflict(f"domain {domain_name} exists already")
    domain = _create(
        Domain,
        f"domain {domain_name} exists already",
        name=domain_name,
        mode=mode,
        active=True,
        created_at=utc_now(),
    )
    return _domain_record(domain)


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
    login = _validate_login(login)
    if User.select().where(User.login == login).exists():
        raise Conflict(f"user {login} exists already")
    user = _create(
        User,
        f"user {login} exists already",
        login=login,
        name=_limited(name, 200, "name") or login,
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
    name = _limited(name, 200, "name")
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
) -> MailboxRecord:
    local, domain_name = normalize_address(address)
    domain = _get_domain(domain_name)
    owner = _get_user(owner_login)
    # Locked: a concurrent mailbox or alias of this name, or another first mailbox of this
    # owner, waits for this one and then sees it.
    _locked(Domain.select(Domain.id).where(Domain.id == domain.id)).execute()
    _locked(User.select(User.id).where(User.id == owner.id)).execute()
    taken = _name_taken(domain, local)
    if taken:
        raise Conflict(f"{local}@{domain_name} is {taken} already")
    if identity is None:
        identity = f"{local}@{domain_name}"
    else:
        identity = normalize_identity(identity)
    store_to = _get_context(store_to_context_id) if store_to_context_id is not None else None
    # The owner's first mailbox is their default box (the one used first when sending).
    has_default = (
        Mailbox.select().where((Mailbox.owner == owner) & (Mailbox.is_default == True)).exists()  # noqa: E712
    )
    mailbox = _create(
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
    mailbox.save()
    return _mailbox_record(mailbox)


def set_mailbox_active(address: str, active: bool) -> MailboxRecord:
    mailbox = _get_mailbox(address)
    mailbox.active = active
    mailbox.save()
    return _mailbox_record(mailbox)


def add_alias(address: str, mailbox_address: str) -> AliasRecord:
    local, domain_name = normalize_address(address)
    mailbox = _get_mailbox(mailbox_address)
    if mailbox.domain.name != domain_name:
        raise Invalid(
            f"an alias is always in its mailbox's domain: use {local}@{mailbox.domain.name}"
        )
    _locked(Domain.select(Domain.id).where(Domain.id == mailbox.domain_id)).execute()
    taken = _name_taken(mailbox.domain, local)
    if taken:
        raise Conflict(f"{local}@{domain_name} is {taken} already")
    alias = _create(
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
    "domain": "SELECT id, active FROM domain WHERE name = {p}",
    # The mailbox (or alias) for up to two candidate names, with the context its mail is
    # filed into: its "store messages to", else its owner's To Do.
    "names": """
        SELECT m.local_part, m.id, m.local_part, m.active, COALESCE(m.store_to_id, c.id)
        FROM mailbox m LEFT JOIN context c ON c.owner_id = m.owner_id AND c.kind = 'todo'
        WHERE m.domain_id = {p} AND m.local_part IN ({p}, {p})
        UNION ALL
        SELECT a.name, m.id, m.local_part, m.active, COALESCE(m.store_to_id, c.id)
        FROM alias a JOIN mailbox m ON m.id = a.mailbox_id
        LEFT JOIN context c ON c.owner_id = m.owner_id AND c.kind = 'todo'
        WHERE a.domain_id = {p} AND a.name IN ({p}, {p})""",
    "store_to": """
        SELECT COALESCE(m.store_to_id, c.id) FROM mailbox m
        LEFT JOIN context c ON c.owner_id = m.owner_id AND c.kind = 'todo'
        WHERE m.id = {p}""",
    "insert_message": """
        INSERT INTO message (raw, size, message_id, subject, from_header, date_header,
                             envelope_sender, received_at)
        VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) RETURNING id""",
    # The counter is bumped in the statement that reads it: no two writers share a uid.
    "next_uid": "UPDATE mailbox SET next_uid = next_uid + 1 WHERE id = {p} RETURNING next_uid",
    "insert_filing": """
        INSERT INTO filing (message_id, mailbox_id, context_id, uid, flags, filed_at)
        VALUES ({p}, {p}, {p}, {p}, '', {p})""",
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
    domain_name = _strip_root_dot(domain_name.lower())
    domain = _execute("domain", (domain_name,)).fetchone()
    if domain is None:
        return Rejection("unknown-domain", f"{domain_name} is not a domain of this server")
    domain_id, domain_active = domain
    if not domain_active:
        return Rejection("inactive-domain", f"{domain_name} does not accept mail at present")
    local = local_part.lower()
    base, _, _tag = local.partition(RECIPIENT_DELIMITER)
    names = [local] if base == local or not base else [local, base]
    found = {
        row[0]: row[1:]
        for row in _execute("names", (domain_id, names[0], names[-1]) * 2).fetchall()
    }
    for name in names:  # the whole name first, then the name without its +tag
        if name not in found:
            continue
        mailbox_id, mailbox_local_part, active, context_id = found[name]
        if not active:
            return Rejection("inactive-mailbox", f"{local}@{domain_name} does not receive mail")
        return Recipient(
            address=f"{local}@{domain_name}",
            mailbox_id=mailbox_id,
            mailbox_address=f"{mailbox_local_part}@{domain_name}",
            context_id=context_id,
        )
    return Rejection("unknown-address", f"{local}@{domain_name} is not an address here")


def _store_one(incoming: IncomingMessage, now) -> StoredMessage:
    if not incoming.recipients:
        raise Invalid("a message needs at least one recipient; nothing was stored")
    stamp = Message.received_at.db_value(now)
    (message_id,) = _execute(
        "insert_message",
        (
            Message.raw.db_value(incoming.raw),
            len(incoming.raw),
            incoming.message_id,
            incoming.subject,
            incoming.from_header,
            incoming.date_header,
            incoming.envelope_sender,
            stamp,
        ),
    ).fetchone()
    contexts: dict[int, int | None] = {}
    for recipient in incoming.recipients:  # a mailbox reached twice gets one copy
        contexts.setdefault(recipient.mailbox_id, recipient.context_id)
    for mailbox_id, context_id in contexts.items():
        row = _execute("next_uid", (mailbox_id,)).fetchone()
        if row is None:
            raise NotFound(f"mailbox {mailbox_id} was removed")
        if context_id is None:
            (context_id,) = _execute("store_to", (mailbox_id,)).fetchone()
        _execute("insert_filing", (message_id, mailbox_id, context_id, row[0] - 1, stamp))
    return StoredMessage(id=message_id, filings=len(contexts))


def store_messages(messages: Sequence[IncomingMessage]) -> list[StoredMessage | Exception]:
    """Store and file several messages in the caller's one transaction (group commit).

    A message that fails is reported as its exception and leaves nothing behind; the
    others are kept. The batch is first tried under one savepoint; only if something in
    it fails is it redone with a savepoint per message (savepoints cost statements).
    """
    # Every mailbox of the batch locked up front in id order: concurrent batches filing into
    # the same mailboxes in other orders would otherwise deadlock (PostgreSQL).
    mailbox_ids = sorted(
        {recipient.mailbox_id for incoming in messages for recipient in incoming.recipients}
    )
    if mailbox_ids and database_proxy.for_update:
        _locked(
            Mailbox.select(Mailbox.id).where(Mailbox.id.in_(mailbox_ids)).order_by(Mailbox.id)
        ).execute()
    now = utc_now()
    try:
        with database_proxy.atomic():
            return [_store_one(incoming, now) for incoming in messages]
    except (peewee.DatabaseError, StoreError):
        pass
    results: list[StoredMessage | Exception] = []
    for incoming in messages:
        try:
            with database_proxy.atomic():
                results.append(_store_one(incoming, now))
        except (peewee.DatabaseError, StoreError) as problem:
            results.append(problem)
    return results


@read_only
def list_filings(mailbox_address: str, limit: int = 100, offset: int = 0) -> list[FilingRecord]:
    mailbox = _get_mailbox(mailbox_address)
    query = (
        Filing.select(Filing, Message, Context)
        .join(Message)
        .switch(Filing)
        .join(Context)
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
