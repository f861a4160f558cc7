"""
Knock sessions: the table that owns every session's life, from a valid P1 to its end (the states
are in ``sig2knock.daemon.session``).

A valid P1 opens a *pending* session for its user and session id, from its source address, with the
knock sequence it carries (the control channel has checked what it asks:
``sig2knock.daemon.admission``).
Knocks from that address advance it; the sequence is complete when its ports have been seen in
order, as a subsequence of whatever the address sent, so extra, duplicated or out-of-order packets
are ignored and can never reset it. A valid P2 asks for the grant: at once when the sequence is
complete, or as soon as it completes when P2 overtook the last knocks (the control socket delivers
P2 sooner than the capture delivers knocks). A repeated P2 gets the same grant, never a second port.
The grant's first connection ends the session (*used*); its deadline ends it otherwise, closing
the grant (*expired*). A session whose P1 or P2 also comes from a second address is being relayed:
it ends at once (*refused*), its grant closed, and the log says so. An ended session's id is
remembered for a while, so a late copy of its P1 cannot open it again and get a second port.

The capture only sees the knocks of *watched* sources (the addresses with a pending session), and
it can deliver a knock before the control socket delivers its P1, so knocks of watched addresses
are also kept for ``early_window`` seconds and count for a P1 that arrives after them (that
memory, and the others the table keeps of the recent past, are ``sig2knock.daemon
.session_memory``).

Everything is bounded: pending sessions per address and in total, remembered early knocks per
address and in total, and every session ends on a timer of the ``IReactorTime`` given (a ``Clock``
in tests).
"""

from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sig2knock.daemon.packets import Knock
from sig2knock.daemon.session import Session, SessionRefused, State
from sig2knock.daemon.session_memory import EarlyKnocks, EndedSessions, RecentUses
from sig2knock.daemon.waiting import cancel
from sig2knock.protocol.addresses import PROTOCOL_NAMES, IPAddress, unmapped
from sig2knock.protocol.wire import KnockRequest, SessionKeys

DEFAULT_MAX_PER_SOURCE = 8
# One key holder with many addresses (an IPv6 prefix, a botnet, a stolen key) must not fill the
# table and lock the other users out.
DEFAULT_MAX_PER_USER = 16
DEFAULT_MAX_TOTAL = 1024
# Addresses one user may have pending sessions from at once. The kernel capture filter names the
# watched addresses while there are at most 16 (capture.MAX_FILTER_SOURCES) and passes every
# knock-shaped packet beyond that; with this cap it takes six users' keys, not two, to widen it.
DEFAULT_MAX_SOURCES_PER_USER = 3
DEFAULT_EARLY_WINDOW = 2.0
# P2s waiting for one session's last knocks; more are answered by the same grant anyway.
MAX_WAITERS = 8
# P2s one session answers in all: a client sends one a round, and needs a few rounds.
MAX_CONFIRMS = 32
# How long after a sequence completes the capture filter is narrowed again: not at once, because
# the grant being opened (its firewall change runs on a worker thread) would wait for it.
NARROW_DELAY = 0.05


def _service_name(service: Any) -> str:
    return "" if service is None else str(service.name)


