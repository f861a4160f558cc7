"""
Tests for the iptables backend: exact rules and commands against a recording stand-in for the
tool runner, and (as root, with iptables installed) the real thing in a network namespace of
the test's own.
"""

import calendar
import ipaddress
import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from typing import Callable, List, Optional, Tuple

from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from sig2knock.firewall import FirewallError, FirewallSettings, IFirewall
from sig2knock.firewall.iptables import (
    IptablesFirewall,
    datestop,
    render_chain,
    render_flush,
    render_grant_args,
)

PORTS = FirewallSettings(control_port=1001, port_range=(40000, 40100), policy="ports")
LOCKDOWN = FirewallSettings(control_port=1001, port_range=(40000, 40100), policy="lockdown")

# 2030-01-02T03:04:05Z
T0 = calendar.timegm((2030, 1, 2, 3, 4, 5))
ALICE4 = ipaddress.ip_address("192.0.2.7")
ALICE6 = ipaddress.ip_address("2001:db8::7")

PORTS_CHAIN = """\
*filter
:SIG2KNOCK - [0:0]
-A SIG2KNOCK -p tcp --dport 40000:40100 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A SIG2KNOCK -p tcp --dport 40000:40100 -j DROP
-I INPUT 1 -j SIG2KNOCK
COMMIT
"""

LOCKDOWN_CHAIN4 = """\
*filter
:SIG2KNOCK - [0:0]
-A SIG2KNOCK -i lo -j ACCEPT
-A SIG2KNOCK -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A SIG2KNOCK -p icmp --icmp-type destination-unreachable -j ACCEPT
-A SIG2KNOCK -p icmp --icmp-type time-exceeded -j ACCEPT
-A SIG2KNOCK -p icmp --icmp-type parameter-problem -j ACCEPT
-A SIG2KNOCK -m conntrack --ctstate INVALID -j DROP
-A SIG2KNOCK -p udp --dport 1001 -j ACCEPT
-A SIG2KNOCK -p udp --sport 67 --dport 68 -j ACCEPT
-A SIG2KNOCK -j DROP
-I INPUT 1 -j SIG2KNOCK
COMMIT
"""

LOCKDOWN_CHAIN6 = """\
*filter
:SIG2KNOCK - [0:0]
-A SIG2KNOCK -i lo -j ACCEPT
-A SIG2KNOCK -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type destination-unreachable -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type packet-too-big -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type time-exceeded -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type parameter-problem -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type router-advertisement -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type neighbour-solicitation -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type neighbour-advertisement -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type redirect -j ACCEPT
-A SIG2KNOCK -m conntrack --ctstate INVALID -j DROP
-A SIG2KNOCK -p udp --dport 1001 -j ACCEPT
-A SIG2KNOCK -p udp --sport 547 --dport 546 -j ACCEPT
-A SIG2KNOCK -j DROP
-I INPUT 1 -j SIG2KNOCK
COMMIT
"""

EMPTY_LISTING = b"-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n"
LEFTOVER_LISTING = (
    b"-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-N SIG2KNOCK\n"
    b"-A INPUT -j SIG2KNOCK\n-A INPUT -i eth0 -j SIG2KNOCK\n-A INPUT -j SIG2KNOCK\n"
    b"-A SIG2KNOCK -p tcp -m tcp --dport 40000:40100 -j DROP\n"
)


def grant_spec(address: str, port: int, stop: str) -> List[str]:
    prefix = "128" if ":" in address else "32"
    return [
        "-s",
        f"{address}/{prefix}",
        "-p",
        "tcp",
        "--dport",
        str(port),
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
        "-m",
        "time",
        "--datestop",
        stop,
        "-m",
        "comment",
        "--comment",
        "sig2knock grant",
        "-j",
        "ACCEPT",
    ]


