"""
The replay cache: the nonces of accepted control messages, kept as long as their timestamps are
inside the ``MAX_CLOCK_SKEW`` window, bounded, and persisted under ``STATE_DIR``.

A message older than the window is refused by its timestamp (``wire.decode``), a message inside it
by this cache; together they refuse every replay. The file is an append-only log of fixed-size
records, each written by a single ``write()`` and synced, so a killed daemon or a power loss leaves
either the whole record or a partial tail that loading ignores; it is compacted by writing a new
file and renaming it over the old one, which stays the live file until its replacement is durable.
If the file is lost (missing where state existed before, or not a replay cache) the cache refuses,
for one window, every message stamped before start + window: a restart never reopens the window,
at the price of clients waiting it out.

Nothing is accepted that is not saved: when a record cannot be written (a full disk, an I/O
error) the message is refused as ``cache-full``, and every later message tries again, first by
writing the whole file anew. The file's header keeps the latest time the daemon has seen (written
at every compaction, at least once a window while messages come), so a start with the clock
behind never shortens a record: records are capped from that time, not from the clock.
"""

import heapq
import os
import struct
from typing import Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.logger import Logger

from sig2knock.protocol import files
from sig2knock.protocol.wire import REPLAY_ID_SIZE as NONCE_SIZE, MessageRejected

# Why the cache refuses a message (MessageRejected.reason), beside decode's reasons.
REASON_REPLAY = "replay"
REASON_CACHE_FULL = "cache-full"

MAGIC = b"S2KRPL2\n"
_OLD_MAGIC = b"S2KRPL1\n"  # the same without the time seen: read, never written
_TIME_SEEN = struct.Struct("!Q")  # the latest time the daemon had seen (ms since the epoch)
HEADER_SIZE = len(MAGIC) + _TIME_SEEN.size
_RECORD = struct.Struct(f"!{NONCE_SIZE}sQ")  # nonce, expiry (ms since the epoch)
DEFAULT_CAPACITY = 65536
FILE_NAME = "replay.cache"
# A nonce is kept one second past the end of its window, so rounding never frees it early.
_MARGIN_MS = 1000


class ReplayCacheError(Exception):
    """
    The state directory or the cache file cannot be used (permissions, not a directory, ...).
    """


