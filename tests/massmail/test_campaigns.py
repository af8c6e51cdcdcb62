"""Campaigns in the store, written once and run on SQLite and on PostgreSQL.

The CRM data (organizations, contacts, employments, groups) is made directly with the
models inside store operations.
"""

from __future__ import annotations

import datetime
import json

from twisted.trial import unittest

from atollon_mail.massmail.templates import SAMPLE_FIELDS
from atollon_mail.massmail.tokens import preview_unsubscribe_url
from atollon_mail.passwords import hash_password
from atollon_mail.store import (
    campaign_recipients,
    campaigns,
    message_types,
    sendlists,
)
from atollon_mail.store import mailboxes as m
from atollon_mail.store.campaign_records import RenderedPreview, VariantRecord
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.models import (
    Campaign,
    CampaignRecipient,
    CampaignVariant,
    Contact,
    DistributionGroup,
    Employment,
    GroupMember,
    Organization,
    Suppression,
    database_proxy,
)
from tests import builders
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

T0 = datetime.datetime(2030, 1, 1, 12, 0, 0)
TODAY = T0.date()
PREVIEW_URL = preview_unsubscribe_url("https://news.acme.test")

EN_SUBJECT = "News for {{ first_name }}"
EN_BODY = "Dear {{ name }} of {{ company }},\nbye: {{ unsubscribe_url }}\n"


# --- CRM fixtures (store operations) -----------------------------------------------------


def add_organization(name: str) -> int:
    return Organization.create(name=name, created_at=T0).id


def add_contact(
    organization_id: int,
    email: str,
    language: str = "",
    first_name: str = "",
    last_name: str = "",
    name: str = "",
    kind: str = "person",
) -> int:
    return Contact.create(
        organization=organization_id,
        kind=kind,
        name=name,
        first_name=first_name,
        last_name=last_name,
        email=email,
        language=language,
        created_at=T0,
        updated_at=T0,
    ).id


def add_static_group(name: str, organization_id: int | None, contact_ids) -> int:
    group = DistributionGroup.create(
        name=name, organization=organization_id, kind="static", filter=None, created_at=T0
    )
    for contact_id in contact_ids:
        GroupMember.create(group=group.id, contact=contact_id, added_at=T0)
    return group.id


def add_dynamic_group(name: str, organization_id: int, **spec) -> int:
    return DistributionGroup.create(
        name=name,
        organization=organization_id,
        kind="dynamic",
        filter=json.dumps({"organization_id": organization_id, **spec}),
        created_at=T0,
    ).id


def employ(person_id: int, company_id: int, primary: bool, valid_to=None) -> None:
    Employment.create(
        person=person_id,
        company=company_id,
        is_primary=primary,
        valid_from=None,
        valid_to=valid_to,
        created_at=T0,
    )


def rows_of(campaign_id: int) -> list[tuple]:
    return builders.table_rows(
        CampaignRecipient.address,
        CampaignRecipient.contact,
        CampaignRecipient.language,
        CampaignRecipient.state,
        where=CampaignRecipient.campaign == campaign_id,
    )


def set_rows(campaign_id: int, addresses, **changes) -> int:
    return (
        CampaignRecipient.update(**changes)
        .where(
            (CampaignRecipient.campaign == campaign_id)
            & CampaignRecipient.address.in_(list(addresses))
        )
        .execute()
    )


def set_status(campaign_id: int, status: str) -> None:
    Campaign.update(status=status).where(Campaign.id == campaign_id).execute()


