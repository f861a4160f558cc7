"""
The nftables backend's scripts loaded by the real nft (as root), in a network namespace made for
each test and deleted after it: never in the namespace the tests run in. The exact scripts and
the backend's logic are unit-tested in ``sig2knock/test/test_nftables.py``.
"""

import ipaddress
import os
import re
from typing import List, Optional, Tuple

from twisted.internet import reactor as globalReactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sig2knock.firewall import FirewallError, nftables_rules
from sig2knock.firewall.nftables import NftablesFirewall
from sig2knock.firewall.nftables_rules import render_grant, render_replace_grant, render_ruleset
from sig2knock.firewall.runner import find_tool, run_tool
from sig2knock.test.expected_nftables import LOCKDOWN, NAT_LOCKDOWN, PORTS, V4, V6
from tests.lab import nft_in, scratch_namespace


_UNITS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}


def nftMilliseconds(text: str) -> int:
    """
    A time as nft prints it (``1m``, ``1s500ms``, ``1d3h46m39s996ms``) in milliseconds.
    """
    parts = re.findall(r"(\d+)(ms|d|h|m|s)", text)
    if "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not an nft time: {text!r}")
    return sum(int(number) * _UNITS[unit] for number, unit in parts)


def _realSkip() -> Optional[str]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces and nft)"
    if find_tool("nft") is None:
        return "needs nft (nftables)"
    if find_tool("ip") is None:
        return "needs ip (iproute2) for network namespaces"
    return None


