"""
Tests for sig2knock.daemon.refusals: refusals logged one by one while few, summed up once an
interval under a flood, at the level they deserve.
"""

from typing import List

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.refusals import KEPT_FOR_NEW_SOURCES, RefusalLog, RefusalSummary


class RefusalLogTests(SynchronousTestCase):
    """
    Refusals are logged one by one while few, summed up once a minute under a flood.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: List[dict] = []
        self.patch(RefusalLog, "log", Logger(observer=self.events.append))
        self.refusals = RefusalLog(detailed_per_interval=3, interval=60)
        summary = RefusalSummary(self.refusals, self.clock)
        summary.startService()
        self.addCleanup(summary.stopService)

    def test_fewRefusalsLoggedEach(self) -> None:
        self.refusals.refused("198.18.0.3", 4000, "auth", "user alice")
        self.clock.advance(60)
        self.assertEqual(len(self.events), 1)
        self.assertEqual(self.events[0]["reason"], "auth")
        self.assertEqual(self.events[0]["source"], "198.18.0.3")

    def test_floodSummedUpOncePerInterval(self) -> None:
        for n in range(10000):
            self.refusals.refused(f"198.18.1.{n % 7}", 4000, "size", "3 bytes")
        self.refusals.refused("198.18.2.1", 4000, "auth", "user alice")
        self.assertEqual(len(self.events), 3)
        self.clock.advance(60)
        self.assertEqual(len(self.events), 4)
        summary = self.events[-1]
        self.assertEqual(summary["total"], 10001)
        self.assertEqual(summary["suppressed"], 9998)
        self.assertEqual(summary["reason_counts"], {"size": 10000, "auth": 1})
        self.assertIn("198.18.1.", summary["busiest"])
        self.assertEqual(self.refusals.totals["size"], 10000)
        self.clock.advance(60)
        self.assertEqual(len(self.events), 4, "a quiet minute logs nothing")
        self.refusals.refused("198.18.0.3", 4000, "auth", "again")
        self.assertEqual(len(self.events), 5, "a new interval logs in detail again")

    def test_oneSourceLeavesRoomForOthers(self) -> None:
        """
        One source's refusals (a client whose login fails, re-sending) are logged one by one up
        to the quota less what is kept for new sources: the next sources' causes still show in
        detail in the same interval.
        """
        refusals = RefusalLog(detailed_per_interval=20, interval=60)
        for n in range(30):
            refusals.refused("198.18.0.3", 4000, "unknown-session", "tag")
        for host in range(4, 4 + KEPT_FOR_NEW_SOURCES + 1):
            refusals.refused(f"198.18.0.{host}", 4000, "auth", "user bob")
        detailed = [event["source"] for event in self.events if "reason" in event]
        self.assertEqual(
            detailed,
            ["198.18.0.3"] * (20 - KEPT_FOR_NEW_SOURCES)
            + [f"198.18.0.{host}" for host in range(4, 4 + KEPT_FOR_NEW_SOURCES)],
        )
        refusals.summarize()
        self.assertEqual(self.events[-1]["suppressed"], 30 - (20 - KEPT_FOR_NEW_SOURCES) + 1)

    def test_connectionsSaySo(self) -> None:
        self.refusals.refused("198.18.0.9", 51000, "not-granted", "port 40001 is granted to"
                              " 198.18.0.2", what="connection")
        (event,) = self.events
        self.assertIn("refused {what} from", event["log_format"])
        self.assertEqual(event["what"], "connection")

    def test_severeRefusalsAreErrors(self) -> None:
        """
        A refusal an operator must look into (the firewall refused a grant) is logged at error
        level; one a client caused, at info.
        """
        self.refusals.refused("198.18.0.3", 4000, "user-limit", "16 sessions of user alice")
        self.refusals.refused("198.18.0.2", 4000, "firewall", "nft said no", severe=True)
        self.assertEqual([event["log_level"].name for event in self.events], ["info", "error"])

    def test_severeRefusalsBypassTheQuota(self) -> None:
        """
        A flood of client refusals does not hide a refusal the operator must look into: it is
        logged even after the interval's quota is spent, and uses none of it.
        """
        refusals = RefusalLog(detailed_per_interval=2)
        refusals.refused("198.18.0.2", 4000, "no-free-port", "40000-40009 in use", severe=True)
        for _ in range(5):
            refusals.refused("198.18.0.3", 4000, "auth", "bad tag")
        refusals.refused("198.18.0.2", 4000, "firewall", "nft said no", severe=True)
        self.assertEqual(
            [event["reason"] for event in self.events],
            ["no-free-port", "auth", "auth", "firewall"],
        )
        self.assertEqual(
            [event["log_level"].name for event in self.events], ["error", "info", "info", "error"]
        )
        refusals.summarize()
        self.assertEqual(self.events[-1]["suppressed"], 3)
        self.assertEqual(
            self.events[-1]["reason_counts"], {"auth": 5, "firewall": 1, "no-free-port": 1}
        )

    def test_lastSummaryAtStop(self) -> None:
        summary = RefusalSummary(RefusalLog(detailed_per_interval=0), self.clock)
        summary.startService()
        summary.refusals.refused("198.18.0.3", 4000, "size", "3 bytes")
        self.assertEqual(self.events, [])
        summary.stopService()
        (event,) = self.events
        self.assertEqual(event["suppressed"], 1)
