"""Admin commands: the database schema (`db migrate`)."""

from __future__ import annotations

from atollon_mail.commands.output import Refused, one_line, out
from atollon_mail.store import migrations
from atollon_mail.store.pool import DATABASE_ERRORS


def _migrate(store, args) -> None:
    url = args.database_url
    try:
        applied = store.migrate()
    except RuntimeError as problem:  # the schema is newer than this program
        raise Refused(str(problem)) from None
    except DATABASE_ERRORS as problem:
        raise Refused(f"cannot migrate the database at {url}: {one_line(problem)}") from None
    for migration in applied:
        out(f"applied migration {migration.number}: {migration.name}")
    if applied:
        out(f"the schema is now at version {migrations.LATEST_VERSION}")
    else:
        out(f"the schema is current at version {migrations.LATEST_VERSION}")


def register(commands) -> None:
    db = commands("db", "the database schema")
    migrate = db.add_parser("migrate", help="apply the pending schema migrations")
    # Runs on a database of any version: bringing it up to date is its job.
    migrate.set_defaults(handler=_migrate, schema_check=False)
