"""
Tests for sig2knock.daemon.ratelimit and sig2knock.daemon.refusals: bounded work and bounded logs under a flood.
"""

from typing import List

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.ratelimit import RateLimiter
from sig2knock.daemon.refusals import RefusalLog


class RateLimiterTests(SynchronousTestCase):
    """
    Token buckets per source and for everything, on the reactor's clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = RateLimiter(
            self.clock, per_source_rate=2, per_source_burst=4, global_rate=10, global_burst=6
        )

    def test_burstThenRate(self) -> None:
        self.assertEqual([self.limiter.allow("a") for _ in range(6)], [True] * 4 + [False] * 2)
        self.clock.advance(0.5)
        self.assertEqual([self.limiter.allow("a") for _ in range(2)], [True, False])

    def test_oneSourceCannotStarveOthers(self) -> None:
        for _ in range(100):
            self.limiter.allow("noisy")
        self.assertTrue(self.limiter.allow("quiet"))

    def test_globalCap(self) -> None:
        allowed = sum(self.limiter.allow(f"source{n}") for n in range(20))
        self.assertEqual(allowed, 6)
        self.clock.advance(1)
        self.assertTrue(self.limiter.allow("source99"))

    def test_boundedTable(self) -> None:
        limiter = RateLimiter(self.clock, max_sources=10)
        for n in range(1000):
            limiter.allow(n)
        self.assertEqual(len(limiter), 10)


class RefusalLogTests(SynchronousTestCase):
    """
    Refusals are logged one by one while few, summed up once a minute under a flood.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: List[dict] = []
        self.patch(RefusalLog, "log", Logger(observer=self.events.append))
        self.refusals = RefusalLog(self.clock, detailed_per_interval=3, interval=60)
        self.refusals.start()
        self.addCleanup(self.refusals.stop)

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
