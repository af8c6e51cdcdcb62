"""The IMAP server's message commands on a real store: FETCH (\\Seen set by a body
fetch, CHANGEDSINCE, batches written with backpressure, a large message streamed in
slices), STORE (.SILENT, UNCHANGEDSINCE), COPY and MOVE (COPYUID, CRM filing, Junk
teaching the spam filter), EXPUNGE, CLOSE, UNSELECT, APPEND (APPENDUID, Sent merged),
and news: a message filed by SMTP wakes an idling client, another session's flag change
reaches it at once, the web's is found by the re-check. Run on SQLite and PostgreSQL."""

from __future__ import annotations

import re

from twisted.internet import defer
from twisted.trial import unittest

from atollon_mail.imap import server
from atollon_mail.store import folders, imapfolders, mailfolders
from atollon_mail.store.models import ImapSummary
from tests import builders
from tests.imap.support import ImapServerMixin
from tests.support import PostgresStoreMixin, SqliteStoreMixin
from tests.web.test_live import eventually


class Learner:
    """An ISpamLearner that remembers what it was taught."""

    def __init__(self):
        self.taught: list[tuple[bytes, bool]] = []

    def learn(self, raw: bytes, spam: bool):
        self.taught.append((raw, spam))
        return defer.succeed(None)


def _uid(line: str) -> int:
    return int(re.search(r"UID (\d+)", line).group(1))


