"""
Tests for sig2knock.protocol.wire: the encrypted control messages P1, P2 and P3.
"""

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.protocol import addresses, wire
from sig2knock.protocol.kdf import key_id
from sig2knock.protocol.wire import (
    Binding,
    Confirm,
    Grant,
    KnockRequest,
    MessageRejected,
    UserKey,
    decode,
    encode,
)
from sig2knock.test.properties import given, settings, st


NOW = 1_800_000_000.0
ALICE = UserKey("alice", bytes(range(32)))
BOB = UserKey("bob", bytes(range(1, 33)))
SERVER = Binding.of("198.18.0.1", 1001)
SERVER6 = Binding.of("2001:db8::1", 1001)
KEYS = {ALICE.key_id: ALICE, BOB.key_id: BOB}
SERVER_TYPES = (wire.TYPE_KNOCK_REQUEST, wire.TYPE_CONFIRM)


def knock_request(timestamp: float = NOW, ports=(1111, 2222, 3333, 4444)) -> KnockRequest:
    return KnockRequest(b"S" * 16, wire.now_ms(timestamp), addresses.PROTO_TCP, tuple(ports))


def receive(data: bytes, bindings=(SERVER,), expect=SERVER_TYPES, now=NOW, keys=None):
    return decode(
        data,
        keys=KEYS if keys is None else keys,
        bindings=bindings,
        expect=expect,
        now=now,
        max_skew=60,
    )


class RoundTripTests(SynchronousTestCase):
    """
    Every message survives encoding and decoding, over IPv4 and IPv6 bindings.
    """

    def test_knockRequest(self) -> None:
        message = knock_request()
        received = receive(encode(message, ALICE, SERVER))
        self.assertEqual(received.message, message)
        self.assertEqual(received.user, ALICE)
        self.assertEqual(received.binding, SERVER)

    def test_confirm(self) -> None:
        message = Confirm(b"C" * 16, wire.now_ms(NOW))
        received = receive(encode(message, BOB, SERVER6), bindings={SERVER6})
        self.assertEqual(received.message, message)

    def test_grant(self) -> None:
        message = Grant(b"G" * 16, wire.now_ms(NOW), 45678, wire.now_ms(NOW + 30))
        received = receive(encode(message, ALICE, SERVER), expect=(wire.TYPE_GRANT,))
        self.assertEqual(received.message, message)

    def test_longestKnockSequence(self) -> None:
        message = knock_request(ports=range(1000, 1000 + wire.MAX_KNOCKS))
        data = encode(message, ALICE, SERVER)
        self.assertEqual(len(data), wire.MAX_SIZE)
        self.assertEqual(receive(data).message, message)

    def test_sizes(self) -> None:
        """
        P1 grows by two bytes a knock; P2 and P3 have fixed sizes.
        """
        self.assertEqual(len(encode(knock_request(ports=[5]), ALICE, SERVER)), 84)
        self.assertEqual(len(encode(knock_request(), ALICE, SERVER)), 90)
        self.assertEqual(len(encode(Confirm(b"C" * 16, 0), ALICE, SERVER)), wire.CONFIRM_SIZE)
        self.assertEqual(len(encode(Grant(b"G" * 16, 0, 9, 0), ALICE, SERVER)), wire.GRANT_SIZE)

    def test_freshNonceEveryTime(self) -> None:
        """
        Encoding the same message twice gives different bytes and different nonces.
        """
        first = encode(knock_request(), ALICE, SERVER)
        second = encode(knock_request(), ALICE, SERVER)
        self.assertNotEqual(first, second)
        self.assertNotEqual(receive(first).nonce, receive(second).nonce)

    def test_ipv4MappedBindingIsIPv4(self) -> None:
        self.assertEqual(Binding.of("::ffff:198.18.0.1", 1001), SERVER)

    def test_nothingSecretInClear(self) -> None:
        """
        Neither the knock ports, the session id nor the user name appear in the bytes sent.
        """
        ports = (0x4142, 0x4344)
        message = KnockRequest(b"\xa5" * 16, wire.now_ms(NOW), addresses.PROTO_UDP, ports)
        data = encode(message, ALICE, SERVER)
        self.assertNotIn(b"ABCD", data)
        self.assertNotIn(b"\xa5" * 4, data)
        self.assertNotIn(b"alice", data)

    def test_keyNotInRepr(self) -> None:
        self.assertNotIn(repr(ALICE.key), repr(ALICE))
        self.assertNotIn(ALICE.key.hex(), repr(ALICE))


