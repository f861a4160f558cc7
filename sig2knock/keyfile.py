"""
The client's key file: the user's derived key, saved once (``sig2knockc --save-key``) so later
knocks skip the password and scrypt (about 0.1 s at the default cost, on every login).

The file is one users-file line (``NAME:scrypt:PARAMS:SALT:KEY``), kept like an ssh private key:
mode 0600 in a 0700 directory, refused when group or others can read it. It is worth exactly as
much as the password to an attacker of this service (not of other services: the key is not the
password). Twisted-free, for the client.
"""

import os
from typing import Optional

from sig2knock.kdf import KdfParams
from sig2knock.users import UsersError, format_key_line, load_users
from sig2knock.wire import UserKey


class KeyFileError(Exception):
    """
    The key file cannot be read or written; the message says why and how to fix it.
    """


def default_key_path(user: str) -> str:
    """
    Where ``user``'s key is kept by default: ``$XDG_CONFIG_HOME/sig2knock/USER.key``, else
    ``~/.config/sig2knock/USER.key``.
    """
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "sig2knock", f"{user}.key")


def load_key(path: str, user: str) -> Optional[UserKey]:
    """
    ``user``'s key from the key file at ``path``; ``None`` when there is no such file. Raises
    ``KeyFileError`` for a file that is open to others, broken, or holds another user.
    """
    if not os.path.exists(path):
        return None
    try:
        users = load_users(path)
    except UsersError as error:
        raise KeyFileError(str(error)) from None
    entry = users.entries.get(user)
    if entry is None:
        raise KeyFileError(f"{path}: holds no key of user {user}")
    return entry.user


def save_key(path: str, key: UserKey, params: KdfParams) -> None:
    """
    Write ``key`` (derived with ``params``) to ``path`` atomically, mode 0600, creating its
    directory mode 0700.
    """
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as key_file:
            key_file.write(format_key_line(key.name, key.key, params) + "\n")
            key_file.flush()
            os.fsync(key_file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise KeyFileError(f"{path}: cannot save the key: {error.strerror}") from None
