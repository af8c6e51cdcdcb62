"""The peewee models. They are bound to a real database at start through `database_proxy`.

The tables themselves are created by the numbered migrations in `migrations.py`; these
classes describe the current shape for queries and must agree with the latest migration
(a test compares them).
"""

from __future__ import annotations

import contextlib
import datetime
import threading

import peewee


class StoreDatabaseProxy(peewee.DatabaseProxy):
    """The models' database: the one bound to the current thread, else the last initialized.

    A Store binds its database around each operation, so two Stores in one process (a test
    running the admin command beside the server) never run queries on each other's
    connections, outside each other's transactions.
    """

    def __init__(self):
        object.__setattr__(self, "_bound", threading.local())
        object.__setattr__(self, "_default", None)
        super().__init__()

    @property
    def obj(self):
        bound = getattr(self._bound, "database", None)
        return self._default if bound is None else bound

    @obj.setter
    def obj(self, database):
        object.__setattr__(self, "_default", database)

    @contextlib.contextmanager
    def bound_to(self, database: peewee.Database):
        previous = getattr(self._bound, "database", None)
        self._bound.database = database
        try:
            yield
        finally:
            self._bound.database = previous


database_proxy = StoreDatabaseProxy()

DOMAIN_MODES = ("primary", "secondary")
CONTEXT_KINDS = ("todo", "folder", "project")


def utc_now() -> datetime.datetime:
    # Stored naive, always UTC: SQLite has no time zones and both backends then agree.
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class RawField(peewee.BlobField):
    """Bytes in, bytes out on both backends (the driver's own binary wrapper is chosen per
    database at bind time, which a second Store in the process could change)."""

    def db_value(self, value):
        return None if value is None else bytes(value)

    def python_value(self, value):
        return None if value is None else bytes(value)


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class Domain(BaseModel):
    id = peewee.BigAutoField()
    name = peewee.CharField(max_length=253, unique=True)
    mode = peewee.CharField(max_length=16)
    active = peewee.BooleanField()
    created_at = peewee.DateTimeField()
    # Secondary mode: the company's own (2nd-level) domain this one sits below (migration 3).
    primary_domain = peewee.ForeignKeyField(
        "self", null=True, on_delete="RESTRICT", index=False, column_name="primary_domain_id"
    )


class User(BaseModel):
    id = peewee.BigAutoField()
    login = peewee.CharField(max_length=64, unique=True)
    name = peewee.CharField(max_length=200)
    password_hash = peewee.CharField(max_length=200)
    is_admin = peewee.BooleanField()
    created_at = peewee.DateTimeField()


class Context(BaseModel):
    """Where mail is filed: a user's To Do, a folder or a project (CRM contexts)."""

    id = peewee.BigAutoField()
    kind = peewee.CharField(max_length=16)
    name = peewee.CharField(max_length=200)
    owner = peewee.ForeignKeyField(User, null=True, backref="contexts", on_delete="RESTRICT")
    created_at = peewee.DateTimeField()


class Mailbox(BaseModel):
    id = peewee.BigAutoField()
    local_part = peewee.CharField(max_length=64)
    # Indexed by the unique (domain, local_part) index.
    domain = peewee.ForeignKeyField(Domain, backref="mailboxes", on_delete="RESTRICT", index=False)
    owner = peewee.ForeignKeyField(User, backref="mailboxes", on_delete="RESTRICT")
    identity = peewee.CharField(max_length=320)
    # Few mailboxes per context: migration 1 gives it no index.
    store_to = peewee.ForeignKeyField(Context, null=True, on_delete="RESTRICT", index=False)
    active = peewee.BooleanField()
    is_default = peewee.BooleanField()
    signature = peewee.TextField()
    next_uid = peewee.BigIntegerField()
    created_at = peewee.DateTimeField()
    # The folder its sent mail is copied into; made on first send (migration 2).
    sent_context = peewee.ForeignKeyField(
        Context, null=True, on_delete="SET NULL", index=False, column_name="sent_context_id"
    )
    # Forwarding (migration 3): on, and whether a copy stays in the mailbox.
    forward_enabled = peewee.BooleanField(default=False)
    forward_keep_copy = peewee.BooleanField(default=True)

    class Meta:
        indexes = ((("domain", "local_part"), True),)


class Alias(BaseModel):
    id = peewee.BigAutoField()
    name = peewee.CharField(max_length=64)
    # Indexed by the unique (domain, name) index.
    domain = peewee.ForeignKeyField(Domain, on_delete="RESTRICT", index=False)
    mailbox = peewee.ForeignKeyField(Mailbox, backref="aliases", on_delete="CASCADE")
    created_at = peewee.DateTimeField()

    class Meta:
        indexes = ((("domain", "name"), True),)


class MessageType(BaseModel):
    """Message configuration: every stored message has a type (migration 3)."""

    id = peewee.BigAutoField()
    name = peewee.CharField(max_length=100)
    code = peewee.CharField(max_length=32, unique=True)
    description = peewee.TextField()
    active = peewee.BooleanField()
    default_incoming = peewee.BooleanField()
    default_outgoing = peewee.BooleanField()
    created_at = peewee.DateTimeField()


class Message(BaseModel):
    """One received message, its bytes stored once however many mailboxes it is filed in."""

    id = peewee.BigAutoField()
    raw = RawField()
    size = peewee.BigIntegerField()
    message_id = peewee.CharField(max_length=998, null=True)
    subject = peewee.TextField(null=True)
    from_header = peewee.TextField(null=True)
    date_header = peewee.CharField(max_length=200, null=True)
    envelope_sender = peewee.CharField(max_length=320)
    received_at = peewee.DateTimeField()
    type = peewee.ForeignKeyField(
        MessageType, null=True, on_delete="RESTRICT", column_name="type_id"
    )


