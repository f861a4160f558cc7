"""
Running a firewall tool from the reactor: ``spawnProcess``, standard input given, output
collected, a time limit, and one ``FirewallError`` for every way it can fail.

``IToolRunner`` is the seam a backend runs its tool through: ``run_tool`` here spawns it,
``sig2knock.firewall.libnftables.LibnftablesRunner`` runs an nft script in-process.
"""

import os
import shutil
from typing import Any, List, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import Interface, provider

from sig2knock.firewall import FirewallError

TOOL_TIMEOUT = 10.0
# The tools' own messages, untranslated, so errors can be matched and searched for.
TOOL_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
# The longest tool message kept in a FirewallError (and so in the log).
MESSAGE_LIMIT = 500


class IToolRunner(Interface):
    """
    Runs a firewall tool's script for a backend, without blocking the reactor.
    """

    def __call__(reactor: Any, argv: Sequence[str], stdin: bytes = b"") -> "Deferred[bytes]":
        """
        Run ``argv`` (``argv[0]`` a full path) with ``stdin``; fire with its standard output,
        or fail with ``FirewallError`` whose message carries the tool's own error text on one
        line.
        """


def tool_message(raw: bytes) -> str:
    """
    A tool's error output as one bounded line: whitespace runs folded to one space, at most
    ``MESSAGE_LIMIT`` characters, ``"no message"`` when empty.
    """
    message = raw.decode("utf-8", "replace").strip()
    return " ".join(message.split())[:MESSAGE_LIMIT] or "no message"


def find_tool(name: str) -> Optional[str]:
    """
    The full path of the firewall tool ``name`` in the system's directories (never from
    ``$PATH``: the daemon runs as root or with network capabilities, and a directory someone
    put first in its ``PATH`` must not give it an ``nft``), or ``None`` when this host has none.
    """
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name, path=TOOL_ENVIRONMENT["PATH"])


class _Collect(ProcessProtocol):
    def __init__(self, argv: Sequence[str], stdin: bytes, done: Deferred) -> None:
        self.argv = list(argv)
        self.stdin = stdin
        self.done = done
        self.out: List[bytes] = []
        self.err: List[bytes] = []
        self.timer: Any = None

    def connectionMade(self) -> None:
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        output = b"".join(self.out)
        if reason.check(ProcessDone):
            self.done.callback(output)
            return
        message = tool_message(b"".join(self.err))
        if reason.check(ProcessTerminated) and reason.value.exitCode is not None:
            status = f"exit status {reason.value.exitCode}"
        else:
            status = "killed (time limit)" if self.timer is None else "killed by a signal"
        self.done.errback(FirewallError(f"{' '.join(self.argv)}: {status}: {message}"))


@provider(IToolRunner)
def run_tool(
    reactor: Any, argv: Sequence[str], stdin: bytes = b"", timeout: float = TOOL_TIMEOUT
) -> "Deferred[bytes]":
    """
    Run ``argv`` (``argv[0]`` a full path) with ``stdin``; fire with its standard output, or fail
    with ``FirewallError`` (not found, non-zero exit, killed after ``timeout`` seconds).
    """
    done: Deferred = Deferred()
    protocol = _Collect(argv, stdin, done)
    try:
        transport = reactor.spawnProcess(
            protocol, argv[0], list(argv), env=TOOL_ENVIRONMENT, childFDs={0: "w", 1: "r", 2: "r"}
        )
    except OSError as error:
        raise FirewallError(f"{argv[0]}: cannot run: {error.strerror}") from None

    def kill() -> None:
        protocol.timer = None
        try:
            transport.signalProcess("KILL")
        except Exception:  # noqa: BLE001 - it ended meanwhile
            pass

    protocol.timer = reactor.callLater(timeout, kill)
    return done
