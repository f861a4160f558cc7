"""
Wiring: ``Sig2knockService`` is the ``MultiService`` twistd runs; it composes the control channel,
the knock capture, the sessions, the grants and the firewall from what ``sig2knock.daemon.startup``
loaded and checked.
"""

import errno
import signal
import socket
from typing import Any, Callable, FrozenSet, List, Optional

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sig2knock import __version__
from sig2knock.daemon import netif
from sig2knock.protocol import addresses, cipher
from sig2knock.daemon.capture import KnockCapture
from sig2knock.daemon.settings import ConfigError, firewall_settings, load_config, merge
from sig2knock.daemon.control import ControlProtocol, binding_check, user_rate_limiter
from sig2knock.firewall import IFirewall
from sig2knock.firewall import registry
from sig2knock.daemon.grants import PortGranter
from sig2knock.daemon.packets import Knock
from sig2knock.daemon.ratelimit import RateLimiter
from sig2knock.daemon.refusals import RefusalLog
from sig2knock.daemon.sessions import GrantInfo, Session, SessionRefused, SessionTable
from sig2knock.daemon.startup import Prepared
from sig2knock.daemon.users import UsersError, load_users
from sig2knock.protocol.addresses import IPAddress


# Why a daemon of this process stopped itself (its firewall rules could not be installed), so
# ``sig2knockd`` can end with a failure status after twistd returns.
start_failures: List[str] = []

# How much the control port reads in one reactor turn: about 45 full-size P1s, so the capture is
# read between bursts of control messages.
CONTROL_READ_BYTES = 4096


def listen_control(reactor: Any, port: int, protocol: Any, interface: str) -> Any:
    """
    ``reactor.listenUDP`` for the control port, reading at most ``CONTROL_READ_BYTES`` per reactor
    turn: Twisted's default (256 KiB, thousands of datagrams) would let a burst of control
    messages keep the capture, and so every pending knock, waiting.
    """
    listening = reactor.listenUDP(port, protocol, interface)
    listening.maxThroughput = CONTROL_READ_BYTES
    return listening


class ControlPortError(Exception):
    """
    The control port cannot be opened (in use, or an address this host does not have).
    """


