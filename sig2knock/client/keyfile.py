"""
The client's key file: the user's derived key, saved once (``sig2knockc --save-key``) so later
knocks skip the password and scrypt (about 0.1 s at the default cost, on every login).

The file is one key line (``NAME:scrypt:PARAMS:SALT:KEY``, ``sig2knock.protocol.keyline``), kept
like an ssh private key: mode 0600 in a 0700 directory, refused when group or others can read it (on
Windows, see ``sig2knock.client.portable.read_private``). It is worth exactly as much as the
password to an attacker of this service (not of other services: the key is not the password).
Twisted-free, for the client.
"""

import os
from typing import Callable, Optional

from sig2knock.client.portable import PrivateFileError, config_home, read_private, write_private
from sig2knock.protocol.kdf import KdfParams
from sig2knock.protocol.keyline import KeyLineError, format_key_line, parse_key_line
from sig2knock.protocol.wire import UserKey


class KeyFileError(Exception):
    """
    The key file cannot be read or written; the message says why and how to fix it.
    """


def default_key_path(user: str) -> str:
    """
    Where ``user``'s key is kept by default: ``USER.key`` in the client's configuration folder
    (``sig2knock.client.portable.config_home``: ``~/.config/sig2knock``, ``%APPDATA%\\sig2knock``).
    """
    return os.path.join(config_home(), f"{user}.key")


def _quiet(line: str) -> None:
    """
    The default for warnings: say nothing.
    """


def load_key(path: str, user: str, warn: Callable[[str], None] = _quiet) -> Optional[UserKey]:
    """
    ``user``'s key from the key file at ``path``; ``None`` when there is no such file. Raises
    ``KeyFileError`` for a file that is open to others, broken, or holds another user.
    """
    try:
        text = read_private(path, warn)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read it: {error.strerror or error}") from None
    except PrivateFileError as error:
        raise KeyFileError(str(error)) from None
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line and not line.startswith("#")]
    if len(lines) != 1:
        raise KeyFileError(f"{path}: a key file holds one key line, not {len(lines)}")
    try:
        key, _ = parse_key_line(lines[0])
    except KeyLineError as error:
        raise KeyFileError(f"{path}: {error}") from None
    if key.name != user:
        raise KeyFileError(f"{path}: holds no key of user {user}")
    return key


def save_key(path: str, key: UserKey, params: KdfParams) -> None:
    """
    Write ``key`` (derived with ``params``) to ``path`` atomically, mode 0600, creating its
    directory mode 0700.
    """
    try:
        write_private(path, format_key_line(key.name, key.key, params) + "\n")
    except OSError as error:
        raise KeyFileError(f"{path}: cannot save the key: {error.strerror or error}") from None
