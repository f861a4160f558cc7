"""
The users file's lines: one user's public key, and for a password user how it was derived.

- ``NAME:scrypt:n=N,r=R,p=P:KEY``: a password user; ``KEY`` is the public half of the key pair
  whose secret is scrypt over the password (``sig2knock.protocol.kdf``), at this server only.
- ``NAME:x25519:KEY``: a user with their own key pair (``sig2knockc --keygen``).

``KEY`` is the base64 of the 32-byte X25519 public key. Nothing in a line opens a door: the server
holds public keys only. A line of version 1 (``NAME:scrypt:PARAMS:SALT:KEY``, a secret key) is
refused with the way to make a new one.

This module is imported by the client: it must not import Twisted or a POSIX-only module.
"""

from typing import NamedTuple, Optional

from sig2knock.protocol.kdf import KdfError, KdfParams, check_user_name
from sig2knock.protocol.keys import KeyFormatError, format_public_key, parse_public_key

KIND_PASSWORD = "scrypt"
KIND_KEY = "x25519"


class KeyLineError(ValueError):
    """
    A line is not a valid key line; the message says why (without saying where: the caller
    knows the file and line) and never contains key material.
    """


class KeyLine(NamedTuple):
    """
    A parsed users line: the user's name and public key, and the scrypt parameters of a password
    user (``None`` for a key user).
    """

    name: str
    public: bytes
    params: Optional[KdfParams]

    @property
    def kind(self) -> str:
        """
        ``scrypt`` for a password user, ``x25519`` for a user with their own key pair.
        """
        return KIND_KEY if self.params is None else KIND_PASSWORD


def format_key_line(name: str, public: bytes, params: Optional[KdfParams]) -> str:
    """
    The users line (without a newline) of ``name`` with the public key ``public``: a password
    user's when ``params`` are given, else a key user's.
    """
    check_user_name(name)
    key = format_public_key(public)
    if params is None:
        return f"{name}:{KIND_KEY}:{key}"
    return f"{name}:{params.format()}:{key}"


def parse_key_line(text: str) -> KeyLine:
    """
    Read one users line (surrounding white space already stripped); raise ``KeyLineError``.
    """
    fields = text.split(":")
    name = fields[0]
    try:
        check_user_name(name)
    except KdfError as error:
        raise KeyLineError(str(error)) from None
    if len(fields) == 5 and fields[1] == KIND_PASSWORD:
        raise KeyLineError(
            f"user {name}: a line of sig2knock's protocol version 1 (a secret key, the same at"
            " every server); make a new one with sig2knockd_useradd"
        )
    if len(fields) == 3 and fields[1] == KIND_KEY:
        params = None
    elif len(fields) == 4 and fields[1] == KIND_PASSWORD:
        try:
            params = KdfParams.parse(f"{fields[1]}:{fields[2]}")
        except KdfError as error:
            raise KeyLineError(f"user {name}: {error}") from None
    else:
        raise KeyLineError("expected NAME:scrypt:n=N,r=R,p=P:KEY or NAME:x25519:KEY")
    try:
        public = parse_public_key(fields[-1])
    except KeyFormatError as error:
        raise KeyLineError(f"user {name}: {error}") from None
    return KeyLine(name, public, params)
