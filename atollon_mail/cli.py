"""The `atollon-mail` admin command: `main` and the registry of its command groups.

Each module listed in COMMAND_MODULES (atollon_mail.commands) has `register(commands)`,
where `commands(name, help)` gives the subparsers of a command group (made on first use,
so several modules can add actions to one group); `commands.command(name, help)` gives
the parser of a command without actions, such as `backup FILE`. Registration order is the
order of the groups and actions in --help. A handler takes (store, args) and raises Refused or a
StoreError to refuse: one line on stderr and exit status 1; bad usage is argparse's exit
status 2. `commands.common.run` opens the store and calls the handler.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import io
import os
import sys
from collections.abc import Sequence

from atollon_mail.commands import common
from atollon_mail.commands.output import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    PROGRAM,
    Refused,
    refusal,
)
from atollon_mail.config import ConfigError
from atollon_mail.store.errors import StoreError

COMMAND_MODULES: tuple[str, ...] = (
    "atollon_mail.commands.db",
    "atollon_mail.commands.domains",
    "atollon_mail.commands.users",
    "atollon_mail.commands.contexts",
    "atollon_mail.commands.mailboxes",
    "atollon_mail.commands.autorespond",
    "atollon_mail.commands.forwarding",
    "atollon_mail.commands.aliases",
    "atollon_mail.commands.messages",
    "atollon_mail.commands.queue",
    "atollon_mail.commands.dkim",
    "atollon_mail.commands.message_types",
    "atollon_mail.commands.dns",
    "atollon_mail.commands.crm",
    "atollon_mail.commands.employments",
    "atollon_mail.commands.massmail",
    "atollon_mail.commands.backup",
)


def _version() -> str:
    try:
        return importlib.metadata.version("atollon-mail")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Administer the atollon-mail appliance's store (works while it runs).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the configuration file (default: $ATOLLON_MAIL_CONFIG or etc/atollon-mail.ini)",
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    known: dict[str, argparse._SubParsersAction] = {}

    def commands(name: str, help_text: str):
        """The actions of command group `name` (made on first use)."""
        if name not in known:
            group = groups.add_parser(name, help=help_text, description=help_text)
            known[name] = group.add_subparsers(dest="command", metavar="ACTION", required=True)
        return known[name]

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        """A command without actions (`backup FILE`): its own parser."""
        return groups.add_parser(name, help=help_text, description=help_text)

    commands.command = command
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or bad usage (2): argparse has said why
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        common.run(args)
    except (Refused, StoreError, ConfigError) as problem:
        refusal(problem)
        return EXIT_REFUSED
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: no traceback, and nothing more to flush.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        return EXIT_REFUSED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
