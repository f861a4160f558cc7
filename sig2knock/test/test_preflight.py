"""
Tests for sig2knock.daemon.preflight: what ``--check-config`` finds before the daemon would.
"""

import os
import socket

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import preflight


class StateDirTests(SynchronousTestCase):
    """
    A ``STATE_DIR`` is fine when private or not there yet; refused when others can write to it.
    """

    def test_modes(self) -> None:
        path = self.mktemp()
        self.assertIsNone(preflight.state_dir_problem(path), "made by the daemon")
        os.makedirs(path, mode=0o700)
        os.chmod(path, 0o700)
        self.assertIsNone(preflight.state_dir_problem(path))
        for mode in (0o720, 0o702, 0o777):
            os.chmod(path, mode)
            self.assertIn("writable by group or others", preflight.state_dir_problem(path))


    def test_ownerAndParents(self) -> None:
        """
        A ``STATE_DIR`` of another user than the daemon's, or below a directory others could
        change, is refused; root checking for the daemon takes the directory's owner for it.
        """
        parent = os.path.abspath(self.mktemp())
        path = os.path.join(parent, "state")
        os.makedirs(path, mode=0o700)
        os.chmod(parent, 0o777)
        self.assertIn(f"{parent} (above {path}) is writable by group or others",
                      preflight.state_dir_problem(path))
        self.assertIn(f"{parent} (above", preflight.state_dir_problem(path + "/not-yet"))
        os.chmod(parent, 0o755)
        if os.geteuid() == 0:
            os.chown(path, 12345, -1)  # (root's own would be fine)
        owner = os.stat(path).st_uid
        other = owner + 1
        self.assertIn(f"owned by uid {owner}, not by the daemon's user (uid {other})",
                      preflight.state_dir_problem(path, other))
        self.assertIsNone(preflight.state_dir_problem(path, owner))
        self.assertIsNone(preflight.state_dir_problem(path, 0, for_its_owner=True),
                          "root's --check-config, for the daemon of its owner")
        self.assertIn("owned by uid", preflight.state_dir_problem(path, 0),
                      "a daemon run as root trusts no other user's STATE_DIR")


class ControlPortTests(SynchronousTestCase):
    """
    A free port has no holder; a bound one has, whichever address it was bound to.
    """

    def test_freeAndHeld(self) -> None:
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        self.assertIsNotNone(preflight.control_port_holder(port))
        holder.close()
        self.assertIsNone(preflight.control_port_holder(port))

    def test_whichHolderIsTheDaemon(self) -> None:
        daemon = "pid 7 (/usr/bin/python3 /usr/sbin/sig2knockd -c /etc/sig2knock/sig2knockd.conf)"
        twistd = "pid 8 (/opt/s2k/bin/python /opt/s2k/bin/twistd -n sig2knock --config c)"
        for holder in (daemon, twistd):
            self.assertTrue(preflight.is_sig2knock(holder), holder)
        for holder in ("pid 9 (/usr/sbin/named -u bind)", "another program",
                       "pid 10 (/opt/venv/bin/python /opt/venv/bin/trial sig2knock tests)"):
            self.assertFalse(preflight.is_sig2knock(holder), holder)
