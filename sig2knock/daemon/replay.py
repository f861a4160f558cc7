"""
The replay cache: the nonces of accepted control messages, kept as long as their timestamps are
inside the ``MAX_CLOCK_SKEW`` window, bounded, and persisted under ``STATE_DIR`` (the file and
its format: ``replay_file``).

A message older than the window is refused by its timestamp (``wire.decode``), a message inside it
by this cache; together they refuse every replay. If the file is lost (missing where state existed
before, or not a replay cache) the cache refuses, for one window, every message stamped before
start + window: a restart never reopens the window, at the price of clients waiting it out.

Writes are durable before anything is acted on, and kept off the reactor thread: ``remember``
takes a nonce at once (a copy is a replay from then on) and returns a Deferred that fires when
its record is synced. The records that come while a write is under way go together in the next
one (group commit), so slow storage costs a burst of logins one sync per batch, and stalls no
other user and no capture. Nothing is accepted that is not saved: when a batch cannot be written
(a full disk, an I/O error) its messages are refused as ``cache-full`` and forgotten, and the
next batch tries again, by writing the whole file anew. The file's header keeps the latest time
the daemon has seen (written at every compaction, at least once a window while messages come),
so a start with the clock behind never shortens a record: records are capped from that time,
not from the clock.
"""

import heapq
from typing import Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from sig2knock.daemon.blocking import IBlockingWorker, InlineWorker
from sig2knock.daemon.replay_file import RECORD, ReplayCacheError, ReplayFile, parse
from sig2knock.protocol.wire import MessageRejected

__all__ = ["FILE_NAME", "REASON_CACHE_FULL", "REASON_REPLAY", "ReplayCache", "ReplayCacheError"]

# Why the cache refuses a message (MessageRejected.reason), beside decode's reasons.
REASON_REPLAY = "replay"
REASON_CACHE_FULL = "cache-full"

DEFAULT_CAPACITY = 65536
FILE_NAME = "replay.cache"
# A nonce is kept one second past the end of its window, so rounding never frees it early.
_MARGIN_MS = 1000

_Waiting = Tuple[bytes, int, Deferred]  # a nonce, its expiry, and who waits for its record


