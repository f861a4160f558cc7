"""
Tests for sig2knock.daemon.netif: default route, rtnetlink address dumps (built here byte by byte),
the real loopback addresses, and the address watcher driven through a socket pair.
"""

import ipaddress
import socket
import struct
from typing import Dict, List, Optional

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sig2knock.daemon import netif
from sig2knock.daemon.netif import (
    AddressWatcher,
    InterfaceError,
    addresses,
    default_interface_from,
    interface_exists,
    parse_address_dump,
)


ROUTE_HEADER = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
)


def route_line(name: str, destination: str, flags: str, metric: int, mask: str) -> str:
    return f"{name}\t{destination}\t010200C0\t{flags}\t0\t0\t{metric}\t{mask}\t0\t0\t0\n"


def ipv6_route_line(destination: str, prefix: str, metric: str, flags: str, name: str) -> str:
    zero = "0" * 32
    return f"{destination} {prefix} {zero} 00 {zero} {metric} 00000001 00000000 {flags} {name}\n"


def attribute(kind: int, value: bytes) -> bytes:
    """An rtattr, padded to 4 bytes."""
    data = struct.pack("=HH", 4 + len(value), kind) + value
    return data + bytes(-len(data) % 4)


def message(kind: int, payload: bytes, sequence: int = 1) -> bytes:
    """A netlink message, padded to 4 bytes."""
    data = struct.pack("=IHHII", 16 + len(payload), kind, 2, sequence, 4242) + payload
    return data + bytes(-len(data) % 4)


def new_address(family: int, index: int, attributes: Dict[int, bytes], sequence: int = 1) -> bytes:
    """An RTM_NEWADDR message with ``attributes`` (IFA_* -> value) and an IFA_LABEL."""
    payload = struct.pack("=BBBBI", family, 24, 0, 0, index)
    for kind, value in attributes.items():
        payload += attribute(kind, value)
    payload += attribute(3, b"eth0\x00")  # IFA_LABEL, ignored
    return message(netif.RTM_NEWADDR, payload, sequence)


def done(sequence: int = 1) -> bytes:
    return message(netif.NLMSG_DONE, struct.pack("=i", 0), sequence)


V4 = ipaddress.IPv4Address("198.18.0.1")
PEER4 = ipaddress.IPv4Address("198.18.0.9")
V6 = ipaddress.IPv6Address("2001:db8::1")
LINK_LOCAL = ipaddress.IPv6Address("fe80::1")


class DefaultRouteTests(SynchronousTestCase):
    """
    The default route's interface, from the text of /proc/net/route and /proc/net/ipv6_route.
    """

    def test_ipv4Default(self) -> None:
        text = (
            ROUTE_HEADER
            + route_line("eth1", "000200C0", "0001", 0, "00FFFFFF")
            + route_line("eth0", "00000000", "0003", 0, "00000000")
        )
        self.assertEqual(default_interface_from(text), "eth0")

    def test_lowestMetricWins(self) -> None:
        text = (
            ROUTE_HEADER
            + route_line("wlan0", "00000000", "0003", 600, "00000000")
            + route_line("eth0", "00000000", "0003", 100, "00000000")
        )
        self.assertEqual(default_interface_from(text), "eth0")

    def test_skipsDownRejectAndLoopback(self) -> None:
        text = (
            ROUTE_HEADER
            + route_line("eth0", "00000000", "0002", 0, "00000000")  # not up
            + route_line("eth1", "00000000", "0201", 0, "00000000")  # reject
            + route_line("lo", "00000000", "0001", 0, "00000000")
        )
        self.assertIsNone(default_interface_from(text))

    def test_ipv6Fallback(self) -> None:
        ipv6_text = (
            ipv6_route_line("fd00" + "0" * 28, "40", "00000100", "00000001", "eth0")
            + ipv6_route_line("0" * 32, "00", "ffffffff", "00200200", "lo")
            + ipv6_route_line("0" * 32, "00", "00000400", "00000003", "wg0")
        )
        self.assertEqual(default_interface_from(ROUTE_HEADER, ipv6_text), "wg0")

    def test_ipv4Preferred(self) -> None:
        text = ROUTE_HEADER + route_line("eth0", "00000000", "0003", 0, "00000000")
        ipv6_text = ipv6_route_line("0" * 32, "00", "00000001", "00000003", "eth1")
        self.assertEqual(default_interface_from(text, ipv6_text), "eth0")

    def test_none(self) -> None:
        self.assertIsNone(default_interface_from(ROUTE_HEADER, ""))
        self.assertIsNone(default_interface_from("", "garbage\nline\n"))

    def test_garbageLinesIgnored(self) -> None:
        text = (
            ROUTE_HEADER
            + "eth9 zz 0 0003 0 0 0 00000000\n"
            + route_line("eth0", "00000000", "0003", 0, "00000000")
        )
        self.assertEqual(default_interface_from(text), "eth0")

    def test_noRouteRaises(self) -> None:
        self.patch(netif, "default_interface_from", lambda *texts: None)
        error = self.assertRaises(InterfaceError, netif.default_route_interface)
        self.assertIn("no default route", str(error))


