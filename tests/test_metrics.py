"""atollon_mail.metrics: bounded labels, and one registry per Metrics."""

from __future__ import annotations

from twisted.trial import unittest

from atollon_mail.metrics import DomainLabels, Metrics, auth_result, outcome_of, reason_of


class LabelTests(unittest.TestCase):
    def test_the_first_domains_keep_their_label_the_rest_are_other(self):
        label = DomainLabels(limit=2)
        self.assertEqual(label("Gmail.COM."), "gmail.com")
        self.assertEqual(label("outlook.com"), "outlook.com")
        self.assertEqual(label("third.test"), "other")
        self.assertEqual(label("gmail.com"), "gmail.com")  # never taken back
        self.assertEqual(label(""), "other")

    def test_outcomes_and_reasons_of_replies(self):
        self.assertEqual(
            [outcome_of(code) for code in (220, 250, 354, 421, 451, 550, 554)],
            ["accepted"] * 3 + ["tempfailed"] * 2 + ["rejected"] * 2,
        )
        self.assertEqual(reason_of(550, "5.1.1"), "5.1.1")
        self.assertEqual(reason_of(451, None), "4.0.0")
        # Nothing but an enhanced status code becomes a label value.
        self.assertEqual(reason_of(550, "5.1.1 and more"), "5.0.0")
        self.assertEqual(reason_of(999, None), "other")

    def test_only_rfc_8601_result_words_are_labels(self):
        self.assertEqual(auth_result("softfail"), "softfail")
        self.assertEqual(auth_result("made up"), "other")
        self.assertEqual(auth_result(None), "other")


class RegistryTests(unittest.TestCase):
    def test_each_metrics_has_its_own_registry_with_the_process_figures(self):
        first, second = Metrics(), Metrics()
        first.imap_logins.labels("success").inc()
        value = "atollon_mail_imap_logins_total"
        self.assertEqual(first.registry.get_sample_value(value, {"outcome": "success"}), 1)
        self.assertIsNone(second.registry.get_sample_value(value, {"outcome": "success"}))
        self.assertIsNotNone(first.registry.get_sample_value("process_cpu_seconds_total"))

    def test_store_gauges_only_once_the_store_answered(self):
        from atollon_mail.store.monitoring import StoreGauges

        metrics = Metrics()
        value = metrics.registry.get_sample_value
        self.assertIsNone(value("atollon_mail_queue_oldest_age_seconds"))
        metrics.store_gauges.update(
            StoreGauges((("queued", 3), ("in-flight", 1), ("deferred", 2)), 90.0, (("sent", 5),))
        )
        self.assertEqual(value("atollon_mail_queue_recipients", {"state": "deferred"}), 2)
        self.assertEqual(value("atollon_mail_queue_oldest_age_seconds"), 90)
        self.assertEqual(value("atollon_mail_campaign_recipients", {"state": "sent"}), 5)
        metrics.store_gauges.update(None)  # the store failed: no stale figures
        self.assertIsNone(value("atollon_mail_queue_recipients", {"state": "deferred"}))
