"""Domain modes, DNS check storage and the admins' addresses, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime

from twisted.trial import unittest

from atollon_mail.store import accounts, domains, filing, mailboxes
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.models import DnsCheck, Domain, utc_now
from atollon_mail.store.records import DnsCheckResult, DomainRecord, PublishedKey
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

T0 = datetime.datetime(2030, 1, 1, 12, 0, 0)


class DomainContractTests(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def domain_rows(self):
        return {
            d.name: (d.mode, d.active, d.primary_domain) for d in self.sync(domains.list_domains)
        }

    # -- modes ----------------------------------------------------------------------------

    def test_primary_domain_has_no_primary(self):
        domain = self.sync(domains.add_domain, "acme.com")
        self.assertEqual(domain.primary_domain, None)
        self.assertEqual(domain.mode, "primary")

    def test_secondary_records_its_primary_as_a_domain_not_receiving_mail(self):
        domain = self.sync(
            domains.add_domain, "CRM.acme.com", "secondary", primary_domain="Acme.COM."
        )
        self.assertIsInstance(domain, DomainRecord)
        self.assertEqual(
            (domain.name, domain.mode, domain.active, domain.primary_domain),
            ("crm.acme.com", "secondary", True, "acme.com"),
        )
        self.assertEqual(
            self.domain_rows(),
            {
                "acme.com": ("primary", False, None),
                "crm.acme.com": ("secondary", True, "acme.com"),
            },
        )
        # Its mail is hosted by the other provider: its users are remote recipients (our
        # users may write to them), not addresses of ours that receive nothing.
        rejection = self.sync(filing.resolve_recipient, "sales", "acme.com")
        self.assertEqual(rejection.reason, "unknown-domain")
        self.assertEqual(self.sync(domains.domain_names), frozenset({"crm.acme.com"}))

    def test_secondary_not_below_its_primary_as_on_the_vendors_pages(self):
        # The seeds' own example: company.atollon.com for company.com.
        domain = self.sync(
            domains.add_domain, "company.atollon.com", "secondary", primary_domain="company.com"
        )
        self.assertEqual(
            (domain.name, domain.mode, domain.active, domain.primary_domain),
            ("company.atollon.com", "secondary", True, "company.com"),
        )
        self.assertEqual(self.domain_rows()["company.com"], ("primary", False, None))
        self.sync(accounts.add_user, "jane", "hash")
        box = self.sync(mailboxes.add_mailbox, "thomas@company.atollon.com", "jane")
        self.assertEqual(box.identity, "thomas@company.com")
        self.assertEqual(
            [i.identity for i in self.sync(mailboxes.sending_identities, "jane")],
            ["thomas@company.com"],
        )

    def test_two_secondaries_share_one_primary(self):
        self.sync(domains.add_domain, "crm.acme.com", "secondary", primary_domain="acme.com")
        self.sync(domains.add_domain, "archive.acme.com", "secondary", primary_domain="acme.com")
        self.assertEqual(len(self.domain_rows()), 3)
        subject = self.sync(domains.dns_subject, "acme.com")
        self.assertEqual(subject.secondaries, ("archive.acme.com", "crm.acme.com"))

    def test_deeper_secondary_below_its_primary(self):
        domain = self.sync(
            domains.add_domain, "mail.crm.acme.com", "secondary", primary_domain="acme.com"
        )
        self.assertEqual(domain.primary_domain, "acme.com")

    def assertRefused(self, error, message, *args, **kwargs):
        before = self.domain_rows()
        with self.assertRaises(error) as raised:
            self.sync(domains.add_domain, *args, **kwargs)
        self.assertIn(message, str(raised.exception))
        self.assertEqual(self.domain_rows(), before, "a refused request changes nothing")

    def test_secondary_without_primary_refused(self):
        self.assertRefused(
            Invalid, "--primary-domain (such as company.com)", "crm.acme.com", "secondary"
        )

    def test_secondary_as_its_own_primary_refused(self):
        self.assertRefused(
            Invalid,
            "acme.com cannot be its own primary domain",
            "acme.com",
            "secondary",
            primary_domain="acme.com",
        )

    def test_secondary_of_a_primary_domain_hosted_here_refused(self):
        self.sync(domains.add_domain, "acme.com")
        self.assertRefused(
            Invalid,
            "acme.com is hosted here as a primary domain already",
            "crm.acme.com",
            "secondary",
            primary_domain="acme.com",
        )
        # Paused, it is still one of ours.
        self.sync(lambda: Domain.update(active=False).where(Domain.name == "acme.com").execute())
        self.assertRefused(
            Invalid,
            "acme.com is hosted here as a primary domain already",
            "acme.atollon.com",
            "secondary",
            primary_domain="acme.com",
        )

    def test_primary_with_primary_domain_refused(self):
        self.assertRefused(
            Invalid,
            "only a secondary domain has a primary domain",
            "crm.acme.com",
            primary_domain="acme.com",
        )

    def test_secondary_as_a_primary_domain_refused(self):
        self.sync(domains.add_domain, "crm.acme.com", "secondary", primary_domain="acme.com")
        self.assertRefused(
            Invalid,
            "crm.acme.com is a secondary domain itself",
            "eu.crm.acme.com",
            "secondary",
            primary_domain="crm.acme.com",
        )

    def test_existing_name_conflicts_before_anything_is_made(self):
        self.sync(domains.add_domain, "crm.acme.com")
        self.assertRefused(
            Conflict, "exists already", "crm.acme.com", "secondary", primary_domain="acme.com"
        )

    def test_bad_primary_domain_name_refused(self):
        self.assertRefused(
            Invalid, "is not a domain name", "crm.acme.com", "secondary", primary_domain="acme"
        )

    # -- identities -----------------------------------------------------------------------

    def test_secondary_mailbox_sends_as_the_primary_domain(self):
        self.sync(domains.add_domain, "crm.acme.com", "secondary", primary_domain="acme.com")
        self.sync(accounts.add_user, "jane", "hash")
        box = self.sync(mailboxes.add_mailbox, "Sales@crm.acme.com", "jane")
        self.assertEqual((box.address, box.identity), ("sales@crm.acme.com", "sales@acme.com"))
        given = self.sync(
            mailboxes.add_mailbox, "x@crm.acme.com", "jane", identity="X@crm.acme.com"
        )
        self.assertEqual(given.identity, "X@crm.acme.com")

    def test_primary_mailbox_sends_as_itself(self):
        self.sync(domains.add_domain, "acme.com")
        self.sync(accounts.add_user, "jane", "hash")
        box = self.sync(mailboxes.add_mailbox, "jane@acme.com", "jane")
        self.assertEqual(box.identity, "jane@acme.com")

    def test_secondary_without_a_recorded_primary_sends_as_itself(self):
        # A row made before primary domains were recorded.
        self.sync(
            lambda: Domain.create(
                name="old.example.org", mode="secondary", active=True, created_at=utc_now()
            )
        )
        self.sync(accounts.add_user, "jane", "hash")
        box = self.sync(mailboxes.add_mailbox, "jane@old.example.org", "jane")
        self.assertEqual(box.identity, "jane@old.example.org")
        subject = self.sync(domains.dns_subject, "old.example.org")
        self.assertEqual(subject.sending_domains, ("old.example.org",))

    # -- what the DNS must say ------------------------------------------------------------

    def setup_secondary(self):
        self.sync(domains.add_domain, "crm.acme.com", "secondary", primary_domain="acme.com")
        self.sync(accounts.add_user, "jane", "hash")
        self.sync(mailboxes.add_mailbox, "sales@crm.acme.com", "jane")
        self.sync(mailboxes.add_mailbox, "office@crm.acme.com", "jane")
        self.sync(mailboxes.add_mailbox, "old@crm.acme.com", "jane", active=False)
        self.sync(mailboxes.add_mailbox, "own@crm.acme.com", "jane", identity="own@crm.acme.com")
        self.sync(domains.add_dkim_key, "acme.com", "atollon", "ed25519", "private", "PUBLIC-A")
        self.sync(domains.add_dkim_key, "crm.acme.com", "atollon", "ed25519", "private", "PUBLIC-C")

    def test_subject_of_a_secondary_domain(self):
        self.setup_secondary()
        subject = self.sync(domains.dns_subject, "crm.acme.com")
        self.assertTrue(subject.hosted)
        self.assertEqual(subject.sending_domains, ("acme.com",))
        self.assertEqual(
            subject.forwards,
            (
                ("office@acme.com", "office@crm.acme.com"),
                ("sales@acme.com", "sales@crm.acme.com"),
            ),
        )
        self.assertEqual(
            subject.dkim_keys,
            (
                PublishedKey("acme.com", "atollon", "ed25519", "PUBLIC-A"),
                PublishedKey("crm.acme.com", "atollon", "ed25519", "PUBLIC-C"),
            ),
        )
        self.assertEqual(subject.secondaries, ())

    def test_subject_of_the_primary_domain_kept_for_a_secondary(self):
        self.setup_secondary()
        subject = self.sync(domains.dns_subject, "acme.com")
        self.assertFalse(subject.hosted)
        self.assertEqual(subject.sending_domains, ("acme.com",))
        self.assertEqual(subject.secondaries, ("crm.acme.com",))
        self.assertEqual([key.domain for key in subject.dkim_keys], ["acme.com"])

    # -- DKIM key rotation ------------------------------------------------------------------

    def states(self, name="acme.com"):
        return [(key.selector, key.state) for key in self.sync(domains.all_dkim_keys, name)]

    def test_dkim_rotation(self):
        self.sync(domains.add_domain, "acme.com")
        first = self.sync(domains.add_dkim_key, "acme.com", "one", "rsa", "PRIVATE1", "PUB1")
        self.assertEqual(first.state, "active")
        ed = self.sync(domains.add_dkim_key, "acme.com", "ed", "ed25519", "PRIVATE2", "PUB2")
        self.assertEqual(ed.state, "active", "the first key of its algorithm signs at once")
        second = self.sync(domains.add_dkim_key, "acme.com", "two", "rsa", "PRIVATE3", "PUB3")
        self.assertEqual((second.state, second.active), ("pending", False))
        self.assertEqual(
            [k.selector for k in self.sync(domains.dkim_keys, "acme.com")], ["ed", "one"]
        )
        self.assertEqual(self.states(), [("ed", "active"), ("one", "active"), ("two", "pending")])
        published = self.sync(domains.dns_subject, "acme.com").dkim_keys
        self.assertEqual(
            [(key.selector, key.state) for key in published],
            [("two", "pending"), ("ed", "active"), ("one", "active")],
            "a pending key is published before it is activated",
        )

        activation = self.sync(domains.activate_dkim_key, "ACME.com", "Two", T0)
        self.assertEqual(
            (activation.activated.selector, activation.activated.state), ("two", "active")
        )
        self.assertEqual([(k.selector, k.retired_at) for k in activation.retired], [("one", T0)])
        self.assertEqual(self.states(), [("two", "active"), ("ed", "active"), ("one", "retired")])
        self.assertEqual(
            [k.selector for k in self.sync(domains.dkim_keys, "acme.com")], ["two", "ed"]
        )
        self.assertEqual(self.sync(domains.dkim_key, "acme.com", "one").retired_at, T0)
        self.assertIn(
            ("one", "retired"),
            [(k.selector, k.state) for k in self.sync(domains.dns_subject, "acme.com").dkim_keys],
        )

        self.assertRaises(Conflict, self.sync, domains.activate_dkim_key, "acme.com", "two", T0)
        self.assertRaises(NotFound, self.sync, domains.activate_dkim_key, "acme.com", "no", T0)
        self.assertRaises(NotFound, self.sync, domains.dkim_key, "acme.com", "no")

        self.assertEqual(self.sync(domains.remove_retired_dkim_keys, T0), [])
        later = T0 + datetime.timedelta(seconds=1)
        removed = self.sync(domains.remove_retired_dkim_keys, later)
        self.assertEqual([(k.domain, k.selector) for k in removed], [("acme.com", "one")])
        self.assertEqual(self.states(), [("two", "active"), ("ed", "active")])

    def test_a_retired_key_can_be_activated_again(self):
        self.sync(domains.add_domain, "acme.com")
        self.sync(domains.add_dkim_key, "acme.com", "one", "rsa", "PRIVATE1", "PUB1")
        self.sync(domains.add_dkim_key, "acme.com", "two", "rsa", "PRIVATE2", "PUB2")
        self.sync(domains.activate_dkim_key, "acme.com", "two", T0)
        activation = self.sync(domains.activate_dkim_key, "acme.com", "one", T0)
        self.assertEqual([k.selector for k in activation.retired], ["two"])
        self.assertEqual(self.states(), [("one", "active"), ("two", "retired")])
        self.assertIsNone(self.sync(domains.dkim_key, "acme.com", "one").retired_at)

    def test_subjects_are_the_active_domains(self):
        self.setup_secondary()
        self.sync(domains.add_domain, "beta.org")
        names = [subject.domain.name for subject in self.sync(domains.dns_subjects)]
        self.assertEqual(names, ["beta.org", "crm.acme.com"])

    # -- the last check -------------------------------------------------------------------

    def test_record_and_replace_a_check(self):
        self.sync(domains.add_domain, "acme.com")
        self.assertIsNone(self.sync(domains.last_dns_check, "acme.com"))
        first = (
            DnsCheckResult("mx acme.com", "pass", "the MX of acme.com is mx.test"),
            DnsCheckResult("spf acme.com", "fail", "no SPF record: publish one"),
        )
        self.assertIsNone(self.sync(domains.record_dns_check, "acme.com", first, T0))
        stored = self.sync(domains.last_dns_check, "ACME.com")
        self.assertEqual(
            (stored.domain, stored.checked_at, stored.results), ("acme.com", T0, first)
        )
        later = T0 + datetime.timedelta(days=1)
        second = (DnsCheckResult("mx acme.com", "warn", "shared MX: ünïcode ok"),)
        previous = self.sync(domains.record_dns_check, "acme.com", second, later)
        self.assertEqual(previous, stored)
        self.assertEqual(self.sync(domains.last_dns_check, "acme.com").results, second)
        self.assertEqual(self.sync(domains.last_dns_check, "acme.com").checked_at, later)

    def test_a_temporary_result_keeps_the_known_outcome(self):
        self.sync(domains.add_domain, "acme.com")
        known = DnsCheckResult("mx acme.com", "pass", "fine")
        self.sync(domains.record_dns_check, "acme.com", (known,), T0)
        unknown = DnsCheckResult("mx acme.com", "fail", "timed out", temporary=True)
        new = DnsCheckResult("dmarc acme.com", "fail", "timed out", temporary=True)
        self.sync(domains.record_dns_check, "acme.com", (unknown, new), T0)
        self.assertEqual(self.sync(domains.last_dns_check, "acme.com").results, (known, new))

    def test_bad_status_refused(self):
        self.sync(domains.add_domain, "acme.com")
        bad = (DnsCheckResult("mx acme.com", "ok", "?"),)
        self.assertRaises(Invalid, self.sync, domains.record_dns_check, "acme.com", bad, T0)
        self.assertIsNone(self.sync(domains.last_dns_check, "acme.com"))

    def test_overview_pairs_each_domain_with_its_last_check(self):
        self.sync(domains.add_domain, "beta.org")
        self.sync(domains.add_domain, "acme.com")
        result = DnsCheckResult("mx acme.com", "pass", "fine")
        self.sync(domains.record_dns_check, "acme.com", (result,), T0)
        overview = self.sync(domains.domains_overview)
        self.assertEqual(
            [(domain.name, check) for domain, check in overview][1], ("beta.org", None)
        )
        acme, check = overview[0]
        self.assertEqual((acme.name, check.checked_at, check.results), ("acme.com", T0, (result,)))

    def test_removing_a_domain_removes_its_check(self):
        self.sync(domains.add_domain, "acme.com")
        result = DnsCheckResult("mx acme.com", "pass", "fine")
        self.sync(domains.record_dns_check, "acme.com", (result,), T0)
        self.sync(lambda: Domain.delete().where(Domain.name == "acme.com").execute())
        self.assertEqual(self.sync(builders.row_count, DnsCheck), 0)

    # -- whom to tell ---------------------------------------------------------------------

    def test_admin_addresses_are_their_default_mailboxes(self):
        self.sync(domains.add_domain, "acme.com")
        for login, admin in (("zed", True), ("ann", True), ("bob", False), ("cat", True)):
            self.sync(accounts.add_user, login, "hash", is_admin=admin)
        self.sync(accounts.add_user, "dan", "hash", is_admin=True)  # no mailbox: skipped
        self.sync(mailboxes.add_mailbox, "ann@acme.com", "ann")
        self.sync(mailboxes.add_mailbox, "ann.other@acme.com", "ann")  # not her default box
        self.sync(mailboxes.add_mailbox, "bob@acme.com", "bob")  # not an admin
        self.sync(mailboxes.add_mailbox, "zed@acme.com", "zed")
        self.sync(mailboxes.add_mailbox, "cat@acme.com", "cat", active=False)  # receives nothing
        self.assertEqual(self.sync(domains.admin_addresses), ["ann@acme.com", "zed@acme.com"])

    def test_no_admin_addresses(self):
        self.assertEqual(self.sync(domains.admin_addresses), [])


class DomainsOnSqliteTests(SqliteStoreMixin, DomainContractTests, unittest.TestCase):
    pass


class DomainsOnPostgresTests(PostgresStoreMixin, DomainContractTests, unittest.TestCase):
    pass
