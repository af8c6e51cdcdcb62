"""Admin commands: `dns records` (what a domain must publish), `dns check` (whether it
does, asked live of the configured resolvers), and `dkim activate` (switch a domain to a
new DKIM key once its record is published)."""

from __future__ import annotations

import datetime
import json

import attrs

from atollon_mail.commands.output import PROGRAM, Refused, out, table
from atollon_mail.config import default_config_path, load_config
from atollon_mail.store import domains
from atollon_mail.store.records import PublishedKey


def _config(args):
    return load_config(args.config or default_config_path())


def _records(store, args) -> None:
    # Imported here: the other commands need neither dnspython's resolver nor pyspf.
    from atollon_mail.dns import advisor
    from atollon_mail.dns.lookup import Lookups

    config = _config(args)
    subject = store.run_sync(domains.dns_subject, args.domain)
    advice = advisor.advise(subject, config, Lookups.using(config.delivery.nameservers))
    if args.format == "json":
        out(json.dumps(advisor.advice_json(advice), indent=2))
    elif args.format == "table":
        out(_records_table(advice))
    else:
        out(advisor.zone_text(advice))


def _records_table(advice) -> str:
    rows = [(r.name, r.type, r.value, r.purpose) for r in advice.records]
    lines = [table(("NAME", "TYPE", "VALUE", "PURPOSE"), rows)]
    sections = [
        ("warnings", [f"! {warning}" for warning in advice.warnings]),
        ("notes", list(advice.notes)),
        (
            f"forwarding to set up at {advice.primary_domain}'s mail provider",
            [f"{left} -> {right}" for left, right in advice.forwarding],
        ),
    ]
    for title, items in sections:
        if items:
            lines += ["", f"{title}:", *(f"  {item}" for item in items)]
    return "\n".join(lines)


def _check(store, args) -> None:
    from atollon_mail.dns.checks import failed, run_checks
    from atollon_mail.dns.lookup import Lookups

    config = _config(args)
    subject = store.run_sync(domains.dns_subject, args.domain)
    results = run_checks(subject, config, Lookups.using(config.delivery.nameservers))
    failures = failed(results)
    if args.json:
        report = {
            "domain": subject.domain.name,
            "ok": not failures,
            "results": [attrs.asdict(result) for result in results],
        }
        out(json.dumps(report, indent=2))
    else:
        for result in results:
            out(f"{result.status:<4}  {result.check}: {result.reason}")
    if failures:
        raise Refused(
            f"{len(failures)} of {len(results)} DNS checks of {subject.domain.name} failed"
        )


def _dkim_activate(store, args) -> None:
    """Key rotation's last step. Refused unless the live DNS check of the new key passes:
    a key receivers cannot find makes every signature fail. There is no override: the
    check asks the resolvers this appliance uses, and a lookup that fails for a while is
    a reason to try again later, not to sign with a key nobody can verify."""
    from atollon_mail.dns.checks import PASS, check_dkim_key
    from atollon_mail.dns.lookup import Lookups

    config = _config(args)
    key = store.run_sync(domains.dkim_key, args.domain, args.selector)
    if key.state == "active":
        raise Refused(f"the DKIM key {key.selector} of {key.domain} signs already")
    published = PublishedKey(key.domain, key.selector, key.algorithm, key.public_key, key.state)
    result = check_dkim_key(published, Lookups.using(config.delivery.nameservers))
    if result.status != PASS:
        raise Refused(f"{key.selector} is not activated: {result.reason}")
    activation = store.run_sync(domains.activate_dkim_key, key.domain, key.selector)
    out(
        f"mail from {key.domain} is signed with {key.selector} ({key.algorithm}) from now on "
        "(a running server picks it up within a minute)"
    )
    retention = datetime.timedelta(seconds=config.delivery.dkim_key_retention)
    for old in activation.retired:
        out(
            f"{old.selector} is retired: keep its DNS record published until it is removed "
            f"after {old.retired_at + retention:%Y-%m-%d %H:%M} UTC "
            f"(see: {PROGRAM} dkim list)"
        )


def register(commands) -> None:
    dns = commands("dns", "the DNS records of the domains: what to publish, and whether it is")
    records = dns.add_parser(
        "records",
        help="print the records a domain needs, merged with what it publishes now",
    )
    records.add_argument("domain", metavar="DOMAIN")
    records.add_argument(
        "--format",
        choices=("zone", "table", "json"),
        default="zone",
        help="zone-file lines (default), an aligned table, or JSON",
    )
    records.set_defaults(handler=_records)
    check = dns.add_parser(
        "check", help="check a domain's published records now (exit status 1 if one fails)"
    )
    check.add_argument("domain", metavar="DOMAIN")
    check.add_argument("--json", action="store_true", help="the results as JSON")
    check.set_defaults(handler=_check)
    dkim = commands("dkim", "the DKIM keys outgoing mail is signed with")
    activate = dkim.add_parser(
        "activate",
        help="sign with a new key (made by dkim generate) once DNS publishes it; the key "
        "it replaces is kept for [delivery] dkim_key_retention",
    )
    activate.add_argument("domain", metavar="DOMAIN")
    activate.add_argument("selector", metavar="SELECTOR")
    activate.set_defaults(handler=_dkim_activate)
