"""The `atollon-mail` admin command: domains, users, contexts, mailboxes, aliases, messages,
the outbound queue and DKIM keys.

It opens its own connection to the same store the server uses (SQLite in WAL mode with a
busy timeout, or PostgreSQL), runs each request in one transaction with `Store.run_sync`,
and closes the connection before returning. A refused request is one line on stderr and
exit status 1; bad usage is argparse's exit status 2.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import importlib
import importlib.metadata
import io
import os
import sys
import unicodedata
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import peewee

from atollon_mail import passwords
from atollon_mail.config import ConfigError, default_config_path, load_config
from atollon_mail.store import migrations, queries
from atollon_mail.store.domains import all_dkim_keys
from atollon_mail.store.errors import StoreError
from atollon_mail.store.models import QUEUE_STATES, utc_now
from atollon_mail.store.pool import Store
from atollon_mail.store.records import ContextRecord, QueueEntry

PROGRAM = "atollon-mail"


class Refused(Exception):
    """A request the command refuses; str() is the one line shown on stderr."""


# --- output helpers -------------------------------------------------------------------

# Bidirectional overrides can make a listed subject or sender read differently from what
# it is, so they are shown like the other control characters.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _clean(value: object) -> str:
    """One line of printable text: header values come from strangers and reach a terminal."""
    text = str(value)
    characters = []
    for character in text:
        if character in "\r\n\t":
            characters.append(" ")
        elif character in _BIDI_CONTROLS or unicodedata.category(character) in ("Cc", "Cs"):
            characters.append("\ufffd")
        else:
            characters.append(character)
    return "".join(characters)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()):
    """Aligned columns with a header row; the columns listed in `right` are numbers."""
    cells = [[_clean(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row)]
    lines = []
    for row in [list(headers), *cells]:
        parts = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _out(text: str = "") -> None:
    # Confirmations echo stored values too (an identity may hold any character).
    for line in text.split("\n"):
        print(_clean(line), file=sys.stdout)


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _context_label(context: ContextRecord) -> str:
    return f"{context.kind} #{context.id} {context.name}"


def _when(moment) -> str:
    """A stored time (naive UTC) as shown in listings."""
    if moment is None:
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%S") if hasattr(moment, "strftime") else str(moment)


def _shortened(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _display_url(url: str) -> str:
    """The database URL without its password, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _one_line(problem: BaseException) -> str:
    lines = [line.strip() for line in str(problem).splitlines() if line.strip()]
    return _clean(" ".join(lines)) or type(problem).__name__


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
            f"cannot read {what} from {where}: {_one_line(problem)}; give a UTF-8 text file"
        ) from None


def _whole_number(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    return parse


# --- commands -------------------------------------------------------------------------


def _db_migrate(store: Store, url: str) -> None:
    try:
        applied = store.migrate()
    except RuntimeError as problem:  # the schema is newer than this program
        raise Refused(str(problem)) from None
    except (peewee.DatabaseError, peewee.InterfaceError) as problem:
        raise Refused(f"cannot migrate the database at {url}: {_one_line(problem)}") from None
    for migration in applied:
        _out(f"applied migration {migration.number}: {migration.name}")
    if applied:
        _out(f"the schema is now at version {migrations.LATEST_VERSION}")
    else:
        _out(f"the schema is current at version {migrations.LATEST_VERSION}")


def _domain_add(store: Store, args) -> None:
    domain = store.run_sync(
        queries.add_domain, args.name, args.mode, primary_domain=args.primary_domain
    )
    if domain.primary_domain:
        primary = domain.primary_domain
        _out(f"added domain {domain.name} ({domain.mode}, mailboxes send as name@{primary})")
        _out(f"the DNS records to publish: {PROGRAM} dns records {domain.name}")
    else:
        _out(f"added domain {domain.name} ({domain.mode})")


def _domain_list(store: Store, args) -> None:
    domains = store.run_sync(queries.list_domains)
    rows = [(domain.name, domain.mode, _yes_no(domain.active)) for domain in domains]
    _out(_table(("DOMAIN", "MODE", "ACTIVE"), rows))


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
            f"cannot read the password from standard input: {_one_line(problem)}"
        ) from None
    password = line.rstrip("\r\n")
    if not password:
        raise Refused("no password on standard input: --password-stdin reads it from one line")
    return password


