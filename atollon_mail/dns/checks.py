"""Live checks of what a domain publishes, each ending in pass, warn or fail with one
sentence a person can act on.

The checks block on DNS (dnspython, and pyspf for the SPF evaluation): run them in a
thread pool, never on the reactor thread. A lookup that gets no answer makes its check
fail with `temporary` set: the outcome is unknown, not known to be bad.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from atollon_mail.config import Config, hostname_problem
from atollon_mail.dns import spfrecord
from atollon_mail.dns.dmarcrecord import dmarc_tags
from atollon_mail.dns.lookup import LookupFailed, Lookups, spf_evaluate
from atollon_mail.store.records import DnsCheckResult, DnsSubject, PublishedKey

PASS, WARN, FAIL = "pass", "warn", "fail"


def _same_address(left: str, right: str) -> bool:
    try:
        return ipaddress.ip_address(left) == ipaddress.ip_address(right)
    except ValueError:
        return False


def _dkim_tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            tags.setdefault(name.strip().lower(), "".join(value.split()))
    return tags


class _Checker:
    def __init__(self, subject: DnsSubject, config: Config, lookups: Lookups):
        self.subject = subject
        self.config = config
        self.lookups = lookups
        self.hostname = config.appliance.hostname
        self.results: list[DnsCheckResult] = []
        self.records_hint = f"see: atollon-mail dns records {subject.domain.name}"

    def run(self) -> list[DnsCheckResult]:
        subject = self.subject
        if subject.hosted:
            self.check(f"mx {subject.domain.name}", self.mx, subject.domain.name)
        self.addresses()
        for address in self.our_addresses():
            self.check(f"ptr {address}", self.ptr, address)
        for domain in subject.sending_domains:
            self.check(f"spf {domain}", self.spf, domain)
            self.check(f"spf lookups {domain}", self.spf_lookups, domain)
        signed = set()
        for key in subject.dkim_keys:
            signed.add(key.domain)
            self.check(f"dkim {key.selector}._domainkey.{key.domain}", self.dkim, key)
        for domain in subject.sending_domains:
            if domain not in signed:
                self.results.append(
                    DnsCheckResult(
                        f"dkim {domain}",
                        WARN,
                        f"{domain} has no DKIM key, so its mail goes out unsigned: make one "
                        f"with: atollon-mail dkim generate {domain}",
                    )
                )
        for domain in subject.sending_domains:
            self.check(f"dmarc {domain}", self.dmarc, domain)
        return self.results

    def check(self, name: str, check: Callable, *args) -> None:
        try:
            outcome = check(*args)
        except LookupFailed as problem:
            self.results.append(
                DnsCheckResult(
                    name,
                    FAIL,
                    f"could not be checked: {problem}; check again later, and if it keeps "
                    "failing the DNS servers involved need attention",
                    temporary=True,
                )
            )
            return
        if outcome is not None:
            status, reason = outcome
            self.results.append(DnsCheckResult(name, status, reason))

    # -- receiving -------------------------------------------------------------------------

    def mx(self, domain: str):
        hostname = self.hostname
        problem = hostname_problem(self.config.appliance)
        if problem:
            return FAIL, problem
        fix = f"publish: {domain}. MX 10 {hostname}."
        records = self.lookups.mx(domain)
        if not records:
            if domain.lower() in self.lookups.nxdomain:
                return FAIL, f"{domain} does not exist in the DNS: {fix}"
            return FAIL, f"{domain} has no MX record, so no mail reaches this appliance: {fix}"
        if any(host == "" for _, host in records):
            return FAIL, f"{domain} publishes a null MX (it accepts no mail): replace it; {fix}"
        ours = [preference for preference, host in records if host == hostname]
        others = [(preference, host) for preference, host in records if host != hostname]
        if not ours:
            hosts = ", ".join(host for _, host in records)
            return FAIL, f"the MX of {domain} is {hosts}, not {hostname}: {fix}"
        best = min(ours)
        ahead = [host for preference, host in others if preference < best]
        if ahead:
            status = FAIL if self.subject.domain.mode == "primary" else WARN
            return status, (
                f"{', '.join(ahead)} outranks {hostname} in the MX of {domain} (a lower "
                f"number than {best}), so mail goes there first: remove it, or give it a "
                f"number above {best}"
            )
        sharing = [host for preference, host in others if preference == best]
        if sharing:
            return WARN, (
                f"{', '.join(sharing)} has the same MX number as {hostname} ({best}) in "
                f"{domain}, so it gets part of the mail: remove it, or give it a higher number"
            )
        backups = f" (backup: {', '.join(host for _, host in others)})" if others else ""
        return PASS, f"the MX of {domain} is {hostname}{backups}"

    # -- the appliance's host name and addresses -------------------------------------------

    def configured(self) -> list[tuple[str, str]]:
        appliance = self.config.appliance
        found = [("A", appliance.public_ipv4), ("AAAA", appliance.public_ipv6)]
        return [(kind, address) for kind, address in found if address]

    def our_addresses(self) -> list[str]:
        """The configured public addresses, else what the host name resolves to."""
        configured = self.configured()
        if configured:
            return [address for _, address in configured]
        try:
            return self.lookups.addresses(self.hostname, "A") + self.lookups.addresses(
                self.hostname, "AAAA"
            )
        except LookupFailed:
            return []  # the address check reports it

    def addresses(self) -> None:
        hostname = self.hostname
        configured = self.configured()
        for kind, address in configured:
            self.check(f"address {hostname} {kind}", self.address, kind, address)
        if not configured:
            self.check(f"address {hostname}", self.any_address)

    def address(self, kind: str, address: str):
        hostname = self.hostname
        found = self.lookups.addresses(hostname, kind)
        fix = f"publish: {hostname}. {kind} {address}"
        if not found:
            return FAIL, f"{hostname} has no {kind} record: {fix}"
        if not any(_same_address(address, other) for other in found):
            return FAIL, (
                f"{hostname} resolves to {', '.join(found)}, not the configured {address}: "
                f"correct its {kind} record, or the address in the configuration"
            )
        extra = [other for other in found if not _same_address(address, other)]
        if extra:
            return WARN, (
                f"{hostname} resolves to {address} and also to {', '.join(extra)}, which is "
                "not this appliance: remove it, or receivers may reach another machine"
            )
        return PASS, f"{hostname} resolves to {address}"

    def any_address(self):
        hostname = self.hostname
        found = self.lookups.addresses(hostname, "A") + self.lookups.addresses(hostname, "AAAA")
        if not found:
            return FAIL, f"{hostname} does not resolve to any address: publish its A record"
        return WARN, (
            f"{hostname} resolves to {', '.join(found)}; set [appliance] public_ipv4 (and "
            "public_ipv6) in the configuration so it can be compared"
        )

    def ptr(self, address: str):
        hostname = self.hostname
        names = self.lookups.ptr(address)
        ask = f"ask the provider of {address} to set its reverse DNS (PTR) to {hostname}"
        if not names:
            return FAIL, f"{address} has no PTR record, and many receivers refuse such mail: {ask}"
        if hostname not in names:
            return FAIL, f"the PTR of {address} is {', '.join(names)}, not {hostname}: {ask}"
        kind = "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
        forward = self.lookups.addresses(hostname, kind)
        if not any(_same_address(address, other) for other in forward):
            return FAIL, (
                f"the PTR of {address} is {hostname}, but {hostname} does not resolve back to "
                f"{address}: publish {hostname}. {kind} {address}"
            )
        return PASS, f"the PTR of {address} is {hostname}, which resolves back to it"

    # -- sending ---------------------------------------------------------------------------

    def spf_records(self, domain: str) -> list[str]:
        return [text for text in self.lookups.txt(domain) if spfrecord.is_spf(text)]

    def spf(self, domain: str):
        records = self.spf_records(domain)
        if not records:
            return FAIL, (
                f"{domain} publishes no SPF record, so receivers cannot tell this appliance "
                f"may send as it: publish one ({self.records_hint})"
            )
        if len(records) > 1:
            return FAIL, (
                f"{domain} publishes {len(records)} SPF records, which receivers treat as an "
                f"error: merge them into one ({self.records_hint})"
            )
        addresses = self.our_addresses()
        if not addresses:
            return WARN, (
                f"no address of this appliance is known to test the SPF record of {domain} "
                "with: set [appliance] public_ipv4 in the configuration"
            )
        for address in addresses:
            result, explanation = spf_evaluate(
                self.lookups.resolver, address, f"postmaster@{domain}", self.hostname
            )
            if result == "temperror":
                raise LookupFailed(f"the SPF evaluation of {domain} got no answer: {explanation}")
            if result == "permerror":
                return FAIL, (
                    f"the SPF record of {domain} is invalid ({explanation}): receivers ignore "
                    f"it; correct it ({self.records_hint})"
                )
            if result != "pass":
                return FAIL, (
                    f"the SPF record of {domain} gives {result} for this appliance's address "
                    f"{address}: add this appliance to it ({self.records_hint})"
                )
        return PASS, f"the SPF record of {domain} lets {', '.join(addresses)} send"

    def spf_lookups(self, domain: str):
        records = self.spf_records(domain)
        if len(records) != 1:
            return None  # the SPF check says what is wrong
        counted = spfrecord.count_lookups(records[0], self.lookups.txt)
        limit = spfrecord.MAX_LOOKUPS
        if counted.count > limit:
            return FAIL, (
                f"the SPF record of {domain} needs {counted.count} DNS lookups, over the limit "
                f"of {limit}, so receivers may answer permerror: drop includes no longer used, "
                "or replace some with ip4:/ip6:"
            )
        if counted.unreadable:
            return WARN, (
                f"{', '.join(counted.unreadable)}, included by the SPF record of {domain}, "
                "does not publish exactly one SPF record: remove the include or fix it there"
            )
        return PASS, f"the SPF record of {domain} needs {counted.count} of at most {limit} lookups"

    def dkim(self, key: PublishedKey):
        status, reason = _dkim_outcome(self.lookups, key)
        if status == FAIL and key.state == "retired":
            # Replaced already: only mail signed before the change still needs it.
            return WARN, (
                f"{reason} (the key {key.selector} is retired: mail signed with it before "
                "the change still needs it until atollon-mail removes it)"
            )
        return status, reason

    def dmarc(self, domain: str):
        name = f"_dmarc.{domain}"
        published = [
            text
            for text in self.lookups.txt(name)
            if text.replace(" ", "").lower().startswith("v=dmarc1")
        ]
        if not published:
            return FAIL, (
                f"{domain} publishes no DMARC record: publish {name} TXT with "
                f'"v=DMARC1; p=none" to start ({self.records_hint})'
            )
        if len(published) > 1:
            return FAIL, (
                f"{name} has {len(published)} DMARC records, so receivers ignore them all: keep one"
            )
        tags = dmarc_tags(published[0])
        if tags is None:
            return FAIL, (
                f"the DMARC record of {domain} cannot be read: it must start with v=DMARC1 "
                "and give p=none, quarantine or reject"
            )
        policy = tags["p"].lower()
        if policy == "none":
            return PASS, (
                f"{domain} publishes DMARC with p=none (reports only): move to p=quarantine "
                "once the reports show only your own servers"
            )
        return PASS, f"{domain} publishes DMARC with p={policy}"


def _dkim_outcome(lookups: Lookups, key: PublishedKey) -> tuple[str, str]:
    """Whether the key's TXT record publishes it (blocking; may raise LookupFailed)."""
    name = f"{key.selector}._domainkey.{key.domain}"
    show = f"atollon-mail dkim show {key.domain}"
    published = [_dkim_tags(text) for text in lookups.txt(name)]
    published = [tags for tags in published if "p" in tags]
    if not published:
        return FAIL, (
            f"{name} publishes no DKIM key, so receivers cannot verify mail from "
            f"{key.domain}: publish the record shown by: {show}"
        )
    for tags in published:
        if tags["p"] == key.public_key and tags.get("k", "rsa").lower() == key.algorithm:
            if key.state == "pending":
                return PASS, f"{name} publishes the key {key.selector}, ready to be activated"
            return PASS, f"{name} publishes the key mail from {key.domain} is signed with"
    if any(tags["p"] == "" for tags in published):
        return FAIL, f"{name} publishes a revoked key (empty p=): publish the record of: {show}"
    return FAIL, (
        f"{name} publishes another key than the one mail from {key.domain} is signed with: "
        f"replace it with the record shown by: {show}"
    )


def check_dkim_key(key: PublishedKey, lookups: Lookups) -> DnsCheckResult:
    """The live check of one key's record, as `dns check` makes it (blocking)."""
    name = f"dkim {key.selector}._domainkey.{key.domain}"
    try:
        status, reason = _dkim_outcome(lookups, key)
    except LookupFailed as problem:
        return DnsCheckResult(
            name, FAIL, f"could not be checked: {problem}; check again later", temporary=True
        )
    return DnsCheckResult(name, status, reason)


def run_checks(subject: DnsSubject, config: Config, lookups: Lookups) -> list[DnsCheckResult]:
    """Every check of subject's domain, in a fixed order (blocking)."""
    return _Checker(subject, config, lookups).run()


def failed(results) -> list[DnsCheckResult]:
    return [result for result in results if result.status == FAIL]
