"""Frozen records: what crosses from the store's threads back to the reactor.

Live peewee instances never leave the store; these plain values do.
"""

from __future__ import annotations

import datetime

import attrs

from atollon_mail.store.searchtext import SearchText


@attrs.frozen
class DomainRecord:
    id: int
    name: str
    mode: str
    active: bool
    # Secondary mode: the company's own domain, whose mail stays with its other provider.
    primary_domain: str | None = None


@attrs.frozen
class UserRecord:
    id: int
    login: str
    name: str
    is_admin: bool


@attrs.frozen
class ContextRecord:
    id: int
    kind: str
    name: str
    owner_login: str | None


@attrs.frozen
class MailboxRecord:
    id: int
    address: str
    local_part: str
    domain: str
    owner_login: str
    identity: str
    store_to: ContextRecord
    active: bool
    is_default: bool
    signature: str
    aliases: tuple[str, ...]
    # What received mail the inbound checks call junk does here (values.SPAM_HANDLINGS):
    # "junk" files it into the mailbox's Junk, "tag" into the inbox with the verdict
    # shown, "off" into the inbox as any other mail.
    spam_handling: str = "junk"


@attrs.frozen
class AliasRecord:
    id: int
    address: str
    mailbox_address: str


@attrs.frozen
class MessageSummary:
    id: int
    size: int
    message_id: str | None
    subject: str | None
    from_header: str | None
    date_header: str | None
    envelope_sender: str
    received_at: datetime.datetime
    # What the inbound checks said of it (None: nothing checked it).
    verdict: InboundVerdict | None = None
    has_attachment: bool = False


@attrs.frozen
class FilingRecord:
    uid: int
    mailbox_address: str
    context: ContextRecord
    flags: tuple[str, ...]
    message: MessageSummary
    # Where within the mailbox it lies (values.FOLDERS): the inbox or the mailbox's Junk.
    folder: str = "inbox"


@attrs.frozen
class Recipient:
    """A local recipient resolved at RCPT time: the mailbox its mail is filed into."""

    address: str
    mailbox_id: int
    mailbox_address: str
    # Where its mail is filed, as resolved at RCPT time (None: looked up when storing),
    # and the mailbox's forwarding (on; keep a copy too): details of delivery, not of who
    # the recipient is, so they take no part in equality.
    context_id: int | None = attrs.field(default=None, eq=False)
    forwards: bool = attrs.field(default=False, eq=False)
    keep_copy: bool = attrs.field(default=True, eq=False)
    # The mailbox's spam handling (MailboxRecord.spam_handling), read with the rest so
    # filing by verdict costs no query of its own.
    spam_handling: str = attrs.field(default="junk", eq=False)


@attrs.frozen
class Rejection:
    """Why an address cannot receive mail here; the SMTP layer turns it into a reply."""

    reason: str  # "unknown-domain" | "inactive-domain" | "unknown-address" | "inactive-mailbox"
    detail: str


@attrs.frozen
class Resolution:
    """Where mail to one address goes, classified once for the SMTP policies.

    kind "local": `recipient` (a mailbox here) receives it. "remote": `address` is
    outside this server and needs nobody's relay rights (a bounce to one of our SRS
    addresses, decoded to the original sender). "foreign": the domain is not ours: only a
    session allowed to relay may send to it. "refused": an address of ours that receives
    nothing, `detail` says why.
    """

    kind: str
    recipient: Recipient | None = None
    address: str | None = None
    detail: str | None = None

    @classmethod
    def of(cls, found: Recipient | str | Rejection) -> Resolution:
        """Classify what the intake's resolve_recipient answered."""
        if isinstance(found, Recipient):
            return cls("local", recipient=found)
        if isinstance(found, str):
            return cls("remote", address=found)
        if found.reason == "unknown-domain":
            return cls("foreign", detail=found.detail)
        return cls("refused", detail=found.detail)


