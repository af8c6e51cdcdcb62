"""Building one campaign message for one recipient."""

from __future__ import annotations

import binascii
import datetime
import email.header
import email.utils
import secrets

from atollon_mail.massmail.templates import contact_fields, render_variant
from atollon_mail.massmail.tokens import RecipientTokens
from atollon_mail.store.campaign_records import (
    CampaignMessage,
    CampaignSending,
    HandoffCandidate,
)

# The message is written by hand, not with the email package's EmailMessage: that cost
# about 2 ms per message here, more than everything else a campaign does per recipient.
# What is written is the simple case only: one text/plain part, quoted-printable, and
# RFC 2047 words for non-ASCII header text (from the email package's own encoders).


def _header_text(text: str) -> str:
    """Unstructured header text: as it is when short ASCII, else RFC 2047 words, folded."""
    if text.isascii() and len(text) < 900 and "\r" not in text and "\n" not in text:
        return text
    return email.header.Header(text, "utf-8", header_name="Subject").encode(
        linesep="\r\n", maxlinelen=76
    )


def _quoted_printable(body: str) -> bytes:
    """The body as quoted-printable lines ending in CRLF (binascii does the encoding)."""
    lines = body.replace("\r\n", "\n").replace("\r", "\n")
    encoded = binascii.b2a_qp(lines.encode("utf-8"), quotetabs=False, istext=True)
    encoded = encoded.replace(b"\n", b"\r\n")
    return encoded if encoded.endswith(b"\r\n") else encoded + b"\r\n"


def variant_for(sending: CampaignSending, language: str) -> tuple[str, str]:
    """The row's variant: its language was chosen (own or fallback) when the send list
    was made; a variant removed since then falls back to any one left, by language."""
    if language in sending.variants:
        return sending.variants[language]
    return sending.variants[min(sending.variants)]


def build_message(
    sending: CampaignSending,
    candidate: HandoffCandidate,
    tokens: RecipientTokens,
    unsubscribe_base: str,
    hostname: str,
    now: datetime.datetime,
) -> CampaignMessage:
    """The personalised message: the variant rendered with the contact's merge fields,
    the mailbox's signature, RFC 8058 one-click unsubscribe headers and a VERP return
    path. Raises templates.TemplateProblem when the variant cannot be rendered."""
    recipient_id = candidate.recipient_id
    unsubscribe_url, unsubscribe_address = tokens.unsubscribe_targets(
        recipient_id, sending.mailbox_domain, unsubscribe_base
    )
    fields = contact_fields(
        first_name=candidate.first_name,
        last_name=candidate.last_name,
        name=candidate.name,
        email=candidate.address,
        language=candidate.language,
        company=candidate.company,
        unsubscribe_url=unsubscribe_url,
    )
    subject_template, body_template = variant_for(sending, candidate.language)
    subject, body = render_variant(subject_template, body_template, fields)
    if sending.signature.strip():
        body = f"{body.rstrip()}\n\n-- \n{sending.signature.strip()}\n"
    sender = email.utils.formataddr((sending.sender_name, sending.identity), charset="utf-8")
    recipient_domain = candidate.address.rpartition("@")[2]
    message_id = f"<c{sending.campaign_id}.r{recipient_id}.{secrets.token_hex(6)}@{hostname}>"
    headers = [
        ("From", sender),
        ("To", email.utils.formataddr((fields["name"], candidate.address), charset="utf-8")),
        ("Subject", _header_text(subject)),
        ("Date", email.utils.format_datetime(now.replace(tzinfo=datetime.UTC))),
        ("Message-ID", message_id),
        ("List-Unsubscribe", f"<{unsubscribe_url}>,\r\n <mailto:{unsubscribe_address}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        # Out-of-office replies are not sent to bulk mail (RFC 3834 responders check it).
        ("Precedence", "bulk"),
        ("MIME-Version", "1.0"),
        ("Content-Type", 'text/plain; charset="utf-8"'),
        ("Content-Transfer-Encoding", "quoted-printable"),
    ]
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("ascii")
    raw = head + b"\r\n" + _quoted_printable(body)
    return CampaignMessage(
        recipient_id=recipient_id,
        address=candidate.address,
        domain=recipient_domain.lower(),
        envelope_sender=tokens.bounce_address(recipient_id, sending.mailbox_domain),
        raw=raw,
        message_id=message_id,
        subject=subject,
        from_header=str(sender),
    )
