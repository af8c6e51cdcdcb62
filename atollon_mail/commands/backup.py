"""Admin commands: `backup FILE` (a consistent archive while the appliance runs) and
`restore FILE` (into a stopped, empty instance). See atollon_mail.backup."""

from __future__ import annotations

import datetime

from atollon_mail.backup import operations
from atollon_mail.backup.archive import ArchiveError
from atollon_mail.backup.operations import BackupError, RestoreRefused
from atollon_mail.commands.output import Refused, out
from atollon_mail.config import default_config_path, load_config

_PASSPHRASE_HELP = (
    "a file whose first line is the passphrase (or set "
    f"{operations.PASSPHRASE_VARIABLE}; never on the command line)"
)


def _passphrase(args) -> bytes | None:
    try:
        if args.passphrase_file:
            return operations.read_passphrase(args.passphrase_file)
        return operations.passphrase_from_environment()
    except BackupError as problem:
        raise Refused(str(problem)) from None


def _config(args):
    return load_config(args.config or default_config_path())


def _backup(store, args) -> None:
    config = _config(args)
    passphrase = _passphrase(args)
    created = datetime.datetime.now(datetime.UTC)
    try:
        manifest = operations.make_backup(
            config,
            args.file,
            passphrase,
            created,
        )
    except (BackupError, ArchiveError) as problem:
        raise Refused(f"backup failed: {problem}") from None
    except OSError as problem:
        raise Refused(f"cannot write {args.file}: {problem.strerror}") from None
    data = len(manifest.data_files)
    encrypted = "encrypted, " if passphrase is not None else ""
    out(
        f"backup written to {args.file} ({encrypted}{manifest.database} database at schema "
        f"version {manifest.schema_version}, {data} data files)"
    )


def _restore(store, args) -> None:
    config = _config(args)
    passphrase = _passphrase(args)
    try:
        restored = operations.restore(config, store, args.file, passphrase, args.force)
    except (RestoreRefused, ArchiveError) as problem:
        raise Refused(f"not restored: {problem}") from None
    except BackupError as problem:
        raise Refused(f"restore failed: {problem}") from None
    except OSError as problem:
        raise Refused(f"restore failed: {problem}") from None
    manifest = restored.manifest
    out(
        f"restored the backup of {manifest.created} ({manifest.database} database, "
        f"{len(restored.data_files)} data files)"
    )
    for number in restored.migrations:
        out(f"applied migration {number}")
    out("start the appliance now")


def register(commands) -> None:
    backup = commands.command(
        "backup", "write a consistent backup of the store and the data directory's keys"
    )
    backup.add_argument("file", metavar="FILE", help="the archive to write (replaced whole)")
    backup.add_argument("--passphrase-file", metavar="F", help="encrypt: " + _PASSPHRASE_HELP)
    backup.set_defaults(handler=_backup)
    restore = commands.command(
        "restore", "restore a backup into a stopped, empty instance, then migrate it"
    )
    restore.add_argument("file", metavar="FILE", help="the archive to restore")
    restore.add_argument(
        "--passphrase-file", metavar="F", help="an encrypted archive's: " + _PASSPHRASE_HELP
    )
    restore.add_argument(
        "--force",
        action="store_true",
        help="replace the data of an instance that is not empty",
    )
    # Runs on a database of any version, or none: the restore brings it up to date.
    restore.set_defaults(handler=_restore, schema_check=False)
