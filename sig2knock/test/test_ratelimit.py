"""
Tests for sig2knock.daemon.ratelimit and sig2knock.daemon.refusals: bounded work and bounded logs
under a flood.
"""


from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.ratelimit import RateLimiter


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
