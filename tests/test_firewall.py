"""
The firewall promises, proven in the namespace lab with the real daemon, the real client and the
real nft or iptables inside the server's namespace: before a knock the host drops everything, after
it only the client reaches only its port, an established session outlives the grant, a grant ends
at its deadline even when the daemon is killed, and a firewall that refuses leaves nothing open.
"""

import calendar
import glob
import os
import shutil
import signal
import time
from typing import List

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sig2knock.firewall.libnftables import load_library
from tests import lab
from tests.lab import built_lab

# A service on every address of the server: what the lockdown policy must hide.
OPEN_SERVICE_PORT = 8080
# A service inside ASSIGN_PORT_RANGE: what the ports policy must hide.
RANGE_SERVICE_PORT = 40000
# How long a probe waits for a SYN's answer before it calls it dropped.
DROP_WAIT = 1.0


class FirewallLabMixin:
    """
    The tests, run once per backend by the subclasses below (``backend`` is the FIREWALL value).
    """

    backend = ""

    def setUp(self) -> None:
        self.lab = built_lab(self)
        self.lab.start_echo_service("0.0.0.0", OPEN_SERVICE_PORT)
        self.lab.start_echo_service("0.0.0.0", RANGE_SERVICE_PORT)

    def start(self, policy: str = "lockdown", open_time: str = "5") -> None:
        self.lab.start_daemon(
            {
                "FIREWALL": self.backend,
                "FIREWALL_POLICY": policy,
                "SINGLECONN_PORTOPEN_TIME": open_time,
                "ASSIGN_PORT_RANGE": "40000-40999",
            }
        )
        self.assertIn(f"firewall {self.backend}", self.lab.log())

    def knocked_port(self) -> int:
        result = self.lab.knock()
        self.assertEqual(result.returncode, 0, f"{result.stderr}\n--- daemon ---\n{self.lab.log()}")
        return int(result.stdout)

    def assertDropped(self, role: str, port: int) -> None:
        """
        A SYN from ``role`` to ``port`` is dropped: no answer at all, not even a reset.
        """
        self.assertEqual(self.lab.probe(role, lab.SERVER_IP, port, timeout=DROP_WAIT), "timeout")

    def test_lockdownHidesEverythingBeforeAKnock(self) -> None:
        self.start()
        for role in ("client", "intruder"):
            self.assertDropped(role, OPEN_SERVICE_PORT)
            self.assertDropped(role, RANGE_SERVICE_PORT)
            self.assertDropped(role, 22)

    def test_onlyTheClientReachesOnlyItsPort(self) -> None:
        self.start()
        port = self.knocked_port()
        self.assertDropped("intruder", port)
        self.assertDropped("client", OPEN_SERVICE_PORT)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")

    def test_portsPolicyGatesOnlyTheRange(self) -> None:
        self.start(policy="ports")
        self.assertEqual(
            self.lab.probe("intruder", lab.SERVER_IP, OPEN_SERVICE_PORT), "echo:hello"
        )
        self.assertDropped("client", RANGE_SERVICE_PORT)
        port = self.knocked_port()
        self.assertDropped("intruder", port)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")

    def test_establishedSessionOutlivesTheGrant(self) -> None:
        # Two seconds leave the probe time to start on a busy machine; it holds past them.
        self.start(open_time="2")
        port = self.knocked_port()
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port, hold=3.5), "echo:hello")

    def test_grantEndsAtDeadlineAfterSigkill(self) -> None:
        """
        Killed right after a grant, the daemon cannot revoke it: the kernel ends it at its
        deadline anyway. The daemon then starts again cleanly and serves a new knock.
        """
        self.start(open_time="3")
        started = time.monotonic()
        port = self.knocked_port()
        self.lab.stop_daemon(signal.SIGKILL)
        if time.monotonic() - started < 2.5:
            # Still granted: the SYN passes the firewall and meets a closed port.
            self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "refused")
        time.sleep(max(0.0, 3.5 - (time.monotonic() - started)))
        self.assertDropped("client", port)
        self.start(open_time="3")
        port = self.knocked_port()
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")

    def test_cleanStopLeavesHostClosedAndFlushOpensIt(self) -> None:
        self.start()
        self.knocked_port()
        self.lab.stop_daemon(signal.SIGTERM)
        self.assertEqual(self.lab.daemon.returncode, -signal.SIGTERM)
        self.assertDropped("client", OPEN_SERVICE_PORT)
        flushed = self.lab.daemon_command("--flush")
        self.assertEqual(flushed.returncode, 0, flushed.stderr)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, OPEN_SERVICE_PORT), "echo:hello")

    def test_refusingFirewallRefusesTheSession(self) -> None:
        """
        Fail closed: when the firewall refuses the grant (here the daemon's rules were removed
        behind its back), the client gets no port, no listener stays open, and the daemon keeps
        running.
        """
        self.start()
        self.remove_rules_behind_the_daemons_back()
        result = self.lab.knock(timeout=2)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        log = self.lab.log()
        # Said once, where refusals are said, at error level; no revocation of a grant the
        # firewall never added.
        self.assertRegex(log, r"RefusalLog#error\] refused datagram from 198\.18\.0\.2 port \d+:"
                              r" firewall \(user alice: ")
        self.assertNotIn("could not revoke", log)
        self.assertNotIn("P3 sent", log)
        self.assertIsNone(self.lab.daemon.poll(), "the daemon must keep running")
        in_range = [p for p in self.lab.listening_ports() if 40000 < p <= 40999]
        self.assertEqual(in_range, [])

    def remove_rules_behind_the_daemons_back(self) -> None:
        raise NotImplementedError


