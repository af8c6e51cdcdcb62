"""One TLS options object for every listener: a new certificate reaches new connections
without a restart, over real TLS on loopback (SMTP STARTTLS, implicit TLS on submission,
IMAP STARTTLS and implicit TLS, HTTPS), while open connections keep theirs."""

from __future__ import annotations

import base64
import imaplib
import smtplib
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import defer, reactor, threads
from twisted.internet.interfaces import IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from atollon_mail import tap
from atollon_mail.config import load_config
from atollon_mail.selfsigned import make_self_signed
from atollon_mail.tlscontext import ReloadableTLSOptions, load_pem
from tests.certificates.localca import LocalCA
from tests.e2e.appliance import free_port
from tests.test_tap import MINIMAL, write_config


def unverified() -> ssl.SSLContext:
    # The point is which certificate is shown, not whether it is trusted.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def shown(sock) -> x509.Certificate:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))


def new_certificate(hostname: str):
    certificate, key = make_self_signed(hostname)
    return load_pem(key + certificate)


class LoadPemTests(unittest.TestCase):
    def test_key_and_chain_in_any_order(self):
        certificate, key = make_self_signed("a.acme.test")
        chain_certificate, _ = make_self_signed("ca.acme.test")
        loaded = load_pem(certificate + chain_certificate + key)
        self.assertEqual(loaded.certificate.subject.rfc4514_string(), "CN=a.acme.test")
        self.assertIsInstance(loaded.context, SSL.Context)

    def test_a_key_of_another_certificate_is_refused(self):
        certificate, _ = make_self_signed("a.acme.test")
        _, other_key = make_self_signed("b.acme.test")
        with self.assertRaisesRegex(ValueError, "does not match"):
            load_pem(certificate + other_key)

    def test_missing_key_or_certificate_is_named(self):
        certificate, key = make_self_signed("a.acme.test")
        with self.assertRaisesRegex(ValueError, "one PEM private key, found 0"):
            load_pem(certificate)
        with self.assertRaisesRegex(ValueError, "no PEM certificate"):
            load_pem(key)

    def test_an_encrypted_or_unsupported_key_is_one_line_value_error(self):
        certificate, key = make_self_signed("a.acme.test")
        private = serialization.load_pem_private_key(key, password=None)
        encrypted = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
        with self.assertRaisesRegex(ValueError, "^the private key is encrypted; give it without"):
            load_pem(certificate + encrypted)
        # A key block whose algorithm no one knows (an unknown OID in PKCS#8).
        unknown = (
            b"-----BEGIN PRIVATE KEY-----\n"
            + base64.encodebytes(
                bytes.fromhex("300f020100300806042a0304050500") + bytes.fromhex("0400")
            )
            + b"-----END PRIVATE KEY-----\n"
        )
        with self.assertRaises(ValueError) as raised:
            load_pem(certificate + unknown)
        self.assertEqual(str(raised.exception).count("\n"), 0)

    def test_provides_what_start_tls_and_tls_factories_take(self):
        options = ReloadableTLSOptions(new_certificate("a.acme.test"))
        verifyObject(IOpenSSLServerConnectionCreator, options)
        verifyObject(IOpenSSLContextFactory, options)


LISTENERS = """
[smtp]
listen = tcp:{smtp}:interface=127.0.0.1
greet_pause = 0
[submission]
listen = tcp:{submission}:interface=127.0.0.1
tls_listen = tcp:{submission_tls}:interface=127.0.0.1
[imap]
listen = tcp:{imap}:interface=127.0.0.1
tls_listen = tcp:{imap_tls}:interface=127.0.0.1
[web]
listen = tcp:{web}:interface=127.0.0.1
tls_listen = tcp:{web_tls}:interface=127.0.0.1
"""


