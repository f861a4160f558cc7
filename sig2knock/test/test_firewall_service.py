"""
Tests for sig2knock.daemon.firewall_service: the gate that lets no grant through before the rules
are in place, the stop of the daemon when they cannot be (fail closed), and the stop that waits
for the changes still running before it removes the grants.
"""

import ipaddress
from typing import Any, List, Tuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sig2knock.daemon import firewall_service
from sig2knock.daemon.firewall_service import FirewallService
from sig2knock.daemon.session import SessionRefused
from sig2knock.firewall import FirewallError, IFirewall, IWallClockGrants
from sig2knock.firewall.registry import BACKENDS
from sig2knock.test.common import StoppingReactor

CLIENT = ipaddress.ip_address("198.18.0.2")


@implementer(IFirewall)
class ControlledFirewall:
    """
    A backend whose every answer the test gives: each call is recorded in ``calls`` with the
    Deferred it returned, which the test fires.
    """

    name = "nftables"

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Tuple[Any, ...], Deferred]] = []
        self.targets: List[Any] = []

    def _call(self, name: str, *arguments: Any) -> Deferred:
        answer: Deferred = Deferred()
        self.calls.append((name, arguments, answer))
        return answer

    def names(self) -> List[str]:
        return [name for name, _, _ in self.calls]

    def answer(self, name: str) -> Deferred:
        return [answer for called, _, answer in self.calls if called == name][-1]

    @staticmethod
    def available() -> bool:
        return True

    def start(self) -> Deferred:
        return self._call("start")

    def grant(self, source: Any, port: int, deadline: float, target: Any = None) -> Deferred:
        self.targets.append(target)
        return self._call("grant", source, port, deadline)

    def revoke(self, source: Any, port: int, target: Any = None) -> Deferred:
        self.targets.append(target)
        return self._call("revoke", source, port)

    def stop(self) -> Deferred:
        return self._call("stop")

    def flush(self) -> Deferred:
        return self._call("flush")


@implementer(IFirewall, IWallClockGrants)
class WallClockFirewall(ControlledFirewall):
    """
    The same, with grants that end at wall-clock times (as iptables').
    """

    name = "iptables"

    def clock_stepped_back(self, seconds: float) -> Deferred:
        return self._call("clock_stepped_back", seconds)


