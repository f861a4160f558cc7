"""
The control protocol, version 2: P1 (knock request), P2 (confirm) and P3 (grant).

P1 is sealed to the server's identity (its X25519 public key) with HPKE (RFC 9180: DHKEM(X25519,
HKDF-SHA256), HKDF-SHA256, AES-256-GCM), twice: first the user's name in base mode, so nobody but
the server learns whose message it is, then the request in auth mode with the user's key pair, so
only that user can have sent it. The request's HPKE context then gives every key of the session
(``SessionKeys``): P2 and P3 are AES-256-GCM under keys only the sender of that P1 and the server
hold, and a random-looking session tag lets the server find the session without naming anyone.
The byte layout and the order of checks are in docs/PROTOCOL.md; keep the two in step.

The decoders raise nothing but ``MessageRejected``, whatever the bytes. The replay check is
stateful and lives in ``sig2knock.daemon.replay``; it raises the same error type.

This module is imported by the client: it must not import Twisted, and its value types are
``NamedTuple``s rather than dataclasses (``dataclasses`` costs every client run about 12 ms of
start-up).
"""

import functools
import ipaddress
import struct
from typing import Any, Callable, NamedTuple, Optional, Tuple

from sig2knock.protocol.addresses import PROTOCOL_NAMES, IPAddress, unmapped
from sig2knock.protocol.cipher import AES, get_random_bytes
from sig2knock.protocol.kdf import check_user_name
from sig2knock.protocol.keys import public_bytes

VERSION = 2

TYPE_KNOCK_REQUEST = 1  # P1, client -> server
TYPE_CONFIRM = 2  # P2, client -> server
TYPE_GRANT = 3  # P3, server -> client

ENC_SIZE = 32  # an HPKE encapsulated key (X25519 public key)
NONCE_SIZE = 12
TAG_SIZE = 16
SESSION_ID_SIZE = 16
SESSION_TAG_SIZE = 8
REPLAY_ID_SIZE = 12
DOOR_SIZE = 16
ADDRESS_SIZE = 16
MAX_KNOCKS = 64
MAX_NAME = 64
# A service name is padded to this many bytes, so P1's size does not tell which one it names.
MAX_SERVICE = 32

_INFO_WHO = b"sig2knock/v2 who"
_INFO_REQUEST = b"sig2knock/v2 request"
_EXPORT_LABEL = b"sig2knock/v2 session"

_PREFIX = struct.Struct("!BB")  # version, type
# P1: who (name length, name padded to MAX_NAME), then the request's fields
_WHO = struct.Struct(f"!B{MAX_NAME}s")
# time, id, address, flags, service name length; then the name padded to MAX_SERVICE
_REQUEST_HEAD = struct.Struct(f"!Q{SESSION_ID_SIZE}s{ADDRESS_SIZE}sBB")
_KNOCK_HEAD = struct.Struct("!BB")  # protocol, count; then count ports
# P2 and P3: version, type, session tag, nonce
_SESSION_HEADER = struct.Struct(f"!BB{SESSION_TAG_SIZE}s{NONCE_SIZE}s")
_COMMON = struct.Struct(f"!Q{SESSION_ID_SIZE}s")  # time (ms since the epoch), session id
_GRANT_BODY = struct.Struct(f"!HQ{ADDRESS_SIZE}sB")  # assigned port, deadline (ms), address, flags
# P1's flags: the client will connect to the assigned port itself and can show the door secret.
REQUEST_FLAG_DOOR = 0x01
# P3's flags: the assigned port admits the connection only after the door secret.
GRANT_FLAG_DOOR = 0x01

_WHO_OFFSET = _PREFIX.size + ENC_SIZE
_REQUEST_ENC_OFFSET = _WHO_OFFSET + _WHO.size + TAG_SIZE
REQUEST_OFFSET = _REQUEST_ENC_OFFSET + ENC_SIZE
MIN_KNOCK_REQUEST_SIZE = (
    REQUEST_OFFSET + _REQUEST_HEAD.size + MAX_SERVICE + _KNOCK_HEAD.size + 2 + TAG_SIZE
)
MAX_KNOCK_REQUEST_SIZE = MIN_KNOCK_REQUEST_SIZE + 2 * (MAX_KNOCKS - 1)
CONFIRM_SIZE = _SESSION_HEADER.size + _COMMON.size + TAG_SIZE
GRANT_SIZE = CONFIRM_SIZE + _GRANT_BODY.size
MIN_SIZE = CONFIRM_SIZE
MAX_SIZE = MAX_KNOCK_REQUEST_SIZE