def _user_add(store: Store, args) -> None:
    generated = None
    if args.password_stdin:
        password = _read_password()
    else:
        password = generated = passwords.generate_password()
    # Hashed before the transaction: argon2 takes a while and must not hold the write lock.
    password_hash = passwords.hash_password(password)
    user = store.run_sync(
        queries.add_user, args.login, password_hash, name=args.name or "", is_admin=args.admin
    )
    details = [f"name {user.name}"] + (["admin"] if user.is_admin else [])
    _out(f"added user {user.login} ({', '.join(details)})")
    if generated is not None:
        _out(f"password for {user.login} (shown only this once): {generated}")


def _user_list(store: Store, args) -> None:
    users = store.run_sync(queries.list_users)
    rows = [(user.login, user.name, _yes_no(user.is_admin)) for user in users]
    _out(_table(("LOGIN", "NAME", "ADMIN"), rows))


def _context_add(store: Store, args) -> None:
    context = store.run_sync(queries.add_context, args.kind, args.name, args.owner)
    owner = f"owner {context.owner_login}" if context.owner_login else "no owner"
    _out(f"added {context.kind} {context.name} (id {context.id}, {owner})")


def _context_list(store: Store, args) -> None:
    contexts = store.run_sync(queries.list_contexts)
    rows = [(c.id, c.kind, c.name, c.owner_login or "-") for c in contexts]
    _out(_table(("ID", "KIND", "NAME", "OWNER"), rows, right=(0,)))


def _mailbox_add(store: Store, args) -> None:
    mailbox = store.run_sync(
        queries.add_mailbox,
        args.address,
        args.owner,
        identity=args.identity,
        active=not args.inactive,
        store_to_context_id=args.store_to,
    )
    details = [f"owner {mailbox.owner_login}", f"identity {mailbox.identity}"]
    if args.store_to is not None:
        details.append(f"stores to {_context_label(mailbox.store_to)}")
    if not mailbox.active:
        details.append("inactive")
    _out(f"added mailbox {mailbox.address} ({', '.join(details)})")


def _mailbox_list(store: Store, args) -> None:
    mailboxes = store.run_sync(queries.list_mailboxes)
    rows = [
        (
            box.address,
            box.owner_login,
            box.identity,
            _context_label(box.store_to),
            _yes_no(box.active),
            _yes_no(box.is_default),
            ", ".join(box.aliases) or "-",
        )
        for box in mailboxes
    ]
    headers = ("ADDRESS", "OWNER", "IDENTITY", "STORE TO", "ACTIVE", "DEFAULT", "ALIASES")
    _out(_table(headers, rows))


def _mailbox_show(store: Store, args) -> None:
    from atollon_mail.store.mailboxes import mailbox_detail

    detail = store.run_sync(mailbox_detail, args.address)
    box = detail.mailbox
    signature = box.signature.splitlines() or ["(none)"]
    active = _yes_no(box.active)
    if detail.redirected_to is not None:
        active += f" (redirected to {detail.redirected_to})"
    identity = box.identity
    if detail.identity_refusal is not None:
        identity += f" (refused when sending: {detail.identity_refusal})"
    elif detail.identity_approved:
        identity += " (set by an administrator)"
    fields = [
        ("address", box.address),
        ("owner", box.owner_login),
        ("identity", identity),
        ("store to", _context_label(box.store_to)),
        ("active", active),
        ("default box", _yes_no(box.is_default)),
        ("aliases", ", ".join(box.aliases) or "(none)"),
    ]
    if detail.access:  # the owner always has both; only grants to others are listed
        rights = [
            f"{access.login} {'view+edit' if access.edit else 'view'}" for access in detail.access
        ]
        fields.append(("rights", ", ".join(rights)))
    fields.append(("forwarding", _forwarding_summary(store, box.address)))
    fields.append(("auto-respond", _autorespond_summary(store, box.address)))
    fields.append(("signature", signature[0]))
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        _out(f"{label + ':':<{width}}{_clean(value)}".rstrip())
    for line in signature[1:]:
        _out(f"{'':<{width}}{_clean(line)}".rstrip())


