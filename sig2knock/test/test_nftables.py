"""
Tests for the nftables backend (sig2knock.firewall.nftables): what it runs for each operation,
around a fake runner and a fake clock, and what it logs. Its scripts are tested in
test_nftables_rules, the real nft in tests/test_nftables.py.
"""

import os
from typing import Any, List, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sig2knock.firewall import (
    FirewallError,
    FirewallSettings,
    IFirewall,
    libnftables,
    nftables,
    nftables_rules,
)
from sig2knock.firewall.libnftables import SONAME, LibnftablesRunner
from sig2knock.firewall.nftables import NftablesFirewall
from sig2knock.firewall.nftables_rules import (
    render_flush,
    render_grant,
    render_listing,
    render_replace_grant,
    render_revoke,
    render_ruleset,
    render_stop,
)
from sig2knock.firewall.runner import run_tool
from sig2knock.test import common
from sig2knock.test.expected_nftables import LOCKDOWN, LOCKDOWN_RULESET, PORTS, V4, V6
from sig2knock.test.fake_libnftables import FakeLibrary, FakePool, FakeReactor


class FakeRun(common.FakeRun):
    """
    Records ``(reactor, argv, stdin)`` and answers with ``result`` (a callable giving a
    Deferred).
    """

    def __init__(self, result: Any = None) -> None:
        super().__init__()
        self.result = result or (lambda: succeed(b""))

    def answer(self, argv: List[str], stdin: bytes) -> Deferred:
        return self.result()


def fakeFindTool(name: str) -> Optional[str]:
    """
    ``find_tool`` for a host with ``nft`` and ``ip`` in /usr/sbin and nothing else.
    """
    known = {"nft": "/usr/sbin/nft", "ip": "/usr/sbin/ip"}
    if os.path.isabs(name):
        return name if name in known.values() else None
    return known.get(name)


