"""
The UDP control channel: receives P1 and P2, answers a granted P2 with P3, and nothing else.

Checks run cheapest first (``sig2knock.protocol.wire.open_request``: size, version, type, then the
rate limits, then HPKE; then the replay cache; a P2 is looked up by its session tag before any
cryptography), so junk costs a few comparisons and a flood of valid-looking datagrams costs at most
the rate limits' worth of cryptography. Every refusal
is counted and reported with the source address and a fixed reason (``RefusalLog``) and is never
answered.
"""

import collections
import errno
import ipaddress
from functools import partial
from typing import Any, Callable, Dict, FrozenSet, Hashable, List, Optional, Tuple

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from sig2knock.daemon import netif
from sig2knock.daemon.admission import check_request
from sig2knock.daemon.ratelimit import RateLimiter
from sig2knock.daemon.refusals import RefusalLog
from sig2knock.daemon.replay import REASON_REPLAY, ReplayCache
from sig2knock.daemon.session import SessionRefused
from sig2knock.daemon.sessions import SessionTable
from sig2knock.daemon.waiting import stop_children
from sig2knock.protocol import addresses, keys, wire
from sig2knock.protocol.cipher import SHA256
from sig2knock.protocol.addresses import IPAddress, parse_address
from sig2knock.protocol.wire import MessageRejected, SessionKeys

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

    ``identity`` is the server's key pair (``ServerIdentity``); ``users`` returns the users in
    force (a callable, so a reload can swap them); ``settings`` is the ``LiveSettings`` whose
    configuration says what a P1 may ask; ``sessions`` is the session table;
    ``replay_cache`` remembers accepted P1s; ``limiter`` decides which datagrams may cost
    cryptography; ``refusals`` counts and logs what is refused.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        *,
        identity: Any,
        users: Callable[[], Any],
        settings: Any,
        sessions: SessionTable,
        replay_cache: ReplayCache,
        max_skew: float,
        limiter: Optional[RateLimiter] = None,
        user_limiter: Optional[RateLimiter] = None,
        refusals: Optional[RefusalLog] = None,
    ) -> None:
        self.clock = clock
        self.identity = identity
        self.users = users
        self.settings = settings
        self.sessions = sessions
        self.replay_cache = replay_cache
        self.max_skew = max_skew
        self.limiter = limiter if limiter is not None else RateLimiter(clock)
        self.user_limiter = user_limiter if user_limiter is not None else user_rate_limiter(clock)
        self.refusals = refusals if refusals is not None else RefusalLog()
        # An unknown user's request is opened against this key, so that it costs what a known
        # user's does: the time of a refusal does not tell which names exist.
        self.decoy = keys.generate().public_key()  # type: ignore[attr-defined]
        # Sources that sent an authentic message lately: their datagrams skip the global budget,
        # so a flood from elsewhere cannot starve returning users.
        self.trusted: "collections.OrderedDict[Hashable, float]" = collections.OrderedDict()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        Handle one datagram from ``addr`` (host, port[, flow, scope]).
        """
        host, port = addr[0], addr[1]
        source = parse_address(host)
        if source is None:
            return
        if wire.message_type(datagram) == wire.TYPE_CONFIRM:
            self._confirm(datagram, source, addr)
        else:
            self._request(datagram, source, port)

    def _request(self, datagram: bytes, source: IPAddress, port: int) -> None:
        now = self.clock.seconds()
        received = None
        try:
            received = wire.open_request(
                datagram,
                identity=self.identity.private,
                users=self.users().public_key,
                decoy=self.decoy,
                now=now,
                max_skew=self.max_skew,
                # Only for datagrams past the cheap checks: junk costs no key computation.
                admit=lambda: self._admit(source, now),
            )
            request = received.request
            # A replay is refused before it can spend anything of its user's allowance.
            self.replay_cache.check(received.keys.replay_id, request.timestamp_ms, now)
            # What the P1 asks, and whether there is room for its session, are checked before
            # it is remembered: a copy refused for its address (a relay's) or for a limit must
            # not make the client's own copy, or its next round, a replay.
            check_request(self.settings.config, source, request)
            self.sessions.check_room(source, received.user, request.session_id)
            # Per user, and only once authenticated and fresh (so nobody can spend another's
            # allowance): one key holder with many addresses cannot fill the replay cache.
            self._limit_user(received.user)
            self.replay_cache.remember(received.keys.replay_id, request.timestamp_ms, now)
            self._trust(rate_key(source), now)
        except SessionRefused as refusal:
            self._session_refused(source, port, received.user, refusal)
            return
        except MessageRejected as rejection:
            if received is not None and rejection.reason == REASON_REPLAY:
                # A copy of a P1 already taken: from another address, the session is relayed.
                self.sessions.resent(source, received.user, received.request.session_id)
            self._refused(source, port, rejection.reason, rejection.detail)
            return
        try:
            self.sessions.open(source, received.user, request, received.keys)
        except SessionRefused as refusal:
            self._session_refused(source, port, received.user, refusal)

    def _confirm(self, datagram: bytes, source: IPAddress, addr: Tuple[Any, ...]) -> None:
        port = addr[1]
        now = self.clock.seconds()
        user = "?"
        try:
            session_keys, confirm, nonce = wire.decode_confirm(
                datagram, find=self.sessions.keys_for, now=now, max_skew=self.max_skew
            )
            session = self.sessions.session_for(session_keys.tag)
            if session is not None:
                user = session.user
            if session is not None and session.source == source:
                # Like a P1: the source's and the user's limits, then the replay cache (a
                # retrying client sends a new P2), keyed by session so that nobody can spend
                # another session's nonces. A copy from elsewhere is the session table's to
                # refuse, before anything is remembered of it.
                if not self._admit(source, now):
                    raise MessageRejected(wire.REASON_RATE, f"user {user}: over the rate limit")
                self._limit_user(user)
                replay_id = SHA256.new(session_keys.tag + nonce).digest()[: wire.REPLAY_ID_SIZE]
                self.replay_cache.check(replay_id, confirm.timestamp_ms, now)
                self.replay_cache.remember(replay_id, confirm.timestamp_ms, now)
        except MessageRejected as rejection:
            self._refused(source, port, rejection.reason, rejection.detail)
            return
        confirming = self.sessions.confirm(source, session_keys.tag, confirm.session_id)
        confirming.addCallbacks(
            self._sendGrant,
            self._confirmRefused,
            callbackArgs=(session_keys, confirm.session_id, user, source, addr),
            errbackArgs=(source, port, user),
        )

    def _admit(self, source: IPAddress, now: float) -> bool:
        """
        Whether ``source``'s datagram may cost cryptography: its share, and the global budget
        unless it sent an authentic message lately.
        """
        key = rate_key(source)
        return self.limiter.allow(key, use_global=not self._is_trusted(key, now))

    def _limit_user(self, user: str) -> None:
        if not self.user_limiter.allow(user):
            raise MessageRejected(wire.REASON_RATE, f"user {user}: over the per-user rate limit")

    def _is_trusted(self, key: Hashable, now: float) -> bool:
        since = self.trusted.get(key)
        return since is not None and now - since < TRUST_TIME

    def _trust(self, key: Hashable, now: float) -> None:
        self.trusted[key] = now
        self.trusted.move_to_end(key)
        while len(self.trusted) > MAX_TRUSTED:
            self.trusted.popitem(last=False)

    def _sendGrant(
        self,
        grant: Any,
        session_keys: SessionKeys,
        session_id: bytes,
        user: str,
        source: IPAddress,
        addr: Tuple[Any, ...],
    ) -> None:
        reply = wire.Grant(
            session_id,
            wire.now_ms(self.clock.seconds()),
            grant.port,
            wire.now_ms(grant.deadline),
            source,
            grant.door_required,
        )
        if self.transport is None:
            return
        self.transport.write(wire.encode_grant(reply, session_keys), addr)
        self.log.info(
            "P3 sent: port {port} to {user} at {source}",
            port=grant.port,
            user=user,
            source=str(source),
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
