"""Importing contacts from a CSV file: the whole file or nothing.

The file is UTF-8 (a byte order mark is allowed), comma separated, with a header row
naming the columns (any order, names as below, case-insensitive):

  organization      required: the name of an existing organization
  kind              required: person or company
  external_id       the contact's id in the system it comes from, unique per
                    organization; a row whose external_id is stored updates that contact
  name              companies: required; persons: defaults to "first_name last_name"
  first_name        persons only
  last_name         persons need last_name or name
  email             an address; stored lower-cased
  language          ISO 639-1, two letters; stored lower-cased
  employer          persons only: the external_id of a company of the same organization,
                    in this file or already stored
  employer_primary  yes or no (default: yes on a person's first row, no on the others)
  employed_from     YYYY-MM-DD
  employed_to       YYYY-MM-DD (the last day; in the past: the employment has ended)

A person with several jobs has one row per job: the same external_id on each, each row
with its own employer, employer_primary and dates. The person's details come from their
first row; on the others a detail column is empty or the same. At most one of a person's
jobs that overlap in time is primary.

Every row is checked before anything is written; one bad row and nothing is written,
every problem listed with its line and column. A column missing from the header leaves
what is stored for updated contacts as it is (and is empty for new ones); a column
present but empty on a row clears the value. Rows without external_id are added each
time the file is imported. An employer on a row matches the person's stored employment
at that company starting the same day (employed_from), which it updates; otherwise it
adds an employment. Importing the same file twice changes nothing the second time.
"""

from __future__ import annotations

import csv
import datetime
import io
import re
from collections.abc import Iterator
from typing import NamedTuple

import attrs

from atollon_mail.crm.normalize import display_name, normalize_email, normalize_language
from atollon_mail.crm.records import ImportProblem
from atollon_mail.store.errors import Invalid

COLUMNS = (
    "organization",
    "kind",
    "external_id",
    "name",
    "first_name",
    "last_name",
    "email",
    "language",
    "employer",
    "employer_primary",
    "employed_from",
    "employed_to",
)
REQUIRED_COLUMNS = ("organization", "kind")
EMPLOYMENT_COLUMNS = ("employer_primary", "employed_from", "employed_to")
# What a person's further rows (the same external_id) may repeat, but not change.
DETAIL_COLUMNS = ("name", "first_name", "last_name", "email", "language")
_LIMITS = {"external_id": 100, "name": 200, "first_name": 100, "last_name": 100}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_YES = {"yes": True, "y": True, "true": True, "1": True}
_NO = {"no": False, "n": False, "false": False, "0": False}


@attrs.frozen
class Row:
    """One data row as read: None for a column the header does not have."""

    line: int
    values: dict[str, str | None]


@attrs.define
class CheckedEmployment:
    """A checked row's employer and dates (primary None: not said on the row)."""

    line: int
    employer: str
    primary: bool | None
    employed_from: datetime.date | None
    employed_to: datetime.date | None


@attrs.define
class CheckedContact:
    """A checked row: what the contact will be after the import, and the employments its
    rows give (the person's first row, then their further rows in file order)."""

    line: int
    organization_id: int
    kind: str
    external_id: str | None
    name: str
    first_name: str
    last_name: str
    email: str
    language: str
    id: int | None = None  # stored contacts: their id; new ones get one before writing
    changed: bool = True
    employments: list[CheckedEmployment] = attrs.Factory(list)


class Problems:
    def __init__(self):
        self.found: list[ImportProblem] = []

    def add(self, line: int, column: str, why: str) -> None:
        self.found.append(ImportProblem(line=line, column=column, why=why))


