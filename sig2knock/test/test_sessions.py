"""
Tests for sig2knock.daemon.sessions: the knock state machine, on a Clock.
"""

import ipaddress
from typing import List

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import sessions
from sig2knock.protocol import addresses, wire
from sig2knock.daemon.sessions import GrantInfo, SessionRefused, SessionTable

CLIENT = ipaddress.ip_address("198.18.0.2")
OTHER = ipaddress.ip_address("198.18.0.3")
CLIENT6 = ipaddress.ip_address("2001:db8::2")
PORTS = (1111, 2222, 3333, 4444)
TCP = addresses.PROTO_TCP
UDP = addresses.PROTO_UDP


def request(session_id: bytes = b"S" * 16, ports=PORTS, protocol: int = TCP) -> wire.KnockRequest:
    return wire.KnockRequest(session_id, 0, protocol, tuple(ports))


class SessionTableTests(SynchronousTestCase):
    """
    P1 opens a session, knocks complete it whatever noise surrounds them, P2 gets one grant.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.granted: List[sessions.Session] = []
        self.next_port = 40000
        self.watched: List[frozenset] = []
        self.grant_result = None
        self.table = self.make()

    def make(self, **overrides) -> SessionTable:
        settings = dict(
            grant=self.grant,
            on_watch_change=self.watched.append,
            knock_protocol=TCP,
            min_knocks=4,
            knock_timeout=10,
            hold_time=30,
        )
        settings.update(overrides)
        return SessionTable(self.clock, **settings)

    def grant(self, session: sessions.Session) -> "Deferred[GrantInfo]":
        self.granted.append(session)
        if self.grant_result is not None:
            return self.grant_result
        self.next_port += 1
        return succeed(GrantInfo(self.next_port, self.clock.seconds() + 30))

    def knock_all(self, source=CLIENT, ports=PORTS, protocol=TCP) -> None:
        for port in ports:
            self.table.knock(source, protocol, port)

    def test_sequenceThenConfirmGrants(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.assertEqual(self.watched, [frozenset({CLIENT})])
        self.knock_all()
        grant = self.successResultOf(self.table.confirm(CLIENT, "alice", b"S" * 16))
        self.assertEqual(grant.port, 40001)
        self.assertEqual(len(self.granted), 1)
        # The capture is narrowed a little later, so the grant does not wait for it.
        self.assertEqual(self.watched[-1], frozenset({CLIENT}))
        self.clock.advance(sessions.NARROW_DELAY)
        self.assertEqual(self.watched[-1], frozenset())

    def test_narrowingCoalesced(self) -> None:
        """
        Completions in a burst narrow the capture once; a change before then narrows at once.
        """
        other_ports = (5001, 5002, 5003, 5004)
        self.table.open(CLIENT, "alice", request())
        self.table.open(OTHER, "bob", request(b"T" * 16, ports=other_ports))
        self.table.open(CLIENT6, "carol", request(b"U" * 16))
        changes = len(self.watched)
        self.knock_all()
        self.knock_all(source=OTHER, ports=other_ports)
        self.assertEqual(len(self.watched), changes)
        self.clock.advance(sessions.NARROW_DELAY)
        self.assertEqual(self.watched[-1], frozenset({CLIENT6}))
        self.assertEqual(len(self.watched), changes + 1)
        self.table.open(OTHER, "bob", request(b"V" * 16, ports=other_ports))
        self.knock_all(source=OTHER, ports=other_ports)
        self.table.open(CLIENT, "alice", request(b"W" * 16, ports=other_ports))
        self.assertEqual(self.watched[-1], frozenset({CLIENT, CLIENT6}))
        self.clock.advance(sessions.NARROW_DELAY)
        self.assertEqual(self.watched[-1], frozenset({CLIENT, CLIENT6}))

    def test_confirmBeforeLastKnockWaits(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.knock_all(ports=PORTS[:3])
        waiting = self.table.confirm(CLIENT, "alice", b"S" * 16)
        self.assertNoResult(waiting)
        self.table.knock(CLIENT, TCP, PORTS[3])
        self.assertEqual(self.successResultOf(waiting).port, 40001)

    def test_incompleteSequenceGetsNothing(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.knock_all(ports=PORTS[:3])
        waiting = self.table.confirm(CLIENT, "alice", b"S" * 16)
        self.clock.advance(10)
        self.failureResultOf(waiting, SessionRefused)
        self.assertEqual(self.granted, [])
        self.assertEqual(len(self.table), 0)

    def test_duplicateKnockDoesNotReset(self) -> None:
        self.table.open(CLIENT, "alice", request())
        for port in (1111, 1111, 2222, 2222, 1111, 3333, 3333, 4444):
            self.table.knock(CLIENT, TCP, port)
        self.successResultOf(self.table.confirm(CLIENT, "alice", b"S" * 16))

    def test_noiseAndReorderingDoNotReset(self) -> None:
        self.table.open(CLIENT, "alice", request())
        noise = [4444, 9, 1111, 3333, 65000, 2222, 1111, 80, 3333, 2222, 4444]
        for port in noise:
            self.table.knock(CLIENT, TCP, port)
        self.successResultOf(self.table.confirm(CLIENT, "alice", b"S" * 16))

    def test_outOfOrderAloneDoesNotComplete(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.knock_all(ports=reversed(PORTS))
        self.assertNoResult(self.table.confirm(CLIENT, "alice", b"S" * 16))

    def test_knocksFromAnotherAddressDoNotCount(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.knock_all(source=OTHER)
        self.assertNoResult(self.table.confirm(CLIENT, "alice", b"S" * 16))

    def test_otherProtocolDoesNotCount(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.knock_all(protocol=UDP)
        self.assertNoResult(self.table.confirm(CLIENT, "alice", b"S" * 16))

    def test_confirmFromAnotherAddressRefused(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.knock_all()
        self.failureResultOf(self.table.confirm(OTHER, "alice", b"S" * 16), SessionRefused)
        self.failureResultOf(self.table.confirm(CLIENT, "bob", b"S" * 16), SessionRefused)

    def test_repeatedConfirmSameGrant(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.knock_all()
        first = self.successResultOf(self.table.confirm(CLIENT, "alice", b"S" * 16))
        second = self.successResultOf(self.table.confirm(CLIENT, "alice", b"S" * 16))
        self.assertEqual(first, second)
        self.assertEqual(len(self.granted), 1)

    def test_repeatedConfirmWhileGrantingSameGrant(self) -> None:
        pending: Deferred = Deferred()
        self.grant_result = pending
        self.table.open(CLIENT, "alice", request())
        self.knock_all()
        first = self.table.confirm(CLIENT, "alice", b"S" * 16)
        second = self.table.confirm(CLIENT, "alice", b"S" * 16)
        pending.callback(GrantInfo(41000, 30))
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(len(self.granted), 1)

    def test_resentKnockRequestKeepsSession(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.table.knock(CLIENT, TCP, 1111)
        self.assertIsNone(self.table.open(CLIENT, "alice", request()))
        self.knock_all(ports=PORTS[1:])
        self.successResultOf(self.table.confirm(CLIENT, "alice", b"S" * 16))

    def test_sessionIdConflictRefused(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.assertRaises(
            SessionRefused, self.table.open, CLIENT, "alice", request(ports=(1, 2, 3, 4))
        )

    def test_earlyKnocksCount(self) -> None:
        """
        Knocks of a watched address that the capture delivers before the control socket delivers
        their P1 still count.
        """
        self.table.open(CLIENT, "alice", request(b"A" * 16, ports=(5, 6, 7, 8)))
        self.knock_all()
        self.clock.advance(0.5)
        self.table.open(CLIENT, "alice", request())
        self.successResultOf(self.table.confirm(CLIENT, "alice", b"S" * 16))

    def test_oldKnocksDoNotCount(self) -> None:
        self.table.open(CLIENT, "alice", request(b"A" * 16, ports=(5, 6, 7, 8)))
        self.knock_all()
        self.clock.advance(sessions.DEFAULT_EARLY_WINDOW + 0.1)
        self.table.open(CLIENT, "alice", request())
        self.assertNoResult(self.table.confirm(CLIENT, "alice", b"S" * 16))

    def test_expiresAfterKnockTimeout(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.clock.advance(9.9)
        self.assertEqual(len(self.table), 1)
        self.clock.advance(0.2)
        self.assertEqual(len(self.table), 0)
        self.assertEqual(self.watched[-1], frozenset())
        self.knock_all()
        self.failureResultOf(self.table.confirm(CLIENT, "alice", b"S" * 16), SessionRefused)

    def test_grantForgottenAfterHoldTime(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.knock_all()
        self.successResultOf(self.table.confirm(CLIENT, "alice", b"S" * 16))
        self.clock.advance(30)
        self.assertEqual(len(self.table), 0)

    def test_wrongProtocolOrCountRefused(self) -> None:
        error = self.assertRaises(
            SessionRefused, self.table.open, CLIENT, "alice", request(protocol=UDP)
        )
        self.assertEqual(error.reason, "knock-protocol")
        error = self.assertRaises(
            SessionRefused, self.table.open, CLIENT, "alice", request(ports=(1, 2))
        )
        self.assertEqual(error.reason, "knock-count")

    def test_perSourceLimit(self) -> None:
        table = self.make(max_per_source=2)
        table.open(CLIENT, "alice", request(b"1" * 16))
        table.open(CLIENT, "alice", request(b"2" * 16))
        error = self.assertRaises(SessionRefused, table.open, CLIENT, "alice", request(b"3" * 16))
        self.assertEqual(error.reason, "source-limit")
        table.open(OTHER, "alice", request(b"3" * 16))

    def test_perUserLimit(self) -> None:
        """
        One user with many addresses cannot fill the table: others still get sessions.
        """
        table = self.make(max_per_user=3)
        for n in range(3):
            table.open(ipaddress.ip_address(f"198.18.1.{n}"), "bob", request(bytes([n]) * 16))
        error = self.assertRaises(
            SessionRefused, table.open, ipaddress.ip_address("198.18.1.9"), "bob", request()
        )
        self.assertEqual(error.reason, "user-limit")
        table.open(CLIENT, "alice", request())
        for port in PORTS:  # a completed session still holds its slot until it ends
            table.knock(ipaddress.ip_address("198.18.1.0"), TCP, port)
        self.assertRaises(
            SessionRefused, table.open, ipaddress.ip_address("198.18.1.9"), "bob", request()
        )
        self.clock.advance(11)
        self.assertEqual(len(table), 0)
        table.open(ipaddress.ip_address("198.18.1.8"), "bob", request(b"X" * 16))

    def test_usedSessionFreesItsSlot(self) -> None:
        """
        A session whose grant has had its connection stops counting against its user at once:
        a user may log in more often than the limit within one grant's open time.
        """
        table = self.make(max_per_user=2)
        for n in range(5):
            opened = table.open(CLIENT, "alice", request(bytes([n]) * 16))
            for port in PORTS:
                table.knock(CLIENT, TCP, port)
            self.successResultOf(table.confirm(CLIENT, "alice", bytes([n]) * 16))
            table.used(opened)
            self.assertEqual(len(table), 0)
        pending = table.open(OTHER, "alice", request(b"P" * 16))
        table.used(pending)  # not granted: nothing happens
        self.assertEqual(len(table), 1)
        self.assertEqual(table.pending_count(OTHER), 1)

    def test_totalLimit(self) -> None:
        table = self.make(max_total=2)
        table.open(CLIENT, "alice", request(b"1" * 16))
        table.open(OTHER, "alice", request(b"2" * 16))
        error = self.assertRaises(SessionRefused, table.open, CLIENT6, "bob", request(b"3" * 16))
        self.assertEqual(error.reason, "table-full")
        self.clock.advance(11)
        table.open(CLIENT6, "bob", request(b"3" * 16))

    def test_slowGrantOutlivesKnockTimeout(self) -> None:
        """
        A grant still being opened when KNOCK_TIMEOUT passes is not orphaned: the session waits
        for it and the client gets the port.
        """
        pending: Deferred = Deferred()
        self.grant_result = pending
        self.table.open(CLIENT, "alice", request())
        self.knock_all()
        confirming = self.table.confirm(CLIENT, "alice", b"S" * 16)
        self.clock.advance(20)
        self.assertNoResult(confirming)
        pending.callback(GrantInfo(41000, self.clock.seconds() + 30))
        self.assertEqual(self.successResultOf(confirming).port, 41000)

    def test_failedGrantRefusesSession(self) -> None:
        self.grant_result = fail(RuntimeError("firewall said no"))
        self.table.open(CLIENT, "alice", request())
        self.knock_all()
        failure = self.failureResultOf(
            self.table.confirm(CLIENT, "alice", b"S" * 16), SessionRefused
        )
        self.assertEqual(failure.value.reason, "grant-failed")
        self.assertEqual(len(self.table), 0)
        self.flushLoggedErrors(RuntimeError)

    def test_stopForgetsEverything(self) -> None:
        self.table.open(CLIENT, "alice", request())
        self.table.stop()
        self.assertEqual(len(self.table), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.table.watched, frozenset())

    def test_ipv6(self) -> None:
        self.table.open(CLIENT6, "alice", request())
        self.knock_all(source=CLIENT6)
        self.successResultOf(self.table.confirm(CLIENT6, "alice", b"S" * 16))
