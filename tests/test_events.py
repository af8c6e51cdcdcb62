"""The events object: its interfaces, and a subscriber's trouble kept from the producer."""

from __future__ import annotations

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from atollon_mail.events import Channel, Events
from atollon_mail.interfaces import IEventChannel, IEvents


class EventsTests(unittest.TestCase):
    def test_the_events_object_and_its_channels_provide_their_interfaces(self):
        events = Events()
        self.assertTrue(verifyObject(IEvents, events))
        for channel in (events.queued, events.filed, events.outcome):
            self.assertTrue(verifyObject(IEventChannel, channel))

    def test_every_subscriber_hears_a_fire_even_after_one_fails(self):
        channel = Channel("queued")
        heard = []

        def broken(*args):
            raise RuntimeError("a subscriber's own trouble")

        channel.subscribe(broken)
        channel.subscribe(lambda *args: heard.append(args))
        channel.fire(1, 2)
        self.assertEqual(heard, [(1, 2)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
