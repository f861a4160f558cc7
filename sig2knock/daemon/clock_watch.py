"""
The watch on the wall clock: the daemon's timers and iptables' ``--datestop`` follow the wall
clock, so a step back while grants are open would keep them open longer. ``ClockWatch`` compares
the wall clock with the monotonic one once a ``period``, sleeping in a thread of its own (a
Twisted timer would itself be late by the step), and reports every step back of more than
``THRESHOLD`` seconds.
"""

import threading
import time
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.logger import Logger

from sig2knock.daemon.blocking import IBlockingWorker, ThreadWorker

PERIOD = 1.0
# Steps smaller than this are NTP's ordinary corrections and the watch's own jitter.
THRESHOLD = 1.0


class ClockWatch(Service):
    """
    Calls ``stepped_back(seconds)`` in the reactor thread when the wall clock went back by more
    than ``THRESHOLD`` seconds since the last look; a step forward is only logged. ``worker``
    runs the sleeps (a ``ThreadWorker`` of its own by default); ``wall`` and ``monotonic`` are
    the clocks (``time.time`` and ``time.monotonic``) and ``sleep`` the wait (by default on an
    event that stopping sets; its timeout counts on the monotonic clock); the tests give their
    own.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        stepped_back: Callable[[float], Any],
        worker: Optional[IBlockingWorker] = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        period: float = PERIOD,
        sleep: Optional[Callable[[float], Any]] = None,
    ) -> None:
        self.stepped_back = stepped_back
        self.worker = worker if worker is not None else ThreadWorker(reactor, "sig2knock-clock")
        self.wall = wall
        self.monotonic = monotonic
        self.period = period
        # The wait: on an event, which stopping sets, so that a stop never waits a period.
        self._stopping = threading.Event()
        self.sleep = sleep if sleep is not None else self._stopping.wait
        self._offset = 0.0

    def startService(self) -> None:
        """
        Take the clocks' offset and start looking.
        """
        super().startService()
        self._stopping.clear()
        self._offset = self.wall() - self.monotonic()
        self.worker.start()
        self._wait()

    def stopService(self) -> None:
        """
        Stop looking (the sleep under way ends first).
        """
        super().stopService()
        self._stopping.set()
        self.worker.stop()

    def _wait(self) -> None:
        if self.running:
            waiting = self.worker.run(lambda: self.sleep(self.period))
            waiting.addCallbacks(self._look, self._failed)

    def _failed(self, failure: Any) -> None:
        # Not tried again: a wait that fails at once would do so in a loop.
        self.log.error(
            "the watch on the wall clock stopped (a step back of the clock will keep iptables"
            " grants open longer): {error}",
            error=failure.getErrorMessage(),
        )

    def _look(self, _: object) -> None:
        if not self.running:
            return
        offset = self.wall() - self.monotonic()
        step, self._offset = offset - self._offset, offset
        if step < -THRESHOLD:
            self.log.warn(
                "the wall clock went back by {seconds:.1f}s: open grants that end at a wall-clock"
                " time are moved back with it",
                seconds=-step,
            )
            self.stepped_back(-step)
        elif step > THRESHOLD:
            self.log.info("the wall clock went forward by {seconds:.1f}s", seconds=step)
        self._wait()
