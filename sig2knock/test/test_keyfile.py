"""
Tests for sig2knock.client.keyfile, ``sig2knockc --save-key`` and ``sig2knockc --keygen``: private
keys kept like an ssh key, bound to their user (and a saved password key to its server), used
instead of the password and scrypt on later knocks.
"""

import os
import stat
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.client.keyfile import KeyFileError, default_key_path, load_key, save_key
from sig2knock.client.knocker import user_key
from sig2knock.protocol import keys
from sig2knock.protocol.wire import UserKey
from sig2knock.test.common import CHEAP_KDF, SERVER_PUBLIC, run_module


PASSWORD = "alice's long password"
OTHER_SERVER = keys.public_bytes(keys.generate())


def no_passphrase(path: str) -> str:
    raise AssertionError(f"{path}: no passphrase should be asked for")


class KeyFileTests(SynchronousTestCase):
    """
    Saving and loading key files.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        self.path = os.path.join(self.directory, "sig2knock", "alice.key")
        self.key = user_key(PASSWORD, "alice", CHEAP_KDF.format(), SERVER_PUBLIC)

    def load(self, user: str = "alice", server: bytes = SERVER_PUBLIC, passphrase=no_passphrase):
        return load_key(self.path, user, server, passphrase)

    def test_roundTripAndModes(self) -> None:
        save_key(self.path, self.key, SERVER_PUBLIC)
        self.assertEqual(self.load().public, self.key.public)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)
        with open(self.path, encoding="ascii") as saved:
            self.assertEqual(
                saved.readline(),
                f"# sig2knock key of alice for {keys.format_public_key(SERVER_PUBLIC)}\n",
            )

    def test_missingFileIsNoKey(self) -> None:
        self.assertIsNone(self.load())

    def test_openFileRefused(self) -> None:
        save_key(self.path, self.key, SERVER_PUBLIC)
        os.chmod(self.path, 0o644)
        error = self.assertRaises(KeyFileError, self.load)
        self.assertIn("chmod 600", str(error))

    def test_otherUsersKeyRefused(self) -> None:
        save_key(self.path, self.key, SERVER_PUBLIC)
        self.assertRaises(KeyFileError, self.load, "bob")

    def test_otherServersKeyRefused(self) -> None:
        """
        A password key saved for one server is refused at another, saying which it is for.
        """
        save_key(self.path, self.key, SERVER_PUBLIC)
        error = self.assertRaises(KeyFileError, self.load, "alice", OTHER_SERVER)
        self.assertIn(keys.fingerprint(SERVER_PUBLIC), str(error))

    def test_ownKeyForAnyServerWithPassphrase(self) -> None:
        own = UserKey("alice", keys.generate())
        save_key(self.path, own, None, "correct horse")
        with open(self.path, encoding="ascii") as saved:
            text = saved.read()
        self.assertIn("BEGIN ENCRYPTED PRIVATE KEY", text)
        loaded = self.load("alice", OTHER_SERVER, lambda path: "correct horse")
        self.assertEqual(loaded.public, own.public)
        error = self.assertRaises(KeyFileError, self.load, "alice", OTHER_SERVER, lambda p: "no")
        self.assertIn("wrong passphrase", str(error))

    def test_notAKeyFile(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "w") as broken:
            broken.write("alice:scrypt:n=1024,r=1,p=1:c2FsdA==:a2V5\n")
        self.assertRaises(KeyFileError, self.load)

    def test_defaultPaths(self) -> None:
        self.patch(os, "environ", {"XDG_CONFIG_HOME": "/home/alice/.config"})
        self.assertEqual(default_key_path("alice"), "/home/alice/.config/sig2knock/alice.key")
        per_server = default_key_path("alice", SERVER_PUBLIC)
        self.assertTrue(per_server.startswith("/home/alice/.config/sig2knock/alice@"))
        self.assertNotIn("/", os.path.basename(per_server))
        self.assertNotEqual(per_server, default_key_path("alice", OTHER_SERVER))


SERVER_KEY = keys.format_public_key(SERVER_PUBLIC)


class SaveKeyCommandTests(SynchronousTestCase):
    """
    ``sig2knockc --save-key`` then ``sig2knockc`` without a password, and ``--keygen`` (no server
    answers here: what matters is which key source each run used).
    """

    def test_savedOnlyAfterAKnockSucceeds(self) -> None:
        """
        ``--save-key`` saves nothing when the knock fails (a mistyped password, a wrong
        ``--kdf``, a server that does not answer); once a knock succeeds the key is saved, and
        later knocks read it: no password, no scrypt.
        """
        from sig2knock.test.common import PASSWORD as SERVER_PASSWORD
        from sig2knock.test.loopback_server import LoopbackServer

        path = os.path.abspath(os.path.join(self.mktemp(), "alice.key"))

        def client(port: int, *extra: str, password: str = "") -> Any:
            return run_module("sig2knock.scripts.client", [
                "127.0.0.1", str(port), "--user", "alice", "--kdf", CHEAP_KDF.format(),
                "--server-key", SERVER_KEY, "--key-file", path, "--timeout", "1", "-v", *extra,
            ], password)

        server = LoopbackServer(grant_port=45699)
        self.addCleanup(server.stop)
        wrong = client(server.port, "--save-key", "--password-stdin",
                       password="a mistyped password\n")
        self.assertEqual(wrong.returncode, 1)
        self.assertFalse(os.path.exists(path), "a key that opened nothing was saved")
        saved = client(server.port, "--save-key", "--password-stdin",
                       password=SERVER_PASSWORD + "\n")
        self.assertEqual((saved.returncode, saved.stdout), (0, "45699\n"), saved.stderr)
        self.assertIn("key saved to", saved.stderr)
        expected = user_key(SERVER_PASSWORD, "alice", CHEAP_KDF.format(), SERVER_PUBLIC)
        self.assertEqual(load_key(path, "alice", SERVER_PUBLIC, no_passphrase).public,
                         expected.public)
        used = client(server.port)
        self.assertEqual(used.returncode, 0, used.stderr)
        self.assertIn(f"key read from {path}", used.stderr)
        self.assertNotIn("key derived", used.stderr, "no scrypt when the key is saved")
        everything = wrong.stderr + saved.stderr + used.stderr + saved.stdout + used.stdout
        self.assertNotIn(SERVER_PASSWORD, everything)

    def test_keygenPrintsThePublicKeyLast(self) -> None:
        path = os.path.abspath(os.path.join(self.mktemp(), "bob.key"))
        made = run_module(
            "sig2knock.scripts.client",
            ["--keygen", "--user", "bob", "--key-file", path, "--password-stdin"],
            "a passphrase\n",
        )
        self.assertEqual(made.returncode, 0, made.stderr)
        public = keys.parse_public_key(made.stdout.strip().splitlines()[-1])
        loaded = load_key(path, "bob", OTHER_SERVER, lambda p: "a passphrase")
        self.assertEqual(loaded.public, public)
        self.assertIn("sig2knockd_useradd --public-key", made.stderr)
        again = run_module(
            "sig2knock.scripts.client", ["--keygen", "--user", "bob", "--key-file", path], ""
        )
        self.assertEqual(again.returncode, 1)
        self.assertIn("exists already", again.stderr)


class PlainKeyFormTests(SynchronousTestCase):
    """
    ``keys.import_private`` reads an unencrypted X25519 PKCS#8 PEM itself (the fixed RFC 8410
    form); it must give exactly the key pycryptodome's parser gives, and leave every other form
    to that parser.
    """

    def test_sameKeyAsTheFullParser(self) -> None:
        from Crypto.PublicKey import ECC

        for _ in range(20):
            text = keys.export_private(keys.generate())
            fast = keys.import_private(text)
            full = ECC.import_key(text)
            self.assertEqual(keys.public_bytes(fast), keys.public_bytes(full))
            self.assertEqual(fast.seed, full.seed)

    def test_otherFormsGoToTheFullParser(self) -> None:
        from Crypto.PublicKey import ECC

        edwards = ECC.generate(curve="Ed25519").export_key(format="PEM")
        self.assertRaises(keys.KeyFormatError, keys.import_private, edwards)
        text = keys.export_private(keys.generate())
        # the same key wrapped at another width is still read (by the full parser)
        body = "".join(text.strip().splitlines()[1:-1])
        rewrapped = "-----BEGIN PRIVATE KEY-----\n{}\n{}\n-----END PRIVATE KEY-----\n".format(
            body[:10], body[10:])
        self.assertEqual(keys.public_bytes(keys.import_private(rewrapped)),
                         keys.public_bytes(keys.import_private(text)))
        truncated = text.replace(body, body[:-8])
        self.assertRaises(keys.KeyFormatError, keys.import_private, truncated)
        encrypted = keys.export_private(keys.generate(), passphrase="pass phrase")
        self.assertRaises(keys.KeyFormatError, keys.import_private, encrypted)
        self.assertEqual(len(keys.public_bytes(keys.import_private(encrypted, "pass phrase"))), 32)
