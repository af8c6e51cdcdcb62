"""DKIM keys, DNS records, signing and verification (RFC 6376, RFC 8463).

Signing is done here (see the note above sign); verification is dkimpy's.

sign and verify block (CPU, and DNS for verify): call them in a thread pool, never on
the reactor thread.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import time

import dkim
import dns.exception
import dns.resolver
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from atollon_mail.smtp.client import normalize_line_endings

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
#
# Signing is written here, not left to dkimpy: dkimpy's parsing, canonicalization and
# header code is pure Python and took about 0.5 ms of the interpreter per message, half
# of what the appliance spent sending a campaign. The same relaxed/relaxed work done with
# a few bytes operations costs a fraction of that, and OpenSSL (through cryptography)
# does the public-key step without holding the interpreter lock. dkimpy still verifies,
# and the tests check that it verifies every shape of message signed here and computes
# the same body hash.

_WSP_RUN = re.compile(rb"[\t ]+")
_HEADER_NAME = re.compile(rb"([\x21-\x7e]+?):")
# Lines of the DKIM-Signature header stay under 78 characters (RFC 5322 2.1.1).
_FOLD_WIDTH = 76
_SIGNATURE_NAME = b"DKIM-Signature:"


def _relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4 for a body whose lines all end in CRLF."""
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    # Whitespace runs are single spaces now, so one pass removes them at line ends.
    body = body.replace(b" \r\n", b"\r\n").rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def _relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2: one header as name:value, without a line ending."""
    value = value.replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return name.lower() + b":" + value.strip(b" \t")


def _parse_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header block (CRLF lines) as (name, value with its folding) pairs."""
    headers: list[list[bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            headers[-1][1] += b"\r\n" + line
            continue
        match = _HEADER_NAME.match(line)
        if match is None:
            if line.startswith(b"From "):  # an mbox separator, not a header
                continue
            raise ValueError(f"cannot DKIM-sign the message: a bad header line {line[:40]!r}")
        headers.append([match.group(1), line[match.end() :]])
    return [(name, value) for name, value in headers]


def _split_message(sent: bytes) -> tuple[bytes, bytes]:
    """(header block without its last CRLF, body with every line ended), CRLF lines."""
    head, separator, body = sent.partition(b"\r\n\r\n")
    if not separator:
        if sent.startswith(b"\r\n"):  # no header at all
            return b"", sent[2:]
        return sent.removesuffix(b"\r\n"), b""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"  # the SMTP client ends the last line
    return head, body


def _fold(pieces: list[bytes], column: int) -> bytes:
    """pieces joined, with a line break before any that would overflow (the piece's own
    leading space, or one added, continues the header)."""
    folded: list[bytes] = []
    for piece in pieces:
        if folded and column + len(piece) > _FOLD_WIDTH:
            folded.append(b"\r\n" if piece.startswith(b" ") else b"\r\n ")
            column = 0 if piece.startswith(b" ") else 1
        folded.append(piece)
        column += len(piece)
    return b"".join(folded)


@functools.lru_cache(maxsize=64)
def _load_private_key(algorithm: str, private_key: str):
    """The key, parsed once (a PEM parse costs more than a signature)."""
    try:
        if algorithm == "rsa":
            key = serialization.load_pem_private_key(private_key.encode("ascii"), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError("not an RSA key")
            return key
        return ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    except (ValueError, TypeError, UnsupportedAlgorithm, binascii.Error) as problem:
        raise ValueError(f"cannot DKIM-sign with this {algorithm} key: {problem}") from None


def _hashed_headers(headers: list[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes]]:
    """
    (h= names, the canonical headers they cover). h= names the listed headers in message
    order plus From once more; a verifier takes the instances of a name from the bottom
    up (RFC 6376 5.4.2), and a name listed once more than it occurs covers nothing.
    """
    names = [name.lower() for name, _ in headers if name.lower() in SIGNED_HEADERS]
    if b"from" not in names:
        raise ValueError("cannot DKIM-sign a message without a From header")
    names.append(b"from")
    instances: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        instances.setdefault(name.lower(), []).append(value)
    covered = []
    for name in names:
        remaining = instances.get(name)
        if remaining:
            covered.append(_relaxed_header(name, remaining.pop()) + b"\r\n")
    return names, covered


def sign(
    raw: bytes,
    domain: str,
    selector: str,
    algorithm: str,
    private_key: str,
    timestamp: float | None = None,
) -> bytes:
    """
    raw with a DKIM-Signature header prepended: relaxed/relaxed, rsa-sha256 or
    ed25519-sha256, covering those of SIGNED_HEADERS the message has (every instance)
    plus From once more, so a second From added later breaks the signature.

    The signature covers the message as it is sent, every line ending in CRLF as the SMTP
    client writes it; the header takes the message's own line ending (LF in an LF-only
    message). Raises ValueError when the message cannot be signed (no From header, a bad
    header line, a bad key).
    """
    key = _load_private_key(_check_algorithm(algorithm), private_key)
    head, body = _split_message(normalize_line_endings(raw))
    names, covered = _hashed_headers(_parse_headers(head) if head else [])
    body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest())
    stamp = int(time.time() if timestamp is None else timestamp)
    value = _fold(
        [
            b" v=1;",
            b" a=" + _SIGNATURE_ALGORITHMS[algorithm] + b";",
            b" c=relaxed/relaxed;",
            b" d=" + domain.rstrip(".").encode("idna") + b";",
            b" s=" + selector.encode("ascii") + b";",
            b" t=" + str(stamp).encode("ascii") + b";",
            b" h=" + names[0],
            *(b":" + name for name in names[1:-1]),
            b":" + names[-1] + b";",
            b" bh=" + body_hash + b";",
            b" b=",
        ],
        len(_SIGNATURE_NAME),
    )
    data = b"".join(covered) + _relaxed_header(b"dkim-signature", value)
    if algorithm == "rsa":
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:  # RFC 8463: Ed25519 signs the SHA-256 of the data
        signature = key.sign(hashlib.sha256(data).digest())
    encoded = base64.b64encode(signature)
    # b= is last and its value may be folded anywhere: a verifier drops it whole.
    column = len(value) - value.rfind(b"\n") if b"\n" in value else len(_SIGNATURE_NAME + value)
    first = max(_FOLD_WIDTH - column, 0)
    chunks = [encoded[:first]] + [
        encoded[start : start + _FOLD_WIDTH - 1]
        for start in range(first, len(encoded), _FOLD_WIDTH - 1)
    ]
    header = _SIGNATURE_NAME + value + b"\r\n ".join(chunk for chunk in chunks if chunk)
    if b"\r\n" not in raw:
        return header.replace(b"\r\n", b"\n") + b"\n" + raw
    return header + b"\r\n" + raw


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
