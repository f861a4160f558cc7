"""
Password users' keys: scrypt over the password gives the secret of the user's X25519 key pair.

The client must derive its key without asking the server anything, so the salt is a function of the
server's identity (its public key) and the user name (``salt_for``): the same name and password give
unrelated keys at two servers. The server keeps only the public half. The parameters travel in the
users file line (``KdfParams.format``) and the client takes the same text in ``--kdf``, so they can
be raised for new users while old lines keep working.

This module is imported by the client: it must not import Twisted.
"""

import re
from typing import Any, NamedTuple

KEY_SIZE = 32
MIN_PASSWORD_LENGTH = 8

# 2**15 * 8 * 128 bytes = 32 MiB of memory and ~90 ms on one core here; see README "Users and keys".
DEFAULT_N = 2 ** 15
DEFAULT_R = 8
DEFAULT_P = 1

# Bounds that keep a hostile or mistyped users line from making the daemon or client allocate
# gigabytes: N * r * 128 bytes must stay under 1 GiB.
_MAX_MEMORY = 1 << 30
_PARAMS_RE = re.compile(r"scrypt:n=([0-9]{1,10}),r=([0-9]{1,3}),p=([0-9]{1,3})")
USER_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}")


class KdfError(ValueError):
    """
    A KDF parameter string, a user name or a password is not acceptable.

    The message never contains the password.
    """


class _KdfParamsFields(NamedTuple):
    n: int
    r: int
    p: int


class KdfParams(_KdfParamsFields):
    """
    scrypt cost parameters: ``n`` (CPU/memory cost, a power of two), ``r`` (block size) and ``p``
    (parallelism).
    """

    __slots__ = ()

    def __new__(cls, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> "KdfParams":
        if n < 2 ** 10 or n & (n - 1):
            raise KdfError(f"scrypt n must be a power of two of at least 1024, not {n}")
        if not 1 <= r <= 64 or not 1 <= p <= 16:
            raise KdfError(f"scrypt r must be 1-64 and p 1-16, not r={r} p={p}")
        if n * r * 128 > _MAX_MEMORY:
            raise KdfError(f"scrypt n={n} r={r} would need more than 1 GiB of memory")
        return super().__new__(cls, n, r, p)

    @classmethod
    def parse(cls, text: str) -> "KdfParams":
        """
        Read ``scrypt:n=32768,r=8,p=1`` (the form stored in user.txt and taken by ``--kdf``).
        """
        match = _PARAMS_RE.fullmatch(text.strip())
        if match is None:
            raise KdfError(f"KDF parameters must look like 'scrypt:n=32768,r=8,p=1', not {text!r}")
        n, r, p = (int(group) for group in match.groups())
        return cls(n=n, r=r, p=p)

    @property
    def weak(self) -> bool:
        """
        Whether these cost less memory (``n * r``) than the default: the memory is what slows a
        thief guessing passwords from a stolen users file on GPUs.
        """
        return self.n * self.r < DEFAULT_N * DEFAULT_R

    def format(self) -> str:
        """
        The text form read by ``parse``.
        """
        return f"scrypt:n={self.n},r={self.r},p={self.p}"


def check_user_name(user: str) -> str:
    """
    Return ``user`` if it is a valid user name (letters, digits, ``._@-``, at most 64 characters,
    not starting with punctuation), otherwise raise ``KdfError``.
    """
    if not isinstance(user, str) or not USER_NAME_RE.fullmatch(user):
        raise KdfError(
            f"user name {user!r} is not valid: use 1-64 letters, digits and . _ @ -"
            " (not starting with . @ or -)"
        )
    return user


def check_password(password: str) -> str:
    """
    Return ``password`` if it is long enough, otherwise raise ``KdfError`` (whose message does
    not quote the password).
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise KdfError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    return password


def password_line(stream: Any) -> str:
    """
    The password given on one line of ``stream`` (``--password-stdin``), without its line end
    (``\\n`` or ``\\r\\n``).
    """
    return stream.readline().rstrip("\r\n")


def salt_for(user: str, server_public: bytes) -> bytes:
    """
    The salt of ``user``'s key at the server whose public key is ``server_public``: fixed by the
    two, so a client can derive the key offline, and different at every server.
    """
    if len(server_public) != 32:
        raise KdfError("a server's public key has 32 bytes")
    return b"sig2knock/v2 user\x00" + server_public + check_user_name(user).encode("utf-8")


def derive_key(
    password: str, user: str, server_public: bytes, params: KdfParams = KdfParams()
) -> bytes:
    """
    Derive the 32-byte secret of ``user``'s key pair at the server ``server_public`` from
    ``password`` with scrypt (``sig2knock.protocol.keys.private_from_seed`` makes the pair).
    """
    # Imported here: a client with a saved key (sig2knockc --save-key) never pays for it.
    from Crypto.Protocol.KDF import scrypt

    key = scrypt(
        password.encode("utf-8"),
        salt_for(user, server_public),
        KEY_SIZE,
        N=params.n,
        r=params.r,
        p=params.p,
    )
    assert isinstance(key, bytes)
    return key
