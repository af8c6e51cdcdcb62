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
  employer_primary  yes or no (default yes)
  employed_from     YYYY-MM-DD
  employed_to       YYYY-MM-DD

Every row is checked before anything is written; one bad row and nothing is written,
every problem listed with its line and column. A column missing from the header leaves
what is stored for updated contacts as it is (and is empty for new ones); a column
present but empty on a row clears the value. Rows without external_id are added each
time the file is imported. An employer row matches the person's stored employment at
that company starting the same day (employed_from), which it updates; otherwise it adds
an employment. Importing the same file twice changes nothing the second time.
"""

from __future__ import annotations

import csv
import datetime
import io
import re
from collections.abc import Iterator
from typing import NamedTuple

import attrs
import peewee

from atollon_mail.crm.normalize import display_name, normalize_email, normalize_language
from atollon_mail.crm.records import ImportProblem, ImportReport
from atollon_mail.store.common import chunks
from atollon_mail.store.database import is_sqlite
from atollon_mail.store.errors import Invalid
from atollon_mail.store.models import Contact, Employment, Organization, database_proxy, utc_now

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
_LIMITS = {"external_id": 100, "name": 200, "first_name": 100, "last_name": 100}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_YES = {"yes": True, "y": True, "true": True, "1": True}
_NO = {"no": False, "n": False, "false": False, "0": False}
# Rows per INSERT (11 columns at most: far below both backends' parameter limits).
_ROWS_PER_INSERT = 500


@attrs.frozen
class _Row:
    """One data row as read: None for a column the header does not have."""

    line: int
    values: dict[str, str | None]


@attrs.define
class _Contact:
    """A checked row: what the contact will be after the import."""

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
    employer: str | None = None
    employer_primary: bool = True
    employed_from: datetime.date | None = None
    employed_to: datetime.date | None = None


class _Problems:
    def __init__(self):
        self.found: list[ImportProblem] = []

    def add(self, line: int, column: str, why: str) -> None:
        self.found.append(ImportProblem(line=line, column=column, why=why))


def _decode(data: bytes, problems: _Problems) -> str:
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


def _read_rows(data: bytes, problems: _Problems) -> tuple[list[str], list[_Row]]:
    """The header's columns and the data rows, checked for shape only.

    The rows are read even when the header has problems, so that one pass lists every
    problem of every row; only a column named twice (which value counts?) stops here.
    """
    text = _decode(data, problems)
    not_utf8 = {problem.line for problem in problems.found}
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[_Row] = []
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
        rows.append(_Row(line=line, values=values))
    if header is None and not problems.found:
        problems.add(1, "", "the file is empty; the first line names the columns")
    return header or [], rows


def _records(reader, problems: _Problems) -> Iterator[tuple[int, list[str]]]:
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


def _header_ok(header: list[str], problems: _Problems) -> bool:
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


def _date(row: _Row, column: str, problems: _Problems) -> datetime.date | None:
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


def _checked_text(row: _Row, column: str, problems: _Problems) -> str | None:
    text = row.values[column]
    limit = _LIMITS.get(column)
    if text is not None and limit is not None and len(text) > limit:
        problems.add(row.line, column, f"longer than {limit} characters")
        return text[:limit]
    return text


def _check_row(
    row: _Row,
    organizations: dict[str, int],
    stored: dict[tuple[int, str], _Stored],
    problems: _Problems,
) -> _Contact | None:
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
    employer = values["employer"] or None
    primary = True
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
    if kind == "person" and employer is None:
        for column in EMPLOYMENT_COLUMNS:
            if values[column]:
                problems.add(line, column, "give the employer as well")
    if len(problems.found) > before:
        return None
    final = (name, first_name, last_name, email, language)
    return _Contact(
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
        employer=employer,
        employer_primary=primary,
        employed_from=employed_from,
        employed_to=employed_to,
    )


class _Stored(NamedTuple):
    """A stored contact as the import compares it."""

    id: int
    external_id: str
    kind: str
    name: str
    first_name: str
    last_name: str
    email: str
    language: str


# Above this many external ids in one organization, its contacts are read in one query
# rather than looked up in chunks.
_READ_ALL_ABOVE = 5000


def _stored_contacts(keys: set[tuple[int, str]]) -> dict[tuple[int, str], _Stored]:
    """The stored contacts the file's external ids (and employers) name."""
    found: dict[tuple[int, str], _Stored] = {}
    by_organization: dict[int, list[str]] = {}
    for organization_id, external_id in keys:
        by_organization.setdefault(organization_id, []).append(external_id)
    columns = [getattr(Contact, name) for name in _Stored._fields]
    for organization_id, external_ids in by_organization.items():
        of_organization = Contact.select(*columns).where(
            (Contact.organization == organization_id) & Contact.external_id.is_null(False)
        )
        if len(external_ids) > _READ_ALL_ABOVE:
            queries = [of_organization]
        else:
            queries = [
                of_organization.where(Contact.external_id.in_(chunk))
                for chunk in chunks(sorted(external_ids))
            ]
        for query in queries:
            for row in query.tuples():
                contact = _Stored(*row)
                found[(organization_id, contact.external_id)] = contact
    return found


