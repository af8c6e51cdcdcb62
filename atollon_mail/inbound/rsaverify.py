"""RSA signature verification for dkimpy through OpenSSL (the cryptography package),
and each public key parsed once.

dkimpy 1.1.8 verifies RSA signatures in pure Python (`dkim.crypto`: the modular
exponentiation with `pow`, then the result turned back into bytes one byte at a time).
Measured with a 2048-bit key, that check cost 0.28 ms of interpreter time (`pow` and
`int2str` about half each), more than a third of the 0.72 ms that authenticating one
signed message took, all of it holding the interpreter lock the SMTP sessions need
too; OpenSSL does the same check in 0.02 ms.

dkimpy has no hook for its verification: `DomainSigner.verify_sig_process` calls the
module-level name `dkim.RSASSA_PKCS1_v1_5_verify`. `install()` points that name, once,
at `verify` below, which keeps dkimpy's contract (the digest object dkimpy computed, the
signature bytes, the key as dkimpy parsed it: {"modulus", "publicExponent"}; True or
False; DigestTooLargeError for a key too small for the digest). Everything else stays
dkimpy's (parsing, canonicalization, hashing, the key size policy); what OpenSSL will
not take (an odd key, a digest it refuses) goes to dkimpy's own function, so the
outcome is the same either way.

`install()` also has dkimpy's `dkim.parse_public_key` (the ASN.1 of the key record's
p= parsed in Python: 0.025 ms, 7% of what authenticating a message then cost) remember
the keys it parsed: the same few keys sign most mail, and dkimpy only reads the result.
"""

from __future__ import annotations

import functools
import threading

import dkim
import dkim.crypto
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

__all__ = ["install", "parsed_public_key", "verify"]

_HASHES = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
_pure_python = dkim.crypto.RSASSA_PKCS1_v1_5_verify
_lock = threading.Lock()

# dkimpy's parser, remembering the last keys parsed (by the DER bytes of the key).
parsed_public_key = functools.lru_cache(maxsize=1024)(dkim.crypto.parse_public_key)


@functools.lru_cache(maxsize=1024)
def _public_key(modulus: int, exponent: int) -> rsa.RSAPublicKey:
    """The OpenSSL key of (n, e): made once per key (the same few keys sign most mail)."""
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def verify(digest, signature: bytes, public_key: dict) -> bool:
    """dkim.crypto.RSASSA_PKCS1_v1_5_verify's contract, checked by OpenSSL."""
    algorithm = _HASHES.get(str(getattr(digest, "name", "")).lower())
    modulus, exponent = public_key["modulus"], public_key["publicExponent"]
    if algorithm is None:
        return _pure_python(digest, signature, public_key)
    # The digest info must fit the modulus (RFC 8017 9.2): dkimpy raises this for a
    # key that is too small, and says so as a key error.
    dkim.crypto.EMSA_PKCS1_v1_5_encode(digest, (modulus.bit_length() + 7) // 8)
    try:
        key = _public_key(modulus, exponent)
    except (ValueError, UnsupportedAlgorithm):  # a key OpenSSL will not load
        return _pure_python(digest, signature, public_key)
    try:
        key.verify(bytes(signature), digest.digest(), padding.PKCS1v15(), Prehashed(algorithm()))
    except InvalidSignature:
        return False
    except UnsupportedAlgorithm:  # a digest the OpenSSL policy refuses (SHA-1 on some)
        return _pure_python(digest, signature, public_key)
    return True


def install() -> None:
    """Have dkimpy (DKIM and ARC verification) check RSA signatures with `verify`, and
    parse public keys with `parsed_public_key`."""
    if dkim.RSASSA_PKCS1_v1_5_verify is verify:
        return
    with _lock:
        dkim.parse_public_key = parsed_public_key
        dkim.RSASSA_PKCS1_v1_5_verify = verify
