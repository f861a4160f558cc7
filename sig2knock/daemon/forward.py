"""
The assigned port: a one-shot port forwarder that admits only the knocking address.

``GrantForwardFactory`` is a ``twisted.protocols.portforward.ProxyFactory`` that keeps
portforward's wiring (the client side is paused until the outgoing connection exists, then each
transport is the other's producer, so a slow reader stops the fast side instead of filling the
daemon's memory) and adds what a grant needs: connections from any other address are closed at
once and do not use the grant up, exactly one connection is forwarded, and the factory tells its
owner when that connection came (so the listener can stop) and when it ended.

A grant whose client said it would connect itself (``sig2knockc --stdio``) also has a door
secret, which only the sender of the session's P1 can know: the connection is forwarded only once
its first ``DOOR_SIZE`` bytes are that secret. Someone who re-sent the client's knock from their
own address holds the grant but not the secret; their connection is closed and the grant with it.
"""

import hmac
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IReactorTCP
from twisted.logger import Logger
from twisted.protocols import portforward
from zope.interface import implementer

from sig2knock.daemon.refusals import RefusalLog
from sig2knock.protocol.addresses import IPAddress, parse_address
from sig2knock.protocol.wire import DOOR_SIZE

# How long an admitted connection has to show the door secret.
DOOR_TIMEOUT = 10.0


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
        # What the client sent behind the door secret, before this connection existed.
        early, self.peer.early = self.peer.early, b""
        if early:
            self.transport.write(early)


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
        Log why the forward target refused, then reset the client's side: a reset, not an
        orderly close, so that the client can tell it from a session that ended
        (``sig2knockc --stdio`` then says the hidden service is down).
        """
        self.log.error(
            "cannot reach the forward target {target}: {error}",
            target=f"{connector.host} port {connector.port}",  # type: ignore[attr-defined]
            error=reason.getErrorMessage(),  # type: ignore[attr-defined]
        )
        self.server.transport.abortConnection()


@implementer(IHalfCloseableProtocol)
class GrantProxyServer(HalfCloseRelay, portforward.ProxyServer):
    """
    The accepted side of a granted connection: checks the peer, then forwards like portforward.
    """

    factory: "GrantForwardFactory"
    clientProtocolFactory = ForwardClientFactory
    noisy = False
    early = b""  # bytes received behind the door secret, for the hidden service
    _door_received: Optional[bytes] = None  # while waiting for the door secret
    _door_timer: Any = None

    def connectionMade(self) -> None:
        """
        Forward the connection if it is the grant's one (once it has shown the door secret,
        when the grant has one); otherwise close it at once.
        """
        peer = self.transport.getPeer()
        if not self.factory.admit(peer):
            self.transport.abortConnection()
            return
        self.admitted = True
        self.transport.setTcpNoDelay(True)  # see ForwardClient.connectionMade
        if self.factory.door is None:
            super().connectionMade()
            return
        self._door_received = b""
        self._door_timer = self.reactor.callLater(
            DOOR_TIMEOUT, self._refuse, f"no door secret within {DOOR_TIMEOUT:g} s"
        )

    def dataReceived(self, data: bytes) -> None:
        """
        Forward ``data``; before the door secret has been shown, collect and check it first.
        """
        if self._door_received is None:
            super().dataReceived(data)
            return
        received = self._door_received + data
        if len(received) < DOOR_SIZE:
            self._door_received = received
            return
        self._door_received = None
        self._door_timer.cancel()
        if not hmac.compare_digest(received[:DOOR_SIZE], self.factory.door):
            self._refuse("a wrong door secret")
            return
        self.early = received[DOOR_SIZE:]
        super().connectionMade()  # now connect to the hidden service

    def _refuse(self, why: str) -> None:
        self._door_received = None
        self.factory.door_refused(why)
        self.transport.abortConnection()

    def connectionLost(self, reason: object) -> None:
        """
        Close the other side too, and say so when the grant's one connection ended.
        """
        if self._door_timer is not None and self._door_timer.active():
            self._door_timer.cancel()
        super().connectionLost(reason)
        if getattr(self, "admitted", False):
            self.factory.connectionEnded()


class GrantForwardFactory(portforward.ProxyFactory):
    """
    Forwards one connection from ``source`` to ``host:port``.

    ``on_connection`` is called once, when the granted connection is admitted (its owner stops
    listening then). ``reactor`` makes the outgoing connection. With ``door``, the connection must
    show that secret first; ``granted_port`` names the grant in the log. Connections refused
    (another address, a second one) go to ``refusals`` (a ``RefusalLog``), which bounds how many
    are logged one by one.
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
        door: Optional[bytes] = None,
        granted_port: Optional[int] = None,
        refusals: Optional[RefusalLog] = None,
    ) -> None:
        super().__init__(host, port)
        self.refusals = refusals if refusals is not None else RefusalLog()
        self.source = source
        self.reactor = reactor
        self.on_connection = on_connection
        self.door = door
        self.granted_port = granted_port
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
        peer_port = int(getattr(peer, "port", 0))
        if address != self.source:
            self.refusals.refused(
                str(address or peer), peer_port, "not-granted",
                f"port {self.granted_port} is granted to {self.source}", what="connection",
            )
            return False
        if self.used:
            self.refusals.refused(
                str(address), peer_port, "second-connection",
                f"port {self.granted_port}: a grant admits one connection", what="connection",
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

    def door_refused(self, why: str) -> None:
        """
        The granted connection did not show the door secret: it is closed, and the grant was used
        up by it (a relay that took this grant gets nothing, and no second try).
        """
        self.log.warn(
            "connection from {source} to port {port} closed: {why} (its client said it would"
            " show the session's door secret: the knock was probably relayed; the grant is used"
            " up)",
            source=str(self.source),
            port=self.granted_port,
            why=why,
        )

    def connectionEnded(self) -> None:
        """
        The granted connection has closed (either side).
        """
        self.log.info("forwarded connection from {source} closed", source=str(self.source))