# Why a message is refused (MessageRejected.reason), in the order the checks run (see
# docs/PROTOCOL.md); the replay cache adds its own (sig2knock.daemon.replay).
REASON_SIZE = "size"
REASON_VERSION = "version"
REASON_TYPE = "type"
REASON_RATE = "rate-limited"
REASON_WHO = "who"
REASON_UNKNOWN_USER = "unknown-user"
REASON_UNKNOWN_SESSION = "unknown-session"
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


class UserKey(NamedTuple):
    """
    A user's name and private X25519 key (a pycryptodome ``EccKey``), as the client holds them.
    """

    name: str
    private: Any

    @property
    def public(self) -> bytes:
        """
        The 32 raw bytes of the public half, as the server's users file holds it.
        """
        return public_bytes(self.private)

    def __repr__(self) -> str:
        # Never let a key reach a log or a traceback through repr().
        return f"UserKey(name={self.name!r}, private=<redacted>)"


class SessionKeys(NamedTuple):
    """
    What the HPKE context of one P1 gives its sender and the server: the session ``tag`` that P2
    and P3 carry in clear, the ``replay_id`` the replay cache records, the keys of P2 and P3, and
    ``door``, a secret a relaying client can show on the assigned port.
    """

    tag: bytes
    replay_id: bytes
    confirm_key: bytes
    grant_key: bytes
    door: bytes

    def __repr__(self) -> str:
        return f"SessionKeys(tag={self.tag.hex()}, <keys redacted>)"


_EXPORT_SIZES = (SESSION_TAG_SIZE, REPLAY_ID_SIZE, 32, 32, DOOR_SIZE)


def _session_keys(context: Any) -> SessionKeys:
    material = context.export(_EXPORT_LABEL, sum(_EXPORT_SIZES))
    parts = []
    offset = 0
    for size in _EXPORT_SIZES:
        parts.append(material[offset : offset + size])
        offset += size
    return SessionKeys(*parts)


def new_session_id() -> bytes:
    """
    A fresh random session identifier from the OS CSPRNG.
    """
    return get_random_bytes(SESSION_ID_SIZE)


def _check_port(port: int, what: str) -> None:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{what} {port!r} is not a port number")


def pack_address(address: Optional[IPAddress]) -> bytes:
    """
    ``address`` as 16 bytes (IPv6, or IPv4 mapped into IPv6); ``None`` as all zeros (``::``).
    """
    if address is None:
        return bytes(ADDRESS_SIZE)
    if isinstance(address, ipaddress.IPv4Address):
        return b"\x00" * 10 + b"\xff\xff" + address.packed
    return address.packed


def unpack_address(packed: bytes) -> Optional[IPAddress]:
    """
    The inverse of ``pack_address``.
    """
    address = ipaddress.IPv6Address(packed)
    if address.is_unspecified:
        return None
    return unmapped(address)