def _forwarding_summary(store: Store, address: str) -> str:
    from atollon_mail.store.forwarding import get_forwarding

    forwarding = store.run_sync(get_forwarding, address)
    if not forwarding.enabled:
        return "off" + (
            f" (targets kept: {', '.join(forwarding.targets)})" if forwarding.targets else ""
        )
    copy = "keeping a copy" if forwarding.keep_copy else "forward only"
    return f"on, {copy}, to {', '.join(forwarding.targets) or '(no targets yet)'}"


def _autorespond_summary(store: Store, address: str) -> str:
    from atollon_mail.commands.autorespond import autoresponder_fields
    from atollon_mail.store.autorespond import get_autoresponder

    responder = store.run_sync(get_autoresponder, address)
    state = autoresponder_fields(responder)[0][1]
    return state if responder is None else f"{state}: {responder.subject!r}"


def _alias_add(store: Store, args) -> None:
    alias = store.run_sync(queries.add_alias, args.address, args.mailbox)
    _out(f"added alias {alias.address} -> {alias.mailbox_address}")


def _alias_list(store: Store, args) -> None:
    aliases = store.run_sync(queries.list_aliases)
    rows = [(alias.address, alias.mailbox_address) for alias in aliases]
    _out(_table(("ALIAS", "MAILBOX"), rows))


def _messages_list(store: Store, args) -> None:
    filings = store.run_sync(
        queries.list_filings, args.address, limit=args.limit, offset=args.offset
    )
    rows = []
    for filing in filings:
        message = filing.message
        received = message.received_at
        if hasattr(received, "strftime"):
            received = received.strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            (
                filing.uid,
                message.id,
                received,
                message.size,
                message.from_header or message.envelope_sender or "<>",
                message.subject or "",
            )
        )
    headers = ("UID", "ID", "RECEIVED (UTC)", "SIZE", "FROM", "SUBJECT")
    _out(_table(headers, rows, right=(0, 1, 3)))


def _messages_show(store: Store, args) -> None:
    raw = store.run_sync(queries.message_raw, args.id)
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        raise Refused("standard output takes no bytes; cannot write the message")
    sys.stdout.flush()
    buffer.write(raw)
    buffer.flush()


_WAITING = ("queued", "deferred")
_REPLY_WIDTH = 40


def _next_attempt(entry: QueueEntry) -> str:
    # Only a waiting recipient has a next attempt; the others' stored time is history.
    return _when(entry.next_attempt_at) if entry.state in _WAITING else "-"


def _state(entry: QueueEntry) -> str:
    return f"{entry.state}, uncertain" if entry.uncertain else entry.state


def _queue_list(store: Store, args) -> None:
    entries = store.run_sync(
        queries.queue_list,
        args.state,
        limit=args.limit,
        offset=args.offset,
        uncertain=args.uncertain,
    )
    rows = [
        (
            entry.queue_message_id,
            entry.address,
            _state(entry),
            entry.attempts,
            _next_attempt(entry),
            _shortened(entry.last_reply, _REPLY_WIDTH) if entry.last_reply else "-",
            entry.subject or "",
        )
        for entry in entries
    ]
    headers = (
        "ID",
        "RECIPIENT",
        "STATE",
        "ATTEMPTS",
        "NEXT ATTEMPT (UTC)",
        "LAST REPLY",
        "SUBJECT",
    )
    _out(_table(headers, rows, right=(0, 3)))


