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
from sig2knock.test.common import connect, tcp_transport


CLIENT = ipaddress.ip_address("198.18.0.2")


class ForwardFactoryTests(SynchronousTestCase):
    """
    The factory's address check and single-connection rule.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.connections: List[str] = []
        self.events: List[dict] = []
        self.patch(GrantForwardFactory, "log", Logger(observer=self.events.append))
        self.factory = GrantForwardFactory(
            "127.0.0.1",
            22,
            CLIENT,
            self.reactor,
            on_connection=lambda: self.connections.append("in"),
        )

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
        self.assertEqual(len(self.logged("refused")), 1)

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
