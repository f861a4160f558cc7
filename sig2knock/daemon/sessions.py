"""
Knock sessions: from a valid P1 to a granted port.

A valid P1 opens a *pending* session for its source address with the knock sequence it carries.
Knocks from that address advance it; the sequence is complete when its ports have been seen in
order, as a subsequence of whatever the address sent, so extra, duplicated or out-of-order packets
are ignored and can never reset it. A valid P2 asks for the grant: at once when the sequence is
complete, or as soon as it completes when P2 overtook the last knocks (the control socket delivers
P2 sooner than the capture delivers knocks). A repeated P2 gets the same grant, never a second port.

The capture only sees the knocks of *watched* sources (the addresses with a pending session), and
it can deliver a knock before the control socket delivers its P1, so knocks of watched addresses
are also kept for ``early_window`` seconds and count for a P1 that arrives after them.

Everything is bounded: pending sessions per address and in total, remembered early knocks per
address and in total, and every session ends on a timer of the ``IReactorTime`` given (a ``Clock``
in tests).
"""

import collections
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, FrozenSet, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sig2knock.protocol.wire import KnockRequest, Refusal
from sig2knock.protocol.addresses import IPAddress, PROTOCOL_NAMES

PENDING = "pending"
COMPLETE = "complete"
GRANTING = "granting"
GRANTED = "granted"

DEFAULT_MAX_PER_SOURCE = 8
# One key holder with many addresses (an IPv6 prefix, a botnet, a stolen key) must not fill the
# table and lock the other users out.
DEFAULT_MAX_PER_USER = 16
DEFAULT_MAX_TOTAL = 1024
DEFAULT_EARLY_WINDOW = 2.0
# Remembered early knocks: per address, and addresses at once.
EARLY_KNOCKS_PER_SOURCE = 128
EARLY_SOURCES = 1024
# P2s waiting for one session's last knocks; more are answered by the same grant anyway.
MAX_WAITERS = 8
# How long after a sequence completes the capture filter is narrowed again: not at once, because
# the grant being opened (its firewall change runs on a worker thread) would wait for it.
NARROW_DELAY = 0.05


class SessionRefused(Refusal):
    """
    A P1 or P2 that was authentic but is refused by the session rules. ``reason`` is short and
    fixed (for counters and logs); ``detail`` adds what is useful to an operator.
    """


@dataclass(frozen=True)
class GrantInfo:
    """
    What a granted session was given: ``port`` open to its address until ``deadline`` (seconds
    since the epoch).
    """

    port: int
    deadline: float


@dataclass(eq=False)
class Session:
    """
    One knock session: who opened it, the sequence it waits for, and how far it got.
    """

    source: IPAddress
    user: str
    session_id: bytes
    protocol: int
    ports: Tuple[int, ...]
    state: str = PENDING
    progress: int = 0
    grant: Optional[GrantInfo] = None
    waiters: List[Deferred] = field(default_factory=list)
    timer: Optional[IDelayedCall] = None

    @property
    def key(self) -> Tuple[IPAddress, bytes]:
        """
        How the table finds this session: its source address and session id.
        """
        return (self.source, self.session_id)

    def observe(self, protocol: int, port: int) -> bool:
        """
        Take one knock into account; return whether it completed the sequence now.
        """
        if self.state != PENDING or protocol != self.protocol:
            return False
        if port == self.ports[self.progress]:
            self.progress += 1
            if self.progress == len(self.ports):
                self.state = COMPLETE
                return True
        return False


Granter = Callable[[Session], "Deferred[GrantInfo]"]


