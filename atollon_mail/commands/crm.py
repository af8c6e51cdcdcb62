"""Admin commands of the CRM: organizations, contacts (and their CSV import), folders,
projects (and the messages filed in them), default folders and distribution groups.

Contacts, folders, projects and groups are named by what a person knows of them: an id,
or a name, an e-mail, an external id (the store's find_* operations say how); a name
that matches several is refused with the candidates listed."""

from __future__ import annotations

import argparse
import datetime
import inspect
import sys

from atollon_mail.commands.common import whole_number
from atollon_mail.commands.output import (
    PROGRAM,
    Refused,
    clean,
    counted,
    out,
    shortened,
    table,
    when,
)
from atollon_mail.crm import csvimport as csv_format
from atollon_mail.crm.filters import GroupFilter
from atollon_mail.crm.records import (
    CASE_REASONS,
    DefaultFolderCase,
    DefaultFolderRecord,
    DefaultFolderReport,
    FiledMessage,
    GroupPreview,
    GroupRecord,
)
from atollon_mail.store import contacts, csvimport, folders, groups

_YES_NO = {"yes": True, "no": False}


def _yes_or_no(value: str) -> bool:
    found = _YES_NO.get(value.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"give yes or no, got {value!r}")
    return found


def _day(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a date as YYYY-MM-DD, got {value!r}") from None


def _language(value: str) -> str:
    """A language code for a filter; "none" stands for contacts without a language."""
    text = value.strip().lower()
    return "" if text == "none" else text


def _language_label(language: str) -> str:
    return language or "(none)"


def _or_dash(value: object) -> str:
    return "-" if value in (None, "") else str(value)


def _fields(fields: list[tuple[str, object]]) -> None:
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        out(f"{label + ':':<{width}}{value}".rstrip())


# --- organizations --------------------------------------------------------------------


def _organization_add(store, args) -> None:
    organization = store.run_sync(contacts.add_organization, args.name)
    out(f"added organization {organization.name} (id {organization.id})")


def _organization_list(store, args) -> None:
    found = store.run_sync(contacts.list_organizations)
    out(table(("ID", "NAME"), [(o.id, o.name) for o in found], right=(0,)))


# --- contacts -------------------------------------------------------------------------


def _contact_add(store, args) -> None:
    contact = store.run_sync(
        contacts.add_contact,
        args.organization,
        args.kind,
        name=args.name or "",
        first_name=args.first_name or "",
        last_name=args.last_name or "",
        email=args.email or "",
        language=args.language or "",
        external_id=args.external_id,
    )
    out(f"added {contact.kind} {contact.name} (id {contact.id}, {contact.organization_name})")


def _contacts_list(store, args) -> None:
    found = store.run_sync(
        contacts.list_contacts,
        organization=args.organization,
        language=args.language,
        limit=args.limit,
        offset=args.offset,
        search=args.search,
    )
    rows = [
        (
            c.id,
            c.organization_name,
            c.kind,
            c.name,
            _or_dash(c.email),
            _language_label(c.language),
            _or_dash(c.external_id),
        )
        for c in found
    ]
    headers = ("ID", "ORGANIZATION", "KIND", "NAME", "EMAIL", "LANGUAGE", "EXTERNAL ID")
    if not rows and args.offset == 0:
        searched = f' matching "{args.search.strip()}"' if args.search else ""
        out(f"no contacts{searched}")
        return
    out(table(headers, rows, right=(0,)))
    if len(rows) == args.limit:
        total = store.run_sync(
            contacts.count_contacts,
            organization=args.organization,
            language=args.language,
            search=args.search,
        )
        if total > args.offset + len(rows):
            out(
                f"{args.offset + 1}-{args.offset + len(rows)} of {total}; "
                f"the next: --offset {args.offset + len(rows)}"
            )


def _default_folder_label(default: DefaultFolderRecord) -> str:
    parts = []
    if default.folder_id is not None:
        parts.append(f"folder {default.folder_name} ({default.folder_id})")
    if default.project_id is not None:
        parts.append(f"project {default.project_name} ({default.project_id})")
    if default.activity:
        parts.append(f"activity {default.activity}")
    return ", ".join(parts or ["(none)"]) + f" [{default.source}]"


def _contacts_show(store, args) -> None:
    detail = store.run_sync(contacts.contact_detail, args.contact)
    contact = detail.contact
    fields: list[tuple[str, object]] = [
        ("id", contact.id),
        ("organization", f"{contact.organization_name} ({contact.organization_id})"),
        ("kind", contact.kind),
        ("name", contact.name),
    ]
    if contact.kind == "person":
        fields += [("first name", _or_dash(contact.first_name))]
        fields += [("last name", _or_dash(contact.last_name))]
    fields += [
        ("email", contact.email or "(none)"),
        ("language", _language_label(contact.language)),
        ("external id", _or_dash(contact.external_id)),
    ]
    _fields(fields)
    out("employments:" if detail.employments else "employments: (none)")
    for job in detail.employments:
        other = (
            f"at {job.company_name} ({job.company_id})"
            if job.person_id == contact.id
            else f"employs {job.person_name} ({job.person_id})"
        )
        primary = ", primary" if job.is_primary else ""
        since = _or_dash(job.valid_from)
        until = _or_dash(job.valid_to)
        out(f"  {other}{primary}, from {since} to {until}")
    out("default folders:" if detail.default_folders else "default folders: (none)")
    for default in detail.default_folders:
        out(f"  {default.organization_name}: {_default_folder_label(default)}")


def _contacts_import(store, args) -> None:
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as csv_file:
                data = csv_file.read()
    except (OSError, AttributeError) as problem:
        raise Refused(f"cannot read {args.file}: {problem}") from None
    report = store.run_sync(csvimport.import_contacts, data)
    if report.problems:
        for problem in report.problems:
            column = f", column {problem.column}" if problem.column else ""
            print(clean(f"line {problem.line}{column}: {problem.why}"), file=sys.stderr)
        raise Refused(
            f"nothing was imported: {counted(len(report.problems), 'problem')} in "
            f"{args.file}; correct them and import the file again"
        )
    out(
        f"{counted(report.created, 'contact')} created, {report.updated} updated, "
        f"{report.unchanged} unchanged, {counted(report.employments, 'employment')} "
        "added or changed"
    )


def _contacts_default_folder(store, args) -> None:
    if args.clear:
        contact = store.run_sync(contacts.get_contact, args.contact)
        cleared = store.run_sync(folders.clear_default_folder, contact.id, args.organization)
        who = f"{contact.name} ({contact.id})"
        out(
            f"{who}: default folder in {args.organization} cleared"
            if cleared
            else f"{who} had no default folder in {args.organization}"
        )
        return
    if args.folder is None and args.project is None:
        raise Refused("give --folder FOLDER, --project PROJECT (or both), or --clear")
    default = store.run_sync(
        folders.set_default_folder,
        args.contact,
        args.organization,
        folder_id=args.folder,
        project_id=args.project,
        activity=args.activity,
    )
    out(
        f"contact {default.contact_id}: default in {default.organization_name} is "
        f"{_default_folder_label(default)}"
    )


_CASE_HINTS = {
    "no-employer": "give them one: employment add PERSON COMPANY",
    "several-employers": "keep one primary: employment primary PERSON COMPANY",
    "no-folder": "add one: folder add NAME --organization {organization} --company {company} "
    "--default",
    "several-folders": "choose one: folder default FOLDER",
}


def _print_cases(report: DefaultFolderReport) -> None:
    """The cases to decide, grouped by reason (and by employer), with counts and what to do."""
    by_reason: dict[str, list[DefaultFolderCase]] = {}
    for case in report.cases:
        by_reason.setdefault(case.reason, []).append(case)
    for reason, said in CASE_REASONS.items():
        cases = by_reason.get(reason, [])
        if not cases:
            continue
        if reason in ("no-employer", "several-employers"):
            out(f"  {said}: {counted(len(cases), 'person')}; {_CASE_HINTS[reason]}")
            for case in cases:
                detail = case.note if reason == "no-employer" else case.why
                detail = f": {detail}" if detail else ""
                out(f"    {case.contact_id} {case.contact_name}{detail}")
            continue
        out(f"  {said}: {counted(len(cases), 'person')}")
        by_company: dict[int, list[DefaultFolderCase]] = {}
        for case in cases:
            by_company.setdefault(case.company_id, []).append(case)
        for company_id, employees in sorted(by_company.items()):
            first = employees[0]
            folders_said = ""
            if first.folders:
                folders_said = ", folders " + ", ".join(
                    f"{name} ({folder_id})" for folder_id, name in first.folders
                )
            hint = _CASE_HINTS[reason].format(
                organization=report.organization_name, company=company_id
            )
            out(
                f"    {first.company_name} ({company_id}){folders_said}: "
                f"{counted(len(employees), 'person')}; {hint}"
            )
            for case in employees:
                note = f": {case.note}" if case.note else ""
                out(f"      {case.contact_id} {case.contact_name}{note}")


def _print_default_folder_report(report: DefaultFolderReport) -> None:
    would = "would be " if report.dry_run else ""
    out(
        f"{report.organization_name} (employments as of {report.today}): "
        f"{report.set} {would}set, {report.changed} {would}changed, "
        f"{report.unchanged} unchanged, {report.kept_manual} kept manual, "
        f"{counted(len(report.cases), 'case')} to decide"
    )
    if report.dry_run:
        for change in report.changes:
            was = (
                "no default folder"
                if change.previous_folder_id is None
                else f"folder {change.previous_folder_id}"
            )
            out(
                f"  would set {change.contact_id} {change.contact_name}: "
                f"folder {change.folder_name} ({change.folder_id}), was {was}"
            )
    _print_cases(report)


def _contacts_setup_default_folders(store, args) -> None:
    if args.organization is not None:
        reports = [
            store.run_sync(
                folders.setup_default_folders,
                args.organization,
                today=args.today,
                dry_run=args.dry_run,
            )
        ]
    else:
        reports = store.run_sync(
            folders.setup_default_folders_everywhere, today=args.today, dry_run=args.dry_run
        )
        if not reports:
            raise Refused(f"no organizations yet; add one: {PROGRAM} organization add NAME")
    for report in reports:
        _print_default_folder_report(report)
    if args.dry_run:
        out("dry run: nothing was changed")


# --- folders and projects -------------------------------------------------------------


def _folder_add(store, args) -> None:
    folder = store.run_sync(
        folders.add_folder, args.name, args.organization, args.company, default=args.default
    )
    default = f", {folder.company_name}'s default folder" if folder.is_company_default else ""
    out(
        f"added folder {folder.name} (id {folder.id}) of {folder.company_name} "
        f"({folder.company_id}) in {folder.organization_name}{default}"
    )


def _folder_default(store, args) -> None:
    default = store.run_sync(folders.make_company_default, args.folder, args.organization)
    company = store.run_sync(contacts.get_contact, default.contact_id)
    out(
        f"{company.name} ({company.id}): default in {default.organization_name} is "
        f"{_default_folder_label(default)}"
    )
    out(
        f"its employees get it at the next: {PROGRAM} contacts setup-default-folders "
        f"--organization {default.organization_id}"
    )


def _message_from(message: FiledMessage) -> str:
    return message.from_header or message.envelope_sender or "<>"


def _folder_messages(store, args) -> None:
    page = store.run_sync(
        folders.folder_messages,
        args.folder,
        args.organization,
        limit=args.limit,
        offset=args.offset,
    )
    folder = page.folder
    owner = f" of {folder.company_name}" if folder.company_name else ""
    where = f" in {folder.organization_name}" if folder.organization_name else ""
    heading = f"{folder.kind} {folder.name} (id {folder.id}){owner}{where}"
    if not page.messages:
        out(
            f"{heading}: no messages"
            if page.total == 0
            else f"{heading}: {counted(page.total, 'message')}, none from --offset {args.offset}"
        )
        return
    first = args.offset + 1
    last = args.offset + len(page.messages)
    out(f"{heading}: {counted(page.total, 'message')}, newest first; {first}-{last}:")
    rows = [
        (
            message.id,
            when(message.received_at),
            shortened(_message_from(message), 40),
            shortened(message.subject or "", 60),
            ", ".join(message.mailboxes) or "-",
            message.type_code or "-",
        )
        for message in page.messages
    ]
    headers = ("ID", "RECEIVED (UTC)", "FROM", "SUBJECT", "MAILBOX", "TYPE")
    out(table(headers, rows, right=(0,)))
    if last < page.total:
        out(f"the next: --offset {last}")


def _project_add(store, args) -> None:
    project = store.run_sync(folders.add_project, args.name, args.organization)
    out(f"added project {project.name} (id {project.id}) in {project.organization_name}")


def _folder_list(store, args) -> None:
    found = store.run_sync(
        folders.list_folders, organization=args.organization, company_id=args.company
    )
    rows = [
        (
            f.id,
            f.kind,
            f.name,
            f.organization_name,
            f"{f.company_name} ({f.company_id})" if f.company_id is not None else "-",
            "yes" if f.is_company_default else "-",
        )
        for f in found
    ]
    headers = ("ID", "KIND", "NAME", "ORGANIZATION", "COMPANY", "COMPANY DEFAULT")
    out(table(headers, rows, right=(0,)))


# --- groups ---------------------------------------------------------------------------


def _filter_given(args) -> bool:
    return bool(
        args.language
        or args.kind
        or args.company
        or args.has_email is not None
        or args.employment_current is not None
        or args.primary_only
    )


def _group_add(store, args) -> None:
    if args.static:
        if _filter_given(args):
            raise Refused("a static group has no filter; leave out --static or the filter options")
        group = store.run_sync(groups.add_group, args.name, args.organization, kind="static")
    else:
        if not _filter_given(args) and args.organization is None:
            raise Refused(
                "give --static for a group of listed contacts, or filter options "
                "(--organization alone: every contact of it)"
            )
        spec = GroupFilter(
            kinds=tuple(args.kind or ()),
            languages=tuple(args.language or ()),
            has_email=args.has_email,
            employment_current=args.employment_current,
            primary_only=args.primary_only,
        )
        group = store.run_sync(
            groups.add_group,
            args.name,
            args.organization,
            kind="dynamic",
            filter=spec,
            companies=tuple(args.company or ()),
        )
    out(f"added {group.kind} group {group.name} (id {group.id}): {group.description}")


def _group_members(store, args) -> None:
    if not (args.add or args.remove):
        raise Refused(
            "give --add CONTACT... or --remove CONTACT... (see: contacts list --search TEXT)"
        )
    change = store.run_sync(
        groups.change_members, args.group, add=args.add or (), remove=args.remove or ()
    )
    notes = []
    if change.already:
        notes.append(f"{change.already} already members")
    if change.absent:
        notes.append(f"{change.absent} not members")
    extra = f" ({', '.join(notes)})" if notes else ""
    out(f"group {change.group.name}: {change.added} added, {change.removed} removed{extra}")


def _group_list(store, args) -> None:
    found = store.run_sync(groups.list_groups)
    counts = store.run_sync(groups.member_counts)
    rows = [
        (g.id, g.name, g.kind, _or_dash(g.organization_name), counts.get(g.id, 0), g.description)
        for g in found
    ]
    headers = ("ID", "NAME", "KIND", "ORGANIZATION", "MEMBERS", "WHO")
    out(table(headers, rows, right=(0, 4)))


def _group_fields(group: GroupRecord) -> list[tuple[str, object]]:
    return [
        ("group", f"{group.name} (id {group.id})"),
        ("kind", group.kind),
        ("organization", _or_dash(group.organization_name)),
        ("who", group.description),
    ]


def _group_show(store, args) -> None:
    group = store.run_sync(groups.get_group, args.group)
    preview = store.run_sync(groups.group_preview, group.id)
    sample = store.run_sync(groups.group_sample, group.id)
    _fields([*_group_fields(group), ("members", preview.total)])
    if sample:
        shown = f"the first {len(sample)} members" if preview.total > len(sample) else "the members"
        out(f"{shown}:")
        rows = [
            (m.id, m.kind, m.name, _or_dash(m.email), _language_label(m.language)) for m in sample
        ]
        out(table(("ID", "KIND", "NAME", "EMAIL", "LANGUAGE"), rows, right=(0,)))


def _preview_lines(group: GroupRecord, preview: GroupPreview) -> None:
    _fields(
        [
            *_group_fields(group),
            ("members", preview.total),
            ("with an address", preview.with_address),
            ("without an address", preview.without_address),
        ]
    )
    if preview.by_language:
        rows = [
            (_language_label(language), count)
            for language, count in sorted(
                preview.by_language.items(), key=lambda item: (item[0] == "", item[0])
            )
        ]
        out(table(("LANGUAGE", "MEMBERS"), rows, right=(1,)))


def _group_preview(store, args) -> None:
    group = store.run_sync(groups.get_group, args.group)
    preview = store.run_sync(groups.group_preview, group.id)
    _preview_lines(group, preview)


def _group_delete(store, args) -> None:
    group = store.run_sync(groups.delete_group, args.group)
    out(f"deleted group {group.name} (id {group.id})")


# --- registration ---------------------------------------------------------------------

CONTACT_HELP = "id, external id, e-mail or name"
COMPANY_HELP = "the company's id, external id, e-mail or name"
FOLDER_HELP = "id, name, or the company's name"


def _register_contacts(commands) -> None:
    organization = commands("organization", "the organizations (tenants) of the CRM")
    add = organization.add_parser("add", help="add an organization")
    add.add_argument("name", metavar="NAME")
    add.set_defaults(handler=_organization_add)
    organization.add_parser("list", help="list the organizations").set_defaults(
        handler=_organization_list
    )

    contact = commands("contacts", "the CRM's persons and companies")
    add = contact.add_parser("add", help="add a person or a company")
    add.add_argument("--organization", metavar="ORG", required=True, help="name or id")
    add.add_argument("--kind", choices=("person", "company"), required=True)
    add.add_argument("--name", help="companies: required; persons: default first and last name")
    add.add_argument("--first-name")
    add.add_argument("--last-name")
    add.add_argument("--email", metavar="ADDR")
    add.add_argument("--language", metavar="CODE", help="ISO 639-1, like cs")
    add.add_argument("--external-id", metavar="ID", help="unique in the organization")
    add.set_defaults(handler=_contact_add)

    listing = contact.add_parser("list", help="list contacts by id")
    listing.add_argument("--organization", metavar="ORG", help="name or id")
    listing.add_argument(
        "--search",
        metavar="TEXT",
        help="in the name, e-mail, external id or current employer's name (any case)",
    )
    listing.add_argument(
        "--language", metavar="CODE", type=_language, help="ISO 639-1; none: without one"
    )
    listing.add_argument("--limit", type=whole_number(1), default=100)
    listing.add_argument("--offset", type=whole_number(0), default=0)
    listing.set_defaults(handler=_contacts_list)

    show = contact.add_parser("show", help="show a contact, its employments and default folders")
    show.add_argument("contact", metavar="CONTACT", help=CONTACT_HELP)
    show.set_defaults(handler=_contacts_show)

    importing = contact.add_parser(
        "import",
        help="add and update contacts from a CSV file: all rows or none",
        description=csv_format.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    importing.add_argument("file", metavar="FILE.csv", help='the file ("-": standard input)')
    importing.set_defaults(handler=_contacts_import)

    default = contact.add_parser(
        "default-folder",
        help="choose a contact's default folder and/or project in an organization",
        description=(
            "Set a contact's default folder and/or project in an organization by hand "
            "(the default-folder maintenance never overwrites it), or clear it."
        ),
    )
    default.add_argument("contact", metavar="CONTACT", help=CONTACT_HELP)
    default.add_argument("--organization", metavar="ORG", required=True, help="name or id")
    default.add_argument("--folder", metavar="FOLDER", help=f"{FOLDER_HELP}; see: folder list")
    default.add_argument("--project", metavar="PROJECT", help="id or name; see: folder list")
    default.add_argument("--activity", metavar="TEXT")
    default.add_argument("--clear", action="store_true", help="forget the default folder")
    default.set_defaults(handler=_contacts_default_folder)

    setup = contact.add_parser(
        "setup-default-folders",
        help="give persons their current primary employer's folder as default folder",
        description=inspect.cleandoc(folders.setup_default_folders.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    setup.add_argument(
        "--organization", metavar="ORG", help="name or id (default: every organization)"
    )
    setup.add_argument(
        "--dry-run", action="store_true", help="say what would change, change nothing"
    )
    setup.add_argument(
        "--today",
        metavar="YYYY-MM-DD",
        type=_day,
        help="the day employments are judged at (default: today, UTC)",
    )
    setup.set_defaults(handler=_contacts_setup_default_folders)


def _register_folders(commands) -> None:
    folder = commands("folder", "the folders of companies and the projects of organizations")
    add = folder.add_parser("add", help="add a folder of a company")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--organization", metavar="ORG", required=True, help="name or id")
    add.add_argument("--company", metavar="COMPANY", required=True, help=COMPANY_HELP)
    add.add_argument(
        "--default",
        action="store_true",
        help="the company's default folder: its employees get it as theirs "
        "(contacts setup-default-folders)",
    )
    add.set_defaults(handler=_folder_add)
    default = folder.add_parser(
        "default", help="make a folder its company's default folder in its organization"
    )
    default.add_argument("folder", metavar="FOLDER", help=FOLDER_HELP)
    default.add_argument("--organization", metavar="ORG", help="name or id: search in it only")
    default.set_defaults(handler=_folder_default)
    listing = folder.add_parser("list", help="list folders and projects")
    listing.add_argument("--organization", metavar="ORG", help="name or id")
    listing.add_argument("--company", metavar="COMPANY", help=f"its folders only; {COMPANY_HELP}")
    listing.set_defaults(handler=_folder_list)
    messages = folder.add_parser(
        "messages", help="list the messages filed in a folder or project, newest first"
    )
    messages.add_argument("folder", metavar="FOLDER|PROJECT", help=FOLDER_HELP)
    messages.add_argument("--organization", metavar="ORG", help="name or id: search in it only")
    messages.add_argument("--limit", type=whole_number(1), default=50)
    messages.add_argument("--offset", type=whole_number(0), default=0)
    messages.set_defaults(handler=_folder_messages)

    project = commands("project", "the projects of organizations")
    add = project.add_parser("add", help="add a project of an organization")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--organization", metavar="ORG", required=True, help="name or id")
    add.set_defaults(handler=_project_add)


def _register_groups(commands) -> None:
    group = commands("group", "distribution groups: who a campaign goes to")
    add = group.add_parser(
        "add",
        help="add a static group, or a dynamic one by filter options",
        description=(
            "Add a distribution group. --static: contacts are added by hand (group members). "
            "Otherwise the group is dynamic: it holds the contacts matching every filter "
            "option given, on the day it is used (--organization alone: every contact of "
            "the organization). Repeated options (--language, --kind, --company) match any "
            "of their values."
        ),
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--organization", metavar="ORG", help="name or id")
    add.add_argument("--static", action="store_true", help="members are added by hand")
    add.add_argument(
        "--language",
        metavar="CODE",
        action="append",
        type=_language,
        help="preferred language, ISO 639-1 (none: contacts without one; repeatable)",
    )
    add.add_argument("--kind", choices=("person", "company"), action="append")
    add.add_argument(
        "--has-email", metavar="yes|no", type=_yes_or_no, help="with (yes) or without an address"
    )
    add.add_argument(
        "--company",
        metavar="COMPANY",
        action="append",
        help=f"the company and persons employed there (repeatable); {COMPANY_HELP}",
    )
    add.add_argument(
        "--employment-current",
        metavar="yes|no",
        type=_yes_or_no,
        help="persons with (yes) or without (no) an employment valid today",
    )
    add.add_argument(
        "--primary-only",
        action="store_true",
        help="with --company or --employment-current: primary employments only",
    )
    add.set_defaults(handler=_group_add)

    members = group.add_parser("members", help="add or remove contacts of a static group")
    members.add_argument("group", metavar="GROUP", help="name or id")
    members.add_argument("--add", metavar="CONTACT", nargs="+", action="extend", help=CONTACT_HELP)
    members.add_argument(
        "--remove", metavar="CONTACT", nargs="+", action="extend", help=CONTACT_HELP
    )
    members.set_defaults(handler=_group_members)

    group.add_parser("list", help="list the groups with their member counts").set_defaults(
        handler=_group_list
    )
    for name, help_text, handler in (
        ("show", "show a group and its first members", _group_show),
        (
            "preview",
            "count a group's members: per language, with and without address",
            _group_preview,
        ),
        ("delete", "delete a group (refused while a campaign uses it)", _group_delete),
    ):
        action = group.add_parser(name, help=help_text)
        action.add_argument("group", metavar="GROUP", help="name or id")
        action.set_defaults(handler=handler)


def register(commands) -> None:
    _register_contacts(commands)
    _register_folders(commands)
    _register_groups(commands)