class AddressDumpTests(SynchronousTestCase):
    """
    Parsing of RTM_GETADDR dump datagrams.
    """

    def test_addresses(self) -> None:
        data = (
            new_address(
                socket.AF_INET, 2, {netif.IFA_ADDRESS: V4.packed, netif.IFA_LOCAL: V4.packed}
            )
            + new_address(socket.AF_INET6, 2, {netif.IFA_ADDRESS: V6.packed})
            + new_address(socket.AF_INET6, 3, {netif.IFA_ADDRESS: LINK_LOCAL.packed})
        )
        self.assertEqual(parse_address_dump(data), ([(2, V4), (2, V6), (3, LINK_LOCAL)], False))

    def test_localPreferredOverPeer(self) -> None:
        data = new_address(
            socket.AF_INET, 5, {netif.IFA_ADDRESS: PEER4.packed, netif.IFA_LOCAL: V4.packed}
        )
        self.assertEqual(parse_address_dump(data), ([(5, V4)], False))
        data = new_address(socket.AF_INET, 5, {netif.IFA_ADDRESS: PEER4.packed})
        self.assertEqual(parse_address_dump(data), ([(5, PEER4)], False))

    def test_done(self) -> None:
        data = new_address(socket.AF_INET, 1, {netif.IFA_LOCAL: V4.packed}) + done()
        self.assertEqual(parse_address_dump(data), ([(1, V4)], True))
        self.assertEqual(parse_address_dump(done()), ([], True))

    def test_otherSequenceSkipped(self) -> None:
        data = new_address(socket.AF_INET, 1, {netif.IFA_LOCAL: V4.packed}, sequence=9) + done(9)
        self.assertEqual(parse_address_dump(data, sequence=1), ([], False))
        self.assertEqual(parse_address_dump(data, sequence=9), ([(1, V4)], True))

    def test_error(self) -> None:
        data = message(netif.NLMSG_ERROR, struct.pack("=i", -1) + bytes(16))
        error = self.assertRaises(InterfaceError, parse_address_dump, data)
        self.assertIn("EPERM", str(error))

    def test_acknowledgementIsNotAnError(self) -> None:
        data = message(netif.NLMSG_ERROR, struct.pack("=i", 0) + bytes(16))
        self.assertEqual(parse_address_dump(data), ([], False))

    def test_otherFamiliesAndBadLengths(self) -> None:
        data = (
            new_address(socket.AF_PACKET, 1, {netif.IFA_ADDRESS: bytes(6)})
            + new_address(socket.AF_INET, 1, {netif.IFA_ADDRESS: bytes(16)})  # wrong size
            + new_address(socket.AF_INET6, 1, {netif.IFA_ADDRESS: bytes(4)})  # wrong size
            + new_address(socket.AF_INET, 1, {})  # no address at all
            + message(netif.RTM_NEWADDR, b"\x02")  # too short for an ifaddrmsg
            + message(24, b"")  # RTM_NEWROUTE
        )
        self.assertEqual(parse_address_dump(data), ([], False))

    def test_truncatedNeverRaises(self) -> None:
        data = (
            new_address(socket.AF_INET, 1, {netif.IFA_LOCAL: V4.packed})
            + new_address(socket.AF_INET6, 1, {netif.IFA_ADDRESS: V6.packed})
            + done()
        )
        for length in range(len(data)):
            pairs, finished = parse_address_dump(data[:length])
            self.assertLessEqual(len(pairs), 2)
        corrupt = bytearray(data)
        struct.pack_into("=I", corrupt, 0, 3)  # a length shorter than the header
        self.assertEqual(parse_address_dump(bytes(corrupt)), ([], False))


class LiveTests(SynchronousTestCase):
    """
    The real kernel: loopback addresses and interface existence.
    """

    def test_loopbackAddresses(self) -> None:
        try:
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE).close()
        except OSError as error:
            raise self.skipTest(f"no rtnetlink socket here: {error}")
        found = addresses("lo")
        self.assertIn(ipaddress.IPv4Address("127.0.0.1"), found)
        if socket.has_ipv6 and ipaddress.IPv6Address("::1") not in found:
            raise self.skipTest("loopback has no ::1 here (IPv6 disabled?)")
        self.assertIn(ipaddress.IPv6Address("::1"), found)
        self.assertTrue(found <= addresses())

    def test_missingInterface(self) -> None:
        error = self.assertRaises(InterfaceError, addresses, "nosuchif0")
        self.assertEqual(str(error), "interface nosuchif0: no such device")

    def test_interfaceExists(self) -> None:
        self.assertTrue(interface_exists("lo"))
        self.assertFalse(interface_exists("nosuchif0"))
        self.assertFalse(interface_exists("bad\x00name"))


