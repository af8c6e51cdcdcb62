"""Sender authentication of a message received on port 25: SPF for the MAIL FROM and
HELO identities (pyspf), every DKIM signature (dkimpy), the ARC chain (dkimpy) and DMARC
(RFC 7489) with organizational-domain alignment (the Public Suffix List of the
publicsuffixlist package), written as one Authentication-Results header (RFC 8601,
with authres, the header model dkimpy's ARC sealing reads back).

authheaders.authenticate_message does much of this in one call, but (version 0.16.3,
with dkimpy 1.1.8 and pyspf 2.0.14) it verifies only the first DKIM signature, checks
one SPF identity through pyspf's own resolver, and parses the whole Public Suffix List
file again for every organizational domain it needs (86 ms each, several per message:
more than the rest of a message's session). The libraries it wraps are used here
directly instead, the list loaded once.

Every query goes to the one resolver given (the appliance's configured nameservers).
Everything here blocks on DNS and the CPU: run it in the DNS worker pool
(workers.in_dns), never on the reactor thread.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import threading
from collections.abc import Sequence

import attrs
import authres
import authres.core
import dkim
import dns.resolver
from authres.arc import ARCAuthenticationResult
from authres.dmarc import DMARCAuthenticationResult
from dkim.util import InvalidTagValueList, parse_tag_value
from publicsuffixlist import PublicSuffixList

from atollon_mail.dns.dmarcrecord import dmarc_tags
from atollon_mail.dns.lookup import LookupFailed, Lookups, spf_evaluate
from atollon_mail.inbound import rsaverify
from atollon_mail.inbound.headers import Field, authserv_id, fields, from_domains

__all__ = [
    "ArcCheck",
    "Authentication",
    "DkimCheck",
    "DmarcCheck",
    "Forwarder",
    "SpfCheck",
    "SpfResults",
    "authenticate",
    "organizational_domain",
]

# More signatures than this on one message are not looked at (each costs a DNS query
# and a public-key operation).
MAX_SIGNATURES = 8
DKIM_TIMEOUT = 5

# How long an SPF result is kept for the same client, sender and HELO name (SpfResults),
# and how many are kept.
SPF_RESULT_SECONDS = 60.0
SPF_RESULTS_KEPT = 10_000

_quiet = logging.getLogger("atollon_mail.inbound.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


# --- the Public Suffix List -------------------------------------------------------------

_psl_lock = threading.Lock()


@functools.cache
def _public_suffix_list() -> PublicSuffixList:
    with _psl_lock:  # loaded once (about 0.1 s), by whichever thread needs it first
        return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the domain one label below its public suffix (acme.co.uk for
    mail.acme.co.uk); a public suffix itself, or a name that is one, is its own."""
    domain = domain.lower().rstrip(".")
    return _public_suffix_list().privatesuffix(domain) or domain


def aligned(one: str, other: str, strict: bool) -> bool:
    """Identifier alignment (RFC 7489 3.1): the same domain (strict), or the same
    organizational domain (relaxed)."""
    one, other = one.lower().rstrip("."), other.lower().rstrip(".")
    if one == other:
        return True
    return not strict and organizational_domain(one) == organizational_domain(other)


# --- results ----------------------------------------------------------------------------


@attrs.frozen
class SpfCheck:
    """One SPF identity checked (RFC 7208): "mailfrom" or "helo"."""

    identity: str
    domain: str | None  # the domain whose policy was asked; None: there was none
    result: str  # pass fail softfail neutral none temperror permerror
    counted: bool = True  # False: the hop is a trusted forwarder, its SPF says nothing


@attrs.frozen
class DkimCheck:
    """One DKIM-Signature (RFC 6376) and what verifying it gave."""

    result: str  # pass fail temperror permerror
    domain: str | None  # d=
    selector: str | None  # s=
    reason: str = ""


@attrs.frozen
class ArcCheck:
    """The ARC chain (RFC 8617): its validation, and its latest set."""

    result: str  # pass fail none
    instance: int = 0  # the latest instance (0: no chain)
    sealer: str | None = None  # the d= of the latest ARC-Seal
    results: str = ""  # the latest ARC-Authentication-Results, without its i= tag
    reason: str = ""


