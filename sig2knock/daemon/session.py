"""
One knock session and the states of its life, from a valid P1 to its end:

    pending ──(last knock seen)──> complete ──(P2)──> granting ──(port open)──> granted
       │                              │                   │                      │
       └──── expired (KNOCK_TIMEOUT) ─┘                   └── refused            ├── used
                                                                                 └── expired

and from pending, complete or granted to refused when the session is seen relayed (its P1 or
P2 from a second address).

(a P2 that arrives before the last knock waits in ``pending``; the drawing is
``docs/server-statemachine.dot``). ``used``, ``expired`` and ``refused`` are ends. A session has one
timer at a time, its deadline: the knock deadline while pending or complete, none while the grant
is being opened (the firewall tool has its own time limit), the grant's deadline once granted.
``sig2knock.daemon.sessions.SessionTable`` is the one owner that moves sessions along. In nat mode
the kernel takes a grant's connection unseen, so a used grant ends as ``expired`` too; a daemon
that stops drops every session, in any state, without a move.
"""

import enum
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from sig2knock.daemon.waiting import cancel
from sig2knock.protocol.addresses import IPAddress
from sig2knock.protocol.wire import Refusal


class State(enum.Enum):
    """
    Where a session is in its life.
    """

    PENDING = "pending"
    COMPLETE = "complete"
    GRANTING = "granting"
    GRANTED = "granted"
    USED = "used"
    EXPIRED = "expired"
    REFUSED = "refused"


# Which state may follow which; the rest are ends.
TRANSITIONS: Dict[State, FrozenSet[State]] = {
    State.PENDING: frozenset({State.COMPLETE, State.EXPIRED, State.REFUSED}),
    State.COMPLETE: frozenset({State.GRANTING, State.EXPIRED, State.REFUSED}),
    State.GRANTING: frozenset({State.GRANTED, State.REFUSED}),
    State.GRANTED: frozenset({State.USED, State.EXPIRED, State.REFUSED}),
    State.USED: frozenset(),
    State.EXPIRED: frozenset(),
    State.REFUSED: frozenset(),
}


class SessionRefused(Refusal):
    """
    A P1 or P2 that was authentic but is refused by the session rules, or a grant that could not
    be opened. ``reason`` is short and fixed (for counters and logs); ``detail`` adds what is
    useful to an operator; ``severe`` marks what an operator must look into (the firewall
    refused a change), as opposed to what a client caused (a limit, a timeout).
    """

    def __init__(self, reason: str, detail: str = "", severe: bool = False) -> None:
        super().__init__(reason, detail)
        self.severe = severe


class Session:
    """
    One knock session: who opened it from where, for which service (a ``HiddenService`` of
    ``sig2knock.daemon.catalog``, ``None`` for the default one), the sequence it waits for, how
    far it got, the keys its P1 gave (``SessionKeys``), and its grant once it has one (an
    ``OpenGrant`` of ``sig2knock.daemon.grants``).
    """

    def __init__(
        self,
        source: IPAddress,
        user: str,
        session_id: bytes,
        protocol: int,
        ports: Tuple[int, ...],
        keys: Any = None,
        service: Any = None,
    ) -> None:
        self.source = source
        self.user = user
        self.service = service
        self.session_id = session_id
        self.keys = keys
        # Whether the P1 named ``source`` itself as the client's address: then a copy of this
        # session's messages from elsewhere is a relay's, not the client's.
        self.proven = False
        # Whether the P1 said the client will show the door secret on the assigned port.
        self.door = False
        self.confirms = 0  # P2s taken for this session so far
        # Whether its P1's replay record is durable: nothing is granted before (SessionTable).
        self.saved = True
        self.protocol = protocol
        self.ports = ports
        self.state = State.PENDING
        self.progress = 0
        self.grant: Optional[Any] = None
        # P2s waiting for the grant: each fires with it, or fails with SessionRefused.
        self.waiters: List[Deferred] = []
        self._timer: Optional[IDelayedCall] = None

    @property
    def key(self) -> Tuple[str, bytes]:
        """
        How the table finds this session: its user and session id (wherever it comes from, so
        that the same session from a second address is seen).
        """
        return (self.user, self.session_id)

    def move(self, state: State) -> None:
        """
        Go to ``state``; a move its life does not allow is a programming error.
        """
        if state not in TRANSITIONS[self.state]:
            raise ValueError(f"a {self.state.value} session cannot become {state.value}")
        self.state = state

    def observe(self, protocol: int, port: int) -> bool:
        """
        Take one knock into account; return whether it completed the sequence now.
        """
        if self.state is not State.PENDING or protocol != self.protocol:
            return False
        if port == self.ports[self.progress]:
            self.progress += 1
            if self.progress == len(self.ports):
                self.move(State.COMPLETE)
                return True
        return False

    def granted(self, grant: Any) -> None:
        """
        The session's grant is open: it is ``granted`` until its connection comes or its
        deadline passes.
        """
        self.move(State.GRANTED)
        self.grant = grant

    @property
    def deadline(self) -> Optional[float]:
        """
        When its one timer fires (the knock deadline, or the grant's), or ``None``.
        """
        if self._timer is None or not self._timer.active():
            return None
        return float(self._timer.getTime())

    def set_deadline(self, timer: Optional[IDelayedCall]) -> None:
        """
        Replace the session's one timer with ``timer`` (or none).
        """
        cancel(self._timer)
        self._timer = timer

    def take_waiters(self) -> List[Deferred]:
        """
        The waiting P2s, which the caller answers; none are left waiting.
        """
        waiters, self.waiters = self.waiters, []
        return waiters
