"""
The key line, ``NAME:scrypt:n=N,r=R,p=P:SALT:KEY``: one user's key and how it was derived.

The daemon's users file is made of such lines (``sig2knock.daemon.users``) and the client's saved
key file is one (``sig2knock.client.keyfile``). ``KDF:PARAMS`` is the scrypt cost the key was
derived with (``sig2knock.protocol.kdf.KdfParams``); ``SALT`` and ``KEY`` are base64.

This module is imported by the client: it must not import Twisted or a POSIX-only module.
"""

import base64
import binascii
from typing import NamedTuple

from sig2knock.protocol.kdf import KEY_SIZE, KdfError, KdfParams, check_user_name, salt_for
from sig2knock.protocol.wire import UserKey


class KeyLineError(ValueError):
    """
    A line is not a valid key line; the message says why (without saying where: the caller
    knows the file and line) and never contains key material.
    """


class KeyLine(NamedTuple):
    """
    A parsed key line: the user's key and the scrypt parameters it was derived with.
    """

    user: UserKey
    params: KdfParams


def format_key_line(user: str, key: bytes, params: KdfParams) -> str:
    """
    The key line (without a newline) of ``user`` whose key, derived with ``params``, is ``key``.
    """
    return ":".join(
        [
            check_user_name(user),
            params.format(),
            base64.b64encode(salt_for(user)).decode("ascii"),
            base64.b64encode(key).decode("ascii"),
        ]
    )


def parse_key_line(text: str) -> KeyLine:
    """
    Read one key line (surrounding white space already stripped); raise ``KeyLineError``.
    """
    fields = text.split(":")
    if len(fields) != 5:
        raise KeyLineError("expected NAME:scrypt:n=N,r=R,p=P:SALT:KEY")
    name, kdf_name, kdf_params, salt_text, key_text = fields
    try:
        check_user_name(name)
        params = KdfParams.parse(f"{kdf_name}:{kdf_params}")
    except KdfError as error:
        raise KeyLineError(str(error)) from None
    try:
        salt = base64.b64decode(salt_text, validate=True)
        key = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyLineError(f"user {name}: salt or key is not valid base64") from None
    if salt != salt_for(name):
        raise KeyLineError(
            f"user {name}: the salt does not belong to this user name"
            " (was the line renamed?); make a new line with sig2knockd_useradd"
        )
    if len(key) != KEY_SIZE:
        raise KeyLineError(f"user {name}: the key must be {KEY_SIZE} bytes")
    return KeyLine(UserKey(name, key), params)