@attrs.frozen
class DmarcCheck:
    """DMARC (RFC 7489) for the From: domain: the result and the policy that applies."""

    result: str  # pass fail none temperror permerror
    from_domain: str | None = None
    policy: str | None = None  # none quarantine reject (sp= for a subdomain); None: no record
    # "dkim", "spf" or "forwarder": what authenticated the From: domain (also told when
    # the domain publishes no record, so the result is "none")
    aligned_by: str | None = None
    reason: str = ""


@attrs.frozen
class Forwarder:
    """The client is a trusted forwarder ([inbound] trusted_forwarders): `name` for
    people, `domains` the organizational domains its ARC seals and its
    Authentication-Results may carry."""

    name: str
    domains: tuple[str, ...] = ()

    def owns(self, domain: str | None) -> bool:
        return bool(domain) and organizational_domain(domain) in self.domains


@attrs.frozen
class Authentication:
    """Everything the checks found, the header that says it, and the same in words."""

    spf: tuple[SpfCheck, ...]  # mailfrom, then helo
    dkim: tuple[DkimCheck, ...]
    arc: ArcCheck
    dmarc: DmarcCheck
    from_domains: tuple[str, ...]
    forwarder: Forwarder | None
    header: str  # the Authentication-Results value (unfolded)
    notes: tuple[str, ...]
    vouched_by: str | None = None  # "arc" or "authentication-results" of the forwarder

    @property
    def mailfrom(self) -> SpfCheck:
        return self.spf[0]

    @property
    def temporary_error(self) -> bool:
        """Whether a DNS failure left the outcome unknown (try again later)."""
        results = [self.mailfrom.result, self.dmarc.result, *(c.result for c in self.dkim)]
        return "temperror" in results

    @property
    def verified_domains(self) -> tuple[str, ...]:
        """The domains a DKIM signature verified for."""
        found: list[str] = []
        for check in self.dkim:
            if check.result == "pass" and check.domain and check.domain not in found:
                found.append(check.domain)
        return tuple(found)


# --- DNS for dkimpy ---------------------------------------------------------------------


class _TxtLookup:
    """dkimpy's dnsfunc over Lookups: the key record of a name, or None; remembers the
    names whose lookup failed (dkimpy only sees "no key" either way)."""

    def __init__(self, lookups: Lookups):
        self.lookups = lookups
        self.failed: set[str] = set()

    def __call__(self, name: bytes, timeout: float = DKIM_TIMEOUT) -> bytes | None:
        text = name.decode("ascii", "replace").rstrip(".").lower()
        try:
            values = self.lookups.txt(text)
        except LookupFailed:
            self.failed.add(text)
            return None
        if not values:
            return None
        # A name may hold other TXT records too: prefer the one that is a DKIM key.
        chosen = next((value for value in values if value.startswith("v=DKIM1")), values[0])
        return chosen.encode("utf-8")

    def key_failed(self, selector: str | None, domain: str | None) -> bool:
        return f"{selector}._domainkey.{domain}".lower() in self.failed


# --- SPF --------------------------------------------------------------------------------

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,62})"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")


def helo_domain(helo: str | None) -> str | None:
    """The HELO name when it is a domain name (not an address literal nor one label)."""
    if not helo:
        return None
    name = helo.lower().rstrip(".")
    if not _DOMAIN.match(name):
        return None
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    return None


def _spf(resolver, client_ip: str, sender: str, helo: str) -> str:
    try:
        result, _ = spf_evaluate(resolver, client_ip, sender, helo)
    except Exception:  # pyspf raises on odd input; the identity cannot be checked
        return "permerror"
    return result or "none"


class SpfResults:
    """The SPF results of the last SPF_RESULT_SECONDS, by client address, sender and HELO
    name, shared by the threads checking messages.

    A server sending many messages in a row (a newsletter, a ticket system) is checked
    once a minute instead of twice per message: evaluating both identities with every
    DNS answer already cached still cost pyspf about 0.14 ms of interpreter time per
    message, a fifth of the whole authentication (0.72 ms, measured before RSA went to
    OpenSSL). Everything an SPF result depends on
    is in the key (the sender as given, for the macros that expand its local part; the
    HELO name), and a minute is less than the time-to-live of nearly every SPF record,
    whose answers the resolver would keep as long anyway. A temporary error is not
    kept: the next message asks again. `clock` has seconds() (the reactor)."""

    def __init__(self, clock, seconds: float = SPF_RESULT_SECONDS, size: int = SPF_RESULTS_KEPT):
        self._clock = clock
        self._seconds = seconds
        self._size = size
        self._kept: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def evaluate(self, resolver, client_ip: str, sender: str, helo: str) -> str:
        """The SPF result of sender sent from client_ip after HELO helo."""
        key = (client_ip, sender, helo)
        now = self._clock.seconds()
        kept = self._kept.get(key)
        if kept is not None and kept[1] > now:
            return kept[0]
        result = _spf(resolver, client_ip, sender, helo)
        if result != "temperror":
            with self._lock:
                self._kept.pop(key, None)
                self._kept[key] = (result, now + self._seconds)
                while len(self._kept) > self._size:  # the oldest first
                    del self._kept[next(iter(self._kept))]
        return result


