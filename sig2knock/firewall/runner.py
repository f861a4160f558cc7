"""
Running a firewall tool from the reactor: ``spawnProcess``, standard input given, output
collected, a time limit, and one ``FirewallError`` for every way it can fail.
"""

import os
import shutil
from typing import Any, List, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from sig2knock.firewall import FirewallError

TOOL_TIMEOUT = 10.0
# The tools' own messages, untranslated, so errors can be matched and searched for.
TOOL_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def find_tool(name: str) -> Optional[str]:
    """
    The full path of the firewall tool ``name``, or ``None`` when this host has none.
    """
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name, path=TOOL_ENVIRONMENT["PATH"] + ":" + os.environ.get("PATH", ""))


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
        message = b"".join(self.err).decode("utf-8", "replace").strip()
        message = " ".join(message.split())[:500] or "no message"
        if reason.check(ProcessTerminated) and reason.value.exitCode is not None:
            status = f"exit status {reason.value.exitCode}"
        else:
            status = "killed (time limit)" if self.timer is None else "killed by a signal"
        self.done.errback(FirewallError(f"{' '.join(self.argv)}: {status}: {message}"))


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
