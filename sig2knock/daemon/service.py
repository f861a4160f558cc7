"""
Wiring: ``Sig2knockService`` is the ``MultiService`` twistd runs. It builds the daemon's parts
from what ``sig2knock.daemon.startup`` loaded and checked and makes each a child service, so that
they start in the order of the data path and stop in the reverse order; it owns nothing else
but the reload (SIGHUP), which replaces the settings in force in one place.
"""

import signal
from functools import partial
from typing import Any, Callable, Optional

from twisted.application.service import IService, MultiService, Service
from twisted.logger import Logger

from sig2knock import __version__
from sig2knock.daemon import netif
from sig2knock.daemon.capture import KnockCapture
from sig2knock.daemon.clock_watch import ClockWatch
from sig2knock.daemon.control_ports import control_ports
from sig2knock.daemon.firewall_service import FirewallService
from sig2knock.daemon.grants import PortGranter
from sig2knock.daemon.refusals import RefusalLog, RefusalSummary
from sig2knock.daemon.reload import LiveSettings
from sig2knock.daemon.sessions import SessionTable
from sig2knock.daemon.settings import firewall_settings
from sig2knock.daemon.startup import Prepared
from sig2knock.daemon.status import (
    StatusFactory,
    StatusService,
    socket_path,
    status_document,
    with_kernel_view,
)
from sig2knock.daemon.waiting import stop_children
from sig2knock.firewall import IFirewall, IWallClockGrants, registry
from sig2knock.protocol import cipher
from sig2knock.protocol.addresses import PROTOCOLS_BY_NAME


