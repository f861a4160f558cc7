"""
Tests for what every firewall backend shares: the tool runner, the choice of backend, the null
backend, ``sig2knockd --flush``'s choice, and how the daemon reacts to a firewall that fails.
"""

import os
import sys
from typing import List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from sig2knock.daemon import service, startup
from sig2knock.daemon.settings import firewall_settings, parse_config
from sig2knock.firewall import FirewallError, IFirewall
from sig2knock.firewall import registry
from sig2knock.firewall.null import NoFirewall
from sig2knock.firewall.runner import find_tool, run_tool
from sig2knock.test.common import write_config
from sig2knock.test.test_plugin import NOW, FakeAddressWatcher


class RunToolTests(TestCase):
    """
    Firewall tools run through the reactor; every way they fail becomes one ``FirewallError``.
    """

    def test_outputAndStdin(self) -> None:
        cat = find_tool("cat")
        done = run_tool(reactor, [cat], stdin=b"table inet sig2knock {}\n")
        done.addCallback(self.assertEqual, b"table inet sig2knock {}\n")
        return done

    def test_failureCarriesStderr(self) -> None:
        script = "import sys; sys.stderr.write('Error: No such file or directory\\n'); sys.exit(1)"
        done = run_tool(reactor, [sys.executable, "-c", script])
        failed = self.assertFailure(done, FirewallError)
        failed.addCallback(
            lambda error: self.assertIn("exit status 1: Error: No such file", str(error))
        )
        return failed

    def test_timeLimit(self) -> None:
        done = run_tool(reactor, [find_tool("sleep"), "30"], timeout=0.2)
        failed = self.assertFailure(done, FirewallError)
        failed.addCallback(lambda error: self.assertIn("time limit", str(error)))
        return failed

    def test_missingTool(self) -> None:
        self.assertIsNone(find_tool("no-such-firewall-tool"))
        self.assertRaises(FirewallError, run_tool, reactor, ["/nonexistent/nft", "-f", "-"])


class ChoiceTests(SynchronousTestCase):
    """
    ``FIREWALL = auto`` takes nftables, then iptables, else none; lockdown never runs unprotected.
    """

    def config(self, firewall: str = "auto", policy: str = "ports"):
        text = (
            "UDP_PORT = 1001\nFORWARD_TO_IP = 127.0.0.1\nFORWARD_TO_PORT = 22\n"
            f"FIREWALL = {firewall}\nFIREWALL_POLICY = {policy}\n"
        )
        return parse_config(text, "/etc/sig2knock/sig2knockd.conf")

    def have(self, *names: str):  # type: ignore[no-untyped-def]
        return lambda backend: backend.name in names

    def chosen(self, config, *names: str) -> str:  # type: ignore[no-untyped-def]
        return registry.choose(config.firewall, config.firewall_policy, self.have(*names))[0].name

    def test_autoPrefersNftables(self) -> None:
        self.assertEqual(self.chosen(self.config(), "nftables", "iptables"), "nftables")
        self.assertEqual(self.chosen(self.config(), "iptables"), "iptables")
        backend, reason = registry.choose("auto", "ports", self.have("iptables"))
        self.assertEqual(reason, "FIREWALL = auto: iptables found, no nft")

    def test_autoWithoutToolsIsNone(self) -> None:
        backend, reason = registry.choose("auto", "ports", self.have())
        self.assertEqual(backend.name, "none")
        self.assertIn("neither", reason)

    def test_lockdownNeedsATool(self) -> None:
        error = self.assertRaises(
            FirewallError, registry.choose, "auto", "lockdown", self.have()
        )
        self.assertIn("install nftables", str(error))

    def test_explicitChoiceKept(self) -> None:
        self.assertEqual(self.chosen(self.config("iptables")), "iptables")

    def test_backendsProvideTheInterface(self) -> None:
        for name, backend in registry.BACKENDS.items():
            built = backend.build(reactor, firewall_settings(self.config(name), "eth0"))
            self.assertTrue(verifyObject(IFirewall, built))
            self.assertEqual(built.name, name)
            self.assertIsInstance(backend.available(), bool)
        self.assertEqual(registry.CHOICES, ("auto", "nftables", "iptables", "pktfilter", "none"))

    def test_flushCleansWhatAnyRunMayHaveUsed(self) -> None:
        def names(firewall: str, *available: str) -> List[str]:
            return [b.name for b in registry.flush_candidates(firewall, self.have(*available))]

        self.assertEqual(names("iptables", "nftables", "iptables"), ["iptables"])
        self.assertEqual(names("auto", "nftables", "iptables"), ["nftables", "iptables"])
        self.assertEqual(names("none", "iptables"), ["iptables"])


