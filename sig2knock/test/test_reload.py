"""
Tests for reloading on SIGHUP (sig2knock.daemon.reload and Sig2knockService.reload): new users and
settings apply at once, a broken file is refused and the daemon keeps what it had.
"""

import os
from typing import List

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import schema, service, settings, startup
from sig2knock.daemon.settings import ConfigError, parse_config
from sig2knock.test.common import write_config, write_users
from sig2knock.test.test_plugin import NOW, FakeAddressWatcher


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
        merged, applied, pending = settings.merge(running, loaded)
        self.assertEqual(merged.knock_count, 6)
        self.assertEqual(applied, ["KNOCK_COUNT"])
        self.assertEqual(pending, ["FIREWALL", "FIREWALL_POLICY"])
        self.assertEqual((merged.firewall, merged.firewall_policy), ("auto", "ports"))

    def test_natForwardTargetWaitsForRestart(self) -> None:
        running = self.config("FIREWALL = nftables\nFORWARD_MODE = nat\n")
        loaded = parse_config(
            "UDP_PORT = 1001\nFORWARD_TO_IP = 127.0.0.1\nFORWARD_TO_PORT = 2222\n"
            "FIREWALL = nftables\nFORWARD_MODE = nat\n",
            "/etc/sig2knock/sig2knockd.conf",
        )
        merged, applied, pending = settings.merge(running, loaded)
        self.assertEqual(merged.forward_to_port, 22)
        self.assertEqual((applied, pending), ([], ["FORWARD_TO_PORT"]))

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
        self.assertRaises(ConfigError, settings.merge, running, loaded)

    def test_everyKeyClassified(self) -> None:
        """
        Each key says what a reload does with it: the settings of new sessions apply at once,
        those bound to sockets, the capture, the firewall or the replay cache wait.
        """
        by_reload = {}
        for row in schema.SCHEMA:
            by_reload.setdefault(row.reload, set()).add(row.key)
        self.assertEqual(by_reload[schema.LIVE], {
            "SINGLECONN_PORTOPEN_TIME", "KNOCK_COUNT", "KNOCK_TIMEOUT", "USERS_FILE"})
        self.assertEqual(by_reload[schema.LIVE_UNLESS_NAT], {"FORWARD_TO_IP", "FORWARD_TO_PORT"})
        self.assertEqual(by_reload[schema.RESTART], {
            "UDP_PORT", "LISTEN_ADDRESS", "INTERFACE", "INTERFACE_WAIT", "FIREWALL",
            "FORWARD_MODE", "FIREWALL_POLICY", "ASSIGN_PORT_RANGE", "KNOCK_PROTO",
            "MAX_CLOCK_SKEW", "STATE_DIR", "PKTFILTER_INTERFACE"})


class ServiceReloadTests(SynchronousTestCase):
    """
    ``Sig2knockService.reload`` on real files.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.config_path = write_config(self.directory)
        prepared = startup.prepare(self.config_path, None, NOW)
        self.addCleanup(prepared.replay_cache.close)
        self.daemon = service.Sig2knockService(
            prepared, Clock(), watch_addresses=FakeAddressWatcher
        )
        self.events: List[dict] = []
        self.patch(service.Sig2knockService, "log", Logger(observer=self.events.append))

    def test_newUsersAndSettingsApply(self) -> None:
        write_users(
            os.path.join(self.directory, "user.txt"),
            {"alice": "alice's password", "bob": "bob's password"},
        )
        write_config(self.directory, {"KNOCK_COUNT": "6", "SINGLECONN_PORTOPEN_TIME": "5"})
        self.daemon.reload()
        self.assertEqual(sorted(self.daemon.prepared.users.names()), ["alice", "bob"])
        self.assertEqual(self.daemon.sessions.min_knocks, 6)
        self.assertEqual(self.daemon.granter.open_time, 5)
        self.assertIn("KNOCK_COUNT", self.events[-1]["applied"])

    def test_brokenFileKeepsTheRunningConfiguration(self) -> None:
        write_config(self.directory, {"KNOCK_COUNT": "many"})
        self.daemon.reload()
        self.assertEqual(self.daemon.prepared.config.knock_count, 4)
        self.assertEqual(self.daemon.prepared.users.names(), ["alice"])
        (event,) = self.events
        self.assertEqual(event["log_level"].name, "error")
        self.assertIn("KNOCK_COUNT", event["error"])

    def test_openUsersFileRefused(self) -> None:
        os.chmod(os.path.join(self.directory, "user.txt"), 0o644)
        self.daemon.reload()
        self.assertEqual(self.daemon.prepared.users.names(), ["alice"])
        self.assertIn("chmod 600", self.events[-1]["error"])

    def test_restartOnlyChangeWaits(self) -> None:
        write_config(self.directory, {"UDP_PORT": "2002"})
        self.daemon.reload()
        self.assertEqual(self.daemon.prepared.config.udp_port, 1001)
        self.assertEqual(self.events[-1]["pending"], "UDP_PORT")
