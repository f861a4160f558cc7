"""
Tests for sig2knock.protocol.kdf: scrypt keys the client can derive offline.
"""

import hashlib

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.protocol import kdf
from sig2knock.protocol.kdf import KdfError, KdfParams, derive_key, salt_for
from sig2knock.test.common import CHEAP_KDF


# Two servers' public keys (any 32 bytes name a server for the salt).
SERVER_A = bytes(range(32))
SERVER_B = bytes(range(1, 33))


class KdfParamsTests(SynchronousTestCase):
    """
    Parameters round-trip through their users-file text and refuse dangerous values.
    """

    def test_defaults(self) -> None:
        self.assertEqual(KdfParams().format(), "scrypt:n=32768,r=8,p=1")

    def test_weakBelowTheDefaultMemory(self) -> None:
        for params in (CHEAP_KDF, KdfParams(n=2 ** 14, r=8, p=4), KdfParams(n=2 ** 15, r=4)):
            self.assertTrue(params.weak, params)
        for params in (KdfParams(), KdfParams(n=2 ** 14, r=16), KdfParams(n=2 ** 16, r=8)):
            self.assertFalse(params.weak, params)

    def test_roundTrip(self) -> None:
        for params in (KdfParams(), CHEAP_KDF, KdfParams(n=2 ** 20, r=8, p=1)):
            self.assertEqual(KdfParams.parse(params.format()), params)

    def test_refused(self) -> None:
        for text in (
            "scrypt:n=1000,r=8,p=1",  # not a power of two
            "scrypt:n=512,r=8,p=1",  # too cheap
            "scrypt:n=16777216,r=8,p=1",  # 16 GiB
            "scrypt:n=32768,r=0,p=1",
            "scrypt:n=32768,r=8,p=99",
            "bcrypt:n=32768,r=8,p=1",
            "scrypt:r=8,n=32768,p=1",
            "",
        ):
            with self.subTest(text=text):
                self.assertRaises(KdfError, KdfParams.parse, text)


class KeyTests(SynchronousTestCase):
    """
    The key depends on password, user and parameters, and is stable across versions.
    """

    def test_stableKey(self) -> None:
        """
        A pinned vector: changing the salt scheme or the KDF call would lock every user out.
        """
        self.assertEqual(
            derive_key("correct horse battery staple", "alice", SERVER_A, CHEAP_KDF).hex(),
            "405a5b2647140d55b61f04a713d902fdf7f3af658e5357778c734040334605f7",
        )

    def test_isRealScrypt(self) -> None:
        """
        The key equals OpenSSL's scrypt (hashlib) over the password and the salt of the user at
        the server.
        """
        for params in (CHEAP_KDF, KdfParams(n=4096, r=8, p=2)):
            expected = hashlib.scrypt(
                "pässwörd one".encode("utf-8"),
                salt=b"sig2knock/v2 user\x00" + SERVER_A + b"bob",
                n=params.n,
                r=params.r,
                p=params.p,
                dklen=32,
            )
            self.assertEqual(derive_key("pässwörd one", "bob", SERVER_A, params), expected)

    def test_dependsOnEverything(self) -> None:
        """
        The key changes with the password, the user, the cost and the server: the same name
        and password give unrelated keys at two servers.
        """
        base = derive_key("password one", "alice", SERVER_A, CHEAP_KDF)
        self.assertEqual(len(base), 32)
        self.assertNotEqual(base, derive_key("password two", "alice", SERVER_A, CHEAP_KDF))
        self.assertNotEqual(base, derive_key("password one", "bob", SERVER_A, CHEAP_KDF))
        self.assertNotEqual(
            base, derive_key("password one", "alice", SERVER_A, KdfParams(n=2048, r=1, p=1))
        )
        self.assertNotEqual(base, derive_key("password one", "alice", SERVER_B, CHEAP_KDF))

    def test_saltFromServerAndUserName(self) -> None:
        self.assertEqual(
            salt_for("alice", SERVER_A), b"sig2knock/v2 user\x00" + SERVER_A + b"alice"
        )
        self.assertRaises(KdfError, salt_for, "alice", b"short")

    def test_userNames(self) -> None:
        for good in ("alice", "a", "bob.smith", "ops_1", "me@example.org", "x" * 64):
            self.assertEqual(kdf.check_user_name(good), good)
        for bad in ("", "-rf", ".hidden", "a:b", "a b", "x" * 65, "ünï", "a\nb"):
            with self.subTest(name=bad):
                self.assertRaises(KdfError, kdf.check_user_name, bad)

    def test_shortPasswordRefusedWithoutQuotingIt(self) -> None:
        error = self.assertRaises(KdfError, kdf.check_password, "hunter2")
        self.assertNotIn("hunter2", str(error))
        self.assertEqual(kdf.check_password("hunter22"), "hunter22")


class KdfParamsValueTests(SynchronousTestCase):
    """
    ``KdfParams`` checks its values however it is built, and defaults to the documented cost.
    """

    def test_checkedOnConstruction(self) -> None:
        self.assertRaises(KdfError, KdfParams, n=1000)
        self.assertRaises(KdfError, KdfParams, 2 ** 20, 64, 1)
        self.assertRaises(KdfError, KdfParams, r=0)
        self.assertEqual(KdfParams(), KdfParams(2 ** 15, 8, 1))
        self.assertEqual(KdfParams().format(), "scrypt:n=32768,r=8,p=1")


class PasswordLineTests(SynchronousTestCase):
    """
    ``--password-stdin`` takes one line, without its line end, whatever the platform wrote.
    """

    def test_lineEnds(self) -> None:
        import io

        from sig2knock.protocol.kdf import password_line

        for text in ("secret words\n", "secret words\r\n", "secret words"):
            with self.subTest(text=text):
                self.assertEqual(password_line(io.StringIO(text + "next line\n")
                                               if text.endswith("\n") else io.StringIO(text)),
                                 "secret words")
