"""
Firewall backends: the host shows no open port until a knock succeeds.

``IFirewall`` is what the daemon asks of a backend; ``sig2knock.firewall.nftables``,
``.iptables``, ``.pktfilter`` and ``.null`` implement it, and ``sig2knock.firewall.registry`` picks
one from ``FIREWALL``. Every call that touches the system runs the tool without blocking the
reactor and fails with ``FirewallError``; the daemon then refuses the session (fail closed).
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from sig2knock.protocol.addresses import IPAddress


# FIREWALL_POLICY: ``ports`` gates the assigned ports only, ``lockdown`` drops every new inbound
# connection that is not let in.
POLICIES = ("ports", "lockdown")


class FirewallError(Exception):
    """
    The firewall refused a change or its tool could not be run; the message says which and why.
    """


@dataclass(frozen=True)
class FirewallSettings:
    """
    What every backend needs to know: the control port (always open), the range of assigned
    ports (gated), the policy (``ports`` or ``lockdown``), for backends that name it the
    interface, and with services in ``FORWARD_MODE = nat`` the first one's target (its address
    family is the one the kernel forwards) and the other ones' addresses.
    """

    control_port: int
    port_range: Tuple[int, int]
    policy: str = "ports"
    interface: str = ""
    # Services with FORWARD_MODE = nat: the first one's target (its address family is the one
    # the kernel's rules forward; None: no nat rules at all), and the other ones' addresses.
    nat_to: Optional[Tuple[IPAddress, int]] = None
    nat_also: Tuple[IPAddress, ...] = ()

    @property
    def nat_loopback(self) -> bool:
        """
        Whether some grants may be DNAT'ed to loopback.
        """
        if self.nat_to is None:
            return False
        return any(address.is_loopback for address in (self.nat_to[0], *self.nat_also))

    @property
    def needs_route_localnet(self) -> bool:
        """
        Whether grants are DNAT'ed to loopback from ``interface`` (the kernel must then route
        127.0.0.0/8 from it: ``route_localnet``).
        """
        return self.nat_loopback and bool(self.interface)


def check_nat_target(settings: FirewallSettings, target: Optional[Tuple[IPAddress, int]],
                     backend: str) -> None:
    """
    Refuse (``FirewallError``) a grant to forward in the kernel (``target``) when the rules in
    place have no nat: no service had ``FORWARD_MODE = nat`` when they were installed.
    """
    if target is not None and settings.nat_to is None:
        raise FirewallError(f"{backend}: a grant to forward in the kernel, but the rules in place"
                            " have no nat (no service had FORWARD_MODE = nat at start)")


class IFirewall(Interface):
    """
    A firewall the daemon drives. Every method returns a ``Deferred`` that fails with
    ``FirewallError`` when the system refused the change.
    """

    name = Attribute("The backend's name, as in the FIREWALL setting.")

    def start() -> Deferred:
        """
        Install the daemon's rules, replacing whatever an earlier run left (after a crash too).
        """

    def grant(
        source: IPAddress,
        port: int,
        deadline: float,
        target: Optional[Tuple[IPAddress, int]] = None,
    ) -> Deferred:
        """
        Let ``source`` open new connections to TCP ``port`` until ``deadline`` (seconds since the
        epoch). The kernel ends the grant at the deadline even if the daemon is gone.
        Established connections outlive it. With a ``target`` (a service with
        ``FORWARD_MODE = nat``) the kernel forwards the connection there; without one, the
        daemon's listener takes it. Backends without nat never get a target.
        """

    def revoke(
        source: IPAddress, port: int, target: Optional[Tuple[IPAddress, int]] = None
    ) -> Deferred:
        """
        End the grant of ``source`` to ``port`` now (it is used, or its time is over); never
        touches any other grant. Revoking a grant that is already gone is not an error.
        ``target`` is the one the grant was given.
        """

    def stop() -> Deferred:
        """
        The daemon is stopping: remove every grant and leave the host closed (the base rules
        stay).
        """

    def flush() -> Deferred:
        """
        Remove everything the daemon ever installed (``sig2knockd --flush``).
        """


class IWallClockGrants(Interface):
    """
    A firewall whose grants end at wall-clock times (iptables' ``--datestop``): a backward step
    of the clock would keep them open longer, so the daemon tells it of every step it sees.
    """

    def clock_stepped_back(seconds: float) -> Deferred:
        """
        The wall clock went back by ``seconds`` while grants were open: make each end as many
        seconds earlier on the new clock (so at its time), and end those whose time is over.
        """


class IGrantUse(Interface):
    """
    A firewall that takes a grant's one connection in the kernel (``FORWARD_MODE = nat``) and
    can say afterwards which grants were used, for the live view (``sig2knockd --status``).
    """

    def used_grants(grants: Sequence[Tuple[IPAddress, int]]) -> Deferred:
        """
        Of the open ``grants`` (source, port), the set of those whose one connection the kernel
        has taken.
        """