@attrs.frozen
class IncomingMessage:
    """A message accepted at end of DATA, ready to be stored and filed."""

    envelope_sender: str
    recipients: tuple[Recipient, ...]
    raw: bytes
    message_id: str | None = None
    subject: str | None = None
    from_header: str | None = None
    date_header: str | None = None
    type_id: int | None = None  # the message type; None: the default for incoming mail
    verdict: InboundVerdict | None = None  # what the inbound checks said (port 25 only)
    # Written by this server (a DSN, a delay warning, an auto-reply, a notice): filed, not
    # counted as received mail.
    notification: bool = False
    # Its text for the search index (store.searchtext.extract), when taken before the
    # store operation; None: the store takes it.
    search_text: SearchText | None = None


@attrs.frozen
class InboundVerdict:
    """What the inbound checks decided about a message received on port 25, stored with
    it and shown to its readers.

    `junk`: the checks say it belongs in Junk (DMARC quarantine, the spam filter's "add
    header"/"rewrite subject", the built-in score); each recipient mailbox's spam handling
    (junk / tag only / off) decides whether it is filed there. `authentication` is the
    value of the Authentication-Results header added to the message (RFC 8601);
    `spam_score`/`spam_symbols` the filter's score and main reasons (None/() when nothing
    scored it); `scanned` False when the spam filter was down or slow and the message was
    accepted unscanned; `notes` are the verdicts in words, for the reader ("signed by
    acme.com", "forwarded by mx.partner.com, trusted")."""

    junk: bool = False
    authentication: str = ""
    spam_score: float | None = None
    spam_threshold: float | None = None
    spam_symbols: tuple[str, ...] = ()
    spam_action: str = ""
    scanned: bool = True
    notes: tuple[str, ...] = ()


@attrs.frozen
class StoredMessage:
    id: int
    filings: int


@attrs.frozen
class FiledMessage:
    """A message as filed in one mailbox: its bytes, the folder it lies in there
    (values.FOLDERS) and what the inbound checks said of it (None: nothing checked it,
    e.g. mail sent by our own users)."""

    message_id: int
    mailbox_address: str
    folder: str
    raw: bytes
    verdict: InboundVerdict | None


@attrs.frozen
class FolderMove:
    """A message moved within a mailbox (to its Junk or back to the inbox).

    `moved`: how many of its filings there moved (0: it lay there already, nothing
    changed); `raw`: its bytes, for teaching the spam filter what the user decided."""

    message_id: int
    mailbox_address: str
    folder: str  # where it lies now
    moved: int
    raw: bytes


@attrs.frozen
class FolderCount:
    """One folder of a mailbox as the mail client lists it: a fixed one (`folder`: inbox,
    sent, drafts, junk, trash; `context` None) or a CRM folder or project holding mail of
    the mailbox (`folder` None); how many filings lie there and how many are unread."""

    folder: str | None
    context: ContextRecord | None
    name: str
    total: int
    unread: int


@attrs.frozen
class BulkMove:
    """Several filings of a mailbox moved into `folder`: how many moved, and the bytes of
    the messages the spam filter learns from, as (message id, bytes): moved into Junk
    (`spam`), out of Junk into the inbox (`ham`)."""

    folder: str
    moved: int
    spam: tuple[tuple[int, bytes], ...] = ()
    ham: tuple[tuple[int, bytes], ...] = ()


# --- sending ------------------------------------------------------------------------


