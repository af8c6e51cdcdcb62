"""The pg_dump and psql command lines connect as the appliance does: every libpq
parameter of the [database] url, the password only in the environment, the schema of
its search_path read as libpq reads `options`."""

from __future__ import annotations

from twisted.trial import unittest

from atollon_mail.store import backup as store_backup
from atollon_mail.store.backup import BackupError

URL = (
    "postgresql://mail:s%27cret@db.example:5433/atollon?sslmode=verify-full"
    "&sslrootcert=/etc/ssl/ca.pem&sslcert=/etc/ssl/c.pem&sslkey=/etc/ssl/c.key"
    "&connect_timeout=5&options=-c%20search_path%3Dmail%20-cstatement_timeout%3D0"
)


class CommandTests(unittest.TestCase):
    def test_pg_dump_gets_every_parameter_and_not_the_password(self):
        argv, environment = store_backup.pg_dump_command(URL, "out.pgdump")
        self.assertEqual(
            argv,
            [
                "pg_dump",
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                "--file=out.pgdump",
                "--lock-wait-timeout=5min",
                "--dbname=dbname='atollon' user='mail' host='db.example' port='5433' "
                "sslmode='verify-full' sslrootcert='/etc/ssl/ca.pem' sslcert='/etc/ssl/c.pem' "
                "sslkey='/etc/ssl/c.key' connect_timeout='5' "
                "options='-c search_path=mail -cstatement_timeout=0'",
                '--schema="mail"',
            ],
        )
        self.assertEqual(environment["PGPASSWORD"], "s'cret")
        self.assertNotIn("cret", " ".join(argv))
        self.assertEqual(set(environment), {"PATH", "PGPASSWORD"})

    def test_a_socket_directory_and_quotes_in_values(self):
        argv, environment = store_backup.psql_restore_command(
            "postgresql:///mail?host=/run/postgresql&application_name=it%27s%5Cx", ["a.sql"]
        )
        self.assertIn(
            "--dbname=dbname='mail' host='/run/postgresql' application_name='it\\'s\\\\x'",
            argv,
        )
        self.assertNotIn("PGPASSWORD", environment)

    def test_search_path_spellings(self):
        for options, schema in (
            ("-csearch_path=mail", "mail"),
            ("-c search_path=mail", "mail"),
            ("--search_path=mail", "mail"),
            ("--search-path=Mail", "mail"),  # unquoted: folded as PostgreSQL does
            ('-csearch_path="Mail"', "Mail"),
            ("-cstatement_timeout=0", None),
            ("", None),
        ):
            url = "postgresql://u@h/d?" + (f"options={options}" if options else "")
            self.assertEqual(store_backup.postgres_schema(url.replace(" ", "%20")), schema)

    def test_a_search_path_of_several_schemas_is_refused(self):
        for value in ("mail,public", '"$user",public', "$user"):
            problem = self.assertRaises(
                BackupError,
                store_backup.postgres_schema,
                f"postgresql://u@h/d?options=-csearch_path%3D{value}",
            )
            self.assertIn("is not one schema name", str(problem))

    def test_libpq_options_words(self):
        self.assertEqual(
            store_backup._libpq_options("-csearch_path=a\\ b  -c x=y\\\\"),
            ["-csearch_path=a b", "-c", "x=y\\"],
        )
