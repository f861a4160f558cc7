"""
Tests for the twistd plugin (sig2knock.daemon.tap, twisted/plugins/sig2knock_plugin.py): twistd
finds it, its options, and makeService: the daemon, or one line and exit status 1.
"""

import io
import os
import stat
import sys

from twisted.application.service import IService, IServiceMaker
from twisted.internet.task import Clock
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sig2knock.daemon import service, settings as config_module, startup, tap
from sig2knock.daemon.blocking import ThreadWorker
from sig2knock.daemon.capture import CaptureError
from sig2knock.daemon.control_ports import ControlPortError
from sig2knock.daemon.netif import InterfaceError
from sig2knock.daemon.replay import ReplayCache
from sig2knock.test.common import write_config


NOW = 1_800_000_000.0


def sig2knock_plugin():
    for plugin in getPlugins(IServiceMaker):
        if plugin.tapname == "sig2knock":
            return plugin
    return None


class PluginTests(SynchronousTestCase):
    """
    twistd finds the plugin, and it provides what twistd needs.
    """

    def test_discoveredByTwisted(self) -> None:
        plugin = sig2knock_plugin()
        self.assertIsNotNone(plugin, "twistd would not find the sig2knock plugin")
        self.assertEqual(plugin.module, "sig2knock.daemon.tap")

    def test_providesInterfaces(self) -> None:
        plugin = sig2knock_plugin()
        self.assertTrue(verifyObject(IServiceMaker, plugin))
        self.assertTrue(verifyObject(IPlugin, plugin))

    def test_optionsClass(self) -> None:
        self.assertIs(sig2knock_plugin().options, tap.Options)


class OptionsTests(SynchronousTestCase):
    """
    ``twistd sig2knock`` takes ``--config``/``-c`` and ``-i``/``--interface``.
    """

    def test_parse(self) -> None:
        options = tap.Options()
        options.parseOptions(["--config", "/x/y.conf", "-i", "eth1"])
        self.assertEqual((options["config"], options["interface"]), ("/x/y.conf", "eth1"))
        options = tap.Options()
        options.parseOptions(["-c", "z.conf", "--interface=veth0"])
        self.assertEqual((options["config"], options["interface"]), ("z.conf", "veth0"))

    def test_helpListsOptions(self) -> None:
        text = str(tap.Options())
        self.assertIn("--config=", text)
        self.assertIn("--interface=", text)
        self.assertIn("sig2knockd_useradd", text)

    def test_unknownOption(self) -> None:
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--bogus"])

    def test_defaultConfigInSomeoneElsesCheckout(self) -> None:
        """
        Run from the top of a checkout that is not where this code comes from (root in
        someone else's clone): the system configuration, not the checkout's.
        """
        checkout = self.mktemp()
        for directory in ("etc", os.path.join("twisted", "plugins")):
            os.makedirs(os.path.join(checkout, directory))
        for name in ("etc/sig2knockd.conf", "twisted/plugins/sig2knock_plugin.py"):
            open(os.path.join(checkout, name), "w").close()
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(checkout)
        self.assertEqual(config_module.default_config_path(), "/etc/sig2knock/sig2knockd.conf")

    def test_defaultConfigInItsOwnCheckout(self) -> None:
        """
        Run from the top of the checkout this code comes from (the Quick start): its example.
        A checkout is made here whose ``sig2knock`` is this very package (a symbolic link), so
        the test runs the same from a checkout and from an installed package.
        """
        import sig2knock

        checkout = self.mktemp()
        for directory in ("etc", os.path.join("twisted", "plugins")):
            os.makedirs(os.path.join(checkout, directory))
        for name in ("etc/sig2knockd.conf", "twisted/plugins/sig2knock_plugin.py"):
            open(os.path.join(checkout, name), "w").close()
        os.symlink(os.path.dirname(os.path.abspath(sig2knock.__file__)),
                   os.path.join(checkout, "sig2knock"))
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(checkout)
        self.assertEqual(config_module.default_config_path(), "etc/sig2knockd.conf")

    def test_defaultConfigElsewhere(self) -> None:
        elsewhere = self.mktemp()
        os.makedirs(os.path.join(elsewhere, "etc"))
        open(os.path.join(elsewhere, "etc", "sig2knockd.conf"), "w").close()
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(elsewhere)
        self.assertEqual(config_module.default_config_path(), "/etc/sig2knock/sig2knockd.conf")


