"""
The UDP control channel: receives P1 and P2, answers a granted P2 with P3, and nothing else.

Checks run cheapest first (``sig2knock.protocol.wire.open_request``: size, version, type, then the
rate limits, then HPKE; then the replay cache; a P2 is looked up by its session tag before any
cryptography), so junk costs a few comparisons and a flood of valid-looking datagrams costs at most
the rate limits' worth of cryptography. Every refusal
is counted and reported with the source address and a fixed reason (``RefusalLog``) and is never
answered.
"""

import collections
import ipaddress
from typing import Any, Callable, Hashable, Optional, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from sig2knock.daemon.admission import check_request
from sig2knock.daemon.ratelimit import RateLimiter
from sig2knock.daemon.refusals import RefusalLog
from sig2knock.daemon.replay import REASON_REPLAY, ReplayCache
from sig2knock.daemon.session import SessionRefused
from sig2knock.daemon.sessions import SessionTable
from sig2knock.protocol import addresses, keys, wire
from sig2knock.protocol.cipher import SHA256
from sig2knock.protocol.addresses import IPAddress, parse_address
from sig2knock.protocol.wire import MessageRejected, SessionKeys

EXPECTED_TYPES = (wire.TYPE_KNOCK_REQUEST, wire.TYPE_CONFIRM)
# How long a source that sent an authentic message skips the global rate budget, and how many
# such sources are remembered.
TRUST_TIME = 3600.0
MAX_TRUSTED = 4096


def rate_key(source: addresses.IPAddress) -> Hashable:
    """
    What the per-source rate limit counts: an IPv4 address, or an IPv6 /64 (one host's share:
    its addresses are free for it to choose).
    """
    if source.version == 6:
        return ipaddress.ip_network(f"{source}/64", strict=False)
    return source


