"""`atollon-mail massmail` and `atollon-mail suppression`, run in-process on SQLite and on
PostgreSQL."""

from __future__ import annotations

import datetime
import io
import sys
import time

from twisted.trial import unittest

from atollon_mail.commands import massmail as commands
from atollon_mail.massmail import build as massmail_build
from atollon_mail.massmail.tokens import unsubscribe_base
from atollon_mail.store import campaign_recipients, campaigns, sendlists
from atollon_mail.store.campaign_records import CampaignRecord, CampaignStatus
from atollon_mail.store.models import CampaignVariant, Contact, utc_now
from tests.massmail.test_campaigns import (
    add_contact,
    add_dynamic_group,
    add_organization,
    add_static_group,
    set_rows,
)
from tests.support import PostgresStoreMixin, SqliteStoreMixin
from tests.test_cli import ConfiguredCli

T0 = datetime.datetime(2030, 1, 1, 12, 0, 0)
BODY = "Dear {{ first_name }},\nnews.\nUnsubscribe: {{ unsubscribe_url }}\n"


def crm() -> None:
    """Organization Acme CRM; contacts p00..p19@x.test (p00..p04 Czech, the rest English),
    in the dynamic group "everyone"; ann@x.test alone in the static group "ann"."""
    organization = add_organization("Acme CRM")
    for number in range(20):
        add_contact(
            organization,
            f"p{number:02}@x.test",
            "cs" if number < 5 else "en",
            f"First{number:02}",
            "Last",
        )
    add_dynamic_group("everyone", organization, languages=["cs", "en"])
    ann = add_contact(organization, "ann@y.test", "de", "Ann", "Smith")
    add_static_group("ann", organization, [ann])


def addresses(first: int, last: int) -> list[str]:
    return [f"p{number:02}@x.test" for number in range(first, last)]


