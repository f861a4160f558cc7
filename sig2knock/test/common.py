"""
Helpers and fakes shared by the unit tests: example configurations, users files with cheap keys,
running the project's commands as subprocesses, stand-ins for the daemon's parts (grants, the
granter, the capture, the firewall's tool runner) and for the client's network.

The client's tests import this module too, so it imports nothing of the daemon's at the top.
"""

import errno
import os
import random
import re
import socket
import subprocess
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from twisted.internet.testing import MemoryReactorClock

from sig2knock import examples
from sig2knock.client.knocker import Knocker, RetrySchedule, Target, user_key
from sig2knock.protocol import keys, wire
from sig2knock.protocol.kdf import KdfParams
from sig2knock.protocol.wire import Confirm, Grant, SessionKeys, UserKey


# The directory that holds the sig2knock package under test (a checkout, or site-packages of an
# installed one): ``python -m`` run from there imports that same package.
IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The shipped example configuration (etc/sig2knockd.conf, package data of sig2knock.examples).
EXAMPLE_CONFIG = examples.path("sig2knockd.conf")

# The cheapest scrypt the KDF accepts: keeps tests fast; production uses KdfParams().
CHEAP_KDF = KdfParams(n=1024, r=1, p=1)

# The server identity of the tests: a fixed key pair (its private key as a PEM file's text, as
# STATE_DIR/identity.key holds it), so users lines can be written before a daemon starts.
SERVER_KEY = keys.private_from_seed(bytes(range(1, 33)))
SERVER_PUBLIC = keys.public_bytes(SERVER_KEY)
SERVER_PEM = keys.export_private(SERVER_KEY)
SERVER_KEY_TEXT = keys.format_public_key(SERVER_PUBLIC)  # what --server-key takes


def write_identity(state_dir: str, pem: str = SERVER_PEM) -> str:
    """
    Put the tests' server identity into ``state_dir`` (created mode 0700); return its path.
    """
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, "identity.key")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as identity:
        identity.write(pem)
    return path

BASE_CONFIG = {
    "UDP_PORT": "1001",
    "FORWARD_TO_IP": "127.0.0.1",
    "FORWARD_TO_PORT": "22",
}


def config_text(settings: Dict[str, str]) -> str:
    """
    A configuration file's text from ``settings`` (KEY -> VALUE), one line each, in order.
    """
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


CONFIG_PATH = "/etc/sig2knock/sig2knockd.conf"


def settings_text(**overrides: Optional[str]) -> str:
    """
    The base configuration (UDP_PORT on line 1, FORWARD_TO_IP on line 2, FORWARD_TO_PORT on line 3)
    with ``overrides``: a known key keeps its line, a new key is appended from line 4 on, and
    ``None`` leaves the key out.
    """
    values: Dict[str, Optional[str]] = dict(BASE_CONFIG)
    values.update(overrides)
    return config_text({key: value for key, value in values.items() if value is not None})


def parse_text(text: str, interface: Optional[str] = None) -> Any:
    """
    The ``Config`` that ``text`` gives as the file ``CONFIG_PATH``.
    """
    from sig2knock.daemon.settings import parse_config

    return parse_config(text, CONFIG_PATH, interface)


class ConfigErrorAssertions:
    """
    Checks of the one-line ``FILE:LINE: KEY: message`` form of configuration errors.
    """

    def assertConfigError(
        self: Any,
        text: str,
        line: Optional[int],
        key: Optional[str],
        interface: Optional[str] = None,
    ) -> Any:
        from sig2knock.daemon.settings import ConfigError, parse_config

        error = self.assertRaises(ConfigError, parse_config, text, CONFIG_PATH, interface)
        where = CONFIG_PATH if line is None else f"{CONFIG_PATH}:{line}"
        prefix = f"{where}: {key}: " if key else f"{where}: "
        message = str(error)
        self.assertTrue(
            message.startswith(prefix), f"{message!r} does not start with {prefix!r}"
        )
        self.assertNotIn("\n", message)
        self.assertEqual((error.path, error.line, error.key), (CONFIG_PATH, line, key))
        if line is None:
            self.assertNotRegex(message, re.escape(CONFIG_PATH) + r":[0-9]")
        return error