@attrs.frozen
class OutgoingMessage:
    """A message sent by a user (or a bounce), ready to be stored, filed and queued.

    Local recipients are filed at once; remote ones get a queue row each; the sending
    mailbox (if any) gets a copy in its Sent folder. All in one transaction.
    """

    envelope_sender: str  # "" for a bounce (<>)
    raw: bytes
    local_recipients: tuple[Recipient, ...] = ()
    remote_recipients: tuple[str, ...] = ()
    sent_mailbox_id: int | None = None
    is_bounce: bool = False
    message_id: str | None = None
    subject: str | None = None
    from_header: str | None = None
    date_header: str | None = None
    type_id: int | None = None  # the message type; None: the default for outgoing mail
    # The envelope sender the local recipients' Return-Path names when it is not the one
    # the queued copies go with (forwarded mail: they get an SRS sender); None: the same.
    return_path: str | None = None
    # Received mail going on (relayed, forwarded): what the inbound checks said, kept with
    # it and deciding the folder of its local recipients, as IncomingMessage.verdict.
    verdict: InboundVerdict | None = None
    search_text: SearchText | None = None  # as IncomingMessage.search_text


# Who produces outgoing mail. A kind may register hooks (store.origins) through which
# the outcomes of its mail reach it; the queue itself never tells one kind from another.
ORIGIN_KINDS = (
    "submission",  # a user's mail submitted over SMTP
    "relay",  # mail from a relay host, or a bounce to one of our SRS addresses
    "forward",  # received mail going on to a mailbox's forward addresses
    "autoreply",  # an auto-responder's answer
    "bounce",  # a delivery status notification (a bounce or a delay warning)
    "notice",  # a notification of the DNS watcher
    "compose",  # mail written in the web client
    "campaign",  # one message of a campaign's send list
)
# The kinds of mail this server writes itself: neither received nor sent mail in the
# traffic counts (store.traffic); the failure a bounce tells of is counted once, as it.
NOTIFICATION_KINDS = ("autoreply", "bounce", "notice")


@attrs.frozen
class Origin:
    """Who produced an outgoing message: its kind, the producer's own row where it has
    one (a campaign's send-list row), and the mailbox its queue entry is charged to (None:
    the message's sending mailbox, if any)."""

    kind: str = attrs.field(validator=attrs.validators.in_(ORIGIN_KINDS))
    id: int | None = None
    mailbox_id: int | None = None


@attrs.frozen
class SubmittedMessage:
    id: int  # the Message row
    queue_message_id: int | None  # None when nothing went to the queue
    filings: int  # local recipients plus the Sent copy
    queued_recipients: int
    # The local recipients it was filed for (given, or found among the addresses), and
    # the queue recipients made for the remote ones, in order.
    filed_recipients: tuple[Recipient, ...] = attrs.field(default=(), eq=False)
    queue_recipient_ids: tuple[int, ...] = attrs.field(default=(), eq=False)


@attrs.frozen
class Delivery:
    """One queued recipient claimed for an attempt (its state is now in-flight)."""

    recipient_id: int
    queue_message_id: int
    message_id: int
    envelope_sender: str
    address: str
    domain: str
    attempts: int  # attempts made before this one
    created_at: datetime.datetime
    is_bounce: bool
    delay_warned: bool
    # Who produced it (None: queued before producers were recorded), and whether its
    # sender is told of a bounce or a delay (not when its origin hears of the outcome
    # through a hook and keeps the record itself; see store.origins).
    origin: Origin | None = None
    notify_sender: bool = True


@attrs.frozen
class DeliveryResult:
    recipient_id: int
    outcome: str  # "delivered" | "deferred" | "bounced"
    reply: str  # the remote reply, or what went wrong, in one line
    server: str | None  # "mx.example.org [192.0.2.1]:25", when a server was reached
    at: datetime.datetime
    next_attempt_at: datetime.datetime | None = None  # set for "deferred"
    origin: Origin | None = None  # the delivery's origin: the hooks of its kind hear of it
    # The final dot was sent and no reply came (the connection broke): the server may
    # have the message, so the retry may be a second copy.
    uncertain: bool = False
    domain: str = ""  # the recipient's domain: the delivery outcomes are counted by it


@attrs.frozen
class QueueEntry:
    queue_message_id: int
    recipient_id: int
    address: str
    state: str
    attempts: int
    next_attempt_at: datetime.datetime
    last_reply: str | None
    envelope_sender: str
    created_at: datetime.datetime
    subject: str | None
    uncertain: bool = False  # may have got two copies (see queue.requeue_in_flight)


