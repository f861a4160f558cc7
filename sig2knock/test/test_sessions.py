"""
Tests for sig2knock.daemon.sessions: the session table, on a Clock, with a fake granter and a
fake capture; and with the real granter on a memory reactor.
"""

import ipaddress
import random
from typing import Any, List, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import sessions
from sig2knock.daemon.grants import PortGranter
from sig2knock.daemon.packets import Knock
from sig2knock.daemon.session import SessionRefused, State
from sig2knock.daemon.catalog import EVERY_USER, HiddenService
from sig2knock.daemon.sessions import SessionTable
from sig2knock.protocol import addresses, wire
from sig2knock.test.common import FakeCapture, FakeGrant, FakeGranter, connect, live_settings


CLIENT = ipaddress.ip_address("198.18.0.2")
OTHER = ipaddress.ip_address("198.18.0.3")
CLIENT6 = ipaddress.ip_address("2001:db8::2")
SERVER = ipaddress.ip_address("198.18.0.1")
PORTS = (1111, 2222, 3333, 4444)
TCP = addresses.PROTO_TCP
UDP = addresses.PROTO_UDP


def request(session_id: bytes = b"S" * 16, ports=PORTS, protocol: int = TCP) -> wire.KnockRequest:
    return wire.KnockRequest(session_id, 0, protocol, tuple(ports))


def tag_of(session_id: bytes) -> bytes:
    """
    The session tag the tests' sessions get: made from their session id.
    """
    return session_id[:8]


def keyed(knock_request: wire.KnockRequest) -> Tuple[wire.KnockRequest, wire.SessionKeys]:
    """
    ``knock_request`` and the keys its P1's HPKE context would have given (stand-ins).
    """
    session_id = knock_request.session_id
    return knock_request, wire.SessionKeys(
        tag_of(session_id), session_id[:12], b"c" * 32, b"g" * 32, b"d" * 16
    )


