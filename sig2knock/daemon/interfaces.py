"""
The capture interfaces by number, as the capture library lists them (``tcpdump -D`` numbers them
the same way, and the seed ran ``sig2knockd -i 1``, WinPcap's numbering, since Windows' device
names are long GUIDs): ``sig2knockd --list-interfaces`` prints the list, and an ``INTERFACE`` (or
``-i``) that is a number and not the name of an interface is taken from it.
"""

import os
from typing import Callable, FrozenSet, List, NamedTuple, Optional

from sig2knock.daemon import netif
from sig2knock.protocol.addresses import IPAddress


class CaptureInterface(NamedTuple):
    """
    One entry of the numbered list: its ``number`` (from 1), ``name``, whether it is ``up``
    (``None`` for the capture library's pseudo-devices, such as ``any``), and its addresses.
    """

    number: int
    name: str
    up: Optional[bool]
    addresses: FrozenSet[IPAddress]

    def line(self) -> str:
        """
        The entry as ``--list-interfaces`` prints it: ``1.eth0 [up] 198.51.100.7, ...``.
        """
        state = {True: "up", False: "down", None: "not a network interface"}[self.up]
        shown = ", ".join(sorted(map(str, self.addresses))) or "no addresses"
        return f"{self.number}.{self.name} [{state}] {shown}"


def _pcap_devices() -> List[str]:
    import pcapy

    return list(pcapy.findalldevs())


def _is_up(name: str) -> Optional[bool]:
    try:
        with open(f"/sys/class/net/{os.path.basename(name)}/flags", encoding="ascii") as flags:
            return bool(int(flags.read().strip(), 16) & 0x1)  # IFF_UP
    except (OSError, ValueError):
        return None


def _addresses_of(name: str) -> FrozenSet[IPAddress]:
    try:
        return netif.addresses(name)
    except netif.InterfaceError:
        return frozenset()


def capture_interfaces(
    devices: Optional[Callable[[], List[str]]] = None,
    is_up: Callable[[str], Optional[bool]] = _is_up,
    addresses: Callable[[str], FrozenSet[IPAddress]] = _addresses_of,
) -> List[CaptureInterface]:
    """
    The capture library's interfaces (``devices()``, by default pcapy's), numbered from 1 in its
    order.
    """
    return [
        CaptureInterface(number, name, is_up(name), addresses(name))
        for number, name in enumerate((devices or _pcap_devices)(), start=1)
    ]


def by_number(text: str, devices: Optional[Callable[[], List[str]]] = None) -> Optional[str]:
    """
    The name of capture interface number ``text`` (``"1"``) in ``devices()`` (by default
    pcapy's list), ``None`` when ``text`` is not a number; raises ``LookupError`` for a number
    the list does not have.
    """
    if not text.isdigit():
        return None
    names = (devices or _pcap_devices)()
    number = int(text)
    if not 1 <= number <= len(names):
        raise LookupError(
            f"no capture interface number {number}: there are {len(names)}"
            " (sig2knockd --list-interfaces lists them)"
        )
    return names[number - 1]