class KnockRequest(NamedTuple):
    """
    P1: opens a session and carries the knock sequence the client chose, the address the client
    sends from as it sees it (``None`` when it does not know), the service it asks for (``""``:
    the default), and whether it will connect to the assigned port itself (``door``: then it can
    show the session's door secret there, and a relay that took its grant cannot).
    """

    session_id: bytes
    timestamp_ms: int
    protocol: int
    ports: Tuple[int, ...]
    client_address: Optional[IPAddress] = None
    service: str = ""
    door: bool = False

    TYPE = TYPE_KNOCK_REQUEST

    def check(self) -> "KnockRequest":
        """
        Return this request if its fields are valid; raise ``ValueError`` otherwise.
        """
        if len(self.session_id) != SESSION_ID_SIZE:
            raise ValueError(f"a session id has {SESSION_ID_SIZE} bytes")
        if self.protocol not in PROTOCOL_NAMES:
            raise ValueError(f"knock protocol {self.protocol!r} is neither TCP nor UDP")
        if not 1 <= len(self.ports) <= MAX_KNOCKS:
            raise ValueError(f"a knock sequence has 1 to {MAX_KNOCKS} ports")
        for port in self.ports:
            _check_port(port, "knock port")
        if len(set(self.ports)) != len(self.ports):
            raise ValueError("knock ports must be distinct")
        if len(self.service.encode("utf-8")) > MAX_SERVICE:
            raise ValueError(f"a service name has at most {MAX_SERVICE} bytes")
        return self

    def _plaintext(self) -> bytes:
        service = self.service.encode("utf-8")
        return (
            _REQUEST_HEAD.pack(
                self.timestamp_ms,
                self.session_id,
                pack_address(self.client_address),
                REQUEST_FLAG_DOOR if self.door else 0,
                len(service),
            )
            + service.ljust(MAX_SERVICE, b"\x00")
            + _KNOCK_HEAD.pack(self.protocol, len(self.ports))
            + struct.pack(f"!{len(self.ports)}H", *self.ports)
        )

    @classmethod
    def _parse(cls, plaintext: bytes) -> "KnockRequest":
        timestamp_ms, session_id, packed, flags, service_size = _REQUEST_HEAD.unpack_from(
            plaintext
        )
        if flags & ~REQUEST_FLAG_DOOR:
            raise ValueError("unknown request flags")
        offset = _REQUEST_HEAD.size
        field = plaintext[offset : offset + MAX_SERVICE]
        if service_size > MAX_SERVICE or field[service_size:].strip(b"\x00"):
            raise ValueError("bad service name padding")
        service = field[:service_size].decode("utf-8")
        offset += MAX_SERVICE
        protocol, count = _KNOCK_HEAD.unpack_from(plaintext, offset)
        ports = plaintext[offset + _KNOCK_HEAD.size :]
        if len(ports) != 2 * count:
            raise ValueError("knock count does not match the message size")
        return cls(
            session_id,
            timestamp_ms,
            protocol,
            struct.unpack(f"!{count}H", ports),
            unpack_address(packed),
            service,
            bool(flags & REQUEST_FLAG_DOOR),
        ).check()


class Confirm(NamedTuple):
    """
    P2: the client has knocked the sequence of session ``session_id`` and asks for its port.
    """

    session_id: bytes
    timestamp_ms: int

    TYPE = TYPE_CONFIRM


class Grant(NamedTuple):
    """
    P3: the server opened ``port`` for ``address`` (the address it saw the client's P1 and P2
    come from) until ``deadline_ms``; with ``door_required`` the port admits the connection only
    once it has shown the session's door secret (its first bytes).
    """

    session_id: bytes
    timestamp_ms: int
    port: int
    deadline_ms: int
    address: Optional[IPAddress] = None
    door_required: bool = False

    TYPE = TYPE_GRANT


class ReceivedRequest(NamedTuple):
    """
    A P1 that passed every stateless check: whose it is, what it asks, and its session's keys.
    """

    user: str
    request: KnockRequest
    keys: SessionKeys


def _hpke() -> Any:
    # Imported on first use: the client pays for it once per login, when it seals P1.
    from Crypto.Protocol import HPKE

    return HPKE


def _seal(receiver: Any, info: bytes, aad: bytes, plaintext: bytes, sender: Any = None) -> Any:
    HPKE = _hpke()
    context = HPKE.new(
        receiver_key=receiver, sender_key=sender, aead_id=HPKE.AEAD.AES256_GCM, info=info
    )
    return context, context.seal(plaintext, aad)


def _open(
    receiver: Any,
    enc: bytes,
    info: bytes,
    aad: bytes,
    ciphertext: bytes,
    sender: Any = None,
    aead: Optional[int] = None,
) -> Any:
    # ``aead`` is for RFC 9180's test vectors (AES-128-GCM): the protocol uses AES-256-GCM.
    HPKE = _hpke()
    context = HPKE.new(
        receiver_key=receiver,
        sender_key=sender,
        aead_id=HPKE.AEAD.AES256_GCM if aead is None else aead,
        info=info,
        enc=enc,
    )
    return context, context.unseal(ciphertext, aad)


def _one_error_type(decoder: Callable[..., Any]) -> Callable[..., Any]:
    """
    ``decoder``, raising nothing but ``MessageRejected``: any unexpected exception (a bug, or
    bytes no check foresaw) is ``malformed``.
    """

    @functools.wraps(decoder)
    def decode(*args: Any, **kwargs: Any) -> Any:
        try:
            return decoder(*args, **kwargs)
        except MessageRejected:
            raise
        except Exception as error:  # noqa: BLE001 - the documented contract: one error type
            raise MessageRejected(REASON_MALFORMED, type(error).__name__) from None

    return decode


