"""
Tests for ``sig2knock.protocol.files``: the one way a file is replaced atomically, and what
makes a file unfit to hold a secret.
"""

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.protocol import files


class ExposureTests(SynchronousTestCase):
    """
    A secret's file must be a regular file of its user's, closed to group and others.
    """

    def status(self, mode: int, uid: int = 1000) -> os.stat_result:
        return os.stat_result((mode, 1, 1, 1, uid, uid, 0, 0, 0, 0))

    def test_kinds(self) -> None:
        self.assertIsNone(files.exposure(self.status(stat.S_IFREG | 0o600), 1000))
        self.assertIsNone(files.exposure(self.status(stat.S_IFREG | 0o700), 1000))
        self.assertEqual(files.exposure(self.status(stat.S_IFDIR | 0o700), 1000).kind,
                         files.NOT_REGULAR)
        other = files.exposure(self.status(stat.S_IFREG | 0o600, uid=0), 1000)
        self.assertEqual((other.kind, other.owner), (files.OTHER_OWNER, 0))
        for mode in (0o640, 0o604, 0o620, 0o602):
            with self.subTest(mode=oct(mode)):
                found = files.exposure(self.status(stat.S_IFREG | mode), 1000)
                self.assertEqual((found.kind, found.mode), (files.OPEN_MODE, mode))


class WriteAtomicallyTests(SynchronousTestCase):
    """
    The new content replaces the old whole, privately, and nothing is left behind on failure.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "state")

    def test_replacesPrivately(self) -> None:
        files.write_atomically(self.path, b"first")
        files.write_atomically(self.path, b"second", sync_directory=True)
        with open(self.path, "rb") as written:
            self.assertEqual(written.read(), b"second")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(os.listdir(self.directory), ["state"])

    def test_failureLeavesTheOldFile(self) -> None:
        files.write_atomically(self.path, b"old")

        def refuse(source: str, target: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(os, "replace", refuse)
        self.assertRaises(OSError, files.write_atomically, self.path, b"new")
        with open(self.path, "rb") as kept:
            self.assertEqual(kept.read(), b"old")
        self.assertEqual(os.listdir(self.directory), ["state"], "no temporary file stays")