class MessageCommandsContract(ImapServerMixin):
    @defer.inlineCallbacks
    def idle(self, client, tag="a3"):
        start = len(client.transport.value())
        client.send(f"{tag} IDLE\r\n")
        yield eventually(lambda: b"+ idling" in client.transport.value()[start:], "idling")
        yield client.settle()

    def flags(self, name="INBOX"):
        snapshot = self.store.run_sync(imapfolders.folder_snapshot, "jane", name)
        items = self.store.run_sync(imapfolders.message_items, "jane", name, snapshot.uids)
        return {item.uid: item.flags for item in items}

    @defer.inlineCallbacks
    def test_fetch_flags_and_a_body_that_sets_seen(self):
        self.receive("one", "first body")
        self.receive("two")
        client = yield self.logged_in("INBOX")
        lines = yield client.command("FETCH 1:* (UID FLAGS RFC822.SIZE)")
        self.assertEqual(len(lines), 3)
        self.assertRegex(lines[0], r"^\* 1 FETCH \(UID \d+ FLAGS \(\) RFC822\.SIZE \d+\)$")
        lines = yield client.command("FETCH 1 BODY.PEEK[TEXT]")
        self.assertEqual(lines[1], "first body")
        self.assertEqual(set(self.flags().values()), {()})
        lines = yield client.command("FETCH 1 (BODY[TEXT])")
        self.assertEqual(lines[2], " FLAGS (\\Seen))")
        self.assertEqual([flags for flags in self.flags().values()], [("\\Seen",), ()])
        lines = yield client.command("UID FETCH 1:* (FLAGS)")
        self.assertTrue(lines[0].startswith("* 1 FETCH (UID "), lines)
        lines = yield client.command("FETCH 5 FLAGS")
        self.assertEqual(lines[-1], "a7 BAD Invalid message sequence number")

    @defer.inlineCallbacks
    def test_a_message_expunged_while_fetched_is_never_another_users(self):
        """Another session expunges the message between the read of its uid and that of
        its bytes, and a message for someone else is stored meanwhile (on SQLite it takes
        the deleted message's id): the FETCH leaves the message out and says so."""
        builders.hosted_mailbox(self.store, "ann@other.test", "ann")
        self.receive("mine", "jane's own body")
        client = yield self.logged_in("INBOX")
        original = self.store.run
        interleaved: list[int] = []

        @defer.inlineCallbacks
        def expunge_and_deliver(items):
            uids = tuple(item.uid for item in items)
            yield original(
                imapfolders.store_flags, "jane", "INBOX", uids, "+", ("\\Deleted",), None
            )
            yield original(imapfolders.expunge, "jane", "INBOX", uids)
            yield defer.maybeDeferred(
                self.receive, "theirs", "ann's secret body", address="ann@other.test"
            )
            interleaved.append(1)
            return items

        def run(operation, *args, **kwargs):
            result = original(operation, *args, **kwargs)
            if operation is imapfolders.message_items and not interleaved:
                result.addCallback(expunge_and_deliver)
            return result

        self.patch(self.store, "run", run)
        # The last message: its Message row is the table's top one.
        for fetch in ("FETCH * BODY.PEEK[]", "FETCH * BODY.PEEK[HEADER]"):
            interleaved.clear()
            self.receive("mine", "jane's own body")
            yield client.command("NOOP")
            lines = yield client.command(fetch)
            self.assertEqual(interleaved, [1])
            text = "\n".join(lines)
            self.assertNotIn("ann's secret", text)
            self.assertNotIn("theirs", text)
            self.assertRegex(lines[-1], r"^a\d+ NO \[EXPUNGEISSUED\] ")

    @defer.inlineCallbacks
    def test_a_fetch_of_thousands_of_slices_is_refused(self):
        self.receive("big", "y" * 200_000)
        client = yield self.logged_in("INBOX")
        slices = " ".join(f"BODY.PEEK[]<{n}.200000>" for n in range(2600))
        lines = yield client.command(f"FETCH 1 ({slices})")
        self.assertEqual(len(lines), 1)
        self.assertRegex(lines[0], r"^a\d+ BAD Too many body sections")
        # Fifty are answered, each slice written as it is taken.
        slices = " ".join(f"BODY.PEEK[]<{n}.200000>" for n in range(50))
        start = len(client.transport.value())
        lines = yield client.command(f"FETCH 1 ({slices})")
        self.assertRegex(lines[-1], r"^a\d+ OK ")
        self.assertEqual(client.transport.value()[start:].count(b"BODY[]<"), 50)

    @defer.inlineCallbacks
    def test_examine_does_not_set_seen(self):
        self.receive()
        client = yield self.logged_in()
        yield client.command("EXAMINE INBOX")
        lines = yield client.command("FETCH 1 BODY[]")
        self.assertNotIn("\\Seen", lines[0])
        self.assertEqual(set(self.flags().values()), {()})

    @defer.inlineCallbacks
    def test_fetch_changedsince_and_modseq(self):
        self.receive("one")
        self.receive("two")
        client = yield self.logged_in("INBOX")
        lines = yield client.command("FETCH 1:* (FLAGS MODSEQ)")
        self.assertEqual(len(lines), 3)
        self.assertIn("MODSEQ (", lines[0])
        self.assertFalse(client.protocol.condstore, "MODSEQ asked does not enable CONDSTORE")
        highest = max(int(re.search(r"MODSEQ \((\d+)\)", line).group(1)) for line in lines[:2])
        yield client.command("STORE 2 +FLAGS.SILENT (\\Flagged)")
        lines = yield client.command(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {highest})")
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith("* 2 FETCH"), lines)

    @defer.inlineCallbacks
    def test_store(self):
        self.receive("one")
        self.receive("two")
        client = yield self.logged_in("INBOX")
        lines = yield client.command("STORE 1:2 +FLAGS (\\Flagged $Work)")
        self.assertEqual(
            lines[:2],
            ["* 1 FETCH (FLAGS (\\Flagged $Work))", "* 2 FETCH (FLAGS (\\Flagged $Work))"],
        )
        lines = yield client.command("STORE 1 -FLAGS.SILENT (\\Flagged)")
        self.assertEqual(lines, ["a4 OK STORE completed"])
        lines = yield client.command("UID STORE 1:* FLAGS (\\Seen)")
        self.assertEqual(len(lines), 3)
        self.assertIn("UID ", lines[0])
        self.assertEqual(list(self.flags().values()), [("\\Seen",), ("\\Seen",)])
        lines = yield client.command("STORE 1 +FLAGS (bad[flag)")
        self.assertIn(lines[-1].split(" ")[1], ("BAD", "NO"))

    @defer.inlineCallbacks
    def test_system_flags_are_known_ones_in_their_usual_spelling(self):
        self.receive("one")
        client = yield self.logged_in("INBOX")
        lines = yield client.command("STORE 1 +FLAGS (\\FLAGGED \\seen \\Recent)")
        self.assertEqual(lines[0], "* 1 FETCH (FLAGS (\\Flagged \\Seen))")
        for flags in ("(\\Foo)", "(\\Seen \\Junk)"):
            lines = yield client.command(f"STORE 1 +FLAGS {flags}")
            self.assertRegex(lines[-1], r"^a\d+ BAD \\\w+ is not a system flag")
        lines = yield client.command("STORE 1 +FLAGS ($filed)")
        self.assertRegex(lines[-1], r"^a\d+ NO ")
        lines = yield client.command("APPEND INBOX (\\Bogus) {5}\r\nhello")
        self.assertRegex(lines[-1], r"^a\d+ BAD ")
        self.assertEqual(list(self.flags().values()), [("\\Flagged", "\\Seen")])

    @defer.inlineCallbacks
    def test_store_unchangedsince(self):
        self.receive("one")
        self.receive("two")
        client = yield self.logged_in("INBOX")
        lines = yield client.command("FETCH 1:2 (MODSEQ)")
        first = int(re.search(r"MODSEQ \((\d+)\)", lines[0]).group(1))
        second = int(re.search(r"MODSEQ \((\d+)\)", lines[1]).group(1))
        yield client.command("STORE 2 +FLAGS (\\Answered)")
        lines = yield client.command(
            f"STORE 1:2 (UNCHANGEDSINCE {max(first, second)}) +FLAGS (\\Flagged)"
        )
        self.assertEqual(lines[-1], "a5 OK [MODIFIED 2] Conditional STORE failed")
        self.assertIn("* 1 FETCH (FLAGS (\\Flagged) MODSEQ (", lines[0])

    @defer.inlineCallbacks
    def test_expunge_close_and_unselect(self):
        for subject in ("one", "two", "three", "four"):
            self.receive(subject)
        client = yield self.logged_in("INBOX")
        yield client.command("STORE 1,3 +FLAGS (\\Deleted)")
        lines = yield client.command("EXPUNGE")
        self.assertEqual(lines, ["* 3 EXPUNGE", "* 1 EXPUNGE", "a4 OK EXPUNGE completed"])
        self.assertEqual(len(client.protocol.selected), 2)
        uids = list(client.protocol.selected.uids)
        yield client.command("STORE 1:2 +FLAGS (\\Deleted)")
        lines = yield client.command(f"UID EXPUNGE {uids[1]}")
        self.assertEqual(lines, ["* 2 EXPUNGE", "a6 OK EXPUNGE completed"])
        lines = yield client.command("UNSELECT")
        self.assertEqual(lines, ["a7 OK UNSELECT completed"])
        self.assertEqual(len(self.flags()), 1, "UNSELECT expunges nothing")
        yield client.command("SELECT INBOX")
        lines = yield client.command("CLOSE")
        self.assertEqual(lines, ["a9 OK CLOSE completed"])
        self.assertEqual(self.flags(), {})
        self.assertEqual(client.protocol.state, "authenticated")

    @defer.inlineCallbacks
    def test_copy_and_move(self):
        self.receive("one")
        self.receive("two")
        client = yield self.logged_in("INBOX")
        uids = list(client.protocol.selected.uids)
        lines = yield client.command("COPY 1 Trash")
        match = re.match(r"a3 OK \[COPYUID (\d+) (\d+) (\d+)\] COPY completed", lines[-1])
        self.assertIsNotNone(match, lines)
        self.assertEqual(int(match.group(1)), self.hosted.mailbox.id)
        self.assertEqual(int(match.group(2)), uids[0])
        self.assertEqual(list(self.flags("Trash")), [int(match.group(3))])
        lines = yield client.command("MOVE 2 Junk")
        self.assertRegex(lines[0], rf"^\* OK \[COPYUID \d+ {uids[1]} \d+\]$")
        self.assertEqual(lines[1:], ["* 2 EXPUNGE", "a4 OK MOVE completed"])
        self.assertEqual(len(self.flags("Junk")), 1)
        self.assertEqual(list(self.flags()), [uids[0]])
        lines = yield client.command("COPY 1 Nowhere")
        self.assertEqual(lines[-1], "a5 NO [TRYCREATE] No such mailbox")
        lines = yield client.command(f"UID MOVE {uids[0]} Trash")
        self.assertEqual(lines[1:], ["* 1 EXPUNGE", "a6 OK MOVE completed"])

    @defer.inlineCallbacks
    def test_moving_into_a_crm_folder_files_it_there(self):
        builders.organization(self.store, "Acme")
        self.store.run_sync(folders.add_project, "Launch", "Acme")
        self.receive("for the project")
        client = yield self.logged_in("INBOX")
        lines = yield client.command("MOVE 1 CRM/Launch")
        self.assertEqual(lines[-1], "a3 OK MOVE completed")
        self.assertEqual(len(self.flags("CRM/Launch")), 1)
        self.assertEqual(self.flags(), {})

    @defer.inlineCallbacks
    def test_junk_moves_teach_the_spam_filter(self):
        learner = Learner()
        self.factory = self.make_factory(learner=learner)
        self.receive("spammy")
        client = yield self.logged_in("INBOX")
        yield client.command("MOVE 1 Junk")
        # Taught after the answer, reading the message from Junk: one moved out again
        # before that is passed over (a slow store made this test move it back first).
        yield eventually(lambda: len(learner.taught) == 1, "learning spam")
        yield client.command("SELECT Junk")
        yield client.command("MOVE 1 INBOX")
        yield eventually(lambda: len(learner.taught) == 2, "learning")
        self.assertEqual([spam for _, spam in learner.taught], [True, False])
        self.assertIn(b"Subject: spammy", learner.taught[0][0])

    @defer.inlineCallbacks
    def test_append(self):
        client = yield self.logged_in()
        message = b"Subject: draft\r\nMessage-ID: <d1@acme.test>\r\n\r\nbody\r\n"
        lines = client.send(b"a2 APPEND Drafts (\\Draft) {%d}\r\n" % len(message))
        self.assertEqual(lines, ["+ Ready for literal data"])
        client.send(message + b"\r\n")
        lines = yield client.until_tagged("a2")
        match = re.match(r"a2 OK \[APPENDUID (\d+) (\d+)\] APPEND completed", lines[-1])
        self.assertIsNotNone(match, lines)
        self.assertEqual(self.flags("Drafts"), {int(match.group(2)): ("\\Draft",)})
        client.next_tag()
        date = '"07-Dec-2026 10:00:00 +0100"'
        lines = yield client.command(b"APPEND Nowhere %s {4+}\r\nxxxx" % date.encode())
        self.assertEqual(lines[-1], "a3 NO [TRYCREATE] No such mailbox")
        lines = yield client.command(b"APPEND Drafts () %s {4+}\r\nxxxx" % date.encode())
        self.assertTrue(lines[-1].startswith("a4 OK [APPENDUID "), lines)
        yield client.command("SELECT Drafts")
        lines = yield client.command("FETCH 2 (INTERNALDATE)")
        self.assertEqual(lines[0], '* 2 FETCH (INTERNALDATE "07-Dec-2026 09:00:00 +0000")')
        lines = yield client.command(b'APPEND Drafts "7-Foo-2026 10:00:00 +0100" {4+}\r\nxxxx')
        self.assertEqual(lines[-1], "a7 BAD Bad date-time; e.g. 17-Jul-1996 02:44:25 -0700")

    @defer.inlineCallbacks
    def test_append_to_sent_of_a_submitted_message_merges(self):
        from atollon_mail.store import queue
        from atollon_mail.store.records import Origin, OutgoingMessage

        raw = b"Subject: sent\r\nMessage-ID: <s1@acme.test>\r\n\r\nx\r\n"
        outgoing = OutgoingMessage(
            envelope_sender="jane@acme.test",
            raw=raw,
            remote_recipients=("far@remote.example",),
            sent_mailbox_id=self.hosted.mailbox.id,
            subject="sent",
            message_id="<s1@acme.test>",
        )
        self.store.run_sync(queue.submit_messages, [(outgoing, Origin("compose"))])
        [uid] = self.flags("Sent")
        client = yield self.logged_in()
        lines = yield client.command(b"APPEND Sent (\\Seen) {%d+}\r\n%s" % (len(raw), raw))
        self.assertEqual(
            lines[-1], f"a2 OK [APPENDUID {self.hosted.mailbox.id} {uid}] APPEND completed"
        )
        self.assertEqual(list(self.flags("Sent")), [uid])

    @defer.inlineCallbacks
    def test_a_message_filed_by_smtp_wakes_an_idling_client(self):
        client = yield self.logged_in("INBOX")
        yield self.idle(client)
        yield self.deliver("news")
        lines = yield client.until(lambda lines: "* 1 EXISTS" in lines, "EXISTS", seconds=1)
        client.send("DONE\r\n")
        lines = yield client.until_tagged("a3")
        self.assertEqual(lines[-1], "a3 OK IDLE terminated")

    @defer.inlineCallbacks
    def test_news_of_other_nodes_that_may_have_been_lost_wakes_an_idling_client(self):
        client = yield self.logged_in("INBOX")
        yield self.idle(client)
        self.receive("filed by another node")  # its news never came
        yield client.settle()
        self.assertEqual(client.lines(), [])
        self.events.missed_elsewhere.fire()
        yield client.until(lambda lines: "* 1 EXISTS" in lines, "EXISTS", seconds=1)

    @defer.inlineCallbacks
    def test_another_sessions_changes_reach_an_idling_client_at_once(self):
        self.receive("one")
        self.receive("two")
        idler = yield self.logged_in("INBOX")
        yield self.idle(idler)
        other = yield self.logged_in("INBOX")
        yield other.command("STORE 2 +FLAGS (\\Flagged)")
        lines = yield idler.until(
            lambda lines: any("FETCH" in line and "\\Flagged" in line for line in lines),
            "FETCH FLAGS",
            seconds=1,
        )
        self.assertTrue(any(line.startswith("* 2 FETCH (UID ") for line in lines), lines)
        yield other.command("STORE 1 +FLAGS (\\Deleted)")
        yield other.command("EXPUNGE")
        yield idler.until(lambda lines: "* 1 EXPUNGE" in lines, "EXPUNGE", seconds=1)
        yield other.command("COPY 1 INBOX")
        yield idler.until(lambda lines: "* 2 EXISTS" in lines, "EXISTS", seconds=1)

    @defer.inlineCallbacks
    def test_changes_in_the_web_client_are_found_while_idling(self):
        message_id = self.receive("one")
        client = yield self.logged_in("INBOX")
        yield self.idle(client)
        self.store.run_sync(mailfolders.mark_read, "jane@acme.test", message_id)
        yield client.settle()
        self.assertEqual(client.lines(), [])
        self.clock.advance(server.IDLE_RECHECK)
        lines = yield client.until(
            lambda lines: any("\\Seen" in line for line in lines), "FETCH FLAGS"
        )
        self.assertTrue(lines[0].startswith("* 1 FETCH (UID "), lines)

    @defer.inlineCallbacks
    def test_changes_in_the_web_client_reach_an_idling_client_at_once(self):
        # The store tells events.changed after an operation of the web client (Store.run
        # with changed=events.changed.fire, as the appliance is built): no re-check waited.
        message_id = self.receive("one")
        client = yield self.logged_in("INBOX")
        yield self.idle(client)
        self.store.run_sync(mailfolders.mark_read, "jane@acme.test", message_id)
        self.events.changed.fire("someone-else@acme.test")
        yield client.settle()
        self.assertEqual(client.lines(), [])
        self.events.changed.fire("jane@acme.test")
        lines = yield client.until(
            lambda lines: any("\\Seen" in line for line in lines), "FETCH FLAGS", seconds=1
        )
        self.assertTrue(lines[0].startswith("* 1 FETCH (UID "), lines)

    @defer.inlineCallbacks
    def test_noop_tells_news_and_fetch_holds_back_expunges(self):
        self.receive("one")
        self.receive("two")
        client = yield self.logged_in("INBOX")
        other = yield self.logged_in("INBOX")
        yield other.command("STORE 1 +FLAGS (\\Deleted)")
        yield other.command("EXPUNGE")
        self.receive("three")
        lines = yield client.command("FETCH 1 (FLAGS)")
        self.assertNotIn("* 1 EXPUNGE", lines, "not after FETCH (RFC 3501 7.4.1)")
        lines = yield client.command("NOOP")
        self.assertEqual(lines[0], "* 1 EXPUNGE")
        self.assertIn("a4 OK NOOP completed", lines)
        yield other.command("COPY 1 INBOX")
        lines = yield client.command("CHECK")
        self.assertEqual(lines, ["* 3 EXISTS", "a5 OK CHECK completed"])
        uid = client.protocol.selected.uid_of(3)
        lines = yield client.command(f"UID COPY {uid} Trash")
        self.assertRegex(lines[-1], rf"^a6 OK \[COPYUID \d+ {uid} \d+\] COPY completed$")

    @defer.inlineCallbacks
    def test_fetch_is_read_in_batches_as_the_client_takes_them(self):
        # No whole message read: batches of ITEM_BATCH (made small here).
        self.patch(server, "ITEM_BATCH", 30)
        for number in range(server.ITEM_BATCH + 5):
            self.receive(f"m{number}")
        client = yield self.logged_in("INBOX")
        client.send("a3 FETCH 1:* (UID FLAGS)\r\n")
        client.protocol.pauseProducing()  # the transport's buffer is full
        yield eventually(lambda: client.protocol._writable, "waiting for the transport")
        lines = client.lines()
        self.assertEqual(len(lines), server.ITEM_BATCH, "the next batch waits for the transport")
        client.protocol.resumeProducing()
        lines = yield client.until_tagged("a3")
        self.assertEqual(len(lines), server.ITEM_BATCH + 6)
        self.assertEqual(lines[-1], "a3 OK FETCH completed")

    @defer.inlineCallbacks
    def test_a_client_reading_a_little_now_and_then_cannot_keep_a_fetch_for_ever(self):
        """Each wait for the transport is shorter than the limits on one wait, but the
        whole FETCH must be read at MIN_OUTPUT_RATE on average (after STORE_TIMEOUT)."""
        self.patch(server, "FETCH_BATCH", 1)
        for number in range(10):
            self.receive(f"m{number}")
        client = yield self.logged_in("INBOX")
        client.send("a3 FETCH 1:* (UID BODY.PEEK[])\r\n")
        client.protocol.pauseProducing()
        for _ in range(10):
            yield eventually(lambda: client.protocol._writable or client.closed, "a wait")
            if client.closed:
                break
            self.clock.advance(200)  # under OUTPUT_STALL and STORE_TIMEOUT each time
            if client.closed:
                break
            client.protocol.resumeProducing()
            client.protocol.pauseProducing()
        self.assertTrue(client.closed)
        self.assertIn(b"* BYE Autologout; the client reads nothing", client.transport.value())
        self.assertLess(self.clock.seconds(), 2 * server.STORE_TIMEOUT)

    @defer.inlineCallbacks
    def test_a_large_message_is_streamed_in_slices(self):
        self.patch(server, "LARGE_MESSAGE", 1000)
        self.patch(server, "SLICE", 300)
        body = "".join(f"line {number:04d}\r\n" for number in range(200))
        self.receive("large", body)
        client = yield self.logged_in("INBOX")
        client.send("a3 FETCH 1 (UID BODY.PEEK[])\r\n")
        client.protocol.pauseProducing()
        yield eventually(lambda: client.protocol._writable, "the first slice")
        start = len(client.transport.value()) - len(client.output())
        first = client.transport.value()[start:]
        self.assertRegex(first, rb"^\* 1 FETCH \(UID \d+ BODY\[\] \{\d+\}\r\n")
        self.assertLess(len(first), 400)
        client.protocol.resumeProducing()
        yield client.until_tagged("a3")
        text = client.transport.value()[start:].rstrip(b"\r\n")
        size = int(re.search(rb"\{(\d+)\}", text).group(1))
        literal = text[text.index(b"}\r\n") + 3 :]
        self.assertTrue(literal[:size].endswith(b"line 0199\r\n\r\n"), literal[size - 20 : size])
        self.assertEqual(literal[size:], b")\r\na3 OK FETCH completed")
        lines = yield client.command("FETCH 1 BODY.PEEK[]<10.20>")
        self.assertIn("BODY[]<10> {20}", lines[0])
        # Read whole (in slices) when more than its bytes are asked for.
        lines = yield client.command("FETCH 1 (BODYSTRUCTURE BODY.PEEK[TEXT]<0.9>)")
        self.assertIn('BODYSTRUCTURE ("text" "plain"', lines[0])
        self.assertEqual(lines[1], "line 0000)")
        lines = yield client.command('SEARCH BODY "line 0150"')
        self.assertEqual(lines[0], "* SEARCH 1")


