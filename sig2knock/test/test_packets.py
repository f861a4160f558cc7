"""
Tests for sig2knock.daemon.packets: knocks decoded from frames of every supported link type.

The frames are built here with struct, field by field, so the tests do not share the parser's
idea of the layouts.
"""

import struct
from typing import List, Optional

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import packets
from sig2knock.daemon.packets import Knock, parse_frame
from sig2knock.test.frames import (
    ACK,
    ALL_DATALINKS,
    FIN,
    PSH,
    RST,
    SYN,
    V4_DESTINATION,
    V4_SOURCE,
    V6_DESTINATION,
    V6_SOURCE,
    ethernet,
    extension,
    fragment_header,
    framed,
    ipv4,
    ipv6,
    null_header,
    sll,
    sll2,
    tcp,
    udp,
)
from sig2knock.test.properties import given, settings, st


def hop_by_hop_then_fragment() -> bytes:
    """A hop-by-hop header then a fragment header (offset 0) leading to UDP: the IPv6 header's
    next-header must be 0."""
    return extension(44, 0) + fragment_header(17)


def v4_knock(protocol: int, port: int) -> Knock:
    return Knock(V4_SOURCE, V4_DESTINATION, protocol, port)


def v6_knock(protocol: int, port: int) -> Knock:
    return Knock(V6_SOURCE, V6_DESTINATION, protocol, port)


class LinkTypeTests(SynchronousTestCase):
    """
    A knock is found behind every supported link header, for both IP versions.
    """

    def assertKnock(self, datalink: int, frame: bytes, expected: Optional[Knock]) -> None:
        self.assertEqual(parse_frame(datalink, frame), expected, f"datalink {datalink}")

    def test_everyLinkTypeBothFamilies(self) -> None:
        for datalink in ALL_DATALINKS:
            self.assertKnock(datalink, framed(datalink, ipv4(6, tcp(2222))), v4_knock(6, 2222))
            self.assertKnock(datalink, framed(datalink, ipv4(17, udp(53))), v4_knock(17, 53))
            self.assertKnock(datalink, framed(datalink, ipv6(6, tcp(443))), v6_knock(6, 443))
            self.assertKnock(datalink, framed(datalink, ipv6(17, udp(9))), v6_knock(17, 9))

    def test_nullHeaderEitherByteOrder(self) -> None:
        packet = ipv4(6, tcp(1))
        for order in "<>":
            self.assertKnock(0, null_header(2, order) + packet, v4_knock(6, 1))
            for family in (10, 24, 28, 30):
                self.assertKnock(0, null_header(family, order) + ipv6(17, udp(2)), v6_knock(17, 2))

    def test_loopIsNetworkOrder(self) -> None:
        self.assertKnock(108, null_header(2, ">") + ipv4(6, tcp(1)), v4_knock(6, 1))
        self.assertKnock(108, null_header(2, "<") + ipv4(6, tcp(1)), None)

    def test_nullHeaderUnknownFamily(self) -> None:
        self.assertKnock(0, null_header(7, ">") + ipv4(6, tcp(1)), None)

    def test_familyMustMatchIpVersion(self) -> None:
        self.assertKnock(0, null_header(2, ">") + ipv6(6, tcp(1)), None)
        self.assertKnock(1, ethernet(0x0800, ipv6(6, tcp(1))), None)
        self.assertKnock(1, ethernet(0x86DD, ipv4(6, tcp(1))), None)

    def test_rawRejectsOtherVersions(self) -> None:
        packet = bytearray(ipv4(6, tcp(1)))
        packet[0] = 0x55
        for datalink in (12, 14, 101):
            self.assertKnock(datalink, bytes(packet), None)

    def test_unsupportedDatalink(self) -> None:
        self.assertKnock(105, ipv4(6, tcp(1)), None)
        self.assertKnock(9999, ethernet(0x0800, ipv4(6, tcp(1))), None)

    def test_nonIpEthertype(self) -> None:
        self.assertKnock(1, ethernet(0x0806, ipv4(6, tcp(1))), None)
        self.assertKnock(1, ethernet(0x0040, ipv4(6, tcp(1))), None)  # an 802.3 length
        self.assertKnock(113, sll(0x0806, ipv4(6, tcp(1))), None)


