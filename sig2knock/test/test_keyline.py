"""
Tests for ``sig2knock.protocol.keyline``: the users file's lines, ``NAME:scrypt:PARAMS:KEY`` for a
password user and ``NAME:x25519:KEY`` for a user with their own key pair.
"""

import base64

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.protocol import keys
from sig2knock.protocol.kdf import KdfError, KdfParams
from sig2knock.protocol.keyline import KeyLine, KeyLineError, format_key_line, parse_key_line
from sig2knock.test.common import CHEAP_KDF


PUBLIC = keys.public_bytes(keys.private_from_seed(b"k" * 32))
KEY_TEXT = base64.b64encode(PUBLIC).decode()


class KeyLineTests(SynchronousTestCase):
    """
    A line holds the name, the scrypt parameters of a password user, and the public key.
    """

    def test_passwordUser(self) -> None:
        line = format_key_line("alice", PUBLIC, CHEAP_KDF)
        self.assertEqual(line, f"alice:scrypt:n=1024,r=1,p=1:{KEY_TEXT}")
        parsed = parse_key_line(line)
        self.assertEqual(parsed, KeyLine("alice", PUBLIC, CHEAP_KDF))
        self.assertEqual(parsed.kind, "scrypt")

    def test_keyUser(self) -> None:
        line = format_key_line("bob", PUBLIC, None)
        self.assertEqual(line, f"bob:x25519:{KEY_TEXT}")
        self.assertEqual(parse_key_line(line), KeyLine("bob", PUBLIC, None))
        self.assertEqual(parse_key_line(line).kind, "x25519")

    def test_badLines(self) -> None:
        short = base64.b64encode(PUBLIC[:16]).decode()
        for line, message in (
            ("alice:scrypt:n=1024", "expected NAME:scrypt:n=N,r=R,p=P:KEY or NAME:x25519:KEY"),
            (f"al ice:x25519:{KEY_TEXT}", "is not valid"),
            (f"alice:scrypt:n=1000,r=1,p=1:{KEY_TEXT}", "power of two"),
            ("alice:x25519:!!", "user alice: a public key is 44 characters of base64"),
            (f"alice:x25519:{short}", "user alice: a public key is 32 bytes"),
            (f"alice:rsa:{KEY_TEXT}", "expected NAME:scrypt"),
            (
                f"alice:scrypt:n=1024,r=1,p=1:c2FsdA==:{KEY_TEXT}",
                "a line of sig2knock's protocol version 1",
            ),
        ):
            with self.subTest(line=line):
                error = self.assertRaises(KeyLineError, parse_key_line, line)
                self.assertIn(message, str(error))

    def test_formatChecksName(self) -> None:
        self.assertRaises(KdfError, format_key_line, "al:ice", PUBLIC, KdfParams())