class FirewallServiceTests(SynchronousTestCase):
    """
    What the rest of the daemon sees of the firewall from start to stop.
    """

    def setUp(self) -> None:
        self.reactor = StoppingReactor()
        self.backend = ControlledFirewall()
        self.events: List[dict] = []
        self.patch(FirewallService, "log", Logger(observer=self.events.append))
        self.patch(firewall_service, "start_failures", [])

    def service(self, backend: str = "nftables") -> FirewallService:
        return FirewallService(
            self.reactor, BACKENDS[backend], self.backend, "FIREWALL = nftables", "ports"
        )

    def started(self) -> FirewallService:
        service = self.service()
        service.startService()
        self.backend.answer("start").callback(None)
        return service

    def test_clockStepBackReachesOnlyWallClockBackends(self) -> None:
        """
        A step back of the clock is passed to a backend whose grants end at wall-clock times,
        once its rules are in place; to another it means nothing. A failure is logged.
        """
        self.assertTrue(verifyObject(IWallClockGrants, WallClockFirewall()))
        service = self.started()
        self.successResultOf(service.clock_stepped_back(3600))
        self.assertNotIn("clock_stepped_back", self.backend.names())
        self.backend = WallClockFirewall()
        service = self.started()
        service.clock_stepped_back(3600)
        self.assertEqual(self.backend.calls[-1][:2], ("clock_stepped_back", (3600,)))
        self.backend.answer("clock_stepped_back").errback(FirewallError("iptables said no"))
        self.assertIn("cannot move the grants back", self.events[-1]["log_format"])

    def test_grantRefusedUntilRulesInPlace(self) -> None:
        """
        Before the rules stand, a grant is refused as ``firewall-not-ready`` and the backend is
        not asked; once they stand, grants reach it.
        """
        service = self.service()
        service.startService()
        failure = self.failureResultOf(service.grant(CLIENT, 40001, 30.0), SessionRefused)
        self.assertEqual(failure.value.reason, "firewall-not-ready")
        self.assertEqual(self.backend.names(), ["start"])
        self.backend.answer("start").callback(None)
        granting = service.grant(CLIENT, 40001, 30.0)
        self.assertEqual(self.backend.calls[-1][:2], ("grant", (CLIENT, 40001, 30.0)))
        self.backend.answer("grant").callback(None)
        self.successResultOf(granting)

    def test_revokeBeforeRulesIsNothing(self) -> None:
        service = self.service()
        service.startService()
        self.successResultOf(service.revoke(CLIENT, 40001))
        self.assertEqual(self.backend.names(), ["start"])

    def test_whenReady(self) -> None:
        """
        ``when_ready()`` fires when the rules are in place, at once if they already are.
        """
        service = self.service()
        early = service.when_ready()
        service.startService()
        self.assertNoResult(early)
        self.backend.answer("start").callback(None)
        self.successResultOf(early)
        self.successResultOf(service.when_ready())
        said = [event["log_format"] for event in self.events]
        self.assertIn("firewall {firewall} ({reason}): rules in place, policy {policy}", said)

    def test_failedStartStopsTheDaemon(self) -> None:
        """
        Rules that cannot be installed stop the reactor, leave the reason for ``sig2knockd``'s
        exit status, are logged as critical and keep the gate shut.
        """
        service = self.service()
        service.startService()
        self.backend.answer("start").errback(FirewallError("nft: not found; install nftables"))
        self.assertEqual(self.reactor.stopped, 1)
        self.assertEqual(firewall_service.start_failures, ["nft: not found; install nftables"])
        self.assertEqual(self.events[-1]["log_level"].name, "critical")
        self.failureResultOf(service.grant(CLIENT, 40001, 30.0), SessionRefused)
        self.successResultOf(service.stopService())
        self.assertEqual(self.backend.names(), ["start"], "no rules: nothing to stop")

    def test_failedStartBeforeReactorRuns(self) -> None:
        """
        A failure before the reactor runs stops it as soon as it does.
        """
        self.reactor.running = False
        service = self.service()
        service.startService()
        self.backend.answer("start").errback(FirewallError("refused"))
        self.assertEqual(self.reactor.stopped, 0)
        self.assertEqual(len(self.reactor.whenRunningHooks), 1)
        self.reactor.whenRunningHooks[0][0]()
        self.assertEqual(self.reactor.stopped, 1)

    def test_stopWaitsForChangesRunning(self) -> None:
        """
        The grants are removed only after a grant still running has ended, so the removal
        cannot be overtaken by it (which would leave that grant open after the daemon stopped).
        """
        service = self.started()
        service.grant(CLIENT, 40001, 30.0)
        stopping = service.stopService()
        self.assertEqual(self.backend.names(), ["start", "grant"])
        self.backend.answer("grant").callback(None)
        self.assertEqual(self.backend.names(), ["start", "grant", "stop"])
        self.assertNoResult(stopping)
        self.backend.answer("stop").callback(None)
        self.successResultOf(stopping)

    def test_stopAfterFailedChange(self) -> None:
        """
        A change that failed does not keep the grants from being removed.
        """
        service = self.started()
        granting = service.grant(CLIENT, 40001, 30.0)
        stopping = service.stopService()
        self.backend.answer("grant").errback(FirewallError("refused"))
        self.failureResultOf(granting, FirewallError)
        self.assertEqual(self.backend.names()[-1], "stop")
        self.backend.answer("stop").callback(None)
        self.successResultOf(stopping)

    def test_stopFailureLogged(self) -> None:
        """
        Grants that cannot be removed at stop are an error in the log, not a failed stop: the
        kernel ends each at its deadline.
        """
        service = self.started()
        stopping = service.stopService()
        self.backend.answer("stop").errback(FirewallError("nft: busy"))
        self.successResultOf(stopping)
        self.assertEqual(self.events[-1]["log_level"].name, "error")
        self.assertEqual(self.events[-1]["error"], "nft: busy")

    def test_noGateWarns(self) -> None:
        """
        ``FIREWALL = none`` is said at start: the assigned port's own check is the only gate.
        """
        service = FirewallService(
            self.reactor, BACKENDS["none"], self.backend, "FIREWALL = none", "ports"
        )
        service.startService()
        self.assertEqual(self.events[0]["log_level"].name, "warn")
        self.assertIn("no firewall", self.events[0]["log_format"])

