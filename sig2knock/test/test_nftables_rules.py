"""
Tests for sig2knock.firewall.nftables_rules: the exact nft scripts, filter and nat.
"""

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.firewall import FirewallError, FirewallSettings, nftables_rules
from sig2knock.firewall.nftables_rules import (
    render_flush,
    render_grant,
    render_replace_grant,
    render_revoke,
    render_ruleset,
    render_stop,
)
from sig2knock.test.expected_nftables import (
    LOCKDOWN,
    LOCKDOWN_RULESET,
    NAT_LOCKDOWN,
    NAT_TO,
    PORTS,
    PORTS_RULESET,
    V4,
    V6,
)


class RenderTests(SynchronousTestCase):
    """
    The scripts, to the character.
    """

    def test_rulesetPorts(self) -> None:
        """
        Policy ``ports`` gates only the assigned range: established flows and grants pass, the
        rest is dropped; the chain accepts everything else.
        """
        self.assertEqual(render_ruleset(PORTS), PORTS_RULESET)

    def test_rulesetLockdown(self) -> None:
        """
        Policy ``lockdown`` drops by default and lets in loopback, established flows, the
        control port, the ICMP and DHCP a host needs, and grants.
        """
        self.assertEqual(render_ruleset(LOCKDOWN), LOCKDOWN_RULESET)

    def test_rulesetOnePort(self) -> None:
        """
        A range of one port is written as a range all the same (nft accepts it).
        """
        settings = FirewallSettings(control_port=1001, port_range=(45678, 45678))
        self.assertIn("\t\ttcp dport 45678-45678 drop\n", render_ruleset(settings))

    def test_rulesetBadSettings(self) -> None:
        """
        An unknown policy, a port out of range or an empty range is refused, not rendered.
        """
        for settings in [
            FirewallSettings(1001, (40000, 49999), policy="open"),
            FirewallSettings(0, (40000, 49999)),
            FirewallSettings(1001, (40000, 65536)),
            FirewallSettings(1001, (49999, 40000)),
        ]:
            self.assertRaises(FirewallError, render_ruleset, settings)

    def test_grantCreates(self) -> None:
        """
        A grant creates its element with the timeout in milliseconds (``create``: nft refuses
        it when the element exists, rather than keep the old timeout).
        """
        self.assertEqual(
            render_grant(V4, 45678, 30000),
            "create element inet sig2knock grants4 { 198.18.0.2 . 45678 timeout 30000ms }\n",
        )
        self.assertEqual(
            render_grant(V6, 45678, 1500),
            "create element inet sig2knock grants6 { 2001:db8::2 . 45678 timeout 1500ms }\n",
        )

    def test_grantIPv4(self) -> None:
        """
        The fallback replaces any element for the same address and port with one that has the
        new timeout, in milliseconds.
        """
        self.assertEqual(
            render_replace_grant(V4, 45678, 30000),
            "add element inet sig2knock grants4 { 198.18.0.2 . 45678 timeout 1ms }\n"
            "delete element inet sig2knock grants4 { 198.18.0.2 . 45678 }\n"
            "add element inet sig2knock grants4 { 198.18.0.2 . 45678 timeout 30000ms }\n",
        )

    def test_grantIPv6(self) -> None:
        """
        An IPv6 source goes into ``grants6``.
        """
        self.assertEqual(
            render_replace_grant(V6, 45678, 1500),
            "add element inet sig2knock grants6 { 2001:db8::2 . 45678 timeout 1ms }\n"
            "delete element inet sig2knock grants6 { 2001:db8::2 . 45678 }\n"
            "add element inet sig2knock grants6 { 2001:db8::2 . 45678 timeout 1500ms }\n",
        )

    def test_grantAddressForms(self) -> None:
        """
        An IPv4-mapped IPv6 address is granted as IPv4 (that is how its packets arrive); an IPv6
        zone is dropped (nft does not read it); text works too.
        """
        mapped = ipaddress.ip_address("::ffff:198.18.0.2")
        self.assertEqual(render_grant(mapped, 45678, 1000), render_grant(V4, 45678, 1000))
        zoned = ipaddress.ip_address("fe80::1%eth0")
        self.assertIn(
            "grants6 { fe80::1 . 45678 timeout 1000ms }", render_grant(zoned, 45678, 1000)
        )
        self.assertEqual(render_grant("198.18.0.2", 45678, 1000), render_grant(V4, 45678, 1000))

    def test_grantRefused(self) -> None:
        """
        A timeout below 1 ms (nft reads 0 as "never expires"), beyond what nft accepts, or not a
        whole number, and a bad address or port, are refused.
        """
        self.assertIn("timeout 1ms }\n", render_grant(V4, 45678, 1).splitlines(True)[-1])
        self.assertRaises(FirewallError, render_replace_grant, V4, 45678, 0)
        for timeout in [0, -1, -30000, nftables_rules.MAX_TIMEOUT_MS + 1, 1.5, True]:
            self.assertRaises(FirewallError, render_grant, V4, 45678, timeout)
        self.assertIn(f"timeout {nftables_rules.MAX_TIMEOUT_MS}ms", render_grant(V4, 1, 99_999_999))
        self.assertRaises(FirewallError, render_grant, "not an address", 45678, 1000)
        for port in [0, 65536, -1, "22", None]:
            self.assertRaises(FirewallError, render_grant, V4, port, 1000)

    def test_revokeIPv4(self) -> None:
        """
        Revoke adds the element with a 1 ms timeout (nothing if it is there) and deletes it: it
        succeeds whether or not the element expired, and names no other element.
        """
        self.assertEqual(
            render_revoke(V4, 45678),
            "add element inet sig2knock grants4 { 198.18.0.2 . 45678 timeout 1ms }\n"
            "delete element inet sig2knock grants4 { 198.18.0.2 . 45678 }\n",
        )

    def test_revokeIPv6(self) -> None:
        """
        Revoking an IPv6 grant touches ``grants6``.
        """
        self.assertEqual(
            render_revoke(V6, 45678),
            "add element inet sig2knock grants6 { 2001:db8::2 . 45678 timeout 1ms }\n"
            "delete element inet sig2knock grants6 { 2001:db8::2 . 45678 }\n",
        )

    def test_flush(self) -> None:
        """
        Flush creates the table empty (if absent) and deletes it: it never fails on absence.
        """
        self.assertEqual(render_flush(), "table inet sig2knock {}\ndelete table inet sig2knock\n")

    def test_stop(self) -> None:
        """
        Stop empties both grant sets and keeps the chain.
        """
        self.assertEqual(
            render_stop(PORTS),
            "flush set inet sig2knock grants4\nflush set inet sig2knock grants6\n",
        )


