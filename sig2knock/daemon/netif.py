"""
Network interfaces: which one carries the default route, whether one exists, which addresses it
has, and a watcher that reports when those addresses change.

Addresses come from rtnetlink (an ``RTM_GETADDR`` dump), parsed here with struct; the default
route from ``/proc/net/route`` and ``/proc/net/ipv6_route``. Linux only. The parsers are pure
functions of bytes or text, so they are tested without a kernel.
"""

import errno
import ipaddress
import socket
import struct
from typing import Any, Callable, FrozenSet, Iterator, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sig2knock.protocol.addresses import IPAddress

ROUTE_PATH = "/proc/net/route"
IPV6_ROUTE_PATH = "/proc/net/ipv6_route"

RTF_UP = 0x0001
RTF_REJECT = 0x0200

# rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h)
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x001
NLM_F_DUMP = 0x300
RTM_NEWADDR = 20
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_RTATTR = struct.Struct("=HH")  # length, type
_NLMSGERR = struct.Struct("=i")  # negative errno, then the offending header
_RECEIVE_SIZE = 65536
_DUMP_TIMEOUT = 5.0
_MAX_DRAIN = 256  # notifications read per doRead before re-reading the addresses


class InterfaceError(Exception):
    """
    An interface (or the default route, or the kernel's address list) cannot be found or read;
    the message says which, for the operator.
    """


def default_interface_from(route_text: str, ipv6_route_text: str = "") -> Optional[str]:
    """
    The interface of the default route in the text of ``/proc/net/route`` (preferred) or else of
    ``/proc/net/ipv6_route``: the usable one with the lowest metric, never ``lo``. ``None`` if
    there is none.
    """
    best: Optional[Tuple[int, str]] = None
    for line in route_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            name, destination, flags, metric, mask = (
                fields[0],
                int(fields[1], 16),
                int(fields[3], 16),
                int(fields[6]),
                int(fields[7], 16),
            )
        except ValueError:
            continue
        if name == "lo" or destination or mask or not flags & RTF_UP or flags & RTF_REJECT:
            continue
        if best is None or metric < best[0]:
            best = (metric, name)
    if best is not None:
        return best[1]
    for line in ipv6_route_text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            destination, prefix = int(fields[0], 16), int(fields[1], 16)
            metric, flags, name = int(fields[5], 16), int(fields[8], 16), fields[9]
        except ValueError:
            continue
        if name == "lo" or destination or prefix or not flags & RTF_UP or flags & RTF_REJECT:
            continue
        if best is None or metric < best[0]:
            best = (metric, name)
    return None if best is None else best[1]


def default_route_interface() -> str:
    """
    The interface of this host's default route (IPv4 first, then IPv6). Raises ``InterfaceError``
    when there is none.
    """
    texts = []
    for path in (ROUTE_PATH, IPV6_ROUTE_PATH):
        try:
            with open(path, encoding="ascii", errors="replace") as route_file:
                texts.append(route_file.read())
        except OSError:
            texts.append("")
    name = default_interface_from(*texts)
    if name is None:
        raise InterfaceError(
            "no default route: cannot choose the knock interface; set PKTFILTER_INTERFACE"
        )
    return name


def interface_exists(name: str) -> bool:
    """
    Whether a network interface called ``name`` exists.
    """
    try:
        socket.if_nametoindex(name)
    except (OSError, ValueError):
        return False
    return True


def _messages(data: bytes) -> Iterator[Tuple[int, int, bytes]]:
    """
    ``(type, sequence, payload)`` of each netlink message in one datagram; stops at garbage.
    """
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, sequence, _port = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return
        yield kind, sequence, data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3


def _attributes(data: bytes, offset: int) -> Iterator[Tuple[int, bytes]]:
    """
    ``(type, value)`` of each rtattr from ``offset`` on.
    """
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > len(data):
            return
        yield kind, data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3


def parse_address_dump(
    data: bytes, sequence: Optional[int] = None
) -> Tuple[List[Tuple[int, IPAddress]], bool]:
    """
    The ``(interface index, address)`` pairs in one datagram of an ``RTM_GETADDR`` dump (messages
    of another ``sequence`` are skipped when one is given), and whether it ends the dump. IPv4 and
    IPv6 addresses only; ``IFA_LOCAL`` is preferred over ``IFA_ADDRESS`` (which is the peer on a
    point-to-point link). Raises ``InterfaceError`` if the kernel reports an error.
    """
    found: List[Tuple[int, IPAddress]] = []
    for kind, message_sequence, payload in _messages(data):
        if sequence is not None and message_sequence != sequence:
            continue
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            code = _NLMSGERR.unpack_from(payload)[0] if len(payload) >= _NLMSGERR.size else 0
            if code:
                raise InterfaceError(f"cannot list addresses: {errno.errorcode.get(-code, code)}")
            continue
        if kind != RTM_NEWADDR or len(payload) < _IFADDRMSG.size:
            continue
        family, _prefix, _flags, _scope, index = _IFADDRMSG.unpack_from(payload)
        size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
        if size is None:
            continue
        values = {
            attribute: value
            for attribute, value in _attributes(payload, _IFADDRMSG.size)
            if attribute in (IFA_ADDRESS, IFA_LOCAL) and len(value) == size
        }
        raw = values.get(IFA_LOCAL, values.get(IFA_ADDRESS))
        if raw is not None:
            found.append((index, ipaddress.ip_address(raw)))
    return found, False


