"""
Kernel settings the firewall backends touch besides their rules, written directly under /proc
(a line each, in the daemon's own network namespace), and the ``xt_recent`` lists they read.
"""

import errno
import ipaddress
import re
from typing import Set

from twisted.logger import Logger

from sig2knock.firewall import FirewallError, FirewallSettings
from sig2knock.protocol.addresses import IPAddress

log = Logger()

# Where the kernel's settings are (the tests point this at a directory of their own).
PROC = "/proc"


def write_route_localnet(interface: str, value: str) -> None:
    """
    Set ``net.ipv4.conf.INTERFACE.route_localnet`` to ``value`` ("1" lets DNAT'ed grants reach
    127.0.0.0/8 from that interface; the backends install a rule that drops every other such
    packet first). Raises ``FirewallError``.
    """
    path = f"{PROC}/sys/net/ipv4/conf/{interface}/route_localnet"
    try:
        with open(path, "w", encoding="ascii") as setting:
            setting.write(value + "\n")
    except OSError as error:
        raise FirewallError(
            f"cannot set {path} to {value} (FORWARD_MODE = nat to loopback): {error.strerror}"
        ) from None
    log.info("route_localnet = {value} on {interface}", value=value, interface=interface)


def settle_route_localnet(settings: FirewallSettings, earlier_nat: bool) -> None:
    """
    After the daemon's rules are in place: turn ``route_localnet`` on when ``settings`` need it
    (the rules guarding it now stand), or off when an earlier nat run (``earlier_nat``) may have
    turned it on and these settings do not need it.
    """
    if settings.needs_route_localnet:
        write_route_localnet(settings.interface, "1")
    elif earlier_nat and settings.interface:
        write_route_localnet(settings.interface, "0")


def forget_recent(name: str, address: IPAddress) -> None:
    """
    Remove ``address`` from the ``xt_recent`` list ``name`` (an earlier grant of the same port
    to the same address must not count as this one's used connection). A list that does not
    exist yet has nothing to forget.
    """
    path = f"{PROC}/net/xt_recent/{name}"
    try:
        with open(path, "w", encoding="ascii") as recent:
            recent.write(f"-{ipaddress.ip_address(str(address))}\n")
    except OSError as error:
        if error.errno not in (errno.ENOENT, errno.ESRCH):
            raise FirewallError(f"cannot clear {path}: {error.strerror}") from None


def recent_addresses(name: str) -> Set[IPAddress]:
    """
    The addresses the ``xt_recent`` list ``name`` holds (none when it does not exist yet).
    """
    path = f"{PROC}/net/xt_recent/{name}"
    try:
        with open(path, encoding="ascii") as recent:
            text = recent.read()
    except FileNotFoundError:
        return set()
    except OSError as error:
        raise FirewallError(f"cannot read {path}: {error.strerror}") from None
    found: Set[IPAddress] = set()
    for match in re.finditer(r"src=(\S+)", text):
        try:
            found.add(ipaddress.ip_address(match.group(1)))
        except ValueError:
            continue
    return found
