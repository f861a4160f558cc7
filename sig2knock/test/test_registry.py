"""
Tests for sig2knock.firewall.registry: the backends registered in one place, the choice of
FIREWALL = auto, and what sig2knockd --flush cleans.
"""

from typing import List

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sig2knock.daemon.settings import firewall_settings, parse_config
from sig2knock.firewall import FirewallError, IFirewall, registry


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
