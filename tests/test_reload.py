"""
SIGHUP on the real daemon: a new user can knock at once; a removed user's open grant closes; a
broken configuration is refused and the daemon keeps serving on the one it had (knockd exits on a
bad reload).
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from tests import lab
from tests.lab import built_lab


class ReloadTests(SynchronousTestCase):
    """
    Reload with SIGHUP in the namespace lab.
    """

    skip = lab.why_not_runnable()

    def setUp(self) -> None:
        self.lab = built_lab(self)
        self.lab.start_daemon()

    def hangup_and_wait(self, marker: str) -> None:
        self.assertTrue(self.lab.hangup_and_wait(marker), self.lab.log())

    def test_newUserKnocksAfterReload(self) -> None:
        self.assertEqual(self.lab.knock(user="bob", password="bob's long password", timeout=1.5)
                         .returncode, 1)
        self.lab.write_server_files({}, {"alice": lab.PASSWORD, "bob": "bob's long password"})
        self.hangup_and_wait("reloaded")
        result = self.lab.knock(user="bob", password="bob's long password")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, int(result.stdout)), "echo:hello")

    def test_removedUsersGrantCloses(self) -> None:
        """
        A user removed while their grant is open: the reload closes it, the port lets nothing
        in, and the log says why.
        """
        bob = "bob's long password"
        self.lab.write_server_files({}, {"alice": lab.PASSWORD, "bob": bob})
        self.hangup_and_wait("reloaded")
        result = self.lab.knock(user="bob", password=bob)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.lab.write_server_files({}, {"alice": lab.PASSWORD})
        self.hangup_and_wait("reloaded")
        self.assertIn("session of bob from 198.18.0.2 ended: the user was removed", self.lab.log())
        self.assertIn("closed: its user was removed", self.lab.log())
        self.assertNotEqual(self.lab.probe("client", lab.SERVER_IP, int(result.stdout), timeout=1),
                            "echo:hello")

    def test_brokenConfigurationKeepsTheDaemonServing(self) -> None:
        config = os.path.join(self.lab.directory, "sig2knockd.conf")
        with open(config, "a", encoding="utf-8") as config_file:
            config_file.write("KNOCK_COUNT = lots\n")
        self.hangup_and_wait("reload refused")
        self.assertIsNone(self.lab.daemon.poll())
        self.assertIn("KNOCK_COUNT", self.lab.log())
        result = self.lab.knock()
        self.assertEqual(result.returncode, 0, result.stderr)