def check_spf(
    resolver,
    client_ip: str,
    mail_from: str,
    helo: str | None,
    results: SpfResults | None = None,
) -> tuple[SpfCheck, ...]:
    """(the MAIL FROM identity, the HELO identity). With a null sender the MAIL FROM
    identity is postmaster@ the HELO name (RFC 7208 2.4). `results`: the recent results
    to use and add to (none: every identity is evaluated)."""
    evaluate = results.evaluate if results is not None else _spf
    name = helo_domain(helo)
    if name is not None:
        helo_check = SpfCheck(
            "helo", name, evaluate(resolver, client_ip, f"postmaster@{name}", name)
        )
    else:
        helo_check = SpfCheck("helo", None, "none")
    if not mail_from:
        mailfrom = SpfCheck("mailfrom", name, helo_check.result)
    else:
        domain = mail_from.rpartition("@")[2].lower().rstrip(".")
        mailfrom = SpfCheck(
            "mailfrom", domain, evaluate(resolver, client_ip, mail_from, helo or "")
        )
    return mailfrom, helo_check


# --- DKIM -------------------------------------------------------------------------------


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return parse_tag_value(value)
    except InvalidTagValueList:
        return {}


def _text(value: bytes | None) -> str | None:
    if not value:
        return None
    return value.decode("ascii", "replace").strip().lower().rstrip(".") or None


def check_dkim(
    raw: bytes, header_fields: Sequence[Field], lookup: _TxtLookup
) -> tuple[DkimCheck, ...]:
    """Each DKIM-Signature of raw (whose header fields are header_fields), top first,
    verified (MAX_SIGNATURES at most)."""
    signatures = [field for field in header_fields if field.name == "dkim-signature"]
    if not signatures:
        return ()
    try:
        verifier = dkim.DKIM(raw, logger=_quiet, timeout=DKIM_TIMEOUT)
    except dkim.DKIMException as problem:
        return (DkimCheck("permerror", None, None, str(problem)[:80]),)
    checks = []
    for index, field in enumerate(signatures[:MAX_SIGNATURES]):
        tags = _tags(field.value)
        domain, selector = _text(tags.get(b"d")), _text(tags.get(b"s"))
        try:
            good = verifier.verify(idx=index, dnsfunc=lookup)
        except dkim.ValidationError as problem:  # a body hash that differs, an expiry
            reason = "body hash did not verify" if "body hash" in str(problem) else problem
            checks.append(DkimCheck("fail", domain, selector, str(reason)[:80]))
            continue
        except dkim.DKIMException as problem:
            checks.append(DkimCheck("permerror", domain, selector, str(problem)[:80]))
            continue
        if good:
            checks.append(DkimCheck("pass", domain, selector))
        elif lookup.key_failed(selector, domain):
            checks.append(DkimCheck("temperror", domain, selector, "key lookup failed"))
        else:
            checks.append(DkimCheck("fail", domain, selector, "signature did not verify"))
    return tuple(checks)


# --- ARC --------------------------------------------------------------------------------


def check_arc(raw: bytes, header_fields: Sequence[Field], lookup: _TxtLookup) -> ArcCheck:
    """The chain's validation (RFC 8617 5.2) and what its latest set says."""
    if not any(field.name == "arc-seal" for field in header_fields):
        return ArcCheck("none")
    try:
        validation, sets, reason = dkim.arc_verify(raw, logger=_quiet, dnsfunc=lookup)
    except Exception as problem:  # a malformed chain is a failed chain
        return ArcCheck("fail", reason=str(problem)[:80])
    result = validation.decode("ascii") if isinstance(validation, bytes) else "fail"
    if not sets:
        return ArcCheck(result if result != "pass" else "fail", reason=str(reason)[:80])
    latest = sets[0]
    results = latest.get("aar-value", b"").decode("utf-8", "replace")
    results = re.sub(r"\s+", " ", re.sub(r"^\s*i\s*=\s*\d+\s*;", "", results)).strip()
    return ArcCheck(
        result,
        int(latest.get("instance", 0)),
        _text(latest.get("as-domain")),
        results,
        "" if result == "pass" else str(reason)[:80],
    )


