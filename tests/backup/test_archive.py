"""The backup archive: round trip, checksums, encryption, atomic writing, the data files
chosen and keeping N copies (no database: any bytes stand for the database copy)."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import tarfile

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.trial import unittest

from atollon_mail.backup import archive
from atollon_mail.backup.archive import ArchiveError

HEADER = {
    "appliance_version": "1.2.3",
    "database": "sqlite",
    "schema_version": 15,
    "created": "2026-12-07T03:30:00Z",
    "postgresql_schema": None,
}


class ArchiveTests(unittest.TestCase):
    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        self.data_dir = os.path.join(self.base, "data")
        os.makedirs(os.path.join(self.data_dir, "keys"))
        self.database = self.write("db.sqlite", os.urandom(3000) * 1000)  # 3 MB: 3+ chunks
        self.files = [
            ("srs-secret", self.write("data/srs-secret", b"a" * 64 + b"\n")),
            ("keys/dkim.key", self.write("data/keys/dkim.key", b"-----BEGIN KEY-----\n")),
        ]
        self.target = os.path.join(self.base, "out", "backup.tar")

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.base, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(data)
        return path

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as source:
            return source.read()

    def unpack(self, passphrase=None) -> tuple[archive.Manifest, str]:
        staging = self.mktemp()
        os.makedirs(staging)
        return archive.read_archive(self.target, staging, passphrase), staging

    def rewrite(self, change) -> None:
        """Write the archive again with `change(name, data) -> data or None (left out)`."""
        with tarfile.open(self.target) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(self.target, "w", format=tarfile.PAX_FORMAT) as tar:
            for member, data in members:
                data = change(member.name, data)
                if data is None:
                    continue
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))

    # -- round trip --------------------------------------------------------------------

    def test_round_trip_keeps_every_file_and_the_manifest(self):
        written = archive.write_archive(self.target, HEADER, self.database, self.files)
        manifest, staging = self.unpack()
        self.assertEqual(manifest, written)
        self.assertEqual(
            (manifest.format, manifest.database, manifest.schema_version, manifest.created),
            (1, "sqlite", 15, "2026-12-07T03:30:00Z"),
        )
        self.assertEqual(
            [entry["name"] for entry in manifest.files],
            ["database.sqlite", "data/srs-secret", "data/keys/dkim.key"],
        )
        self.assertEqual(
            self.read_bytes(os.path.join(staging, "database.sqlite")),
            self.read_bytes(self.database),
        )
        for name, path in self.files:
            self.assertEqual(
                self.read_bytes(os.path.join(staging, "data", *name.split("/"))),
                self.read_bytes(path),
            )
        self.assertEqual(stat.S_IMODE(os.stat(self.target).st_mode), 0o600)

    def test_installed_data_files_land_in_the_data_directory_private(self):
        archive.write_archive(self.target, HEADER, self.database, self.files)
        manifest, staging = self.unpack()
        fresh = os.path.join(self.base, "fresh")
        names = archive.install_data_files(manifest, staging, fresh)
        self.assertEqual(names, ["srs-secret", "keys/dkim.key"])
        for name, path in self.files:
            copy = os.path.join(fresh, *name.split("/"))
            self.assertEqual(self.read_bytes(copy), self.read_bytes(path))
            self.assertEqual(stat.S_IMODE(os.stat(copy).st_mode), 0o600)

    # -- checksums ---------------------------------------------------------------------

    def test_a_changed_file_is_detected(self):
        archive.write_archive(self.target, HEADER, self.database, self.files)
        self.rewrite(lambda name, data: b"b" + data[1:] if name == "data/srs-secret" else data)
        problem = self.assertRaises(ArchiveError, self.unpack)
        self.assertEqual(
            str(problem), "data/srs-secret does not match its checksum in the manifest: damaged"
        )

    def test_a_changed_manifest_is_detected(self):
        archive.write_archive(self.target, HEADER, self.database, self.files)

        def change(name, data):
            if name != "manifest.json":
                return data
            fields = json.loads(data)
            fields["files"][0]["sha256"] = "0" * 64
            return json.dumps(fields).encode()

        self.rewrite(change)
        problem = self.assertRaises(ArchiveError, self.unpack)
        self.assertIn("database.sqlite does not match its checksum", str(problem))

    def test_a_missing_or_extra_file_is_detected(self):
        archive.write_archive(self.target, HEADER, self.database, self.files)
        self.rewrite(lambda name, data: None if name == "data/keys/dkim.key" else data)
        problem = self.assertRaises(ArchiveError, self.unpack)
        self.assertEqual(
            str(problem), "data/keys/dkim.key is listed in the manifest but not in the archive"
        )

    def test_entries_outside_the_archive_layout_are_refused(self):
        archive.write_archive(self.target, HEADER, self.database, self.files)
        with tarfile.open(self.target, "a") as tar:
            info = tarfile.TarInfo("data/../../escape")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        problem = self.assertRaises(ArchiveError, self.unpack)
        self.assertIn("unexpected entry 'data/../../escape'", str(problem))
        self.assertFalse(os.path.exists(os.path.join(self.base, "escape")))

    def test_a_sparse_member_is_refused(self):
        # A sparse member unpacks to its full size from a few bytes of archive.
        archive.write_archive(self.target, HEADER, self.database, self.files)
        with tarfile.open(self.target, "a", format=tarfile.GNU_FORMAT) as tar:
            info = tarfile.TarInfo("data/big")
            info.type = tarfile.GNUTYPE_SPARSE
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        problem = self.assertRaises(ArchiveError, self.unpack)
        self.assertIn("unexpected entry 'data/big'", str(problem))

    def test_a_passphrase_for_a_plain_archive_is_refused(self):
        archive.write_archive(self.target, HEADER, self.database, self.files)
        problem = self.assertRaises(ArchiveError, self.unpack, b"pw")
        self.assertIn("is not encrypted but a passphrase was given", str(problem))

    def test_something_else_is_not_a_backup(self):
        self.write("out/backup.tar", b"hello, this is no tar file\n" * 40)
        problem = self.assertRaises(ArchiveError, self.unpack)
        self.assertIn("is not a backup archive", str(problem))

    # -- encryption ------------------------------------------------------------------

    def test_encrypted_round_trip_with_the_right_passphrase(self):
        archive.write_archive(self.target, HEADER, self.database, self.files, b"correct horse")
        self.assertTrue(archive.is_encrypted(self.target))
        raw = self.read_bytes(self.target)
        self.assertNotIn(self.read_bytes(self.database)[:3000], raw)
        self.assertNotIn(b"manifest.json", raw)
        manifest, staging = self.unpack(b"correct horse")
        self.assertEqual(
            self.read_bytes(os.path.join(staging, "database.sqlite")),
            self.read_bytes(self.database),
        )
        self.assertEqual(len(manifest.data_files), 2)

    def test_wrong_or_missing_passphrase_is_one_clear_line(self):
        archive.write_archive(self.target, HEADER, self.database, self.files, b"correct horse")
        wrong = self.assertRaises(ArchiveError, self.unpack, b"battery staple")
        self.assertEqual(str(wrong), "wrong passphrase for this backup")
        missing = self.assertRaises(ArchiveError, self.unpack)
        self.assertIn("is encrypted: give its passphrase", str(missing))

    def test_a_changed_or_cut_encrypted_archive_is_detected(self):
        archive.write_archive(self.target, HEADER, self.database, self.files, b"pw")
        raw = bytearray(self.read_bytes(self.target))
        header = len(archive.MAGIC) + archive._HEADER.size + archive.CHECK_SIZE
        sealed = 4 + archive.CHUNK + 16  # length, chunk, tag
        changed = bytearray(raw)
        changed[header + 2 * sealed + 100] ^= 1  # in the third chunk
        self.write("out/backup.tar", bytes(changed))
        problem = self.assertRaises(ArchiveError, self.unpack, b"pw")
        self.assertIn("the encrypted archive is damaged (chunk 2)", str(problem))
        # Cut after whole chunks: the last one left is not sealed as the last.
        whole = header + 2 * sealed
        self.write("out/backup.tar", bytes(raw[:whole]))
        problem = self.assertRaises(ArchiveError, self.unpack, b"pw")
        self.assertIn("damaged", str(problem))

    def test_an_archive_of_the_first_encrypted_format_is_still_read(self):
        # Format 1: no key check after the header, the header alone as associated data.
        archive.write_archive(self.target, HEADER, self.database, self.files)
        plain = self.read_bytes(self.target)
        salt, prefix = os.urandom(16), os.urandom(7)
        header = archive.MAGIC_1 + archive._HEADER.pack(salt, 10, 8, 1, prefix)
        key, _ = archive._keys(b"pw", salt, 10, 8, 1)
        aead = AESGCM(key)
        chunks = [plain[i : i + archive.CHUNK] for i in range(0, len(plain), archive.CHUNK)]
        sealed = b""
        for number, chunk in enumerate(chunks):
            last = number == len(chunks) - 1
            nonce = prefix + struct.pack(">I", number) + (b"\x01" if last else b"\x00")
            box = aead.encrypt(nonce, chunk, header)
            sealed += struct.pack(">I", len(box)) + box
        self.write("out/backup.tar", header + sealed)
        self.assertTrue(archive.is_encrypted(self.target))
        manifest, staging = self.unpack(b"pw")
        self.assertEqual(len(manifest.data_files), 2)
        wrong = self.assertRaises(ArchiveError, self.unpack, b"other")
        self.assertEqual(str(wrong), "wrong passphrase for this backup (or the archive is damaged)")

    def test_a_damaged_first_chunk_is_not_called_a_wrong_passphrase(self):
        archive.write_archive(self.target, HEADER, self.database, self.files, b"pw")
        raw = bytearray(self.read_bytes(self.target))
        raw[len(archive.MAGIC) + archive._HEADER.size + archive.CHECK_SIZE + 100] ^= 1
        self.write("out/backup.tar", bytes(raw))
        problem = self.assertRaises(ArchiveError, self.unpack, b"pw")
        self.assertEqual(str(problem), "the encrypted archive is damaged (chunk 0)")

    def test_reordered_or_dropped_middle_chunks_are_detected(self):
        archive.write_archive(self.target, HEADER, self.database, self.files, b"pw")
        raw = self.read_bytes(self.target)
        header = len(archive.MAGIC) + archive._HEADER.size + archive.CHECK_SIZE
        sealed = 4 + archive.CHUNK + 16
        chunks = [raw[header + i * sealed : header + (i + 1) * sealed] for i in range(2)]
        rest = raw[header + 2 * sealed :]
        self.write("out/backup.tar", raw[:header] + chunks[1] + chunks[0] + rest)
        problem = self.assertRaises(ArchiveError, self.unpack, b"pw")
        self.assertIn("damaged", str(problem))
        self.write("out/backup.tar", raw[:header] + chunks[0] + rest)
        problem = self.assertRaises(ArchiveError, self.unpack, b"pw")
        self.assertEqual(str(problem), "the encrypted archive is damaged (chunk 1)")

    def test_scrypt_parameters_asking_for_too_much_memory_are_refused(self):
        archive.write_archive(self.target, HEADER, self.database, self.files, b"pw")
        raw = bytearray(self.read_bytes(self.target))
        start = len(archive.MAGIC)
        salt, _, _, _, prefix = archive._HEADER.unpack(raw[start : start + archive._HEADER.size])
        # 128 * 32 * 2**22 * 16 bytes = 256 GiB; and 2**20 with r=8: 1 GiB.
        for log2_n, r, p in ((22, 32, 16), (20, 8, 1)):
            raw[start : start + archive._HEADER.size] = archive._HEADER.pack(
                salt, log2_n, r, p, prefix
            )
            self.write("out/backup.tar", bytes(raw))
            problem = self.assertRaises(ArchiveError, self.unpack, b"pw")
            self.assertEqual(
                str(problem),
                "the encrypted archive's header asks for more than 256 MiB of scrypt "
                "memory: damaged or hostile",
            )

    # -- atomic writing ----------------------------------------------------------------

    def test_an_interrupted_write_leaves_no_partial_file(self):
        def failing_files():
            yield self.files[0]
            raise OSError("disk full")

        problem = self.assertRaises(
            OSError, archive.write_archive, self.target, HEADER, self.database, failing_files()
        )
        self.assertEqual(str(problem), "disk full")
        self.assertEqual(os.listdir(os.path.dirname(self.target)), [])

    def test_an_interrupted_write_keeps_the_previous_archive(self):
        archive.write_archive(self.target, HEADER, self.database, self.files)
        before = self.read_bytes(self.target)
        os.unlink(self.files[1][1])  # vanishes before it is read
        self.assertRaises(
            FileNotFoundError,
            archive.write_archive,
            self.target,
            {**HEADER, "schema_version": 16},
            self.database,
            self.files,
            b"pw",
        )
        self.assertEqual(self.read_bytes(self.target), before)
        self.assertEqual(os.listdir(os.path.dirname(self.target)), ["backup.tar"])

    # -- the data directory and rotation -----------------------------------------------

    def test_data_files_leave_out_the_database_journal_backups_and_temporary_files(self):
        for name in (
            "store.sqlite",
            "store.sqlite-wal",
            "dot-journal/000000000001.dots",
            "backups/atollon-mail-20261201T033000Z.backup",
            ".tls.tmp",
            "srs-secret.restoring",
            "sub/.hidden",
        ):
            self.write(f"data/{name}", b"x")
        os.symlink("/etc/passwd", os.path.join(self.data_dir, "link"))
        excluded = [
            os.path.join(self.data_dir, name)
            for name in ("store.sqlite", "store.sqlite-wal", "dot-journal", "backups")
        ]
        found = archive.data_files(self.data_dir, excluded)
        self.assertEqual([name for name, _ in found], ["srs-secret", "keys/dkim.key"])

    def test_rotate_never_removes_the_archive_just_written(self):
        # A clock set back names the new archive older than those already there.
        directory = os.path.join(self.base, "rotating")
        os.makedirs(directory)
        names = [archive.scheduled_name(f"2026120{day}T033000Z") for day in range(1, 6)]
        for name in names:
            self.write(f"rotating/{name}", b"x")
        written = os.path.join(directory, names[0])
        removed = archive.rotate(directory, 2, written)
        self.assertEqual([os.path.basename(path) for path in removed], names[1:4])
        self.assertEqual(sorted(os.listdir(directory)), sorted([names[0], names[4]]))

    def test_installing_never_writes_through_a_planted_link(self):
        archive.write_archive(self.target, HEADER, self.database, self.files)
        manifest, staging = self.unpack()
        installed = os.path.join(self.base, "installed")
        os.makedirs(installed)
        outside = self.write("outside", b"untouched\n")
        os.symlink(outside, os.path.join(installed, "srs-secret.restoring"))
        archive.install_data_files(manifest, staging, installed)
        self.assertEqual(self.read_bytes(outside), b"untouched\n")
        self.assertEqual(self.read_bytes(os.path.join(installed, "srs-secret")), b"a" * 64 + b"\n")

    def test_rotate_keeps_the_newest(self):
        directory = os.path.join(self.base, "rotating")
        os.makedirs(directory)
        names = [archive.scheduled_name(f"2026120{day}T033000Z") for day in range(1, 6)]
        for name in [*names, "other.backup"]:
            self.write(f"rotating/{name}", b"x")
        removed = archive.rotate(directory, 2)
        self.assertEqual([os.path.basename(path) for path in removed], names[:3])
        self.assertEqual(sorted(os.listdir(directory)), sorted([*names[3:], "other.backup"]))
