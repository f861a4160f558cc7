"""
Knocks from captured frames: the link, IP and transport headers of one frame, decoded just far
enough to say who knocked on which port.

A knock is a TCP segment with SYN set and ACK clear (what ``connect()`` sends to a closed port) or
any UDP datagram. ``parse_frame`` understands the link types a Linux capture hands us (Ethernet
with stacked VLAN tags, Linux cooked v1 and v2, BSD loopback, raw IP), IPv4 with options and IPv6
with the common extension headers. Whatever the bytes (truncated by the snap length, garbage,
hostile) it returns ``None`` rather than raising: the capture feeds it everything that passed the
kernel filter.

This module must not import Twisted.
"""

import ipaddress
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

from sig2knock.protocol.addresses import PROTO_TCP, PROTO_UDP, IPAddress

# Link types (pcap DLT_* / LINKTYPE_* values).
DLT_NULL = 0
DLT_EN10MB = 1
DLT_RAW = 12  # DLT_RAW on most systems
DLT_RAW_BSD = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW = 101  # what pcap files store for raw IP
DLT_LOOP = 108
DLT_LINUX_SLL = 113
DLT_LINUX_SLL2 = 276
SUPPORTED_DATALINKS = frozenset(
    (
        DLT_NULL,
        DLT_EN10MB,
        DLT_RAW,
        DLT_RAW_BSD,
        LINKTYPE_RAW,
        DLT_LOOP,
        DLT_LINUX_SLL,
        DLT_LINUX_SLL2,
    )
)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_ETHERTYPES = frozenset((0x8100, 0x88A8, 0x9100))
MAX_VLAN_TAGS = 8

# Address families in DLT_NULL / DLT_LOOP headers: IPv4 is 2 everywhere, IPv6 differs by system
# (Linux 10, NetBSD/OpenBSD 24, FreeBSD 28, macOS 30).
AF_INET = 2
AF_INET6_VALUES = frozenset((10, 24, 28, 30))

TCP_SYN = 0x02
TCP_ACK = 0x10

IPV6_HOP_BY_HOP = 0
IPV6_ROUTING = 43
IPV6_FRAGMENT = 44
IPV6_DESTINATION_OPTIONS = 60
MAX_EXTENSION_HEADERS = 8

_ETHERNET_HEADER = 14
_SLL_HEADER = 16
_SLL2_HEADER = 20
_NULL_HEADER = 4
_IPV4_MIN_HEADER = 20
_IPV6_HEADER = 40
_TCP_MIN_HEADER = 20
_UDP_HEADER = 8

_U16 = struct.Struct("!H")
_U32_BIG = struct.Struct(">I")
_U32_LITTLE = struct.Struct("<I")
_PORTS = struct.Struct("!HH")


@dataclass(frozen=True)
class Knock:
    """
    One knock seen on the wire: ``source`` sent a knock-shaped packet of ``protocol`` (``PROTO_TCP``
    or ``PROTO_UDP``) to ``destination`` port ``port``.
    """

    source: IPAddress
    destination: IPAddress
    protocol: int
    port: int


def parse_frame(datalink: int, data: bytes) -> Optional[Knock]:
    """
    The knock carried by ``data``, a frame captured on a link of type ``datalink``, or ``None`` when
    it is not a knock (another protocol, a SYN-ACK, a non-first fragment, truncated, unsupported
    link type, garbage). Never raises.
    """
    try:
        located = _network_layer(datalink, data)
        if located is None:
            return None
        version, offset = located
        if version == 4:
            return _ipv4(data, offset)
        return _ipv6(data, offset)
    except (struct.error, IndexError, ValueError):  # pragma: no cover - bounds are checked first
        return None


def _network_layer(datalink: int, data: bytes) -> Optional[Tuple[int, int]]:
    """
    ``(IP version, offset of the IP header)`` for the frame, or ``None`` if it carries no IP.
    """
    if datalink == DLT_EN10MB:
        if len(data) < _ETHERNET_HEADER:
            return None
        return _by_ethertype(data, _U16.unpack_from(data, 12)[0], _ETHERNET_HEADER)
    if datalink == DLT_LINUX_SLL:
        if len(data) < _SLL_HEADER:
            return None
        return _by_ethertype(data, _U16.unpack_from(data, 14)[0], _SLL_HEADER)
    if datalink == DLT_LINUX_SLL2:
        if len(data) < _SLL2_HEADER:
            return None
        return _by_ethertype(data, _U16.unpack_from(data, 0)[0], _SLL2_HEADER)
    if datalink in (DLT_NULL, DLT_LOOP):
        if len(data) < _NULL_HEADER:
            return None
        if datalink == DLT_LOOP:
            families = (_U32_BIG.unpack_from(data, 0)[0],)
        else:  # host byte order of the capturing machine, which need not be ours
            families = (_U32_BIG.unpack_from(data, 0)[0], _U32_LITTLE.unpack_from(data, 0)[0])
        if AF_INET in families:
            return _checked_version(data, _NULL_HEADER, 4)
        if AF_INET6_VALUES.intersection(families):
            return _checked_version(data, _NULL_HEADER, 6)
        return None
    if datalink in (DLT_RAW, DLT_RAW_BSD, LINKTYPE_RAW):
        if not data:
            return None
        version = data[0] >> 4
        return (version, 0) if version in (4, 6) else None
    return None