def _new_ids(count: int) -> list[int]:
    """Ids for new contacts, known before the insert so employments can refer to them."""
    if not count:
        return []
    if is_sqlite(database_proxy.obj):
        # The import's transaction holds SQLite's write lock (BEGIN IMMEDIATE): no other
        # writer can take these ids before the insert.
        highest = Contact.select(Contact.id).order_by(Contact.id.desc()).limit(1).scalar() or 0
        return list(range(highest + 1, highest + 1 + count))
    cursor = database_proxy.execute_sql(
        "SELECT nextval(pg_get_serial_sequence('contact', 'id')) FROM generate_series(1, %s)",
        (count,),
    )
    return [value for (value,) in cursor.fetchall()]


def import_contacts(data: bytes, now: datetime.datetime | None = None) -> ImportReport:
    """Import the CSV file's contacts and employments (see the module's docstring): all
    rows or, when any row is bad, none (the report lists every problem)."""
    problems = _Problems()
    header, rows = _read_rows(data, problems)
    if not header:
        return ImportReport(0, 0, 0, 0, tuple(problems.found))
    names = {row.values["organization"] for row in rows if row.values["organization"]}
    organizations = dict(
        Organization.select(Organization.name, Organization.id)
        .where(Organization.name.in_(sorted(names)))
        .tuples()
    )
    keys: set[tuple[int, str]] = set()
    for row in rows:
        organization_id = organizations.get(row.values["organization"] or "")
        if organization_id is None:
            continue
        for column in ("external_id", "employer"):
            if row.values[column]:
                keys.add((organization_id, row.values[column]))
    stored = _stored_contacts(keys)

    # Which line first gives each (organization, external_id), and that row's kind: a
    # later line with the same id is a duplicate, and employers are found here even when
    # their own row has a problem (that problem is listed on its own line). Every row is
    # checked in full, whatever problems it or the rows before it have.
    first_rows: dict[tuple[str, str], _Row] = {}
    checked: list[_Contact] = []
    in_file: dict[tuple[int, str], _Contact] = {}
    for row in rows:
        key = (row.values["organization"] or "", row.values["external_id"] or "")
        duplicate = bool(key[1]) and key in first_rows
        if duplicate:
            problems.add(
                row.line, "external_id", f"{key[1]} is on line {first_rows[key].line} already"
            )
        elif key[1]:
            first_rows[key] = row
        contact = _check_row(row, organizations, stored, problems)
        if contact is None or duplicate:
            continue
        checked.append(contact)
        if contact.external_id is not None:
            in_file[(contact.organization_id, contact.external_id)] = contact
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
    if problems.found:
        problems.found.sort(key=lambda problem: problem.line)
        return ImportReport(0, 0, 0, 0, tuple(problems.found))
    return _write(checked, in_file, stored, now or utc_now())


def _quoted(name: str) -> str:
    return peewee.quote((name,), database_proxy.quote)


def _insert_rows(model, fields: list, rows: list[tuple]) -> None:
    """INSERT rows in chunks of multi-row VALUES.

    The statement is built from the model's own table and column names with bound
    parameters, once per chunk size: peewee's per-value query building costs more than
    the database's work at 100 000 rows.
    """
    database = database_proxy
    table = _quoted(model._meta.table_name)
    columns = ", ".join(_quoted(field.column_name) for field in fields)
    one_row = "(" + ", ".join([database.param] * len(fields)) + ")"
    statements: dict[int, str] = {}
    for chunk in chunks(rows, _ROWS_PER_INSERT):
        sql = statements.get(len(chunk))
        if sql is None:
            sql = statements[len(chunk)] = (
                f"INSERT INTO {table} ({columns}) VALUES {', '.join([one_row] * len(chunk))}"
            )
        params = [field.db_value(value) for row in chunk for field, value in zip(fields, row)]
        database.execute_sql(sql, params)


