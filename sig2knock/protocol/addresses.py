"""
Addresses and protocol numbers, as client and daemon both read them: an IP address of either
family, the fold of IPv4-mapped IPv6 to IPv4 (what the packets of such a peer carry), and the
transport protocols knocks use.

This module is imported by the client: it must not import Twisted.
"""

import ipaddress
from typing import Optional, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

PROTO_TCP = 6
PROTO_UDP = 17
PROTOCOL_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp"}
PROTOCOLS_BY_NAME = {name: number for number, name in PROTOCOL_NAMES.items()}


def unmapped(address: IPAddress) -> IPAddress:
    """
    ``address``, or the IPv4 address an IPv4-mapped IPv6 address stands for (what the packets
    of such a peer carry, and how it is judged: loopback, unspecified).
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_address(text: str) -> Optional[IPAddress]:
    """
    The address written ``text`` (a socket's host, a firewall's argument): any ``%zone``
    dropped, IPv4-mapped IPv6 folded to IPv4; ``None`` when it is not an IP address.
    """
    try:
        return unmapped(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None