class SearchContract(ImapServerMixin):
    @defer.inlineCallbacks
    def test_search_headers_text_flags_and_uids(self):
        self.receive("Invoice March", "Please pay.")
        self.receive("Lunch", "See you at noon; the invoice is attached.")
        self.receive("Other", "Nothing here.")
        client = yield self.logged_in("INBOX")
        uids = list(client.protocol.selected.uids)
        lines = yield client.command("SEARCH SUBJECT invoice")
        self.assertEqual(lines, ["* SEARCH 1", "a3 OK SEARCH completed"])
        lines = yield client.command("SEARCH TEXT invoice")
        self.assertEqual(lines[0], "* SEARCH 1 2")
        lines = yield client.command('SEARCH BODY "at noon"')
        self.assertEqual(lines[0], "* SEARCH 2")
        lines = yield client.command("SEARCH FROM ann@remote.example NOT SUBJECT lunch")
        self.assertEqual(lines[0], "* SEARCH 1 3")
        yield client.command("STORE 3 +FLAGS (\\Flagged)")
        lines = yield client.command("UID SEARCH FLAGGED")
        self.assertEqual(lines[0], f"* SEARCH {uids[2]}")
        lines = yield client.command("SEARCH UNSEEN OR 1 3")
        self.assertEqual(lines[0], "* SEARCH 1 3")
        lines = yield client.command("SEARCH MODSEQ 1")
        self.assertRegex(lines[0], r"^\* SEARCH 1 2 3 \(MODSEQ \d+\)$")
        lines = yield client.command("SEARCH CHARSET UTF-8 SUBJECT lunch")
        self.assertEqual(lines[0], "* SEARCH 2")
        lines = yield client.command("SEARCH CHARSET X-NOPE SUBJECT lunch")
        self.assertEqual(lines[-1], "a12 NO [BADCHARSET (US-ASCII UTF-8)] Unknown charset")
        lines = yield client.command("SEARCH FROB")
        self.assertEqual(lines[-1][:7], "a13 BAD")

    @defer.inlineCallbacks
    def test_header_search_and_envelope_from_what_the_store_keeps(self):
        self.receive("Invoice März", "Please pay.")
        self.receive("Lunch")
        self.receive("Other")
        client = yield self.logged_in("INBOX")
        # Nothing kept yet: the headers are read, matched here, and kept.
        first = yield client.command("FETCH 1:* (ENVELOPE)")
        self.assertIn("Invoice März", "".join(first))
        kept = self.store.run_sync(
            builders.table_rows, ImapSummary.message, order_by=ImapSummary.message
        )
        self.assertEqual(len(kept), 3)
        lines = yield client.command("FETCH 1:* (ENVELOPE)")
        self.assertEqual(lines[:-1], first[:-1])
        lines = yield client.command('SEARCH CHARSET UTF-8 SUBJECT "MÄRZ"')
        self.assertEqual(lines[0], "* SEARCH 1")
        # What the store keeps is what is answered (changed here behind the server's back).
        third = kept[2][0]
        self.store.run_sync(
            lambda: (
                ImapSummary.update(subject="invoice", envelope=b"NIL")
                .where(ImapSummary.message == third)
                .execute()
            )
        )
        lines = yield client.command("UID SEARCH SUBJECT invoice")
        uids = list(client.protocol.selected.uids)
        self.assertEqual(lines[0], f"* SEARCH {uids[0]} {uids[2]}")
        lines = yield client.command("SEARCH SUBJECT invoice SEEN")  # not for the store
        self.assertEqual(lines[0], "* SEARCH")
        lines = yield client.command("FETCH 3 (ENVELOPE)")
        self.assertEqual(lines[0], "* 3 FETCH (ENVELOPE NIL)")
        lines = yield client.command("FETCH 3 (ENVELOPE BODY.PEEK[HEADER.FIELDS (X)])")
        self.assertEqual(lines[0][:31], '* 3 FETCH (ENVELOPE ("Mon, 07 D')
        # A message kept nothing of is matched from its header, with the kept ones.
        self.receive("Invoice April")
        yield client.command("NOOP")
        lines = yield client.command("SEARCH SUBJECT invoice")
        self.assertEqual(lines[0], "* SEARCH 1 3 4")


class SearchSqliteTests(SearchContract, SqliteStoreMixin, unittest.TestCase):
    pass


class SearchPostgresTests(SearchContract, PostgresStoreMixin, unittest.TestCase):
    pass


class MessageCommandsSqliteTests(MessageCommandsContract, SqliteStoreMixin, unittest.TestCase):
    pass


class MessageCommandsPostgresTests(MessageCommandsContract, PostgresStoreMixin, unittest.TestCase):
    pass
