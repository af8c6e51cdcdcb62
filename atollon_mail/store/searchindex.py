"""The full-text index of messages (migration 13): writing a stored message's entry, in the
transaction that stores it, and the entries of the mail stored before the migration.
Its reading is store.search; what text goes in is store.searchtext.

- SQLite: the FTS5 table `message_search` (rowid = the message's id), tokenized by
  unicode61; a trigger deletes a message's row when the message is deleted.
- PostgreSQL: `message_search` (message_id, document tsvector) with a GIN index, in the
  'simple' configuration; the row goes with its message (ON DELETE CASCADE).

Whoever deletes a message row deletes its index entry in the same transaction; nothing
else needs to be called.
"""

from __future__ import annotations

import peewee

from atollon_mail.store import searchtext
from atollon_mail.store.database import is_sqlite
from atollon_mail.store.models import database_proxy

# PostgreSQL's parser reads alice@remote.example as one e-mail token and e-mail as three;
# with punctuation made blanks it splits words where FTS5 (and searchtext.words) do.
_POSTGRES_WORDS = "to_tsvector('simple', regexp_replace({p}, '[[:punct:]]+', ' ', 'g'))"
_POSTGRES_INSERT = (
    "INSERT INTO message_search (message_id, document) VALUES ({p}, "
    f"setweight({_POSTGRES_WORDS}, 'A') || setweight({_POSTGRES_WORDS}, 'B')"
    f" || setweight({_POSTGRES_WORDS}, 'C') || {_POSTGRES_WORDS})"
)
_SQLITE_INSERT = (
    "INSERT INTO message_search (rowid, subject, sender, recipients, body)"
    " VALUES ({p}, {p}, {p}, {p}, {p})"
)
_insert_sql: dict[tuple[bool, str], str] = {}


def write_index(database: peewee.Database, message_id: int, text: searchtext.SearchText) -> None:
    """The index entry of a stored message, in the caller's transaction."""
    sqlite = is_sqlite(database)
    key = (sqlite, database.param)
    sql = _insert_sql.get(key)
    if sql is None:
        sql = (_SQLITE_INSERT if sqlite else _POSTGRES_INSERT).format(p=database.param)
        _insert_sql[key] = sql
    database.execute_sql(sql, (message_id, text.subject, text.sender, text.recipients, text.body))


def index_message(message_id: int, text: searchtext.SearchText) -> None:
    """write_index on the store's database (inside a store operation)."""
    write_index(database_proxy.obj, message_id, text)


BACKFILL_BATCH = 200


def backfill(database: peewee.Database, dialect: str) -> None:
    """Migration 13 for the messages stored before it: each one's text indexed and its
    attachment mark set. Raw SQL: a migration does not follow later models."""
    param = database.param
    last = 0
    while True:
        rows = database.execute_sql(
            f"SELECT id, raw FROM message WHERE id > {param} ORDER BY id LIMIT {param}",
            (last, BACKFILL_BATCH),
        ).fetchall()
        if not rows:
            return
        for message_id, raw in rows:
            text = searchtext.extract(bytes(raw))
            write_index(database, message_id, text)
            if text.has_attachment:
                database.execute_sql(
                    f"UPDATE message SET has_attachment = {param} WHERE id = {param}",
                    (True, message_id),
                )
        last = rows[-1][0]