def why_not(tool: str) -> str:
    return lab.why_not_runnable() or (None if shutil.which(tool) else f"{tool} is not installed")


class NftablesTests(FirewallLabMixin, SynchronousTestCase):
    """
    The promises with ``FIREWALL = nftables``.
    """

    backend = "nftables"
    skip = why_not("nft")

    def start(self, policy: str = "lockdown", open_time: str = "5") -> None:
        """
        Start the daemon; it says how it makes its nftables changes: in-process where
        libnftables loads (as here with the nftables package), so these tests drive that.
        """
        super().start(policy, open_time)
        how = "in-process with" if load_library()[0] is not None else "as one nft process each"
        self.assertIn(f"nftables: changes run {how}", self.lab.log())

    def remove_rules_behind_the_daemons_back(self) -> None:
        self.lab.ns("server", ["nft", "delete", "table", "inet", "sig2knock"])


class IptablesTests(FirewallLabMixin, SynchronousTestCase):
    """
    The promises with ``FIREWALL = iptables``.
    """

    backend = "iptables"
    skip = why_not("iptables")

    def remove_rules_behind_the_daemons_back(self) -> None:
        for tool in ("iptables", "ip6tables"):
            self.lab.ns("server", [tool, "-w", "-D", "INPUT", "-j", "SIG2KNOCK"])
            self.lab.ns("server", [tool, "-w", "-F", "SIG2KNOCK"])
            self.lab.ns("server", [tool, "-w", "-X", "SIG2KNOCK"])

    def test_clockStepBackMovesTheGrantBack(self) -> None:
        """
        ``--datestop`` is a wall-clock time, so a step back of the daemon's clock (here its
        own, by libfaketime reading a file, while the monotonic clock runs on) would keep an
        open grant that much longer: the daemon sees the step within about a second and
        re-inserts the grant's rule with its datestop moved back by the step.
        """
        libraries = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
        if not libraries:
            raise SkipTest("libfaketime is not installed (Debian's faketime; .ci/run installs it)")
        offset_file = os.path.join(self.lab.directory, "faketime")
        with open(offset_file, "w", encoding="ascii") as offset:
            offset.write("+0\n")
        fake = ["env", f"LD_PRELOAD={libraries[0]}", f"FAKETIME_TIMESTAMP_FILE={offset_file}",
                "FAKETIME_NO_CACHE=1", "FAKETIME_DONT_FAKE_MONOTONIC=1"]
        self.lab.start_daemon(
            {"FIREWALL": "iptables", "FIREWALL_POLICY": "lockdown",
             "SINGLECONN_PORTOPEN_TIME": "30", "ASSIGN_PORT_RANGE": "40000-40999"},
            prefix=fake,
        )
        port = self.knocked_port()

        def datestops() -> List[str]:
            # Two for a moment while the rule is replaced (the new one goes in first).
            rules = self.lab.ns("server", ["iptables", "-w", "-S", "SIG2KNOCK"]).stdout
            return [line.split("--datestop ")[1].split()[0]
                    for line in rules.splitlines() if f"--dport {port} " in line]

        (before,) = datestops()
        with open(offset_file, "w", encoding="ascii") as offset:
            offset.write("-1h\n")
        deadline = time.monotonic() + 10
        while "went back by" not in self.lab.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertIn("the wall clock went back by 3600", self.lab.log())
        moved = time.strptime(before, "%Y-%m-%dT%H:%M:%S")
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(calendar.timegm(moved) - 3600))
        deadline = time.monotonic() + 5
        while datestops() != [expected] and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(datestops(), [expected])
