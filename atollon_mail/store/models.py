"""The peewee models. They are bound to a real database at start through `database_proxy`.

The tables themselves are created by the numbered migrations in `migrations.py`; these
classes describe the current shape for queries and must agree with the latest migration
(a test compares them).
"""

from __future__ import annotations

import contextlib
import threading

import peewee

# The values a person names outside the store live in values.py, which needs no peewee;
# they are this module's names too, as the store's modules import them from here.
from atollon_mail.store.values import (  # noqa: F401
    DOMAIN_MODES,
    FOLDERS,
    QUEUE_STATES,
    RECIPIENT_STATES,
    SPAM_HANDLINGS,
    SUPPRESSION_REASONS,
    utc_now,
)


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

CONTEXT_KINDS = ("todo", "folder", "project")


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


class Organization(BaseModel):
    """A tenant of the CRM: contacts, folders and default folders belong to one."""

    id = peewee.BigAutoField()
    name = peewee.CharField(max_length=200, unique=True)
    created_at = peewee.DateTimeField()


class Contact(BaseModel):
    """A person or a company of an organization's CRM (migration 4).

    `email` is kept lower-cased (the import and every write normalise it), so the send
    list deduplicates addresses with plain equality; "" when the contact has none.
    `language` is a lower-case ISO 639-1 code, "" when unknown.
    """

    id = peewee.BigAutoField()
    # Indexed by the (organization, external_id) and (organization, language) indexes.
    organization = peewee.ForeignKeyField(Organization, on_delete="RESTRICT", index=False)
    kind = peewee.CharField(max_length=16)
    external_id = peewee.CharField(max_length=100, null=True)
    name = peewee.CharField(max_length=200)
    first_name = peewee.CharField(max_length=100)
    last_name = peewee.CharField(max_length=100)
    email = peewee.CharField(max_length=320, index=True)
    language = peewee.CharField(max_length=8)
    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()

    class Meta:
        indexes = (
            (("organization", "external_id"), True),
            (("organization", "language"), False),
        )


class Employment(BaseModel):
    """A person's employment at a company; valid_to in the past means it has ended."""

    id = peewee.BigAutoField()
    person = peewee.ForeignKeyField(Contact, backref="employments", on_delete="CASCADE")
    company = peewee.ForeignKeyField(Contact, backref="employees", on_delete="CASCADE")
    is_primary = peewee.BooleanField()
    valid_from = peewee.DateField(null=True)
    valid_to = peewee.DateField(null=True)
    created_at = peewee.DateTimeField()


class Context(BaseModel):
    """Where mail is filed: a user's To Do, a folder or a project (CRM contexts).

    A folder (the CRM's "subject") belongs to a company within an organization; a project
    to an organization (migration 4)."""

    id = peewee.BigAutoField()
    kind = peewee.CharField(max_length=16)
    name = peewee.CharField(max_length=200)
    owner = peewee.ForeignKeyField(User, null=True, backref="contexts", on_delete="RESTRICT")
    created_at = peewee.DateTimeField()
    organization = peewee.ForeignKeyField(
        Organization, null=True, on_delete="RESTRICT", column_name="organization_id"
    )
    company = peewee.ForeignKeyField(
        Contact, null=True, backref="folders", on_delete="RESTRICT", column_name="company_id"
    )


DEFAULT_FOLDER_SOURCES = ("manual", "employer")


class ContactContext(BaseModel):
    """A contact's default folder in one organization (the CRM's organization_contact_context):
    where mail to and from the contact is filed. `source` says who chose it: a person
    ("manual", never overwritten by the maintenance) or the employer rule ("employer")."""

    id = peewee.BigAutoField()
    # Indexed by the unique (organization, contact) index.
    organization = peewee.ForeignKeyField(Organization, on_delete="CASCADE", index=False)
    contact = peewee.ForeignKeyField(Contact, backref="default_folders", on_delete="CASCADE")
    folder = peewee.ForeignKeyField(
        Context, null=True, backref="+", on_delete="SET NULL", index=False
    )
    project = peewee.ForeignKeyField(
        Context, null=True, backref="+", on_delete="SET NULL", index=False
    )
    activity = peewee.CharField(max_length=200, null=True)
    source = peewee.CharField(max_length=16)
    updated_at = peewee.DateTimeField()

    class Meta:
        indexes = ((("organization", "contact"), True),)


