"""
Tests for sig2knock.daemon.replay: the persisted, bounded cache of nonces inside the clock-skew
window.
"""

import errno
import os
import stat

from typing import Any, Callable, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sig2knock.daemon import replay, replay_file
from sig2knock.daemon.blocking import IBlockingWorker, InlineWorker, ThreadWorker
from sig2knock.daemon.replay import ReplayCache, ReplayCacheError
from sig2knock.daemon.replay_file import HEADER_SIZE, MAGIC
from sig2knock.protocol import wire
from sig2knock.protocol.wire import MessageRejected
from sig2knock.test.common import remember


NOW = 1_800_000_000.0
SKEW = 60


def nonce(number: int) -> bytes:
    return number.to_bytes(12, "big")


@implementer(IBlockingWorker)
class HeldWorker:
    """
    A worker (``IBlockingWorker``) whose jobs wait until the test runs them, one at a time and
    in order (``finish_one``): what a slow disk looks like to the replay cache, in one thread.
    """

    def __init__(self) -> None:
        self.jobs: List[Any] = []  # (job, its Deferred)
        self.runs = 0

    def run(self, job: Callable[[], Any]) -> Deferred:
        waiting: Deferred = Deferred()
        self.jobs.append((job, waiting))
        return waiting

    def finish_one(self) -> None:
        """
        Run the oldest job now and fire its Deferred.
        """
        job, waiting = self.jobs.pop(0)
        self.runs += 1
        try:
            result = job()
        except Exception:
            waiting.errback()
        else:
            waiting.callback(result)

    def finish_all(self) -> None:
        """
        Run the jobs, those the finished ones give too, until none waits.
        """
        while self.jobs:
            self.finish_one()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass



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
        first.file.close()
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

    def test_plantedLinkRefused(self) -> None:
        """
        A symbolic link where the cache file belongs (planted in STATE_DIR) stops the start:
        the cache is neither read through it nor written through it.
        """
        target = os.path.join(self.directory, "elsewhere")
        with open(target, "wb") as out:
            out.write(b"not yours")
        os.symlink(target, self.path)
        error = self.assertRaises(ReplayCacheError, ReplayCache, self.path, SKEW, NOW)
        self.assertIn("symbolic links", str(error))
        with open(target, "rb") as unchanged:
            self.assertEqual(unchanged.read(), b"not yours")

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
        original = replay_file.files.write_atomically
        replay_file.files.write_atomically = full_disk
        try:
            self.cache.file.records = 10 ** 6  # the next message asks for a compaction
            self.remember(2)
            self.remember(3)
        finally:
            replay_file.files.write_atomically = original
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
        first.file.close()

    def test_timeSeenNeverGoesBack(self) -> None:
        first = self.start(NOW, first_start=True)
        first.close()
        self.start(NOW - 3600).close()
        with open(self.path, "rb") as written:
            header = written.read(HEADER_SIZE)
        self.assertEqual(header[: len(MAGIC)], MAGIC)
        self.assertEqual(int.from_bytes(header[len(MAGIC) :], "big"), wire.now_ms(NOW))


