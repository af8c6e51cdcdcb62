"""The dashboard's traffic charts, oldest queued message and delivery problems, and a
campaign's send-rate chart, read off the served pages (the SVG and its table), on SQLite
and PostgreSQL."""

from __future__ import annotations

import calendar
import datetime
import html
import re
import xml.etree.ElementTree as ElementTree

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.metrics import Metrics
from atollon_mail.store import filing, queue
from atollon_mail.store.models import CampaignRecipient
from atollon_mail.store.records import (
    DeliveryResult,
    InboundVerdict,
    IncomingMessage,
    Origin,
    OutgoingMessage,
)
from atollon_mail.web import pages, pages_campaigns
from atollon_mail.web.charts import nice_ceiling
from tests import builders
from tests.builders import web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_campaigns import make_group
from tests.web.test_security import EVIL, _hash

NOW = datetime.datetime(2030, 1, 16, 14, 20, 0)
SVG = "{http://www.w3.org/2000/svg}"
KINDS = ("received", "sent", "bounced", "junk")


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def clock_at(moment: datetime.datetime) -> Clock:
    clock = Clock()
    clock.advance(calendar.timegm(moment.timetuple()))
    return clock


def chart_svg(text: str, chart_id: str) -> ElementTree.Element:
    """The chart's SVG, parsed as XML (it must be well-formed to be inline SVG at all)."""
    found = re.search(rf'<figure class="chart" id="{chart_id}">\s*(<svg.*?</svg>)', text, re.S)
    return ElementTree.fromstring(found.group(1))


def bar_values(svg: ElementTree.Element) -> dict[str, dict[str, int]]:
    """{bucket label: {series: value}} from the bars' tooltips and data attributes."""
    values: dict[str, dict[str, int]] = {}
    for rect in svg.iter(f"{SVG}rect"):
        title = rect.find(f"{SVG}title").text
        label, _, said = title.rpartition(": ")
        number, series = said.split(" ")
        self_check = (int(rect.get("data-value")), rect.get("data-series"))
        assert self_check == (int(number), series), (title, self_check)
        values.setdefault(label, {})[series] = int(number)
    return values


def table_values(text: str, chart_id: str) -> dict[str, tuple[int, ...]]:
    table = re.search(rf'<table id="{chart_id}-table">(.*?)</table>', text, re.S).group(1)
    rows = re.findall(r'<tr><th scope="row">([^<]*)</th>((?:<td>\d+</td>)*)</tr>', table)
    return {
        html.unescape(label): tuple(int(v) for v in re.findall(r"<td>(\d+)</td>", cells))
        for label, cells in rows
    }


