"""The self-signed certificate for STARTTLS when none is configured (Debian's "snakeoil").

Made once, the first time the appliance starts without [smtp] tls_certificate, and kept in
the data directory; every later start reuses it. Clients that check certificates warn
about it, so a real one belongs in [smtp] tls_certificate and tls_key; until then the
submission port still offers STARTTLS and, after it, AUTH.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.logger import Logger

CERTIFICATE_FILE = "tls-selfsigned.crt"
KEY_FILE = "tls-selfsigned.key"
VALID_DAYS = 3650  # as long as make-ssl-cert's snakeoil
RSA_BITS = 2048  # RSA rather than EC: every mail client and server can use it

log = Logger()


def self_signed_paths(data_dir: str) -> tuple[str, str]:
    """Where the certificate and its key are kept: (certificate, key)."""
    return os.path.join(data_dir, CERTIFICATE_FILE), os.path.join(data_dir, KEY_FILE)


def make_self_signed(hostname: str, now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """A new key and a certificate for hostname (subject CN and subjectAltName), as PEM:
    (certificate, key)."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    try:
        alternative: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        alternative = x509.DNSName(hostname)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([alternative]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def write_private(path: str, data: bytes) -> None:
    """Write data to path, mode 0600, fsynced, replacing it in one step (the directory
    fsynced too, so the new name survives a crash)."""
    partial = path + ".new"
    # A partial file left by a crash may have a wider mode, which O_CREAT's would not
    # change: removed, and the new one made by us alone (O_EXCL) with 0600 from its start.
    try:
        os.unlink(partial)
    except FileNotFoundError:
        pass
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as output:
        output.write(data)
        output.flush()
        os.fsync(output.fileno())
    os.replace(partial, path)
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_or_create_self_signed(data_dir: str, hostname: str) -> tuple[str, str]:
    """The paths of the kept self-signed certificate and key, made the first time:
    (certificate, key)."""
    certificate_path, key_path = self_signed_paths(data_dir)
    if os.path.isfile(certificate_path) and os.path.isfile(key_path):
        return certificate_path, key_path
    os.makedirs(data_dir, mode=0o750, exist_ok=True)
    certificate, key = make_self_signed(hostname)
    # The key first: a certificate on disk always has its key beside it.
    write_private(key_path, key)
    write_private(certificate_path, certificate)
    log.warn(
        "no [smtp] tls_certificate configured: created a self-signed certificate for "
        "{hostname} in {path} (mode 0600) for STARTTLS; clients warn about it until "
        "[smtp] tls_certificate and tls_key name a real one",
        hostname=hostname,
        path=certificate_path,
    )
    return certificate_path, key_path
