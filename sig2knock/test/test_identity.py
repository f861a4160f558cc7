"""
Tests for sig2knock.daemon.identity and the daemon's ``--init`` and ``--show-identity``: the
server's key pair is made once, kept private, never replaced, and a used state directory without
one is refused rather than given a new identity.
"""

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import identity, startup
from sig2knock.daemon.identity import IdentityError
from sig2knock.protocol import keys
from sig2knock.test.common import (
    SERVER_KEY_TEXT,
    SERVER_PUBLIC,
    remember,
    run_module,
    write_config,
)

DAEMON = "sig2knock.scripts.daemon"
NOW = 1_800_000_000.0


class IdentityFileTests(SynchronousTestCase):
    """
    The identity file: mode 0600, refused when others can read it, never overwritten.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory, mode=0o700)
        self.path = identity.identity_path(self.directory)

    def test_createThenLoad(self) -> None:
        made = identity.create_identity(self.path)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        loaded = identity.load_identity(self.path)
        self.assertEqual(loaded.public, made.public)
        self.assertEqual(identity.read_public(self.path), made.public)
        self.assertNotIn(keys.export_private(made.private), repr(made))

    def test_neverReplaced(self) -> None:
        made = identity.create_identity(self.path)
        error = self.assertRaises(IdentityError, identity.create_identity, self.path)
        self.assertIn("exists already", str(error))
        self.assertEqual(identity.load_identity(self.path).public, made.public)

    def test_openFileRefused(self) -> None:
        identity.create_identity(self.path)
        os.chmod(self.path, 0o640)
        error = self.assertRaises(IdentityError, identity.load_identity, self.path)
        self.assertIn("chmod 600", str(error))

    def test_symlinkRefused(self) -> None:
        target = os.path.join(self.directory, "elsewhere.key")
        identity.create_identity(target)
        os.symlink(target, self.path)
        self.assertRaises(IdentityError, identity.load_identity, self.path)

    def test_missingSaysHowToMakeOne(self) -> None:
        error = self.assertRaises(IdentityError, identity.load_identity, self.path)
        self.assertIn("sig2knockd --init", str(error))

    def test_firstStartMakesOneAndLaterStartsKeepIt(self) -> None:
        made = identity.ensure_identity(self.directory, first_start=True)
        again = identity.ensure_identity(self.directory, first_start=False)
        self.assertEqual(made.public, again.public)

    def test_usedStateDirWithoutIdentityRefused(self) -> None:
        """
        A new identity would silently lock every password user out: a state directory that was
        used before and lost its identity stops the daemon instead.
        """
        self.assertRaises(IdentityError, identity.ensure_identity, self.directory, False)
        self.assertFalse(os.path.exists(self.path))


class PrepareIdentityTests(SynchronousTestCase):
    """
    The daemon loads its identity at start; a state directory holding the identity alone has
    lost its replay cache.
    """

    def test_loadedAtStart(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        prepared = startup.prepare(write_config(directory), None, NOW)
        self.addCleanup(prepared.replay_cache.close)
        self.assertEqual(prepared.identity.public, SERVER_PUBLIC)
        self.assertTrue(startup.ensure_state_dir(os.path.join(directory, "fresh")))

    def test_theIdentityAloneIsALostCache(self) -> None:
        """
        ``--init`` leaves an empty replay cache beside the identity, so an identity alone means
        the cache (and the marker) were removed: not a first start. Messages sealed to that
        identity could otherwise be replayed once.
        """
        state = os.path.abspath(self.mktemp())
        os.makedirs(state, mode=0o700)
        identity.create_identity(identity.identity_path(state))
        self.assertFalse(startup.ensure_state_dir(state))


class IdentityCommandTests(SynchronousTestCase):
    """
    ``sig2knockd --init`` and ``--show-identity`` print ``KEY FINGERPRINT``.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def test_showIdentity(self) -> None:
        config = write_config(self.directory)
        result = run_module(DAEMON, ["--show-identity", "-c", config])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, f"{SERVER_KEY_TEXT} {keys.fingerprint(SERVER_PUBLIC)}\n")

    def test_initMakesOneOnce(self) -> None:
        config = write_config(self.directory, {"STATE_DIR": "fresh"}, identity=False)
        made = run_module(DAEMON, ["--init", "-c", config])
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertIn("made the server identity", made.stderr)
        key_text = made.stdout.split()[0]
        self.assertNotEqual(key_text, SERVER_KEY_TEXT)
        path = identity.identity_path(os.path.join(self.directory, "fresh"))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        again = run_module(DAEMON, ["--init", "-c", config])
        self.assertEqual((again.returncode, again.stdout.split()[0]), (0, key_text))
        self.assertNotIn("made", again.stderr)

    def test_initForTheDaemonsUser(self) -> None:
        """
        ``--init`` (root, as the Debian package runs it) in a ``STATE_DIR`` the daemon's user
        owns: the identity is made there, for that user (here, without root, the directory is
        the caller's own).
        """
        config = write_config(self.directory, {"STATE_DIR": "theirs"}, identity=False)
        state = os.path.join(self.directory, "theirs")
        os.makedirs(state, mode=0o700)
        if os.geteuid() == 0:
            os.chown(state, 12345, 12345)
        made = run_module(DAEMON, ["--init", "-c", config])
        self.assertEqual(made.returncode, 0, made.stderr)
        owner = os.stat(os.path.join(state, "identity.key")).st_uid
        self.assertEqual(owner, os.stat(state).st_uid)

    def test_firstStartAfterInitAcceptsAtOnce(self) -> None:
        """
        ``--init`` writes an empty replay cache beside the identity: the first start loads it
        and accepts messages at once (no lost-cache floor), and the identity is the one made.
        """
        config = write_config(self.directory, {"STATE_DIR": "fresh"}, identity=False)
        made = run_module(DAEMON, ["--init", "-c", config])
        self.assertEqual(made.returncode, 0, made.stderr)
        state = os.path.join(self.directory, "fresh")
        self.assertEqual(sorted(os.listdir(state)), ["identity.key", "replay.cache"])
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(state, "replay.cache")).st_mode),
                         0o600)
        prepared = startup.prepare(config, None, NOW)
        self.addCleanup(prepared.replay_cache.close)
        remember(prepared.replay_cache, b"1" * 12, int(NOW * 1000), NOW)
        self.assertEqual(keys.format_public_key(prepared.identity.public),
                         made.stdout.split()[0])

    def test_showWithoutIdentity(self) -> None:
        config = write_config(self.directory, {"STATE_DIR": "none-yet"}, identity=False)
        result = run_module(DAEMON, ["--show-identity", "-c", config])
        self.assertEqual(result.returncode, 1)
        self.assertIn("sig2knockd --init", result.stderr)
        self.assertEqual(result.stderr.count("\n"), 1)
