"""
Knock capture: a pcap handle on the knock interface, read by the reactor like any socket.

``KnockCapture`` is an ``IReadDescriptor`` around a non-blocking pcapy-ng handle. Its kernel filter
(BPF, built by ``sig2knock.daemon.bpf``) lets through only knock-shaped packets (an opening TCP SYN,
or a UDP datagram not aimed at the control port) from the *watched* source addresses to the server's
own addresses, so a scan or a flood from anyone else never reaches Python. Every packet that does is
decoded by ``sig2knock.daemon.packets.parse_frame`` and checked again against the same sets before
``on_knock`` sees it: the filter is a first line, not the only one (packets queued before a filter
change, userland filtering when the kernel refuses a program, fragments).

A source is only captured once it is watched: knocks that reach the interface before the daemon
has handled the client's P1 are dropped by the kernel. With more than ``MAX_FILTER_SOURCES``
watched sources the kernel filter names no source (only the shape and the destinations) and the
sources are checked here alone: a long list of hosts costs milliseconds to compile at every P1,
and each filter change briefly drops packets (libpcap swaps the program behind a reject-all one),
so many clients knocking at once would lose each other's knocks. Only authenticated P1s make a
source watched, so only that many clients knocking at once (not a flood) widens the filter.

Addresses are compared in their plain form: an IPv4-mapped IPv6 address given to ``watch`` or
``set_destinations`` stands for its IPv4 address (which is what the wire carries).
"""

from typing import Any, Callable, FrozenSet, Optional

import pcapy
from twisted.application.service import IService, MultiService, Service
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sig2knock.daemon.bpf import MATCH_NOTHING, build_filter, plain_set
from sig2knock.daemon.packets import SUPPORTED_DATALINKS, Knock, parse_frame
from sig2knock.daemon.waiting import cancel, stop_children
from sig2knock.protocol.addresses import PROTO_TCP, PROTO_UDP, PROTOCOL_NAMES, IPAddress

SNAPLEN = 128  # link + IP + TCP/UDP headers, without IPv6 extension headers
READ_TIMEOUT_MS = 1  # no immediate mode in pcapy-ng: the kernel hands over a block every 1 ms
BUFFER_SIZE = 2 * 1024 * 1024
MAX_PACKETS_PER_READ = 1000
# Above this many watched sources the kernel filter stops naming them (see the module docstring).
MAX_FILTER_SOURCES = 16

# pcap_activate() status codes (pcapy-ng returns them instead of raising).
_PCAP_ERROR_NO_SUCH_DEVICE = -5
_PCAP_ERROR_PERM_DENIED = -8
_PCAP_ERROR_IFACE_NOT_UP = -9
_PCAP_ERROR_PROMISC_PERM_DENIED = -11

_PERMISSION_HINT = "run the daemon as root or give it CAP_NET_RAW (and CAP_NET_ADMIN)"


class CaptureError(Exception):
    """
    The knock interface cannot be captured on; the message says why, for the operator.
    """


class InterfaceNotUp(CaptureError):
    """
    The interface is not there or not up (yet): at boot this is waited for.
    """


def open_live_handle(interface: str, create: Callable[[str], Any] = pcapy.create) -> Any:
    """
    An activated, non-blocking pcapy handle on ``interface``: snap length ``SNAPLEN``, not
    promiscuous, a 1 ms read timeout and a 2 MiB buffer. Raises ``CaptureError`` when it cannot be
    opened (no such interface, not permitted, interface down).
    """
    try:
        handle = create(interface)
    except pcapy.PcapError as error:
        raise CaptureError(f"interface {interface}: cannot capture: {error}") from error
    try:
        handle.set_snaplen(SNAPLEN)
        handle.set_promisc(0)
        handle.set_timeout(READ_TIMEOUT_MS)
        handle.set_buffer_size(BUFFER_SIZE)
        status = handle.activate()
        if status is not None and status < 0:
            not_ready = status in (_PCAP_ERROR_NO_SUCH_DEVICE, _PCAP_ERROR_IFACE_NOT_UP)
            raise (InterfaceNotUp if not_ready else CaptureError)(
                _activation_error(interface, status)
            )
        handle.setnonblock(1)
    except pcapy.PcapError as error:
        handle.close()
        text = str(error)
        if "permitted" in text or "permission" in text.lower():
            text = f"{text}; {_PERMISSION_HINT}"
        raise CaptureError(f"interface {interface}: cannot capture: {text}") from error
    except CaptureError:
        handle.close()
        raise
    return handle


