"""Admin commands: the folders and projects mail can be filed into (`context add`,
`context list`)."""

from __future__ import annotations

from atollon_mail.commands.output import out, table
from atollon_mail.store import contexts as context_ops


def _add(store, args) -> None:
    context = store.run_sync(context_ops.add_context, args.kind, args.name, args.owner)
    owner = f"owner {context.owner_login}" if context.owner_login else "no owner"
    out(f"added {context.kind} {context.name} (id {context.id}, {owner})")


def _list(store, args) -> None:
    contexts = store.run_sync(context_ops.list_contexts)
    rows = [(c.id, c.kind, c.name, c.owner_login or "-") for c in contexts]
    out(table(("ID", "KIND", "NAME", "OWNER"), rows, right=(0,)))


def register(commands) -> None:
    context = commands("context", "the folders and projects mail can be filed into")
    add = context.add_parser("add", help="add a folder or project")
    add.add_argument("kind", choices=("folder", "project"))
    add.add_argument("name", metavar="NAME")
    add.add_argument("--owner", metavar="LOGIN")
    add.set_defaults(handler=_add)
    context.add_parser("list", help="list the contexts").set_defaults(handler=_list)