class MakeServiceTests(SynchronousTestCase):
    """
    ``makeService`` builds the daemon, or stops with one line and status 1.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.opened = []
        self.patch(service.Sig2knockService, "open", lambda daemon: self.opened.append(daemon))

    def make(self, config_path: str):
        options = tap.Options()
        options.parseOptions(["--config", config_path])
        return tap.makeService(options, reactor=self.clock)

    def test_service(self) -> None:
        daemon = self.make(write_config(self.directory))
        self.addCleanup(daemon.prepared.replay_cache.close)
        self.assertTrue(verifyObject(IService, daemon))
        self.assertEqual(daemon.prepared.config.udp_port, 1001)
        self.assertEqual(daemon.prepared.users.names(), ["alice"])
        state = os.path.join(self.directory, "state")
        self.assertEqual(stat.S_IMODE(os.stat(state).st_mode), 0o700)
        self.assertTrue(os.path.exists(os.path.join(state, "replay.cache")))
        self.assertEqual(self.opened, [daemon], "capture and control port open before twistd")
        self.assertEqual(daemon.prepared.interface, "lo")
        self.assertIsInstance(daemon.prepared.replay_cache.worker, ThreadWorker,
                              "the replay cache writes in a thread of its own")

    def assertStopsWithOneLine(self, config_path: str, *fragments: str) -> None:
        error = self.assertRaises(SystemExit, self.make, config_path)
        self.assertEqual(error.code, 1)
        output = self.stderr.getvalue()
        self.assertEqual(output.count("\n"), 1, output)
        self.assertTrue(output.startswith("sig2knockd: "), output)
        for fragment in fragments:
            self.assertIn(fragment, output)

    def test_badConfig(self) -> None:
        path = write_config(self.directory, {"KNOCK_COUNT": "zero"})
        self.assertStopsWithOneLine(path, path, ":8:", "KNOCK_COUNT")

    def test_missingConfig(self) -> None:
        self.assertStopsWithOneLine(os.path.join(self.directory, "nope.conf"), "no such file")

    def test_openUsersFile(self) -> None:
        path = write_config(self.directory)
        os.chmod(os.path.join(self.directory, "user.txt"), 0o644)
        self.assertStopsWithOneLine(path, "chmod 600")

    def test_captureProblemStopsWithOneLine(self) -> None:
        def refuse(daemon):
            raise CaptureError("interface lo: permission denied (needs CAP_NET_RAW)")

        self.patch(service.Sig2knockService, "open", refuse)
        self.assertStopsWithOneLine(write_config(self.directory), "CAP_NET_RAW")

    def test_controlPortProblemStopsWithOneLine(self) -> None:
        def refuse(daemon):
            raise ControlPortError("UDP_PORT 1001: cannot listen on ::: in use")

        self.patch(service.Sig2knockService, "open", refuse)
        closed = []
        close = ReplayCache.close
        self.patch(ReplayCache, "close", lambda cache: (closed.append(cache), close(cache)))
        self.assertStopsWithOneLine(write_config(self.directory), "UDP_PORT 1001")
        self.assertEqual(len(closed), 1, "the replay cache is closed again")

    def test_addressWatchProblemStopsWithOneLine(self) -> None:
        def refuse(daemon):
            raise InterfaceError("cannot watch address changes over netlink: denied")

        self.patch(service.Sig2knockService, "open", refuse)
        self.assertStopsWithOneLine(write_config(self.directory), "netlink")

    def test_missingInterface(self) -> None:
        path = write_config(self.directory, {"INTERFACE": "nosuchif0", "INTERFACE_WAIT": "0"})
        self.assertStopsWithOneLine(path, path, ":7:", "INTERFACE", "nosuchif0", "no such")

    def test_interfaceWaitedForAtBoot(self) -> None:
        """
        An interface that appears a few seconds after start (boot, hotplug) is waited for.
        """
        path = write_config(self.directory, {"INTERFACE": "late0", "INTERFACE_WAIT": "10"})
        checks = []

        def exists(name: str) -> bool:
            checks.append(name)
            return len(checks) > 3

        self.patch(startup.netif, "interface_exists", exists)
        now = [0.0]
        sleeps = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            now[0] += seconds

        daemon = tap.open_daemon(path, None, self.clock, sleep=sleep, monotonic=lambda: now[0])
        self.addCleanup(daemon.prepared.replay_cache.close)
        self.assertEqual(daemon.prepared.interface, "late0")
        self.assertEqual(sleeps, [1.0, 1.0, 1.0])
        self.assertEqual(self.stderr.getvalue().count("waiting up to 10s"), 1)

    def test_interfaceWaitHasAnEnd(self) -> None:
        path = write_config(self.directory, {"INTERFACE": "never0", "INTERFACE_WAIT": "3"})
        now = [0.0]

        def sleep(seconds: float) -> None:
            now[0] += seconds

        error = self.assertRaises(
            config_module.ConfigError,
            tap.open_daemon,
            path,
            None,
            self.clock,
            sleep=sleep,
            monotonic=lambda: now[0],
        )
        self.assertIn("never0", str(error))
        self.assertEqual(now[0], 3.0)

    def test_unusableStateDir(self) -> None:
        open(os.path.join(self.directory, "state"), "w").close()
        self.assertStopsWithOneLine(write_config(self.directory), "STATE_DIR")
