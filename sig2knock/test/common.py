"""
Helpers shared by the unit tests: example configurations, users files with cheap keys, and
running the project's commands as subprocesses.

The client's tests import this module too, so it imports nothing of the daemon's at the top.
"""

import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

from sig2knock import examples
from sig2knock.protocol.kdf import KdfParams

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

    from sig2knock.daemon.settings import LiveSettings

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
