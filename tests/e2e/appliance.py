"""The appliance under `twistd` in a subprocess, for the end-to-end tests: started with
its own configuration and store, driven through its command line, read through its
store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from atollon_mail.store import filing as filing_ops
from atollon_mail.store import queue as queue_ops
from atollon_mail.store.pool import Store
from tests.e2e.certs import write_self_signed
from tests.support import free_port

BIN = os.path.dirname(sys.executable)


def free_port_on(*hosts: str) -> int:
    """A port number free on every one of the loopback addresses."""
    return free_port(*hosts)


class TwistdAppliance:
    """What every appliance under test shares: a subclass writes `self.config` and says
    where its SMTP side listens (`listening`), which extra options twistd gets and the
    environment of its processes (None: this process's)."""

    directory: str
    config: str
    database_url: str
    twistd_options: tuple[str, ...] = ()
    preexec_fn = None
    process = None

    def listening(self) -> tuple[str, int]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None

    def start(self) -> None:
        self.log_path = os.path.join(self.directory, "twistd.log")
        self.process = subprocess.Popen(
            [
                os.path.join(BIN, "twistd"),
                "--nodaemon",
                *self.twistd_options,
                "--pidfile=",
                "--logfile",
                self.log_path,
                "atollon-mail",
                "--config",
                self.config,
            ],
            cwd=self.directory,
            env=self.environment(),
            preexec_fn=self.preexec_fn,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited: {self.log()}")
            try:
                socket.create_connection(self.listening(), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the appliance did not listen: {self.log()}")

    def log(self) -> str:
        with open(self.log_path) as log_file:
            return log_file.read()

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [os.path.join(BIN, "atollon-mail"), "--config", self.config, *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.directory,
            env=self.environment(),
        )

    def store(self) -> Store:
        return Store.from_url(self.database_url, None)

    def run_sync(self, operation, *args, **kwargs):
        """A store operation run on a store of its own, stopped after it."""
        store = self.store()
        try:
            return store.run_sync(operation, *args, **kwargs)
        finally:
            store.stop()


class RunningAppliance(TwistdAppliance):
    """`twistd atollon-mail` in a subprocess with its own configuration and store."""

    def __init__(
        self,
        directory: str,
        tls: bool = False,
        extra: str = "",
        delivery_config: str = "",
        implicit_tls: bool = False,
        preexec_fn=None,
        imap_tls: bool = False,
    ):
        self.preexec_fn = preexec_fn  # run in the child before twistd (resource limits)
        self.delivery_config = delivery_config
        self.implicit_tls_port = free_port() if implicit_tls else None
        self.directory = directory
        self.smtp_port = free_port()
        self.web_port = free_port()
        self.submission_port = free_port()
        self.imap_port = free_port()
        self.imap_tls_port = free_port() if imap_tls else None
        self.database_url = f"sqlite:///{directory}/data/store.sqlite"
        tls_lines = ""
        if tls:
            certificate, key = write_self_signed(directory, "mx.acme.test")
            tls_lines = f"tls_certificate = {certificate}\ntls_key = {key}\n"
        self.config = os.path.join(directory, "atollon-mail.ini")
        with open(self.config, "w") as config_file:
            config_file.write(
                f"[appliance]\nhostname = mx.acme.test\ndata_dir = {directory}/data\n"
                f"[database]\nurl = sqlite:///{directory}/data/store.sqlite\n"
                f"[smtp]\nlisten = tcp:{self.smtp_port}:interface=127.0.0.1\n{tls_lines}{extra}"
                f"[web]\nlisten = tcp:{self.web_port}:interface=127.0.0.1\n"
                f"[imap]\nlisten = tcp:{self.imap_port}:interface=127.0.0.1\n"
                + (
                    f"tls_listen = tcp:{self.imap_tls_port}:interface=127.0.0.1\n"
                    if imap_tls
                    else ""
                )
                + f"[submission]\nlisten = tcp:{self.submission_port}:interface=127.0.0.1\n"
                + (
                    f"tls_listen = tcp:{self.implicit_tls_port}:interface=127.0.0.1\n"
                    if implicit_tls
                    else ""
                )
                + self.delivery_config
            )
        self.process = None

    def listening(self) -> tuple[str, int]:
        return ("127.0.0.1", self.smtp_port)


class LoopbackAppliance(TwistdAppliance):
    """`twistd` running one appliance whose MX side listens on its own loopback address."""

    twistd_options = ("--no_save",)

    def __init__(self, directory: str, domain: str, interface: str, mx_port: int, dns_port: int):
        self.directory = directory
        self.domain = domain
        self.interface = interface
        self.mx_port = mx_port
        self.submission_port = free_port()
        certificate, key = write_self_signed(directory, f"mx.{domain}")
        self.config = os.path.join(directory, "atollon-mail.ini")
        self.database_url = f"sqlite:///{directory}/data/store.sqlite"
        with open(self.config, "w") as config_file:
            config_file.write(
                f"[appliance]\nhostname = mx.{domain}\ndata_dir = {directory}/data\n"
                f"[database]\nurl = {self.database_url}\n"
                f"[smtp]\nlisten = tcp:{mx_port}:interface={interface}\n"
                f"tls_certificate = {certificate}\ntls_key = {key}\ngreet_pause = 0\n"
                f"[web]\nlisten = tcp:{free_port()}:interface=127.0.0.1\n"
                f"[imap]\nlisten = tcp:{free_port()}:interface=127.0.0.1\n"
                f"[submission]\nlisten = tcp:{self.submission_port}:interface=127.0.0.1\n"
                f"[delivery]\nnameservers = 127.0.0.1:{dns_port}\nmx_port = {mx_port}\n"
                # Should the other appliance be slow to answer, the retry comes soon.
                "retry_first = 1\nretry_max = 2\n"
            )
        self.log_path = os.path.join(directory, "twistd.log")
        self.process = None

    def listening(self) -> tuple[str, int]:
        return (self.interface, self.mx_port)

    def environment(self) -> dict[str, str]:
        return {**os.environ, "ATOLLON_MAIL_CONFIG": self.config}

    def mail(self, address: str) -> list[tuple[str, bytes]]:
        """(envelope sender, raw) of every message in the mailbox, oldest first."""
        filings = self.run_sync(filing_ops.list_filings, address, 1000)
        return [
            (
                filing.message.envelope_sender,
                self.run_sync(filing_ops.message_raw, filing.message.id),
            )
            for filing in reversed(filings)
        ]

    def queue(self):
        return self.run_sync(queue_ops.queue_list)


class ClusterNode(TwistdAppliance):
    """One of several `twistd atollon-mail` nodes on one PostgreSQL database: its own
    directory, data dir and ports; the secrets every node must share set alike in each
    configuration; relaying for loopback through `smarthost`; no inbound checks."""

    def __init__(
        self,
        directory: str,
        node_name: str,
        database_url: str,
        smarthost: str,
        massmail: str = "",
        check_interval: str = "1s",
    ):
        self.directory = directory
        self.node_name = node_name
        self.database_url = database_url
        self.smtp_port = free_port()
        self.submission_port = free_port()
        self.imap_port = free_port()
        self.web_port = free_port()
        self.config = os.path.join(directory, "atollon-mail.ini")
        with open(self.config, "w") as config_file:
            config_file.write(
                f"[appliance]\nhostname = mx.acme.test\ndata_dir = {directory}/data\n"
                f"[database]\nurl = {database_url}\n"
                f"[smtp]\nlisten = tcp:{self.smtp_port}:interface=127.0.0.1\n"
                "relay_networks = 127.0.0.0/8\ngreet_pause = 0\n"
                f"[web]\nlisten = tcp:{self.web_port}:interface=127.0.0.1\n"
                f"[imap]\nlisten = tcp:{self.imap_port}:interface=127.0.0.1\n"
                f"[submission]\nlisten = tcp:{self.submission_port}:interface=127.0.0.1\n"
                f"[delivery]\nsmarthost = {smarthost}\nretry_first = 1\nretry_max = 2\n"
                "srs_secret = the cluster's shared SRS secret\n"
                "[massmail]\nsecret = the cluster's shared campaign secret\n"
                f"{massmail}"
                "[inbound]\nchecks = off\n"
                f"[cluster]\nnode_name = {node_name}\ncheck_interval = {check_interval}\n"
            )
        self.process = None

    def listening(self) -> tuple[str, int]:
        return ("127.0.0.1", self.smtp_port)
