"""
The live view (``sig2knockd --status``): the daemon answers each connection to the UNIX socket
``STATE_DIR/status.sock`` with one JSON document of its pending sessions and open grants, then
closes it. Nothing else is read or done on the socket.

Only root and the daemon's own user can reach it: ``STATE_DIR`` is mode 0700 and owned by the
daemon's user, the socket is mode 0600, and the daemon also checks the peer's credentials
(``SO_PEERCRED``) and answers nobody else. It is never on the network.
"""

import errno
import ipaddress
import json
import os
import socket
import stat
import struct
from typing import Any, Callable, Dict, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from sig2knock.daemon.session import Session, State

SOCKET_NAME = "status.sock"
FORMAT_VERSION = 1
# Seconds before its deadline a grant may be gone from the kernel by its own timeout (nftables
# ends it GRANT_MARGIN_MS early), rounded up.
KERNEL_MARGIN = 0.2

log = Logger()


def socket_path(state_dir: str) -> str:
    """
    Where the daemon of ``STATE_DIR`` ``state_dir`` answers ``sig2knockd --status``.
    """
    return os.path.join(state_dir, SOCKET_NAME)


def session_entry(session: Session, now: float, nat: bool) -> Dict[str, Any]:
    """
    One session as the live view shows it: ``user``, ``source``, ``service`` (``""`` for the
    default one), ``state``, the assigned ``port`` (``None`` before the grant), ``time_left``
    until its knock deadline or the end of its grant's open time (seconds, or ``None``) and
    ``used``: whether its grant's one connection came (``None`` in nat mode, where the kernel
    takes it unseen: ``with_kernel_view`` asks the kernel).
    """
    grant = session.grant
    if session.state is State.USED:
        deadline: Optional[float] = grant.deadline
    else:
        deadline = session.deadline
    used: Optional[bool] = session.state is State.USED
    if session.state is State.GRANTED and nat:
        used = None
    return {
        "user": session.user,
        "source": str(session.source),
        "service": session.service.name if session.service is not None else "",
        "state": session.state.value,
        "port": grant.port if grant is not None else None,
        "time_left": None if deadline is None else round(max(deadline - now, 0.0), 1),
        "used": used,
    }


def status_document(sessions: Any, config: Any, now: float) -> Dict[str, Any]:
    """
    The live view of the session table ``sessions`` under ``config``: the daemon's process
    id, configuration and forward mode, the time, and an entry per live session and per used
    grant whose open time is not over (``session_entry``).
    """
    def entry(session: Session) -> Dict[str, Any]:
        if session.service is None:  # the default service: the gateway's mode
            return session_entry(session, now, config.forward_mode == "nat")
        return session_entry(session, now, session.service.nat_in(config))

    entries = [entry(session) for session in sessions.live() + sessions.recently_used()]
    return {
        "version": FORMAT_VERSION,
        "pid": os.getpid(),
        "config": config.path,
        "forward_mode": config.forward_mode,
        "time": round(now, 3),
        "sessions": entries,
    }


def with_kernel_view(document: Dict[str, Any], firewall: Any) -> Deferred:
    """
    ``document`` with ``used`` filled in, where the daemon cannot see it (nat mode), from what
    the kernel holds (``firewall.used_grants``); when the firewall cannot tell, those stay
    ``None``.
    """
    # A grant in its last moments may have left the kernel's set by its own timeout, a little
    # before the daemon's deadline: that is no sign of use, so it stays unknown.
    unknown = [
        entry for entry in document["sessions"]
        if entry["used"] is None and (entry["time_left"] or 0) >= KERNEL_MARGIN
    ]
    if not unknown:
        return succeed(document)
    grants = [(ipaddress.ip_address(entry["source"]), entry["port"]) for entry in unknown]
    asking = maybeDeferred(firewall.used_grants, grants)

    def fill(used: Any) -> Dict[str, Any]:
        for entry, grant in zip(unknown, grants):
            entry["used"] = grant in used
        return document

    def cannot(failure: Failure) -> Dict[str, Any]:
        log.warn("live view: which nat grants were used is unknown: {error}",
                 error=failure.getErrorMessage())
        return document

    return asking.addCallbacks(fill, cannot)


