"""Delivery status notifications (RFC 3464): what a sender gets back when mail fails.

Built with the email package; sent from the null sender <> so a failing bounce is never
bounced again.
"""

from __future__ import annotations

import datetime
import email.message
import email.policy
import email.utils
import re
import secrets
from collections.abc import Sequence

import attrs

_STATUS = re.compile(rb"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_POLICY = email.policy.SMTP.clone(max_line_length=998)


@attrs.frozen
class FailedRecipient:
    address: str
    action: str  # "failed" | "delayed"
    reply: str  # the remote reply (or what went wrong), one line
    remote_mta: str | None = None  # the server that gave the reply
    last_attempt: datetime.datetime | None = None


def status_of(reply: str, permanent: bool) -> str:
    """The enhanced status code (RFC 3463) in a reply like "550 5.1.1 ...", else a generic one."""
    code, _, rest = reply.partition(" ")
    match = _STATUS.match(rest.encode("ascii", "replace"))
    if match and match.group(1).decode() in "45":
        return ".".join(part.decode() for part in match.groups())
    return "5.0.0" if permanent else "4.0.0"


def _header_section(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 2]


def _diagnostic(reply: str) -> str:
    return "smtp; " + " ".join(reply.split())


def build_dsn(
    reporting_mta: str,
    original_sender: str,
    recipients: Sequence[FailedRecipient],
    original: bytes,
    arrival: datetime.datetime,
    now: datetime.datetime,
) -> bytes:
    """A multipart/report DSN to original_sender about recipients; returns wire bytes."""
    delayed = all(recipient.action == "delayed" for recipient in recipients)
    report = email.message.EmailMessage(policy=_POLICY)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = original_sender
    report["Subject"] = (
        "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    )
    report["Date"] = email.utils.format_datetime(now.replace(tzinfo=datetime.UTC))
    report["Message-ID"] = f"<{secrets.token_hex(12)}@{reporting_mta}>"
    report["Auto-Submitted"] = "auto-replied"
    original_id = _original_message_id(original)
    if original_id:
        report["In-Reply-To"] = original_id
        report["References"] = original_id

    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    if delayed:
        lines += [
            "Your message could not be delivered yet. It is still in the queue and will be",
            "tried again; you do not need to send it again.",
        ]
    else:
        lines += [
            "I'm sorry to have to inform you that your message could not be delivered to",
            "one or more recipients. It is attached below.",
        ]
    lines.append("")
    for recipient in recipients:
        lines.append(f"<{recipient.address}>: {recipient.reply}")
    report.set_content("\n".join(lines) + "\n")

    per_message = email.message.Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_message["Arrival-Date"] = email.utils.format_datetime(arrival.replace(tzinfo=datetime.UTC))
    status_parts = [per_message]
    for recipient in recipients:
        fields = email.message.Message()
        fields["Final-Recipient"] = f"rfc822; {recipient.address}"
        fields["Action"] = recipient.action
        fields["Status"] = status_of(recipient.reply, recipient.action == "failed")
        if recipient.remote_mta:
            fields["Remote-MTA"] = f"dns; {recipient.remote_mta.split()[0]}"
        fields["Diagnostic-Code"] = _diagnostic(recipient.reply)
        if recipient.last_attempt:
            fields["Last-Attempt-Date"] = email.utils.format_datetime(
                recipient.last_attempt.replace(tzinfo=datetime.UTC)
            )
        status_parts.append(fields)

    report.make_mixed()
    report.replace_header("Content-Type", "multipart/report")
    report.set_param("report-type", "delivery-status")
    status = email.message.EmailMessage(policy=_POLICY)
    status["Content-Type"] = "message/delivery-status"
    # The email package writes a delivery-status payload given as a list of header blocks.
    status.set_payload(status_parts)
    report.attach(status)
    headers = email.message.EmailMessage(policy=_POLICY)
    headers["Content-Type"] = "text/rfc822-headers"
    headers.set_payload(_header_section(original).decode("utf-8", "replace"))
    report.attach(headers)
    return report.as_bytes(policy=_POLICY)


def _original_message_id(raw: bytes) -> str | None:
    for line in _header_section(raw).split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"message-id":
            return value.strip().decode("ascii", "replace") or None
    return None
