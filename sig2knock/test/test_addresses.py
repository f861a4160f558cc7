"""
Tests for ``sig2knock.protocol.addresses``: addresses as client and daemon read them.
"""

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.protocol.addresses import (
    PROTO_TCP,
    PROTO_UDP,
    PROTOCOL_NAMES,
    parse_address,
    unmapped,
)


CLIENT = ipaddress.ip_address("198.18.0.2")


class AddressTests(SynchronousTestCase):
    """
    IPv4-mapped IPv6 is the IPv4 address; a zone is dropped; anything else is no address.
    """

    def test_parseAddress(self) -> None:
        self.assertEqual(parse_address("::ffff:198.18.0.2"), CLIENT)
        self.assertEqual(parse_address("fe80::1%eth0"), ipaddress.ip_address("fe80::1"))
        self.assertEqual(parse_address("2001:db8::2"), ipaddress.ip_address("2001:db8::2"))
        self.assertIsNone(parse_address("not an address"))

    def test_unmapped(self) -> None:
        self.assertEqual(unmapped(ipaddress.ip_address("::ffff:127.0.0.1")),
                         ipaddress.ip_address("127.0.0.1"))
        self.assertTrue(unmapped(ipaddress.ip_address("::ffff:127.0.0.1")).is_loopback)
        self.assertEqual(unmapped(CLIENT), CLIENT)

    def test_protocolNumbers(self) -> None:
        self.assertEqual((PROTO_TCP, PROTO_UDP), (6, 17))
        self.assertEqual(PROTOCOL_NAMES, {6: "tcp", 17: "udp"})
