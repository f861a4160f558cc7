"""
The UDP control channel: receives P1 and P2, answers a granted P2 with P3, and nothing else.

Checks run cheapest first (``sig2knock.protocol.wire.decode``: size, version, type, binding, key id,
then the rate limits, then the AEAD; then the replay cache), so junk costs a few comparisons and a
flood of valid-looking datagrams costs at most the rate limits' worth of cryptography. Every refusal
is counted and reported with the source address and a fixed reason (``RefusalLog``) and is never
answered.
"""

import collections
import errno
import ipaddress
import socket
from functools import partial
from typing import Any, Callable, Hashable, List, Mapping, Optional, Tuple

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from sig2knock.daemon.ratelimit import RateLimiter
from sig2knock.daemon.refusals import RefusalLog
from sig2knock.daemon.replay import ReplayCache
from sig2knock.daemon.session import SessionRefused
from sig2knock.daemon.sessions import SessionTable
from sig2knock.daemon.waiting import stop_children
from sig2knock.protocol import addresses, wire
from sig2knock.protocol.addresses import IPAddress, parse_address
from sig2knock.protocol.wire import Binding, BindingCheck, MessageRejected, Received, UserKey

EXPECTED_TYPES = (wire.TYPE_KNOCK_REQUEST, wire.TYPE_CONFIRM)
# How much a control socket reads in one reactor turn: about 45 full-size P1s, so the capture is
# read between bursts of control messages (Twisted's default, 256 KiB, is thousands of
# datagrams, which would keep the capture, and so every pending knock, waiting).
CONTROL_READ_BYTES = 4096
# How long a source that sent an authentic message skips the global rate budget, and how many
# such sources are remembered.
TRUST_TIME = 3600.0
MAX_TRUSTED = 4096


def rate_key(source: addresses.IPAddress) -> Hashable:
    """
    What the per-source rate limit counts: an IPv4 address, or an IPv6 /64 (one host's share:
    its addresses are free for it to choose).
    """
    if source.version == 6:
        return ipaddress.ip_network(f"{source}/64", strict=False)
    return source


