"""The seams between the parts of the appliance (checked with verifyObject in tests)."""

from zope.interface import Attribute, Interface


class IStore(Interface):
    """The single source of truth: every query runs in the store's own thread pool."""

    database = Attribute("The peewee database the models are bound to.")

    def run(operation, *args, **kwargs):
        """
        Run operation(*args, **kwargs) in one transaction in the store's thread pool.

        Returns a Deferred firing on the reactor thread with the operation's result (a
        frozen record or plain values), or failing with its exception after a rollback.
        """

    def run_sync(operation, *args, **kwargs):
        """Run operation in one transaction in the calling thread (admin command only)."""


class IMailIntake(Interface):
    """What the SMTP policies ask: who receives an address, and keep this message."""

    def resolve_recipient(local_part, domain):
        """
        Deferred firing with a Recipient (a mailbox receives it), a plain address string
        (a valid SRS address of ours: the mail goes on to that original sender), or a
        Rejection saying why not; fails only for a temporary problem (the store is
        unreachable).
        """

    def lookup_recipient(local_part, domain):
        """resolve_recipient's answer classified once: a records.Resolution (kind local /
        remote / foreign / refused), or a Deferred firing with one."""

    def accept(envelope_sender, recipients, raw, verdict=None, notification=False):
        """
        Store raw (bytes, with our Received: header) for the resolved recipients.
        `verdict` is the records.InboundVerdict of the inbound checks (port 25 only),
        kept with the message. `notification`: a message this server wrote (a DSN, an
        auto-reply), which the traffic counts do not count as received mail.

        The Deferred fires with a StoredMessage only once the transaction holding the
        message has committed; it fails if the message may not have been kept. A failure
        with smtp_code and enhanced_status (5xx) is a permanent refusal the server passes
        on, e.g. a relayed message with a line over 998 octets that cannot be re-encoded.
        """


class ISubmissionIntake(IMailIntake):
    """What the submission policy asks on top of the intake's questions."""

    def sending_identities(login):
        """Deferred firing with a tuple of SendingIdentity the user may send as now (only
        identities that pass the store's identity rule); asked at AUTH and at every MAIL."""

    def submit(login, identity, envelope_sender, local_recipients, remote_recipients, raw):
        """
        Store an authenticated user's message: local recipients (Recipient records) are
        filed at once, remote recipients (address strings) queued, a copy filed in the
        Sent folder of the identity's mailbox. Fires with a SubmittedMessage only after the
        transaction committed. Lines over 998 octets are re-encoded first; a message where
        that cannot be done fails with smtp_code 554 and enhanced_status 5.6.3.
        """


class ISMTPPolicy(Interface):
    """What one SMTP listener accepts (aiosmtpd's handler model): the one protocol
    (smtp.server) parses and enforces the protocol, then asks its policy at each step.

    `session` and `envelope` are smtp.session records. Each method returns a decision,
    directly or as a Deferred firing with it: an smtp.session.Accept (the protocol keeps
    its value and sends its usual 2xx reply, or the Accept's own), or a Reply (or a tuple
    of Replies) to send instead; a 421 ends the session. A failure becomes a 451 4.3.0:
    a policy never turns a problem of ours into a permanent refusal by raising.
    """

    def check_connect(session):
        """A client connected (session.peer is known): Accept to greet it."""

    def check_helo(session):
        """HELO/EHLO with session.helo and session.esmtp set: Accept, or refuse the name."""

    def check_mail(session, envelope):
        """MAIL FROM, its syntax and parameters checked: Accept(value) keeps value as
        envelope.note for the transaction."""

    def check_rcpt(session, envelope, path):
        """RCPT TO path (an smtp.address.Path), syntax and the recipient limit checked:
        Accept(recipient) adds what the message is delivered to (a repeated one once)."""

    def deliver(session, envelope, data):
        """End of data: data is the message with our Received: header. Accept(stored)
        once it is kept (stored.id is the queue id in the 250 reply), or the refusal."""


class IInboundChecks(Interface):
    """What port 25 asks about a message at the end of DATA, before its 250: sender
    authentication (SPF, DKIM, DMARC, ARC), trusted forwarders, the spam filter or the
    built-in score (atollon_mail.inbound). Not asked for mail of relay hosts."""

    def check(session, envelope, data):
        """
        Deferred firing with an inbound.checks.InboundDecision for data (the message with
        our Received: header) from session (smtp.session.Session) in envelope: its
        `refusal` (code, enhanced status, text) to answer instead of storing, or its
        `verdict` (records.InboundVerdict) and `prepared(data)`, the message to store
        (our Authentication-Results on top, any claiming our name removed). Fails only
        for a problem of ours (the policy answers 451).
        """


