"""
Tests for sig2knock.daemon.forward: the assigned port admits one connection from the knocking
address and forwards it with flow control and half-closes.
"""

import ipaddress
from typing import List

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.forward import GrantForwardFactory
from sig2knock.daemon.refusals import RefusalLog
from sig2knock.test.common import connect, tcp_transport


CLIENT = ipaddress.ip_address("198.18.0.2")


class FactoryTestCase(SynchronousTestCase):
    """
    A grant's factory for 127.0.0.1 port 22 on a memory reactor, its log and its admissions.
    """

    door = None

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.connections: List[str] = []
        self.events: List[dict] = []
        self.patch(GrantForwardFactory, "log", Logger(observer=self.events.append))
        self.patch(RefusalLog, "log", Logger(observer=self.events.append))
        self.factory = GrantForwardFactory(
            "127.0.0.1",
            22,
            CLIENT,
            self.reactor,
            on_connection=lambda: self.connections.append("in"),
            door=self.door,
            granted_port=40001,
        )


class ForwardFactoryTests(FactoryTestCase):
    """
    The factory's address check and single-connection rule.
    """

    def logged(self, text: str) -> List[dict]:
        return [event for event in self.events if text in event["log_format"]]

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
        (refused,) = self.logged("refused")
        self.assertEqual((refused["what"], refused["source"], refused["reason"]),
                         ("connection", "198.18.0.99", "not-granted"))
        self.assertEqual(self.factory.refusals.totals["not-granted"], 1)

    def test_connectionFloodIsBounded(self) -> None:
        """
        10,000 connections from elsewhere to a granted port: each is refused and counted, but
        only a few are logged one by one (the refusal log's quotas), not 10,000 lines.
        """
        for number in range(10000):
            connect(self.factory, f"198.18.{1 + number % 50}.{1 + number % 200}")
        self.assertEqual(self.factory.refusals.totals["not-granted"], 10000)
        self.assertLessEqual(len(self.logged("refused")), 20)
        self.assertFalse(connect(self.factory, "198.18.0.2").disconnecting, "the grant is kept")

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
        service_transport = tcp_transport()
        outgoing.makeConnection(service_transport)
        self.assertIs(service_transport.producer, client_transport)
        self.assertIs(client_transport.producer, service_transport)
        self.assertEqual(client_transport.producerState, "producing")
        client_transport.protocol = None
        outgoing.dataReceived(b"from the service")
        self.assertEqual(client_transport.value(), b"from the service")
        # Neither side waits on Nagle: an ssh login's small writes go out at once.
        self.assertTrue(client_transport.nodelay)
        self.assertTrue(service_transport.nodelay)

    def test_unreachableServiceResetsTheClient(self) -> None:
        """
        When the hidden service cannot be reached, the client's connection is reset (not
        closed in order), so ``sig2knockc --stdio`` can tell the user; the log says why.
        """
        transport = connect(self.factory, "198.18.0.2")
        (_, _, client_factory, _, _) = self.reactor.tcpClients[0]
        self.patch(type(client_factory), "log", Logger(observer=self.events.append))
        connector = type("Connector", (), {"host": "127.0.0.1", "port": 22})()
        client_factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.assertTrue(transport.disconnected, "aborted, not closed in order")
        self.assertEqual(len(self.logged("cannot reach the forward target")), 1)

    def test_endReported(self) -> None:
        peer = IPv4Address("TCP", "198.18.0.2", 50000)
        granted = self.factory.buildProtocol(peer)
        granted.makeConnection(tcp_transport(peerAddress=peer))
        refused = self.factory.buildProtocol(peer)
        refused.makeConnection(tcp_transport(peerAddress=peer))
        refused.connectionLost(Failure(ConnectionDone()))
        ended = "forwarded connection from {source} closed"
        self.assertEqual(self.logged(ended), [], "a refused connection is not the grant's")
        granted.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.logged(ended)), 1)

    def test_halfCloseLetsTheAnswerBack(self) -> None:
        """
        End of input from the client ends only the service's input: the service's answer still
        comes back, and the connection closes when both directions are done.
        """
        client_transport = tcp_transport(peerAddress=IPv4Address("TCP", "198.18.0.2", 1))
        accepted = self.factory.buildProtocol(client_transport.getPeer())
        accepted.makeConnection(client_transport)
        (_, _, client_factory, _, _) = self.reactor.tcpClients[0]
        outgoing = client_factory.buildProtocol(None)
        service_transport = tcp_transport()
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


