"""
The firewall as a service of the daemon: it owns the backend (``IFirewall``), installs its rules
when the daemon starts (and stops the daemon when it cannot: fail closed), lets no grant through
before they are in place, and at the end removes the grants, leaving the base rules so that the
host stays closed.
"""

from typing import Any, List, Optional, Set, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from sig2knock.daemon.session import SessionRefused
from sig2knock.daemon.waiting import settled
from sig2knock.firewall import FirewallError, IFirewall, IGrantUse, IWallClockGrants
from sig2knock.firewall.registry import Backend
from sig2knock.protocol.addresses import IPAddress

Target = Tuple[IPAddress, int]

# Why a daemon of this process stopped itself (its firewall rules could not be installed), so
# ``sig2knockd`` can end with a failure status after twistd returns.
start_failures: List[str] = []


class FirewallService(Service):
    """
    ``firewall`` (the backend registered as ``backend``, chosen for ``reason``) under policy
    ``policy``. ``grant`` and ``revoke`` are the backend's, refused with ``SessionRefused`` until
    the rules are in place (``not_ready()`` says so beforehand); ``when_ready()`` fires once they
    are.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, backend: Backend, firewall: IFirewall, reason: str, policy: str
    ) -> None:
        self.reactor = reactor
        self.backend = backend
        self.firewall = firewall
        self.reason = reason
        self.policy = policy
        self.ready = False
        self._ready_waiters: List[Deferred] = []
        self._changing: Set[Deferred] = set()

    def startService(self) -> None:
        """
        Install the rules; the daemon is ready once they are, and stops if they cannot be.
        """
        super().startService()
        if not self.backend.gates:
            self.log.warn(
                "no firewall ({reason}): the host's ports stay as they are; the assigned port's"
                " own address check is the only gate, and a port being granted shows to any"
                " scanner (set FIREWALL = auto, nftables or iptables)",
                reason=self.reason,
            )
        maybeDeferred(self.firewall.start).addCallbacks(self._started, self._failed)

    def when_ready(self) -> Deferred:
        """
        A Deferred that fires once the rules are in place.
        """
        waiter: Deferred = Deferred()
        if self.ready:
            waiter.callback(None)
        else:
            self._ready_waiters.append(waiter)
        return waiter

    def _started(self, _: object) -> None:
        self.ready = True
        if self.backend.gates:
            self.log.info(
                "firewall {firewall} ({reason}): rules in place, policy {policy}",
                firewall=self.backend.name,
                reason=self.reason,
                policy=self.policy,
            )
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _failed(self, failure: Failure) -> None:
        message = failure.getErrorMessage()
        start_failures.append(message)
        self.log.critical("cannot install the firewall rules, stopping: {error}", error=message)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    def not_ready(self) -> Optional[SessionRefused]:
        """
        The refusal of a grant asked for now, while the rules are not in place; ``None`` once
        they are.
        """
        if self.ready:
            return None
        return SessionRefused("firewall-not-ready", "the firewall rules are not in place")

    def grant(
        self, source: IPAddress, port: int, deadline: float, target: Optional[Target] = None
    ) -> Deferred:
        """
        Let ``source`` reach ``port`` until ``deadline`` (in nat mode, forwarded to ``target``):
        the backend's ``grant``, once the rules are in place.
        """
        refusal = self.not_ready()
        if refusal is not None:
            return fail(refusal)
        return self._change(self.firewall.grant, source, port, deadline, target)

    def revoke(self, source: IPAddress, port: int, target: Optional[Target] = None) -> Deferred:
        """
        End the grant of ``source`` to ``port`` (nothing to do before the rules are in place).
        """
        if not self.ready:
            return maybeDeferred(lambda: None)
        return self._change(self.firewall.revoke, source, port, target)

    def used_grants(self, grants: List[Target]) -> Deferred:
        """
        Of the open ``grants``, those whose connection the kernel took (``IGrantUse``: nat
        mode); fails with ``FirewallError`` when the backend cannot tell.
        """
        if not self.ready or not IGrantUse.providedBy(self.firewall):
            return fail(FirewallError(f"{self.backend.name} cannot tell which grants were used"))
        return maybeDeferred(self.firewall.used_grants, grants)

    def clock_stepped_back(self, seconds: float) -> Deferred:
        """
        The wall clock went back by ``seconds``: a backend whose grants end at wall-clock times
        (``IWallClockGrants``: iptables) moves them back with it, so none stays open longer; a
        failure is logged (the kernel then ends those grants ``seconds`` late).
        """
        if not self.ready or not IWallClockGrants.providedBy(self.firewall):
            return maybeDeferred(lambda: None)
        moving = self._change(self.firewall.clock_stepped_back, seconds)
        moving.addErrback(
            lambda failure: self.log.error(
                "firewall: cannot move the grants back with the clock: {error}",
                error=failure.getErrorMessage(),
            )
        )
        return moving

    def _change(self, change: Any, *arguments: Any) -> Deferred:
        changing = maybeDeferred(change, *arguments)
        self._changing.add(changing)

        def done(result: Any) -> Any:
            self._changing.discard(changing)
            return result

        return changing.addBoth(done)

    def stopService(self) -> Deferred:
        """
        Once the changes still running have ended, remove every grant and keep the base rules:
        the host is left closed.
        """
        super().stopService()
        if not self.ready:
            return DeferredList([])
        waiting = DeferredList([settled(changing) for changing in self._changing])
        stopping = waiting.addCallback(lambda _: self.firewall.stop())
        stopping.addErrback(
            lambda failure: self.log.error(
                "firewall: cannot remove the grants at stop (the kernel ends each at its"
                " deadline): {error}",
                error=failure.getErrorMessage(),
            )
        )
        return stopping
