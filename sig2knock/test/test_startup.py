"""
Tests for sig2knock.daemon.startup: what is loaded and checked before the daemon opens anything,
the state directory and the replay cache it keeps there.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import startup
from sig2knock.daemon.identity import IdentityError
from sig2knock.daemon.replay import ReplayCacheError
from sig2knock.protocol.wire import MessageRejected
from sig2knock.test.common import remember, write_config, write_users


NOW = 1_800_000_000.0


class PrepareTests(SynchronousTestCase):
    """
    The state directory and its replay cache, at a first start and after.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def prepared(self) -> startup.Prepared:
        return startup.prepare(write_config(self.directory), None, NOW)

    def test_lostReplayCacheClosesWindow(self) -> None:
        """
        The first start (new STATE_DIR) accepts messages at once; a later start whose replay
        cache disappeared refuses everything stamped inside the window.
        """
        first = self.prepared()
        cache = first.replay_cache
        remember(cache, b"1" * 12, int(NOW * 1000), NOW)
        cache.close()
        os.remove(cache.path)
        second = self.prepared()
        self.addCleanup(second.replay_cache.close)
        error = self.assertRaises(
            MessageRejected,
            remember,
            second.replay_cache,
            b"2" * 12,
            int(NOW * 1000),
            NOW,
        )
        self.assertEqual(error.reason, "replay")

    def test_emptyPreparedStateDirIsFirstStart(self) -> None:
        """
        A STATE_DIR prepared empty for the daemon (systemd's StateDirectory=) before any user is
        enrolled is a first start: the identity is made, messages are accepted at once.
        """
        state = os.path.join(self.directory, "state")
        os.makedirs(state, mode=0o700)
        write_users(os.path.join(self.directory, "user.txt"), {})
        prepared = startup.prepare(write_config(self.directory, identity=False), None, NOW)
        self.addCleanup(prepared.replay_cache.close)
        remember(prepared.replay_cache, b"1" * 12, int(NOW * 1000), NOW)
        self.assertTrue(os.path.exists(os.path.join(state, startup.STARTED_MARKER)))
        self.assertTrue(os.path.exists(os.path.join(state, "identity.key")))

    def test_emptiedStateDirWithUsersRefused(self) -> None:
        """
        An empty STATE_DIR beside a users file with users is a lost one (emptied, removed, a
        volume not mounted): the start is refused, saying how to recover, rather than making a
        new identity that locks every enrolled user out.
        """
        config = write_config(self.directory)
        state = os.path.join(self.directory, "state")
        for name in os.listdir(state):
            os.remove(os.path.join(state, name))
        error = self.assertRaises(IdentityError, startup.prepare, config, None, NOW)
        self.assertIn(f"STATE_DIR {os.path.abspath(state)} is empty, but", str(error))
        self.assertIn("restore STATE_DIR from a backup", str(error))
        self.assertEqual(os.listdir(state), [], "no new identity made")

    def test_plantedStartedLinkRefused(self) -> None:
        """
        The ``started`` marker is created, never written through a link planted in its place.
        """
        state = os.path.join(self.directory, "state")
        os.makedirs(state, mode=0o700)
        target = os.path.join(self.directory, "elsewhere")
        os.symlink(target, os.path.join(state, startup.STARTED_MARKER))
        self.assertRaises(ReplayCacheError, self.prepared)
        self.assertFalse(os.path.exists(target))

    def test_stateDirOpenToOthersRefused(self) -> None:
        state = os.path.join(self.directory, "state")
        os.makedirs(state)
        os.chmod(state, 0o777)
        error = self.assertRaises(ReplayCacheError, startup.ensure_state_dir, state)
        self.assertIn("chmod 700", str(error))
