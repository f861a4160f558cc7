"""
Tests for the iptables backend: exact rules and commands against a recording stand-in for the
tool runner. The real iptables is tested in ``tests/test_iptables.py``.
"""

import calendar
import ipaddress
import os
import shutil
from typing import Callable, List, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
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
