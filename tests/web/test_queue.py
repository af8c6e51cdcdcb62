"""The queue and message type pages of the web admin, over a real listening port, on
SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime
import re

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.store import accounts, domains, message_types, queue
from atollon_mail.store.records import DeliveryResult, Origin, OutgoingMessage
from tests.builders import web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin
from tests.web.test_security import EVIL, _hash

T0 = datetime.datetime(2030, 1, 1, 12, 0, 0)
SUBMISSION = Origin("submission")


def _outgoing(*recipients: str, subject: str = "hello", type_id=None) -> OutgoingMessage:
    return OutgoingMessage(
        envelope_sender="admin@example.com",
        raw=b"Subject: x\r\n\r\nbody\r\n",
        remote_recipients=recipients,
        subject=subject,
        type_id=type_id,
    )


class QueuePagesTests(ServedWebMixin, StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        sync = self.store.run_sync
        sync(accounts.add_user, "admin", _hash("admin-secret"), name="Ada Admin", is_admin=True)
        sync(accounts.add_user, "bob", _hash("bob-secret"), name="Bob")
        sync(domains.add_domain, "example.com")
        # One message delivered to one recipient and deferred for the other.
        [self.sent] = sync(
            queue.submit_messages,
            [
                (
                    _outgoing("far@remote.example", "later@remote.example", subject=f"S {EVIL}"),
                    SUBMISSION,
                )
            ],
            T0,
        )
        claimed = sync(queue.claim_due_deliveries, T0, 10)
        retry_at = T0 + datetime.timedelta(hours=1)
        sync(
            queue.record_delivery_results,
            [
                DeliveryResult(
                    claimed[0].recipient_id, "delivered", "250 ok", "mx.remote.example", T0, None
                ),
                DeliveryResult(
                    claimed[1].recipient_id,
                    "deferred",
                    f"451 try later {EVIL} " + "x" * 200,
                    "mx.remote.example",
                    T0,
                    retry_at,
                ),
            ],
        )
        [self.waiting] = sync(
            queue.submit_messages, [(_outgoing("new@remote.example"), SUBMISSION)], T0
        )
        self.queue_id = self._queue_id("far@remote.example")
        self.waiting_id = self._queue_id("new@remote.example")
        clock = Clock()
        clock.advance(1_000_000)
        config = parse_config("[appliance]\nhostname = mail.example.com\n")
        root = web_root(self, self.store, config, reactor, clock=clock)
        self.serve(root)

    def _queue_id(self, address: str) -> int:
        entries = self.store.run_sync(queue.queue_list, None, 1000, 0)
        return next(e.queue_message_id for e in entries if e.address == address)

    @defer.inlineCallbacks
    def admin(self):
        browser = self.browser()
        yield browser.login("admin", "admin-secret")
        return browser

    # --- the queue ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_queue_lists_messages_with_links_and_escapes(self):
        browser = yield self.admin()
        page = yield browser.get("/queue")
        self.assertEqual(page.status, 200)
        for address in ("far@remote.example", "later@remote.example", "new@remote.example"):
            self.assertIn(address, page.text)
        self.assertIn(f'href="/queue/message?id={self.queue_id}"', page.text)
        self.assertIn("S &lt;script&gt;", page.text)
        self.assertNotIn(EVIL, page.text)
        self.assertIn("451 try later", page.text)
        self.assertNotIn("x" * 150, page.text.split("<tbody>")[1].split('title="')[0])
        self.assertNotIn('rel="next"', page.text)
        self.assertNotIn('rel="prev"', page.text)

    @defer.inlineCallbacks
    def test_queue_filter_by_state(self):
        browser = yield self.admin()
        page = yield browser.get("/queue?state=deferred")
        self.assertEqual(page.status, 200)
        self.assertIn("later@remote.example", page.text)
        self.assertNotIn("far@remote.example", page.text)
        self.assertNotIn("new@remote.example", page.text)
        queued = yield browser.get("/queue?state=queued")
        self.assertIn("new@remote.example", queued.text)
        self.assertNotIn("later@remote.example", queued.text)
        bad = yield browser.get("/queue?state=nonsense")
        self.assertEqual(bad.status, 400)

    @defer.inlineCallbacks
    def test_queue_lists_uncertain_recipients(self):
        sync = self.store.run_sync
        [sent] = sync(queue.submit_messages, [(_outgoing("maybe@remote.example"), SUBMISSION)], T0)
        claimed = sync(queue.claim_due_deliveries, T0, 10)
        sync(
            queue.mark_dots_sent,
            [d.recipient_id for d in claimed if d.address.startswith("maybe")],
            T0,
        )
        sync(queue.requeue_in_flight, T0)  # the restart after a kill
        browser = yield self.admin()
        page = yield browser.get("/queue?uncertain=1")
        self.assertEqual(page.status, 200)
        rows = page.text.split("<tbody>")[1]
        self.assertIn("maybe@remote.example", rows)
        self.assertIn('class="queue-uncertain"', rows)
        for other in ("far@remote.example", "later@remote.example", "new@remote.example"):
            self.assertNotIn(other, rows)
        none = yield browser.get("/queue?uncertain=1&state=delivered")
        self.assertIn("No recipient is uncertain and delivered.", none.text)
        everything = yield browser.get("/queue")
        self.assertEqual(everything.text.count('class="queue-uncertain"'), 1)
        shown = yield browser.get(f"/queue/message?id={sent.queue_message_id}")
        self.assertIn('class="queue-uncertain"', shown.text)
        self.assertIn("the appliance stopped after the final dot", shown.text)

    @defer.inlineCallbacks
    def test_queue_pagination(self):
        many = tuple(f"r{n:02d}@remote.example" for n in range(51))
        self.store.run_sync(queue.submit_messages, [(_outgoing(*many), SUBMISSION)], T0)
        browser = yield self.admin()
        first = yield browser.get("/queue?state=queued")
        self.assertEqual(len(re.findall(r"<td>r\d\d@remote\.example</td>", first.text)), 50)
        self.assertIn('href="/queue?state=queued&amp;page=2" rel="next"', first.text)
        self.assertNotIn('rel="prev"', first.text)
        second = yield browser.get("/queue?state=queued&page=2")
        # 52 queued in all: the 51 newest first, then the older single one.
        self.assertIn("new@remote.example", second.text)
        self.assertEqual(len(re.findall(r"<td>r\d\d@remote\.example</td>", second.text)), 1)
        self.assertIn('href="/queue?state=queued" rel="prev"', second.text)
        self.assertNotIn('rel="next"', second.text)

    @defer.inlineCallbacks
    def test_message_timeline(self):
        browser = yield self.admin()
        page = yield browser.get(f"/queue/message?id={self.queue_id}")
        self.assertEqual(page.status, 200)
        self.assertIn("far@remote.example", page.text)
        self.assertIn("later@remote.example", page.text)
        self.assertIn("mx.remote.example", page.text)
        self.assertIn("250 ok", page.text)
        self.assertIn("2030-01-01 13:00", page.text)  # the deferred one's next attempt
        self.assertIn("451 try later &lt;script&gt;", page.text)
        self.assertNotIn(EVIL, page.text)
        for path in ("/queue/message?id=999999", "/queue/message?id=abc", "/queue/message"):
            missing = yield browser.get(path)
            self.assertEqual(missing.status, 404)

    @defer.inlineCallbacks
    def test_retry_needs_csrf_then_makes_due(self):
        browser = yield self.admin()
        page = yield browser.get(f"/queue/message?id={self.queue_id}")
        forged = yield browser.post("/queue/retry", {"id": str(self.queue_id)})
        self.assertEqual(forged.status, 403)
        form = {"id": str(self.queue_id), "csrf_token": page.csrf()}
        done = yield browser.post("/queue/retry", form)
        self.assertEqual(done.status, 303)
        self.assertEqual(done.header("location"), f"/queue/message?id={self.queue_id}&done=retried")
        shown = yield browser.get(done.header("location"))
        self.assertIn("Retry requested", shown.text)
        states = {e.address: e.state for e in self.store.run_sync(queue.queue_list)}
        self.assertEqual(states["later@remote.example"], "queued")
        self.assertEqual(states["far@remote.example"], "delivered")
        missing = yield browser.post("/queue/retry", {"id": "999999", "csrf_token": page.csrf()})
        self.assertEqual(missing.status, 404)

    @defer.inlineCallbacks
    def test_delete_needs_csrf_and_is_refused_in_flight(self):
        browser = yield self.admin()
        page = yield browser.get(f"/queue/message?id={self.waiting_id}")
        forged = yield browser.post("/queue/delete", {"id": str(self.waiting_id)})
        self.assertEqual(forged.status, 403)
        self.store.run_sync(queue.claim_due_deliveries, T0, 10)  # now in flight
        form = {"id": str(self.waiting_id), "csrf_token": page.csrf()}
        refused = yield browser.post("/queue/delete", form)
        self.assertEqual(refused.status, 409)
        self.assertIn("being delivered right now", refused.text)
        self.store.run_sync(queue.requeue_in_flight, T0)
        done = yield browser.post("/queue/delete", form)
        self.assertEqual(done.status, 303)
        self.assertEqual(done.header("location"), "/queue?done=deleted")
        listed = yield browser.get(done.header("location"))
        self.assertIn("was deleted", listed.text)
        self.assertNotIn("new@remote.example", listed.text)
        again = yield browser.get(f"/queue/message?id={self.waiting_id}")
        self.assertEqual(again.status, 404)

    @defer.inlineCallbacks
    def test_non_admin_gets_404(self):
        browser = self.browser()
        yield browser.login("bob", "bob-secret")
        home = yield browser.get("/")
        for path in ("/queue", f"/queue/message?id={self.queue_id}", "/message-types"):
            page = yield browser.get(path)
            self.assertEqual(page.status, 404, path)
        form = {"id": str(self.waiting_id), "csrf_token": home.csrf()}
        refused = yield browser.post("/queue/delete", form)
        self.assertEqual(refused.status, 404)
        self.assertEqual(len(self.store.run_sync(queue.queue_list)), 3)

    # --- message types --------------------------------------------------------------------

    def _types(self) -> dict:
        return {t.code: t for t in self.store.run_sync(message_types.list_message_types)}

    @defer.inlineCallbacks
    def test_types_list_and_create(self):
        browser = yield self.admin()
        page = yield browser.get("/message-types")
        self.assertEqual(page.status, 200)
        self.assertIn("email-in", page.text)
        self.assertIn("email-out", page.text)
        form = {"name": "", "code": "Bad Code!", "description": "kept", "csrf_token": page.csrf()}
        invalid = yield browser.post("/message-types", form)
        self.assertEqual(invalid.status, 400)
        self.assertIn('id="new-name-error"', invalid.text)
        self.assertIn('id="new-code-error"', invalid.text)
        self.assertIn('value="Bad Code!"', invalid.text)
        self.assertIn('value="kept"', invalid.text)
        form.update(name=f"News {EVIL}", code="news", active="yes")
        created = yield browser.post("/message-types", form)
        self.assertEqual(created.status, 303)
        shown = yield browser.get(created.header("location"))
        self.assertIn("was created", shown.text)
        self.assertIn("News &lt;script&gt;alert(1)&lt;/script&gt;", shown.text)
        self.assertNotIn(EVIL, shown.text)
        self.assertTrue(self._types()["news"].active)
        duplicate = yield browser.post("/message-types", form)
        self.assertEqual(duplicate.status, 400)
        self.assertIn("exists already", duplicate.text)

    @defer.inlineCallbacks
    def test_type_edit_and_defaults(self):
        self.store.run_sync(message_types.add_message_type, "Newsletter", "news")
        browser = yield self.admin()
        page = yield browser.get("/message-types")
        form = {"code": "news", "name": "", "description": "typed", "csrf_token": page.csrf()}
        invalid = yield browser.post("/message-types/edit", form)
        self.assertEqual(invalid.status, 400)
        self.assertIn('id="type-news-name-error"', invalid.text)
        self.assertIn('value="typed"', invalid.text)
        form.update(name="Newsletters", active="yes", default_outgoing="yes")
        saved = yield browser.post("/message-types/edit", form)
        self.assertEqual(saved.status, 303)
        types = self._types()
        self.assertEqual(types["news"].name, "Newsletters")
        self.assertTrue(types["news"].default_outgoing)
        self.assertFalse(types["email-out"].default_outgoing)
        # Unticking the default is refused: another type must become it instead.
        form.pop("default_outgoing")
        refused = yield browser.post("/message-types/edit", form)
        self.assertEqual(refused.status, 400)
        self.assertIn('id="type-news-default_outgoing-error"', refused.text)
        self.assertTrue(self._types()["news"].default_outgoing)
        missing = yield browser.post("/message-types/edit", {**form, "code": "nope"})
        self.assertEqual(missing.status, 404)

    @defer.inlineCallbacks
    def test_type_delete_refusals_and_reassign(self):
        news = self.store.run_sync(message_types.add_message_type, "Newsletter", "news")
        self.store.run_sync(message_types.add_message_type, "Spare", "spare")
        self.store.run_sync(
            queue.submit_messages, [(_outgoing("n@remote.example", type_id=news.id), SUBMISSION)]
        )
        browser = yield self.admin()
        page = yield browser.get("/message-types")
        token = page.csrf()
        default = yield browser.post(
            "/message-types/delete", {"code": "email-out", "csrf_token": token}
        )
        self.assertEqual(default.status, 409)
        self.assertIn('id="type-email-out-problem"', default.text)
        self.assertIn("default type for outgoing mail", default.text)
        in_use = yield browser.post("/message-types/delete", {"code": "news", "csrf_token": token})
        self.assertEqual(in_use.status, 409)
        self.assertIn("1 archived message has type news and would change type", in_use.text)
        self.assertIn("news", self._types())
        unused = yield browser.post("/message-types/delete", {"code": "spare", "csrf_token": token})
        self.assertEqual(unused.status, 303)
        self.assertNotIn("spare", self._types())
        form = {"code": "news", "reassign_to": "email-out", "csrf_token": token}
        moved = yield browser.post("/message-types/delete", form)
        self.assertEqual(moved.status, 303)
        shown = yield browser.get(moved.header("location"))
        self.assertIn("1 message was moved to email-out", shown.text)
        self.assertNotIn("news", self._types())
        forged = yield browser.post("/message-types/delete", {"code": "email-in"})
        self.assertEqual(forged.status, 403)


class SqliteQueuePagesTests(SqliteStoreMixin, QueuePagesTests, unittest.TestCase):
    pass


class PostgresQueuePagesTests(PostgresStoreMixin, QueuePagesTests, unittest.TestCase):
    pass
