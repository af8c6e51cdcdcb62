"""The events object: its interfaces, and a subscriber's trouble kept from the producer."""

from __future__ import annotations

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from atollon_mail.events import Channel, Events
from atollon_mail.interfaces import IEventChannel, IEvents
from atollon_mail.store.notices import News


class EventsTests(unittest.TestCase):
    def test_the_events_object_and_its_channels_provide_their_interfaces(self):
        events = Events()
        self.assertTrue(verifyObject(IEvents, events))
        channels = (events.queued, events.filed, events.outcome, events.filed_elsewhere)
        others = (events.touched_elsewhere, events.changed, events.missed_elsewhere)
        for channel in (*channels, *others):
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


class NewsOfOtherNodesTests(unittest.TestCase):
    def test_another_node_s_news_fires_the_channels_the_local_readers_hear(self):
        events = Events()
        heard = []
        events.filed_elsewhere.subscribe(lambda ids, junk: heard.append(("filed", ids, junk)))
        events.touched_elsewhere.subscribe(lambda ids: heard.append(("touched", ids)))
        events.changed.subscribe(lambda address: heard.append(("changed", address)))
        events.filed.subscribe(lambda *args: heard.append(("filed here", args)))
        events.heard(
            News(
                node="b",
                filed=frozenset({1, 2}),
                junk=frozenset({2}),
                changed=frozenset({"z@example.com", "a@example.com"}),
                touched=frozenset({3}),
            )
        )
        self.assertEqual(
            heard,
            [
                ("filed", {1, 2}, {2}),
                ("touched", {3}),
                ("changed", "a@example.com"),
                ("changed", "z@example.com"),
            ],
        )

    def test_news_that_may_have_been_lost_fires_only_the_missed_channel(self):
        events = Events()
        heard = []
        events.missed_elsewhere.subscribe(lambda: heard.append("missed"))
        events.filed_elsewhere.subscribe(lambda ids, junk: heard.append(("filed", ids, junk)))
        events.heard(News(node="a", missed=True))
        self.assertEqual(heard, ["missed"])
