"""
Tests for sig2knock.daemon.clock_watch: a step back of the wall clock is seen (against the
monotonic clock) and reported; small corrections and steps forward are not.
"""

from typing import List

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.clock_watch import ClockWatch
from sig2knock.test.test_replay import HeldWorker


class ClockWatchTests(SynchronousTestCase):
    """
    The watch looks once a period, in its worker's thread (here: held, no real sleep).
    """

    def setUp(self) -> None:
        self.wall = 1_800_000_000.0
        self.monotonic = 1000.0
        self.steps: List[float] = []
        self.events: List[dict] = []
        self.patch(ClockWatch, "log", Logger(observer=self.events.append))
        self.worker = HeldWorker()
        self.watch = ClockWatch(
            None, self.steps.append, worker=self.worker, wall=lambda: self.wall,
            monotonic=lambda: self.monotonic, sleep=lambda seconds: None,
        )
        self.watch.startService()
        self.addCleanup(self.watch.stopService)

    def tick(self, wall_moves: float) -> None:
        """One period: the monotonic clock goes on a second, the wall clock by ``wall_moves``."""
        self.monotonic += 1.0
        self.wall += wall_moves
        self.worker.finish_one()

    def test_stepBackReported(self) -> None:
        self.tick(1.0)
        self.tick(1.0 - 3600.0)  # a step back of an hour during that second
        self.assertEqual(self.steps, [3600.0])
        self.assertIn("went back by", self.events[-1]["log_format"])
        self.tick(1.0)
        self.assertEqual(self.steps, [3600.0], "once")

    def test_smallCorrectionsAndStepsForwardNotReported(self) -> None:
        self.tick(1.4)
        self.tick(0.6)
        self.tick(1.0 + 120.0)
        self.assertEqual(self.steps, [])
        self.assertIn("went forward by", self.events[-1]["log_format"])

    def test_looksUntilStopped(self) -> None:
        self.tick(1.0)
        self.assertEqual(len(self.worker.jobs), 1, "the next wait is under way")
        self.watch.stopService()
        self.worker.finish_all()
        self.assertEqual(self.worker.jobs, [])

    def test_failedWaitStopsTheWatchAndSaysSo(self) -> None:
        """
        A wait that fails (as ``time.sleep`` does under some libfaketime settings) is logged
        once and not tried again, rather than tried in a loop.
        """
        def broken(seconds: float) -> None:
            raise OSError(22, "Invalid argument")

        self.watch.sleep = broken
        self.tick(1.0)
        self.assertEqual(self.worker.jobs, [], "not tried again")
        self.assertIn("watch on the wall clock stopped", self.events[-1]["log_format"])

    def test_stopEndsTheWaitAtOnce(self) -> None:
        """
        The default wait is on an event that stopping sets: a stop does not wait a period.
        """
        watch = ClockWatch(None, self.steps.append, worker=HeldWorker(), period=3600)
        watch.startService()
        watch.stopService()
        job, _ = watch.worker.jobs[0]
        self.assertTrue(job(), "the wait ended by the stop")
