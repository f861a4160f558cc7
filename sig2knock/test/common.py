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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.testing import MemoryReactorClock

from sig2knock import examples
from sig2knock.client.knocker import Knocker, RetrySchedule, Target, user_key
from sig2knock.protocol import wire
from sig2knock.protocol.kdf import KdfParams
from sig2knock.protocol.wire import Binding, Confirm, Grant, UserKey


# The directory that holds the sig2knock package under test (a checkout, or site-packages of an
# installed one): ``python -m`` run from there imports that same package.
IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The shipped example configuration (etc/sig2knockd.conf, package data of sig2knock.examples).
EXAMPLE_CONFIG = examples.path("sig2knockd.conf")

# The cheapest scrypt the KDF accepts: keeps tests fast; production uses KdfParams().
CHEAP_KDF = KdfParams(n=1024, r=1, p=1)

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


def write_config(directory: str, extra: Optional[Dict[str, str]] = None) -> str:
    """
    Write a valid configuration (plus ``extra`` keys) into ``directory`` with its users file and
    state directory beside it; return the configuration's path.
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
    return path


def write_users(path: str, passwords: Dict[str, str], mode: int = 0o600) -> None:
    """
    Write a users file with a line per user (cheap KDF) and set its mode.
    """
    from sig2knock.daemon.users import format_user_line

    lines = [format_user_line(user, password, CHEAP_KDF) for user, password in passwords.items()]
    with open(path, "w", encoding="utf-8") as users_file:
        users_file.write("\n".join(lines) + "\n")
    os.chmod(path, mode)


def run_module(
    module: str, arguments: Sequence[str], stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess:
    """
    Run ``python -m module arguments`` with the Python running the tests (whose sig2knock is the
    one under test), feeding ``stdin``; text output.
    """
    return _run_python(["-m", module, *arguments], stdin, timeout)


def run_module_code(
    code: str, arguments: Sequence[str], stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess:
    """
    Run ``python -c code arguments`` as ``run_module`` runs a module.
    """
    return _run_python(["-c", code, *arguments], stdin, timeout)


def _run_python(
    arguments: Sequence[str], stdin: str, timeout: float
) -> subprocess.CompletedProcess:
    command: List[str] = [sys.executable, *arguments]
    return subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=IMPORT_ROOT,
    )


def installed_command(name: str) -> Optional[str]:
    """
    The path of console script ``name`` installed beside this Python, or ``None``.
    """
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.access(path, os.X_OK) else None


class FakeGrant:
    """
    Stands for an ``OpenGrant``: ``port`` until ``deadline``; ``used`` is fired by the test;
    ``closed`` records why it was closed (``expire`` and ``close``).
    """

    def __init__(self, port: int, deadline: float) -> None:
        from twisted.internet.defer import Deferred

        self.port = port
        self.deadline = deadline
        self.used: "Deferred[None]" = Deferred()
        self.closed: List[str] = []

    def expire(self) -> None:
        self.closed.append("expired")

    def close(self, why: str) -> None:
        self.closed.append(why)


class FakeGranter:
    """
    Stands for the ``PortGranter`` of a ``SessionTable``: ``open`` records the request and
    answers with ``result`` when one is set (a Deferred), else with a new ``FakeGrant`` on the
    next port, open ``open_time`` seconds from ``clock``'s now.
    """

    def __init__(self, clock: Any, open_time: float = 30) -> None:
        self.clock = clock
        self.open_time = open_time
        self.opened: List[Any] = []
        self.grants: List[FakeGrant] = []
        self.result: Any = None
        self.next_port = 40000

    def open(self, source: Any, user: str) -> Any:
        from twisted.internet.defer import succeed

        self.opened.append((source, user))
        if self.result is not None:
            return self.result
        self.next_port += 1
        grant = FakeGrant(self.next_port, self.clock.seconds() + self.open_time)
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
    )
    values.update(config)
    return LiveSettings(types.SimpleNamespace(**values), None)


def remember(cache: Any, nonce: bytes, timestamp_ms: int, now: float) -> None:
    """
    What the control channel does with an accepted message's nonce: check it against the
    replay cache, then remember it.
    """
    cache.check(nonce, timestamp_ms, now)
    cache.remember(nonce, timestamp_ms, now)


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
USER = user_key(PASSWORD, "alice", CHEAP_KDF.format())
SERVER = "192.0.2.7"  # TEST-NET-1: the fake network never sends anything
CONTROL_PORT = 1001
TARGET = Target(socket.AF_INET, SERVER, CONTROL_PORT, (SERVER, CONTROL_PORT))
BINDING = Binding.of(SERVER, CONTROL_PORT)
START = 1_700_000_000.0
SESSION = bytes(range(16))


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

    def sendto(self, data: bytes, address: Tuple[Any, ...]) -> int:
        self.network.sent.append(("udp", self, address, bytes(data)))
        self.network.sent_at.append(self.network.clock.now)
        if self.network.send_error is not None:
            raise self.network.send_error
        self.network.server(self.network, address, bytes(data))
        return len(data)

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
            if isinstance(data, BaseException):
                raise data
            return data, source
        clock.now += self.timeout
        raise socket.timeout("timed out")

    def close(self) -> None:
        self.closed = True


class FakeNetwork:
    """
    Sockets, a clock and a server callback ``server(network, address, data)`` for each datagram.
    """

    def __init__(self, server: Callable[["FakeNetwork", Tuple[Any, ...], bytes], None]) -> None:
        self.clock = FakeClock()
        self.server = server
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
        self.inbox.append((self.clock.now + delay, data, source))

    def control_messages(self) -> List[wire.Received]:
        """
        Every P1/P2 sent to the control port, decoded in order.
        """
        return [
            decode_request(data, self.clock.now)
            for kind, _, address, data in self.sent
            if kind == "udp" and address == TARGET.sockaddr
        ]

    def knocks(self) -> List[Tuple[str, int]]:
        return [
            (kind, address[1])
            for kind, _, address, _ in self.sent
            if address != TARGET.sockaddr
        ]


def decode_request(data: bytes, now: float, binding: Binding = BINDING) -> wire.Received:
    return wire.decode(
        data,
        keys={USER.key_id: USER},
        bindings=(binding,),
        expect=(wire.TYPE_KNOCK_REQUEST, wire.TYPE_CONFIRM),
        now=now,
        max_skew=60,
    )


def grant_bytes(
    session_id: bytes,
    now: float,
    port: int = 40001,
    user: UserKey = USER,
    binding: Binding = BINDING,
) -> bytes:
    message = Grant(session_id, wire.now_ms(now), port, wire.now_ms(now + 10))
    return wire.encode(message, user, binding)


def grant_on_confirm(number: int, port: int = 40001) -> Callable[..., None]:
    """
    A server that answers the ``number``-th P2 (and later ones) with a P3 after 1 ms.
    """
    confirms = []

    def server(network: FakeNetwork, address: Tuple[Any, ...], data: bytes) -> None:
        if address != TARGET.sockaddr:
            return
        received = decode_request(data, network.clock.now)
        if isinstance(received.message, Confirm):
            confirms.append(received)
            if len(confirms) >= number:
                network.deliver(
                    0.001, grant_bytes(received.message.session_id, network.clock.now, port)
                )

    return server


def knocker(network: FakeNetwork, **kwargs: Any) -> Knocker:
    kwargs.setdefault("timeout", 10.0)
    # The timings below were written for rounds 10, 20, 40 ... ms apart, knocks right after P1.
    kwargs.setdefault("schedule", RetrySchedule(first=0.01, knock_pause=0.0))
    return Knocker(
        USER,
        TARGET,
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


def connect(factory: Any, host: str, version: int = 4) -> Any:
    """
    Build a protocol from ``factory`` (a ``GrantForwardFactory``) as if ``host`` connected, and
    return its transport (a ``StringTransport``).
    """
    from twisted.internet.address import IPv4Address, IPv6Address
    from twisted.internet.testing import StringTransport

    address_type = IPv6Address if version == 6 else IPv4Address
    peer = address_type("TCP", host, 50000)
    transport = StringTransport(peerAddress=peer)
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
