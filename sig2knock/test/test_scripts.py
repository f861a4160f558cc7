"""
Tests for sig2knock.scripts as installed: the three console scripts and the twistd plugin answer
``--help`` and ``--version`` (each command's own tests are in test_scripts_<command>).
"""

import re
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sig2knock import __version__
from sig2knock.test.common import installed_command


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