DOOR = bytes(range(100, 116))


class DoorTests(FactoryTestCase):
    """
    A grant with a door secret (its client said it would connect itself, ``--stdio``): the
    connection reaches the hidden service only after its first bytes were that secret. A relay
    that took the grant does not know it: its connection is closed, and the grant is used up.
    """

    door = DOOR

    def setUp(self) -> None:
        super().setUp()
        self.transport = tcp_transport(peerAddress=IPv4Address("TCP", "198.18.0.2", 50000))
        self.accepted = self.factory.buildProtocol(self.transport.getPeer())
        self.accepted.makeConnection(self.transport)

    def refusals(self) -> List[str]:
        return [event["why"] for event in self.events if "door" in event["log_format"]]

    def service(self):  # type: ignore[no-untyped-def]
        """The connection to the hidden service, made; its transport."""
        ((host, port, client_factory, _, _),) = self.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 22))
        outgoing = client_factory.buildProtocol(None)
        service_transport = tcp_transport()
        outgoing.makeConnection(service_transport)
        return service_transport

    def test_nothingForwardedBeforeTheDoor(self) -> None:
        self.assertEqual(self.connections, ["in"], "the grant's one connection came")
        self.assertEqual(self.reactor.tcpClients, [])
        self.accepted.dataReceived(DOOR[:5])
        self.accepted.dataReceived(DOOR[5:15])
        self.assertEqual(self.reactor.tcpClients, [], "15 of 16 bytes open nothing")
        self.assertFalse(self.transport.disconnecting)

    def test_doorThenForwarded(self) -> None:
        """The secret, in pieces, then the client's first bytes reach the service, in order."""
        self.accepted.dataReceived(DOOR[:7])
        self.accepted.dataReceived(DOOR[7:] + b"SSH-2.0-")
        self.assertEqual(self.transport.producerState, "paused")
        service = self.service()
        self.accepted.dataReceived(b"OpenSSH\r\n")
        self.assertEqual(service.value(), b"SSH-2.0-OpenSSH\r\n")
        self.assertEqual(self.refusals(), [])
        self.reactor.advance(60)  # no timer left to close it
        self.assertFalse(self.transport.disconnecting)

    def test_wrongDoorClosedAndGrantUsedUp(self) -> None:
        self.accepted.dataReceived(b"relayed-by-the-router")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.refusals(), ["a wrong door secret"])
        second = connect(self.factory, "198.18.0.2")
        self.assertTrue(second.disconnecting, "a grant admits one connection, door or not")
        self.assertEqual(self.reactor.tcpClients, [])

    def test_oneWrongByte(self) -> None:
        self.accepted.dataReceived(DOOR[:-1] + bytes([DOOR[-1] ^ 1]) + b"SSH-2.0-")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_noDoorInTime(self) -> None:
        self.accepted.dataReceived(DOOR[:3])
        self.reactor.advance(9.9)
        self.assertFalse(self.transport.disconnecting)
        self.reactor.advance(0.2)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.refusals(), ["no door secret within 10 s"])
        self.assertEqual(self.reactor.tcpClients, [])

    def test_lostBeforeTheDoorLeavesNoTimer(self) -> None:
        self.accepted.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_withoutDoorTheFirstBytesAreTheService(self) -> None:
        factory = GrantForwardFactory("127.0.0.1", 22, CLIENT, self.reactor, lambda: None)
        transport = connect(factory, "198.18.0.2")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertFalse(transport.disconnecting)