class NatRenderTests(SynchronousTestCase):
    """
    FORWARD_MODE = nat: the kernel DNATs the first connection of a grant with a map entry and
    forgets the grant; a grant without one (a service in proxy mode) goes on to the listener.
    """

    def test_ruleset(self) -> None:
        ruleset = render_ruleset(NAT_LOCKDOWN)
        self.assertIn("flags dynamic, timeout;", ruleset)
        self.assertIn(
            "\t\tct state new ip saddr . tcp dport @forward4 ip saddr . tcp dport @grants4"
            " delete @grants4 { ip saddr . tcp dport } ct mark set 0x53324b00"
            " dnat ip to ip saddr . tcp dport map @forward4\n",
            ruleset,
        )
        self.assertIn("type nat hook prerouting priority dstnat - 10; policy accept;", ruleset)
        self.assertIn('\t\tiif != "lo" ip daddr 127.0.0.0/8 ct mark != 0x53324b00 drop\n', ruleset)
        self.assertIn("\t\tct status dnat ct mark 0x53324b00 accept\n", ruleset)
        self.assertNotIn("prerouting", render_ruleset(LOCKDOWN))

    def test_grantAndRevoke(self) -> None:
        grant = render_grant(ipaddress.ip_address("198.18.0.2"), 45678, 30000, NAT_TO)
        self.assertEqual(
            grant,
            "create element inet sig2knock forward4 { 198.18.0.2 . 45678 timeout 30000ms :"
            " 127.0.0.1 . 22 }\n"
            "create element inet sig2knock grants4 { 198.18.0.2 . 45678 timeout 30000ms }\n",
        )
        replace = render_replace_grant(ipaddress.ip_address("198.18.0.2"), 45678, 30000, NAT_TO)
        self.assertIn(
            "add element inet sig2knock forward4 { 198.18.0.2 . 45678 timeout 30000ms :"
            " 127.0.0.1 . 22 }\n",
            replace,
        )
        revoke = render_revoke(ipaddress.ip_address("198.18.0.2"), 45678, NAT_TO)
        self.assertIn("delete element inet sig2knock forward4 { 198.18.0.2 . 45678 }", revoke)

    def test_otherFamilyRefused(self) -> None:
        self.assertRaises(
            FirewallError, render_grant, ipaddress.ip_address("2001:2::2"), 45678, 30000, NAT_TO
        )
