"""
Tests for sig2knock.protocol.wire: the control messages of version 2. P1 is opened only with the
server's private key and only as the user whose key sealed it; P2 and P3 only with the keys of
that P1's session; nothing in clear names the user or links two logins; any change is refused.
"""

import ipaddress
from typing import Any, Optional

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.protocol import addresses, keys, wire
from sig2knock.protocol.wire import (
    Confirm,
    Grant,
    KnockRequest,
    MessageRejected,
    SessionKeys,
    UserKey,
)
from sig2knock.test.properties import given, settings, st


NOW = 1_800_000_000.0
SERVER = keys.private_from_seed(bytes(range(32)))
OTHER_SERVER = keys.private_from_seed(bytes(range(1, 33)))
ALICE = UserKey("alice", keys.private_from_seed(b"a" * 32))
BOB = UserKey("bob", keys.private_from_seed(b"b" * 32))
PUBLIC = {user.name: user.private.public_key() for user in (ALICE, BOB)}
DECOY = keys.generate().public_key()
CLIENT = ipaddress.ip_address("198.18.0.2")


def knock_request(
    timestamp: float = NOW, ports=(1111, 2222, 3333, 4444), **fields: Any
) -> KnockRequest:
    return KnockRequest(
        b"S" * 16, wire.now_ms(timestamp), addresses.PROTO_TCP, tuple(ports), **fields
    )


def sealed(request: Optional[KnockRequest] = None, user: UserKey = ALICE, server: Any = SERVER):
    return wire.seal_request(request or knock_request(), user, server.public_key())


def receive(data: bytes, now: float = NOW, users=None, identity=SERVER, admit=None):
    return wire.open_request(
        data,
        identity=identity,
        users=(PUBLIC if users is None else users).get,
        decoy=DECOY,
        now=now,
        max_skew=60,
        admit=admit,
    )


