"""
The server's identity: an X25519 key pair, made once (``sig2knockd --init``, or at the first
start) and kept in ``STATE_DIR/identity.key`` (PKCS#8 PEM, mode 0600, owned by the daemon's
user). Clients seal P1 to its public half, which ``sig2knockd --show-identity`` prints; password
users' keys are derived for it, so they are worth nothing at another server.

Losing the file (or a new one) makes every password user's line and every client's saved key
useless: the daemon refuses to start on a missing identity when its state directory has been
used before, rather than silently making a new one.
"""

import os
from typing import NamedTuple, Optional, Tuple

from sig2knock.daemon.text import one_line
from sig2knock.protocol import files, keys

FILE_NAME = "identity.key"


class IdentityError(Exception):
    """
    The identity cannot be read or made; ``str()`` is one line naming the file.
    """

    def __str__(self) -> str:
        return one_line(super().__str__())


class ServerIdentity(NamedTuple):
    """
    The server's key pair (``private``, an ``EccKey``), its public key's bytes and where it is
    kept.
    """

    private: object
    public: bytes
    path: str

    @property
    def fingerprint(self) -> str:
        """
        The short form of the public key that people compare.
        """
        return keys.fingerprint(self.public)

    def __repr__(self) -> str:
        return f"ServerIdentity(public={keys.format_public_key(self.public)}, path={self.path!r})"


def identity_path(state_dir: str) -> str:
    """
    Where the identity of a daemon with ``STATE_DIR`` ``state_dir`` is kept.
    """
    return os.path.join(state_dir, FILE_NAME)


def create_identity(path: str, owner: Optional[Tuple[int, int]] = None) -> ServerIdentity:
    """
    Make a new identity at ``path`` (which must not exist yet), given to ``owner`` (uid, gid)
    when root makes it for the daemon's user; raises ``IdentityError``.
    """
    private = keys.generate()
    text = keys.export_private(private).encode("ascii")
    try:
        # O_EXCL: never replace an identity that exists.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise IdentityError(f"{path}: an identity exists already; it is kept") from None
    except OSError as error:
        raise IdentityError(f"{path}: cannot create it: {error.strerror}") from None
    try:
        if owner is not None:
            os.fchown(descriptor, *owner)  # the file opened, never a name swapped in since
        with os.fdopen(descriptor, "wb") as new:
            new.write(text)
            new.flush()
            os.fsync(new.fileno())
    except OSError as error:
        os.unlink(path)
        raise IdentityError(f"{path}: cannot write it: {error.strerror}") from None
    return ServerIdentity(private, keys.public_bytes(private), path)


def _unreadable(path: str, error: OSError) -> IdentityError:
    if isinstance(error, FileNotFoundError):
        return IdentityError(f"{path}: no server identity; make one with: sig2knockd --init")
    return IdentityError(f"{path}: cannot read it: {error.strerror}")


def load_identity(path: str) -> ServerIdentity:
    """
    Read the identity at ``path``, after checking that only its owner (the daemon's user) can
    read it; raises ``IdentityError`` (``FileNotFoundError``'s message says how to make one).
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise _unreadable(path, error) from None
    with os.fdopen(descriptor, "rb") as source:
        found = files.exposure(os.fstat(source.fileno()), os.geteuid())
        if found is not None:
            if found.kind == files.OPEN_MODE:
                raise IdentityError(
                    f"{path}: the server's private key is open to group or others (mode"
                    f" {found.mode:04o}); fix with: chmod 600 {path}"
                )
            if found.kind == files.OTHER_OWNER:
                raise IdentityError(
                    f"{path}: owned by uid {found.owner}, not by the daemon's user"
                    f" (uid {os.geteuid()}); fix with chown"
                )
            raise IdentityError(f"{path}: not a regular file")
        text = source.read().decode("ascii", "replace")
    try:
        private = keys.import_private(text)
    except keys.KeyFormatError as error:
        raise IdentityError(f"{path}: {error}") from None
    return ServerIdentity(private, keys.public_bytes(private), path)


def ensure_identity(state_dir: str, first_start: bool) -> ServerIdentity:
    """
    The identity of the daemon with ``STATE_DIR`` ``state_dir``, made now on a first start (an
    empty or new state directory); raises ``IdentityError``.
    """
    path = identity_path(state_dir)
    if first_start and not os.path.lexists(path):
        return create_identity(path)
    return load_identity(path)


def read_public(path: str) -> bytes:
    """
    The public key of the identity at ``path``, for the commands that only show it or derive a
    password user's key for it (``--show-identity``, ``sig2knockd_useradd``, run by root or the
    daemon's user); raises ``IdentityError``. Unlike ``load_identity``, it does not check who
    owns the file: nothing secret leaves this function.
    """
    try:
        with open(path, "rb") as source:
            text = source.read().decode("ascii", "replace")
    except OSError as error:
        raise _unreadable(path, error) from None
    try:
        return keys.public_bytes(keys.import_private(text))
    except keys.KeyFormatError as error:
        raise IdentityError(f"{path}: {error}") from None
