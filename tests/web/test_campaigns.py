"""The Campaigns pages of the web admin, over a real listening port, on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import json
import re

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.store import (
    campaign_recipients,
    campaigns,
    domains,
    mailboxes,
    sendlists,
)
from atollon_mail.store.models import CampaignRecipient, utc_now
from atollon_mail.web import pages_campaigns
from tests import builders
from tests.builders import web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_security import EVIL, _hash

# The group's members: three in English, two in Czech, one without an address.
MEMBERS = (
    ("Alice", "Archer", "alice@example.net", "en"),
    ("Andrew", "Ames", "andrew@example.net", "en"),
    ("Anna", "Abbot", "anna@example.net", "en"),
    ("Jan", "Novák", "jan@example.cz", "cs"),
    ("Jana", "Nováková", "jana@example.cz", "cs"),
    ("Nobody", "Noaddress", "", "en"),
)


def make_group(store) -> int:
    """An organization, its contacts and a static group of them all."""
    organization = builders.organization(store, "Acme")
    ids = [
        builders.person(
            store, organization.id, first_name=first, last_name=last, email=email, language=lang
        ).id
        for first, last, email, lang in MEMBERS
    ]
    return builders.group(store, "Customers", organization.id, members=ids).id


def set_states(campaign_id: int, changes: dict[str, str], uncertain=()) -> None:
    """Store operation: send-list rows of these addresses put in these states."""
    now = utc_now()
    for address, state in changes.items():
        CampaignRecipient.update(
            state=state,
            sent_at=now if state == "sent" else None,
            uncertain=address in uncertain,
            updated_at=now,
        ).where(
            (CampaignRecipient.campaign == campaign_id) & (CampaignRecipient.address == address)
        ).execute()


class WebCampaignsTests(ServedWebMixin, StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        builders.hosted_mailbox(
            self.store, "news@example.com", "admin", _hash("admin-secret"), is_admin=True
        )
        builders.user(self.store, "bob", _hash("bob-secret"))
        self.group_id = make_group(self.store)
        config = parse_config(
            "[appliance]\nhostname = mail.example.com\n\n"
            "[massmail]\nunsubscribe_url = https://news.example.com\n"
        )
        clock = Clock()
        clock.advance(1_000_000)
        root = web_root(self, self.store, config, reactor, clock=clock)
        if "/campaigns" not in root.app.routes:
            pages_campaigns.register(root.app)
        self.serve(root)

    # --- shortcuts ----------------------------------------------------------------------

    def draft(self, name="Spring news", variants=(("en", "Hello {{ first_name }}", "Hi"),)):
        by_language = {language: (subject, body) for language, subject, body in variants}
        return builders.campaign(
            self.store, self.group_id, "news@example.com", name=name, variants=by_language
        ).id

    def running(self):
        variants = {
            "en": ("Hello {{ first_name }}", "Dear {{ name }},\nnews.\n"),
            "cs": ("Dobrý den, {{ first_name }}", "Novinky.\n"),
        }
        return builders.campaign(
            self.store, self.group_id, "news@example.com", variants=variants, started=True
        ).id

    def status(self, campaign_id):
        return self.store.run_sync(
            campaign_recipients.campaign_status, campaign_id, utc_now()
        ).campaign

    @defer.inlineCallbacks
    def act(self, browser, campaign_id, action, **fields):
        path = f"/campaign?id={campaign_id}"
        page = yield browser.get(path)
        self.assertEqual(page.status, 200)
        return (yield browser.post(path, {"action": action, "csrf_token": page.csrf(), **fields}))

    @staticmethod
    def shown_forms(page) -> list[str]:
        """The actions of the sending controls not hidden on the page."""
        found = re.findall(
            r'<form [^>]*data-when="[^"]*"[^>]*>\s*<input[^>]*>\s*'
            r'<input type="hidden" name="action" value="([^"]+)">',
            page.text,
        )
        hidden = re.findall(
            r'<form [^>]*data-when="[^"]*"[^>]* hidden>\s*<input[^>]*>\s*'
            r'<input type="hidden" name="action" value="([^"]+)">',
            page.text,
        )
        return [action for action in found if action not in hidden]

    # --- the list and a new campaign ----------------------------------------------------

    @defer.inlineCallbacks
    def test_list_shows_each_campaign_with_its_progress(self):
        self.draft("Autumn offer")
        started = self.running()
        self.store.run_sync(set_states, started, {"alice@example.net": "sent"})
        browser = yield self.logged_in()
        page = yield browser.get("/campaigns")
        self.assertEqual(page.status, 200)
        rows = re.findall(
            r'<td><a href="/campaign\?id=(\d+)">([^<]*)</a></td>\s*<td>([^<]*)</td>\s*'
            r"<td>([^<]*)</td>\s*<td><span[^>]*>([^<]*)</span></td>\s*"
            r'<td class="campaign-done">([^<]*)</td>',
            page.text,
        )
        self.assertEqual(
            rows,
            [
                (str(started), "Spring news", "Customers", "news@example.com", "running", "1/5"),
                (str(started - 1), "Autumn offer", "Customers", "news@example.com", "draft", "0/0"),
            ],
        )
        self.assertIn('href="/campaigns" aria-current="page">Campaigns</a>', page.text)

    @defer.inlineCallbacks
    def test_create_a_campaign_and_refusals_keep_the_typed_values(self):
        browser = yield self.logged_in()
        page = yield browser.get("/campaigns")
        self.assertIn(f'<option value="{self.group_id}">Customers (Acme)</option>', page.text)
        self.assertIn('<option value="news@example.com">news@example.com</option>', page.text)
        self.assertRegex(page.text, r'<option value="[a-z-]+">[^<]+ \([a-z-]+\)</option>')
        form = {
            "csrf_token": page.csrf(),
            "name": "Launch",
            "group": str(self.group_id),
            "mailbox": "news@example.com",
            "type": "",
            "language": "EN",
        }
        missing = yield browser.post("/campaigns", {**form, "name": " "})
        self.assertEqual(missing.status, 400)
        self.assertIn('id="new-name-error">Enter a name.', missing.text)
        self.assertIn(f'<option value="{self.group_id}" selected>', missing.text)
        refused = yield browser.post("/campaigns", {**form, "mailbox": "nobody@example.com"})
        self.assertEqual(refused.status, 400)
        self.assertIn('id="new-campaign-problem"', refused.text)
        self.assertIn('value="Launch"', refused.text)
        bad_language = yield browser.post("/campaigns", {**form, "language": "english"})
        self.assertEqual(bad_language.status, 400)
        self.assertIn("is not a language code", html.unescape(bad_language.text))
        self.assertEqual(self.store.run_sync(campaigns.list_campaigns), [])
        created = yield browser.post("/campaigns", form)
        self.assertEqual(created.status, 303)
        [campaign] = self.store.run_sync(campaigns.list_campaigns)
        self.assertEqual(created.header("location"), f"/campaign?id={campaign.id}&done=created")
        self.assertEqual(
            (campaign.name, campaign.group_id, campaign.mailbox_address, campaign.status),
            ("Launch", self.group_id, "news@example.com", "draft"),
        )
        self.assertEqual(campaign.fallback_language, "en")
        detail = yield browser.get(created.header("location"))
        self.assertIn("The campaign was created", detail.text)

    # --- variants and the preview -------------------------------------------------------

    @defer.inlineCallbacks
    def test_a_variant_is_saved_and_a_template_error_is_shown_beside_it(self):
        campaign_id = self.draft(variants=())
        browser = yield self.logged_in()
        saved = yield self.act(
            browser,
            campaign_id,
            "variant-save",
            new="1",
            language="cs",
            subject="Ahoj {{ first_name }}",
            body="Novinky pro {{ name }}.",
        )
        self.assertEqual(saved.status, 303)
        [variant] = self.store.run_sync(campaigns.get_campaign, campaign_id).variants
        self.assertEqual((variant.language, variant.subject), ("cs", "Ahoj {{ first_name }}"))
        refused = yield self.act(
            browser,
            campaign_id,
            "variant-save",
            language="cs",
            subject="Ahoj {{ first_name }}",
            body="Dear {{ nickname }}",
        )
        self.assertEqual(refused.status, 400)
        error = re.search(r'id="variant-cs-error">([^<]*)<', refused.text).group(1)
        self.assertIn("'nickname' is undefined", html.unescape(error))
        self.assertIn(">Dear {{ nickname }}</textarea>", refused.text, "the typed body is kept")
        [variant] = self.store.run_sync(campaigns.get_campaign, campaign_id).variants
        self.assertEqual(variant.body, "Novinky pro {{ name }}.")
        # Only cs is written: the English members have no variant, which the preview says.
        page = yield browser.get(f"/campaign?id={campaign_id}")
        en = re.search(r'id="preview-en">(.*?)</article>', page.text, re.S).group(1)
        self.assertIn('class="problem fail campaign-error" role="alert"', en)
        self.assertIn("No variant in the fallback language en; add one.", en)
        self.assertNotIn("massmail variant", en, "command-line advice is left out")
        removed = yield self.act(browser, campaign_id, "variant-remove", language="cs")
        self.assertEqual(removed.status, 303)
        self.assertEqual(self.store.run_sync(campaigns.get_campaign, campaign_id).variants, ())

    @defer.inlineCallbacks
    def test_preview_shows_each_language_for_its_first_member(self):
        campaign_id = self.draft(
            variants=(
                ("en", "Hello {{ first_name }}", "Dear {{ name }},\nour news.\n"),
                (
                    "cs",
                    "Dobrý den, {{ first_name }}",
                    "Milý {{ last_name }},\n{{ unsubscribe_url }}",
                ),
            )
        )
        browser = yield self.logged_in()
        page = yield browser.get(f"/campaign?id={campaign_id}")
        self.assertEqual(page.status, 200)
        previews = dict(
            re.findall(
                r'<article class="campaign-preview" id="preview-(\w+)">(.*?)</article>',
                page.text,
                re.S,
            )
        )
        self.assertEqual(sorted(previews), ["cs", "en"])
        self.assertIn("3 recipients; shown for alice@example.net", previews["en"])
        self.assertIn("<strong>Subject:</strong> Hello Alice", previews["en"])
        self.assertIn(
            '<pre class="campaign-text">Dear Alice Archer,\nour news.\n</pre>', previews["en"]
        )
        self.assertIn("2 recipients; shown for jan@example.cz", previews["cs"])
        self.assertIn("Dobrý den, Jan", previews["cs"])
        self.assertIn("Milý Novák,", previews["cs"])
        # The link's base is the one the sender will use: [massmail] unsubscribe_url.
        self.assertIn("https://news.example.com/unsubscribe/SAMPLE", previews["cs"])
        for field in ("first_name", "company", "unsubscribe_url"):
            self.assertIn(f"<code>{{{{ {field} }}}}</code>", page.text)

    # --- sending and its controls ---------------------------------------------------------

    @defer.inlineCallbacks
    def test_send_starts_the_campaign_and_makes_the_send_list(self):
        campaign_id = self.draft()
        browser = yield self.logged_in()
        page = yield browser.get(f"/campaign?id={campaign_id}")
        self.assertEqual(self.shown_forms(page), ["send", "cancel"])
        self.assertIn('data-confirm="Send this campaign', page.text)
        self.assertIn('<script src="/static/campaign.js" nonce="', page.text)
        sent = yield self.act(browser, campaign_id, "send")
        self.assertEqual(sent.status, 303)
        self.assertEqual(sent.header("location"), f"/campaign?id={campaign_id}&done=started")
        self.assertEqual(self.status(campaign_id).status, "running")
        rows = self.store.run_sync(campaign_recipients.send_list, campaign_id)
        self.assertEqual(
            sorted(row.address for row in rows),
            [
                "alice@example.net",
                "andrew@example.net",
                "anna@example.net",
                "jan@example.cz",
                "jana@example.cz",
            ],
        )
        self.assertEqual({row.state for row in rows}, {"queued"})
        page = yield browser.get(sent.header("location"))
        self.assertIn("Sending started.", page.text)
        self.assertEqual(self.shown_forms(page), ["pause", "cancel"])
        self.assertIn('<span class="count" data-count="queued">5</span>', page.text)
        self.assertIn('<progress id="campaign-progress" max="5" value="0">0%</progress>', page.text)
        again = yield self.act(browser, campaign_id, "send")
        self.assertEqual(again.status, 409)
        self.assertIn("only a draft can be sent", again.text)
        self.assertNotIn("massmail", again.text)

    @defer.inlineCallbacks
    def test_pause_resume_and_cancel_change_the_status(self):
        campaign_id = self.running()
        browser = yield self.logged_in()
        paused = yield self.act(browser, campaign_id, "pause")
        self.assertEqual(paused.status, 303)
        self.assertEqual(self.status(campaign_id).status, "paused")
        page = yield browser.get(paused.header("location"))
        self.assertEqual(self.shown_forms(page), ["resume", "cancel"])
        self.assertIn("Paused: nothing is being sent.", page.text)
        resumed = yield self.act(browser, campaign_id, "resume")
        self.assertEqual(resumed.status, 303)
        self.assertEqual(self.status(campaign_id).status, "running")
        cancelled = yield self.act(browser, campaign_id, "cancel")
        self.assertEqual(cancelled.status, 303)
        self.assertEqual(self.status(campaign_id).status, "cancelled")
        page = yield browser.get(cancelled.header("location"))
        self.assertIn("The campaign was cancelled", page.text)
        self.assertEqual(self.shown_forms(page), [])
        refused = yield self.act(browser, campaign_id, "resume")
        self.assertEqual(refused.status, 409)
        self.assertIn('id="problem"', refused.text)

    @defer.inlineCallbacks
    def test_a_refused_identity_is_shown_and_keeps_it_paused(self):
        campaign_id = self.running()
        self.store.run_sync(mailboxes.update_mailbox, "news@example.com", identity="desk@x.test")
        self.store.run_sync(sendlists.pause_campaign, campaign_id, utc_now())
        self.store.run_sync(domains.add_domain, "x.test")
        self.store.run_sync(mailboxes.add_mailbox, "desk@x.test", "bob")
        browser = yield self.logged_in()
        page = yield browser.get(f"/campaign?id={campaign_id}")
        self.assertIn(
            "Not sendable: it would be sent as desk@x.test, which is refused: another mailbox, "
            "desk@x.test, receives at desk@x.test; set another identity for the mailbox first.",
            html.unescape(page.text),
        )
        refused = yield self.act(browser, campaign_id, "resume")
        self.assertEqual(refused.status, 400)
        self.assertIn('id="problem"', refused.text)
        self.assertEqual(self.status(campaign_id).status, "paused")

    @defer.inlineCallbacks
    def test_retry_failed_queues_the_failed_recipients_again(self):
        campaign_id = self.running()
        self.store.run_sync(set_states, campaign_id, {"anna@example.net": "failed"})
        browser = yield self.logged_in()
        page = yield browser.get(f"/campaign?id={campaign_id}")
        self.assertEqual(self.shown_forms(page), ["pause", "retry", "cancel"])
        retried = yield self.act(browser, campaign_id, "retry")
        self.assertEqual(retried.status, 303)
        page = yield browser.get(retried.header("location"))
        self.assertIn("1 failed recipient is queued again.", page.text)
        [row] = self.store.run_sync(
            campaign_recipients.send_list, campaign_id, state=None, limit=1, offset=2
        )
        self.assertEqual((row.address, row.state), ("anna@example.net", "queued"))

    # --- the progress bar's source and the send list --------------------------------------

    @defer.inlineCallbacks
    def test_status_json_gives_the_numbers_of_the_progress_bar(self):
        campaign_id = self.running()
        self.store.run_sync(
            set_states,
            campaign_id,
            {
                "alice@example.net": "sent",
                "andrew@example.net": "sent",
                "anna@example.net": "failed",
                "jan@example.cz": "sending",
            },
            uncertain=("jan@example.cz",),
        )
        browser = yield self.logged_in()
        response = yield browser.get(f"/campaign/status.json?id={campaign_id}")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("content-type"), "application/json")
        self.assertEqual(response.header("cache-control"), "no-store")
        status = json.loads(response.text)
        self.assertEqual(status["status"], "running")
        self.assertEqual(
            status["counts"],
            {
                "queued": 1,
                "sending": 1,
                "sent": 2,
                "deferred": 0,
                "bounced": 0,
                "failed": 1,
                "suppressed": 0,
            },
        )
        self.assertEqual((status["total"], status["done"], status["uncertain"]), (5, 3, 1))
        self.assertEqual(status["percent"], 60)
        self.assertGreater(status["rate"], 0)
        self.assertGreater(status["eta_seconds"], 0)
        self.assertRegex(status["rate_text"], r"^\d+\.\d messages a second; .+ left\.$")
        self.assertEqual((yield browser.get("/campaign/status.json?id=999")).status, 404)
        stranger = self.browser()
        answer = yield stranger.get(f"/campaign/status.json?id={campaign_id}")
        self.assertEqual(answer.status, 303, "login required")
        self.assertTrue(answer.header("location").startswith("/login?next="))

    @defer.inlineCallbacks
    def test_recipients_by_state_and_the_uncertain_ones(self):
        campaign_id = self.running()
        self.store.run_sync(
            set_states,
            campaign_id,
            {"alice@example.net": "sent", "jan@example.cz": "sent", "anna@example.net": "sending"},
            uncertain=("anna@example.net",),
        )
        browser = yield self.logged_in()

        def addresses(page):
            return re.findall(r"<tr>\s*<td>([^<\s]+)", page.text)

        everyone = yield browser.get(f"/campaign/recipients?id={campaign_id}")
        self.assertEqual(len(addresses(everyone)), 5)
        self.assertIn(f'href="/campaign/recipients?id={campaign_id}&amp;state=sent"', everyone.text)
        self.assertIn(">sent (2)</a>", everyone.text)
        self.assertIn(">uncertain (1)</a>", everyone.text)
        sent = yield browser.get(f"/campaign/recipients?id={campaign_id}&state=sent")
        self.assertEqual(addresses(sent), ["alice@example.net", "jan@example.cz"])
        self.assertIn("Alice Archer", sent.text)
        uncertain = yield browser.get(f"/campaign/recipients?id={campaign_id}&uncertain=1")
        self.assertEqual(addresses(uncertain), ["anna@example.net"])
        self.assertIn('class="campaign-uncertain-mark"', uncertain.text)
        detail = yield browser.get(f"/campaign?id={campaign_id}")
        self.assertIn(f'href="/campaign/recipients?id={campaign_id}&amp;uncertain=1"', detail.text)
        self.patch(pages_campaigns, "PAGE_SIZE", 2)
        first = yield browser.get(f"/campaign/recipients?id={campaign_id}&state=queued")
        self.assertEqual(addresses(first), ["andrew@example.net", "jana@example.cz"])
        self.assertNotIn('rel="next"', first.text)
        everyone = yield browser.get(f"/campaign/recipients?id={campaign_id}&page=2")
        self.assertEqual(addresses(everyone), ["anna@example.net", "jan@example.cz"])
        self.assertIn(f'href="/campaign/recipients?id={campaign_id}&amp;page=3"', everyone.text)
        self.assertIn(f'href="/campaign/recipients?id={campaign_id}"', everyone.text)
        bad = yield browser.get(f"/campaign/recipients?id={campaign_id}&state=lost")
        self.assertEqual(bad.status, 400)

    # --- refusals -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_a_form_without_the_csrf_token_is_refused(self):
        campaign_id = self.draft()
        browser = yield self.logged_in()
        refused = yield browser.post(f"/campaign?id={campaign_id}", {"action": "send"})
        self.assertEqual(refused.status, 403)
        self.assertEqual(self.status(campaign_id).status, "draft")
        refused = yield browser.post(
            "/campaigns",
            {
                "name": "X",
                "group": str(self.group_id),
                "mailbox": "news@example.com",
                "language": "en",
            },
        )
        self.assertEqual(refused.status, 403)
        self.assertEqual(len(self.store.run_sync(campaigns.list_campaigns)), 1)

    @defer.inlineCallbacks
    def test_a_user_who_is_not_an_administrator_is_refused(self):
        campaign_id = self.draft()
        bob = yield self.logged_in("bob", "bob-secret")
        home = yield bob.get("/")
        self.assertNotIn('href="/campaigns"', home.text)
        for path in (
            "/campaigns",
            f"/campaign?id={campaign_id}",
            f"/campaign/status.json?id={campaign_id}",
            f"/campaign/recipients?id={campaign_id}",
        ):
            self.assertEqual((yield bob.get(path)).status, 404, path)
        refused = yield bob.post(
            f"/campaign?id={campaign_id}", {"action": "send", "csrf_token": home.csrf()}
        )
        self.assertEqual(refused.status, 404)
        self.assertEqual(self.status(campaign_id).status, "draft")

    @defer.inlineCallbacks
    def test_html_typed_into_a_variant_is_shown_as_text(self):
        campaign_id = self.draft(name=f"News {EVIL}", variants=())
        browser = yield self.logged_in()
        saved = yield self.act(
            browser,
            campaign_id,
            "variant-save",
            new="1",
            language="en",
            subject=f"Hi {EVIL}",
            body=f"Body {EVIL} for {{{{ first_name }}}}",
        )
        self.assertEqual(saved.status, 303)
        for path in (f"/campaign?id={campaign_id}", "/campaigns"):
            page = yield browser.get(path)
            self.assertNotIn(EVIL, page.text)
            self.assertIn(html.escape(EVIL, quote=False), page.text)
        page = yield browser.get(f"/campaign?id={campaign_id}")
        self.assertIn(f"Body {html.escape(EVIL, quote=False)} for Alice</pre>", page.text)


class WordingTests(unittest.TestCase):
    def test_time_left_in_words(self):
        self.assertEqual(pages_campaigns.duration_text(59), "less than a minute")
        self.assertEqual(pages_campaigns.duration_text(61), "2 min")
        self.assertEqual(pages_campaigns.duration_text(3 * 3600 + 60), "3 h 1 min")
        self.assertEqual(pages_campaigns.duration_text(2 * 86400 + 3 * 3600), "2 d 3 h")

    def test_command_line_advice_is_left_out_of_refusals(self):
        for_the_page = pages_campaigns.for_the_page
        self.assertEqual(
            for_the_page("no distribution group 5; see: group list"), "no distribution group 5"
        )
        self.assertEqual(
            for_the_page("campaign 3 is running; texts change (pause it first: massmail pause 3)"),
            "campaign 3 is running; texts change (pause it first)",
        )
        self.assertEqual(
            for_the_page("no variant in en; add one: massmail variant 3 en --subject ..."),
            "no variant in en; add one",
        )


class SqliteWebCampaignsTests(SqliteStoreMixin, WebCampaignsTests, unittest.TestCase):
    pass


class PostgresWebCampaignsTests(PostgresStoreMixin, WebCampaignsTests, unittest.TestCase):
    pass
