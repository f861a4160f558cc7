"""
Tests for sig2knock.scripts.daemon, as an operator runs ``sig2knockd`` (a subprocess, also
through the real ``twistd``).
"""

import os
import socket
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sig2knock.test.common import (
    EXAMPLE_CONFIG,
    installed_command,
    run_module,
    run_module_code,
    write_config,
)


DAEMON = "sig2knock.scripts.daemon"


class DaemonCommandTests(SynchronousTestCase):
    """
    ``sig2knockd`` checks configurations, stops on errors with one line, and runs in the
    foreground until SIGTERM.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def assertOneLineError(self, result: subprocess.CompletedProcess, *fragments: str) -> None:
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        for fragment in fragments:
            self.assertIn(fragment, result.stderr)

    def test_clientProfileOnly(self) -> None:
        """
        ``pip install sig2knock`` installs ``sig2knockd`` too, without what it needs: it says
        so in one line, naming the server profile.
        """
        script = (
            "import sys; sys.modules['pcapy'] = None;"
            " from sig2knock.scripts.daemon import main; sys.exit(main(sys.argv[1:]))"
        )
        result = run_module_code(script, ["--check-config", "-c", "/nonexistent.conf"])
        self.assertOneLineError(result, "needs sig2knock's server profile (pcapy not installed)",
                                "pip install 'sig2knock[server]'")

    def test_checkConfigRefusesAnIncompleteInstall(self) -> None:
        """
        An installation without ``sig2knock.firewall`` (a wheel that left the package out) fails
        the check with one line, instead of printing OK and dying at start.
        """
        path = write_config(self.directory)
        script = (
            "import sys; sys.modules['sig2knock.firewall'] = None;"
            " from sig2knock.scripts.daemon import main; sys.exit(main(sys.argv[1:]))"
        )
        result = run_module_code(script, ["--check-config", "-c", path])
        self.assertOneLineError(result, "this installation of sig2knock is incomplete",
                                "sig2knock.firewall", "reinstall it")

    def test_checkConfig(self) -> None:
        path = write_config(self.directory)
        result = run_module(DAEMON, ["--check-config", "-c", path])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("OK", result.stdout)
        self.assertIn("1 user(s)", result.stdout)

    def test_checkConfigStateDirOpenToOthers(self) -> None:
        """
        A ``STATE_DIR`` others can write to, which the daemon would refuse at start, fails the
        check too.
        """
        path = write_config(self.directory)
        state = os.path.join(self.directory, "state")
        os.chmod(state, 0o777)
        result = run_module(DAEMON, ["--check-config", "-c", path])
        self.assertOneLineError(result, f"STATE_DIR {state}: writable by group or others",
                                f"chmod 700 {state}")

    def test_checkConfigControlPortInUse(self) -> None:
        """
        A control port another program holds, which the daemon could not bind at start, fails
        the check, naming the holder where it can be seen.
        """
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(holder.close)
        for port in range(21000, 22000):  # below ASSIGN_PORT_RANGE's default 30000-60999
            try:
                holder.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
        path = write_config(self.directory, {"UDP_PORT": str(port)})
        result = run_module(DAEMON, ["--check-config", "-c", path])
        self.assertOneLineError(result, f"UDP_PORT {port}: in use by", "could not start")
        if os.geteuid() == 0:  # root sees every process's sockets
            self.assertIn(f"pid {os.getpid()} (", result.stderr)

    def test_checkConfigError(self) -> None:
        path = write_config(self.directory, {"ASSIGN_PORT_RANGE": "1000-2000"})
        result = run_module(DAEMON, ["--check-config", "-c", path])
        self.assertOneLineError(result, f"{path}:1: UDP_PORT", "ASSIGN_PORT_RANGE")

    def test_checkConfigInterfaceOverride(self) -> None:
        path = write_config(self.directory)
        result = run_module(DAEMON, ["--check-config", "-c", path, "-i", "bad/name"])
        self.assertOneLineError(result, "INTERFACE")

    def test_startupErrorThroughTwistd(self) -> None:
        """
        A bad configuration stops the real twistd with one line and status 1, no traceback.
        """
        path = write_config(self.directory, {"BOGUS_KEY": "1"})
        result = run_module(DAEMON, ["-c", path])
        self.assertOneLineError(result, f"{path}:8: BOGUS_KEY: unknown key")

    def test_twistdHelpListsPluginOptions(self) -> None:
        twistd = installed_command("twistd")
        if twistd is None:
            raise SkipTest(f"twistd is not installed beside {sys.executable}")
        result = subprocess.run(
            [twistd, "sig2knock", "--help"], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--config=", result.stdout)
        self.assertIn("--interface=", result.stdout)

    def test_exampleConfigIsValid(self) -> None:
        """
        The shipped example passes --check-config once it has a users file.
        """
        directory = os.path.join(self.directory, "etc")
        os.makedirs(directory)
        with open(EXAMPLE_CONFIG) as example:
            text = example.read()
        path = os.path.join(directory, "sig2knockd.conf")
        with open(path, "w") as copy:
            copy.write(text)
        write_config(self.directory)
        os.rename(os.path.join(self.directory, "user.txt"), os.path.join(directory, "user.txt"))
        result = run_module(DAEMON, ["--check-config", "-c", path])
        self.assertEqual(result.returncode, 0, result.stderr)
