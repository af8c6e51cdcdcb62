"""Admin commands: the DKIM keys outgoing mail is signed with (`dkim generate`, `list`,
`show`; `dkim activate`, which checks DNS first, is with the DNS commands)."""

from __future__ import annotations

import datetime

from atollon_mail.commands.output import PROGRAM, Refused, out, table
from atollon_mail.config import default_config_path, load_config
from atollon_mail.store import common, domains
from atollon_mail.store.domains import all_dkim_keys


def _dkim_generate(store, args) -> None:
    # Imported here: the DKIM libraries are not needed by the other commands.
    from atollon_mail.delivery import dkim

    selector = args.selector or dkim.DEFAULT_SELECTOR
    # Generated before the transaction: an RSA key takes a while to make.
    private_key, public_key = dkim.generate_key(args.algorithm)
    key = store.run_sync(
        domains.add_dkim_key, args.domain, selector, args.algorithm, private_key, public_key
    )
    out(f"added DKIM key {key.selector} for {key.domain} ({key.algorithm})")
    out(f"publish this TXT record in the DNS of {key.domain}:")
    out(dkim.zone_record(key.selector, key.domain, key.algorithm, key.public_key))
    if key.state == "pending":  # a key rotation: the domain signs with another key now
        out(
            f"mail from {key.domain} is still signed with its current {key.algorithm} key; "
            f"once the record is published, switch with: "
            f"{PROGRAM} dkim activate {key.domain} {key.selector}"
        )
        return
    out(
        f"mail from {key.domain} is signed with it from now on; "
        f"show the record again with: {PROGRAM} dkim show {key.domain}"
    )


def _dkim_list(store, args) -> None:
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
    out(table(("DOMAIN", "SELECTOR", "ALGORITHM", "STATE"), rows))


def _dkim_show(store, args) -> None:
    from atollon_mail.delivery import dkim

    name = common.normalize_domain_name(args.domain)
    if name not in {domain.name for domain in store.run_sync(domains.list_domains)}:
        raise Refused(f"no domain {name}; add it with: {PROGRAM} domain add {name}")
    # Every key: pending ones are to be published, retired ones kept a while.
    keys = store.run_sync(all_dkim_keys, name)
    if not keys:
        raise Refused(f"{name} has no DKIM key; make one with: {PROGRAM} dkim generate {name}")
    for key in keys:
        out(dkim.zone_record(key.selector, key.domain, key.algorithm, key.public_key))


def register(commands) -> None:
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
