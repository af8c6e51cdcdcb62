"""The inbound checks of port 25 (IInboundChecks): what the MX policy asks at the end of
DATA, before it answers 250.

One check per message:

1. Sender authentication (inbound.authentication: SPF, DKIM, ARC, DMARC) in the DNS
   worker pool, with the client's DNS blocklist listings ([inbound] dnsbl_zones) when no
   spam filter is configured.
2. The spam filter, when one is given (an object with `check(request)` answering a
   Deferred SpamResult, the rspamd client), at the same time.
3. The decision:
   - DMARC failing with p=reject: [inbound] dmarc_reject (reject: 550 5.7.1 at end of
     DATA, nothing stored; junk; tag: only told). Failing with p=quarantine:
     [inbound] dmarc_quarantine (junk or tag).
   - A From: address in one of our own domains, from outside (not a relay host, not a
     trusted forwarder), that DMARC-style authentication does not pass: the same action
     as dmarc_reject; a DNS failure that leaves it open: 451 4.4.3.
   - From a trusted forwarder a DMARC failure is never refused (it would bounce from the
     forwarder to a sender who may be forged): at most it goes to Junk.
   - The spam filter: reject -> 550 5.7.1, soft reject/greylist -> 451 4.7.1, add
     header/rewrite subject -> Junk; a filter that failed -> 451 4.7.1 (the client keeps
     the message); not scanned (down or slow, and told to accept) -> tagged so.
   - Without a spam filter, the built-in score (blocklists and cheap heuristics, each
     symbol below): at [inbound] junk_score or more -> Junk.

The message is stored with one Authentication-Results header (our host name as
authserv-id) and an X-Spam-Status header prepended; any Authentication-Results claiming
our authserv-id and any X-Spam-Status that came with it are removed first (RFC 8601
section 5): only we say what we checked.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
import dns.exception
import dns.resolver
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from atollon_mail.config import InboundConfig
from atollon_mail.inbound import dnsbl
from atollon_mail.inbound.authentication import (
    Authentication,
    Forwarder,
    SpfResults,
    authenticate,
    helo_domain,
    organizational_domain,
)
from atollon_mail.inbound.headers import Field, authserv_id, fields, remove_fields
from atollon_mail.inbound.rspamd import SpamFilterUnavailable, SpamQuery
from atollon_mail.interfaces import IInboundChecks
from atollon_mail.metrics import counting
from atollon_mail.store import domains as domain_ops
from atollon_mail.store.records import InboundVerdict

__all__ = [
    "Found",
    "InboundChecks",
    "InboundDecision",
    "Refusal",
    "builtin_symbols",
    "find",
    "spam_status",
]

log = Logger()

# How long the list of our domains and a trusted forwarder's resolved addresses are kept.
DOMAIN_REFRESH_SECONDS = 60.0
FORWARDER_ADDRESS_SECONDS = 300.0
FORWARDER_FAILURE_SECONDS = 60.0

# The built-in score: symbol -> points (rspamd's names where it has the same rule).
SCORES = {
    "DNSBL": 5.0,  # per blocklist zone listing the client
    "FORGED_OWN_DOMAIN": 6.0,  # MAIL FROM in one of our domains, from outside, SPF not passing
    "HELO_NOT_FQDN": 2.0,  # HELO is one label (no dot)
    "HELO_ADDRESS_LITERAL": 1.0,  # HELO [192.0.2.1]
    "MANY_RECIPIENTS": 2.0,  # more than MANY_RECIPIENTS recipients
    "SPF_FAIL": 2.0,
    "SPF_SOFTFAIL": 1.0,
    "DKIM_INVALID": 1.0,  # a signature that does not verify, and none that does
    "DMARC_FAIL": 2.0,  # DMARC failed and the domain's policy (or ours) only tags it
}
MANY_RECIPIENTS = 20

ACCEPTED_SPAM_ACTIONS = ("no action", "add header", "rewrite subject")
JUNK_SPAM_ACTIONS = ("add header", "rewrite subject")


@attrs.frozen
class Refusal:
    """The reply to send instead of 250: code, enhanced status, text."""

    code: int
    status: str
    text: str


@attrs.frozen
class InboundDecision:
    """What the checks decided: a refusal, or the verdict to store the message with.

    `headers` are prepended to the message; `message` is the message as received less
    the header fields that were removed (None: nothing was removed)."""

    verdict: InboundVerdict | None = None
    headers: bytes = b""
    message: bytes | None = None
    refusal: Refusal | None = None

    def prepared(self, data: bytes) -> bytes:
        """The message to store: our headers on top of what came (less what was removed)."""
        return self.headers + (self.message if self.message is not None else data)


@attrs.frozen
class Found:
    """What the checks found (in a worker thread or a check process): the authentication
    and the blocklist listings."""

    authentication: Authentication | None
    listings: tuple[dnsbl.Listing, ...] = ()


def builtin_symbols(
    authentication: Authentication | None,
    listings: tuple[dnsbl.Listing, ...],
    helo: str | None,
    recipient_count: int,
    own_sender_domain: bool,
    forwarder: Forwarder | None,
) -> tuple[tuple[str, float], ...]:
    """The built-in score's symbols for one message, (name, points), highest first."""
    symbols: list[tuple[str, float]] = []
    for listing in listings:
        symbols.append((f"DNSBL:{listing.zone}", SCORES["DNSBL"]))
    if forwarder is None:
        if helo and helo.startswith("["):
            symbols.append(("HELO_ADDRESS_LITERAL", SCORES["HELO_ADDRESS_LITERAL"]))
        elif helo_domain(helo) is None:
            symbols.append(("HELO_NOT_FQDN", SCORES["HELO_NOT_FQDN"]))
    if recipient_count > MANY_RECIPIENTS:
        symbols.append(("MANY_RECIPIENTS", SCORES["MANY_RECIPIENTS"]))
    if authentication is not None:
        mailfrom = authentication.mailfrom
        if mailfrom.counted and mailfrom.result == "fail":
            symbols.append(("SPF_FAIL", SCORES["SPF_FAIL"]))
        elif mailfrom.counted and mailfrom.result == "softfail":
            symbols.append(("SPF_SOFTFAIL", SCORES["SPF_SOFTFAIL"]))
        if own_sender_domain and forwarder is None and mailfrom.result != "pass":
            symbols.append(("FORGED_OWN_DOMAIN", SCORES["FORGED_OWN_DOMAIN"]))
        results = [check.result for check in authentication.dkim]
        if "pass" not in results and ("fail" in results or "permerror" in results):
            symbols.append(("DKIM_INVALID", SCORES["DKIM_INVALID"]))
        if authentication.dmarc.result == "fail":
            symbols.append(("DMARC_FAIL", SCORES["DMARC_FAIL"]))
    return tuple(sorted(symbols, key=lambda symbol: -symbol[1]))


