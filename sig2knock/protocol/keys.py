"""
X25519 keys as sig2knock writes them: the server's identity and the users' key pairs.

A public key is written as the base64 of its 32 raw bytes (44 characters, ``KEY`` in the users
file, ``--server-key``, ``--public-key``); a human compares the short fingerprint instead
(``SHA256:`` and the first 16 bytes of its SHA-256 in unpadded base64, like ssh's). A private key
is kept as PKCS#8 PEM, encrypted with a passphrase when one is given (scrypt and AES-256).

This module is imported by the client: it must not import Twisted.
"""

import base64
import binascii
from typing import NamedTuple, Optional

from sig2knock.protocol.cipher import SHA256

PUBLIC_KEY_SIZE = 32
CURVE = "Curve25519"
# pycryptodome's PKCS#8 protection for a private key file with a passphrase.
PROTECTION = "scryptAndAES256-CBC"
# The DER of an unencrypted X25519 PKCS#8 key (RFC 8410 §7) is this fixed prefix and the 32-byte
# secret; a key file in exactly that form is read without pycryptodome's ASN.1, PKCS#8 and PEM
# modules, whose import is ~6 ms of every login with a saved key (docs/BENCHMARKS.md).
_PLAIN_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b656e04220420")
_PLAIN_PEM_BEGIN = "-----BEGIN PRIVATE KEY-----"
_PLAIN_PEM_END = "-----END PRIVATE KEY-----"


class KeyFormatError(ValueError):
    """
    A key cannot be read; the message says why and never contains key material.
    """


def public_bytes(key: object) -> bytes:
    """
    The 32 raw bytes of an X25519 key's public half (``key`` a pycryptodome ``EccKey``).
    """
    raw = key.public_key().export_key(format="raw")  # type: ignore[attr-defined]
    assert isinstance(raw, bytes)
    return raw


def format_public_key(raw: bytes) -> str:
    """
    The text form of the public key ``raw``: base64 of its 32 bytes.
    """
    if len(raw) != PUBLIC_KEY_SIZE:
        raise KeyFormatError(f"an X25519 public key has {PUBLIC_KEY_SIZE} bytes, not {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str) -> bytes:
    """
    The 32 raw bytes of a public key in text form; raises ``KeyFormatError``.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("a public key is 44 characters of base64") from None
    if len(raw) != PUBLIC_KEY_SIZE:
        raise KeyFormatError(f"a public key is {PUBLIC_KEY_SIZE} bytes, not {len(raw)}")
    return raw


def fingerprint(raw: bytes) -> str:
    """
    A short form of the public key ``raw`` for people to compare: ``SHA256:`` and 22 characters.
    """
    digest = SHA256.new(b"sig2knock/v2 fingerprint\x00" + raw).digest()[:16]
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def import_public_key(raw: bytes) -> object:
    """
    The ``EccKey`` of the X25519 public key ``raw``; raises ``KeyFormatError`` for a key that is not
    one (all-zero and other small-order points included).
    """
    from Crypto.Protocol.DH import import_x25519_public_key

    try:
        return import_x25519_public_key(raw)
    except ValueError:
        raise KeyFormatError("not a usable X25519 public key") from None


def private_from_seed(seed: bytes) -> object:
    """
    The X25519 private key whose 32-byte secret is ``seed`` (a password-derived key).
    """
    from Crypto.Protocol.DH import import_x25519_private_key

    return import_x25519_private_key(seed)


def generate() -> object:
    """
    A new random X25519 key pair (from the OS CSPRNG).
    """
    from Crypto.PublicKey import ECC

    return ECC.generate(curve=CURVE)


def export_private(key: object, passphrase: Optional[str] = None) -> str:
    """
    ``key`` as PKCS#8 PEM, encrypted with ``passphrase`` when one is given.
    """
    if passphrase:
        text = key.export_key(  # type: ignore[attr-defined]
            format="PEM", passphrase=passphrase, protection=PROTECTION
        )
    else:
        text = key.export_key(format="PEM")  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text if text.endswith("\n") else text + "\n"


def is_encrypted(text: str) -> bool:
    """
    Whether the PEM ``text`` is a private key protected by a passphrase.
    """
    return "BEGIN ENCRYPTED PRIVATE KEY" in text


def import_private(text: str, passphrase: Optional[str] = None) -> object:
    """
    The X25519 private key in the PEM ``text``; raises ``KeyFormatError`` for another kind of key, a
    broken file or a wrong passphrase.
    """
    secret = _plain_secret(text)
    if secret is not None:
        return private_from_seed(secret)
    from Crypto.PublicKey import ECC

    try:
        key = ECC.import_key(text, passphrase=passphrase)
    except (ValueError, IndexError, TypeError):
        if is_encrypted(text):
            raise KeyFormatError("wrong passphrase, or not a private key") from None
        raise KeyFormatError("not a PEM private key") from None
    if getattr(key, "curve", None) != CURVE or not key.has_private():
        raise KeyFormatError("not an X25519 private key")
    return key


def _plain_secret(text: str) -> Optional[bytes]:
    """
    The 32-byte secret of ``text`` when it is one unencrypted X25519 PKCS#8 PEM block in the
    fixed form above, else ``None`` (any other form goes through pycryptodome's full parser).
    """
    lines = text.strip().splitlines()
    if len(lines) < 3 or lines[0] != _PLAIN_PEM_BEGIN or lines[-1] != _PLAIN_PEM_END:
        return None
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(der) != len(_PLAIN_PKCS8_PREFIX) + 32 or not der.startswith(_PLAIN_PKCS8_PREFIX):
        return None
    return der[len(_PLAIN_PKCS8_PREFIX):]


class Identity(NamedTuple):
    """
    A server's identity as a client knows it: its public key (raw bytes) and fingerprint.
    """

    public: bytes

    @property
    def fingerprint(self) -> str:
        """
        The short form people compare.
        """
        return fingerprint(self.public)

    def __str__(self) -> str:
        return format_public_key(self.public)