# --- DMARC ------------------------------------------------------------------------------


def _record(lookups: Lookups, domain: str) -> dict[str, str] | None:
    """The one DMARC record of domain, or None (none, several, or unusable)."""
    texts = [
        text
        for text in lookups.txt(f"_dmarc.{domain}")
        if text.replace(" ", "").lower().startswith("v=dmarc1")
    ]
    if len(texts) != 1:
        return None
    tags = dmarc_tags(texts[0])
    return {name: value.lower() for name, value in tags.items()} if tags else None


_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


def _policy(lookups: Lookups, domain: str) -> tuple[dict[str, str] | None, str | None]:
    """RFC 7489 6.6.3: the record (of the domain, else of its organizational domain)
    and the policy that applies to domain; a record testing (pct=0, t=y) is one step
    weaker."""
    record = _record(lookups, domain)
    policy = None
    if record is not None:
        policy = record["p"]
    else:
        organizational = organizational_domain(domain)
        if organizational != domain:
            record = _record(lookups, organizational)
            if record is not None:
                policy = record.get("sp", record["p"])
                if policy not in _WEAKER:
                    policy = record["p"]
    if record is None:
        return None, None
    if record.get("pct", "100").strip() == "0" or record.get("t") == "y":
        policy = _WEAKER[policy]
    return record, policy


def _aligned_by(
    domain: str,
    record: dict[str, str],
    dkim_checks: tuple[DkimCheck, ...],
    mailfrom: SpfCheck,
) -> str | None:
    strict_dkim = record.get("adkim", "r") == "s"
    strict_spf = record.get("aspf", "r") == "s"
    for check in dkim_checks:
        if check.result == "pass" and check.domain and aligned(check.domain, domain, strict_dkim):
            return "dkim"
    if (
        mailfrom.counted
        and mailfrom.result == "pass"
        and mailfrom.domain
        and aligned(mailfrom.domain, domain, strict_spf)
    ):
        return "spf"
    return None


_STRICTNESS = {None: 0, "none": 1, "quarantine": 2, "reject": 3}


def check_dmarc(
    lookups: Lookups,
    domains: tuple[str, ...],
    dkim_checks: tuple[DkimCheck, ...],
    mailfrom: SpfCheck,
) -> DmarcCheck:
    """DMARC for each From: domain; with several, the one failing with the strictest
    policy decides (RFC 7489 6.6.1)."""
    if not domains:
        return DmarcCheck("none", reason="no From: address")
    outcomes = []
    for domain in domains:
        try:
            record, policy = _policy(lookups, domain)
        except LookupFailed as problem:
            outcomes.append(DmarcCheck("temperror", domain, reason=str(problem)[:80]))
            continue
        # Without a record nothing is enforced, but whether the domain's own signature
        # or SPF covers the message is still told (relaxed alignment, the default).
        by = _aligned_by(domain, record or {}, dkim_checks, mailfrom)
        if record is None:
            outcomes.append(DmarcCheck("none", domain, aligned_by=by))
            continue
        outcomes.append(DmarcCheck("pass" if by else "fail", domain, policy, by))
    for result in ("fail", "temperror", "none", "pass"):
        found = [outcome for outcome in outcomes if outcome.result == result]
        if found:
            return max(found, key=lambda outcome: _STRICTNESS[outcome.policy])
    return outcomes[0]


# --- what a trusted forwarder vouches for -----------------------------------------------


def _parsed(value: str):
    try:
        return authres.core.AuthenticationResultsHeader.parse_value(authres.all_features(), value)
    except Exception:  # authres raises several kinds; an unreadable header says nothing
        return None


def _property(result, kind: str, name: str) -> str | None:
    for found in result.properties:
        if found.type == kind and found.name == name and found.value:
            return str(found.value).lower()
    return None