GROUP_KINDS = ("static", "dynamic")


class DistributionGroup(BaseModel):
    """Contacts to send to: listed one by one (static) or matched by a filter (dynamic;
    `filter` holds the JSON of a crm.filters.GroupFilter, never SQL)."""

    id = peewee.BigAutoField()
    name = peewee.CharField(max_length=200, unique=True)
    organization = peewee.ForeignKeyField(Organization, null=True, on_delete="RESTRICT")
    kind = peewee.CharField(max_length=16)
    filter = peewee.TextField(null=True)
    created_at = peewee.DateTimeField()


class GroupMember(BaseModel):
    id = peewee.BigAutoField()
    # Indexed by the unique (group, contact) index.
    group = peewee.ForeignKeyField(
        DistributionGroup, backref="members", on_delete="CASCADE", index=False
    )
    contact = peewee.ForeignKeyField(Contact, on_delete="CASCADE")
    added_at = peewee.DateTimeField()

    class Meta:
        indexes = ((("group", "contact"), True),)


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
    # The identity is outside the mailbox's own addresses and an administrator set it
    # (migration 5); see `store.identities`.
    identity_approved = peewee.BooleanField(default=False)
    # What mail the inbound checks call junk does here (SPAM_HANDLINGS; migration 9).
    spam_handling = peewee.CharField(max_length=8, default="junk")

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
    # What the inbound checks said of it (records.InboundVerdict as JSON; migration 9);
    # None for mail nothing checked (sent by our users, received before the checks).
    verdict = peewee.TextField(null=True)
    # Whether it carries an attachment (migration 13; set when it is stored).
    has_attachment = peewee.BooleanField(default=False)


class ImapSummary(BaseModel):
    """What IMAP renders and searches of a message's header (migration 15; see
    store.imapfolders): its ENVELOPE and the decoded, case-folded values of the header
    fields SEARCH asks for most, each field's values joined by newlines (None: no such
    field). Written the first time IMAP reads the header; `version` is the rendering's."""

    message = peewee.ForeignKeyField(
        Message, primary_key=True, on_delete="CASCADE", column_name="message_id"
    )
    version = peewee.IntegerField()
    envelope = RawField()
    subject = peewee.TextField(null=True)
    from_field = peewee.TextField(null=True)
    to_field = peewee.TextField(null=True)
    cc_field = peewee.TextField(null=True)
    bcc_field = peewee.TextField(null=True)


# The full-text index of messages (migration 13; store.search): the databases' own
# engines, so no model describes it. SQLite: an FTS5 table (and the tables FTS5 keeps
# for it, named after it); PostgreSQL: a table of tsvectors.
SEARCH_INDEX_TABLE = "message_search"


class Filing(BaseModel):
    """A message filed into a mailbox and a context; uid is per mailbox, ascending.

    `folder` (FOLDERS; migrations 9 and 10) says where within the mailbox it lies: the
    inbox, the mailbox's Junk, Drafts or Trash. A move between them gives it the mailbox's
    next uid, so the uids of each folder ascend in the order mail came into it (IMAP's
    MOVE does the same)."""

    id = peewee.BigAutoField()
    message = peewee.ForeignKeyField(Message, backref="filings", on_delete="CASCADE")
    # Indexed by the unique (mailbox, uid) index.
    mailbox = peewee.ForeignKeyField(Mailbox, backref="filings", on_delete="CASCADE", index=False)
    context = peewee.ForeignKeyField(Context, on_delete="RESTRICT")
    uid = peewee.BigIntegerField()
    flags = peewee.CharField(max_length=200)
    # When it came into its folder (filed, or moved there).
    filed_at = peewee.DateTimeField()
    folder = peewee.CharField(max_length=8, default="inbox")
    # Its mod-sequence (IMAP's CONDSTORE; migration 14): a value of the mailbox's uid
    # counter taken when its flags last changed; None until then, when its uid is it
    # (a move gives it a new uid and None again). Read it as COALESCE(modseq, uid).
    modseq = peewee.BigIntegerField(null=True)

    class Meta:
        indexes = [(("mailbox", "uid"), True)]


