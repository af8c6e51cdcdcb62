"""/unsubscribe/<token>: the one-click unsubscribe of RFC 8058 and the page behind the
link, over a real socket, on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial import unittest

from atollon_mail.config import parse_config
from atollon_mail.massmail.tokens import RecipientTokens
from atollon_mail.passwords import hash_password
from atollon_mail.store.models import CampaignRecipient, Suppression, utc_now
from tests import builders
from tests.builders import web_root
from tests.massmail.test_sending import SECRET, _crm_fixture
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin


class UnsubscribeTests(StoreFixtureMixin, ServedWebMixin):
    def setUp(self):
        self.store = self.make_store()
        sync = self.store.run_sync
        builders.hosted_mailbox(
            self.store, "news@acme.test", "jane", hash_password("pw"), name="Jane Doe"
        )
        sync(_crm_fixture, utc_now())
        builders.campaign(
            self.store,
            "Everyone",
            name="News",
            variants={"en": ("News", "Hello {{ name }}\n")},
            started=True,
        )
        self.row_id = sync(lambda: CampaignRecipient.get(address="bob@example.net").id)
        self.tokens = RecipientTokens(SECRET)
        root = web_root(self, self.store, parse_config(""), reactor, recipient_tokens=self.tokens)
        self.serve(root)

    def link(self, row_id: int | None = None) -> str:
        url = self.tokens.unsubscribe_targets(row_id or self.row_id, "acme.test", "")[0]
        return url  # "/unsubscribe/<token>"

    def suppressions(self):
        return self.store.run_sync(
            lambda: [(s.address, s.reason) for s in Suppression.select().order_by(Suppression.id)]
        )

    @defer.inlineCallbacks
    def test_one_click_post_unsubscribes_without_session_or_form_token(self):
        response = yield self.browser().post(self.link(), {"List-Unsubscribe": "One-Click"})
        self.assertEqual(response.status, 200)
        self.assertIn("bob@example.net", response.text)
        self.assertIn("is unsubscribed", response.text)
        self.assertEqual(self.suppressions(), [("bob@example.net", "unsubscribed")])

    @defer.inlineCallbacks
    def test_repeated_post_is_the_same_answer_and_one_suppression(self):
        for _ in range(3):
            response = yield self.browser().post(self.link(), {"List-Unsubscribe": "One-Click"})
            self.assertEqual(response.status, 200)
        self.assertEqual(self.suppressions(), [("bob@example.net", "unsubscribed")])

    @defer.inlineCallbacks
    def test_get_asks_and_changes_nothing(self):
        response = yield self.browser().get(self.link())
        self.assertEqual(response.status, 200)
        self.assertIn('<form method="post">', response.text)
        self.assertIn("bob@example.net", response.text)
        self.assertEqual(self.suppressions(), [])

    @defer.inlineCallbacks
    def test_forged_and_malformed_tokens_are_not_found(self):
        token = self.link().rpartition("/")[2]
        forged = token[:-1] + ("a" if token[-1] != "a" else "b")
        other = RecipientTokens(b"elsewhere").unsubscribe_targets(self.row_id, "x", "")[0]
        for path in (
            f"/unsubscribe/{forged}",
            other,
            "/unsubscribe/nonsense",
            "/unsubscribe/",
            f"/unsubscribe/{token}/more",
        ):
            response = yield self.browser().post(path, {"List-Unsubscribe": "One-Click"})
            self.assertEqual(response.status, 404, path)
        self.assertEqual(self.suppressions(), [])

    @defer.inlineCallbacks
    def test_link_of_a_removed_row_is_not_found(self):
        self.store.run_sync(
            lambda: CampaignRecipient.delete().where(CampaignRecipient.id == self.row_id).execute()
        )
        response = yield self.browser().post(self.link(), {"List-Unsubscribe": "One-Click"})
        self.assertEqual(response.status, 404)
        response = yield self.browser().get(self.link())
        self.assertEqual(response.status, 404)


class SqliteUnsubscribeTests(SqliteStoreMixin, UnsubscribeTests, unittest.TestCase):
    pass


class PostgresUnsubscribeTests(PostgresStoreMixin, UnsubscribeTests, unittest.TestCase):
    pass