class ControlProtocol(DatagramProtocol):
    """
    The daemon's side of the control protocol.

    ``identity`` is the server's key pair (``ServerIdentity``); ``users`` returns the users in
    force (a callable, so a reload can swap them); ``settings`` is the ``LiveSettings`` whose
    configuration says what a P1 may ask; ``sessions`` is the session table;
    ``replay_cache`` remembers accepted P1s; ``limiter`` decides which datagrams may cost
    cryptography; ``refusals`` counts and logs what is refused.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        *,
        identity: Any,
        users: Callable[[], Any],
        settings: Any,
        sessions: SessionTable,
        replay_cache: ReplayCache,
        max_skew: float,
        limiter: Optional[RateLimiter] = None,
        user_limiter: Optional[RateLimiter] = None,
        refusals: Optional[RefusalLog] = None,
    ) -> None:
        self.clock = clock
        self.identity = identity
        self.users = users
        self.settings = settings
        self.sessions = sessions
        self.replay_cache = replay_cache
        self.max_skew = max_skew
        self.limiter = limiter if limiter is not None else RateLimiter(clock)
        self.user_limiter = user_limiter if user_limiter is not None else user_rate_limiter(clock)
        self.refusals = refusals if refusals is not None else RefusalLog()
        # An unknown user's request is opened against this key, so that it costs what a known
        # user's does: the time of a refusal does not tell which names exist.
        self.decoy = keys.generate().public_key()  # type: ignore[attr-defined]
        # Sources that sent an authentic message lately: their datagrams skip the global budget,
        # so a flood from elsewhere cannot starve returning users.
        self.trusted: "collections.OrderedDict[Hashable, float]" = collections.OrderedDict()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        Handle one datagram from ``addr`` (host, port[, flow, scope]).
        """
        host, port = addr[0], addr[1]
        source = parse_address(host)
        if source is None:
            return
        if wire.message_type(datagram) == wire.TYPE_CONFIRM:
            self._confirm(datagram, source, addr)
        else:
            self._request(datagram, source, port)

    def _request(self, datagram: bytes, source: IPAddress, port: int) -> None:
        now = self.clock.seconds()
        received = None
        try:
            received = wire.open_request(
                datagram,
                identity=self.identity.private,
                users=self.users().public_key,
                decoy=self.decoy,
                now=now,
                max_skew=self.max_skew,
                # Only for datagrams past the cheap checks: junk costs no key computation.
                admit=lambda: self._admit(source, now),
            )
            request = received.request
            # A replay is refused before it can spend anything of its user's allowance.
            self.replay_cache.check(received.keys.replay_id, request.timestamp_ms, now)
            # What the P1 asks, and whether there is room for its session, are checked before
            # it is remembered: a copy refused for its address (a relay's) or for a limit must
            # not make the client's own copy, or its next round, a replay.
            service = check_request(self.settings.config, source, received.user, request)
            self.sessions.check_room(source, received.user, request.session_id)
            # Per user, and only once authenticated and fresh (so nobody can spend another's
            # allowance): one key holder with many addresses cannot fill the replay cache.
            self._limit_user(received.user)
            saved = self.replay_cache.remember(received.keys.replay_id, request.timestamp_ms, now)
            self._trust(rate_key(source), now)
        except SessionRefused as refusal:
            self._session_refused(source, port, received.user, refusal)
            return
        except MessageRejected as rejection:
            if received is not None and rejection.reason == REASON_REPLAY:
                # A copy of a P1 already taken: from another address, the session is relayed;
                # from its own while the session lives, it is the client's next round, and no
                # refusal to report (it would use up the log's detail for nothing).
                if self.sessions.resent(source, received.user, received.request.session_id):
                    self.log.debug(
                        "P1 repeated: {user} from {source} (the client's next round)",
                        user=received.user,
                        source=str(source),
                    )
                    return
            self._refused(source, port, rejection.reason, rejection.detail)
            return
        # The session opens at once, so that the knocks sent right behind the P1 count, and is
        # granted only once the P1's record is durable. A P1 that opened nothing (its session
        # exists, or was refused) only has its refusal to report if the record is not saved.
        try:
            opened = self.sessions.open(source, received.user, request, received.keys,
                                        saved=False, service=service)
        except SessionRefused as refusal:
            self._session_refused(source, port, received.user, refusal)
            opened = None
        if opened is None:
            saved.addErrback(self._notSaved, source, port)
            return
        saved.addCallbacks(
            lambda _: self.sessions.p1_saved(opened),
            self._requestNotSaved,
            errbackArgs=(source, port, opened),
        )

    def _requestNotSaved(self, failure: Failure, source: IPAddress, port: int,
                         session: Any) -> None:
        self.sessions.unsaved(session)
        self._notSaved(failure, source, port)

    def _notSaved(self, failure: Failure, source: IPAddress, port: int) -> None:
        failure.trap(MessageRejected)
        self._refused(source, port, failure.value.reason, failure.value.detail)

    def _confirm(self, datagram: bytes, source: IPAddress, addr: Tuple[Any, ...]) -> None:
        port = addr[1]
        now = self.clock.seconds()
        user = "?"
        try:
            session_keys, confirm, nonce = wire.decode_confirm(
                datagram, find=self.sessions.keys_for, now=now, max_skew=self.max_skew
            )
            session = self.sessions.session_for(session_keys.tag)
            if session is not None:
                user = session.user
            if session is not None and session.source == source:
                # Like a P1: the source's and the user's limits, then the replay cache (a
                # retrying client sends a new P2), keyed by session so that nobody can spend
                # another session's nonces. A copy from elsewhere is the session table's to
                # refuse, before anything is remembered of it.
                if not self._admit(source, now):
                    raise MessageRejected(wire.REASON_RATE, f"user {user}: over the rate limit")
                self._limit_user(user)
                replay_id = SHA256.new(session_keys.tag + nonce).digest()[: wire.REPLAY_ID_SIZE]
                self.replay_cache.check(replay_id, confirm.timestamp_ms, now)
                # In memory only: a P2 acts on its live session alone, and no session outlives
                # the daemon, so a P2 replayed after a restart finds none (``unknown-session``).
                self.replay_cache.remember_in_memory(replay_id, confirm.timestamp_ms, now)
        except MessageRejected as rejection:
            self._refused(source, port, rejection.reason, rejection.detail)
            return
        confirming = self.sessions.confirm(source, session_keys.tag, confirm.session_id)
        confirming.addCallbacks(
            self._sendGrant,
            self._confirmRefused,
            callbackArgs=(session_keys, confirm.session_id, user, source, addr),
            errbackArgs=(source, port, user),
        )

    def _admit(self, source: IPAddress, now: float) -> bool:
        """
        Whether ``source``'s datagram may cost cryptography: its share, and the global budget
        unless it sent an authentic message lately.
        """
        key = rate_key(source)
        return self.limiter.allow(key, use_global=not self._is_trusted(key, now))

    def _limit_user(self, user: str) -> None:
        if not self.user_limiter.allow(user):
            raise MessageRejected(wire.REASON_RATE, f"user {user}: over the per-user rate limit")

    def _is_trusted(self, key: Hashable, now: float) -> bool:
        since = self.trusted.get(key)
        return since is not None and now - since < TRUST_TIME

    def _trust(self, key: Hashable, now: float) -> None:
        self.trusted[key] = now
        self.trusted.move_to_end(key)
        while len(self.trusted) > MAX_TRUSTED:
            self.trusted.popitem(last=False)

    def _sendGrant(
        self,
        grant: Any,
        session_keys: SessionKeys,
        session_id: bytes,
        user: str,
        source: IPAddress,
        addr: Tuple[Any, ...],
    ) -> None:
        reply = wire.Grant(
            session_id,
            wire.now_ms(self.clock.seconds()),
            grant.port,
            wire.now_ms(grant.deadline),
            source,
            grant.door_required,
        )
        if self.transport is None:
            return
        self.transport.write(wire.encode_grant(reply, session_keys), addr)
        self.log.info(
            "P3 sent: port {port} to {user} at {source}",
            port=grant.port,
            user=user,
            source=str(source),
        )

    def _confirmRefused(self, failure: Failure, source: object, port: int, user: str) -> None:
        failure.trap(SessionRefused)
        self._session_refused(source, port, user, failure.value)

    def _session_refused(
        self, source: object, port: int, user: str, refusal: SessionRefused
    ) -> None:
        self._refused(source, port, refusal.reason, f"user {user}: {refusal.detail}",
                      refusal.severe)

    def _refused(
        self, source: object, port: int, reason: str, detail: str, severe: bool = False
    ) -> None:
        self.refusals.refused(str(source), port, reason, detail, severe)


def user_rate_limiter(clock: IReactorTime) -> RateLimiter:
    """
    The per-user limit on authenticated messages: like the per-source one, with no global cap of
    its own.
    """
    return RateLimiter(clock, global_rate=None)