class ReplayCache(Service):
    """
    Nonces seen inside the clock-skew window, with their expiry times.

    ``path`` is the log file (``None`` keeps the cache in memory only, for tests and the client);
    ``max_skew`` is ``MAX_CLOCK_SKEW`` in seconds; ``capacity`` bounds the live entries: when it is
    reached new messages are refused (fail closed) rather than old nonces forgotten. ``first_start``
    says a missing file is expected (a state directory just created); otherwise a missing file is
    treated as lost. ``worker`` runs the writes (the daemon's is a ``ThreadWorker``; by default
    they run at once, in the caller's thread). Loading and the first compaction run at once,
    before the daemon starts. As a service, stopping it waits for the writes under way and
    closes the file.
    """

    log = Logger()

    def __init__(
        self,
        path: Optional[str],
        max_skew: float,
        now: float,
        capacity: int = DEFAULT_CAPACITY,
        first_start: bool = False,
        worker: Optional[IBlockingWorker] = None,
    ) -> None:
        self.path = path
        self.max_skew_ms = int(max_skew * 1000)
        self.capacity = capacity
        self.worker = worker if worker is not None else InlineWorker()
        self.file = ReplayFile(path) if path is not None else None
        self._expiries: Dict[bytes, int] = {}
        self._heap: List[Tuple[int, bytes]] = []
        self._batch: List[_Waiting] = []  # records to write next
        self._writing: List[_Waiting] = []  # records being written
        self._compacting = False  # whether that write rewrites the whole file
        self._idle: List[Deferred] = []  # who waits for every write to end
        self._closed = False
        self._failing = False  # the last batch could not be saved
        self._compaction_failing = False
        # The latest time seen (see the module's text).
        self._time_seen_ms = int(now * 1000)
        # Messages stamped before this are refused: set when the old cache could not be read.
        self._floor_ms = 0
        if self.file is not None:
            self._load(int(now * 1000), first_start)
            self.file.rewrite(self._expiries, self._time_seen_ms)

    def __len__(self) -> int:
        return len(self._expiries)

    def check(self, nonce: bytes, timestamp_ms: int, now: float) -> None:
        """
        Refuse ``nonce`` if it was seen (``MessageRejected`` with reason ``replay``), without
        remembering it; ``remember`` does that once the message is otherwise accepted.
        """
        self._prune(int(now * 1000))
        if nonce in self._expiries:
            raise MessageRejected(REASON_REPLAY, "nonce seen before")
        if timestamp_ms < self._floor_ms:
            raise MessageRejected(REASON_REPLAY, "stamped before the replay cache was lost")

    def remember_in_memory(self, nonce: bytes, timestamp_ms: int, now: float) -> int:
        """
        Remember ``nonce``, which ``check`` has just passed, until its window ends, in memory
        only: for a message that acts on live state alone (a P2 finds no session after a
        restart). Returns its expiry (ms); raises ``MessageRejected`` (reason ``cache-full``)
        when the cache is full or closed.
        """
        if self._closed:
            raise MessageRejected(REASON_CACHE_FULL, "the replay cache is closed")
        if len(self._expiries) >= self.capacity:
            raise MessageRejected(REASON_CACHE_FULL, f"{self.capacity} nonces in the window")
        now_ms = int(now * 1000)
        expiry_ms = max(timestamp_ms, now_ms) + self.max_skew_ms + _MARGIN_MS
        self._add(nonce, expiry_ms)
        self._time_seen_ms = max(self._time_seen_ms, now_ms)
        return expiry_ms

    def remember(self, nonce: bytes, timestamp_ms: int, now: float) -> Deferred:
        """
        Remember ``nonce``, which ``check`` has just passed, until its window ends: at once in
        memory, and on disk. Raises ``MessageRejected`` (reason ``cache-full``) when the cache is
        full or closed; otherwise the Deferred fires once the record is durable, or fails with
        ``MessageRejected`` (``cache-full``) when it cannot be written. What the message asks
        may be granted only once it has fired.
        """
        expiry_ms = self.remember_in_memory(nonce, timestamp_ms, now)
        if self.file is None:
            return succeed(None)
        durable: Deferred = Deferred()
        self._batch.append((nonce, expiry_ms, durable))
        self._write_batch()
        return durable

    def _write_batch(self) -> None:
        """
        Hand the batch to the worker, unless a write is under way (its end sends the next).
        """
        if self._writing or not self._batch:
            return
        assert self.file is not None
        self._writing, self._batch = self._batch, []
        records = b"".join(RECORD.pack(nonce, expiry) for nonce, expiry, _ in self._writing)
        # A copy, which the worker's thread may read while this one goes on: the live entries
        # (the batch's among them) when the file is to be written anew.
        self._compacting = self._compaction_due()
        entries = self._expiries.copy() if self._compacting else None
        time_seen_ms = self._time_seen_ms
        self.worker.run(lambda: self.file.save(records, entries, time_seen_ms)).addBoth(
            self._written
        )

    def _compaction_due(self) -> bool:
        assert self.file is not None
        if not self.file.is_open:
            return True  # the first write after a failure: the whole file anew
        if self._time_seen_ms - self.file.time_in_file_ms > self.max_skew_ms:
            return True  # to keep the time it holds fresh
        return self.file.records + len(self._writing) > 2 * len(self._expiries) + 1024

    def _written(self, result: object) -> None:
        written, self._writing = self._writing, []
        if isinstance(result, Failure):
            self._not_saved(written, result)
        else:
            self._saved(written, result)
        self._write_batch()
        if not self._writing:
            idle, self._idle = self._idle, []
            for waiting in idle:
                waiting.callback(None)

    def _saved(self, written: List[_Waiting], compaction_failure: object) -> None:
        if compaction_failure is not None:
            if not self._compaction_failing:  # said once until a compaction succeeds
                self._compaction_failing = True
                self.log.warn(
                    "cannot compact the replay cache (messages are still saved to the old"
                    " file): {error}",
                    error=compaction_failure,
                )
        elif self._compacting:
            self._compaction_failing = False
        if self._failing:
            self._failing = False
            self.log.info("replay cache saved again: {path}", path=self.path)
        for _, _, durable in written:
            durable.callback(None)

    def _not_saved(self, written: List[_Waiting], failure: Failure) -> None:
        # Fail closed: what could not be saved is not accepted, and so is not remembered either
        # (a copy may come again, and be saved then).
        for nonce, expiry_ms, _ in written:
            if self._expiries.get(nonce) == expiry_ms:
                del self._expiries[nonce]
        if not self._failing:
            self._failing = True
            self.log.error(
                "cannot save the replay cache, refusing every message until it can be saved"
                " again: {error}",
                error=failure.getErrorMessage(),
            )
        for _, _, durable in written:
            durable.errback(MessageRejected(REASON_CACHE_FULL, "replay cache cannot be saved"))

    @property
    def saving(self) -> bool:
        """
        Whether the last batch could be saved (``False`` while messages are refused for it).
        """
        return not self._failing

    def startService(self) -> None:
        """
        The daemon starts: so does the worker.
        """
        super().startService()
        self.worker.start()

    def stopService(self) -> Deferred:
        """
        The daemon is stopping: close the cache, then end the worker.
        """
        closing = self.close()
        super().stopService()
        closing.addBoth(lambda _: self.worker.stop())
        return closing

    def close(self) -> Deferred:
        """
        Refuse new messages, wait for the writes under way, compact the file one last time and
        close it (once; a failure is logged). The Deferred fires when it is closed. A cache that
        never started (the daemon stopped while it was loading) is closed at once: its worker
        runs nothing yet.
        """
        if self.file is None or self._closed:
            return succeed(None)
        self._closed = True
        writes_done: Deferred = Deferred()
        if self._writing:
            self._idle.append(writes_done)
        else:
            writes_done.callback(None)
        replay_file = self.file
        worker = self.worker if self.running else InlineWorker()

        def finish(_: object) -> Deferred:
            entries, time_seen_ms = self._expiries.copy(), self._time_seen_ms
            return worker.run(lambda: replay_file.finish(entries, time_seen_ms))

        def report(failure: object) -> None:
            if failure is not None:
                self.log.warn("cannot compact the replay cache at stop: {error}", error=failure)

        return writes_done.addCallback(finish).addCallback(report)

    def _add(self, nonce: bytes, expiry_ms: int) -> None:
        self._expiries[nonce] = expiry_ms
        heapq.heappush(self._heap, (expiry_ms, nonce))

    def _prune(self, now_ms: int) -> None:
        heap = self._heap
        while heap and heap[0][0] < now_ms:
            expiry_ms, nonce = heapq.heappop(heap)
            if self._expiries.get(nonce) == expiry_ms:
                del self._expiries[nonce]

    def _load(self, now_ms: int, first_start: bool) -> None:
        assert self.file is not None
        data = self.file.read()
        if data is None:
            if not first_start:
                self._lost(now_ms, "is missing")
            return
        parsed = parse(data)
        if parsed is None:
            self._lost(now_ms, "is not a sig2knock replay cache")
            return
        time_seen_ms, records = parsed
        self._time_seen_ms = max(now_ms, time_seen_ms)
        # No real record can need keeping past this: it was written at most a window after the
        # time in the header (the header is renewed once a window), its message stamped at most
        # a window ahead. A damaged record cannot pin an entry for longer, and a clock that is
        # behind now shortens nothing.
        latest_ms = self._time_seen_ms + 3 * self.max_skew_ms + _MARGIN_MS
        for nonce, expiry_ms in records:
            if expiry_ms >= now_ms:
                expiry_ms = min(expiry_ms, latest_ms)
                self._add(nonce, max(expiry_ms, self._expiries.get(nonce, 0)))

    def _lost(self, now_ms: int, what: str) -> None:
        self._floor_ms = now_ms + self.max_skew_ms
        self.log.warn(
            "replay cache {path} {what}; refusing messages stamped in the next {seconds} seconds'"
            " window so that nothing sent before this start can be replayed",
            path=self.path,
            what=what,
            seconds=self.max_skew_ms // 1000,
        )
