"""
Tests for sig2knock.daemon.reload: what a reload may change at once, and what waits for a
restart. The reload of real files through the daemon is tested in test_service.
"""

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import schema
from sig2knock.daemon.reload import merge
from sig2knock.daemon.settings import ConfigError, parse_config


class MergeTests(SynchronousTestCase):
    """
    What a reload may change at once, and what waits for a restart.
    """

    def config(self, extra: str = ""):
        text = "UDP_PORT = 1001\nFORWARD_TO_IP = 127.0.0.1\nFORWARD_TO_PORT = 22\n" + extra
        return parse_config(text, "/etc/sig2knock/sig2knockd.conf")

    def test_liveAndRestartOnly(self) -> None:
        running = self.config()
        loaded = self.config("KNOCK_COUNT = 6\nFIREWALL_POLICY = lockdown\nFIREWALL = nftables\n")
        merged, applied, pending = merge(running, loaded)
        self.assertEqual(merged.knock_count, 6)
        self.assertEqual(applied, ["KNOCK_COUNT"])
        self.assertEqual(pending, ["FIREWALL", "FIREWALL_POLICY"])
        self.assertEqual((merged.firewall, merged.firewall_policy), ("auto", "ports"))

    def test_natForwardTargetTheRulesServeApplies(self) -> None:
        """
        In nat mode each grant names its target, so a new one the kernel's rules in force can
        serve (same address family, loopback only if they guard it) applies at once.
        """
        running = self.config("FIREWALL = nftables\nFORWARD_MODE = nat\n")
        loaded = parse_config(
            "UDP_PORT = 1001\nFORWARD_TO_IP = 127.0.0.1\nFORWARD_TO_PORT = 2222\n"
            "FIREWALL = nftables\nFORWARD_MODE = nat\n",
            "/etc/sig2knock/sig2knockd.conf",
        )
        merged, applied, pending = merge(running, loaded)
        self.assertEqual(merged.forward_to_port, 2222)
        self.assertEqual(merged.catalog.default.forward_to_port, 2222)
        self.assertEqual((applied, pending), (["FORWARD_TO_PORT", "services"], []))

    def test_natForwardTargetTheRulesCannotServeWaits(self) -> None:
        """
        A target of another address family, or a first one on loopback, needs other base rules:
        it waits for a restart (the default service keeps its target, a new named service is
        not offered yet), while the rest of the reload applies.
        """
        running = parse_config(
            "UDP_PORT = 1001\nFORWARD_TO_IP = 198.51.100.7\nFORWARD_TO_PORT = 22\n"
            "FIREWALL = nftables\nFORWARD_MODE = nat\n",
            "/etc/sig2knock/sig2knockd.conf",
        )
        other_family = parse_config(
            "UDP_PORT = 1001\nFORWARD_TO_IP = 2001:db8::7\nFORWARD_TO_PORT = 22\n"
            "FIREWALL = nftables\nFORWARD_MODE = nat\nKNOCK_COUNT = 6\n",
            "/etc/sig2knock/sig2knockd.conf",
        )
        merged, applied, pending = merge(running, other_family)
        self.assertEqual(str(merged.forward_to_ip), "198.51.100.7")
        self.assertEqual(str(merged.catalog.default.forward_to_ip), "198.51.100.7")
        self.assertEqual(merged.knock_count, 6)
        self.assertEqual((applied, pending), (["KNOCK_COUNT"], ["FORWARD_TO_IP"]))
        first_loopback = parse_config(
            "UDP_PORT = 1001\nFORWARD_TO_IP = 198.51.100.7\nFORWARD_TO_PORT = 22\n"
            "FIREWALL = nftables\nFORWARD_MODE = nat\n"
            "[service db]\nFORWARD_TO_IP = 127.0.0.1\nFORWARD_TO_PORT = 5432\nALLOW = bob\n"
            "[service web]\nFORWARD_TO_IP = 198.51.100.8\nFORWARD_TO_PORT = 80\nALLOW = *\n",
            "/etc/sig2knock/sig2knockd.conf",
        )
        merged, applied, pending = merge(running, first_loopback)
        self.assertEqual(sorted(merged.catalog.services), ["", "web"])
        self.assertEqual((applied, pending), (["services"], ["service db"]))

    def test_aServiceTurningToNatNeedsItsRules(self) -> None:
        """
        On a gateway that started without any service in nat mode, a service a reload puts in
        nat mode waits for a restart (the kernel has no nat rules); one started with nat rules
        takes a new nat service of that address family at once.
        """
        nat_db = ("[service db]\nFORWARD_TO_IP = 10.0.0.7\nFORWARD_TO_PORT = 5432\n"
                  "ALLOW = *\nFORWARD_MODE = nat\n")
        proxy_only = self.config("FIREWALL = nftables\n")
        with_db = self.config("FIREWALL = nftables\n" + nat_db)
        merged, applied, pending = merge(proxy_only, with_db, proxy_only)
        self.assertEqual((list(merged.catalog.services), pending), ([""], ["service db"]))
        nat_web = nat_db.replace("[service db]", "[service web]").replace("5432", "80")
        both = self.config("FIREWALL = nftables\n" + nat_db + nat_web)
        merged, applied, pending = merge(with_db, both, with_db)
        self.assertEqual((sorted(merged.catalog.services), pending), (["", "db", "web"], []))

    def test_natJudgedByTheRulesInstalledAtStart(self) -> None:
        """
        The kernel's base rules are those of the start: a daemon started with a loopback
        target keeps its loopback guard, so a later reload back to loopback applies.
        """
        started = self.config("FIREWALL = nftables\nFORWARD_MODE = nat\n")
        elsewhere = parse_config(
            "UDP_PORT = 1001\nFORWARD_TO_IP = 198.51.100.7\nFORWARD_TO_PORT = 22\n"
            "FIREWALL = nftables\nFORWARD_MODE = nat\n",
            "/etc/sig2knock/sig2knockd.conf",
        )
        running, _, _ = merge(started, elsewhere, started)
        self.assertEqual(str(running.forward_to_ip), "198.51.100.7")
        back, applied, pending = merge(running, started, started)
        self.assertEqual(str(back.catalog.default.forward_to_ip), "127.0.0.1")
        self.assertEqual((applied, pending), (["FORWARD_TO_IP", "services"], []))

    def test_mixMustHoldTogether(self) -> None:
        """
        A new FORWARD_TO_PORT is checked against the ASSIGN_PORT_RANGE still in force.
        """
        running = self.config()
        loaded = parse_config(
            "UDP_PORT = 1001\nFORWARD_TO_IP = 127.0.0.1\nFORWARD_TO_PORT = 40000\n"
            "ASSIGN_PORT_RANGE = 1100-2000\n",
            "/etc/sig2knock/sig2knockd.conf",
        )
        self.assertRaises(ConfigError, merge, running, loaded)

    def test_everyKeyClassified(self) -> None:
        """
        Each key says what a reload does with it: the settings of new sessions apply at once,
        those bound to sockets, the capture, the firewall or the replay cache wait.
        """
        by_reload = {}
        for row in schema.SCHEMA:
            by_reload.setdefault(row.reload, set()).add(row.key)
        self.assertEqual(by_reload[schema.LIVE], {
            "SINGLECONN_PORTOPEN_TIME", "KNOCK_COUNT", "KNOCK_TIMEOUT", "USERS_FILE",
            "REQUIRE_SOURCE_ADDRESS", "ALLOW"})
        self.assertEqual(by_reload[schema.LIVE_UNLESS_NAT], {"FORWARD_TO_IP", "FORWARD_TO_PORT"})
        self.assertEqual(by_reload[schema.RESTART], {
            "UDP_PORT", "LISTEN_ADDRESS", "INTERFACE", "INTERFACE_WAIT", "FIREWALL",
            "FORWARD_MODE", "FIREWALL_POLICY", "ASSIGN_PORT_RANGE", "KNOCK_PROTO",
            "MAX_CLOCK_SKEW", "STATE_DIR", "PKTFILTER_INTERFACE"})
