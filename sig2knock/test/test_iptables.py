"""
Tests for the iptables backend (sig2knock.firewall.iptables): the exact commands it runs, in
every mode, against a recording stand-in for the tool runner and a Clock. Its rules are tested
in test_iptables_rules, the real iptables in ``tests/test_iptables.py``.
"""

import ipaddress
import os
import shutil
from typing import Callable, List, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from sig2knock.firewall import FirewallError, FirewallSettings, IFirewall, IWallClockGrants
from sig2knock.firewall import iptables as iptables_module
from sig2knock.firewall.iptables import IptablesFirewall
from sig2knock.firewall.iptables_rules import NAT_CHAIN, render_chain, render_nat_grant_specs
from sig2knock.test import common
from sig2knock.test.expected_iptables import (
    ALICE4,
    ALICE6,
    CLIENT,
    LOCKDOWN,
    LOCKDOWN_CHAIN4,
    LOCKDOWN_CHAIN6,
    LOOPBACK,
    NAT_PORTS,
    PORTS,
    PORTS_CHAIN,
    T0,
    grant_spec,
)


EMPTY_LISTING = b"-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n"
LEFTOVER_LISTING = (
    b"-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-N SIG2KNOCK\n"
    b"-A INPUT -j SIG2KNOCK\n-A INPUT -i eth0 -j SIG2KNOCK\n-A INPUT -j SIG2KNOCK\n"
    b"-A SIG2KNOCK -p tcp -m tcp --dport 40000:40100 -j DROP\n"
)


