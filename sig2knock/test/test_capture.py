"""
Tests for sig2knock.daemon.capture: the reactor-driven reader around a fake pcap handle (the
kernel filter it installs is tested in test_bpf).
"""

import ipaddress
from typing import Any, Callable, List, Optional, Tuple

import pcapy
from twisted.application.service import Service
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sig2knock.daemon.bpf import MATCH_NOTHING, build_filter, plain_set
from sig2knock.daemon.capture import (
    MAX_FILTER_SOURCES,
    CaptureError,
    KnockCapture,
    open_live_handle,
)
from sig2knock.daemon.netif import InterfaceError
from sig2knock.daemon.packets import Knock
from sig2knock.protocol.addresses import PROTO_TCP, PROTO_UDP
from sig2knock.test.frames import (
    ACK,
    CLIENT4,
    CLIENT6,
    CONTROL_PORT,
    MAPPED_CLIENT4,
    OTHER4,
    OTHER6,
    SECOND_SERVER4,
    SERVER4,
    SERVER6,
    SYN,
    FakeHandle,
    framed,
    packet4,
    packet6,
)


class KnockCaptureTests(SynchronousTestCase):
    """
    The reader installs filters as the sets change and delivers exactly the watched knocks.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.handle = FakeHandle()
        self.knocks: List[Knock] = []

    def make(
        self, protocol: int = PROTO_TCP, handle: Optional[FakeHandle] = None, **kwargs
    ) -> KnockCapture:
        handle = handle or self.handle
        return KnockCapture(
            self.reactor,
            "eth0",
            protocol,
            CONTROL_PORT,
            self.knocks.append,
            open_handle=lambda interface: handle,
            **kwargs,
        )

    def started(self, protocol: int = PROTO_TCP, **kwargs) -> KnockCapture:
        reader = self.make(protocol, **kwargs)
        reader.open()
        reader.set_destinations(frozenset([SERVER4, SERVER6]))
        reader.watch(frozenset([CLIENT4, CLIENT6]))
        return reader

    def feed(self, *packets: bytes) -> None:
        self.handle.frames.extend(framed(1, packet) for packet in packets)

    def test_interface(self) -> None:
        reader = self.started()
        self.assertTrue(verifyObject(IReadDescriptor, reader))
        self.assertEqual(reader.fileno(), 42)
        self.assertIn("eth0", reader.logPrefix())

    def test_startInstallsMatchNothingAndReads(self) -> None:
        reader = self.make()
        self.assertEqual(reader.fileno(), -1)
        reader.open()
        self.assertEqual(self.handle.filters, [MATCH_NOTHING])
        self.assertIn(reader, self.reactor.getReaders())

    def test_filterFollowsTheSets(self) -> None:
        reader = self.make()
        reader.open()
        reader.set_destinations(frozenset([SERVER4]))
        self.assertEqual(len(self.handle.filters), 1)  # still nothing to match: no reinstall
        reader.watch(frozenset([CLIENT4]))
        expected = build_filter(PROTO_TCP, plain_set([CLIENT4]), plain_set([SERVER4]), CONTROL_PORT)
        self.assertEqual(self.handle.filters[-1], expected)
        reader.watch(frozenset([CLIENT4]))
        reader.watch(frozenset([MAPPED_CLIENT4]))  # the same address
        reader.set_destinations(frozenset([SERVER4]))
        self.assertEqual(len(self.handle.filters), 2)
        reader.watch(frozenset([CLIENT4, OTHER4]))
        self.assertEqual(len(self.handle.filters), 3)
        reader.watch(frozenset())
        self.assertEqual(self.handle.filters[-1], MATCH_NOTHING)
        self.assertEqual(reader.installed_filter, MATCH_NOTHING)

    def test_setsGivenBeforeStart(self) -> None:
        reader = self.make()
        reader.watch(frozenset([CLIENT4]))
        reader.set_destinations(frozenset([SERVER4]))
        self.assertEqual(self.handle.filters, [])
        reader.open()
        expected = build_filter(PROTO_TCP, plain_set([CLIENT4]), plain_set([SERVER4]), CONTROL_PORT)
        self.assertEqual(self.handle.filters, [MATCH_NOTHING, expected])

    def test_deliversKnocks(self) -> None:
        reader = self.started()
        self.feed(packet4(PROTO_TCP, 2222), packet6(PROTO_TCP, 3333))
        reader.doRead()
        self.assertEqual(
            self.knocks,
            [Knock(CLIENT4, SERVER4, PROTO_TCP, 2222), Knock(CLIENT6, SERVER6, PROTO_TCP, 3333)],
        )
        self.assertEqual((self.handle.delivered, len(self.knocks)), (2, 2))

    def test_userlandChecks(self) -> None:
        # Packets a stale or broad kernel filter could let through are still refused.
        reader = self.started()
        self.feed(
            packet4(PROTO_TCP, 1, source=OTHER4),
            packet4(PROTO_TCP, 2, destination=SECOND_SERVER4),
            packet4(PROTO_UDP, 3),
            packet4(PROTO_TCP, 4, SYN | ACK),
            packet6(PROTO_TCP, 5, source=OTHER6),
            b"garbage",
            packet4(PROTO_TCP, 6),
        )
        reader.doRead()
        self.assertEqual(self.knocks, [Knock(CLIENT4, SERVER4, PROTO_TCP, 6)])
        self.assertEqual((self.handle.delivered, len(self.knocks)), (7, 1))

    def test_udpKnocksButNotControlPort(self) -> None:
        reader = self.started(PROTO_UDP)
        self.feed(packet4(PROTO_UDP, CONTROL_PORT), packet4(PROTO_TCP, 7), packet4(PROTO_UDP, 7))
        reader.doRead()
        self.assertEqual(self.knocks, [Knock(CLIENT4, SERVER4, PROTO_UDP, 7)])

    def test_handlerFailureIsolated(self) -> None:
        calls: List[Knock] = []

        def on_knock(knock: Knock) -> None:
            calls.append(knock)
            if len(calls) == 1:
                raise ZeroDivisionError("handler bug")

        reader = KnockCapture(
            self.reactor, "eth0", PROTO_TCP, CONTROL_PORT, on_knock, lambda name: self.handle
        )
        reader.open()
        reader.set_destinations(frozenset([SERVER4]))
        reader.watch(frozenset([CLIENT4]))
        self.feed(packet4(PROTO_TCP, 1), packet4(PROTO_TCP, 2))
        reader.doRead()
        self.assertEqual([knock.port for knock in calls], [1, 2])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIn(reader, self.reactor.getReaders())

    def test_boundedPerRead(self) -> None:
        reader = self.started(max_per_read=10)
        self.feed(*(packet4(PROTO_TCP, port) for port in range(1, 26)))
        reader.doRead()
        self.assertEqual(len(self.knocks), 10)
        self.assertTrue(all(count <= 10 for count in self.handle.dispatches))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(0)  # runs the continuations, each bounded, until nothing is left
        self.assertEqual([knock.port for knock in self.knocks], list(range(1, 26)))
        self.assertTrue(all(count <= 10 for count in self.handle.dispatches))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopClosesAndCancels(self) -> None:
        reader = self.started(max_per_read=1)
        self.feed(packet4(PROTO_TCP, 1), packet4(PROTO_TCP, 2))
        reader.doRead()
        reader.stopService()
        self.assertTrue(self.handle.closed)
        self.assertNotIn(reader, self.reactor.getReaders())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(reader.fileno(), -1)
        reader.stopService()  # harmless
        reader.doRead()  # a late call from the reactor does nothing
        self.assertEqual(len(self.knocks), 1)

    def test_ownsTheWatcherOfItsInterfacesAddresses(self) -> None:
        """
        With ``watch_addresses``, the capture's destinations are its interface's addresses, kept
        by a child service that starts and stops with the capture.
        """
        watchers: List[Any] = []

        class Watcher(Service):
            def __init__(self, reactor: object, interface: str, on_change: Any) -> None:
                self.interface = interface
                self.on_change = on_change
                self.opened = False
                watchers.append(self)

            def open(self) -> None:
                self.opened = True

            def startService(self) -> None:
                super().startService()
                self.on_change(frozenset([SERVER4]))

        reader = self.make(watch_addresses=Watcher)
        reader.open()
        reader.watch(frozenset([CLIENT4]))
        (watcher,) = watchers
        self.assertEqual((watcher.interface, list(reader)), ("eth0", [watcher]))
        self.assertTrue(watcher.opened, "its socket opened with the capture")
        self.feed(packet4(PROTO_TCP, 1))
        reader.doRead()
        self.assertEqual(self.knocks, [], "no destination before the watcher reports")
        reader.startService()
        self.feed(packet4(PROTO_TCP, 2))
        reader.doRead()
        self.assertEqual([knock.port for knock in self.knocks], [2])
        reader.stopService()
        self.assertFalse(watcher.running)
        self.assertTrue(self.handle.closed)

    def test_watcherThatCannotOpenClosesTheCapture(self) -> None:
        """
        When the address watcher cannot subscribe (no netlink), opening fails with its error
        and the handle is closed again: nothing stays open.
        """

        class Refusing(Service):
            def __init__(self, reactor: object, interface: str, on_change: Any) -> None:
                pass

            def open(self) -> None:
                raise InterfaceError("cannot watch address changes over netlink: denied")

        reader = self.make(watch_addresses=Refusing)
        self.assertRaises(InterfaceError, reader.open)
        self.assertTrue(self.handle.closed)
        self.assertEqual(self.reactor.getReaders(), [])

    def test_connectionLostCloses(self) -> None:
        reader = self.started()
        reader.connectionLost(Failure(OSError("gone")))
        self.assertTrue(self.handle.closed)

    def test_readErrorLogged(self) -> None:
        reader = self.started()

        def broken(count, callback):
            raise pcapy.PcapError("The interface went down")

        self.handle.dispatch = broken
        reader.doRead()  # logged, not raised
        self.assertEqual(self.knocks, [])

    def test_fallbackWhenTheExactFilterFails(self) -> None:
        handle = FakeHandle(reject=lambda text: "src host" in text)
        reader = self.started(handle=handle)
        self.assertNotIn("src host", reader.installed_filter)
        self.assertIn("dst host", reader.installed_filter)
        handle.frames.extend(
            [framed(1, packet4(PROTO_TCP, 1, source=OTHER4)), framed(1, packet4(PROTO_TCP, 2))]
        )
        reader.doRead()
        self.assertEqual([knock.port for knock in self.knocks], [2])

    def test_manySourcesFilteredInUserland(self) -> None:
        """
        Above ``MAX_FILTER_SOURCES`` watched sources the kernel filter names none (so more
        clients change nothing in the kernel), and sources are checked in userland; with fewer
        again the exact filter comes back.
        """
        reader = self.started()
        many = [ipaddress.ip_address(f"198.18.3.{i}") for i in range(1, MAX_FILTER_SOURCES + 2)]
        reader.watch(frozenset(many[:MAX_FILTER_SOURCES]))
        self.assertIn("src host 198.18.3.16", reader.installed_filter)
        reader.watch(frozenset(many))
        broad = reader.installed_filter
        self.assertNotIn("src host", broad)
        self.assertIn("dst host", broad)
        installs = len(self.handle.filters)
        reader.watch(frozenset(many + [CLIENT4]))
        reader.watch(frozenset(many[1:] + [CLIENT4]))
        self.assertEqual(len(self.handle.filters), installs)
        self.handle.frames.extend(
            [
                framed(1, packet4(PROTO_TCP, 1, source=OTHER4)),
                framed(1, packet4(PROTO_TCP, 2, source=many[0])),
                framed(1, packet4(PROTO_TCP, 3)),
            ]
        )
        reader.doRead()
        self.assertEqual([knock.port for knock in self.knocks], [3])
        reader.watch(frozenset([CLIENT4]))
        self.assertIn("src host", reader.installed_filter)

    def test_unsupportedLinkType(self) -> None:
        handle = FakeHandle(datalink=1)
        handle.datalink = lambda: 127  # radiotap
        reader = self.make(handle=handle)
        error = self.assertRaises(CaptureError, reader.open)
        self.assertIn("link type 127", str(error))
        self.assertTrue(handle.closed)
        self.assertEqual(self.reactor.getReaders(), [])

    def test_badProtocol(self) -> None:
        self.assertRaises(ValueError, self.make, 1)


class OpenLiveHandleTests(SynchronousTestCase):
    """
    Opening a real interface fails with a message an operator can act on.
    """

    def test_startNoSuchInterface(self) -> None:
        reactor = MemoryReactorClock()
        reader = KnockCapture(reactor, "nosuchif0", PROTO_TCP, CONTROL_PORT, lambda knock: None)
        self.assertRaises(CaptureError, reader.open)
        self.assertEqual(reactor.getReaders(), [])

    def fake_create(self, status: int) -> Tuple[Callable[[str], Any], List[str]]:
        calls: List[str] = []

        class Handle:
            def __getattr__(self, name: str):
                return lambda *args: calls.append(name)

            def activate(self) -> int:
                calls.append("activate")
                return status

        return (lambda interface: Handle()), calls

    def test_permissionDenied(self) -> None:
        create, calls = self.fake_create(-8)
        error = self.assertRaises(CaptureError, open_live_handle, "eth0", create)
        self.assertIn("permission denied", str(error))
        self.assertIn("CAP_NET_RAW", str(error))
        self.assertEqual(calls[-1], "close")

    def test_interfaceDown(self) -> None:
        create, calls = self.fake_create(-9)
        error = self.assertRaises(CaptureError, open_live_handle, "eth0", create)
        self.assertEqual(str(error), "interface eth0: interface is down")

    def test_settings(self) -> None:
        create, calls = self.fake_create(0)
        open_live_handle("eth0", create)
        self.assertEqual(
            calls,
            [
                "set_snaplen",
                "set_promisc",
                "set_timeout",
                "set_buffer_size",
                "activate",
                "setnonblock",
            ],
        )

    def test_warningIsNotAnError(self) -> None:
        create, calls = self.fake_create(2)  # PCAP_WARNING_PROMISC_NOTSUP
        open_live_handle("eth0", create)
        self.assertIn("setnonblock", calls)
