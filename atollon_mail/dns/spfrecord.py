"""SPF records (RFC 7208): reading their terms, adding this appliance to a published record,
and counting the DNS lookups a record costs a receiver.

Pure functions; the one that follows includes takes a `fetch(domain) -> [TXT texts]`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

import attrs

VERSION = "v=spf1"
MAX_LOOKUPS = 10  # RFC 7208 section 4.6.4
# The mechanisms that each cost a DNS lookup, besides the redirect= modifier (4.6.4).
LOOKUP_MECHANISMS = frozenset(("include", "a", "mx", "ptr", "exists"))
_MAX_DEPTH = 10  # includes nested deeper than this are counted, not followed
_MODIFIER = re.compile(r"^([a-z][a-z0-9_.-]*)=(.*)$", re.IGNORECASE)
_QUALIFIERS = "+-~?"


def is_spf(text: str) -> bool:
    """Whether a TXT record is an SPF record (its version term, any case)."""
    lowered = text.strip().lower()
    return lowered == VERSION or lowered.startswith(VERSION + " ")


@attrs.frozen
class Term:
    text: str  # as written
    qualifier: str  # "+", "-", "~", "?", or "" (which means "+")
    name: str  # the mechanism or modifier, lowercased
    value: str | None  # after ":" (mechanisms) or "=" (modifiers)
    modifier: bool

    @property
    def key(self) -> tuple:
        """What the term does, for spotting the same term written another way."""
        value = self.value
        if value is not None and self.name in ("ip4", "ip6"):
            try:
                value = str(ipaddress.ip_network(value, strict=False))
            except ValueError:
                value = value.lower()
        elif value is not None:
            value = value.lower().rstrip(".")
        return (self.modifier, self.qualifier or "+", self.name, value)


def term(text: str) -> Term:
    modifier = _MODIFIER.match(text)
    if modifier:
        return Term(text, "", modifier.group(1).lower(), modifier.group(2), True)
    qualifier = text[0] if text[:1] in _QUALIFIERS else ""
    rest = text[len(qualifier) :]
    name, colon, value = rest.partition(":")
    if not colon:  # a/24, mx//64
        name = name.partition("/")[0]
    return Term(text, qualifier, name.lower(), value if colon else None, False)


def terms(record: str) -> list[Term]:
    """The terms of an SPF record, without its version term."""
    words = record.split()
    if words and words[0].lower() == VERSION:
        words = words[1:]
    return [term(word) for word in words]


def our_terms(
    hostname: str,
    spf_include: str | None,
    ipv4: str | None,
    ipv6: str | None,
    receives_here: bool,
) -> list[str]:
    """The mechanisms that authorize this appliance.

    `include:` of [dns] spf_include when set, else the public addresses, else `mx` when
    the domain's MX is this appliance; a domain whose MX is elsewhere (the primary domain
    in secondary mode) names the appliance's host instead.
    """
    if spf_include:
        return [f"include:{spf_include}"]
    found = ([f"ip4:{ipv4}"] if ipv4 else []) + ([f"ip6:{ipv6}"] if ipv6 else [])
    if found:
        return found
    return ["mx"] if receives_here else [f"a:{hostname}"]


@attrs.frozen
class Merged:
    """The proposed record for a domain and how it came from what is published."""

    record: str
    existing: tuple[str, ...]  # the SPF records published now
    added: tuple[str, ...]  # our terms that were missing
    warnings: tuple[str, ...]

    @property
    def unchanged(self) -> bool:
        return len(self.existing) == 1 and self.existing[0].split() == self.record.split()


def merge(existing: Sequence[str], ours: Sequence[str], domain: str) -> Merged:
    """One record keeping every mechanism published for domain, with ours added once
    before the closing `all` (which stays -all or ~all as it was; -all when none)."""
    warnings = []
    if len(existing) > 1:
        warnings.append(
            f"{domain} publishes {len(existing)} SPF records, which receivers treat as an "
            "error (permerror): replace them all with the one record proposed"
        )
    kept: list[Term] = []
    closing: list[Term] = []
    trailing: list[Term] = []  # modifiers, written after `all`
    seen: set[tuple] = set()
    for record in existing:
        for found in terms(record):
            if found.key in seen:
                continue
            seen.add(found.key)
            if not found.modifier and found.name == "all":
                closing.append(found)
            elif found.modifier and found.name in ("redirect", "exp"):
                trailing.append(found)
            else:
                kept.append(found)
    added = tuple(text for text in ours if term(text).key not in seen)
    redirect = [found for found in trailing if found.name == "redirect"]
    if closing:
        qualifier = closing[0].qualifier
        if qualifier in ("", "+"):
            warnings.append(
                f"the published SPF record of {domain} ends in {closing[0].text}, which lets "
                "anyone send as it: the proposal ends in -all"
            )
            qualifier = "-"
        elif qualifier == "?":
            warnings.append(
                f"the published SPF record of {domain} ends in ?all, which protects nothing: "
                "change it to ~all or -all once every sending server is listed"
            )
        end = [f"{qualifier}all"]
        trailing = [found for found in trailing if found.name != "redirect"]
        if redirect:  # ignored by receivers when `all` is present (section 6.1)
            warnings.append(
                f"the published SPF record of {domain} has both all and {redirect[0].text}; "
                "receivers ignore the redirect: the proposal leaves it out"
            )
    elif redirect:
        # The redirected record decides the rest; an `all` here would cut it off.
        end = []
    else:
        end = ["-all"]
    record = " ".join(
        [VERSION, *(found.text for found in kept), *added, *end, *(m.text for m in trailing)]
    )
    return Merged(record, tuple(existing), added, tuple(warnings))


@attrs.frozen
class LookupCount:
    count: int
    unreadable: tuple[str, ...]  # included domains without exactly one SPF record


def count_lookups(record: str, fetch: Callable[[str], list[str]]) -> LookupCount:
    """The DNS lookups a receiver makes for record in the worst case, following include:
    and redirect= into the published records. `fetch` may raise (the lookup failed)."""
    unreadable: list[str] = []
    cache: dict[str, list[str]] = {}

    def spf_of(domain: str) -> str | None:
        if domain not in cache:
            cache[domain] = [text for text in fetch(domain) if is_spf(text)]
        found = cache[domain]
        if len(found) != 1:
            if domain not in unreadable:
                unreadable.append(domain)
            return None
        return found[0]

    def walk(text: str, path: tuple[str, ...]) -> int:
        found = terms(text)
        has_all = any(not t.modifier and t.name == "all" for t in found)
        total = 0
        for item in found:
            if item.modifier:
                # redirect= is ignored when `all` is present (section 6.1)
                if item.name != "redirect" or has_all:
                    continue
            elif item.name not in LOOKUP_MECHANISMS:
                continue
            total += 1
            if item.name not in ("include", "redirect") or not item.value:
                continue
            target = item.value.lower().rstrip(".")
            if "%" in target or target in path or len(path) >= _MAX_DEPTH:
                continue  # a macro, a loop, or too deep: counted, not followed
            inner = spf_of(target)
            if inner is not None:
                total += walk(inner, (*path, target))
        return total

    return LookupCount(walk(record, ()), tuple(unreadable))
