"""Real IMAP clients for the end-to-end tests: a mailbox of a few hundred messages to
serve, and mbsync (isync) and offlineimap3 driven against a server, each syncing it with a
Maildir of its own. Nothing here knows which server it talks to."""

from __future__ import annotations

import base64
import hashlib
import imaplib
import os
import random
import re
import shutil
import ssl
import subprocess

# The size of the one large attachment of the corpus (before base64).
LARGE_ATTACHMENT = 2 * 1024 * 1024
WORDS = (
    "invoice order meeting report budget launch contract offer review agenda update"
    " delivery payment schedule proposal minutes shipment renewal estimate design"
).split()


def corpus(count: int, address: str = "jane@acme.test", seed: int = 16) -> list[bytes]:
    """`count` messages, the same each time: plain ASCII, 8-bit UTF-8 text with an RFC 2047
    subject, multipart/alternative with HTML, multipart/mixed with a small attachment, a
    forwarded message (message/rfc822), and message 7 with a 2 MiB attachment. Message
    n's subject is "Message n about <word>", its Message-ID <n@corpus.test>."""
    chooser = random.Random(seed)
    found = []
    for number in range(count):
        word = WORDS[number % len(WORDS)]
        subject = f"Message {number} about {word}"
        head = (
            f"From: Sender {number % 20} <sender{number % 20}@corr.example>\r\n"
            f"To: Jane <{address}>\r\nDate: Mon, 7 Dec 2026 10:{number % 60:02d}:00 +0000\r\n"
            f"Message-ID: <{number}@corpus.test>\r\nMIME-Version: 1.0\r\n"
        )
        text = "\r\n".join(
            " ".join(chooser.choice(WORDS) for _ in range(10)).capitalize() + "."
            for _ in range(chooser.randint(3, 30))
        )
        kind = number % 5
        if number == 7:
            data = base64.encodebytes(random.Random(number).randbytes(LARGE_ATTACHMENT))
            raw = mixed(head, subject, text, "archive.bin", data.decode().replace("\n", "\r\n"))
        elif kind == 0:
            data = base64.encodebytes(chooser.randbytes(3000)).decode().replace("\n", "\r\n")
            raw = mixed(head, subject, text, f"report-{number}.pdf", data)
        elif kind == 1:
            raw = (
                f"{head}Subject: {subject}\r\n"
                f"Content-Type: multipart/alternative; boundary=ALT\r\n\r\n"
                f"--ALT\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\nŽluťoučký kůň. {text}\r\n"
                f"--ALT\r\nContent-Type: text/html; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\n<p>Žluťoučký kůň.</p><p>{text}</p>\r\n"
                f"--ALT--\r\n"
            )
        elif kind == 2:
            raw = (
                f"{head}Subject: =?utf-8?q?P=C5=99=C3=ADloha?= {subject}\r\n"
                f"Content-Type: text/plain; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\nPříliš žluťoučký kůň úpěl. {text}\r\n"
            )
        elif kind == 3 and number % 2:
            raw = (
                f"{head}Subject: Fwd: {subject}\r\n"
                f"Content-Type: multipart/mixed; boundary=FWD\r\n\r\n"
                f"--FWD\r\nContent-Type: text/plain\r\n\r\nForwarded below.\r\n"
                f"--FWD\r\nContent-Type: message/rfc822\r\n\r\n"
                f"From: Bob <bob@corr.example>\r\nSubject: {subject}\r\n"
                f"Message-ID: <inner-{number}@corpus.test>\r\n\r\n{text}\r\n"
                f"--FWD--\r\n"
            )
        else:
            raw = f"{head}Subject: {subject}\r\nContent-Type: text/plain\r\n\r\n{text}\r\n"
        found.append(raw.encode())
    return found


def mixed(head: str, subject: str, text: str, filename: str, data: str) -> str:
    return (
        f"{head}Subject: {subject}\r\nContent-Type: multipart/mixed; boundary=MIX\r\n\r\n"
        f"--MIX\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{text}\r\n"
        f"--MIX\r\nContent-Type: application/octet-stream\r\n"
        f'Content-Disposition: attachment; filename="{filename}"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{data}--MIX--\r\n"
    )


def unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the servers under test show self-signed ones
    return context


def server_certificate(port: int, path: str) -> str:
    """The certificate the server on loopback shows after STARTTLS (on `port`), written to
    `path` in PEM (the clients trust exactly it); the path."""
    connection = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        connection.starttls(unverified_context())
        der = connection.sock.getpeercert(binary_form=True)
    finally:
        connection.shutdown()
    with open(path, "w") as out:
        out.write(ssl.DER_cert_to_PEM_cert(der))
    return path


# --- the Maildir the clients keep ---------------------------------------------------------


def maildir_messages(folder: str) -> dict[str, str]:
    """{file name without its flags: flags} of a Maildir folder's messages (new and cur)."""
    found = {}
    for sub in ("new", "cur"):
        directory = os.path.join(folder, sub)
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            base, _sep, info = name.partition(":2,")
            found[f"{sub}/{base}"] = info
    return found


def maildir_find(folder: str, needle: bytes) -> str:
    """The path of the one message of the Maildir folder whose bytes hold `needle`."""
    paths = []
    for sub in ("new", "cur"):
        directory = os.path.join(folder, sub)
        for name in os.listdir(directory) if os.path.isdir(directory) else ():
            with open(os.path.join(directory, name), "rb") as message:
                if needle in message.read():
                    paths.append(os.path.join(directory, name))
    if len(paths) != 1:
        raise AssertionError(f"{len(paths)} messages hold {needle!r} in {folder}")
    return paths[0]


def maildir_set_flags(path: str, flags: str) -> str:
    """Give a message of a Maildir these flags (letters: S seen, F flagged, ...); its new
    path."""
    directory, name = os.path.split(path)
    base = name.partition(":2,")[0]
    cur = os.path.join(os.path.dirname(directory), "cur")
    target = os.path.join(cur, f"{base}:2,{''.join(sorted(flags))}")
    os.rename(path, target)
    return target


def maildir_flags(path_or_name: str) -> str:
    return os.path.basename(path_or_name).partition(":2,")[2]


def maildir_move(path: str, folder: str, strip=re.compile(r",U=\d+")) -> str:
    """Move a message file into another Maildir folder as a mail client does (the file
    renamed, without the source folder's uid mark mbsync keeps in the name)."""
    name = strip.sub("", os.path.basename(path))
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    target = os.path.join(folder, "cur", name)
    os.rename(path, target)
    return target


# --- mbsync -------------------------------------------------------------------------------


class Mbsync:
    """isync's mbsync: the server's folders to a Maildir under `directory` and back."""

    command = "mbsync"

    def __init__(self, directory: str, port: int, login: str, password: str, certificate: str):
        self.directory = directory
        self.maildir = os.path.join(directory, "mail")
        os.makedirs(self.maildir, exist_ok=True)
        self.config = os.path.join(directory, "mbsyncrc")
        with open(self.config, "w") as out:
            out.write(
                f"IMAPAccount server\nHost 127.0.0.1\nPort {port}\nUser {login}\n"
                f'Pass "{password}"\nSSLType STARTTLS\nCertificateFile {certificate}\n'
                "AuthMechs LOGIN\n\n"
                "IMAPStore far\nAccount server\n\n"
                f"MaildirStore near\nPath {self.maildir}/\nInbox {self.maildir}/INBOX\n"
                "SubFolders Verbatim\n\n"
                # The server's folders are fixed: none is made there (Create Near), and a
                # message deleted on either side goes on both (Expunge Both).
                "Channel box\nFar :far:\nNear :near:\nPatterns *\nCreate Near\n"
                "Expunge Both\nSync All\nSyncState *\n"
            )

    def folder(self, name: str) -> str:
        return os.path.join(self.maildir, name)

    def sync(self) -> str:
        """One run syncing every folder both ways; its output (AssertionError when it
        failed)."""
        return run_client([self.command, "-V", "-c", self.config, "-a"])