def write_config(
    directory: str, extra: Optional[Dict[str, str]] = None, identity: bool = True
) -> str:
    """
    Write a valid configuration (plus ``extra`` keys) into ``directory`` with its users file and
    (unless not ``identity``) a state directory holding the tests' server identity beside it,
    with the empty replay cache ``--init`` writes; return the configuration's path.
    """
    settings = dict(BASE_CONFIG)
    # Loopback exists everywhere: the tests need no default route.
    settings.update(
        {"USERS_FILE": "user.txt", "STATE_DIR": "state", "FIREWALL": "none", "INTERFACE": "lo"}
    )
    settings.update(extra or {})
    path = os.path.join(directory, "sig2knockd.conf")
    with open(path, "w", encoding="utf-8") as config_file:
        config_file.write(config_text(settings))
    users_path = os.path.join(directory, "user.txt")
    if not os.path.exists(users_path):
        write_users(users_path, {"alice": "alice's password"})
    state = os.path.join(directory, settings["STATE_DIR"])
    missing = not os.path.lexists(state) or (
        os.path.isdir(state) and not os.path.exists(os.path.join(state, "identity.key"))
    )
    if identity and missing:
        write_identity(state)
        # What ``sig2knockd --init`` leaves beside the identity (the daemon's, imported here
        # only: the client's tests import this module too).
        from sig2knock.daemon.replay_file import write_empty

        write_empty(os.path.join(state, "replay.cache"), int(1_700_000_000 * 1000))
    return path


def write_users(path: str, passwords: Dict[str, str], mode: int = 0o600) -> None:
    """
    Write a users file with a line per user (cheap KDF, the tests' server) and set its mode.
    """
    from sig2knock.daemon.users import format_user_line

    lines = [
        format_user_line(user, password, SERVER_PUBLIC, CHEAP_KDF)
        for user, password in passwords.items()
    ]
    with open(path, "w", encoding="utf-8") as users_file:
        users_file.write("\n".join(lines) + "\n")
    os.chmod(path, mode)


