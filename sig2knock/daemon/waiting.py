"""
Two small things every timer and every Deferred the daemon waits on needs, written once.
"""

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall


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
