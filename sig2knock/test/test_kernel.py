"""
Tests for sig2knock.firewall.kernel: the lines written under /proc, against a directory of the
test's own that stands for it.
"""

import ipaddress
import os

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.firewall import FirewallError, FirewallSettings, kernel

LOOPBACK_NAT = (ipaddress.ip_address("127.0.0.1"), 22)


class KernelTests(SynchronousTestCase):
    """
    ``route_localnet`` and the ``xt_recent`` lists, written as the kernel expects.
    """

    def setUp(self) -> None:
        self.proc = os.path.abspath(self.mktemp())
        self.patch(kernel, "PROC", self.proc)
        self.conf = os.path.join(self.proc, "sys", "net", "ipv4", "conf", "eth0")
        os.makedirs(self.conf)
        # Without the xt_recent module loaded (no list yet), the directory is not there.
        self.recent = os.path.join(self.proc, "net", "xt_recent")

    def route_localnet(self) -> str:
        with open(os.path.join(self.conf, "route_localnet"), encoding="ascii") as setting:
            return setting.read()

    def test_writeRouteLocalnet(self) -> None:
        kernel.write_route_localnet("eth0", "1")
        self.assertEqual(self.route_localnet(), "1\n")

    def test_writeRouteLocalnetRefused(self) -> None:
        """
        An interface the kernel does not have is a FirewallError that names the file and why.
        """
        error = self.assertRaises(FirewallError, kernel.write_route_localnet, "eth9", "1")
        self.assertIn(os.path.join("conf", "eth9", "route_localnet"), str(error))
        self.assertIn("No such file", str(error))

    def test_settleTurnsOnForLoopbackNat(self) -> None:
        settings = FirewallSettings(1001, (40000, 40100), interface="eth0", nat_to=LOOPBACK_NAT)
        kernel.settle_route_localnet(settings, earlier_nat=False)
        self.assertEqual(self.route_localnet(), "1\n")

    def test_settleTurnsOffAfterEarlierNat(self) -> None:
        """
        A run without loopback nat turns off what an earlier nat run may have turned on.
        """
        kernel.settle_route_localnet(
            FirewallSettings(1001, (40000, 40100), interface="eth0"), earlier_nat=True
        )
        self.assertEqual(self.route_localnet(), "0\n")

    def test_settleLeavesItAlone(self) -> None:
        """
        Without nat now or before, or without an interface, nothing is written.
        """
        kernel.settle_route_localnet(
            FirewallSettings(1001, (40000, 40100), interface="eth0"), earlier_nat=False
        )
        kernel.settle_route_localnet(FirewallSettings(1001, (40000, 40100)), earlier_nat=True)
        self.assertFalse(os.path.exists(os.path.join(self.conf, "route_localnet")))

    def test_forgetRecent(self) -> None:
        """
        An address is removed from a list by writing it with a ``-``; an IPv4-mapped address is
        written as the IPv4 address it is.
        """
        os.makedirs(self.recent)
        path = os.path.join(self.recent, "SIG2KNOCK_40001")
        open(path, "w").close()
        kernel.forget_recent("SIG2KNOCK_40001", ipaddress.ip_address("198.18.0.2"))
        with open(path, encoding="ascii") as recent:
            self.assertEqual(recent.read(), "-198.18.0.2\n")
        kernel.forget_recent("SIG2KNOCK_40001", ipaddress.ip_address("2001:db8::2"))
        with open(path, encoding="ascii") as recent:
            self.assertEqual(recent.read(), "-2001:db8::2\n")

    def test_forgetRecentWithoutList(self) -> None:
        """
        A list that does not exist yet has nothing to forget.
        """
        kernel.forget_recent("SIG2KNOCK_40001", ipaddress.ip_address("198.18.0.2"))
        self.assertFalse(os.path.exists(self.recent))

    def test_forgetRecentRefused(self) -> None:
        """
        Any other failure is a FirewallError naming the list.
        """
        os.makedirs(os.path.join(self.recent, "SIG2KNOCK_40001"))
        error = self.assertRaises(
            FirewallError,
            kernel.forget_recent,
            "SIG2KNOCK_40001",
            ipaddress.ip_address("198.18.0.2"),
        )
        self.assertIn("SIG2KNOCK_40001", str(error))