def seal_request(
    request: KnockRequest, user: UserKey, server: Any
) -> Tuple[bytes, SessionKeys]:
    """
    P1 for ``request`` from ``user`` to the server whose public key is ``server`` (an
    ``EccKey``), and the session's keys.
    """
    request.check()
    name = check_user_name(user.name).encode("utf-8")
    prefix = _PREFIX.pack(VERSION, TYPE_KNOCK_REQUEST)
    who_context, who = _seal(server, _INFO_WHO, prefix, _WHO.pack(len(name), name))
    head = prefix + who_context.enc + who
    context, sealed = _seal(server, _INFO_REQUEST, head, request._plaintext(), user.private)
    return head + context.enc + sealed, _session_keys(context)


@_one_error_type
def open_request(
    data: bytes,
    *,
    identity: Any,
    users: Callable[[str], Any],
    decoy: Any,
    now: float,
    max_skew: float,
    admit: Optional[Callable[[], bool]] = None,
) -> ReceivedRequest:
    """
    Check and open one P1 with the server's private key ``identity``.

    ``users(name)`` gives a user's public key (an ``EccKey``) or ``None``; ``decoy`` is a public
    key the request is opened against for an unknown name, so that the work (and the time)
    does not tell names that exist from names that do not. ``now`` is the receiver's time in
    seconds since the epoch and ``max_skew`` how far a timestamp may be from it. ``admit`` is
    asked after the cheap checks and before any cryptography whether this datagram may cost it
    (a rate limit). Raises ``MessageRejected`` and nothing else.
    """
    data = bytes(data)
    _check_prefix(data, TYPE_KNOCK_REQUEST, (MIN_KNOCK_REQUEST_SIZE, MAX_KNOCK_REQUEST_SIZE))
    if admit is not None and not admit():
        raise MessageRejected(REASON_RATE, "over the rate limit")
    prefix = data[: _PREFIX.size]
    try:
        _, who = _open(
            identity,
            data[_PREFIX.size : _WHO_OFFSET],
            _INFO_WHO,
            prefix,
            data[_WHO_OFFSET:_REQUEST_ENC_OFFSET],
        )
        size, padded = _WHO.unpack(who)
        name = padded[:size].decode("ascii")
        check_user_name(name)
        if size > MAX_NAME or padded[size:] != bytes(MAX_NAME - size):
            raise ValueError("bad padding")
    except ValueError:
        raise MessageRejected(REASON_WHO, "cannot be opened with this server's key") from None
    sender = users(name)
    try:
        context, plaintext = _open(
            identity,
            data[_REQUEST_ENC_OFFSET:REQUEST_OFFSET],
            _INFO_REQUEST,
            data[:_REQUEST_ENC_OFFSET],
            data[REQUEST_OFFSET:],
            sender if sender is not None else decoy,
        )
    except ValueError:
        if sender is None:
            raise MessageRejected(REASON_UNKNOWN_USER, f"user {name}") from None
        raise MessageRejected(REASON_AUTH, f"user {name}") from None
    if sender is None:  # cannot happen: nobody holds the decoy's private key
        raise MessageRejected(REASON_UNKNOWN_USER, f"user {name}")
    try:
        request = KnockRequest._parse(plaintext)
    except (ValueError, struct.error, UnicodeDecodeError) as error:
        raise MessageRejected(REASON_MALFORMED, f"user {name}: {error}") from None
    _check_time(request.timestamp_ms, now, max_skew, f"user {name}")
    return ReceivedRequest(name, request, _session_keys(context))


def _check_prefix(data: bytes, message_type: int, sizes: Tuple[int, int]) -> None:
    size = len(data)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise MessageRejected(REASON_SIZE, f"{size} bytes")
    version, received_type = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise MessageRejected(REASON_VERSION, f"version {version}")
    if received_type != message_type:
        raise MessageRejected(REASON_TYPE, f"type {received_type}")
    if not sizes[0] <= size <= sizes[1]:
        raise MessageRejected(REASON_SIZE, f"{size} bytes for type {message_type}")


def message_type(data: bytes) -> Optional[int]:
    """
    The type a datagram says it is (``None`` for one too short to say), to route it.
    """
    return data[1] if len(data) >= _PREFIX.size else None


def _check_time(timestamp_ms: int, now: float, max_skew: float, who: str) -> None:
    offset = timestamp_ms / 1000.0 - now
    if offset < -max_skew:
        raise MessageRejected(REASON_STALE, f"{who}: {-offset:.1f}s old")
    if offset > max_skew:
        raise MessageRejected(REASON_FUTURE, f"{who}: {offset:.1f}s ahead")