class BackendTests(SynchronousTestCase):
    """
    ``NftablesFirewall`` around a fake runner and a fake clock.
    """

    def setUp(self) -> None:
        self.patch(nftables, "find_tool", fakeFindTool)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.run = FakeRun()
        self.firewall = NftablesFirewall(self.clock, LOCKDOWN, run=self.run)

    def test_interface(self) -> None:
        """
        The backend provides ``IFirewall`` and is named as in the FIREWALL setting.
        """
        self.assertTrue(verifyObject(IFirewall, self.firewall))
        self.assertEqual(self.firewall.name, "nftables")

    def test_available(self) -> None:
        """
        ``available`` says whether nft is found.
        """
        self.assertIs(NftablesFirewall.available(), True)
        self.patch(nftables, "find_tool", lambda name: None)
        self.assertIs(NftablesFirewall.available(), False)

    def assertOneCall(self, script: str) -> None:
        """
        The backend ran nft once, with the script on its standard input.
        """
        argv = ["/usr/sbin/nft", "-f", "-"]
        self.assertEqual(self.run.calls, [(self.clock, argv, script.encode())])

    def test_start(self) -> None:
        """
        Start loads the whole ruleset in one nft call.
        """
        self.assertIsNone(self.successResultOf(self.firewall.start()))
        self.assertOneCall(LOCKDOWN_RULESET)

    def test_grant(self) -> None:
        """
        Grant asks for the time left until the deadline, in ms, rounded down, less the margin
        for nft's own start (the kernel counts from its commit).
        """
        deadline = self.clock.seconds() + 30.5
        self.assertIsNone(self.successResultOf(self.firewall.grant(V4, 45678, deadline)))
        self.assertOneCall(render_grant(V4, 45678, 30500 - nftables_rules.GRANT_MARGIN_MS))

    def test_grantOfAnExistingElementReplacesIt(self) -> None:
        """
        When ``create`` finds the element there already, the grant replaces it (so the new
        deadline holds, not the old one) instead of failing.
        """
        answers = [
            lambda: fail(FirewallError("nft -f -: exit status 1: Error: Could not process rule:"
                                       " File exists")),
            lambda: succeed(b""),
        ]
        self.run.result = lambda: answers.pop(0)()
        deadline = self.clock.seconds() + 30
        self.successResultOf(self.firewall.grant(V4, 45678, deadline))
        scripts = [stdin.decode() for _, _, stdin in self.run.calls]
        left = 30000 - nftables_rules.GRANT_MARGIN_MS
        self.assertEqual(scripts, [render_grant(V4, 45678, left),
                                   render_replace_grant(V4, 45678, left)])

    def test_grantRoundsDown(self) -> None:
        """
        A fraction of a millisecond is dropped, never rounded up: the grant ends no later than
        its deadline.
        """
        self.clock.advance(0.25)
        self.successResultOf(self.firewall.grant(V6, 45678, self.clock.seconds() + 1.9999))
        self.assertOneCall(render_grant(V6, 45678, 1999 - nftables_rules.GRANT_MARGIN_MS))

    def test_grantShortest(self) -> None:
        """
        A deadline one millisecond ahead still gets its grant.
        """
        ahead = (nftables_rules.GRANT_MARGIN_MS + 1.5) / 1000
        self.successResultOf(self.firewall.grant(V4, 45678, self.clock.seconds() + ahead))
        self.assertOneCall(render_grant(V4, 45678, 1))

    def test_grantPastDeadline(self) -> None:
        """
        A deadline already past (or less than a millisecond ahead) fails with FirewallError and
        runs nothing.
        """
        for ahead in [-5.0, 0.0, 0.0004, nftables_rules.GRANT_MARGIN_MS / 1000]:
            failure = self.failureResultOf(
                self.firewall.grant(V4, 45678, self.clock.seconds() + ahead), FirewallError
            )
            self.assertIn("past", str(failure.value))
        self.assertEqual(self.run.calls, [])

    def test_natGrantToItsServicesTarget(self) -> None:
        """
        With nat rules in place a grant's map entry sends it to the target it names, and its
        revoke removes that very entry; a grant without a target (a service in proxy mode) is a
        set element alone, for the listener. A target is refused without nat rules.
        """
        import dataclasses
        import ipaddress

        loopback = (ipaddress.ip_address("127.0.0.1"), 22)
        inner = (ipaddress.ip_address("198.19.0.2"), 3389)
        nat = NftablesFirewall(
            self.clock, dataclasses.replace(LOCKDOWN, nat_to=loopback), run=self.run
        )
        deadline = self.clock.seconds() + 30.5
        timeout = 30500 - nftables_rules.GRANT_MARGIN_MS
        self.successResultOf(nat.grant(V4, 45678, deadline, inner))
        self.successResultOf(nat.revoke(V4, 45678, inner))
        self.successResultOf(nat.grant(V4, 45679, deadline))
        scripts = [stdin.decode() for _, _, stdin in self.run.calls]
        self.assertEqual(scripts, [
            render_grant(V4, 45678, timeout, inner),
            render_revoke(V4, 45678, inner),
            render_grant(V4, 45679, timeout),
        ])
        self.assertNotIn("forward4", scripts[2])
        self.failureResultOf(self.firewall.grant(V4, 45680, deadline, inner), FirewallError)
        self.assertIn("198.19.0.2 . 3389", scripts[0])
        self.assertIn("198.19.0.2 . 3389", scripts[1])

    def test_usedGrants(self) -> None:
        """
        In nat mode the kernel deletes a grant's element at its first connection: of the open
        grants, those missing from the listed sets are the used ones (the maps' elements are
        not grants). In proxy mode nothing is asked.
        """
        import dataclasses
        import ipaddress

        from sig2knock.firewall import IGrantUse

        listing = (
            "table inet sig2knock {\n\tset grants4 {\n\t\ttype ipv4_addr . inet_service\n"
            "\t\telements = { 198.18.0.2 . 40123 timeout 30s expires 29s,\n"
            "\t\t\t     198.18.0.3 . 40124 timeout 30s expires 29s }\n\t}\n"
            "\tset grants6 {\n\t\ttype ipv6_addr . inet_service\n"
            "\t\telements = { 2001:db8::2 . 40125 timeout 30s expires 29s }\n\t}\n"
            "\tmap forward4 {\n\t\telements = { 198.18.0.4 . 40126 timeout 30s expires 29s"
            " : 127.0.0.1 . 22 }\n\t}\n}\n"
        )
        self.run.result = lambda: succeed(listing.encode())
        nat = NftablesFirewall(
            self.clock,
            dataclasses.replace(LOCKDOWN, nat_to=(ipaddress.ip_address("127.0.0.1"), 22)),
            run=self.run,
        )
        verifyObject(IGrantUse, nat)
        address = ipaddress.ip_address
        grants = [(address("198.18.0.2"), 40123), (address("198.18.0.3"), 40999),
                  (address("2001:db8::2"), 40125), (address("198.18.0.4"), 40126)]
        self.assertEqual(self.successResultOf(nat.used_grants(grants)),
                         {(address("198.18.0.3"), 40999), (address("198.18.0.4"), 40126)})
        self.assertEqual(self.run.calls[-1][2], render_listing().encode())
        self.run.calls.clear()
        self.assertEqual(self.successResultOf(self.firewall.used_grants(grants)), set())
        self.assertEqual(self.run.calls, [])

    def test_revoke(self) -> None:
        """
        Revoke runs the add-then-delete pair for that one element.
        """
        self.successResultOf(self.firewall.revoke(V4, 45678))
        self.assertOneCall(render_revoke(V4, 45678))

    def test_revokeExpired(self) -> None:
        """
        Revoking a grant that already expired succeeds: the script does not depend on the
        element being there (nft runs it successfully; the real test below checks that), and
        the backend does not look at the clock.
        """
        self.successResultOf(self.firewall.grant(V4, 45678, self.clock.seconds() + 1))
        self.clock.advance(60)
        self.successResultOf(self.firewall.revoke(V4, 45678))
        self.assertEqual(self.run.calls[-1][2], render_revoke(V4, 45678).encode())

    def test_stop(self) -> None:
        """
        Stop empties the grant sets.
        """
        self.successResultOf(self.firewall.stop())
        self.assertOneCall(render_stop(LOCKDOWN))

    def test_flush(self) -> None:
        """
        Flush removes the table.
        """
        self.successResultOf(self.firewall.flush())
        self.assertOneCall(render_flush())

    def test_commandPrefix(self) -> None:
        """
        The command prefix goes before nft; its first word is looked up like the tool.
        """
        firewall = NftablesFirewall(
            self.clock, PORTS, run=self.run, command_prefix=["ip", "netns", "exec", "lab"]
        )
        self.successResultOf(firewall.flush())
        self.assertEqual(
            self.run.calls[0][1],
            ["/usr/sbin/ip", "netns", "exec", "lab", "/usr/sbin/nft", "-f", "-"],
        )
        missing = NftablesFirewall(self.clock, PORTS, run=self.run, command_prefix=["nsenter"])
        self.failureResultOf(missing.flush(), FirewallError)
        self.assertEqual(len(self.run.calls), 1)

    def test_toolPath(self) -> None:
        """
        A tool given as a path is used as it is.
        """
        firewall = NftablesFirewall(self.clock, PORTS, tool="/usr/sbin/nft", run=self.run)
        self.successResultOf(firewall.stop())
        self.assertEqual(self.run.calls[0][1], ["/usr/sbin/nft", "-f", "-"])

    def test_toolMissing(self) -> None:
        """
        Without nft every operation fails with FirewallError saying what to do; nothing runs.
        """
        firewall = NftablesFirewall(self.clock, PORTS, tool="/nowhere/nft", run=self.run)
        self.failureResultOf(firewall.start(), FirewallError)
        self.patch(nftables, "find_tool", lambda name: None)
        firewall = NftablesFirewall(self.clock, PORTS, run=self.run)
        operations = [
            firewall.start(),
            firewall.grant(V4, 45678, self.clock.seconds() + 30),
            firewall.revoke(V4, 45678),
            firewall.stop(),
            firewall.flush(),
        ]
        for result in operations:
            failure = self.failureResultOf(result, FirewallError)
            message = "nft: not found; install nftables or set FIREWALL"
            self.assertEqual(str(failure.value), message)
        self.assertEqual(self.run.calls, [])

    def test_runFails(self) -> None:
        """
        When nft refuses the change the Deferred fails with its FirewallError (the daemon then
        refuses the session).
        """
        error = FirewallError("/usr/sbin/nft -f -: exit status 1: Error: Could not process rule")
        self.run.result = lambda: fail(error)
        deadline = self.clock.seconds() + 30
        for result in [self.firewall.start(), self.firewall.grant(V4, 45678, deadline)]:
            self.assertIs(self.failureResultOf(result, FirewallError).value, error)

    def test_runRaises(self) -> None:
        """
        Any other failure of the runner, raised or in the Deferred, becomes a FirewallError too.
        """

        def raising() -> Deferred:
            raise OSError("no processes left")

        self.run.result = raising
        self.failureResultOf(self.firewall.revoke(V4, 45678), FirewallError)
        self.run.result = lambda: fail(RuntimeError("boom"))
        failure = self.failureResultOf(self.firewall.stop(), FirewallError)
        self.assertIn("boom", str(failure.value))

    def test_logs(self) -> None:
        """
        Every change is logged as a structured event with its fields.
        """
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        deadline = self.clock.seconds() + 2
        self.successResultOf(self.firewall.grant(V4, 45678, deadline))
        granted = [event for event in events if event.get("operation") == "grant"]
        self.assertEqual(len(granted), 1)
        self.assertEqual(
            (granted[0]["source"], granted[0]["port"], granted[0]["deadline"]),
            ("198.18.0.2", 45678, deadline),
        )
        self.assertEqual(
            formatEvent(granted[0]),
            f"nftables: granted 198.18.0.2 TCP port 45678 until {deadline}",
        )
        self.successResultOf(self.firewall.start())
        self.assertEqual(
            formatEvent(events[-1]),
            "nftables: installed table inet sig2knock (policy lockdown, assigned ports"
            " 40000-49999, control port 1001)",
        )
        logged = len(events)
        failure = self.failureResultOf(self.firewall.grant(V4, 45678, 0), FirewallError)
        self.assertIn("past", str(failure.value))
        # A refused change is said once, by whoever asked for it (the refusal log for a grant).
        self.assertEqual(events[logged:], [])