class MassmailCommandTests(ConfiguredCli):
    def setUp(self):
        super().setUp()
        self.ok("db", "migrate")
        self.ok("domain", "add", "acme.com")
        self.ok("user", "add", "joe", "--password-stdin", stdin=b"joe-password\n")
        self.ok("mailbox", "add", "news@acme.com", "--owner", "joe")
        self.store_op(crm)

    def create(self, group: str = "everyone") -> int:
        record = self.store_op(
            campaigns.create_campaign, "Spring news", group, "news@acme.com", "en", now=T0
        )
        return record.id

    def with_variants(self, group: str = "everyone") -> int:
        campaign_id = self.create(group)
        self.store_op(campaigns.set_variant, campaign_id, "en", "News for {{ first_name }}", BODY)
        self.store_op(campaigns.set_variant, campaign_id, "cs", "Zprávy", "Ahoj {{ first_name }}")
        return campaign_id

    def started(self, when: datetime.datetime) -> int:
        campaign_id = self.with_variants()
        self.store_op(sendlists.start_campaign, campaign_id, when)
        return campaign_id

    def write_file(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as body_file:
            body_file.write(text)
        return path

    def campaign(self, campaign_id: int) -> CampaignRecord:
        return self.store_op(campaigns.get_campaign, campaign_id)

    # -- create, variant, show, list -------------------------------------------------------

    def test_create_show_and_list(self):
        outcome = self.ok(
            "massmail",
            "create",
            "Spring news",
            "--group",
            "everyone",
            "--mailbox",
            "news@acme.com",
            "--fallback-language",
            "en",
        )
        self.assertEqual(
            outcome.lines,
            [
                "created campaign 1: Spring news (draft)",
                "add its texts: atollon-mail massmail variant 1 en --subject TEXT --body-file FILE",
            ],
        )
        record = self.campaign(1)
        self.assertEqual((record.group_name, record.type_code), ("everyone", "email-out"))
        created = record.created_at.strftime("%Y-%m-%d %H:%M:%S")
        self.assertEqual(
            self.ok("massmail", "show", "1").lines,
            [
                "campaign 1: Spring news",
                "status:            draft",
                f"group:             everyone (#{record.group_id})",
                "sent from:         news@acme.com",
                "message type:      email-out",
                f"organization:      #{record.organization_id}",
                "fallback language: en",
                f"created:           {created} UTC",
                "variants:          (none) add one: atollon-mail massmail variant 1 en "
                "--subject TEXT --body-file FILE",
            ],
        )
        path = self.write_file(BODY)
        outcome = self.ok(
            "massmail", "variant", "1", "EN", "--subject", "News {{ name }}", "--body-file", path
        )
        self.assertEqual(
            outcome.lines,
            [
                "campaign 1: en variant set (variants: en)",
                "see how it renders: atollon-mail massmail preview 1",
            ],
        )
        outcome = self.ok(
            "massmail",
            "variant",
            "1",
            "cs",
            "--subject",
            "Zprávy",
            "--body-stdin",
            stdin=b"Ahoj {{ first_name }}\n",
        )
        self.assertEqual(outcome.lines[0], "campaign 1: cs variant set (variants: cs, en)")
        self.assertEqual(
            self.campaign(1).variants[0].body, "Ahoj {{ first_name }}\n", "read from stdin"
        )
        self.assertEqual(
            self.ok("massmail", "show", "1").lines[-3:],
            ["variants:", "  cs: Zprávy", "  en (fallback): News {{ name }}"],
        )
        self.ok(
            "massmail",
            "create",
            "Other",
            "--group",
            "ann",
            "--mailbox",
            "news@acme.com",
            "--fallback-language",
            "de",
            "--organization",
            "Acme CRM",
        )
        listing = self.ok("massmail", "list").lines
        self.assertEqual(
            listing[0].split(),
            ["ID", "NAME", "STATUS", "GROUP", "FROM", "LANGUAGES", "CREATED", "(UTC)"],
        )
        self.assertEqual(listing[1].split()[:5], ["2", "Other", "draft", "ann", "news@acme.com"])
        self.assertEqual(
            listing[2].split()[:7],
            ["1", "Spring", "news", "draft", "everyone", "news@acme.com", "cs,en"],
        )

    def test_create_and_variant_refusals(self):
        self.assertRefused(
            self.cli(
                "massmail",
                "create",
                "x",
                "--group",
                "nobody",
                "--mailbox",
                "news@acme.com",
                "--fallback-language",
                "en",
            ),
            'no distribution group matches "nobody"',
        )
        self.assertRefused(
            self.cli(
                "massmail",
                "create",
                "x",
                "--group",
                "everyone",
                "--mailbox",
                "news@acme.com",
                "--fallback-language",
                "english",
            ),
            "two letters",
        )
        campaign_id = str(self.create())
        path = self.write_file("Dear {{ nickname }}")
        self.assertRefused(
            self.cli(
                "massmail", "variant", campaign_id, "en", "--subject", "Hi", "--body-file", path
            ),
            "the en variant cannot be sent: body: 'nickname' is undefined",
        )
        self.assertRefused(
            self.cli("massmail", "variant", campaign_id, "en", "--subject", "Hi"),
            "give --subject TEXT and the body",
        )
        self.assertRefused(
            self.cli("massmail", "variant", campaign_id, "en", "--subject", "Hi", "--remove"),
            "--remove takes no --subject",
        )
        self.assertRefused(
            self.cli("massmail", "variant", campaign_id, "en", "--remove"), "has no en variant"
        )
        self.assertRefused(
            self.cli(
                "massmail",
                "variant",
                campaign_id,
                "en",
                "--subject",
                "Hi",
                "--body-file",
                self.mktemp(),
            ),
            "cannot read the body from",
        )
        self.assertRefused(self.cli("massmail", "show", "99"), "no campaign 99")
        self.assertEqual(self.campaign(int(campaign_id)).variants, ())
        self.assertUsageError(
            self.cli("massmail", "variant", campaign_id, "en", "--body-stdin", "--remove")
        )
        self.assertUsageError(self.cli("massmail", "show", "x"))

    def test_remove_a_variant(self):
        campaign_id = str(self.with_variants())
        self.assertEqual(
            self.ok("massmail", "variant", campaign_id, "cs", "--remove").lines,
            [f"campaign {campaign_id}: removed the cs variant"],
        )
        self.assertEqual([v.language for v in self.campaign(int(campaign_id)).variants], ["en"])

    # -- preview and send ------------------------------------------------------------------

    def test_preview_prints_each_language(self):
        campaign_id = self.with_variants()
        outcome = self.ok("massmail", "preview", str(campaign_id))
        self.assertEqual(
            outcome.lines,
            [
                "unsubscribe links: https://mx.test.example/unsubscribe/... (https:// and "
                "[appliance] hostname; set [massmail] unsubscribe_url to change it in "
                f"{self.config_path})",
                "",
                "== cs: 5 recipients, as sent to p00@x.test (contact #1)",
                "Subject: Zprávy",
                "",
                "Ahoj First00",
                "",
                "== en: 15 recipients, as sent to p05@x.test (contact #6)",
                "Subject: News for First05",
                "",
                "Dear First05,",
                "news.",
                "Unsubscribe: https://mx.test.example/unsubscribe/SAMPLE",
            ],
        )

    def test_preview_shows_the_configured_unsubscribe_url(self):
        # The same base the appliance's sender puts into every message (tap's tree).
        with open(self.config_path, "a", encoding="utf-8") as config_file:
            config_file.write("\n[massmail]\nunsubscribe_url = https://news.acme.com/\n")
        campaign_id = self.with_variants()
        outcome = self.ok("massmail", "preview", str(campaign_id))
        self.assertEqual(
            outcome.lines[0],
            "unsubscribe links: https://news.acme.com/unsubscribe/... "
            f"([massmail] unsubscribe_url in {self.config_path})",
        )
        self.assertIn("Unsubscribe: https://news.acme.com/unsubscribe/SAMPLE", outcome.lines)
        # One function decides it for the preview and for the appliance's sender.
        self.assertIs(massmail_build.unsubscribe_base, unsubscribe_base)

    def test_preview_with_an_error_exits_1(self):
        campaign_id = self.with_variants()

        def old_variant():
            CampaignVariant.update(body="Hi {{ nickname }}").where(
                CampaignVariant.language == "cs"
            ).execute()

        self.store_op(old_variant)
        outcome = self.cli("massmail", "preview", str(campaign_id))
        self.assertEqual(outcome.code, 1)
        self.assertEqual(
            outcome.lines[2:4],
            [
                "== cs: 5 recipients, as sent to p00@x.test (contact #1)",
                "error: body: 'nickname' is undefined; the merge fields are company, email, "
                "first_name, language, last_name, name, unsubscribe_url",
            ],
        )
        self.assertIn("== en: 15 recipients", outcome.text)
        self.assertTrue(outcome.err.startswith("atollon-mail: cs: cannot be sent as it is"))
        self.assertEqual(outcome.err.count("\n"), 1)
        self.assertRefused(
            self.cli("massmail", "send", str(campaign_id)), "the cs variant cannot be sent"
        )
        self.assertEqual(self.campaign(campaign_id).status, "draft")

    def test_send(self):
        campaign_id = self.with_variants()
        self.store_op(campaign_recipients.suppress_address, "p07@x.test", "unsubscribed")
        self.assertEqual(
            self.ok("massmail", "send", str(campaign_id)).lines,
            [
                f"campaign {campaign_id} is running: 20 recipients on its send list, "
                "1 of them suppressed (not sent)",
                f"watch it: atollon-mail massmail status {campaign_id} --watch",
            ],
        )
        self.assertRefused(self.cli("massmail", "send", str(campaign_id)), "only a draft")
        empty = self.create(group="ann")
        self.store_op(campaigns.set_variant, empty, "en", "Hi", "Body")
        self.store_op(
            lambda: Contact.update(email="").where(Contact.email == "ann@y.test").execute()
        )
        self.assertRefused(
            self.cli("massmail", "send", str(empty)), "the group has no member with an address"
        )

    # -- status ----------------------------------------------------------------------------

    def running_with_progress(self) -> tuple[int, datetime.datetime]:
        started = utc_now().replace(microsecond=0) - datetime.timedelta(minutes=5)
        campaign_id = self.started(started)
        recent = utc_now() - datetime.timedelta(seconds=5)
        self.store_op(
            set_rows, campaign_id, addresses(0, 10), state="sent", sent_at=recent, updated_at=recent
        )
        return campaign_id, started

    def test_status_screen(self):
        campaign_id, started = self.running_with_progress()
        self.store_op(set_rows, campaign_id, addresses(10, 12), uncertain=True, state="sending")
        outcome = self.ok("massmail", "status", str(campaign_id))
        self.assertEqual(
            outcome.lines,
            [
                f"campaign {campaign_id} Spring news: running, started "
                f"{started:%Y-%m-%d %H:%M:%S} UTC",
                "  queued      8",
                "  sending     2",
                "  sent       10",
                "  deferred    0",
                "  bounced     0",
                "  failed      0",
                "  suppressed  0",
                "[##########----------]  50.0%  10/20",
                # 10 in the last minute: 1/6 per second, 10 left.
                "rate 0.2/s, about 60 s left",
                "2 recipients may have got two copies (being delivered when the appliance "
                f"stopped): atollon-mail massmail recipients {campaign_id} --uncertain",
            ],
        )

    def test_status_of_a_paused_campaign_has_no_rate_or_time_left(self):
        campaign_id, started = self.running_with_progress()
        self.ok("massmail", "pause", str(campaign_id))
        lines = self.ok("massmail", "status", str(campaign_id)).lines
        self.assertEqual(
            lines[0],
            f"campaign {campaign_id} Spring news: paused, started {started:%Y-%m-%d %H:%M:%S} UTC",
        )
        self.assertEqual(
            lines[-2:],
            [
                "[##########----------]  50.0%  10/20",
                "paused: nothing is being sent; resume it: atollon-mail massmail resume "
                f"{campaign_id}",
            ],
        )
        self.assertFalse([line for line in lines if "rate" in line or "left" in line], lines)
        self.ok("massmail", "resume", str(campaign_id))
        self.assertIn(
            "rate 0.2/s, about 60 s left", self.ok("massmail", "status", str(campaign_id)).lines
        )

    def test_status_of_a_draft_and_unknown_rate(self):
        campaign_id = self.with_variants()
        lines = self.ok("massmail", "status", str(campaign_id)).lines
        self.assertEqual(lines[0], f"campaign {campaign_id} Spring news: draft")
        self.assertEqual(
            lines[-3:],
            [
                "  suppressed 0",
                "[--------------------]  0.0%  0/0",
                f"not sent yet: atollon-mail massmail send {campaign_id}",
            ],
        )

    def test_status_says_why_the_identity_is_refused(self):
        self.ok("mailbox", "set", "news@acme.com", "--identity", "desk@acme.com")
        campaign_id = self.started(T0)
        # The identity has since become another mailbox's address.
        self.ok("mailbox", "add", "desk@acme.com", "--owner", "joe")
        lines = self.ok("massmail", "status", str(campaign_id)).lines
        self.assertEqual(
            lines[-1],
            "not sendable: it would be sent as desk@acme.com, which is refused: another "
            "mailbox, desk@acme.com, receives at desk@acme.com; set another identity first",
        )

    def finish(self, campaign_id: int) -> None:
        self.store_op(set_rows, campaign_id, addresses(0, 20), state="sent", sent_at=utc_now())
        self.assertTrue(self.store_op(sendlists.finish_if_done, campaign_id))

    def test_watch_of_a_finished_campaign_ends_by_itself(self):
        campaign_id, _ = self.running_with_progress()
        self.finish(campaign_id)

        def never(seconds):
            self.fail("a finished campaign is not watched any longer")

        self.patch(time, "sleep", never)
        outcome = self.ok("massmail", "status", str(campaign_id), "--watch")
        self.assertIn("[####################]  100.0%  20/20", outcome.lines)
        self.assertIn(f"campaign {campaign_id} Spring news: finished", outcome.lines[0])
        self.assertEqual(outcome.text.count("campaign "), 1, "one screen")

    def test_watch_redraws_until_finished(self):
        campaign_id, _ = self.running_with_progress()
        slept = []

        def sleep(seconds):
            slept.append(seconds)
            self.finish(campaign_id)

        self.patch(time, "sleep", sleep)
        outcome = self.ok("massmail", "status", str(campaign_id), "--watch", "--interval", "0.5")
        self.assertEqual(slept, [0.5])
        screens = outcome.text.split("\n\n")
        self.assertEqual(len(screens), 2, outcome.text)
        self.assertIn("[##########----------]  50.0%  10/20", screens[0])
        self.assertIn(": running, started", screens[0])
        self.assertIn("[####################]  100.0%  20/20", screens[1])
        self.assertIn(": finished, started", screens[1])

    def test_watch_ends_on_ctrl_c(self):
        campaign_id, _ = self.running_with_progress()

        def interrupted(seconds):
            raise KeyboardInterrupt

        self.patch(time, "sleep", interrupted)
        outcome = self.ok("massmail", "status", str(campaign_id), "--watch")
        self.assertIn("[##########----------]  50.0%  10/20", outcome.lines)
        self.assertEqual(self.campaign(campaign_id).status, "running", "it goes on")
        self.assertUsageError(self.cli("massmail", "status", str(campaign_id), "--interval", "0"))

    # -- pause, resume, cancel, retry, recipients ------------------------------------------

    def test_pause_resume_cancel(self):
        campaign_id = str(self.started(T0))
        self.assertEqual(
            self.ok("massmail", "pause", campaign_id).lines,
            [
                f"campaign {campaign_id} is paused; 20 recipients waiting",
                f"resume it: atollon-mail massmail resume {campaign_id}",
            ],
        )
        self.assertIn(
            f"paused: nothing is being sent; resume it: atollon-mail massmail resume {campaign_id}",
            self.ok("massmail", "status", campaign_id).lines,
        )
        self.assertRefused(self.cli("massmail", "pause", campaign_id), "only a running one")
        self.assertEqual(
            self.ok("massmail", "resume", campaign_id).lines,
            [f"campaign {campaign_id} is running"],
        )
        self.assertRefused(self.cli("massmail", "resume", campaign_id), "only a paused one")
        self.store_op(set_rows, int(campaign_id), addresses(0, 5), state="sent", sent_at=T0)
        self.assertEqual(
            self.ok("massmail", "cancel", campaign_id).lines,
            [f"campaign {campaign_id} is cancelled; 15 recipients left unsent"],
        )
        self.assertRefused(self.cli("massmail", "cancel", campaign_id), "cancelled already")
        self.assertRefused(self.cli("massmail", "retry-failed", campaign_id), "is cancelled")

    def test_retry_failed(self):
        campaign_id = self.started(T0)
        self.store_op(set_rows, campaign_id, addresses(0, 17), state="sent", sent_at=T0)
        self.store_op(
            set_rows, campaign_id, addresses(17, 20), state="failed", last_reply="421 busy"
        )
        self.assertTrue(self.store_op(sendlists.finish_if_done, campaign_id))
        self.assertEqual(
            self.ok("massmail", "retry-failed", str(campaign_id)).lines,
            [f"3 failed recipients queued again; campaign {campaign_id} is running"],
        )
        self.assertEqual(
            self.ok("massmail", "retry-failed", str(campaign_id)).lines,
            [f"campaign {campaign_id} has no failed recipient; nothing to retry"],
        )

    def test_recipients(self):
        campaign_id = str(self.started(T0))
        self.store_op(
            set_rows,
            int(campaign_id),
            ["p01@x.test"],
            state="failed",
            attempts=2,
            last_reply="550 5.1.1 no such user",
            updated_at=T0,
        )
        self.store_op(set_rows, int(campaign_id), ["p02@x.test"], uncertain=True, state="sent")
        listing = self.ok("massmail", "recipients", campaign_id, "--limit", "3").lines
        self.assertEqual(len(listing), 4)
        self.assertEqual(
            listing[0].split(),
            ["ID", "ADDRESS", "LANG", "STATE", "ATTEMPTS", "UPDATED", "(UTC)", "LAST", "REPLY"],
        )
        self.assertEqual(
            listing[2].split(),
            [
                "2",
                "p01@x.test",
                "cs",
                "failed",
                "2",
                "2030-01-01",
                "12:00:00",
                "550",
                "5.1.1",
                "no",
                "such",
                "user",
            ],
        )
        failed = self.ok("massmail", "recipients", campaign_id, "--state", "failed").lines
        self.assertEqual([line.split()[1] for line in failed[1:]], ["p01@x.test"])
        uncertain = self.ok("massmail", "recipients", campaign_id, "--uncertain").lines
        self.assertEqual(uncertain[1].split()[1:5], ["p02@x.test", "cs", "sent", "(uncertain)"])
        self.assertUsageError(self.cli("massmail", "recipients", campaign_id, "--state", "lost"))

    # -- suppression -------------------------------------------------------------------------

    def test_suppression_add_list_remove(self):
        outcome = self.ok(
            "suppression",
            "add",
            "Bob@Example.COM",
            "--reason",
            "unsubscribed",
            "--detail",
            "asked by phone",
        )
        self.assertEqual(len(outcome.lines), 1)
        self.assertTrue(
            outcome.lines[0].startswith("bob@example.com is suppressed (unsubscribed since ")
        )
        again = self.ok("suppression", "add", "bob@example.com")
        self.assertIn("(unsubscribed since", again.lines[0], "the first reason stays")
        self.ok("suppression", "add", "eve@example.com")
        listing = self.ok("suppression", "list").lines
        self.assertEqual(
            listing[0].split(), ["ADDRESS", "REASON", "SINCE", "(UTC)", "CAMPAIGN", "DETAIL"]
        )
        self.assertEqual(
            [line.split()[:2] for line in listing[1:]],
            [["eve@example.com", "manual"], ["bob@example.com", "unsubscribed"]],
        )
        self.assertTrue(listing[2].endswith("asked by phone"))
        self.assertEqual(
            self.ok("suppression", "remove", "BOB@example.com").lines,
            ["bob@example.com is no longer suppressed"],
        )
        self.assertRefused(
            self.cli("suppression", "remove", "bob@example.com"), "is not suppressed"
        )
        self.assertRefused(self.cli("suppression", "add", "no address"), "not an e-mail address")
        self.assertUsageError(self.cli("suppression", "add", "x@example.com", "--reason", "bored"))


class SqliteMassmailCommandTests(SqliteStoreMixin, MassmailCommandTests, unittest.TestCase):
    pass


class PostgresMassmailCommandTests(PostgresStoreMixin, MassmailCommandTests, unittest.TestCase):
    pass


class FormattingTests(unittest.TestCase):
    def test_progress_bar(self):
        self.assertEqual(
            commands.progress_bar(10000, 20000), "[##########----------]  50.0%  10000/20000"
        )
        self.assertEqual(commands.progress_bar(0, 0), "[--------------------]  0.0%  0/0")
        self.assertEqual(commands.progress_bar(1, 3), "[######--------------]  33.3%  1/3")
        self.assertEqual(commands.progress_bar(7, 7), "[####################]  100.0%  7/7")

    def test_duration(self):
        for seconds, shown in (
            (0, "0 s"),
            (11.4, "11 s"),
            (89, "89 s"),
            (240, "4 min"),
            (89 * 60, "89 min"),
            (125 * 60, "2 h 5 min"),
            (3 * 3600, "3 h"),
        ):
            self.assertEqual(commands.duration(seconds), shown)

    def status(self, rate, eta) -> CampaignStatus:
        record = CampaignRecord(
            id=3,
            name="News",
            status="running",
            group_id=1,
            group_name="g",
            mailbox_address="news@acme.com",
            type_code=None,
            organization_id=None,
            fallback_language="en",
            variants=(),
            created_at=T0,
            started_at=T0,
            finished_at=None,
        )
        counts = dict.fromkeys(
            ("queued", "sending", "sent", "deferred", "bounced", "failed", "suppressed"), 0
        )
        counts.update(queued=10000, sent=10000)
        return CampaignStatus(record, counts, 20000, 10000, 0, rate, eta)

    def test_rate_line(self):
        self.assertEqual(
            commands.rate_line(self.status(950.3, 10.52)), "rate 950.3/s, about 11 s left"
        )
        self.assertEqual(commands.rate_line(self.status(None, None)), "rate unknown")
        self.assertEqual(commands.rate_line(self.status(2.0, None)), "rate 2.0/s")

    def test_a_terminal_is_cleared_before_each_screen(self):
        class Terminal(io.StringIO):
            def isatty(self):
                return True

        terminal = Terminal()
        self.patch(sys, "stdout", terminal)
        commands._draw(self.status(950.3, 10.52), first=True)
        commands._draw(self.status(950.3, 10.52), first=False)
        screens = terminal.getvalue().split(commands.CLEAR_SCREEN)
        self.assertEqual(screens[0], "")
        self.assertEqual(len(screens), 3)
        self.assertEqual(screens[1], screens[2])
        self.assertIn("[##########----------]  50.0%  10000/20000\n", screens[1])