@attrs.frozen
class RequeuedDeliveries:
    """What a start found in flight: how many went back quietly (their message never
    left), and the recipients marked uncertain (their final dot had been sent)."""

    quiet: int
    uncertain: tuple[int, ...]


@attrs.frozen
class QueueEventRecord:
    at: datetime.datetime
    server: str | None
    reply: str | None
    outcome: str
    next_attempt_at: datetime.datetime | None


@attrs.frozen
class QueueRecipientDetail:
    entry: QueueEntry
    events: tuple[QueueEventRecord, ...]


@attrs.frozen
class QueueMessageDetail:
    id: int
    message_id: int
    envelope_sender: str
    is_bounce: bool
    created_at: datetime.datetime
    subject: str | None
    message_id_header: str | None
    recipients: tuple[QueueRecipientDetail, ...]


@attrs.frozen
class DkimKeyRecord:
    domain: str
    selector: str
    algorithm: str  # "rsa" | "ed25519"
    private_key: str  # PEM (rsa) or base64 of the raw 32-byte seed (ed25519)
    public_key: str  # base64, as published in the p= tag
    active: bool
    # "active": signs; "pending": waits for `dkim activate`; "retired": replaced, still
    # published until retired_at + [delivery] dkim_key_retention, then removed.
    state: str = "active"
    retired_at: datetime.datetime | None = None


@attrs.frozen
class DkimActivation:
    """A key made the signing key of its algorithm, and the keys it replaced."""

    activated: DkimKeyRecord
    retired: tuple[DkimKeyRecord, ...]


@attrs.frozen
class SendingIdentity:
    """An address a user may send as: the identity of a mailbox they may send from."""

    mailbox_id: int
    mailbox_address: str
    identity: str


# --- auto-respond -----------------------------------------------------------------------


@attrs.frozen
class AutoresponderRecord:
    """A mailbox's auto-responder; times are naive UTC, None meaning no bound."""

    mailbox_address: str
    enabled: bool
    subject: str
    body: str
    starts_at: datetime.datetime | None
    ends_at: datetime.datetime | None
    interval_days: int
    updated_at: datetime.datetime


@attrs.frozen
class AutoreplyPlan:
    """A reply the store has recorded as sent: what to send, as whom, to whom."""

    mailbox_id: int
    mailbox_address: str
    identity: str  # the From address
    correspondent: str  # lowercased envelope sender
    subject: str
    body: str


# --- forwarding -------------------------------------------------------------------------


@attrs.frozen
class ForwardingRecord:
    """A mailbox's forwarding: on or off, whether a copy stays, the addresses it goes to."""

    mailbox_address: str
    enabled: bool
    keep_copy: bool
    targets: tuple[str, ...]


@attrs.frozen
class ForwardingPlan:
    """Where a message for some local recipients ends up once forwarding is followed."""

    filed: tuple[Recipient, ...]  # the mailboxes it is filed into
    remote: tuple[str, ...]  # the addresses elsewhere it is queued for
    # The mailboxes whose forwarding sent it on, in the order reached (Delivered-To).
    forwarders: tuple[str, ...]
    # The domain of the first mailbox that forwarded it elsewhere (the SRS domain).
    srs_domain: str | None
    # Targets that receive nothing here (removed or inactive meanwhile): skipped.
    skipped: tuple[str, ...] = ()


# --- mailbox behaviours: access rights, redirects, message types -----------------------


@attrs.frozen
class MailboxAccessRecord:
    """A user's rights on a mailbox they do not own (edit implies view)."""

    mailbox_address: str
    login: str
    view: bool
    edit: bool


@attrs.frozen
class MailboxRights:
    """What a user may do with a mailbox: view its mail; edit its settings and send from it."""

    view: bool
    edit: bool


