"""
Tests for sig2knock.daemon.forward and sig2knock.daemon.grants: the assigned port admits one connection from
the knocking address, forwards it with flow control, and closes on time.
"""

import ipaddress
import random
from typing import List, Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.firewall import FirewallError
from sig2knock.daemon.forward import GrantForwardFactory
from sig2knock.protocol.addresses import parse_address
from sig2knock.daemon.grants import PortGranter
from sig2knock.daemon.sessions import Session, SessionRefused

CLIENT = ipaddress.ip_address("198.18.0.2")
CLIENT6 = ipaddress.ip_address("2001:db8::2")


def connect(factory: GrantForwardFactory, host: str, version: int = 4) -> StringTransport:
    """
    Build a protocol from ``factory`` as if ``host`` connected, and return its transport.
    """
    address_type = IPv6Address if version == 6 else IPv4Address
    peer = address_type("TCP", host, 50000)
    transport = StringTransport(peerAddress=peer)
    protocol = factory.buildProtocol(peer)
    protocol.makeConnection(transport)
    return transport


class ForwardFactoryTests(SynchronousTestCase):
    """
    The factory's address check and single-connection rule.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.connections: List[str] = []
        self.ends: List[str] = []
        self.factory = GrantForwardFactory(
            "127.0.0.1",
            22,
            CLIENT,
            self.reactor,
            on_connection=lambda: self.connections.append("in"),
            on_end=lambda: self.ends.append("end"),
        )

    def test_grantedAddressForwarded(self) -> None:
        transport = connect(self.factory, "198.18.0.2")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.producerState, "paused")
        ((host, port, _client_factory, _timeout, _bind),) = self.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 22))
        self.assertEqual(self.connections, ["in"])

    def test_mappedAddressIsTheSameClient(self) -> None:
        transport = connect(self.factory, "::ffff:198.18.0.2", version=6)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_otherAddressClosedAndGrantKept(self) -> None:
        intruder = connect(self.factory, "198.18.0.99")
        self.assertTrue(intruder.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.connections, [])
        client = connect(self.factory, "198.18.0.2")
        self.assertFalse(client.disconnecting)
        self.assertEqual(self.factory.refused, 1)

    def test_secondConnectionRefused(self) -> None:
        connect(self.factory, "198.18.0.2")
        second = connect(self.factory, "198.18.0.2")
        self.assertTrue(second.disconnecting)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.connections, ["in"])

    def test_flowControlWiring(self) -> None:
        """
        Once the outgoing connection exists each transport produces for the other, so a slow
        reader pauses the fast side instead of growing a buffer.
        """
        client_transport = connect(self.factory, "198.18.0.2")
        (_, _, client_factory, _, _) = self.reactor.tcpClients[0]
        outgoing = client_factory.buildProtocol(None)
        service_transport = StringTransport()
        outgoing.makeConnection(service_transport)
        self.assertIs(service_transport.producer, client_transport)
        self.assertIs(client_transport.producer, service_transport)
        self.assertEqual(client_transport.producerState, "producing")
        client_transport.protocol = None
        outgoing.dataReceived(b"from the service")
        self.assertEqual(client_transport.value(), b"from the service")

    def test_endReported(self) -> None:
        peer = IPv4Address("TCP", "198.18.0.2", 50000)
        granted = self.factory.buildProtocol(peer)
        granted.makeConnection(StringTransport(peerAddress=peer))
        refused = self.factory.buildProtocol(peer)
        refused.makeConnection(StringTransport(peerAddress=peer))
        refused.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.ends, [], "a refused connection is not the grant's")
        granted.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.ends, ["end"])

    def test_halfCloseLetsTheAnswerBack(self) -> None:
        """
        End of input from the client ends only the service's input: the service's answer still
        comes back, and the connection closes when both directions are done.
        """
        client_transport = HalfClosingTransport(peerAddress=IPv4Address("TCP", "198.18.0.2", 1))
        accepted = self.factory.buildProtocol(client_transport.getPeer())
        accepted.makeConnection(client_transport)
        (_, _, client_factory, _, _) = self.reactor.tcpClients[0]
        outgoing = client_factory.buildProtocol(None)
        service_transport = HalfClosingTransport()
        outgoing.makeConnection(service_transport)
        accepted.dataReceived(b"question")
        accepted.readConnectionLost()
        self.assertTrue(service_transport.write_closed)
        self.assertFalse(client_transport.disconnecting)
        outgoing.writeConnectionLost()
        outgoing.dataReceived(b"answer")
        self.assertEqual(client_transport.value(), b"answer")
        outgoing.readConnectionLost()
        self.assertTrue(client_transport.write_closed)
        self.assertTrue(service_transport.disconnecting)

    def test_normalizeAddress(self) -> None:
        self.assertEqual(parse_address("::ffff:198.18.0.2"), CLIENT)
        self.assertEqual(parse_address("fe80::1%eth0"), ipaddress.ip_address("fe80::1"))
        self.assertIsNone(parse_address("not an address"))


class HalfClosingTransport(StringTransport):
    """
    A string transport that records a half-close.
    """

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class RecordingPort:
    """
    A listening port that records whether it was stopped.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopped = False

    def stopListening(self) -> None:
        self.stopped = True


