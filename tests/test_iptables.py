"""
The iptables backend against the real iptables and ip6tables (as root), in a network namespace
of the test's own: the host's own tables are never touched. The exact rules and commands are
unit-tested in ``sig2knock/test/test_iptables.py``.
"""

import ipaddress
import math
import os
import re
import subprocess
import sys
import time
from typing import List, Optional

from twisted.internet import reactor as real_reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from sig2knock.firewall import FirewallSettings
from sig2knock.firewall.iptables import IptablesFirewall, datestop, render_grant_args
from tests.lab import scratch_namespace

IP = "/usr/sbin/ip"


def _real_skip() -> Optional[str]:
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (creates a network namespace and changes its iptables)"
    if not IptablesFirewall.available():
        return "needs iptables, ip6tables and their -restore tools"
    if not os.access(IP, os.X_OK):
        return f"needs {IP} (iproute2) for network namespaces"
    return None


class RealIptablesTests(TestCase):
    """
    The backend against the real iptables, in a network namespace the test creates and
    deletes (the host's own tables are never touched).
    """

    skip = _real_skip()
    settings = FirewallSettings(control_port=1001, port_range=(20000, 20100), policy="ports")

    def setUp(self) -> None:
        self.ns = scratch_namespace(self, "s2kipt")
        self.inside([IP, "link", "set", "lo", "up"])
        self.backend = self.make(self.settings)

    def make(self, settings: FirewallSettings) -> IptablesFirewall:
        return IptablesFirewall(
            real_reactor, settings, command_prefix=[IP, "netns", "exec", self.ns]
        )

    def inside(self, argv: List[str]) -> str:
        done = subprocess.run(
            [IP, "netns", "exec", self.ns, *argv], capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            self.fail(f"{argv}: {done.returncode}: {done.stderr}")
        return done.stdout

    def rules(self, tool: str = "iptables") -> List[str]:
        return self.inside([tool, "-w", "-S"]).splitlines()

    def ours(self, tool: str = "iptables") -> List[str]:
        return [line for line in self.rules(tool) if "SIG2KNOCK" in line]

    @inlineCallbacks
    def test_start_twice(self) -> object:
        """
        Starting twice (a restart after a crash, leftover jumps and grants included) leaves
        exactly one jump, first in INPUT, and no duplicate rule.
        """
        yield self.backend.start()
        first = {tool: self.rules(tool) for tool in ("iptables", "ip6tables")}
        # A crash leaves a grant and a second jump behind; a new daemon starts afresh.
        yield self.backend.grant(ipaddress.ip_address("10.9.9.9"), 20001, time.time() + 60)
        self.inside(["iptables", "-w", "-A", "INPUT", "-j", "SIG2KNOCK"])
        yield self.make(self.settings).start()
        for tool in ("iptables", "ip6tables"):
            rules = self.rules(tool)
            self.assertEqual(rules, first[tool])
            self.assertEqual(rules.count("-A INPUT -j SIG2KNOCK"), 1)
            self.assertEqual([r for r in rules if r.startswith("-A INPUT")][0],
                             "-A INPUT -j SIG2KNOCK")
            self.assertEqual(len(rules), len(set(rules)))
            self.assertEqual(
                [r for r in rules if r.startswith("-A SIG2KNOCK")],
                [
                    "-A SIG2KNOCK -p tcp -m tcp --dport 20000:20100 -m conntrack --ctstate"
                    " RELATED,ESTABLISHED -j ACCEPT",
                    "-A SIG2KNOCK -p tcp -m tcp --dport 20000:20100 -j DROP",
                ],
            )

    @inlineCallbacks
    def test_lockdown_loads(self) -> object:
        """
        The lockdown chain is accepted by both tools as rendered.
        """
        yield self.make(
            FirewallSettings(control_port=1001, port_range=(20000, 20100), policy="lockdown")
        ).start()
        for tool, count in (("iptables", 9), ("ip6tables", 14)):
            chain = [r for r in self.rules(tool) if r.startswith("-A SIG2KNOCK")]
            self.assertEqual(len(chain), count)
        self.assertIn("-A SIG2KNOCK -j DROP", self.rules("ip6tables"))

    @inlineCallbacks
    def test_grant_revoke_flush(self) -> object:
        """
        Grants appear at the top of the chain with their exact datestop; revoke removes only
        its own rule (a hand-made rule and other grants stay); flush removes everything.
        """
        yield self.backend.start()
        deadline = time.time() + 60
        stop = datestop(deadline)
        alice, bob = ipaddress.ip_address("10.1.1.1"), ipaddress.ip_address("10.2.2.2")
        carol = ipaddress.ip_address("fd00::3")
        yield self.backend.grant(alice, 20005, deadline)
        yield self.backend.grant(bob, 20005, deadline)
        yield self.backend.grant(alice, 20006, deadline)
        yield self.backend.grant(carol, 20005, deadline)
        self.inside(["iptables", "-w", "-A", "SIG2KNOCK", "-s", "10.1.1.1", "-j", "ACCEPT"])

        def grant_line(source: str, port: int) -> str:
            return (
                f"-A SIG2KNOCK -s {source} -p tcp -m tcp --dport {port} -m conntrack --ctstate NEW"
                f' -m time --datestop {stop} -m comment --comment "sig2knock grant" -j ACCEPT'
            )

        rules = self.ours()
        self.assertEqual(
            rules[2:5],
            [grant_line("10.1.1.1/32", 20006), grant_line("10.2.2.2/32", 20005),
             grant_line("10.1.1.1/32", 20005)],
        )
        self.assertIn(grant_line("fd00::3/128", 20005), self.ours("ip6tables"))

        yield self.backend.revoke(alice, 20005)
        after = self.ours()
        self.assertEqual(sorted(set(rules) - set(after)), [grant_line("10.1.1.1/32", 20005)])
        self.assertEqual(len(after), len(rules) - 1)
        # Again, and a revoke after the rule vanished behind the object's back: no error.
        yield self.backend.revoke(alice, 20005)
        self.inside(["iptables", "-w", "-D", "SIG2KNOCK",
                     *render_grant_args(bob, 20005, deadline)])
        yield self.backend.revoke(bob, 20005)
        self.assertEqual(len(self.ours()), len(rules) - 2)

        yield self.backend.stop()
        self.assertNotIn("sig2knock grant", "\n".join(self.ours() + self.ours("ip6tables")))
        self.assertIn("-A SIG2KNOCK -p tcp -m tcp --dport 20000:20100 -j DROP", self.ours())
        self.assertIn("-A SIG2KNOCK -s 10.1.1.1/32 -j ACCEPT", self.ours())

        self.inside(["iptables", "-w", "-F", "SIG2KNOCK"])  # the hand-made rule goes too
        yield self.backend.flush()
        self.assertEqual(self.ours(), [])
        self.assertEqual(self.ours("ip6tables"), [])
        yield self.backend.flush()  # nothing left: still fine

    def syn(self, port: int) -> None:
        """
        Send one connection attempt to ``port`` on loopback inside the namespace.
        """
        self.inside([
            sys.executable, "-c",
            "import socket; s = socket.socket(); s.settimeout(0.3);"
            f" s.connect_ex(('127.0.0.1', {port}))",
        ])

    def counter(self, needle: str) -> int:
        for line in self.inside(["iptables", "-w", "-S", "SIG2KNOCK", "-v"]).splitlines():
            if needle in line:
                match = re.search(r" -c (\d+) \d+", line)
                assert match is not None, line
                return int(match.group(1))
        self.fail(f"no rule with {needle!r}")

    @inlineCallbacks
    def test_kernel_expiry(self) -> object:
        """
        A grant stops matching at its deadline in the kernel, with no help from the daemon:
        SYNs before it hit the grant, SYNs after it fall to the DROP.
        """
        yield self.backend.start()
        now = time.time()
        deadline = math.floor(now) + 2.0
        yield self.backend.grant(ipaddress.ip_address("127.0.0.1"), 20007, deadline)
        self.syn(20007)
        self.assertEqual(self.counter("sig2knock grant"), 1)
        self.assertEqual(self.counter("-j DROP"), 0)
        yield deferLater(real_reactor, max(deadline - time.time(), 0) + 0.05, lambda: None)
        self.syn(20007)
        self.assertEqual(self.counter("sig2knock grant"), 1)
        self.assertGreaterEqual(self.counter("-j DROP"), 1)
        self.assertIn(f"--datestop {datestop(deadline)}", "\n".join(self.ours()))
