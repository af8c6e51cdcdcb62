"""The backup archive: one tar file holding the database (a SQLite copy or a pg_dump),
the data directory's keys and secrets under `data/`, and `manifest.json` last (format
version, appliance version, database kind, schema version, when it was made, and each
file's size, mode and sha256), optionally encrypted with a passphrase.

Encryption: scrypt (n=2**17, r=8, p=1, OWASP's recommendation) makes a 256-bit key from
the passphrase and a random salt; the tar stream is cut into 1 MiB chunks, each sealed
with AES-GCM under a nonce made of a random prefix, the chunk's number and a last-chunk
flag, with the header as associated data (the STREAM construction), so chunks cannot be
reordered, dropped or cut off unnoticed. A key check (HMAC under a second key from the
same scrypt) follows the header, so a wrong passphrase is told apart from a damaged
archive; archives written before it (MAGIC_1) are still read. Fernet would have needed
the whole archive in memory at once (its token is one message), and a mail archive runs
to gigabytes.

The archive file is written beside its final name, fsynced, renamed over it and its
directory fsynced: a reader never sees a partial archive at that name. Mode 0600.

Blocking throughout: the CLI calls it directly, the scheduled service in a thread.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import secrets
import shutil
import struct
import tarfile
from collections.abc import Iterable

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATA_PREFIX = "data/"
DATABASE_NAMES = {"sqlite": "database.sqlite", "postgresql": "database.pgdump"}

MAGIC = b"atollon-mail backup, encrypted 2\n"
# Format 1 had no key check after the header: a wrong passphrase and a damaged first
# chunk looked the same. Still read.
MAGIC_1 = b"atollon-mail backup, encrypted 1\n"
CHECK_SIZE = 16
SCRYPT_LOG2_N = 17
SCRYPT_R = 8
SCRYPT_P = 1
CHUNK = 1024 * 1024
_HEADER = struct.Struct(">16sBBB7s")  # salt, log2 n, r, p, nonce prefix
_LENGTH = struct.Struct(">I")
# scrypt needs 128 * r * n * p bytes: 128 MiB with the parameters above. A header asking
# for more is refused rather than obeyed (r=32, n=2**22, p=16 in a hostile archive would
# ask for 256 GiB); twice the default leaves room for a later, stronger default.
SCRYPT_MAX_MEMORY = 256 * 1024 * 1024
_COPY = 1024 * 1024


class ArchiveError(Exception):
    """The archive cannot be written or is not a usable backup; str() is one line."""


@attrs.frozen
class Manifest:
    format: int
    appliance_version: str
    database: str  # "sqlite" or "postgresql"
    schema_version: int
    created: str  # ISO 8601, UTC
    files: tuple[dict, ...]  # {"name", "size", "mode", "sha256"}
    postgresql_schema: str | None = None  # the schema a pg_dump was limited to

    def to_json(self) -> bytes:
        return json.dumps(attrs.asdict(self), indent=1, sort_keys=True).encode() + b"\n"

    @property
    def database_file(self) -> str:
        return DATABASE_NAMES[self.database]

    @property
    def data_files(self) -> list[dict]:
        return [entry for entry in self.files if entry["name"].startswith(DATA_PREFIX)]


# --- encryption ----------------------------------------------------------------------


def scrypt_memory(log2_n: int, r: int, p: int) -> int:
    return 128 * r * 2**log2_n * p


def _keys(passphrase: bytes, salt: bytes, log2_n: int, r: int, p: int) -> tuple[bytes, bytes]:
    """(AES-GCM key, key check): the check, written after the header, tells a wrong
    passphrase from a damaged archive before any chunk is opened."""
    # hashlib's scrypt takes maxmem: OpenSSL refuses instead of allocating past it.
    derived = hashlib.scrypt(
        passphrase,
        salt=salt,
        n=2**log2_n,
        r=r,
        p=p,
        maxmem=SCRYPT_MAX_MEMORY + 64 * 1024 * 1024,  # its own overhead beyond 128*r*n*p
        dklen=64,
    )
    check = hmac.new(derived[32:], b"atollon-mail backup key check", "sha256").digest()
    return derived[:32], check[:CHECK_SIZE]


def _nonce(prefix: bytes, number: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", number) + (b"\x01" if last else b"\x00")


class EncryptingWriter(io.RawIOBase):
    """A write-only file that seals what it is given onto `raw` (see the module)."""

    def __init__(self, raw, passphrase: bytes):
        super().__init__()
        self._raw = raw
        salt, prefix = secrets.token_bytes(16), secrets.token_bytes(7)
        key, check = _keys(passphrase, salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
        self._header = MAGIC + _HEADER.pack(salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, prefix) + check
        self._aead = AESGCM(key)
        self._prefix = prefix
        self._number = 0
        self._buffer = bytearray()
        raw.write(self._header)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._buffer += data
        # Keep at least one byte back: the last chunk is sealed as last at close().
        while len(self._buffer) > CHUNK:
            self._seal(bytes(self._buffer[:CHUNK]), last=False)
            del self._buffer[:CHUNK]
        return len(data)

    def _seal(self, chunk: bytes, last: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._prefix, self._number, last), chunk, self._header)
        self._raw.write(_LENGTH.pack(len(sealed)) + sealed)
        self._number += 1

    def close(self) -> None:
        if not self.closed:
            self._seal(bytes(self._buffer), last=True)
            self._buffer.clear()
        super().close()


class DecryptingReader(io.RawIOBase):
    """A read-only file giving back what EncryptingWriter sealed onto `raw` (positioned
    after MAGIC); a wrong passphrase or any change to the file raises ArchiveError."""

    def __init__(self, raw, passphrase: bytes, magic: bytes = MAGIC):
        super().__init__()
        self._raw = raw
        header = raw.read(_HEADER.size)
        if len(header) != _HEADER.size:
            raise ArchiveError("the encrypted archive is cut short (no complete header)")
        salt, log2_n, r, p, prefix = _HEADER.unpack(header)
        if not (10 <= log2_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16):
            raise ArchiveError("the encrypted archive's header is damaged")
        if scrypt_memory(log2_n, r, p) > SCRYPT_MAX_MEMORY:
            raise ArchiveError(
                "the encrypted archive's header asks for more than "
                f"{SCRYPT_MAX_MEMORY // 2**20} MiB of scrypt memory: damaged or hostile"
            )
        key, check = _keys(passphrase, salt, log2_n, r, p)
        self._checked = magic == MAGIC
        if self._checked:
            written = raw.read(CHECK_SIZE)
            if len(written) != CHECK_SIZE:
                raise ArchiveError("the encrypted archive is cut short (no complete header)")
            if not hmac.compare_digest(written, check):
                raise ArchiveError("wrong passphrase for this backup")
            header += written
        self._header = magic + header
        self._aead = AESGCM(key)
        self._prefix = prefix
        self._number = 0
        self._plain = b""
        self._done = False
        self._next = self._read_sealed()
        if self._next is None:
            raise ArchiveError("the encrypted archive is cut short (no data)")
        self._fill()  # the first chunk tells a wrong passphrase before anything else

    def readable(self) -> bool:
        return True

    def _read_sealed(self) -> bytes | None:
        length = self._raw.read(_LENGTH.size)
        if not length:
            return None
        if len(length) != _LENGTH.size:
            raise ArchiveError("the encrypted archive is cut short")
        (size,) = _LENGTH.unpack(length)
        if size > CHUNK + 16:
            raise ArchiveError("the encrypted archive is damaged (a chunk too long)")
        sealed = self._raw.read(size)
        if len(sealed) != size:
            raise ArchiveError("the encrypted archive is cut short")
        return sealed

    def _fill(self) -> None:
        sealed = self._next
        following = self._read_sealed()
        last = following is None
        try:
            plain = self._aead.decrypt(
                _nonce(self._prefix, self._number, last), sealed, self._header
            )
        except InvalidTag:
            if self._number == 0 and not self._checked:
                raise ArchiveError(
                    "wrong passphrase for this backup (or the archive is damaged)"
                ) from None
            raise ArchiveError(f"the encrypted archive is damaged (chunk {self._number})") from None
        self._number += 1
        self._plain += plain
        self._next = following
        self._done = last

    def readinto(self, buffer) -> int:
        while not self._plain and not self._done:
            self._fill()
        size = min(len(buffer), len(self._plain))
        buffer[:size] = self._plain[:size]
        self._plain = self._plain[size:]
        return size


def is_encrypted(path: str) -> bool:
    with open(path, "rb") as archive:
        return archive.read(len(MAGIC)) in (MAGIC, MAGIC_1)


# --- writing ---------------------------------------------------------------------------


class _Hashing:
    """Reads a file for tarfile, hashing what passes."""

    def __init__(self, source):
        self._source = source
        self.sha256 = hashlib.sha256()

    def read(self, size=-1):
        data = self._source.read(size)
        self.sha256.update(data)
        return data


def _fsync_directory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_archive(
    target: str,
    header: dict,
    database_file: str,
    data_files: Iterable[tuple[str, str]],
    passphrase: bytes | None = None,
) -> Manifest:
    """Write the archive at target atomically (see the module) and return its manifest.

    header: the manifest's fields other than `files` and `format`; database_file: the
    copy or dump to store as DATABASE_NAMES[kind]; data_files: (name under data/, path)."""
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, mode=0o750, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as raw:
            sink = EncryptingWriter(raw, passphrase) if passphrase is not None else raw
            files = []
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                name = DATABASE_NAMES[header["database"]]
                files.append(_add_file(tar, name, database_file))
                for relative, path in data_files:
                    files.append(_add_file(tar, DATA_PREFIX + relative, path))
                manifest = Manifest(format=FORMAT_VERSION, files=tuple(files), **header)
                _add_bytes(tar, MANIFEST, manifest.to_json())
            if sink is not raw:
                sink.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
    return manifest


def _add_file(tar: tarfile.TarFile, name: str, path: str) -> dict:
    with open(path, "rb") as source:
        status = os.fstat(source.fileno())
        info = tarfile.TarInfo(name)
        info.size = status.st_size
        info.mode = status.st_mode & 0o777
        info.mtime = int(status.st_mtime)
        hashing = _Hashing(source)
        tar.addfile(info, hashing)
    return {
        "name": name,
        "size": info.size,
        "mode": info.mode,
        "sha256": hashing.sha256.hexdigest(),
    }


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


# --- reading ---------------------------------------------------------------------------

_DATA_NAME = re.compile(r"^data/(?:[A-Za-z0-9._-]+/)*[A-Za-z0-9._-]+$")


def _allowed_name(name: str) -> bool:
    if name == MANIFEST or name in DATABASE_NAMES.values():
        return True
    return bool(_DATA_NAME.match(name)) and ".." not in name.split("/")


def read_archive(path: str, staging: str, passphrase: bytes | None = None) -> Manifest:
    """Unpack the archive at path into the directory staging and check it against its
    manifest (every file listed, none more, each size and sha256 equal); return the
    manifest. Nothing outside staging is written."""
    try:
        raw = open(path, "rb")
    except OSError as problem:
        raise ArchiveError(f"cannot read {path}: {problem.strerror}") from None
    with raw:
        magic = raw.read(len(MAGIC))
        if magic in (MAGIC, MAGIC_1):
            if passphrase is None:
                raise ArchiveError(
                    f"{path} is encrypted: give its passphrase (--passphrase-file or "
                    "ATOLLON_MAIL_BACKUP_PASSPHRASE)"
                )
            source = io.BufferedReader(DecryptingReader(raw, passphrase, magic), _COPY)
        else:
            if passphrase is not None:
                raise ArchiveError(
                    f"{path} is not encrypted but a passphrase was given: check that it is "
                    "the archive meant, or restore it without the passphrase"
                )
            raw.seek(0)
            source = raw
        found: dict[str, tuple[int, str]] = {}
        manifest_bytes = None
        room = [shutil.disk_usage(staging).free]
        try:
            with tarfile.open(fileobj=source, mode="r|") as tar:
                for member in tar:
                    manifest_bytes = _unpack_member(
                        tar, member, staging, found, manifest_bytes, room
                    )
        except tarfile.TarError as problem:
            raise ArchiveError(f"{path} is not a backup archive: {problem}") from None
    if manifest_bytes is None:
        raise ArchiveError(f"{path} has no {MANIFEST}: not a backup archive")
    manifest = _parse_manifest(manifest_bytes)
    _check(manifest, found)
    return manifest


def _unpack_member(tar, member, staging, found, manifest_bytes, room):
    name = member.name
    # Only plain regular files: a sparse member (which isfile() accepts) unpacks to far
    # more than it takes in the archive (10 KiB gave 50 MiB).
    regular = member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not member.issparse()
    if not regular or not _allowed_name(name) or name in found:
        raise ArchiveError(f"unexpected entry {name!r} in the archive: not a backup archive")
    if member.size > room[0]:
        raise ArchiveError(
            f"{name} in the archive ({member.size} bytes) does not fit in the free space "
            f"of {staging} ({room[0]} bytes)"
        )
    room[0] -= member.size
    extracted = tar.extractfile(member)
    if name == MANIFEST:
        if manifest_bytes is not None or member.size > 1024 * 1024:
            raise ArchiveError("the archive's manifest is not valid")
        return extracted.read()
    target = os.path.join(staging, *name.split("/"))
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        while chunk := extracted.read(_COPY):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    found[name] = (size, digest.hexdigest())
    return manifest_bytes


def _parse_manifest(data: bytes) -> Manifest:
    try:
        fields = json.loads(data)
        if fields.get("format") != FORMAT_VERSION:
            raise ArchiveError(
                f"the archive is of format {fields.get('format')!r}, this program reads "
                f"format {FORMAT_VERSION}; use the atollon-mail that made it or a newer one"
            )
        fields["files"] = tuple(
            {
                "name": str(entry["name"]),
                "size": int(entry["size"]),
                "mode": int(entry["mode"]),
                "sha256": str(entry["sha256"]),
            }
            for entry in fields["files"]
        )
        manifest = Manifest(**fields)
        if manifest.database not in DATABASE_NAMES or not isinstance(manifest.schema_version, int):
            raise ValueError("unknown database kind or schema version")
    except ArchiveError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as problem:
        raise ArchiveError(f"the archive's manifest is not valid: {problem}") from None
    return manifest


def _check(manifest: Manifest, found: dict[str, tuple[int, str]]) -> None:
    listed = {entry["name"]: entry for entry in manifest.files}
    if manifest.database_file not in listed:
        raise ArchiveError(f"the archive's manifest lists no {manifest.database_file}")
    for name in sorted(set(listed) | set(found)):
        if name not in found:
            raise ArchiveError(f"{name} is listed in the manifest but not in the archive")
        if name not in listed:
            raise ArchiveError(f"{name} is in the archive but not in its manifest")
        entry = listed[name]
        if found[name] != (entry["size"], entry["sha256"]):
            raise ArchiveError(f"{name} does not match its checksum in the manifest: damaged")


# --- the data directory ---------------------------------------------------------------


def data_files(data_dir: str, excluded: Iterable[str]) -> list[tuple[str, str]]:
    """(name relative to data_dir, path) of each regular file below data_dir to keep,
    sorted: everything except the paths (files or directories) in excluded and the
    temporary files this module and others write beside their final names."""
    excluded = {os.path.abspath(path) for path in excluded}
    found = []
    root = os.path.abspath(data_dir)
    if not os.path.isdir(root):
        return found
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(
            name
            for name in subdirectories
            if os.path.join(directory, name) not in excluded and not name.startswith(".")
        )
        for name in sorted(names):
            path = os.path.join(directory, name)
            if path in excluded or name.startswith(".") or name.endswith((".tmp", ".restoring")):
                continue
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            if _DATA_NAME.match(DATA_PREFIX + relative):
                found.append((relative, path))
    return found


def install_data_files(manifest: Manifest, staging: str, data_dir: str) -> list[str]:
    """Copy the data files unpacked in staging into data_dir (each written beside its
    place, fsynced, renamed), with the mode they had; their names."""
    names = []
    folders = set()
    for entry in manifest.data_files:
        relative = entry["name"][len(DATA_PREFIX) :]
        source = os.path.join(staging, *entry["name"].split("/"))
        target = os.path.join(data_dir, *relative.split("/"))
        os.makedirs(os.path.dirname(target), mode=0o750, exist_ok=True)
        temporary = f"{target}.restoring"
        try:
            os.unlink(temporary)  # left by a restore that was interrupted
        except FileNotFoundError:
            pass
        # Never through a symbolic link planted at that name.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        descriptor = os.open(temporary, flags, 0o600)
        with open(source, "rb") as copy, os.fdopen(descriptor, "wb") as out:
            while chunk := copy.read(_COPY):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, entry["mode"] & 0o700)
        os.replace(temporary, target)
        names.append(relative)
        folders.add(os.path.dirname(target))
    # Every folder that received a file, so the renames survive a crash.
    for folder in sorted(folders | ({data_dir} if names else set())):
        _fsync_directory(folder)
    return names


# --- keeping N copies ----------------------------------------------------------------

SCHEDULED_NAME = re.compile(r"^atollon-mail-(\d{8}T\d{6}Z)\.backup$")


def scheduled_name(created: str) -> str:
    """The file name of a scheduled backup made at `created` (compact UTC: 20261207T033000Z)."""
    return f"atollon-mail-{created}.backup"


def rotate(directory: str, keep: int, written: str | None = None) -> list[str]:
    """Remove all but the `keep` newest scheduled backups in directory (by the time in
    their names, then the modification time); the paths removed. `written`, the archive
    just written, is never removed, even when a clock set back gave it an older name."""
    names = [name for name in os.listdir(directory) if SCHEDULED_NAME.match(name)]
    kept_name = os.path.basename(written) if written is not None else None

    def order(name):
        try:
            modified = os.stat(os.path.join(directory, name)).st_mtime
        except FileNotFoundError:
            modified = 0.0
        return (name == kept_name, SCHEDULED_NAME.match(name).group(1), modified)

    names.sort(key=order)
    removed = []
    for name in names[: max(len(names) - keep, 0)]:
        if name == kept_name:
            continue
        path = os.path.join(directory, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed
