"""
End-to-end tests of the commands as an operator runs them: ``sig2knockd_useradd``, ``sig2knockd``
(also through the real ``twistd``), and ``sig2knockc``'s command line. Each runs as a subprocess.
"""

import os
import re
import stat
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sig2knock import __version__
from sig2knock.protocol.kdf import KdfParams, derive_key
from sig2knock.test.common import (
    CHEAP_KDF,
    EXAMPLE_CONFIG,
    installed_command,
    run_module,
    run_module_code,
    write_config,
)
from sig2knock.daemon.users import load_users, parse_users

PASSWORD = "a long enough password"
USERADD = "sig2knock.scripts.useradd"
DAEMON = "sig2knock.scripts.daemon"
CLIENT = "sig2knock.scripts.client"


def useradd(*arguments: str, stdin: str = PASSWORD + "\n") -> subprocess.CompletedProcess:
    return run_module(USERADD, ["--kdf", CHEAP_KDF.format(), *arguments], stdin=stdin)


class UserAddTests(SynchronousTestCase):
    """
    ``sig2knockd_useradd`` makes lines the daemon accepts and never shows the password.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.users_path = os.path.join(self.directory, "user.txt")

    def assertPasswordHidden(self, result: subprocess.CompletedProcess) -> None:
        self.assertNotIn(PASSWORD, result.stdout + result.stderr)

    def test_printsLine(self) -> None:
        """
        With default parameters the printed line holds scrypt(password) and the daemon reads it.
        """
        result = run_module(USERADD, ["--password-stdin", "alice"], stdin=PASSWORD + "\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertPasswordHidden(result)
        self.assertEqual(result.stdout.count("\n"), 1)
        entry = parse_users(result.stdout, "<stdout>").entries["alice"]
        self.assertEqual(entry.params, KdfParams())
        self.assertEqual(entry.user.key, derive_key(PASSWORD, "alice"))

    def test_appendsToNewPrivateFile(self) -> None:
        for user in ("alice", "bob"):
            result = useradd("--password-stdin", "--users-file", self.users_path, user)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(result.stdout, "")
            self.assertPasswordHidden(result)
        self.assertEqual(stat.S_IMODE(os.stat(self.users_path).st_mode), 0o600)
        users = load_users(self.users_path)
        self.assertEqual(users.names(), ["alice", "bob"])
        self.assertEqual(users.entries["bob"].user.key, derive_key(PASSWORD, "bob", CHEAP_KDF))

    def test_appendAfterLineWithoutNewline(self) -> None:
        self.assertEqual(useradd("--password-stdin", "alice").returncode, 0)
        line = useradd("--password-stdin", "alice").stdout.strip()
        with open(self.users_path, "w") as users_file:
            users_file.write(line)
        os.chmod(self.users_path, 0o600)
        result = useradd("--password-stdin", "--users-file", self.users_path, "bob")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(load_users(self.users_path).names(), ["alice", "bob"])

    def test_duplicateRefused(self) -> None:
        useradd("--password-stdin", "--users-file", self.users_path, "alice")
        result = useradd("--password-stdin", "--users-file", self.users_path, "alice")
        self.assertEqual(result.returncode, 1)
        self.assertIn("already there", result.stderr)
        self.assertEqual(load_users(self.users_path).names(), ["alice"])

    def test_openFileRefused(self) -> None:
        useradd("--password-stdin", "--users-file", self.users_path, "alice")
        os.chmod(self.users_path, 0o644)
        result = useradd("--password-stdin", "--users-file", self.users_path, "bob")
        self.assertEqual(result.returncode, 1)
        self.assertIn("chmod 600", result.stderr)

    def test_shortPasswordRefused(self) -> None:
        for password in ("", "short"):
            result = useradd("--password-stdin", "alice", stdin=password + "\n")
            self.assertEqual(result.returncode, 1)
            self.assertIn("at least 8 characters", result.stderr)
            self.assertEqual(result.stdout, "")

    def test_noTerminal(self) -> None:
        result = useradd("alice", stdin="")
        self.assertEqual(result.returncode, 1)
        self.assertIn("--password-stdin", result.stderr)

    def test_badUserName(self) -> None:
        result = useradd("--password-stdin", "al:ice")
        self.assertEqual(result.returncode, 1)
        self.assertIn("not valid", result.stderr)

    def test_missingDirectory(self) -> None:
        missing = os.path.join(self.directory, "no", "user.txt")
        result = useradd("--password-stdin", "--users-file", missing, "alice")
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("Traceback", result.stderr)
        self.assertIn("No such file or directory", result.stderr)

    def test_usageError(self) -> None:
        self.assertEqual(useradd().returncode, 2)


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


class InstalledCommandsTests(SynchronousTestCase):
    """
    The three console scripts are installed and answer ``--help`` and ``--version``.
    """

    def test_consoleScripts(self) -> None:
        for name in ("sig2knockd", "sig2knockc", "sig2knockd_useradd"):
            path = installed_command(name)
            if path is None:
                raise SkipTest(f"{name} is not installed beside {sys.executable} (run ./bootstrap)")
            result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn(f"usage: {name}", result.stdout)
            result = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=60
            )
            self.assertEqual((result.returncode, result.stdout), (0, f"{name} {__version__}\n"))

    def test_twistdPluginVersion(self) -> None:
        twistd = installed_command("twistd")
        if twistd is None:
            raise SkipTest(f"twistd is not installed beside {sys.executable}")
        result = subprocess.run(
            [twistd, "sig2knock", "--version"], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, rf"^sig2knock {re.escape(__version__)} \(Twisted .+\)\n$")
