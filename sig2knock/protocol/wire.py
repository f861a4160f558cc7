"""
The control protocol: encoding and decoding of P1 (knock request), P2 (confirm) and P3 (grant).

Every message is AES-256-GCM under the user's key with a fresh random 96-bit nonce. The clear header
(version, type, key id, the server address and control port the message is meant for, nonce) and
the user name are the associated data, so a message is worthless with any of them changed. The byte
layout and the order of checks are documented in docs/PROTOCOL.md; keep the two in step.

``decode`` raises nothing but ``MessageRejected``, whatever the bytes. The replay check is stateful
and lives in ``sig2knock.daemon.replay``; it raises the same error type.

This module is imported by the client: it must not import Twisted, and its value types are
``NamedTuple``s rather than dataclasses (``dataclasses`` costs every client run about 12 ms of
start-up: the module, ``inspect``, and generating each class's methods).
"""

import ipaddress
import struct
from typing import Callable, Container, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from sig2knock.protocol.addresses import PROTOCOL_NAMES, IPAddress, parse_address, unmapped
from sig2knock.protocol.cipher import AES, get_random_bytes
from sig2knock.protocol.kdf import KEY_ID_SIZE, KEY_SIZE, key_id

VERSION = 1

TYPE_KNOCK_REQUEST = 1  # P1, client -> server
TYPE_CONFIRM = 2  # P2, client -> server
TYPE_GRANT = 3  # P3, server -> client

NONCE_SIZE = 12
TAG_SIZE = 16
SESSION_ID_SIZE = 16
MAX_KNOCKS = 64

# version, type, key id, server address (IPv6 or IPv4-mapped), server port, nonce
_HEADER = struct.Struct(f"!BB{KEY_ID_SIZE}s16sH{NONCE_SIZE}s")
# timestamp (ms since the Unix epoch), session id
_COMMON = struct.Struct(f"!Q{SESSION_ID_SIZE}s")
_KNOCK_HEAD = struct.Struct("!BB")  # protocol, count; then count ports
_GRANT_BODY = struct.Struct("!HQ")  # assigned port, deadline (ms since the Unix epoch)

HEADER_SIZE = _HEADER.size
_FIXED = HEADER_SIZE + _COMMON.size + TAG_SIZE
CONFIRM_SIZE = _FIXED
GRANT_SIZE = _FIXED + _GRANT_BODY.size
MIN_KNOCK_REQUEST_SIZE = _FIXED + _KNOCK_HEAD.size + 2
MAX_KNOCK_REQUEST_SIZE = _FIXED + _KNOCK_HEAD.size + 2 * MAX_KNOCKS
MIN_SIZE = CONFIRM_SIZE
MAX_SIZE = MAX_KNOCK_REQUEST_SIZE

_AD_CONTEXT = b"sig2knock/v1/ad\x00"

# Why decode refuses a datagram (MessageRejected.reason), in the order the checks run (see
# docs/PROTOCOL.md); the replay cache adds its own (sig2knock.daemon.replay).
REASON_SIZE = "size"
REASON_VERSION = "version"
REASON_TYPE = "type"
REASON_BINDING = "binding"
REASON_UNKNOWN_KEY = "unknown-key"
REASON_RATE = "rate-limited"
REASON_AUTH = "auth"
REASON_MALFORMED = "malformed"
REASON_STALE = "stale"
REASON_FUTURE = "future"