def _activation_error(interface: str, status: int) -> str:
    """
    The operator's message for a failed ``pcap_activate`` returning ``status``.
    """
    if status == _PCAP_ERROR_NO_SUCH_DEVICE:
        return f"interface {interface}: no such device"
    if status in (_PCAP_ERROR_PERM_DENIED, _PCAP_ERROR_PROMISC_PERM_DENIED):
        return f"interface {interface}: permission denied; {_PERMISSION_HINT}"
    if status == _PCAP_ERROR_IFACE_NOT_UP:
        return f"interface {interface}: interface is down"
    return (
        f"interface {interface}: cannot capture (pcap error {status}; is it a capturable device?)"
    )


@implementer(IReadDescriptor)
class KnockCapture(MultiService):
    """
    Knocks of ``protocol`` on ``interface``, delivered to ``on_knock`` (a ``Knock`` each),
    as a service of the daemon: ``open`` opens the handle (before twistd starts anything, so a
    missing permission stops the daemon with one line), stopping the service closes it.

    ``reactor`` provides ``IReactorFDSet`` and ``IReactorTime``; ``open_handle(interface)`` returns
    an activated pcapy-like handle (``open_live_handle``, or a fake in tests). Only knocks from a
    source given to ``watch`` to a destination given to ``set_destinations`` are delivered; UDP
    datagrams to ``control_port`` are never knocks. With ``watch_addresses`` (``AddressWatcher``
    or a fake), the capture owns a child service that keeps its destinations the addresses of
    ``interface``: ``watch_addresses(reactor, interface, set_destinations)``.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        interface: str,
        protocol: int,
        control_port: int,
        on_knock: Callable[[Knock], None],
        open_handle: Callable[[str], Any] = open_live_handle,
        max_per_read: int = MAX_PACKETS_PER_READ,
        watch_addresses: Optional[Callable[..., IService]] = None,
    ) -> None:
        if protocol not in (PROTO_TCP, PROTO_UDP):
            raise ValueError(f"knock protocol must be TCP or UDP, not {protocol}")
        super().__init__()
        self._reactor = reactor
        self.interface = interface
        self.protocol = protocol
        self.control_port = control_port
        self._on_knock = on_knock
        self._open_handle = open_handle
        self.max_per_read = max_per_read
        self._handle: Any = None
        self._fd = -1
        self._datalink = -1
        self._sources: FrozenSet[IPAddress] = frozenset()
        self._destinations: FrozenSet[IPAddress] = frozenset()
        self._installed: Optional[str] = None
        self._continuation: Any = None
        if watch_addresses is not None:
            watch_addresses(reactor, interface, self.set_destinations).setServiceParent(self)

    @property
    def installed_filter(self) -> Optional[str]:
        """
        The filter text installed on the handle, ``None`` before ``open``.
        """
        return self._installed

    def open(self) -> None:
        """
        Open the handle, install the filter for the current sets and start reading; open the
        address watcher's socket. Raises ``CaptureError`` when the interface cannot be captured
        on, ``InterfaceError`` when its addresses cannot be watched.
        """
        if self._handle is not None:
            return
        handle = self._open_handle(self.interface)
        datalink = handle.datalink()
        if datalink not in SUPPORTED_DATALINKS:
            handle.close()
            raise CaptureError(
                f"interface {self.interface}: unsupported link type {datalink}"
                " (Ethernet, loopback, Linux cooked or raw IP are supported)"
            )
        self._handle = handle
        self._datalink = datalink
        self._fd = handle.getfd()
        self._installed = None
        # Nothing passes until the first filter is in place: then the one for the current sets.
        self._set_filter(MATCH_NOTHING)
        self._install()
        self._reactor.addReader(self)
        self.log.info(
            "capturing {protocol} knocks on {interface} (link type {datalink})",
            protocol=PROTOCOL_NAMES[self.protocol],
            interface=self.interface,
            datalink=datalink,
        )
        try:
            for watcher in self:
                watcher.open()
        except Exception:
            self.stopService()
            raise

    def stopService(self) -> Any:
        """
        Stop watching the interface's addresses, stop reading and close the handle. Harmless
        when not opened.
        """
        Service.stopService(self)
        stopping = stop_children(self, self.log)
        if self._handle is not None:
            self._reactor.removeReader(self)
            self._close()
            self.log.info("stopped capturing on {interface}", interface=self.interface)
        return stopping

    def watch(self, sources: FrozenSet[IPAddress]) -> None:
        """
        Capture the knocks of exactly ``sources`` from now on.
        """
        plain = plain_set(sources)
        if plain != self._sources:
            self._sources = plain
            self._install()

    def set_destinations(self, addresses: FrozenSet[IPAddress]) -> None:
        """
        The server's addresses: knocks aimed anywhere else are ignored.
        """
        plain = plain_set(addresses)
        if plain != self._destinations:
            self._destinations = plain
            self.log.info(
                "knock destinations on {interface}: {addresses}",
                interface=self.interface,
                addresses=sorted(str(address) for address in plain),
            )
            self._install()

    def _install(self) -> None:
        if self._handle is None:
            return
        sources = self._sources if len(self._sources) <= MAX_FILTER_SOURCES else None
        text = build_filter(self.protocol, sources, self._destinations, self.control_port)
        if text == self._installed:
            return
        try:
            self._set_filter(text)
        except pcapy.PcapError as error:
            # Too many addresses for one program, say: let every source through to userland.
            broad = build_filter(self.protocol, None, self._destinations, self.control_port)
            self.log.warn(
                "cannot install the knock filter for {count} sources ({error});"
                " filtering sources in userland",
                count=len(self._sources),
                error=str(error),
            )
            try:
                self._set_filter(broad)
            except pcapy.PcapError as second:
                self.log.error(
                    "cannot install a knock filter ({error}); keeping {installed!r}",
                    error=str(second),
                    installed=self._installed,
                )

    def _set_filter(self, text: str) -> None:
        self._handle.setfilter(text)
        self._installed = text
        self.log.debug("knock filter: {filter}", filter=text)

    # IReadDescriptor

    def fileno(self) -> int:
        """
        The pcap handle's file descriptor (-1 when not started).
        """
        return self._fd

    def logPrefix(self) -> str:
        """
        The prefix of the reactor's log messages about this reader.
        """
        return f"KnockCapture({self.interface})"

    def doRead(self) -> None:
        """
        Handle the packets waiting on the handle, at most ``max_per_read`` in one call; when more
        may be waiting, continue on the next reactor iteration.
        """
        self._continuation = None
        handle = self._handle
        if handle is None:
            return
        budget = self.max_per_read
        while budget > 0 and self._handle is handle:
            try:
                count = handle.dispatch(budget, self._packet)
            except pcapy.PcapError as error:
                self.log.error(
                    "reading from {interface} failed: {error}",
                    interface=self.interface,
                    error=str(error),
                )
                return
            if count <= 0:
                return
            budget -= count
        if self._handle is handle and self._continuation is None:
            # The budget is spent: let the reactor serve others, then carry on.
            self._continuation = self._reactor.callLater(0, self.doRead)

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor gave up on the descriptor (shutdown, or an error): close the handle.
        """
        if self._handle is not None:
            self.log.info(
                "capture on {interface} ended: {reason}",
                interface=self.interface,
                reason=reason.getErrorMessage(),
            )
            self._close()

    def _close(self) -> None:
        handle, self._handle = self._handle, None
        self._fd = -1
        self._installed = None
        cancel(self._continuation)
        self._continuation = None
        handle.close()

    def _packet(self, header: Any, data: bytes) -> None:
        """
        The handle's callback for one packet: nothing may escape from here into pcapy.
        """
        knock = parse_frame(self._datalink, data)
        if knock is None or not self._accepts(knock):
            return
        try:
            self._on_knock(knock)
        except Exception:
            self.log.failure(
                "knock handler failed for {source} -> {protocol}/{port}",
                source=str(knock.source),
                protocol=PROTOCOL_NAMES[knock.protocol],
                port=knock.port,
            )

    def _accepts(self, knock: Knock) -> bool:
        """
        Whether ``knock`` is one of ours: the userland twin of the kernel filter.
        """
        if knock.protocol != self.protocol:
            return False
        if knock.source not in self._sources or knock.destination not in self._destinations:
            return False
        return not (knock.protocol == PROTO_UDP and knock.port == self.control_port)