def _vouches(value: str, from_domain: str) -> str | None:
    """What an Authentication-Results value of the forwarder says for from_domain:
    "dmarc=pass", "dkim=pass" or "spf=pass" (aligned), or None."""
    header = _parsed(value)
    if header is None:
        return None
    for result in header.results:
        method = getattr(result, "method", None)
        if method == "dmarc" and result.result == "pass":
            claimed = _property(result, "header", "from")
            if claimed is None or aligned(claimed, from_domain, False):
                return "dmarc=pass"
    for result in header.results:
        method = getattr(result, "method", None)
        if method == "dkim" and result.result == "pass":
            signer = _property(result, "header", "d")
            if signer and aligned(signer, from_domain, False):
                return "dkim=pass"
        if method == "spf" and result.result == "pass":
            sender = _property(result, "smtp", "mailfrom")
            if sender and aligned(sender.rpartition("@")[2], from_domain, False):
                return "spf=pass"
    return None


def _forwarder_vouch(
    header_fields: Sequence[Field], arc: ArcCheck, forwarder: Forwarder, from_domain: str
) -> tuple[str, str] | None:
    """(what vouched: "arc" or "authentication-results", what it said), when the
    forwarder's verified ARC set, or else its own Authentication-Results (the topmost
    one naming it: it was the last to handle the message), says the From: domain
    passed."""
    if arc.result == "pass" and forwarder.owns(arc.sealer):
        said = _vouches(arc.results, from_domain)
        if said:
            return "arc", said
    for field in header_fields:
        if field.name != "authentication-results":
            continue
        value = field.text()
        if not forwarder.owns(authserv_id(value)):
            continue
        said = _vouches(value, from_domain)
        return ("authentication-results", said) if said else None
    return None


# --- the header and the words -----------------------------------------------------------


def _comment(text: str) -> str:
    """A comment authres can write: no parentheses, semicolons or controls inside."""
    text = re.sub(r"[()\\;\x00-\x1f\x7f]", " ", text)
    return " ".join(text.split())[:120]


def _value(text: str | None) -> str | None:
    """A property value: printable, no spaces or specials (None when nothing is left)."""
    if not text:
        return None
    cleaned = re.sub(r"[\s()\\;\"\x00-\x1f\x7f]", "", text)
    return cleaned[:254] or None


def _spf_result(check: SpfCheck, mail_from: str, forwarder: Forwarder | None):
    if check.identity == "helo":
        return authres.SPFAuthenticationResult(result=check.result, smtp_helo=_value(check.domain))
    comment = None
    if not check.counted and forwarder is not None:
        comment = f"not counted: forwarded by {forwarder.name}, trusted"
    identity = mail_from or (f"postmaster@{check.domain}" if check.domain else None)
    if identity is None:
        comment = "null sender and no domain in HELO"
    return authres.SPFAuthenticationResult(
        result=check.result, result_comment=comment, smtp_mailfrom=_value(identity)
    )


def header_value(
    authserv: str,
    spf: tuple[SpfCheck, ...],
    dkim_checks: tuple[DkimCheck, ...],
    arc: ArcCheck,
    dmarc: DmarcCheck,
    mail_from: str,
    client_ip: str,
    forwarder: Forwarder | None,
    vouch: tuple[str, str] | None,
) -> str:
    # The HELO identity is told when there was one to check (RFC 8601 2.7.2).
    results = [
        _spf_result(check, mail_from, forwarder)
        for check in spf
        if check.identity == "mailfrom" or check.domain
    ]
    if not dkim_checks:
        results.append(authres.DKIMAuthenticationResult(result="none"))
    for check in dkim_checks:
        results.append(
            authres.DKIMAuthenticationResult(
                result=check.result,
                result_comment=_comment(check.reason) or None,
                header_d=_value(check.domain),
                header_s=_value(check.selector),
            )
        )
    arc_comment = None
    if arc.instance:
        arc_comment = f"i={arc.instance} sealed by {arc.sealer or 'unknown'}"
        if arc.reason:
            arc_comment += f": {arc.reason}"
    results.append(
        ARCAuthenticationResult(
            result=arc.result,
            result_comment=_comment(arc_comment) if arc_comment else None,
            smtp_remote_ip=_value(client_ip),
        )
    )
    dmarc_comment = dmarc.reason
    if vouch is not None and forwarder is not None:
        kind, said = vouch
        source = "ARC seal" if kind == "arc" else "Authentication-Results"
        dmarc_comment = f"forwarded by {forwarder.name}, trusted: its {source} says {said}"
    results.append(
        DMARCAuthenticationResult(
            result=dmarc.result,
            result_comment=_comment(dmarc_comment) or None,
            header_from=_value(dmarc.from_domain),
            policy=_value(dmarc.policy),
        )
    )
    header = authres.AuthenticationResultsHeader(authserv_id=authserv, results=results)
    return header.header_value()


