"""What the admin commands share besides their output: argument types, reading text input,
and running a command's handler against the store named by the configuration.

Each run opens its own connection to the same store the server uses (SQLite in WAL mode
with a busy timeout, or PostgreSQL), checks that the schema is current, runs the handler
(whose requests are each one transaction with `Store.run_sync`) and closes the connection
before returning.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from atollon_mail.commands.output import Refused, display_url, one_line
from atollon_mail.config import default_config_path, load_config
from atollon_mail.store import migrations
from atollon_mail.store.pool import DATABASE_ERRORS, Store

# --- argument types -------------------------------------------------------------------


def read_text_file(path: str, what: str) -> str:
    """The UTF-8 text of path ("-": standard input), or Refused naming what it was for."""
    try:
        if path == "-":
            if sys.stdin is None:
                raise OSError("standard input is closed")
            return sys.stdin.read()
        with open(path, encoding="utf-8") as text_file:
            return text_file.read()
    except (OSError, UnicodeDecodeError) as problem:
        where = "standard input" if path == "-" else path
        raise Refused(
            f"cannot read {what} from {where}: {one_line(problem)}; give a UTF-8 text file"
        ) from None


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    return parse


# --- running a handler ----------------------------------------------------------------


def check_schema(store: Store, url: str) -> None:
    """Refused unless the schema is exactly the one this program knows."""
    try:
        applied = store.schema_versions()
    except DATABASE_ERRORS as problem:
        raise Refused(f"cannot open the database at {url}: {one_line(problem)}") from None
    version = max(applied, default=0)
    latest = migrations.LATEST_VERSION
    if version > latest:
        raise Refused(
            f"the database at {url} is at schema version {version}, newer than this program "
            f"knows ({latest}); run a newer atollon-mail"
        )
    if {migration.number for migration in migrations.MIGRATIONS} - set(applied):
        raise Refused(
            f"the database at {url} is not migrated (version {version} of {latest}); "
            "run: atollon-mail db migrate"
        )


def run(args: argparse.Namespace) -> None:
    """Open the configured store, run `args.handler(store, args)`, close the store.

    The handler finds the database URL, fit to print, in `args.database_url`. Unless its
    parser set `schema_check=False` (as `db migrate` does), it runs only on a current
    schema."""
    config = load_config(args.config or default_config_path())
    url = display_url(config.database.url)
    try:
        store = Store.from_url(config.database.url, reactor=None)
    except (ValueError, OSError) as problem:
        raise Refused(f"cannot open the database at {url}: {one_line(problem)}") from None
    try:
        if getattr(args, "schema_check", True):
            check_schema(store, url)
        args.database_url = url
        try:
            args.handler(store, args)
        except DATABASE_ERRORS as problem:
            raise Refused(f"the database at {url} failed: {one_line(problem)}") from None
    finally:
        store.stop()


_YES_NO = {"yes": True, "no": False}


def yes_or_no(value: str) -> bool:
    """An argparse type: yes or no (any case) as a bool."""
    found = _YES_NO.get(value.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"give yes or no, got {value!r}")
    return found