def _seal_session(
    message_type: int, keys: SessionKeys, key: bytes, plaintext: bytes, nonce: Optional[bytes]
) -> bytes:
    if nonce is None:
        nonce = get_random_bytes(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise ValueError("a nonce has 12 bytes")
    header = _SESSION_HEADER.pack(VERSION, message_type, keys.tag, nonce)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_SIZE)
    cipher.update(header)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return header + ciphertext + tag


def _open_session(data: bytes, key: bytes) -> bytes:
    header = data[: _SESSION_HEADER.size]
    nonce = header[-NONCE_SIZE:]
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_SIZE)
    cipher.update(header)
    try:
        return cipher.decrypt_and_verify(data[_SESSION_HEADER.size : -TAG_SIZE], data[-TAG_SIZE:])
    except ValueError:
        raise MessageRejected(REASON_AUTH, "not sealed with this session's key") from None


def session_tag(data: bytes) -> bytes:
    """
    The session tag a P2 or P3 carries in clear (for finding its session's keys).
    """
    return bytes(data[_PREFIX.size : _PREFIX.size + SESSION_TAG_SIZE])


def encode_confirm(confirm: Confirm, keys: SessionKeys, nonce: Optional[bytes] = None) -> bytes:
    """
    P2 for ``confirm`` under its session's ``keys``. ``nonce`` is for tests only.
    """
    plaintext = _COMMON.pack(confirm.timestamp_ms, confirm.session_id)
    return _seal_session(TYPE_CONFIRM, keys, keys.confirm_key, plaintext, nonce)


@_one_error_type
def decode_confirm(
    data: bytes,
    *,
    find: Callable[[bytes], Optional[SessionKeys]],
    now: float,
    max_skew: float,
) -> Tuple[SessionKeys, Confirm, bytes]:
    """
    Check and open one P2: ``find(tag)`` gives the keys of the session its tag names (``None``
    when there is none). Returns the keys, the confirm and its nonce (which the replay cache
    records). Raises ``MessageRejected`` and nothing else.
    """
    data = bytes(data)
    _check_prefix(data, TYPE_CONFIRM, (CONFIRM_SIZE, CONFIRM_SIZE))
    keys = find(session_tag(data))
    if keys is None:
        raise MessageRejected(REASON_UNKNOWN_SESSION, f"tag {session_tag(data).hex()}")
    timestamp_ms, session_id = _COMMON.unpack(_open_session(data, keys.confirm_key))
    _check_time(timestamp_ms, now, max_skew, "confirm")
    nonce = data[_PREFIX.size + SESSION_TAG_SIZE : _SESSION_HEADER.size]
    return keys, Confirm(session_id, timestamp_ms), nonce


def encode_grant(grant: Grant, keys: SessionKeys, nonce: Optional[bytes] = None) -> bytes:
    """
    P3 for ``grant`` under its session's ``keys``. ``nonce`` is for tests only.
    """
    _check_port(grant.port, "assigned port")
    plaintext = _COMMON.pack(grant.timestamp_ms, grant.session_id) + _GRANT_BODY.pack(
        grant.port,
        grant.deadline_ms,
        pack_address(grant.address),
        GRANT_FLAG_DOOR if grant.door_required else 0,
    )
    return _seal_session(TYPE_GRANT, keys, keys.grant_key, plaintext, nonce)


@_one_error_type
def decode_grant(data: bytes, keys: SessionKeys, *, now: float, max_skew: float) -> Grant:
    """
    Check and open one P3 of the session ``keys``. Raises ``MessageRejected`` and nothing else.
    """
    data = bytes(data)
    _check_prefix(data, TYPE_GRANT, (GRANT_SIZE, GRANT_SIZE))
    if session_tag(data) != keys.tag:
        raise MessageRejected(REASON_UNKNOWN_SESSION, "another session's tag")
    plaintext = _open_session(data, keys.grant_key)
    timestamp_ms, session_id = _COMMON.unpack_from(plaintext)
    port, deadline_ms, packed, flags = _GRANT_BODY.unpack_from(plaintext, _COMMON.size)
    if flags & ~GRANT_FLAG_DOOR:
        raise ValueError("unknown grant flags")
    _check_time(timestamp_ms, now, max_skew, "grant")
    _check_port(port, "assigned port")
    return Grant(
        session_id,
        timestamp_ms,
        port,
        deadline_ms,
        unpack_address(packed),
        bool(flags & GRANT_FLAG_DOOR),
    )


def now_ms(seconds: float) -> int:
    """
    A timestamp for a message: ``seconds`` since the epoch as whole milliseconds.
    """
    return int(seconds * 1000)
