"""
Tests for ``sig2knock.protocol.keyline``: the ``NAME:scrypt:PARAMS:SALT:KEY`` line of the users file
and of the client's key file.
"""

import base64

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.protocol.kdf import KdfError, KdfParams, derive_key, salt_for
from sig2knock.protocol.keyline import KeyLine, KeyLineError, format_key_line, parse_key_line
from sig2knock.protocol.wire import UserKey
from sig2knock.test.common import CHEAP_KDF


KEY = derive_key("alice's long password", "alice", CHEAP_KDF)


class KeyLineTests(SynchronousTestCase):
    """
    A line holds the name, the scrypt parameters, the salt the name gives and the key.
    """

    def test_roundTrip(self) -> None:
        line = format_key_line("alice", KEY, CHEAP_KDF)
        name, kdf_name, kdf_params, salt, key = line.split(":")
        self.assertEqual((name, f"{kdf_name}:{kdf_params}"), ("alice", "scrypt:n=1024,r=1,p=1"))
        self.assertEqual(base64.b64decode(salt), salt_for("alice"))
        self.assertEqual(base64.b64decode(key), KEY)
        self.assertEqual(parse_key_line(line), KeyLine(UserKey("alice", KEY), CHEAP_KDF))
        self.assertNotIn(KEY.hex(), repr(parse_key_line(line)))

    def test_badLines(self) -> None:
        good = format_key_line("alice", KEY, CHEAP_KDF)
        fields = good.split(":")
        renamed = ":".join(["bob"] + fields[1:])
        short_key = ":".join(fields[:4] + [base64.b64encode(KEY[:16]).decode()])
        for line, message in (
            ("alice:scrypt:n=1024", "expected NAME:scrypt:n=N,r=R,p=P:SALT:KEY"),
            (":".join(["al ice"] + fields[1:]), "is not valid"),
            (":".join(fields[:1] + ["scrypt", "n=1000,r=1,p=1"] + fields[3:]), "power of two"),
            (":".join(fields[:3] + ["!!"] + fields[4:]), "user alice: salt or key is not valid"),
            (renamed, "user bob: the salt does not belong to this user name"),
            (short_key, "user alice: the key must be 32 bytes"),
        ):
            with self.subTest(line=line):
                error = self.assertRaises(KeyLineError, parse_key_line, line)
                self.assertIn(message, str(error))
                self.assertNotIn(fields[4], str(error), "never the key")

    def test_formatChecksName(self) -> None:
        self.assertRaises(KdfError, format_key_line, "al:ice", KEY, KdfParams())