class GroupCommitTests(CacheFileTestCase):
    """
    Writes run in the worker's thread, never in the caller's: a message is acted on only once its
    record is durable, and the records that come while a write is under way go in the next one.
    """

    def setUp(self) -> None:
        super().setUp()
        self.worker = HeldWorker()
        self.cache = ReplayCache(self.path, SKEW, NOW, first_start=True, worker=self.worker)
        self.cache.startService()
        self.addCleanup(self.cache.close)
        self.addCleanup(self.worker.finish_all)

    def remember(self, number: int) -> Deferred:
        self.cache.check(nonce(number), wire.now_ms(NOW), NOW)
        return self.cache.remember(nonce(number), wire.now_ms(NOW), NOW)

    def records_on_disk(self) -> int:
        return (os.path.getsize(self.path) - HEADER_SIZE) // replay_file.RECORD.size

    def test_actedOnOnlyOnceDurable(self) -> None:
        """
        ``remember`` returns before the record is written; its Deferred fires once the record
        is on disk. A copy that comes meanwhile is a replay already.
        """
        saved = self.remember(1)
        self.assertNoResult(saved)
        self.assertEqual(self.records_on_disk(), 0)
        error = self.assertRaises(MessageRejected, self.remember, 1)
        self.assertEqual(error.reason, replay.REASON_REPLAY)
        self.worker.finish_one()
        self.assertIsNone(self.successResultOf(saved))
        self.assertEqual(self.records_on_disk(), 1)

    def test_recordsWaitingGoInOneWrite(self) -> None:
        """
        While one write is under way the next records gather; they are written and synced
        together, in one job, and each Deferred fires only then.
        """
        fsyncs = []
        real_fsync = os.fsync
        self.patch(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
        first = self.remember(1)
        waiting = [self.remember(number) for number in range(2, 6)]
        self.assertEqual(len(self.worker.jobs), 1, "one write under way, the others gather")
        self.worker.finish_one()
        self.successResultOf(first)
        for saved in waiting:
            self.assertNoResult(saved)
        self.assertEqual(len(self.worker.jobs), 1)
        self.worker.finish_one()
        for saved in waiting:
            self.successResultOf(saved)
        self.assertEqual((self.worker.runs, len(fsyncs)), (2, 2))
        self.assertEqual(self.records_on_disk(), 5)

    def test_batchNotSavedIsRefusedAndForgotten(self) -> None:
        """
        A batch that cannot be written refuses each of its messages (``cache-full``) and
        forgets their nonces, so a copy can be accepted once the disk has room; nothing
        accepted is lost.
        """
        self.successResultOf(self.deferred_and_finish(1))
        real_fsync = os.fsync
        self.patch(os, "fsync", full_disk)
        refused = [self.remember(2), self.remember(3)]
        self.worker.finish_all()
        for saved in refused:
            self.assertEqual(self.failureResultOf(saved, MessageRejected).value.reason,
                             replay.REASON_CACHE_FULL)
        self.patch(os, "fsync", real_fsync)
        self.successResultOf(self.deferred_and_finish(2))  # a copy of 2, accepted now
        after = ReplayCache(self.path, SKEW, NOW + 1)
        self.addCleanup(after.close)
        for number in (1, 2):
            error = self.assertRaises(MessageRejected, remember, after, nonce(number),
                                      wire.now_ms(NOW), NOW + 1)
            self.assertEqual(error.reason, replay.REASON_REPLAY)
        remember(after, nonce(3), wire.now_ms(NOW), NOW + 1)

    def deferred_and_finish(self, number: int) -> Deferred:
        saved = self.remember(number)
        self.worker.finish_all()
        return saved

    def test_closeWaitsForTheWriteUnderWay(self) -> None:
        """
        Stopping refuses new messages, lets the write under way end, then compacts and closes:
        what was accepted survives the restart.
        """
        saved = self.remember(1)
        closed = self.cache.stopService()
        self.assertNoResult(closed)
        late = self.assertRaises(MessageRejected, self.cache.remember, nonce(2),
                                 wire.now_ms(NOW), NOW)
        self.assertEqual(late.reason, replay.REASON_CACHE_FULL)
        self.worker.finish_all()
        self.successResultOf(saved)
        self.successResultOf(closed)
        self.assertFalse(self.cache.file.is_open)
        after = ReplayCache(self.path, SKEW, NOW + 1)
        self.addCleanup(after.close)
        self.assertRaises(MessageRejected, remember, after, nonce(1), wire.now_ms(NOW), NOW + 1)


class WorkerTests(TestCase):
    """
    The daemon's worker runs jobs in a thread of its own, in order; the replay cache on it
    saves every record before its Deferred fires.
    """

    def test_interfaces(self) -> None:
        for worker in (ThreadWorker(reactor, "test"), InlineWorker(), HeldWorker()):
            self.assertTrue(verifyObject(IBlockingWorker, worker))

    async def test_jobsRunInOrderInTheWorkersThread(self) -> None:
        import threading

        worker = ThreadWorker(reactor, "test-worker")
        worker.start()
        self.addCleanup(worker.stop)
        seen: List[Any] = []
        runs = [worker.run(lambda n=n: seen.append((n, threading.current_thread().name)))
                for n in range(20)]
        for running in runs:
            await running
        self.assertEqual([n for n, _ in seen], list(range(20)))
        self.assertNotIn(threading.main_thread().name, {name for _, name in seen})
        failing = worker.run(lambda: 1 / 0)
        with self.assertRaises(ZeroDivisionError):
            await failing

    async def test_cacheOnTheThreadSavesEveryRecord(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "replay.cache")
        cache = ReplayCache(path, SKEW, NOW, first_start=True,
                            worker=ThreadWorker(reactor, "test-replay-cache"))
        cache.startService()
        saving = []
        for number in range(200):
            cache.check(nonce(number), wire.now_ms(NOW), NOW)
            saving.append(cache.remember(nonce(number), wire.now_ms(NOW), NOW))
        for saved in saving:
            await saved
        await cache.stopService()
        after = ReplayCache(path, SKEW, NOW + 1)
        self.addCleanup(after.close)
        self.assertEqual(len(after), 200)
