"""
Tests for sig2knock.daemon.waiting: cancelling a timer that may have run, and waiting for a
Deferred without taking its result.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.waiting import cancel, settled


class CancelTests(SynchronousTestCase):
    """
    ``cancel`` stops a pending timer and leaves alone one that ran, was cancelled or is none.
    """

    def test_pendingCancelled(self) -> None:
        clock = Clock()
        ran = []
        call = clock.callLater(1, ran.append, "ran")
        cancel(call)
        clock.advance(2)
        self.assertEqual((ran, call.active()), ([], False))

    def test_ranOrCancelledOrNone(self) -> None:
        clock = Clock()
        ran = clock.callLater(1, lambda: None)
        clock.advance(1)
        cancel(ran)
        cancelled = clock.callLater(1, lambda: None)
        cancelled.cancel()
        cancel(cancelled)
        cancel(None)
        self.assertEqual(clock.getDelayedCalls(), [])


class SettledTests(SynchronousTestCase):
    """
    ``settled`` fires with ``None`` when the Deferred it watches fires, whatever the result,
    and leaves that result to the Deferred's own callbacks.
    """

    def test_success(self) -> None:
        waited: Deferred = Deferred()
        done = settled(waited)
        self.assertNoResult(done)
        waited.callback("result")
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(self.successResultOf(waited), "result")

    def test_failure(self) -> None:
        waited: Deferred = Deferred()
        done = settled(waited)
        waited.errback(ValueError("refused"))
        self.assertIsNone(self.successResultOf(done))
        self.failureResultOf(waited, ValueError)