class RenderTests(TestCase):
    """
    The pure functions: restore scripts and grant rules, exactly.
    """

    def test_ports_chain(self) -> None:
        """
        Policy ``ports`` gates only the assigned range, the same way for both families.
        """
        self.assertEqual(render_chain(PORTS, 4), PORTS_CHAIN)
        self.assertEqual(render_chain(PORTS, 6), PORTS_CHAIN)

    def test_single_port(self) -> None:
        """
        A range of one port is written as that port.
        """
        settings = FirewallSettings(control_port=1001, port_range=(40000, 40000))
        self.assertIn("-A SIG2KNOCK -p tcp --dport 40000 -j DROP\n", render_chain(settings, 4))

    def test_lockdown_chain(self) -> None:
        """
        Policy ``lockdown`` closes everything but loopback, established traffic, the ICMP each
        family needs, DHCP replies and the control port.
        """
        self.assertEqual(render_chain(LOCKDOWN, 4), LOCKDOWN_CHAIN4)
        self.assertEqual(render_chain(LOCKDOWN, 6), LOCKDOWN_CHAIN6)

    def test_stale_jumps(self) -> None:
        """
        Leftover jumps are deleted in the same transaction that adds the new one.
        """
        expected = PORTS_CHAIN.replace(
            ":SIG2KNOCK - [0:0]\n",
            ":SIG2KNOCK - [0:0]\n-D INPUT -j SIG2KNOCK\n-D INPUT -j SIG2KNOCK\n",
        )
        self.assertEqual(render_chain(PORTS, 4, stale_jumps=2), expected)

    def test_bad_policy_or_family(self) -> None:
        """
        An unknown policy or family is a programming error.
        """
        self.assertRaises(ValueError, render_chain, PORTS, 5)
        bad = FirewallSettings(control_port=1, port_range=(2, 3), policy="open")
        self.assertRaises(ValueError, render_chain, bad, 4)
        self.assertRaises(FirewallError, IptablesFirewall, Clock(), bad)

    def test_flush(self) -> None:
        """
        Flushing deletes the jumps, empties and deletes the chain; only what is there.
        """
        self.assertEqual(
            render_flush(2, True),
            "*filter\n:SIG2KNOCK - [0:0]\n-D INPUT -j SIG2KNOCK\n-D INPUT -j SIG2KNOCK\n"
            "-X SIG2KNOCK\nCOMMIT\n",
        )
        self.assertEqual(render_flush(1, False), "*filter\n-D INPUT -j SIG2KNOCK\nCOMMIT\n")

    def test_grant_args(self) -> None:
        """
        A grant is one source, one port, new connections only, until its datestop.
        """
        self.assertEqual(
            render_grant_args(ALICE4, 40005, T0 + 30),
            grant_spec("192.0.2.7", 40005, "2030-01-02T03:04:34"),
        )
        self.assertEqual(
            render_grant_args(ALICE6, 40099, T0 + 30.999),
            grant_spec("2001:db8::7", 40099, "2030-01-02T03:04:34"),
        )

    def test_datestop(self) -> None:
        """
        The kernel matches during the datestop second, so it is the last whole second before
        the deadline (UTC).
        """
        self.assertEqual(datestop(T0), "2030-01-02T03:04:04")
        self.assertEqual(datestop(T0 + 0.5), "2030-01-02T03:04:04")
        self.assertEqual(datestop(T0 + 1), "2030-01-02T03:04:05")


class FakeRun:
    """
    Stands in for ``run_tool``: records ``(argv, stdin)``, answers ``-S`` with ``listings``
    and fails the calls ``failing`` picks.
    """

    def __init__(self) -> None:
        self.calls: List[Tuple[List[str], bytes]] = []
        self.listings = {"iptables": EMPTY_LISTING, "ip6tables": EMPTY_LISTING}
        self.failing: Callable[[List[str]], bool] = lambda argv: False

    def __call__(self, reactor: object, argv: List[str], stdin: bytes = b"") -> Deferred:
        self.calls.append((list(argv), stdin))
        if self.failing(argv):
            return fail(FirewallError(f"{' '.join(argv)}: exit status 1: refused"))
        if argv[-1] == "-S":
            return succeed(self.listings[os.path.basename(argv[argv.index("-w") - 1])])
        return succeed(b"")


