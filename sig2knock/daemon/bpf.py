"""
The kernel-side capture filter (BPF, pcap syntax) for knocks: which packets the capture may see at
all. Only knock-shaped packets (an opening TCP SYN, or a UDP datagram not to the control port)
from the watched sources to the server's own addresses pass; with no watched source, nothing.
"""

from typing import FrozenSet, Iterable, List, Optional

from sig2knock.protocol.addresses import PROTO_TCP, PROTO_UDP, IPAddress, unmapped

# A filter that no packet passes. libpcap refuses a program its optimizer proves empty ("expression
# rejects all packets"), so this one is an unsigned comparison the optimizer leaves alone.
MATCH_NOTHING = "len < 0"

def build_filter(
    protocol: int,
    sources: Optional[FrozenSet[IPAddress]],
    destinations: FrozenSet[IPAddress],
    control_port: int,
) -> str:
    """
    The BPF filter (pcap syntax) passing the knocks of ``protocol`` (``PROTO_TCP``: a SYN without
    ACK; ``PROTO_UDP``: any datagram not to ``control_port``) from one of ``sources`` to one of
    ``destinations`` (plain sets: ``plain_set``); ``sources=None`` accepts every source (the
    fallback when the exact filter cannot be compiled). IPv4 and IPv6 addresses may be mixed.
    Without a source or a destination of some family the filter passes nothing.
    """
    if protocol not in (PROTO_TCP, PROTO_UDP):
        raise ValueError(f"knock protocol must be TCP or UDP, not {protocol}")
    if not 0 <= control_port <= 0xFFFF:
        raise ValueError(f"control port out of range: {control_port}")
    clauses: List[str] = []
    for version in (4, 6):
        family_destinations = sorted(a for a in destinations if a.version == version)
        if sources is None:
            family_sources: Optional[List[IPAddress]] = None
        else:
            family_sources = sorted(a for a in sources if a.version == version)
            if not family_sources:
                continue
        if not family_destinations:
            continue
        parts = [_shape(version, protocol, control_port)]
        if family_sources is not None:
            parts.append(_hosts("src", family_sources))
        parts.append(_hosts("dst", family_destinations))
        clauses.append("(" + " and ".join(parts) + ")")
    return " or ".join(clauses) if clauses else MATCH_NOTHING


def _shape(version: int, protocol: int, control_port: int) -> str:
    """
    The filter for a knock-shaped packet of IP ``version``.
    """
    if version == 4:
        # libpcap's tcp[...] and port tests skip IPv4 options and only match first fragments.
        if protocol == PROTO_TCP:
            return "ip and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn"
        return f"ip and udp and ip[6:2] & 0x1fff == 0 and not dst port {control_port}"
    # libpcap's tcp[tcpflags] does not work for IPv6, and its port tests assume the transport
    # header right after the fixed header. So test that layout explicitly: next header TCP/UDP at
    # ip6[6], transport header at ip6[40]. A knock behind IPv6 extension headers is not passed by
    # the kernel (clients' connect() and sendto() never add any); parse_frame would accept it.
    if protocol == PROTO_TCP:
        return "ip6 and ip6[6] == 6 and ip6[53] & 0x12 == 0x02"
    return f"ip6 and ip6[6] == 17 and ip6[42:2] != {control_port}"


def _hosts(direction: str, addresses: List[IPAddress]) -> str:
    return "(" + " or ".join(f"{direction} host {address}" for address in addresses) + ")"


def plain_set(addresses: Iterable[IPAddress]) -> FrozenSet[IPAddress]:
    """
    ``addresses`` with every IPv4-mapped IPv6 address as its IPv4 address.
    """
    return frozenset(unmapped(address) for address in addresses)
