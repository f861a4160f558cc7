"""
Tests for FORWARD_MODE = nat with iptables (sig2knock.firewall.iptables_nat and the backend):
the exact rules, and the commands the backend runs. The kernel side is proven in tests/test_nat.py.
"""

import ipaddress

from twisted.trial.unittest import TestCase

from sig2knock.firewall import FirewallError, FirewallSettings
from sig2knock.firewall.iptables import render_rules
from sig2knock.firewall.iptables_nat import (
    NAT_CHAIN,
    count_nat_jumps,
    render_nat_chain,
    render_nat_flush,
    render_nat_grant_specs,
)
from sig2knock.test import test_iptables
from sig2knock.test.test_iptables import T0

LOOPBACK = (ipaddress.ip_address("127.0.0.1"), 22)
NAT_LOCKDOWN = FirewallSettings(1001, (40000, 40100), policy="lockdown", nat_to=LOOPBACK)
NAT_PORTS = FirewallSettings(1001, (40000, 40100), policy="ports", nat_to=LOOPBACK)
CLIENT = ipaddress.ip_address("198.18.0.2")


class NatRenderTests(TestCase):
    """
    The nat chain, the filter rules of nat mode, and a grant's two rules.
    """

    def test_chainAndFlush(self) -> None:
        self.assertEqual(
            render_nat_chain(1),
            f"*nat\n:{NAT_CHAIN} - [0:0]\n-D PREROUTING -j {NAT_CHAIN}\n"
            f"-I PREROUTING 1 -j {NAT_CHAIN}\nCOMMIT\n",
        )
        self.assertEqual(
            render_nat_flush(1, True),
            f"*nat\n:{NAT_CHAIN} - [0:0]\n-D PREROUTING -j {NAT_CHAIN}\n-X {NAT_CHAIN}\nCOMMIT\n",
        )
        listing = f"-P PREROUTING ACCEPT\n-N {NAT_CHAIN}\n-A PREROUTING -j {NAT_CHAIN}\n".encode()
        self.assertEqual(count_nat_jumps(listing), (1, True))

    def test_filterRulesGuardLoopback(self) -> None:
        for settings in (NAT_LOCKDOWN, NAT_PORTS):
            rules = render_rules(settings, 4)
            self.assertEqual(
                rules[:2],
                [
                    "-A SIG2KNOCK ! -i lo -d 127.0.0.0/8 -m conntrack ! --ctstate DNAT -j DROP",
                    "-A SIG2KNOCK -p tcp -m conntrack --ctstate DNAT --ctorigdstport 40000:40100"
                    " -j ACCEPT",
                ],
            )
        self.assertNotIn("DNAT", " ".join(render_rules(NAT_LOCKDOWN, 6)))

    def test_grantSpecs(self) -> None:
        once, dnat = render_nat_grant_specs(CLIENT, 40005, "2030-01-02T03:04:34", LOOPBACK)
        self.assertEqual(
            once,
            ["-s", "198.18.0.2/32", "-p", "tcp", "--dport", "40005", "-m", "recent", "--name",
             "sig2knock_40005", "--rcheck", "--rsource", "-j", "RETURN"],
        )
        self.assertEqual(
            dnat,
            ["-s", "198.18.0.2/32", "-p", "tcp", "--dport", "40005", "-m", "time", "--datestop",
             "2030-01-02T03:04:34", "-m", "recent", "--name", "sig2knock_40005", "--set",
             "--rsource", "-m", "comment", "--comment", "sig2knock nat grant", "-j", "DNAT",
             "--to-destination", "127.0.0.1:22"],
        )


class NatBackendTests(TestCase):
    """
    The backend in nat mode: grants go into the nat chain, once-rule first; revoke removes
    both; an IPv6 client cannot be forwarded to an IPv4 target.
    """

    # The same stand-in tools, fake runner and clock as the backend's own tests.
    setUp = test_iptables.BackendTests.setUp
    backend = test_iptables.BackendTests.backend

    def test_natGrantAndRevoke(self) -> None:
        firewall = self.backend(NAT_PORTS)
        self.successResultOf(firewall.grant(CLIENT, 40005, T0 + 30))
        once, dnat = render_nat_grant_specs(CLIENT, 40005, "2030-01-02T03:04:34", LOOPBACK)
        inserted = [argv[argv.index("-w") + 1:] for argv, _ in self.run.calls]
        self.assertEqual(
            inserted,
            [["-t", "nat", "-I", NAT_CHAIN, "1", *dnat], ["-t", "nat", "-I", NAT_CHAIN, "1", *once]],
        )
        self.run.calls.clear()
        self.successResultOf(firewall.revoke(CLIENT, 40005))
        deleted = [argv[argv.index("-w") + 1:] for argv, _ in self.run.calls]
        self.assertEqual(
            deleted,
            [["-t", "nat", "-D", NAT_CHAIN, *once], ["-t", "nat", "-D", NAT_CHAIN, *dnat]],
        )

    def test_natOtherFamilyRefused(self) -> None:
        firewall = self.backend(NAT_PORTS)
        self.failureResultOf(
            firewall.grant(ipaddress.ip_address("2001:2::2"), 40005, T0 + 30), FirewallError
        )
        self.assertEqual(self.run.calls, [])
