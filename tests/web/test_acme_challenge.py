"""The ACME CA's HTTP-01 challenge over a real listening port, on SQLite and PostgreSQL:
a token being validated is answered without a login, any other is 404, and the other
/.well-known/ pages (autoconfig) are still the app's."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from atollon_mail.certificates.challenges import ChallengeAnswers
from atollon_mail.config import parse_config
from tests.builders import hosted_mailbox, web_root
from tests.support import PostgresStoreMixin, SqliteStoreMixin, StoreFixtureMixin
from tests.web.support import ServedWebMixin

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEY_AUTHORIZATION = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
PREFIX = "/.well-known/acme-challenge/"


class ChallengeTests(ServedWebMixin, StoreFixtureMixin):
    def setUp(self):
        self.store = self.make_store()
        hosted_mailbox(self.store, "jane@example.test", "jane")
        self.answers = ChallengeAnswers()
        config = parse_config("[appliance]\nhostname = mail.example.test\n")
        root = web_root(
            self, self.store, config, reactor, clock=Clock(), challenge_answers=self.answers
        )
        self.serve(root)

    @defer.inlineCallbacks
    def test_a_token_being_validated_is_answered_without_a_login(self):
        self.answers.add(TOKEN, KEY_AUTHORIZATION)
        response = yield self.browser().get(PREFIX + TOKEN)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, KEY_AUTHORIZATION.encode())
        self.assertEqual(response.header("content-type"), "text/plain; charset=us-ascii")
        head = yield self.browser().request("HEAD", PREFIX + TOKEN)
        self.assertEqual((head.status, head.body), (200, b""))

    @defer.inlineCallbacks
    def test_unknown_and_removed_tokens_are_404(self):
        self.answers.add(TOKEN, KEY_AUTHORIZATION)
        for path in (PREFIX + "another", PREFIX, PREFIX + TOKEN + "/more", PREFIX + "%00"):
            response = yield self.browser().get(path)
            self.assertEqual(response.status, 404, path)
            self.assertNotIn(KEY_AUTHORIZATION.encode(), response.body)
        self.answers.remove(TOKEN)
        response = yield self.browser().get(PREFIX + TOKEN)
        self.assertEqual(response.status, 404)

    @defer.inlineCallbacks
    def test_only_get_and_head(self):
        self.answers.add(TOKEN, KEY_AUTHORIZATION)
        response = yield self.browser().request("POST", PREFIX + TOKEN)
        self.assertEqual(response.status, 405)
        self.assertEqual(response.header("allow"), "GET, HEAD")

    @defer.inlineCallbacks
    def test_other_well_known_paths_are_still_the_apps(self):
        response = yield self.browser().get(
            "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=jane@example.test"
        )
        self.assertEqual(response.status, 200)
        self.assertIn(b"clientConfig", response.body)


class SqliteChallengeTests(SqliteStoreMixin, ChallengeTests, unittest.TestCase):
    pass


class PostgresChallengeTests(PostgresStoreMixin, ChallengeTests, unittest.TestCase):
    pass
