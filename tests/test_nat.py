"""
FORWARD_MODE = nat in the namespace lab: the kernel DNATs the grant's one connection straight to
the hidden service on the server's 127.0.0.1 (no Python in the data path), and the promises of
the firewall hold as in proxy mode: only the client, only its port, one connection, an established
session outlives the grant, and a grant ends at its deadline even when the daemon is killed.
"""

import shutil
import signal
import time

from twisted.trial.unittest import SynchronousTestCase

from tests import lab
from tests.lab import built_lab

DROP_WAIT = 1.0


class NatMixin:
    """
    Kernel forwarding; ``backend`` is the FIREWALL value of the subclass.
    """

    backend = ""

    def setUp(self) -> None:
        self.lab = built_lab(self)

    def start(self, policy: str = "lockdown", open_time: str = "5") -> None:
        self.lab.start_daemon(
            {
                "FIREWALL": self.backend,
                "FIREWALL_POLICY": policy,
                "FORWARD_MODE": "nat",
                "SINGLECONN_PORTOPEN_TIME": open_time,
                "ASSIGN_PORT_RANGE": "40000-40999",
            }
        )

    def knocked_port(self) -> int:
        result = self.lab.knock()
        self.assertEqual(result.returncode, 0, f"{result.stderr}\n--- daemon ---\n{self.lab.log()}")
        return int(result.stdout)

    def assertDropped(self, role: str, port: int) -> None:
        self.assertEqual(self.lab.probe(role, lab.SERVER_IP, port, timeout=DROP_WAIT), "timeout")

    def test_oneConnectionFromTheClientOnly(self) -> None:
        for policy in ("lockdown", "ports"):
            with self.subTest(policy=policy):
                if self.lab.daemon is not None:
                    self.lab.stop_daemon()
                self.start(policy=policy)
                port = self.knocked_port()
                self.assertNotIn(port, self.lab.listening_ports(), "nat mode listens on nothing")
                self.assertDropped("intruder", port)
                self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")
                self.assertDropped("client", port)

    def test_establishedSessionOutlivesTheGrant(self) -> None:
        # Two seconds leave the probe time to start on a busy machine; it holds past them.
        self.start(open_time="2")
        port = self.knocked_port()
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port, hold=3.5), "echo:hello")

    def test_grantEndsAtDeadlineAfterSigkill(self) -> None:
        self.start(open_time="2")
        port = self.knocked_port()
        self.lab.stop_daemon(signal.SIGKILL)
        time.sleep(2.5)
        self.assertDropped("client", port)
        self.start(open_time="2")
        port = self.knocked_port()
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")


class NftablesNatTests(NatMixin, SynchronousTestCase):
    """
    Kernel forwarding with nftables: a map and a dynamic set that forgets the grant at its
    first connection.
    """

    backend = "nftables"
    skip = lab.why_not_runnable() or (None if shutil.which("nft") else "nft is not installed")


class IptablesNatTests(NatMixin, SynchronousTestCase):
    """
    Kernel forwarding with iptables: a DNAT rule per grant and an xt_recent list that leaves a
    second connection alone.
    """

    backend = "iptables"
    skip = lab.why_not_runnable() or (
        None if shutil.which("iptables") else "iptables is not installed"
    )