def addresses(interface: Optional[str] = None) -> FrozenSet[IPAddress]:
    """
    The IPv4 and IPv6 addresses of ``interface``, or of every interface when ``None`` (IPv6
    link-local addresses without their scope). Raises ``InterfaceError`` when the interface does
    not exist or netlink cannot be read.
    """
    index: Optional[int] = None
    if interface is not None:
        try:
            index = socket.if_nametoindex(interface)
        except (OSError, ValueError):
            raise InterfaceError(f"interface {interface}: no such device") from None
    sequence = 1
    request = _NLMSGHDR.pack(
        _NLMSGHDR.size + _IFADDRMSG.size, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0
    ) + _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    found: List[Tuple[int, IPAddress]] = []
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
            sock.settimeout(_DUMP_TIMEOUT)
            sock.bind((0, 0))
            sock.sendto(request, (0, 0))
            done = False
            while not done:
                pairs, done = parse_address_dump(sock.recv(_RECEIVE_SIZE), sequence)
                found.extend(pairs)
    except OSError as error:
        raise InterfaceError(f"cannot list addresses over netlink: {error}") from error
    return frozenset(address for number, address in found if index is None or number == index)


def open_notification_socket() -> socket.socket:
    """
    A non-blocking rtnetlink socket subscribed to IPv4 and IPv6 address changes.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@implementer(IReadDescriptor)
class AddressWatcher(Service):
    """
    Keeps ``current``, the addresses of ``interface`` (every interface when ``None``), and reports
    them to ``on_change`` (unless it is ``None``): once when the service starts, then whenever the
    kernel announces an address change that changes the set. ``read_addresses`` and ``open_socket``
    default to ``addresses`` and ``open_notification_socket``; tests replace them.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        interface: Optional[str],
        on_change: Optional[Callable[[FrozenSet[IPAddress]], None]],
        read_addresses: Callable[[Optional[str]], FrozenSet[IPAddress]] = addresses,
        open_socket: Callable[[], Any] = open_notification_socket,
    ) -> None:
        self._reactor = reactor
        self.interface = interface
        self._on_change = on_change
        self._read_addresses = read_addresses
        self._open_socket = open_socket
        self._socket: Any = None
        self.current: Optional[FrozenSet[IPAddress]] = None

    def open(self) -> None:
        """
        Subscribe to address changes (the daemon does it before twistd starts anything, so a
        failure stops it with one line). Raises ``InterfaceError``.
        """
        if self._socket is not None:
            return
        try:
            self._socket = self._open_socket()
        except OSError as error:
            raise InterfaceError(f"cannot watch address changes over netlink: {error}") from error

    def startService(self) -> None:
        """
        Subscribe to address changes (unless ``open`` did), then report the current addresses.
        """
        self.open()
        self._reactor.addReader(self)
        Service.startService(self)
        self.refresh()

    def stopService(self) -> None:
        """
        Stop watching.
        """
        Service.stopService(self)
        if self._socket is not None:
            self._reactor.removeReader(self)
            self._close()

    def refresh(self) -> None:
        """
        Read the addresses again; report them if they changed (or were never reported).
        """
        try:
            now = self._read_addresses(self.interface)
        except InterfaceError as error:
            # The interface went away (or netlink failed): it has no address we can serve on.
            self.log.warn("cannot read addresses: {error}", error=str(error))
            now = frozenset()
        if now == self.current:
            return
        previous, self.current = self.current, now
        self.log.info(
            "addresses of {interface}: {addresses} (added {added}, removed {removed})",
            interface=self.interface or "all interfaces",
            addresses=sorted(str(address) for address in now),
            added=sorted(str(address) for address in now - (previous or frozenset())),
            removed=sorted(str(address) for address in (previous or frozenset()) - now),
        )
        if self._on_change is None:
            return
        try:
            self._on_change(now)
        except Exception:
            self.log.failure("address change handler failed")

    # IReadDescriptor

    def fileno(self) -> int:
        """
        The notification socket's descriptor (-1 when not running).
        """
        return self._socket.fileno() if self._socket is not None else -1

    def logPrefix(self) -> str:
        """
        The prefix of the reactor's log messages about this reader.
        """
        return "AddressWatcher"

    def doRead(self) -> None:
        """
        Drain the pending notifications (their content does not matter), then re-read.
        """
        if self._socket is None:
            return
        for _ in range(_MAX_DRAIN):
            try:
                if not self._socket.recv(_RECEIVE_SIZE):
                    break
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                if (
                    error.errno != errno.ENOBUFS
                ):  # overrun: notifications lost, re-reading covers it
                    self.log.warn("address notifications: {error}", error=str(error))
                break
        self.refresh()

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor dropped the socket: stop watching.
        """
        if self._socket is not None:
            self._close()

    def _close(self) -> None:
        sock, self._socket = self._socket, None
        sock.close()
