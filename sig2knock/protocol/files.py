"""
Files that hold secrets or state, for client and daemon alike: replacing one atomically, and
what makes one unfit to hold a secret on POSIX.

This module is imported by the client: it must not import Twisted or a POSIX-only module.
"""

import os
import stat
from typing import NamedTuple, Optional

NOT_REGULAR = "not-regular"
OTHER_OWNER = "other-owner"
OPEN_MODE = "open-mode"


class Exposure(NamedTuple):
    """
    Why a file may not hold a secret: ``kind`` (``NOT_REGULAR``, ``OTHER_OWNER`` or
    ``OPEN_MODE``), with the file's owner and permission bits for the message.
    """

    kind: str
    owner: int
    mode: int


def exposure(status: os.stat_result, uid: int) -> Optional[Exposure]:
    """
    Why the file of ``status`` may not hold a secret of user ``uid`` (POSIX): it is not a
    regular file, belongs to someone else, or is open to group or others; ``None`` when it may.
    """
    mode = stat.S_IMODE(status.st_mode)
    if not stat.S_ISREG(status.st_mode):
        return Exposure(NOT_REGULAR, status.st_uid, mode)
    if status.st_uid != uid:
        return Exposure(OTHER_OWNER, status.st_uid, mode)
    if mode & 0o077:
        return Exposure(OPEN_MODE, status.st_uid, mode)
    return None


def write_atomically(path: str, data: bytes, sync_directory: bool = False) -> None:
    """
    Replace ``path`` with ``data``: written to a new file beside it (mode 0600, a name nobody
    can have put there first), synced, then renamed over it, so that a reader or a crash sees
    the old file or the new one, never a part. With ``sync_directory`` the directory is synced
    too, so that the rename itself survives a power loss (POSIX). ``OSError`` passes through,
    and the new file does not stay behind.
    """
    import tempfile  # not at every client start: only --save-key writes a file

    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(descriptor, "wb") as new:
            new.write(data)
            new.flush()
            os.fsync(new.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if sync_directory:
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
