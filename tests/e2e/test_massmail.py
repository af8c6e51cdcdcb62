"""End to end: a campaign sent by the appliance under twistd to a remote MTA on loopback,
killed with SIGKILL in the middle and started again.

It must go on by itself after the restart; every recipient gets the message; the only
ones that may get it twice are those the send list marks uncertain (their message was
being delivered at the kill).
"""

from __future__ import annotations

import collections
import signal
import time

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from atollon_mail.store import campaign_recipients, campaigns
from atollon_mail.store.models import (
    CampaignRecipient,
    Contact,
    DistributionGroup,
    Organization,
    utc_now,
)
from tests.builders import campaign, commands_succeed, mailbox_commands, started_appliance
from tests.dnsserver import start_dns_server
from tests.remote_mta import Delayed, RemoteMTA

RECIPIENTS = 300


def _contacts(count: int, now) -> int:
    organization = Organization.create(name="Acme", created_at=now)
    Contact.insert_many(
        [
            {
                "organization": organization.id,
                "kind": "person",
                "external_id": None,
                "name": "",
                "first_name": f"Reader{number}",
                "last_name": "Example",
                "email": f"reader{number}@remote.test",
                "language": "cs" if number % 3 == 0 else "en",
                "created_at": now,
                "updated_at": now,
            }
            for number in range(count)
        ]
    ).execute()
    DistributionGroup.create(
        name="Readers",
        organization=organization,
        kind="dynamic",
        filter='{"has_email": true}',
        created_at=now,
    )
    return organization.id


class CampaignKillTests(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        # Each message is answered 0.3 s after its data: a kill finds some in flight.
        self.remote = RemoteMTA(dot=Delayed(0.3, 250))
        self.remote_port = reactor.listenTCP(0, self.remote, interface="127.0.0.1")
        self.addCleanup(self.remote_port.stopListening)
        self.dns = start_dns_server(
            reactor,
            {"remote.test": {"@": [("MX", 10, "mx.remote.test")], "mx": [("A", "127.0.0.1")]}},
        )
        self.addCleanup(self.dns.stop)
        self.appliance = yield started_appliance(
            self,
            delivery_config=(
                f"[delivery]\nnameservers = 127.0.0.1:{self.dns.port}\n"
                f"mx_port = {self.remote_port.getHost().port}\n"
                "[massmail]\nrate = 60\nwindow = 40\n"
            ),
        )
        yield threads.deferToThread(
            commands_succeed,
            self,
            self.appliance,
            mailbox_commands("news@acme.test", "jane"),
            stdin="jane-password\n",
        )
        self.appliance.run_sync(_contacts, RECIPIENTS, utc_now())
        self.campaign_id = campaign(
            self.appliance,
            "Readers",
            name="Kill test",
            variants={
                "en": ("Hello {{ first_name }}", "News.\n"),
                "cs": ("Ahoj {{ first_name }}", "Novinky.\n"),
            },
            started=True,
        ).id

    @defer.inlineCallbacks
    def wait_for(self, predicate, what: str, seconds: float = 90):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate():
                return
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.fail(f"timed out waiting for {what}")

    def received(self) -> collections.Counter:
        """How many copies of the message each address got in full."""
        return collections.Counter(
            recipient for envelope in self.remote.envelopes for recipient in envelope.recipients
        )

    @defer.inlineCallbacks
    def test_kill_9_in_the_middle_then_the_campaign_goes_on_by_itself(self):
        yield self.wait_for(lambda: sum(self.received().values()) >= RECIPIENTS // 4, "sending")
        yield threads.deferToThread(self.appliance.stop, signal.SIGKILL)
        received_at_kill = sum(self.received().values())
        self.assertLess(received_at_kill, RECIPIENTS, "the kill came too late to test anything")
        yield threads.deferToThread(self.appliance.start)

        def finished() -> bool:
            return (
                self.appliance.run_sync(campaigns.get_campaign, self.campaign_id).status
                == "finished"
            )

        yield self.wait_for(finished, "the campaign to finish after the restart")
        rows = self.appliance.run_sync(
            lambda: {
                row.address: (row.state, row.uncertain)
                for row in CampaignRecipient.select().where(
                    CampaignRecipient.campaign == self.campaign_id
                )
            }
        )
        self.assertEqual(len(rows), RECIPIENTS)
        self.assertEqual({state for state, _ in rows.values()}, {"sent"})
        received = self.received()
        self.assertEqual(set(received), set(rows), "every recipient got the message")
        twice = {address for address, count in received.items() if count > 1}
        uncertain = {address for address, (_, flag) in rows.items() if flag}
        self.assertLessEqual(twice, uncertain, "a second copy went to a row not marked uncertain")
        self.assertGreater(sum(received.values()), received_at_kill)
        status = self.appliance.run_sync(
            campaign_recipients.campaign_status, self.campaign_id, utc_now()
        )
        self.assertEqual(status.uncertain, len(uncertain))