def _queue_show(store: Store, args) -> None:
    detail = store.run_sync(queries.queue_show, args.id)
    sender = detail.envelope_sender or "<>"
    fields = [
        ("sender", f"{sender} (a bounce)" if detail.is_bounce else sender),
        ("subject", detail.subject or "(none)"),
        ("message-id", detail.message_id_header or "(none)"),
        ("queued", f"{_when(detail.created_at)} UTC"),
    ]
    _out(f"queued message {detail.id} (message {detail.message_id})")
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        _out(f"{label + ':':<{width}}{_clean(value)}")
    for recipient in detail.recipients:
        entry = recipient.entry
        status = [entry.state, _counted(entry.attempts, "attempt")]
        if entry.state in _WAITING:
            status.append(f"next attempt {_when(entry.next_attempt_at)} UTC")
        if entry.uncertain:
            status.append("uncertain: may have got two copies")
        _out()
        _out(f"{entry.address}: {', '.join(status)}")
        for event in recipient.events:
            parts = [_when(event.at), event.outcome, event.server or "-", event.reply or "-"]
            if event.next_attempt_at is not None:
                parts.append(f"next attempt {_when(event.next_attempt_at)}")
            _out("  " + "  ".join(_clean(part) for part in parts))
        if not recipient.events:
            _out("  (no attempt yet)")


def _queue_retry(store: Store, args) -> None:
    count = store.run_sync(queries.queue_retry, args.id, utc_now())
    if count:
        _out(
            f"queued message {args.id}: {_counted(count, 'recipient')} due now "
            "(tried at the server's next queue run)"
        )
    else:
        _out(f"queued message {args.id}: nothing to retry (no recipient is waiting)")


def _queue_delete(store: Store, args) -> None:
    count = store.run_sync(queries.queue_delete, args.id)
    _out(f"deleted queued message {args.id} ({_counted(count, 'recipient')})")


def _dkim_generate(store: Store, args) -> None:
    # Imported here: the DKIM libraries are not needed by the other commands.
    from atollon_mail.delivery import dkim

    selector = args.selector or dkim.DEFAULT_SELECTOR
    # Generated before the transaction: an RSA key takes a while to make.
    private_key, public_key = dkim.generate_key(args.algorithm)
    key = store.run_sync(
        queries.add_dkim_key, args.domain, selector, args.algorithm, private_key, public_key
    )
    _out(f"added DKIM key {key.selector} for {key.domain} ({key.algorithm})")
    _out(f"publish this TXT record in the DNS of {key.domain}:")
    _out(dkim.zone_record(key.selector, key.domain, key.algorithm, key.public_key))
    if key.state == "pending":  # a key rotation: the domain signs with another key now
        _out(
            f"mail from {key.domain} is still signed with its current {key.algorithm} key; "
            f"once the record is published, switch with: "
            f"{PROGRAM} dkim activate {key.domain} {key.selector}"
        )
        return
    _out(
        f"mail from {key.domain} is signed with it from now on; "
        f"show the record again with: {PROGRAM} dkim show {key.domain}"
    )


def _dkim_list(store: Store, args) -> None:
    keys = store.run_sync(all_dkim_keys)
    retention = None
    if any(key.state == "retired" for key in keys):
        retention = load_config(args.config or default_config_path()).delivery.dkim_key_retention
    rows = []
    # By domain; within one, the signing keys first, newest first.
    for key in keys:
        state = key.state
        if key.retired_at is not None and retention is not None:
            until = key.retired_at + datetime.timedelta(seconds=retention)
            state = f"retired, removed after {until:%Y-%m-%d %H:%M} UTC"
        rows.append((key.domain, key.selector, key.algorithm, state))
    _out(_table(("DOMAIN", "SELECTOR", "ALGORITHM", "STATE"), rows))