class ControlProtocol(DatagramProtocol):
    """
    The daemon's side of the control protocol.

    ``keys`` returns the users by key id (a callable, so a reload can swap them); ``accepts``
    says which server bindings (address and control port) this daemon answers for; ``sessions``
    is the session table; ``replay_cache`` remembers accepted nonces; ``limiter`` decides which
    datagrams may cost cryptography; ``refusals`` counts and logs what is refused.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        *,
        keys: Callable[[], Mapping[bytes, UserKey]],
        accepts: BindingCheck,
        sessions: SessionTable,
        replay_cache: ReplayCache,
        max_skew: float,
        limiter: Optional[RateLimiter] = None,
        user_limiter: Optional[RateLimiter] = None,
        refusals: Optional[RefusalLog] = None,
    ) -> None:
        self.clock = clock
        self.keys = keys
        self.accepts = accepts
        self.sessions = sessions
        self.replay_cache = replay_cache
        self.max_skew = max_skew
        self.limiter = limiter if limiter is not None else RateLimiter(clock)
        self.user_limiter = user_limiter if user_limiter is not None else user_rate_limiter(clock)
        self.refusals = refusals if refusals is not None else RefusalLog()
        # Sources that sent an authentic message lately: their datagrams skip the global budget,
        # so a flood from elsewhere carrying a known key id cannot starve returning users.
        self.trusted: "collections.OrderedDict[Hashable, float]" = collections.OrderedDict()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        Handle one datagram from ``addr`` (host, port[, flow, scope]).
        """
        host, port = addr[0], addr[1]
        source = parse_address(host)
        if source is None:
            return
        now = self.clock.seconds()

        def admit() -> bool:
            # Only for datagrams past the cheap checks: junk costs no key computation.
            key = rate_key(source)
            return self.limiter.allow(key, use_global=not self._is_trusted(key, now))

        try:
            received = wire.decode(
                datagram,
                keys=self.keys(),
                bindings=self.accepts,
                expect=EXPECTED_TYPES,
                now=now,
                max_skew=self.max_skew,
                admit=admit,
            )
            # A replay is refused before it can spend anything of its user's allowance.
            self.replay_cache.check(received.nonce, received.message.timestamp_ms, now)
            # Per user, and only once authenticated and fresh (so nobody can spend another's
            # allowance): one key holder with many addresses cannot fill the replay cache.
            if not self.user_limiter.allow(received.user.name):
                raise MessageRejected(
                    wire.REASON_RATE, f"user {received.user.name}: over the per-user rate limit"
                )
            self.replay_cache.remember(received.nonce, received.message.timestamp_ms, now)
            self._trust(rate_key(source), now)
        except MessageRejected as rejection:
            self._refused(source, port, rejection.reason, rejection.detail)
            return
        user = received.user.name
        message = received.message
        if isinstance(message, wire.KnockRequest):
            try:
                self.sessions.open(source, user, message)
            except SessionRefused as refusal:
                self._session_refused(source, port, user, refusal)
            return
        confirming = self.sessions.confirm(source, user, message.session_id)
        confirming.addCallbacks(
            self._sendGrant,
            self._confirmRefused,
            callbackArgs=(received, addr),
            errbackArgs=(source, port, user),
        )

    def _is_trusted(self, key: Hashable, now: float) -> bool:
        since = self.trusted.get(key)
        return since is not None and now - since < TRUST_TIME

    def _trust(self, key: Hashable, now: float) -> None:
        self.trusted[key] = now
        self.trusted.move_to_end(key)
        while len(self.trusted) > MAX_TRUSTED:
            self.trusted.popitem(last=False)

    def _sendGrant(self, grant: Any, received: Received, addr: Tuple[Any, ...]) -> None:
        reply = wire.Grant(
            received.message.session_id,
            wire.now_ms(self.clock.seconds()),
            grant.port,
            wire.now_ms(grant.deadline),
        )
        if self.transport is None:
            return
        self.transport.write(wire.encode(reply, received.user, received.binding), addr)
        self.log.info(
            "P3 sent: port {port} to {user} at {source}",
            port=grant.port,
            user=received.user.name,
            source=str(parse_address(addr[0])),
        )

    def _confirmRefused(self, failure: Failure, source: object, port: int, user: str) -> None:
        failure.trap(SessionRefused)
        self._session_refused(source, port, user, failure.value)

    def _session_refused(
        self, source: object, port: int, user: str, refusal: SessionRefused
    ) -> None:
        self._refused(source, port, refusal.reason, f"user {user}: {refusal.detail}",
                      refusal.severe)

    def _refused(
        self, source: object, port: int, reason: str, detail: str, severe: bool = False
    ) -> None:
        self.refusals.refused(str(source), port, reason, detail, severe)


def user_rate_limiter(clock: IReactorTime) -> RateLimiter:
    """
    The per-user limit on authenticated messages: like the per-source one, with no global cap of
    its own.
    """
    return RateLimiter(clock, global_rate=None)


def binding_check(
    control_port: int, addresses: Callable[[], "frozenset[addresses.IPAddress]"]
) -> Callable[[Binding], bool]:
    """
    Accept messages bound to ``control_port`` at one of ``addresses()`` (read at each message,
    so address changes apply at once).
    """

    def accepts(binding: Binding) -> bool:
        return binding.port == control_port and binding.address in addresses()

    return accepts


class ControlPortError(Exception):
    """
    The control port cannot be opened (in use, or an address this host does not have).
    """