class HotSwapTests(unittest.TestCase):
    """The appliance's own service tree on the real reactor, listening on loopback."""

    timeout = 60

    def setUp(self):
        self.ports = {
            name: free_port()
            for name in ("smtp", "submission", "submission_tls", "imap", "imap_tls", "web")
        }
        self.ports["web_tls"] = free_port()
        text = MINIMAL + LISTENERS.format(**self.ports)
        self.config = load_config(write_config(self, text))
        self.appliance = tap.build_appliance(self.config, reactor)
        self.appliance.privilegedStartService()
        self.appliance.startService()
        self.addCleanup(self.appliance.stopService)
        factory = self.appliance.getServiceNamed("smtp").factory
        self.tls_options = factory.wrappedFactory.tls_options

    def open_sessions(self) -> dict:
        """One open TLS session of each kind: name -> (client, the certificate shown)."""
        host = "127.0.0.1"
        sessions = {}
        smtp = smtplib.SMTP(host, self.ports["smtp"], timeout=10)
        smtp.starttls(context=unverified())
        sessions["smtp starttls"] = (smtp, shown(smtp.sock))
        submission = smtplib.SMTP(host, self.ports["submission"], timeout=10)
        submission.starttls(context=unverified())
        sessions["submission starttls"] = (submission, shown(submission.sock))
        implicit = smtplib.SMTP_SSL(
            host, self.ports["submission_tls"], timeout=10, context=unverified()
        )
        sessions["submission implicit tls"] = (implicit, shown(implicit.sock))
        imap = imaplib.IMAP4(host, self.ports["imap"], timeout=10)
        imap.starttls(ssl_context=unverified())
        sessions["imap starttls"] = (imap, shown(imap.sock))
        imap_tls = imaplib.IMAP4_SSL(
            host, self.ports["imap_tls"], ssl_context=unverified(), timeout=10
        )
        sessions["imap implicit tls"] = (imap_tls, shown(imap_tls.sock))
        raw = socket.create_connection((host, self.ports["web_tls"]), timeout=10)
        web = unverified().wrap_socket(raw)
        sessions["web https"] = (web, shown(web))
        return sessions

    @staticmethod
    def still_talking(name: str, client) -> bool:
        """Whether an open session still answers, over the TLS it started with."""
        if name.startswith("smtp") or name.startswith("submission"):
            return client.noop()[0] == 250
        if name.startswith("imap"):
            return client.noop()[0] == "OK"
        client.sendall(b"GET /health HTTP/1.1\r\nHost: mx.acme.test\r\nConnection: close\r\n\r\n")
        return client.recv(100).startswith(b"HTTP/1.1 200")

    @staticmethod
    def close(sessions: dict) -> None:
        for name, (client, _) in sessions.items():
            if name.startswith("imap"):
                client.logout()
            elif name.startswith("web"):
                client.close()
            else:
                client.quit()

    @defer.inlineCallbacks
    def test_new_connections_see_the_new_certificate_open_ones_keep_theirs(self):
        first = self.tls_options.certificate
        self.assertEqual(first.subject.rfc4514_string(), "CN=mx.acme.test")
        before = yield threads.deferToThread(self.open_sessions)
        self.addCleanup(threads.deferToThread, self.close, before)
        self.assertEqual(
            {name: seen for name, (_, seen) in before.items()}, dict.fromkeys(before, first)
        )

        # The new one from a CA, with its intermediate: the whole chain is sent.
        ca = LocalCA(reactor)
        swapped = load_pem(ca.certificate("b.acme.test") + ca.ca_certificate_pem())
        self.tls_options.replace(swapped)
        chains = yield threads.deferToThread(
            lambda: {
                name: sent_chain(self.ports[name])
                for name in ("submission_tls", "imap_tls", "web_tls")
            }
        )
        for name, chain in chains.items():
            self.assertEqual(
                [certificate.subject for certificate in chain],
                [swapped.certificate.subject, ca.name],
                name,
            )
        after = yield threads.deferToThread(self.open_sessions)
        self.addCleanup(threads.deferToThread, self.close, after)
        self.assertEqual(
            {name: seen for name, (_, seen) in after.items()},
            dict.fromkeys(after, swapped.certificate),
        )
        answering = yield threads.deferToThread(
            lambda: {name: self.still_talking(name, client) for name, (client, _) in before.items()}
        )
        self.assertEqual(answering, dict.fromkeys(before, True))

    @defer.inlineCallbacks
    def test_tls_1_1_is_refused(self):
        # set_options ORs in its argument and returns the options in force: 0 reads them.
        options = self.tls_options.getContext().set_options(0)
        self.assertTrue(options & SSL.OP_NO_TLSv1_1 and options & SSL.OP_NO_TLSv1)

        def handshake(version) -> str:
            context = unverified()
            # The client offers exactly `version` (SECLEVEL=0: its own library would
            # not offer TLS 1.1 otherwise), so only the server can refuse.
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = context.maximum_version = version
            with socket.create_connection(("127.0.0.1", self.ports["web_tls"]), 10) as raw:
                try:
                    with context.wrap_socket(raw) as tls:
                        return tls.version()
                except ssl.SSLError as problem:
                    return f"refused: {problem.reason}"

        old = yield threads.deferToThread(handshake, ssl.TLSVersion.TLSv1_1)
        # The server's alert, not a client that would not try.
        self.assertEqual(old, "refused: TLSV1_ALERT_PROTOCOL_VERSION")
        current = yield threads.deferToThread(handshake, ssl.TLSVersion.TLSv1_2)
        self.assertEqual(current, "TLSv1.2")


def sent_chain(port: int) -> list[x509.Certificate]:
    """The certificates an implicit-TLS listener sends, server's first."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        connection = SSL.Connection(context, raw)
        connection.set_connect_state()
        connection.setblocking(True)
        connection.do_handshake()
        chain = connection.get_peer_cert_chain(as_cryptography=True)
        connection.shutdown()
    return chain


class KeyFileTests(unittest.TestCase):
    def test_the_configured_key_and_chain_are_served(self):
        certificate, key = make_self_signed("mx.acme.test")
        chain, _ = make_self_signed("ca.acme.test")
        path = write_config(self, MINIMAL)
        certificate_path = path + ".crt"
        key_path = path + ".key"
        with open(certificate_path, "wb") as out:
            out.write(certificate + chain)
        with open(key_path, "wb") as out:
            out.write(key)
        config = load_config(
            write_config(
                self,
                MINIMAL + f"[smtp]\ntls_certificate = {certificate_path}\ntls_key = {key_path}\n",
            )
        )
        options = tap.load_tls_options(config)
        self.assertEqual(options.certificate.public_bytes(serialization.Encoding.PEM), certificate)

    def test_one_combined_file_named_as_both_certificate_and_key(self):
        certificate, key = make_self_signed("mx.acme.test")
        chain, _ = make_self_signed("ca.acme.test")
        path = write_config(self, MINIMAL)
        combined = path + ".pem"
        with open(combined, "wb") as out:
            out.write(key + certificate + chain)
        config = load_config(
            write_config(
                self,
                MINIMAL + f"[smtp]\ntls_certificate = {combined}\ntls_key = {combined}\n",
            )
        )
        options = tap.load_tls_options(config)
        self.assertEqual(options.certificate.public_bytes(serialization.Encoding.PEM), certificate)
        # Two copies of one key in text given as one: the same key, taken once.
        loaded = load_pem(key + certificate + key)
        self.assertEqual(loaded.certificate, options.certificate)
