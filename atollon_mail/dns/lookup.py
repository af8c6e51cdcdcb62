"""Live DNS lookups for the advisor and the checks, and pyspf pointed at the same resolver.

Everything here blocks: call it in a thread pool (the watcher) or from the admin command,
never on the reactor thread.
"""

from __future__ import annotations

import threading

import dns.exception
import dns.name
import dns.resolver
import dns.reversename

from atollon_mail.config import HostPort
from atollon_mail.delivery.mx import dns_resolver

LOOKUP_TIMEOUT = 10.0


class LookupFailed(Exception):
    """A question got no answer (timeout, SERVFAIL, no server answered): outcome unknown."""


class Lookups:
    """Queries one resolver, remembering each answer for the life of this object (one
    command or one check of one domain asks for the same names several times)."""

    def __init__(self, resolver: dns.resolver.Resolver):
        self.resolver = resolver
        self._answers: dict[tuple[str, str], list] = {}
        self.nxdomain: set[str] = set()

    @classmethod
    def using(cls, nameservers: tuple[HostPort, ...], timeout: float = LOOKUP_TIMEOUT) -> Lookups:
        """Lookups through the configured nameservers (the system's when empty)."""
        return cls(dns_resolver(nameservers, timeout))

    def _answer(self, name: str, rdtype: str) -> list:
        name = name.rstrip(".").lower()
        key = (name, rdtype)
        if key in self._answers:
            return self._answers[key]
        try:
            answer = self.resolver.resolve(
                name + ".", rdtype, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN:
            self.nxdomain.add(name)
            records: list = []
        except dns.resolver.NoNameservers:
            raise LookupFailed(f"no DNS server answered {rdtype} {name} (SERVFAIL)") from None
        except dns.exception.Timeout:
            raise LookupFailed(f"the DNS query {rdtype} {name} timed out") from None
        except dns.exception.DNSException as problem:
            raise LookupFailed(f"the DNS query {rdtype} {name} failed: {problem}") from None
        else:
            records = list(answer) if answer.rrset is not None else []
        self._answers[key] = records
        return records

    def txt(self, name: str) -> list[str]:
        """Each TXT record of name, its strings joined (an SPF or DKIM value is one text)."""
        return [
            b"".join(rdata.strings).decode("utf-8", "replace")
            for rdata in self._answer(name, "TXT")
        ]

    def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, host) pairs, host without the final dot ("" for a null MX)."""
        return sorted(
            (rdata.preference, rdata.exchange.to_text(omit_final_dot=True).lower().rstrip("."))
            for rdata in self._answer(name, "MX")
        )

    def addresses(self, name: str, rdtype: str) -> list[str]:
        """The A or AAAA records of name, as text."""
        return [rdata.address for rdata in self._answer(name, rdtype)]

    def ptr(self, address: str) -> list[str]:
        """The names the PTR records of address give, without the final dot."""
        reverse = dns.reversename.from_address(address).to_text(omit_final_dot=True)
        return [
            rdata.target.to_text(omit_final_dot=True).lower()
            for rdata in self._answer(reverse, "PTR")
        ]


def reverse_name(address: str) -> str:
    """The PTR owner name of an address: 1.2.0.192.in-addr.arpa."""
    return dns.reversename.from_address(address).to_text(omit_final_dot=True)


# --- pyspf --------------------------------------------------------------------------------
#
# pyspf 2.0.14 sends every query through its module-level function `spf.DNSLookup`, which
# asks dnspython's default resolver (/etc/resolv.conf). It is replaced, once, by a function
# that asks the resolver set for the calling thread, and falls back to pyspf's own
# function when none is set, so other users of pyspf in the process are unaffected.

_spf_thread = threading.local()
_spf_lock = threading.Lock()
_spf_original = None


def _spf_lookup(name, qtype, strict=True, timeout=30):
    resolver = getattr(_spf_thread, "resolver", None)
    if resolver is None:
        return _spf_original(name, qtype, strict, timeout)
    import spf  # the answers' shapes are what DNSLookup_dnspython gives

    found = []
    try:
        answer = resolver.resolve(
            name, qtype, lifetime=min(timeout, resolver.lifetime), search=False
        )
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return found
    except dns.exception.DNSException as problem:
        raise spf.TempError(f"DNS {problem}") from None
    for rdata in answer:
        if qtype in ("A", "AAAA"):
            found.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            found.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            found.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            found.append(((name, qtype), rdata.strings))
    return found


def _install_spf_lookup():
    global _spf_original
    import spf

    with _spf_lock:
        if spf.DNSLookup is not _spf_lookup:
            _spf_original = spf.DNSLookup
            spf.DNSLookup = _spf_lookup
    return spf


def spf_evaluate(
    resolver: dns.resolver.Resolver, address: str, sender: str, helo: str
) -> tuple[str, str]:
    """pyspf's check2 with its queries sent to resolver: (result, explanation)."""
    spf = _install_spf_lookup()
    _spf_thread.resolver = resolver
    try:
        return spf.check2(i=address, s=sender, h=helo)
    finally:
        _spf_thread.resolver = None