def _symbol_text(name: str, points: float) -> str:
    return f"{name}({points:g})"


def spam_status(junk: bool, score: float, required: float, names: tuple[str, ...]) -> bytes:
    """An X-Spam-Status header line (SpamAssassin's form)."""
    tests = ",".join(names) or "none"
    verdict = "Yes" if junk else "No"
    line = f"X-Spam-Status: {verdict}, score={score:.1f} required={required:.1f} tests={tests}"
    return line.encode("utf-8", "replace") + b"\r\n"


def _fold(value: str) -> bytes:
    """The Authentication-Results header line, folded after each result."""
    return ("Authentication-Results: " + value.replace("; ", ";\r\n\t")).encode(
        "utf-8", "replace"
    ) + b"\r\n"


def _addresses(resolver: dns.resolver.Resolver, name: str) -> frozenset[str]:
    """The A and AAAA addresses of name (blocking); empty when it has none."""
    found: set[str] = set()
    for rdtype in ("A", "AAAA"):
        try:
            answer = resolver.resolve(name + ".", rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return frozenset()
        except dns.exception.DNSException:
            continue
        if answer.rrset is not None:
            found.update(str(ipaddress.ip_address(rdata.address)) for rdata in answer.rrset)
    return frozenset(found)


def find(
    resolver: dns.resolver.Resolver,
    hostname: str,
    spf_results: SpfResults | None,
    data: bytes,
    header_fields,
    client_ip: str,
    helo: str | None,
    sender: str,
    forwarder: Forwarder | None,
    zones: tuple[str, ...],
) -> Found:
    """The authentication and the blocklist listings of one message (blocks: a DNS
    worker thread, or a check process's thread). `header_fields`: fields(data), or None."""
    try:
        found = authenticate(
            data,
            resolver,
            hostname,
            client_ip,
            helo,
            sender,
            forwarder,
            spf_results,
            header_fields,
        )
    except Exception:  # an error of ours must not hold up mail: accepted, unchecked
        log.failure("authenticating a message from {client} failed", client=client_ip)
        found = None
    listings = dnsbl.listings(resolver, client_ip, zones) if zones else ()
    return Found(found, listings)


@implementer(IInboundChecks)
class InboundChecks:
    """Checks a message received on port 25 (see the module's description).

    `settings` is the [inbound] section, `hostname` our authserv-id, `resolver` the
    dnspython resolver asking the configured nameservers, `workers` has `in_dns`,
    `store` answers domains.list_domains (our domains, cached for a minute), `clock`
    the reactor; `processes` (optional) has `find(arguments, fallback) -> Deferred` of
    a Found (inbound.checkprocess); `spam_filter` (optional) has `check(SpamQuery) ->
    Deferred` (ISpamFilter) firing with a result having action, score, required_score,
    symbols ((name, score) pairs) and scanned.
    """

    def __init__(
        self,
        settings: InboundConfig,
        hostname: str,
        resolver: dns.resolver.Resolver,
        workers: Any,
        store: Any,
        clock: Any,
        spam_filter: Any = None,
        metrics: Any = None,
        processes: Any = None,
    ):
        self.settings = settings
        # The check processes (inbound.checkprocess.CheckProcesses, a service started
        # beside the listener), or None: the checks run in the DNS pool of this process.
        self.processes = processes
        # The appliance's atollon_mail.metrics.Metrics (None: nothing counted).
        self._metrics = metrics
        self.hostname = hostname.lower().rstrip(".")
        self.resolver = resolver
        self.spam_filter = spam_filter
        self._workers = workers
        self._store = store
        self._clock = clock
        self._domains: dict[str, str | None] | None = None
        self._domains_at = 0.0
        self._loading: Deferred | None = None
        self._waiting: list[Deferred] = []
        self._forwarder_addresses: dict[str, tuple[frozenset[str], float]] = {}
        self._spf_results = SpfResults(clock)

    # --- our domains ---

    def own_domains(self) -> Deferred:
        """Deferred firing with {domain: its primary domain or None} for every domain
        of this server (the primary domains of secondary ones too); the first answer
        waits for the store, later ones use the copy while it is refreshed."""
        now = self._clock.seconds()
        stale = self._domains is None or now - self._domains_at >= DOMAIN_REFRESH_SECONDS
        if stale and self._loading is None:
            loading = self._store.run(domain_ops.list_domains)
            self._loading = loading
            loading.addCallbacks(self._domains_loaded, self._domains_failed, (now,))
        if self._domains is not None:
            return succeed(self._domains)
        waiter: Deferred = Deferred()
        self._waiting.append(waiter)
        return waiter

    def _domains_loaded(self, records, loaded_at: float) -> None:
        domains: dict[str, str | None] = {}
        for record in records:
            domains[record.name.lower()] = record.primary_domain
        self._domains, self._domains_at, self._loading = domains, loaded_at, None
        self._wake(domains)

    def _domains_failed(self, failure: Failure) -> None:
        log.failure("loading the domain list for the inbound checks failed", failure)
        self._loading = None
        self._wake(self._domains or {})

    def _wake(self, domains) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(domains)

    # --- trusted forwarders ---

    def _entries(self, domain: str, domains: dict[str, str | None]) -> tuple[str, ...]:
        entries = self.settings.forwarders_for(domain)
        primary = domains.get(domain)
        if primary:
            entries += self.settings.forwarders_for(primary)
        return entries

    @defer.inlineCallbacks
    def _resolved(self, name: str):
        now = self._clock.seconds()
        cached = self._forwarder_addresses.get(name)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            found = yield self._workers.in_dns(_addresses, self.resolver, name)
        except Exception:
            log.failure("resolving the trusted forwarder {name} failed", name=name)
            found = frozenset()
        keep = FORWARDER_ADDRESS_SECONDS if found else FORWARDER_FAILURE_SECONDS
        self._forwarder_addresses[name] = (found, now + keep)
        return found

    @defer.inlineCallbacks
    def forwarder(self, client_ip: str, helo: str | None, recipient_domains, domains):
        """The Forwarder the client is for every recipient domain, or None."""
        client = ipaddress.ip_address(client_ip)
        names: list[str] = []
        for domain in recipient_domains:
            entries = self._entries(domain, domains)
            if not entries:
                return None
            matched = None
            for entry in entries:
                if "/" in entry:
                    network = ipaddress.ip_network(entry)
                    if client.version == network.version and client in network:
                        matched = entry
                        break
                    continue
                addresses = yield self._resolved(entry)
                if str(client) in addresses:
                    matched = entry
                    break
            if matched is None:
                return None
            if "/" not in matched and matched not in names:
                names.append(matched)
        helo_name = helo_domain(helo)
        shown = names[0] if names else (helo_name or client_ip)
        identities = [*names, *([helo_name] if helo_name else [])]
        owned = tuple(dict.fromkeys(organizational_domain(name) for name in identities))
        return Forwarder(shown, owned)

    # --- the check ---

    def _ours_claimed(self, field: Field) -> bool:
        if field.name == "x-spam-status":
            return True
        return field.name == "authentication-results" and authserv_id(field.text()) == self.hostname

    def _in_thread(self, data, header_fields, client_ip, helo, sender, forwarder, zones):
        """Deferred Found: the checks (find) in the DNS worker pool of this process."""
        return self._workers.in_dns(
            find,
            self.resolver,
            self.hostname,
            self._spf_results,
            data,
            header_fields,
            client_ip,
            helo,
            sender,
            forwarder,
            zones,
        )

    @defer.inlineCallbacks
    def check(self, session, envelope, data: bytes):
        client_ip = session.peer
        if not client_ip:
            return InboundDecision()
        helo = session.helo
        sender = envelope.sender.address
        paths = list(envelope.paths)
        recipient_domains = sorted(
            {(path.domain or self.hostname).lower().rstrip(".") for path in paths}
        )
        domains = yield self.own_domains()
        forwarder = None
        if self.settings.trusted_forwarders or self.settings.domain_forwarders:
            forwarder = yield self.forwarder(client_ip, helo, recipient_domains, domains)
        header_fields = tuple(fields(data))
        message, removed = remove_fields(data, self._ours_claimed, header_fields)
        scanning = None
        if self.spam_filter is not None:
            request = SpamQuery(
                client_ip=client_ip,
                helo=helo,
                envelope_sender=sender,
                recipients=tuple(path.address for path in paths),
                raw=message,
            )
            scanning = defer.maybeDeferred(self.spam_filter.check, request)
            scanning.addErrback(self._scan_failed, client_ip)
        zones = () if (self.spam_filter is not None or forwarder) else self.settings.dnsbl_zones
        arguments = (client_ip, helo, sender, forwarder, zones)
        if self.processes is None:
            found = yield self._in_thread(data, header_fields, *arguments)
        else:
            # The check process gets the message's bytes and splits its header again:
            # pickling the fields too cost this process 9.5 us more per message of the
            # benchmark (2.9 KiB, 9 fields; the bytes alone 0.3 us), re-splitting them
            # costs the check process 17 us.
            found = yield self.processes.find(
                (data, *arguments), lambda: self._in_thread(data, header_fields, *arguments)
            )
        spam = (yield scanning) if scanning is not None else None
        decision = self._decide(found, spam, session, envelope, domains, forwarder, len(paths))
        if self._metrics is not None:
            refusal, verdict = decision.refusal, decision.verdict
            counting(
                self._metrics.inbound_decision,
                found.authentication,
                None if refusal is None else refusal.code,
                verdict is not None and verdict.junk,
            )
        if decision.refusal is not None:
            log.info(
                "refused a message from {client} <{sender}>: {code} {text}",
                client=client_ip,
                sender=sender,
                code=decision.refusal.code,
                text=decision.refusal.text,
            )
            return decision
        return attrs.evolve(decision, message=message if removed else None)

    def _scan_failed(self, failure: Failure, client_ip: str) -> None:
        # Unavailable (down, slow, an answer outside its protocol) is expected and the
        # client has said why, once per message: no traceback for it here.
        if not failure.check(SpamFilterUnavailable):
            log.failure(
                "the spam filter failed on a message from {client}", failure, client=client_ip
            )
        return None

    # --- the decision ---

    def _dmarc_action(
        self, authentication: Authentication, domains: dict[str, str | None]
    ) -> tuple[str, str | None, Refusal | None]:
        """(action: reject/junk/tag/none, why in words, an immediate refusal)."""
        dmarc = authentication.dmarc
        forwarder = authentication.forwarder
        own = [domain for domain in authentication.from_domains if domain in domains]
        if own and forwarder is None:
            authenticated = dmarc.result == "pass" or (
                dmarc.result == "none" and dmarc.aligned_by is not None
            )
            if not authenticated:
                if authentication.temporary_error:
                    return (
                        "none",
                        None,
                        Refusal(451, "4.4.3", "Cannot verify the sender now, try again later"),
                    )
                return (
                    self.settings.dmarc_reject,
                    f"{own[0]} is a domain of this server and the message is not "
                    "authenticated by it",
                    None,
                )
        if dmarc.result != "fail":
            return "none", None, None
        if dmarc.policy == "reject":
            action = self.settings.dmarc_reject
        elif dmarc.policy == "quarantine":
            action = self.settings.dmarc_quarantine
        else:
            action = "tag"
        why = (
            f"{dmarc.from_domain} publishes DMARC p={dmarc.policy} and the message is not "
            "authenticated by it"
        )
        if forwarder is not None and action == "reject":
            action = "junk"
        return action, why, None

    def _decide(
        self,
        found: Found,
        spam,
        session,
        envelope,
        domains: dict[str, str | None],
        forwarder: Forwarder | None,
        recipient_count: int,
    ) -> InboundDecision:
        authentication = found.authentication
        notes: list[str] = []
        junk = False
        headers = b""
        if authentication is None:
            notes.append("the sender was not checked: an error of this server")
        else:
            notes.extend(authentication.notes)
            headers += _fold(authentication.header)
            action, why, refusal = self._dmarc_action(authentication, domains)
            if refusal is not None:
                return InboundDecision(refusal=refusal)
            if action == "reject":
                return InboundDecision(refusal=Refusal(550, "5.7.1", f"Message rejected: {why}"))
            if action == "junk":
                junk = True
                notes.append("filed as junk: " + why)
        score = threshold = None
        symbols: tuple[str, ...] = ()
        action_taken = ""
        scanned = True
        if self.spam_filter is not None:
            if spam is None:
                return InboundDecision(
                    refusal=Refusal(
                        451, "4.7.1", "The spam filter cannot be reached, try again later"
                    )
                )
            action_taken = spam.action
            if spam.action == "reject":
                return InboundDecision(refusal=Refusal(550, "5.7.1", "Message rejected as spam"))
            if spam.action in ("soft reject", "greylist"):
                text = (
                    "Greylisted, try again later"
                    if spam.action == "greylist"
                    else ("Try again later")
                )
                return InboundDecision(refusal=Refusal(451, "4.7.1", text))
            scanned = bool(spam.scanned)
            if scanned:
                # rspamd's required_score is where it rejects; where Junk begins (its "add
                # header" threshold) is not in its answer, so the verdict names none.
                score = float(spam.score)
                ranked = sorted(spam.symbols, key=lambda symbol: -abs(symbol[1]))
                symbols = tuple(_symbol_text(name, points) for name, points in ranked)
                if spam.action in JUNK_SPAM_ACTIONS:
                    junk = True
                    notes.append(
                        f"filed as junk: the spam filter says {spam.action} at score {score:g}"
                    )
                headers += spam_status(
                    spam.action in JUNK_SPAM_ACTIONS,
                    score,
                    float(spam.required_score),
                    [n for n, _ in ranked],
                )
            else:
                notes.append("not scanned for spam")
        else:
            sender = envelope.sender
            own_sender = bool(sender.domain) and sender.domain.lower().rstrip(".") in domains
            found_symbols = builtin_symbols(
                authentication,
                found.listings,
                session.helo,
                recipient_count,
                own_sender,
                forwarder,
            )
            score = sum(points for _, points in found_symbols)
            threshold = self.settings.junk_score
            symbols = tuple(_symbol_text(name, points) for name, points in found_symbols)
            over = score >= threshold
            action_taken = "add header" if over else "no action"
            for listing in found.listings:
                notes.append(f"the sending server is listed by {listing.zone}")
            if over:
                junk = True
                notes.append(f"filed as junk: score {score:g} of {threshold:g}")
            headers += spam_status(over, score, threshold, [name for name, _ in found_symbols])
        verdict = InboundVerdict(
            junk=junk,
            authentication=authentication.header if authentication is not None else "",
            spam_score=score,
            spam_threshold=threshold,
            spam_symbols=symbols,
            spam_action=action_taken,
            scanned=scanned,
            notes=tuple(notes),
        )
        return InboundDecision(verdict=verdict, headers=headers)