class CampaignContract(StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(self.store, "news@acme.test", "joe", hash_password("x"))
        builders.mailbox(self.store, "off@acme.test", "joe", active=False)
        self.org = self.op(add_organization, "Acme CRM")
        person = self.person
        self.ann = person("ann@x.test", "cs", "Anna", "Nová")
        self.bob = person("bob@x.test", "de", "Bob", "Brown")
        self.ann_again = person("ann@x.test", "en", "Annie", "Other")  # a shared address
        self.nomail = person("", "en", "No", "Mail")
        self.cyd = person("cyd@x.test", "", "Cyd", "Charisse")
        self.eve = person("eve@x.test", "en", "Eve", "Adams")
        self.group = self.op(
            add_static_group,
            "customers",
            self.org,
            [self.eve, self.cyd, self.nomail, self.ann_again, self.bob, self.ann],
        )

    def op(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def preview(self, campaign_id: int):
        return self.op(campaigns.preview_campaign, campaign_id, unsubscribe_url=PREVIEW_URL)

    def person(self, email, language="", first_name="", last_name="", **more) -> int:
        return self.op(add_contact, self.org, email, language, first_name, last_name, **more)

    def campaign(self, group=None, **variants) -> int:
        """A draft of the customers group with variants given as language=(subject, body)."""
        return builders.campaign(
            self.store, group or "customers", "news@acme.test", variants=variants, now=T0
        ).id

    def started(self, **variants) -> int:
        return builders.campaign(
            self.store,
            "customers",
            "news@acme.test",
            variants=variants or {"en": (EN_SUBJECT, EN_BODY)},
            started=True,
            now=T0,
        ).id

    def require_take_back(self):
        try:
            from atollon_mail.store import sendlists as sending
        except ImportError:
            sending = None
        if not hasattr(sending, "take_back"):
            raise unittest.SkipTest("take_back not yet available")
        return sending

    def spy_on_take_back(self) -> list:
        sending = self.require_take_back()
        calls = []

        def take_back(campaign_id, now):
            calls.append((campaign_id, now, database_proxy.in_transaction()))
            return 0

        self.patch(sending, "take_back", take_back)
        return calls

    # -- creating ----------------------------------------------------------------------

    def test_create_a_draft_with_the_defaults(self):
        record = self.op(
            campaigns.create_campaign, " Spring news ", "customers", "News@ACME.test", "EN", now=T0
        )
        self.assertEqual(
            (record.name, record.status, record.group_id, record.group_name),
            ("Spring news", "draft", self.group, "customers"),
        )
        self.assertEqual(record.mailbox_address, "news@acme.test")
        self.assertEqual(record.type_code, "email-out", "the default outgoing type")
        self.assertEqual(record.organization_id, self.org, "the group's organization")
        self.assertEqual(record.fallback_language, "en")
        self.assertEqual(record.variants, ())
        self.assertEqual(
            (record.created_at, record.started_at, record.finished_at), (T0, None, None)
        )
        self.assertEqual(self.op(campaigns.get_campaign, record.id), record)

    def test_create_names_the_group_by_id_and_the_organization_and_type(self):
        other = self.op(add_organization, "Other")
        self.op(message_types.add_message_type, "Newsletter", "newsletter")
        by_id = self.op(
            campaigns.create_campaign,
            "x",
            self.group,
            "news@acme.test",
            "cs",
            type_code="Newsletter",
            organization="Other",
            now=T0,
        )
        self.assertEqual((by_id.group_id, by_id.organization_id), (self.group, other))
        self.assertEqual(by_id.type_code, "newsletter")
        by_digits = self.op(
            campaigns.create_campaign,
            "y",
            str(self.group),
            "news@acme.test",
            "cs",
            organization=other,
        )
        self.assertEqual((by_digits.group_id, by_digits.organization_id), (self.group, other))

    def test_create_refusals(self):
        self.op(message_types.add_message_type, "Old", "old", active=False)
        for args, kwargs, error, message in (
            (("", "customers", "news@acme.test", "en"), {}, Invalid, "needs a name"),
            (("x", "nobody", "news@acme.test", "en"), {}, NotFound, "no distribution group"),
            (("x", 999, "news@acme.test", "en"), {}, NotFound, "no distribution group with id 999"),
            (("x", "customers", "no@acme.test", "en"), {}, NotFound, "no mailbox"),
            (("x", "customers", "off@acme.test", "en"), {}, Invalid, "inactive"),
            (("x", "customers", "news@acme.test", "eng"), {}, Invalid, "two letters"),
            (
                ("x", "customers", "news@acme.test", "en"),
                {"type_code": "nope"},
                NotFound,
                "no message type",
            ),
            (("x", "customers", "news@acme.test", "en"), {"type_code": "old"}, Invalid, "inactive"),
            (
                ("x", "customers", "news@acme.test", "en"),
                {"organization": "Nope"},
                NotFound,
                "organization",
            ),
        ):
            with self.assertRaises(error) as raised:
                self.op(campaigns.create_campaign, *args, **kwargs)
            self.assertIn(message, str(raised.exception), args)
        self.assertEqual(self.op(campaigns.list_campaigns), [])

    def test_list_newest_first_and_unknown_id(self):
        first = self.op(campaigns.create_campaign, "a", "customers", "news@acme.test", "en", now=T0)
        later = T0 + datetime.timedelta(hours=1)
        second = self.op(
            campaigns.create_campaign, "b", "customers", "news@acme.test", "en", now=later
        )
        self.op(campaigns.set_variant, first.id, "en", "Hi", "Body", now=T0)
        listed = self.op(campaigns.list_campaigns)
        self.assertEqual([record.id for record in listed], [second.id, first.id])
        self.assertEqual(listed[1].variants, (VariantRecord("en", "Hi", "Body"),))
        with self.assertRaises(NotFound) as raised:
            self.op(campaigns.get_campaign, 999)
        self.assertIn("no campaign 999", str(raised.exception))

    # -- variants ----------------------------------------------------------------------

    def test_set_replace_and_remove_variants(self):
        campaign_id = self.campaign()
        self.op(campaigns.set_variant, campaign_id, "EN", " Hello ", "Body one", now=T0)
        self.op(campaigns.set_variant, campaign_id, "cs", "Ahoj", "Tělo", now=T0)
        record = self.op(
            campaigns.set_variant, campaign_id, "en", "Hi {{ first_name }}", "Two", now=T0
        )
        self.assertEqual(
            record.variants,
            (
                VariantRecord("cs", "Ahoj", "Tělo"),
                VariantRecord("en", "Hi {{ first_name }}", "Two"),
            ),
        )
        record = self.op(campaigns.remove_variant, campaign_id, "cs")
        self.assertEqual([variant.language for variant in record.variants], ["en"])
        with self.assertRaises(NotFound):
            self.op(campaigns.remove_variant, campaign_id, "cs")

    def test_variants_that_cannot_render_are_refused(self):
        campaign_id = self.campaign()
        for subject, body, message in (
            ("Hi", "Dear {{ nickname }}", "nickname"),
            ("Hi {{ first_name", "Body", "subject, line 1"),
            ("{{ '' }}", "Body", "renders empty"),
            ("Hi", "{{ ''.__class__ }}", "body"),
        ):
            with self.assertRaises(Invalid) as raised:
                self.op(campaigns.set_variant, campaign_id, "en", subject, body)
            self.assertIn("the en variant cannot be sent", str(raised.exception))
            self.assertIn(message, str(raised.exception))
        with self.assertRaises(Invalid):
            self.op(campaigns.set_variant, campaign_id, "english", "Hi", "Body")
        self.assertEqual(self.op(campaigns.get_campaign, campaign_id).variants, ())

    def test_variants_change_only_in_draft_or_paused(self):
        campaign_id = self.started()
        with self.assertRaises(Conflict) as raised:
            self.op(campaigns.set_variant, campaign_id, "en", "New", "New")
        self.assertIn("is running", str(raised.exception))
        with self.assertRaises(Conflict):
            self.op(campaigns.remove_variant, campaign_id, "en")
        self.op(set_status, campaign_id, "paused")
        self.op(campaigns.set_variant, campaign_id, "en", "Fixed", "Fixed body", now=T0)
        self.op(campaigns.set_variant, campaign_id, "fr", "Salut", "Corps", now=T0)
        self.op(campaigns.remove_variant, campaign_id, "fr")  # nobody on the send list uses it
        with self.assertRaises(Conflict) as raised:
            self.op(campaigns.remove_variant, campaign_id, "en")
        self.assertIn("recipients of campaign", str(raised.exception))

    # -- preview -----------------------------------------------------------------------

    def test_preview_per_language_with_real_fields(self):
        company = self.op(add_contact, self.org, "", "", name="Globex", kind="company")
        former = self.op(add_contact, self.org, "", "", name="Initech", kind="company")
        self.op(employ, self.bob, former, True, valid_to=TODAY - datetime.timedelta(days=1))
        self.op(employ, self.bob, company, False)
        self.op(employ, self.ann, company, True)
        campaign_id = self.campaign(
            en=(EN_SUBJECT, EN_BODY),
            cs=("Zprávy pro {{ first_name }}", "{{ company }} / {{ language }}"),
            fr=("Nouvelles", "{{ first_name }} {{ email }}"),
        )
        previews = self.op(
            campaigns.preview_campaign, campaign_id, TODAY, unsubscribe_url=PREVIEW_URL
        )
        self.assertEqual([preview.language for preview in previews], ["cs", "en", "fr"])
        cs, en, fr = previews
        self.assertEqual(
            cs,
            RenderedPreview(
                language="cs",
                contact_id=self.ann,
                address="ann@x.test",
                subject="Zprávy pro Anna",
                body="Globex / cs",
                error=None,
                recipients=1,
            ),
        )
        # de (bob), "" (cyd) and en (eve) get the fallback (ann's second contact does not:
        # the address is ann's, in Czech); bob first, whose current employment is not
        # primary.
        self.assertEqual((en.contact_id, en.address, en.recipients), (self.bob, "bob@x.test", 3))
        self.assertEqual(en.subject, "News for Bob")
        self.assertEqual(en.body, f"Dear Bob Brown of ,\nbye: {PREVIEW_URL}\n")
        # Nobody gets fr: rendered with the sample contact.
        self.assertEqual(
            (fr.contact_id, fr.address, fr.recipients, fr.error), (None, None, 0, None)
        )
        self.assertEqual(fr.body, f"{SAMPLE_FIELDS['first_name']} {SAMPLE_FIELDS['email']}")

    def test_preview_links_are_the_configured_ones(self):
        campaign_id = self.campaign(en=(EN_SUBJECT, EN_BODY), fr=("Nouvelles", EN_BODY))
        en, fr = self.preview(campaign_id)
        # The sample contact's (fr) and a member's (en) link alike, from the caller's base.
        for preview in (en, fr):
            self.assertTrue(preview.body.endswith(f"bye: {PREVIEW_URL}\n"), preview.body)
        # No link of its own: a caller that forgets the configured one is told at once.
        self.assertRaises(TypeError, self.op, campaigns.preview_campaign, campaign_id)

    def test_preview_without_a_fallback_variant(self):
        campaign_id = self.campaign(cs=("Ahoj", "Tělo"))
        cs, en = self.preview(campaign_id)
        self.assertIsNone(cs.error)
        self.assertEqual((en.language, en.recipients, en.subject, en.body), ("en", 3, None, None))
        self.assertIn("no variant in the fallback language en", en.error)

    def test_preview_and_start_find_a_missing_merge_field(self):
        campaign_id = self.campaign(en=(EN_SUBJECT, EN_BODY))

        def old_variant():
            CampaignVariant.create(
                campaign=campaign_id,
                language="cs",
                subject="Ahoj",
                body="Milý {{ nickname }}",
                updated_at=T0,
            )

        self.op(old_variant)
        cs, en = self.preview(campaign_id)
        self.assertEqual((cs.subject, cs.body), (None, None))
        self.assertIn("'nickname' is undefined", cs.error)
        self.assertIsNone(en.error)
        with self.assertRaises(Invalid) as raised:
            self.op(sendlists.start_campaign, campaign_id, T0)
        self.assertIn("the cs variant cannot be sent", str(raised.exception))
        self.assertEqual(self.op(rows_of, campaign_id), [])
        self.assertEqual(self.op(campaigns.get_campaign, campaign_id).status, "draft")

    def test_start_renders_for_real_members(self):
        # Fine for the sample contact, but a company has no first name to take a letter of.
        self.op(add_contact, self.org, "hq@globex.test", "en", name="Globex", kind="company")
        group = self.op(add_dynamic_group, "everyone", self.org, has_email=True)
        campaign_id = self.campaign(
            group=group, en=("Hi {{ first_name[0] }}.", "Body"), cs=("Ahoj", "Tělo")
        )
        previews = {preview.language: preview for preview in self.preview(campaign_id)}
        self.assertIsNone(previews["cs"].error)
        self.assertIsNone(previews["en"].error, "bob comes first and has a first name")
        # Once the first member in English is the company, the preview shows the problem.
        self.op(
            lambda: (
                Contact.update(language="cs")
                .where(Contact.id.in_([self.bob, self.cyd, self.ann_again, self.eve]))
                .execute()
            )
        )
        previews = {preview.language: preview for preview in self.preview(campaign_id)}
        self.assertIn("subject", previews["en"].error)
        self.assertEqual(previews["en"].address, "hq@globex.test")
        with self.assertRaises(Invalid) as raised:
            self.op(sendlists.start_campaign, campaign_id, T0)
        self.assertIn("the en variant cannot be rendered for hq@globex.test", str(raised.exception))
        self.assertEqual(self.op(rows_of, campaign_id), [])

    # -- starting: the send list --------------------------------------------------------

    def test_send_list_dedup_suppression_and_language_fallback(self):
        self.op(campaign_recipients.suppress_address, "cyd@x.test", "unsubscribed", now=T0)
        campaign_id = self.campaign(en=(EN_SUBJECT, EN_BODY), cs=("Ahoj", "Tělo"))
        status = self.op(sendlists.start_campaign, campaign_id, T0)
        self.assertEqual(
            self.op(rows_of, campaign_id),
            [
                # The lowest contact id wins a shared address: ann (cs), not ann_again (en).
                ("ann@x.test", self.ann, "cs", "queued"),
                ("bob@x.test", self.bob, "en", "queued"),  # de has no variant
                ("cyd@x.test", self.cyd, "en", "suppressed"),  # no language; unsubscribed
                ("eve@x.test", self.eve, "en", "queued"),
            ],
        )
        self.assertEqual(status.campaign.status, "running")
        self.assertEqual(status.campaign.started_at, T0)
        self.assertEqual(status.total, 4)
        self.assertEqual((status.counts["queued"], status.counts["suppressed"]), (3, 1))
        entries = self.op(campaign_recipients.send_list, campaign_id)
        self.assertEqual(
            {(e.uncertain, e.attempts, e.last_reply, e.updated_at) for e in entries},
            {(False, 0, None, T0)},
        )

    def test_a_dynamic_group_is_expanded_too(self):
        other = self.op(add_organization, "Other")
        self.op(add_contact, other, "zed@other.test", "en")
        group = self.op(add_dynamic_group, "czech", self.org, languages=["cs", "de"])
        campaign_id = self.campaign(group=group, en=("Hi", "Body"), de=("Hallo", "Text"))
        self.op(sendlists.start_campaign, campaign_id, T0)
        self.assertEqual(
            self.op(rows_of, campaign_id),
            [("ann@x.test", self.ann, "en", "queued"), ("bob@x.test", self.bob, "de", "queued")],
        )

    def test_the_send_list_is_all_or_nothing(self):
        campaign_id = self.campaign(en=(EN_SUBJECT, EN_BODY))
        made = []
        expand, set_status_before = sendlists._expand_send_list, sendlists._set_status

        def expand_and_count(*args):
            count = expand(*args)
            made.append(
                CampaignRecipient.select().where(CampaignRecipient.campaign == campaign_id).count()
            )
            return count

        def status_fails(*args, **kwargs):
            raise RuntimeError("the disk is full")

        self.patch(sendlists, "_expand_send_list", expand_and_count)
        self.patch(sendlists, "_set_status", status_fails)
        with self.assertRaises(RuntimeError):
            self.op(sendlists.start_campaign, campaign_id, T0)
        self.assertEqual(made, [4], "the rows were inserted before the failure")
        self.assertEqual(self.op(rows_of, campaign_id), [])
        record = self.op(campaigns.get_campaign, campaign_id)
        self.assertEqual((record.status, record.started_at), ("draft", None))
        # Once the failure is gone, the same start works.
        self.patch(sendlists, "_set_status", set_status_before)
        self.assertEqual(self.op(sendlists.start_campaign, campaign_id, T0).total, 4)

    def test_start_refusals(self):
        campaign_id = self.campaign(cs=("Ahoj", "Tělo"))
        with self.assertRaises(Invalid) as raised:
            self.op(sendlists.start_campaign, campaign_id, T0)
        self.assertIn("no variant in its fallback language en", str(raised.exception))
        self.op(campaigns.set_variant, campaign_id, "en", "Hi", "Body")
        self.op(m.set_mailbox_active, "news@acme.test", False)
        with self.assertRaises(Invalid) as raised:
            self.op(sendlists.start_campaign, campaign_id, T0)
        self.assertIn("inactive mailbox", str(raised.exception))
        self.op(m.set_mailbox_active, "news@acme.test", True)
        # Its identity has become another mailbox's address since it was set.
        self.op(m.update_mailbox, "news@acme.test", identity="desk@acme.test")
        self.op(m.add_mailbox, "desk@acme.test", "joe")
        with self.assertRaises(Invalid) as raised:
            self.op(sendlists.start_campaign, campaign_id, T0)
        self.assertIn(
            f"campaign {campaign_id} cannot be sent: it would be sent as desk@acme.test, "
            "which is refused: another mailbox, desk@acme.test, receives at desk@acme.test",
            str(raised.exception),
        )
        self.op(m.update_mailbox, "news@acme.test", identity="news@acme.test")
        self.op(sendlists.start_campaign, campaign_id, T0)
        with self.assertRaises(Conflict) as raised:
            self.op(sendlists.start_campaign, campaign_id, T0)
        self.assertIn("only a draft can be sent", str(raised.exception))
        with self.assertRaises(NotFound):
            self.op(sendlists.start_campaign, 999, T0)

    def test_a_group_without_addresses_is_refused(self):
        empty = self.op(add_static_group, "no mail", self.org, [self.nomail])
        campaign_id = self.campaign(group=empty, en=("Hi", "Body"))
        with self.assertRaises(Invalid) as raised:
            self.op(sendlists.start_campaign, campaign_id, T0)
        self.assertIn("the group has no member with an address", str(raised.exception))
        self.assertEqual(self.op(campaigns.get_campaign, campaign_id).status, "draft")

    def test_everyone_suppressed_finishes_at_once(self):
        for address in ("ann@x.test", "bob@x.test", "cyd@x.test", "eve@x.test"):
            self.op(campaign_recipients.suppress_address, address, now=T0)
        status = self.op(sendlists.start_campaign, self.campaign(en=("Hi", "Body")), T0)
        self.assertEqual((status.campaign.status, status.campaign.finished_at), ("finished", T0))
        self.assertEqual((status.counts["suppressed"], status.done, status.total), (4, 4, 4))

    # -- pause, resume, cancel, retry, finish --------------------------------------------

    def test_pause_and_resume(self):
        calls = self.spy_on_take_back()
        campaign_id = self.started()
        later = T0 + datetime.timedelta(minutes=5)
        status = self.op(sendlists.pause_campaign, campaign_id, later)
        self.assertEqual(status.campaign.status, "paused")
        self.assertEqual(calls, [(campaign_id, later, True)], "in the pausing transaction")
        with self.assertRaises(Conflict) as raised:
            self.op(sendlists.pause_campaign, campaign_id, later)
        self.assertIn("only a running one pauses", str(raised.exception))
        status = self.op(sendlists.resume_campaign, campaign_id, later)
        self.assertEqual(status.campaign.status, "running")
        with self.assertRaises(Conflict) as raised:
            self.op(sendlists.resume_campaign, campaign_id, later)
        self.assertIn("only a paused one resumes", str(raised.exception))
        self.assertEqual(len(calls), 1, "resuming takes nothing back")

    def test_resume_never_requeues_sent_rows_and_finishes_when_nothing_is_left(self):
        campaign_id = self.started()
        self.op(set_rows, campaign_id, ["ann@x.test", "bob@x.test"], state="sent", sent_at=T0)
        self.op(set_status, campaign_id, "paused")
        status = self.op(sendlists.resume_campaign, campaign_id, T0)
        self.assertEqual((status.counts["sent"], status.counts["queued"]), (2, 2))
        self.op(set_rows, campaign_id, ["cyd@x.test", "eve@x.test"], state="sent", sent_at=T0)
        self.op(set_status, campaign_id, "paused")
        status = self.op(sendlists.resume_campaign, campaign_id, T0)
        self.assertEqual(status.campaign.status, "finished")
        self.assertEqual(status.counts["sent"], 4)

    def test_pause_takes_back_what_waits_in_the_queue(self):
        self.require_take_back()
        from atollon_mail.store.models import Message, QueueMessage, QueueRecipient

        campaign_id = self.started()

        def hand_over(address, queue_state):
            message = Message.create(
                raw=b"x", size=1, envelope_sender="news@acme.test", received_at=T0
            )
            row = CampaignRecipient.get(
                (CampaignRecipient.campaign == campaign_id) & (CampaignRecipient.address == address)
            )
            queued = QueueMessage.create(
                message=message,
                envelope_sender="news@acme.test",
                is_bounce=False,
                created_at=T0,
                origin_kind="campaign",
                origin_id=row.id,
            )
            recipient = QueueRecipient.create(
                queue_message=queued,
                address=address,
                domain="x.test",
                state=queue_state,
                attempts=0,
                next_attempt_at=T0,
                delay_warned=False,
                created_at=T0,
                updated_at=T0,
            )
            set_rows(
                campaign_id,
                [address],
                state="sending",
                queue_recipient_id=recipient.id,
                message_id=message.id,
            )

        self.op(hand_over, "ann@x.test", "queued")
        self.op(hand_over, "bob@x.test", "in-flight")
        status = self.op(sendlists.pause_campaign, campaign_id, T0)
        self.assertEqual((status.counts["queued"], status.counts["sending"]), (3, 1))
        states = dict((row[0], row[3]) for row in self.op(rows_of, campaign_id))
        self.assertEqual((states["ann@x.test"], states["bob@x.test"]), ("queued", "sending"))
        self.assertEqual(
            self.op(lambda: [r.address for r in QueueRecipient.select()]), ["bob@x.test"]
        )

    def test_cancel(self):
        calls = self.spy_on_take_back()
        draft = self.campaign(en=("Hi", "Body"))
        status = self.op(sendlists.cancel_campaign, draft, T0)
        self.assertEqual((status.campaign.status, status.campaign.finished_at), ("cancelled", T0))
        self.assertEqual(calls, [], "a draft has nothing in the queue")
        running = self.started()
        self.op(set_rows, running, ["ann@x.test"], state="sent", sent_at=T0)
        later = T0 + datetime.timedelta(minutes=1)
        status = self.op(sendlists.cancel_campaign, running, later)
        self.assertEqual(calls, [(running, later, True)])
        self.assertEqual(status.campaign.finished_at, later)
        self.assertEqual((status.counts["queued"], status.counts["sent"]), (3, 1), "left as is")
        paused = self.started()
        self.op(set_status, paused, "paused")
        self.assertEqual(
            self.op(sendlists.cancel_campaign, paused, T0).campaign.status, "cancelled"
        )
        for campaign_id in (running,):
            with self.assertRaises(Conflict) as raised:
                self.op(sendlists.cancel_campaign, campaign_id, T0)
            self.assertIn("is cancelled already", str(raised.exception))
        self.op(set_status, running, "finished")
        with self.assertRaises(Conflict):
            self.op(sendlists.cancel_campaign, running, T0)
        for operation in (
            sendlists.resume_campaign,
            sendlists.pause_campaign,
            sendlists.start_campaign,
        ):
            with self.assertRaises(Conflict):
                self.op(operation, paused, T0)

    def test_retry_failed(self):
        campaign_id = self.started()
        self.op(set_rows, campaign_id, ["ann@x.test"], state="sent", sent_at=T0, attempts=1)
        self.op(
            set_rows, campaign_id, ["bob@x.test"], state="failed", attempts=3, last_reply="554 no"
        )
        self.op(set_rows, campaign_id, ["cyd@x.test"], state="bounced", attempts=1)
        self.op(set_rows, campaign_id, ["eve@x.test"], state="suppressed")
        self.assertTrue(self.op(sendlists.finish_if_done, campaign_id, T0))
        later = T0 + datetime.timedelta(hours=1)
        self.assertEqual(self.op(sendlists.retry_failed, campaign_id, later), 1)
        record = self.op(campaigns.get_campaign, campaign_id)
        self.assertEqual((record.status, record.finished_at), ("running", None))
        entries = {
            entry.address: entry for entry in self.op(campaign_recipients.send_list, campaign_id)
        }
        self.assertEqual(
            {address: entry.state for address, entry in entries.items()},
            {
                "ann@x.test": "sent",
                "bob@x.test": "queued",
                "cyd@x.test": "bounced",
                "eve@x.test": "suppressed",
            },
        )
        bob = entries["bob@x.test"]
        self.assertEqual((bob.attempts, bob.last_reply, bob.updated_at), (3, "554 no", later))
        self.assertEqual(
            self.op(sendlists.retry_failed, campaign_id, later), 0, "nothing failed now"
        )
        # A finished campaign without failures stays finished.
        self.op(set_rows, campaign_id, ["bob@x.test"], state="sent", sent_at=later)
        self.assertTrue(self.op(sendlists.finish_if_done, campaign_id, later))
        self.assertEqual(self.op(sendlists.retry_failed, campaign_id, later), 0)
        self.assertEqual(self.op(campaigns.get_campaign, campaign_id).status, "finished")
        self.op(set_rows, campaign_id, ["bob@x.test"], state="failed")
        self.op(set_status, campaign_id, "cancelled")
        with self.assertRaises(Conflict) as raised:
            self.op(sendlists.retry_failed, campaign_id, later)
        self.assertIn("is cancelled", str(raised.exception))
        self.assertEqual(self.op(rows_of, campaign_id)[1][3], "failed")

    def test_finish_if_done(self):
        campaign_id = self.started()
        self.assertFalse(self.op(sendlists.finish_if_done, campaign_id, T0))
        self.op(set_rows, campaign_id, ["ann@x.test", "bob@x.test"], state="sent", sent_at=T0)
        self.op(set_rows, campaign_id, ["cyd@x.test"], state="deferred")
        self.op(set_rows, campaign_id, ["eve@x.test"], state="failed")
        self.assertFalse(self.op(sendlists.finish_if_done, campaign_id, T0), "cyd is deferred")
        self.op(set_rows, campaign_id, ["cyd@x.test"], state="bounced")
        self.op(set_status, campaign_id, "paused")
        self.assertFalse(self.op(sendlists.finish_if_done, campaign_id, T0), "only a running one")
        self.op(set_status, campaign_id, "running")
        later = T0 + datetime.timedelta(minutes=3)
        self.assertTrue(self.op(sendlists.finish_if_done, campaign_id, later))
        record = self.op(campaigns.get_campaign, campaign_id)
        self.assertEqual((record.status, record.finished_at), ("finished", later))
        self.assertFalse(self.op(sendlists.finish_if_done, campaign_id, later))

    # -- status -------------------------------------------------------------------------

    def big_campaign(self, count: int) -> int:
        def people():
            for number in range(count):
                add_contact(self.org, f"p{number:03}@big.test", "en")

        self.op(people)
        group = self.op(add_dynamic_group, "big", self.org, has_email=True)
        campaign_id = self.campaign(group=group, en=("Hi", "Body"))
        self.op(sendlists.start_campaign, campaign_id, T0)
        return campaign_id

    def addresses(self, first: int, last: int) -> list[str]:
        return [f"p{number:03}@big.test" for number in range(first, last)]

    def test_status_counts_rate_and_eta(self):
        campaign_id = self.big_campaign(100)  # and the 4 customers with an address
        now = T0 + datetime.timedelta(minutes=10)
        recent = now - datetime.timedelta(seconds=30)
        old = now - datetime.timedelta(seconds=61)
        self.op(
            set_rows,
            campaign_id,
            self.addresses(0, 30),
            state="sent",
            sent_at=recent,
            updated_at=recent,
        )
        self.op(
            set_rows,
            campaign_id,
            self.addresses(30, 40),
            state="sent",
            sent_at=old,
            updated_at=old,
        )
        self.op(set_rows, campaign_id, self.addresses(40, 45), state="bounced", updated_at=recent)
        self.op(set_rows, campaign_id, self.addresses(45, 49), state="failed", updated_at=recent)
        self.op(set_rows, campaign_id, self.addresses(49, 50), state="failed", updated_at=old)
        self.op(set_rows, campaign_id, self.addresses(50, 55), state="sending", updated_at=recent)
        self.op(set_rows, campaign_id, self.addresses(55, 60), state="deferred", updated_at=recent)
        self.op(
            set_rows, campaign_id, self.addresses(60, 62), state="suppressed", updated_at=recent
        )
        self.op(set_rows, campaign_id, self.addresses(50, 53), uncertain=True)
        status = self.op(campaign_recipients.campaign_status, campaign_id, now)
        self.assertEqual(
            status.counts,
            {
                "queued": 42,
                "sending": 5,
                "sent": 40,
                "deferred": 5,
                "bounced": 5,
                "failed": 5,
                "suppressed": 2,
            },
        )
        self.assertEqual((status.total, status.done, status.uncertain), (104, 52, 3))
        # 30 sent + 5 bounced + 4 failed within the minute; suppressed rows are not counted.
        self.assertAlmostEqual(status.rate, 39 / 60)
        self.assertAlmostEqual(status.eta_seconds, 52 / (39 / 60))

    def test_rate_over_the_time_since_the_start_when_shorter(self):
        campaign_id = self.big_campaign(10)
        now = T0 + datetime.timedelta(seconds=20)
        self.op(set_rows, campaign_id, self.addresses(0, 10), state="sent", sent_at=now)
        status = self.op(campaign_recipients.campaign_status, campaign_id, now)
        self.assertAlmostEqual(status.rate, 10 / 20)
        self.assertAlmostEqual(status.eta_seconds, 4 / (10 / 20))

    def test_rate_unknown_when_nothing_finished_in_the_last_minute(self):
        campaign_id = self.big_campaign(10)
        now = T0 + datetime.timedelta(minutes=5)
        status = self.op(campaign_recipients.campaign_status, campaign_id, now)
        self.assertEqual((status.rate, status.eta_seconds), (None, None))
        self.op(set_rows, campaign_id, self.addresses(0, 10), state="sent", sent_at=T0)
        self.assertIsNone(self.op(campaign_recipients.campaign_status, campaign_id, now).rate)
        draft = self.op(campaign_recipients.campaign_status, self.campaign(), now)
        self.assertEqual(
            (draft.total, draft.done, draft.rate, draft.eta_seconds), (0, 0, None, None)
        )
        self.assertEqual(set(draft.counts.values()), {0})

    def test_a_paused_or_cancelled_campaign_has_no_rate_and_no_eta(self):
        campaign_id = self.big_campaign(10)
        now = T0 + datetime.timedelta(seconds=20)
        self.op(set_rows, campaign_id, self.addresses(0, 5), state="sent", sent_at=now)
        self.assertAlmostEqual(
            self.op(campaign_recipients.campaign_status, campaign_id, now).rate, 5 / 20
        )
        for state in ("paused", "cancelled"):
            self.op(set_status, campaign_id, state)
            status = self.op(campaign_recipients.campaign_status, campaign_id, now)
            self.assertEqual(
                (status.campaign.status, status.rate, status.eta_seconds), (state, None, None)
            )

    def test_nothing_left_means_no_eta(self):
        campaign_id = self.started()
        self.op(
            set_rows,
            campaign_id,
            ["ann@x.test", "bob@x.test", "cyd@x.test", "eve@x.test"],
            state="sent",
            sent_at=T0,
        )
        status = self.op(
            campaign_recipients.campaign_status, campaign_id, T0 + datetime.timedelta(seconds=10)
        )
        self.assertAlmostEqual(status.rate, 4 / 10)
        self.assertIsNone(status.eta_seconds)

    # -- the send list ------------------------------------------------------------------

    def test_send_list_filters_and_pages(self):
        campaign_id = self.started()
        self.op(
            set_rows, campaign_id, ["bob@x.test"], state="failed", last_reply="550 gone", attempts=1
        )
        self.op(
            set_rows, campaign_id, ["cyd@x.test", "eve@x.test"], uncertain=True, state="sending"
        )
        everyone = self.op(campaign_recipients.send_list, campaign_id)
        self.assertEqual(
            [entry.address for entry in everyone],
            ["ann@x.test", "bob@x.test", "cyd@x.test", "eve@x.test"],
        )
        self.assertEqual(
            (everyone[0].contact_id, everyone[0].contact_name), (self.ann, "Anna Nová")
        )
        [bob] = self.op(campaign_recipients.send_list, campaign_id, state="failed")
        self.assertEqual((bob.address, bob.last_reply, bob.attempts), ("bob@x.test", "550 gone", 1))
        uncertain = self.op(campaign_recipients.send_list, campaign_id, uncertain=True)
        self.assertEqual([entry.address for entry in uncertain], ["cyd@x.test", "eve@x.test"])
        certain = self.op(campaign_recipients.send_list, campaign_id, uncertain=False)
        self.assertEqual([entry.address for entry in certain], ["ann@x.test", "bob@x.test"])
        page = self.op(campaign_recipients.send_list, campaign_id, limit=2, offset=1)
        self.assertEqual([entry.address for entry in page], ["bob@x.test", "cyd@x.test"])
        with self.assertRaises(Invalid):
            self.op(campaign_recipients.send_list, campaign_id, state="lost")
        with self.assertRaises(NotFound):
            self.op(campaign_recipients.send_list, 999)
        # A removed contact leaves its row (without the contact).
        self.op(lambda: Contact.delete().where(Contact.id == self.ann).execute())
        first = self.op(campaign_recipients.send_list, campaign_id, limit=1)[0]
        self.assertEqual(
            (first.address, first.contact_id, first.contact_name), ("ann@x.test", None, None)
        )

    # -- suppressions --------------------------------------------------------------------

    def test_suppress_is_idempotent_and_keeps_the_first_reason(self):
        record = self.op(
            campaign_recipients.suppress_address, " Ann@X.Test ", "unsubscribed", "by link", now=T0
        )
        self.assertEqual(
            (record.address, record.reason, record.detail, record.campaign_id, record.created_at),
            ("ann@x.test", "unsubscribed", "by link", None, T0),
        )
        again = self.op(
            campaign_recipients.suppress_address,
            "ann@x.test",
            "manual",
            now=T0 + datetime.timedelta(days=1),
        )
        self.assertEqual(again, record)
        with self.assertRaises(Invalid):
            self.op(campaign_recipients.suppress_address, "ann@x.test", "annoyed")
        with self.assertRaises(Invalid):
            self.op(campaign_recipients.suppress_address, "not an address")
        with self.assertRaises(NotFound):
            self.op(campaign_recipients.suppress_address, "bob@x.test", campaign_id=999)
        self.assertEqual(self.op(builders.row_count, Suppression), 1)

    def test_suppressing_stops_waiting_recipients_of_running_campaigns(self):
        running = self.started()
        finished = self.started()
        self.op(set_status, finished, "finished")
        self.op(set_rows, running, ["bob@x.test"], state="sent", sent_at=T0)
        for address in ("ann@x.test", "bob@x.test"):
            record = self.op(
                campaign_recipients.suppress_address,
                address,
                "hard-bounce",
                campaign_id=running,
                now=T0,
            )
            self.assertEqual(record.campaign_id, running)
        states = {row[0]: row[3] for row in self.op(rows_of, running)}
        self.assertEqual((states["ann@x.test"], states["bob@x.test"]), ("suppressed", "sent"))
        self.assertEqual(self.op(rows_of, finished)[0][3], "queued", "a finished list is history")

    def test_unsuppress_and_list(self):
        for number, address in enumerate(("a@x.test", "b@x.test", "c@x.test")):
            self.op(
                campaign_recipients.suppress_address,
                address,
                now=T0 + datetime.timedelta(minutes=number),
            )
        listed = self.op(campaign_recipients.list_suppressions)
        self.assertEqual(
            [record.address for record in listed], ["c@x.test", "b@x.test", "a@x.test"]
        )
        page = self.op(campaign_recipients.list_suppressions, limit=1, offset=1)
        self.assertEqual([record.address for record in page], ["b@x.test"])
        self.assertTrue(self.op(campaign_recipients.unsuppress_address, "B@x.test"))
        self.assertFalse(self.op(campaign_recipients.unsuppress_address, "b@x.test"))
        self.assertEqual(len(self.op(campaign_recipients.list_suppressions)), 2)

    def test_an_unsuppressed_address_is_sent_to_by_the_next_campaign(self):
        self.op(campaign_recipients.suppress_address, "cyd@x.test", "unsubscribed", now=T0)
        first = self.started()
        self.assertTrue(self.op(campaign_recipients.unsuppress_address, "cyd@x.test"))
        second = self.started()
        self.assertEqual(self.op(rows_of, first)[2][::3], ("cyd@x.test", "suppressed"))
        self.assertEqual(self.op(rows_of, second)[2][::3], ("cyd@x.test", "queued"))


class SqliteCampaignTests(SqliteStoreMixin, CampaignContract, unittest.TestCase):
    pass


class PostgresCampaignTests(PostgresStoreMixin, CampaignContract, unittest.TestCase):
    pass