def peer_uid(transport: Any) -> Optional[int]:
    """
    The user id of the process at the other end of a UNIX socket (``SO_PEERCRED``), or
    ``None`` when the system does not say.
    """
    try:
        handle = transport.getHandle()
        credentials = handle.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
    except (AttributeError, OSError):
        return None
    _, uid, _ = struct.unpack("3i", credentials)
    return int(uid)


class StatusProtocol(Protocol):
    """
    One question: answer with the document and close; a peer that is neither root nor the
    daemon's user gets nothing.
    """

    log = Logger()
    lost = False

    def connectionMade(self) -> None:
        """
        Check who asks, then write the live view and close.
        """
        factory = self.factory
        uid = factory.peer_uid(self.transport)
        if uid not in (0, factory.own_uid):
            self.log.warn("status asked by uid {uid}: refused (root or the daemon's user only)",
                          uid=uid)
            self.transport.loseConnection()
            return
        maybeDeferred(factory.document).addCallbacks(self._answer, self._failed)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """
        The asker is gone: a view still being made is not written.
        """
        self.lost = True

    def _answer(self, document: Dict[str, Any]) -> None:
        if self.transport is None or self.lost:
            return
        self.transport.write(json.dumps(document, sort_keys=True).encode("utf-8") + b"\n")
        self.transport.loseConnection()

    def _failed(self, failure: Failure) -> None:
        self.log.failure("live view: cannot answer", failure)
        if self.transport is not None:
            self.transport.loseConnection()


class StatusFactory(Factory):
    """
    Builds a ``StatusProtocol`` per connection; ``document()`` gives the live view (a dict, or
    a Deferred firing with one),
    ``peer_uid(transport)`` who is asking, ``own_uid`` the daemon's user.
    """

    protocol = StatusProtocol
    noisy = False

    def __init__(
        self,
        document: Callable[[], Dict[str, Any]],
        peer_uid: Callable[[Any], Optional[int]] = peer_uid,
        own_uid: Optional[int] = None,
    ) -> None:
        self.document = document
        self.peer_uid = peer_uid
        self.own_uid = os.getuid() if own_uid is None else own_uid


class StatusService(Service):
    """
    Listens on ``path`` (mode 0600) while the daemon runs. A socket left by a daemon that died
    is replaced; one a running daemon answers on is left alone. When it cannot listen, the
    daemon goes on without the live view and says why.
    """

    log = Logger()

    def __init__(self, reactor: Any, path: str, factory: StatusFactory) -> None:
        self.reactor = reactor
        self.path = path
        self.factory = factory
        self.port: Any = None

    def startService(self) -> None:
        """
        Listen, unless another daemon answers on the path already.
        """
        super().startService()
        try:
            self._remove_stale()
            self.port = self.reactor.listenUNIX(self.path, self.factory, backlog=8, mode=0o600)
        except (CannotListenError, OSError) as error:
            self.log.error(
                "no live view: cannot listen on {path}: {error} (sig2knockd --status will say"
                " that no daemon runs)",
                path=self.path,
                error=str(getattr(error, "socketError", None) or error),
            )

    def _remove_stale(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise OSError(errno.EEXIST, f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(self.path)
        except ConnectionRefusedError:
            os.unlink(self.path)  # nobody listens: left by a daemon that died
            return
        except OSError as error:  # busy, or not ours to ask: someone may be listening
            raise OSError(error.errno, f"cannot tell whether another daemon answers on it:"
                          f" {error.strerror}") from None
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, "another daemon answers on it (the same STATE_DIR?)")

    def stopService(self) -> Any:
        """
        Stop listening (the socket file goes with it).
        """
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        return maybeDeferred(port.stopListening)