class FakeRun(common.FakeRun):
    """
    Records ``(argv, stdin)``, answers ``-S`` with ``listings`` and fails the calls ``failing``
    picks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.listings = {"iptables": EMPTY_LISTING, "ip6tables": EMPTY_LISTING}
        self.failing: Callable[[List[str]], bool] = lambda argv: False

    def record(self, reactor: object, argv: List[str], stdin: bytes) -> Tuple[List[str], bytes]:
        return (argv, stdin)

    def answer(self, argv: List[str], stdin: bytes) -> Deferred:
        if self.failing(argv):
            return fail(FirewallError(f"{' '.join(argv)}: exit status 1: refused"))
        if argv[-1] == "-S":
            return succeed(self.listings[os.path.basename(argv[argv.index("-w") - 1])])
        return succeed(b"")


class BackendTests(TestCase):
    """
    The backend's commands, exactly, against ``FakeRun`` and a ``Clock``.
    """

    def test_badPolicyRefusedAtConstruction(self) -> None:
        bad = FirewallSettings(control_port=1, port_range=(2, 3), policy="open")
        self.assertRaises(FirewallError, IptablesFirewall, Clock(), bad)

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
            all(shutil.which(n, path="/usr/sbin:/usr/bin:/sbin:/bin")
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

    def test_clockSteppedBack(self) -> None:
        """
        ``--datestop`` is a wall-clock time: after the clock went back an hour, each open grant
        is re-inserted an hour earlier (so it ends at its time on the new clock) and the old rule
        deleted; a grant whose time is over on the new clock is revoked.
        """
        backend = self.backend()
        self.assertTrue(verifyObject(IWallClockGrants, backend))
        self.successResultOf(backend.grant(ALICE4, 40005, T0 + 30))
        self.successResultOf(backend.grant(ALICE6, 40006, T0 + 1.5))
        self.run.calls.clear()
        self.clock.rightNow -= 3600 - 2  # the step, two seconds ago
        self.successResultOf(backend.clock_stepped_back(3600))
        commands = [argv[argv.index("-w") + 1:] for argv, _ in self.run.calls]
        self.assertEqual(
            commands,
            [
                ["-I", "SIG2KNOCK", "1", *grant_spec("192.0.2.7", 40005, "2030-01-02T02:04:34")],
                ["-D", "SIG2KNOCK", *grant_spec("192.0.2.7", 40005, "2030-01-02T03:04:34")],
                ["-D", "SIG2KNOCK", *grant_spec("2001:db8::7", 40006, "2030-01-02T03:04:05")],
            ],
        )
        self.assertEqual(backend.deadlines, {(ALICE4, 40005): T0 + 30 - 3600})
        self.assertEqual(list(backend.grants), [(ALICE4, 40005)])

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


class NatBackendTests(TestCase):
    """
    The backend in nat mode: grants go into the nat chain, once-rule first; revoke removes
    both; an IPv6 client cannot be forwarded to an IPv4 target.
    """

    # The same stand-in tools, fake runner and clock as the backend's own tests.
    setUp = BackendTests.setUp
    backend = BackendTests.backend

    def test_natGrantAndRevoke(self) -> None:
        firewall = self.backend(NAT_PORTS)
        self.successResultOf(firewall.grant(CLIENT, 40005, T0 + 30, LOOPBACK))
        once, dnat = render_nat_grant_specs(CLIENT, 40005, "2030-01-02T03:04:34", LOOPBACK)
        inserted = [argv[argv.index("-w") + 1:] for argv, _ in self.run.calls]
        self.assertEqual(
            inserted,
            [
                ["-t", "nat", "-I", NAT_CHAIN, "1", *dnat],
                ["-t", "nat", "-I", NAT_CHAIN, "1", *once],
            ],
        )
        self.run.calls.clear()
        self.successResultOf(firewall.revoke(CLIENT, 40005))
        deleted = [argv[argv.index("-w") + 1:] for argv, _ in self.run.calls]
        self.assertEqual(
            deleted,
            [["-t", "nat", "-D", NAT_CHAIN, *once], ["-t", "nat", "-D", NAT_CHAIN, *dnat]],
        )

    def test_usedGrantsFromTheRecentLists(self) -> None:
        """
        In nat mode a grant is used once its port's ``xt_recent`` list holds its source (the
        kernel put it there at the first connection); in proxy mode nothing is asked.
        """
        from sig2knock.firewall import IGrantUse, kernel

        proc = os.path.abspath(self.mktemp())
        recent = os.path.join(proc, "net", "xt_recent")
        os.makedirs(recent)
        self.patch(kernel, "PROC", proc)
        with open(os.path.join(recent, "sig2knock_40005"), "w", encoding="ascii") as listing:
            listing.write("src=198.18.0.2 ttl: 64 last_seen: 4295 oldest_pkt: 1 4295\n")
        firewall = self.backend(NAT_PORTS)
        verifyObject(IGrantUse, firewall)
        other = ipaddress.ip_address("198.18.0.9")
        used = self.successResultOf(firewall.used_grants([(CLIENT, 40005), (CLIENT, 40006),
                                                          (other, 40005)]))
        self.assertEqual(used, {(CLIENT, 40005)})
        self.assertEqual(self.successResultOf(self.backend(PORTS).used_grants([(CLIENT, 40005)])),
                         set())

    def test_proxyAndNatServicesSideBySide(self) -> None:
        """
        With nat rules in place, a grant without a target (a service in proxy mode) is a filter
        rule for the daemon's listener, one with a target a DNAT rule; a target is refused by a
        backend whose rules have no nat.
        """
        self.patch(iptables_module, "forget_recent", lambda *args: None)
        firewall = self.backend(NAT_PORTS)
        self.successResultOf(firewall.grant(CLIENT, 40006, T0 + 30))
        self.successResultOf(firewall.grant(CLIENT, 40005, T0 + 30, LOOPBACK))
        tables = [rule[1] for key in ((CLIENT, 40006), (CLIENT, 40005))
                  for rule in firewall.grants[key]]
        self.assertEqual(tables, ["filter", "nat", "nat"])
        failure = self.failureResultOf(
            self.backend(PORTS).grant(CLIENT, 40007, T0 + 30, LOOPBACK), FirewallError
        )
        self.assertIn("no nat", failure.getErrorMessage())

    def test_natGrantToItsServicesTarget(self) -> None:
        """
        A grant that names its target (a named service's) is DNAT'ed there, and keeps it when
        moved back with the clock.
        """
        inner = (ipaddress.ip_address("198.19.0.2"), 3389)
        self.patch(iptables_module, "forget_recent", lambda *args: None)
        firewall = self.backend(NAT_PORTS)
        self.successResultOf(firewall.grant(CLIENT, 40005, T0 + 30, inner))
        _, dnat = render_nat_grant_specs(CLIENT, 40005, "2030-01-02T03:04:34", inner)
        self.assertIn("198.19.0.2:3389", dnat)
        self.assertEqual(firewall.grants[(CLIENT, 40005)][1][3], dnat)
        self.clock.rightNow -= 600
        self.successResultOf(firewall.clock_stepped_back(600))
        _, moved = render_nat_grant_specs(CLIENT, 40005, "2030-01-02T02:54:34", inner)
        self.assertEqual(firewall.grants[(CLIENT, 40005)][1][3], moved)
        self.successResultOf(firewall.revoke(CLIENT, 40005, inner))
        self.assertEqual((firewall.grants, firewall.targets), ({}, {}))

    def test_natGrantMovedBackKeepsItsOneConnection(self) -> None:
        """
        Moved back with the clock, a nat grant keeps the ``xt_recent`` record of its one
        connection (only a new grant forgets it), so a second connection stays refused.
        """
        forgotten = []
        self.patch(iptables_module, "forget_recent", lambda *args: forgotten.append(args))
        firewall = self.backend(NAT_PORTS)
        self.successResultOf(firewall.grant(CLIENT, 40005, T0 + 30, LOOPBACK))
        self.assertEqual(len(forgotten), 1)
        self.run.calls.clear()
        self.clock.rightNow -= 600
        self.successResultOf(firewall.clock_stepped_back(600))
        old_once, old_dnat = render_nat_grant_specs(
            CLIENT, 40005, "2030-01-02T03:04:34", LOOPBACK
        )
        once, dnat = render_nat_grant_specs(CLIENT, 40005, "2030-01-02T02:54:34", LOOPBACK)
        self.assertEqual(old_once, once, "the guard is the same rule text")
        commands = [argv[argv.index("-w") + 1:] for argv, _ in self.run.calls]
        # The old rules go first, DNAT before its guard (deleting the guard after inserting
        # its twin would take the new one and leave the DNAT rule above the old guard); then
        # the new ones, the guard ending above its DNAT rule.
        self.assertEqual(
            commands,
            [
                ["-t", "nat", "-D", NAT_CHAIN, *old_dnat],
                ["-t", "nat", "-D", NAT_CHAIN, *old_once],
                ["-t", "nat", "-I", NAT_CHAIN, "1", *dnat],
                ["-t", "nat", "-I", NAT_CHAIN, "1", *once],
            ],
        )
        self.assertEqual(firewall.grants[(CLIENT, 40005)][1][3], dnat)
        self.assertEqual(len(forgotten), 1, "the record of its one connection is kept")

    def test_natGrantHalfRefusedLeavesNothing(self) -> None:
        """
        When the one-connection rule is refused after the DNAT rule went in, the DNAT rule is
        taken back: a refused grant must not forward every connection until its deadline.
        """
        firewall = self.backend(NAT_PORTS)
        once, dnat = render_nat_grant_specs(CLIENT, 40005, "2030-01-02T03:04:34", LOOPBACK)
        self.run.failing = lambda argv: "-I" in argv and argv[-len(once):] == once
        self.failureResultOf(firewall.grant(CLIENT, 40005, T0 + 30, LOOPBACK), FirewallError)
        commands = [argv[argv.index("-w") + 1:] for argv, _ in self.run.calls]
        self.assertEqual(
            commands,
            [
                ["-t", "nat", "-I", NAT_CHAIN, "1", *dnat],
                ["-t", "nat", "-I", NAT_CHAIN, "1", *once],
                ["-t", "nat", "-D", NAT_CHAIN, *dnat],
            ],
        )
        self.assertEqual(firewall.grants, {})

    def test_natGrantRollbackRefusedIsRemembered(self) -> None:
        """
        When taking the DNAT rule back fails too, the insert's refusal is what the caller hears,
        and the rule left in the chain is remembered, so that stopping deletes it.
        """
        firewall = self.backend(NAT_PORTS)
        once, dnat = render_nat_grant_specs(CLIENT, 40005, "2030-01-02T03:04:34", LOOPBACK)
        self.run.failing = lambda argv: (
            ("-I" in argv and argv[-len(once):] == once) or "-D" in argv
        )
        failure = self.failureResultOf(firewall.grant(CLIENT, 40005, T0 + 30, LOOPBACK), FirewallError)
        self.assertIn("-I", failure.getErrorMessage())
        self.assertEqual(list(firewall.grants), [(CLIENT, 40005)])
        self.run.failing = lambda argv: False
        self.run.calls.clear()
        self.successResultOf(firewall.stop())
        deleted = [argv[argv.index("-w") + 1:] for argv, _ in self.run.calls]
        self.assertIn(["-t", "nat", "-D", NAT_CHAIN, *dnat], deleted)
        self.assertEqual(firewall.grants, {})

    def test_natOtherFamilyRefused(self) -> None:
        firewall = self.backend(NAT_PORTS)
        self.failureResultOf(
            firewall.grant(ipaddress.ip_address("2001:2::2"), 40005, T0 + 30, LOOPBACK),
            FirewallError
        )
        self.assertEqual(self.run.calls, [])