class ISMTPAuthPolicy(ISMTPPolicy):
    """A policy for a listener that offers AUTH (Listener.auth); the protocol runs the
    SASL exchange (PLAIN, LOGIN) and asks here."""

    def check_auth(session):
        """AUTH is starting: Accept to go on, or a Reply (a throttled client: a 421)."""

    def authenticate(session, login, password):
        """Accept(user) sets session.authenticated_user; otherwise the refusal."""


class IAuthenticator(Interface):
    """The one password check of the appliance (SMTP AUTH and the web login), throttled
    per client address and per login from that address."""

    window = Attribute("Seconds a failure counts against its client and login.")

    def blocked(client):
        """Whether the client (an IP address as text, or None) may try no login now."""

    def login_blocked(client, login):
        """Whether the client may not try this login now (others it may still try)."""

    def authenticate(client, login, password):
        """
        Deferred firing with the UserRecord when the password is right, None when the
        login or password is wrong. The login may be given as the address of a mailbox:
        it stands for the mailbox owner's login (and counts under both). Fails with
        auth.Throttled, without checking the password, when too many attempts from the
        client (or at this login from it) are recent or still being checked; fails with
        another error when the check could not be made (a temporary failure, not counted).
        """


class IMXResolver(Interface):
    def resolve(domain):
        """
        Deferred firing with the destinations for domain, in the order to try them: a
        list of Destination (MX preference order, equal preferences shuffled; the domain's
        own A/AAAA when it has no MX). Fails with NullMX, NoSuchDomain (permanent) or
        TemporaryDNSError.
        """


class IEventChannel(Interface):
    """One kind of event: consumers subscribe when they are built, producers fire after
    the work the event tells of is committed."""

    name = Attribute("What the event is called, for the log.")

    def subscribe(callback):
        """Call callback(*args) on every later fire."""

    def fire(*args):
        """Tell every subscriber; a subscriber's exception is logged, never raised."""


class IEvents(Interface):
    """The channels every subsystem shares (see atollon_mail.events)."""

    queued = Attribute("IEventChannel: a commit queued mail for remote delivery.")
    filed = Attribute("IEventChannel: a message was filed into local mailboxes.")
    outcome = Attribute("IEventChannel: delivery outcomes were committed.")
    filed_elsewhere = Attribute("IEventChannel: another node filed mail into local mailboxes.")
    touched_elsewhere = Attribute("IEventChannel: another node's IMAP client changed mailboxes.")
    missed_elsewhere = Attribute("IEventChannel: the other nodes' news may have been lost.")


class ISpamFilter(Interface):
    """The spam filter asked about a message received on port 25 before its 250 (rspamd,
    atollon_mail.inbound.rspamd), and taught by the Junk and Not junk buttons."""

    def check(query):
        """
        Deferred firing with a SpamResult for a SpamQuery (the message and its envelope):
        rspamd's action ("no action", "greylist", "add header", "rewrite subject", "soft
        reject", "reject"), score and symbols. When the filter cannot answer (down, slow,
        nonsense): a SpamResult with scanned False and action "no action" (on_failure
        accept), or a failure with SpamFilterUnavailable, which carries 451 4.7.1
        (tempfail). Never waits on the reactor thread.
        """

    def learn(raw, spam):
        """Teach the filter that raw (bytes) is spam (True) or not: a Deferred firing with
        a LearnResult (learned, or why not: already learned so, too few words), failing
        with SpamFilterUnavailable when the filter could not be told."""


class ICountedConnection(Interface):
    """A listener's protocol that tells when its connection is lost, so the listener's
    connection caps count it without wrapping it (see connections.LimitedFactory)."""

    def when_lost(callback):
        """Call callback() once, when the connection is lost."""


class ISpamLearner(Interface):
    """Teaches the spam filter what a user decided about a message (the web client's "Junk"
    and "Not junk"; for rspamd its /learnspam and /learnham)."""

    def learn(raw, spam):
        """
        Teach the filter that raw (the message's bytes) is spam (spam True) or not (False).

        Returns a Deferred firing once the filter has learnt it, failing when it could
        not (down, slow, refused); the message has been moved either way.
        """