class SessionTable(Service):
    """
    The sessions of the daemon, and the one owner of each one's life; as a service, stopping it
    forgets them all.

    ``granter.open(source, user, door)`` opens the assigned port of a session whose sequence is
    complete and whose P2 has come (a Deferred firing with an ``OpenGrant``, or failing with
    ``SessionRefused``). ``capture(on_knock)`` makes the knock capture that delivers knocks to
    the table (``capture``, a ``KnockCapture``); the table tells it whose knocks to deliver,
    whenever that changes (``capture.watch``). ``settings`` is the ``LiveSettings`` in force:
    ``KNOCK_PROTO``, ``KNOCK_COUNT`` and ``KNOCK_TIMEOUT`` (how long a session may take from
    P1 to P2 and its last knock) are read from it for each new session.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        granter: Any,
        capture: Callable[[Callable[[Knock], None]], Any],
        settings: Any,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        max_per_user: int = DEFAULT_MAX_PER_USER,
        max_sources_per_user: int = DEFAULT_MAX_SOURCES_PER_USER,
        max_total: int = DEFAULT_MAX_TOTAL,
        early_window: float = DEFAULT_EARLY_WINDOW,
    ) -> None:
        self.clock = clock
        self.granter = granter
        self.capture = capture(self.knock)
        self.settings = settings
        self.max_per_source = max_per_source
        self.max_per_user = max_per_user
        self.max_sources_per_user = max_sources_per_user
        self.max_total = max_total
        self._sessions: Dict[Tuple[str, bytes], Session] = {}
        self._by_tag: Dict[bytes, Session] = {}
        self._ended = EndedSessions()
        self._pending: Dict[IPAddress, List[Session]] = {}
        # Every live session counts (pending, complete, granting, granted): they all hold a slot.
        self._sessions_by_user: Dict[str, int] = {}
        self._early = EarlyKnocks(early_window)
        self._watched: FrozenSet[IPAddress] = frozenset()
        self._narrowing: Any = None
        self._recent_uses = RecentUses()

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

    def open(
        self,
        source: IPAddress,
        user: str,
        request: KnockRequest,
        keys: Optional[SessionKeys] = None,
        saved: bool = True,
        service: Any = None,
    ) -> Optional[Session]:
        """
        Handle a valid P1 from ``source`` (``keys``: those its HPKE context gave) for ``service``
        (the ``HiddenService`` it asks for; ``None``: the default one): open a session and
        return it, or return ``None`` when the session exists already (a re-sent P1).
        ``saved`` is ``False`` while the P1's replay record is being written: the session then
        watches for its knocks and takes P2s, but is granted only once ``p1_saved`` is called
        with it (or ends when ``unsaved`` is). Raises ``SessionRefused``.
        """
        config = self.settings.config
        key = (user, request.session_id)
        existing = self._sessions.get(key)
        if existing is not None:
            if existing.source != source:
                self._relayed(existing, source)
                raise SessionRefused("relay", f"session of {user} from {existing.source}")
            if (existing.ports, existing.keys) != (request.ports, keys) or _service_name(
                existing.service
            ) != _service_name(service):
                raise SessionRefused("session-conflict", "session id in use with other content")
            return None
        if self._ended.source_of(self.clock.seconds(), key) is not None:
            raise SessionRefused("session-ended", "this session has ended; no second port")
        self.check_room(source, user, request.session_id)
        session = Session(
            source, user, request.session_id, request.protocol, request.ports, keys, service
        )
        session.saved = saved
        claimed = request.client_address
        session.proven = claimed is not None and unmapped(claimed) == source
        session.door = request.door and keys is not None
        self._sessions[session.key] = session
        if keys is not None:
            self._by_tag[keys.tag] = session
        self._pending.setdefault(source, []).append(session)
        self._sessions_by_user[user] = self._sessions_by_user.get(user, 0) + 1
        timeout = config.knock_timeout
        session.set_deadline(self.clock.callLater(timeout, self._knocks_overdue, session, timeout))
        self.log.info(
            "P1 accepted: {user} from {source}, {count} {protocol} knocks, service {service}",
            user=user,
            source=str(source),
            count=len(request.ports),
            protocol=PROTOCOL_NAMES[request.protocol],
            service=service.label if service is not None else "default",
        )
        for _, protocol, port in self._early.recent(self.clock.seconds(), source):
            if session.observe(protocol, port):
                break
        if session.state is State.COMPLETE:
            self._completed(session)
        self._update_watched()
        return session

    def knock(self, knock: Knock) -> None:
        """
        A knock seen by the capture (from a watched source, aimed at one of the server's
        addresses).
        """
        source, protocol, port = knock.source, knock.protocol, knock.port
        self._early.record(self.clock.seconds(), source, protocol, port)
        completed = [
            session
            for session in list(self._pending.get(source, ()))
            if session.observe(protocol, port)
        ]
        for session in completed:
            self._completed(session)
        if completed and self._narrowing is None:
            self._narrowing = self.clock.callLater(NARROW_DELAY, self._update_watched)

    def check_room(self, source: IPAddress, user: str, session_id: bytes) -> None:
        """
        Refuse (``SessionRefused``) a new session of ``user`` from ``source`` that the limits
        leave no room for: pending sessions per source, addresses with a pending session per
        user, sessions per user and in all. An existing session (a re-sent P1) always has its
        room.
        """
        if (user, session_id) in self._sessions:
            return
        if self.pending_count(source) >= self.max_per_source:
            raise SessionRefused("source-limit", f"{self.max_per_source} pending sessions")
        sources = {
            pending_source
            for pending_source, sessions in self._pending.items()
            if any(session.user == user for session in sessions)
        }
        if source not in sources and len(sources) >= self.max_sources_per_user:
            raise SessionRefused(
                "user-sources",
                f"user {user} has pending sessions from {len(sources)} addresses already",
            )
        if self._sessions_by_user.get(user, 0) >= self.max_per_user:
            raise SessionRefused("user-limit", f"{self.max_per_user} sessions of user {user}")
        if len(self._sessions) >= self.max_total:
            raise SessionRefused("table-full", f"{self.max_total} sessions")

    def keys_for(self, tag: bytes) -> Optional[SessionKeys]:
        """
        The keys of the live session whose P2 and P3 carry ``tag``, or ``None``.
        """
        session = self._by_tag.get(tag)
        return None if session is None else session.keys

    def session_for(self, tag: bytes) -> Optional[Session]:
        """
        The live session whose P2 and P3 carry ``tag``, or ``None``.
        """
        return self._by_tag.get(tag)

    def resent(self, source: IPAddress, user: str, session_id: bytes) -> bool:
        """
        An authentic P1 of ``user``'s session ``session_id`` came again from ``source`` (a
        re-sent copy, which the replay cache refuses): from another address than the session's,
        the session is being relayed, and it ends. Returns whether it is a copy of a live
        session's P1 from that session's own address: the client's next round, harmless.
        """
        session = self._sessions.get((user, session_id))
        if session is not None and session.source == source:
            return True
        if session is not None:
            self._relayed(session, source)
            return False
        ended = self._ended.source_of(self.clock.seconds(), (user, session_id))
        if ended is not None and ended != source:
            # Too late to end it (its grant may have been used): the operator learns of it.
            self.log.warn(
                "relay: session of {user} from {source} (ended) seen from {other} too",
                user=user,
                source=str(ended),
                other=str(source),
            )
        return False

    def confirm(self, source: IPAddress, tag: bytes, session_id: bytes) -> Deferred:
        """
        Handle a valid P2 of the session ``tag`` names: a Deferred that fires with the session's
        ``OpenGrant`` (at once if it exists, when the sequence completes if P2 came first) or
        fails with ``SessionRefused``.
        """
        session = self._by_tag.get(tag)
        if session is None or session.session_id != session_id:
            return fail(SessionRefused("unknown-session", "no such session"))
        user = session.user
        if session.source != source:
            self._relayed(session, source)
            return fail(SessionRefused("relay", f"session of {user} from {session.source}"))
        session.confirms += 1
        if session.confirms > MAX_CONFIRMS:
            return fail(SessionRefused("confirm-limit", f"{MAX_CONFIRMS} P2s of this session"))
        if session.state is State.GRANTED:
            self.log.info(
                "P2 repeated: {user} from {source}, same port {port}",
                user=user,
                source=str(source),
                port=session.grant.port,
            )
            return succeed(session.grant)
        if len(session.waiters) >= MAX_WAITERS:
            return fail(SessionRefused("confirm-limit", "too many P2 waiting for this session"))
        waiter: Deferred = Deferred()
        session.waiters.append(waiter)
        if session.state is State.COMPLETE and session.saved:
            self._start_grant(session)
        return waiter

    def end_users(self, users: Iterable[str]) -> None:
        """
        ``users`` were removed from the users file, or given another key (a reload): end their
        sessions now (``end_where``).
        """
        withdrawn = set(users)
        self.end_where(
            lambda session: "the user was removed from the users file or given another key"
            if session.user in withdrawn
            else None,
            "user-removed",
            "its user was removed",
        )

    def end_where(
        self,
        why: Callable[[Session], Optional[str]],
        refusal: str = "withdrawn",
        closing: str = "a reload took it away",
    ) -> None:
        """
        A reload took something away: end every session for which ``why(session)`` gives a
        reason, now, pending or granted, with its grant (``closing`` says why in the grant's
        log line) and its waiting P2s (refused with the reason ``refusal``), and log the reason.
        Connections already forwarded go on (the hidden service authenticates them).
        """
        for session in list(self._sessions.values()):
            reason = why(session)
            if reason is None:
                continue
            self._cut(session, closing, SessionRefused(refusal, f"{session.user}: {reason}"))
            self.log.warn(
                "session of {user} from {source} ended: {reason}",
                user=session.user,
                source=str(session.source),
                reason=reason,
            )

    def live(self) -> List[Session]:
        """
        The live sessions (pending, complete, granting, granted), oldest first.
        """
        return list(self._sessions.values())

    def recently_used(self) -> List[Session]:
        """
        The sessions whose grant was used and whose open time is not over yet, oldest first.
        """
        return self._recent_uses.current(self.clock.seconds())

    def p1_saved(self, session: Session) -> None:
        """
        The replay record of the P1 that opened ``session`` is durable: the session may be
        granted now (at once, if its knocks and a P2 are in), if it still lives.
        """
        if self._sessions.get(session.key) is not session or session.saved:
            return
        session.saved = True
        if session.state is State.COMPLETE and session.waiters:
            self._start_grant(session)

    def unsaved(self, session: Session) -> None:
        """
        The P1 that opened ``session`` could not be saved in the replay cache: the session ends
        before anything was granted (its P2s wait for ``p1_saved``, and are refused now), and is
        forgotten, so that a copy of that P1 may open it once the cache can be saved again.
        """
        if self._sessions.get(session.key) is not session:
            return
        self._cut(
            session, "its P1 was not saved", SessionRefused("cache-full", "P1 not saved")
        )
        self._ended.forget(session.key)

    def stopService(self) -> None:
        """
        Forget every session and cancel their timers (the daemon is stopping; the granter closes
        the grants).
        """
        super().stopService()
        for session in list(self._sessions.values()):
            self._remove(session, notify=False)
        self._early.clear()
        self._recent_uses.clear()
        self._update_watched()

    def _completed(self, session: Session) -> None:
        self._pending_remove(session)
        self.log.info(
            "knock sequence complete: {user} from {source}",
            user=session.user,
            source=str(session.source),
        )
        if session.waiters and session.saved:
            self._start_grant(session)

    def _start_grant(self, session: Session) -> None:
        session.move(State.GRANTING)
        # A session being granted does not expire: the grant's own outcome ends it (the firewall
        # tool has a time limit), so no grant can be opened for a session already forgotten.
        session.set_deadline(None)
        door = session.keys.door if session.door else None
        opening = maybeDeferred(
            self.granter.open, session.source, session.user, door, session.service
        )
        opening.addCallbacks(self._granted, self._grant_failed, (session,), None, (session,))

    def _granted(self, grant: Any, session: Session) -> None:
        if self._sessions.get(session.key) is not session:
            grant.close("the daemon stopped while it was opened")
            return
        session.granted(grant)
        remaining = max(grant.deadline - self.clock.seconds(), 0.0)
        session.set_deadline(self.clock.callLater(remaining, self._grant_overdue, session))
        grant.used.addCallback(lambda _: self._used(session))
        for waiter in session.take_waiters():
            waiter.callback(grant)

    def _grant_failed(self, failure: Failure, session: Session) -> None:
        if failure.check(SessionRefused):
            refusal = failure.value
        else:
            # Not a refusal the granter knows of: a bug, said with its traceback.
            self.log.failure(
                "cannot open a grant for {user} from {source}",
                failure,
                user=session.user,
                source=str(session.source),
            )
            # Logged above: the refusal line need not say it again at error level.
            refusal = SessionRefused("grant-failed", failure.getErrorMessage())
        self._end(session, State.REFUSED)
        for waiter in session.take_waiters():
            waiter.errback(refusal)

    def _knocks_overdue(self, session: Session, timeout: float) -> None:
        self.log.info(
            "session expired: {user} from {source} after {progress} of {count} knocks"
            " in {timeout}s",
            user=session.user,
            source=str(session.source),
            progress=session.progress,
            count=len(session.ports),
            timeout=timeout,
        )
        self._end(session, State.EXPIRED)
        for waiter in session.take_waiters():
            waiter.errback(SessionRefused("knock-timeout", "sequence not completed in time"))

    def _grant_overdue(self, session: Session) -> None:
        session.grant.expire()
        self._end(session, State.EXPIRED)

    def _used(self, session: Session) -> None:
        # The grant's one connection came: the session stops counting against its user at once
        # (a user may log in again and again; only unused grants are held against them).
        if session.state is State.GRANTED:
            self._end(session, State.USED)
            self._recent_uses.add(session)

    def _end(self, session: Session, state: State) -> None:
        session.move(state)
        self._remove(session)

    def _relayed(self, session: Session, other: IPAddress) -> None:
        if session.proven:
            # The P1 named this session's source as the client's own address: the copy from
            # ``other`` is a relay's, and is only refused; the client's session goes on.
            self.log.warn(
                "relay: a copy of the session of {user} from {source} came from {other};"
                " refused",
                user=session.user,
                source=str(session.source),
                other=str(other),
            )
            return
        self.log.warn(
            "relay: session of {user} from {source} seen from {other} too; ended, its grant"
            " closed",
            user=session.user,
            source=str(session.source),
            other=str(other),
        )
        self._cut(
            session, "relayed", SessionRefused("relay", f"session of {session.user} relayed")
        )

    def _cut(self, session: Session, why: str, refusal: SessionRefused) -> None:
        """
        End ``session`` before its time: its grant closed (``why`` goes into the grant's log
        line), the P2s waiting for it refused with ``refusal``.
        """
        if session.state is State.GRANTED:
            session.grant.close(why)
        # A grant still being opened is closed when it lands: its session is gone.
        self._end(session, State.REFUSED)
        for waiter in session.take_waiters():
            waiter.errback(refusal)

    def _pending_remove(self, session: Session) -> None:
        pending = self._pending.get(session.source)
        if pending is not None and session in pending:
            pending.remove(session)
            if not pending:
                del self._pending[session.source]

    def _remove(self, session: Session, notify: bool = True) -> None:
        session.set_deadline(None)
        self._pending_remove(session)
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
            if session.keys is not None:
                self._by_tag.pop(session.keys.tag, None)
            self._ended.remember(self.clock.seconds(), session.key, session.source)
            remaining = self._sessions_by_user[session.user] - 1
            if remaining:
                self._sessions_by_user[session.user] = remaining
            else:
                del self._sessions_by_user[session.user]
        if notify:
            self._update_watched()

    def _update_watched(self) -> None:
        cancel(self._narrowing)
        self._narrowing = None
        watched = frozenset(self._pending)
        if watched != self._watched:
            self._watched = watched
            self.capture.watch(watched)