def _by_ethertype(data: bytes, ethertype: int, offset: int) -> Optional[Tuple[int, int]]:
    """
    Skip VLAN tags (802.1Q, 802.1ad, stacked) after ``ethertype`` at ``offset``; locate IP.
    """
    for _ in range(MAX_VLAN_TAGS + 1):
        if ethertype not in VLAN_ETHERTYPES:
            break
        if len(data) < offset + 4:
            return None
        ethertype = _U16.unpack_from(data, offset + 2)[0]
        offset += 4
    else:
        return None
    if ethertype == ETHERTYPE_IPV4:
        return _checked_version(data, offset, 4)
    if ethertype == ETHERTYPE_IPV6:
        return _checked_version(data, offset, 6)
    return None


def _checked_version(data: bytes, offset: int, version: int) -> Optional[Tuple[int, int]]:
    """
    ``(version, offset)`` if the IP header at ``offset`` says it is that version.
    """
    if len(data) <= offset or data[offset] >> 4 != version:
        return None
    return version, offset


def _ipv4(data: bytes, offset: int) -> Optional[Knock]:
    if len(data) < offset + _IPV4_MIN_HEADER:
        return None
    header_length = (data[offset] & 0x0F) * 4
    if header_length < _IPV4_MIN_HEADER or len(data) < offset + header_length:
        return None
    total_length = _U16.unpack_from(data, offset + 2)[0]
    if total_length < header_length:
        return None
    if _U16.unpack_from(data, offset + 6)[0] & 0x1FFF:  # a non-first fragment: no ports in it
        return None
    # Link-layer padding (short Ethernet frames) is not part of the datagram.
    end = min(len(data), offset + total_length)
    source = ipaddress.IPv4Address(data[offset + 12 : offset + 16])
    destination = ipaddress.IPv4Address(data[offset + 16 : offset + 20])
    return _transport(data, offset + header_length, end, data[offset + 9], source, destination)


def _ipv6(data: bytes, offset: int) -> Optional[Knock]:
    if len(data) < offset + _IPV6_HEADER:
        return None
    payload_length = _U16.unpack_from(data, offset + 4)[0]
    # A payload length of 0 means a jumbogram (length in a hop-by-hop option): take the capture's.
    end = (
        len(data) if payload_length == 0 else min(len(data), offset + _IPV6_HEADER + payload_length)
    )
    next_header = data[offset + 6]
    source = ipaddress.IPv6Address(data[offset + 8 : offset + 24])
    destination = ipaddress.IPv6Address(data[offset + 24 : offset + 40])
    position = offset + _IPV6_HEADER
    for _ in range(MAX_EXTENSION_HEADERS + 1):
        if next_header in (PROTO_TCP, PROTO_UDP):
            return _transport(data, position, end, next_header, source, destination)
        if next_header == IPV6_FRAGMENT:
            if end < position + 8:
                return None
            if _U16.unpack_from(data, position + 2)[0] & 0xFFF8:  # non-first fragment
                return None
            next_header = data[position]
            position += 8
        elif next_header in (IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_DESTINATION_OPTIONS):
            if end < position + 2:
                return None
            next_header, length = data[position], (data[position + 1] + 1) * 8
            position += length
        else:  # no next header, ESP, AH, ICMPv6, anything unknown: not a knock we can read
            return None
    return None


def _transport(
    data: bytes, offset: int, end: int, protocol: int, source: IPAddress, destination: IPAddress
) -> Optional[Knock]:
    """
    The knock in the transport header at ``offset`` (the datagram ends at ``end``), if any.
    """
    if protocol == PROTO_TCP:
        if end < offset + _TCP_MIN_HEADER:
            return None
        flags = data[offset + 13]
        if flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
            return None
    elif protocol == PROTO_UDP:
        if end < offset + _UDP_HEADER:
            return None
    else:
        return None
    port = _PORTS.unpack_from(data, offset)[1]
    return Knock(source=source, destination=destination, protocol=protocol, port=port)
