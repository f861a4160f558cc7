"""
Whether the directories above a file the daemon trusts (its users file, its ``STATE_DIR``) are
safe, the way sshd's StrictModes checks those above ``authorized_keys``: each owned by root or
by the daemon's user, and not writable by group or others, unless sticky (like ``/tmp``, whose
entries only their owners can rename or remove). Someone who could change one of them could put
a file of their own in the place of the one checked.
"""

import os
import pwd
import stat
from typing import Optional


def user_name(uid: int) -> str:
    """
    The login name of ``uid``, or the number when it has none (for messages).
    """
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def unsafe_parent(path: str, uid: int) -> Optional[str]:
    """
    Why a directory above ``path`` (symbolic links resolved) is unsafe for a file of user
    ``uid``, as a sentence naming it and the fix, or ``None`` when every one is safe.
    """
    directory = os.path.dirname(os.path.realpath(path))
    while True:
        try:
            status = os.stat(directory)
        except OSError as error:
            return f"{directory}: {error.strerror}"
        mode = stat.S_IMODE(status.st_mode)
        if status.st_uid not in (0, uid):
            return (
                f"{directory} (above {path}) is owned by {user_name(status.st_uid)}, who could put"
                f" another file in its place; fix with: chown root {directory}"
            )
        if mode & 0o022 and not mode & stat.S_ISVTX:
            return (
                f"{directory} (above {path}) is writable by group or others (mode {mode:04o}),"
                f" who could put another file in its place; fix with: chmod go-w {directory}"
            )
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent
