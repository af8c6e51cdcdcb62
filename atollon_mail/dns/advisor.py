"""The DNS records a domain needs, merged with what it publishes now.

Primary mode: the domain (acme.com) receives here, so its MX names this appliance, and its
mailboxes send as it. Secondary mode: a subdomain (crm.acme.com) receives here, mail for
name@acme.com stays with acme.com's own provider, which forwards each mailbox to
name@crm.acme.com; the mailboxes send as name@acme.com, so acme.com's SPF, DKIM and DMARC
must name this appliance.

`advise` reads the published SPF and DMARC records through `Lookups` (blocking).
"""

from __future__ import annotations

import hashlib
import ipaddress

import attrs

from atollon_mail.config import Config, hostname_problem
from atollon_mail.delivery import dkim
from atollon_mail.discovery import IMPLICIT_TLS, client_services
from atollon_mail.dns import spfrecord
from atollon_mail.dns.dmarcrecord import dmarc_tags
from atollon_mail.dns.lookup import LookupFailed, Lookups, reverse_name
from atollon_mail.store.records import DnsSubject

TTL = 3600
MAX_TXT_STRING = 255
MTA_STS_MAX_AGE = 604800

MICROSOFT_365_NOTE = (
    "Microsoft 365 forwards to outside addresses only when automatic external forwarding "
    "is on: in the Microsoft Defender portal, edit the outbound spam filter policy and set "
    'automatic forwarding from "Automatic - System-controlled" to "On - Forwarding is '
    'enabled".'
)


@attrs.frozen
class ProposedRecord:
    name: str  # the owner name, without the final dot
    type: str  # MX, A, AAAA, PTR, TXT, CNAME, SRV
    value: str  # presentation form; a TXT value is its whole text, unquoted
    purpose: str  # one line: what it is for, where it goes

    def zone_line(self) -> str:
        if self.type == "TXT":
            data = _quoted(self.value)
        else:
            data = self.value
        return f"{self.name}. {TTL} IN {self.type} {data}"


@attrs.frozen
class Advice:
    domain: str
    mode: str
    primary_domain: str | None
    receiving_domain: str | None  # whose MX names this appliance (None: not ours)
    sending_domains: tuple[str, ...]
    records: tuple[ProposedRecord, ...]
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    forwarding: tuple[tuple[str, str], ...]  # (address at the other provider, ours)
    # Secondary mode: the servers that forward the primary domain's mail here, as
    # (host name or network, what is known of it): configured in [inbound]
    # trusted_forwarders, or seen as the primary domain's MX (trusted or not).
    trusted_forwarders: tuple[tuple[str, str], ...] = ()


def _quoted(value: str) -> str:
    encoded = value.encode("utf-8")
    chunks = [encoded[i : i + MAX_TXT_STRING] for i in range(0, len(encoded), MAX_TXT_STRING)]
    parts = []
    for chunk in chunks or [b""]:
        text = chunk.decode("utf-8", "replace").replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'"{text}"')
    return " ".join(parts)


def _organizational(domain: str) -> str:
    # The last two labels: near enough for telling "the same organization" apart here.
    return ".".join(domain.split(".")[-2:])


class _Builder:
    def __init__(self, subject: DnsSubject, config: Config, lookups: Lookups | None):
        self.subject = subject
        self.config = config
        self.lookups = lookups
        self.records: list[ProposedRecord] = []
        self.warnings: list[str] = []
        self.notes: list[str] = []

    def add(self, name: str, kind: str, value: str, purpose: str) -> None:
        self.records.append(ProposedRecord(name, kind, value, purpose))

    def _txt(self, name: str) -> list[str] | None:
        if self.lookups is None:
            return []
        try:
            return self.lookups.txt(name)
        except LookupFailed as problem:
            self.warnings.append(
                f"could not read the published TXT records of {name} ({problem}): the "
                "proposal assumes there are none; look before replacing anything"
            )
            return None

    def receiving(self, domain: str) -> None:
        hostname = self.config.appliance.hostname
        self.add(domain, "MX", f"10 {hostname}.", f"mail for {domain} comes to this appliance")
        if self.subject.domain.mode == "primary":
            self.notes.append(
                f"remove every other MX record of {domain}: a lower number would take the "
                "mail first, an equal one would share it"
            )

    def appliance_host(self) -> None:
        appliance = self.config.appliance
        hostname = appliance.hostname
        addresses = [(a, "A") for a in [appliance.public_ipv4] if a] + [
            (a, "AAAA") for a in [appliance.public_ipv6] if a
        ]
        for address, kind in addresses:
            self.add(
                hostname, kind, address, f"this appliance's address, in the zone of {hostname}"
            )
        for address, _ in addresses:
            self.add(
                reverse_name(address),
                "PTR",
                f"{hostname}.",
                f"reverse DNS of {address}: set by the provider of the address, not in "
                "your zone; receivers compare it with the host name",
            )
        if not addresses:
            self.warnings.append(
                f"no public address is configured ([appliance] public_ipv4, public_ipv6): "
                f"the A, AAAA and PTR records of {hostname} cannot be proposed; set them "
                "in the configuration file"
            )

    def spf(self, domain: str) -> None:
        config = self.config
        ours = spfrecord.our_terms(
            config.appliance.hostname,
            config.dns.spf_include,
            config.appliance.public_ipv4,
            config.appliance.public_ipv6,
            receives_here=self.subject.hosted and domain == self.subject.domain.name,
        )
        published = self._txt(domain)
        existing = [text for text in published or [] if spfrecord.is_spf(text)]
        merged = spfrecord.merge(existing, ours, domain)
        self.warnings.extend(merged.warnings)
        if not existing:
            purpose = f"SPF: {domain} publishes none; this one lets only this appliance send"
        elif merged.unchanged:
            purpose = "SPF: the published record lets this appliance send already; keep it"
        else:
            purpose = (
                f"SPF: the published record with {' '.join(merged.added)} added; "
                "publish it instead of the one there now"
            )
        self.add(domain, "TXT", merged.record, purpose)
        if self.lookups is None:
            return
        try:
            counted = spfrecord.count_lookups(merged.record, self.lookups.txt)
        except LookupFailed as problem:
            self.warnings.append(f"could not count the DNS lookups of {domain}'s SPF: {problem}")
            return
        if counted.count > spfrecord.MAX_LOOKUPS:
            self.warnings.append(
                f"the SPF record of {domain} needs {counted.count} DNS lookups, over the "
                f"limit of {spfrecord.MAX_LOOKUPS} (RFC 7208): receivers answer permerror; "
                "drop includes that are no longer used, or replace some with ip4:/ip6:"
            )
        for target in counted.unreadable:
            self.warnings.append(
                f"{target}, included by the SPF record of {domain}, does not publish exactly "
                "one SPF record: receivers answer permerror"
            )

    def dkim(self) -> None:
        keys = self.subject.dkim_keys
        purposes = {
            "active": "the public key that signs mail from {domain}",
            "pending": "the next key of {domain}; activate it once this is published",
            "retired": "a replaced key of {domain}, kept until it is removed",
        }
        for key in keys:
            purpose = purposes.get(key.state, purposes["active"]).format(domain=key.domain)
            self.add(
                f"{key.selector}._domainkey.{key.domain}",
                "TXT",
                dkim.txt_value(key.algorithm, key.public_key),
                f"DKIM: {purpose}",
            )
        signed = {key.domain for key in keys}
        for domain in self.subject.sending_domains:
            if domain not in signed:
                self.warnings.append(
                    f"{domain} has no DKIM key: make one with: atollon-mail dkim generate "
                    f"{domain}, then publish the record shown here"
                )

    def dmarc(self, domain: str) -> None:
        name = f"_dmarc.{domain}"
        published = [
            text
            for text in self._txt(name) or []
            if text.replace(" ", "").lower().startswith("v=dmarc1")
        ]
        if len(published) == 1 and dmarc_tags(published[0]) is not None:
            tags = dmarc_tags(published[0])
            purpose = "DMARC: published already; keep it"
            if tags["p"].lower() == "none":
                purpose += " (p=none only reports: move to p=quarantine once they are clean)"
            self.add(name, "TXT", published[0], purpose)
            return
        if published:
            self.warnings.append(
                f"{name} publishes {len(published)} DMARC record(s) that receivers cannot "
                "use: replace them with the one proposed"
            )
        value = "v=DMARC1; p=none"
        report = self.config.dns.dmarc_report_address
        if report:
            value += f"; rua=mailto:{report}"
            report_domain = report.rpartition("@")[2].lower()
            if _organizational(report_domain) != _organizational(domain):
                self.notes.append(
                    f"DMARC reports for {domain} go to {report_domain}, which must allow it: "
                    f'{domain}._report._dmarc.{report_domain}. TXT "v=DMARC1" (RFC 7489 7.1)'
                )
        self.add(
            name,
            "TXT",
            value,
            "DMARC: p=none starts with reports only; move to p=quarantine once they show "
            "only your own servers sending",
        )

    def mta_sts(self, domain: str) -> None:
        hostname = self.config.appliance.hostname
        policy = f"version: STSv1\nmode: testing\nmx: {hostname}\nmax_age: {MTA_STS_MAX_AGE}\n"
        policy_id = hashlib.sha256(policy.encode()).hexdigest()[:20]
        self.add(
            f"_mta-sts.{domain}",
            "TXT",
            f"v=STSv1; id={policy_id}",
            "MTA-STS: senders fetch the policy; change id whenever the policy changes",
        )
        self.add(
            f"mta-sts.{domain}",
            "CNAME",
            f"{hostname}.",
            f"MTA-STS: the web server that serves https://mta-sts.{domain}/.well-known/mta-sts.txt",
        )
        report = self.config.dns.dmarc_report_address or f"postmaster@{domain}"
        self.add(
            f"_smtp._tls.{domain}",
            "TXT",
            f"v=TLSRPTv1; rua=mailto:{report}",
            "TLS-RPT: where senders report failed TLS deliveries",
        )
        self.notes.append(
            f"MTA-STS: serve this file at https://mta-sts.{domain}/.well-known/mta-sts.txt "
            f"with a certificate valid for mta-sts.{domain} (lines separated by |): "
            + " | ".join(policy.strip().split("\n"))
            + "; switch mode to enforce once TLS reports are clean"
        )

    def secondary(self) -> tuple[tuple[str, str], ...]:
        subject = self.subject
        domain = subject.domain.name
        primary = subject.domain.primary_domain
        if primary is None:
            self.warnings.append(
                f"{domain} is a secondary domain without a primary domain recorded: its "
                f"mailboxes send as name@{domain}"
            )
            return ()
        self.notes.append(
            f"secondary mode: mail for {primary} stays with its own provider, which must "
            f"forward each mailbox below to its address at {domain}"
        )
        if not subject.forwards:
            self.notes.append(
                f"no active mailbox in {domain} sends as {primary} yet: add mailboxes, then "
                "print these records again for the forwarding list"
            )
        self.notes.append(MICROSOFT_365_NOTE)
        return subject.forwards

    def forwarders(self, domain: str, primary: str) -> tuple[tuple[str, str], ...]:
        """The forwarders of a secondary domain: those configured for it (or for its
        primary domain, or for all), and the primary domain's MX hosts, which forward
        its mailboxes here and must be trusted for their forwarded mail to pass."""
        inbound = self.config.inbound
        configured = tuple(
            dict.fromkeys(inbound.forwarders_for(domain) + inbound.forwarders_for(primary))
        )
        listed = [
            (entry, "trusted forwarder ([inbound] trusted_forwarders)") for entry in configured
        ]
        networks = [ipaddress.ip_network(entry) for entry in configured if "/" in entry]
        hosts: list[str] = []
        if self.lookups is not None:
            try:
                hosts = [host for _, host in self.lookups.mx(primary)]
            except LookupFailed as problem:
                self.warnings.append(f"could not read the MX of {primary}: {problem}")
        untrusted = []
        for host in hosts:
            if not host or host == self.config.appliance.hostname or host in configured:
                continue
            try:
                addresses = self.lookups.addresses(host, "A") + self.lookups.addresses(host, "AAAA")
            except LookupFailed:
                addresses = []
            if any(
                ipaddress.ip_address(address) in network
                for address in addresses
                for network in networks
                if ipaddress.ip_address(address).version == network.version
            ):
                listed.append((host, f"MX of {primary}, a trusted forwarder by its address"))
                continue
            listed.append((host, f"MX of {primary}, not a trusted forwarder"))
            untrusted.append(host)
        if untrusted:
            self.warnings.append(
                f"{', '.join(untrusted)} (the MX of {primary}) forwards mail for {primary} "
                f"here but is not a trusted forwarder: add it to [inbound] "
                f"trusted_forwarders.{domain}, or the mail it forwards fails SPF here and "
                "DMARC may send it to Junk"
            )
        return tuple(listed)

    def mail_clients(self, domain: str) -> None:
        """RFC 6186 SRV records, so mail clients find the reading and sending servers from
        an address alone, and the autoconfig host name Thunderbird asks."""
        services = client_services(self.config)
        hostname = services.hostname
        labels = {"imap": "IMAP (reading mail)", "smtp": "submission (sending mail)"}
        for service in services.services:
            how = "implicit TLS" if service.socket_type == IMPLICIT_TLS else "STARTTLS"
            what = f"{labels[service.kind]} with {how} on port {service.port}"
            if service.offered:
                purpose = f"mail clients find {what} here (RFC 6186)"
            else:
                purpose = (
                    f"{what} is not offered, and this record tells mail clients not to try "
                    f"it (RFC 6186); to offer it, {service.why_not} and publish the record "
                    "proposed then"
                )
            self.add(f"{service.srv}.{domain}", "SRV", services.srv_value(service), purpose)
        self.add(
            f"autoconfig.{domain}",
            "CNAME",
            f"{hostname}.",
            f"Thunderbird asks https://autoconfig.{domain}/mail/config-v1.1.xml for the "
            "settings of an address; this appliance's web service answers it",
        )
        self.notes.append(
            f"autoconfig: the web server that answers for {hostname} must answer for "
            f"autoconfig.{domain} too (HTTPS, with a certificate valid for that name) and "
            "pass /mail/config-v1.1.xml to this appliance's web service"
        )

    def build(self) -> Advice:
        subject = self.subject
        domain = subject.domain.name
        forwarding: tuple[tuple[str, str], ...] = ()
        forwarders: tuple[tuple[str, str], ...] = ()
        # A name like localhost cannot be anyone's MX, A or PTR target: say so instead.
        problem = hostname_problem(self.config.appliance)
        if problem:
            self.warnings.append(f"{problem}; until then no MX, A, AAAA or PTR is proposed")
        if subject.hosted:
            if not problem:
                self.receiving(domain)
        else:
            below = ", ".join(subject.secondaries)
            self.notes.append(
                f"{domain} receives its mail at its own provider; this appliance receives "
                f"for {below} (see: atollon-mail dns records {subject.secondaries[0]})"
            )
        if not problem:
            self.appliance_host()
        if subject.domain.mode == "secondary":
            forwarding = self.secondary()
            if subject.domain.primary_domain:
                forwarders = self.forwarders(domain, subject.domain.primary_domain)
        for sending in subject.sending_domains:
            self.spf(sending)
        self.dkim()
        for sending in subject.sending_domains:
            self.dmarc(sending)
        if self.config.dns.mta_sts and subject.hosted and not problem:
            self.mta_sts(domain)
        if subject.hosted and not problem:
            self.mail_clients(domain)
        return Advice(
            domain=domain,
            mode=subject.domain.mode,
            primary_domain=subject.domain.primary_domain,
            receiving_domain=domain if subject.hosted else None,
            sending_domains=subject.sending_domains,
            records=tuple(self.records),
            warnings=tuple(self.warnings),
            notes=tuple(self.notes),
            forwarding=forwarding,
            trusted_forwarders=forwarders,
        )


