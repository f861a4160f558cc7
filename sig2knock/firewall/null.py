"""
``FIREWALL = none``: no firewall. The assigned port's own listener is the gate: it admits only
the knocking address, once.
"""

from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from sig2knock.firewall import FirewallSettings, IFirewall
from sig2knock.protocol.addresses import IPAddress


@implementer(IFirewall)
class NoFirewall:
    """
    The backend that changes nothing. It takes the arguments every backend takes and ignores
    them.
    """

    name = "none"

    def __init__(self, reactor: Any = None, settings: Optional[FirewallSettings] = None) -> None:
        pass

    @staticmethod
    def available() -> bool:
        """
        Nothing to install: always.
        """
        return True

    def start(self) -> Deferred:
        """
        Nothing to install.
        """
        return succeed(None)

    def grant(
        self, source: IPAddress, port: int, deadline: float, target: Optional[Any] = None
    ) -> Deferred:
        """
        Nothing to open: the listener checks the address.
        """
        return succeed(None)

    def revoke(self, source: IPAddress, port: int, target: Optional[Any] = None) -> Deferred:
        """
        Nothing to close.
        """
        return succeed(None)

    def stop(self) -> Deferred:
        """
        Nothing to remove.
        """
        return succeed(None)

    def flush(self) -> Deferred:
        """
        Nothing was installed.
        """
        return succeed(None)
