"""Debian's pebble, Let's Encrypt's test ACME CA, started on loopback for the tests.

    pebble = start_pebble(directory, http_port=web_port, dns_port=dns.port)
    self.addCleanup(pebble.stop)
    pebble.directory_url     # https://localhost:PORT/dir, for [tls] acme_directory
    pebble.ca_bundle         # the CA of pebble's own HTTPS, for [tls] acme_ca_bundle
    pebble.intermediate()    # the intermediate that signs what it issues (new each start)

It checks HTTP-01 challenges for real: it resolves the names through the DNS server on
127.0.0.1:dns_port (tests/dnsserver.py) and fetches the answer from http_port. Without
the pebble binary start_pebble raises SkipTest with the reason. PEBBLE_VA_NOSLEEP makes
it validate at once, PEBBLE_WFE_NONCEREJECT=0 keeps it from refusing good nonces at
random; its WFE listens with a certificate made here, signed by a CA of its own.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SkipTest

from tests.e2e.appliance import free_port

START_TIMEOUT = 15.0


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_https_certificate(directory: str) -> tuple[str, str, str]:
    """A CA and a certificate it signs for localhost and 127.0.0.1: (CA file,
    certificate file, key file)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test HTTPS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tuple(os.path.join(directory, name) for name in ("ca.pem", "cert.pem", "key.pem"))
    for path, data in zip(
        paths,
        (
            ca.public_bytes(serialization.Encoding.PEM),
            leaf.public_bytes(serialization.Encoding.PEM),
            _pem_key(key),
        ),
        strict=True,
    ):
        with open(path, "wb") as out:
            out.write(data)
    return paths  # type: ignore[return-value]


@attrs.define
class RunningPebble:
    process: subprocess.Popen
    directory_url: str
    management_url: str
    ca_bundle: str
    log_path: str

    def _get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=self.ca_bundle)
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return response.read()

    def intermediate(self) -> x509.Certificate:
        """The intermediate certificate signing what pebble issues (made at its start)."""
        return x509.load_pem_x509_certificate(self._get(f"{self.management_url}/intermediates/0"))

    def log(self) -> str:
        with open(self.log_path, errors="replace") as log_file:
            return log_file.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_pebble(directory: str, http_port: int, dns_port: int) -> RunningPebble:
    """Pebble on 127.0.0.1, validating HTTP-01 on http_port and resolving names through
    127.0.0.1:dns_port; returns once its directory answers."""
    binary = shutil.which("pebble")
    if binary is None:
        raise SkipTest("pebble (Debian package pebble) is not installed: `make test` installs it")
    os.makedirs(directory, exist_ok=True)
    ca_bundle, certificate, key = write_https_certificate(directory)
    port, management_port = free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{management_port}",
            "certificate": certificate,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": free_port(),  # TLS-ALPN-01: not used here
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    config_path = os.path.join(directory, "pebble-config.json")
    with open(config_path, "w") as config_file:
        json.dump(config, config_file)
    log_path = os.path.join(directory, "pebble.log")
    environment = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [binary, "-config", config_path, "-dnsserver", f"127.0.0.1:{dns_port}"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=directory,
        )
    running = RunningPebble(
        process,
        f"https://localhost:{port}/dir",
        f"https://localhost:{management_port}",
        ca_bundle,
        log_path,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"pebble exited: {running.log()}")
        try:
            running._get(running.directory_url)
            return running
        except OSError:
            time.sleep(0.05)
    running.stop()
    raise AssertionError(f"pebble did not answer within {START_TIMEOUT} s: {running.log()}")