def run_module(
    module: str,
    arguments: Sequence[str],
    stdin: str = "",
    timeout: float = 60,
    env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """
    Run ``python -m module arguments`` with the Python running the tests (whose sig2knock is the
    one under test), feeding ``stdin``, with ``env`` added to the environment; text output.
    """
    return _run_python(["-m", module, *arguments], stdin, timeout, env)


def run_module_code(
    code: str, arguments: Sequence[str], stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess:
    """
    Run ``python -c code arguments`` as ``run_module`` runs a module.
    """
    return _run_python(["-c", code, *arguments], stdin, timeout)


def _run_python(
    arguments: Sequence[str],
    stdin: str,
    timeout: float,
    env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    command: List[str] = [sys.executable, *arguments]
    return subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=IMPORT_ROOT,
        env=None if env is None else {**os.environ, **env},
    )


def installed_command(name: str) -> Optional[str]:
    """
    The path of console script ``name`` installed beside this Python, or ``None``.
    """
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.access(path, os.X_OK) else None


class FakeGrant:
    """
    Stands for an ``OpenGrant``: ``port`` until ``deadline``, with the ``door`` secret its session
    gave (or ``None``); ``used`` is fired by the test; ``closed`` records why it was closed
    (``expire`` and ``close``).
    """

    def __init__(self, port: int, deadline: float, door: Optional[bytes] = None) -> None:
        from twisted.internet.defer import Deferred

        self.port = port
        self.deadline = deadline
        self.door = door
        self.door_required = door is not None
        self.used: "Deferred[None]" = Deferred()
        self.closed: List[str] = []

    def expire(self) -> None:
        self.closed.append("expired")

    def close(self, why: str) -> None:
        self.closed.append(why)


class FakeGranter:
    """
    Stands for the ``PortGranter`` of a ``SessionTable``: ``open`` records the request (source
    and user; ``doors`` the door secret of each, ``services`` the service) and
    answers with ``result`` when one is set (a Deferred), else with a new ``FakeGrant`` on the
    next port, open ``open_time`` seconds from ``clock``'s now.
    """

    def __init__(self, clock: Any, open_time: float = 30) -> None:
        self.clock = clock
        self.open_time = open_time
        self.opened: List[Any] = []
        self.doors: List[Optional[bytes]] = []
        self.services: List[Any] = []
        self.grants: List[FakeGrant] = []
        self.result: Any = None
        self.next_port = 40000

    def open(
        self, source: Any, user: str, door: Optional[bytes] = None, service: Any = None
    ) -> Any:
        from twisted.internet.defer import succeed

        self.opened.append((source, user))
        self.doors.append(door)
        self.services.append(service)
        if self.result is not None:
            return self.result
        self.next_port += 1
        grant = FakeGrant(self.next_port, self.clock.seconds() + self.open_time, door)
        self.grants.append(grant)
        return succeed(grant)


class FakeCapture:
    """
    Stands for the ``KnockCapture`` a ``SessionTable`` makes: records each set of watched
    sources it is told.
    """

    def __init__(self, on_knock: Any) -> None:
        self.on_knock = on_knock
        self.watched: List[frozenset] = []

    def watch(self, sources: frozenset) -> None:
        self.watched.append(sources)


def live_settings(**config: Any) -> Any:
    """
    A ``LiveSettings`` over a stand-in configuration with the session table's and the
    granter's settings (``config`` overrides them) and no users.
    """
    import ipaddress
    import types

    from sig2knock.daemon.reload import LiveSettings

    values: Dict[str, Any] = dict(
        knock_proto="tcp", knock_count=4, knock_timeout=10.0, singleconn_portopen_time=30.0,
        assign_port_range=(40000, 40999), forward_mode="proxy",
        forward_to_ip=ipaddress.ip_address("127.0.0.1"), forward_to_port=22,
        require_source_address=False,
    )
    values.update(config)
    if "catalog" not in values:
        from sig2knock.daemon.catalog import EVERY_USER, Catalog, HiddenService

        default = HiddenService("", values["forward_to_ip"], values["forward_to_port"],
                                values["singleconn_portopen_time"], EVERY_USER)
        values["catalog"] = Catalog({"": default}, {})
    return LiveSettings(types.SimpleNamespace(**values), None)


def remember(cache: Any, nonce: bytes, timestamp_ms: int, now: float) -> None:
    """
    What the control channel does with an accepted message's nonce: check it against the
    replay cache, then remember it, with the writes run at once (the default worker); raise
    ``MessageRejected`` as the control channel would refuse it.
    """
    cache.check(nonce, timestamp_ms, now)
    saved = cache.remember(nonce, timestamp_ms, now)
    failures: List[Any] = []
    saved.addErrback(failures.append)
    if failures:
        failures[0].raiseException()
    assert saved.called, "the record is not written yet (a held worker?)"


class FakeRun:
    """
    Stands for the firewall's tool runner (``run_tool``, an ``IToolRunner``): each call is kept
    in ``calls`` as ``record`` makes it and answered by ``answer``; the backends' tests refine
    both (by default: ``(reactor, argv, stdin)``, and empty output).
    """

    def __init__(self) -> None:
        self.calls: List[Any] = []

    def __call__(self, reactor: Any, argv: Sequence[str], stdin: bytes = b"") -> Any:
        self.calls.append(self.record(reactor, list(argv), stdin))
        return self.answer(list(argv), stdin)

    def record(self, reactor: Any, argv: List[str], stdin: bytes) -> Any:
        return (reactor, argv, stdin)

    def answer(self, argv: List[str], stdin: bytes) -> Any:
        from twisted.internet.defer import succeed

        return succeed(b"")


# The client's side: one user, a fake network and clock to drive Knocker through, and a small
# real server on 127.0.0.1.
PASSWORD = "a long enough password"
USER = user_key(PASSWORD, "alice", CHEAP_KDF.format(), SERVER_PUBLIC)
SERVER = "192.0.2.7"  # TEST-NET-1: the fake network never sends anything
CONTROL_PORT = 1001
TARGET = Target(socket.AF_INET, SERVER, CONTROL_PORT, (SERVER, CONTROL_PORT))
START = 1_700_000_000.0
SESSION = bytes(range(16))


class Decoded(NamedTuple):
    """
    A control message as a server opened it: the message, its session's keys, whose it is and
    the nonce it was sealed with (a P1's replay id).
    """

    message: Any
    keys: SessionKeys
    user: str
    nonce: bytes


class FakeServer:
    """
    The server side of the exchange, without a daemon: opens P1 and P2 with the tests' server
    identity and ``users`` (name -> ``UserKey``), remembering each session's keys by tag.
    """

    def __init__(self, users: Optional[Dict[str, UserKey]] = None) -> None:
        self.users = users if users is not None else {USER.name: USER}
        self.sessions: Dict[bytes, Tuple[str, SessionKeys]] = {}
        self.decoy = keys.generate().public_key()  # type: ignore[attr-defined]

    def public_key(self, name: str) -> Any:
        user = self.users.get(name)
        return None if user is None else user.private.public_key()

    def decode(self, data: bytes, now: float) -> Decoded:
        """
        Open one P1 or P2; raises ``MessageRejected``.
        """
        if wire.message_type(data) == wire.TYPE_CONFIRM:
            session_keys, confirm, _ = wire.decode_confirm(
                data,
                find=lambda tag: self.sessions[tag][1] if tag in self.sessions else None,
                now=now,
                max_skew=60,
            )
            user = self.sessions[session_keys.tag][0]
            return Decoded(confirm, session_keys, user, bytes(data[10:22]))
        received = wire.open_request(
            data, identity=SERVER_KEY, users=self.public_key, decoy=self.decoy, now=now,
            max_skew=60,
        )
        self.sessions[received.keys.tag] = (received.user, received.keys)
        return Decoded(received.request, received.keys, received.user, received.keys.replay_id)


class FakeClock:
    """
    A clock that moves only when told (or when a fake socket waits).
    """

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeSocket:
    """
    A socket that records what it sends and answers ``recvfrom`` from its network's inbox.
    """

    def __init__(self, network: "FakeNetwork", family: int, kind: int) -> None:
        self.network = network
        self.family = family
        self.kind = kind
        self.timeout: Optional[float] = None
        self.blocking = True
        self.closed = False
        self.peer: Optional[Tuple[Any, ...]] = None

    def sendto(self, data: bytes, address: Tuple[Any, ...]) -> int:
        self.network.sent.append(("udp", self, address, bytes(data)))
        self.network.sent_at.append(self.network.clock.now)
        if self.network.send_error is not None:
            raise self.network.send_error
        self.network.server(self.network, address, bytes(data))
        return len(data)

    def connect(self, address: Tuple[Any, ...]) -> None:
        # A UDP socket's connect sends nothing: it only picks the local address.
        self.peer = address

    def getsockname(self) -> Tuple[Any, ...]:
        return (self.network.local_address, 40000)

    def setblocking(self, flag: bool) -> None:
        self.blocking = flag

    def connect_ex(self, address: Tuple[Any, ...]) -> int:
        self.network.sent.append(("tcp", self, address, b""))
        self.network.sent_at.append(self.network.clock.now)
        return errno.EINPROGRESS

    def settimeout(self, timeout: Optional[float]) -> None:
        self.timeout = timeout

    def recvfrom(self, size: int) -> Tuple[bytes, Tuple[Any, ...]]:
        assert self.timeout is not None and self.timeout > 0
        clock = self.network.clock
        inbox = self.network.inbox
        inbox.sort(key=lambda item: item[0])
        if inbox and inbox[0][0] <= clock.now + self.timeout:
            when, data, source = inbox.pop(0)
            clock.now = max(clock.now, when)
            if callable(data):  # made when it arrives (a P3 needs the session's keys)
                data = data()
            if isinstance(data, BaseException):
                raise data
            return data, source
        clock.now += self.timeout
        raise socket.timeout("timed out")

    def close(self) -> None:
        self.closed = True


class FakeNetwork:
    """
    Sockets, a clock and a server callback ``server(network, address, data)`` for each datagram;
    ``fake_server`` opens what the client sent, and ``local_address`` is what the client's
    sockets say they send from.
    """

    def __init__(self, server: Callable[["FakeNetwork", Tuple[Any, ...], bytes], None]) -> None:
        self.clock = FakeClock()
        self.server = server
        self.fake_server = FakeServer()
        self.local_address = "192.0.2.50"
        self.sent: List[Tuple[str, FakeSocket, Tuple[Any, ...], bytes]] = []
        self.sent_at: List[float] = []
        self.sockets: List[FakeSocket] = []
        self.inbox: List[Tuple[float, Any, Tuple[Any, ...]]] = []
        self.send_error: Optional[OSError] = None

    def socket(self, family: int, kind: int) -> FakeSocket:
        sock = FakeSocket(self, family, kind)
        self.sockets.append(sock)
        return sock

    def deliver(self, delay: float, data: Any, source: Tuple[Any, ...] = TARGET.sockaddr) -> None:
        """
        Put ``data`` (bytes, an exception to raise, or a callable that makes either) into the
        inbox, to arrive ``delay`` seconds from now from ``source``.
        """
        self.inbox.append((self.clock.now + delay, data, source))

    def control_messages(self) -> List[Decoded]:
        """
        Every P1/P2 sent to the control port, opened in order (by a server of its own).
        """
        server = FakeServer()
        return [
            server.decode(data, self.clock.now)
            for kind, _, address, data in self.sent
            if kind == "udp" and address == TARGET.sockaddr
        ]

    def session_keys(self) -> SessionKeys:
        """
        The keys of the session the client's first P1 opened.
        """
        return self.control_messages()[0].keys

    def grant_later(self, session_id: bytes, now: float, port: int) -> Callable[[], bytes]:
        """
        A P3 of the client's session, made when it is received (``deliver`` takes it).
        """
        return lambda: grant_bytes(session_id, now, self.session_keys(), port)

    def knocks(self) -> List[Tuple[str, int]]:
        return [
            (kind, address[1])
            for kind, _, address, _ in self.sent
            if address != TARGET.sockaddr
        ]


def grant_bytes(
    session_id: bytes,
    now: float,
    session_keys: SessionKeys,
    port: int = 40001,
    address: Any = None,
    door_required: bool = False,
) -> bytes:
    """
    A P3 of the session ``session_keys`` for ``port``, open 10 s from ``now``.
    """
    message = Grant(
        session_id, wire.now_ms(now), port, wire.now_ms(now + 10), address, door_required
    )
    return wire.encode_grant(message, session_keys)


def grant_on_confirm(number: int, port: int = 40001) -> Callable[..., None]:
    """
    A server that answers the ``number``-th P2 (and later ones) with a P3 after 1 ms.
    """
    confirms = []

    def server(network: FakeNetwork, address: Tuple[Any, ...], data: bytes) -> None:
        if address != TARGET.sockaddr:
            return
        received = network.fake_server.decode(data, network.clock.now)
        if isinstance(received.message, Confirm):
            confirms.append(received)
            if len(confirms) >= number:
                network.deliver(
                    0.001,
                    grant_bytes(
                        received.message.session_id,
                        network.clock.now,
                        received.keys,
                        port,
                    ),
                )

    return server


def knocker(network: FakeNetwork, **kwargs: Any) -> Knocker:
    kwargs.setdefault("timeout", 10.0)
    # The timings below were written for rounds 10, 20, 40 ... ms apart, knocks right after P1.
    kwargs.setdefault("schedule", RetrySchedule(first=0.01, knock_pause=0.0))
    return Knocker(
        USER,
        TARGET,
        SERVER_PUBLIC,
        clock=network.clock,
        monotonic=network.clock,
        sleep=network.clock.sleep,
        socket_factory=network.socket,
        rng=random.Random(1),
        new_session_id=lambda: SESSION,
        **kwargs,
    )


def read_until_closed(sock: socket.socket) -> bytes:
    """
    Everything ``sock`` receives until the peer shuts its side down.
    """
    received = b""
    while True:
        data = sock.recv(100)
        if not data:
            return received
        received += data


def tcp_transport(**kwargs: Any) -> Any:
    """
    A ``StringTransport`` that is a TCP one too: it records ``setTcpNoDelay``.
    """
    from twisted.internet.testing import StringTransport

    class TCPStringTransport(StringTransport):
        nodelay = False

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.nodelay = enabled

        def loseWriteConnection(self) -> None:
            self.write_closed = True

    return TCPStringTransport(**kwargs)


def connect(factory: Any, host: str, version: int = 4) -> Any:
    """
    Build a protocol from ``factory`` (a ``GrantForwardFactory``) as if ``host`` connected, and
    return its transport (``tcp_transport``).
    """
    from twisted.internet.address import IPv4Address, IPv6Address

    address_type = IPv6Address if version == 6 else IPv4Address
    peer = address_type("TCP", host, 50000)
    transport = tcp_transport(peerAddress=peer)
    protocol = factory.buildProtocol(peer)
    protocol.makeConnection(transport)
    return transport


class StoppingReactor(MemoryReactorClock):
    """
    A memory reactor that is running and records ``stop()`` in ``stopped`` (the daemon stops
    itself when its firewall rules cannot be installed); its ``clock`` is itself.
    """

    def __init__(self) -> None:
        super().__init__()
        self.running = True
        self.stopped = 0
        self.clock = self

    def stop(self) -> None:
        self.stopped += 1

