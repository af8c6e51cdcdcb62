"""Web benchmark: the mailbox list and a mailbox's message list on a large SQLite store.

The store is filled directly (not over SMTP, which would take far longer) before the
appliance starts: M mailboxes across a few domains and about 50 owners, and N messages of
about 2 KiB, half of them in one big mailbox, the rest spread over the others. Then the
admin logs in and each page is fetched R times in a row over one keep-alive connection.
The target: every page's 95th percentile under 100 ms. Then the one-click unsubscribe
(RFC 8058 POST to a recipient's link, no session) of a paused 1000-recipient campaign:
every answer a 200 within 200 ms, first and repeated.

    python bench/web.py [--mailboxes 10000] [--messages 100000] [--requests 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from urllib.parse import quote, urlencode

from common import Appliance, RssSampler, machine

from atollon_mail.massmail.tokens import RecipientTokens
from atollon_mail.passwords import hash_password
from atollon_mail.store import accounts, campaigns, domains, filing, sendlists
from atollon_mail.store import mailboxes as mailbox_ops
from atollon_mail.store.models import (
    CampaignRecipient,
    Contact,
    DistributionGroup,
    Organization,
    utc_now,
)
from atollon_mail.store.pool import Store
from atollon_mail.store.records import IncomingMessage, Recipient

DOMAINS = ("bench0.test", "bench1.test", "bench2.test", "bench3.test")
OWNERS = 50
BIG = "big@bench0.test"
BATCH = 500
TARGET_MS = 100.0
# RFC 8058 one-click unsubscribe: every POST answered 200 within this.
UNSUBSCRIBE_TARGET_MS = 200.0
UNSUBSCRIBE_RECIPIENTS = 1000


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=10000)
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--requests", type=int, default=200)
    return parser.parse_args()


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _add_mailboxes(names: list[tuple[str, str]]) -> list[tuple[int, str]]:
    return [(box.id, box.address) for box in (mailbox_ops.add_mailbox(a, o) for a, o in names)]


def _raw(number: int, address: str) -> bytes:
    head = (
        f"From: sender{number % 97}@example.org\r\nTo: {address}\r\n"
        f"Subject: Bench message {number}\r\nDate: Mon, 1 Jan 2024 12:00:00 +0000\r\n"
        f"Message-ID: <{number}@bench.example.org>\r\n\r\n"
    )
    line = f"Line of the bench message {number}, padding it to about two KiB.\r\n"
    return (head + line * (2048 // len(line))).encode()


def _paused_campaign(recipients: int) -> list[int]:
    """A campaign to `recipients` contacts, started (its send list made) and paused, so
    its unsubscribe links are live but nothing is sent; the send-list row ids."""
    now = utc_now()
    organization = Organization.create(name="Bench", created_at=now)
    for start in range(0, recipients, 1000):
        Contact.insert_many(
            [
                {
                    "organization": organization.id,
                    "kind": "person",
                    "name": "",
                    "first_name": f"Reader{number}",
                    "last_name": "Bench",
                    "email": f"reader{number}@example.org",
                    "language": "en",
                    "created_at": now,
                    "updated_at": now,
                }
                for number in range(start, min(start + 1000, recipients))
            ]
        ).execute()
    DistributionGroup.create(
        name="Readers", organization=organization, kind="dynamic", filter="{}", created_at=now
    )
    campaign = campaigns.create_campaign("Bench news", "Readers", BIG, "en")
    campaigns.set_variant(campaign.id, "en", "News", "Hello {{ first_name }}\n")
    sendlists.start_campaign(campaign.id, now)
    sendlists.pause_campaign(campaign.id, now)
    query = CampaignRecipient.select(CampaignRecipient.id).where(
        CampaignRecipient.campaign == campaign.id
    )
    return [row[0] for row in query.order_by(CampaignRecipient.id).tuples()]


def populate(url: str, mailboxes: int, messages: int, recipients: int = 0) -> list[int]:
    """The domains, owners, mailboxes and messages, each batch in one transaction."""
    store = Store.from_url(url, None)
    store.migrate()
    started = time.monotonic()
    for domain in DOMAINS:
        store.run_sync(domains.add_domain, domain)
    password_hash = hash_password("bench-password")  # one hash: hashing is slow on purpose
    for owner in range(OWNERS):
        store.run_sync(accounts.add_user, f"owner{owner}", password_hash)
    names = [(BIG, "owner0")] + [
        (f"box{number:05d}@{DOMAINS[number % len(DOMAINS)]}", f"owner{number % OWNERS}")
        for number in range(1, mailboxes)
    ]
    boxes: list[tuple[int, str]] = []
    for start in range(0, len(names), 1000):
        boxes += store.run_sync(_add_mailboxes, names[start : start + 1000])
        progress(f"mailboxes: {len(boxes)}/{mailboxes}")
    big, others = boxes[0], boxes[1:] or boxes
    for start in range(0, messages, BATCH):
        batch = []
        for number in range(start, min(start + BATCH, messages)):
            # Even numbers into the big mailbox, odd ones round the others.
            box_id, address = big if number % 2 == 0 else others[(number // 2) % len(others)]
            batch.append(
                IncomingMessage(
                    envelope_sender=f"sender{number % 97}@example.org",
                    recipients=(Recipient(address, box_id, address),),
                    raw=_raw(number, address),
                    message_id=f"<{number}@bench.example.org>",
                    subject=f"Bench message {number}",
                    from_header=f"sender{number % 97}@example.org",
                    date_header="Mon, 1 Jan 2024 12:00:00 +0000",
                )
            )
        failed = [
            r for r in store.run_sync(filing.store_messages, batch) if isinstance(r, Exception)
        ]
        if failed:
            raise RuntimeError(f"storing failed: {failed[0]!r}")
        if (start // BATCH) % 20 == 19 or start + BATCH >= messages:
            progress(f"messages: {min(start + BATCH, messages)}/{messages}")
    rows = store.run_sync(_paused_campaign, recipients) if recipients else []
    store.database.close()
    progress(f"populated in {time.monotonic() - started:.1f} s")
    return rows


class Client:
    """One keep-alive HTTP connection that keeps the cookies it is given."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: str | None = None):
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, value = header.split(";", 1)[0].partition("=")
            if value:
                self.cookies[name.strip()] = value
            else:
                self.cookies.pop(name.strip(), None)
        return response.status, data.decode("utf-8", errors="replace")

    def login(self, login: str, password: str) -> None:
        _, form = self.request("GET", "/login")
        token = re.search(r'name="csrf_token" value="([^"]*)"', form).group(1)
        fields = {"csrf_token": token, "next": "", "login": login, "password": password}
        status, page = self.request("POST", "/login", urlencode(fields))
        if status not in (302, 303):
            raise RuntimeError(f"login failed with {status}: {page[:500]}")


