"""
Rate limits for the control channel: how many datagrams per second may reach the cryptography,
from one source address and from all of them together.

Token buckets on the reactor's clock. The per-source table is bounded (least recently seen
addresses are forgotten first), so a flood from many addresses costs a fixed amount of memory.
"""

import collections
from dataclasses import dataclass
from typing import Hashable, Optional

from twisted.internet.interfaces import IReactorTime

# A client sends two messages per round, rounds 2, 4, 8 ... ms apart, then one a second: a
# burst of a dozen, then two a second. These leave room for that many times over (scripts that
# knock in a loop, several users behind one NAT address) and still bound the work.
PER_SOURCE_RATE = 50.0
PER_SOURCE_BURST = 200.0
# AES-GCM of a control message costs a few microseconds: this keeps a flood of valid-looking
# datagrams from taking more than a fraction of a core.
GLOBAL_RATE = 4000.0
GLOBAL_BURST = 8000.0
MAX_SOURCES = 65536


@dataclass
class TokenBucket:
    """
    ``rate`` tokens a second up to ``burst``; ``take`` spends one if there is one.
    """

    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> bool:
        """
        Spend one token at time ``now``; ``False`` when the bucket is empty.
        """
        elapsed = max(0.0, now - self.stamp)
        self.stamp = now
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RateLimiter:
    """
    One bucket per source (an address, or a user name) and one for everything (none when
    ``global_rate`` is ``None``); ``allow(source)`` says whether one more datagram from ``source``
    may be worked on now.
    """

    def __init__(
        self,
        clock: IReactorTime,
        per_source_rate: float = PER_SOURCE_RATE,
        per_source_burst: float = PER_SOURCE_BURST,
        global_rate: Optional[float] = GLOBAL_RATE,
        global_burst: float = GLOBAL_BURST,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.clock = clock
        self.per_source_rate = per_source_rate
        self.per_source_burst = per_source_burst
        self.max_sources = max_sources
        self._global = (
            None
            if global_rate is None
            else TokenBucket(global_rate, global_burst, global_burst, clock.seconds())
        )
        self._sources: "collections.OrderedDict[Hashable, TokenBucket]" = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._sources)

    def allow(self, source: Hashable, use_global: bool = True) -> bool:
        """
        Whether one more datagram from ``source`` may be worked on; spends its tokens if so.
        The source's own bucket is checked first, so one noisy address cannot empty the global
        bucket for everyone; ``use_global=False`` skips the global bucket (a source known to be
        good, which a flood from elsewhere must not starve).
        """
        now = self.clock.seconds()
        bucket = self._sources.get(source)
        if bucket is None:
            if len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)
            bucket = TokenBucket(
                self.per_source_rate, self.per_source_burst, self.per_source_burst, now
            )
            self._sources[source] = bucket
        else:
            self._sources.move_to_end(source)
        if not bucket.take(now):
            return False
        return self._global is None or not use_global or self._global.take(now)
