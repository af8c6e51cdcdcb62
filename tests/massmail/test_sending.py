"""Sending a campaign: the sender hands the send list to the delivery queue, the runner
delivers it, and outcomes, bounces and unsubscribes land on the send list. On SQLite and
PostgreSQL, with a scripted remote server and a test clock."""

from __future__ import annotations

import datetime
import email
import email.policy
import time

from twisted.internet import defer, task
from twisted.trial import unittest

from atollon_mail.config import MassmailConfig, parse_config
from atollon_mail.delivery.bounce import FailedRecipient, build_dsn
from atollon_mail.delivery.dotjournal import DotJournal
from atollon_mail.delivery.intake import Intake
from atollon_mail.delivery.runner import DeliveryRunner
from atollon_mail.events import Events
from atollon_mail.massmail.returns import CampaignReturns
from atollon_mail.massmail.sender import MassMailSender
from atollon_mail.massmail.tokens import RecipientTokens
from atollon_mail.passwords import hash_password
from atollon_mail.store import (
    accounts,
    aliases,
    campaign_recipients,
    campaigns,
    queue,
    sendlists,
)
from atollon_mail.store import filing as filing_ops
from atollon_mail.store import mailboxes as mailbox_ops
from atollon_mail.store.errors import Invalid
from atollon_mail.store.models import (
    CampaignRecipient,
    Contact,
    ContactContext,
    Context,
    DistributionGroup,
    Domain,
    Employment,
    Filing,
    Mailbox,
    Message,
    MessageType,
    Organization,
    QueueMessage,
    QueueRecipient,
    Suppression,
    utc_now,
)
from atollon_mail.store.records import Recipient, Rejection
from tests import builders
from tests.delivery.test_runner import FakeResolver, ScriptedRemote
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin

SECRET = b"campaign test secret"
UNSUBSCRIBE_BASE = "https://mail.acme.test"


def _crm_fixture(store_now):
    """An organization; a company with a folder; three people with addresses; a dynamic
    group of everyone with an address; a message type for newsletters."""
    organization = Organization.create(name="Acme", created_at=store_now)

    def contact(kind, email, language, first="", last="", name=""):
        return Contact.create(
            organization=organization,
            kind=kind,
            external_id=None,
            name=name,
            first_name=first,
            last_name=last,
            email=email,
            language=language,
            created_at=store_now,
            updated_at=store_now,
        )

    company = contact("company", "", "", name="Example Ltd")
    folder = Context.create(
        kind="folder",
        name="Example Ltd: general",
        owner=None,
        created_at=store_now,
        organization=organization,
        company=company,
    )
    jana = contact("person", "jana@example.org", "cs", "Jana", "Nováková")
    bob = contact("person", "bob@example.net", "en", "Bob", "Smith")
    hans = contact("person", "hans@example.de", "de", "Hans", "Meier")
    Employment.create(person=jana, company=company, is_primary=True, created_at=store_now)
    ContactContext.create(
        organization=organization,
        contact=jana,
        folder=folder,
        project=None,
        activity=None,
        source="employer",
        updated_at=store_now,
    )
    DistributionGroup.create(
        name="Everyone",
        organization=organization,
        kind="dynamic",
        filter='{"has_email": true}',
        created_at=store_now,
    )
    MessageType.create(
        name="Newsletter",
        code="newsletter",
        description="",
        active=True,
        default_incoming=False,
        default_outgoing=False,
        created_at=store_now,
    )
    return {"folder": folder.id, "jana": jana.id, "bob": bob.id, "hans": hans.id}