class Sig2knockService(MultiService):
    """
    The daemon: the control channel, the knock capture, the sessions and the grants, wired
    together (data flows one way: capture and control, then sessions, then grants).

    ``open`` opens the capture handle and the control port; ``tap.makeService`` calls it before
    twistd starts anything, so a missing permission or a port in use stops the daemon with one
    line. ``watch_addresses(reactor, interface, on_change)`` builds the services that keep the
    host's and the capture interface's addresses current (a fake in tests).
    """

    log = Logger()

    def __init__(
        self,
        prepared: Prepared,
        reactor: Any,
        open_handle: Optional[Callable[[str], Any]] = None,
        watch_addresses: Callable[..., IService] = netif.AddressWatcher,
        firewall: Optional[IFirewall] = None,
    ) -> None:
        super().__init__()
        self.prepared = prepared
        self.reactor = reactor
        config = prepared.config
        if firewall is None:
            backend, self.firewall_reason = registry.choose(
                config.firewall, config.firewall_policy
            )
            firewall = backend.build(reactor, firewall_settings(config, prepared.interface))
        else:
            self.firewall_reason = "given"
        self.firewall = firewall
        self.firewall_ready = False
        # Set when the firewall rules could not be installed: the daemon stopped for that.
        self.failed: Optional[str] = None
        self.interface = prepared.interface
        self.host_addresses: FrozenSet[IPAddress] = frozenset()
        self._readyCall: Optional[IDelayedCall] = None
        self._control_ports: List[Any] = []
        self._previous_hangup: Any = None
        self.limiter = RateLimiter(reactor)
        self.user_limiter = user_rate_limiter(reactor)
        self.refusals = RefusalLog(reactor)
        knock_protocol = addresses.PROTO_TCP if config.knock_proto == "tcp" else addresses.PROTO_UDP
        capture_options = {} if open_handle is None else {"open_handle": open_handle}
        self.capture = KnockCapture(
            reactor,
            self.interface,
            knock_protocol,
            config.udp_port,
            self._knockSeen,
            **capture_options,
        )
        self.sessions = SessionTable(
            reactor,
            grant=self._grant,
            on_watch_change=self.capture.watch,
            knock_protocol=knock_protocol,
            min_knocks=config.knock_count,
            knock_timeout=config.knock_timeout,
            hold_time=config.singleconn_portopen_time,
        )
        self.granter = PortGranter(
            reactor,
            str(config.forward_to_ip),
            config.forward_to_port,
            config.assign_port_range,
            config.singleconn_portopen_time,
            firewall=firewall,
            nat=config.forward_mode == "nat",
            on_used=self.sessions.used,
        )
        if config.listen_address is not None:
            listen_address = config.listen_address
            self.accepts = binding_check(config.udp_port, lambda: frozenset({listen_address}))
        else:
            self.accepts = binding_check(config.udp_port, lambda: self.host_addresses)
        watch_addresses(reactor, None, self._hostAddressesChanged).setServiceParent(self)
        watch_addresses(reactor, self.interface, self.capture.set_destinations).setServiceParent(
            self
        )

    def control_protocol(self) -> ControlProtocol:
        """
        A control protocol for one listening socket; all of them share the sessions and replay
        cache.
        """
        config = self.prepared.config
        return ControlProtocol(
            self.reactor,
            keys=lambda: self.prepared.users.by_key_id,
            accepts=self.accepts,
            sessions=self.sessions,
            replay_cache=self.prepared.replay_cache,
            max_skew=config.max_clock_skew,
            limiter=self.limiter,
            user_limiter=self.user_limiter,
            refusals=self.refusals,
        )

    def reload(self) -> None:
        """
        Read the configuration and users file again (SIGHUP). A file with an error is refused
        with one log line and the daemon keeps running on what it had; settings bound to open
        sockets, the capture, the firewall or the replay cache wait for a restart (logged).
        """
        running = self.prepared.config
        try:
            loaded = load_config(running.path, self.prepared.interface_override)
            users = load_users(loaded.users_file)
            config, applied, pending = merge(running, loaded)
        except (ConfigError, UsersError) as error:
            self.log.error(
                "reload refused, still running on the previous configuration: {error}",
                error=str(error),
            )
            return
        self.prepared.config = config
        self.prepared.users = users
        self.sessions.min_knocks = config.knock_count
        self.sessions.knock_timeout = config.knock_timeout
        self.sessions.hold_time = config.singleconn_portopen_time
        self.granter.forward_host = str(config.forward_to_ip)
        self.granter.forward_port = config.forward_to_port
        self.granter.open_time = config.singleconn_portopen_time
        self.log.info(
            "reloaded {config_path}: {count} user(s); changed now: {applied}; waiting for a"
            " restart: {pending}",
            config_path=config.path,
            count=len(users),
            applied=", ".join(applied) or "nothing",
            pending=", ".join(pending) or "nothing",
        )

    def _hangup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.reload)

    def open(self) -> None:
        """
        Open the capture handle and bind the control port. Raises ``CaptureError`` or
        ``ControlPortError``; on failure nothing stays open.
        """
        self.capture.start()
        try:
            self._listen()
        except ControlPortError:
            self.capture.stop()
            raise

    def _listen(self) -> None:
        config = self.prepared.config
        port = config.udp_port
        if config.listen_address is not None:
            interfaces = [str(config.listen_address)]
        else:
            interfaces = ["::", "0.0.0.0"]
        for interface in interfaces:
            try:
                listening = listen_control(self.reactor, port, self.control_protocol(), interface)
            except CannotListenError as error:
                reason = error.socketError
                code = getattr(reason, "errno", None)
                if interface == "::" and code in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    continue  # no IPv6 on this host: IPv4 alone
                for opened in self._control_ports:
                    opened.stopListening()
                self._control_ports = []
                text = getattr(reason, "strerror", None) or str(reason)
                if code == errno.EACCES and port < 1024:
                    text += "; a port below 1024 needs root or CAP_NET_BIND_SERVICE"
                elif code == errno.EADDRINUSE:
                    text += " (another program, or another sig2knockd, has it)"
                raise ControlPortError(
                    f"UDP_PORT {port}: cannot listen on {interface}: {text}"
                ) from None
            self._control_ports.append(listening)
            if interface == "::" and not _ipv6_only(listening):
                break  # dual stack: IPv4 arrives as IPv4-mapped IPv6

    def _grant(self, session: Session) -> "Deferred[GrantInfo]":
        if not self.firewall_ready:
            return fail(SessionRefused("firewall-not-ready", "the firewall rules are not in place"))
        return self.granter.grant(session)

    def _knockSeen(self, knock: Knock) -> None:
        self.sessions.knock(knock.source, knock.protocol, knock.port)

    def _hostAddressesChanged(self, addresses: FrozenSet[IPAddress]) -> None:
        self.host_addresses = frozenset(addresses)

    def startService(self) -> None:
        """
        Log the configuration in force (never key material) and start the children.
        """
        config, users = self.prepared.config, self.prepared.users
        self.log.info(
            "sig2knock {version} starting with {config_path}: control port {port}/udp,"
            " forwarding to {forward_ip} port {forward_port}, {count} user(s) from {users_file},"
            " knocks captured on {interface}",
            version=__version__,
            config_path=config.path,
            port=config.udp_port,
            forward_ip=str(config.forward_to_ip),
            forward_port=config.forward_to_port,
            count=len(users),
            users_file=users.path,
            interface=self.interface,
        )
        if not users.entries:
            self.log.warn(
                "{users_file} has no users; add one with: sig2knockd_useradd --users-file"
                " {users_file} NAME",
                users_file=users.path,
            )
        if not registry.BACKENDS[self.firewall.name].gates:
            self.log.warn(
                "no firewall ({reason}): the host's ports stay as they are; the assigned port's"
                " own address check is the only gate",
                reason=self.firewall_reason,
            )
        cipher.load_gcm()
        super().startService()
        self.refusals.start()
        if hasattr(self.reactor, "callFromThread"):
            self._previous_hangup = signal.signal(signal.SIGHUP, self._hangup)
        starting = maybeDeferred(self.firewall.start)
        starting.addCallbacks(self._firewallStarted, self._firewallFailed)

    def _firewallStarted(self, _: object) -> None:
        self.firewall_ready = True
        if self.firewall.name != "none":
            self.log.info(
                "firewall {firewall} ({reason}): rules in place, policy {policy}",
                firewall=self.firewall.name,
                reason=self.firewall_reason,
                policy=self.prepared.config.firewall_policy,
            )
        # Logged from a turn of the reactor, once signal handlers are in place.
        self._readyCall = self.reactor.callLater(0, self._ready)

    def _firewallFailed(self, failure: Failure) -> None:
        self.failed = failure.getErrorMessage()
        start_failures.append(self.failed)
        self.log.critical(
            "cannot install the firewall rules, stopping: {error}", error=self.failed
        )
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    def _ready(self) -> None:
        self._readyCall = None
        self.log.info("sig2knock ready")

    def stopService(self):  # type: ignore[no-untyped-def]
        """
        Stop listening, forget pending sessions, close unused assigned ports (connections already
        forwarded go on), then close the replay cache (compacting it on disk).
        """
        if self._readyCall is not None and self._readyCall.active():
            self._readyCall.cancel()
        if self._previous_hangup is not None:
            signal.signal(signal.SIGHUP, self._previous_hangup)
            self._previous_hangup = None
        self.refusals.stop()
        stopping = [port.stopListening() for port in self._control_ports]
        self._control_ports = []
        self.sessions.stop()
        self.capture.stop()
        closing = self.granter.close_all()
        if self.firewall_ready:
            # Grants go, the base rules stay: the host is left closed.
            closing.addCallback(lambda _: self.firewall.stop())
            closing.addErrback(
                lambda failure: self.log.error(
                    "firewall: cannot remove the grants at stop (the kernel ends each at its"
                    " deadline): {error}",
                    error=failure.getErrorMessage(),
                )
            )
        stopping.append(closing)
        stopping.append(super().stopService())
        stopped = DeferredList([d for d in stopping if d is not None], consumeErrors=True)
        stopped.addBoth(self._closeReplayCache)
        return stopped

    def _closeReplayCache(self, result: object) -> None:
        self.prepared.replay_cache.close()


def _ipv6_only(listening: Any) -> bool:
    try:
        handle = listening.getHandle()
        return bool(handle.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    except (AttributeError, OSError):
        return False
