"""
Tests for sig2knock.client.keyfile and ``sig2knockc --save-key``: the key saved once, kept like an
ssh private key, used instead of the password and scrypt on later knocks.
"""

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.client.keyfile import KeyFileError, default_key_path, load_key, save_key
from sig2knock.protocol.kdf import derive_key
from sig2knock.protocol.wire import UserKey
from sig2knock.test.common import CHEAP_KDF, run_module


PASSWORD = "alice's long password"


class KeyFileTests(SynchronousTestCase):
    """
    Saving and loading the key file.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        self.path = os.path.join(self.directory, "sig2knock", "alice.key")
        self.key = UserKey("alice", derive_key(PASSWORD, "alice", CHEAP_KDF))

    def test_roundTripAndModes(self) -> None:
        save_key(self.path, self.key, CHEAP_KDF)
        self.assertEqual(load_key(self.path, "alice"), self.key)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)

    def test_missingFileIsNoKey(self) -> None:
        self.assertIsNone(load_key(self.path, "alice"))

    def test_openFileRefused(self) -> None:
        save_key(self.path, self.key, CHEAP_KDF)
        os.chmod(self.path, 0o644)
        error = self.assertRaises(KeyFileError, load_key, self.path, "alice")
        self.assertIn("chmod 600", str(error))

    def test_otherUsersKeyRefused(self) -> None:
        save_key(self.path, self.key, CHEAP_KDF)
        self.assertRaises(KeyFileError, load_key, self.path, "bob")

    def test_defaultPath(self) -> None:
        self.patch(os, "environ", {"XDG_CONFIG_HOME": "/home/alice/.config"})
        self.assertEqual(default_key_path("alice"), "/home/alice/.config/sig2knock/alice.key")


class SaveKeyCommandTests(SynchronousTestCase):
    """
    ``sig2knockc --save-key`` then ``sig2knockc`` without a password (no server answers here:
    what matters is which key source each run used).
    """

    def test_saveThenUseWithoutPassword(self) -> None:
        path = os.path.abspath(os.path.join(self.mktemp(), "alice.key"))
        common = ["127.0.0.1", "9", "--user", "alice", "--kdf", CHEAP_KDF.format(),
                  "--key-file", path, "--timeout", "0.3", "-v"]
        saved = run_module(
            "sig2knock.scripts.client", common + ["--save-key", "--password-stdin"], PASSWORD + "\n"
        )
        self.assertEqual(saved.returncode, 1)
        self.assertIn("key saved to", saved.stderr)
        self.assertEqual(load_key(path, "alice").key, derive_key(PASSWORD, "alice", CHEAP_KDF))
        used = run_module("sig2knock.scripts.client", common, "")
        self.assertIn(f"key read from {path}", used.stderr)
        self.assertNotIn("key derived", used.stderr, "no scrypt when the key is saved")
        self.assertIn("no answer", used.stderr)
        self.assertNotIn(PASSWORD, saved.stderr + used.stderr + saved.stdout + used.stdout)