class GranterReactor(MemoryReactorClock):
    """
    A memory reactor whose ``listenTCP`` refuses the ports in ``busy`` like a real one would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.busy: set = set()
        self.ports: List[RecordingPort] = []

    def listenTCP(self, port, factory, backlog=50, interface=""):  # type: ignore[no-untyped-def]
        if port in self.busy:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        self.tcpServers.append((port, factory, backlog, interface))
        recording = RecordingPort(port)
        self.ports.append(recording)
        return recording


class RecordingFirewall:
    """
    A firewall that records grants and revokes, and can refuse.
    """

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.calls: List[tuple] = []
        self.pending: Optional[Deferred] = None

    def grant(self, source, port, deadline):  # type: ignore[no-untyped-def]
        self.calls.append(("grant", source, port, deadline))
        if self.refuse:
            return fail(FirewallError("nft said no"))
        return self.pending if self.pending is not None else succeed(None)

    def revoke(self, source, port):  # type: ignore[no-untyped-def]
        self.calls.append(("revoke", source, port))
        return succeed(None)


def session(source=CLIENT) -> Session:
    return Session(source, "alice", b"S" * 16, 6, (1, 2, 3, 4))


class PortGranterTests(SynchronousTestCase):
    """
    Grants open a random free port in the range and close it after one connection or on time.
    """

    def setUp(self) -> None:
        self.reactor = GranterReactor()
        self.reactor.advance(1000)
        self.granter = PortGranter(
            self.reactor, "127.0.0.1", 22, (40000, 40009), 30, chooser=random.Random(7)
        )

    def test_grantListensInRange(self) -> None:
        grant = self.successResultOf(self.granter.grant(session()))
        self.assertTrue(40000 <= grant.port <= 40009)
        self.assertEqual(grant.deadline, 1030)
        ((port, factory, _backlog, interface),) = self.reactor.tcpServers
        self.assertEqual((port, interface), (grant.port, "0.0.0.0"))
        self.assertEqual(factory.source, CLIENT)
        self.assertEqual((factory.host, factory.port), ("127.0.0.1", 22))

    def test_ipv6ClientListensOnIPv6(self) -> None:
        self.successResultOf(self.granter.grant(session(CLIENT6)))
        self.assertEqual(self.reactor.tcpServers[0][3], "::")

    def test_busyPortSkipped(self) -> None:
        self.reactor.busy = set(range(40000, 40009))
        grant = self.successResultOf(self.granter.grant(session()))
        self.assertEqual(grant.port, 40009)

    def test_fullRangeRefused(self) -> None:
        self.reactor.busy = set(range(40000, 40010))
        failure = self.failureResultOf(self.granter.grant(session()), SessionRefused)
        self.assertEqual(failure.value.reason, "no-free-port")

    def test_portsNeverShared(self) -> None:
        ports = {self.successResultOf(self.granter.grant(session())).port for _ in range(10)}
        self.assertEqual(len(ports), 10)

    def test_unusedPortClosesAfterOpenTime(self) -> None:
        self.successResultOf(self.granter.grant(session()))
        (listening,) = self.reactor.ports
        self.reactor.advance(29.9)
        self.assertFalse(listening.stopped)
        self.reactor.advance(0.2)
        self.assertTrue(listening.stopped)
        self.assertEqual(self.granter.open, {})

    def test_firstConnectionClosesListener(self) -> None:
        grant = self.successResultOf(self.granter.grant(session()))
        (listening,) = self.reactor.ports
        factory = self.reactor.tcpServers[0][1]
        connect(factory, "198.18.0.99")
        self.assertFalse(listening.stopped, "an intruder must not use the grant up")
        connect(factory, "198.18.0.2")
        self.assertTrue(listening.stopped)
        self.assertNotIn(grant.port, self.granter.open)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_usedGrantReported(self) -> None:
        """
        The grant's one connection is reported with its session (an intruder's is not), so the
        session table can forget the session.
        """
        used: List[Session] = []
        self.granter.on_used = used.append
        knocked = session()
        self.successResultOf(self.granter.grant(knocked))
        factory = self.reactor.tcpServers[0][1]
        connect(factory, "198.18.0.99")
        self.assertEqual(used, [])
        connect(factory, "198.18.0.2")
        self.assertEqual(used, [knocked])

    def test_firewallOpensAndClosesTheGrant(self) -> None:
        firewall = RecordingFirewall()
        self.granter.firewall = firewall
        grant = self.successResultOf(self.granter.grant(session()))
        self.assertEqual(firewall.calls, [("grant", CLIENT, grant.port, 1030)])
        factory = self.reactor.tcpServers[0][1]
        connect(factory, "198.18.0.2")
        self.assertEqual(firewall.calls[-1], ("revoke", CLIENT, grant.port))

    def test_firewallRevokesUnusedGrant(self) -> None:
        firewall = RecordingFirewall()
        self.granter.firewall = firewall
        grant = self.successResultOf(self.granter.grant(session()))
        self.reactor.advance(30)
        self.assertEqual(firewall.calls[-1], ("revoke", CLIENT, grant.port))

    def test_firewallRefusalClosesEverything(self) -> None:
        """
        Fail closed: a grant the firewall refuses refuses the session, and the listener opened
        for it is closed again.
        """
        firewall = RecordingFirewall(refuse=True)
        self.granter.firewall = firewall
        failure = self.failureResultOf(self.granter.grant(session()), SessionRefused)
        self.assertEqual(failure.value.reason, "firewall")
        self.assertIn("nft said no", failure.value.detail)
        (listening,) = self.reactor.ports
        self.assertTrue(listening.stopped)
        self.assertEqual(self.granter.open, {})
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_closedWhileFirewallOpening(self) -> None:
        firewall = RecordingFirewall()
        firewall.pending = Deferred()
        self.granter.firewall = firewall
        opening = self.granter.grant(session())
        closing = self.granter.close_all()
        self.assertNoResult(closing)  # a clean stop waits for the grant being opened
        firewall.pending.callback(None)
        self.successResultOf(closing)
        self.failureResultOf(opening, SessionRefused)
        self.assertEqual(firewall.calls[-1][0], "revoke")

    def test_natModeOpensNoListener(self) -> None:
        """
        FORWARD_MODE = nat: the firewall DNATs the grant, the daemon listens on nothing, and the
        grant is revoked when its time is over.
        """
        firewall = RecordingFirewall()
        self.granter.firewall = firewall
        self.granter.nat = True
        grant = self.successResultOf(self.granter.grant(session()))
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(firewall.calls, [("grant", CLIENT, grant.port, 1030)])
        self.reactor.advance(30)
        self.assertEqual(firewall.calls[-1], ("revoke", CLIENT, grant.port))
        self.assertEqual(self.granter.open, {})

    def test_closeAll(self) -> None:
        self.successResultOf(self.granter.grant(session()))
        self.successResultOf(self.granter.grant(session()))
        self.successResultOf(self.granter.close_all())
        self.assertTrue(all(port.stopped for port in self.reactor.ports))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
