"""
Tests for the PktFilter backend: the exact rules file, and loading it through the real
``run_tool`` with a stand-in ``pktctl`` (PktFilter itself only runs on Windows).
"""

import ipaddress
import os
import sys
from typing import List, Tuple

from twisted.internet import reactor as real_reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from sig2knock.firewall import FirewallError, FirewallSettings, IFirewall
from sig2knock.firewall.pktfilter import PktFilterFirewall, port_match, render_rules
from sig2knock.test import common


PORTS = FirewallSettings(1001, (40000, 40100), policy="ports", interface="eth0")
LOCKDOWN = FirewallSettings(1001, (40000, 40100), policy="lockdown", interface="eth0")
ALICE4 = ipaddress.ip_address("192.0.2.7")
ALICE6 = ipaddress.ip_address("2001:db8::7")
HEADER = "# sig2knock: generated, replaced on every change; do not edit\n"

PORTS_RULES = HEADER + "block in on eth0 proto tcp from any to any port 39999 >< 40101\n"
LOCKDOWN_RULES = (
    HEADER
    + "block in on eth0 all\n"
    + "pass in on eth0 proto udp from any to any port = 1001\n"
    + "pass out on eth0 all\n"
)
GRANT4 = "pass in on eth0 proto tcp from 192.0.2.7 to any port = 40005\n"
GRANT6 = "pass in on eth0 proto tcp from 2001:db8::7 to any port = 40006\n"


class RenderTests(TestCase):
    """
    The rules file, exactly.
    """

    def test_ports(self) -> None:
        """
        Policy ``ports`` blocks the assigned range (inclusive) on the interface.
        """
        self.assertEqual(render_rules(PORTS), PORTS_RULES)

    def test_lockdown(self) -> None:
        """
        Policy ``lockdown`` blocks everything inbound but the control port.
        """
        self.assertEqual(render_rules(LOCKDOWN), LOCKDOWN_RULES)

    def test_grants(self) -> None:
        """
        Grants (IPv4 and IPv6) follow the block lines, in order.
        """
        self.assertEqual(render_rules(PORTS, [(ALICE4, 40005), (ALICE6, 40006)]),
                         PORTS_RULES + GRANT4 + GRANT6)
        self.assertEqual(render_rules(LOCKDOWN, [(ALICE6, 40006)]), LOCKDOWN_RULES + GRANT6)

    def test_port_match(self) -> None:
        """
        Inclusive ranges in pf's exclusive ``><``; one port with ``=``; up to 65535 with ``>``.
        """
        self.assertEqual(port_match(40000, 40100), "port 39999 >< 40101")
        self.assertEqual(port_match(40000, 40000), "port = 40000")
        self.assertEqual(port_match(60000, 65535), "port > 59999")

    def test_refused_settings(self) -> None:
        """
        No interface, or an unknown policy, cannot be rendered.
        """
        self.assertRaises(ValueError, render_rules, FirewallSettings(1, (2, 3)))
        self.assertRaises(ValueError, render_rules, FirewallSettings(1, (2, 3), "open", "eth0"))
        self.assertRaises(FirewallError, PktFilterFirewall, Clock(), FirewallSettings(1, (2, 3)))