class BackendChoiceTests(SynchronousTestCase):
    """
    ``NftablesFirewall`` takes ``choose_runner``'s runner and says which at start.
    """

    def test_chosenAndLogged(self) -> None:
        """
        Without a runner given, the backend runs its scripts with ``choose_runner``'s and logs
        which when it starts, once.
        """
        self.patch(nftables, "find_tool", lambda name: "/usr/sbin/" + name)
        library = FakeLibrary()
        runner = LibnftablesRunner(library, make_pool=FakePool)
        self.patch(libnftables, "_shared", [(runner, SONAME)])
        settings = FirewallSettings(control_port=1001, port_range=(40000, 49999))
        reactor = FakeReactor()
        firewall = NftablesFirewall(reactor, settings)
        self.assertIs(firewall.run, runner)
        self.assertIs(NftablesFirewall(reactor, settings, command_prefix=["ip"]).run, run_tool)
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        starting = firewall.start()
        said = [formatEvent(event) for event in events if "runs" in event]
        self.assertEqual(said, ["nftables: changes run in-process with libnftables.so.1"])
        self.assertEqual(library.calls, [])
        runner._pool.runAll()  # type: ignore[union-attr]
        self.successResultOf(starting)
        self.assertEqual(library.scripts, [render_ruleset(settings).encode()])
