"""Search benchmark: full-text search of 100 000 messages on SQLite (FTS5) and PostgreSQL
(tsvector, GIN).

Each store is filled through the store's own operation for received mail
(filing.store_messages, 500 messages a transaction, so each message's text is taken and
indexed as delivered mail's is): varied text drawn from a vocabulary of 30 000 words with
a Zipf-like distribution (the frequent words very frequent, most words rare), a fifth of
the bodies HTML, a tenth of the messages with an attachment, one in twenty filed into
Junk, from 400 correspondents, half of the mail in the searching user's mailbox and the
rest in 19 others. Then the store operation search.search is timed, as the web page runs
it, for each kind of query (a fresh word or phrase each time, of middling frequency): one
word, two words, a phrase, one word in Junk (the folder filter), mail from one
correspondent, and one very frequent word. The target: every kind's 95th percentile under
200 ms, on both backends.

PostgreSQL: the server named by ATOLLON_MAIL_BENCH_DATABASE_URL (else
ATOLLON_MAIL_TEST_DATABASE_URL), in a schema of its own dropped afterwards; skipped with the
reason when neither is set.

    python bench/search.py [--messages 100000] [--queries 100] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from urllib.parse import quote

from common import machine

from atollon_mail.store import accounts, domains, filing, search, searchtext
from atollon_mail.store import mailboxes as mailbox_ops
from atollon_mail.store.pool import Store
from atollon_mail.store.records import InboundVerdict, IncomingMessage, SearchQuery

TARGET_MS = 200.0
BATCH = 500
VOCABULARY = 30000
MAILBOXES = 20
CORRESPONDENTS = 400
SEARCHER = "alice"
JUNK = InboundVerdict(junk=True)
_SYLLABLES = (
    "ka ri to mo ne sa lu vi de pa go ran tel mar sen dor lin bel kor fis"
    " ta la zu pe ro ni ba cho ver dal mun"
).split()


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--queries", type=int, default=100, help="timed queries of each kind")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--seed", type=int, default=15)
    return parser.parse_args()


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Corpus:
    """Words with Zipf-like frequencies (the word of rank r drawn in proportion to
    1/r^1.07) and the messages made of them; the same seed, the same mail."""

    def __init__(self, seed: int):
        self.random = random.Random(seed)
        words: list[str] = []
        seen: set[str] = set()
        while len(words) < VOCABULARY:
            word = "".join(self.random.choices(_SYLLABLES, k=self.random.choice((1, 2, 2, 3))))
            if word not in seen:
                seen.add(word)
                words.append(word)
        self.words = words
        weights = [1 / rank**1.07 for rank in range(1, VOCABULARY + 1)]
        total = 0.0
        self.cumulative = []
        for weight in weights:
            total += weight
            self.cumulative.append(total)
        self.phrases: list[str] = []
        self.correspondents = [
            f"{self.random.choice(words[:3000]).title()} {self.random.choice(words[:3000]).title()}"
            f" <{words[n * 7 % 3000]}{n}@{words[n % 50]}.example>"
            for n in range(CORRESPONDENTS)
        ]

    def text(self, count: int) -> list[str]:
        return self.random.choices(self.words, cum_weights=self.cumulative, k=count)

    def message(self, number: int, to: str) -> tuple[bytes, bool]:
        """(raw, junk) of message `number` to the address `to`."""
        pick = self.random.random()
        sender = self.correspondents[int(self.random.paretovariate(1.2)) % CORRESPONDENTS]
        subject = " ".join(self.text(self.random.randint(2, 7))).capitalize()
        sentences = []
        for _ in range(self.random.randint(3, 40)):
            sentences.append(" ".join(self.text(self.random.randint(4, 16))).capitalize() + ".")
        body = " ".join(sentences)
        if number % 50 == 0:  # two words that stand together in this message
            words = body.lower().replace(".", "").split()
            at = self.random.randrange(len(words) - 1)
            self.phrases.append(f'"{words[at]} {words[at + 1]}"')
        head = (
            f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{number}@bench.example>\r\nMIME-Version: 1.0\r\n"
        )
        if pick < 0.2:  # HTML
            paragraphs = "".join(f"<p>{sentence}</p>\r\n" for sentence in sentences)
            raw = (
                f"{head}Content-Type: text/html; charset=utf-8\r\n\r\n"
                f"<html><head><style>p {{margin: 0}}</style></head><body>\r\n"
                f"{paragraphs}</body></html>\r\n"
            )
        elif pick < 0.3:  # with an attachment
            data = base64.encodebytes(os.urandom(self.random.randint(2000, 20000)))
            data = data.decode().replace("\n", "\r\n")
            name = f"{self.random.choice(self.words[:5000])}-{number}.pdf"
            raw = (
                f"{head}Content-Type: multipart/mixed; boundary=BOUNDARY\r\n\r\n"
                f"--BOUNDARY\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
                f"--BOUNDARY\r\nContent-Type: application/pdf\r\n"
                f'Content-Disposition: attachment; filename="{name}"\r\n'
                f"Content-Transfer-Encoding: base64\r\n\r\n{data}"
                f"--BOUNDARY--\r\n"
            )
        else:
            raw = f"{head}Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
        return raw.encode(), self.random.random() < 0.05

    def phrase(self) -> str:
        """Two words that stand together in one of the messages (one in 50 gave one)."""
        return self.random.choice(self.phrases)

    def middling(self) -> str:
        """A word neither rare nor frequent (rank 50 to 3000)."""
        return self.words[int(self.random.uniform(50, 3000))]


def populate(store: Store, corpus: Corpus, messages: int) -> dict:
    store.run_sync(domains.add_domain, "bench.test")
    store.run_sync(accounts.add_user, SEARCHER, "not-a-hash")
    for number in range(1, MAILBOXES):
        store.run_sync(accounts.add_user, f"user{number}", "not-a-hash")
    addresses = [f"{SEARCHER}@bench.test"] + [f"box{n}@bench.test" for n in range(1, MAILBOXES)]
    owners = [SEARCHER] + [f"user{n}" for n in range(1, MAILBOXES)]
    for address, owner in zip(addresses, owners, strict=True):
        store.run_sync(mailbox_ops.add_mailbox, address, owner)
    recipients = [
        store.run_sync(filing.resolve_recipient, *address.split("@")) for address in addresses
    ]
    started = time.monotonic()
    extract_seconds = 0.0
    for start in range(0, messages, BATCH):
        batch = []
        for number in range(start, min(start + BATCH, messages)):
            # Half into the searcher's mailbox, the rest round the others.
            recipient = recipients[0 if number % 2 == 0 else 1 + (number // 2) % (MAILBOXES - 1)]
            raw, junk = corpus.message(number, recipient.address)
            batch.append(
                IncomingMessage(
                    envelope_sender="sender@bench.example",
                    recipients=(recipient,),
                    raw=raw,
                    verdict=JUNK if junk else None,
                )
            )
        t = time.perf_counter()
        for item in batch[:20]:  # a sample: what taking the text costs a message
            searchtext.extract(item.raw)
        extract_seconds += (time.perf_counter() - t) * len(batch) / 20
        failed = [
            r for r in store.run_sync(filing.store_messages, batch) if isinstance(r, Exception)
        ]
        if failed:
            raise RuntimeError(f"storing failed: {failed[0]!r}")
        if (start // BATCH) % 20 == 19 or start + BATCH >= messages:
            progress(f"messages: {min(start + BATCH, messages)}/{messages}")
    seconds = time.monotonic() - started
    return {
        "fill_seconds": round(seconds, 1),
        "fill_msg_per_s": round(messages / seconds),
        "text_extraction_us_per_msg": round(extract_seconds / messages * 1e6),
    }


def kinds(corpus: Corpus) -> dict:
    """Each kind of query: a function making a fresh SearchQuery."""
    return {
        "one_word": lambda: SearchQuery(text=corpus.middling()),
        "two_words": lambda: SearchQuery(text=f"{corpus.middling()} {corpus.middling()}"),
        "phrase": lambda: SearchQuery(text=corpus.phrase()),
        "word_in_junk": lambda: SearchQuery(text=corpus.middling(), folder="junk"),
        "from_one_correspondent": lambda: SearchQuery(
            sender=corpus.correspondents[corpus.random.randrange(CORRESPONDENTS)]
            .split("<")[1]
            .rstrip(">")
        ),
        "frequent_word": lambda: SearchQuery(text=corpus.words[corpus.random.randrange(5)]),
    }


def timed(store: Store, corpus: Corpus, count: int) -> dict:
    results = {}
    for name, make in kinds(corpus).items():
        for _ in range(3):  # warm-up
            store.run_sync(search.search, SEARCHER, make())
        times = []
        found = []
        for _ in range(count):
            query = make()
            started = time.perf_counter()
            page = store.run_sync(search.search, SEARCHER, query)
            times.append((time.perf_counter() - started) * 1000)
            found.append(len(page.hits))
        times.sort()
        results[name] = {
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
            "max_ms": round(times[-1], 1),
            "mean_hits_on_first_page": round(statistics.mean(found), 1),
        }
        progress(f"{name}: {results[name]}")
    return results


def postgres_schema() -> tuple[str, str] | str:
    """(url, schema) of a fresh schema, or why PostgreSQL is skipped."""
    base = os.environ.get("ATOLLON_MAIL_BENCH_DATABASE_URL") or os.environ.get(
        "ATOLLON_MAIL_TEST_DATABASE_URL"
    )
    if not base:
        return "neither ATOLLON_MAIL_BENCH_DATABASE_URL nor ATOLLON_MAIL_TEST_DATABASE_URL is set"
    import psycopg2

    schema = f"atollon_bench_{uuid.uuid4().hex[:12]}"
    try:
        connection = psycopg2.connect(base, connect_timeout=5)
    except psycopg2.Error as problem:
        return f"PostgreSQL at {base} is not reachable: {str(problem).strip().splitlines()[0]}"
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA "{schema}"')
    connection.close()
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options={quote(f'-csearch_path={schema}')}", schema


def drop_schema(schema: str) -> None:
    import psycopg2

    base = os.environ.get("ATOLLON_MAIL_BENCH_DATABASE_URL") or os.environ.get(
        "ATOLLON_MAIL_TEST_DATABASE_URL"
    )
    connection = psycopg2.connect(base)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    connection.close()


def run_backend(url: str, arguments) -> dict:
    store = Store.from_url(url, None)
    store.migrate()
    try:
        corpus = Corpus(arguments.seed)
        filled = populate(store, corpus, arguments.messages)
        if not store.is_sqlite:
            store.run_sync(lambda: store.database.execute_sql("ANALYZE"))
        return {**filled, "queries": timed(store, corpus, arguments.queries)}
    finally:
        store.stop()


def main() -> int:
    arguments = parse_arguments()
    backends: dict = {}
    for backend in arguments.backends.split(","):
        progress(f"--- {backend}")
        if backend == "sqlite":
            workdir = tempfile.mkdtemp(prefix="atollon-search-bench-")
            try:
                backends[backend] = run_backend(f"sqlite:///{workdir}/store.sqlite", arguments)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        elif backend == "postgresql":
            found = postgres_schema()
            if isinstance(found, str):
                backends[backend] = {"skipped": found}
                progress(f"postgresql skipped: {found}")
                continue
            url, schema = found
            try:
                backends[backend] = run_backend(url, arguments)
            finally:
                drop_schema(schema)
        else:
            raise SystemExit(f"unknown backend {backend!r}: give sqlite and/or postgresql")
    result = {
        "benchmark": "search",
        "messages": arguments.messages,
        "queries_per_kind": arguments.queries,
        "backends": backends,
        "target_p95_ms": TARGET_MS,
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))
    slow = [
        f"{backend} {name} p95 {figures['p95_ms']} ms"
        for backend, found in backends.items()
        for name, figures in found.get("queries", {}).items()
        if figures["p95_ms"] >= TARGET_MS
    ]
    for line in slow:
        print(f"FAILED: {line} >= {TARGET_MS} ms", file=sys.stderr)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