class RoundTripTests(SynchronousTestCase):
    """
    Every message survives sealing and opening; both sides get the same session keys.
    """

    def test_knockRequest(self) -> None:
        message = knock_request(client_address=CLIENT)
        data, client_keys = sealed(message)
        received = receive(data)
        self.assertEqual(received.request, message)
        self.assertEqual(received.user, "alice")
        self.assertEqual(received.keys, client_keys)

    def test_addressesAndService(self) -> None:
        for address in (None, CLIENT, ipaddress.ip_address("2001:db8::2")):
            for service in ("", "rdp", "ü" * 16):
                with self.subTest(address=address, service=service):
                    message = knock_request(client_address=address, service=service)
                    self.assertEqual(receive(sealed(message)[0]).request, message)

    def test_confirmAndGrant(self) -> None:
        data, client_keys = sealed()
        server_keys = receive(data).keys
        confirm = Confirm(b"S" * 16, wire.now_ms(NOW))
        found = {server_keys.tag: server_keys}.get
        opened_keys, opened, _ = wire.decode_confirm(
            wire.encode_confirm(confirm, client_keys), find=found, now=NOW, max_skew=60
        )
        self.assertEqual((opened_keys, opened), (server_keys, confirm))
        grant = Grant(b"S" * 16, wire.now_ms(NOW), 40001, wire.now_ms(NOW + 30), CLIENT)
        self.assertEqual(
            wire.decode_grant(
                wire.encode_grant(grant, server_keys), client_keys, now=NOW, max_skew=60
            ),
            grant,
        )

    def test_doorFlags(self) -> None:
        """
        P1 says whether the client will show the door secret, P3 whether the port requires it;
        both travel sealed, and a flag this version does not know is refused as malformed.
        """
        for door in (False, True):
            message = knock_request(door=door)
            self.assertEqual(receive(sealed(message)[0]).request.door, door)
        data, client_keys = sealed()
        server_keys = receive(data).keys
        for required in (False, True):
            grant = Grant(b"S" * 16, wire.now_ms(NOW), 40001, wire.now_ms(NOW + 30), CLIENT,
                          required)
            opened = wire.decode_grant(
                wire.encode_grant(grant, server_keys), client_keys, now=NOW, max_skew=60
            )
            self.assertEqual(opened.door_required, required)
        self.patch(wire, "REQUEST_FLAG_DOOR", 0x02)
        unknown = sealed(knock_request(door=True))[0]
        self.patch(wire, "GRANT_FLAG_DOOR", 0x80)
        unknown_grant = wire.encode_grant(grant, server_keys)
        self.patch(wire, "REQUEST_FLAG_DOOR", 0x01)
        self.patch(wire, "GRANT_FLAG_DOOR", 0x01)
        with self.assertRaises(MessageRejected) as caught:
            receive(unknown)
        self.assertEqual(caught.exception.reason, wire.REASON_MALFORMED)
        with self.assertRaises(MessageRejected) as caught:
            wire.decode_grant(unknown_grant, client_keys, now=NOW, max_skew=60)
        self.assertEqual(caught.exception.reason, wire.REASON_MALFORMED)

    def test_longestKnockSequenceAndService(self) -> None:
        message = knock_request(ports=range(1000, 1064), service="s" * 32)
        data, _ = sealed(message)
        self.assertEqual(len(data), wire.MAX_KNOCK_REQUEST_SIZE)
        self.assertEqual(receive(data).request, message)

    def test_sizes(self) -> None:
        data, session_keys = sealed()
        self.assertEqual(len(data), 247)
        # The service name is padded: P1's size does not tell which service it asks for.
        self.assertEqual(len(sealed(knock_request(service="rdp"))[0]), 247)
        self.assertEqual(len(sealed(knock_request(ports=(9,)))[0]), wire.MIN_KNOCK_REQUEST_SIZE)
        confirm = wire.encode_confirm(Confirm(b"S" * 16, 0), session_keys)
        self.assertEqual(len(confirm), wire.CONFIRM_SIZE)
        self.assertEqual(wire.CONFIRM_SIZE, 62)
        grant = wire.encode_grant(Grant(b"S" * 16, 0, 1, 0), session_keys)
        self.assertEqual(len(grant), wire.GRANT_SIZE)
        self.assertEqual(wire.GRANT_SIZE, 89)

    def test_eachSealIsFresh(self) -> None:
        """
        The same request sealed twice shares nothing but the two first bytes, and gets other
        session keys: nobody can link two logins of one user by their bytes.
        """
        first, first_keys = sealed()
        second, second_keys = sealed()
        self.assertEqual(first[:2], second[:2])
        same = [i for i in range(2, len(first) - 3) if first[i : i + 4] == second[i : i + 4]]
        self.assertEqual(same, [])
        self.assertNotEqual(first_keys.tag, second_keys.tag)
        self.assertNotEqual(first_keys.replay_id, second_keys.replay_id)

    def test_nothingInClear(self) -> None:
        """
        Neither the user name nor the ports nor the client's address appear in a P1.
        """
        data, _ = sealed(knock_request(client_address=CLIENT, service="secret-service"))
        for needle in (b"alice", (1111).to_bytes(2, "big") + (2222).to_bytes(2, "big"),
                       CLIENT.packed, b"secret-service"):
            self.assertNotIn(needle, data)

    def test_keysNotInRepr(self) -> None:
        data, session_keys = sealed()
        self.assertNotIn(session_keys.confirm_key.hex(), repr(session_keys))
        self.assertNotIn("private=", repr(ALICE).replace("private=<redacted>", ""))
        self.assertIn(session_keys.tag.hex(), repr(session_keys))


class ValidationTests(SynchronousTestCase):
    """
    Messages that would be meaningless cannot be made.
    """

    def test_badRequests(self) -> None:
        for bad in (
            knock_request(ports=(1111, 1111)),
            knock_request(ports=(0, 1)),
            knock_request(ports=range(1, 66)),
            knock_request(service="s" * 65),
            KnockRequest(b"S" * 15, 0, addresses.PROTO_TCP, (1,)),
            KnockRequest(b"S" * 16, 0, 1, (1,)),
        ):
            with self.subTest(request=bad):
                self.assertRaises(ValueError, wire.seal_request, bad, ALICE, SERVER.public_key())

    def test_badUserName(self) -> None:
        self.assertRaises(ValueError, sealed, None, UserKey("-x", ALICE.private))

    def test_grantPort(self) -> None:
        _, session_keys = sealed()
        self.assertRaises(ValueError, wire.encode_grant, Grant(b"S" * 16, 0, 0, 0), session_keys)