def _dkim_show(store: Store, args) -> None:
    from atollon_mail.delivery import dkim

    name = queries.normalize_domain_name(args.domain)
    if name not in {domain.name for domain in store.run_sync(queries.list_domains)}:
        raise Refused(f"no domain {name}; add it with: {PROGRAM} domain add {name}")
    # Every key: pending ones are to be published, retired ones kept a while.
    keys = store.run_sync(all_dkim_keys, name)
    if not keys:
        raise Refused(f"{name} has no DKIM key; make one with: {PROGRAM} dkim generate {name}")
    for key in keys:
        _out(dkim.zone_record(key.selector, key.domain, key.algorithm, key.public_key))


# --- parser ---------------------------------------------------------------------------


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

    db = commands("db", "the database schema")
    db.add_parser("migrate", help="apply the pending schema migrations").set_defaults(handler=None)

    domain = commands("domain", "the mail domains this server receives for")
    add = domain.add_parser("add", help="add a domain")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--mode", choices=("primary", "secondary"), default="primary")
    add.add_argument(
        "--primary-domain",
        metavar="DOMAIN",
        help="secondary mode: the company's own domain (its mail provider forwards chosen "
        "mailboxes to this one, which send as name@DOMAIN)",
    )
    add.set_defaults(handler=_domain_add)
    domain.add_parser("list", help="list the domains").set_defaults(handler=_domain_list)

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
    add.set_defaults(handler=_user_add)
    user.add_parser("list", help="list the users").set_defaults(handler=_user_list)

    context = commands("context", "the folders and projects mail can be filed into")
    add = context.add_parser("add", help="add a folder or project")
    add.add_argument("kind", choices=("folder", "project"))
    add.add_argument("name", metavar="NAME")
    add.add_argument("--owner", metavar="LOGIN")
    add.set_defaults(handler=_context_add)
    context.add_parser("list", help="list the contexts").set_defaults(handler=_context_list)

    mailbox = commands("mailbox", "the mailboxes mail is delivered to")
    add = mailbox.add_parser("add", help="add a mailbox")
    add.add_argument("address", metavar="ADDR")
    add.add_argument("--owner", metavar="LOGIN", required=True)
    add.add_argument(
        "--identity",
        metavar="ADDR",
        help="the From address (default: ADDR, in secondary mode name@ the primary domain); "
        "never another mailbox's address, alias or identity",
    )
    add.add_argument("--inactive", action="store_true", help="refuse mail for it for now")
    add.add_argument(
        "--store-to",
        metavar="CONTEXT_ID",
        type=_whole_number(1),
        help="file its mail into this folder or project (see: context list)",
    )
    add.set_defaults(handler=_mailbox_add)
    mailbox.add_parser("list", help="list the mailboxes").set_defaults(handler=_mailbox_list)
    show = mailbox.add_parser("show", help="show one mailbox")
    show.add_argument("address", metavar="ADDR")
    show.set_defaults(handler=_mailbox_show)

    alias = commands("alias", "other names of a mailbox, in its domain")
    add = alias.add_parser("add", help="add an alias")
    add.add_argument("address", metavar="NAME@DOMAIN")
    add.add_argument("--mailbox", metavar="ADDR", required=True)
    add.set_defaults(handler=_alias_add)
    alias.add_parser("list", help="list the aliases").set_defaults(handler=_alias_list)

    messages = commands("messages", "the messages in a mailbox")
    listing = messages.add_parser("list", help="list a mailbox's messages, newest first")
    listing.add_argument("address", metavar="ADDR")
    listing.add_argument("--limit", type=_whole_number(1), default=100)
    listing.add_argument("--offset", type=_whole_number(0), default=0)
    listing.set_defaults(handler=_messages_list)
    show = messages.add_parser("show", help="write a message's raw bytes to standard output")
    show.add_argument("id", metavar="ID", type=_whole_number(1))
    show.set_defaults(handler=_messages_show)

    queue = commands("queue", "the outbound queue: messages waiting to be delivered elsewhere")
    listing = queue.add_parser("list", help="list the queue's recipients, newest message first")
    listing.add_argument("--state", choices=QUEUE_STATES)
    listing.add_argument("--limit", type=_whole_number(1), default=100)
    listing.add_argument("--offset", type=_whole_number(0), default=0)
    listing.add_argument(
        "--uncertain",
        action="store_true",
        help="only recipients that may have got two copies: their message was sent and "
        "the reply was lost (the appliance stopped, or the connection broke, in between)",
    )
    listing.set_defaults(handler=_queue_list)
    for name, help_text, handler in (
        ("show", "show a queued message's recipients and delivery attempts", _queue_show),
        ("retry", "try a queued message's waiting recipients now", _queue_retry),
        ("delete", "remove a message from the queue (its filed copies stay)", _queue_delete),
    ):
        action = queue.add_parser(name, help=help_text)
        action.add_argument("id", metavar="ID", type=_whole_number(1), help="see: queue list")
        action.set_defaults(handler=handler)

    dkim = commands("dkim", "the DKIM keys outgoing mail is signed with")
    generate = dkim.add_parser("generate", help="make a signing key for a domain")
    generate.add_argument("domain", metavar="DOMAIN")
    generate.add_argument("--selector", help="the DNS label of the key (default: atollon)")
    generate.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    generate.set_defaults(handler=_dkim_generate)
    dkim.add_parser(
        "list", help="list the keys: signing (active), pending activation, retired"
    ).set_defaults(handler=_dkim_list)
    show = dkim.add_parser("show", help="print the DNS records of a domain's keys")
    show.add_argument("domain", metavar="DOMAIN")
    show.set_defaults(handler=_dkim_show)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(commands)
    return parser


