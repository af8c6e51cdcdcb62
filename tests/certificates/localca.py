"""A certificate authority of the tests' own for the renewal service: real keys, real
certificates signed by a real CA key, dated by the test's clock. It stands where the ACME
CA's issuer stands (issue(hostname) -> PEM of the key and chain) when what is tested is
when the service asks, not how the ACME exchange goes (tests/certificates/test_issuer.py
and the end-to-end test talk to pebble for that)."""

from __future__ import annotations

import datetime
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class LocalCA:
    def __init__(self, clock, valid_days: float = 90):
        self.clock = clock
        self.valid_days = valid_days
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Intermediate")])
        self.issued: list[tuple[float, str]] = []  # (clock time, thread name) per issue

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)

    def certificate(self, hostname: str, valid_days: float | None = None) -> bytes:
        """PEM of a new key and its certificate for hostname, valid from now."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = self.now()
        days = self.valid_days if valid_days is None else valid_days
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem + certificate.public_bytes(serialization.Encoding.PEM)

    def ca_certificate_pem(self) -> bytes:
        """The CA's own certificate, as a chain sent after a server's certificate."""
        now = self.now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, hostname: str) -> bytes:
        self.issued.append((self.clock.seconds(), threading.current_thread().name))
        return self.certificate(hostname)
