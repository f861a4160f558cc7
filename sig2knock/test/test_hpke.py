"""
RFC 9180's test vectors through the project's own use of HPKE (``sig2knock.protocol.wire``):
DHKEM(X25519, HKDF-SHA256) and HKDF-SHA256 in base mode (how P1 names its user) and auth mode (how
it carries the request), from RFC 9180 appendix A.1 (its AEAD is AES-128-GCM; the protocol's is
AES-256-GCM, the same library code with a longer key).
"""

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.protocol import keys, wire

PLAINTEXT = bytes.fromhex("4265617574792069732074727574682c20747275746820626561757479")
INFO = bytes.fromhex("4f6465206f6e2061204772656369616e2055726e")
AAD = (bytes.fromhex("436f756e742d30"), bytes.fromhex("436f756e742d31"))


def _aes128() -> int:
    from Crypto.Protocol import HPKE

    return HPKE.AEAD.AES128_GCM


class Rfc9180Tests(SynchronousTestCase):
    """
    The first two messages of RFC 9180 A.1.1.1 (base mode) and A.1.3.1 (auth mode) open to the
    RFC's plaintext, and one changed byte does not.
    """

    def open(self, receiver: str, enc: str, ciphertexts: tuple, sender: object = None) -> None:
        receiver_key = keys.private_from_seed(bytes.fromhex(receiver))
        context, first = wire._open(
            receiver_key, bytes.fromhex(enc), INFO, AAD[0], bytes.fromhex(ciphertexts[0]),
            sender, _aes128(),
        )
        self.assertEqual(first, PLAINTEXT)
        self.assertEqual(context.unseal(bytes.fromhex(ciphertexts[1]), AAD[1]), PLAINTEXT)
        changed = bytearray.fromhex(ciphertexts[0])
        changed[0] ^= 1
        self.assertRaises(
            ValueError, wire._open, receiver_key, bytes.fromhex(enc), INFO, AAD[0],
            bytes(changed), sender, _aes128(),
        )

    def test_baseMode(self) -> None:
        self.open(
            "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
            "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
            (
                "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea"
                "87e13c512a",
                "af2d7e9ac9ae7e270f46ba1f975be53c09f8d875bdc8535458c2494e8a6eab251c03d0c22a56b8ca"
                "42c2063b84",
            ),
        )

    def test_authMode(self) -> None:
        sender = keys.private_from_seed(
            bytes.fromhex("dc4a146313cce60a278a5323d321f051c5707e9c45ba21a3479fecdf76fc69dd")
        )
        self.open(
            "fdea67cf831f1ca98d8e27b1f6abeb5b7745e9d35348b80fa407ff6958f9137e",
            "23fb952571a14a25e3d678140cd0e5eb47a0961bb18afcf85896e5453c312e76",
            (
                "5fd92cc9d46dbf8943e72a07e42f363ed5f721212cd90bcfd072bfd9f44e06b80fd17824947496e2"
                "1b680c141b",
                "d3736bb256c19bfa93d79e8f80b7971262cb7c887e35c26370cfed62254369a1b52e3d505b79dd69"
                "9f002bc8ed",
            ),
            sender.public_key(),  # type: ignore[attr-defined]
        )

    def test_authModeNeedsTheSender(self) -> None:
        """
        In auth mode, the right receiver with another sender's key opens nothing.
        """
        receiver = keys.private_from_seed(
            bytes.fromhex("fdea67cf831f1ca98d8e27b1f6abeb5b7745e9d35348b80fa407ff6958f9137e")
        )
        self.assertRaises(
            ValueError, wire._open, receiver,
            bytes.fromhex("23fb952571a14a25e3d678140cd0e5eb47a0961bb18afcf85896e5453c312e76"),
            INFO, AAD[0],
            bytes.fromhex(
                "5fd92cc9d46dbf8943e72a07e42f363ed5f721212cd90bcfd072bfd9f44e06b80fd17824947496e2"
                "1b680c141b"
            ),
            keys.generate().public_key(),  # type: ignore[attr-defined]
            _aes128(),
        )