class Filing(BaseModel):
    """A message filed into a mailbox and a context; uid is per mailbox, ascending."""

    id = peewee.BigAutoField()
    message = peewee.ForeignKeyField(Message, backref="filings", on_delete="CASCADE")
    # Indexed by the unique (mailbox, uid) index.
    mailbox = peewee.ForeignKeyField(Mailbox, backref="filings", on_delete="CASCADE", index=False)
    context = peewee.ForeignKeyField(Context, on_delete="RESTRICT")
    uid = peewee.BigIntegerField()
    flags = peewee.CharField(max_length=200)
    filed_at = peewee.DateTimeField()

    class Meta:
        indexes = ((("mailbox", "uid"), True),)


QUEUE_STATES = ("queued", "in-flight", "deferred", "delivered", "bounced")
DKIM_ALGORITHMS = ("rsa", "ed25519")


class QueueMessage(BaseModel):
    """An outbound message: its bytes live in Message; one QueueRecipient per address."""

    id = peewee.BigAutoField()
    message = peewee.ForeignKeyField(Message, on_delete="RESTRICT")
    envelope_sender = peewee.CharField(max_length=320)  # "" for a bounce (<>)
    is_bounce = peewee.BooleanField()
    origin_mailbox = peewee.ForeignKeyField(Mailbox, null=True, on_delete="SET NULL", index=False)
    created_at = peewee.DateTimeField()


class QueueRecipient(BaseModel):
    id = peewee.BigAutoField()
    queue_message = peewee.ForeignKeyField(QueueMessage, backref="recipients", on_delete="CASCADE")
    address = peewee.CharField(max_length=320)
    domain = peewee.CharField(max_length=253)
    state = peewee.CharField(max_length=16)
    attempts = peewee.IntegerField()
    next_attempt_at = peewee.DateTimeField()
    last_attempt_at = peewee.DateTimeField(null=True)
    last_reply = peewee.TextField(null=True)
    delay_warned = peewee.BooleanField()
    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()

    class Meta:
        indexes = ((("state", "next_attempt_at"), False),)


class QueueEvent(BaseModel):
    """One line of a recipient's timeline: an attempt, its server and reply, what followed."""

    id = peewee.BigAutoField()
    queue_recipient = peewee.ForeignKeyField(QueueRecipient, backref="events", on_delete="CASCADE")
    at = peewee.DateTimeField()
    server = peewee.CharField(max_length=300, null=True)
    reply = peewee.TextField(null=True)
    outcome = peewee.CharField(max_length=16)
    next_attempt_at = peewee.DateTimeField(null=True)


class DkimKey(BaseModel):
    id = peewee.BigAutoField()
    domain = peewee.ForeignKeyField(Domain, on_delete="CASCADE", index=False)
    selector = peewee.CharField(max_length=63)
    algorithm = peewee.CharField(max_length=16)
    private_key = peewee.TextField()
    public_key = peewee.TextField()
    active = peewee.BooleanField()
    created_at = peewee.DateTimeField()

    class Meta:
        indexes = ((("domain", "selector"), True),)


class MailboxAccess(BaseModel):
    """A user's rights on a mailbox besides its owner (who always has both)."""

    id = peewee.BigAutoField()
    mailbox = peewee.ForeignKeyField(Mailbox, on_delete="CASCADE", index=False)
    user = peewee.ForeignKeyField(User, on_delete="CASCADE")
    can_view = peewee.BooleanField()
    can_edit = peewee.BooleanField()
    created_at = peewee.DateTimeField()

    class Meta:
        indexes = ((("mailbox", "user"), True),)


class Autoresponder(BaseModel):
    id = peewee.BigAutoField()
    mailbox = peewee.ForeignKeyField(Mailbox, on_delete="CASCADE", unique=True)
    enabled = peewee.BooleanField()
    subject = peewee.CharField(max_length=998)
    body = peewee.TextField()
    starts_at = peewee.DateTimeField(null=True)
    ends_at = peewee.DateTimeField(null=True)
    interval_days = peewee.IntegerField()
    updated_at = peewee.DateTimeField()


class AutoresponseLog(BaseModel):
    """When a mailbox last answered a correspondent (one reply per interval)."""

    id = peewee.BigAutoField()
    mailbox = peewee.ForeignKeyField(Mailbox, on_delete="CASCADE", index=False)
    correspondent = peewee.CharField(max_length=320)
    sent_at = peewee.DateTimeField()

    class Meta:
        indexes = ((("mailbox", "correspondent"), True),)


class ForwardTarget(BaseModel):
    id = peewee.BigAutoField()
    mailbox = peewee.ForeignKeyField(Mailbox, on_delete="CASCADE", index=False)
    address = peewee.CharField(max_length=320)
    created_at = peewee.DateTimeField()

    class Meta:
        indexes = ((("mailbox", "address"), True),)


class DnsCheck(BaseModel):
    """The last DNS check of a domain: a JSON list of check results."""

    id = peewee.BigAutoField()
    domain = peewee.ForeignKeyField(Domain, on_delete="CASCADE", unique=True)
    checked_at = peewee.DateTimeField()
    results = peewee.TextField()


MODELS = (
    Domain,
    User,
    Context,
    Mailbox,
    Alias,
    Message,
    Filing,
    QueueMessage,
    QueueRecipient,
    QueueEvent,
    DkimKey,
    MessageType,
    MailboxAccess,
    Autoresponder,
    AutoresponseLog,
    ForwardTarget,
    DnsCheck,
)
