"""
What the session table (``sig2knock.daemon.sessions``) remembers besides its live sessions, each
bounded and each forgotten in time: knocks seen before their P1 (``EarlyKnocks``), the ids of
ended sessions (``EndedSessions``: no second port from a late copy of a P1) and the grants used
lately (``RecentUses``, for the live view).
"""

import collections
from typing import Any, Deque, Hashable, List, Optional, Tuple

from sig2knock.protocol.addresses import IPAddress

# Remembered early knocks: per address, and addresses at once.
EARLY_KNOCKS_PER_SOURCE = 128
EARLY_SOURCES = 1024
# How long, and how many, ended sessions' ids are remembered (longer than any P1 is fresh).
ENDED_MEMORY = 600.0
MAX_ENDED = 4096
# Used grants the live view (sig2knockd --status) lists until their open time is over.
MAX_RECENTLY_USED = 256

EarlyKnock = Tuple[float, int, int]  # when, protocol, port


class EarlyKnocks:
    """
    The knocks of watched addresses, kept for ``window`` seconds: the capture can deliver a
    knock before the control socket delivers its P1, and such knocks still count for it. The
    addresses heard from least lately are forgotten first.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._by_source: "collections.OrderedDict[IPAddress, Deque[EarlyKnock]]" = (
            collections.OrderedDict()
        )

    def record(self, now: float, source: IPAddress, protocol: int, port: int) -> None:
        """
        Remember a knock of ``source`` seen at ``now``.
        """
        knocks = self._by_source.get(source)
        if knocks is None:
            if len(self._by_source) >= EARLY_SOURCES:
                self._by_source.popitem(last=False)
            knocks = self._by_source[source] = collections.deque(maxlen=EARLY_KNOCKS_PER_SOURCE)
        else:
            self._by_source.move_to_end(source)
        knocks.append((now, protocol, port))

    def recent(self, now: float, source: IPAddress) -> List[EarlyKnock]:
        """
        The knocks of ``source`` seen in the last ``window`` seconds, oldest first.
        """
        since = now - self.window
        return [knock for knock in self._by_source.get(source, ()) if knock[0] >= since]

    def clear(self) -> None:
        """
        Forget them all.
        """
        self._by_source.clear()


class EndedSessions:
    """
    The keys of ended sessions, with the address each came from, for ``ENDED_MEMORY`` seconds
    (at most ``MAX_ENDED``, the oldest forgotten first).
    """

    def __init__(self) -> None:
        self._ended: "collections.OrderedDict[Hashable, Tuple[float, IPAddress]]" = (
            collections.OrderedDict()
        )

    def remember(self, now: float, key: Hashable, source: IPAddress) -> None:
        """
        The session ``key`` from ``source`` ended at ``now``.
        """
        self._ended[key] = (now + ENDED_MEMORY, source)
        self._ended.move_to_end(key)
        while len(self._ended) > MAX_ENDED:
            self._ended.popitem(last=False)

    def source_of(self, now: float, key: Hashable) -> Optional[IPAddress]:
        """
        The address of the ended session ``key``, or ``None`` when none is remembered.
        """
        while self._ended and next(iter(self._ended.values()))[0] <= now:
            self._ended.popitem(last=False)
        ended = self._ended.get(key)
        return None if ended is None else ended[1]

    def forget(self, key: Hashable) -> None:
        """
        Forget that ``key`` ended (it may open again).
        """
        self._ended.pop(key, None)


class RecentUses:
    """
    Sessions whose grant was used, until that grant's open time is over (``deadline``), for the
    live view; at most ``MAX_RECENTLY_USED``.
    """

    def __init__(self) -> None:
        self._sessions: Deque[Any] = collections.deque(maxlen=MAX_RECENTLY_USED)

    def add(self, session: Any) -> None:
        """
        ``session``'s grant was used now.
        """
        self._sessions.append(session)

    def current(self, now: float) -> List[Any]:
        """
        The sessions whose grant's open time is not over at ``now``, oldest first.
        """
        while self._sessions and self._sessions[0].grant.deadline <= now:
            self._sessions.popleft()
        return [session for session in self._sessions if session.grant.deadline > now]

    def clear(self) -> None:
        """
        Forget them all.
        """
        self._sessions.clear()