class FakeRun(common.FakeRun):
    """
    Records argv and the rules file's text at each call; refuses when told to.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refuse = False

    def record(self, reactor: object, argv: List[str], stdin: bytes) -> Tuple[List[str], str]:
        with open(argv[-1] if argv[-2] == "-f" else os.devnull, encoding="ascii") as rules:
            return (argv, rules.read())

    def answer(self, argv: List[str], stdin: bytes) -> Deferred:
        if self.refuse:
            return fail(FirewallError("pktctl: exit status 1: syntax error"))
        return succeed(b"")


class BackendTests(TestCase):
    """
    The backend's reloads against ``FakeRun``.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.tool = os.path.join(self.directory, "pktctl")
        with open(self.tool, "w", encoding="ascii") as tool:
            tool.write("#!/bin/sh\nexit 0\n")
        os.chmod(self.tool, 0o755)
        self.rules = os.path.join(self.directory, "rules.txt")
        self.clock = Clock()
        self.clock.advance(1000)
        self.run = FakeRun()
        self.backend = PktFilterFirewall(
            self.clock, PORTS, tool=self.tool, rules_path=self.rules, run=self.run
        )

    def loaded(self) -> List[str]:
        return [text for _, text in self.run.calls]

    def test_interface(self) -> None:
        """
        The backend provides ``IFirewall``.
        """
        self.assertTrue(verifyObject(IFirewall, self.backend))
        self.assertEqual(PktFilterFirewall.name, "pktfilter")
        self.assertIsInstance(PktFilterFirewall.available(), bool)

    def test_cycle(self) -> None:
        """
        Every change rewrites the whole file and reloads it with ``-F all -f FILE``.
        """
        self.successResultOf(self.backend.start())
        self.successResultOf(self.backend.grant(ALICE4, 40005, 1030))
        self.successResultOf(self.backend.grant(ALICE6, 40006, 1030))
        self.successResultOf(self.backend.revoke(ALICE4, 40005))
        self.successResultOf(self.backend.revoke(ALICE4, 40005))  # gone: nothing to do
        self.successResultOf(self.backend.stop())
        self.assertEqual(
            [argv for argv, _ in self.run.calls],
            [[self.tool, "-F", "all", "-f", self.rules]] * 5,
        )
        self.assertEqual(
            self.loaded(),
            [PORTS_RULES, PORTS_RULES + GRANT4, PORTS_RULES + GRANT4 + GRANT6,
             PORTS_RULES + GRANT6, PORTS_RULES],
        )
        self.assertEqual(sorted(os.listdir(self.directory)), ["pktctl", "rules.txt"])

    def test_start_drops_grants(self) -> None:
        """
        ``start`` loads the base rules alone, whatever was granted before.
        """
        self.successResultOf(self.backend.grant(ALICE4, 40005, 1030))
        self.successResultOf(self.backend.start())
        self.assertEqual(self.loaded()[-1], PORTS_RULES)
        self.assertEqual(self.backend.grants, [])

    def test_past_deadline(self) -> None:
        """
        A grant whose deadline has passed is refused; nothing is loaded.
        """
        self.failureResultOf(self.backend.grant(ALICE4, 40005, 1000), FirewallError)
        self.assertEqual(self.run.calls, [])

    def test_refused(self) -> None:
        """
        A refused load fails with ``FirewallError`` and the grant is not counted as made.
        """
        self.run.refuse = True
        self.failureResultOf(self.backend.grant(ALICE4, 40005, 1030), FirewallError)
        self.assertEqual(self.backend.grants, [])

    def test_missing_tool(self) -> None:
        """
        A missing ``pktctl`` fails with ``FirewallError`` naming it.
        """
        backend = PktFilterFirewall(
            self.clock, PORTS, tool=os.path.join(self.directory, "nope"), rules_path=self.rules,
            run=self.run,
        )
        failure = self.failureResultOf(backend.start(), FirewallError)
        self.assertIn("nope: not found", str(failure.value))
        self.assertEqual(self.run.calls, [])

    def test_unwritable(self) -> None:
        """
        A rules file that cannot be written fails with ``FirewallError``.
        """
        backend = PktFilterFirewall(
            self.clock, PORTS, tool=self.tool,
            rules_path=os.path.join(self.directory, "missing", "rules.txt"), run=self.run,
        )
        self.failureResultOf(backend.start(), FirewallError)

    def test_flush(self) -> None:
        """
        ``flush`` empties the rules file and unloads everything with ``-F all``.
        """
        self.successResultOf(self.backend.grant(ALICE4, 40005, 1030))
        self.successResultOf(self.backend.flush())
        self.assertEqual(self.run.calls[-1][0], [self.tool, "-F", "all"])
        with open(self.rules, encoding="ascii") as rules:
            self.assertEqual(rules.read(), HEADER)
        self.assertEqual(self.backend.grants, [])


STAND_IN = """\
#!{python}
import shutil, sys
log = {log!r}
with open(log, "a") as out:
    out.write(repr(sys.argv[1:]) + "\\n")
    if "-f" in sys.argv:
        with open(sys.argv[sys.argv.index("-f") + 1]) as rules:
            out.write(rules.read())
sys.exit({status})
"""


class StandInTests(TestCase):
    """
    Through the real ``run_tool`` and reactor, with an executable standing in for ``pktctl``.
    """

    def stand_in(self, status: int) -> Tuple[str, str, str]:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        log = os.path.join(directory, "log")
        tool = os.path.join(directory, "pktctl")
        with open(tool, "w", encoding="utf-8") as script:
            script.write(STAND_IN.format(python=sys.executable, log=log, status=status))
        os.chmod(tool, 0o755)
        return tool, os.path.join(directory, "rules.txt"), log

    @inlineCallbacks
    def test_loads(self) -> object:
        """
        The tool is run with ``-F all -f FILE`` and finds the rendered rules in the file.
        """
        tool, rules, log = self.stand_in(0)
        backend = PktFilterFirewall(real_reactor, LOCKDOWN, tool=tool, rules_path=rules)
        yield backend.start()
        yield backend.grant(ALICE4, 40005, real_reactor.seconds() + 30)
        with open(log, encoding="utf-8") as logged:
            self.assertEqual(
                logged.read(),
                f"{['-F', 'all', '-f', rules]!r}\n{LOCKDOWN_RULES}"
                f"{['-F', 'all', '-f', rules]!r}\n{LOCKDOWN_RULES}"
                + GRANT4,
            )

    @inlineCallbacks
    def test_refused(self) -> object:
        """
        A tool exiting 1 fails the change with ``FirewallError``.
        """
        tool, rules, _ = self.stand_in(1)
        backend = PktFilterFirewall(real_reactor, PORTS, tool=tool, rules_path=rules)
        with self.assertRaises(FirewallError) as caught:
            yield backend.grant(ALICE6, 40006, real_reactor.seconds() + 30)
        self.assertIn("exit status 1", str(caught.exception))
        self.assertEqual(backend.grants, [])
