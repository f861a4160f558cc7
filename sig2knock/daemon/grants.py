"""
Grants: a random free port from ``ASSIGN_PORT_RANGE``, listening for one connection from the
knocking address, forwarded to the hidden service, and opened in the firewall for that address
alone. ``PortGranter.open`` gives an ``OpenGrant``. In proxy mode the grant closes itself when its
one connection comes (then ``used`` fires); its owner (the session table) expires it when its
deadline passes (in nat mode, the only end: the kernel takes the connection unseen). A firewall that
refuses the grant refuses the session, and the listener is closed again: nothing stays half-open.
"""

import random
from typing import Any, Dict, List, Optional, Set, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from sig2knock.daemon.catalog import HiddenService
from sig2knock.daemon.forward import GrantForwardFactory
from sig2knock.daemon.refusals import RefusalLog
from sig2knock.daemon.session import SessionRefused
from sig2knock.daemon.waiting import settled
from sig2knock.protocol.addresses import IPAddress

# Random tries before a full range is reported; a range with free ports is found long before.
MAX_PORT_ATTEMPTS = 64


class OpenGrant:
    """
    One open assigned port: ``port`` open to ``source`` (user ``user``) until ``deadline``
    (seconds since the epoch), leading to ``service`` (a ``HiddenService``; with
    ``nat_target``, the kernel forwards its connection there: ``FORWARD_MODE = nat``). ``used``
    fires once its one connection has come (never in nat mode, where the kernel takes the
    connection unseen); ``close(why)`` ends it, ``expire()`` when its deadline has passed unused.
    With a ``door`` secret (proxy mode only) the connection is forwarded only once its first
    bytes are that secret.
    """

    log = Logger()

    def __init__(
        self,
        granter: "PortGranter",
        port: int,
        source: IPAddress,
        user: str,
        deadline: float,
        door: Optional[bytes] = None,
        service: Optional[HiddenService] = None,
        nat_target: Optional[Tuple[IPAddress, int]] = None,
    ) -> None:
        self._granter = granter
        self.service = service
        self.nat_target = nat_target
        self.refusals = granter.refusals
        self.door = door
        self.port = port
        self.source = source
        self.user = user
        self.deadline = deadline
        self.used: Deferred = Deferred()
        self.closed = False
        self._listener: Optional[IListeningPort] = None

    def listen(self, reactor: Any, host: str, port: int) -> None:
        """
        Listen on the grant's port for the one connection to forward to ``host:port``
        (proxy mode). Raises ``CannotListenError`` when the port is in use.
        """
        factory = GrantForwardFactory(
            host,
            port,
            self.source,
            reactor,
            self._connected,
            door=self.door,
            granted_port=self.port,
            refusals=self.refusals,
        )
        interface = "::" if self.source.version == 6 else "0.0.0.0"
        self._listener = reactor.listenTCP(self.port, factory, interface=interface)

    @property
    def door_required(self) -> bool:
        """
        Whether the one connection must show the door secret first (P3 says so).
        """
        return self.door is not None

    def _connected(self) -> None:
        self.close("used")
        self.used.callback(None)

    def expire(self) -> "Deferred[Any]":
        """
        The deadline has passed: close the grant.
        """
        # In nat mode the kernel took the grant's connection (if any) unseen.
        return self.close("unused, open time over" if self._listener else "open time over")

    def close(self, why: str) -> "Deferred[Any]":
        """
        Stop listening and revoke the firewall's rule; ``why`` goes into the log. Closing a
        closed grant does nothing.
        """
        if self.closed:
            return succeed(None)
        self.closed = True
        self.log.info(
            "grant of port {port} to {source} closed: {why}",
            port=self.port,
            source=str(self.source),
            why=why,
        )
        return self._granter.release(self)

    def discard(self) -> "Deferred[Any]":
        """
        End a grant the firewall refused: it added nothing, so only the listener is closed.
        """
        self.closed = True
        return self._granter.release(self, revoke=False)

    def stop_listening(self) -> "Deferred[Any]":
        """
        Close the listener, if there is one (the granter's part of closing).
        """
        if self._listener is None:
            return succeed(None)
        return maybeDeferred(self._listener.stopListening)


