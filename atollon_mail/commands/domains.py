"""Admin commands: `domain show`, a domain's mode, its primary or secondary domains, and its
last DNS check by the watcher. (`domain add` and `domain list` are in atollon_mail.cli.)"""

from __future__ import annotations

from atollon_mail.cli import _clean, _out, _when, _yes_no
from atollon_mail.store import domains


def _show(store, args) -> None:
    subject = store.run_sync(domains.dns_subject, args.domain)
    check = store.run_sync(domains.last_dns_check, args.domain)
    domain = subject.domain
    receives = "yes" if subject.hosted else "no (its mail stays with its own provider)"
    fields = [
        ("domain", domain.name),
        ("mode", domain.mode),
        ("active", _yes_no(domain.active)),
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
        fields.append(("last DNS check", f"{_when(check.checked_at)} UTC"))
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        _out(f"{label + ':':<{width}}{_clean(value)}")
    for result in check.results if check is not None else ():
        _out(f"  {result.status:<4}  {result.check}: {result.reason}")


def register(commands) -> None:
    domain = commands("domain", "the mail domains this server receives for")
    show = domain.add_parser("show", help="show a domain and its last DNS check")
    show.add_argument("domain", metavar="DOMAIN")
    show.set_defaults(handler=_show)