class Refusal(Exception):
    """
    Why the daemon did not act on something: ``reason`` is short and fixed (for counters and
    logs), ``detail`` a short text for the operator.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class MessageRejected(Refusal):
    """
    The one error a received control message can cause.

    ``reason`` is one of the ``REASON_*`` above (or the replay cache's); ``detail`` is a short text
    for the log. Neither ever contains key material or plaintext of a message that failed
    authentication.
    """


class _UserKeyFields(NamedTuple):
    name: str
    key: bytes


class UserKey(_UserKeyFields):
    """
    A user's name and 256-bit key; ``key_id`` is what messages carry to name the key.
    """

    __slots__ = ()

    def __new__(cls, name: str, key: bytes) -> "UserKey":
        if len(key) != KEY_SIZE:
            raise ValueError(f"a user key has {KEY_SIZE} bytes, not {len(key)}")
        return super().__new__(cls, name, key)

    @property
    def key_id(self) -> bytes:
        """
        The identifier of this key in message headers.
        """
        return key_id(self.key)

    def __repr__(self) -> str:
        # Never let a key reach a log or a traceback through repr().
        return f"UserKey(name={self.name!r}, key=<redacted>)"


class Binding(NamedTuple):
    """
    The server address and control port a message is meant for. Part of every message's associated
    data, so a message captured at one server is useless at another.
    """

    address: IPAddress
    port: int

    @classmethod
    def of(cls, address: str, port: int) -> "Binding":
        """
        Build a binding from an address in text form; IPv4-mapped IPv6 is folded to IPv4.
        """
        parsed = parse_address(address)
        if parsed is None:
            raise ValueError(f"{address!r} is not an IP address")
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
        return cls(parsed, port)

    def packed_address(self) -> bytes:
        """
        The address as 16 bytes: IPv6, or IPv4 mapped into IPv6.
        """
        if isinstance(self.address, ipaddress.IPv4Address):
            return b"\x00" * 10 + b"\xff\xff" + self.address.packed
        return self.address.packed

    @classmethod
    def unpack(cls, packed: bytes, port: int) -> "Binding":
        """
        The inverse of ``packed_address``.
        """
        return cls(unmapped(ipaddress.IPv6Address(packed)), port)


def new_session_id() -> bytes:
    """
    A fresh random session identifier from the OS CSPRNG.
    """
    return get_random_bytes(SESSION_ID_SIZE)


def _check_port(port: int, what: str) -> None:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{what} {port!r} is not a port number")


class _KnockRequestFields(NamedTuple):
    session_id: bytes
    timestamp_ms: int
    protocol: int
    ports: Tuple[int, ...]


class KnockRequest(_KnockRequestFields):
    """
    P1: opens a session and carries the knock sequence the client chose.
    """

    __slots__ = ()
    TYPE = TYPE_KNOCK_REQUEST

    def __new__(
        cls, session_id: bytes, timestamp_ms: int, protocol: int, ports: Tuple[int, ...]
    ) -> "KnockRequest":
        if protocol not in PROTOCOL_NAMES:
            raise ValueError(f"knock protocol {protocol!r} is neither TCP nor UDP")
        if not 1 <= len(ports) <= MAX_KNOCKS:
            raise ValueError(f"a knock sequence has 1 to {MAX_KNOCKS} ports")
        for port in ports:
            _check_port(port, "knock port")
        if len(set(ports)) != len(ports):
            raise ValueError("knock ports must be distinct")
        return super().__new__(cls, session_id, timestamp_ms, protocol, tuple(ports))

    def _body(self) -> bytes:
        return _KNOCK_HEAD.pack(self.protocol, len(self.ports)) + struct.pack(
            f"!{len(self.ports)}H", *self.ports
        )

    @classmethod
    def _from_body(cls, session_id: bytes, timestamp_ms: int, body: bytes) -> "KnockRequest":
        protocol, count = _KNOCK_HEAD.unpack_from(body)
        ports = body[_KNOCK_HEAD.size :]
        if len(ports) != 2 * count:
            raise ValueError("knock count does not match the message size")
        return cls(session_id, timestamp_ms, protocol, struct.unpack(f"!{count}H", ports))


class Confirm(NamedTuple):
    """
    P2: the client has knocked the sequence of session ``session_id`` and asks for its port.
    """

    session_id: bytes
    timestamp_ms: int

    TYPE = TYPE_CONFIRM

    def _body(self) -> bytes:
        return b""

    @classmethod
    def _from_body(cls, session_id: bytes, timestamp_ms: int, body: bytes) -> "Confirm":
        if body:
            raise ValueError("a confirm has no body")
        return cls(session_id, timestamp_ms)


class _GrantFields(NamedTuple):
    session_id: bytes
    timestamp_ms: int
    port: int
    deadline_ms: int


class Grant(_GrantFields):
    """
    P3: the server opened ``port`` for the client's address until ``deadline_ms``.
    """

    __slots__ = ()
    TYPE = TYPE_GRANT

    def __new__(cls, session_id: bytes, timestamp_ms: int, port: int, deadline_ms: int) -> "Grant":
        _check_port(port, "assigned port")
        return super().__new__(cls, session_id, timestamp_ms, port, deadline_ms)

    def _body(self) -> bytes:
        return _GRANT_BODY.pack(self.port, self.deadline_ms)

    @classmethod
    def _from_body(cls, session_id: bytes, timestamp_ms: int, body: bytes) -> "Grant":
        port, deadline_ms = _GRANT_BODY.unpack(body)
        return cls(session_id, timestamp_ms, port, deadline_ms)


Message = Union[KnockRequest, Confirm, Grant]
_MESSAGE_CLASSES = {cls.TYPE: cls for cls in (KnockRequest, Confirm, Grant)}


def _size_fits(message_type: int, size: int) -> bool:
    if message_type == TYPE_KNOCK_REQUEST:
        return MIN_KNOCK_REQUEST_SIZE <= size <= MAX_KNOCK_REQUEST_SIZE and size % 2 == 0
    if message_type == TYPE_CONFIRM:
        return size == CONFIRM_SIZE
    return size == GRANT_SIZE


def _associated_data(header: bytes, user: str) -> bytes:
    name = user.encode("utf-8")
    return _AD_CONTEXT + header + struct.pack("!B", len(name)) + name


def encode(
    message: Message, user: UserKey, binding: Binding, nonce: Optional[bytes] = None
) -> bytes:
    """
    Encrypt ``message`` for ``user`` and bind it to ``binding`` (the server's address and control
    port). ``nonce`` is for tests only: by default a fresh one comes from the OS CSPRNG.
    """
    if nonce is None:
        nonce = get_random_bytes(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE or len(message.session_id) != SESSION_ID_SIZE:
        raise ValueError("nonce or session id of the wrong size")
    header = _HEADER.pack(
        VERSION, message.TYPE, user.key_id, binding.packed_address(), binding.port, nonce
    )
    plaintext = _COMMON.pack(message.timestamp_ms, message.session_id) + message._body()
    cipher = AES.new(user.key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_SIZE)
    cipher.update(_associated_data(header, user.name))
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return header + ciphertext + tag


class Received(NamedTuple):
    """
    A message that passed every stateless check: who sent it, what it says, and its nonce (which
    the replay cache records).
    """

    user: UserKey
    message: Message
    nonce: bytes
    binding: Binding


BindingCheck = Union[Callable[[Binding], bool], Container[Binding]]


def decode(
    data: bytes,
    *,
    keys: Mapping[bytes, UserKey],
    bindings: BindingCheck,
    expect: Sequence[int],
    now: float,
    max_skew: float,
    admit: Optional[Callable[[], bool]] = None,
) -> Received:
    """
    Check and decrypt one datagram.

    ``keys`` maps key ids to user keys; ``bindings`` says which (address, port) the receiver
    accepts, as a container or a predicate; ``expect`` lists the message types this side accepts;
    ``now`` is the receiver's time in seconds since the epoch and ``max_skew`` how far in seconds a
    timestamp may be from it. ``admit``, when given, is asked after the cheap checks and before
    the cryptography whether this datagram may cost that work (a rate limit). Raises
    ``MessageRejected`` and nothing else.
    """
    try:
        return _decode(data, keys, bindings, expect, now, max_skew, admit)
    except MessageRejected:
        raise
    except Exception as error:  # noqa: BLE001 - the documented contract: one error type only
        raise MessageRejected(REASON_MALFORMED, type(error).__name__) from None


def _decode(
    data: bytes,
    keys: Mapping[bytes, UserKey],
    bindings: BindingCheck,
    expect: Sequence[int],
    now: float,
    max_skew: float,
    admit: Optional[Callable[[], bool]] = None,
) -> Received:
    data = bytes(data)
    size = len(data)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise MessageRejected(REASON_SIZE, f"{size} bytes")
    version, message_type, received_key_id, packed_address, port, nonce = _HEADER.unpack_from(data)
    if version != VERSION:
        raise MessageRejected(REASON_VERSION, f"version {version}")
    if message_type not in expect:
        raise MessageRejected(REASON_TYPE, f"type {message_type}")
    if not _size_fits(message_type, size):
        raise MessageRejected(REASON_SIZE, f"{size} bytes for type {message_type}")
    if port == 0:
        raise MessageRejected(REASON_BINDING, "port 0")
    binding = Binding.unpack(packed_address, port)
    accepted = bindings(binding) if callable(bindings) else binding in bindings
    if not accepted:
        raise MessageRejected(REASON_BINDING, f"meant for {binding.address} port {port}")
    user = keys.get(received_key_id)
    if user is None:
        raise MessageRejected(REASON_UNKNOWN_KEY, f"key id {received_key_id.hex()}")
    if admit is not None and not admit():
        # Not yet authenticated: name the key id, not a user who may have nothing to do with it.
        raise MessageRejected(REASON_RATE, f"key id {received_key_id.hex()}: over the rate limit")

    header = data[:HEADER_SIZE]
    cipher = AES.new(user.key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_SIZE)
    cipher.update(_associated_data(header, user.name))
    try:
        plaintext = cipher.decrypt_and_verify(data[HEADER_SIZE:-TAG_SIZE], data[-TAG_SIZE:])
    except ValueError:
        raise MessageRejected(REASON_AUTH, f"user {user.name}") from None

    timestamp_ms, session_id = _COMMON.unpack_from(plaintext)
    try:
        message = _MESSAGE_CLASSES[message_type]._from_body(
            session_id, timestamp_ms, plaintext[_COMMON.size :]
        )
    except (ValueError, struct.error) as error:
        raise MessageRejected(REASON_MALFORMED, f"user {user.name}: {error}") from None

    offset = timestamp_ms / 1000.0 - now
    if offset < -max_skew:
        raise MessageRejected(REASON_STALE, f"user {user.name}: {-offset:.1f}s old")
    if offset > max_skew:
        raise MessageRejected(REASON_FUTURE, f"user {user.name}: {offset:.1f}s ahead")
    return Received(user, message, nonce, binding)


def now_ms(seconds: float) -> int:
    """
    A timestamp for a message: ``seconds`` since the epoch as whole milliseconds.
    """
    return int(seconds * 1000)
