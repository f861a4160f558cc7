"""
Refusals: counted by reason for as long as the daemon runs, logged one by one while they are few,
and summed up once a minute under a flood, so junk can neither flood the log nor fill the disk.
Refused datagrams (the control port) and refused connections (an assigned port) alike.
"""

import collections
from typing import Any, Counter, Set

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

# Refusals logged one by one in each interval; the last few of them are kept for sources not
# logged yet in the interval (so one client's failed login, or one flooding source, leaves room
# for the next cause); the rest go into the interval's summary.
DETAILED_PER_INTERVAL = 20
KEPT_FOR_NEW_SOURCES = 5
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
        # A quarter of the quota at most, so a source that repeats itself always gets some.
        self.kept_for_new_sources = min(KEPT_FOR_NEW_SOURCES, detailed_per_interval // 4)
        self.interval = interval
        self.totals: Counter[str] = collections.Counter()
        self._reasons: Counter[str] = collections.Counter()
        self._sources: Counter[str] = collections.Counter()
        self._detailed = 0
        self._detailed_sources: Set[str] = set()
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
        and log it: at info level if the interval's quota allows (``_may_detail``), or always,
        at error level,
        when it is ``severe`` (the operator must look into it: the
        firewall refused a change, no port was free). Only an authenticated session can be
        refused as severe, so junk cannot flood the log this way.
        """
        self.totals[reason] += 1
        self._reasons[reason] += 1
        if source in self._sources or len(self._sources) < MAX_SOURCES_PER_INTERVAL:
            self._sources[source] += 1
        if severe or self._may_detail(source):
            if not severe:
                self._detailed += 1
                self._detailed_sources.add(source)
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

    def _may_detail(self, source: str) -> bool:
        """
        Whether a refusal from ``source`` may still be logged one by one this interval: within
        the interval's quota, the last ``kept_for_new_sources`` of it for a source not logged
        yet in this interval.
        """
        if source in self._detailed_sources:
            limit = self.detailed_per_interval - self.kept_for_new_sources
        else:
            limit = self.detailed_per_interval
        return self._detailed < limit

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
        self._detailed_sources.clear()
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