# Junk is read by mailbox (its listing) and by age (the purge). Partial indexes: the
# inbox, where nearly all mail is filed, pays nothing for them (migration 9).
JUNK_ONLY = Filing.folder == "junk"
Filing.add_index(Filing.mailbox, Filing.uid, where=JUNK_ONLY, name="filing_junk_mailbox_uid")
Filing.add_index(Filing.filed_at, where=JUNK_ONLY, name="filing_junk_filed_at")
# The mail client's folder list counts each folder's filings and unread ones (IMAP's
# STATUS asks the same) from this index alone; Trash is listed by mailbox as Junk is
# (migration 12).
Filing.add_index(
    Filing.mailbox,
    Filing.folder,
    Filing.context,
    Filing.flags,
    name="filing_mailbox_folder_context_flags",
)
Filing.add_index(
    Filing.mailbox, Filing.uid, where=Filing.folder == "trash", name="filing_trash_mailbox_uid"
)


class MessageAddress(BaseModel):
    """An address a message is from or to, as its header says (migration 11; see
    store.message_addresses): a contact's mail is found by it."""

    id = peewee.BigAutoField()
    message = peewee.ForeignKeyField(Message, on_delete="CASCADE")
    address = peewee.CharField(max_length=320)
    role = peewee.CharField(max_length=4)

    class Meta:
        indexes = ((("address", "message"), False),)


DKIM_ALGORITHMS = ("rsa", "ed25519")


class QueueMessage(BaseModel):
    """An outbound message: its bytes live in Message; one QueueRecipient per address."""

    id = peewee.BigAutoField()
    message = peewee.ForeignKeyField(Message, on_delete="RESTRICT")
    envelope_sender = peewee.CharField(max_length=320)  # "" for a bounce (<>)
    is_bounce = peewee.BooleanField()
    origin_mailbox = peewee.ForeignKeyField(Mailbox, null=True, on_delete="SET NULL", index=False)
    created_at = peewee.DateTimeField()
    # Who produced it (records.ORIGIN_KINDS) and the producer's own row, if it has one
    # (migration 8); None for mail queued before producers were recorded.
    origin_kind = peewee.CharField(max_length=16, null=True)
    origin_id = peewee.BigIntegerField(null=True)


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
    # Migration 5: when the final dot of the attempt in flight was sent (None: not yet),
    # and whether the recipient may have got two copies (the dot of an attempt was sent
    # and its reply never recorded: a kill, a connection lost after the dot).
    dot_sent_at = peewee.DateTimeField(null=True)
    uncertain = peewee.BooleanField(default=False)
    # Migration 17: the node that claimed it while in flight (see queue.claim_due_deliveries).
    claimed_by = peewee.CharField(max_length=200, null=True)

    class Meta:
        indexes = ((("state", "next_attempt_at"), False), (("state", "created_at", "id"), False))


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
    active = peewee.BooleanField()  # signs outgoing mail
    created_at = peewee.DateTimeField()
    # When `dkim activate` replaced it (migration 5); None for a key that never signed
    # yet (pending) or still signs.
    retired_at = peewee.DateTimeField(null=True)

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


CAMPAIGN_STATUSES = ("draft", "running", "paused", "cancelled", "finished")
# A recipient in one of these will not be sent to again by this campaign.
FINAL_RECIPIENT_STATES = ("sent", "bounced", "failed", "suppressed")


class Campaign(BaseModel):
    """A mass mail: a group, a sending mailbox, a message type and a variant per language."""

    id = peewee.BigAutoField()
    name = peewee.CharField(max_length=200)
    group = peewee.ForeignKeyField(DistributionGroup, on_delete="RESTRICT")
    mailbox = peewee.ForeignKeyField(Mailbox, on_delete="RESTRICT")
    type = peewee.ForeignKeyField(
        MessageType, null=True, on_delete="RESTRICT", column_name="type_id"
    )
    # Whose default folders sent messages are filed in (the group's, unless set).
    organization = peewee.ForeignKeyField(Organization, null=True, on_delete="RESTRICT")
    fallback_language = peewee.CharField(max_length=8)
    status = peewee.CharField(max_length=16, index=True)
    created_at = peewee.DateTimeField()
    started_at = peewee.DateTimeField(null=True)
    finished_at = peewee.DateTimeField(null=True)
    updated_at = peewee.DateTimeField()