class RejectionTests(SynchronousTestCase):
    """
    What the receiver refuses, and why.
    """

    def assertRejected(self, reason: str, call: Any, *args: Any, **kwargs: Any) -> None:
        error = self.assertRaises(MessageRejected, call, *args, **kwargs)
        self.assertEqual(error.reason, reason, str(error))

    def test_everyChangedByteOfP1(self) -> None:
        data, _ = sealed()
        for position in range(len(data)):
            with self.subTest(position=position):
                changed = bytearray(data)
                changed[position] ^= 0x01
                self.assertRaises(MessageRejected, receive, bytes(changed))

    def test_truncatedOrExtended(self) -> None:
        data, _ = sealed()
        for changed in (data[:-1], data + b"\x00", data[:100], b""):
            self.assertRaises(MessageRejected, receive, changed)

    def test_wrongVersionOrType(self) -> None:
        data, _ = sealed()
        self.assertRejected(wire.REASON_VERSION, receive, b"\x01" + data[1:])
        self.assertRejected(wire.REASON_TYPE, receive, data[:1] + b"\x03" + data[2:])

    def test_unknownUser(self) -> None:
        data, _ = sealed()
        self.assertRejected(wire.REASON_UNKNOWN_USER, receive, data, users={"bob": PUBLIC["bob"]})

    def test_impostor(self) -> None:
        """
        Someone who knows alice's name and the server's public key, but not her key, is refused.
        """
        data, _ = sealed(user=UserKey("alice", keys.generate()))
        self.assertRejected(wire.REASON_AUTH, receive, data)

    def test_otherServer(self) -> None:
        """
        A P1 sealed to another server cannot be opened here, nor one of ours there.
        """
        data, _ = sealed(server=OTHER_SERVER)
        self.assertRejected(wire.REASON_WHO, receive, data)
        self.assertRejected(wire.REASON_WHO, receive, sealed()[0], identity=OTHER_SERVER)

    def test_spliced(self) -> None:
        """
        Alice's request under Bob's name (or the reverse) is refused.
        """
        alice, _ = sealed()
        bob, _ = sealed(user=BOB)
        who = slice(2, 2 + 32 + 65 + 16)
        self.assertRejected(wire.REASON_AUTH, receive, alice[: who.start] + bob[who] + alice[who.stop :])

    def test_staleAndFuture(self) -> None:
        self.assertRejected(wire.REASON_STALE, receive, sealed(knock_request(NOW - 61))[0])
        self.assertRejected(wire.REASON_FUTURE, receive, sealed(knock_request(NOW + 61))[0])

    def test_rateLimitBeforeAnyCryptography(self) -> None:
        asked = []

        def admit() -> bool:
            asked.append(True)
            return False

        shaped = b"\x02\x01" + bytes(wire.MIN_KNOCK_REQUEST_SIZE - 2)
        self.assertRejected(wire.REASON_RATE, receive, shaped, admit=admit)
        self.assertEqual(asked, [True])

    def test_rejectionNamesNoKey(self) -> None:
        data, session_keys = sealed()
        for call in (
            lambda: receive(data[:1] + b"\x03" + data[2:]),
            lambda: receive(data, users={}),
            lambda: receive(sealed(user=UserKey("alice", keys.generate()))[0]),
        ):
            error = self.assertRaises(MessageRejected, call)
            self.assertNotIn(session_keys.confirm_key.hex(), str(error))

    def test_confirmOfUnknownOrOtherSession(self) -> None:
        _, first = sealed()
        _, second = sealed()
        confirm = wire.encode_confirm(Confirm(b"S" * 16, wire.now_ms(NOW)), first)
        self.assertRejected(
            wire.REASON_UNKNOWN_SESSION, wire.decode_confirm, confirm, find={}.get, now=NOW,
            max_skew=60,
        )
        # The tag of one session with the keys of another: the keys decide.
        self.assertRejected(
            wire.REASON_AUTH, wire.decode_confirm, confirm, find=lambda tag: second, now=NOW,
            max_skew=60,
        )

    def test_everyChangedByteOfP2AndP3(self) -> None:
        _, session_keys = sealed()
        confirm = wire.encode_confirm(Confirm(b"S" * 16, wire.now_ms(NOW)), session_keys)
        grant = wire.encode_grant(Grant(b"S" * 16, wire.now_ms(NOW), 4, 5), session_keys)
        for position in range(len(confirm)):
            changed = bytearray(confirm)
            changed[position] ^= 0x80
            with self.subTest(message="P2", position=position):
                self.assertRaises(
                    MessageRejected, wire.decode_confirm, bytes(changed),
                    find=lambda tag: session_keys, now=NOW, max_skew=60,
                )
        for position in range(len(grant)):
            changed = bytearray(grant)
            changed[position] ^= 0x80
            with self.subTest(message="P3", position=position):
                self.assertRaises(
                    MessageRejected, wire.decode_grant, bytes(changed), session_keys, now=NOW,
                    max_skew=60,
                )

    def test_grantOfAnotherSession(self) -> None:
        _, mine = sealed()
        _, theirs = sealed()
        grant = wire.encode_grant(Grant(b"S" * 16, wire.now_ms(NOW), 4, 5), theirs)
        self.assertRaises(MessageRejected, wire.decode_grant, grant, mine, now=NOW, max_skew=60)

    def test_grantIsNotAConfirm(self) -> None:
        """
        P3 and P2 have their own keys: a P3 relabelled as a P2 is refused.
        """
        _, session_keys = sealed()
        grant = wire.encode_grant(Grant(b"S" * 16, wire.now_ms(NOW), 4, 5), session_keys)
        self.assertRaises(
            MessageRejected, wire.decode_confirm, grant[:1] + b"\x02" + grant[2:62],
            find=lambda tag: session_keys, now=NOW, max_skew=60,
        )