class SessionTableTests(SynchronousTestCase):
    """
    P1 opens a session, knocks complete it whatever noise surrounds them, P2 gets one grant.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.granter = FakeGranter(self.clock)
        self.granted = self.granter.opened
        self.table = self.make()
        self.watched: List[frozenset] = self.table.capture.watched

    def make(self, **overrides) -> SessionTable:
        return SessionTable(
            self.clock,
            granter=self.granter,
            capture=FakeCapture,
            settings=live_settings(),
            **overrides,
        )

    def knock_all(self, source=CLIENT, ports=PORTS, protocol=TCP) -> None:
        for port in ports:
            self.table.knock(Knock(source, SERVER, protocol, port))

    def test_sequenceThenConfirmGrants(self) -> None:
        opened = self.table.open(CLIENT, "alice", *keyed(request()))
        self.assertIs(opened.state, State.PENDING)
        self.assertEqual(self.watched, [frozenset({CLIENT})])
        self.knock_all()
        self.assertIs(opened.state, State.COMPLETE)
        grant = self.successResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))
        self.assertIs(opened.state, State.GRANTED)
        self.assertIs(opened.grant, grant)
        self.assertEqual(grant.port, 40001)
        self.assertEqual(len(self.granted), 1)
        # The capture is narrowed a little later, so the grant does not wait for it.
        self.assertEqual(self.watched[-1], frozenset({CLIENT}))
        self.clock.advance(sessions.NARROW_DELAY)
        self.assertEqual(self.watched[-1], frozenset())

    def test_doorSecretOnlyWhenAsked(self) -> None:
        """
        The granter gets the session's door secret when its P1 said the client will show it,
        and nothing otherwise.
        """
        self.table.open(CLIENT, "alice", *keyed(request()._replace(door=True)))
        self.table.open(OTHER, "bob", *keyed(request(b"T" * 16)))
        self.knock_all()
        self.knock_all(source=OTHER)
        self.successResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))
        self.successResultOf(self.table.confirm(OTHER, tag_of(b"T" * 16), b"T" * 16))
        self.assertEqual(self.granter.doors, [b"d" * 16, None])

    def test_removedUsersSessionsEnd(self) -> None:
        """
        ``end_users`` (a reload took the users away): their pending and granted sessions end at
        once, the grant is closed, a waiting P2 is refused; other users' sessions go on.
        """
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all()
        granted = self.successResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))
        pending = self.table.open(CLIENT6, "alice", *keyed(request(b"U" * 16)))
        waiting = self.table.confirm(CLIENT6, tag_of(b"U" * 16), b"U" * 16)
        other = self.table.open(OTHER, "bob", *keyed(request(b"T" * 16)))
        self.table.end_users(["alice"])
        self.assertEqual(granted.closed, ["its user was removed"])
        self.assertIs(pending.state, State.REFUSED)
        self.assertEqual(self.failureResultOf(waiting, SessionRefused).value.reason,
                         "user-removed")
        self.assertIs(other.state, State.PENDING)
        self.assertEqual(self.watched[-1], frozenset({OTHER}))
        self.assertEqual(self.table.pending_count(), 1)
        # A copy of an ended session's P1 opens nothing again.
        self.assertRaises(SessionRefused, self.table.open, CLIENT, "alice", *keyed(request()))

    def test_narrowingCoalesced(self) -> None:
        """
        Completions in a burst narrow the capture once; a change before then narrows at once.
        """
        other_ports = (5001, 5002, 5003, 5004)
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.table.open(OTHER, "bob", *keyed(request(b"T" * 16, ports=other_ports)))
        self.table.open(CLIENT6, "carol", *keyed(request(b"U" * 16)))
        changes = len(self.watched)
        self.knock_all()
        self.knock_all(source=OTHER, ports=other_ports)
        self.assertEqual(len(self.watched), changes)
        self.clock.advance(sessions.NARROW_DELAY)
        self.assertEqual(self.watched[-1], frozenset({CLIENT6}))
        self.assertEqual(len(self.watched), changes + 1)
        self.table.open(OTHER, "bob", *keyed(request(b"V" * 16, ports=other_ports)))
        self.knock_all(source=OTHER, ports=other_ports)
        self.table.open(CLIENT, "alice", *keyed(request(b"W" * 16, ports=other_ports)))
        self.assertEqual(self.watched[-1], frozenset({CLIENT, CLIENT6}))
        self.clock.advance(sessions.NARROW_DELAY)
        self.assertEqual(self.watched[-1], frozenset({CLIENT, CLIENT6}))

    def test_confirmBeforeLastKnockWaits(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all(ports=PORTS[:3])
        waiting = self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16)
        self.assertNoResult(waiting)
        self.table.knock(Knock(CLIENT, SERVER, TCP, PORTS[3]))
        self.assertEqual(self.successResultOf(waiting).port, 40001)

    def test_incompleteSequenceGetsNothing(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all(ports=PORTS[:3])
        waiting = self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16)
        self.clock.advance(10)
        self.failureResultOf(waiting, SessionRefused)
        self.assertEqual(self.granted, [])
        self.assertEqual(len(self.table), 0)

    def test_duplicateKnockDoesNotReset(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        for port in (1111, 1111, 2222, 2222, 1111, 3333, 3333, 4444):
            self.table.knock(Knock(CLIENT, SERVER, TCP, port))
        self.successResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))

    def test_noiseAndReorderingDoNotReset(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        noise = [4444, 9, 1111, 3333, 65000, 2222, 1111, 80, 3333, 2222, 4444]
        for port in noise:
            self.table.knock(Knock(CLIENT, SERVER, TCP, port))
        self.successResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))

    def test_outOfOrderAloneDoesNotComplete(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all(ports=reversed(PORTS))
        self.assertNoResult(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))

    def test_knocksFromAnotherAddressDoNotCount(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all(source=OTHER)
        self.assertNoResult(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))

    def test_otherProtocolDoesNotCount(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all(protocol=UDP)
        self.assertNoResult(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))

    def test_confirmFromAnotherAddressRefused(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all()
        self.failureResultOf(self.table.confirm(OTHER, tag_of(b"S" * 16), b"S" * 16), SessionRefused)
        self.failureResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16), SessionRefused)

    def test_repeatedConfirmSameGrant(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all()
        first = self.successResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))
        second = self.successResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))
        self.assertEqual(first, second)
        self.assertEqual(len(self.granted), 1)

    def test_repeatedConfirmWhileGrantingSameGrant(self) -> None:
        pending: Deferred = Deferred()
        self.granter.result = pending
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all()
        first = self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16)
        second = self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16)
        pending.callback(FakeGrant(41000, 30))
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(len(self.granted), 1)

    def test_resentKnockRequestKeepsSession(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.table.knock(Knock(CLIENT, SERVER, TCP, 1111))
        self.assertIsNone(self.table.open(CLIENT, "alice", *keyed(request())))
        self.knock_all(ports=PORTS[1:])
        self.successResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))

    def test_sessionIdConflictRefused(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.assertRaises(
            SessionRefused, self.table.open, CLIENT, "alice", request(ports=(1, 2, 3, 4))
        )

    def test_earlyKnocksCount(self) -> None:
        """
        Knocks of a watched address that the capture delivers before the control socket delivers
        their P1 still count.
        """
        self.table.open(CLIENT, "alice", *keyed(request(b"A" * 16, ports=(5, 6, 7, 8))))
        self.knock_all()
        self.clock.advance(0.5)
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.successResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))

    def test_oldKnocksDoNotCount(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request(b"A" * 16, ports=(5, 6, 7, 8))))
        self.knock_all()
        self.clock.advance(sessions.DEFAULT_EARLY_WINDOW + 0.1)
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.assertNoResult(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))

    def test_expiresAfterKnockTimeout(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.clock.advance(9.9)
        self.assertEqual(len(self.table), 1)
        self.clock.advance(0.2)
        self.assertEqual(len(self.table), 0)
        self.assertEqual(self.watched[-1], frozenset())
        self.knock_all()
        self.failureResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16), SessionRefused)

    def test_grantForgottenAfterHoldTime(self) -> None:
        """
        An unused grant ends at its deadline: the session expires and closes it.
        """
        opened = self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all()
        grant = self.successResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))
        self.clock.advance(29.9)
        self.assertEqual((len(self.table), grant.closed), (1, []))
        self.clock.advance(0.1)
        self.assertEqual(len(self.table), 0)
        self.assertEqual(grant.closed, ["expired"])
        self.assertIs(opened.state, State.EXPIRED)

    def test_perSourceLimit(self) -> None:
        table = self.make(max_per_source=2)
        table.open(CLIENT, "alice", *keyed(request(b"1" * 16)))
        table.open(CLIENT, "alice", *keyed(request(b"2" * 16)))
        error = self.assertRaises(SessionRefused, table.open, CLIENT, "alice", request(b"3" * 16))
        self.assertEqual(error.reason, "source-limit")
        table.open(OTHER, "alice", *keyed(request(b"3" * 16)))

    def test_perUserLimit(self) -> None:
        """
        One user with many addresses cannot fill the table: others still get sessions.
        """
        table = self.make(max_per_user=3, max_sources_per_user=100)
        for n in range(3):
            table.open(ipaddress.ip_address(f"198.18.1.{n}"), "bob", *keyed(request(bytes([n]) * 16)))
        error = self.assertRaises(
            SessionRefused, table.open, ipaddress.ip_address("198.18.1.9"), "bob", request()
        )
        self.assertEqual(error.reason, "user-limit")
        table.open(CLIENT, "alice", *keyed(request()))
        for port in PORTS:  # a completed session still holds its slot until it ends
            table.knock(Knock(ipaddress.ip_address("198.18.1.0"), SERVER, TCP, port))
        self.assertRaises(
            SessionRefused, table.open, ipaddress.ip_address("198.18.1.9"), "bob", request()
        )
        self.clock.advance(11)
        self.assertEqual(len(table), 0)
        table.open(ipaddress.ip_address("198.18.1.8"), "bob", *keyed(request(b"X" * 16)))

    def test_addressesPerUserLimit(self) -> None:
        """
        One user's pending sessions come from at most 3 addresses at once (a fourth is refused,
        more from the same addresses are not): a few key holders with spoofed P1 sources cannot
        make the capture watch more than 16 addresses and so pass every knock-shaped packet.
        """
        addresses = [ipaddress.ip_address(f"198.18.1.{n}") for n in range(4)]
        for n, source in enumerate(addresses[:3]):
            self.table.open(source, "bob", *keyed(request(bytes([n]) * 16)))
        error = self.assertRaises(SessionRefused, self.table.open, addresses[3], "bob",
                                  *keyed(request(b"\x09" * 16)))
        self.assertEqual(error.reason, "user-sources")
        self.table.open(addresses[0], "bob", *keyed(request(b"\x0a" * 16)))
        self.table.open(addresses[3], "alice", *keyed(request(b"\x0b" * 16)))
        self.assertEqual(len(self.watched[-1]), 4)
        for port in PORTS:  # bob's session from the second address completes: not pending
            self.table.knock(Knock(addresses[1], SERVER, TCP, port))
        self.table.open(addresses[3], "bob", *keyed(request(b"\x0c" * 16)))

    def test_usedSessionFreesItsSlot(self) -> None:
        """
        A session whose grant has had its connection stops counting against its user at once:
        a user may log in more often than the limit within one grant's open time.
        """
        table = self.make(max_per_user=2)
        for n in range(5):
            opened = table.open(CLIENT, "alice", *keyed(request(bytes([n]) * 16)))
            for port in PORTS:
                table.knock(Knock(CLIENT, SERVER, TCP, port))
            grant = self.successResultOf(table.confirm(CLIENT, tag_of(bytes([n]) * 16), bytes([n]) * 16))
            grant.used.callback(None)
            self.assertEqual(len(table), 0)
            self.assertIs(opened.state, State.USED)
        # A used grant of another session leaves a pending one alone.
        pending = table.open(OTHER, "alice", *keyed(request(b"P" * 16)))
        table.open(CLIENT, "alice", *keyed(request(b"Q" * 16)))
        self.knock_all()
        grant = self.successResultOf(table.confirm(CLIENT, tag_of(b"Q" * 16), b"Q" * 16))
        self.assertEqual(len(table), 2)
        grant.used.callback(None)
        self.assertEqual(len(table), 1)
        self.assertIs(pending.state, State.PENDING)
        self.assertEqual(table.pending_count(OTHER), 1)

    def test_totalLimit(self) -> None:
        table = self.make(max_total=2)
        table.open(CLIENT, "alice", *keyed(request(b"1" * 16)))
        table.open(OTHER, "alice", *keyed(request(b"2" * 16)))
        error = self.assertRaises(SessionRefused, table.open, CLIENT6, "bob", request(b"3" * 16))
        self.assertEqual(error.reason, "table-full")
        self.clock.advance(11)
        table.open(CLIENT6, "bob", *keyed(request(b"3" * 16)))

    def test_slowGrantOutlivesKnockTimeout(self) -> None:
        """
        A grant still being opened when KNOCK_TIMEOUT passes is not orphaned: the session waits
        for it and the client gets the port.
        """
        pending: Deferred = Deferred()
        self.granter.result = pending
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all()
        confirming = self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16)
        self.clock.advance(20)
        self.assertNoResult(confirming)
        pending.callback(FakeGrant(41000, self.clock.seconds() + 30))
        self.assertEqual(self.successResultOf(confirming).port, 41000)

    def test_failedGrantRefusesSession(self) -> None:
        """
        A grant that fails with an error nobody expected refuses the session as
        ``grant-failed`` and is logged with its traceback, once: the refusal itself is not
        severe, so the refusal log does not say it again at error level.
        """
        self.granter.result = fail(RuntimeError("firewall said no"))
        opened = self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all()
        failure = self.failureResultOf(
            self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16), SessionRefused
        )
        self.assertEqual(failure.value.reason, "grant-failed")
        self.assertFalse(failure.value.severe)
        self.assertEqual(len(self.table), 0)
        self.assertIs(opened.state, State.REFUSED)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_refusedGrantKeepsItsReason(self) -> None:
        """
        A grant the granter refuses (no free port, the firewall not ready or refusing) refuses
        the session with that reason, and is not logged as an error here: the refusal log says
        it once.
        """
        events: List[dict] = []
        self.patch(SessionTable, "log", Logger(observer=events.append))
        for reason in ("no-free-port", "firewall-not-ready", "firewall"):
            with self.subTest(reason=reason):
                self.granter.result = fail(SessionRefused(reason, "detail"))
                session_id = reason.encode().ljust(16, b".")[:16]
                self.table.open(CLIENT, "alice", *keyed(request(session_id)))
                self.knock_all()
                failure = self.failureResultOf(
                    self.table.confirm(CLIENT, tag_of(session_id), session_id), SessionRefused
                )
                self.assertEqual(failure.value.reason, reason)
        self.assertEqual([event for event in events if event.get("log_failure")], [])
        self.assertEqual([e for e in events if e["log_level"].name not in ("info",)], [])

    def test_grantLandingAfterStopIsClosed(self) -> None:
        pending: Deferred = Deferred()
        self.granter.result = pending
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.knock_all()
        self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16)
        self.table.stopService()
        grant = FakeGrant(41000, 30)
        pending.callback(grant)
        self.assertEqual(grant.closed, ["the daemon stopped while it was opened"])

    def test_stopForgetsEverything(self) -> None:
        self.table.open(CLIENT, "alice", *keyed(request()))
        self.table.stopService()
        self.assertEqual(len(self.table), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.table.watched, frozenset())

    def test_ipv6(self) -> None:
        self.table.open(CLIENT6, "alice", *keyed(request()))
        self.knock_all(source=CLIENT6)
        self.successResultOf(self.table.confirm(CLIENT6, tag_of(b"S" * 16), b"S" * 16))


class OpenFirewall:
    """
    Stands for the daemon's ``FirewallService`` with its rules in place: grants and revokes
    succeed and are recorded.
    """

    def __init__(self) -> None:
        self.calls: List[tuple] = []
        self.targets: List[Any] = []

    def not_ready(self) -> None:
        return None

    def grant(self, source, port, deadline, target=None):  # type: ignore[no-untyped-def]
        self.targets.append(target)
        self.calls.append(("grant", source, port))
        return succeed(None)

    def revoke(self, source, port, target=None):  # type: ignore[no-untyped-def]
        self.targets.append(target)
        self.calls.append(("revoke", source, port))
        return succeed(None)


class SessionWithRealGrantTests(SynchronousTestCase):
    """
    The table and the real granter together, on a memory reactor: the session's one deadline
    closes the assigned port at SINGLECONN_PORTOPEN_TIME, and its one connection ends it.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        self.firewall = OpenFirewall()
        settings = live_settings(assign_port_range=(40000, 40009))
        self.granter = PortGranter(self.reactor, settings, self.firewall, random.Random(3))
        self.table = SessionTable(
            self.reactor, granter=self.granter, capture=FakeCapture, settings=settings
        )
        self.session = self.table.open(CLIENT, "alice", *keyed(request()))
        for port in PORTS:
            self.table.knock(Knock(CLIENT, SERVER, TCP, port))
        self.grant = self.successResultOf(self.table.confirm(CLIENT, tag_of(b"S" * 16), b"S" * 16))
        ((port, self.factory, _backlog, _interface),) = self.reactor.tcpServers
        self.assertEqual(port, self.grant.port)

    def test_portClosesAtOpenTime(self) -> None:
        self.reactor.advance(29.9)
        self.assertEqual(self.granter.open_grants, {self.grant.port: self.grant})
        self.assertIs(self.session.state, State.GRANTED)
        self.reactor.advance(0.2)
        self.assertEqual(self.granter.open_grants, {})
        self.assertIs(self.session.state, State.EXPIRED)
        self.assertEqual(self.firewall.calls[-1], ("revoke", CLIENT, self.grant.port))
        self.assertEqual(len(self.table), 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_reloadClosesANatGrantToItsTarget(self) -> None:
        """
        In nat mode a session's grant goes to its service's target, and a reload that takes the
        service away closes it there: the firewall revokes the very entry it granted.
        """
        inner = HiddenService("inner", ipaddress.ip_address("198.19.0.2"), 3389, 12.0,
                              EVERY_USER)
        settings = live_settings(assign_port_range=(40010, 40019), forward_mode="nat")
        granter = PortGranter(self.reactor, settings, self.firewall, random.Random(5))
        table = SessionTable(self.reactor, granter=granter, capture=FakeCapture,
                             settings=settings)
        knock_request, session_keys = keyed(request(b"N" * 16))
        session = table.open(CLIENT, "bob", knock_request, session_keys, service=inner)
        for port in PORTS:
            table.knock(Knock(CLIENT, SERVER, TCP, port))
        grant = self.successResultOf(table.confirm(CLIENT, session_keys.tag, b"N" * 16))
        self.assertEqual(grant.deadline, self.reactor.seconds() + 12)
        table.end_where(lambda ended: "service inner was removed")
        self.assertIs(session.state, State.REFUSED)
        self.assertEqual(self.firewall.calls[-2:],
                         [("grant", CLIENT, grant.port), ("revoke", CLIENT, grant.port)])
        self.assertEqual(self.firewall.targets[-2:], [inner.target, inner.target])

    def test_connectionEndsTheSession(self) -> None:
        connect(self.factory, str(CLIENT))
        self.assertIs(self.session.state, State.USED)
        self.assertEqual(self.granter.open_grants, {})
        self.assertEqual(self.firewall.calls[-1], ("revoke", CLIENT, self.grant.port))
        self.assertEqual(len(self.table), 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [], "no deadline left behind")