@attrs.frozen
class MailboxDetail:
    """A mailbox with the rights granted on it and, once redirected, where its address goes."""

    mailbox: MailboxRecord
    access: tuple[MailboxAccessRecord, ...]
    redirected_to: str | None  # the mailbox holding an alias of this one's name
    # What it may send as without an administrator (its own address, in secondary mode
    # also name@ the primary domain), and whether an administrator set its identity.
    own_identities: tuple[str, ...] = ()
    identity_approved: bool = False
    identity_refusal: str | None = None  # why sending as its identity is refused now


@attrs.frozen
class RedirectResult:
    """What a redirect of OLD to NEW moves (or would move, for a preview)."""

    old_address: str
    new_address: str
    aliases_added: tuple[str, ...]  # addresses NEW now answers to: OLD's name, then its aliases
    old_was_active: bool  # False: OLD had been made inactive before


@attrs.frozen
class MessageTypeRecord:
    id: int
    code: str
    name: str
    description: str
    active: bool
    default_incoming: bool
    default_outgoing: bool


@attrs.frozen
class MessageTypeUsage:
    """A message type with how many stored messages and campaigns have it."""

    type: MessageTypeRecord
    messages: int
    campaigns: int


@attrs.frozen
class MessageTypeChange:
    """A message's type set: what it was (None: none) and what it is."""

    message_id: int
    previous: str | None
    code: str


@attrs.frozen
class MessageTypeDeletion:
    code: str
    reassigned: int  # messages moved to another type first
    reassigned_to: str | None


# --- DNS advice and checks ------------------------------------------------------------


@attrs.frozen
class PublishedKey:
    """The public half of a DKIM key: what its DNS record must say."""

    domain: str
    selector: str
    algorithm: str
    public_key: str
    state: str = "active"  # as DkimKeyRecord.state


@attrs.frozen
class DnsSubject:
    """What a domain's DNS must publish, as the store knows it."""

    domain: DomainRecord
    # Its MX belongs to this appliance; False for a primary domain recorded only because a
    # secondary domain sits below it (its mail stays with the other provider).
    hosted: bool
    sending_domains: tuple[str, ...]  # the domains its mailboxes send as (SPF, DMARC)
    dkim_keys: tuple[PublishedKey, ...]  # of the sending domains and the domain itself
    forwards: tuple[tuple[str, str], ...]  # secondary mode: (identity, mailbox address)
    secondaries: tuple[str, ...]  # the secondary domains below it


@attrs.frozen
class DnsCheckResult:
    """One live DNS check: status "pass", "warn" or "fail", and what to do about it."""

    check: str
    status: str
    reason: str
    # The lookup itself failed (timeout, SERVFAIL): the outcome is not known.
    temporary: bool = False


@attrs.frozen
class DnsCheckRecord:
    """The last check of a domain (checked_at naive UTC)."""

    domain: str
    checked_at: datetime.datetime
    results: tuple[DnsCheckResult, ...]


@attrs.frozen
class SearchQuery:
    """What to look for (store.search): words of the text (a "quoted phrase" as one), in
    the mailboxes named (none: every one the user may view), narrowed by the filters.
    `sender`/`recipient`: words of the From / To or Cc fields; `since`/`until`: the days
    (UTC, both included) the message arrived; `has_attachment`, `unread`: only such."""

    text: str = ""
    mailboxes: tuple[str, ...] = ()
    folder: str | None = None
    sender: str = ""
    recipient: str = ""
    since: datetime.date | None = None
    until: datetime.date | None = None
    has_attachment: bool = False
    unread: bool = False


@attrs.frozen
class SearchResults:
    """A page of what a search found, newest first: one filing a line; `more` when
    another page follows."""

    hits: tuple[FilingRecord, ...]
    more: bool


@attrs.frozen
class WebSessionRecord:
    """A web login as the store keeps it (store.websessions): its user as they are now."""

    user: UserRecord
    csrf_token: str
    created_at: datetime.datetime
    last_seen: datetime.datetime
