"""
Tests for sig2knock.daemon.replay: the persisted, bounded cache of nonces inside the clock-skew
window.
"""

import errno
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import replay
from sig2knock.daemon.replay import HEADER_SIZE, MAGIC, ReplayCache, ReplayCacheError
from sig2knock.protocol import wire
from sig2knock.protocol.wire import MessageRejected
from sig2knock.test.common import remember


NOW = 1_800_000_000.0
SKEW = 60


def nonce(number: int) -> bytes:
    return number.to_bytes(12, "big")


class CacheFileTestCase(SynchronousTestCase):
    """
    A test with ``path``, where its replay cache file goes, in a directory of its own.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "replay.cache")


class ReplayCacheTests(CacheFileTestCase):
    """
    A nonce is accepted once; the cache survives restarts and forgets only what the window refuses.
    """


    def cache(self, now: float = NOW, **kwargs) -> ReplayCache:
        kwargs.setdefault("first_start", not os.path.exists(self.path))
        cache = ReplayCache(self.path, SKEW, now, **kwargs)
        self.addCleanup(cache.close)
        return cache

    def remember(self, cache: ReplayCache, number: int, now: float = NOW) -> None:
        remember(cache, nonce(number), wire.now_ms(now), now)

    def assertRefused(self, reason: str, cache: ReplayCache, number: int, now=NOW) -> None:
        error = self.assertRaises(MessageRejected, self.remember, cache, number, now)
        self.assertEqual(error.reason, reason)

    def test_secondSightingRefused(self) -> None:
        cache = self.cache()
        self.remember(cache, 1)
        self.remember(cache, 2)
        self.assertRefused(replay.REASON_REPLAY, cache, 1)
        self.assertEqual(len(cache), 2)

    def test_refusedAfterRestart(self) -> None:
        """
        A nonce seen before a restart (even a SIGKILL: no close) is still refused after it.
        """
        first = ReplayCache(self.path, SKEW, NOW, first_start=True)
        self.remember(first, 7)
        # No close(): the record must already be on disk.
        second = self.cache(now=NOW + 5)
        self.assertRefused(replay.REASON_REPLAY, second, 7, now=NOW + 5)
        first.close()

    def test_refusedAfterCleanRestart(self) -> None:
        first = ReplayCache(self.path, SKEW, NOW, first_start=True)
        self.remember(first, 7)
        first.close()
        self.assertRefused(replay.REASON_REPLAY, self.cache(now=NOW + 5), 7, now=NOW + 5)

    def test_forgetsAfterWindow(self) -> None:
        """
        Past the window a nonce is forgotten (its message is refused as stale by then), which is
        what keeps memory bounded.
        """
        cache = self.cache()
        for number in range(100):
            self.remember(cache, number)
        later = NOW + 2 * SKEW + 2
        self.remember(cache, 1000, now=later)
        self.assertEqual(len(cache), 1)

    def test_keptForTheWholeWindow(self) -> None:
        cache = self.cache()
        self.remember(cache, 1)
        self.assertRefused(replay.REASON_REPLAY, cache, 1, now=NOW + SKEW)

    def test_futureTimestampKeptLonger(self) -> None:
        """
        A message stamped ahead of the server's clock stays refused until its own window ends.
        """
        cache = self.cache()
        remember(cache, nonce(1), wire.now_ms(NOW + SKEW), NOW)
        self.assertRaises(
            MessageRejected,
            remember,
            cache,
            nonce(1),
            wire.now_ms(NOW + SKEW),
            NOW + 2 * SKEW - 1,
        )

    def test_fullCacheFailsClosed(self) -> None:
        """
        When the cache is full new messages are refused; old nonces are never dropped early.
        """
        cache = self.cache(capacity=3)
        for number in range(3):
            self.remember(cache, number)
        self.assertRefused(replay.REASON_CACHE_FULL, cache, 99)
        self.assertRefused(replay.REASON_REPLAY, cache, 0)
        self.remember(cache, 99, now=NOW + 2 * SKEW + 2)

    def test_fileIsPrivate(self) -> None:
        self.remember(self.cache(), 1)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_compactedOnLoad(self) -> None:
        """
        Loading drops expired records and rewrites the file with the live ones only.
        """
        first = ReplayCache(self.path, SKEW, NOW, first_start=True)
        for number in range(50):
            self.remember(first, number)
        first.close()
        later = NOW + 3 * SKEW
        second = self.cache(now=later)
        self.remember(second, 500, now=later)
        self.assertEqual(len(second), 1)
        self.assertEqual(os.path.getsize(self.path), HEADER_SIZE + 20)

    def test_compactedWhileRunning(self) -> None:
        """
        The log file does not grow without bound while nonces keep expiring.
        """
        cache = self.cache()
        for number in range(5000):
            self.remember(cache, number, now=NOW + number)
        self.assertLess(os.path.getsize(self.path), HEADER_SIZE + 20 * (2 * len(cache) + 1100))

    def test_partialRecordIgnored(self) -> None:
        """
        A record cut short by a crash is ignored; the whole ones before it are kept.
        """
        first = ReplayCache(self.path, SKEW, NOW, first_start=True)
        self.remember(first, 1)
        self.remember(first, 2)
        first._file.close()
        with open(self.path, "ab") as log:
            log.write(nonce(3)[:7])
        second = self.cache(now=NOW + 1)
        self.assertRefused(replay.REASON_REPLAY, second, 1, now=NOW + 1)
        self.assertRefused(replay.REASON_REPLAY, second, 2, now=NOW + 1)
        self.remember(second, 3, now=NOW + 1)

    def test_corruptFileClosesTheWindow(self) -> None:
        """
        If the old cache cannot be read, every message stamped before start + window is refused,
        and messages stamped after it are accepted.
        """
        with open(self.path, "wb") as log:
            log.write(b"garbage that is not a replay cache")
        cache = self.cache()
        self.assertRefused(replay.REASON_REPLAY, cache, 1)
        self.assertRefused(replay.REASON_REPLAY, cache, 2, now=NOW + SKEW - 1)
        self.remember(cache, 3, now=NOW + SKEW + 1)
        with open(self.path, "rb") as log:
            self.assertTrue(log.read().startswith(MAGIC))

    def test_missingFileClosesTheWindow(self) -> None:
        """
        A cache file that disappeared (deleted, or STATE_DIR on tmpfs) is treated as lost.
        """
        cache = self.cache(first_start=False)
        self.assertRefused(replay.REASON_REPLAY, cache, 1, now=NOW + SKEW - 1)
        self.remember(cache, 2, now=NOW + SKEW + 1)

    def test_damagedExpiryCannotPinEntries(self) -> None:
        """
        A record with an absurd expiry is kept no longer than any real record could need.
        """
        with open(self.path, "wb") as log:
            log.write(MAGIC + bytes(8) + nonce(1) + (2 ** 63).to_bytes(8, "big"))
        cache = self.cache()
        self.assertRefused(replay.REASON_REPLAY, cache, 1)
        self.remember(cache, 2, now=NOW + 3 * SKEW + 2)
        self.assertEqual(len(cache), 1)

    def test_unreadableDirectoryIsAnError(self) -> None:
        blocker = os.path.join(self.directory, "not-a-directory")
        open(blocker, "w").close()
        self.assertRaises(
            ReplayCacheError, ReplayCache, os.path.join(blocker, "replay.cache"), SKEW, NOW
        )

    def test_memoryOnly(self) -> None:
        cache = ReplayCache(None, SKEW, NOW)
        self.remember(cache, 1)
        self.assertRefused(replay.REASON_REPLAY, cache, 1)
        cache.close()


def full_disk(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


class PersistenceFailureTests(CacheFileTestCase):
    """
    A replay cache that cannot be saved refuses messages (fail closed) until it can again, and
    never loses what it accepted: nothing accepted is replayable after a restart.
    """

    def setUp(self) -> None:
        super().setUp()
        self.events: list = []
        self.patch(ReplayCache, "log", replay.Logger(observer=self.events.append))
        self.cache = ReplayCache(self.path, SKEW, NOW, first_start=True)
        self.addCleanup(self.cache.close)

    def remember(self, number: int, now: float = NOW) -> None:
        remember(self.cache, nonce(number), wire.now_ms(now), now)

    def refused(self, number: int) -> str:
        return self.assertRaises(MessageRejected, self.remember, number).reason

    def logged(self, text: str) -> int:
        return sum(1 for event in self.events if text in event["log_format"])

    def restarted(self, now: float = NOW + 1) -> ReplayCache:
        """The cache as the next start finds it (no close: the daemon was killed)."""
        cache = ReplayCache(self.path, SKEW, now)
        self.addCleanup(cache.close)
        return cache

    def assertReplaysAfterRestart(self, *numbers: int) -> ReplayCache:
        """After a restart, each of ``numbers`` is refused as a replay; the cache then."""
        after = self.restarted()
        for number in numbers:
            error = self.assertRaises(MessageRejected, remember, after, nonce(number),
                                      wire.now_ms(NOW), NOW + 1)
            self.assertEqual(error.reason, replay.REASON_REPLAY)
        return after

    def test_failedCompactionKeepsTheLiveFile(self) -> None:
        """
        A compaction that cannot write its new file leaves the live file open: the messages
        accepted meanwhile are saved in it (the bug: they were kept in memory only, silently).
        """
        self.remember(1)
        original = replay.files.write_atomically
        replay.files.write_atomically = full_disk
        try:
            self.cache._records_in_file = 10 ** 6  # the next message asks for a compaction
            self.remember(2)
            self.remember(3)
        finally:
            replay.files.write_atomically = original
        self.assertGreaterEqual(self.logged("cannot compact"), 1)
        self.assertReplaysAfterRestart(1, 2, 3)

    def test_fullDiskRefusesUntilFreed(self) -> None:
        """
        With nothing saved (every write and sync fails, as on a full disk) messages are refused
        as ``cache-full``, said once in the log; once the disk has room the next message is
        accepted, saved, and the log says so. Nothing accepted is replayable after a restart.
        """
        self.remember(1)
        real_fsync = os.fsync
        self.patch(os, "fsync", full_disk)
        self.assertEqual(self.refused(2), replay.REASON_CACHE_FULL)
        self.assertEqual(self.refused(3), replay.REASON_CACHE_FULL)
        self.assertEqual(self.logged("cannot save the replay cache"), 1)
        self.patch(os, "fsync", real_fsync)  # room again
        self.remember(2)  # a refused message may come again, and is accepted now
        self.remember(4)
        self.assertEqual(self.logged("replay cache saved again"), 1)
        after = self.assertReplaysAfterRestart(1, 2, 4)
        remember(after, nonce(3), wire.now_ms(NOW), NOW + 1)  # refused then, so never used


class ClockTests(CacheFileTestCase):
    """
    A start with the clock behind (no RTC, fake-hwclock, a restored snapshot) must not shorten
    the records: the file keeps the highest time the daemon has seen.
    """


    def start(self, now: float, first_start: bool = False) -> ReplayCache:
        return ReplayCache(self.path, SKEW, now, first_start=first_start)

    def assertReplayRefused(self, cache: ReplayCache, number: int, stamped: float,
                            now: float) -> None:
        error = self.assertRaises(MessageRejected, remember, cache, nonce(number),
                                  wire.now_ms(stamped), now)
        self.assertEqual(error.reason, replay.REASON_REPLAY)

    def test_startBehindThenCorrected(self) -> None:
        first = self.start(NOW, first_start=True)
        remember(first, nonce(1), wire.now_ms(NOW), NOW)
        first.close()
        behind = self.start(NOW - 3600)  # loads, compacts and writes the file back
        behind.close()
        corrected = self.start(NOW + 1)
        self.addCleanup(corrected.close)
        self.assertReplayRefused(corrected, 1, NOW, NOW + 1)

    def test_timeSeenKeptFreshWhileRunning(self) -> None:
        """
        The time in the file follows the clock while the daemon runs (not only at start and
        stop): a record made long after the start survives a start behind after a kill.
        """
        first = self.start(NOW, first_start=True)
        for minute in range(1, 11):
            remember(first, nonce(minute), wire.now_ms(NOW + 60 * minute), NOW + 60 * minute)
        # killed: no close
        behind = self.start(NOW - 3600)
        behind.close()
        corrected = self.start(NOW + 601)
        self.addCleanup(corrected.close)
        self.assertReplayRefused(corrected, 10, NOW + 600, NOW + 601)
        first._file.close()

    def test_timeSeenNeverGoesBack(self) -> None:
        first = self.start(NOW, first_start=True)
        first.close()
        self.start(NOW - 3600).close()
        with open(self.path, "rb") as written:
            header = written.read(HEADER_SIZE)
        self.assertEqual(header[: len(MAGIC)], MAGIC)
        self.assertEqual(int.from_bytes(header[len(MAGIC) :], "big"), wire.now_ms(NOW))