class SendingTests(StoreFixtureMixin):
    rate = 0.0
    window = 1000

    def setUp(self):
        self.store = self.make_store()
        self.journal_directory = self.mktemp()
        builders.hosted_mailbox(
            self.store, "news@acme.test", "jane", hash_password("pw"), "Jane Doe"
        )
        self.ids = self.store.run_sync(_crm_fixture, utc_now())
        self.clock = task.Clock()
        self.clock.advance(float(int(time.time()) + 2))
        self.remote = ScriptedRemote()
        self.events = Events()
        self.tokens = RecipientTokens(SECRET)
        self.returns = CampaignReturns(self.store, self.tokens, self.clock, self.events)
        self.intake = Intake(self.store, self.events, return_addresses=self.returns)
        self.runner = DeliveryRunner(
            self.store,
            self.intake,
            FakeResolver(),
            parse_config("").delivery,
            "mx.acme.test",
            self.clock,
            deliver=self.remote,
            events=self.events,
            journal=DotJournal(self.journal_directory),
            progress_delay=0,
        )
        self.sender = self.make_sender()

    def make_sender(self, rate=None, window=None) -> MassMailSender:
        return MassMailSender(
            self.store,
            self.tokens,
            MassmailConfig(
                rate=self.rate if rate is None else rate,
                window=self.window if window is None else window,
                unsubscribe_url=None,
            ),
            "mail.acme.test",
            UNSUBSCRIBE_BASE,
            self.clock,
            events=self.events,
        )

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC).replace(
            tzinfo=None
        )

    def make_campaign(self, fallback="en") -> int:
        variants = {
            "cs": (
                "Novinky pro {{ first_name }}",
                "Dobrý den {{ name }},\nnovinky z {{ company }}.\n"
                "Odhlásit: {{ unsubscribe_url }}\n",
            ),
            "en": (
                "News for {{ first_name }}",
                "Hello {{ name }},\nour news.\nUnsubscribe: {{ unsubscribe_url }}\n",
            ),
        }
        return builders.campaign(
            self.store,
            "Everyone",
            "news@acme.test",
            name="November news",
            fallback_language=fallback,
            variants=variants,
            type_code="newsletter",
        ).id

    def start_all(self, campaign_id: int, *services):
        self.store.run_sync(sendlists.start_campaign, campaign_id, self.now())
        for service in services or (self.runner, self.sender):
            service.startService()
            self.addCleanup(service.stopService)

    @defer.inlineCallbacks
    def run_until(self, predicate, steps=200, step=0.1):
        """Advance the clock (the store's threads do real work meanwhile) until
        predicate() (a store operation returning a truth) holds."""
        for _ in range(steps):
            done = yield self.store.run(predicate)
            if done:
                return
            self.clock.advance(step)
            yield task.deferLater(_reactor(), 0.01, lambda: None)
        self.fail("the campaign did not get there in time")

    def rows(self, campaign_id: int) -> dict[str, CampaignRecipient]:
        rows = self.store.run_sync(
            builders.table_rows,
            CampaignRecipient.address,
            CampaignRecipient.state,
            CampaignRecipient.uncertain,
            CampaignRecipient.last_reply,
            CampaignRecipient.attempts,
            where=CampaignRecipient.campaign == campaign_id,
        )
        return {address: tuple(values) for address, *values in rows}

    def campaign_status(self, campaign_id: int) -> str:
        return self.store.run_sync(campaigns.get_campaign, campaign_id).status

    # -- sending -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_campaign_is_delivered_personalised_and_filed(self):
        campaign_id = self.make_campaign()
        self.start_all(campaign_id)
        yield self.run_until(lambda: self.campaign_status_now(campaign_id) == "finished")
        self.assertEqual(
            {address: state for address, (state, *_) in self.rows(campaign_id).items()},
            dict.fromkeys(["jana@example.org", "bob@example.net", "hans@example.de"], "sent"),
        )
        envelopes = [envelope for _, sent in self.remote.calls for envelope in sent]
        self.assertEqual(len(envelopes), 3)
        by_recipient = {envelope.recipients[0]: envelope for envelope in envelopes}
        jana = email.message_from_bytes(
            by_recipient["jana@example.org"].raw, policy=email.policy.default
        )
        self.assertEqual(jana["Subject"], "Novinky pro Jana")
        self.assertIn("novinky z Example Ltd.", jana.get_content())
        self.assertEqual(jana["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click")
        link, mailto = [part.strip(" <>") for part in jana["List-Unsubscribe"].split(",")]
        self.assertTrue(link.startswith(UNSUBSCRIBE_BASE + "/unsubscribe/"))
        self.assertIn(link, jana.get_content())
        self.assertTrue(mailto.startswith("mailto:unsubscribe+"))
        self.assertTrue(mailto.endswith("@acme.test"))
        self.assertEqual(jana["From"].addresses[0].addr_spec, "news@acme.test")
        self.assertEqual(jana["From"].addresses[0].display_name, "Jane Doe")
        # The contact whose language has no variant gets the fallback.
        hans = email.message_from_bytes(
            by_recipient["hans@example.de"].raw, policy=email.policy.default
        )
        self.assertEqual(hans["Subject"], "News for Hans")
        # A VERP return path per recipient, each naming its own row.
        senders = {envelope.sender for envelope in envelopes}
        self.assertEqual(len(senders), 3)
        for envelope in envelopes:
            local, _, domain = envelope.sender.partition("@")
            self.assertEqual(domain, "acme.test")
            purpose, row_id = self.tokens.read_local_part(local)
            self.assertEqual(purpose, "bounce")
            address = self.store.run_sync(campaign_recipients.row_address, row_id)
            self.assertEqual(address, envelope.recipients[0])
        # Filed: Jana's copy in her default folder, the others in the mailbox's Sent folder
        # (they have none), each with the campaign's message type.
        filings = self.store.run_sync(self.filings_by_recipient)
        self.assertEqual(filings["jana@example.org"][0], self.ids["folder"])
        self.assertEqual(filings["bob@example.net"][1], "Sent (news@acme.test)")
        self.assertEqual(filings["hans@example.de"][1], "Sent (news@acme.test)")
        self.assertEqual({kind for *_, kind in filings.values()}, {"newsletter"})

    def campaign_status_now(self, campaign_id):
        return campaigns.get_campaign(campaign_id).status

    @staticmethod
    def filings_by_recipient():
        found = {}
        query = (
            Filing.select(Filing, Message, Context, MessageType)
            .join(Message)
            .join(MessageType)
            .switch(Filing)
            .join(Context)
        )
        for filing in query:
            to = email.message_from_bytes(bytes(filing.message.raw))["To"]
            address = to.rpartition("<")[2].rstrip(">")
            found[address] = (filing.context.id, filing.context.name, filing.message.type.code)
        return found

    @defer.inlineCallbacks
    def test_addresses_of_this_server_are_filed_at_once_never_queued(self):
        """A contact whose address is a mailbox (or an alias) here gets the message filed
        in the handoff's transaction: no queue row, the row sent, nothing suppressed, the
        CRM copy filed as for every delivered row. An address here that receives
        nothing fails its row (not suppressed: ours to fix)."""
        self.store.run_sync(accounts.add_user, "joe", hash_password("pw"), "Joe")
        self.store.run_sync(mailbox_ops.add_mailbox, "joe@acme.test", "joe")
        self.store.run_sync(aliases.add_alias, "sales", "joe@acme.test")
        self.store.run_sync(_add_people, "joe@acme.test", "Sales@Acme.test", "ghost@acme.test")
        campaign_id = self.make_campaign()
        self.start_all(campaign_id)
        yield self.run_until(lambda: self.campaign_status_now(campaign_id) == "finished")
        rows = self.rows(campaign_id)
        for address in ("joe@acme.test", "Sales@Acme.test"):
            state, _, reply, attempts = rows[address]
            self.assertEqual(
                (state, reply, attempts), ("sent", campaign_recipients.LOCAL_REPLY, 1), address
            )
        state, _, reply, _ = rows["ghost@acme.test"]
        self.assertEqual(state, "failed")
        self.assertIn("ghost@acme.test is not an address here", reply)
        for address in ("jana@example.org", "bob@example.net", "hans@example.de"):
            self.assertEqual(rows[address][0], "sent")
        # Only the remote addresses went out, and only they have queue rows.
        sent_to = sorted(env.recipients[0] for _, sent in self.remote.calls for env in sent)
        self.assertEqual(sent_to, ["bob@example.net", "hans@example.de", "jana@example.org"])
        queued = self.store.run_sync(lambda: sorted(row.address for row in QueueRecipient.select()))
        self.assertEqual(queued, sent_to)
        self.assertEqual(self.store.run_sync(builders.row_count, Suppression), 0)
        # Joe has both messages (his own and the alias's), each under one Return-Path: the
        # VERP address of its own row.
        filed = self.store.run_sync(filing_ops.list_filings, "joe@acme.test", 10)
        self.assertEqual(len(filed), 2)
        for filing in filed:
            raw = self.store.run_sync(filing_ops.message_raw, filing.message.id)
            self.assertEqual(raw.count(b"Return-Path:"), 1)
            first, _, _ = raw.partition(b"\r\n")
            verp = first.removeprefix(b"Return-Path: <").removesuffix(b">").decode()
            self.assertEqual(verp, filing.message.envelope_sender)
            _, row_id = self.tokens.read_local_part(verp.partition("@")[0])
            self.assertIn(
                self.store.run_sync(campaign_recipients.row_address, row_id),
                ("joe@acme.test", "Sales@Acme.test"),
            )
            self.assertEqual(filing.message.size, len(raw))
            # The same stored message is the CRM copy in the sending mailbox: filed once
            # there, once in joe's mailbox, nowhere else.
            self.assertEqual(
                self.store.run_sync(_filing_mailboxes, filing.message.id),
                ["joe@acme.test", "news@acme.test"],
            )
        news = self.store.run_sync(filing_ops.list_filings, "news@acme.test", 100)
        self.assertEqual(len(news), 5, "one CRM copy per sent row")
        self.assertEqual(
            {f.context.name for f in news} - {"Example Ltd: general"}, {"Sent (news@acme.test)"}
        )

    @defer.inlineCallbacks
    def test_filing_follows_the_campaign_organization_and_a_project_only_default(self):
        def defaults():
            organization = Organization.get(name="Acme")
            other = Organization.create(name="Other", created_at=utc_now())
            project = Context.create(
                kind="project",
                name="Launch",
                owner=None,
                created_at=utc_now(),
                organization=organization,
            )
            elsewhere = Context.create(
                kind="folder",
                name="Elsewhere",
                owner=None,
                created_at=utc_now(),
                organization=other,
            )
            # Bob: a project and no folder here; Hans: a folder only in another
            # organization, which this campaign's filing must not use.
            ContactContext.create(
                organization=organization,
                contact=self.ids["bob"],
                folder=None,
                project=project,
                activity=None,
                source="manual",
                updated_at=utc_now(),
            )
            ContactContext.create(
                organization=other,
                contact=self.ids["hans"],
                folder=elsewhere,
                project=None,
                activity=None,
                source="manual",
                updated_at=utc_now(),
            )
            return project.id

        project_id = self.store.run_sync(defaults)
        campaign_id = self.make_campaign()
        self.start_all(campaign_id)
        yield self.run_until(lambda: self.campaign_status_now(campaign_id) == "finished")
        filings = self.store.run_sync(self.filings_by_recipient)
        self.assertEqual(filings["bob@example.net"][0], project_id)
        self.assertEqual(filings["hans@example.de"][1], "Sent (news@acme.test)")
        self.assertEqual(filings["jana@example.org"][0], self.ids["folder"])

    @defer.inlineCallbacks
    def test_refusals_bounce_defer_and_suppress_without_a_dsn(self):
        self.remote.replies["bob@example.net"] = "550 5.1.1 no such user here"
        self.remote.replies["hans@example.de"] = "451 4.2.0 mailbox busy"
        campaign_id = self.make_campaign()
        self.start_all(campaign_id)

        def settled():
            states = {row.state for row in CampaignRecipient.select()}
            return states <= {"sent", "bounced", "deferred"}

        yield self.run_until(settled)
        rows = self.rows(campaign_id)
        self.assertEqual(rows["bob@example.net"][0], "bounced")
        self.assertEqual(rows["bob@example.net"][2], "550 5.1.1 no such user here")
        self.assertEqual(rows["hans@example.de"][0], "deferred")
        self.assertEqual(rows["jana@example.org"][0], "sent")
        suppressed = self.store.run_sync(
            lambda: {(s.address, s.reason, s.campaign_id) for s in Suppression.select()}
        )
        self.assertEqual(suppressed, {("bob@example.net", "hard-bounce", campaign_id)})
        # Nothing was queued back to our own VERP address.
        self.assertEqual(
            self.store.run_sync(
                lambda: QueueMessage.select().where(QueueMessage.is_bounce).count()
            ),
            0,
        )
        # A deferred row keeps the campaign running; once it is delivered it finishes.
        self.assertEqual(self.campaign_status(campaign_id), "running")
        del self.remote.replies["hans@example.de"]
        self.clock.advance(301)  # the first retry
        yield self.run_until(lambda: self.campaign_status_now(campaign_id) == "finished")
        self.assertEqual(self.rows(campaign_id)["hans@example.de"][0], "sent")

    @defer.inlineCallbacks
    def test_queue_giving_up_is_failed_and_retry_sends_again(self):
        self.remote.replies["hans@example.de"] = "451 4.2.0 mailbox busy"
        campaign_id = self.make_campaign()
        self.start_all(campaign_id)
        yield self.run_until(
            lambda: CampaignRecipient.get(address="hans@example.de").state == "deferred"
        )
        # Five days later the queue gives up: not a remote refusal, so failed, no suppression.
        self.clock.advance(5 * 86400 + 1)
        yield self.run_until(
            lambda: CampaignRecipient.get(address="hans@example.de").state == "failed"
        )
        self.assertEqual(self.store.run_sync(builders.row_count, Suppression), 0)
        yield self.run_until(lambda: self.campaign_status_now(campaign_id) == "finished")
        del self.remote.replies["hans@example.de"]
        calls_before = len(self.remote.calls)
        retried = self.store.run_sync(sendlists.retry_failed, campaign_id, self.now())
        self.assertEqual(retried, 1)
        yield self.run_until(lambda: self.campaign_status_now(campaign_id) == "finished")
        again = [env.recipients[0] for _, sent in self.remote.calls[calls_before:] for env in sent]
        self.assertEqual(again, ["hans@example.de"])  # never the ones already sent

    # -- pausing, taking back, resuming ----------------------------------------------------

    @defer.inlineCallbacks
    def test_pause_takes_back_what_waits_and_resume_sends_each_once(self):
        campaign_id = self.make_campaign()
        # Only the sender runs: its messages wait in the delivery queue.
        self.start_all(campaign_id, self.sender)
        yield self.run_until(
            lambda: (
                CampaignRecipient.select().where(CampaignRecipient.state == "sending").count() == 3
            )
        )
        self.assertEqual(self.store.run_sync(builders.row_count, QueueRecipient), 3)
        self.store.run_sync(sendlists.pause_campaign, campaign_id, self.now())
        rows = self.rows(campaign_id)
        self.assertEqual({state for state, *_ in rows.values()}, {"queued"})
        self.assertEqual(self.store.run_sync(builders.row_count, QueueRecipient), 0)
        self.assertEqual(self.store.run_sync(builders.row_count, QueueMessage), 0)
        self.assertEqual(self.store.run_sync(builders.row_count, Message), 0)
        # While paused nothing is handed over however long we wait.
        for _ in range(20):
            self.clock.advance(0.5)
            yield task.deferLater(_reactor(), 0.01, lambda: None)
        self.assertEqual(self.store.run_sync(builders.row_count, QueueRecipient), 0)
        self.store.run_sync(sendlists.resume_campaign, campaign_id, self.now())
        self.runner.startService()
        self.addCleanup(self.runner.stopService)
        yield self.run_until(lambda: self.campaign_status_now(campaign_id) == "finished")
        delivered = [env.recipients[0] for _, sent in self.remote.calls for env in sent]
        self.assertEqual(
            sorted(delivered), ["bob@example.net", "hans@example.de", "jana@example.org"]
        )

    @defer.inlineCallbacks
    def test_handoff_after_a_pause_committed_hands_over_nothing(self):
        campaign_id = self.make_campaign()
        self.store.run_sync(sendlists.start_campaign, campaign_id, self.now())
        found = self.store.run_sync(sendlists.handoff_batch, campaign_id, 10, 10, self.now().date())
        sending_record, candidates = found
        self.assertEqual(len(candidates), 3)
        from atollon_mail.massmail.compose import build_message

        built = [
            build_message(sending_record, c, self.tokens, UNSUBSCRIBE_BASE, "h", self.now())
            for c in candidates
        ]
        self.store.run_sync(sendlists.pause_campaign, campaign_id, self.now())
        handed = self.store.run_sync(sendlists.commit_handoff, campaign_id, built, self.now())
        self.assertEqual(handed, 0)
        self.assertEqual(self.store.run_sync(builders.row_count, QueueRecipient), 0)
        self.assertIsNone(
            self.store.run_sync(sendlists.handoff_batch, campaign_id, 10, 10, self.now().date())
        )
        yield defer.succeed(None)

    @defer.inlineCallbacks
    def test_rate_paces_each_campaign(self):
        campaign_id = self.make_campaign()
        self.sender = self.make_sender(rate=1.0)
        self.start_all(campaign_id, self.sender)
        handed = []
        for _ in range(4):
            for _ in range(10):
                self.clock.advance(0.1)
                yield task.deferLater(_reactor(), 0.02, lambda: None)
            yield task.deferLater(_reactor(), 0.1, lambda: None)
            handed.append(
                self.store.run_sync(
                    lambda: (
                        CampaignRecipient.select()
                        .where(CampaignRecipient.state == "sending")
                        .count()
                    )
                )
            )
        # One per second (the first at once), never a burst.
        self.assertEqual(handed[-1], 3)
        self.assertTrue(all(b - a <= 1 for a, b in zip(handed, handed[1:], strict=False)))
        self.assertLessEqual(handed[0], 2)

    @defer.inlineCallbacks
    def test_a_running_campaign_pauses_when_its_identity_becomes_another_mailboxs(self):
        from atollon_mail.store import mailboxes

        self.store.run_sync(mailboxes.update_mailbox, "news@acme.test", identity="info@acme.test")
        campaign_id = self.make_campaign()
        self.sender = self.make_sender(rate=1.0)
        self.start_all(campaign_id, self.sender)
        yield self.run_until(
            lambda: (
                CampaignRecipient.select().where(CampaignRecipient.state == "queued").count() < 3
            )
        )
        # Paced, it is still sending when info@ becomes another mailbox's address.
        self.store.run_sync(mailbox_ops.add_mailbox, "info@acme.test", "jane")
        yield self.run_until(lambda: self.campaign_status_now(campaign_id) == "paused", step=0.5)
        for _ in range(10):
            self.clock.advance(1.0)
            yield task.deferLater(_reactor(), 0.01, lambda: None)
        # What was still waiting in the delivery queue was taken back; nothing more went.
        self.assertEqual({state for state, *_ in self.rows(campaign_id).values()}, {"queued"})
        self.assertEqual(self.store.run_sync(builders.row_count, QueueRecipient), 0)
        status = self.store.run_sync(campaign_recipients.campaign_status, campaign_id, self.now())
        self.assertEqual(status.campaign.status, "paused")
        self.assertEqual(
            status.identity_refusal,
            "it would be sent as info@acme.test, which is refused: another mailbox, "
            "info@acme.test, receives at info@acme.test",
        )
        self.assertRaises(
            Invalid, self.store.run_sync, sendlists.resume_campaign, campaign_id, self.now()
        )

    def test_a_batch_built_as_a_former_identity_is_not_handed_over(self):
        from atollon_mail.massmail.compose import build_message
        from atollon_mail.store import mailboxes

        campaign_id = self.make_campaign()
        self.store.run_sync(sendlists.start_campaign, campaign_id, self.now())
        found = self.store.run_sync(sendlists.handoff_batch, campaign_id, 10, 10, self.now().date())
        sending_record, candidates = found
        built = [
            build_message(sending_record, c, self.tokens, UNSUBSCRIBE_BASE, "h", self.now())
            for c in candidates
        ]
        self.store.run_sync(mailboxes.update_mailbox, "news@acme.test", identity="info@acme.test")
        handed = self.store.run_sync(sendlists.commit_handoff, campaign_id, built, self.now())
        self.assertEqual(handed, 0)
        self.assertEqual(self.campaign_status(campaign_id), "running")
        self.assertEqual({state for state, *_ in self.rows(campaign_id).values()}, {"queued"})

    @defer.inlineCallbacks
    def test_window_bounds_what_sits_in_the_queue(self):
        campaign_id = self.make_campaign()
        self.sender = self.make_sender(window=2)
        self.start_all(campaign_id, self.sender)
        for _ in range(20):
            self.clock.advance(0.2)
            yield task.deferLater(_reactor(), 0.01, lambda: None)
        self.assertEqual(self.store.run_sync(builders.row_count, QueueRecipient), 2)

    # -- a stop in the middle ----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_rows_whose_dot_was_sent_at_a_stop_are_marked_uncertain(self):
        campaign_id = self.make_campaign()
        self.remote.hold = []
        self.start_all(campaign_id)
        yield self.run_until(
            lambda: QueueRecipient.select().where(QueueRecipient.state == "in-flight").count() == 3
        )
        # Two messages' final dots went out (written down first, as the client does);
        # the appliance dies before their replies are recorded. The third never left.
        in_flight = self.store.run_sync(
            lambda: {r.address: r.id for r in QueueRecipient.select().order_by(QueueRecipient.id)}
        )
        sent = [in_flight["bob@example.net"], in_flight["jana@example.org"]]
        self.store.run_sync(queue.mark_dots_sent, sent, self.now())
        requeued = self.store.run_sync(queue.requeue_in_flight, self.now())
        self.assertEqual((requeued.quiet, sorted(requeued.uncertain)), (1, sorted(sent)))
        rows = self.rows(campaign_id)
        self.assertEqual(
            {address: uncertain for address, (_, uncertain, *_) in rows.items()},
            {"bob@example.net": True, "jana@example.org": True, "hans@example.de": False},
        )
        self.assertEqual({state for state, *_ in rows.values()}, {"sending"})
        status = self.store.run_sync(campaign_recipients.campaign_status, campaign_id, self.now())
        self.assertEqual(status.uncertain, 2)

    @defer.inlineCallbacks
    def test_queue_delete_fails_the_row(self):
        campaign_id = self.make_campaign()
        self.start_all(campaign_id, self.sender)
        yield self.run_until(lambda: QueueRecipient.select().count() == 3)
        queue_message_id = self.store.run_sync(
            lambda: QueueRecipient.get(address="bob@example.net").queue_message_id
        )
        self.store.run_sync(queue.queue_delete, queue_message_id)
        state, _, reply, _ = self.rows(campaign_id)["bob@example.net"]
        self.assertEqual((state, reply), ("failed", queue.QUEUE_DELETED_REPLY))

    # -- what comes back ----------------------------------------------------------------

    @defer.inlineCallbacks
    def sent_campaign(self):
        campaign_id = self.make_campaign()
        self.start_all(campaign_id)
        yield self.run_until(lambda: self.campaign_status_now(campaign_id) == "finished")
        envelopes = [envelope for _, sent in self.remote.calls for envelope in sent]
        return campaign_id, {envelope.recipients[0]: envelope for envelope in envelopes}

    @defer.inlineCallbacks
    def bounce_back(self, envelope, action: str, reply: str):
        """A DSN about envelope's recipient, received at its VERP return path; the
        Recipient that address resolved to."""
        now = self.now()
        dsn = build_dsn(
            "mx.example.net",
            envelope.sender,
            [FailedRecipient(envelope.recipients[0], action, reply, None, now)],
            envelope.raw,
            now,
            now,
        )
        local, _, domain = envelope.sender.partition("@")
        recipient = yield self.intake.resolve_recipient(local, domain)
        self.assertIsInstance(recipient, Recipient)
        yield self.intake.accept("", [recipient], dsn)
        return recipient

    @defer.inlineCallbacks
    def test_bounce_to_the_verp_address_marks_the_row_and_suppresses(self):
        campaign_id, sent = yield self.sent_campaign()
        recipient = yield self.bounce_back(
            sent["bob@example.net"], "failed", "550 5.1.1 user unknown"
        )
        self.assertEqual(recipient.mailbox_address, "news@acme.test")
        yield self.run_until(
            lambda: CampaignRecipient.get(address="bob@example.net").state == "bounced"
        )
        state, _, reply, _ = self.rows(campaign_id)["bob@example.net"]
        self.assertEqual(reply, "550 5.1.1 user unknown")
        self.assertEqual(
            self.store.run_sync(lambda: Suppression.get(address="bob@example.net").reason),
            "hard-bounce",
        )
        # The bounce itself is kept in the sending mailbox for a person to read.
        filings = self.store.run_sync(filing_ops.list_filings, "news@acme.test", 100)
        self.assertTrue(any(f.message.envelope_sender == "" for f in filings))

    @defer.inlineCallbacks
    def test_delay_notice_to_the_verp_address_changes_no_state(self):
        campaign_id, sent = yield self.sent_campaign()
        yield self.bounce_back(sent["bob@example.net"], "delayed", "451 4.4.1 later")
        yield self.run_until(
            lambda: CampaignRecipient.get(address="bob@example.net").last_reply == "451 4.4.1 later"
        )
        self.assertEqual(self.rows(campaign_id)["bob@example.net"][0], "sent")
        self.assertEqual(self.store.run_sync(builders.row_count, Suppression), 0)

    @defer.inlineCallbacks
    def test_forged_or_foreign_tokens_are_ordinary_unknown_addresses(self):
        _, sent = yield self.sent_campaign()
        local = sent["bob@example.net"].sender.partition("@")[0]
        forged = local[:-1] + ("a" if local[-1] != "a" else "b")
        found = yield self.intake.resolve_recipient(forged, "acme.test")
        self.assertIsInstance(found, Rejection)
        self.assertEqual(found.reason, "unknown-address")
        other = RecipientTokens(b"another appliance").bounce_address(1, "acme.test")
        found = yield self.intake.resolve_recipient(other.partition("@")[0], "acme.test")
        self.assertIsInstance(found, Rejection)

    @defer.inlineCallbacks
    def test_mail_to_the_unsubscribe_address_suppresses(self):
        campaign_id, sent = yield self.sent_campaign()
        raw = sent["jana@example.org"].raw
        message = email.message_from_bytes(raw, policy=email.policy.default)
        mailto = message["List-Unsubscribe"].split(",")[1].strip(" <>")
        address = mailto.removeprefix("mailto:")
        local, _, domain = address.partition("@")
        recipient = yield self.intake.resolve_recipient(local, domain)
        self.assertIsInstance(recipient, Recipient)
        yield self.intake.accept(
            "jana@example.org", [recipient], b"Subject: unsubscribe\r\n\r\nplease\r\n"
        )
        yield self.run_until(lambda: Suppression.select().count() == 1)
        suppression = self.store.run_sync(lambda: Suppression.get(address="jana@example.org"))
        self.assertEqual(
            (suppression.reason, suppression.campaign_id), ("unsubscribed", campaign_id)
        )
        # A later campaign to the same group records her as suppressed, not sent.
        second = self.make_campaign()
        self.store.run_sync(sendlists.start_campaign, second, self.now())
        self.assertEqual(self.rows(second)["jana@example.org"][0], "suppressed")


def _add_people(*addresses: str) -> None:
    organization = Organization.get(name="Acme")
    for address in addresses:
        Contact.create(
            organization=organization,
            kind="person",
            external_id=None,
            name="",
            first_name=address.partition("@")[0].title(),
            last_name="",
            email=address,
            language="en",
            created_at=utc_now(),
            updated_at=utc_now(),
        )


def _filing_mailboxes(message_id: int) -> list[str]:
    query = (
        Filing.select(Mailbox.local_part, Domain.name)
        .join(Mailbox)
        .join(Domain)
        .where(Filing.message == message_id)
    )
    return sorted(f"{local}@{domain}" for local, domain in query.tuples())


def _reactor():
    from twisted.internet import reactor

    return reactor


class SqliteSendingTests(SqliteStoreMixin, SendingTests, unittest.TestCase):
    pass


class PostgresSendingTests(PostgresStoreMixin, SendingTests, unittest.TestCase):
    pass
