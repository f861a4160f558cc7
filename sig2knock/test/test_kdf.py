"""
Tests for sig2knock.protocol.kdf: scrypt keys the client can derive offline.
"""

import hashlib

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.protocol import kdf
from sig2knock.protocol.kdf import KdfError, KdfParams, derive_key, salt_for
from sig2knock.test.common import CHEAP_KDF


class KdfParamsTests(SynchronousTestCase):
    """
    Parameters round-trip through their users-file text and refuse dangerous values.
    """

    def test_defaults(self) -> None:
        self.assertEqual(KdfParams().format(), "scrypt:n=32768,r=8,p=1")

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
            derive_key("correct horse battery staple", "alice", CHEAP_KDF).hex(),
            "d28c0b17b49c16160fd640aee457adc15339385d47bdc28e0c6f4b70be2868ca",
        )

    def test_isRealScrypt(self) -> None:
        """
        The key equals OpenSSL's scrypt (hashlib) over the password and the user's salt.
        """
        for params in (CHEAP_KDF, KdfParams(n=4096, r=8, p=2)):
            expected = hashlib.scrypt(
                "pässwörd one".encode("utf-8"),
                salt=b"sig2knock/v1/user:bob",
                n=params.n,
                r=params.r,
                p=params.p,
                dklen=32,
            )
            self.assertEqual(derive_key("pässwörd one", "bob", params), expected)

    def test_dependsOnEverything(self) -> None:
        base = derive_key("password one", "alice", CHEAP_KDF)
        self.assertEqual(len(base), 32)
        self.assertNotEqual(base, derive_key("password two", "alice", CHEAP_KDF))
        self.assertNotEqual(base, derive_key("password one", "bob", CHEAP_KDF))
        self.assertNotEqual(base, derive_key("password one", "alice", KdfParams(n=2048, r=1, p=1)))

    def test_saltFromUserName(self) -> None:
        self.assertEqual(salt_for("alice"), b"sig2knock/v1/user:alice")

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
