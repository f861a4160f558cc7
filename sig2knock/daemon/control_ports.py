"""
The daemon's control sockets (``ControlPorts``): one on ``LISTEN_ADDRESS``, or one on each
address of the host, following the addresses as they come and go; each read by a
``ControlProtocol`` (``control``).
"""

import errno
from functools import partial
from typing import Any, Callable, Dict, FrozenSet, List, Optional

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from sig2knock.daemon import netif
from sig2knock.daemon.control import ControlProtocol, user_rate_limiter
from sig2knock.daemon.ratelimit import RateLimiter
from sig2knock.daemon.refusals import RefusalLog
from sig2knock.daemon.replay import ReplayCache
from sig2knock.daemon.sessions import SessionTable
from sig2knock.daemon.waiting import stop_children
from sig2knock.protocol.addresses import IPAddress

# How much a control socket reads in one reactor turn: about 45 full-size P1s, so the capture is
# read between bursts of control messages (Twisted's default, 256 KiB, is thousands of
# datagrams, which would keep the capture, and so every pending knock, waiting).
CONTROL_READ_BYTES = 4096

class ControlPortError(Exception):
    """
    The control port cannot be opened (in use, or an address this host does not have).
    """


class ControlPorts(MultiService):
    """
    The daemon's control sockets on ``port``: on ``listen_address``, or one on each address of
    the host (IPv6 link-local ones aside), so that every answer leaves from the address its
    P1 was sent to (a socket bound to every address answers from the kernel's choice, which a
    client that knocked on a second address of the server does not take). ``protocol()`` makes
    the ``ControlProtocol`` of each socket. ``open`` binds them (before twistd starts anything,
    so a port in use stops the daemon with one line); afterwards the watcher of the host's
    addresses (a child, made by ``watch_addresses(reactor, None, on_change)``) binds the
    addresses that come and closes those that go. Stopping the service closes them all.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        port: int,
        listen_address: Optional[IPAddress],
        protocol: Callable[[], ControlProtocol],
        watch_addresses: Optional[Callable[..., Any]] = None,
        read_addresses: Callable[[Optional[str]], FrozenSet[IPAddress]] = netif.addresses,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.port = port
        self.listen_address = listen_address
        self.protocol = protocol
        self._read_addresses = read_addresses
        self.listening: Dict[str, Any] = {}  # address (text) -> its listening port
        self._opened = False
        if listen_address is None and watch_addresses is not None:
            watch_addresses(reactor, None, self._addresses_changed).setServiceParent(self)

    def open(self) -> None:
        """
        Bind the control sockets and open the address watcher's socket. Raises
        ``ControlPortError`` or ``InterfaceError``; on failure none stays open.
        """
        if self.listen_address is not None:
            wanted = [str(self.listen_address)]
        else:
            wanted = bindable(self._read_addresses(None))
        try:
            for address in wanted:
                self._bind(address)
            for watcher in self:
                watcher.open()
        except Exception:
            self._close()
            raise
        self._opened = True

    def _bind(self, address: str) -> None:
        try:
            listening = self.reactor.listenUDP(self.port, self.protocol(), address)
        except CannotListenError as error:
            reason = error.socketError
            code = getattr(reason, "errno", None)
            text = getattr(reason, "strerror", None) or str(reason)
            if code == errno.EACCES and self.port < 1024:
                text += "; a port below 1024 needs root or CAP_NET_BIND_SERVICE"
            elif code == errno.EADDRINUSE:
                text += " (another program, or another sig2knockd, has it)"
            raise ControlPortError(
                f"UDP_PORT {self.port}: cannot listen on {address}: {text}"
            ) from None
        listening.maxThroughput = CONTROL_READ_BYTES
        self.listening[address] = listening

    def _addresses_changed(self, current: FrozenSet[IPAddress]) -> None:
        if not self._opened:
            return  # nothing bound yet: ``open`` binds what there is
        wanted = set(bindable(current))
        for address in sorted(set(self.listening) - wanted):
            self.listening.pop(address).stopListening()
            self.log.info("control port {port}/udp closed on {address} (address gone)",
                          port=self.port, address=address)
        for address in sorted(wanted - set(self.listening)):
            try:
                self._bind(address)
            except ControlPortError as error:
                self.log.error("{error}", error=str(error))
                continue
            self.log.info("control port {port}/udp open on {address}", port=self.port,
                          address=address)

    def _close(self) -> List[Optional[Deferred]]:
        closing = [listening.stopListening() for listening in self.listening.values()]
        self.listening = {}
        return closing

    def stopService(self) -> Deferred:
        """
        Close the control sockets, and stop the children.
        """
        Service.stopService(self)
        stopping = stop_children(self, self.log)
        return DeferredList([stopping] + [d for d in self._close() if d is not None])


def bindable(found: FrozenSet[IPAddress]) -> List[str]:
    """
    The addresses of ``found`` a control socket is bound to: all but IPv6 link-local ones (they
    need a scope, and a client reaches the server by another address anyway).
    """
    return sorted(
        str(address)
        for address in found
        if not (address.version == 6 and address.is_link_local)
    )


def control_ports(
    reactor: Any,
    settings: Any,
    identity: Any,
    sessions: SessionTable,
    replay_cache: ReplayCache,
    refusals: RefusalLog,
    watch_addresses: Optional[Callable[..., Any]] = None,
) -> ControlPorts:
    """
    The daemon's control channel for the ``LiveSettings`` ``settings`` and the server's
    ``identity``: its sockets on ``UDP_PORT`` (at ``LISTEN_ADDRESS``, or at every address, as
    ``watch_addresses`` finds them), each read by a ``ControlProtocol`` that takes the users in
    force at each message and reports its refusals to ``refusals``.
    """
    config = settings.config
    protocol = partial(
        ControlProtocol,
        reactor,
        identity=identity,
        users=lambda: settings.users,
        settings=settings,
        sessions=sessions,
        replay_cache=replay_cache,
        max_skew=config.max_clock_skew,
        limiter=RateLimiter(reactor),
        user_limiter=user_rate_limiter(reactor),
        refusals=refusals,
    )
    return ControlPorts(
        reactor, config.udp_port, config.listen_address, protocol, watch_addresses
    )