class EncodeRefusesInvalidMessagesTests(SynchronousTestCase):
    """
    The encoder cannot produce a message the decoder would refuse as malformed.
    """

    def test_duplicatePorts(self) -> None:
        self.assertRaises(ValueError, knock_request, ports=(1, 2, 1))

    def test_portZero(self) -> None:
        self.assertRaises(ValueError, knock_request, ports=(0, 2))

    def test_tooManyPorts(self) -> None:
        self.assertRaises(ValueError, knock_request, ports=range(1, wire.MAX_KNOCKS + 2))

    def test_unknownProtocol(self) -> None:
        self.assertRaises(ValueError, KnockRequest, b"S" * 16, 0, 1, (1,))

    def test_grantPort(self) -> None:
        self.assertRaises(ValueError, Grant, b"G" * 16, 0, 70000, 0)


class RejectionTests(SynchronousTestCase):
    """
    Each kind of bad message is refused with ``MessageRejected`` and the reason that names it.
    """

    def assertRejected(self, reason: str, data: bytes, **kwargs) -> MessageRejected:
        error = self.assertRaises(MessageRejected, receive, data, **kwargs)
        self.assertEqual(error.reason, reason)
        return error

    def test_everyTamperedByte(self) -> None:
        """
        Changing any single byte of a message makes it fail, whatever the byte.
        """
        data = encode(knock_request(), ALICE, SERVER)
        for position in range(len(data)):
            for flip in (0x01, 0x80, 0xFF):
                tampered = bytearray(data)
                tampered[position] ^= flip
                with self.subTest(position=position, flip=flip):
                    self.assertRaises(MessageRejected, receive, bytes(tampered))

    def test_tamperedCiphertextIsAuthFailure(self) -> None:
        data = bytearray(encode(knock_request(), ALICE, SERVER))
        data[wire.HEADER_SIZE + 3] ^= 1
        self.assertRejected(wire.REASON_AUTH, bytes(data))

    def test_truncatedOrExtended(self) -> None:
        data = encode(knock_request(), ALICE, SERVER)
        self.assertRejected(wire.REASON_SIZE, data[:-1])
        self.assertRejected(wire.REASON_SIZE, data[:40])
        self.assertRejected(wire.REASON_SIZE, data + b"\x00")
        self.assertRejected(wire.REASON_SIZE, b"")

    def test_wrongVersion(self) -> None:
        data = bytearray(encode(knock_request(), ALICE, SERVER))
        data[0] = 2
        self.assertRejected(wire.REASON_VERSION, bytes(data))

    def test_typeNotExpectedHere(self) -> None:
        """
        A server does not take P3, a client does not take P1.
        """
        grant = encode(Grant(b"G" * 16, wire.now_ms(NOW), 40000, 0), ALICE, SERVER)
        self.assertRejected(wire.REASON_TYPE, grant)
        self.assertRejected(
            wire.REASON_TYPE, encode(knock_request(), ALICE, SERVER), expect=(wire.TYPE_GRANT,)
        )

    def test_typeRelabelled(self) -> None:
        """
        A P2 relabelled as P3 is refused by its size before any crypto.
        """
        data = bytearray(encode(Confirm(b"C" * 16, wire.now_ms(NOW)), ALICE, SERVER))
        data[1] = wire.TYPE_GRANT
        self.assertRejected(wire.REASON_SIZE, bytes(data), expect=(wire.TYPE_GRANT,))

    def test_unknownKey(self) -> None:
        stranger = UserKey("alice", b"\x55" * 32)
        self.assertRejected(wire.REASON_UNKNOWN_KEY, encode(knock_request(), stranger, SERVER))

    def test_wrongKey(self) -> None:
        """
        A message whose key id names a user, sealed with another key, fails authentication.
        """
        data = encode(knock_request(), ALICE, SERVER)
        impostor = {ALICE.key_id: UserKey("alice", b"\x55" * 32)}
        self.assertRejected(wire.REASON_AUTH, data, keys=impostor)

    def test_wrongUserName(self) -> None:
        """
        The user name is associated data: the same key under another name fails.
        """
        data = encode(knock_request(), UserKey("mallory", ALICE.key), SERVER)
        self.assertRejected(wire.REASON_AUTH, data)

    def test_otherServer(self) -> None:
        """
        A message meant for another server address or control port is refused before crypto.
        """
        data = encode(knock_request(), ALICE, SERVER)
        self.assertRejected(wire.REASON_BINDING, data, bindings={Binding.of("198.18.0.2", 1001)})
        self.assertRejected(wire.REASON_BINDING, data, bindings={Binding.of("198.18.0.1", 1002)})

    def test_bindingRewritten(self) -> None:
        """
        Rewriting the clear server address to the receiving server's breaks authentication.
        """
        other = Binding.of("198.18.0.2", 1001)
        data = bytearray(encode(knock_request(), ALICE, SERVER))
        data[10:26] = other.packed_address()
        self.assertRejected(wire.REASON_AUTH, bytes(data), bindings={other})

    def test_bindingPredicate(self) -> None:
        data = encode(knock_request(), ALICE, SERVER6)
        self.assertEqual(receive(data, bindings=lambda b: b.port == 1001).binding, SERVER6)
        self.assertRejected(wire.REASON_BINDING, data, bindings=lambda b: False)

    def test_stale(self) -> None:
        data = encode(knock_request(timestamp=NOW - 61), ALICE, SERVER)
        self.assertRejected(wire.REASON_STALE, data)
        self.assertEqual(receive(encode(knock_request(NOW - 59), ALICE, SERVER)).user, ALICE)

    def test_future(self) -> None:
        data = encode(knock_request(timestamp=NOW + 61), ALICE, SERVER)
        self.assertRejected(wire.REASON_FUTURE, data)
        self.assertEqual(receive(encode(knock_request(NOW + 59), ALICE, SERVER)).user, ALICE)

    def test_malformedPlaintextFromKeyHolder(self) -> None:
        """
        A key holder who seals a knock request with duplicate ports gets ``malformed``.
        """
        header = wire._HEADER.pack(
            wire.VERSION, wire.TYPE_KNOCK_REQUEST, ALICE.key_id, SERVER.packed_address(), 1001,
            b"N" * 12,
        )
        body = wire._COMMON.pack(wire.now_ms(NOW), b"S" * 16) + bytes([6, 2, 0, 7, 0, 7])
        cipher = wire.AES.new(ALICE.key, wire.AES.MODE_GCM, nonce=b"N" * 12, mac_len=16)
        cipher.update(wire._associated_data(header, "alice"))
        ciphertext, tag = cipher.encrypt_and_digest(body)
        error = self.assertRejected(wire.REASON_MALFORMED, header + ciphertext + tag)
        self.assertIn("alice", error.detail)

    def test_rejectionNamesNoKey(self) -> None:
        data = bytearray(encode(knock_request(), ALICE, SERVER))
        data[-1] ^= 1
        error = self.assertRejected(wire.REASON_AUTH, bytes(data))
        self.assertNotIn(ALICE.key.hex(), str(error))


