"""
Tests for sig2knock.daemon.trusted_path: the directories above a trusted file must be owned by
root or the daemon's user, and not writable by group or others unless sticky.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.trusted_path import unsafe_parent


class UnsafeParentTests(SynchronousTestCase):
    """
    What sshd's StrictModes refuses above ``authorized_keys``, for the users file and
    ``STATE_DIR``.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "user.txt")

    def test_writableByOthersRefused(self) -> None:
        os.chmod(self.directory, 0o777)
        problem = unsafe_parent(self.path, os.geteuid())
        self.assertIn(f"{self.directory} (above {self.path}) is writable by group", problem)
        self.assertIn("chmod go-w", problem)

    def test_stickyIsFine(self) -> None:
        """
        A sticky directory writable by all (like /tmp) is fine: only an entry's owner can
        rename or remove it.
        """
        os.chmod(self.directory, 0o1777)
        self.assertNotIn(self.directory + " ", unsafe_parent(self.path, os.geteuid()) or "")

    def test_otherOwnerRefused(self) -> None:
        # A daemon of another user than the directory's owner (neither of them root).
        if os.geteuid() == 0:
            os.chown(self.directory, 12345, -1)
            daemon_uid = 54321
        else:
            daemon_uid = os.geteuid() + 1
        problem = unsafe_parent(self.path, daemon_uid)
        self.assertIn(f"{self.directory} (above {self.path}) is owned by", problem)

    def test_linkResolved(self) -> None:
        """
        The directories checked are those of the file a link leads to.
        """
        open_dir = os.path.join(self.directory, "open")
        os.makedirs(open_dir)
        os.chmod(open_dir, 0o777)
        link = os.path.join(self.directory, "link")
        os.symlink(os.path.join(open_dir, "user.txt"), link)
        self.assertIn(f"{open_dir} (above {link})", unsafe_parent(link, os.geteuid()))
