"""
Grants: a random free port from ``ASSIGN_PORT_RANGE``, listening for one connection from the
knocking address, forwarded to the hidden service, opened in the firewall for that address alone,
and closed (listener and firewall) after that connection or after ``SINGLECONN_PORTOPEN_TIME``,
whichever comes first. A firewall that refuses the grant refuses the session, and the listener is
closed again: nothing stays half-open.
"""

import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.logger import Logger

from sig2knock.firewall import IFirewall
from sig2knock.firewall.null import NoFirewall
from sig2knock.daemon.forward import GrantForwardFactory
from sig2knock.daemon.sessions import GrantInfo, Session, SessionRefused

# Random tries before a full range is reported; a range with free ports is found long before.
MAX_PORT_ATTEMPTS = 64


@dataclass(eq=False)
class OpenGrant:
    """
    One open assigned port: whose it is, its listener and the timer that closes it.
    """

    port: int
    session: Session
    listener: Optional[IListeningPort]
    factory: Optional[GrantForwardFactory]
    deadline: float
    timer: Optional[IDelayedCall] = None


class PortGranter:
    """
    Opens assigned ports for sessions (``grant`` is the ``SessionTable``'s granter).

    ``reactor`` provides ``IReactorTCP`` and ``IReactorTime``; ``forward_host``/``forward_port``
    is the hidden service; ``port_range`` the inclusive range to assign from; ``open_time`` how
    long a port waits for its connection; ``firewall`` opens the port for the session's address;
    ``on_used(session)`` is called when a grant's one connection has arrived.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        forward_host: str,
        forward_port: int,
        port_range: Tuple[int, int],
        open_time: float,
        chooser: Optional[random.Random] = None,
        firewall: Optional[IFirewall] = None,
        nat: bool = False,
        on_used: Optional[Callable[[Session], None]] = None,
    ) -> None:
        self.reactor = reactor
        self.forward_host = forward_host
        self.forward_port = forward_port
        self.port_range = port_range
        self.open_time = open_time
        self._chooser = chooser if chooser is not None else random.SystemRandom()
        self.firewall: IFirewall = firewall if firewall is not None else NoFirewall()
        # FORWARD_MODE = nat: the firewall DNATs the grant's one connection in the kernel, so no
        # listener is opened and the data never enters Python.
        self.nat = nat
        self.on_used = on_used
        self._opening: Set[Deferred] = set()
        self.open: Dict[int, OpenGrant] = {}

    def grant(self, session: Session) -> "Deferred[GrantInfo]":
        """
        Open a random free port for ``session``'s address; fires with its ``GrantInfo``, or fails
        with ``SessionRefused`` when no port can be opened.
        """
        low, high = self.port_range
        for _ in range(MAX_PORT_ATTEMPTS):
            port = self._chooser.randint(low, high)
            if port in self.open:
                continue
            factory: Optional[GrantForwardFactory] = None
            listener: Optional[IListeningPort] = None
            if not self.nat:
                factory = GrantForwardFactory(
                    self.forward_host, self.forward_port, session.source, self.reactor
                )
                interface = "::" if session.source.version == 6 else "0.0.0.0"
                try:
                    listener = self.reactor.listenTCP(port, factory, interface=interface)
                except CannotListenError:
                    continue  # in use by something else: skip it
            deadline = self.reactor.seconds() + self.open_time
            opened = OpenGrant(port, session, listener, factory, deadline)
            if factory is not None:
                factory.on_connection = lambda opened=opened: self._used(opened)
            opened.timer = self.reactor.callLater(
                self.open_time,
                self._close,
                opened,
                # In nat mode the kernel took the grant's connection (if any) unseen.
                "open time over" if self.nat else "unused, open time over",
            )
            self.open[port] = opened
            opening = maybeDeferred(self.firewall.grant, session.source, port, deadline)
            # close_all waits for grants still being opened, so none lands after a clean stop.
            self._opening.add(opening)

            def settled(result: Any, opening: Deferred = opening) -> Any:
                self._opening.discard(opening)
                return result

            opening.addBoth(settled)
            opening.addCallbacks(self._opened, self._firewallRefused, (opened,), None, (opened,))
            return opening
        return fail(
            SessionRefused("no-free-port", f"no free port found in {low}-{high} (ASSIGN_PORT_RANGE)")
        )

    def _opened(self, _: object, opened: OpenGrant) -> GrantInfo:
        if self.open.get(opened.port) is not opened:
            # Closed while the firewall was still opening it (the daemon is stopping).
            self._revoke(opened)
            raise SessionRefused("closed", "the grant was closed while it was being opened")
        self.log.info(
            "port {port} granted to {user} from {source} for {open_time}s",
            port=opened.port,
            user=opened.session.user,
            source=str(opened.session.source),
            open_time=self.open_time,
        )
        return GrantInfo(opened.port, opened.deadline)

    def _firewallRefused(self, failure: Any, opened: OpenGrant) -> None:
        self.log.error(
            "firewall refused the grant of port {port} to {source}: {error}",
            port=opened.port,
            source=str(opened.session.source),
            error=failure.getErrorMessage(),
        )
        self._close(opened, "the firewall refused it")
        raise SessionRefused("firewall", failure.getErrorMessage())

    def _used(self, opened: OpenGrant) -> "Deferred[None]":
        closing = self._close(opened, "used")
        if self.on_used is not None:
            self.on_used(opened.session)
        return closing

    def _close(self, opened: OpenGrant, why: str) -> "Deferred[None]":
        if self.open.get(opened.port) is not opened:
            return succeed(None)
        del self.open[opened.port]
        if opened.timer is not None and opened.timer.active():
            opened.timer.cancel()
        opened.timer = None
        self.log.info(
            "grant of port {port} to {source} closed: {why}",
            port=opened.port,
            source=str(opened.session.source),
            why=why,
        )
        revoking = self._revoke(opened)
        if opened.listener is None:
            return DeferredList([revoking], consumeErrors=True)
        stopping = maybeDeferred(opened.listener.stopListening)
        return DeferredList([revoking, stopping], consumeErrors=True)

    def _revoke(self, opened: OpenGrant) -> "Deferred[None]":
        revoking = maybeDeferred(self.firewall.revoke, opened.session.source, opened.port)
        revoking.addErrback(
            lambda failure: self.log.error(
                "firewall could not revoke port {port} of {source} (the kernel still ends it at"
                " its deadline): {error}",
                port=opened.port,
                source=str(opened.session.source),
                error=failure.getErrorMessage(),
            )
        )
        return revoking

    def close_all(self) -> "Deferred[Any]":
        """
        Stop listening on every open assigned port (the daemon is stopping), after the grants
        still being opened have settled; established forwarded connections are left alone.
        """
        closing: List[Deferred] = [
            self._close(opened, "daemon stopping") for opened in list(self.open.values())
        ]
        # A grant being opened now is closed by _opened when it lands (it is no longer open).
        waiting = [_quiet(opening) for opening in list(self._opening)]
        return DeferredList(closing + waiting, consumeErrors=True)


def _quiet(opening: Deferred) -> Deferred:
    """
    A Deferred that fires when ``opening`` does, whatever its result, leaving ``opening``'s own
    callbacks (the session's) untouched.
    """
    settled: Deferred = Deferred()
    opening.addBoth(lambda result: (settled.callback(None), result)[1])
    return settled
