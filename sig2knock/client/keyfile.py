"""
The client's key files: a user's private X25519 key, kept like an ssh private key (mode 0600 in a
0700 directory, refused when group or others can read it; on Windows, see
``sig2knock.client.portable.read_private``).

Two kinds, both PKCS#8 PEM after one comment line that says whose key it is:

- a key made by ``sig2knockc --keygen`` (``# sig2knock key of NAME``), for any server that
  enrolled its public half; it may be encrypted with a passphrase;
- a password user's key saved by ``--save-key`` (``# sig2knock key of NAME for SERVER``), the key
  derived from the password for that one server, so later knocks skip the password and scrypt.
  It is worth as much as the password at that server, and nothing at any other.

Twisted-free, for the client.
"""

import os
from typing import Callable, NamedTuple, Optional

from sig2knock.client.portable import PrivateFileError, config_home, read_private, write_private
from sig2knock.protocol import keys
from sig2knock.protocol.wire import UserKey

_HEADER = "# sig2knock key of "
_FOR = " for "


class KeyFileError(Exception):
    """
    The key file cannot be read or written; the message says why and how to fix it.
    """


class KeyFile(NamedTuple):
    """
    A key file's text: whose key it is, the server it is bound to (``None``: any), the PEM.
    """

    user: str
    server: Optional[bytes]
    pem: str

    @property
    def encrypted(self) -> bool:
        """
        Whether a passphrase is needed to read the key.
        """
        return keys.is_encrypted(self.pem)


def default_key_path(user: str, server: Optional[bytes] = None) -> str:
    """
    Where ``user``'s key is kept by default, in the client's configuration folder
    (``~/.config/sig2knock``, ``%APPDATA%\\sig2knock``): ``USER.key`` for a key of their own,
    ``USER@SERVER.key`` for a password user's key saved for the server ``server``.
    """
    if server is None:
        return os.path.join(config_home(), f"{user}.key")
    short = keys.fingerprint(server)[len("SHA256:"):].replace("/", "_").replace("+", "-")
    return os.path.join(config_home(), f"{user}@{short}.key")


def _quiet(line: str) -> None:
    """
    The default for warnings: say nothing.
    """


def read_key_file(path: str, warn: Callable[[str], None] = _quiet) -> Optional[KeyFile]:
    """
    The key file at ``path``; ``None`` when there is no such file. Raises ``KeyFileError`` for a
    file that is open to others or broken.
    """
    try:
        text = read_private(path, warn)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read it: {error.strerror or error}") from None
    except PrivateFileError as error:
        raise KeyFileError(str(error)) from None
    first, _, pem = text.partition("\n")
    if not first.startswith(_HEADER):
        raise KeyFileError(f"{path}: not a sig2knock key file (make one with sig2knockc --keygen)")
    owner, _, server_text = first[len(_HEADER):].strip().partition(_FOR)
    server = None
    if server_text:
        try:
            server = keys.parse_public_key(server_text)
        except keys.KeyFormatError as error:
            raise KeyFileError(f"{path}: {error}") from None
    return KeyFile(owner, server, pem)


def load_key(
    path: str,
    user: str,
    server: bytes,
    passphrase: Callable[[str], str],
    warn: Callable[[str], None] = _quiet,
) -> Optional[UserKey]:
    """
    ``user``'s key from the key file at ``path`` for the server ``server``; ``None`` when there
    is no such file. ``passphrase(path)`` is asked for an encrypted key. Raises ``KeyFileError``
    for a file that is open to others, broken, or holds another user's key or another
    server's.
    """
    found = read_key_file(path, warn)
    if found is None:
        return None
    if found.user != user:
        raise KeyFileError(f"{path}: holds no key of user {user}, but of {found.user}")
    if found.server is not None and found.server != server:
        raise KeyFileError(
            f"{path}: the key of {user} at another server ({keys.fingerprint(found.server)})"
        )
    try:
        private = keys.import_private(
            found.pem, passphrase(path) if found.encrypted else None
        )
    except keys.KeyFormatError as error:
        raise KeyFileError(f"{path}: {error}") from None
    return UserKey(user, private)


def save_key(
    path: str, key: UserKey, server: Optional[bytes], passphrase: Optional[str] = None
) -> None:
    """
    Write ``key`` (bound to ``server``, or to none for a key of the user's own) to ``path``
    atomically, mode 0600, creating its directory mode 0700; encrypted with ``passphrase`` when
    one is given.
    """
    header = _HEADER + key.name
    if server is not None:
        header += _FOR + keys.format_public_key(server)
    text = header + "\n" + keys.export_private(key.private, passphrase)
    try:
        write_private(path, text)
    except OSError as error:
        raise KeyFileError(f"{path}: cannot save the key: {error.strerror or error}") from None