class VlanTests(SynchronousTestCase):
    """
    802.1Q, 802.1ad and the old 0x9100 tags are skipped, stacked too, within a bound.
    """

    def test_singleTags(self) -> None:
        for tpid in (0x8100, 0x88A8, 0x9100):
            frame = ethernet(0x0800, ipv4(17, udp(7)), vlans=[tpid])
            self.assertEqual(parse_frame(1, frame), v4_knock(17, 7))

    def test_stackedTags(self) -> None:
        frame = ethernet(0x86DD, ipv6(6, tcp(22)), vlans=[0x88A8, 0x8100])
        self.assertEqual(parse_frame(1, frame), v6_knock(6, 22))
        frame = ethernet(0x0800, ipv4(6, tcp(22)), vlans=[0x9100, 0x88A8, 0x8100])
        self.assertEqual(parse_frame(1, frame), v4_knock(6, 22))

    def test_tagsInCookedCapture(self) -> None:
        packet = struct.pack("!HH", 42, 0x0800) + ipv4(6, tcp(5))
        self.assertEqual(parse_frame(113, sll(0x8100, packet)), v4_knock(6, 5))
        self.assertEqual(parse_frame(276, sll2(0x8100, packet)), v4_knock(6, 5))

    def test_tooManyTags(self) -> None:
        allowed = ethernet(0x0800, ipv4(6, tcp(1)), vlans=[0x8100] * packets.MAX_VLAN_TAGS)
        self.assertEqual(parse_frame(1, allowed), v4_knock(6, 1))
        excessive = ethernet(0x0800, ipv4(6, tcp(1)), vlans=[0x8100] * (packets.MAX_VLAN_TAGS + 1))
        self.assertIsNone(parse_frame(1, excessive))

    def test_tagsOfNonIp(self) -> None:
        self.assertIsNone(parse_frame(1, ethernet(0x0806, bytes(40), vlans=[0x8100])))


class TcpFlagTests(SynchronousTestCase):
    """
    Only an opening SYN (SYN set, ACK clear) is a TCP knock; UDP is always one.
    """

    def test_flags(self) -> None:
        cases = [
            (SYN, True),
            (SYN | PSH, True),
            (SYN | FIN, True),  # odd, but SYN without ACK is what the kernel filter passes too
            (SYN | ACK, False),
            (ACK, False),
            (RST, False),
            (RST | ACK, False),
            (FIN | ACK, False),
            (0, False),
        ]
        for flags, knock in cases:
            for packet, expected in (
                (ipv4(6, tcp(8080, flags)), v4_knock(6, 8080)),
                (ipv6(6, tcp(8080, flags)), v6_knock(6, 8080)),
            ):
                self.assertEqual(
                    parse_frame(12, packet), expected if knock else None, f"flags {flags:#x}"
                )

    def test_udpPorts(self) -> None:
        for port in (0, 1, 1001, 65535):
            self.assertEqual(parse_frame(12, ipv4(17, udp(port))), v4_knock(17, port))

    def test_destinationPortNotSourcePort(self) -> None:
        knock = parse_frame(12, ipv4(6, tcp(22, source_port=5555)))
        self.assertEqual(knock, v4_knock(6, 22))

    def test_otherProtocols(self) -> None:
        self.assertIsNone(parse_frame(12, ipv4(1, bytes(28))))  # ICMP
        self.assertIsNone(parse_frame(12, ipv6(58, bytes(28))))  # ICMPv6
        self.assertIsNone(parse_frame(12, ipv4(132, tcp(1))))  # SCTP


class Ipv4Tests(SynchronousTestCase):
    """
    IPv4 header details: options, fragments, lengths.
    """

    def test_options(self) -> None:
        for words in range(1, 11):
            packet = ipv4(6, tcp(1234), options=b"\x01" * (4 * words))
            self.assertEqual(parse_frame(12, packet), v4_knock(6, 1234))

    def test_badHeaderLength(self) -> None:
        packet = bytearray(ipv4(6, tcp(1234)))
        for ihl in range(0, 5):
            packet[0] = 0x40 | ihl
            self.assertIsNone(parse_frame(12, bytes(packet)))

    def test_firstFragmentAccepted(self) -> None:
        more_fragments = 0x2000
        self.assertEqual(
            parse_frame(12, ipv4(6, tcp(80), fragment=more_fragments)), v4_knock(6, 80)
        )
        dont_fragment = 0x4000
        self.assertEqual(
            parse_frame(12, ipv4(17, udp(80), fragment=dont_fragment)), v4_knock(17, 80)
        )

    def test_laterFragmentsIgnored(self) -> None:
        for fragment in (1, 0x2001, 0x1FFF, 185):
            self.assertIsNone(parse_frame(12, ipv4(6, tcp(80), fragment=fragment)))

    def test_ethernetPaddingIgnored(self) -> None:
        frame = ethernet(0x0800, ipv4(6, tcp(80))) + bytes(6)
        self.assertEqual(parse_frame(1, frame), v4_knock(6, 80))

    def test_totalLengthTooShortForTransport(self) -> None:
        packet = bytearray(ipv4(6, tcp(80)))
        struct.pack_into("!H", packet, 2, 30)  # says 10 bytes of TCP: not a whole header
        self.assertIsNone(parse_frame(12, bytes(packet)))
        struct.pack_into("!H", packet, 2, 10)  # shorter than its own header
        self.assertIsNone(parse_frame(12, bytes(packet)))