class Sig2knockService(MultiService):
    """
    The daemon. Its children, in the order they start (they stop in reverse): the replay cache
    (closed last), the firewall (with a ``ClockWatch`` when its grants end at wall-clock times:
    iptables), the granter, the knock capture (with the watcher of its
    interface's addresses), the session table, the control ports, the live view
    (``sig2knockd --status``) and the refusal summary.

    ``open`` opens the capture handle (and its address watcher's netlink socket) and the control
    ports;
    ``tap.makeService`` calls it before twistd starts anything, so a missing permission or a port
    in use stops the daemon with one line. ``watch_addresses(reactor, interface, on_change)``
    builds the capture's address watcher, and ``open_handle`` opens the capture (fakes in tests);
    ``firewall`` replaces the backend that ``FIREWALL`` names.
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
        self.settings = LiveSettings(config, prepared.users)
        prepared.replay_cache.setServiceParent(self)
        if firewall is None:
            backend, reason = registry.choose(config.firewall, config.firewall_policy)
            firewall = backend.build(reactor, firewall_settings(config, prepared.interface))
        else:
            backend, reason = registry.BACKENDS[firewall.name], "given"
        self.firewall = FirewallService(reactor, backend, firewall, reason, config.firewall_policy)
        refusals = RefusalLog()
        self.granter = PortGranter(reactor, self.settings, self.firewall, refusals=refusals)
        capture_options = {} if open_handle is None else {"open_handle": open_handle}
        self.sessions = SessionTable(
            reactor,
            granter=self.granter,
            settings=self.settings,
            capture=partial(
                KnockCapture,
                reactor,
                prepared.interface,
                PROTOCOLS_BY_NAME[config.knock_proto],
                config.udp_port,
                watch_addresses=watch_addresses,
                **capture_options,
            ),
        )
        self.control = control_ports(
            reactor,
            self.settings,
            prepared.identity,
            self.sessions,
            prepared.replay_cache,
            refusals,
            watch_addresses,
        )
        # Grants that end at wall-clock times are moved back when the clock steps back.
        clock_watch = (
            [ClockWatch(reactor, self.firewall.clock_stepped_back)]
            if IWallClockGrants.providedBy(firewall)
            else []
        )
        live_view = StatusService(
            reactor,
            socket_path(config.state_dir),
            StatusFactory(
                lambda: with_kernel_view(
                    status_document(self.sessions, self.settings.config, reactor.seconds()),
                    self.firewall,
                )
            ),
        )
        for part in (
            self.firewall,
            *clock_watch,
            self.granter,
            self.sessions.capture,
            self.sessions,
            self.control,
            live_view,
            RefusalSummary(refusals, reactor),
        ):
            part.setServiceParent(self)
        self._previous_hangup: Any = None
        self._saying_ready: Any = None

    def open(self) -> None:
        """
        Open the capture handle and bind the control ports (each with its address watcher's
        netlink socket). Raises ``CaptureError``, ``ControlPortError`` or ``InterfaceError``; on
        failure nothing stays open.
        """
        capture = self.sessions.capture
        capture.open()
        try:
            self.control.open()
        except Exception:
            capture.stopService()
            raise

    def reload(self) -> None:
        """
        Read the configuration and the users file again (SIGHUP): ``LiveSettings.reload``;
        then end the sessions of the users it took away, and those of services removed,
        pointed elsewhere or closed to their user (``Catalog.withdrawn``).
        """
        withdrawn = self.settings.reload(self.prepared.interface_override)
        if withdrawn:
            self.sessions.end_users(withdrawn)
        catalog = self.settings.config.catalog
        self.sessions.end_where(
            lambda session: None
            if session.service is None
            else catalog.withdrawn(session.service, session.user)
        )

    def _hangup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.reload)

    def startService(self) -> None:
        """
        Log the configuration in force (never key material), start the children, and say
        "ready" once the firewall's rules are in place.
        """
        config, users = self.settings.config, self.settings.users
        self.log.info(
            "sig2knock {version} starting with {config_path}: control port {port}/udp,"
            " forwarding to {forward_ip} port {forward_port} ({services} service(s)),"
            " {count} user(s) from {users_file}, knocks captured on {interface}, identity"
            " {identity}",
            version=__version__,
            identity=self.prepared.identity.fingerprint,
            config_path=config.path,
            port=config.udp_port,
            forward_ip=str(config.forward_to_ip),
            forward_port=config.forward_to_port,
            services=len(config.catalog.services),
            count=len(users),
            users_file=users.path,
            interface=self.prepared.interface,
        )
        if not users.entries:
            self.log.warn(
                "{users_file} has no users; add one with: sig2knockd_useradd -c CONFIG --users-file"
                " {users_file} NAME",
                users_file=users.path,
            )
        weak = users.weak_kdf()
        if weak:
            self.log.warn(
                "{users_file}: {count} password user(s) with a KDF below the default cost ({names}):"
                " a stolen users file guesses their passwords faster; enrol them again with"
                " sig2knockd_useradd",
                users_file=users.path,
                count=len(weak),
                names=", ".join(weak[:10]) + (" ..." if len(weak) > 10 else ""),
            )
        cipher.load_gcm()
        super().startService()
        if hasattr(self.reactor, "callFromThread"):
            self._previous_hangup = signal.signal(signal.SIGHUP, self._hangup)
        # Said from a turn of the reactor, once signal handlers are in place.
        self.firewall.when_ready().addCallback(self._say_ready_soon)

    def _say_ready_soon(self, _: object) -> None:
        if self.running:
            self._saying_ready = self.reactor.callLater(0, self._ready)

    def _ready(self) -> None:
        self._saying_ready = None
        self.log.info("sig2knock ready")

    def stopService(self) -> Any:
        """
        Stop the children in reverse order: no more control messages, sessions or knocks, then
        the unused assigned ports close (connections already forwarded go on), the grants leave
        the firewall (the base rules stay) and the replay cache is closed.
        """
        if self._previous_hangup is not None:
            signal.signal(signal.SIGHUP, self._previous_hangup)
            self._previous_hangup = None
        if self._saying_ready is not None:
            self._saying_ready.cancel()
            self._saying_ready = None
        Service.stopService(self)
        return stop_children(self, self.log)
