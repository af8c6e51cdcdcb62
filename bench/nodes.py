"""Inbound throughput with one node and with two nodes on one PostgreSQL database
(`python inbound.py --nodes POSTGRESQL_URL`).

Each way gets a fresh database on that server (dropped after) and its own `twistd`
processes, each with its own data dir and port (`[inbound] checks = off`, as the plain
way). One generator, in this process, sends the same 2 KiB message N times over S
sessions; with two nodes the sessions alternate between the nodes, so the messages are
split evenly. The ways run one after the other in each round (interleaved, as in
inbound.py). Reported: the rate of each round and their median per way, the two-node
gain over one node, and per way that every message was filed into the mailbox.

The generator is Python (smtplib in threads) rather than Postfix's smtp-source, so that
nothing but the PostgreSQL server is needed; on a small machine it may be what limits
both ways, which the JSON says by giving its own CPU time per message.

The mail goes to MAILBOXES mailboxes, session i to mailbox i: storing into one mailbox
takes its uid counter's row lock until the commit, so every node would wait on the same
row for each message, which measures that one lock (Dovecot has one per mailbox too)
rather than a company's mail spread over its people.
"""

from __future__ import annotations

import os
import smtplib
import statistics
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

from common import Appliance

MAILBOXES = 20


def recipient(index: int) -> str:
    return f"user{index % MAILBOXES}@bench.test"


SENDER = "alice@sender.test"
BODY_BYTES = 2048


def _message() -> bytes:
    line = b"The figures for the quarter are below, with the notes of Tuesday's meeting.\r\n"
    body = line * (BODY_BYTES // len(line))
    return b"From: <alice@sender.test>\r\nTo: <staff@bench.test>\r\nSubject: bench\r\n\r\n" + body


def _admin(url: str, sql: str, params: tuple = ()) -> None:
    import psycopg2

    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    finally:
        connection.close()


def _database_url(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


def _filed(url: str) -> int:
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM filing")
            return cursor.fetchone()[0]
    finally:
        connection.close()


def _cpu_of(number: int) -> str:
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return f"cpu = {allowed[number % len(allowed)]}\n" if len(allowed) > 1 else ""


class Nodes:
    """`count` nodes on a fresh database of the server at `url`."""

    def __init__(self, workdir: str, url: str, count: int):
        self.server_url = url
        self.database = f"atollon_bench_{uuid.uuid4().hex[:12]}"
        _admin(url, f'CREATE DATABASE "{self.database}"')
        self.url = _database_url(url, self.database)
        self.appliances = []
        for number in range(count):
            directory = os.path.join(workdir, f"{self.database}-{number}")
            os.makedirs(directory)
            self.appliances.append(
                Appliance(
                    directory,
                    extra_config=(
                        "[inbound]\nchecks = off\n"
                        f"[cluster]\nnode_name = node{number}\n"
                        "[delivery]\nsrs_secret = bench\n[massmail]\nsecret = bench\n"
                    ),
                    smtp_extra="greet_pause = 0\n",
                    database_url=self.url,
                    # Two nodes on one machine: each on a CPU of its own, as an operator
                    # running two would set them (auto could put both on the same one).
                    appliance_extra=_cpu_of(number),
                )
            )

    def start(self) -> None:
        for appliance in self.appliances:  # the first applies the migrations
            appliance.start()
        first = self.appliances[0]
        first.cli("domain", "add", "bench.test")
        first.cli("user", "add", "user", "--password-stdin", stdin="bench-password\n")
        for index in range(MAILBOXES):
            first.cli("mailbox", "add", recipient(index), "--owner", "user")

    def stop(self) -> None:
        for appliance in self.appliances:
            appliance.stop()
        _admin(
            self.server_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (self.database,),
        )
        _admin(self.server_url, f'DROP DATABASE IF EXISTS "{self.database}"')


def send(ports: list[int], messages: int, sessions: int) -> tuple[float, float]:
    """`messages` over `sessions` sessions, session i to ports[i % len(ports)]; (msg/s,
    the generator's CPU seconds)."""
    message = _message()
    failures: list[BaseException] = []

    def session(index: int, count: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", ports[index % len(ports)], timeout=60) as client:
                for _ in range(count):
                    client.sendmail(SENDER, [recipient(index)], message)
        except BaseException as problem:  # reported after the run
            failures.append(problem)

    shares = [messages // sessions + (1 if i < messages % sessions else 0) for i in range(sessions)]
    threads = [
        threading.Thread(target=session, args=(index, share))
        for index, share in enumerate(shares)
        if share
    ]
    cpu = time.process_time()
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if failures:
        raise RuntimeError(f"{len(failures)} sessions failed, the first: {failures[0]!r}")
    return round(messages / elapsed, 1), time.process_time() - cpu


def run(url: str, workdir: str, messages: int, sessions: int, rounds: int) -> dict:
    ways = {"one_node": Nodes(workdir, url, 1), "two_nodes": Nodes(workdir, url, 2)}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    generator_cpu: dict[str, float] = {name: 0.0 for name in ways}
    report: dict = {
        "benchmark": "inbound-nodes",
        "messages": messages,
        "sessions": sessions,
        "mailboxes": MAILBOXES,
    }
    try:
        for nodes in ways.values():
            nodes.start()
        for _ in range(rounds):
            for name, nodes in ways.items():
                rate, cpu = send([a.smtp_port for a in nodes.appliances], messages, sessions)
                rates[name].append(rate)
                generator_cpu[name] += cpu
        for name, nodes in ways.items():
            report[f"{name}_msg_per_s"] = rates[name]
            report[f"{name}_median"] = statistics.median(rates[name])
            report[f"{name}_generator_cpu_ms_per_message"] = round(
                generator_cpu[name] * 1000 / (messages * rounds), 3
            )
            report[f"{name}_stored_messages"] = _filed(nodes.url)
            report[f"{name}_expected_messages"] = messages * rounds
        report["two_node_gain"] = round(report["two_nodes_median"] / report["one_node_median"], 2)
    finally:
        for nodes in ways.values():
            nodes.stop()
    return report
