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
    """What the SMTP server asks: who receives an address, and keep this message."""

    def resolve_recipient(local_part, domain):
        """
        Deferred firing with a Recipient (a mailbox receives it), a plain address string
        (a valid SRS address of ours: the mail goes on to that original sender), or a
        Rejection saying why not; fails only for a temporary problem (the store is
        unreachable).
        """

    def accept(envelope_sender, recipients, raw):
        """
        Store raw (bytes, with our Received: header) for the resolved recipients.

        The Deferred fires with a StoredMessage only once the transaction holding the
        message has committed; it fails if the message may not have been kept.
        """


class ISubmissionPolicy(IMailIntake):
    """What the submission server asks on top of the intake's questions."""

    def authenticate(login, password):
        """Deferred firing with the UserRecord, or None when the credentials are wrong."""

    def sending_identities(login):
        """Deferred firing with a tuple of SendingIdentity the user may send as now (only
        identities that pass the store's identity rule); asked at AUTH and at every MAIL."""

    def submit(login, identity, envelope_sender, local_recipients, remote_recipients, raw):
        """
        Store an authenticated user's message: local recipients (Recipient records) are
        filed at once, remote recipients (address strings) queued, a copy filed in the
        Sent folder of the identity's mailbox. Fires with a SubmittedMessage only after the
        transaction committed.
        """


class IMXResolver(Interface):
    def resolve(domain):
        """
        Deferred firing with the destinations for domain, in the order to try them: a
        list of Destination (MX preference order, equal preferences shuffled; the domain's
        own A/AAAA when it has no MX). Fails with NullMX, NoSuchDomain (permanent) or
        TemporaryDNSError.
        """
