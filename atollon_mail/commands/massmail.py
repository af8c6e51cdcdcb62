"""Admin commands: campaigns (`massmail`) and the suppression list (`suppression`).

massmail create NAME --group G --mailbox ADDR --fallback-language LANG [--type CODE]
                [--organization ORG]
massmail variant ID LANG --subject TEXT (--body-file FILE | --body-stdin)
massmail variant ID LANG --remove
massmail show ID | list | preview ID | send ID
massmail status ID [--watch] [--interval SECONDS]
massmail pause | resume | cancel | retry-failed ID
massmail recipients ID [--state STATE] [--uncertain] [--limit N] [--offset N]
suppression add ADDR [--reason REASON] [--detail TEXT] | remove ADDR | list
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from atollon_mail.commands.common import read_text_file, whole_number
from atollon_mail.commands.output import PROGRAM, Refused, counted, out, table, when
from atollon_mail.config import default_config_path, load_config
from atollon_mail.massmail.templates import MERGE_FIELDS
from atollon_mail.massmail.tokens import (
    preview_unsubscribe_url,
    unsubscribe_base,
    unsubscribe_url,
)
from atollon_mail.store import campaign_recipients, campaigns, sendlists
from atollon_mail.store.campaign_records import CampaignRecord, CampaignStatus
from atollon_mail.store.values import RECIPIENT_STATES, SUPPRESSION_REASONS, utc_now

BAR_WIDTH = 20
# Clears a terminal and puts the cursor home, so --watch redraws in place.
CLEAR_SCREEN = "\x1b[H\x1b[2J"
# Watching ends by itself once the campaign is in one of these.
ENDED = ("finished", "cancelled")


# --- formatting -----------------------------------------------------------------------


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """`[##########----------]  50.0%  10000/20000`"""
    share = done / total if total else 0.0
    filled = min(width, math.floor(share * width))
    return f"[{'#' * filled}{'-' * (width - filled)}]  {share * 100:.1f}%  {done}/{total}"


def duration(seconds: float) -> str:
    """A time left, as a person reads it: 11 s, 4 min, 2 h 5 min."""
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def rate_line(status: CampaignStatus) -> str:
    """The rate and time left of a running (or finished) campaign; what the others do."""
    campaign = status.campaign
    if campaign.status == "draft":
        return f"not sent yet: {PROGRAM} massmail send {campaign.id}"
    if campaign.status == "paused":
        return f"paused: nothing is being sent; resume it: {PROGRAM} massmail resume {campaign.id}"
    if campaign.status == "cancelled":
        return "cancelled: nothing more is sent"
    if status.rate is None:
        return "rate unknown"
    line = f"rate {status.rate:.1f}/s"
    if status.eta_seconds is not None:
        line += f", about {duration(status.eta_seconds)} left"
    return line


def status_lines(status: CampaignStatus) -> list[str]:
    """One screen of a campaign's progress."""
    campaign = status.campaign
    lines = [f"campaign {campaign.id} {campaign.name}: {campaign.status}"]
    if campaign.started_at is not None:
        lines[0] += f", started {when(campaign.started_at)} UTC"
    if campaign.finished_at is not None:
        lines[0] += f", ended {when(campaign.finished_at)} UTC"
    width = max(len(str(count)) for count in status.counts.values())
    for state in RECIPIENT_STATES:
        lines.append(f"  {state:<11}{status.counts[state]:>{width}}")
    lines.append(progress_bar(status.done, status.total))
    lines.append(rate_line(status))
    if status.uncertain:
        lines.append(
            f"{counted(status.uncertain, 'recipient')} may have got two copies (being "
            f"delivered when the appliance stopped): {PROGRAM} massmail recipients "
            f"{campaign.id} --uncertain"
        )
    if status.identity_refusal is not None:
        lines.append(f"not sendable: {status.identity_refusal}; set another identity first")
    return lines


