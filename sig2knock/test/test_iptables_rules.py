"""
Tests for sig2knock.firewall.iptables_rules: the exact rules and scripts of the iptables backend,
filter and nat (the kernel side is proven in tests/test_iptables.py and tests/test_nat.py).
"""


from twisted.trial.unittest import TestCase

from sig2knock.firewall import FirewallSettings
from sig2knock.firewall.iptables_rules import (
    NAT_CHAIN,
    count_nat_jumps,
    datestop,
    render_chain,
    render_flush,
    render_grant_args,
    render_nat_chain,
    render_nat_flush,
    render_nat_grant_specs,
    render_rules,
)
from sig2knock.test.expected_iptables import (
    ALICE4,
    ALICE6,
    CLIENT,
    LOCKDOWN,
    LOCKDOWN_CHAIN4,
    LOCKDOWN_CHAIN6,
    LOOPBACK,
    NAT_LOCKDOWN,
    NAT_PORTS,
    PORTS,
    PORTS_CHAIN,
    T0,
    grant_spec,
)


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