class CampaignVariant(BaseModel):
    id = peewee.BigAutoField()
    # Indexed by the unique (campaign, language) index.
    campaign = peewee.ForeignKeyField(
        Campaign, backref="variants", on_delete="CASCADE", index=False
    )
    language = peewee.CharField(max_length=8)
    subject = peewee.TextField()
    body = peewee.TextField()
    updated_at = peewee.DateTimeField()

    class Meta:
        indexes = ((("campaign", "language"), True),)


class CampaignRecipient(BaseModel):
    """One row of a campaign's send list. queue_recipient_id and message_id are plain
    numbers: the queue's rows come and go while the send list keeps its history."""

    id = peewee.BigAutoField()
    # Indexed by the (campaign, address) and (campaign, state, id) indexes.
    campaign = peewee.ForeignKeyField(
        Campaign, backref="recipients", on_delete="CASCADE", index=False
    )
    contact = peewee.ForeignKeyField(Contact, null=True, on_delete="SET NULL")
    address = peewee.CharField(max_length=320)
    language = peewee.CharField(max_length=8)
    state = peewee.CharField(max_length=16)
    # Was being delivered when the appliance was killed: it may have got two copies.
    uncertain = peewee.BooleanField(default=False)
    attempts = peewee.IntegerField(default=0)
    last_reply = peewee.TextField(null=True)
    queue_recipient_id = peewee.BigIntegerField(null=True)
    message_id = peewee.BigIntegerField(null=True)
    sent_at = peewee.DateTimeField(null=True)
    updated_at = peewee.DateTimeField()

    class Meta:
        indexes = (
            (("campaign", "address"), True),
            (("campaign", "state", "id"), False),
            (("campaign", "state", "updated_at"), False),
        )


class Suppression(BaseModel):
    """An address no campaign sends to: unsubscribed, hard-bounced or blocked by hand."""

    id = peewee.BigAutoField()
    address = peewee.CharField(max_length=320, unique=True)
    reason = peewee.CharField(max_length=16)
    detail = peewee.TextField(null=True)
    campaign = peewee.ForeignKeyField(Campaign, null=True, on_delete="SET NULL")
    created_at = peewee.DateTimeField()


class TrafficHour(BaseModel):
    """Mail counted per hour (UTC) for the dashboard's traffic charts (migration 16): kept
    apart from the mail rows, which purges and queue clean-ups remove. Each store thread
    adds to its own `shard` row of the hour, so concurrent transactions never wait on one
    row's lock; a bucket is the sum of its shards."""

    id = peewee.BigAutoField()
    hour = peewee.DateTimeField()
    shard = peewee.IntegerField()
    received = peewee.BigIntegerField()
    sent = peewee.BigIntegerField()
    bounced = peewee.BigIntegerField()
    junk = peewee.BigIntegerField()

    class Meta:
        indexes = ((("hour", "shard"), True),)


class WebSession(BaseModel):
    """A web login (migration 17), shared by every node: the token's SHA-256, never the token."""

    id = peewee.BigAutoField()
    token_hash = peewee.CharField(max_length=64, unique=True)
    user = peewee.ForeignKeyField(User, on_delete="CASCADE", index=False)
    csrf_token = peewee.CharField(max_length=100)
    created_at = peewee.DateTimeField()
    last_seen = peewee.DateTimeField(index=True)
    # A confirmation for the next view of one page (migration 19): read once, by any node.
    flash_for = peewee.CharField(max_length=400, null=True)
    flash = peewee.TextField(null=True)


MODELS = (
    Domain,
    User,
    Context,
    Mailbox,
    Alias,
    Message,
    Filing,
    MessageAddress,
    ImapSummary,
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
    Organization,
    Contact,
    Employment,
    ContactContext,
    DistributionGroup,
    GroupMember,
    Campaign,
    CampaignVariant,
    CampaignRecipient,
    Suppression,
    TrafficHour,
    WebSession,
)