class DashboardChartTests(ServedWebMixin, StoreFixtureMixin):
    def setUp(self):
        self.metrics = Metrics()
        self.store = self.make_store(self.metrics.store_operation_seconds)
        builders.hosted_mailbox(
            self.store, "admin@example.com", "admin", _hash("admin-secret"), is_admin=True
        )
        builders.user(self.store, "bob", _hash("bob-secret"))
        builders.mailbox(self.store, "bob@example.com", "bob")
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        self.clock = clock_at(NOW)
        root = web_root(self, self.store, config, reactor, clock=self.clock)
        if "/campaigns" not in root.app.routes:
            pages_campaigns.register(root.app)
        self.serve(root)

    def sync(self, operation, *args, **kwargs):
        return self.store.run_sync(operation, *args, **kwargs)

    def receive(self, when, count: int, junk: bool = False):
        recipient = self.sync(filing.resolve_recipient, "bob", "example.com")
        message = IncomingMessage(
            envelope_sender="someone@elsewhere.example",
            recipients=(recipient,),
            raw=b"Subject: hi\r\n\r\nbody\r\n",
            verdict=InboundVerdict(junk=True) if junk else None,
        )
        self.sync(filing.store_messages, [message] * count, now=when)

    def send(self, when, *addresses: str):
        outgoing = OutgoingMessage(
            envelope_sender="bob@example.com",
            raw=b"Subject: out\r\n\r\nbody\r\n",
            remote_recipients=addresses,
            subject=f"Out {EVIL}",
        )
        self.sync(queue.submit_messages, [(outgoing, Origin("submission"))], when)

    def deliver(self, when, outcomes: dict[str, tuple[str, str]]):
        claimed = self.sync(queue.claim_due_deliveries, when, 100)
        self.assertEqual({delivery.address for delivery in claimed}, set(outcomes))
        later = when + datetime.timedelta(hours=1)
        self.sync(
            queue.record_delivery_results,
            [
                DeliveryResult(
                    delivery.recipient_id,
                    outcomes[delivery.address][0],
                    outcomes[delivery.address][1],
                    "mx.remote.example",
                    when,
                    later if outcomes[delivery.address][0] == "deferred" else None,
                )
                for delivery in claimed
            ],
        )

    def mail_flowed(self):
        self.receive(at("2030-01-16 13:05:00"), 3)
        self.receive(at("2030-01-16 13:06:00"), 1, junk=True)
        self.receive(at("2030-01-10 09:00:00"), 2)
        self.send(at("2030-01-16 11:00:00"), "far@remote.example", "gone@remote.example")
        self.send(at("2030-01-16 11:00:00"), "a@slow.example", "b@slow.example")
        self.deliver(
            at("2030-01-16 13:30:00"),
            {
                "far@remote.example": ("delivered", "250 ok"),
                "gone@remote.example": ("bounced", "550 no such user"),
                "a@slow.example": ("deferred", "451 greylisted, try later"),
                "b@slow.example": ("deferred", f"421 busy {EVIL}"),
            },
        )

    @defer.inlineCallbacks
    def admin_dashboard(self):
        browser = yield self.logged_in("admin", "admin-secret")
        page = yield browser.get("/")
        self.assertEqual(page.status, 200)
        return page

    @defer.inlineCallbacks
    def test_the_charts_show_the_hours_and_days_with_their_numbers(self):
        self.mail_flowed()
        page = yield self.admin_dashboard()
        hours = chart_svg(page.text, "traffic-hours")
        self.assertEqual(hours.get("role"), "img")
        self.assertEqual(hours.get("aria-labelledby"), "traffic-hours-title traffic-hours-desc")
        self.assertEqual(
            hours.find(f"{SVG}title").text, "Mail in the last 24 hours, per hour (UTC)"
        )
        self.assertIn("2030-01-15 15:00 to 2030-01-16 15:00 UTC", hours.find(f"{SVG}desc").text)
        by_hour = bar_values(hours)
        self.assertEqual(len(by_hour), 24)
        self.assertEqual(
            by_hour.pop("2030-01-16 13:00\u201314:00 UTC"),
            {"received": 4, "sent": 1, "bounced": 1, "junk": 1},
        )
        self.assertEqual({tuple(v.values()) for v in by_hour.values()}, {(0, 0, 0, 0)})
        # The same numbers in the table beside it.
        table = table_values(page.text, "traffic-hours")
        self.assertEqual(table.pop("2030-01-16 13:00\u201314:00 UTC"), (4, 1, 1, 1))
        self.assertEqual(set(table.values()), {(0, 0, 0, 0)})
        days = table_values(page.text, "traffic-days")
        self.assertEqual(len(days), 30)
        self.assertEqual(days.pop("2030-01-16 (UTC)"), (4, 1, 1, 1))
        self.assertEqual(days.pop("2030-01-10 (UTC)"), (2, 0, 0, 0))
        self.assertEqual(set(days.values()), {(0, 0, 0, 0)})
        self.assertEqual(min(days), "2029-12-18 (UTC)")
        # The scale's top is the round number above the tallest bar.
        day_svg = chart_svg(page.text, "traffic-days")
        grid = day_svg.find(f"{SVG}g[@class='chart-grid']")
        lines = {float(line.get("y1")) for line in grid.iter(f"{SVG}line")}
        ticks = [int(text.text) for text in grid.iter(f"{SVG}text")]
        self.assertEqual(max(ticks), nice_ceiling(4))
        [tallest] = [
            rect
            for rect in day_svg.iter(f"{SVG}rect")
            if rect.get("data-value") == "4" and rect.get("data-series") == "received"
        ]
        # Drawn from the zero line up, 4/5 of the way to the top line (5).
        self.assertAlmostEqual(float(tallest.get("y")) + float(tallest.get("height")), max(lines))
        self.assertAlmostEqual(
            float(tallest.get("height")) / (max(lines) - min(lines)), 4 / 5, places=2
        )
        self.assertIn("All times are UTC", page.text)
        self.assertNotIn("No mail yet", page.text)

    @defer.inlineCallbacks
    def test_the_oldest_waiting_message_and_the_problems_per_domain(self):
        self.mail_flowed()
        self.send(at("2030-01-16 14:00:00"), "new@fine.example")
        page = yield self.admin_dashboard()
        oldest = re.search(r'<p id="queue-oldest">(.*?)</p>', page.text, re.S).group(1)
        self.assertIn("Queued 2030-01-16 11:00 UTC", oldest)
        self.assertIn('<span class="age">3 h 20 min</span> ago', oldest)
        self.assertIn("a@slow.example", oldest)
        self.assertIn("deferred", oldest)
        problems = re.search(r'<table id="delivery-problems">(.*?)</table>', page.text, re.S)
        rows = re.findall(r"<tr>\s*(.*?)</tr>", problems.group(1), re.S)
        cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in rows[1:]]
        self.assertEqual(
            [(re.sub("<[^>]+>", "", c[0]), c[1], c[2], c[3], c[4]) for c in cells],
            [
                (
                    "slow.example",
                    "2",
                    "2030-01-16 11:00 UTC",
                    "2030-01-16 13:30 UTC",
                    html.escape(f"421 busy {EVIL}"),
                )
            ],
        )
        self.assertNotIn(EVIL, page.text)

    def operations(self, name: str) -> int:
        """How many times the store ran the operation `name` (module.function)."""
        return int(
            self.metrics.registry.get_sample_value(
                "atollon_mail_store_operation_seconds_count", {"operation": name}
            )
            or 0
        )

    @defer.inlineCallbacks
    def test_the_queue_facts_are_read_once_for_views_within_their_period(self):
        self.mail_flowed()
        browser = yield self.logged_in("admin", "admin-secret")
        # Views at once share the one read under way; later ones take what it read.
        first, second = yield defer.gatherResults([browser.get("/"), browser.get("/")])
        third = yield browser.get("/")
        self.assertEqual(self.operations("dashboard.queue_facts"), 1)
        self.assertEqual(self.operations("dashboard.dashboard"), 3)
        self.send(at("2030-01-16 14:10:00"), "new@fine.example")
        self.clock.advance(pages.QUEUE_FACTS_SECONDS - 1)
        kept = yield browser.get("/")
        self.assertEqual(self.operations("dashboard.queue_facts"), 1)
        for page in (first, second, third, kept):
            self.assertEqual(page.status, 200)
            self.assertIn("slow.example", page.text)
            self.assertIn('<span class="count">0</span> queued', page.text)
        self.clock.advance(1)
        fresh = yield browser.get("/")
        self.assertEqual(self.operations("dashboard.queue_facts"), 2)
        self.assertIn('<span class="count">1</span> queued', fresh.text)

    @defer.inlineCallbacks
    def test_with_no_mail_the_charts_say_so(self):
        page = yield self.admin_dashboard()
        self.assertIn('id="traffic-empty"', page.text)
        self.assertIn("No mail yet", page.text)
        for chart_id in ("traffic-hours", "traffic-days"):
            svg = chart_svg(page.text, chart_id)
            self.assertEqual(svg.find(f"{SVG}text[@class='chart-empty']").text, "No mail yet")
            self.assertEqual({bar.get("height") for bar in svg.iter(f"{SVG}rect")}, {"0.0"})
        self.assertIn("Nothing waits to be delivered.", page.text)
        self.assertIn("No destination has deferred recipients.", page.text)

    @defer.inlineCallbacks
    def test_the_charts_need_no_script_and_no_inline_style(self):
        self.mail_flowed()
        page = yield self.admin_dashboard()
        policy = page.header("content-security-policy")
        self.assertNotIn("unsafe-inline", policy)
        self.assertIn("style-src 'self'", policy)
        section = re.search(r'<section class="card" id="traffic">.*?</section>', page.text, re.S)
        self.assertNotIn("style=", section.group(0))
        self.assertNotIn("<script", section.group(0))
        self.assertNotIn("<style", section.group(0))

    @defer.inlineCallbacks
    def test_someone_not_an_administrator_sees_no_traffic_and_no_queue(self):
        self.mail_flowed()
        browser = yield self.logged_in("bob", "bob-secret")
        page = yield browser.get("/")
        self.assertEqual(page.status, 200)
        self.assertNotIn('id="traffic"', page.text)
        self.assertNotIn("queue-oldest", page.text)
        self.assertNotIn("slow.example", page.text)

    @defer.inlineCallbacks
    def test_a_campaign_shows_its_send_rate(self):
        group_id = make_group(self.store)
        builders.mailbox(self.store, "news@example.com", "admin")
        campaign_id = builders.campaign(
            self.store,
            group_id,
            "news@example.com",
            variants={"en": ("Hi", "Body"), "cs": ("Ahoj", "Text")},
            started=True,
            now=at("2030-01-16 14:00:10"),
        ).id
        browser = yield self.logged_in("admin", "admin-secret")
        page = yield browser.get(f"/campaign?id={campaign_id}")
        self.assertIn("Nothing sent yet", page.text)
        self.sync(
            set_sent,
            campaign_id,
            {
                "alice@example.net": at("2030-01-16 14:01:05"),
                "andrew@example.net": at("2030-01-16 14:01:59"),
                "anna@example.net": at("2030-01-16 14:03:00"),
            },
        )
        page = yield browser.get(f"/campaign?id={campaign_id}")
        # Read again only once the kept rate is QUEUE_FACTS_SECONDS old.
        self.assertIn("Nothing sent yet", page.text)
        self.clock.advance(pages.QUEUE_FACTS_SECONDS)
        page = yield browser.get(f"/campaign?id={campaign_id}")
        svg = chart_svg(page.text, "send-rate")
        self.assertEqual(svg.find(f"{SVG}title").text, "Sent per minute (UTC)")
        self.assertIn("3 in all, at most 2 in one minute", svg.find(f"{SVG}desc").text)
        # Running: the chart goes on to now's minute (14:20).
        bars = bar_values(svg)
        self.assertEqual(len(bars), 20)
        self.assertEqual(self.operations("traffic.campaign_send_rate"), 2)
        self.assertEqual(bars["2030-01-16 14:01\u201314:02 UTC"], {"sent": 2})
        self.assertEqual(bars["2030-01-16 14:03\u201314:04 UTC"], {"sent": 1})
        self.assertEqual(sum(v["sent"] for v in bars.values()), 3)
        table = table_values(page.text, "send-rate")
        self.assertEqual(table["2030-01-16 14:01\u201314:02 UTC"], (2,))
        self.assertNotIn("Nothing sent yet", page.text)


def set_sent(campaign_id: int, sent: dict[str, datetime.datetime]) -> None:
    """Store operation: these send-list rows sent at these times."""
    for address, when in sent.items():
        CampaignRecipient.update(state="sent", sent_at=when, updated_at=when).where(
            (CampaignRecipient.campaign == campaign_id) & (CampaignRecipient.address == address)
        ).execute()


class SqliteDashboardChartTests(SqliteStoreMixin, DashboardChartTests, unittest.TestCase):
    pass


class PostgresDashboardChartTests(PostgresStoreMixin, DashboardChartTests, unittest.TestCase):
    pass