class Ipv6Tests(SynchronousTestCase):
    """
    IPv6 extension headers are walked, within a bound; non-first fragments are ignored.
    """

    def test_extensionHeaders(self) -> None:
        packet = ipv6(0, self.chain([0, 43, 60], 6) + tcp(22))
        self.assertEqual(parse_frame(12, packet), v6_knock(6, 22))

    def chain(self, kinds: List[int], final: int) -> bytes:
        """Extension headers of ``kinds`` (the IPv6 header names the first), then ``final``."""
        headers = b""
        for index, kind in enumerate(kinds):
            following = kinds[index + 1] if index + 1 < len(kinds) else final
            if kind == 44:
                headers += fragment_header(following)
            else:
                headers += extension(following, index % 3)
        return headers

    def test_eachExtensionHeaderKind(self) -> None:
        for kind in (0, 43, 44, 60):
            for protocol, payload, port in ((6, tcp(22), 22), (17, udp(53), 53)):
                packet = ipv6(kind, self.chain([kind], protocol) + payload)
                self.assertEqual(parse_frame(12, packet), v6_knock(protocol, port), f"kind {kind}")

    def test_longChain(self) -> None:
        kinds = [0, 60, 43, 44, 60]
        packet = ipv6(kinds[0], self.chain(kinds, 17) + udp(7))
        self.assertEqual(parse_frame(12, packet), v6_knock(17, 7))

    def test_chainBound(self) -> None:
        kinds = [60] * packets.MAX_EXTENSION_HEADERS
        packet = ipv6(60, self.chain(kinds, 6) + tcp(1))
        self.assertEqual(parse_frame(12, packet), v6_knock(6, 1))
        kinds = [60] * (packets.MAX_EXTENSION_HEADERS + 1)
        packet = ipv6(60, self.chain(kinds, 6) + tcp(1))
        self.assertIsNone(parse_frame(12, packet))

    def test_laterFragmentIgnored(self) -> None:
        packet = ipv6(44, fragment_header(6, offset=3) + tcp(22))
        self.assertIsNone(parse_frame(12, packet))
        packet = ipv6(44, fragment_header(17, offset=0, more=True) + udp(53))
        self.assertEqual(parse_frame(12, packet), v6_knock(17, 53))

    def test_unknownHeaderStops(self) -> None:
        for kind in (50, 51, 59, 135, 253):  # ESP, AH, no next header, mobility, experimental
            self.assertIsNone(parse_frame(12, ipv6(kind, extension(6) + tcp(22))))

    def test_payloadLengthBoundsTheHeaders(self) -> None:
        packet = bytearray(ipv6(6, tcp(22)))
        struct.pack_into("!H", packet, 4, 19)
        self.assertIsNone(parse_frame(12, bytes(packet)))

    def test_jumboPayloadLength(self) -> None:
        packet = bytearray(ipv6(0, self.chain([0], 6) + tcp(22)))
        struct.pack_into("!H", packet, 4, 0)
        self.assertEqual(parse_frame(12, bytes(packet)), v6_knock(6, 22))


class RobustnessTests(SynchronousTestCase):
    """
    Truncated or random frames give ``None``, never an exception.
    """

    def frames(self):
        for datalink in ALL_DATALINKS:
            for packet in (
                ipv4(6, tcp(22), options=b"\x01" * 8),
                ipv4(17, udp(53, b"")),
                ipv6(6, tcp(22)),
                ipv6(0, hop_by_hop_then_fragment() + udp(53, b"")),
            ):
                yield datalink, framed(datalink, packet)
        yield 1, ethernet(0x0800, ipv4(6, tcp(22)), vlans=[0x88A8, 0x8100])

    def test_truncatedAtEveryLength(self) -> None:
        for datalink, frame in self.frames():
            self.assertIsNotNone(parse_frame(datalink, frame))
            for length in range(len(frame)):
                self.assertIsNone(
                    parse_frame(datalink, frame[:length]), f"datalink {datalink} length {length}"
                )

    @settings(max_examples=300, deadline=None)
    @given(
        datalink=st.sampled_from(ALL_DATALINKS + (2, 105, 127, 65535)),
        data=st.binary(max_size=200),
    )
    def test_randomBytes(self, datalink: int, data: bytes) -> None:
        result = parse_frame(datalink, data)
        self.assertTrue(result is None or isinstance(result, Knock))

    @settings(max_examples=300, deadline=None)
    @given(
        datalink=st.sampled_from(ALL_DATALINKS),
        version=st.sampled_from([4, 6]),
        tail=st.binary(max_size=120),
    )
    def test_randomPayloadBehindValidLinkHeader(
        self, datalink: int, version: int, tail: bytes
    ) -> None:
        # Random bytes that at least get past the link layer, to reach the IP and transport code.
        first = bytes([(version << 4) | (tail[0] & 0x0F if tail else 5)])
        packet = first + tail[1:]
        if version == 4 and len(packet) >= 10:
            packet = packet[:9] + bytes([6 if len(packet) % 2 else 17]) + packet[10:]
        result = parse_frame(datalink, framed(datalink, packet))
        self.assertTrue(result is None or isinstance(result, Knock))