class RealNftTests(TestCase):
    """
    The scripts loaded by the real nft in a network namespace created for each test and deleted
    after it (never in the namespace the tests run in), through ``NftablesFirewall`` with the
    real reactor and ``command_prefix``.
    """

    skip = _realSkip()
    timeout = 30

    def setUp(self) -> None:
        self.namespace = scratch_namespace(self, "s2knft")
        self.prefix = [find_tool("ip"), "netns", "exec", self.namespace]
        self.firewall = NftablesFirewall(globalReactor, PORTS, command_prefix=self.prefix)

    def nft(self, *arguments: str, stdin: str = "") -> str:
        """
        Run nft in the test's namespace; its standard output.
        """
        done = nft_in(self.namespace, *arguments, stdin=stdin)
        if done.returncode != 0:
            self.fail(f"nft {' '.join(arguments)}: {done.returncode}: {done.stderr}")
        return done.stdout

    def test_prefixRunsNftProcesses(self) -> None:
        """
        With a command prefix the backend spawns nft (inside the namespace) even where
        libnftables is installed: these tests drive the process runner, the fallback of the
        in-process one (``test_libnftables.py`` drives that one for real).
        """
        self.assertIs(self.firewall.run, run_tool)
        self.assertIn("command prefix", self.firewall.runs)

    def test_createRefusesAnExistingElement(self) -> None:
        """
        The real nft refuses ``create`` of an element that exists (what the backend's fallback
        relies on), and the replacement then sets the new timeout.
        """
        self.nft("-f", "-", stdin=render_ruleset(LOCKDOWN))
        self.nft("-f", "-", stdin=render_grant(V4, 45678, 60000))
        again = nft_in(self.namespace, "-f", "-", stdin=render_grant(V4, 45678, 5000))
        self.assertNotEqual(again.returncode, 0)
        self.assertIn("File exists", again.stderr)
        self.nft("-f", "-", stdin=render_replace_grant(V4, 45678, 5000))
        listing = self.nft("list", "set", "inet", "sig2knock", "grants4")
        self.assertIn("timeout 5s", listing)

    def elements(self, name: str = "grants4") -> List[Tuple[str, int, int]]:
        """
        The set's elements: (address, port, timeout in ms), sorted.
        """
        listing = self.nft("list", "set", "inet", "sig2knock", name)
        found = re.findall(r"([0-9a-f:.]+) \. (\d+) timeout ([0-9dhms]+)", listing)
        return sorted((address, int(port), nftMilliseconds(time)) for address, port, time in found)

    def keys(self, name: str = "grants4") -> List[Tuple[str, int]]:
        """
        The set's elements: (address, port), sorted.
        """
        return [(address, port) for address, port, _ in self.elements(name)]

    def test_rulesetsLoad(self) -> None:
        """
        Both rulesets load, replace each other and come back from nft as rendered (comments
        aside), with no rule twice after loading twice.
        """
        listings = {}
        for settings in [PORTS, LOCKDOWN, NAT_LOCKDOWN]:
            self.nft("-f", "-", stdin=render_ruleset(settings))
            first = self.nft("list", "table", "inet", "sig2knock")
            self.nft("-f", "-", stdin=render_grant(V4, 45678, 60000))
            self.nft("-f", "-", stdin=render_ruleset(settings))
            self.assertEqual(self.nft("list", "table", "inet", "sig2knock"), first)
            self.assertEqual(self.nft("list", "ruleset").count("chain input"), 1)
            listings[settings.policy + ("-nat" if settings.nat_to else "")] = first
        self.assertIn("policy accept;", listings["ports"])
        self.assertIn("\t\ttcp dport 40000-49999 drop\n", listings["ports"])
        self.assertEqual(listings["ports"].count("\t\ttcp dport 40000-49999"), 4)
        self.assertIn("policy drop;", listings["lockdown"])
        self.assertIn("\t\tip6 saddr . tcp dport @grants6 accept\n", listings["lockdown"])
        self.assertIn("mld-listener-query", listings["lockdown"])
        self.assertEqual(len(re.findall(r"^\t\t\S", listings["lockdown"], re.M)), 11 + 4)

    async def test_grantExpires(self) -> None:
        """
        A grant shows in its set with its timeout and is gone after it.
        """
        await self.firewall.start()
        await self.firewall.grant(V4, 45678, globalReactor.seconds() + 1.2)
        await self.firewall.grant(V6, 45679, globalReactor.seconds() + 60)
        [(address, port, timeout)] = self.elements()
        self.assertEqual((address, port), ("198.18.0.2", 45678))
        self.assertTrue(1000 < timeout <= 1200, timeout)
        [(address, port, timeout)] = self.elements("grants6")
        self.assertEqual((address, port), ("2001:db8::2", 45679))
        self.assertTrue(59000 < timeout <= 60000, timeout)
        await deferLater(globalReactor, 1.5, lambda: None)
        self.assertEqual(self.elements(), [])
        self.assertEqual(self.keys("grants6"), [("2001:db8::2", 45679)])

    async def test_grantReplaces(self) -> None:
        """
        Granting the same address and port again sets the new timeout, shorter ones too.
        """
        await self.firewall.start()
        await self.firewall.grant(V4, 45678, globalReactor.seconds() + 600)
        await self.firewall.grant(V4, 45678, globalReactor.seconds() + 60)
        [(address, port, timeout)] = self.elements()
        self.assertEqual((address, port), ("198.18.0.2", 45678))
        self.assertTrue(59000 < timeout <= 60000, timeout)

    async def test_grantPastOpensNothing(self) -> None:
        """
        A grant whose deadline is past fails and adds nothing.
        """
        await self.firewall.start()
        with self.assertRaises(FirewallError):
            await self.firewall.grant(V4, 45678, globalReactor.seconds() - 1)
        self.assertEqual(self.elements(), [])

    async def test_revokeOnlyItsElement(self) -> None:
        """
        Revoke removes its element and no other; revoking again, or one that expired, or one
        never granted, succeeds.
        """
        await self.firewall.start()
        ahead = globalReactor.seconds() + 60
        await self.firewall.grant(V4, 45678, ahead)
        await self.firewall.grant(V4, 45679, ahead)
        await self.firewall.grant(ipaddress.ip_address("198.18.0.3"), 45678, ahead)
        await self.firewall.grant(V6, 45678, ahead)
        await self.firewall.revoke(V4, 45678)
        self.assertEqual(self.keys(), [("198.18.0.2", 45679), ("198.18.0.3", 45678)])
        self.assertEqual(self.keys("grants6"), [("2001:db8::2", 45678)])
        short = ipaddress.ip_address("198.18.0.4")
        await self.firewall.grant(
            short, 45000, globalReactor.seconds() + 0.05 + nftables_rules.GRANT_MARGIN_MS / 1000
        )
        await deferLater(globalReactor, 0.2, lambda: None)
        await self.firewall.revoke(short, 45000)
        await self.firewall.revoke(V4, 45678)
        await self.firewall.revoke(ipaddress.ip_address("2001:db8::99"), 45678)
        self.assertEqual(self.keys(), [("198.18.0.2", 45679), ("198.18.0.3", 45678)])
        self.assertEqual(self.keys("grants6"), [("2001:db8::2", 45678)])

    async def test_stopKeepsRules(self) -> None:
        """
        Stop empties both sets and leaves the chain in place.
        """
        await self.firewall.start()
        await self.firewall.grant(V4, 45678, globalReactor.seconds() + 60)
        await self.firewall.grant(V6, 45678, globalReactor.seconds() + 60)
        await self.firewall.stop()
        self.assertEqual(self.elements(), [])
        self.assertEqual(self.elements("grants6"), [])
        self.assertIn("tcp dport 40000-49999 drop", self.nft("list", "table", "inet", "sig2knock"))

    async def test_flushRemovesTable(self) -> None:
        """
        Flush removes the table, and succeeds again when it is already gone.
        """
        await self.firewall.start()
        await self.firewall.flush()
        self.assertNotIn("sig2knock", self.nft("list", "tables"))
        await self.firewall.flush()
        self.assertEqual(self.nft("list", "ruleset"), "")

    async def test_refusalFails(self) -> None:
        """
        When nft refuses (no table: a grant before start), the grant fails with FirewallError.
        """
        with self.assertRaises(FirewallError) as caught:
            await self.firewall.grant(V4, 45678, globalReactor.seconds() + 60)
        self.assertIn("No such file or directory", str(caught.exception))


class NftTimeTests(SynchronousTestCase):
    """
    The helper that reads nft's times.
    """

    def test_parse(self) -> None:
        """
        Every unit nft prints is read; anything else is refused.
        """
        self.assertEqual(nftMilliseconds("1m"), 60_000)
        self.assertEqual(nftMilliseconds("1s500ms"), 1500)
        self.assertEqual(nftMilliseconds("1d3h46m39s996ms"), 99_999_996)
        self.assertRaises(ValueError, nftMilliseconds, "1x")