valid_messages = st.sampled_from(
    [
        encode(knock_request(), ALICE, SERVER),
        encode(Confirm(b"C" * 16, wire.now_ms(NOW)), BOB, SERVER),
        encode(Grant(b"G" * 16, wire.now_ms(NOW), 40000, 0), ALICE, SERVER),
    ]
)


class DecodeFuzzTests(SynchronousTestCase):
    """
    Whatever the bytes, ``decode`` raises ``MessageRejected`` or returns a message, nothing else.
    """

    @settings(max_examples=3000, deadline=None)
    @given(st.binary(max_size=300))
    def test_randomBytes(self, data: bytes) -> None:
        with self.assertRaises(MessageRejected):
            receive(data, bindings=lambda binding: True, expect=(1, 2, 3))

    @settings(max_examples=3000, deadline=None)
    @given(st.binary(min_size=40, max_size=40), st.integers(0, 200))
    def test_randomHeaderWithKnownKey(self, header: bytes, length: int) -> None:
        """
        Random headers carrying a known key id and version reach the crypto and fail there.
        """
        data = bytes([1, header[1] % 4]) + ALICE.key_id + header[10:] + bytes(length)
        with self.assertRaises(MessageRejected):
            receive(data, bindings=lambda binding: True, expect=(1, 2, 3))

    @settings(max_examples=3000, deadline=None)
    @given(
        valid_messages,
        st.lists(st.tuples(st.integers(0, 299), st.integers(1, 255)), min_size=1, max_size=8),
        st.integers(-3, 3),
    )
    def test_mutatedMessages(self, data: bytes, flips, resize: int) -> None:
        mutated = bytearray(data)
        for position, flip in flips:
            if position < len(mutated):
                mutated[position] ^= flip
        if resize > 0:
            mutated += bytes(resize)
        elif resize < 0:
            del mutated[resize:]
        if bytes(mutated) == data:
            return
        with self.assertRaises(MessageRejected):
            receive(bytes(mutated), expect=(1, 2, 3))


