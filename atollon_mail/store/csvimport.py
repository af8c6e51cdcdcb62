"""Importing contacts from a CSV file: the whole file or nothing. The file's format and
its checks are crm.csvimport's; this writes the checked rows.
"""

from __future__ import annotations

import datetime

import peewee

from atollon_mail.crm.csvimport import (
    CheckedContact,
    CheckedEmployment,
    Problems,
    StoredContact,
    check_rows,
    contact_keys,
    organization_names,
    read_rows,
)
from atollon_mail.crm.records import ImportReport
from atollon_mail.store.common import chunks
from atollon_mail.store.database import is_sqlite
from atollon_mail.store.models import Contact, Employment, Organization, database_proxy, utc_now

# Rows per INSERT (11 columns at most: far below both backends' parameter limits).
_ROWS_PER_INSERT = 500

# Above this many external ids in one organization, its contacts are read in one query
# rather than looked up in chunks.
_READ_ALL_ABOVE = 5000


def _stored_contacts(keys: set[tuple[int, str]]) -> dict[tuple[int, str], StoredContact]:
    """The stored contacts the file's external ids (and employers) name."""
    found: dict[tuple[int, str], StoredContact] = {}
    by_organization: dict[int, list[str]] = {}
    for organization_id, external_id in keys:
        by_organization.setdefault(organization_id, []).append(external_id)
    columns = [getattr(Contact, name) for name in StoredContact._fields]
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
                contact = StoredContact(*row)
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
    """Import the CSV file's contacts and employments (see crm.csvimport's docstring): all
    rows or, when any row is bad, none (the report lists every problem)."""
    problems = Problems()
    header, rows = read_rows(data, problems)
    if not header:
        return ImportReport(0, 0, 0, 0, tuple(problems.found))
    organizations = dict(
        Organization.select(Organization.name, Organization.id)
        .where(Organization.name.in_(organization_names(rows)))
        .tuples()
    )
    stored = _stored_contacts(contact_keys(rows, organizations))
    checked, in_file = check_rows(rows, organizations, stored, problems)
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
    checked: list[CheckedContact],
    in_file: dict[tuple[int, str], CheckedContact],
    stored: dict[tuple[int, str], StoredContact],
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
    checked: list[CheckedContact],
    in_file: dict[tuple[int, str], CheckedContact],
    stored: dict[tuple[int, str], StoredContact],
    now: datetime.datetime,
) -> int:
    wanted: list[tuple[CheckedContact, CheckedEmployment, int]] = []
    for contact in checked:
        for job in contact.employments:
            key = (contact.organization_id, job.employer)
            employer = in_file.get(key) or stored[key]
            wanted.append((contact, job, employer.id))
    existing: dict[tuple[int, int, datetime.date | None], tuple[int, bool, datetime.date | None]]
    existing = {}
    # Contacts new in this import have no employments yet.
    stored_ids = {contact.id for contact in stored.values()}
    persons = sorted({contact.id for contact, _, _ in wanted if contact.id in stored_ids})
    columns = (
        Employment.id,
        Employment.person,
        Employment.company,
        Employment.valid_from,
        Employment.is_primary,
        Employment.valid_to,
    )
    if len(persons) > _READ_ALL_ABOVE:
        organizations = sorted({contact.organization_id for contact, _, _ in wanted})
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
    for contact, job, company_id in wanted:
        found = existing.get((contact.id, company_id, job.employed_from))
        if found is None:
            new_rows.append(
                (contact.id, company_id, job.primary, job.employed_from, job.employed_to, now)
            )
        elif found[1:] != (job.primary, job.employed_to):
            changed.append((job.primary, job.employed_to, found[0]))
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