valid_messages = st.sampled_from([sealed()[0], sealed(knock_request(ports=(5,)))[0]])


class DecodeFuzzTests(SynchronousTestCase):
    """
    Whatever the bytes, the decoders raise ``MessageRejected`` or return a message.
    """

    @settings(max_examples=1500, deadline=None)
    @given(st.binary(max_size=420))
    def test_randomBytes(self, data: bytes) -> None:
        session_keys = SessionKeys(data[2:10].ljust(8, b"\0"), b"r" * 12, b"c" * 32, b"g" * 32,
                                   b"d" * 16)
        with self.assertRaises(MessageRejected):
            receive(data)
        with self.assertRaises(MessageRejected):
            wire.decode_confirm(data, find=lambda tag: session_keys, now=NOW, max_skew=60)
        with self.assertRaises(MessageRejected):
            wire.decode_grant(data, session_keys, now=NOW, max_skew=60)

    @settings(max_examples=300, deadline=None)
    @given(
        valid_messages,
        st.lists(st.tuples(st.integers(0, 399), st.integers(1, 255)), min_size=1, max_size=8),
        st.integers(-3, 3),
    )
    def test_mutatedRequests(self, data: bytes, flips, resize: int) -> None:
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
            receive(bytes(mutated))


class AddressPackingTests(SynchronousTestCase):
    """
    Addresses travel as 16 bytes: IPv6, IPv4 mapped, none as ``::``.
    """

    def test_packing(self) -> None:
        for address in (CLIENT, ipaddress.ip_address("2001:db8::1"), None):
            self.assertEqual(wire.unpack_address(wire.pack_address(address)), address)
        self.assertEqual(wire.pack_address(CLIENT)[:12], b"\0" * 10 + b"\xff\xff")
        self.assertEqual(
            wire.unpack_address(ipaddress.ip_address("::ffff:198.18.0.2").packed), CLIENT
        )