class PortGranter(Service):
    """
    Opens assigned ports (``open``), as a service: stopping it closes every open grant, after
    the grants still being opened have settled (established forwarded connections go on).

    ``reactor`` provides ``IReactorTCP`` and ``IReactorTime``; ``settings`` is the
    ``LiveSettings`` (``ASSIGN_PORT_RANGE``, the gateway's ``FORWARD_MODE`` for services without
    one of their own, and the default service when a session names none); ``firewall`` opens the port for the session's address (the daemon's
    ``FirewallService``); ``refusals`` (a ``RefusalLog``) hears of the connections the grants
    refuse.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: Any,
        firewall: Any,
        chooser: Optional[random.Random] = None,
        refusals: Optional[RefusalLog] = None,
    ) -> None:
        self.reactor = reactor
        self.refusals = refusals if refusals is not None else RefusalLog()
        self.settings = settings
        self.firewall = firewall
        self._chooser = chooser if chooser is not None else random.SystemRandom()
        self._opening: Set[Deferred] = set()
        self.open_grants: Dict[int, OpenGrant] = {}

    def open(
        self,
        source: IPAddress,
        user: str,
        door: Optional[bytes] = None,
        service: Optional[HiddenService] = None,
    ) -> "Deferred[OpenGrant]":
        """
        Open a random free port for ``source`` to ``service`` (default: the default service);
        fires with its ``OpenGrant``, or fails with ``SessionRefused`` when no port can be
        opened or the firewall refuses. ``door``: the session's door secret, when its client
        will show it; the proxy then requires it (in nat mode the kernel forwards the
        connection, and nothing can).
        """
        refusal = self.firewall.not_ready()
        if refusal is not None:  # not even a listener before the rules are in place
            return fail(refusal)
        config = self.settings.config
        if service is None:
            service = config.catalog.default
        low, high = config.assign_port_range
        address, target_port = service.target
        for _ in range(MAX_PORT_ATTEMPTS):
            port = self._chooser.randint(low, high)
            if port in self.open_grants:
                continue
            deadline = self.reactor.seconds() + service.open_time
            nat = service.nat_in(config)
            grant = OpenGrant(self, port, source, user, deadline, None if nat else door, service,
                              service.target if nat else None)
            # FORWARD_MODE = nat: the firewall DNATs the grant's one connection in the kernel,
            # so no listener is opened and the data never enters Python.
            if not nat:
                try:
                    grant.listen(self.reactor, str(address), target_port)
                except CannotListenError:
                    continue  # in use by something else: skip it
            self.open_grants[port] = grant
            opening = maybeDeferred(self.firewall.grant, source, port, deadline, grant.nat_target)
            # Stopping waits for grants still being opened, so none lands after a clean stop.
            self._opening.add(opening)
            opening.addBoth(self._forget_opening, opening)
            open_time = service.open_time  # as it was when the deadline was set
            opening.addCallbacks(
                self._opened, self._refused, (grant, open_time), None, (grant,)
            )
            return opening
        detail = f"no free port found in {low}-{high} (ASSIGN_PORT_RANGE)"
        return fail(SessionRefused("no-free-port", detail, severe=True))

    def _forget_opening(self, result: Any, opening: Deferred) -> Any:
        self._opening.discard(opening)
        return result

    def _opened(self, _: object, grant: OpenGrant, open_time: float) -> OpenGrant:
        if grant.closed:
            # Closed while the firewall was still opening it (the daemon is stopping): the
            # revocation may have overtaken the grant, so revoke again.
            self.release(grant)
            raise SessionRefused("closed", "the grant was closed while it was being opened")
        self.log.info(
            "port {port} granted to {user} from {source} for {open_time}s, service {service}",
            port=grant.port,
            user=grant.user,
            source=str(grant.source),
            open_time=open_time,
            service=grant.service.label if grant.service is not None else "default",
        )
        return grant

    def _refused(self, failure: Any, grant: OpenGrant) -> Any:
        grant.discard()
        if failure.check(SessionRefused):  # the firewall service's own refusal: keep its reason
            return failure
        raise SessionRefused("firewall", failure.getErrorMessage(), severe=True)

    def release(self, grant: OpenGrant, revoke: bool = True) -> "Deferred[Any]":
        """
        Forget ``grant``, stop its listener and (with ``revoke``) revoke it in the firewall
        (``OpenGrant.close`` calls this).
        """
        if self.open_grants.get(grant.port) is grant:
            del self.open_grants[grant.port]
        if not revoke:
            return grant.stop_listening()
        revoking = maybeDeferred(self.firewall.revoke, grant.source, grant.port, grant.nat_target)
        revoking.addErrback(
            lambda failure: self.log.error(
                "firewall could not revoke port {port} of {source} (the kernel still ends it at"
                " its deadline): {error}",
                port=grant.port,
                source=str(grant.source),
                error=failure.getErrorMessage(),
            )
        )
        return DeferredList([revoking, grant.stop_listening()], consumeErrors=True)

    def stopService(self) -> "Deferred[Any]":
        """
        Close every open grant (the daemon is stopping), once the grants still being opened
        have settled; established forwarded connections are left alone.
        """
        super().stopService()
        closing: List[Deferred] = [
            grant.close("daemon stopping") for grant in list(self.open_grants.values())
        ]
        # A grant being opened now is closed when it lands (its session is gone).
        waiting = [settled(opening) for opening in list(self._opening)]
        return DeferredList(closing + waiting, consumeErrors=True)
