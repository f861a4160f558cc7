"""
Tests for sig2knock.daemon.interfaces: capture interfaces by number (``-i 1``, as the seed runs
it) and ``sig2knockd --list-interfaces``.
"""

import ipaddress

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sig2knock.daemon import interfaces, startup
from sig2knock.daemon.settings import ConfigError
from sig2knock.test.common import parse_text, settings_text

DEVICES = ["eth0", "lo", "any"]


def parse(interface: str):  # type: ignore[no-untyped-def]
    """The tests' configuration with ``INTERFACE = interface``."""
    return parse_text(settings_text(INTERFACE=interface))


class NumberTests(SynchronousTestCase):
    """
    A number is an entry of the capture library's list, from 1; a name is left alone.
    """

    def test_byNumber(self) -> None:
        self.assertEqual(interfaces.by_number("1", lambda: DEVICES), "eth0")
        self.assertEqual(interfaces.by_number("3", lambda: DEVICES), "any")
        self.assertIsNone(interfaces.by_number("eth0", lambda: DEVICES))
        for number in ("0", "4"):
            error = self.assertRaises(LookupError, interfaces.by_number, number, lambda: DEVICES)
            self.assertIn("there are 3 (sig2knockd --list-interfaces", str(error))

    def test_listLines(self) -> None:
        found = interfaces.capture_interfaces(
            lambda: DEVICES,
            is_up={"eth0": True, "lo": False}.get,
            addresses=lambda name: frozenset(
                {ipaddress.ip_address("198.51.100.7"), ipaddress.ip_address("2001:db8::7")}
            ) if name == "eth0" else frozenset(),
        )
        self.assertEqual([interface.line() for interface in found], [
            "1.eth0 [up] 198.51.100.7, 2001:db8::7",
            "2.lo [down] no addresses",
            "3.any [not a network interface] no addresses",
        ])

    def test_configuredNumberIsResolved(self) -> None:
        """
        ``INTERFACE = 2`` (or ``-i 2``), not an interface's name, is the second of the list;
        a number past its end is refused in one line, naming the way to see the list.
        """
        self.patch(interfaces, "_pcap_devices", lambda: ["nosuch0", "lo"])
        self.assertEqual(startup.resolve_interface(parse(interface="2")), "lo")
        error = self.assertRaises(ConfigError, startup.resolve_interface, parse(interface="9"))
        self.assertIn("no capture interface number 9", str(error))

    def test_theRealList(self) -> None:
        """
        With the real capture library: loopback's number in its list gives loopback.
        """
        try:
            names = interfaces._pcap_devices()
        except Exception as error:
            raise SkipTest(f"the capture library cannot list interfaces here: {error}")
        if "lo" not in names:
            raise SkipTest("no loopback interface in the capture library's list")
        number = str(names.index("lo") + 1)
        self.assertEqual(startup.resolve_interface(parse(interface=number)), "lo")
        lines = [interface.line() for interface in interfaces.capture_interfaces()]
        self.assertIn(f"{number}.lo [up]", "\n".join(lines))