def _update_rows(model, fields: list, rows: list[tuple]) -> None:
    """UPDATE rows by id, one prepared statement run for every row: (values..., id)."""
    database = database_proxy
    assignments = ", ".join(f"{_quoted(field.column_name)} = {database.param}" for field in fields)
    sql = (
        f"UPDATE {_quoted(model._meta.table_name)} SET {assignments} "
        f"WHERE {_quoted(model.id.column_name)} = {database.param}"
    )
    cursor = database.cursor()
    for chunk in chunks(rows, _ROWS_PER_INSERT):
        cursor.executemany(
            sql,
            [
                [field.db_value(value) for field, value in zip(fields, row[:-1])] + [row[-1]]
                for row in chunk
            ],
        )


def _write(
    checked: list[_Contact],
    in_file: dict[tuple[int, str], _Contact],
    stored: dict[tuple[int, str], _Stored],
    now: datetime.datetime,
) -> ImportReport:
    new = [contact for contact in checked if contact.id is None]
    updated = [contact for contact in checked if contact.id is not None and contact.changed]
    for contact, contact_id in zip(new, _new_ids(len(new)), strict=True):
        contact.id = contact_id
    _insert_rows(
        Contact,
        [
            Contact.id,
            Contact.organization,
            Contact.kind,
            Contact.external_id,
            Contact.name,
            Contact.first_name,
            Contact.last_name,
            Contact.email,
            Contact.language,
            Contact.created_at,
            Contact.updated_at,
        ],
        [
            (
                c.id,
                c.organization_id,
                c.kind,
                c.external_id,
                c.name,
                c.first_name,
                c.last_name,
                c.email,
                c.language,
                now,
                now,
            )
            for c in new
        ],
    )
    _update_rows(
        Contact,
        [
            Contact.name,
            Contact.first_name,
            Contact.last_name,
            Contact.email,
            Contact.language,
            Contact.updated_at,
        ],
        [(c.name, c.first_name, c.last_name, c.email, c.language, now, c.id) for c in updated],
    )
    employments = _write_employments(checked, in_file, stored, now)
    return ImportReport(
        created=len(new),
        updated=len(updated),
        unchanged=len(checked) - len(new) - len(updated),
        employments=employments,
        problems=(),
    )


def _write_employments(
    checked: list[_Contact],
    in_file: dict[tuple[int, str], _Contact],
    stored: dict[tuple[int, str], _Stored],
    now: datetime.datetime,
) -> int:
    wanted: list[tuple[_Contact, int]] = []
    for contact in checked:
        if contact.employer is not None:
            key = (contact.organization_id, contact.employer)
            employer = in_file.get(key) or stored[key]
            wanted.append((contact, employer.id))
    existing: dict[tuple[int, int, datetime.date | None], tuple[int, bool, datetime.date | None]]
    existing = {}
    # Contacts new in this import have no employments yet.
    stored_ids = {contact.id for contact in stored.values()}
    persons = sorted({contact.id for contact, _ in wanted if contact.id in stored_ids})
    columns = (
        Employment.id,
        Employment.person,
        Employment.company,
        Employment.valid_from,
        Employment.is_primary,
        Employment.valid_to,
    )
    if len(persons) > _READ_ALL_ABOVE:
        organizations = sorted({contact.organization_id for contact, _ in wanted})
        queries = [
            Employment.select(*columns)
            .join(Contact, on=(Employment.person == Contact.id))
            .where(Contact.organization.in_(organizations))
        ]
    else:
        queries = [
            Employment.select(*columns).where(Employment.person.in_(chunk))
            for chunk in chunks(persons)
        ]
    for query in queries:
        for row in query.order_by(Employment.id).tuples():
            employment_id, person_id, company_id, valid_from, is_primary, valid_to = row
            key = (person_id, company_id, valid_from)
            existing.setdefault(key, (employment_id, is_primary, valid_to))
    new_rows = []
    changed = []
    for contact, company_id in wanted:
        found = existing.get((contact.id, company_id, contact.employed_from))
        if found is None:
            new_rows.append(
                (
                    contact.id,
                    company_id,
                    contact.employer_primary,
                    contact.employed_from,
                    contact.employed_to,
                    now,
                )
            )
        elif found[1:] != (contact.employer_primary, contact.employed_to):
            changed.append((contact.employer_primary, contact.employed_to, found[0]))
    _insert_rows(
        Employment,
        [
            Employment.person,
            Employment.company,
            Employment.is_primary,
            Employment.valid_from,
            Employment.valid_to,
            Employment.created_at,
        ],
        new_rows,
    )
    _update_rows(Employment, [Employment.is_primary, Employment.valid_to], changed)
    return len(new_rows) + len(changed)