class BackendTests(TestCase):
    """
    The backend's commands, exactly, against ``FakeRun`` and a ``Clock``.
    """

    def setUp(self) -> None:
        self.bin = os.path.abspath(self.mktemp())
        os.makedirs(self.bin)
        for name in ("iptables", "ip6tables", "iptables-restore", "ip6tables-restore"):
            path = os.path.join(self.bin, name)
            with open(path, "w", encoding="ascii") as tool:
                tool.write("#!/bin/sh\nexit 0\n")
            os.chmod(path, 0o755)
        self.ipt = os.path.join(self.bin, "iptables")
        self.ip6t = os.path.join(self.bin, "ip6tables")
        self.clock = Clock()
        self.clock.advance(T0)
        self.run = FakeRun()

    def backend(
        self, settings: FirewallSettings = PORTS, prefix: Tuple[str, ...] = ()
    ) -> IptablesFirewall:
        return IptablesFirewall(
            self.clock, settings, tools=(self.ipt, self.ip6t), run=self.run, command_prefix=prefix
        )

    def test_interface(self) -> None:
        """
        The backend provides ``IFirewall``.
        """
        self.assertTrue(verifyObject(IFirewall, self.backend()))
        self.assertEqual(IptablesFirewall.name, "iptables")

    def test_available(self) -> None:
        """
        ``available`` says whether the tools are on this host.
        """
        self.assertEqual(
            IptablesFirewall.available(),
            all(shutil.which(n, path="/usr/sbin:/usr/bin:/sbin:/bin:" + os.environ.get("PATH", ""))
                for n in ("iptables", "ip6tables", "iptables-restore", "ip6tables-restore")),
        )

    def test_start(self) -> None:
        """
        ``start`` lists each family's table, then loads its chain in one restore.
        """
        self.successResultOf(self.backend(LOCKDOWN).start())
        self.assertEqual(
            self.run.calls,
            [
                ([self.ipt, "-w", "-t", "filter", "-S"], b""),
                ([self.ipt + "-restore", "-w", "--noflush"], LOCKDOWN_CHAIN4.encode()),
                ([self.ip6t, "-w", "-t", "filter", "-S"], b""),
                ([self.ip6t + "-restore", "-w", "--noflush"], LOCKDOWN_CHAIN6.encode()),
            ],
        )

    def test_start_after_crash(self) -> None:
        """
        Leftover jumps (exactly ours, not a hand-made one) are deleted by the restore that
        installs the new jump.
        """
        self.run.listings["iptables"] = LEFTOVER_LISTING
        self.successResultOf(self.backend().start())
        self.assertEqual(
            self.run.calls[1],
            ([self.ipt + "-restore", "-w", "--noflush"], render_chain(PORTS, 4, 2).encode()),
        )
        self.assertEqual(self.run.calls[3][1], PORTS_CHAIN.encode())

    def test_command_prefix(self) -> None:
        """
        ``command_prefix`` comes before every argv.
        """
        prefix = ("/usr/sbin/ip", "netns", "exec", "lab")
        self.successResultOf(self.backend(prefix=prefix).start())
        self.assertEqual(
            [argv for argv, _ in self.run.calls],
            [
                [*prefix, self.ipt, "-w", "-t", "filter", "-S"],
                [*prefix, self.ipt + "-restore", "-w", "--noflush"],
                [*prefix, self.ip6t, "-w", "-t", "filter", "-S"],
                [*prefix, self.ip6t + "-restore", "-w", "--noflush"],
            ],
        )

    def test_start_fails(self) -> None:
        """
        A refused restore fails ``start`` with ``FirewallError``.
        """
        self.run.failing = lambda argv: argv[0].endswith("-restore")
        self.failureResultOf(self.backend().start(), FirewallError)
        self.assertEqual(len(self.run.calls), 2)

    def test_missing_tool(self) -> None:
        """
        A missing tool fails the operation with ``FirewallError`` naming it and the remedy.
        """
        backend = IptablesFirewall(
            self.clock, PORTS, tools=("/nonexistent/iptables", self.ip6t), run=self.run
        )
        failure = self.failureResultOf(backend.start(), FirewallError)
        message = str(failure.value)
        self.assertIn("/nonexistent/iptables", message)
        self.assertIn("install iptables", message)
        self.assertIn("FIREWALL", message)
        self.assertEqual(self.run.calls, [])
        backend = IptablesFirewall(
            self.clock, PORTS, tools=(self.ipt, "/nonexistent/ip6tables"), run=self.run
        )
        self.failureResultOf(backend.grant(ALICE6, 40005, T0 + 30), FirewallError)
        self.assertEqual(self.run.calls, [])

    def test_grant_ipv4(self) -> None:
        """
        An IPv4 grant is inserted at the top of the chain with iptables.
        """
        self.successResultOf(self.backend().grant(ALICE4, 40005, T0 + 30))
        self.assertEqual(
            self.run.calls,
            [([self.ipt, "-w", "-I", "SIG2KNOCK", "1",
               *grant_spec("192.0.2.7", 40005, "2030-01-02T03:04:34")], b"")],
        )

    def test_grant_ipv6(self) -> None:
        """
        An IPv6 grant is inserted with ip6tables, /128.
        """
        self.successResultOf(self.backend().grant(ALICE6, 40005, T0 + 2.5))
        self.assertEqual(
            self.run.calls,
            [([self.ip6t, "-w", "-I", "SIG2KNOCK", "1",
               *grant_spec("2001:db8::7", 40005, "2030-01-02T03:04:06")], b"")],
        )

    def test_grant_past_deadline(self) -> None:
        """
        A deadline in the past (or without a whole second left) is refused; nothing is run.
        """
        backend = self.backend()
        for deadline in (T0 - 5, T0, T0 + 0.9):
            failure = self.failureResultOf(backend.grant(ALICE4, 40005, deadline), FirewallError)
            self.assertIn("deadline", str(failure.value))
        self.clock.advance(0.5)
        self.failureResultOf(backend.grant(ALICE4, 40005, T0 + 0.99), FirewallError)
        self.assertEqual(self.run.calls, [])
        self.assertEqual(backend.grants, {})

    def test_grant_fails(self) -> None:
        """
        A refused insert fails the grant, and nothing is remembered.
        """
        self.run.failing = lambda argv: True
        backend = self.backend()
        self.failureResultOf(backend.grant(ALICE4, 40005, T0 + 30), FirewallError)
        self.assertEqual(backend.grants, {})

    def test_revoke(self) -> None:
        """
        Revoke deletes exactly the rule the grant inserted, datestop included.
        """
        backend = self.backend()
        self.successResultOf(backend.grant(ALICE4, 40005, T0 + 30))
        self.successResultOf(backend.grant(ALICE4, 40006, T0 + 40))
        self.successResultOf(backend.grant(ALICE6, 40005, T0 + 30))
        del self.run.calls[:]
        self.successResultOf(backend.revoke(ALICE4, 40005))
        self.assertEqual(
            self.run.calls,
            [([self.ipt, "-w", "-D", "SIG2KNOCK",
               *grant_spec("192.0.2.7", 40005, "2030-01-02T03:04:34")], b"")],
        )
        self.assertEqual(set(backend.grants), {(ALICE4, 40006), (ALICE6, 40005)})

    def test_revoke_unknown(self) -> None:
        """
        Revoking a grant this object never made (e.g. after a restart) runs nothing.
        """
        self.successResultOf(self.backend().revoke(ALICE4, 40005))
        self.assertEqual(self.run.calls, [])

    def test_revoke_gone(self) -> None:
        """
        A rule that is already gone (the delete fails and a check finds none) is not an error.
        """
        backend = self.backend()
        self.successResultOf(backend.grant(ALICE4, 40005, T0 + 30))
        del self.run.calls[:]
        self.run.failing = lambda argv: argv[2] in ("-D", "-C")
        self.successResultOf(backend.revoke(ALICE4, 40005))
        spec = grant_spec("192.0.2.7", 40005, "2030-01-02T03:04:34")
        self.assertEqual(
            [argv for argv, _ in self.run.calls],
            [
                [self.ipt, "-w", "-D", "SIG2KNOCK", *spec],
                [self.ipt, "-w", "-C", "SIG2KNOCK", *spec],
            ],
        )
        self.assertEqual(backend.grants, {})

    def test_revoke_fails(self) -> None:
        """
        A delete that fails while the rule is still there fails the revoke; the grant is kept
        so ``stop`` tries again.
        """
        backend = self.backend()
        self.successResultOf(backend.grant(ALICE4, 40005, T0 + 30))
        self.run.failing = lambda argv: argv[2] == "-D"
        self.failureResultOf(backend.revoke(ALICE4, 40005), FirewallError)
        self.assertEqual(list(backend.grants), [(ALICE4, 40005)])
        self.run.failing = lambda argv: False
        self.successResultOf(backend.stop())
        self.assertEqual(backend.grants, {})

    def test_regrant(self) -> None:
        """
        Granting the same source and port again inserts the new rule, then deletes the old.
        """
        backend = self.backend()
        self.successResultOf(backend.grant(ALICE4, 40005, T0 + 30))
        self.successResultOf(backend.grant(ALICE4, 40005, T0 + 60))
        self.assertEqual(
            [argv[2:4] + argv[-7:-6] for argv, _ in self.run.calls],
            [["-I", "SIG2KNOCK", "2030-01-02T03:04:34"],
             ["-I", "SIG2KNOCK", "2030-01-02T03:05:04"],
             ["-D", "SIG2KNOCK", "2030-01-02T03:04:34"]],
        )

    def test_stop(self) -> None:
        """
        ``stop`` deletes every known grant and nothing else: the base rules stay.
        """
        backend = self.backend()
        self.successResultOf(backend.start())
        self.successResultOf(backend.grant(ALICE4, 40005, T0 + 30))
        self.successResultOf(backend.grant(ALICE6, 40006, T0 + 30))
        del self.run.calls[:]
        self.successResultOf(backend.stop())
        self.assertEqual(
            [argv[:4] for argv, _ in self.run.calls],
            [[self.ipt, "-w", "-D", "SIG2KNOCK"], [self.ip6t, "-w", "-D", "SIG2KNOCK"]],
        )
        self.assertEqual(backend.grants, {})

    def test_stop_fails(self) -> None:
        """
        ``stop`` tries every grant and reports a failure.
        """
        backend = self.backend()
        self.successResultOf(backend.grant(ALICE4, 40005, T0 + 30))
        self.successResultOf(backend.grant(ALICE6, 40006, T0 + 30))
        del self.run.calls[:]
        self.run.failing = lambda argv: argv[0] == self.ipt and argv[2] == "-D"
        failure = self.failureResultOf(backend.stop(), FirewallError)
        self.assertIn("1 grant(s)", str(failure.value))
        self.assertEqual(list(backend.grants), [(ALICE4, 40005)])

    def test_flush(self) -> None:
        """
        ``flush`` removes our jumps and chain for each family; nothing there, nothing run.
        """
        self.run.listings["iptables"] = LEFTOVER_LISTING
        self.successResultOf(self.backend().flush())
        self.assertEqual(
            self.run.calls,
            [
                ([self.ipt, "-w", "-t", "filter", "-S"], b""),
                ([self.ipt + "-restore", "-w", "--noflush"],
                 b"*filter\n:SIG2KNOCK - [0:0]\n-D INPUT -j SIG2KNOCK\n-D INPUT -j SIG2KNOCK\n"
                 b"-X SIG2KNOCK\nCOMMIT\n"),
                ([self.ip6t, "-w", "-t", "filter", "-S"], b""),
            ],
        )

    def test_run_raises(self) -> None:
        """
        A runner that raises ``FirewallError`` at once (it could not spawn) fails the call.
        """
        def raising(reactor: object, argv: List[str], stdin: bytes = b"") -> Deferred:
            raise FirewallError("cannot run")

        backend = IptablesFirewall(self.clock, PORTS, tools=(self.ipt, self.ip6t), run=raising)
        self.failureResultOf(backend.start(), FirewallError)


# -- the real thing

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
        self.ns = f"s2kipt{os.getpid()}{uuid.uuid4().hex[:6]}"
        subprocess.run([IP, "netns", "add", self.ns], check=True)
        self.addCleanup(subprocess.run, [IP, "netns", "del", self.ns], check=False)
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