def _show_campaign(record: CampaignRecord) -> None:
    out(f"campaign {record.id}: {record.name}")
    out(f"status:            {record.status}")
    out(f"group:             {record.group_name} (#{record.group_id})")
    out(f"sent from:         {record.mailbox_address}")
    out(f"message type:      {record.type_code or '(none)'}")
    organization = "-" if record.organization_id is None else f"#{record.organization_id}"
    out(f"organization:      {organization}")
    out(f"fallback language: {record.fallback_language}")
    out(f"created:           {when(record.created_at)} UTC")
    if record.started_at is not None:
        out(f"started:           {when(record.started_at)} UTC")
    if record.finished_at is not None:
        out(f"ended:             {when(record.finished_at)} UTC")
    if not record.variants:
        out(
            "variants:          (none) add one: "
            f"{PROGRAM} massmail variant {record.id} {record.fallback_language} "
            "--subject TEXT --body-file FILE"
        )
        return
    out("variants:")
    for variant in record.variants:
        mark = " (fallback)" if variant.language == record.fallback_language else ""
        out(f"  {variant.language}{mark}: {variant.subject}")


# --- massmail -------------------------------------------------------------------------


def _create(store, args) -> None:
    record = store.run_sync(
        campaigns.create_campaign,
        args.name,
        args.group,
        args.mailbox,
        args.fallback_language,
        type_code=args.type,
        organization=args.organization,
        now=utc_now(),
    )
    out(f"created campaign {record.id}: {record.name} (draft)")
    out(
        f"add its texts: {PROGRAM} massmail variant {record.id} {record.fallback_language} "
        "--subject TEXT --body-file FILE"
    )


def _variant(store, args) -> None:
    if args.remove:
        if args.subject is not None:
            raise Refused("--remove takes no --subject; remove the variant, or set it")
        record = store.run_sync(campaigns.remove_variant, args.id, args.language)
        out(f"campaign {record.id}: removed the {args.language.strip().lower()} variant")
        return
    if args.subject is None or (args.body_file is None and not args.body_stdin):
        raise Refused(
            "give --subject TEXT and the body with --body-file FILE or --body-stdin "
            "(or --remove to remove the variant)"
        )
    body = read_text_file("-" if args.body_stdin else args.body_file, "the body")
    record = store.run_sync(
        campaigns.set_variant, args.id, args.language, args.subject, body, now=utc_now()
    )
    languages = ", ".join(variant.language for variant in record.variants)
    out(
        f"campaign {record.id}: {args.language.strip().lower()} variant set (variants: {languages})"
    )
    out(f"see how it renders: {PROGRAM} massmail preview {record.id}")


def _show(store, args) -> None:
    _show_campaign(store.run_sync(campaigns.get_campaign, args.id))


def _list(store, args) -> None:
    records = store.run_sync(campaigns.list_campaigns)
    rows = [
        (
            record.id,
            record.name,
            record.status,
            record.group_name,
            record.mailbox_address,
            ",".join(variant.language for variant in record.variants) or "-",
            when(record.created_at),
        )
        for record in records
    ]
    out(
        table(
            ("ID", "NAME", "STATUS", "GROUP", "FROM", "LANGUAGES", "CREATED (UTC)"),
            rows,
            right=(0,),
        )
    )


def _preview(store, args) -> None:
    config = load_config(args.config or default_config_path())
    base = unsubscribe_base(config)
    previews = store.run_sync(
        campaigns.preview_campaign, args.id, unsubscribe_url=preview_unsubscribe_url(base)
    )
    source = (
        "[massmail] unsubscribe_url"
        if config.massmail.unsubscribe_url
        else "https:// and [appliance] hostname; set [massmail] unsubscribe_url to change it"
    )
    out(f"unsubscribe links: {unsubscribe_url(base, '...')} ({source} in {config.path})")
    out()
    failed = []
    for number, preview in enumerate(previews):
        if number:
            out()
        if preview.contact_id is not None:
            whom = f"as sent to {preview.address} (contact #{preview.contact_id})"
        else:
            whom = "nobody in the group gets it; shown with sample fields"
        out(f"== {preview.language}: {counted(preview.recipients, 'recipient')}, {whom}")
        if preview.error is not None:
            failed.append(preview.language)
            out(f"error: {preview.error}")
            continue
        out(f"Subject: {preview.subject}")
        out()
        out(preview.body.rstrip("\n"))
    if not previews:
        out("no variant yet, and the group has no member with an address")
    if failed:
        fields = ", ".join(sorted(MERGE_FIELDS))
        raise Refused(
            f"{', '.join(failed)}: cannot be sent as it is; fix it with: {PROGRAM} massmail "
            f"variant {args.id} LANG ... (the merge fields are {fields})"
        )


