"""
Tests for sig2knock.daemon.admission: what an authentic P1 may ask, and the address check that
keeps a relay from using a client's login.
"""

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.admission import check_request
from sig2knock.daemon.session import SessionRefused
from sig2knock.protocol import addresses
from sig2knock.protocol.wire import KnockRequest
from sig2knock.test.common import live_settings

SOURCE = ipaddress.ip_address("198.18.0.2")
PUBLIC = ipaddress.ip_address("8.8.4.4")  # a public address, only written into messages
PRIVATE = ipaddress.ip_address("192.168.1.20")


def request(**fields: object) -> KnockRequest:
    return KnockRequest(b"S" * 16, 0, addresses.PROTO_TCP, (1, 2, 3, 4), **fields)  # type: ignore


class CheckRequestTests(SynchronousTestCase):
    """
    The knock protocol and count, the service, and the client's address.
    """

    def refused(self, reason: str, knock: KnockRequest, source=SOURCE, **config: object) -> None:
        settings = live_settings(**config)
        error = self.assertRaises(
            SessionRefused, check_request, settings.config, source, "alice", knock
        )
        self.assertEqual(error.reason, reason)

    def allowed(self, knock: KnockRequest, source=SOURCE, **config: object) -> None:
        check_request(live_settings(**config).config, source, "alice", knock)

    def test_protocolAndCount(self) -> None:
        self.refused("knock-protocol", request(), knock_proto="udp")
        self.refused("knock-count", request(), knock_count=5)
        self.allowed(request())

    def test_onlyTheDefaultService(self) -> None:
        self.refused("unknown-service", request(service="rdp"))

    def test_addresses(self) -> None:
        """
        The source itself, no address, or a private one (behind NAT) pass; another public
        address (a relay, or a spoofed source) does not.
        """
        self.allowed(request(client_address=SOURCE))
        self.allowed(request(client_address=ipaddress.ip_address("::ffff:198.18.0.2")))
        self.allowed(request())
        self.allowed(request(client_address=PRIVATE))
        self.refused("address-mismatch", request(client_address=PUBLIC))
        self.allowed(request(client_address=PUBLIC), source=PUBLIC)

    def test_requireSourceAddress(self) -> None:
        self.allowed(request(client_address=SOURCE), require_source_address=True)
        self.refused("no-address", request(), require_source_address=True)
        self.refused(
            "address-mismatch", request(client_address=PRIVATE), require_source_address=True
        )
