"""
Tests for sig2knock.daemon.bpf: the kernel capture filter, compiled by libpcap and run over pcap
files written here, passes exactly the knocks meant, for every live link type.
"""

import ipaddress
import struct
from typing import Iterable, List, Sequence

import pcapy
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import capture
from sig2knock.daemon.bpf import MATCH_NOTHING, build_filter, plain_set
from sig2knock.protocol.addresses import PROTO_TCP, PROTO_UDP, IPAddress
from sig2knock.test.frames import (
    CASES,
    CLIENT4,
    CLIENT6,
    CONTROL_PORT,
    FILE_DATALINKS,
    LIVE_DATALINKS,
    MAPPED_CLIENT4,
    OTHER4,
    SECOND_SERVER4,
    SERVER4,
    SERVER6,
    framed,
    packet4,
    packet6,
)


def knock_filter(
    protocol: int,
    sources: Iterable[IPAddress],
    destinations: Iterable[IPAddress],
    control_port: int,
) -> str:
    """
    The capture's filter for ``sources`` and ``destinations`` as it builds it (plain sets).
    """
    return build_filter(protocol, plain_set(sources), plain_set(destinations), control_port)


def write_pcap(path: str, linktype: int, frames: Sequence[bytes]) -> None:
    """Write ``frames`` as a classic (microsecond) pcap file of ``linktype``."""
    with open(path, "wb") as pcap_file:
        pcap_file.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for index, frame in enumerate(frames):
            pcap_file.write(struct.pack("=IIII", 1_800_000_000 + index, 0, len(frame), len(frame)))
            pcap_file.write(frame)


class KnockFilterTests(SynchronousTestCase):
    """
    The filter compiles for every live link type and passes exactly the knocks meant.
    """

    def passing(self, linktype: int, text: str, frames: Sequence[bytes]) -> List[int]:
        """The indexes of ``frames`` that pass ``text``, run by libpcap over a pcap file."""
        path = self.mktemp()
        write_pcap(path, linktype, frames)
        handle = pcapy.open_offline(path)
        self.addCleanup(handle.close)
        handle.setfilter(text)
        passed: List[int] = []
        while True:
            header, data = handle.next()
            if header is None:
                return passed
            passed.append(frames.index(data))

    def assertCompiles(self, text: str) -> None:
        for datalink in LIVE_DATALINKS:
            try:
                pcapy.compile(datalink, capture.SNAPLEN, text, 1, 0)
            except pcapy.PcapError as error:
                self.fail(f"{text!r} does not compile for link type {datalink}: {error}")

    def test_exactKnocksPass(self) -> None:
        sources = [CLIENT4, CLIENT6]
        destinations = [SERVER4, SERVER6]
        for protocol, column in ((PROTO_TCP, 2), (PROTO_UDP, 3)):
            text = knock_filter(protocol, sources, destinations, CONTROL_PORT)
            expected = [case[0] for case in CASES if case[column]]
            for linktype in FILE_DATALINKS:
                frames = [framed(linktype, case[1]) for case in CASES]
                passed = [CASES[index][0] for index in self.passing(linktype, text, frames)]
                self.assertEqual(passed, expected, f"protocol {protocol} link type {linktype}")

    def test_oneFamilyOnly(self) -> None:
        # Only IPv4 sources: no IPv6 packet passes, even from an IPv6 client to the server.
        text = knock_filter(PROTO_TCP, [CLIENT4], [SERVER4, SERVER6], CONTROL_PORT)
        frames = [framed(1, packet4(PROTO_TCP, 22)), framed(1, packet6(PROTO_TCP, 22))]
        self.assertEqual(self.passing(1, text, frames), [0])
        # Sources and destinations of different families: nothing can match.
        self.assertEqual(knock_filter(PROTO_TCP, [CLIENT4], [SERVER6], CONTROL_PORT), MATCH_NOTHING)

    def test_nothingToMatch(self) -> None:
        for sources, destinations in (([], [SERVER4]), ([CLIENT4], []), ([], [])):
            for protocol in (PROTO_TCP, PROTO_UDP):
                self.assertEqual(
                    knock_filter(protocol, sources, destinations, CONTROL_PORT), MATCH_NOTHING
                )

    def test_matchNothingPassesNothing(self) -> None:
        self.assertCompiles(MATCH_NOTHING)
        frames = [case[1] for case in CASES] + [b"", b"\x45", bytes(1500)]
        for linktype in FILE_DATALINKS:
            framed_frames = [framed(linktype, frame) if frame[:1] else frame for frame in frames]
            self.assertEqual(self.passing(linktype, MATCH_NOTHING, framed_frames), [])

    def test_everyFilterCompiles(self) -> None:
        many4 = [ipaddress.IPv4Address(0xC6120000 + n) for n in range(300)]
        many6 = [ipaddress.IPv6Address((0x20010DB8 << 96) + n) for n in range(300)]
        for protocol in (PROTO_TCP, PROTO_UDP):
            for sources, destinations in (
                ([CLIENT4], [SERVER4]),
                ([CLIENT6], [SERVER6]),
                ([CLIENT4, CLIENT6], [SERVER4, SERVER6]),
                ([CLIENT4, CLIENT6], [SERVER4]),
                (many4 + many6, [SERVER4, SECOND_SERVER4, SERVER6]),
                ([], []),
            ):
                self.assertCompiles(knock_filter(protocol, sources, destinations, CONTROL_PORT))

    def test_mappedAddressesArePlain(self) -> None:
        self.assertEqual(
            knock_filter(PROTO_TCP, [MAPPED_CLIENT4], [SERVER4], CONTROL_PORT),
            knock_filter(PROTO_TCP, [CLIENT4], [SERVER4], CONTROL_PORT),
        )

    def test_deterministic(self) -> None:
        first = knock_filter(PROTO_UDP, [CLIENT6, CLIENT4, OTHER4], [SERVER4], CONTROL_PORT)
        second = knock_filter(PROTO_UDP, [OTHER4, CLIENT4, CLIENT6], [SERVER4], CONTROL_PORT)
        self.assertEqual(first, second)

    def test_badArguments(self) -> None:
        self.assertRaises(ValueError, knock_filter, 1, [CLIENT4], [SERVER4], CONTROL_PORT)
        self.assertRaises(ValueError, knock_filter, PROTO_UDP, [CLIENT4], [SERVER4], 70000)
