"""
The replay cache's file: its format, and the blocking operations on it (``ReplayFile``), which
the cache runs one at a time in its worker's thread.

The file is a header (``MAGIC`` and the latest time the daemon has seen) and an append-only log
of fixed-size records (a nonce and its expiry). A batch of records is written by one ``write()``
and synced, so a killed daemon or a power loss leaves whole records and at most a partial tail,
which loading ignores. A compaction writes the live entries to a new file, syncs it and renames
it over the old one, which stays the live file until its replacement is durable.
"""

import os
import struct
from typing import Dict, Iterator, Optional, Tuple

from sig2knock.protocol import files
from sig2knock.protocol.wire import REPLAY_ID_SIZE as NONCE_SIZE

MAGIC = b"S2KRPL2\n"
_OLD_MAGIC = b"S2KRPL1\n"  # the same without the time seen: read, never written
_TIME_SEEN = struct.Struct("!Q")  # the latest time the daemon had seen (ms since the epoch)
HEADER_SIZE = len(MAGIC) + _TIME_SEEN.size
RECORD = struct.Struct(f"!{NONCE_SIZE}sQ")  # nonce, expiry (ms since the epoch)


class ReplayCacheError(Exception):
    """
    The state directory or the cache file cannot be used (permissions, not a directory, a full
    disk, ...).
    """


def parse(data: bytes) -> Optional[Tuple[int, Iterator[Tuple[bytes, int]]]]:
    """
    The time seen and the whole records of a cache file's ``data``, or ``None`` when it is not a
    sig2knock replay cache (a version 1 file has no time seen: 0).
    """
    if data.startswith(MAGIC) and len(data) >= HEADER_SIZE:
        (time_seen_ms,) = _TIME_SEEN.unpack_from(data, len(MAGIC))
        body = data[HEADER_SIZE:]
    elif data.startswith(_OLD_MAGIC):
        time_seen_ms, body = 0, data[len(_OLD_MAGIC) :]
    else:
        return None
    usable = len(body) - len(body) % RECORD.size
    return time_seen_ms, RECORD.iter_unpack(body[:usable])


def pack(entries: Dict[bytes, int]) -> bytes:
    """
    The records of ``entries`` (nonce -> expiry).
    """
    return b"".join(RECORD.pack(nonce, expiry_ms) for nonce, expiry_ms in entries.items())


def write_empty(path: str, time_seen_ms: int, owner: Optional[Tuple[int, int]] = None) -> None:
    """
    Write a replay cache with no records at ``path`` (given to ``owner``, uid and gid, when
    set): what ``sig2knockd --init`` leaves beside the identity it makes, so that the first
    start finds a cache and a later start that finds none knows it was lost. Raises
    ``ReplayCacheError``.
    """
    try:
        files.write_atomically(path, MAGIC + _TIME_SEEN.pack(time_seen_ms), sync_directory=True)
        if owner is not None:
            os.chown(path, *owner, follow_symlinks=False)
    except OSError as error:
        raise ReplayCacheError(
            f"cannot write the replay cache {path}: {error.strerror or error}"
        ) from None


class ReplayFile:
    """
    The open cache file at ``path``: the records it holds and the time its header holds. Only
    one thread uses it at a time (the cache's worker, or the cache while no job runs).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = None
        self.records = 0  # records in the file, live or not
        self.time_in_file_ms = 0

    @property
    def is_open(self) -> bool:
        """
        Whether records can be appended (``False`` before the first rewrite and after a failure).
        """
        return self._file is not None

    def read(self) -> Optional[bytes]:
        """
        The file's content, ``None`` when it does not exist; raises ``ReplayCacheError``.
        """
        try:
            # O_NOFOLLOW here and below: a link planted in STATE_DIR is refused, not followed.
            with os.fdopen(os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as existing:
                return existing.read()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise ReplayCacheError(
                f"cannot read the replay cache {self.path}: {error.strerror}"
            ) from None

    def rewrite(self, entries: Dict[bytes, int], time_seen_ms: int) -> None:
        """
        Write ``entries`` and ``time_seen_ms`` to a new file, make it durable, rename it over
        the old one, and from then on append to it. Raises ``ReplayCacheError``; the old file
        then stays the live one, unless it was already replaced.
        """
        try:
            files.write_atomically(
                self.path, MAGIC + _TIME_SEEN.pack(time_seen_ms) + pack(entries),
                sync_directory=True,
            )
        except OSError as error:
            if not self._still_live():
                self.close()  # renamed over, then the directory sync failed
            raise ReplayCacheError(
                f"cannot write the replay cache {self.path}: {error.strerror or error}"
            ) from None
        self.close()
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            self._file = os.fdopen(descriptor, "ab", buffering=0)
        except OSError as error:
            raise ReplayCacheError(
                f"cannot open the replay cache {self.path}: {error.strerror}"
            ) from None
        self.records = len(entries)
        self.time_in_file_ms = time_seen_ms

    def append(self, records: bytes) -> None:
        """
        Append ``records`` (whole ones) in one write and sync them. Raises ``ReplayCacheError``;
        the file may then end in a part of them, so it is closed and nothing more is appended
        until a ``rewrite``.
        """
        assert self._file is not None
        try:
            if self._file.write(records) != len(records):
                raise OSError(0, "short write")
            # It keeps the records across a power loss as well as a killed daemon.
            os.fsync(self._file.fileno())
        except OSError as error:
            self.close()
            raise ReplayCacheError(
                f"cannot save the replay cache {self.path}: {error.strerror or error}"
            ) from None
        self.records += len(records) // RECORD.size

    def save(
        self, records: bytes, entries: Optional[Dict[bytes, int]], time_seen_ms: int
    ) -> Optional[str]:
        """
        Make a batch durable: ``records`` are its records, ``entries`` (which include them) the
        live ones when the file is to be compacted, as it must be when it is not open. Returns
        why a compaction failed when the batch was appended to the old file instead, else
        ``None``; raises ``ReplayCacheError`` when the batch is not durable.
        """
        if entries is not None:
            try:
                self.rewrite(entries, time_seen_ms)
                return None
            except ReplayCacheError as error:
                if not self.is_open:
                    raise
                failure = str(error)
        else:
            failure = None
        self.append(records)
        return failure

    def finish(self, entries: Dict[bytes, int], time_seen_ms: int) -> Optional[str]:
        """
        Compact the file one last time and close it; why the compaction failed, or ``None``.
        """
        try:
            self.rewrite(entries, time_seen_ms)
            return None
        except ReplayCacheError as error:
            return str(error)
        finally:
            self.close()

    def close(self) -> None:
        """
        Close the file (appending needs a ``rewrite`` then).
        """
        if self._file is not None:
            self._file.close()
            self._file = None

    def _still_live(self) -> bool:
        """
        Whether the open file is still the one at ``path``.
        """
        if self._file is None:
            return False
        try:
            live, named = os.fstat(self._file.fileno()), os.stat(self.path)
        except OSError:
            return False
        return (live.st_dev, live.st_ino) == (named.st_dev, named.st_ino)