def _send(store, args) -> None:
    status = store.run_sync(sendlists.start_campaign, args.id, utc_now())
    campaign = status.campaign
    suppressed = status.counts["suppressed"]
    out(
        f"campaign {campaign.id} is {campaign.status}: "
        f"{counted(status.total, 'recipient')} on its send list"
        + (f", {suppressed} of them suppressed (not sent)" if suppressed else "")
    )
    out(f"watch it: {PROGRAM} massmail status {campaign.id} --watch")


def _draw(status: CampaignStatus, first: bool) -> None:
    if sys.stdout.isatty():
        sys.stdout.write(CLEAR_SCREEN)
    elif not first:
        out()
    out("\n".join(status_lines(status)))
    sys.stdout.flush()


def _status(store, args) -> None:
    status = store.run_sync(campaign_recipients.campaign_status, args.id, utc_now())
    if not args.watch:
        out("\n".join(status_lines(status)))
        return
    try:
        _draw(status, first=True)
        while status.campaign.status not in ENDED:
            time.sleep(args.interval)
            status = store.run_sync(campaign_recipients.campaign_status, args.id, utc_now())
            _draw(status, first=False)
    except KeyboardInterrupt:
        # Ctrl-C ends watching; the campaign goes on.
        out()


def _pause(store, args) -> None:
    status = store.run_sync(sendlists.pause_campaign, args.id, utc_now())
    waiting = status.counts["queued"]
    out(f"campaign {args.id} is paused; {counted(waiting, 'recipient')} waiting")
    out(f"resume it: {PROGRAM} massmail resume {args.id}")


def _resume(store, args) -> None:
    status = store.run_sync(sendlists.resume_campaign, args.id, utc_now())
    out(f"campaign {args.id} is {status.campaign.status}")


def _cancel(store, args) -> None:
    status = store.run_sync(sendlists.cancel_campaign, args.id, utc_now())
    unsent = status.counts["queued"]
    out(
        f"campaign {args.id} is cancelled; {counted(unsent, 'recipient')} left unsent"
        if unsent
        else f"campaign {args.id} is cancelled"
    )


def _retry_failed(store, args) -> None:
    requeued = store.run_sync(sendlists.retry_failed, args.id, utc_now())
    campaign = store.run_sync(campaigns.get_campaign, args.id)
    if not requeued:
        out(f"campaign {args.id} has no failed recipient; nothing to retry")
        return
    out(
        f"{counted(requeued, 'failed recipient')} queued again; "
        f"campaign {args.id} is {campaign.status}"
    )


def _recipients(store, args) -> None:
    entries = store.run_sync(
        campaign_recipients.send_list,
        args.id,
        state=args.state,
        uncertain=True if args.uncertain else None,
        limit=args.limit,
        offset=args.offset,
    )
    rows = [
        (
            entry.id,
            entry.address,
            entry.language,
            entry.state + (" (uncertain)" if entry.uncertain else ""),
            entry.attempts,
            when(entry.updated_at),
            entry.last_reply or "-",
        )
        for entry in entries
    ]
    out(
        table(
            ("ID", "ADDRESS", "LANG", "STATE", "ATTEMPTS", "UPDATED (UTC)", "LAST REPLY"),
            rows,
            right=(0, 4),
        )
    )


# --- suppression ----------------------------------------------------------------------


def _suppression_add(store, args) -> None:
    record = store.run_sync(
        campaign_recipients.suppress_address,
        args.address,
        reason=args.reason,
        detail=args.detail,
        now=utc_now(),
    )
    out(f"{record.address} is suppressed ({record.reason} since {when(record.created_at)} UTC)")


def _suppression_remove(store, args) -> None:
    if not store.run_sync(campaign_recipients.unsuppress_address, args.address):
        raise Refused(f"{args.address.strip()} is not suppressed; see: {PROGRAM} suppression list")
    out(f"{args.address.strip().lower()} is no longer suppressed")


def _suppression_list(store, args) -> None:
    records = store.run_sync(
        campaign_recipients.list_suppressions, limit=args.limit, offset=args.offset
    )
    rows = [
        (
            record.address,
            record.reason,
            when(record.created_at),
            "-" if record.campaign_id is None else record.campaign_id,
            record.detail or "-",
        )
        for record in records
    ]
    out(table(("ADDRESS", "REASON", "SINCE (UTC)", "CAMPAIGN", "DETAIL"), rows))


