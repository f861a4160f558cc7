"""
Small things every timer, every Deferred the daemon waits on and every service that owns others
needs, written once.
"""

from typing import Any, Optional

from twisted.application.service import IServiceCollection
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger


def cancel(call: Optional[IDelayedCall]) -> None:
    """
    Cancel ``call`` if it is still to run (a timer that ran or was cancelled is left alone).
    """
    if call is not None and call.active():
        call.cancel()


def settled(waited: Deferred) -> Deferred:
    """
    A Deferred that fires (with ``None``) when ``waited`` does, whatever its result, leaving
    that result to ``waited``'s own callbacks.
    """
    done: Deferred = Deferred()

    def passed(result: Any) -> Any:
        done.callback(None)
        return result

    waited.addBoth(passed)
    return done


def stop_children(parent: IServiceCollection, log: Logger) -> Deferred:
    """
    Stop the children of ``parent`` as ``MultiService`` does (each stop begun in reverse order,
    none waiting for another), and fire once all have ended; a child whose stop fails is logged
    on ``log``, where ``MultiService`` would leave the failure unhandled.
    """
    stopping = []
    for child in reversed(list(parent)):
        stopped = maybeDeferred(child.stopService)
        stopped.addErrback(
            lambda failure, part: log.failure("{part} failed to stop", failure, part=part),
            type(child).__name__,
        )
        stopping.append(stopped)
    return DeferredList(stopping, consumeErrors=True)
