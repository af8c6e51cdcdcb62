"""Admin commands: the people who log in (`user add`, `user list`)."""

from __future__ import annotations

import getpass
import sys

from atollon_mail import passwords
from atollon_mail.commands.output import Refused, one_line, out, table, yes_no
from atollon_mail.store import accounts


def _read_password() -> str:
    try:
        if sys.stdin is None:
            raise OSError("standard input is closed")
        if sys.stdin.isatty():
            line = getpass.getpass("password: ")
        else:
            line = sys.stdin.readline()
    except (OSError, UnicodeDecodeError, EOFError) as problem:
        raise Refused(
            f"cannot read the password from standard input: {one_line(problem)}"
        ) from None
    password = line.rstrip("\r\n")
    if not password:
        raise Refused("no password on standard input: --password-stdin reads it from one line")
    return password


def _add(store, args) -> None:
    generated = None
    if args.password_stdin:
        password = _read_password()
    else:
        password = generated = passwords.generate_password()
    # Hashed before the transaction: argon2 takes a while and must not hold the write lock.
    password_hash = passwords.hash_password(password)
    user = store.run_sync(
        accounts.add_user, args.login, password_hash, name=args.name or "", is_admin=args.admin
    )
    details = [f"name {user.name}"] + (["admin"] if user.is_admin else [])
    out(f"added user {user.login} ({', '.join(details)})")
    if generated is not None:
        out(f"password for {user.login} (shown only this once): {generated}")


def _list(store, args) -> None:
    users = store.run_sync(accounts.list_users)
    rows = [(user.login, user.name, yes_no(user.is_admin)) for user in users]
    out(table(("LOGIN", "NAME", "ADMIN"), rows))


def register(commands) -> None:
    user = commands("user", "the people who log in")
    add = user.add_parser("add", help="add a user (a random password is printed once)")
    add.add_argument("login", metavar="LOGIN")
    add.add_argument("--name", help="the full name (default: the login)")
    add.add_argument("--admin", action="store_true", help="may administer the appliance")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from one line of standard input",
    )
    add.set_defaults(handler=_add)
    user.add_parser("list", help="list the users").set_defaults(handler=_list)