class SessionTable:
    """
    The sessions of the daemon.

    ``grant`` opens the assigned port for a session whose sequence is complete and P2 received
    (a Deferred firing with a ``GrantInfo``; a failure refuses the session). ``on_watch_change`` is
    called with the set of addresses whose knocks must be captured whenever it changes.
    ``knock_timeout`` is how long a session may take from P1 to P2 and its last knock;
    ``hold_time`` how long a granted session is remembered to answer a repeated P2 (the grant's
    open time).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        grant: Granter,
        on_watch_change: Callable[[FrozenSet[IPAddress]], None],
        knock_protocol: int,
        min_knocks: int,
        knock_timeout: float,
        hold_time: float,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        max_per_user: int = DEFAULT_MAX_PER_USER,
        max_total: int = DEFAULT_MAX_TOTAL,
        early_window: float = DEFAULT_EARLY_WINDOW,
    ) -> None:
        self.clock = clock
        self._grant = grant
        self._on_watch_change = on_watch_change
        self.knock_protocol = knock_protocol
        self.min_knocks = min_knocks
        self.knock_timeout = knock_timeout
        self.hold_time = hold_time
        self.max_per_source = max_per_source
        self.max_per_user = max_per_user
        self.max_total = max_total
        self.early_window = early_window
        self._sessions: Dict[Tuple[IPAddress, bytes], Session] = {}
        self._pending: Dict[IPAddress, List[Session]] = {}
        # Every live session counts (pending, complete, granting, granted): they all hold a slot.
        self._sessions_by_user: Dict[str, int] = {}
        self._early: "collections.OrderedDict[IPAddress, Deque[Tuple[float, int, int]]]" = (
            collections.OrderedDict()
        )
        self._watched: FrozenSet[IPAddress] = frozenset()
        self._narrowing: Any = None

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def watched(self) -> FrozenSet[IPAddress]:
        """
        The addresses whose knocks the capture must deliver: those with a pending session.
        """
        return self._watched

    def pending_count(self, source: Optional[IPAddress] = None) -> int:
        """
        Pending sessions of ``source``, or of every address.
        """
        if source is not None:
            return len(self._pending.get(source, ()))
        return sum(len(sessions) for sessions in self._pending.values())

    def open(self, source: IPAddress, user: str, request: KnockRequest) -> Optional[Session]:
        """
        Handle a valid P1 from ``source``: open a session and return it, or return ``None`` when
        the session exists already (a re-sent P1). Raises ``SessionRefused``.
        """
        existing = self._sessions.get((source, request.session_id))
        if existing is not None:
            if existing.user != user or existing.ports != request.ports:
                raise SessionRefused("session-conflict", "session id in use with other content")
            return None
        if request.protocol != self.knock_protocol:
            raise SessionRefused(
                "knock-protocol",
                f"{PROTOCOL_NAMES[request.protocol]} knocks, the server expects"
                f" {PROTOCOL_NAMES[self.knock_protocol]} (KNOCK_PROTO)",
            )
        if len(request.ports) < self.min_knocks:
            raise SessionRefused(
                "knock-count",
                f"{len(request.ports)} knocks, the server requires {self.min_knocks} (KNOCK_COUNT)",
            )
        if self.pending_count(source) >= self.max_per_source:
            raise SessionRefused("source-limit", f"{self.max_per_source} pending sessions")
        if self._sessions_by_user.get(user, 0) >= self.max_per_user:
            raise SessionRefused("user-limit", f"{self.max_per_user} sessions of user {user}")
        if len(self._sessions) >= self.max_total:
            raise SessionRefused("table-full", f"{self.max_total} sessions")
        session = Session(source, user, request.session_id, request.protocol, request.ports)
        self._sessions[session.key] = session
        self._pending.setdefault(source, []).append(session)
        self._sessions_by_user[user] = self._sessions_by_user.get(user, 0) + 1
        session.timer = self.clock.callLater(self.knock_timeout, self._expire, session)
        self.log.info(
            "P1 accepted: {user} from {source}, {count} {protocol} knocks",
            user=user,
            source=str(source),
            count=len(request.ports),
            protocol=PROTOCOL_NAMES[request.protocol],
        )
        for _, protocol, port in self._recent_knocks(source):
            if session.observe(protocol, port):
                break
        if session.state == COMPLETE:
            self._completed(session)
        self._update_watched()
        return session

    def knock(self, source: IPAddress, protocol: int, port: int) -> None:
        """
        A knock from ``source`` seen by the capture (aimed at one of the server's addresses).
        """
        now = self.clock.seconds()
        early = self._early.get(source)
        if early is None:
            if len(self._early) >= EARLY_SOURCES:
                self._early.popitem(last=False)
            early = self._early[source] = collections.deque(maxlen=EARLY_KNOCKS_PER_SOURCE)
        else:
            self._early.move_to_end(source)
        early.append((now, protocol, port))
        completed = [
            session
            for session in list(self._pending.get(source, ()))
            if session.observe(protocol, port)
        ]
        for session in completed:
            self._completed(session)
        if completed and self._narrowing is None:
            self._narrowing = self.clock.callLater(NARROW_DELAY, self._update_watched)

    def confirm(self, source: IPAddress, user: str, session_id: bytes) -> "Deferred[GrantInfo]":
        """
        Handle a valid P2: a Deferred that fires with the session's grant (at once if it exists,
        when the sequence completes if P2 came first) or fails with ``SessionRefused``.
        """
        session = self._sessions.get((source, session_id))
        if session is None or session.user != user:
            return fail(SessionRefused("unknown-session", "no such session from this address"))
        if session.state == GRANTED:
            assert session.grant is not None
            self.log.info(
                "P2 repeated: {user} from {source}, same port {port}",
                user=user,
                source=str(source),
                port=session.grant.port,
            )
            return succeed(session.grant)
        if len(session.waiters) >= MAX_WAITERS:
            return fail(SessionRefused("confirm-limit", "too many P2 waiting for this session"))
        waiter: "Deferred[GrantInfo]" = Deferred()
        session.waiters.append(waiter)
        if session.state == COMPLETE:
            self._start_grant(session)
        return waiter

    def used(self, session: Session) -> None:
        """
        ``session``'s grant has had its one connection: forget the session now rather than at
        the end of ``hold_time``, so that it stops counting against its user's session limit
        (a user may log in again and again; only unused grants are held against them).
        """
        if self._sessions.get(session.key) is session and session.state == GRANTED:
            self._remove(session)

    def stop(self) -> None:
        """
        Forget every session and cancel their timers (the daemon is stopping).
        """
        for session in list(self._sessions.values()):
            self._remove(session, notify=False)
        self._early.clear()
        self._update_watched()

    def _recent_knocks(self, source: IPAddress) -> List[Tuple[float, int, int]]:
        early = self._early.get(source)
        if not early:
            return []
        since = self.clock.seconds() - self.early_window
        return [entry for entry in early if entry[0] >= since]

    def _completed(self, session: Session) -> None:
        self._pending_remove(session)
        self.log.info(
            "knock sequence complete: {user} from {source}",
            user=session.user,
            source=str(session.source),
        )
        if session.waiters:
            self._start_grant(session)

    def _start_grant(self, session: Session) -> None:
        session.state = GRANTING
        # A session being granted does not expire: the grant's own outcome ends it (the firewall
        # tool has a time limit), so no grant can be opened for a session already forgotten.
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None
        try:
            granting = self._grant(session)
        except Exception as error:  # noqa: BLE001 - a broken granter refuses, never crashes
            granting = fail(error)
        granting.addCallbacks(self._granted, self._grant_failed, (session,), None, (session,))

    def _granted(self, grant: GrantInfo, session: Session) -> None:
        if self._sessions.get(session.key) is not session:
            return  # the daemon stopped meanwhile
        session.state = GRANTED
        session.grant = grant
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        remaining = max(grant.deadline - self.clock.seconds(), 0.0)
        session.timer = self.clock.callLater(min(remaining, self.hold_time), self._forget, session)
        waiters, session.waiters = session.waiters, []
        for waiter in waiters:
            waiter.callback(grant)

    def _grant_failed(self, failure, session: Session) -> None:  # type: ignore[no-untyped-def]
        self.log.failure(
            "grant refused for {user} from {source}",
            failure,
            user=session.user,
            source=str(session.source),
        )
        waiters, session.waiters = session.waiters, []
        self._remove(session)
        refusal = SessionRefused("grant-failed", failure.getErrorMessage())
        for waiter in waiters:
            waiter.errback(refusal)

    def _expire(self, session: Session) -> None:
        session.timer = None
        self.log.info(
            "session expired: {user} from {source} after {progress} of {count} knocks"
            " in {timeout}s",
            user=session.user,
            source=str(session.source),
            progress=session.progress,
            count=len(session.ports),
            timeout=self.knock_timeout,
        )
        waiters, session.waiters = session.waiters, []
        self._remove(session)
        for waiter in waiters:
            waiter.errback(SessionRefused("knock-timeout", "sequence not completed in time"))

    def _forget(self, session: Session) -> None:
        session.timer = None
        self._remove(session)

    def _pending_remove(self, session: Session) -> None:
        pending = self._pending.get(session.source)
        if pending is not None and session in pending:
            pending.remove(session)
            if not pending:
                del self._pending[session.source]

    def _remove(self, session: Session, notify: bool = True) -> None:
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None
        self._pending_remove(session)
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
            remaining = self._sessions_by_user[session.user] - 1
            if remaining:
                self._sessions_by_user[session.user] = remaining
            else:
                del self._sessions_by_user[session.user]
        if notify:
            self._update_watched()

    def _update_watched(self) -> None:
        if self._narrowing is not None:
            if self._narrowing.active():
                self._narrowing.cancel()
            self._narrowing = None
        watched = frozenset(self._pending)
        if watched != self._watched:
            self._watched = watched
            self._on_watch_change(watched)

