"""
Refusals: counted by reason for as long as the daemon runs, logged one by one while they are few,
and summed up once a minute under a flood, so junk can neither flood the log nor fill the disk.
Refused datagrams (the control port) and refused connections (an assigned port) alike.
"""

import collections
from typing import Any, Counter

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

# Refusals logged one by one in each interval; the rest go into the interval's summary.
DETAILED_PER_INTERVAL = 20
INTERVAL = 60.0
# Distinct sources remembered per interval for the summary's "busiest sources".
MAX_SOURCES_PER_INTERVAL = 1024
BUSIEST_SHOWN = 5


class RefusalLog:
    """
    Where every refused datagram and connection is reported (``refused``). ``totals`` counts
    them by reason since start; ``summarize`` ends an interval (``RefusalSummary`` calls it once
    an interval).
    """

    log = Logger()

    def __init__(
        self, detailed_per_interval: int = DETAILED_PER_INTERVAL, interval: float = INTERVAL
    ) -> None:
        self.detailed_per_interval = detailed_per_interval
        self.interval = interval
        self.totals: Counter[str] = collections.Counter()
        self._reasons: Counter[str] = collections.Counter()
        self._sources: Counter[str] = collections.Counter()
        self._detailed = 0
        self._suppressed = 0

    def refused(
        self,
        source: str,
        port: int,
        reason: str,
        detail: str,
        severe: bool = False,
        what: str = "datagram",
    ) -> None:
        """
        Count one refusal of a ``what`` (``datagram`` or ``connection``) from ``source``/``port``
        and log it: at info level if the interval's quota allows, or always, at error level,
        when it is ``severe`` (the operator must look into it: the
        firewall refused a change, no port was free). Only an authenticated session can be
        refused as severe, so junk cannot flood the log this way.
        """
        self.totals[reason] += 1
        self._reasons[reason] += 1
        if source in self._sources or len(self._sources) < MAX_SOURCES_PER_INTERVAL:
            self._sources[source] += 1
        if severe or self._detailed < self.detailed_per_interval:
            if not severe:
                self._detailed += 1
            (self.log.error if severe else self.log.info)(
                "refused {what} from {source} port {source_port}: {reason} ({detail})",
                what=what,
                source=source,
                source_port=port,
                reason=reason,
                detail=detail,
            )
        else:
            self._suppressed += 1

    def summarize(self) -> None:
        """
        End the interval: if refusals were left out of the log, say how many and of what kind,
        in one line.
        """
        if self._suppressed:
            busiest = ", ".join(
                f"{source} ({count})" for source, count in self._sources.most_common(BUSIEST_SHOWN)
            )
            reasons = ", ".join(
                f"{reason} {count}" for reason, count in self._reasons.most_common()
            )
            self.log.warn(
                "refused {total} datagrams and connections in the last {interval:.0f}s,"
                " {suppressed} of them not logged one by one: {reasons}; busiest sources:"
                " {busiest}",
                total=sum(self._reasons.values()),
                interval=self.interval,
                suppressed=self._suppressed,
                reasons=reasons,
                reason_counts=dict(self._reasons),
                busiest=busiest,
            )
        self._reasons.clear()
        self._sources.clear()
        self._detailed = 0
        self._suppressed = 0


class RefusalSummary(TimerService):
    """
    The summary of ``refusals`` once an interval on ``clock``, as a service of the daemon;
    stopping it gives a last summary.
    """

    def __init__(self, refusals: RefusalLog, clock: IReactorTime) -> None:
        super().__init__(refusals.interval, refusals.summarize)
        self.clock = clock
        self.refusals = refusals

    def stopService(self) -> Any:
        """
        Stop summarizing, after a last summary.
        """
        stopping = super().stopService()
        self.refusals.summarize()
        return stopping