# --- offlineimap3 -------------------------------------------------------------------------


class OfflineImap:
    """offlineimap3: the server's folders to a Maildir under `directory` and back.

    It connects with implicit TLS to `tls_port` and trusts the server's certificate by
    its SHA-256 fingerprint: over STARTTLS it hangs or crashes now and then as it
    connects (with Dovecot too: one first sync in six here), as its imaplib2 wraps the
    socket its reader thread is already reading."""

    command = "offlineimap"

    def __init__(self, directory: str, tls_port: int, login: str, password: str, certificate: str):
        self.directory = directory
        self.maildir = os.path.join(directory, "mail")
        os.makedirs(self.maildir, exist_ok=True)
        with open(certificate) as pem:
            der = ssl.PEM_cert_to_DER_cert(pem.read())
        self.config = os.path.join(directory, "offlineimaprc")
        with open(self.config, "w") as out:
            out.write(
                f"[general]\naccounts = server\nmetadata = {directory}/metadata\n"
                "ui = basic\nmaxsyncaccounts = 1\n\n"
                "[Account server]\nlocalrepository = near\nremoterepository = far\n\n"
                f"[Repository near]\ntype = Maildir\nlocalfolders = {self.maildir}\n"
                "sep = /\n\n"
                "[Repository far]\ntype = IMAP\nremotehost = 127.0.0.1\n"
                f"remoteport = {tls_port}\nremoteuser = {login}\nremotepass = {password}\n"
                f"ssl = yes\ncert_fingerprint = {hashlib.sha256(der).hexdigest()}\n"
                "auth_mechanisms = LOGIN\n"
                # The server's folders are fixed: none is made there.
                "createfolders = False\nmaxconnections = 1\nholdconnectionopen = no\n"
            )

    def folder(self, name: str) -> str:
        return os.path.join(self.maildir, name)

    def sync(self) -> str:
        return run_client([self.command, "-c", self.config, "-o", "-u", "basic"])

    @staticmethod
    def changes(output: str) -> list[str]:
        """What a sync's log says it copied, flagged, deleted or moved."""
        return [
            line.strip()
            for line in output.splitlines()
            if re.search(r"^\s*(Copy message|Adding flag|Deleting flag|Deleting \d|Moving)", line)
        ]


def run_client(command: list[str], timeout: float = 60) -> str:
    """Run a sync client; its output, or AssertionError with the end of it when it failed,
    said ERROR or took longer than `timeout` seconds."""
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        output = ((expired.stdout or b"") + (expired.stderr or b"")).decode(errors="replace")
        raise AssertionError(
            f"{command[0]} still ran after {timeout} s: ...{output[-3000:]}"
        ) from None
    output = (result.stdout + result.stderr).decode(errors="replace")
    if result.returncode != 0 or "ERROR" in output:
        raise AssertionError(f"{command[0]} failed ({result.returncode}): ...{output[-3000:]}")
    return output


def available(command: str) -> bool:
    return shutil.which(command) is not None


def connect(port: int, login: str, password: str):
    """An imapclient session on the server on loopback: STARTTLS, then LOGIN."""
    from imapclient import IMAPClient

    client = IMAPClient("127.0.0.1", port=port, ssl=False, timeout=30)
    client.starttls(unverified_context())
    client.login(login, password)
    return client


def server_state(port: int, login: str, password: str) -> dict[str, dict[int, tuple]]:
    """{folder: {uid: sorted flags}} of every selectable folder, as IMAP shows it (read
    with EXAMINE, so reading it changes nothing)."""
    client = connect(port, login, password)
    try:
        state = {}
        for flags, _delimiter, name in client.list_folders():
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            client.select_folder(name, readonly=True)
            uids = client.search("ALL")
            fetched = client.fetch(uids, ["FLAGS"]) if uids else {}
            state[name] = {
                uid: tuple(sorted(flag for flag in data[b"FLAGS"] if flag != b"\\Recent"))
                for uid, data in fetched.items()
            }
            client.close_folder()  # EXAMINEd: closing expunges nothing
        return state
    finally:
        client.logout()
