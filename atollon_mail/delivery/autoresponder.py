"""Auto-respond (out of office): replies to mail filed into a mailbox whose responder is on.

It subscribes to the `filed` event (atollon_mail.events) and follows RFC 3834: no reply
to bounces, daemons, lists or bulk mail, nor to other automatic messages; only to mail that
names the mailbox in To or Cc; at most one reply per sender per interval (decided in the
store, atomically); the reply goes to the envelope sender, from the null sender <>, marked
`Auto-Submitted: auto-replied`, so no other responder answers it.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import email.utils
import re
from collections.abc import Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from atollon_mail.delivery.runner import send_notification, utc_from_seconds
from atollon_mail.events import Events
from atollon_mail.store import autorespond
from atollon_mail.store.records import AutoreplyPlan, Origin, Recipient

log = Logger()

# How stale the cached set of mailboxes with a responder on may be: one turned on with the
# admin command starts answering within this many seconds. Mail to the other mailboxes
# then costs no query at all.
CACHE_SECONDS = 5.0

# Envelope senders never answered (RFC 3834 section 2, RFC 5230 section 4.6): daemons,
# list software and addresses that say nobody reads them.
_DAEMON_LOCAL_PARTS = frozenset(
    {
        "mailer-daemon",
        "mailer_daemon",
        "mailerdaemon",
        "postmaster",
        "listserv",
        "majordomo",
        "mailman",
        "noreply",
        "no-reply",
        "no_reply",
        "donotreply",
        "do-not-reply",
        "do_not_reply",
    }
)
_LIST_LOCAL_PART = re.compile(r"^(owner-|bounces?([+=-]|$))|(-request|-owner|-bounces?)$")
_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
_ADDRESS_FIELDS = ("to", "cc", "resent-to", "resent-cc")
_REFERENCES_KEPT = 20
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")


def sender_is_automatic(envelope_sender: str) -> bool:
    """Whether the envelope sender is one no responder may answer."""
    sender = envelope_sender.strip().strip("<>").lower()
    if not sender:
        return True  # the null sender: a bounce or another auto-reply
    local = sender.rpartition("@")[0] or sender
    base = local.partition("+")[0] or local
    return base in _DAEMON_LOCAL_PARTS or bool(_LIST_LOCAL_PART.search(local))


def _header_section(raw: bytes) -> email.message.Message:
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 2]
    # compat32: a malformed header from a stranger is text, never an exception.
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)


def _text(value) -> str:
    return " ".join(str(value).split())


def message_is_automatic(headers: email.message.Message) -> str | None:
    """Why the message is not to be answered (bulk, list or automatic), or None."""
    for value in headers.get_all("auto-submitted", []):
        keyword = _text(value).partition(";")[0].strip().lower()
        if keyword != "no":
            return f"Auto-Submitted: {keyword or '(empty)'}"
    for value in headers.get_all("precedence", []):
        if _text(value).lower() in _BULK_PRECEDENCE:
            return f"Precedence: {_text(value).lower()}"
    for name in headers.keys():
        if name.lower().startswith("list-"):
            return f"a {name} header"
    # Microsoft's way of asking not to be answered; and other responders' own markers.
    for value in headers.get_all("x-auto-response-suppress", []):
        words = {word.strip().lower() for word in _text(value).split(",")}
        if words & {"oof", "all"}:
            return "X-Auto-Response-Suppress"
    for name in ("x-autoreply", "x-autorespond"):
        if name in headers:
            return f"an {name} header"
    return None


def addressed_to(headers: email.message.Message) -> list[str]:
    """The addresses in To and Cc (and their Resent- versions), as written."""
    values = [str(value) for field in _ADDRESS_FIELDS for value in headers.get_all(field, [])]
    return [address for _, address in email.utils.getaddresses(values) if "@" in address]


def build_reply(
    plan: AutoreplyPlan,
    envelope_sender: str,
    headers: email.message.Message,
    hostname: str,
    now_seconds: float,
) -> bytes:
    """The reply as bytes with CRLF line ends.

    The subject is the responder's own, as the owner wrote it: RFC 3834 suggests the
    original subject too, but a fixed subject is what the owner sees in their settings.
    """
    reply = email.message.EmailMessage(policy=email.policy.SMTP)
    reply["From"] = plan.identity
    reply["To"] = envelope_sender
    reply["Subject"] = plan.subject
    reply["Date"] = email.utils.formatdate(now_seconds, usegmt=True)
    reply["Message-ID"] = email.utils.make_msgid("autoreply", domain=hostname)
    reply["Auto-Submitted"] = "auto-replied"
    original = _MESSAGE_ID.search(_text(headers.get("message-id", "")))
    if original is not None:
        references = _MESSAGE_ID.findall(_text(headers.get("references", "")))
        if not references:
            references = _MESSAGE_ID.findall(_text(headers.get("in-reply-to", "")))[:1]
        chain = [*references, original.group()][-_REFERENCES_KEPT:]
        reply["In-Reply-To"] = original.group()
        reply["References"] = " ".join(chain)
    body = plan.body if plan.body.endswith("\n") else plan.body + "\n"
    if body.isascii():
        reply.set_content(body)
    else:
        reply.set_content(body, charset="utf-8", cte="quoted-printable")
    return reply.as_bytes()


class Autoresponder:
    """Subscribed to `events.filed(envelope_sender, local_recipients, raw, junk)` when
    built.

    Replies are sent after the mail has been acknowledged; anything that goes wrong is
    logged and never reaches the intake.
    """

    def __init__(self, store, intake, hostname: str, clock, events: Events):
        self._store = store
        self._intake = intake
        self._hostname = hostname
        self._clock = clock
        self._responding: frozenset[int] | None = None
        self._responding_at: float | None = None
        self._loading: list[defer.Deferred] | None = None
        self._in_flight: set[defer.Deferred] = set()
        self._idle_waiters: list[defer.Deferred] = []
        events.filed.subscribe(self)

    def __call__(
        self,
        envelope_sender: str,
        local_recipients: Sequence[Recipient],
        raw: bytes,
        junk: frozenset[int] = frozenset(),
    ) -> defer.Deferred:
        # Mail filed into a Junk folder gets no answer: that would be replying to spam.
        local_recipients = [r for r in local_recipients if r.mailbox_id not in junk]
        if not local_recipients:
            return defer.succeed(None)
        try:
            working = self._respond(envelope_sender, tuple(local_recipients), raw)
        except Exception:
            log.failure("auto-respond failed for mail from <{sender}>", sender=envelope_sender)
            return defer.succeed(None)
        working.addErrback(
            lambda failure: log.failure(
                "auto-respond failed for mail from <{sender}>", failure, sender=envelope_sender
            )
        )
        self._in_flight.add(working)
        working.addBoth(self._finished, working)
        return working

    def when_idle(self) -> defer.Deferred:
        """Fires when no reply is being decided or sent (for tests and shutdown)."""
        if not self._in_flight:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _finished(self, result, working) -> None:
        self._in_flight.discard(working)
        if not self._in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    # -- deciding ---------------------------------------------------------------------

    def _respond(self, envelope_sender, local_recipients, raw) -> defer.Deferred:
        if sender_is_automatic(envelope_sender):
            return defer.succeed(None)
        mailbox_ids = sorted({recipient.mailbox_id for recipient in local_recipients})
        if not mailbox_ids:
            return defer.succeed(None)
        responding = self._responding_mailboxes()
        responding.addCallback(self._decide, mailbox_ids, envelope_sender, raw)
        return responding

    @defer.inlineCallbacks
    def _decide(self, responding, mailbox_ids, envelope_sender, raw):
        # Headers are parsed only for mail to a mailbox whose responder is on: this runs
        # on the reactor thread for every filed message.
        mailbox_ids = [mailbox_id for mailbox_id in mailbox_ids if mailbox_id in responding]
        if not mailbox_ids:
            return
        headers = _header_section(raw)
        why = message_is_automatic(headers)
        if why is not None:
            log.debug("no auto-reply to <{sender}>: {why}", sender=envelope_sender, why=why)
            return
        addressed = tuple(addressed_to(headers))
        if not addressed:
            return  # Bcc or undisclosed recipients: the mailbox is not named
        for mailbox_id in mailbox_ids:
            try:
                yield self._reply_for(mailbox_id, envelope_sender, headers, addressed)
            except Exception:
                log.failure(
                    "auto-reply of mailbox {mailbox_id} to <{sender}> failed",
                    mailbox_id=mailbox_id,
                    sender=envelope_sender,
                )

    @defer.inlineCallbacks
    def _reply_for(self, mailbox_id, envelope_sender, headers, addressed):
        now_seconds = self._clock.seconds()
        plan = yield self._store.run(
            autorespond.claim_autoreply,
            mailbox_id,
            envelope_sender,
            utc_from_seconds(now_seconds),
            addressed_to=addressed,
        )
        if plan is None:
            return
        raw = build_reply(plan, envelope_sender, headers, self._hostname, now_seconds)
        yield send_notification(self._intake, envelope_sender, raw, origin=Origin("autoreply"))
        log.info(
            "auto-replied from {mailbox} to <{sender}>",
            mailbox=plan.mailbox_address,
            sender=envelope_sender,
        )

    # -- the cache of mailboxes with a responder on -----------------------------------

    def _responding_mailboxes(self) -> defer.Deferred:
        now = self._clock.seconds()
        if self._responding is not None and now - self._responding_at < CACHE_SECONDS:
            return defer.succeed(self._responding)
        waiter: defer.Deferred = defer.Deferred()
        if self._loading is None:
            self._loading = [waiter]
            loading = self._store.run(autorespond.responding_mailbox_ids)
            loading.addBoth(self._loaded, now)
        else:
            self._loading.append(waiter)
        return waiter

    def _loaded(self, result, loaded_at: float) -> None:
        waiters, self._loading = self._loading or [], None
        if isinstance(result, Failure):
            for waiter in waiters:
                waiter.errback(result)
            return
        self._responding, self._responding_at = result, loaded_at
        for waiter in waiters:
            waiter.callback(result)