def advise(subject: DnsSubject, config: Config, lookups: Lookups | None) -> Advice:
    """The records subject's domain needs; without lookups nothing published is read."""
    return _Builder(subject, config, lookups).build()


# --- output ---------------------------------------------------------------------------------


def zone_text(advice: Advice) -> str:
    """Zone-file lines; everything that is not a record is a comment, so the whole text
    can be pasted into a zone file."""
    lines = [f"; DNS records for {advice.domain} ({_mode_label(advice)})"]
    for record in advice.records:
        lines.append(f"; {record.purpose}")
        lines.append(record.zone_line())
    lines.extend(_comment_block("warnings", [f"! {w}" for w in advice.warnings]))
    lines.extend(_comment_block("notes", advice.notes))
    lines.extend(
        _comment_block(
            f"servers forwarding mail for {advice.primary_domain} here",
            [f"{forwarder}: {known}" for forwarder, known in advice.trusted_forwarders],
        )
    )
    if advice.forwarding:
        lines.extend(
            _comment_block(
                f"forwarding to set up at {advice.primary_domain}'s mail provider",
                [f"{left} -> {right}" for left, right in advice.forwarding],
            )
        )
    return "\n".join(lines)


def _mode_label(advice: Advice) -> str:
    if advice.mode == "secondary" and advice.primary_domain:
        return f"secondary mode, mailboxes send as name@{advice.primary_domain}"
    if advice.receiving_domain is None:
        return "the primary domain of secondary domains here; its mail is received elsewhere"
    return f"{advice.mode} mode"


def _comment_block(title: str, items) -> list[str]:
    if not items:
        return []
    return [";", f"; {title}:", *(f";   {item}" for item in items)]


def advice_json(advice: Advice) -> dict:
    return {
        "domain": advice.domain,
        "mode": advice.mode,
        "primary_domain": advice.primary_domain,
        "receiving_domain": advice.receiving_domain,
        "sending_domains": list(advice.sending_domains),
        "records": [
            {
                "name": record.name,
                "type": record.type,
                "ttl": TTL,
                "value": record.value,
                "purpose": record.purpose,
                "zone": record.zone_line(),
            }
            for record in advice.records
        ],
        "warnings": list(advice.warnings),
        "notes": list(advice.notes),
        "forwarding": [{"from": left, "to": right} for left, right in advice.forwarding],
        "trusted_forwarders": [
            {"forwarder": forwarder, "known": known}
            for forwarder, known in advice.trusted_forwarders
        ],
    }
