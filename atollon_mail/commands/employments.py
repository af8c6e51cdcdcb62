"""Admin commands: persons' employments at companies (`employment`).

employment add PERSON COMPANY [--primary yes|no] [--from DATE] [--to DATE]
employment primary PERSON [COMPANY] [--started DATE]
employment end PERSON [COMPANY] [--on DATE] [--started DATE]
employment list [--person P] [--company C] [--organization ORG] [--current yes|no]

Persons and companies are named by id, external id, e-mail or name. An employment is
named by its person, and its company and start day when the person has several.
"""

from __future__ import annotations

import argparse
import datetime

from atollon_mail.commands.common import whole_number, yes_or_no
from atollon_mail.commands.output import PROGRAM, out, table
from atollon_mail.crm.records import EmploymentChange, EmploymentRecord
from atollon_mail.store import contacts

PERSON_HELP = "the person's id, external id, e-mail or name"
COMPANY_HELP = "the company's id, external id, e-mail or name"


def _day(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a date as YYYY-MM-DD, got {value!r}") from None


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def _span(job: EmploymentRecord) -> str:
    if job.valid_from is None and job.valid_to is None:
        return "no dates"
    since = f"from {job.valid_from}" if job.valid_from is not None else ""
    until = f"to {job.valid_to}" if job.valid_to is not None else ""
    return " ".join(part for part in (since, until) if part)


def state(job: EmploymentRecord, today: datetime.date) -> str:
    """current, ended or future, as of today."""
    if job.valid_to is not None and job.valid_to < today:
        return "ended"
    if job.valid_from is not None and job.valid_from > today:
        return "future"
    return "current"


def _no_longer(change: EmploymentChange) -> str:
    if not change.no_longer_primary:
        return ""
    names = ", ".join(f"{job.company_name} ({job.company_id})" for job in change.no_longer_primary)
    return f"; no longer primary: {names}"


def _add(store, args) -> None:
    change = store.run_sync(
        contacts.add_job,
        args.person,
        args.company,
        is_primary=args.primary,
        valid_from=args.valid_from,
        valid_to=args.valid_to,
        today=_today(),
    )
    job = change.employment
    primary = ", primary" if job.is_primary else ", not primary"
    out(
        f"{job.person_name} ({job.person_id}) works at {job.company_name} ({job.company_id}), "
        f"{_span(job)}{primary}{_no_longer(change)}"
    )


def _primary(store, args) -> None:
    change = store.run_sync(
        contacts.make_primary, args.person, args.company, args.started, today=_today()
    )
    job = change.employment
    out(
        f"{job.person_name} ({job.person_id}): {job.company_name} ({job.company_id}) is the "
        f"primary employer{_no_longer(change)}"
    )


def _end(store, args) -> None:
    job = store.run_sync(
        contacts.end_employment,
        args.person,
        args.company,
        on=args.on,
        started=args.started,
        today=_today(),
    )
    out(
        f"the employment of {job.person_name} ({job.person_id}) at {job.company_name} "
        f"({job.company_id}) ends on {job.valid_to}; both stay contacts"
    )
    out(
        "their default folder follows at the next: "
        f"{PROGRAM} contacts setup-default-folders --dry-run"
    )


def _list(store, args) -> None:
    today = _today()
    found = store.run_sync(
        contacts.list_employments,
        person=args.person,
        company=args.company,
        organization=args.organization,
        current=args.current,
        today=today,
        limit=args.limit,
        offset=args.offset,
    )
    if not found:
        out("no employments")
        return
    rows = [
        (
            job.id,
            f"{job.person_name} ({job.person_id})",
            f"{job.company_name} ({job.company_id})",
            "yes" if job.is_primary else "no",
            job.valid_from or "-",
            job.valid_to or "-",
            state(job, today),
        )
        for job in found
    ]
    out(table(("ID", "PERSON", "COMPANY", "PRIMARY", "FROM", "TO", "NOW"), rows, right=(0,)))


def _named_employment(parser, company_required: bool = False) -> None:
    parser.add_argument("person", metavar="PERSON", help=PERSON_HELP)
    if company_required:
        parser.add_argument("company", metavar="COMPANY", help=COMPANY_HELP)
    else:
        parser.add_argument(
            "company",
            metavar="COMPANY",
            nargs="?",
            help=f"{COMPANY_HELP} (needed when the person has several employments)",
        )
        parser.add_argument(
            "--started",
            metavar="YYYY-MM-DD",
            type=_day,
            help="its first day, when the person had several at that company",
        )


def register(commands) -> None:
    employment = commands("employment", "persons' employments at companies")

    add = employment.add_parser(
        "add",
        help="add a person's employment at a company",
        description=(
            "A person's employment at a company of the same organization. --primary yes "
            "makes it the person's primary employment (their other primary ones that have "
            "not ended stop being primary); without --primary it is primary when the "
            "person has no other."
        ),
    )
    _named_employment(add, company_required=True)
    add.add_argument("--primary", metavar="yes|no", type=yes_or_no)
    add.add_argument("--from", dest="valid_from", metavar="YYYY-MM-DD", type=_day)
    add.add_argument("--to", dest="valid_to", metavar="YYYY-MM-DD", type=_day, help="its last day")
    add.set_defaults(handler=_add)

    primary = employment.add_parser(
        "primary",
        help="make an employment the person's primary one",
        description=(
            "The employment becomes the person's primary one; their other primary "
            "employments that have not ended stop being primary."
        ),
    )
    _named_employment(primary)
    primary.set_defaults(handler=_primary)

    end = employment.add_parser(
        "end",
        help="end an employment on a day (the person got fired, or left)",
        description=(
            "The employment ends on the day given (its last day); the person and the "
            "company stay contacts. The default-folder maintenance then stops giving the "
            "person that company's folder."
        ),
    )
    _named_employment(end)
    end.add_argument(
        "--on", metavar="YYYY-MM-DD", type=_day, help="its last day (default: today, UTC)"
    )
    end.set_defaults(handler=_end)

    listing = employment.add_parser("list", help="list employments by id")
    listing.add_argument("--person", metavar="PERSON", help=PERSON_HELP)
    listing.add_argument("--company", metavar="COMPANY", help=COMPANY_HELP)
    listing.add_argument("--organization", metavar="ORG", help="name or id")
    listing.add_argument(
        "--current",
        metavar="yes|no",
        type=yes_or_no,
        help="valid today (yes), or ended or not yet started (no)",
    )
    listing.add_argument("--limit", type=whole_number(1), default=100)
    listing.add_argument("--offset", type=whole_number(0), default=0)
    listing.set_defaults(handler=_list)
