"""
Tests for sig2knock.daemon.session_memory: what the session table remembers of the recent past
is bounded and forgotten in time.
"""

import ipaddress
import types

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import session_memory
from sig2knock.daemon.session_memory import EarlyKnocks, EndedSessions, RecentUses

SOURCE = ipaddress.ip_address("198.18.0.2")
OTHER = ipaddress.ip_address("198.18.0.3")


class EarlyKnocksTests(SynchronousTestCase):
    """
    Knocks are kept for the window, per address, and the addresses heard from least lately go
    first.
    """

    def test_window(self) -> None:
        early = EarlyKnocks(2.0)
        early.record(10.0, SOURCE, 6, 1111)
        early.record(11.5, SOURCE, 6, 2222)
        self.assertEqual(early.recent(12.5, SOURCE), [(11.5, 6, 2222)])
        self.assertEqual(early.recent(12.5, OTHER), [])
        early.clear()
        self.assertEqual(early.recent(11.6, SOURCE), [])

    def test_bounded(self) -> None:
        self.patch(session_memory, "EARLY_SOURCES", 2)
        early = EarlyKnocks(60.0)
        third = ipaddress.ip_address("198.18.0.4")
        early.record(1.0, SOURCE, 6, 1)
        early.record(2.0, OTHER, 6, 2)
        early.record(3.0, SOURCE, 6, 3)  # SOURCE heard again: OTHER is the oldest now
        early.record(4.0, third, 6, 4)
        self.assertEqual(early.recent(5.0, OTHER), [])
        self.assertEqual([port for _, _, port in early.recent(5.0, SOURCE)], [1, 3])
        for port in range(session_memory.EARLY_KNOCKS_PER_SOURCE + 5):
            early.record(6.0, third, 6, port)
        self.assertEqual(len(early.recent(6.0, third)), session_memory.EARLY_KNOCKS_PER_SOURCE)


class EndedSessionsTests(SynchronousTestCase):
    """
    An ended session's key is known, with its address, for ENDED_MEMORY seconds; at most
    MAX_ENDED are kept, the oldest forgotten first.
    """

    def test_forgottenInTime(self) -> None:
        ended = EndedSessions()
        ended.remember(100.0, ("alice", b"S"), SOURCE)
        self.assertEqual(ended.source_of(100.0 + session_memory.ENDED_MEMORY - 1,
                                         ("alice", b"S")), SOURCE)
        self.assertIsNone(ended.source_of(100.0 + session_memory.ENDED_MEMORY,
                                          ("alice", b"S")))

    def test_forgetAndBound(self) -> None:
        self.patch(session_memory, "MAX_ENDED", 2)
        ended = EndedSessions()
        for number in range(3):
            ended.remember(1.0, number, SOURCE)
        self.assertEqual([ended.source_of(1.0, number) for number in range(3)],
                         [None, SOURCE, SOURCE])
        ended.forget(2)
        self.assertIsNone(ended.source_of(1.0, 2))


class RecentUsesTests(SynchronousTestCase):
    """
    A used grant is listed until its open time is over.
    """

    def test_untilTheDeadline(self) -> None:
        def used(deadline: float) -> object:
            return types.SimpleNamespace(grant=types.SimpleNamespace(deadline=deadline))

        uses = RecentUses()
        early, late = used(10.0), used(20.0)
        uses.add(early)
        uses.add(late)
        self.assertEqual(uses.current(9.0), [early, late])
        self.assertEqual(uses.current(10.0), [late])
        uses.clear()
        self.assertEqual(uses.current(0.0), [])