class ControlPorts(MultiService):
    """
    The daemon's control sockets on ``port``: on ``listen_address``, or on every address of
    both families (one dual-stack socket, or one per family where IPv6 sockets take no IPv4).
    ``protocol()`` makes the ``ControlProtocol`` of each socket. ``open`` binds them (before
    twistd starts anything, so a port in use stops the daemon with one line); stopping the
    service closes them. Its children (without ``LISTEN_ADDRESS``, the watcher of the host's
    addresses that the protocols accept bindings to) open, start and stop with it.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        port: int,
        listen_address: Optional[IPAddress],
        protocol: Callable[[], ControlProtocol],
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.port = port
        self.listen_address = listen_address
        self.protocol = protocol
        self.listening: List[Any] = []

    def open(self) -> None:
        """
        Bind the control sockets and open the address watcher's socket. Raises
        ``ControlPortError`` or ``InterfaceError``; on failure none stays open.
        """
        port = self.port
        if self.listen_address is not None:
            interfaces = [str(self.listen_address)]
        else:
            interfaces = ["::", "0.0.0.0"]
        for interface in interfaces:
            try:
                listening = self.reactor.listenUDP(port, self.protocol(), interface)
            except CannotListenError as error:
                reason = error.socketError
                code = getattr(reason, "errno", None)
                if interface == "::" and code in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    continue  # no IPv6 on this host: IPv4 alone
                self._close()
                text = getattr(reason, "strerror", None) or str(reason)
                if code == errno.EACCES and port < 1024:
                    text += "; a port below 1024 needs root or CAP_NET_BIND_SERVICE"
                elif code == errno.EADDRINUSE:
                    text += " (another program, or another sig2knockd, has it)"
                raise ControlPortError(
                    f"UDP_PORT {port}: cannot listen on {interface}: {text}"
                ) from None
            listening.maxThroughput = CONTROL_READ_BYTES
            self.listening.append(listening)
            if interface == "::" and not _ipv6_only(listening):
                break  # dual stack: IPv4 arrives as IPv4-mapped IPv6
        try:
            for watcher in self:
                watcher.open()
        except Exception:
            self.stopService()
            raise

    def _close(self) -> List[Optional[Deferred]]:
        closing = [listening.stopListening() for listening in self.listening]
        self.listening = []
        return closing

    def stopService(self) -> Deferred:
        """
        Close the control sockets, and stop the children.
        """
        Service.stopService(self)
        stopping = stop_children(self, self.log)
        return DeferredList([stopping] + [d for d in self._close() if d is not None])


def control_ports(
    reactor: Any,
    settings: Any,
    sessions: SessionTable,
    replay_cache: ReplayCache,
    watch_addresses: Callable[..., IService],
    refusals: RefusalLog,
) -> ControlPorts:
    """
    The daemon's control channel for the ``LiveSettings`` ``settings``: its sockets on
    ``UDP_PORT`` (at ``LISTEN_ADDRESS``, or at every address), each read by a ``ControlProtocol``
    that takes the users in force at each message and accepts messages bound to the listen
    address, or to an address the host has now (kept by a child service of the control ports,
    ``watch_addresses(reactor, None, None)``), and reports its refusals to ``refusals``.
    """
    config = settings.config
    host = None
    if config.listen_address is not None:
        listen_addresses = frozenset({config.listen_address})
        accepts = binding_check(config.udp_port, lambda: listen_addresses)
    else:
        host = watch_addresses(reactor, None, None)
        accepts = binding_check(config.udp_port, lambda: host.current or frozenset())
    protocol = partial(
        ControlProtocol,
        reactor,
        keys=lambda: settings.users.by_key_id,
        accepts=accepts,
        sessions=sessions,
        replay_cache=replay_cache,
        max_skew=config.max_clock_skew,
        limiter=RateLimiter(reactor),
        user_limiter=user_rate_limiter(reactor),
        refusals=refusals,
    )
    ports = ControlPorts(reactor, config.udp_port, config.listen_address, protocol)
    if host is not None:
        host.setServiceParent(ports)
    return ports


def _ipv6_only(listening: Any) -> bool:
    try:
        handle = listening.getHandle()
        return bool(handle.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    except (AttributeError, OSError):
        return False