def timed(client: Client, path: str, requests: int) -> dict:
    times = []
    over = 0
    for _ in range(requests):
        started = time.perf_counter()
        status, page = client.request("GET", path)
        times.append((time.perf_counter() - started) * 1000)
        # A lost session would answer with the fast login page: count it as a failure.
        if status != 200 or 'action="/login"' in page:
            raise RuntimeError(f"{path} answered {status}: {page[:300]}")
        over += times[-1] >= TARGET_MS
        # More than 5% over the target already misses it: a slow page at several seconds
        # a request would otherwise hold the run for an hour.
        if over > requests * 5 // 100:
            break
    times.sort()
    return {
        "requests_done": len(times),
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[max(0, -(-len(times) * 95 // 100) - 1)], 1),
        "max_ms": round(times[-1], 1),
    }


def timed_unsubscribes(client: Client, paths: list[str]) -> dict:
    """One-click POSTs (RFC 8058), each to a different recipient's link, then the same
    links again (an unsubscribe is idempotent: the second is answered the same)."""
    times = []
    for path in paths + paths:
        started = time.perf_counter()
        status, page = client.request("POST", path, "List-Unsubscribe=One-Click")
        times.append((time.perf_counter() - started) * 1000)
        if status != 200 or "is unsubscribed" not in page:
            raise RuntimeError(f"{path} answered {status}: {page[:300]}")
    times.sort()
    return {
        "requests_done": len(times),
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[max(0, -(-len(times) * 95 // 100) - 1)], 1),
        "max_ms": round(times[-1], 1),
    }


def main() -> int:
    arguments = parse_arguments()
    workdir = tempfile.mkdtemp(prefix="atollon-bench-")
    appliance = Appliance(workdir)
    with open(appliance.config) as config_file:
        web_port = int(re.search(r"\[web\]\nlisten = tcp:(\d+)", config_file.read()).group(1))
    big = quote(BIG, safe="")
    pages = {
        "mailboxes": "/mailboxes",
        "mailboxes_page_100": "/mailboxes?page=100",
        "mailboxes_one_domain": f"/mailboxes?domain={DOMAINS[1]}",
        "mail_box": f"/mail/box?address={big}",
        "mail_box_page_500": f"/mail/box?address={big}&page=500",
    }
    results = {}
    try:
        rows = populate(
            f"sqlite:///{workdir}/data/store.sqlite",
            arguments.mailboxes,
            arguments.messages,
            recipients=UNSUBSCRIBE_RECIPIENTS,
        )
        appliance.start()
        with open(os.path.join(workdir, "data", "massmail-secret"), "rb") as secret_file:
            tokens = RecipientTokens(secret_file.read().strip())
        unsubscribe_paths = [
            tokens.unsubscribe_targets(row, "bench0.test", "")[0]
            for row in rows[: arguments.requests]
        ]
        with open(os.path.join(workdir, "data", "initial-admin-password")) as password_file:
            password = password_file.read().strip()
        client = Client(web_port)
        client.login("admin", password)
        with RssSampler(appliance) as sampler:
            for name, path in pages.items():
                client.request("GET", path)  # warm-up: templates, SQLite page cache
                results[name] = {"path": path, **timed(client, path, arguments.requests)}
                progress(f"{name}: {results[name]}")
            unsubscriber = Client(web_port)  # no session: the link is the credential
            unsubscribes = timed_unsubscribes(unsubscriber, unsubscribe_paths)
            results["unsubscribe_one_click"] = {"path": "/unsubscribe/<token>", **unsubscribes}
            progress(f"unsubscribe_one_click: {unsubscribes}")
    finally:
        appliance.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "benchmark": "web",
        "mailboxes": arguments.mailboxes,
        "messages": arguments.messages,
        "requests": arguments.requests,
        "pages": results,
        "target_p95_ms": TARGET_MS,
        "peak_rss_mib": sampler.peak_mib,
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))
    slow = [name for name, figures in results.items() if figures["p95_ms"] >= TARGET_MS]
    if results["unsubscribe_one_click"]["max_ms"] >= UNSUBSCRIBE_TARGET_MS:
        slow.append("unsubscribe_one_click")
    for name in slow:
        print(f"FAILED: {name} p95 {results[name]['p95_ms']} ms >= {TARGET_MS} ms", file=sys.stderr)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