class AddressWatcherTests(SynchronousTestCase):
    """
    The watcher reports at start and after notifications that change the set, read through an
    injected reader, with a socket pair standing in for the netlink socket.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.results: List[object] = [frozenset([V4])]
        self.reads: List[Optional[str]] = []
        self.changes: List[frozenset] = []
        self.kernel, self.ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.setblocking(False)
        self.addCleanup(self.kernel.close)
        self.addCleanup(self.ours.close)

    def read(self, interface: Optional[str]) -> frozenset:
        self.reads.append(interface)
        result = self.results[0] if len(self.results) == 1 else self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    def watcher(self, on_change=None) -> AddressWatcher:
        watcher = AddressWatcher(
            self.reactor,
            "eth0",
            on_change or self.changes.append,
            read_addresses=self.read,
            open_socket=lambda: self.ours,
        )
        watcher.startService()
        return watcher

    def notify(self, count: int = 1) -> None:
        for _ in range(count):
            self.kernel.send(b"RTM_NEWADDR...")

    def test_reportsAtStart(self) -> None:
        watcher = self.watcher()
        self.assertTrue(verifyObject(IReadDescriptor, watcher))
        self.assertEqual(self.changes, [frozenset([V4])])
        self.assertEqual(self.reads, ["eth0"])
        self.assertIn(watcher, self.reactor.getReaders())
        self.assertEqual(watcher.fileno(), self.ours.fileno())

    def test_reportsEmptyAtStart(self) -> None:
        self.results = [frozenset()]
        self.watcher()
        self.assertEqual(self.changes, [frozenset()])

    def test_notificationRereads(self) -> None:
        watcher = self.watcher()
        self.results = [frozenset([V4, V6])]
        self.notify(3)
        watcher.doRead()
        self.assertEqual(self.changes, [frozenset([V4]), frozenset([V4, V6])])
        self.assertEqual(len(self.reads), 2)  # three notifications, one re-read
        self.assertRaises(BlockingIOError, self.ours.recv, 100)  # all drained

    def test_unchangedNotReported(self) -> None:
        watcher = self.watcher()
        self.notify()
        watcher.doRead()
        self.assertEqual(self.changes, [frozenset([V4])])

    def test_interfaceGone(self) -> None:
        watcher = self.watcher()
        self.results = [InterfaceError("interface eth0: no such device")]
        self.notify()
        watcher.doRead()
        self.assertEqual(self.changes, [frozenset([V4]), frozenset()])

    def test_handlerFailureLogged(self) -> None:
        def broken(found: frozenset) -> None:
            self.changes.append(found)
            raise ZeroDivisionError("handler bug")

        watcher = self.watcher(broken)
        self.results = [frozenset([V6])]
        self.notify()
        watcher.doRead()
        self.assertEqual(self.changes, [frozenset([V4]), frozenset([V6])])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    def test_stop(self) -> None:
        watcher = self.watcher()
        watcher.stopService()
        self.assertNotIn(watcher, self.reactor.getReaders())
        self.assertEqual(watcher.fileno(), -1)
        self.assertEqual(self.ours.fileno(), -1)  # closed
        watcher.doRead()  # late call: nothing
        self.assertEqual(len(self.reads), 1)

    def test_openFailure(self) -> None:
        def refuse():
            raise PermissionError(1, "Operation not permitted")

        watcher = AddressWatcher(self.reactor, None, self.changes.append, self.read, refuse)
        error = self.assertRaises(InterfaceError, watcher.startService)
        self.assertIn("Operation not permitted", str(error))
        self.assertFalse(watcher.running)
        self.assertRaises(InterfaceError, watcher.open)

    def test_openedBeforeStart(self) -> None:
        """
        ``open`` subscribes before the service starts (the daemon does it before twistd starts
        anything); starting then uses that socket and reports the addresses.
        """
        opened = []

        def open_socket():  # type: ignore[no-untyped-def]
            opened.append(self.ours)
            return self.ours

        watcher = AddressWatcher(self.reactor, None, self.changes.append, self.read, open_socket)
        watcher.open()
        self.assertEqual((opened, self.changes), ([self.ours], []))
        watcher.startService()
        self.addCleanup(watcher.stopService)
        self.assertEqual(len(opened), 1, "one subscription")
        self.assertIn(watcher, self.reactor.getReaders())
        self.assertEqual(len(self.changes), 1)

    def test_realNotificationSocket(self) -> None:
        try:
            sock = netif.open_notification_socket()
        except OSError as error:
            raise self.skipTest(f"no rtnetlink socket here: {error}")
        self.addCleanup(sock.close)
        self.assertRaises(BlockingIOError, sock.recv, 100)  # non-blocking, nothing yet
