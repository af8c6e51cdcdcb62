"""Admin commands: the mail domains (`domain add`, `domain list`, and `domain show`: a
domain's mode, its primary or secondary domains, and its last DNS check by the watcher)."""

from __future__ import annotations

from atollon_mail.commands.output import PROGRAM, clean, out, table, when, yes_no
from atollon_mail.store import domains


def _add(store, args) -> None:
    domain = store.run_sync(
        domains.add_domain, args.name, args.mode, primary_domain=args.primary_domain
    )
    if domain.primary_domain:
        primary = domain.primary_domain
        out(f"added domain {domain.name} ({domain.mode}, mailboxes send as name@{primary})")
        out(f"the DNS records to publish: {PROGRAM} dns records {domain.name}")
    else:
        out(f"added domain {domain.name} ({domain.mode})")


def _list(store, args) -> None:
    rows = [
        (domain.name, domain.mode, yes_no(domain.active))
        for domain in store.run_sync(domains.list_domains)
    ]
    out(table(("DOMAIN", "MODE", "ACTIVE"), rows))


def _show(store, args) -> None:
    subject = store.run_sync(domains.dns_subject, args.domain)
    check = store.run_sync(domains.last_dns_check, args.domain)
    domain = subject.domain
    receives = "yes" if subject.hosted else "no (its mail stays with its own provider)"
    fields = [
        ("domain", domain.name),
        ("mode", domain.mode),
        ("active", yes_no(domain.active)),
        ("receives here", receives),
    ]
    if domain.primary_domain:
        fields.append(("primary domain", domain.primary_domain))
    if subject.secondaries:
        fields.append(("secondary domains", ", ".join(subject.secondaries)))
    fields.append(("sends as", ", ".join(subject.sending_domains)))
    if check is None:
        fields.append(("last DNS check", "(none yet)"))
    else:
        fields.append(("last DNS check", f"{when(check.checked_at)} UTC"))
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        out(f"{label + ':':<{width}}{clean(value)}")
    for result in check.results if check is not None else ():
        out(f"  {result.status:<4}  {result.check}: {result.reason}")


def register(commands) -> None:
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
    add.set_defaults(handler=_add)
    domain.add_parser("list", help="list the domains").set_defaults(handler=_list)
    show = domain.add_parser("show", help="show a domain and its last DNS check")
    show.add_argument("domain", metavar="DOMAIN")
    show.set_defaults(handler=_show)
