"""
The assigned port: a one-shot port forwarder that admits only the knocking address.

``GrantForwardFactory`` is a ``twisted.protocols.portforward.ProxyFactory`` that keeps
portforward's wiring (the client side is paused until the outgoing connection exists, then each
transport is the other's producer, so a slow reader stops the fast side instead of filling the
daemon's memory) and adds what a grant needs: connections from any other address are closed at
once and do not use the grant up, exactly one connection is forwarded, and the factory tells its
owner when that connection came (so the listener can stop) and when it ended.
"""

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IReactorTCP
from twisted.logger import Logger
from twisted.protocols import portforward
from zope.interface import implementer

from sig2knock.protocol.addresses import IPAddress, parse_address


class HalfCloseRelay:
    """
    Passes a half-close through the proxy: when one side ends its sending (``shutdown(SHUT_WR)``,
    as ``ssh`` and ``sig2knockc --stdio`` do at end of input), the other side's sending is ended
    too, and answers still in flight keep flowing back. The connection closes once both
    directions have ended. (portforward alone closes everything at the first end of input,
    cutting off the answer.)
    """

    peer: Optional[portforward.Proxy]
    transport: Any
    _readDone = False
    _writeDone = False

    def readConnectionLost(self) -> None:
        """
        This side will send no more: end the peer's sending side once its buffer is written.
        """
        self._readDone = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseWriteConnection()
        else:
            self.transport.loseConnection()
        if self._writeDone:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Our sending side has ended; close once the other direction has ended too.
        """
        self._writeDone = True
        if self._readDone:
            self.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class ForwardClient(HalfCloseRelay, portforward.ProxyClient):
    """
    The connection to the hidden service.
    """

    noisy = False

    def connectionMade(self) -> None:
        """
        Forward without Nagle's delay (an interactive protocol's small writes, such as ssh's,
        would otherwise wait for the previous one's ACK), then as portforward does.
        """
        self.transport.setTcpNoDelay(True)
        super().connectionMade()


class ForwardClientFactory(portforward.ProxyClientFactory):
    """
    The outgoing side of a granted connection; says so in the log when the hidden service cannot
    be reached (the client's connection is then closed).
    """

    protocol = ForwardClient
    noisy = False
    log = Logger()

    def clientConnectionFailed(self, connector: object, reason: object) -> None:
        """
        Log why the forward target refused, then close the client's side.
        """
        self.log.error(
            "cannot reach the forward target {target}: {error}",
            target=f"{connector.host} port {connector.port}",  # type: ignore[attr-defined]
            error=reason.getErrorMessage(),  # type: ignore[attr-defined]
        )
        super().clientConnectionFailed(connector, reason)


@implementer(IHalfCloseableProtocol)
class GrantProxyServer(HalfCloseRelay, portforward.ProxyServer):
    """
    The accepted side of a granted connection: checks the peer, then forwards like portforward.
    """

    factory: "GrantForwardFactory"
    clientProtocolFactory = ForwardClientFactory
    noisy = False

    def connectionMade(self) -> None:
        """
        Forward the connection if it is the grant's one; otherwise close it at once.
        """
        peer = self.transport.getPeer()
        if not self.factory.admit(peer):
            self.transport.abortConnection()
            return
        self.admitted = True
        self.transport.setTcpNoDelay(True)  # see ForwardClient.connectionMade
        super().connectionMade()

    def connectionLost(self, reason: object) -> None:
        """
        Close the other side too, and say so when the grant's one connection ended.
        """
        super().connectionLost(reason)
        if getattr(self, "admitted", False):
            self.factory.connectionEnded()


class GrantForwardFactory(portforward.ProxyFactory):
    """
    Forwards one connection from ``source`` to ``host:port``.

    ``on_connection`` is called once, when the granted connection is admitted (its owner stops
    listening then). ``reactor`` makes the outgoing connection.
    """

    protocol = GrantProxyServer
    noisy = False
    log = Logger()

    def __init__(
        self,
        host: str,
        port: int,
        source: IPAddress,
        reactor: IReactorTCP,
        on_connection: Callable[[], None],
    ) -> None:
        super().__init__(host, port)
        self.source = source
        self.reactor = reactor
        self.on_connection = on_connection
        self.used = False

    def buildProtocol(self, addr: IAddress) -> GrantProxyServer:
        """
        A protocol that makes its outgoing connection through this factory's reactor.
        """
        protocol = super().buildProtocol(addr)
        protocol.reactor = self.reactor
        return protocol

    def admit(self, peer: IAddress) -> bool:
        """
        Whether a connection from ``peer`` is the grant's one; the first from ``source`` is, every
        later one and every one from elsewhere is not (and does not use the grant up).
        """
        address = parse_address(getattr(peer, "host", ""))
        if address != self.source:
            self.log.warn(
                "connection from {peer} to a port granted to {source} refused",
                peer=str(address or peer),
                source=str(self.source),
            )
            return False
        if self.used:
            self.log.warn(
                "second connection from {source} refused: a grant admits one connection",
                source=str(self.source),
            )
            return False
        self.used = True
        self.log.info(
            "connection accepted from {source}, forwarding to {host} port {port}",
            source=str(self.source),
            host=self.host,
            port=self.port,
        )
        self.on_connection()
        return True

    def connectionEnded(self) -> None:
        """
        The granted connection has closed (either side).
        """
        self.log.info("forwarded connection from {source} closed", source=str(self.source))