class KeyIdTests(SynchronousTestCase):
    """
    Key ids name keys without revealing them.
    """

    def test_keyIdIsStableAndShort(self) -> None:
        self.assertEqual(key_id(ALICE.key), ALICE.key_id)
        self.assertEqual(len(ALICE.key_id), 8)
        self.assertNotEqual(ALICE.key_id, BOB.key_id)
        self.assertNotIn(ALICE.key_id, ALICE.key)

    def test_keyIdIsDocumentedDigest(self) -> None:
        """
        The first 8 bytes of SHA-256 over the context and the key (docs/PROTOCOL.md), checked
        against OpenSSL's SHA-256: key ids are part of the wire format.
        """
        import hashlib

        key = bytes(range(32))
        expected = hashlib.sha256(b"sig2knock/v1/key-id\x00" + key).digest()[:8]
        self.assertEqual(key_id(key), expected)

    def test_bindingPacking(self) -> None:
        for binding in (SERVER, SERVER6):
            self.assertEqual(Binding.unpack(binding.packed_address(), binding.port), binding)
        self.assertIsInstance(SERVER.address, ipaddress.IPv4Address)


class ValueTypeTests(SynchronousTestCase):
    """
    The message and key types are immutable values that check what they are built from.
    """

    def test_userKeyChecksSizeAndHidesKey(self) -> None:
        self.assertRaises(ValueError, UserKey, "alice", b"k" * 31)
        user = UserKey("alice", b"\x8f" * 32)
        self.assertNotIn("8f", repr(user).lower())
        self.assertNotIn(repr(b"\x8f" * 32), repr(user))
        self.assertEqual(str(user), "UserKey(name='alice', key=<redacted>)")

    def test_valuesCompareAndHash(self) -> None:
        first = KnockRequest(b"S" * 16, 5, addresses.PROTO_TCP, (2000, 3000))
        same = KnockRequest(b"S" * 16, 5, addresses.PROTO_TCP, [2000, 3000])
        self.assertEqual(first, same)
        self.assertEqual(len({first, same}), 1)
        self.assertEqual(same.ports, (2000, 3000))
        self.assertRaises(AttributeError, setattr, first, "timestamp_ms", 6)