# --- registration ---------------------------------------------------------------------


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"give 0.1 to 3600 seconds, not {value}")
    return seconds


def _campaign_id(parser) -> None:
    parser.add_argument("id", metavar="ID", type=whole_number(1), help="see: massmail list")


def register(commands) -> None:
    massmail = commands("massmail", "campaigns: mass mail to a distribution group")

    create = massmail.add_parser("create", help="make a draft campaign")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--group", metavar="GROUP", required=True, help="its name or id")
    create.add_argument(
        "--mailbox", metavar="ADDR", required=True, help="the mailbox it is sent from"
    )
    create.add_argument(
        "--fallback-language",
        metavar="LANG",
        required=True,
        help="the variant for contacts whose language has none (e.g. en)",
    )
    create.add_argument("--type", metavar="CODE", help="message type (default: outgoing's)")
    create.add_argument(
        "--organization",
        metavar="ORG",
        help="whose default folders the sent mail is filed in (default: the group's)",
    )
    create.set_defaults(handler=_create)

    fields = ", ".join(sorted(MERGE_FIELDS))
    variant = massmail.add_parser(
        "variant",
        help="set or remove the subject and body for one language",
        description=(
            "The subject and body sent to contacts in one language, as Jinja2 templates "
            f"with the merge fields {fields} (e.g. {{{{ first_name }}}})."
        ),
    )
    _campaign_id(variant)
    variant.add_argument("language", metavar="LANG", help="two letters (ISO 639-1)")
    variant.add_argument("--subject", metavar="TEXT", help="the subject (a template too)")
    source = variant.add_mutually_exclusive_group()
    source.add_argument("--body-file", metavar="FILE", help="the body, a UTF-8 text file")
    source.add_argument("--body-stdin", action="store_true", help="read the body from stdin")
    source.add_argument("--remove", action="store_true", help="remove this language's variant")
    variant.set_defaults(handler=_variant)

    for name, help_text, handler in (
        ("show", "show a campaign and its variants", _show),
        ("preview", "render each variant as the group's members will get it", _preview),
        ("send", "start sending: make the send list of the group's members", _send),
        ("pause", "stop handing messages to the delivery queue for now", _pause),
        ("resume", "go on sending a paused campaign", _resume),
        ("cancel", "stop for good; recipients not yet sent to are never sent to", _cancel),
        ("retry-failed", "queue the recipients whose delivery failed again", _retry_failed),
    ):
        action = massmail.add_parser(name, help=help_text)
        _campaign_id(action)
        action.set_defaults(handler=handler)

    massmail.add_parser("list", help="list the campaigns, newest first").set_defaults(handler=_list)

    status = massmail.add_parser(
        "status", help="counts per recipient state, progress, rate and time left"
    )
    _campaign_id(status)
    status.add_argument(
        "--watch",
        action="store_true",
        help="redraw until the campaign is finished or cancelled (Ctrl-C stops watching)",
    )
    status.add_argument(
        "--interval", metavar="SECONDS", type=_seconds, default=2.0, help="default: 2"
    )
    status.set_defaults(handler=_status)

    recipients = massmail.add_parser("recipients", help="list a campaign's send list")
    _campaign_id(recipients)
    recipients.add_argument("--state", choices=RECIPIENT_STATES)
    recipients.add_argument(
        "--uncertain", action="store_true", help="only those that may have got two copies"
    )
    recipients.add_argument("--limit", type=whole_number(1), default=100)
    recipients.add_argument("--offset", type=whole_number(0), default=0)
    recipients.set_defaults(handler=_recipients)

    suppression = commands("suppression", "addresses no campaign sends to")
    add = suppression.add_parser("add", help="never send campaigns to an address")
    add.add_argument("address", metavar="ADDR")
    add.add_argument("--reason", choices=SUPPRESSION_REASONS, default="manual")
    add.add_argument("--detail", metavar="TEXT", help="a note on why")
    add.set_defaults(handler=_suppression_add)
    remove = suppression.add_parser("remove", help="let campaigns send to an address again")
    remove.add_argument("address", metavar="ADDR")
    remove.set_defaults(handler=_suppression_remove)
    listing = suppression.add_parser("list", help="list the suppressed addresses, latest first")
    listing.add_argument("--limit", type=whole_number(1), default=100)
    listing.add_argument("--offset", type=whole_number(0), default=0)
    listing.set_defaults(handler=_suppression_list)