def notes_for(
    spf: tuple[SpfCheck, ...],
    dkim_checks: tuple[DkimCheck, ...],
    arc: ArcCheck,
    dmarc: DmarcCheck,
    forwarder: Forwarder | None,
) -> tuple[str, ...]:
    """The verdicts in words, for the reader of the message."""
    notes: list[str] = []
    if forwarder is not None:
        notes.append(f"forwarded by {forwarder.name}, trusted")
    elif arc.result == "pass" and arc.sealer:
        notes.append(f"forwarded by {arc.sealer} (ARC)")
    signed = []
    for check in dkim_checks:
        if check.result == "pass" and check.domain and check.domain not in signed:
            signed.append(check.domain)
    notes.extend(f"signed by {domain}" for domain in signed)
    for check in dkim_checks:
        if check.result in ("fail", "permerror") and check.domain not in signed:
            notes.append(f"a signature of {check.domain or 'an unknown domain'} is not valid")
    mailfrom = spf[0]
    if dmarc.result == "pass":
        if dmarc.aligned_by == "spf":
            notes.append(f"sent from a server {dmarc.from_domain} names (SPF)")
        elif dmarc.aligned_by == "forwarder" and forwarder is not None:
            notes.append(f"{dmarc.from_domain} verified by {forwarder.name}")
    elif dmarc.result == "fail":
        policy = f", which asks to {dmarc.policy}" if dmarc.policy not in (None, "none") else ""
        notes.append(
            f"could not verify the sender: not sent by {dmarc.from_domain}{policy} (DMARC)"
        )
    elif dmarc.result == "temperror" or "temperror" in (mailfrom.result,):
        notes.append("could not verify the sender now: a DNS lookup failed")
    elif not signed and not (mailfrom.counted and mailfrom.result == "pass"):
        notes.append("could not verify the sender")
    return tuple(notes)


# --- all of it --------------------------------------------------------------------------


def authenticate(
    raw: bytes,
    resolver: dns.resolver.Resolver,
    authserv: str,
    client_ip: str,
    helo: str | None,
    mail_from: str,
    forwarder: Forwarder | None = None,
    spf_results: SpfResults | None = None,
    header_fields: Sequence[Field] | None = None,
) -> Authentication:
    """Check raw (as received, our Received: on top) sent by client_ip after HELO helo
    with MAIL FROM mail_from. From a trusted forwarder the SPF of the hop is not counted,
    and when DMARC does not pass on the message's own signatures, the forwarder's
    verified ARC set or its own Authentication-Results may vouch for the From: domain.
    `spf_results`: recent SPF results to use (see SpfResults); `header_fields`: the
    header fields of raw when the caller has them already (headers.fields). Blocks:
    call it in a worker thread."""
    rsaverify.install()
    if header_fields is None:
        header_fields = tuple(fields(raw))
    lookups = Lookups(resolver)
    txt = _TxtLookup(lookups)
    spf = check_spf(resolver, client_ip, mail_from, helo, spf_results)
    if forwarder is not None:
        spf = tuple(attrs.evolve(check, counted=False) for check in spf)
    dkim_checks = check_dkim(raw, header_fields, txt)
    arc = check_arc(raw, header_fields, txt)
    domains = from_domains(raw, header_fields)
    dmarc = check_dmarc(lookups, domains, dkim_checks, spf[0])
    vouch = None
    if forwarder is not None and dmarc.result == "fail" and dmarc.from_domain:
        vouch = _forwarder_vouch(header_fields, arc, forwarder, dmarc.from_domain)
        if vouch is not None:
            dmarc = attrs.evolve(dmarc, result="pass", aligned_by="forwarder", reason="")
    header = header_value(
        authserv, spf, dkim_checks, arc, dmarc, mail_from, client_ip, forwarder, vouch
    )
    return Authentication(
        spf=spf,
        dkim=dkim_checks,
        arc=arc,
        dmarc=dmarc,
        from_domains=domains,
        forwarder=forwarder,
        header=header,
        notes=notes_for(spf, dkim_checks, arc, dmarc, forwarder),
        vouched_by=vouch[0] if vouch else None,
    )
