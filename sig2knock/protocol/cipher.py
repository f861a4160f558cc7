"""
pycryptodome's AES, SHA-256 and random bytes, loaded without a needless child process.

pycryptodome's ctypes loader calls ``platform.architecture()`` once per process, before it loads
its first compiled module, only to learn whether the platform is Windows. On POSIX that call runs
``file`` on the Python executable: 3-4 ms of every ``sig2knockc`` start. This module gives the
loader the answer first (an executable format that is not Windows) when, and only when, the loader
is the ctypes one and has not asked yet; with any other pycryptodome the guard does nothing and the
library behaves as it always did. ``sig2knock.test.test_cipher`` checks that no process is started.

This module is imported by the client: it must not import Twisted.
"""

import os
import sys

import Crypto.Util._raw_api as _loader

if (
    os.name == "posix"
    and getattr(_loader, "backend", None) == "ctypes"
    and getattr(_loader, "cached_architecture", None) == []
):
    # (bits, linkage): the loader only checks whether linkage starts with "Win".
    _loader.cached_architecture[:] = ["64bit" if sys.maxsize > 2 ** 32 else "32bit", "ELF"]

from Crypto.Cipher import AES  # noqa: E402 - after the loader is told the answer
from Crypto.Hash import SHA256  # noqa: E402
from Crypto.Random import get_random_bytes  # noqa: E402

__all__ = ["AES", "SHA256", "get_random_bytes", "load_gcm"]


def load_gcm() -> None:
    """
    Encrypt and decrypt one throw-away block with AES-GCM, so that pycryptodome loads its GCM
    code now: it does so on first use, which would otherwise add several milliseconds to the
    daemon's first knock.
    """
    key, nonce = get_random_bytes(32), get_random_bytes(12)
    ciphertext, tag = AES.new(key, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(b"warm-up")
    AES.new(key, AES.MODE_GCM, nonce=nonce).decrypt_and_verify(ciphertext, tag)