class NoFirewallTests(SynchronousTestCase):
    """
    ``FIREWALL = none`` changes nothing and always succeeds.
    """

    def test_interface(self) -> None:
        backend = NoFirewall()
        self.assertTrue(verifyObject(IFirewall, backend))
        for call in (backend.start, backend.stop, backend.flush):
            self.successResultOf(call())
        self.successResultOf(backend.grant(None, 40000, NOW))
        self.successResultOf(backend.revoke(None, 40000))


class StoppingReactor:
    """
    Enough of a reactor for the service's firewall start: time, and a record of stop().
    """

    running = True

    def __init__(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.stopped = 0

    def callLater(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.clock.callLater(*args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()

    def stop(self) -> None:
        self.stopped += 1


class ScriptedFirewall(NoFirewall):
    """
    A firewall whose start the test controls.
    """

    name = "nftables"

    def __init__(self, starting: Deferred) -> None:
        self.starting = starting
        self.stops: List[str] = []

    def start(self) -> Deferred:
        return self.starting

    def stop(self) -> Deferred:
        self.stops.append("stop")
        return succeed(None)


class ServiceFirewallTests(SynchronousTestCase):
    """
    The daemon grants nothing before its rules are in place, and stops when they cannot be.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.prepared = startup.prepare(write_config(directory), None, NOW)
        self.addCleanup(self.prepared.replay_cache.close)
        self.reactor = StoppingReactor()
        self.patch(service, "start_failures", [])
        self.events: List[dict] = []
        from twisted.logger import Logger

        self.patch(service.Sig2knockService, "log", Logger(observer=self.events.append))

    def daemon(self, starting: Deferred) -> service.Sig2knockService:
        return service.Sig2knockService(
            self.prepared,
            self.reactor,
            watch_addresses=FakeAddressWatcher,
            firewall=ScriptedFirewall(starting),
        )

    def test_noGrantBeforeRulesInPlace(self) -> None:
        starting: Deferred = Deferred()
        daemon = self.daemon(starting)
        daemon.startService()
        failure = self.failureResultOf(daemon._grant(None), service.SessionRefused)
        self.assertEqual(failure.value.reason, "firewall-not-ready")
        starting.callback(None)
        self.assertTrue(daemon.firewall_ready)
        self.reactor.clock.advance(0)
        self.assertEqual(self.events[-1]["log_format"], "sig2knock ready")

    def test_failedRulesStopTheDaemon(self) -> None:
        daemon = self.daemon(fail(FirewallError("nft: not found; install nftables")))
        daemon.startService()
        self.assertEqual(self.reactor.stopped, 1)
        self.assertEqual(service.start_failures, ["nft: not found; install nftables"])
        self.assertFalse(daemon.firewall_ready)
        self.reactor.clock.advance(0)
        self.assertNotIn("sig2knock ready", [e["log_format"] for e in self.events])
        self.successResultOf(daemon.stopService())
        self.assertEqual(daemon.firewall.stops, [], "rules never installed: nothing to stop")

    def test_cleanStopRemovesGrants(self) -> None:
        daemon = self.daemon(succeed(None))
        daemon.startService()
        self.successResultOf(daemon.stopService())
        self.assertEqual(daemon.firewall.stops, ["stop"])
