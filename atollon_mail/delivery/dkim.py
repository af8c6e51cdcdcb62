"""DKIM keys, DNS records, signing and verification (RFC 6376, RFC 8463), over dkimpy.

dkimpy does the canonicalization, header selection and signature header. Its RSA
arithmetic is pure Python, about 7 ms per RSA-2048 signature; the module swaps in
OpenSSL (through cryptography) for that one step, which gives byte-identical
signatures (PKCS#1 v1.5 is deterministic) for about 0.3 ms, and keeps parsed keys
instead of reading the PEM again for every message. See _use_openssl_for_rsa.

sign and verify block (CPU, and DNS for verify): call them in a thread pool, never on
the reactor thread.
"""

from __future__ import annotations

import base64
import functools

import dkim
import dns.exception
import dns.resolver
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

DEFAULT_SELECTOR = "atollon"
ALGORITHMS = ("rsa", "ed25519")
RSA_KEY_BITS = 2048
ZONE_TTL = 3600

SIGNED_HEADERS = (
    b"from",
    b"sender",
    b"reply-to",
    b"subject",
    b"date",
    b"message-id",
    b"to",
    b"cc",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"in-reply-to",
    b"references",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)

_SIGNATURE_ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


def _check_algorithm(algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"DKIM algorithm must be rsa or ed25519, got {algorithm!r}")
    return algorithm


def generate_key(algorithm: str = "rsa") -> tuple[str, str]:
    """
    A new key pair: (private key, public key for the p= tag).

    rsa: a 2048-bit key as PEM. ed25519: the base64 of the 32-byte seed, as dkimpy
    reads it. The public key is base64 (SubjectPublicKeyInfo for rsa, the raw 32 bytes
    for ed25519, RFC 8463).
    """
    if _check_algorithm(algorithm) == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode("ascii")
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return private, base64.b64encode(public).decode("ascii")
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(seed).decode("ascii"), base64.b64encode(public).decode("ascii")


def txt_value(algorithm: str, public_key: str) -> str:
    """The TXT record value to publish at SELECTOR._domainkey.DOMAIN."""
    return f"v=DKIM1; k={_check_algorithm(algorithm)}; p={public_key}"


def zone_record(selector: str, domain: str, algorithm: str, public_key: str) -> str:
    """
    One zone-file line publishing the key, the value in quoted strings of at most 255
    characters (the limit of one DNS character-string):

        atollon._domainkey.acme.com. 3600 IN TXT ( "v=DKIM1; k=rsa; " "p=..." )
    """
    tags = f"v=DKIM1; k={_check_algorithm(algorithm)}; "
    key = f"p={public_key}"
    strings = [tags] + [key[i : i + 255] for i in range(0, len(key), 255)]
    quoted = " ".join(f'"{string}"' for string in strings)
    name = f"{selector}._domainkey.{domain.rstrip('.')}."
    return f"{name} {ZONE_TTL} IN TXT ( {quoted} )"


# --- signing ---


def _use_openssl_for_rsa() -> None:
    """
    Make dkimpy sign RSA through OpenSSL and parse each PEM key once.

    dkimpy looks both functions up in its module namespace for every signature, and
    offers no way to hand it a loaded key. The replacements return what dkimpy's own
    would (a signature is byte-identical: tests compare them) and fall back to dkimpy's
    code for anything they do not recognise, so ARC signing and other users of dkimpy
    in the process keep working, only faster.
    """
    if getattr(dkim, "_atollon_openssl_rsa", False):
        return
    parse_pem = getattr(dkim, "parse_pem_private_key", None)
    rsa_sign = getattr(dkim, "RSASSA_PKCS1_v1_5_sign", None)
    if parse_pem is None or rsa_sign is None:  # a dkimpy laid out differently: stay slow
        return
    dkim.parse_pem_private_key = _cached_key_parser(parse_pem)
    dkim.RSASSA_PKCS1_v1_5_sign = _openssl_signer(rsa_sign)
    dkim._atollon_openssl_rsa = True


class _ParsedKey(dict):
    """dkimpy's parsed RSA key (a dict of integers), carrying the OpenSSL key beside it."""

    __slots__ = ("openssl",)


_OPENSSL_HASHES = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}


def _cached_key_parser(parse_pem):
    @functools.lru_cache(maxsize=64)
    def parse_pem_private_key(data: bytes):
        parsed = _ParsedKey(parse_pem(data))
        try:
            loaded = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            loaded = None
        parsed.openssl = loaded if isinstance(loaded, rsa.RSAPrivateKey) else None
        return parsed

    return parse_pem_private_key


def _openssl_signer(rsa_sign):
    def sign(digest, private_key):
        key = getattr(private_key, "openssl", None)
        algorithm = _OPENSSL_HASHES.get(getattr(digest, "name", "").lower())
        if key is None or algorithm is None:
            return rsa_sign(digest, private_key)
        try:
            return key.sign(digest.digest(), padding.PKCS1v15(), Prehashed(algorithm()))
        except ValueError:  # e.g. a key too small for the digest: let dkimpy say so
            return rsa_sign(digest, private_key)

    return sign


_use_openssl_for_rsa()


def sign(raw: bytes, domain: str, selector: str, algorithm: str, private_key: str) -> bytes:
    """
    raw with a DKIM-Signature header prepended: relaxed/relaxed, rsa-sha256 or
    ed25519-sha256, covering those of SIGNED_HEADERS the message has (every instance)
    plus From once more, so a second From added later breaks the signature.

    Raises ValueError when the message cannot be signed (no From header, a bad key).
    """
    signature_algorithm = _SIGNATURE_ALGORITHMS[_check_algorithm(algorithm)]
    linesep = b"\r\n" if b"\r\n" in raw else b"\n"
    signer = dkim.DKIM(raw, signature_algorithm=signature_algorithm, linesep=linesep)
    include = [name.lower() for name, _ in signer.headers if name.lower() in SIGNED_HEADERS]
    if b"from" not in include:
        raise ValueError("cannot DKIM-sign a message without a From header")
    include.append(b"from")
    try:
        signature = signer.sign(
            selector.encode("ascii"),
            domain.rstrip(".").encode("idna"),
            private_key.encode("ascii"),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include,
        )
    except dkim.NaClNotFoundError:
        raise RuntimeError("ed25519 DKIM signing needs PyNaCl: pip install pynacl") from None
    except dkim.DKIMException as problem:
        raise ValueError(f"cannot DKIM-sign the message: {problem}") from None
    return signature + raw


# --- verification ---


def _txt_lookup(resolver: dns.resolver.Resolver):
    """dkimpy's dnsfunc, asking the given resolver: the TXT value, or None."""

    def get_txt(name: bytes, timeout: float = 5):
        try:
            answer = resolver.resolve(
                name.decode("ascii"), "TXT", raise_on_no_answer=False, search=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
            return None
        except dns.exception.Timeout as problem:
            raise dkim.DnsTimeoutError(str(problem)) from None
        except (dns.exception.DNSException, UnicodeDecodeError):
            return None
        if answer.rrset is None:
            return None
        values = [b"".join(rdata.strings) for rdata in answer.rrset]
        # A name may hold other TXT records too: prefer the one that is a DKIM key.
        return next((value for value in values if value.startswith(b"v=DKIM1")), values[0])

    return get_txt


def verify(raw: bytes, resolver: dns.resolver.Resolver) -> bool:
    """Whether the first DKIM-Signature of raw verifies, its key fetched through resolver."""
    return bool(dkim.verify(raw, dnsfunc=_txt_lookup(resolver)))
