"""The TLS server context all listeners share, replaced in one step by a new certificate.

SMTP and IMAP STARTTLS (`transport.startTLS(options)`) and the implicit-TLS ports
(TLSMemoryBIOFactory) are all given one ReloadableTLSOptions. Each new connection asks it
for a connection object and gets one from the context current at that moment; a new
certificate (renewed from the ACME CA) replaces that context, so later connections present
it while open ones keep the context they started with.
"""

from __future__ import annotations

import os
import re

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from zope.interface import implementer

_PRIVATE_KEY = re.compile(
    rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.S
)


@attrs.frozen
class LoadedCertificate:
    """A certificate with its key and chain, ready to serve."""

    options: ssl.CertificateOptions
    context: SSL.Context
    certificate: x509.Certificate  # the server's own (the chain's first)


def load_pem(pem: bytes) -> LoadedCertificate:
    """Key and certificates from PEM text (the key anywhere, the server's certificate
    first among the certificates, then its chain). Raises ValueError saying what is
    missing or wrong (no key, no certificate, a key that is not the certificate's, an
    encrypted key or one of a kind not supported). The same key block twice (a combined
    file named as both certificate and key) counts as one."""
    keys = {found.group(0) for found in _PRIVATE_KEY.finditer(pem)}
    if len(keys) != 1:
        raise ValueError(f"expected one PEM private key, found {len(keys)}")
    (key_pem,) = keys
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        # cryptography raises TypeError for a key that needs a password.
        raise ValueError(
            "the private key is encrypted; give it without a passphrase "
            "(openssl pkey -in KEY -out KEY.plain)"
        ) from None
    except UnsupportedAlgorithm as problem:
        raise ValueError(f"the private key is of a kind not supported ({problem})") from None
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError("no PEM certificate") from None
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(certificates[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in certificates[1:]],
    )
    try:
        # Made now, so that a key that is not the certificate's fails here, never later
        # in a client's handshake.
        context = options.getContext()
    except SSL.Error as problem:
        raise ValueError(f"the key does not match the certificate ({problem})") from None
    return LoadedCertificate(options, context, certificates[0])


def load_files(certificate_path: str, key_path: str) -> LoadedCertificate:
    """The certificate and key files (the same file when it holds both)."""
    with open(certificate_path, "rb") as certificate:
        pem = certificate.read()
    if os.path.realpath(key_path) != os.path.realpath(certificate_path):
        with open(key_path, "rb") as key:
            pem += b"\n" + key.read()
    return load_pem(pem)


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ReloadableTLSOptions:
    """What transport.startTLS and TLSMemoryBIOFactory take, serving whichever
    certificate was loaded last."""

    def __init__(self, loaded: LoadedCertificate):
        self._loaded = loaded

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate new connections are shown."""
        return self._loaded.certificate

    def replace(self, loaded: LoadedCertificate) -> None:
        """New connections get `loaded` from now on. One attribute is rebound, so a
        connection being set up sees either the old context or the new, never a mix."""
        self._loaded = loaded

    def getContext(self) -> SSL.Context:
        return self._loaded.context

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self._loaded.context, None)