def _decode(data: bytes, problems: Problems) -> str:
    """The file as text; every line that is not UTF-8 is listed (and read with U+FFFD)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    for number, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            problems.add(number, "", "is not UTF-8; save the file as UTF-8 and import it again")
    return b"\n".join(lines).decode("utf-8", errors="replace")


def read_rows(data: bytes, problems: Problems) -> tuple[list[str], list[Row]]:
    """The header's columns and the data rows, checked for shape only.

    The rows are read even when the header has problems, so that one pass lists every
    problem of every row; only a column named twice (which value counts?) stops here.
    """
    text = _decode(data, problems)
    not_utf8 = {problem.line for problem in problems.found}
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[Row] = []
    for line, fields in _records(reader, problems):
        if header is None:
            header = [field.strip().lower() for field in fields]
            if not _header_ok(header, problems):
                return [], []
            continue
        if line in not_utf8:
            continue
        if len(fields) != len(header):
            problems.add(
                line, "", f"has {len(fields)} fields but the header names {len(header)} columns"
            )
            continue
        values: dict[str, str | None] = dict.fromkeys(COLUMNS)
        values.update(
            (name, field.strip())
            for name, field in zip(header, fields, strict=True)
            if name in COLUMNS
        )
        rows.append(Row(line=line, values=values))
    if header is None and not problems.found:
        problems.add(1, "", "the file is empty; the first line names the columns")
    return header or [], rows


def _records(reader, problems: Problems) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, fields) for each non-blank record; a record that is not
    valid CSV is listed and skipped, and reading goes on with the next line."""
    line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            # Reported at the line the broken record starts (an open quote, say).
            problems.add(line, "", f"is not valid CSV: {error}")
            line = reader.line_num + 1
            continue
        if any(field.strip() for field in fields):
            yield line, fields
        line = reader.line_num + 1