class ReplayCache(Service):
    """
    Nonces seen inside the clock-skew window, with their expiry times.

    ``path`` is the log file (``None`` keeps the cache in memory only, for tests and the client);
    ``max_skew`` is ``MAX_CLOCK_SKEW`` in seconds; ``capacity`` bounds the live entries: when it is
    reached new messages are refused (fail closed) rather than old nonces forgotten. ``first_start``
    says a missing file is expected (a state directory just created); otherwise a missing file is
    treated as lost. As a service of the daemon, stopping it closes it (``close``).
    """

    log = Logger()

    def __init__(
        self,
        path: Optional[str],
        max_skew: float,
        now: float,
        capacity: int = DEFAULT_CAPACITY,
        first_start: bool = False,
    ) -> None:
        self.path = path
        self.max_skew_ms = int(max_skew * 1000)
        self.capacity = capacity
        self._expiries: Dict[bytes, int] = {}
        self._heap: List[Tuple[int, bytes]] = []
        self._records_in_file = 0
        self._file = None
        self._closed = False
        self._failing = False  # the last message could not be saved
        self._compaction_failing = False
        # The latest time seen, and the time the file's header holds (see the module's text).
        self._time_seen_ms = int(now * 1000)
        self._time_in_file_ms = 0
        # Messages stamped before this are refused: set when the old cache could not be read.
        self._floor_ms = 0
        if path is not None:
            self._load(int(now * 1000), first_start)
            self._compact()

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

    def remember(self, nonce: bytes, timestamp_ms: int, now: float) -> None:
        """
        Remember ``nonce``, which ``check`` has just passed, until its window ends, on disk too;
        refuse it (reason ``cache-full``) when the cache is full or cannot be written.
        """
        now_ms = int(now * 1000)
        if len(self._expiries) >= self.capacity:
            raise MessageRejected(REASON_CACHE_FULL, f"{self.capacity} nonces in the window")
        expiry_ms = max(timestamp_ms, now_ms) + self.max_skew_ms + _MARGIN_MS
        if self.path is not None:
            self._save(nonce, expiry_ms, now_ms)
        self._add(nonce, expiry_ms)

    def _save(self, nonce: bytes, expiry_ms: int, now_ms: int) -> None:
        """
        Write and sync the record of ``nonce``; raise ``MessageRejected`` (``cache-full``) when
        it cannot be saved, after which every message tries again.
        """
        self._time_seen_ms = max(self._time_seen_ms, now_ms)
        try:
            if self._file is None:
                self._compact()  # the first try after a failure: the whole file anew
            elif self._time_seen_ms - self._time_in_file_ms > self.max_skew_ms:
                self._try_compact("to keep the time it holds fresh")
            # Only authenticated messages get here, so this costs a sync per login, not per
            # packet; it keeps the record across a power loss as well as a killed daemon.
            assert self._file is not None
            if self._file.write(_RECORD.pack(nonce, expiry_ms)) != _RECORD.size:
                raise OSError(0, "short write")
            os.fsync(self._file.fileno())
        except (OSError, ReplayCacheError) as error:
            # Fail closed: a nonce that could not be saved is not accepted. The file may end in
            # a part of this record now, so nothing more is appended to it.
            self._drop_file()
            if not self._failing:
                self._failing = True
                self.log.error(
                    "cannot save the replay cache, refusing every message until it can be"
                    " saved again: {error}",
                    error=error,
                )
            raise MessageRejected(REASON_CACHE_FULL, "replay cache cannot be saved") from None
        self._records_in_file += 1
        if self._failing:
            self._failing = False
            self.log.info("replay cache saved again: {path}", path=self.path)
        if self._records_in_file > 2 * len(self._expiries) + 1024:
            self._try_compact("that has grown")

    @property
    def saving(self) -> bool:
        """
        Whether the last message could be saved (``False`` while messages are refused for it).
        """
        return not self._failing

    def stopService(self) -> None:
        """
        The daemon is stopping: close the cache.
        """
        super().stopService()
        self.close()

    def close(self) -> None:
        """
        Compact the file one last time and close it (once; a failure is logged).
        """
        if self.path is None or self._closed:
            return
        self._closed = True
        self._try_compact("at stop")
        self._drop_file()

    def _drop_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

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
        assert self.path is not None
        try:
            with open(self.path, "rb") as existing:
                data = existing.read()
        except FileNotFoundError:
            if not first_start:
                self._lost(now_ms, "is missing")
            return
        except OSError as error:
            raise ReplayCacheError(f"cannot read the replay cache {self.path}: {error.strerror}")
        if data.startswith(MAGIC) and len(data) >= HEADER_SIZE:
            (time_seen_ms,) = _TIME_SEEN.unpack_from(data, len(MAGIC))
            body = data[HEADER_SIZE:]
        elif data.startswith(_OLD_MAGIC):
            time_seen_ms, body = 0, data[len(_OLD_MAGIC) :]
        else:
            self._lost(now_ms, "is not a sig2knock replay cache")
            return
        self._time_seen_ms = max(now_ms, time_seen_ms)
        usable = len(body) - len(body) % _RECORD.size
        # No real record can need keeping past this: it was written at most a window after the
        # time in the header (the header is renewed once a window), its message stamped at most
        # a window ahead. A damaged record cannot pin an entry for longer, and a clock that is
        # behind now shortens nothing.
        latest_ms = self._time_seen_ms + 3 * self.max_skew_ms + _MARGIN_MS
        for nonce, expiry_ms in _RECORD.iter_unpack(body[:usable]):
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

    def _compact(self) -> None:
        """
        Write the live entries and the time seen to a new file, make it durable, rename it over
        the old one, and only then append to it instead. Raises ``ReplayCacheError``; the old
        file then stays the live one, unless it was already replaced.
        """
        assert self.path is not None
        time_seen_ms = self._time_seen_ms
        records = b"".join(_RECORD.pack(n, e) for n, e in self._expiries.items())
        try:
            files.write_atomically(
                self.path, MAGIC + _TIME_SEEN.pack(time_seen_ms) + records, sync_directory=True
            )
        except OSError as error:
            if not self._still_live():
                self._drop_file()  # renamed over, then the directory sync failed
            raise ReplayCacheError(
                f"cannot write the replay cache {self.path}: {error.strerror or error}"
            ) from None
        self._drop_file()
        try:
            self._file = open(self.path, "ab", buffering=0)
        except OSError as error:
            raise ReplayCacheError(
                f"cannot open the replay cache {self.path}: {error.strerror}"
            ) from None
        self._records_in_file = len(self._expiries)
        self._time_in_file_ms = time_seen_ms
        self._compaction_failing = False

    def _try_compact(self, why: str) -> None:
        try:
            self._compact()
        except ReplayCacheError as error:
            if self._compaction_failing:
                return  # said once until a compaction succeeds
            self._compaction_failing = True
            self.log.warn(
                "cannot compact the replay cache {why} (messages are still saved to the old"
                " file): {error}",
                why=why,
                error=str(error),
            )

    def _still_live(self) -> bool:
        """
        Whether the open file is still the one at ``path``.
        """
        if self._file is None:
            return False
        try:
            live, named = os.fstat(self._file.fileno()), os.stat(self.path)  # type: ignore[arg-type]
        except OSError:
            return False
        return (live.st_dev, live.st_ino) == (named.st_dev, named.st_ino)