# --- running --------------------------------------------------------------------------


# Modules that add commands: each has register(commands), where commands(name, help) gives
# the subparsers of a command group (existing or new) to add actions to. Handlers take
# (store, args) and raise Refused or a StoreError to refuse.
COMMAND_MODULES: tuple[str, ...] = (
    "atollon_mail.commands.mailboxes",
    "atollon_mail.commands.autorespond",
    "atollon_mail.commands.forwarding",
    "atollon_mail.commands.domains",
    "atollon_mail.commands.dns",
    "atollon_mail.commands.crm",
    "atollon_mail.commands.massmail",
)


def _schema_versions(database: peewee.Database) -> list[int]:
    # Only read: a database that is not migrated is left exactly as it was found.
    if not database.table_exists("schema_migration"):
        return []
    return migrations.applied_versions(database)


def _check_schema(store: Store, url: str) -> None:
    try:
        applied = store.run_sync(_schema_versions, store.database)
    except (peewee.DatabaseError, peewee.InterfaceError) as problem:
        raise Refused(f"cannot open the database at {url}: {_one_line(problem)}") from None
    version = max(applied, default=0)
    latest = migrations.LATEST_VERSION
    if version > latest:
        raise Refused(
            f"the database at {url} is at schema version {version}, newer than this program "
            f"knows ({latest}); run a newer atollon-mail"
        )
    if set(range(1, latest + 1)) - set(applied):
        raise Refused(
            f"the database at {url} is not migrated (version {version} of {latest}); "
            "run: atollon-mail db migrate"
        )


def _run(args) -> None:
    config = load_config(args.config or default_config_path())
    url = _display_url(config.database.url)
    try:
        store = Store.from_url(config.database.url, reactor=None)
    except (ValueError, OSError) as problem:
        raise Refused(f"cannot open the database at {url}: {_one_line(problem)}") from None
    try:
        if args.group == "db":
            _db_migrate(store, url)
            return
        _check_schema(store, url)
        try:
            args.handler(store, args)
        except (peewee.DatabaseError, peewee.InterfaceError) as problem:
            raise Refused(f"the database at {url} failed: {_one_line(problem)}") from None
    finally:
        store.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or bad usage (2): argparse has said why
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        _run(args)
    except (Refused, StoreError, ConfigError) as problem:
        print(f"{PROGRAM}: {_one_line(problem)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: no traceback, and nothing more to flush.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