def _header_ok(header: list[str], problems: Problems) -> bool:
    """Lists the header's problems; False when the rows cannot be read by column name."""
    unnamed = [str(index) for index, name in enumerate(header, start=1) if not name]
    if unnamed:
        problems.add(
            1,
            "",
            f"column {', '.join(unnamed)} has no name; name it or remove it (a comma too many?)",
        )
    unknown = [name for name in header if name and name not in COLUMNS]
    if unknown:
        problems.add(
            1,
            ", ".join(unknown),
            f"unknown column{'s' if len(unknown) > 1 else ''}; the columns are "
            + ", ".join(COLUMNS),
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        problems.add(1, ", ".join(repeated), "named twice in the header")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        problems.add(1, ", ".join(missing), "required column missing from the header")
    return not repeated


def _date(row: Row, column: str, problems: Problems) -> datetime.date | None:
    text = row.values[column]
    if not text:
        return None
    try:
        if not _DATE.match(text):
            raise ValueError
        return datetime.date.fromisoformat(text)
    except ValueError:
        problems.add(row.line, column, f"{text!r} is not a date; write YYYY-MM-DD")
        return None


def _checked_text(row: Row, column: str, problems: Problems) -> str | None:
    text = row.values[column]
    limit = _LIMITS.get(column)
    if text is not None and limit is not None and len(text) > limit:
        problems.add(row.line, column, f"longer than {limit} characters")
        return text[:limit]
    return text


def _check_row(
    row: Row,
    organizations: dict[str, int],
    stored: dict[tuple[int, str], StoredContact],
    problems: Problems,
) -> CheckedContact | None:
    values = row.values
    line = row.line
    before = len(problems.found)
    organization_name = values["organization"] or ""
    organization_id = organizations.get(organization_name)
    if not organization_name and values["organization"] is not None:
        problems.add(line, "organization", "required; give the name of an organization")
    elif organization_id is None:
        problems.add(
            line,
            "organization",
            f"no organization {organization_name!r}; add it first: organization add",
        )
    kind = (values["kind"] or "").lower()
    if kind not in ("person", "company") and values["kind"] is not None:
        problems.add(line, "kind", f"{values['kind']!r} is not a kind; write person or company")
    external_id = _checked_text(row, "external_id", problems) or None
    existing = None
    if organization_id is not None and external_id is not None:
        existing = stored.get((organization_id, external_id))
    if existing is not None and kind in ("person", "company") and existing.kind != kind:
        problems.add(
            line,
            "kind",
            f"contact {existing.id} with external_id {external_id} is a {existing.kind}; "
            "a contact's kind cannot change",
        )

    def current(column: str) -> str:
        # A column the file does not have keeps the stored value.
        text = _checked_text(row, column, problems)
        if text is not None:
            return text
        return getattr(existing, column) if existing is not None else ""

    first_name, last_name = current("first_name"), current("last_name")
    name = _checked_text(row, "name", problems)
    if kind == "company":
        for column in ("first_name", "last_name", "employer", *EMPLOYMENT_COLUMNS):
            if values[column]:
                problems.add(line, column, "persons only; a company has a name")
        first_name = last_name = ""
        if name is None:
            name = existing.name if existing is not None else ""
        if not name:
            problems.add(line, "name", "a company needs a name")
    elif kind == "person":
        names_absent = values["first_name"] is None and values["last_name"] is None
        if name is None and existing is not None and names_absent:
            name = existing.name
        if not (name or last_name):
            problems.add(line, "last_name", "a person needs last_name or name")
        if not name:
            name = display_name("", first_name, last_name)
            if len(name) > _LIMITS["name"]:
                problems.add(
                    line, "name", "first_name and last_name make a name over 200 characters"
                )
    email = current("email")
    if values["email"] is not None:
        try:
            email = normalize_email(email)
        except Invalid as refusal:
            problems.add(line, "email", str(refusal))
    language = current("language")
    if values["language"] is not None:
        try:
            language = normalize_language(language)
        except Invalid as refusal:
            problems.add(line, "language", str(refusal))
    employment = _check_employment(row, problems) if kind == "person" else None
    if len(problems.found) > before:
        return None
    final = (name, first_name, last_name, email, language)
    return CheckedContact(
        line=line,
        organization_id=organization_id,
        kind=kind,
        external_id=external_id,
        name=name,
        first_name=first_name,
        last_name=last_name,
        email=email,
        language=language,
        id=existing.id if existing is not None else None,
        changed=existing is None
        or final
        != (
            existing.name,
            existing.first_name,
            existing.last_name,
            existing.email,
            existing.language,
        ),
        employments=[employment] if employment is not None else [],
    )


def _check_employment(row: Row, problems: Problems) -> CheckedEmployment | None:
    """A person's row's employer and its details (None: the row gives no employer)."""
    values = row.values
    line = row.line
    employer = values["employer"] or None
    primary = None
    if values["employer_primary"]:
        answer = values["employer_primary"].lower()
        if answer in _YES or answer in _NO:
            primary = _YES.get(answer, False)
        else:
            problems.add(
                line, "employer_primary", f"{values['employer_primary']!r}: write yes or no"
            )
    employed_from = _date(row, "employed_from", problems)
    employed_to = _date(row, "employed_to", problems)
    if employed_from and employed_to and employed_to < employed_from:
        problems.add(line, "employed_to", f"{employed_to} is before employed_from {employed_from}")
    if employer is None:
        for column in EMPLOYMENT_COLUMNS:
            if values[column]:
                problems.add(line, column, "give the employer as well")
        return None
    return CheckedEmployment(line, employer, primary, employed_from, employed_to)


def _same_detail(column: str, first: str, again: str) -> bool:
    if column in ("email", "language"):
        return first.lower() == again.lower()
    return first == again


def _check_further_row(row: Row, first: Row, problems: Problems) -> CheckedEmployment | None:
    """A person's further row: it adds an employer; its details repeat the first row's."""
    key = row.values["external_id"]
    if (row.values["kind"] or "").lower() != "person" or (
        (first.values["kind"] or "").lower() != "person"
    ):
        problems.add(row.line, "external_id", f"{key} is on line {first.line} already")
        return None
    if not row.values["employer"]:
        problems.add(
            row.line,
            "external_id",
            f"{key} is on line {first.line} already; a person's further rows each add an "
            "employer: give the employer",
        )
        return None
    for column in DETAIL_COLUMNS:
        again = row.values[column]
        if again and not _same_detail(column, first.values[column] or "", again):
            problems.add(
                row.line,
                column,
                f"differs from line {first.line} of {key}; give a person's details on their "
                "first row (the further rows add employers)",
            )
    return _check_employment(row, problems)


def _overlap(one: CheckedEmployment, other: CheckedEmployment) -> bool:
    earliest, latest = datetime.date.min, datetime.date.max
    return (one.employed_from or earliest) <= (other.employed_to or latest) and (
        other.employed_from or earliest
    ) <= (one.employed_to or latest)


def _check_jobs(contact: CheckedContact, problems: Problems) -> None:
    """A person's employments in the file: defaults filled in (primary on the first row
    only), the same employment twice and two overlapping primary ones listed."""
    for number, job in enumerate(contact.employments):
        if job.primary is None:
            job.primary = number == 0
    for number, job in enumerate(contact.employments):
        for earlier in contact.employments[:number]:
            if (earlier.employer, earlier.employed_from) == (job.employer, job.employed_from):
                problems.add(
                    job.line,
                    "employer",
                    f"the same employment as line {earlier.line} (employer {job.employer}, "
                    f"employed_from {job.employed_from or 'empty'})",
                )
                break
            if earlier.primary and job.primary and _overlap(earlier, job):
                problems.add(
                    job.line,
                    "employer_primary",
                    f"line {earlier.line} makes {earlier.employer} primary at the same time; "
                    "keep one primary (write no on the other)",
                )
                break


class StoredContact(NamedTuple):
    """A stored contact as the import compares it."""

    id: int
    external_id: str
    kind: str
    name: str
    first_name: str
    last_name: str
    email: str
    language: str


def organization_names(rows: list[Row]) -> list[str]:
    """The organizations the rows name, to look up by name."""
    names = {row.values["organization"] for row in rows if row.values["organization"]}
    return sorted(names)


def contact_keys(rows: list[Row], organizations: dict[str, int]) -> set[tuple[int, str]]:
    """(organization id, external id) of every contact the rows name, as themselves or
    as employer: those stored are read before the rows are checked."""
    keys: set[tuple[int, str]] = set()
    for row in rows:
        organization_id = organizations.get(row.values["organization"] or "")
        if organization_id is None:
            continue
        for column in ("external_id", "employer"):
            if row.values[column]:
                keys.add((organization_id, row.values[column]))
    return keys


def check_rows(
    rows: list[Row],
    organizations: dict[str, int],
    stored: dict[tuple[int, str], StoredContact],
    problems: Problems,
) -> tuple[list[CheckedContact], dict[tuple[int, str], CheckedContact]]:
    """Every row checked against the others and against what is stored (organizations by
    name, the stored contacts by (organization id, external id)): the checked contacts
    and those of them with an external id. Only when `problems` is still empty may they
    be written.
    """
    # Which line first gives each (organization, external_id), and that row's kind: a
    # later line with the same id is a duplicate, and employers are found here even when
    # their own row has a problem (that problem is listed on its own line). Every row is
    # checked in full, whatever problems it or the rows before it have.
    first_rows: dict[tuple[str, str], Row] = {}
    by_key: dict[tuple[str, str], CheckedContact] = {}
    checked: list[CheckedContact] = []
    in_file: dict[tuple[int, str], CheckedContact] = {}
    for row in rows:
        key = (row.values["organization"] or "", row.values["external_id"] or "")
        if key[1] and key in first_rows:
            job = _check_further_row(row, first_rows[key], problems)
            if job is not None and key in by_key:
                by_key[key].employments.append(job)
            continue
        if key[1]:
            first_rows[key] = row
        contact = _check_row(row, organizations, stored, problems)
        if contact is None:
            continue
        checked.append(contact)
        by_key[key] = contact
        if contact.external_id is not None:
            in_file[(contact.organization_id, contact.external_id)] = contact
    for contact in checked:
        _check_jobs(contact, problems)
    for row in rows:
        employer = row.values["employer"]
        organization_id = organizations.get(row.values["organization"] or "")
        if not employer or organization_id is None:
            continue
        if (row.values["kind"] or "").lower() != "person":
            continue  # a company's employer is listed as such by _check_row
        employer_row = first_rows.get((row.values["organization"], employer))
        stored_employer = stored.get((organization_id, employer))
        if employer_row is not None:
            employer_kind = (employer_row.values["kind"] or "").lower()
        elif stored_employer is not None:
            employer_kind = stored_employer.kind
        else:
            problems.add(
                row.line,
                "employer",
                f"no company with external_id {employer} in this file or stored",
            )
            continue
        if employer_kind == "person":
            problems.add(row.line, "employer", f"{employer} is a person, not a company")
    return checked, in_file
