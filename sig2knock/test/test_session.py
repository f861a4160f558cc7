"""
Tests for ``sig2knock.daemon.session``: the states of a session's life and the moves between
them, its one timer, and how a knock advances it.
"""

import ipaddress

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.session import TRANSITIONS, Session, SessionRefused, State
from sig2knock.protocol.addresses import PROTO_TCP, PROTO_UDP


CLIENT = ipaddress.ip_address("198.18.0.2")


def session() -> Session:
    return Session(CLIENT, "alice", b"S" * 16, PROTO_TCP, (1, 2, 3))


class StateTests(SynchronousTestCase):
    """
    A session goes pending, complete, granting, granted, then used or expired; or is refused.
    """

    def test_theLifeOfAGrantedSession(self) -> None:
        one = session()
        for state in (State.COMPLETE, State.GRANTING, State.GRANTED, State.USED):
            self.assertTrue(TRANSITIONS[one.state], "not an end")
            one.move(state)
            self.assertIs(one.state, state)
        self.assertFalse(TRANSITIONS[one.state], "an end")

    def test_endsAreEnds(self) -> None:
        for end in (State.USED, State.EXPIRED, State.REFUSED):
            self.assertEqual(TRANSITIONS[end], frozenset())

    def test_forbiddenMovesRaise(self) -> None:
        for start, later in ((State.PENDING, State.GRANTED), (State.GRANTING, State.EXPIRED),
                             (State.GRANTED, State.COMPLETE), (State.USED, State.EXPIRED)):
            with self.subTest(start=start, later=later):
                one = session()
                one.state = start
                error = self.assertRaises(ValueError, one.move, later)
                self.assertIn(f"a {start.value} session cannot become {later.value}", str(error))

    def test_everyStateHasItsMoves(self) -> None:
        self.assertEqual(set(TRANSITIONS), set(State))


class KnockTests(SynchronousTestCase):
    """
    Knocks advance a pending session in order; the last one completes it.
    """

    def test_observe(self) -> None:
        one = session()
        self.assertEqual([one.observe(PROTO_TCP, port) for port in (1, 9, 2, 1)], [False] * 4)
        self.assertFalse(one.observe(PROTO_UDP, 3), "another protocol does not count")
        self.assertTrue(one.observe(PROTO_TCP, 3))
        self.assertIs(one.state, State.COMPLETE)
        self.assertFalse(one.observe(PROTO_TCP, 1), "a complete session takes no knocks")


class DeadlineTests(SynchronousTestCase):
    """
    A session has one timer: setting another cancels the first.
    """

    def test_oneTimer(self) -> None:
        clock = Clock()
        fired = []
        one = session()
        one.set_deadline(clock.callLater(5, fired.append, "first"))
        one.set_deadline(clock.callLater(10, fired.append, "second"))
        clock.advance(20)
        self.assertEqual(fired, ["second"])
        one.set_deadline(clock.callLater(5, fired.append, "third"))
        one.set_deadline(None)
        clock.advance(20)
        self.assertEqual(fired, ["second"])

    def test_waitersTakenOnce(self) -> None:
        one = session()
        one.waiters.append("P2")
        self.assertEqual(one.take_waiters(), ["P2"])
        self.assertEqual(one.take_waiters(), [])


class RefusalTests(SynchronousTestCase):
    """
    A refusal says whether an operator must look into it.
    """

    def test_severe(self) -> None:
        self.assertFalse(SessionRefused("user-limit").severe)
        refused = SessionRefused("firewall", "nft said no", severe=True)
        self.assertTrue(refused.severe)
        self.assertEqual(str(refused), "firewall: nft said no")
